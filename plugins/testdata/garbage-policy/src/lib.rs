//! Test guest: an authorization policy that answers allow without naming a policy or a reason
//! (malformed), or, when the request's context asks for it, with any number of reasons.
#![no_std]

extern crate alloc;

wit_bindgen::generate!({
    path: "../../../wit/authz/0.1.0",
    world: "authz-policy",
    generate_all,
});

nimbus_guest_rt::plugin_metadata!();

struct Plugin;

export!(Plugin);

use exports::nimbus::authz::policy::Guest;
use nimbus::authz::types::{Decision, Error, Request};

use alloc::vec::Vec;

impl Guest for Plugin {
    fn decide(request: Request) -> Result<Decision, Error> {
        // Asked for it in the request's context (`reasons` = N): N reasons, one byte each.
        let asked = request
            .context
            .iter()
            .find(|(k, _)| k == "reasons")
            .and_then(|(_, n)| n.parse::<u32>().ok());
        if let Some(n) = asked {
            return Ok(Decision {
                allow: true,
                policy_ids: alloc::vec!["garbage".into()],
                reasons: (0..n).map(|_| "x".into()).collect(),
            });
        }
        Ok(Decision {
            allow: true,
            policy_ids: Vec::new(),
            reasons: Vec::new(),
        })
    }
}
