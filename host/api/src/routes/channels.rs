//! What the session channels (stdio, files) check before they serve: the session was opened
//! with the channel, is still open, and targets a sandbox.

use std::time::Duration;

use chrono::Utc;
use nimbus_core::authz::{actions, Principal, PrincipalKind};
use nimbus_core::lifecycle::{SandboxState, SessionState};
use nimbus_core::names::{Name, SandboxId};
use nimbus_core::resource::{Channel, SessionRecord};
use nimbus_core::spec::SERVICE_UID_LABEL;
use nimbus_core::Error;

use crate::app::SharedApp;
use crate::control::SandboxControl;

/// Loads session `id` for using its `channel`: authorized as `sessions.attach`, with the
/// channel in the request's context.
pub(crate) async fn load_session(
    app: &SharedApp,
    p: &Principal,
    tenant: &Name,
    id: &str,
    channel: Channel,
) -> Result<SessionRecord, Error> {
    super::sessions::load_for_channel(app, p, tenant, id, actions::SESSIONS_ATTACH, Some(channel))
        .await
}

/// Records a use of `session`'s channel (`sessions.attach`), with what was done in `reason`.
pub(crate) async fn audit(
    app: &SharedApp,
    p: &Principal,
    tenant: &Name,
    session: &SessionRecord,
    reason: &str,
) {
    let target = format!("session/{}", session.id);
    let event = app.event(
        p,
        tenant,
        actions::SESSIONS_ATTACH,
        &target,
        "allow",
        reason,
    );
    app.audit_best_effort(event).await;
}

/// How often a channel in use (an attached stdio, a file being read or uploaded) checks that
/// its session is still open and its credential still usable: a close or a revocation through
/// the API ends it within this time.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// Returns why a channel used through `session` by `caller` must end, once it must: the
/// session expired, was closed (also by its target's delete), or the credential that opened
/// the channel was revoked, expired or deleted. Never returns while none of that happens.
pub(crate) async fn lease_ended(
    app: &SharedApp,
    tenant: &Name,
    session: &SessionRecord,
    caller: &Principal,
) -> String {
    let left = session.spec.expires_at - Utc::now();
    let expiry = tokio::time::sleep(left.to_std().unwrap_or_default());
    tokio::pin!(expiry);
    let mut check = tokio::time::interval(LEASE_CHECK);
    loop {
        tokio::select! {
            () = &mut expiry => return format!("session {} expired", session.id),
            _ = check.tick() => {
                if let Some(why) = lease_problem(app, tenant, session, caller).await {
                    return why;
                }
            }
        }
    }
}

/// Why the session is no longer open or the caller's credential no longer usable, if so now.
pub(crate) async fn lease_problem(
    app: &SharedApp,
    tenant: &Name,
    session: &SessionRecord,
    caller: &Principal,
) -> Option<String> {
    match app.store.get_session(tenant, session.id.as_str()).await {
        Ok(Some(s)) if s.status.lifecycle_state == SessionState::Open => {}
        Ok(_) => return Some(format!("session {} was closed", session.id)),
        // A store hiccup is not a reason to cut the channel; check again later.
        Err(e) => tracing::warn!(error = %e, "a session channel cannot re-read its session"),
    }
    credential_ended(app, caller).await
}

/// Why the credential that attached can no longer be used (revoked, expired, deleted), if so:
/// revoking a credential ends what it holds open, not only its next request. Workload
/// identities end with their sandbox, which ends the channel anyway.
async fn credential_ended(app: &SharedApp, caller: &Principal) -> Option<String> {
    if caller.kind == PrincipalKind::Workload {
        return None;
    }
    let tenant = Name::parse("tenant", &caller.tenant_id).ok()?;
    let id = &caller.id;
    match app.store.get_credential(&tenant, id).await {
        Ok(Some(c)) => c
            .unusable(Utc::now())
            .map(|why| format!("credential {id} {why}")),
        Ok(None) => Some(format!("credential {id} no longer exists")),
        // A store hiccup is not a reason to cut the channel; check again later.
        Err(e) => {
            tracing::warn!(error = %e, "a session channel cannot re-read its credential");
            None
        }
    }
}

/// The sandbox driver the channels reach sandboxes through.
pub(crate) fn control(app: &SharedApp) -> Result<&dyn SandboxControl, Error> {
    app.control.as_deref().ok_or_else(|| {
        Error::runtime_unavailable(
            "this server runs no sandboxes (server.sandbox_driver = \"none\")",
        )
    })
}

/// The sandbox an open `session` reaches through `channel`: its sandbox, or the sandbox its
/// service runs now (a restart moves a service to a new sandbox; the session follows it).
pub(crate) async fn channel_target(
    app: &SharedApp,
    tenant: &Name,
    session: &SessionRecord,
    channel: Channel,
) -> Result<SandboxId, Error> {
    let id = session.id.as_str();
    let name = channel.as_str();
    if !session.spec.channels.contains(&channel) {
        return Err(Error::invalid_argument(
            "channels",
            format!(
                "session {id} was opened without the {name} channel; open a session with \
                 channels: [\"{name}\"]"
            ),
        ));
    }
    require_open(session)?;
    let snapshot = &session.spec.target_snapshot;
    match (snapshot.kind.as_str(), &snapshot.id, &snapshot.name) {
        ("sandbox", Some(sandbox), _) => SandboxId::parse("target.sandbox.id", sandbox),
        ("service", _, Some(service)) => service_sandbox(app, tenant, service, name).await,
        _ => Err(Error::internal(format!(
            "session {id} has a target snapshot without its target"
        ))),
    }
}

/// 409 `state.invalid_transition` unless `session` is open (and not past its expiry, which
/// the reaper may not have recorded yet).
pub(crate) fn require_open(session: &SessionRecord) -> Result<(), Error> {
    let id = session.id.as_str();
    let state = if session.spec.expires_at <= Utc::now() {
        SessionState::Expired
    } else {
        session.status.lifecycle_state
    };
    if state != SessionState::Open {
        return Err(Error::invalid_transition(
            "session",
            id,
            state.as_str(),
            format!("session {id} is {}; open a new session", state.as_str()),
        ));
    }
    Ok(())
}

/// The running sandbox of sandbox-backed service `service`, for the `channel` of a session.
async fn service_sandbox(
    app: &SharedApp,
    tenant: &Name,
    service: &str,
    channel: &str,
) -> Result<SandboxId, Error> {
    let name = Name::parse("target.service.name", service)?;
    let record = app
        .store
        .get_service(tenant, &name)
        .await?
        .ok_or_else(|| Error::not_found("service", service))?;
    let filter = nimbus_store::SandboxFilter {
        label_key: Some(SERVICE_UID_LABEL.into()),
        label_value: Some(record.uid.clone()),
        state: Some(SandboxState::Ready),
    };
    let running = app.store.list_sandboxes(tenant, &filter, None, 100).await?;
    // The newest: while a restart replaces a sandbox, the next one is the one to reach. Only
    // one the service owns: a client's sandbox may carry the label from before such labels
    // were refused.
    let mut owned = running
        .items
        .into_iter()
        .filter(|s| matches!(s.spec.owner, nimbus_core::spec::Owner::Service { .. }));
    match owned.next_back() {
        Some(sandbox) => Ok(sandbox.id),
        None => {
            let state = record.status.lifecycle_state.as_str();
            Err(Error::invalid_transition(
                "service",
                service,
                state,
                format!(
                    "service {service:?} has no running sandbox for the {channel} channel (it is \
                     {state}); start it and wait until status.lifecycleState is \"running\""
                ),
            ))
        }
    }
}
