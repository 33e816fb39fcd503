//! Outbound network on behalf of plugins (`nimbus:host/http`, `nimbus:host/tcp`): only to hosts
//! the operator granted, with timeouts clipped to the plugin call's deadline. These run on a
//! blocking thread (health checks are dispatched with `spawn_blocking`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The most a plugin may read from a response or a socket in one call.
pub const MAX_READ_BYTES: u32 = 64 * 1024;

/// One granted destination: `host`, `host:port`, `*.domain` or `*.domain:port`; IPv6 as `[::1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lowercase host, without brackets; for wildcards the suffix including the leading dot.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(s: &str) -> Option<HostPattern> {
        let s = s.trim();
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
            return None;
        }
        let (host, port) = split_host_port(s)?;
        if port == Some(0) {
            return None;
        }
        let host = host.to_ascii_lowercase();
        // A name is dot-separated labels of letters, digits, '-' and '_' (service names of
        // some container tools have it), none empty; an IPv6 address is hex and colons.
        let name = host.strip_prefix("*.").unwrap_or(&host);
        let is_name = name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !is_name && name.parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(rest) if !rest.is_empty() && !rest.contains('*') => (format!(".{rest}"), true),
            Some(_) => return None,
            None if host.contains('*') || host.is_empty() => return None,
            None => (host, false),
        };
        Some(HostPattern {
            host,
            wildcard,
            port,
        })
    }

    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if self.wildcard {
            host.ends_with(&self.host) && host.len() > self.host.len()
        } else {
            host == self.host
        }
    }
}

/// Splits `host[:port]`, `[v6][:port]`; a bare IPv6 address without brackets has no port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.matches(':').count() {
        0 => Some((s, None)),
        1 => {
            let (h, p) = s.split_once(':')?;
            Some((h, Some(p.parse().ok()?)))
        }
        _ => Some((s, None)),
    }
}

/// What one plugin call may reach.
#[derive(Debug, Clone, Default)]
pub struct NetGrants {
    pub patterns: Vec<HostPattern>,
    /// The slot key, for messages telling the operator where to grant.
    pub slot_key: &'static str,
}

impl NetGrants {
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.patterns.iter().any(|p| p.matches(host, port))
    }

    fn refuse(&self, host: &str, port: u16) -> NetFailure {
        NetFailure::NotGranted(format!(
            "{host}:{port} is not granted to this plugin; grant it in plugins.{}.hosts",
            self.slot_key
        ))
    }
}

/// Host-side mirror of `nimbus:host/network-types.net-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetFailure {
    NotGranted(String),
    InvalidAddress(String),
    Dns(String),
    ConnectionRefused(String),
    Timeout,
    Io(String),
}

pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    pub max_body_bytes: u32,
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

/// The process's HTTP client for plugins: no redirects (a redirect could lead to an ungranted
/// host), no proxy from the environment; `https` verified against the public web roots plus
/// the operator's `plugins.tls_ca_file`.
pub(crate) fn http_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!("plugins.tls_ca_file: cannot read {}: {e}", path.display())
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            anyhow::anyhow!(
                "plugins.tls_ca_file: {} is not a PEM certificate bundle: {e}",
                path.display()
            )
        })?;
        if certs.is_empty() {
            anyhow::bail!(
                "plugins.tls_ca_file: {} holds no PEM certificate",
                path.display()
            );
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    // The roots are parsed when the client is built: a block that is PEM on the outside but
    // not a certificate inside fails only here.
    builder.build().map_err(|e| match ca_file {
        Some(path) => anyhow::anyhow!(
            "plugins.tls_ca_file: {} holds a certificate that cannot be used ({}); give a PEM \
             bundle of CA certificates",
            path.display(),
            error_chain(&e)
        ),
        None => anyhow::anyhow!(
            "the plugins' HTTP client could not be built: {}",
            error_chain(&e)
        ),
    })
}

pub(crate) fn http_send(
    client: &reqwest::Client,
    runtime: &tokio::runtime::Handle,
    stopping: &tokio::sync::watch::Receiver<bool>,
    grants: &NetGrants,
    req: HttpRequest,
) -> Result<HttpResponse, NetFailure> {
    let url = reqwest::Url::parse(&req.url)
        .map_err(|e| NetFailure::InvalidAddress(format!("{:?}: {e}", req.url)))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(NetFailure::InvalidAddress(format!(
                "scheme {other:?} is not offered; use http or https"
            )))
        }
    }
    let host = url
        .host_str()
        .ok_or_else(|| NetFailure::InvalidAddress(format!("{:?} has no host", req.url)))?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    if !grants.allows(&host, port) {
        return Err(grants.refuse(&host, port));
    }
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|_| {
        NetFailure::InvalidAddress(format!("{:?} is not an HTTP method", req.method))
    })?;
    let mut builder = client.request(method, url).timeout(req.timeout);
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if let Some(body) = req.body {
        builder = builder.body(body);
    }
    let limit = req.max_body_bytes.min(MAX_READ_BYTES) as usize;
    let started = Instant::now();
    let deadline = started + req.timeout;
    // The request runs on the server's runtime. Once the server is stopping, that runtime
    // shuts down, and its timers panic under a request still waiting: none is started then,
    // and one in flight is abandoned (its check's outcome is not recorded anyway).
    if *stopping.borrow() {
        return Err(NetFailure::Io(SERVER_STOPPING.into()));
    }
    let mut stopping = stopping.clone();
    let exchange = async move {
        let mut resp = builder.send().await.map_err(classify_reqwest)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        while body.len() < limit {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, resp.chunk()).await {
                Err(_) => return Err(NetFailure::Timeout),
                Ok(Err(e)) => return Err(classify_reqwest(e)),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => {
                    let take = chunk.len().min(limit - body.len());
                    body.extend_from_slice(&chunk[..take]);
                }
            }
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
        })
    };
    runtime.block_on(async move {
        tokio::select! {
            biased;
            // Also when the plugin host is gone (`wait_for` fails at once): nothing would be
            // left to take the answer.
            _ = stopping.wait_for(|stopping| *stopping) => Err(NetFailure::Io(SERVER_STOPPING.into())),
            done = exchange => done,
        }
    })
}

/// What a health check's request answers when the server stops under it.
const SERVER_STOPPING: &str = "the server is stopping";

fn classify_reqwest(e: reqwest::Error) -> NetFailure {
    if e.is_timeout() {
        return NetFailure::Timeout;
    }
    let text = error_chain(&e);
    if e.is_connect() {
        if text.contains("dns error") || text.contains("failed to lookup") {
            return NetFailure::Dns(text);
        }
        if text.contains("refused") {
            return NetFailure::ConnectionRefused(text);
        }
    }
    NetFailure::Io(text)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub struct TcpExchange {
    pub elapsed: Duration,
    pub received: Vec<u8>,
}

pub(crate) fn tcp_exchange(
    grants: &NetGrants,
    host: &str,
    port: u16,
    send: &[u8],
    read_max: u32,
    timeout: Duration,
) -> Result<TcpExchange, NetFailure> {
    if host.is_empty() || port == 0 {
        return Err(NetFailure::InvalidAddress(format!(
            "{host:?}:{port} is not an address"
        )));
    }
    if !grants.allows(host, port) {
        return Err(grants.refuse(host, port));
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| NetFailure::Dns(format!("{host}: {e}")))?
        .collect();
    let mut last = NetFailure::Dns(format!("{host} resolved to no address"));
    let mut stream = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NetFailure::Timeout);
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = classify_io(&format!("{addr}"), e),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |e: std::io::Error| classify_io(&format!("{host}:{port}"), e);
    let left = |d: Instant| {
        deadline
            .saturating_duration_since(d)
            .max(Duration::from_millis(1))
    };
    if !send.is_empty() {
        stream
            .set_write_timeout(Some(left(Instant::now())))
            .map_err(io)?;
        stream.write_all(send).map_err(io)?;
    }
    let want = read_max.min(MAX_READ_BYTES) as usize;
    let mut received = Vec::with_capacity(want);
    let mut buf = [0u8; 4096];
    while received.len() < want {
        if Instant::now() >= deadline {
            return Err(NetFailure::Timeout);
        }
        stream
            .set_read_timeout(Some(left(Instant::now())))
            .map_err(io)?;
        let n = stream
            .read(&mut buf[..(want - received.len()).min(4096)])
            .map_err(io)?;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
    }
    Ok(TcpExchange {
        elapsed: started.elapsed(),
        received,
    })
}

fn classify_io(what: &str, e: std::io::Error) -> NetFailure {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => NetFailure::Timeout,
        ErrorKind::ConnectionRefused => NetFailure::ConnectionRefused(format!("{what}: {e}")),
        _ => NetFailure::Io(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(p: &[&str]) -> NetGrants {
        NetGrants {
            patterns: p.iter().map(|s| HostPattern::parse(s).unwrap()).collect(),
            slot_key: "health.tcp",
        }
    }

    #[test]
    fn exact_host_matches_any_port_unless_a_port_is_given() {
        let g = grants(&["db.internal", "cache.internal:6379"]);
        assert!(g.allows("db.internal", 5432));
        assert!(g.allows("DB.internal", 1));
        assert!(g.allows("cache.internal", 6379));
        assert!(!g.allows("cache.internal", 6380));
        assert!(!g.allows("other.internal", 5432));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let g = grants(&["*.svc.local:80"]);
        assert!(g.allows("a.svc.local", 80));
        assert!(g.allows("a.b.svc.local", 80));
        assert!(!g.allows("svc.local", 80));
        assert!(!g.allows("evilsvc.local", 80));
        assert!(!g.allows("a.svc.local", 81));
    }

    #[test]
    fn ipv6_patterns_use_brackets_for_ports() {
        let g = grants(&["[::1]:8080"]);
        assert!(g.allows("[::1]", 8080));
        assert!(g.allows("::1", 8080));
        assert!(!g.allows("::1", 8081));
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for bad in [
            "",
            "a b",
            "*",
            "*.",
            "a*.b",
            "host:port",
            "http://x",
            "[::1",
            "host:0",
            "a..b",
            ".a",
            "a.",
            "*..a",
            "a!b",
        ] {
            assert!(HostPattern::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn ungranted_tcp_is_refused_before_any_connection() {
        let g = grants(&["127.0.0.1:9"]);
        let e = tcp_exchange(&g, "ungranted.invalid", 80, b"", 0, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(
            matches!(e, NetFailure::NotGranted(ref m) if m.contains("plugins.health.tcp.hosts")),
            "{e:?}"
        );
    }
}
