//! The session reaper: expires open sessions when their TTL runs out, whether or not anyone
//! asks. It sleeps until the earliest expiry (or until a new session is opened).

use std::time::Duration;

use chrono::Utc;
use nimbus_core::lifecycle::SessionEvent;
use nimbus_core::resource::{AuditEvent, SessionRecord};
use nimbus_core::{Error, ErrorCode};

use crate::app::SharedApp;

/// Longest sleep between scans, so a missed wake-up is never costly.
const MAX_IDLE: Duration = Duration::from_secs(5);

/// Expires one session (audited as the server's action).
pub async fn expire(app: &SharedApp, session: &SessionRecord) -> Result<SessionRecord, Error> {
    let audit = AuditEvent {
        tenant_id: session.meta.tenant_id.to_string(),
        time: Utc::now(),
        actor: "server".into(),
        action: "sessions.expire".into(),
        target: format!("session/{}", session.id),
        decision: "allow".into(),
        reason: "TTL elapsed".into(),
    };
    app.store
        .end_session(
            &session.meta.tenant_id,
            session.id.as_str(),
            SessionEvent::Expire,
            None,
            Utc::now(),
            &audit,
        )
        .await
}

/// Runs until the process ends.
pub async fn run(app: SharedApp) {
    loop {
        let now = Utc::now();
        match app.store.sessions_due(now, 500).await {
            Ok(due) => {
                for s in &due {
                    match expire(&app, s).await {
                        Ok(_) => tracing::debug!(session = %s.id, "expired"),
                        // Closed concurrently: nothing to do.
                        Err(e) if e.code == ErrorCode::InvalidTransition => {}
                        Err(e) => {
                            tracing::warn!(session = %s.id, error = %e, "could not expire session")
                        }
                    }
                }
                if due.len() == 500 {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaper scan failed"),
        }
        let sleep = match app.store.next_session_expiry().await {
            Ok(Some(t)) => (t - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(MAX_IDLE),
            _ => MAX_IDLE,
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = app.reaper_wake.notified() => {}
        }
    }
}
