//! `GET /v1/tenants/{t}/sessions/{id}/stdio`: a session's stdio channel, as a WebSocket.
//!
//! The server bridges the WebSocket to the process's stdio, which the sandbox's monitor keeps
//! (see [`crate::control::SandboxControl::attach`]):
//! - client → server: binary (or text) messages are written to the process's stdin; an empty
//!   binary message closes stdin, so the process reads end-of-file.
//! - server → client: the process's output (stdout and stderr, as the log has them) from the
//!   moment of attaching, as binary messages. Earlier output is at `…/sandboxes/{id}/logs`.
//! - The server closes the WebSocket with 1000 when the process has exited and all of its
//!   output was sent, with 1008 when the session is closed or expires (or the credential that
//!   attached is revoked or expires), with 1013 when the monitor disconnected this client
//!   before the end of the output (it read too slowly: while the process runs it can attach
//!   again; the logs have everything), with 1009 after a message over [`MAX_MESSAGE`], with
//!   1001 when the server is stopping, and with 1002 / 1007 after a frame that breaks the
//!   protocol / a text message that is not UTF-8. A client that disconnects leaves stdin open
//!   for the next attach.
//! - At most [`MAX_ATTACHES`] channels per sandbox at once; one more is refused with 429
//!   `quota.exhausted` before the upgrade.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use futures_util::{SinkExt, StreamExt};
use nimbus_core::authz::Principal;
use nimbus_core::lifecycle::SandboxState;
use nimbus_core::names::{Name, SandboxId};
use nimbus_core::resource::{Channel, SessionRecord};
use nimbus_core::Error;
use tokio::io::AsyncReadExt;

use crate::app::{tenant_name, Caller, SharedApp};
use crate::control::{Attached, OutputEnded, StdinInput, StdinSender};
use crate::error::ApiResult;

/// The largest message a client may send (and frame): input is queued per message, so this
/// bounds what one message can pin in the server. Larger input is sent as several messages.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Channels attached to one sandbox at once (each holds a connection to its monitor, which
/// disconnects clients over its own, higher cap).
pub const MAX_ATTACHES: usize = 16;
/// How long input still queued when a channel ends may take to reach the process (a client
/// that sends and hangs up) before it is dropped with its connection to the monitor.
const INPUT_GRACE: Duration = Duration::from_secs(5);
/// How often the server pings the client. While a client's input waits for a process that
/// does not read, nothing reads from the client, so a client that vanished is noticed only
/// by a write to it failing: the ping's.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Channels attached per sandbox, in this server (only it holds connections to the monitors).
static ATTACHES: crate::places::Places = crate::places::Places::new();

/// A sandbox's place taken by one channel, from before the attach until its input is written
/// or dropped.
fn take_attach_place(sandbox: &SandboxId) -> Result<crate::places::Place, Error> {
    ATTACHES
        .take(sandbox.as_str(), MAX_ATTACHES)
        .ok_or_else(|| {
            Error::quota_exhausted(
                format!(
                    "{MAX_ATTACHES} stdio channels are attached to sandbox {sandbox}; \
                 close one (or wait for one to end) and attach again"
                ),
                serde_json::json!({ "sandbox": sandbox.as_str(), "limit": MAX_ATTACHES }),
            )
        })
}

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
    let slot = take_attach_place(&sandbox)?;
    let attached = control.attach(&sandbox).await?;
    let reason = format!("stdio of sandbox/{sandbox}");
    super::channels::audit(&app, &p, &tenant, &session, &reason).await;
    let app = app.clone();
    let upgrade = upgrade
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE);
    Ok(upgrade.on_upgrade(move |ws| async move {
        let Attached {
            output,
            input,
            mut writer,
            ended,
        } = attached;
        let lease = Lease {
            app: &app,
            tenant: &tenant,
            session: &session,
            caller: &p,
        };
        bridge(ws, output, input, ended, &lease).await;
        // Input still queued gets a moment to reach the process, then goes with the
        // connection to the monitor: a process that never reads must not keep it (and the
        // sandbox's place) forever.
        tokio::spawn(async move {
            if tokio::time::timeout(INPUT_GRACE, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
            drop(slot);
        });
    }))
}

/// The running sandbox an open session with the stdio channel reaches.
async fn attachable_sandbox(
    app: &SharedApp,
    tenant: &Name,
    session: &SessionRecord,
) -> Result<SandboxId, Error> {
    let sandbox = super::channels::channel_target(app, tenant, session, Channel::Stdio).await?;
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

/// What keeps a stdio channel open: its session, and the credential that attached.
struct Lease<'a> {
    app: &'a SharedApp,
    tenant: &'a Name,
    session: &'a SessionRecord,
    caller: &'a Principal,
}

/// Pumps output to the client and the client's input to stdin until the process exits, the
/// session ends, the credential that attached is revoked, or the client leaves. Returns once
/// `input` is dropped.
async fn bridge(
    ws: WebSocket,
    mut output: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    input: StdinSender,
    ended: Box<dyn Fn() -> OutputEnded + Send + Sync>,
    lease: &Lease<'_>,
) {
    let Lease {
        app,
        tenant,
        session,
        caller,
    } = *lease;
    let (mut to_client, from_client) = ws.split();
    // Input runs on its own task: a process that does not read its stdin must not stop its
    // output from reaching the client, nor keep the server from noticing the session end.
    let mut pump = tokio::spawn(pump_input(from_client, input));
    let lease = super::channels::lease_ended(app, tenant, session, caller);
    tokio::pin!(lease);
    let mut buf = vec![0u8; 32 * 1024];
    let mut pumped = false;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let stopping = app.stopping.begun();
    tokio::pin!(stopping);
    let end = loop {
        tokio::select! {
            // The process runs on (sandboxes outlive the server); the client can attach again
            // once the server is back.
            () = &mut stopping => break Some((
                1001,
                "the server is stopping; the process runs on: attach again once it is back"
                    .to_string(),
            )),
            _ = keepalive.tick() => {
                if to_client.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                    break None;
                }
            }
            read = output.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if to_client.send(Message::Binary(chunk)).await.is_err() {
                        break None;
                    }
                }
                // The output ends when the process has exited and all of it was sent, or when
                // the monitor let this client go before that (it read too slowly).
                _ => {
                    let how = tokio::task::spawn_blocking(ended).await;
                    break Some(match how {
                        Ok(OutputEnded::Exited) => (1000, "the process has exited".to_string()),
                        Ok(OutputEnded::Cut { running: true }) => (
                            1013,
                            "disconnected for reading the output too slowly (or with too many \
                             clients attached) while the process runs; attach again"
                                .to_string(),
                        ),
                        Ok(OutputEnded::Lost) => (
                            1011,
                            "the sandbox's monitor, which holds the process's stdio, is gone: the \
                             sandbox is lost (see its status)"
                                .to_string(),
                        ),
                        Ok(OutputEnded::Cut { running: false }) | Err(_) => (
                            1013,
                            // A close reason has at most 123 bytes.
                            "output incomplete: disconnected for reading too slowly; the process \
                             has exited, its logs have it all"
                                .to_string(),
                        ),
                    });
                }
            },
            ended = &mut pump => {
                pumped = true;
                match ended {
                    Ok(InputEnd::TooBig) => break Some((
                        1009,
                        format!("a message over {MAX_MESSAGE} bytes; send input in smaller messages"),
                    )),
                    Ok(InputEnd::Broken { code, why }) => break Some((code, why)),
                    // The client went away (or sent garbage): nothing left to tell it.
                    _ => break None,
                }
            }
            why = &mut lease => break Some((1008, why)),
        }
    };
    // Ending the pump drops `input`, so the writer ends once the queue is written.
    if !pumped {
        pump.abort();
        let _ = pump.await;
    }
    match end {
        Some((code, reason)) => {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = to_client.send(Message::Close(Some(frame))).await;
        }
        // A client that closed gets its close echoed, as RFC 6455 asks (on a connection that
        // went away this fails, which is fine).
        None => {
            let _ = to_client.close().await;
        }
    }
}

/// Why a client's input ended.
enum InputEnd {
    /// It left (a close, or the connection went).
    Left,
    /// It sent a message over [`MAX_MESSAGE`].
    TooBig,
    /// It broke the WebSocket protocol (1002), or sent a text message that is not UTF-8
    /// (1007): told why, as RFC 6455 asks, before the connection ends.
    Broken { code: u16, why: String },
}

/// Client messages become stdin input; an empty binary message closes stdin.
async fn pump_input(
    mut from_client: futures_util::stream::SplitStream<WebSocket>,
    input: StdinSender,
) -> InputEnd {
    while let Some(msg) = from_client.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) if too_big(&e) => return InputEnd::TooBig,
            Err(e) => return broken(&e).unwrap_or(InputEnd::Left),
        };
        let sent = match msg {
            Message::Binary(b) if b.is_empty() => input.send(StdinInput::Close).await,
            Message::Binary(b) => input.send(StdinInput::Bytes(b)).await,
            Message::Text(t) => {
                let text: bytes::Bytes = t.into();
                input.send(StdinInput::Bytes(text)).await
            }
            Message::Close(_) => return InputEnd::Left,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if sent.is_err() {
            return InputEnd::Left;
        }
    }
    InputEnd::Left
}

/// The close a WebSocket read error calls for, if the client broke the protocol (rather than
/// went away).
fn broken(e: &axum::Error) -> Option<InputEnd> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        match err.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Protocol(p)) => {
                let mut why = format!("WebSocket protocol error: {p}");
                // A close reason has at most 123 bytes.
                why.truncate(why.floor_char_boundary(123));
                return Some(InputEnd::Broken { code: 1002, why });
            }
            Some(tungstenite::Error::Utf8(_)) => {
                return Some(InputEnd::Broken {
                    code: 1007,
                    why: "a text message (or close reason) that is not UTF-8; send bytes as binary messages".into(),
                })
            }
            _ => {}
        }
        source = err.source();
    }
    None
}

/// Whether a WebSocket read failed on a message (or frame) over the size limit.
fn too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}
