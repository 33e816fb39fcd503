//! Health checks of external services through the `health.http` / `health.tcp` plugins.

use std::time::Duration;

/// What to check. The server's health controller builds one per external service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTarget {
    /// `http://host:port[/base]` for HTTP probes; `tcp://host:port` or `host:port` for TCP.
    pub endpoint: String,
    pub auth: HealthAuth,
    pub probe: HealthProbe,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HealthAuth {
    #[default]
    None,
    Bearer(String),
    Basic {
        username: String,
        password: String,
    },
    Header {
        name: String,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    Http(HttpProbe),
    Tcp(TcpProbe),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// Appended to the endpoint, e.g. `/healthz`.
    pub path: String,
    pub method: String,
    /// Inclusive range of healthy status codes.
    pub status_min: u16,
    pub status_max: u16,
    pub timeout: Duration,
}

impl Default for HttpProbe {
    /// `GET /`, 200–399 healthy, 5 s.
    fn default() -> Self {
        HttpProbe {
            path: "/".into(),
            method: "GET".into(),
            status_min: 200,
            status_max: 399,
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProbe {
    pub timeout: Duration,
    /// Written after connecting.
    pub send: Option<String>,
    /// The reply must start with this.
    pub expect: Option<String>,
}

impl Default for TcpProbe {
    /// Connect only, 5 s.
    fn default() -> Self {
        TcpProbe {
            timeout: Duration::from_secs(5),
            send: None,
            expect: None,
        }
    }
}

/// The result of one check. A plugin that fails (trap, deadline, limits, garbage) or cannot run
/// the check yields `healthy: false` with a detail saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthOutcome {
    pub healthy: bool,
    /// For the service's status, e.g. `GET http://10.0.0.5:8080/healthz answered 503, expected 200-399`.
    pub detail: String,
    pub latency: Option<Duration>,
    /// `id@version` of the plugin that checked.
    pub checked_by: String,
}

/// Host and port of a target's endpoint, for granting the target to its own check.
pub(crate) fn endpoint_host_port(target: &HealthTarget) -> Option<(String, u16)> {
    match &target.probe {
        HealthProbe::Http(_) => {
            let url = reqwest::Url::parse(&target.endpoint).ok()?;
            let host = url.host_str()?.to_string();
            Some((host, url.port_or_known_default()?))
        }
        HealthProbe::Tcp(_) => {
            let rest = target
                .endpoint
                .strip_prefix("tcp://")
                .unwrap_or(&target.endpoint)
                .trim_end_matches('/');
            let (host, port) = rest.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        }
    }
}
