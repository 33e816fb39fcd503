//! Test guest: an authorization policy that imports outbound HTTP (the authz slot must refuse it).
#![no_std]

extern crate alloc;

wit_bindgen::generate!({
    path: "../wit",
    world: "net-policy",
    generate_all,
});

nimbus_guest_rt::plugin_metadata!();

struct Plugin;

export!(Plugin);

use exports::nimbus::authz::policy::Guest;
use nimbus::authz::types::{Decision, Error, Request};

use alloc::vec::Vec;
use nimbus::host::http;

impl Guest for Plugin {
    fn decide(_request: Request) -> Result<Decision, Error> {
        let req = http::Request {
            method: "GET".into(),
            url: "http://ungranted.invalid/".into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: 100,
            max_body_bytes: 0,
        };
        let allow = http::send(&req).is_ok();
        Ok(Decision {
            allow,
            policy_ids: alloc::vec!["net-policy".into()],
            reasons: alloc::vec!["asked the network".into()],
        })
    }
}
