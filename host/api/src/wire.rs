//! Rendering stored records into the wire shape: `{metadata, spec, status}`.

use chrono::{DateTime, SecondsFormat, Utc};
use nimbus_core::lifecycle::{SandboxState, SessionState};
use nimbus_core::resource::{
    CredentialRecord, Health, Meta, SandboxRecord, ServiceRecord, SessionRecord, TenantRecord,
};
use serde_json::{json, Value};

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn metadata(meta: &Meta, extra: Value) -> Value {
    let mut m = json!({
        "tenantId": meta.tenant_id,
        "generation": meta.generation,
        "resourceVersion": meta.resource_version.to_string(),
        "createdAt": time(meta.created_at),
        "updatedAt": time(meta.updated_at),
        "labels": meta.labels,
    });
    if let (Some(m), Value::Object(extra)) = (m.as_object_mut(), extra) {
        m.extend(extra);
    }
    m
}

pub fn service(s: &ServiceRecord) -> Value {
    json!({
        "metadata": metadata(&s.meta, json!({ "name": s.name, "id": s.uid })),
        "spec": { "backend": s.backend.redacted() },
        "status": s.status,
    })
}

pub fn sandbox(s: &SandboxRecord) -> Value {
    let mut spec = s.spec.redacted();
    if let Some(obj) = spec.as_object_mut() {
        obj.insert("profile".into(), json!(s.profile.as_str()));
    }
    let mut status = serde_json::to_value(&s.status).unwrap_or(Value::Null);
    if let Some(obj) = status.as_object_mut() {
        obj.insert(
            "health".into(),
            json!(sandbox_health(s.status.lifecycle_state)),
        );
    }
    json!({
        "metadata": metadata(&s.meta, json!({ "id": s.id })),
        "spec": spec,
        "status": status,
    })
}

/// The `health` every resource's status has. A sandbox has no health check of its own: it is
/// healthy while its process runs (as a sandbox-backed service is), unhealthy once it failed,
/// and unknown otherwise.
fn sandbox_health(state: SandboxState) -> Health {
    match state {
        SandboxState::Ready => Health::Healthy,
        SandboxState::Failed => Health::Unhealthy,
        SandboxState::Pending
        | SandboxState::Creating
        | SandboxState::Stopping
        | SandboxState::Stopped => Health::Unknown,
    }
}

pub fn session(s: &SessionRecord) -> Value {
    let mut spec = serde_json::to_value(&s.spec).unwrap_or(Value::Null);
    if let Some(obj) = spec.as_object_mut() {
        obj.insert("expiresAt".into(), json!(time(s.spec.expires_at)));
    }
    let mut status = serde_json::to_value(&s.status).unwrap_or(Value::Null);
    if let (Some(obj), Some(t)) = (status.as_object_mut(), s.status.ended_at) {
        obj.insert("endedAt".into(), json!(time(t)));
    }
    // The rest of the shape every resource has, derived from the session's state: a session
    // is ready while it is open, and nothing about it has a health of its own.
    let open = s.status.lifecycle_state == SessionState::Open;
    let (reason, message) = match (s.status.lifecycle_state, &s.status.close_reason) {
        (SessionState::Open, _) => ("Open", "the session is open".to_string()),
        (SessionState::Expired, _) => ("Expired", "the session reached its expiry".to_string()),
        (SessionState::Closed, Some(why)) => ("Closed", format!("closed: {why}")),
        (SessionState::Closed, None) => ("Closed", "closed".to_string()),
    };
    if let Some(obj) = status.as_object_mut() {
        obj.insert(
            "readiness".into(),
            json!(if open { "ready" } else { "notReady" }),
        );
        obj.insert("health".into(), json!("unknown"));
        obj.insert("observedGeneration".into(), json!(s.meta.generation));
        obj.insert(
            "conditions".into(),
            json!([{
                "type": "Ready",
                "status": if open { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "lastTransitionTime": time(s.status.ended_at.unwrap_or(s.meta.created_at)),
                "observedGeneration": s.meta.generation,
            }]),
        );
    }
    json!({
        "metadata": metadata(&s.meta, json!({ "id": s.id, "createdBy": s.created_by })),
        "spec": spec,
        "status": status,
    })
}

/// A tenant in the shape every resource has. A tenant has no definition that changes (its name
/// is all it is), so it stays at generation 1, and it is ready from its creation on.
pub fn tenant(t: &TenantRecord) -> Value {
    let created = time(t.created_at);
    json!({
        "metadata": {
            "name": t.name,
            "id": t.name,
            "tenantId": t.name,
            "generation": 1,
            "resourceVersion": t.resource_version.to_string(),
            "createdAt": created,
            "updatedAt": created,
            "labels": {},
        },
        "spec": {},
        "status": {
            "lifecycleState": "active",
            "readiness": "ready",
            "health": "unknown",
            "observedGeneration": 1,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "Active",
                "message": "the tenant exists",
                "lastTransitionTime": created,
                "observedGeneration": 1,
            }],
        },
    })
}

/// A credential without its secret (the secret is added once, on create).
pub fn credential(c: &CredentialRecord) -> Value {
    json!({
        "metadata": {
            "id": c.id,
            "tenantId": c.tenant_id,
            "createdAt": time(c.created_at),
            "revokedAt": c.revoked_at.map(time),
        },
        "kind": c.kind.as_str(),
        "grants": c.grants,
        "description": c.description,
        "expiresAt": c.expires_at.map(time),
    })
}

pub fn list(items: Vec<Value>, next_page_token: Option<String>) -> Value {
    json!({ "items": items, "metadata": { "nextPageToken": next_page_token.unwrap_or_default() } })
}
