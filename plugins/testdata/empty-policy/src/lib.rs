//! Bench guest: an authorization policy with no logic. It receives the request like any policy
//! (the same world, lowered into its memory by the host) and answers a constant decision with
//! the one policy id and one reason the host requires of every decision, so
//! that `cargo bench -p nimbus-plugins --bench authz` can show what a decision through a plugin
//! costs before any policy logic runs. Never install it on a real server: it allows everything.
#![no_std]

extern crate alloc;

wit_bindgen::generate!({
    path: "../../../wit/authz/0.1.0",
    world: "authz-policy",
    generate_all,
    // As in grants-policy: no link helper, so no function table.
    disable_custom_section_link_helpers: true,
});

nimbus_guest_rt::plugin_metadata!();

struct Plugin;

export!(Plugin);

use exports::nimbus::authz::policy::Guest;
use nimbus::authz::types::{Decision, Error, Request};

use alloc::string::String;
use alloc::vec;

impl Guest for Plugin {
    fn decide(_request: Request) -> Result<Decision, Error> {
        Ok(Decision {
            allow: true,
            policy_ids: vec![String::from("empty-policy")],
            reasons: vec![String::from("the empty policy allows everything")],
        })
    }
}
