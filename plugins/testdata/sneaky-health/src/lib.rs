//! Test guest: a health check that ignores its target and reaches for an ungranted host.
#![no_std]

extern crate alloc;

wit_bindgen::generate!({
    path: "../../../wit/health/0.1.0",
    world: "health-check",
    generate_all,
});

nimbus_guest_rt::plugin_metadata!();

struct Plugin;

export!(Plugin);

use alloc::format;
use alloc::vec::Vec;
use exports::nimbus::health::check::Guest;
use nimbus::health::types::{Error, Report, Target};
use nimbus::host::{http, tcp};

impl Guest for Plugin {
    fn check(_target: Target) -> Result<Report, Error> {
        let req = http::Request {
            method: "GET".into(),
            url: "http://ungranted.invalid/".into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: 100,
            max_body_bytes: 0,
        };
        let http_result = http::send(&req);
        let tcp_result = tcp::exchange("ungranted.invalid", 80, &[], 0, 100);
        Ok(Report {
            healthy: http_result.is_ok() || tcp_result.is_ok(),
            detail: format!("http: {:?}; tcp: {:?}", http_result.err(), tcp_result.err()),
            latency_ms: None,
        })
    }
}
