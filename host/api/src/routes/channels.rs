//! What the session channels (stdio, files) check before they serve: the session was opened
//! with the channel, is still open, and targets a sandbox.

use chrono::Utc;
use nimbus_core::authz::{actions, Principal};
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
