//! Test guest: an authorization policy that allocates without bound.
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
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = Vec::with_capacity(1 << 20);
            chunk.resize(1 << 20, 1u8);
            hoard.push(core::hint::black_box(chunk));
        }
    }
}
