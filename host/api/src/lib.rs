//! The Nimbus HTTP API: axum routers, request parsing, authentication, and rendering.
//! Handlers are thin: extract → authorize → one store call → render. This crate never touches
//! SQL, wasmtime or a driver directly.

pub mod app;
pub mod auth;
pub mod control;
pub mod error;
pub mod extract;
pub mod http_metrics;
pub mod openapi;
pub mod pagination;
mod places;
pub mod quota_refusals;
pub mod reaper;
pub mod routes;
pub mod status;
pub mod wire;

use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use nimbus_core::{Error, ErrorCode};
use serde_json::json;

pub use app::{App, SharedApp};

use routes::{admin, files, sandboxes, services, sessions, stdio};

/// One route of the API. `ROUTES` is the single list the router, the OpenAPI document and
/// the route tests are checked against.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub success: u16,
    /// Whether the route needs a credential.
    pub authenticated: bool,
}

const fn r(
    method: &'static str,
    path: &'static str,
    operation_id: &'static str,
    summary: &'static str,
    success: u16,
) -> Route {
    Route {
        method,
        path,
        operation_id,
        summary,
        success,
        authenticated: true,
    }
}

pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/healthz",
        operation_id: "healthz",
        summary: "Liveness check; needs no credential",
        success: 200,
        authenticated: false,
    },
    Route {
        method: "GET",
        path: "/v1/openapi.json",
        operation_id: "openapi",
        summary: "This OpenAPI document",
        success: 200,
        authenticated: false,
    },
    r(
        "POST",
        "/v1/tenants",
        "tenants.create",
        "Create a tenant (server admins only)",
        201,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}",
        "tenants.get",
        "Get a tenant",
        200,
    ),
    r(
        "POST",
        "/v1/tenants/{tenantId}/credentials",
        "credentials.create",
        "Create a credential; the secret is returned once",
        201,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/credentials",
        "credentials.list",
        "List credentials (never their secrets)",
        200,
    ),
    r(
        "DELETE",
        "/v1/tenants/{tenantId}/credentials/{id}",
        "credentials.revoke",
        "Revoke a credential at once",
        200,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/audit",
        "audit.list",
        "List audit events, oldest first",
        200,
    ),
    r(
        "POST",
        "/v1/tenants/{tenantId}/services",
        "services.create",
        "Create a service",
        201,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/services",
        "services.list",
        "List services by name",
        200,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/services/{name}",
        "services.get",
        "Get a service",
        200,
    ),
    r(
        "PUT",
        "/v1/tenants/{tenantId}/services/{name}",
        "services.update",
        "Update a service (ifMatchGeneration required)",
        200,
    ),
    r(
        "DELETE",
        "/v1/tenants/{tenantId}/services/{name}",
        "services.delete",
        "Delete a service (ifMatchGeneration required; force for a started one)",
        200,
    ),
    r(
        "POST",
        "/v1/tenants/{tenantId}/services/{name}/start",
        "services.start",
        "Record that the service should run",
        202,
    ),
    r(
        "POST",
        "/v1/tenants/{tenantId}/services/{name}/stop",
        "services.stop",
        "Record that the service should stop",
        202,
    ),
    r(
        "POST",
        "/v1/tenants/{tenantId}/services/{name}/restart",
        "services.restart",
        "Record a restart of the service",
        202,
    ),
    r(
        "POST",
        "/v1/tenants/{tenantId}/sandboxes",
        "sandboxes.create",
        "Create a standalone sandbox",
        201,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/sandboxes",
        "sandboxes.list",
        "List sandboxes (label and state filters)",
        200,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/sandboxes/{id}",
        "sandboxes.get",
        "Get a sandbox",
        200,
    ),
    r(
        "DELETE",
        "/v1/tenants/{tenantId}/sandboxes/{id}",
        "sandboxes.delete",
        "Delete a sandbox",
        200,
    ),
    r(
        "POST",
        "/v1/tenants/{tenantId}/sandboxes/{id}/stop",
        "sandboxes.stop",
        "Stop a sandbox",
        202,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/sandboxes/{id}/logs",
        "sandboxes.logs",
        "The process's output as text (?follow=true streams until it exits)",
        200,
    ),
    r(
        "POST",
        "/v1/tenants/{tenantId}/sessions",
        "sessions.open",
        "Open a session on a service or a ready sandbox",
        201,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/sessions",
        "sessions.list",
        "List sessions (state filter)",
        200,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/sessions/{id}",
        "sessions.get",
        "Get a session",
        200,
    ),
    r(
        "POST",
        "/v1/tenants/{tenantId}/sessions/{id}/close",
        "sessions.close",
        "Close a session with a reason",
        200,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/sessions/{id}/stdio",
        "sessions.stdio",
        "The session's stdio channel (WebSocket upgrade): stdin in, output out",
        101,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/sessions/{id}/files/{path}",
        "sessions.files.get",
        "Read a file in the session's sandbox (files channel); with ?list, list a directory",
        200,
    ),
    r(
        "PUT",
        "/v1/tenants/{tenantId}/sessions/{id}/files/{path}",
        "sessions.files.put",
        "Write a file in the session's sandbox (files channel)",
        200,
    ),
    r(
        "DELETE",
        "/v1/tenants/{tenantId}/sessions/{id}/files/{path}",
        "sessions.files.delete",
        "Delete a file or empty directory in the session's sandbox (files channel)",
        200,
    ),
    r(
        "GET",
        "/v1/tenants/{tenantId}/sessions/{id}/files/",
        "sessions.files.root",
        "List the root directory of the session's sandbox (files channel, with ?list)",
        200,
    ),
];

/// Builds the router over `app`.
pub fn router(app: SharedApp) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|_: extract::NoQuery| async { Json(json!({ "status": "ok" })) }),
        )
        .route(
            "/v1/openapi.json",
            get(|_: extract::NoQuery| async { Json(openapi::document()) }),
        )
        .route("/v1/tenants", post(admin::create_tenant))
        .route("/v1/tenants/{tenant}", get(admin::get_tenant))
        .route(
            "/v1/tenants/{tenant}/credentials",
            post(admin::create_credential).get(admin::list_credentials),
        )
        .route(
            "/v1/tenants/{tenant}/credentials/{id}",
            axum::routing::delete(admin::revoke_credential),
        )
        .route("/v1/tenants/{tenant}/audit", get(admin::list_audit))
        .route(
            "/v1/tenants/{tenant}/services",
            post(services::create).get(services::list),
        )
        .route(
            "/v1/tenants/{tenant}/services/{name}",
            get(services::get)
                .put(services::update)
                .delete(services::delete),
        )
        .route(
            "/v1/tenants/{tenant}/services/{name}/start",
            post(services::start),
        )
        .route(
            "/v1/tenants/{tenant}/services/{name}/stop",
            post(services::stop),
        )
        .route(
            "/v1/tenants/{tenant}/services/{name}/restart",
            post(services::restart),
        )
        .route(
            "/v1/tenants/{tenant}/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route(
            "/v1/tenants/{tenant}/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route(
            "/v1/tenants/{tenant}/sandboxes/{id}/stop",
            post(sandboxes::stop),
        )
        .route(
            "/v1/tenants/{tenant}/sandboxes/{id}/logs",
            get(sandboxes::logs),
        )
        .route(
            "/v1/tenants/{tenant}/sessions",
            post(sessions::open).get(sessions::list),
        )
        .route("/v1/tenants/{tenant}/sessions/{id}", get(sessions::get))
        .route(
            "/v1/tenants/{tenant}/sessions/{id}/close",
            post(sessions::close),
        )
        .route(
            "/v1/tenants/{tenant}/sessions/{id}/stdio",
            get(stdio::stdio),
        )
        .route(
            "/v1/tenants/{tenant}/sessions/{id}/files/{*path}",
            get(files::with_path)
                .put(files::with_path)
                .delete(files::with_path),
        )
        .route(
            "/v1/tenants/{tenant}/sessions/{id}/files/",
            get(files::root),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(no_body_on_reads_and_deletes))
        .layer(axum::middleware::from_fn(no_conditional_headers))
        .layer(axum::middleware::map_response(json_rejections))
        .with_state(app)
}

/// GET, HEAD and DELETE take no request body: one (other than empty or `{}`) is refused with
/// 400 before the call runs, as on the POSTs that take none, instead of being ignored while the
/// call (a delete, a revocation) goes ahead.
/// Refuses HTTP's conditional request headers on every route, the files channel's included
/// (see [`extract::refuse_conditional_headers`]).
async fn no_conditional_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match extract::refuse_conditional_headers(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => axum::response::IntoResponse::into_response(refused),
    }
}

async fn no_body_on_reads_and_deletes(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let takes_none = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::DELETE
    );
    let headers = request.headers();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if !takes_none || !has_body {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    if let Err(refused) = extract::refuse_body(&parts.headers, body).await {
        return axum::response::IntoResponse::into_response(refused);
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::empty(),
    ))
    .await
}

/// Rejections axum's own extractors answer in plain text (a path segment that is not UTF-8
/// once percent-decoded, e.g. `/services/%FF`) become the API's JSON error like every other
/// bad request.
async fn json_rejections(response: axum::response::Response) -> axum::response::Response {
    let plain_text = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if response.status() != StatusCode::BAD_REQUEST || !plain_text {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let what = if text.is_empty() {
        "the request could not be parsed".to_string()
    } else {
        text
    };
    // axum's path extractor says "Invalid URL: …" (e.g. a segment that is not UTF-8).
    let hint = if what.starts_with("Invalid URL") {
        "path segments must be percent-encoded UTF-8; "
    } else {
        ""
    };
    let message = format!("{what}; {hint}see GET /v1/openapi.json for the API's paths");
    axum::response::IntoResponse::into_response(error::ApiError(Error::invalid_argument(
        "", message,
    )))
}

async fn no_route(method: Method, uri: axum::http::Uri) -> error::ApiError {
    error::ApiError(Error::new(
        ErrorCode::NotFound,
        format!(
            "no route {method} {}; see GET /v1/openapi.json for the API",
            uri.path()
        ),
        json!({ "kind": "route", "name": uri.path() }),
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> error::ApiError {
    error::ApiError(Error::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{method} is not allowed on {}; see GET /v1/openapi.json for the methods it takes",
            uri.path()
        ),
        json!({ "method": method.as_str(), "path": uri.path() }),
    ))
}

/// For tests: the status a route answers when it does exist but the target does not.
pub fn is_routing_miss(status: StatusCode, body: &serde_json::Value) -> bool {
    status == StatusCode::METHOD_NOT_ALLOWED || body["error"]["details"]["kind"] == "route"
}
