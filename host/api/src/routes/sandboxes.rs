//! `/v1/tenants/{t}/sandboxes`.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use nimbus_core::authz::{actions, ResourceKind};
use nimbus_core::lifecycle::SandboxState;
use nimbus_core::names::SandboxId;
use nimbus_core::resource::{
    set_condition, ConditionStatus, Meta, Readiness, SandboxRecord, DELETING_CONDITION,
};
use nimbus_core::spec::{
    unique_keys, validate_labels, Labels, Owner, Profile, SandboxBackend, SandboxSpec,
};
use nimbus_core::Error;
use nimbus_store::SandboxFilter;
use serde::Deserialize;
use serde_json::Value;

use crate::app::{tenant_name, Caller, SharedApp};
use crate::error::ApiResult;
use crate::extract::{JsonBody, NoBody, NoQuery, QueryParams, Unconditional};
use crate::pagination::Paging;
use crate::{status, wire};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSandbox {
    profile: Profile,
    spec: SandboxSpec,
    #[serde(default, deserialize_with = "unique_keys")]
    labels: Labels,
}

pub async fn create(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<CreateSandbox>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = tenant_name(&tenant)?;
    app.authorize(
        &p,
        actions::SANDBOXES_CREATE,
        &tenant,
        ResourceKind::Sandbox,
        None,
        vec![],
    )
    .await?;
    require_operator_for_host_paths(
        &app,
        &p,
        HostPathUse {
            tenant: &tenant,
            action: actions::SANDBOXES_CREATE,
            kind: ResourceKind::Sandbox,
            name: None,
            field: "spec",
        },
        &body.spec,
    )
    .await?;
    // A missing tenant answers 404 ahead of any complaint about the body. A valid request's
    // tenant is checked inside the write below instead of before it: the launch prepares
    // (root filesystem, network, config) while the record is written, and starts the process
    // only once the write has committed; a refused write withdraws it.
    let (reason, message) = match check_create(&app, &body) {
        Ok(first_condition) => first_condition,
        Err(e) => {
            app.require_tenant(&tenant).await?;
            return Err(e.into());
        }
    };
    let max_live = app.limits.sandboxes_per_tenant;
    if app.quota_refusals.check_first(tenant.as_str()) {
        app.store
            .check_sandbox_quota(tenant.as_str(), max_live)
            .await?;
    }
    let (commit_tx, commit) = tokio::sync::watch::channel(None);
    let id = SandboxId::generate();
    if let Some(control) = &app.control {
        control.launch(tenant.clone(), id.clone(), body.spec.clone(), commit);
    }
    let now = Utc::now();
    let meta = Meta::new(tenant.clone(), body.labels, now);
    let mut record = SandboxRecord {
        status: status::pending_sandbox_status(meta.generation, now, reason, message),
        id: id.clone(),
        profile: body.profile,
        meta,
        spec: body.spec,
    };
    let audit = app.event(
        &p,
        &tenant,
        actions::SANDBOXES_CREATE,
        &format!("sandbox/{id}"),
        "allow",
        "",
    );
    // The write and the word to the launch run as a task of their own: a handler dropped by a
    // client that went away mid-commit must not leave a committed record whose launch was
    // told it was refused (it would stay pending, without a process, until a restart).
    let store = app.store.clone();
    let write = tokio::spawn(async move {
        let created = store.create_sandbox(&mut record, max_live, &audit).await;
        let _ = commit_tx.send(Some(created.is_ok()));
        created.map(|()| record)
    });
    let written = write
        .await
        .map_err(|e| Error::internal(format!("the sandbox's write did not complete: {e}")))?;
    match &written {
        Ok(_) => app.quota_refusals.accepted(tenant.as_str()),
        Err(e) if e.code == nimbus_core::ErrorCode::QuotaExhausted => {
            app.quota_refusals.refused(tenant.as_str())
        }
        Err(_) => {}
    }
    let record = written?;
    Ok((StatusCode::CREATED, Json(wire::sandbox(&record))))
}

/// A root read from a host directory (`rootfs`, or a build's `context`) shows the sandbox, and
/// so its creator, whatever that directory holds; `//` would be the host's whole filesystem,
/// credentials included. Host directories are the operator's to hand out: only a server admin
/// may name one. Tenants use images. Checked here, like tenant isolation
/// (`App::require_same_tenant`), rather than left to the configured policy: it guards the
/// host, which no policy an operator swaps in should be able to give away.
/// What a [`require_operator_for_host_paths`] check guards: the request's action on which
/// resource, and where the sandbox spec sits in its body (`field`).
pub(crate) struct HostPathUse<'a> {
    pub tenant: &'a nimbus_core::names::Name,
    pub action: &'a str,
    pub kind: ResourceKind,
    pub name: Option<&'a str>,
    pub field: &'a str,
}

pub(crate) async fn require_operator_for_host_paths(
    app: &SharedApp,
    p: &nimbus_core::authz::Principal,
    at: HostPathUse<'_>,
    spec: &SandboxSpec,
) -> Result<(), Error> {
    use nimbus_core::spec::{ImageSource, Root};
    let field = match &spec.root {
        Root::Rootfs { .. } => format!("{}.root.path", at.field),
        Root::OciImage {
            source: ImageSource::Build { .. },
        } => format!("{}.root.source.context", at.field),
        Root::OciImage { .. } => return Ok(()),
    };
    if p.grants.iter().any(|g| g == "server:admin") {
        // The literal root is refused with the spec; one reached through a symlink or a bind
        // mount is found here, at the request, rather than at the launch.
        if let Root::Rootfs { path } = &spec.root {
            if nimbus_core::spec::is_host_root(std::path::Path::new(path)) {
                return Err(Error::invalid_argument(
                    &field,
                    format!("{path} leads to the host's own root (through a symlink or a bind mount), which cannot be a sandbox root"),
                ));
            }
        }
        return Ok(());
    }
    let reason = format!(
        "{field} names a directory on the server's host, which only a server admin may use; \
         use an image root ({{\"kind\": \"oci_image\", \"source\": {{\"kind\": \"reference\", …}}}})"
    );
    Err(app
        .refuse(p, at.action, at.tenant, at.kind, at.name, &reason)
        .await)
}

/// Checks a create request's body and that this server can run it; returns the reason and
/// message of the record's first condition.
fn check_create(
    app: &SharedApp,
    body: &CreateSandbox,
) -> Result<(&'static str, &'static str), Error> {
    if let Owner::Service { service_name } = &body.spec.owner {
        return Err(Error::invalid_argument(
            "spec.owner",
            format!("sandboxes owned by a service are created only by the service manager; start service {:?} instead, or use {{\"kind\": \"standalone\"}}", service_name.as_str()),
        ));
    }
    body.spec.validate("spec")?;
    validate_labels("labels", &body.labels)?;
    refuse_krun(&body.spec, "spec.backend")?;
    match &app.control {
        Some(control) => {
            if let Some(problems) = control.unavailable() {
                return Err(Error::host_unfit(&problems));
            }
            Ok(("Scheduled", "accepted; the sandbox controller is launching it"))
        }
        None => Ok(("DriverUnavailable", "no sandbox driver is running in this server (server.sandbox_driver = \"none\"); the sandbox is recorded and waits for one")),
    }
}

/// Refuses a spec on the krun backend, which does not run processes yet: a standalone sandbox
/// at its create, a service's at the service's create or update (rather than a service
/// accepted and then relaunched forever). `field` is where the backend sits in the request.
pub(crate) fn refuse_krun(spec: &SandboxSpec, field: &str) -> Result<(), Error> {
    if spec.backend == SandboxBackend::Krun {
        return Err(Error::not_supported(
            "the krun backend does not run processes yet: its network egress enforcement is not at parity with the container backend, so it fails closed; use backend \"container\"",
            serde_json::json!({ "backend": "krun", "field": field }),
        ));
    }
    Ok(())
}

fn parse_id(raw: &str) -> Result<SandboxId, Error> {
    SandboxId::parse("id", raw)
}

pub async fn get(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path((tenant, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    app.authorize(
        &p,
        actions::SANDBOXES_GET,
        &tenant,
        ResourceKind::Sandbox,
        Some(&id),
        vec![],
    )
    .await?;
    let id = parse_id(&id)?;
    let record = app
        .store
        .get_sandbox(&tenant, id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("sandbox", id.as_str()))?;
    Ok(Json(wire::sandbox(&record)))
}

pub async fn list(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: Unconditional,
    Path(tenant): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    let q = QueryParams::parse(
        q.as_deref(),
        &["labelKey", "labelValue", "state", "limit", "pageToken"],
    )?;
    app.authorize(
        &p,
        actions::SANDBOXES_LIST,
        &tenant,
        ResourceKind::Sandbox,
        None,
        vec![],
    )
    .await?;
    app.require_tenant(&tenant).await?;
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(SandboxState::parse(s).ok_or_else(|| {
            Error::invalid_argument(
                "state",
                format!("{s:?} is not one of pending, creating, ready, stopping, stopped, failed"),
            )
        })?),
    };
    if q.get("labelValue").is_some() && q.get("labelKey").is_none() {
        return Err(Error::invalid_argument("labelValue", "needs labelKey too").into());
    }
    // A filter no label could match is a mistake to report, not an empty list.
    if let Some(k) = q.get("labelKey") {
        nimbus_core::spec::validate_label_key("labelKey", k)?;
    }
    if let Some(v) = q.get("labelValue") {
        nimbus_core::spec::validate_label_value("labelValue", v)?;
    }
    let filter = SandboxFilter {
        label_key: q.get("labelKey").map(str::to_string),
        label_value: q.get("labelValue").map(str::to_string),
        state,
    };
    let paging = Paging::from_query(&q, &app.page_tokens, "sandboxes", &tenant)?;
    let page = app
        .store
        .list_sandboxes(&tenant, &filter, paging.after.as_deref(), paging.limit)
        .await?;
    let next = paging.next_token(page.next_after);
    Ok(Json(wire::list(
        page.items.iter().map(wire::sandbox).collect(),
        next,
    )))
}

pub async fn stop(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path((tenant, id)): Path<(String, String)>,
    _: NoBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = tenant_name(&tenant)?;
    app.authorize(
        &p,
        actions::SANDBOXES_STOP,
        &tenant,
        ResourceKind::Sandbox,
        Some(&id),
        vec![],
    )
    .await?;
    let id = parse_id(&id)?;
    let audit = app.event(
        &p,
        &tenant,
        actions::SANDBOXES_STOP,
        &format!("sandbox/{id}"),
        "allow",
        "",
    );
    let record = app
        .store
        .update_sandbox(
            &tenant,
            id.as_str(),
            |r| status::request_sandbox_stop(r, Utc::now()).map(|_| ()),
            Some(&audit),
        )
        .await?;
    if let (Some(control), SandboxState::Stopping) = (&app.control, record.status.lifecycle_state) {
        control.stop(tenant, id);
    }
    Ok((StatusCode::ACCEPTED, Json(wire::sandbox(&record))))
}

pub async fn delete(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path((tenant, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    app.authorize(
        &p,
        actions::SANDBOXES_DELETE,
        &tenant,
        ResourceKind::Sandbox,
        Some(&id),
        vec![],
    )
    .await?;
    let id = parse_id(&id)?;
    let audit = app.event(
        &p,
        &tenant,
        actions::SANDBOXES_DELETE,
        &format!("sandbox/{id}"),
        "allow",
        "",
    );
    if app.store.get_sandbox(&tenant, id.as_str()).await?.is_none() {
        return Err(Error::not_found("sandbox", id.as_str()).into());
    }
    // Host first, record second: if teardown fails the record stays and delete can be retried.
    // Both run as a task of their own: a client that goes away mid-delete (its handler
    // dropped) must not leave the process killed and the record still saying it runs,
    // holding the tenant's quota.
    let (control, store) = (app.control.clone(), app.store.clone());
    let deleting = tokio::spawn(async move {
        // Recorded first: a server that ends mid-delete (killed, the host down) leaves the
        // mark, and the next start finishes the delete.
        store
            .update_sandbox(
                &tenant,
                id.as_str(),
                |r| {
                    let now = Utc::now();
                    set_condition(
                        &mut r.status.conditions,
                        DELETING_CONDITION,
                        ConditionStatus::True,
                        "DeleteRequested",
                        "its delete was asked for: its process is being stopped and its host state removed",
                        now,
                        r.meta.generation,
                    );
                    r.meta.updated_at = now;
                    Ok(())
                },
                None,
            )
            .await?;
        if let Some(control) = &control {
            control.teardown(&id).await?;
        }
        store
            .delete_sandbox(&tenant, id.as_str(), |_| Ok(()), &audit)
            .await
    });
    let mut record = deleting
        .await
        .map_err(|e| Error::internal(format!("the sandbox's delete did not complete: {e}")))??;
    mark_deleted(&mut record, Utc::now());
    Ok(Json(wire::sandbox(&record)))
}

/// The final object a delete answers with: a sandbox deleted while it was live had its process
/// killed by the teardown, so it is `stopped`, not the state its record last held.
fn mark_deleted(record: &mut SandboxRecord, now: chrono::DateTime<Utc>) {
    let status = &mut record.status;
    if status.lifecycle_state.is_terminal() {
        return;
    }
    let was = status.lifecycle_state.as_str();
    status.lifecycle_state = SandboxState::Stopped;
    status.readiness = Readiness::NotReady;
    status.endpoints.clear();
    set_condition(
        &mut status.conditions,
        "Ready",
        ConditionStatus::False,
        "Deleted",
        format!("deleted while {was}; its process, if any, was killed and its files removed"),
        now,
        record.meta.generation,
    );
}

pub async fn logs(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: Unconditional,
    Path((tenant, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::response::Response> {
    let tenant = tenant_name(&tenant)?;
    let q = QueryParams::parse(q.as_deref(), &["follow"])?;
    app.authorize(
        &p,
        actions::SANDBOXES_LOGS,
        &tenant,
        ResourceKind::Sandbox,
        Some(&id),
        vec![],
    )
    .await?;
    let id = parse_id(&id)?;
    let follow = q.bool("follow")?;
    app.store
        .get_sandbox(&tenant, id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("sandbox", id.as_str()))?;
    let rx = match &app.control {
        Some(control) => Some(control.logs(&tenant, &id, follow).await?),
        // No driver: nothing ever ran, so there is no output.
        None => None,
    };
    let stream = futures_util::stream::unfold(rx, |rx| async move {
        let mut rx = rx?;
        let chunk = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(chunk)),
            Some(rx),
        ))
    });
    axum::response::Response::builder()
        .header(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )
        .body(axum::body::Body::from_stream(stream))
        .map_err(|e| Error::internal(e).into())
}
