//! Test guest: an authorization policy that allows everything and says when, by the host's
//! clock: two decisions on the same request differ, so the host must call it every time.
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
use nimbus::host::clock;

use alloc::vec;

impl Guest for Plugin {
    fn decide(request: Request) -> Result<Decision, Error> {
        Ok(Decision {
            allow: true,
            policy_ids: vec!["clock-policy".into()],
            reasons: vec![alloc::format!(
                "clock-policy allows {} at {} ns",
                request.action,
                clock::monotonic_ns()
            )],
        })
    }
}
