//! Test guest: an authorization policy that traps on every call.
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
    fn decide(_request: Request) -> Result<Decision, Error> {
        panic!("this policy always traps")
    }
}
