//! Test guest: an authorization policy that denies everything (for swapping policies).
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

use alloc::vec;

impl Guest for Plugin {
    fn decide(request: Request) -> Result<Decision, Error> {
        Ok(Decision {
            allow: false,
            policy_ids: vec!["deny-all-policy".into()],
            reasons: vec![alloc::format!("deny-all-policy denies {}", request.action)],
        })
    }
}
