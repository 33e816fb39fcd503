//! TCP health check for `nimbus:health@0.1.0`: connects to the endpoint through the host's granted
//! outbound TCP; optionally writes `send` and requires the reply to start with `expect`.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;

wit_bindgen::generate!({
    path: "../../wit/health/0.1.0",
    world: "health-check",
    generate_all,
});

use exports::nimbus::health::check::Guest;
use nimbus::health::types::{Error, Probe, Report, Target};
use nimbus::host::network_types::NetError;
use nimbus::host::tcp;

nimbus_guest_rt::plugin_metadata!();

struct TcpHealth;

export!(TcpHealth);

impl Guest for TcpHealth {
    fn check(target: Target) -> Result<Report, Error> {
        let probe = match target.probe {
            Probe::Tcp(p) => p,
            Probe::Http(_) => {
                return Err(Error::UnsupportedProbe(
                    "tcp-health checks TCP probes only; configure http-health for HTTP".into(),
                ))
            }
        };
        let (host, port) = parse_endpoint(&target.endpoint)?;
        let send = probe.send.as_deref().unwrap_or("").as_bytes();
        let expect = probe.expect.as_deref().unwrap_or("");
        let read_max = expect.len() as u32;
        Ok(
            match tcp::exchange(&host, port, send, read_max, probe.timeout_ms) {
                Ok(r) => {
                    if r.received.starts_with(expect.as_bytes()) {
                        Report {
                            healthy: true,
                            detail: format!(
                                "{host}:{port} accepted the connection in {} ms",
                                r.elapsed_ms
                            ),
                            latency_ms: Some(r.elapsed_ms),
                        }
                    } else {
                        Report {
                            healthy: false,
                            detail: format!(
                                "{host}:{port} replied {:?}, expected it to start with {expect:?}",
                                String::from_utf8_lossy(&r.received)
                            ),
                            latency_ms: Some(r.elapsed_ms),
                        }
                    }
                }
                Err(e) => Report {
                    healthy: false,
                    detail: format!("{host}:{port}: {}", describe(&e)),
                    latency_ms: None,
                },
            },
        )
    }
}

/// Accepts `tcp://host:port`, `host:port` and `[v6]:port`.
fn parse_endpoint(endpoint: &str) -> Result<(String, u16), Error> {
    let rest = endpoint.strip_prefix("tcp://").unwrap_or(endpoint);
    let rest = rest.trim_end_matches('/');
    let bad = || {
        Error::InvalidTarget(format!(
            "endpoint {endpoint:?} is not tcp://host:port (IPv6 as [addr]:port)"
        ))
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((String::from(host), port))
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
