//! What callers ask for: service backends, sandbox specs, labels. Parsing (serde, unknown
//! fields rejected) gives the shape; `validate` checks the rules serde cannot express and
//! names the offending field in its error.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::de::Error as _;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::names::Name;

/// Characters a free-text field (a session's close reason, a credential's description, a
/// sandbox's display name) must not hold: control characters, and the invisible formatting ones
/// that make text read otherwise than it is (bidirectional overrides such as U+202E,
/// zero-width characters, line and paragraph separators, the byte-order mark). These fields
/// end up in audit logs and terminals.
pub fn is_unsafe_text_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Labels: up to 64 pairs; keys 1–63 and values 0–63 characters of `[A-Za-z0-9._-]`, keys
/// starting and ending alphanumeric.
pub type Labels = BTreeMap<String, String>;

/// The label the service manager puts on each sandbox it launches: the service's name (to
/// filter a listing by, e.g. `?labelKey=nimbus.service&labelValue=worker`).
pub const SERVICE_LABEL: &str = "nimbus.service";
/// The label naming the launching service's `uid`: a service deleted and created again under
/// the same name is another service, and does not inherit the first one's sandboxes.
pub const SERVICE_UID_LABEL: &str = "nimbus.service-uid";

/// Reads a JSON object of strings, refusing a key given twice: JSON parsers disagree on which
/// of two values wins (serde keeps the last one silently), so the caller must say which it means.
/// For labels and environments (`#[serde(deserialize_with = "unique_keys")]`).
pub fn unique_keys<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "the key {key:?} is given twice; give each key once"
                    )));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// [`unique_keys`] for an optional field (`#[serde(default, deserialize_with = …)]`); `null`
/// is `None`, as for any optional field.
pub fn unique_keys_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    #[derive(Deserialize)]
    struct Unique(#[serde(deserialize_with = "unique_keys")] BTreeMap<String, String>);
    Ok(Option::<Unique>::deserialize(d)?.map(|u| u.0))
}

pub fn validate_labels(field: &str, labels: &Labels) -> Result<(), Error> {
    if labels.len() > 64 {
        return Err(Error::invalid_argument(
            field,
            "at most 64 labels are allowed",
        ));
    }
    for (k, v) in labels {
        let at = format!("{field}.{k}");
        validate_label_key(&at, k)?;
        validate_label_value(&at, v)?;
        if k.starts_with(RESERVED_LABEL_PREFIX) {
            return Err(Error::invalid_argument(
                &at,
                format!("label keys starting with {RESERVED_LABEL_PREFIX:?} are reserved for the server (the service manager marks its sandboxes with them); choose another key"),
            ));
        }
    }
    Ok(())
}

/// Whether `path` on this host is the host's own root directory, however it is reached: its
/// spelling, a symlink, or a bind mount of `/` elsewhere (the same device and inode as `/`).
/// False for a path that cannot be read (a launch reports that itself).
pub fn is_host_root(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata("/")) {
        (Ok(p), Ok(root)) => p.dev() == root.dev() && p.ino() == root.ino(),
        _ => false,
    }
}

/// Label keys the server sets itself ([`SERVICE_LABEL`], [`SERVICE_UID_LABEL`]); a client's
/// labels may not use them, so a client's sandbox can never pass for a service's.
pub const RESERVED_LABEL_PREFIX: &str = "nimbus.";

fn label_charset(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn label_alnum_ends(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// A label key (also a `labelKey` filter); `field` names it in the error.
pub fn validate_label_key(field: &str, k: &str) -> Result<(), Error> {
    if k.is_empty() || k.len() > 63 || !label_charset(k) || !label_alnum_ends(k) {
        return Err(Error::invalid_argument(
            field,
            "label keys are 1-63 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

/// A label value (also a `labelValue` filter); `field` names it in the error.
pub fn validate_label_value(field: &str, v: &str) -> Result<(), Error> {
    if v.len() > 63 || !label_charset(v) || (!v.is_empty() && !label_alnum_ends(v)) {
        return Err(Error::invalid_argument(
            field,
            "label values are 0-63 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Services

/// Deserialized through [`tagged_variant`] (see there why), serialized as serde's internally
/// tagged enum: `{"kind": "sandbox", "sandbox": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServiceBackend {
    /// Nimbus launches and supervises a sandbox for the service.
    Sandbox { sandbox: SandboxSpec },
    /// A provider implemented by the server.
    BuiltIn { provider: BuiltInProvider },
    /// An endpoint Nimbus health-checks but does not run.
    External {
        endpoint: ExternalEndpoint,
        #[serde(default)]
        auth: ExternalAuth,
        #[serde(default)]
        health: HealthProbe,
    },
}

/// The fields of each [`ServiceBackend`] variant, as the body spells them (`kind` included,
/// already read).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SandboxBackendFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    sandbox: SandboxSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BuiltInBackendFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    provider: BuiltInProvider,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExternalBackendFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    endpoint: ExternalEndpoint,
    #[serde(default)]
    auth: ExternalAuth,
    #[serde(default)]
    health: HealthProbe,
}

impl<'de> Deserialize<'de> for ServiceBackend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_tagged(
            d,
            &["sandbox", "builtIn", "external"],
            |kind, text| match kind {
                "sandbox" => fields_of::<SandboxBackendFields>(text)
                    .map(|f| ServiceBackend::Sandbox { sandbox: f.sandbox }),
                "builtIn" => {
                    fields_of::<BuiltInBackendFields>(text).map(|f| ServiceBackend::BuiltIn {
                        provider: f.provider,
                    })
                }
                _ => fields_of::<ExternalBackendFields>(text).map(|f| ServiceBackend::External {
                    endpoint: f.endpoint,
                    auth: f.auth,
                    health: f.health,
                }),
            },
        )
    }
}

/// Reads an internally tagged object (`{"kind": …, fields…}`) whose kind is one of `kinds`:
/// `variant(kind, text)` reads that variant's fields from the object's text (with
/// [`fields_of`]). The text is parsed twice, for its kind and then as the variant's fields;
/// text (unlike a `serde_json::Value`) keeps repeated keys, which the fields refuse (e.g. an
/// environment variable given twice).
fn deserialize_tagged<'de, D: serde::Deserializer<'de>, T>(
    d: D,
    kinds: &[&str],
    variant: impl FnOnce(&str, &str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
    let kind = tagged_kind(raw.get(), kinds).map_err(D::Error::custom)?;
    variant(&kind, raw.get()).map_err(D::Error::custom)
}

/// The kind of an internally tagged object (`{"kind": …, fields…}`), one of `kinds`. serde's
/// own tagged enums buffer the object and report any error inside a variant at the enum itself
/// (`backend: invalid type…` for a mistake deep in a sandbox spec); deserializing the
/// variant's fields on their own keeps the path, which errors from here carry as a leading
/// "at `path`: " (see [`NESTED_PATH_PREFIX`]).
fn tagged_kind(text: &str, kinds: &[&str]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Kind {
        kind: Option<serde_json::Value>,
    }
    // A struct would also take `[…]`, by position.
    if !text.trim_start().starts_with('{') {
        let found = serde_json::from_str::<serde_json::Value>(text)
            .map(|v| json_kind(&v))
            .unwrap_or("not JSON");
        return Err(format!(
            "invalid type: {found}, expected an object with a \"kind\""
        ));
    }
    let value = match serde_json::from_str::<Kind>(text) {
        Ok(k) => k.kind,
        Err(e) => {
            // An object all the same: a repeated `kind`, say.
            let e = e.to_string();
            return Err(match e.rfind(" at line ") {
                Some(i) => e[..i].to_string(),
                None => e,
            });
        }
    };
    let expected = kinds
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match value {
        None => Err("missing field `kind`".into()),
        Some(serde_json::Value::String(k)) if kinds.contains(&k.as_str()) => Ok(k),
        Some(serde_json::Value::String(k)) => Err(format!(
            "{NESTED_PATH_PREFIX}kind`: unknown variant `{k}`, expected one of {expected}"
        )),
        Some(other) => Err(format!(
            "{NESTED_PATH_PREFIX}kind`: invalid type: {}, expected one of {expected}",
            json_kind(&other)
        )),
    }
}

/// A variant's fields, with the path of an error inside them kept in its message.
fn fields_of<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // Positions are within the object, not the request: drop them.
        let inner = match inner.rfind(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        if path == "." {
            inner
        } else {
            format!("{NESTED_PATH_PREFIX}{path}`: {inner}")
        }
    })
}

/// How an error from inside a tagged variant names where it happened, relative to the
/// variant: "at `sandbox.process.argv[1]`: invalid type…". The API's body extractor folds it
/// into the error's field.
pub const NESTED_PATH_PREFIX: &str = "at `";

/// What kind of JSON value `v` is, for messages: "an array", "a string", "null"…
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl ServiceBackend {
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceBackend::Sandbox { .. } => "sandbox",
            ServiceBackend::BuiltIn { .. } => "builtIn",
            ServiceBackend::External { .. } => "external",
        }
    }

    /// Checks the backend of service `service_name`; `field` is where it sits in the request.
    pub fn validate(&self, field: &str, service_name: &Name) -> Result<(), Error> {
        match self {
            ServiceBackend::Sandbox { sandbox } => {
                let owner_field = format!("{field}.sandbox.owner");
                match &sandbox.owner {
                    Owner::Service { service_name: owner } if owner == service_name => {}
                    Owner::Service { service_name: owner } => {
                        return Err(Error::invalid_argument(
                            &format!("{owner_field}.serviceName"),
                            format!("the sandbox owner names service {:?}, but this is service {:?}; the owner must name the service that runs it", owner.as_str(), service_name.as_str()),
                        ))
                    }
                    Owner::Standalone { .. } => {
                        return Err(Error::invalid_argument(
                            &owner_field,
                            format!("a service's sandbox must be owned by the service: use {{\"kind\": \"service\", \"serviceName\": {:?}}}", service_name.as_str()),
                        ))
                    }
                }
                sandbox.validate(&format!("{field}.sandbox"))
            }
            ServiceBackend::BuiltIn { .. } => Ok(()),
            ServiceBackend::External {
                endpoint,
                auth,
                health,
            } => {
                endpoint.validate(&format!("{field}.endpoint"))?;
                auth.validate(&format!("{field}.auth"))?;
                health.validate(&format!("{field}.health"))
            }
        }
    }

    /// The backend as shown in responses: secrets replaced, launch inputs redacted.
    pub fn redacted(&self) -> serde_json::Value {
        match self {
            ServiceBackend::Sandbox { sandbox } => {
                serde_json::json!({ "kind": "sandbox", "sandbox": sandbox.redacted() })
            }
            ServiceBackend::External {
                endpoint,
                auth,
                health,
            } => serde_json::json!({
                "kind": "external",
                "endpoint": endpoint,
                "auth": auth.redacted(),
                "health": health,
            }),
            other => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BuiltInProvider {
    LoadBalancer,
    ServiceDiscovery,
    Browser,
    ModelGateway,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalEndpoint {
    pub url: String,
}

/// The parts of an external endpoint URL that Nimbus needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses `http(s)://host[:port][/path]`, the only URLs an external endpoint may have.
pub fn parse_http_url(url: &str) -> Result<ParsedUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "it has no scheme; use http://host:port or https://host:port".to_string())?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => {
            return Err(format!(
                "scheme {other:?} is not supported; use http or https"
            ))
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not allowed; use `auth`".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (h, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 host is missing its closing ']'")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number from 1 to 65535"))?,
            None if after.is_empty() => default_port,
            None => return Err("unexpected characters after the IPv6 host".into()),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("port {p:?} is not a number from 1 to 65535"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    if port == 0 {
        return Err("port 0 is not a valid port".into());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
    {
        return Err(format!(
            "host {host:?} has characters a host name cannot have"
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the path has whitespace or control characters".into());
    }
    Ok(ParsedUrl {
        scheme: scheme.to_string(),
        host,
        port,
        path: path.to_string(),
    })
}

impl ExternalEndpoint {
    fn validate(&self, field: &str) -> Result<(), Error> {
        if self.url.len() > 2048 {
            return Err(Error::invalid_argument(
                &format!("{field}.url"),
                "is longer than 2048 characters",
            ));
        }
        parse_http_url(&self.url).map(|_| ()).map_err(|why| {
            Error::invalid_argument(
                &format!("{field}.url"),
                format!("{:?} is not a usable URL: {why}", self.url),
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum ExternalAuth {
    #[default]
    None,
    /// Sent as `Authorization: Bearer <token>` by health checks. Never returned in responses.
    Bearer { token: String },
}

impl ExternalAuth {
    fn validate(&self, field: &str) -> Result<(), Error> {
        match self {
            ExternalAuth::None => Ok(()),
            ExternalAuth::Bearer { token } => {
                if token.is_empty()
                    || token.len() > 4096
                    || token.chars().any(|c| c.is_control() || c == ' ')
                {
                    Err(Error::invalid_argument(
                        &format!("{field}.token"),
                        "must be 1-4096 characters with no spaces or control characters",
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn redacted(&self) -> serde_json::Value {
        match self {
            ExternalAuth::None => serde_json::json!({ "kind": "none" }),
            ExternalAuth::Bearer { .. } => {
                serde_json::json!({ "kind": "bearer", "token": { "redacted": true } })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum HealthProbe {
    /// HTTP GET of `path` on the endpoint; healthy when the status is within the range.
    Http {
        #[serde(default = "default_health_path")]
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_status: Option<StatusRange>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_seconds: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// A TCP connect to the endpoint's host and port.
    Tcp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_seconds: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Not checked; health stays `unknown`.
    #[default]
    None,
}

fn default_health_path() -> String {
    "/".into()
}

/// The fields of each [`HealthProbe`] variant, as the body spells them (`kind` included, already
/// read): read on their own, so that an error inside names its own path
/// (`health.expectStatus.max`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpProbeFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    #[serde(default = "default_health_path")]
    path: String,
    #[serde(default)]
    expect_status: Option<StatusRange>,
    #[serde(default)]
    interval_seconds: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TcpProbeFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    #[serde(default)]
    interval_seconds: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoProbeFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
}

impl<'de> Deserialize<'de> for HealthProbe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_tagged(d, &["http", "tcp", "none"], |kind, text| match kind {
            "http" => fields_of::<HttpProbeFields>(text).map(|f| HealthProbe::Http {
                path: f.path,
                expect_status: f.expect_status,
                interval_seconds: f.interval_seconds,
                timeout_ms: f.timeout_ms,
            }),
            "tcp" => fields_of::<TcpProbeFields>(text).map(|f| HealthProbe::Tcp {
                interval_seconds: f.interval_seconds,
                timeout_ms: f.timeout_ms,
            }),
            _ => fields_of::<NoProbeFields>(text).map(|_| HealthProbe::None),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusRange {
    pub min: u16,
    pub max: u16,
}

impl HealthProbe {
    pub const DEFAULT_INTERVAL_SECONDS: u32 = 10;
    pub const DEFAULT_TIMEOUT_MS: u32 = 2000;

    fn validate(&self, field: &str) -> Result<(), Error> {
        let (interval, timeout) = match self {
            HealthProbe::Http {
                path,
                expect_status,
                interval_seconds,
                timeout_ms,
            } => {
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(Error::invalid_argument(
                        &format!("{field}.path"),
                        "must start with '/' and have no whitespace, at most 1024 characters",
                    ));
                }
                if let Some(r) = expect_status {
                    if !(100..=599).contains(&r.min)
                        || !(100..=599).contains(&r.max)
                        || r.min > r.max
                    {
                        return Err(Error::invalid_argument(
                            &format!("{field}.expectStatus"),
                            "min and max must be HTTP status codes (100-599) with min <= max",
                        ));
                    }
                }
                (interval_seconds, timeout_ms)
            }
            HealthProbe::Tcp {
                interval_seconds,
                timeout_ms,
            } => (interval_seconds, timeout_ms),
            HealthProbe::None => return Ok(()),
        };
        if let Some(i) = interval {
            if !(1..=3600).contains(i) {
                return Err(Error::invalid_argument(
                    &format!("{field}.intervalSeconds"),
                    "must be from 1 to 3600",
                ));
            }
        }
        if let Some(t) = timeout {
            if !(50..=60_000).contains(t) {
                return Err(Error::invalid_argument(
                    &format!("{field}.timeoutMs"),
                    "must be from 50 to 60000",
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Sandboxes

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Profile {
    Worker,
    Desktop,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Worker => "worker",
            Profile::Desktop => "desktop",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSpec {
    pub owner: Owner,
    /// `container` when left out: the guides call it the process-capable default.
    #[serde(default)]
    pub backend: SandboxBackend,
    pub root: Root,
    pub process: Process,
    #[serde(default)]
    pub network: NetworkPolicy,
    #[serde(default)]
    pub resources: Resources,
    /// Opt in to a workload identity token in the sandbox's environment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub workload_identity: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Owner {
    Standalone {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_name: Option<String>,
    },
    Service {
        service_name: Name,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum SandboxBackend {
    #[default]
    Container,
    Krun,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Root {
    OciImage { source: ImageSource },
    Rootfs { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ImageSource {
    /// A registry image, e.g. `docker.io/library/busybox:latest` or `127.0.0.1:5000/app@sha256:…`.
    Reference { reference: String },
    /// A Dockerfile (its text) built in `context`, an absolute directory on the host.
    Build { dockerfile: String, context: String },
}

/// The fields of each [`Root`] and [`ImageSource`] variant, as the body spells them (`kind`
/// included, already read): read on their own, so that an error inside names its own path
/// (`root.source.reference`), not the enclosing object's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OciImageRootFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    source: ImageSource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootfsRootFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceSourceFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildSourceFields {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    dockerfile: String,
    context: String,
}

impl<'de> Deserialize<'de> for Root {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_tagged(d, &["oci_image", "rootfs"], |kind, text| match kind {
            "oci_image" => {
                fields_of::<OciImageRootFields>(text).map(|f| Root::OciImage { source: f.source })
            }
            _ => fields_of::<RootfsRootFields>(text).map(|f| Root::Rootfs { path: f.path }),
        })
    }
}

impl<'de> Deserialize<'de> for ImageSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_tagged(d, &["reference", "build"], |kind, text| match kind {
            "reference" => {
                fields_of::<ReferenceSourceFields>(text).map(|f| ImageSource::Reference {
                    reference: f.reference,
                })
            }
            _ => fields_of::<BuildSourceFields>(text).map(|f| ImageSource::Build {
                dockerfile: f.dockerfile,
                context: f.context,
            }),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Process {
    pub argv: Vec<String>,
    #[serde(default, deserialize_with = "unique_keys")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `uid`, `uid:gid`, or a user name from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default)]
    pub egress: EgressPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressPolicy {
    #[serde(default)]
    pub default: EgressDefault,
    #[serde(default)]
    pub allow: Vec<EgressRule>,
}

/// Only `deny` exists: egress is deny-by-default and widened by `allow` rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum EgressDefault {
    #[default]
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    pub cidr: String,
    /// Empty means every port.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// A parsed CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix {p:?} must be a number from 0 to {max}"))?,
        None => max,
    };
    Ok(Cidr { addr, prefix })
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

impl Resources {
    pub const DEFAULT_MEMORY_MB: u64 = 512;
    pub const DEFAULT_PIDS: u64 = 256;
    pub const DEFAULT_CPUS: f64 = 1.0;
}

fn is_env_key(k: &str) -> bool {
    let mut bytes = k.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An absolute path with no `..` components and no NUL, at most 4096 bytes.
fn check_abs_path(field: &str, path: &str) -> Result<(), Error> {
    if !path.starts_with('/') {
        return Err(Error::invalid_argument(
            field,
            format!("{path:?} must be an absolute path"),
        ));
    }
    if path.len() > 4096 || path.contains('\0') {
        return Err(Error::invalid_argument(
            field,
            "must be at most 4096 bytes with no NUL",
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(Error::invalid_argument(
            field,
            format!("{path:?} must not contain '..'"),
        ));
    }
    Ok(())
}

/// A registry as `host[:port]`: a DNS name (labels of letters, digits and '-') or a bracketed
/// IPv6 address, and a port from 1 to 65535. The one rule for requests (here) and for pulls
/// (`nimbus_runtime::reference`), so that what a create accepts a launch can pull from.
pub fn check_registry_host(registry: &str) -> Result<(), &'static str> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !registry.ends_with(']') => (h, Some(p)),
        _ => (registry, None),
    };
    let name_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => inner.parse::<std::net::Ipv6Addr>().is_ok(),
        // DNS labels: 1-63 letters, digits and '-', not starting or ending with '-'.
        None => {
            !host.is_empty()
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        }
    };
    if !name_ok {
        return Err(
            "the registry host must be a DNS name (labels of letters, digits and '-') or a bracketed IPv6 address",
        );
    }
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n));
        if !ok {
            return Err("the registry port must be 1 to 65535");
        }
    }
    Ok(())
}

/// Image references: `[registry/]repository[:tag][@sha256:hex]`, lowercase repository.
fn check_reference(field: &str, reference: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Error::invalid_argument(
            field,
            format!("{reference:?} is not an image reference: {why}"),
        )
    };
    if reference.is_empty() || reference.len() > 512 {
        return Err(bad("it must be 1-512 characters"));
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("it has whitespace or control characters"));
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let hex = d
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("the digest must be sha256:<64 hex>"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the digest must be sha256:<64 lowercase hex>"));
        }
    }
    // A tag follows the last ':' after the last '/'.
    let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !tag.starts_with(['.', '-']);
        if !ok {
            return Err(bad(
                "the tag must be 1-128 characters of A-Z, a-z, 0-9, '_', '.', '-'",
            ));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first_is_registry = parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost");
    if first_is_registry {
        let registry = parts.remove(0);
        check_registry_host(registry).map_err(bad)?;
    }
    if parts.is_empty()
        || parts.iter().any(|p| {
            p.is_empty()
                || !p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                || !p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        })
    {
        return Err(bad(
            "repository path components are lowercase letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

impl SandboxSpec {
    pub fn validate(&self, field: &str) -> Result<(), Error> {
        let f = |sub: &str| format!("{field}.{sub}");
        if let Owner::Standalone {
            display_name: Some(d),
        } = &self.owner
        {
            if d.is_empty() || d.chars().count() > 128 || d.chars().any(is_unsafe_text_char) {
                return Err(Error::invalid_argument(
                    &f("owner.displayName"),
                    "must be 1-128 characters with no control or invisible formatting characters",
                ));
            }
        }
        match &self.root {
            Root::OciImage {
                source: ImageSource::Reference { reference },
            } => check_reference(&f("root.source.reference"), reference)?,
            Root::OciImage {
                source:
                    ImageSource::Build {
                        dockerfile,
                        context,
                    },
            } => {
                if dockerfile.trim().is_empty() || dockerfile.len() > 256 * 1024 {
                    return Err(Error::invalid_argument(
                        &f("root.source.dockerfile"),
                        "must be the Dockerfile's text, 1 byte to 256 KiB",
                    ));
                }
                check_abs_path(&f("root.source.context"), context)?;
            }
            Root::Rootfs { path } => {
                check_abs_path(&f("root.path"), path)?;
                // `//`, `/.` and the like are the root too.
                if std::path::Path::new(path).components().all(|c| {
                    c == std::path::Component::RootDir || c == std::path::Component::CurDir
                }) {
                    return Err(Error::invalid_argument(
                        &f("root.path"),
                        "the host's own root cannot be a sandbox root",
                    ));
                }
            }
        }
        self.validate_process(field)?;
        for (i, rule) in self.network.egress.allow.iter().enumerate() {
            let rf = f(&format!("network.egress.allow[{i}]"));
            parse_cidr(&rule.cidr)
                .map_err(|why| Error::invalid_argument(&format!("{rf}.cidr"), why))?;
            if rule.ports.contains(&0) {
                return Err(Error::invalid_argument(
                    &format!("{rf}.ports"),
                    "ports are 1-65535",
                ));
            }
            if rule.ports.len() > 64 {
                return Err(Error::invalid_argument(
                    &format!("{rf}.ports"),
                    "at most 64 ports per rule",
                ));
            }
        }
        if self.network.egress.allow.len() > 256 {
            return Err(Error::invalid_argument(
                &f("network.egress.allow"),
                "at most 256 rules",
            ));
        }
        let r = &self.resources;
        if let Some(m) = r.memory_mb {
            if !(16..=1024 * 1024).contains(&m) {
                return Err(Error::invalid_argument(
                    &f("resources.memoryMb"),
                    "must be from 16 to 1048576",
                ));
            }
        }
        if let Some(p) = r.pids {
            if !(8..=1_000_000).contains(&p) {
                return Err(Error::invalid_argument(
                    &f("resources.pids"),
                    "must be from 8 to 1000000",
                ));
            }
        }
        if let Some(c) = r.cpus {
            if !(c.is_finite() && (0.01..=1024.0).contains(&c)) {
                return Err(Error::invalid_argument(
                    &f("resources.cpus"),
                    "must be from 0.01 to 1024",
                ));
            }
        }
        Ok(())
    }

    fn validate_process(&self, field: &str) -> Result<(), Error> {
        let p = &self.process;
        let f = |sub: &str| format!("{field}.process.{sub}");
        if p.argv.is_empty() {
            return Err(Error::invalid_argument(
                &f("argv"),
                "must name at least the program to run",
            ));
        }
        if p.argv.len() > 4096 {
            return Err(Error::invalid_argument(
                &f("argv"),
                "at most 4096 arguments",
            ));
        }
        if p.argv[0].is_empty() {
            return Err(Error::invalid_argument(
                &f("argv[0]"),
                "the program name is empty",
            ));
        }
        for (i, a) in p.argv.iter().enumerate() {
            if a.contains('\0') || a.len() > 128 * 1024 {
                return Err(Error::invalid_argument(
                    &f(&format!("argv[{i}]")),
                    "must have no NUL and be at most 128 KiB",
                ));
            }
        }
        if p.environment.len() > 4096 {
            return Err(Error::invalid_argument(
                &f("environment"),
                "at most 4096 variables",
            ));
        }
        for (k, v) in &p.environment {
            if !is_env_key(k) || k.len() > 1024 {
                return Err(Error::invalid_argument(
                    &f(&format!("environment.{k}")),
                    "variable names are letters, digits and '_', not starting with a digit",
                ));
            }
            if k.starts_with("NIMBUS_") {
                return Err(Error::invalid_argument(
                    &f(&format!("environment.{k}")),
                    "names starting with NIMBUS_ are reserved for the server",
                ));
            }
            if v.contains('\0') || v.len() > 128 * 1024 {
                return Err(Error::invalid_argument(
                    &f(&format!("environment.{k}")),
                    "values must have no NUL and be at most 128 KiB",
                ));
            }
        }
        if let Some(wd) = &p.working_dir {
            check_abs_path(&f("workingDir"), wd)?;
            if wd == "/proc" || wd.starts_with("/proc/") {
                return Err(Error::invalid_argument(
                    &f("workingDir"),
                    "must not be under /proc",
                ));
            }
        }
        if let Some(user) = &p.user {
            let ok = match user.split_once(':') {
                Some((u, g)) => is_user_part(u) && is_user_part(g),
                None => is_user_part(user),
            };
            if !ok {
                return Err(Error::invalid_argument(
                    &f("user"),
                    format!("{user:?} must be a uid, uid:gid, or a user name like \"nobody\""),
                ));
            }
            let out_of_range = user
                .split(':')
                .filter_map(|part| part.parse::<u64>().ok())
                .find(|id| *id > MAX_SANDBOX_ID as u64);
            if let Some(id) = out_of_range {
                return Err(Error::invalid_argument(
                    &f("user"),
                    format!("{user:?}: id {id} is outside 0–{MAX_SANDBOX_ID}, the ids a sandbox's user namespace maps"),
                ));
            }
        }
        Ok(())
    }

    /// The spec as shown in responses: argv and environment replaced by their counts.
    pub fn redacted(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(process) = value.get_mut("process").and_then(|p| p.as_object_mut()) {
            process.insert(
                "argv".into(),
                serde_json::json!({ "redacted": true, "valueCount": self.process.argv.len() }),
            );
            process.insert(
                "environment".into(),
                serde_json::json!({ "redacted": true, "valueCount": self.process.environment.len() }),
            );
        }
        value
    }
}

/// The highest uid or gid a sandbox process may run as: its user namespace maps 65 536 ids.
/// (4294967295, `(uid_t)-1`, would mean "leave unchanged" to setresuid and so run as root.)
pub const MAX_SANDBOX_ID: u32 = 65_535;

fn is_user_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && (s.bytes().all(|b| b.is_ascii_digit())
            || (s
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-')
                })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sandbox(value: serde_json::Value) -> Result<SandboxSpec, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    fn base() -> serde_json::Value {
        json!({
            "owner": {"kind": "standalone", "displayName": "batch-job"},
            "backend": "container",
            "root": {"kind": "oci_image", "source": {"kind": "reference", "reference": "docker.io/library/python:3.12-slim"}},
            "process": {"argv": ["python", "job.py"]}
        })
    }

    #[test]
    fn the_host_root_is_recognised_through_symlinks_and_nothing_else_is() {
        let dir = tempfile_dir();
        let link = dir.join("to-root");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/", &link).unwrap();
        assert!(is_host_root(std::path::Path::new("/")));
        assert!(is_host_root(&link));
        assert!(is_host_root(std::path::Path::new("/tmp/..")));
        assert!(!is_host_root(std::path::Path::new("/tmp")));
        assert!(!is_host_root(&dir));
        assert!(!is_host_root(std::path::Path::new("/no/such/path")));
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }

    /// A fresh directory of this test's own under the temp dir (nimbus-core has no tempfile).
    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nimbus-core-root-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn label_keys_in_the_servers_namespace_are_refused_and_others_pass() {
        for key in [SERVICE_LABEL, SERVICE_UID_LABEL, "nimbus.anything"] {
            let labels = Labels::from([(key.to_string(), "x".to_string())]);
            let e = validate_labels("labels", &labels).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
            assert!(e.message.contains("reserved for the server"), "{e:?}");
            assert!(format!("{e:?}").contains(&format!("labels.{key}")), "{e:?}");
        }
        let fine = Labels::from([
            ("team".to_string(), "search".to_string()),
            ("nimbusish".to_string(), "x".to_string()),
            ("app.nimbus.io".to_string(), "y".to_string()),
        ]);
        validate_labels("labels", &fine).unwrap();
    }

    #[test]
    fn the_guide_example_parses_and_validates() {
        let spec = sandbox(base()).unwrap();
        spec.validate("spec").unwrap();
    }

    #[test]
    fn a_backend_left_out_is_container() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("backend");
        assert_eq!(sandbox(v).unwrap().backend, SandboxBackend::Container);
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        let mut v = base();
        v["process"]["argvv"] = json!([]);
        assert!(sandbox(v).unwrap_err().contains("argvv"));
        let mut v = base();
        v["root"]["source"]["extra"] = json!(1);
        assert!(sandbox(v).is_err());
        let mut v = base();
        v["owner"]["x"] = json!(1);
        assert!(sandbox(v).is_err());
    }

    fn set(v: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent).unwrap()[key] = value;
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("/process/argv", json!([]), "spec.process.argv"),
            (
                "/process/workingDir",
                json!("relative"),
                "spec.process.workingDir",
            ),
            (
                "/process/workingDir",
                json!("/proc/self/fd/3"),
                "spec.process.workingDir",
            ),
            ("/process/user", json!("root; rm"), "spec.process.user"),
            // (uid_t)-1 would leave the process root; unmapped ids fail only at launch.
            ("/process/user", json!("4294967295"), "spec.process.user"),
            (
                "/process/user",
                json!("1000:4294967295"),
                "spec.process.user",
            ),
            ("/process/user", json!("70000"), "spec.process.user"),
            (
                "/process/environment",
                json!({"1X": "v"}),
                "spec.process.environment.1X",
            ),
            (
                "/root/source/reference",
                json!("UPPER/case"),
                "spec.root.source.reference",
            ),
            (
                "/resources",
                json!({"memoryMb": 1}),
                "spec.resources.memoryMb",
            ),
            (
                "/network",
                json!({"egress": {"allow": [{"cidr": "10.0.0.0/33"}]}}),
                "spec.network.egress.allow[0].cidr",
            ),
        ];
        for (pointer, value, field) in cases {
            let mut v = base();
            set(&mut v, pointer, value);
            let spec = sandbox(v).unwrap();
            let err = spec.validate("spec").unwrap_err();
            assert_eq!(err.details["field"], field, "{pointer}: {}", err.message);
        }
    }

    #[test]
    fn references_accept_common_forms() {
        for ok in [
            "busybox",
            "library/busybox:1.36",
            "docker.io/library/node:22-alpine",
            "127.0.0.1:5000/app/x:v1",
            "localhost/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "[::1]:5000/app/x",
            "REG.example:443/app/x",
        ] {
            check_reference("r", ok).unwrap();
        }
        for bad in [
            "",
            "a b",
            "app:",
            "app@sha256:zz",
            "App/x",
            "127.0.0.1:99999/app/x",
            "127.0.0.1:0/app/x",
            "127.0.0.1:/app/x",
            "localhost:0/x",
            "reg_x.lab:5000/app/x",
            "reg-.lab/app/x",
            "-reg.lab/app/x",
            "a..b/app/x",
            "[zz]:5000/app/x",
            "[1.2.3.4]:5000/app/x",
        ] {
            assert!(check_reference("r", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_sandbox_owner_must_name_the_service() {
        let name = Name::parse("name", "worker").unwrap();
        let mut v = base();
        v["owner"] = json!({"kind": "service", "serviceName": "other"});
        let backend = ServiceBackend::Sandbox {
            sandbox: sandbox(v).unwrap(),
        };
        let err = backend.validate("backend", &name).unwrap_err();
        assert_eq!(err.details["field"], "backend.sandbox.owner.serviceName");
        let standalone = ServiceBackend::Sandbox {
            sandbox: sandbox(base()).unwrap(),
        };
        assert!(standalone.validate("backend", &name).is_err());
    }

    #[test]
    fn external_backends_are_checked_in_depth() {
        let name = Name::parse("name", "search").unwrap();
        let ok: ServiceBackend = serde_json::from_value(json!({
            "kind": "external", "endpoint": {"url": "https://search.internal:9200"},
            "auth": {"kind": "none"}, "health": {"kind": "http", "path": "/healthz"}
        }))
        .unwrap();
        ok.validate("backend", &name).unwrap();
        for (url, _) in [
            ("ftp://x", ""),
            ("http://", ""),
            ("http://h:0", ""),
            ("http://u:p@h", ""),
            ("h:80", ""),
        ] {
            let b: ServiceBackend =
                serde_json::from_value(json!({"kind": "external", "endpoint": {"url": url}}))
                    .unwrap();
            let err = b.validate("backend", &name).unwrap_err();
            assert_eq!(err.details["field"], "backend.endpoint.url", "{url}");
        }
        let b: ServiceBackend = serde_json::from_value(json!({
            "kind": "external", "endpoint": {"url": "http://h"}, "health": {"kind": "http", "path": "nope"}
        })).unwrap();
        assert_eq!(
            b.validate("backend", &name).unwrap_err().details["field"],
            "backend.health.path"
        );
        assert!(serde_json::from_value::<ServiceBackend>(
            json!({"kind": "builtIn", "provider": "ftp"})
        )
        .is_err());
    }

    #[test]
    fn redaction_hides_argv_and_environment() {
        let mut v = base();
        v["process"]["environment"] = json!({"SECRET": "hunter2"});
        let r = sandbox(v).unwrap().redacted();
        assert_eq!(
            r["process"]["argv"],
            json!({"redacted": true, "valueCount": 2})
        );
        assert!(!r.to_string().contains("hunter2"));
        assert!(!r.to_string().contains("job.py"));
    }
}
