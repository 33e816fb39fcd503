//! `GET /v1/tenants/{t}/sessions/{id}/stdio`: a session's stdio channel, as a WebSocket.
//!
//! The server bridges the WebSocket to the process's stdio, which the sandbox's monitor keeps
//! (see [`crate::control::SandboxControl::attach`]):
//! - client → server: binary (or text) messages are written to the process's stdin; an empty
//!   binary message closes stdin, so the process reads end-of-file.
//! - server → client: the process's output (stdout and stderr, as the log has them) from the
//!   moment of attaching, as binary messages. Earlier output is at `…/sandboxes/{id}/logs`.
//! - The server closes the WebSocket with 1000 when the process has exited (its remaining
//!   output sent first), and with 1008 when the session is closed or expires. A client that
//!   disconnects leaves stdin open for the next attach.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use nimbus_core::lifecycle::{SandboxState, SessionState};
use nimbus_core::names::{Name, SandboxId};
use nimbus_core::resource::{Channel, SessionRecord};
use nimbus_core::Error;
use tokio::io::AsyncReadExt;

use crate::app::{tenant_name, Caller, SharedApp};
use crate::control::{Attached, StdinInput};
use crate::error::ApiResult;

/// How often an attached channel checks that its session is still open (a close through the
/// API ends the channel within this time).
const SESSION_CHECK: Duration = Duration::from_secs(1);

pub async fn stdio(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    Path((tenant, id)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<axum::response::Response> {
    let tenant = tenant_name(&tenant)?;
    let session = super::channels::load_session(&app, &p, &tenant, &id, Channel::Stdio).await?;
    let upgrade = upgrade.map_err(|e| {
        Error::invalid_argument(
            "",
            format!(
                "the stdio channel is a WebSocket: connect with a WebSocket client \
                 (GET with Connection: Upgrade and Upgrade: websocket); {e}"
            ),
        )
    })?;
    let sandbox = attachable_sandbox(&app, &tenant, &session).await?;
    let control = super::channels::control(&app)?;
    let attached = control.attach(&sandbox).await?;
    let reason = format!("stdio of sandbox/{sandbox}");
    super::channels::audit(&app, &p, &tenant, &session, &reason).await;
    let app = app.clone();
    Ok(upgrade.on_upgrade(move |ws| async move {
        bridge(ws, attached, &app, &tenant, &session).await;
    }))
}

/// The running sandbox an open session with the stdio channel reaches.
async fn attachable_sandbox(
    app: &SharedApp,
    tenant: &Name,
    session: &SessionRecord,
) -> Result<SandboxId, Error> {
    let sandbox = super::channels::channel_target(session, Channel::Stdio)?;
    let record = app
        .store
        .get_sandbox(tenant, sandbox.as_str())
        .await?
        .ok_or_else(|| Error::not_found("sandbox", sandbox.as_str()))?;
    let state = record.status.lifecycle_state;
    if state != SandboxState::Ready {
        return Err(Error::invalid_transition(
            "sandbox",
            sandbox.as_str(),
            state.as_str(),
            format!(
                "sandbox {sandbox} is {}; the stdio channel needs its process running",
                state.as_str()
            ),
        ));
    }
    Ok(sandbox)
}

/// Pumps output to the client and the client's input to stdin until the process exits, the
/// session ends, or the client leaves.
async fn bridge(
    ws: WebSocket,
    Attached { mut output, input }: Attached,
    app: &SharedApp,
    tenant: &Name,
    session: &SessionRecord,
) {
    let (mut to_client, from_client) = ws.split();
    // Input runs on its own task: a process that does not read its stdin must not stop its
    // output from reaching the client, nor keep the server from noticing the session end.
    let mut pump = tokio::spawn(pump_input(from_client, input));
    let left = session.spec.expires_at - Utc::now();
    let expiry = tokio::time::sleep(left.to_std().unwrap_or_default());
    tokio::pin!(expiry);
    let mut check = tokio::time::interval(SESSION_CHECK);
    let mut buf = vec![0u8; 32 * 1024];
    let (code, reason) = loop {
        tokio::select! {
            read = output.read(&mut buf) => match read {
                Ok(0) | Err(_) => break (1000, "the process has exited".to_string()),
                Ok(n) => {
                    let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if to_client.send(Message::Binary(chunk)).await.is_err() {
                        pump.abort();
                        return;
                    }
                }
            },
            // The client went away (or sent garbage): nothing left to tell it.
            _ = &mut pump => return,
            _ = &mut expiry => break (1008, format!("session {} expired", session.id)),
            _ = check.tick() => {
                match app.store.get_session(tenant, session.id.as_str()).await {
                    Ok(Some(s)) if s.status.lifecycle_state == SessionState::Open => {}
                    Ok(_) => break (1008, format!("session {} was closed", session.id)),
                    // A store hiccup is not a reason to cut the stream; check again later.
                    Err(e) => tracing::warn!(error = %e, "stdio channel: cannot re-read its session"),
                }
            }
        }
    };
    pump.abort();
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = to_client.send(Message::Close(Some(frame))).await;
}

/// Client messages become stdin input; an empty binary message closes stdin.
async fn pump_input(
    mut from_client: futures_util::stream::SplitStream<WebSocket>,
    input: tokio::sync::mpsc::Sender<StdinInput>,
) {
    while let Some(Ok(msg)) = from_client.next().await {
        let sent = match msg {
            Message::Binary(b) if b.is_empty() => input.send(StdinInput::Close).await,
            Message::Binary(b) => input.send(StdinInput::Bytes(b)).await,
            Message::Text(t) => {
                let text: bytes::Bytes = t.into();
                input.send(StdinInput::Bytes(text)).await
            }
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if sent.is_err() {
            return;
        }
    }
}
