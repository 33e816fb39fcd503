//! `/v1/tenants/{t}/services`.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use nimbus_core::authz::{actions, ResourceKind};
use nimbus_core::lifecycle::{DesiredRunState, ServiceState};
use nimbus_core::names::Name;
use nimbus_core::resource::{
    set_condition, ConditionStatus, Health, Meta, Readiness, ServiceRecord,
};
use nimbus_core::spec::{
    unique_keys, unique_keys_opt, validate_labels, HealthProbe, Labels, ServiceBackend,
};
use nimbus_core::Error;
use serde::Deserialize;
use serde_json::Value;

use crate::app::{tenant_name, Caller, SharedApp};
use crate::error::ApiResult;
use crate::extract::{JsonBody, NoBody, NoQuery, QueryParams, Unconditional};
use crate::pagination::Paging;
use crate::{status, wire};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateService {
    name: String,
    backend: ServiceBackend,
    #[serde(default, deserialize_with = "unique_keys")]
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateService {
    #[serde(default)]
    backend: Option<ServiceBackend>,
    #[serde(default, deserialize_with = "unique_keys_opt")]
    labels: Option<Labels>,
    if_match_generation: Option<i64>,
    /// Optional, on top of `ifMatchGeneration`: the write must follow exactly the one that
    /// produced this `metadata.resourceVersion`. Labels do not move the generation, so this is
    /// what keeps two read-modify-writes of labels from overwriting each other.
    #[serde(default)]
    if_match_resource_version: Option<String>,
}

pub async fn create(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<CreateService>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = tenant_name(&tenant)?;
    let name = Name::parse("name", &body.name)?;
    app.authorize(
        &p,
        actions::SERVICES_CREATE,
        &tenant,
        ResourceKind::Service,
        Some(name.as_str()),
        vec![],
    )
    .await?;
    require_operator_for_backend_paths(
        &app,
        &p,
        &tenant,
        &name,
        actions::SERVICES_CREATE,
        &body.backend,
    )
    .await?;
    app.require_tenant(&tenant).await?;
    body.backend.validate("backend", &name)?;
    validate_labels("labels", &body.labels)?;
    refuse_krun(&body.backend)?;
    let now = Utc::now();
    let meta = Meta::new(tenant.clone(), body.labels, now);
    let mut record = ServiceRecord {
        status: status::service_status(
            &body.backend,
            DesiredRunState::Stopped,
            meta.generation,
            None,
            now,
            app.services.is_some(),
        ),
        name: name.clone(),
        uid: uuid::Uuid::now_v7().to_string(),
        meta,
        backend: body.backend,
    };
    let audit = app.event(
        &p,
        &tenant,
        actions::SERVICES_CREATE,
        &format!("service/{name}"),
        "allow",
        "",
    );
    app.store.create_service(&mut record, &audit).await?;
    Ok((StatusCode::CREATED, Json(wire::service(&record))))
}

pub async fn get(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path((tenant, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    let name = Name::parse("name", &name)?;
    app.authorize(
        &p,
        actions::SERVICES_GET,
        &tenant,
        ResourceKind::Service,
        Some(name.as_str()),
        vec![],
    )
    .await?;
    let record = app
        .store
        .get_service(&tenant, &name)
        .await?
        .ok_or_else(|| Error::not_found("service", name.as_str()))?;
    Ok(Json(wire::service(&record)))
}

pub async fn list(
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
        actions::SERVICES_LIST,
        &tenant,
        ResourceKind::Service,
        None,
        vec![],
    )
    .await?;
    app.require_tenant(&tenant).await?;
    let paging = Paging::from_query(&q, &app.page_tokens, "services", &tenant)?;
    let page = app
        .store
        .list_services(&tenant, paging.after.as_deref(), paging.limit)
        .await?;
    let next = paging.next_token(page.next_after);
    Ok(Json(wire::list(
        page.items.iter().map(wire::service).collect(),
        next,
    )))
}

pub async fn update(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path((tenant, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateService>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    let name = Name::parse("name", &name)?;
    app.authorize(
        &p,
        actions::SERVICES_UPDATE,
        &tenant,
        ResourceKind::Service,
        Some(name.as_str()),
        vec![],
    )
    .await?;
    let expected = body.if_match_generation.ok_or_else(|| {
        Error::invalid_argument(
            "ifMatchGeneration",
            "is required: pass the generation you last read (metadata.generation)",
        )
    })?;
    check_generation(expected)?;
    if let Some(v) = &body.if_match_resource_version {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid_argument(
                "ifMatchResourceVersion",
                format!("{v:?} is not a resourceVersion: pass metadata.resourceVersion as you last read it (a string of digits), or leave it out"),
            )
            .into());
        }
    }
    if let Some(b) = &body.backend {
        require_operator_for_backend_paths(&app, &p, &tenant, &name, actions::SERVICES_UPDATE, b)
            .await?;
        b.validate("backend", &name)?;
        refuse_krun(b)?;
    }
    if let Some(l) = &body.labels {
        validate_labels("labels", l)?;
    }
    let audit = app.event(
        &p,
        &tenant,
        actions::SERVICES_UPDATE,
        &format!("service/{name}"),
        "allow",
        "",
    );
    let launcher = app.services.is_some();
    let record = app
        .store
        .update_service(
            &tenant,
            &name,
            Some(expected),
            |r| {
                let current = r.meta.resource_version.to_string();
                match &body.if_match_resource_version {
                    Some(v) if *v != current => {
                        return Err(Error::resource_version_mismatch(
                            "service",
                            name.as_str(),
                            &current,
                            v,
                        ))
                    }
                    _ => {}
                }
                let new_backend = body.backend.filter(|b| *b != r.backend);
                let new_labels = body.labels.filter(|l| *l != r.meta.labels);
                if new_backend.is_none() && new_labels.is_none() {
                    // An update that changes nothing is not written (see `update_service`).
                    return Ok(());
                }
                let now = Utc::now();
                if let Some(backend) = new_backend {
                    r.backend = backend;
                    r.meta.generation += 1;
                }
                if let Some(labels) = new_labels {
                    r.meta.labels = labels;
                }
                r.meta.updated_at = now;
                r.status = status::service_status(
                    &r.backend,
                    r.status.desired_state,
                    r.meta.generation,
                    Some(&r.status),
                    now,
                    launcher,
                );
                Ok(())
            },
            Some(&audit),
        )
        .await?;
    app.service_changed();
    Ok(Json(wire::service(&record)))
}

pub async fn delete(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: Unconditional,
    Path((tenant, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    let name = Name::parse("name", &name)?;
    let q = QueryParams::parse(q.as_deref(), &["ifMatchGeneration", "force"])?;
    app.authorize(
        &p,
        actions::SERVICES_DELETE,
        &tenant,
        ResourceKind::Service,
        Some(name.as_str()),
        vec![],
    )
    .await?;
    let expected = q.i64("ifMatchGeneration")?.ok_or_else(|| {
        Error::invalid_argument(
            "ifMatchGeneration",
            "is required: pass ?ifMatchGeneration=<the generation you last read>",
        )
    })?;
    check_generation(expected)?;
    let force = q.bool("force")?;
    let audit = app.event(
        &p,
        &tenant,
        actions::SERVICES_DELETE,
        &format!("service/{name}"),
        "allow",
        if force { "force" } else { "" },
    );
    let mut record = app
        .store
        .delete_service(
            &tenant,
            &name,
            expected,
            |r| {
                if r.is_active() && !force {
                    return Err(Error::invalid_transition(
                        "service",
                        name.as_str(),
                        r.status.lifecycle_state.as_str(),
                        format!(
                            "service {:?} was started (status.desiredState is running) and not stopped since; stop it first or delete with force=true",
                            name.as_str()
                        ),
                    ));
                }
                Ok(())
            },
            &audit,
        )
        .await?;
    // The service manager stops and removes its sandboxes on its next pass, now.
    app.service_changed();
    mark_deleted(&mut record, Utc::now());
    Ok(Json(wire::service(&record)))
}

/// The final object a delete answers with says the service is deleted (its `Ready` condition
/// `False` with reason `Deleted`, as a deleted sandbox's), not what its record last held: it
/// is not ready and nothing checks its health any more. A sandbox-backed service whose sandbox
/// may still run is `stopping`: the service manager stops and removes that sandbox on its
/// next pass (the delete does not wait for it, unlike a sandbox's). An external service's
/// state was what its health checks saw, and none follow: `declared`, as before its first.
fn mark_deleted(record: &mut ServiceRecord, now: chrono::DateTime<Utc>) {
    let status = &mut record.status;
    let was = status.lifecycle_state.as_str();
    let message = match &record.backend {
        ServiceBackend::Sandbox { .. } => {
            if matches!(
                status.lifecycle_state,
                ServiceState::Starting | ServiceState::Running | ServiceState::Stopping
            ) {
                status.lifecycle_state = ServiceState::Stopping;
                status.health = Health::Unknown;
                format!("deleted while {was}; the service manager stops and removes its sandbox")
            } else {
                format!("deleted while {was}; the service manager removes its ended sandboxes")
            }
        }
        ServiceBackend::External { .. } => {
            status.lifecycle_state = ServiceState::Declared;
            status.health = Health::Unknown;
            format!("deleted while {was}; this server no longer checks its endpoint (which it does not run)")
        }
        ServiceBackend::BuiltIn { .. } => format!("deleted while {was}"),
    };
    status.readiness = Readiness::NotReady;
    set_condition(
        &mut status.conditions,
        "Ready",
        ConditionStatus::False,
        "Deleted",
        message,
        now,
        record.meta.generation,
    );
}

/// A sandbox-backed service on the krun backend is refused at its create or update, as a
/// krun sandbox is: accepted, it would be relaunched forever, failing each time.
fn refuse_krun(backend: &ServiceBackend) -> Result<(), Error> {
    match backend {
        ServiceBackend::Sandbox { sandbox } => {
            super::sandboxes::refuse_krun(sandbox, "backend.sandbox.backend")
        }
        _ => Ok(()),
    }
}

async fn set_desired(
    app: &SharedApp,
    p: &nimbus_core::authz::Principal,
    tenant: String,
    name: String,
    action: &str,
    desired: DesiredRunState,
    q: Option<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = tenant_name(&tenant)?;
    let name = Name::parse("name", &name)?;
    // `waitUntil`/`timeoutMs`: the server waits for the condition before answering (the SDKs
    // poll on their own too).
    let q = QueryParams::parse(q.as_deref(), &["waitUntil", "timeoutMs"])?;
    if let Some(w) = q.get("waitUntil") {
        let allowed: &[&str] = if desired == DesiredRunState::Running {
            &["ready", "healthy"]
        } else {
            &["stopped"]
        };
        if !allowed.contains(&w) {
            return Err(Error::invalid_argument(
                "waitUntil",
                format!("{w:?} is not one of {}", allowed.join(", ")),
            )
            .into());
        }
    }
    let timeout = q.u32("timeoutMs", 0, 3_600_000)?;
    app.authorize(
        p,
        action,
        &tenant,
        ResourceKind::Service,
        Some(name.as_str()),
        vec![],
    )
    .await?;
    let audit = app.event(p, &tenant, action, &format!("service/{name}"), "allow", "");
    let launcher = app.services.is_some();
    // A restart stops the running sandbox before the service's status says `starting`: from
    // then on no pass of the manager can see the old sandbox as current and report it running.
    if let (Some(services), true) = (&app.services, action == actions::SERVICES_RESTART) {
        let current = app
            .store
            .get_service(&tenant, &name)
            .await?
            .ok_or_else(|| Error::not_found("service", name.as_str()))?;
        services.restart(&tenant, &current.uid).await?;
    }
    let record = app
        .store
        .update_service(
            &tenant,
            &name,
            None,
            |r| {
                let now = Utc::now();
                r.meta.updated_at = now;
                r.status = status::service_status(
                    &r.backend,
                    desired,
                    r.meta.generation,
                    Some(&r.status),
                    now,
                    launcher,
                );
                let sandbox_backed = matches!(r.backend, ServiceBackend::Sandbox { .. });
                if launcher && sandbox_backed && action == actions::SERVICES_RESTART {
                    status::restarting(&mut r.status, r.meta.generation, now);
                }
                Ok(())
            },
            Some(&audit),
        )
        .await?;
    app.service_changed();
    let record = match q.get("waitUntil") {
        Some(until) => {
            let timeout = Duration::from_millis(timeout.map_or(DEFAULT_WAIT_MS, u64::from));
            wait_for_condition(app, &tenant, &name, until, timeout, record).await?
        }
        None => record,
    };
    Ok((StatusCode::ACCEPTED, Json(wire::service(&record))))
}

/// A sandbox-backed service's sandbox rooted in a host directory needs a server admin, as a
/// sandbox's does (see `sandboxes::require_operator_for_host_paths`).
async fn require_operator_for_backend_paths(
    app: &SharedApp,
    p: &nimbus_core::authz::Principal,
    tenant: &Name,
    name: &Name,
    action: &str,
    backend: &ServiceBackend,
) -> Result<(), Error> {
    let ServiceBackend::Sandbox { sandbox } = backend else {
        return Ok(());
    };
    super::sandboxes::require_operator_for_host_paths(
        app,
        p,
        super::sandboxes::HostPathUse {
            tenant,
            action,
            kind: ResourceKind::Service,
            name: Some(name.as_str()),
            field: "backend.sandbox",
        },
        sandbox,
    )
    .await
}

/// Generations start at 1: anything less is no generation that was ever read, so a mistake in
/// the request (400) rather than a stale one (412).
fn check_generation(expected: i64) -> Result<(), Error> {
    if expected < 1 {
        return Err(Error::invalid_argument(
            "ifMatchGeneration",
            format!("{expected} is not a generation (they start at 1); pass metadata.generation as you last read it"),
        ));
    }
    Ok(())
}

/// How long `?waitUntil=` waits when `timeoutMs` is not given.
const DEFAULT_WAIT_MS: u64 = 30_000;

/// `?waitUntil=ready|healthy|stopped`: re-reads the service until its status shows the
/// condition or `timeout` passes, and returns it as it then is. Either way the answer is 202
/// with the object, whose status tells the caller which happened. A condition that cannot come
/// is not waited for (see [`cannot_become_ready`]; an external service, which this server does
/// not run, never stops). A service deleted meanwhile is 404.
async fn wait_for_condition(
    app: &SharedApp,
    tenant: &Name,
    name: &Name,
    until: &str,
    timeout: Duration,
    mut record: ServiceRecord,
) -> Result<ServiceRecord, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = &record.status;
        // `declared` has nothing launched: as stopped as a service gets.
        let met = match until {
            "ready" => s.readiness == Readiness::Ready,
            "healthy" => s.health == Health::Healthy,
            _ => matches!(
                s.lifecycle_state,
                ServiceState::Stopped | ServiceState::Declared
            ),
        };
        let unreachable = match until {
            "stopped" => matches!(record.backend, ServiceBackend::External { .. }),
            _ => cannot_become_ready(&record),
        };
        if met || unreachable || tokio::time::Instant::now() >= deadline {
            return Ok(record);
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + WAIT_POLL)).await;
        record = app
            .store
            .get_service(tenant, name)
            .await?
            .ok_or_else(|| Error::not_found("service", name.as_str()))?;
    }
}

/// Whether nothing this server does will make the service ready or healthy: built-in providers
/// are declared definitions it does not run, sandbox-backed services on a server without a
/// sandbox driver (their `Ready` condition says `LauncherUnavailable`), and external services
/// without a health check.
fn cannot_become_ready(record: &ServiceRecord) -> bool {
    match &record.backend {
        ServiceBackend::BuiltIn { .. } => true,
        ServiceBackend::Sandbox { .. } => record
            .status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.reason == status::LAUNCHER_UNAVAILABLE),
        ServiceBackend::External { health, .. } => *health == HealthProbe::None,
    }
}

/// How often a `?waitUntil=` request re-reads the service.
const WAIT_POLL: Duration = Duration::from_millis(250);

pub async fn start(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    Path((tenant, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    _: NoBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    set_desired(
        &app,
        &p,
        tenant,
        name,
        actions::SERVICES_START,
        DesiredRunState::Running,
        q,
    )
    .await
}

pub async fn stop(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    Path((tenant, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    _: NoBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    set_desired(
        &app,
        &p,
        tenant,
        name,
        actions::SERVICES_STOP,
        DesiredRunState::Stopped,
        q,
    )
    .await
}

pub async fn restart(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    Path((tenant, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    _: NoBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    set_desired(
        &app,
        &p,
        tenant,
        name,
        actions::SERVICES_RESTART,
        DesiredRunState::Running,
        q,
    )
    .await
}
