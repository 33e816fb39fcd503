//! Stored resource records and their status types. The API renders these into the wire shape
//! (`metadata` / `spec` / `status`); the store persists them whole.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lifecycle::{DesiredRunState, SandboxState, ServiceState, SessionState};
use crate::names::{CredentialId, Name, SandboxId, SessionId};
use crate::spec::{Labels, Profile, SandboxBackend, SandboxSpec, ServiceBackend};

/// Bookkeeping shared by every resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub tenant_id: Name,
    pub generation: i64,
    /// Set by the store on every write.
    pub resource_version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub labels: Labels,
}

impl Meta {
    pub fn new(tenant_id: Name, labels: Labels, now: DateTime<Utc>) -> Meta {
        Meta {
            tenant_id,
            generation: 1,
            resource_version: 0,
            created_at: now,
            updated_at: now,
            labels,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// Timestamps on the wire are RFC 3339 UTC with milliseconds, like `metadata.createdAt`.
pub mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    #[serde(with = "millis")]
    pub last_transition_time: DateTime<Utc>,
    pub observed_generation: i64,
}

/// The condition a sandbox carries from the moment its delete is asked for until its record
/// goes: a delete cut off by the server's end is finished by the next start, instead of the
/// sandbox staying as if its process had failed.
pub const DELETING_CONDITION: &str = "Deleting";

/// Sets condition `kind`, keeping `lastTransitionTime` when its status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    now: DateTime<Utc>,
    generation: i64,
) {
    let message = message.into();
    match conditions.iter_mut().find(|c| c.kind == kind) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            kind: kind.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: now,
            observed_generation: generation,
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Readiness {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Health {
    Healthy,
    Unhealthy,
    Unknown,
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    pub name: Name,
    /// Distinguishes this service from an earlier one of the same name.
    pub uid: String,
    pub meta: Meta,
    pub backend: ServiceBackend,
    pub status: ServiceStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub lifecycle_state: ServiceState,
    pub readiness: Readiness,
    pub health: Health,
    pub observed_generation: i64,
    /// What start/stop/restart last asked for.
    pub desired_state: DesiredRunState,
    pub conditions: Vec<Condition>,
}

impl ServiceRecord {
    /// Whether deleting the service needs `force`: a sandbox-backed service that was started
    /// and not stopped since, or whose sandbox still runs. Built-in and external services run
    /// nothing on this server, so they delete without it (also right after an update from a
    /// sandbox backend: the manager removes the old sandbox either way).
    pub fn is_active(&self) -> bool {
        if !matches!(self.backend, crate::spec::ServiceBackend::Sandbox { .. }) {
            return false;
        }
        self.status.desired_state == DesiredRunState::Running
            || matches!(
                self.status.lifecycle_state,
                ServiceState::Running | ServiceState::Starting | ServiceState::Stopping
            )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub profile: Profile,
    pub meta: Meta,
    pub spec: SandboxSpec,
    pub status: SandboxStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    pub lifecycle_state: SandboxState,
    pub readiness: Readiness,
    pub observed_generation: i64,
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// How to reach a sandbox from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub address: String,
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub id: SessionId,
    pub meta: Meta,
    /// The principal that opened it (credential id or workload).
    pub created_by: String,
    pub spec: SessionSpec,
    pub status: SessionStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    pub target: SessionTarget,
    pub channels: Vec<Channel>,
    pub requested_ttl_ms: Option<u64>,
    /// The TTL applied after the default and the cap.
    pub ttl_ms: u64,
    /// True when the requested TTL was above the cap and was lowered to it.
    pub ttl_clamped: bool,
    pub expires_at: DateTime<Utc>,
    pub target_snapshot: TargetSnapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceTarget {
    pub name: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxTarget {
    pub id: SandboxId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Channel {
    Stdio,
    Files,
    Cdp,
    Page,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Stdio, Channel::Files, Channel::Cdp, Channel::Page];

    /// The channel named `name` as requests and records spell it (`stdio`), if there is one.
    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Stdio => "stdio",
            Channel::Files => "files",
            Channel::Cdp => "cdp",
            Channel::Page => "page",
        }
    }
}

/// What a session attached to, frozen at open time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSnapshot {
    /// `service` or `sandbox`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub generation: i64,
    /// The service backend kind (`sandbox`, `builtIn`, `external`) or the sandbox backend
    /// (`container`, `krun`).
    pub backend: String,
}

impl TargetSnapshot {
    pub fn sandbox_backend(b: SandboxBackend) -> &'static str {
        match b {
            SandboxBackend::Container => "container",
            SandboxBackend::Krun => "krun",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    pub lifecycle_state: SessionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRecord {
    pub name: Name,
    pub created_at: DateTime<Utc>,
    pub resource_version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialKind {
    Token,
    ApiKey,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Token => "token",
            CredentialKind::ApiKey => "apiKey",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRecord {
    pub id: CredentialId,
    pub tenant_id: Name,
    pub kind: CredentialKind,
    pub grants: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// sha256 of the secret, hex. Never leaves the store in a response.
    #[serde(skip_serializing)]
    #[serde(default)]
    pub secret_hash: String,
}

impl CredentialRecord {
    /// Why the credential cannot be used at `now` (`"was revoked"`, `"expired"`), if so: the
    /// one rule for authenticating a request and for ending what it holds open.
    pub fn unusable(&self, now: DateTime<Utc>) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            Some("was revoked")
        } else if self.expires_at.is_some_and(|e| e <= now) {
            Some("expired")
        } else {
            None
        }
    }
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub tenant_id: String,
    pub time: DateTime<Utc>,
    /// Credential id, workload, `anonymous`, or `cli`.
    pub actor: String,
    pub action: String,
    /// `kind/name`, e.g. `service/worker`, `sandbox/sbx_…`.
    pub target: String,
    /// `allow` or `deny`.
    pub decision: String,
    #[serde(default)]
    pub reason: String,
}
