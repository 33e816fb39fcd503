//! Turning `nimbus_core::Error` into an HTTP response with the documented body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_core::{Error, ErrorCode};

/// The API's error response. Internal causes are logged here and never sent.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.code == ErrorCode::Internal {
            tracing::error!(cause = e.cause.as_deref().unwrap_or(""), "internal error");
        }
        let status =
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(e.body())).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
