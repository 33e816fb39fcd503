//! Test guest: an authorization policy that answers allow without naming a policy or a reason (malformed).
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
    fn decide(_request: Request) -> Result<Decision, Error> {
        Ok(Decision {
            allow: true,
            policy_ids: Vec::new(),
            reasons: Vec::new(),
        })
    }
}
