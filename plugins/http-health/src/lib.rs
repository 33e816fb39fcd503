//! HTTP health check for `nimbus:health@0.1.0`: sends the probe's request to the endpoint through
//! the host's granted outbound HTTP and reports healthy when the status is in the expected range.
//!
//! Config (`[plugins.health.http.config]`): `user-agent` (default `nimbus-health/0.1`).
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use base64::Engine as _;

wit_bindgen::generate!({
    path: "../../wit/health/0.1.0",
    world: "health-check",
    generate_all,
});

use exports::nimbus::health::check::Guest;
use nimbus::health::types::{Auth, Error, HttpProbe, Probe, Report, Target};
use nimbus::host::config;
use nimbus::host::http;
use nimbus::host::network_types::NetError;

nimbus_guest_rt::plugin_metadata!();

/// Enough of the body to quote in the detail of an unhealthy report.
const BODY_EXCERPT: u32 = 256;

struct HttpHealth;

export!(HttpHealth);

impl Guest for HttpHealth {
    fn check(target: Target) -> Result<Report, Error> {
        let probe = match target.probe {
            Probe::Http(p) => p,
            Probe::Tcp(_) => {
                return Err(Error::UnsupportedProbe(
                    "http-health checks HTTP probes only; configure tcp-health for TCP".into(),
                ))
            }
        };
        let url = join_url(&target.endpoint, &probe.path)?;
        let headers = request_headers(&target.auth);
        let method = if probe.method.is_empty() {
            "GET".to_string()
        } else {
            probe.method.to_ascii_uppercase()
        };
        let request = http::Request {
            method: method.clone(),
            url: url.clone(),
            headers,
            body: None,
            timeout_ms: probe.timeout_ms,
            max_body_bytes: BODY_EXCERPT,
        };
        Ok(match http::send(&request) {
            Ok(resp) => judge(&method, &url, &probe, resp),
            Err(e) => Report {
                healthy: false,
                detail: format!("{method} {url} failed: {}", describe(&e)),
                latency_ms: None,
            },
        })
    }
}

fn judge(method: &str, url: &str, probe: &HttpProbe, resp: http::Response) -> Report {
    let range = &probe.expect_status;
    let healthy = resp.status >= range.min && resp.status <= range.max;
    let detail = if healthy {
        format!(
            "{method} {url} answered {} in {} ms",
            resp.status, resp.elapsed_ms
        )
    } else {
        let body = String::from_utf8_lossy(&resp.body);
        let body = body.trim();
        let mut d = format!(
            "{method} {url} answered {}, expected {}-{}",
            resp.status, range.min, range.max
        );
        if !body.is_empty() {
            d.push_str(&format!(": {body}"));
        }
        d
    };
    Report {
        healthy,
        detail,
        latency_ms: Some(resp.elapsed_ms),
    }
}

fn join_url(endpoint: &str, path: &str) -> Result<String, Error> {
    let lower = endpoint.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(Error::InvalidTarget(format!(
            "endpoint {endpoint:?} is not an http:// or https:// URL"
        )));
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if path.is_empty() {
        String::from(base)
    } else if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    })
}

fn request_headers(auth: &Auth) -> Vec<(String, String)> {
    let agent = config::get("user-agent").unwrap_or_else(|| "nimbus-health/0.1".into());
    let mut headers = vec![("user-agent".to_string(), agent)];
    match auth {
        Auth::None => {}
        Auth::Bearer(token) => headers.push(("authorization".into(), format!("Bearer {token}"))),
        Auth::Basic(c) => {
            let raw = format!("{}:{}", c.username, c.password);
            let encoded = base64::engine::general_purpose::STANDARD.encode(raw.as_bytes());
            headers.push(("authorization".into(), format!("Basic {encoded}")));
        }
        Auth::Header(h) => headers.push((h.name.clone(), h.value.clone())),
    }
    headers
}

fn describe(e: &NetError) -> String {
    match e {
        NetError::NotGranted(m) => format!("not granted: {m}"),
        NetError::InvalidAddress(m) => format!("invalid address: {m}"),
        NetError::Dns(m) => format!("name did not resolve: {m}"),
        NetError::ConnectionRefused(m) => format!("connection refused: {m}"),
        NetError::Timeout => "timed out".into(),
        NetError::Io(m) => format!("I/O error: {m}"),
        NetError::Other(m) => m.clone(),
    }
}
