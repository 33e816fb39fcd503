//! Test guest: an authorization policy that never returns.
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

impl Guest for Plugin {
    fn decide(request: Request) -> Result<Decision, Error> {
        let mut n: u64 = request.action.len() as u64;
        loop {
            n = core::hint::black_box(n.wrapping_mul(31).wrapping_add(7));
        }
    }
}
