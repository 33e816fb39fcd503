//! Tenants, credentials and the audit log.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{Duration, Utc};
use nimbus_core::authz::{actions, ResourceKind};
use nimbus_core::names::{CredentialId, Name};
use nimbus_core::resource::{AuditEvent, CredentialKind, CredentialRecord};
use nimbus_core::Error;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::{tenant_name, Caller, SharedApp};
use crate::auth::{hash_secret, new_secret, validate_grant};
use crate::error::ApiResult;
use crate::extract::{JsonBody, NoQuery, QueryParams, Unconditional};
use crate::pagination::Paging;
use crate::wire;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
}

pub async fn create_tenant(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    JsonBody(body): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = Name::parse("name", &body.name)?;
    app.authorize(
        &p,
        actions::TENANTS_CREATE,
        &name,
        ResourceKind::Tenant,
        Some(name.as_str()),
        vec![],
    )
    .await?;
    let audit = app.event(
        &p,
        &name,
        actions::TENANTS_CREATE,
        &format!("tenant/{name}"),
        "allow",
        "",
    );
    let record = app.store.create_tenant(&name, &audit).await?;
    Ok((StatusCode::CREATED, Json(wire::tenant(&record))))
}

pub async fn get_tenant(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path(tenant): Path<String>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    app.authorize(
        &p,
        actions::TENANTS_GET,
        &tenant,
        ResourceKind::Tenant,
        Some(tenant.as_str()),
        vec![],
    )
    .await?;
    let record = app
        .store
        .get_tenant(&tenant)
        .await?
        .ok_or_else(|| Error::not_found("tenant", tenant.as_str()))?;
    Ok(Json(wire::tenant(&record)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateCredential {
    kind: CredentialKind,
    grants: Vec<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    description: Option<String>,
}

/// Longest credential lifetime a caller may ask for: ten years.
const MAX_CREDENTIAL_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Checks a credential request and builds the record; returns it with its one-time secret.
/// Shared by the API and the `nimbus credential create` command.
pub fn new_credential(
    tenant: &Name,
    kind: CredentialKind,
    grants: Vec<String>,
    ttl_seconds: Option<u64>,
    description: Option<String>,
    may_grant_server_admin: bool,
) -> Result<(CredentialRecord, String), Error> {
    if grants.len() > 256 {
        return Err(Error::invalid_argument("grants", "at most 256 grants"));
    }
    for (i, g) in grants.iter().enumerate() {
        validate_grant(&format!("grants[{i}]"), g)?;
        if g == "server:admin" && !may_grant_server_admin {
            return Err(Error::permission_denied(
                actions::CREDENTIALS_CREATE,
                "only a server admin may grant server:admin",
            ));
        }
    }
    if let Some(t) = ttl_seconds {
        if t == 0 || t > MAX_CREDENTIAL_TTL_SECONDS {
            return Err(Error::invalid_argument(
                "ttlSeconds",
                format!("must be from 1 to {MAX_CREDENTIAL_TTL_SECONDS}"),
            ));
        }
    }
    if let Some(d) = &description {
        if d.chars().count() > 256 || d.chars().any(nimbus_core::spec::is_unsafe_text_char) {
            return Err(Error::invalid_argument(
                "description",
                "must be at most 256 characters with no control or invisible formatting characters",
            ));
        }
    }
    let now = Utc::now();
    let secret = new_secret(kind);
    let record = CredentialRecord {
        id: CredentialId::generate(),
        tenant_id: tenant.clone(),
        kind,
        grants,
        description,
        created_at: now,
        expires_at: ttl_seconds
            .map(|t| now + Duration::seconds(i64::try_from(t).unwrap_or(i64::MAX))),
        revoked_at: None,
        secret_hash: hash_secret(&secret),
    };
    Ok((record, secret))
}

pub async fn create_credential(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<CreateCredential>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = tenant_name(&tenant)?;
    app.authorize(
        &p,
        actions::CREDENTIALS_CREATE,
        &tenant,
        ResourceKind::Credential,
        None,
        vec![],
    )
    .await?;
    app.require_tenant(&tenant).await?;
    let is_server_admin = p.grants.iter().any(|g| g == "server:admin");
    let (record, secret) = new_credential(
        &tenant,
        body.kind,
        body.grants,
        body.ttl_seconds,
        body.description,
        is_server_admin,
    )?;
    let audit = app.event(
        &p,
        &tenant,
        actions::CREDENTIALS_CREATE,
        &format!("credential/{}", record.id),
        "allow",
        &record.grants.join(" "),
    );
    app.store.create_credential(&record, &audit).await?;
    let mut out = wire::credential(&record);
    out["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn list_credentials(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: Unconditional,
    Path(tenant): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    let q = QueryParams::parse(q.as_deref(), &["limit", "pageToken"])?;
    app.authorize(
        &p,
        actions::CREDENTIALS_LIST,
        &tenant,
        ResourceKind::Credential,
        None,
        vec![],
    )
    .await?;
    app.require_tenant(&tenant).await?;
    let paging = Paging::from_query(&q, &app.page_tokens, "credentials", &tenant)?;
    let page = app
        .store
        .list_credentials(&tenant, paging.after.as_deref(), paging.limit)
        .await?;
    let next = paging.next_token(page.next_after);
    Ok(Json(wire::list(
        page.items.iter().map(wire::credential).collect(),
        next,
    )))
}

pub async fn revoke_credential(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path((tenant, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    app.authorize(
        &p,
        actions::CREDENTIALS_REVOKE,
        &tenant,
        ResourceKind::Credential,
        Some(&id),
        vec![],
    )
    .await?;
    let id = CredentialId::parse("id", &id)?;
    let audit = app.event(
        &p,
        &tenant,
        actions::CREDENTIALS_REVOKE,
        &format!("credential/{id}"),
        "allow",
        "",
    );
    let is_server_admin = p.grants.iter().any(|g| g == "server:admin");
    let record = match app
        .store
        .revoke_credential(&tenant, id.as_str(), &audit, is_server_admin)
        .await
    {
        Ok(record) => record,
        Err(e) if e.code == nimbus_core::error::ErrorCode::PermissionDenied => {
            let reason = e
                .details
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let deny = AuditEvent {
                decision: "deny".into(),
                reason,
                ..audit
            };
            app.audit_denial(deny, Some(&p)).await;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Json(wire::credential(&record)))
}

pub async fn list_audit(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: Unconditional,
    Path(tenant): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    let q = QueryParams::parse(q.as_deref(), &["limit", "pageToken"])?;
    app.authorize(
        &p,
        actions::AUDIT_LIST,
        &tenant,
        ResourceKind::Audit,
        None,
        vec![],
    )
    .await?;
    app.require_tenant(&tenant).await?;
    let paging = Paging::from_query(&q, &app.page_tokens, "audit", &tenant)?;
    // Audit events are keyed by their sequence number.
    let after = match &paging.after {
        Some(a) => Some(a.parse::<i64>().map_err(|_| {
            Error::invalid_argument("pageToken", "is not a page token from this listing")
        })?),
        None => None,
    };
    let page = app
        .store
        .list_audit(tenant.as_str(), after, paging.limit)
        .await?;
    let next = paging.next_token(page.next_after);
    let items = page
        .items
        .iter()
        .map(|e| json!({ "time": wire::time(e.time), "actor": e.actor, "action": e.action, "target": e.target, "decision": e.decision, "reason": e.reason }))
        .collect();
    Ok(Json(wire::list(items, next)))
}
