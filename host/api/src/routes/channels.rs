//! What the session channels (stdio, files) check before they serve: the session was opened
//! with the channel, is still open, and targets a sandbox.

use chrono::Utc;
use nimbus_core::authz::{actions, Principal};
use nimbus_core::lifecycle::SessionState;
use nimbus_core::names::{Name, SandboxId};
use nimbus_core::resource::{Channel, SessionRecord};
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

/// The sandbox an open `session` reaches through `channel`.
pub(crate) fn channel_target(
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
    let snapshot = &session.spec.target_snapshot;
    let Some(sandbox) = snapshot
        .id
        .as_deref()
        .filter(|_| snapshot.kind == "sandbox")
    else {
        return Err(Error::not_supported(
            format!(
                "the {name} channel of a sandbox-backed service is not available yet: services \
                 do not launch their sandboxes in this version; open the session on a sandbox"
            ),
            serde_json::json!({ "channel": name, "targetKind": snapshot.kind }),
        ));
    };
    SandboxId::parse("target.sandbox.id", sandbox)
}
