//! `GET|PUT|DELETE /v1/tenants/{t}/sessions/{id}/files/{path}`: a session's files channel.
//!
//! - `GET …/files/{path}`: the file's bytes (`application/octet-stream`).
//! - `GET …/files/{dir}/?list` (or `…/files/?list` for `/`): the directory's entries as JSON,
//!   `{"path", "items": [{name, kind, size, mode, modified}], "truncated"}`: at most 10 000
//!   entries; `truncated` says the directory holds more (list its subdirectories instead).
//! - `PUT …/files/{path}`: the body becomes the file (at most [`MAX_UPLOAD`] bytes), replacing
//!   it in one step; missing parent directories are created. Answers `{"path", "size"}`.
//! - `DELETE …/files/{path}`: removes a file, symlink or empty directory.
//!
//! Paths are absolute inside the sandbox and resolved there: `..` stops at its root and its
//! symlinks never lead out of it. New files belong to root inside the sandbox. The channel works
//! from the session's open until it closes or expires, also after the sandbox's process has
//! exited (its files stay until the sandbox is deleted). Every call is an audit event.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::Json;
use nimbus_core::authz::Principal;

use nimbus_core::resource::{Channel, SessionRecord};
use nimbus_core::Error;
use serde_json::{json, Value};

use crate::app::{tenant_name, Caller, SharedApp};
use crate::control::SandboxFiles;
use crate::error::ApiResult;

/// The largest file a PUT accepts (the body is held in memory while it is written).
pub const MAX_UPLOAD: usize = 32 << 20;

/// Uploads this server holds at once, the whole server's: with [`MAX_UPLOAD`] this bounds
/// their memory to 512 MiB. Without it, stalled uploads (a body that stops one byte short)
/// each kept 32 MiB for as long as their connection stayed open.
const MAX_UPLOADS_IN_FLIGHT: usize = 16;
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_UPLOADS_IN_FLIGHT);

/// Uploads one tenant may have in flight at once: one tenant's stalled uploads must not take
/// every place of the server's for the other tenants.
const MAX_UPLOADS_PER_TENANT: usize = 4;

/// Uploads in flight per tenant, in this server.
static TENANT_UPLOADS: crate::places::Places = crate::places::Places::new();

/// A tenant's place among its uploads in flight, given back when dropped.
fn take_upload_place(tenant: &nimbus_core::names::Name) -> Result<crate::places::Place, Error> {
    TENANT_UPLOADS
        .take(tenant.as_str(), MAX_UPLOADS_PER_TENANT)
        .ok_or_else(|| {
            Error::quota_exhausted(
                format!(
                    "tenant {tenant} has {MAX_UPLOADS_PER_TENANT} uploads in flight (the most \
                     one tenant may); let one finish, then retry"
                ),
                json!({ "tenant": tenant.as_str(), "uploadsInFlight": MAX_UPLOADS_PER_TENANT }),
            )
        })
}

/// How long an upload waits for a place among those in flight.
const UPLOAD_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an upload's body may take to arrive, once it has its place.
const UPLOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// `…/files/{*path}`.
pub async fn with_path(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    method: Method,
    Path((tenant, id, path)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    uri: axum::http::Uri,
    body: Body,
) -> ApiResult<Response> {
    refuse_what_decoding_hides(uri.path())?;
    serve(app, p, method, tenant, id, format!("/{path}"), q, body).await
}

/// The path as sent, before the router decoded it: `files//etc/passwd` has an empty first
/// component, which the decoded wildcard no longer shows, and `etc%2Fpasswd` is one name with
/// a `/` in it, which no file can have (decoded, it would pass as two).
fn refuse_what_decoding_hides(raw: &str) -> Result<(), Error> {
    let Some((_, tail)) = raw.split_once("/files/") else {
        return Ok(());
    };
    if tail.starts_with('/') {
        return Err(Error::invalid_argument(
            "path",
            "the path has an empty component (a // after files); give the path from / without it",
        ));
    }
    if tail.to_ascii_lowercase().contains("%2f") {
        return Err(Error::invalid_argument(
            "path",
            "the path has an encoded / (%2F) in a name; names cannot contain /: write the / itself",
        ));
    }
    Ok(())
}

/// `…/files/` (the root directory).
pub async fn root(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    method: Method,
    Path((tenant, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    serve(app, p, method, tenant, id, "/".into(), q, body).await
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    app: SharedApp,
    p: Principal,
    method: Method,
    tenant: String,
    id: String,
    path: String,
    query: Option<String>,
    body: Body,
) -> ApiResult<Response> {
    let tenant = tenant_name(&tenant)?;
    let session = super::channels::load_session(&app, &p, &tenant, &id, Channel::Files).await?;
    let list = match query.as_deref() {
        None | Some("") => false,
        Some("list") | Some("list=") | Some("list=true") => true,
        Some(other) => {
            return Err(Error::invalid_argument(
                "query",
                format!("unknown query {other:?}; the files channel takes only ?list"),
            )
            .into())
        }
    };
    let sandbox = super::channels::channel_target(&app, &tenant, &session, Channel::Files).await?;
    let files = super::channels::control(&app)?.files(&sandbox)?;
    let what = format!("{method} {path}");
    let response = match (method.clone(), list) {
        (Method::GET, true) => list_dir(files, path).await,
        // HEAD answers as GET does, without the body (the server drops it): a file's size and
        // whether it exists, without reading it.
        (Method::GET | Method::HEAD, false) => {
            read(files, path, lease(&app, &tenant, &session, &p)).await
        }
        (Method::PUT, false) => write(files, &app, &tenant, &session, &p, path, body).await,
        (Method::DELETE, false) => delete(files, path).await,
        (_, true) => Err(Error::invalid_argument(
            "query",
            format!("?list goes with GET, not {method}"),
        )),
        (m, _) => Err(Error::invalid_argument(
            "method",
            format!("the files channel takes GET, HEAD, PUT and DELETE, not {m}"),
        )),
    };
    let failed = if response.is_ok() { "" } else { " (failed)" };
    let reason = format!("files of sandbox/{sandbox}: {what}{failed}");
    super::channels::audit(&app, &p, &tenant, &session, &reason).await;
    Ok(response?)
}

/// Runs a blocking file operation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("file operation task: {e}")))?
}

/// Ends (with the reason) once the session or the caller's credential does: a file being read
/// stops streaming then, as an attached stdio does.
fn lease(
    app: &SharedApp,
    tenant: &nimbus_core::names::Name,
    session: &SessionRecord,
    caller: &Principal,
) -> impl std::future::Future<Output = String> + Send + 'static {
    let (app, tenant, session, caller) =
        (app.clone(), tenant.clone(), session.clone(), caller.clone());
    async move { super::channels::lease_ended(&app, &tenant, &session, &caller).await }
}

async fn read(
    files: Box<dyn SandboxFiles>,
    path: String,
    lease: impl std::future::Future<Output = String> + Send + 'static,
) -> Result<Response, Error> {
    use futures_util::StreamExt;
    let file = blocking(move || files.read(&path)).await?;
    let len = file.metadata().map(|m| m.len()).ok();
    // The body ends in an error once the lease does, so the client sees a cut response (its
    // Content-Length unmet), never a short file that looks whole.
    let ended = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let noted = ended.clone();
    let lease = async move {
        let why = lease.await;
        *noted.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    };
    let cut = futures_util::stream::once(async move {
        let why = ended.lock().unwrap_or_else(|p| p.into_inner()).take();
        why.map(|why| Err(std::io::Error::other(format!("the read was cut: {why}"))))
    })
    .filter_map(std::future::ready);
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file))
        .take_until(lease)
        .chain(cut);
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(len) = len {
        response = response.header(header::CONTENT_LENGTH, len);
    }
    response
        .body(Body::from_stream(stream))
        .map_err(Error::internal)
}

async fn list_dir(files: Box<dyn SandboxFiles>, path: String) -> Result<Response, Error> {
    let shown = path.clone();
    let (items, truncated) = blocking(move || files.list(&path)).await?;
    Ok(axum::response::IntoResponse::into_response(Json(
        json!({ "path": shown, "items": items, "truncated": truncated }),
    )))
}

async fn write(
    files: Box<dyn SandboxFiles>,
    app: &SharedApp,
    tenant: &nimbus_core::names::Name,
    session: &SessionRecord,
    caller: &Principal,
    path: String,
    body: Body,
) -> Result<Response, Error> {
    // A body declared larger than any file can be is refused before it takes a place or is
    // waited for (its Content-Length is the body's exact size).
    let declared = axum::body::HttpBody::size_hint(&body).lower();
    if declared > MAX_UPLOAD as u64 {
        return Err(Error::invalid_argument(
            "body",
            format!(
                "the upload is {declared} bytes; files up to {} MiB can be written",
                MAX_UPLOAD >> 20
            ),
        ));
    }
    let _tenant_place = take_upload_place(tenant)?;
    let _place = tokio::time::timeout(UPLOAD_QUEUE_WAIT, UPLOADS.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            Error::quota_exhausted(
                format!(
                    "{MAX_UPLOADS_IN_FLIGHT} uploads are in flight on this server and none \
                     finished within {} s; retry shortly",
                    UPLOAD_QUEUE_WAIT.as_secs()
                ),
                json!({ "uploadsInFlight": MAX_UPLOADS_IN_FLIGHT }),
            )
        })?;
    let bytes = tokio::time::timeout(UPLOAD_DEADLINE, read_upload(body, declared))
        .await
        .map_err(|_| {
            Error::invalid_argument(
                "body",
                format!(
                    "the upload did not arrive within {} s; send the whole body at once",
                    UPLOAD_DEADLINE.as_secs()
                ),
            )
        })?
        .map_err(|e| {
            Error::invalid_argument(
                "body",
                format!(
                    "could not read the upload: {e} (files up to {} MiB can be written)",
                    MAX_UPLOAD >> 20
                ),
            )
        })?;
    // The body may have taken until its deadline to arrive: the session must still be open
    // now, when the file is written (a closed or expired session writes nothing).
    let now = app
        .store
        .get_session(tenant, session.id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("session", session.id.as_str()))?;
    super::channels::require_open(&now)?;
    // So must the credential that sent it: one revoked meanwhile writes nothing either.
    if let Some(why) = super::channels::lease_problem(app, tenant, session, caller).await {
        return Err(Error::unauthenticated(format!(
            "{why}; the upload was not written"
        )));
    }
    let shown = path.clone();
    let size = blocking(move || files.write(&path, &bytes)).await?;
    Ok(axum::response::IntoResponse::into_response(Json(
        json!({ "path": shown, "size": size }),
    )))
}

/// The upload's body, read into one buffer sized by its declared length: `to_bytes` keeps the
/// received chunks and copies them into a new buffer at the end, twice the upload's size at
/// that moment, which would break the memory bound [`MAX_UPLOADS_IN_FLIGHT`] sets.
async fn read_upload(body: Body, declared: u64) -> Result<Vec<u8>, String> {
    use futures_util::StreamExt;
    let mut out = Vec::with_capacity(declared.min(MAX_UPLOAD as u64) as usize);
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > MAX_UPLOAD {
            return Err("the body is over the limit".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn delete(files: Box<dyn SandboxFiles>, path: String) -> Result<Response, Error> {
    let shown = path.clone();
    blocking(move || files.delete(&path)).await?;
    let body: Value = json!({ "path": shown, "deleted": true });
    Ok(axum::response::IntoResponse::into_response(Json(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_decoding_would_hide_is_refused() {
        let base = "/v1/tenants/demo/sessions/ses_1/files/";
        for bad in [
            "/etc/passwd",
            "etc%2Fpasswd",
            "etc%2fpasswd",
            "a/b%2F..%2Fc",
        ] {
            let e = refuse_what_decoding_hides(&format!("{base}{bad}")).unwrap_err();
            assert_eq!(e.code, nimbus_core::ErrorCode::InvalidArgument, "{bad}");
        }
        for good in ["etc/passwd", "a%20b/c", "x%25y"] {
            refuse_what_decoding_hides(&format!("{base}{good}")).unwrap();
        }
    }
}
