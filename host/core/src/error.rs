//! The one error type of the API, with its stable codes. The catalog is append-only and is
//! mirrored in `docs/errors.md` (a test checks the two agree).

use std::fmt;

use serde_json::{json, Map, Value};

/// Every stable error code, with the HTTP status it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    Conflict,
    InvalidTransition,
    PreconditionFailed,
    QuotaExhausted,
    NotSupported,
    RuntimeUnavailable,
    Internal,
    MethodNotAllowed,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::Conflict,
        ErrorCode::InvalidTransition,
        ErrorCode::PreconditionFailed,
        ErrorCode::QuotaExhausted,
        ErrorCode::NotSupported,
        ErrorCode::RuntimeUnavailable,
        ErrorCode::Internal,
        ErrorCode::MethodNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "request.invalid_argument",
            ErrorCode::Unauthenticated => "auth.unauthenticated",
            ErrorCode::PermissionDenied => "auth.permission_denied",
            ErrorCode::NotFound => "resource.not_found",
            ErrorCode::AlreadyExists => "resource.already_exists",
            ErrorCode::Conflict => "resource.conflict",
            ErrorCode::InvalidTransition => "state.invalid_transition",
            ErrorCode::PreconditionFailed => "op.precondition_failed",
            ErrorCode::QuotaExhausted => "quota.exhausted",
            ErrorCode::NotSupported => "op.not_supported",
            ErrorCode::RuntimeUnavailable => "runtime.unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::MethodNotAllowed => "request.method_not_allowed",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::Conflict | ErrorCode::InvalidTransition => 409,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::QuotaExhausted => 429,
            ErrorCode::NotSupported => 501,
            ErrorCode::RuntimeUnavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::MethodNotAllowed => 405,
        }
    }
}

/// An API error: a stable code, a message that says what went wrong and what to do, and
/// `details` holding every value the message mentions. `cause` is for the server log only and
/// is never sent to the caller.
#[derive(Debug, Clone)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub details: Map<String, Value>,
    pub cause: Option<String>,
}

fn details(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>, detail: Value) -> Self {
        Error {
            code,
            message: message.into(),
            details: details(detail),
            cause: None,
        }
    }

    /// A bad request naming the offending field (`spec.process.argv`, `pageToken`, …).
    pub fn invalid_argument(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = if field.is_empty() {
            message
        } else {
            format!("{field}: {message}")
        };
        Error::new(
            ErrorCode::InvalidArgument,
            message,
            json!({ "field": field }),
        )
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unauthenticated, message, json!({}))
    }

    pub fn permission_denied(action: &str, reason: &str) -> Self {
        Error::new(
            ErrorCode::PermissionDenied,
            format!("permission denied for {action}: {reason}"),
            json!({ "action": action, "reason": reason }),
        )
    }

    pub fn not_found(kind: &str, name: &str) -> Self {
        Error::new(
            ErrorCode::NotFound,
            format!("{kind} {name:?} does not exist"),
            json!({ "kind": kind, "name": name }),
        )
    }

    pub fn already_exists(kind: &str, name: &str) -> Self {
        // A tenant is its name alone: there is no call that updates one.
        let advice = if kind == "tenant" {
            "choose another name, or use the existing one"
        } else {
            "choose another name or update the existing one"
        };
        Error::new(
            ErrorCode::AlreadyExists,
            format!("{kind} {name:?} already exists; {advice}"),
            json!({ "kind": kind, "name": name }),
        )
    }

    pub fn conflict(kind: &str, name: &str, message: impl Into<String>) -> Self {
        Error::new(
            ErrorCode::Conflict,
            message,
            json!({ "kind": kind, "name": name }),
        )
    }

    pub fn invalid_transition(
        kind: &str,
        name: &str,
        state: &str,
        message: impl Into<String>,
    ) -> Self {
        Error::new(
            ErrorCode::InvalidTransition,
            message,
            json!({ "kind": kind, "name": name, "state": state }),
        )
    }

    pub fn precondition_failed(kind: &str, name: &str, current: i64, expected: i64) -> Self {
        Error::new(
            ErrorCode::PreconditionFailed,
            format!(
                "{kind} {name:?} is at generation {current}, not {expected}; re-read it and retry"
            ),
            json!({ "kind": kind, "name": name, "currentGeneration": current, "expectedGeneration": expected }),
        )
    }

    /// `ifMatchResourceVersion` named another write than the last one.
    pub fn resource_version_mismatch(
        kind: &str,
        name: &str,
        current: &str,
        expected: &str,
    ) -> Self {
        Error::new(
            ErrorCode::PreconditionFailed,
            format!(
                "{kind} {name:?} is at resourceVersion {current}, not {expected}: it was written since you read it; re-read it and retry"
            ),
            json!({ "kind": kind, "name": name, "currentResourceVersion": current, "expectedResourceVersion": expected }),
        )
    }

    pub fn quota_exhausted(message: impl Into<String>, detail: Value) -> Self {
        Error::new(ErrorCode::QuotaExhausted, message, detail)
    }

    pub fn not_supported(message: impl Into<String>, detail: Value) -> Self {
        Error::new(ErrorCode::NotSupported, message, detail)
    }

    pub fn runtime_unavailable(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::RuntimeUnavailable, message, json!({}))
    }

    /// The host cannot run container sandboxes: each problem says what is wrong and how to
    /// fix it, and `details.problems` lists them.
    pub fn host_unfit(problems: &[String]) -> Self {
        Error::new(
            ErrorCode::RuntimeUnavailable,
            format!(
                "this host cannot run container sandboxes: {}",
                problems.join("; ")
            ),
            json!({ "problems": problems }),
        )
    }

    /// An unexpected fault. The caller sees a generic message; `cause` goes to the log.
    pub fn internal(cause: impl fmt::Display) -> Self {
        Error {
            code: ErrorCode::Internal,
            message: "internal error; the server log has the cause".into(),
            details: Map::new(),
            cause: Some(cause.to_string()),
        }
    }

    /// The JSON body every non-2xx response carries.
    pub fn body(&self) -> Value {
        json!({ "error": { "code": self.code.as_str(), "message": self.message, "details": self.details } })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)?;
        if let Some(cause) = &self.cause {
            write!(f, " ({cause})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {}", c.as_str());
            assert!(c.http_status() >= 400);
        }
    }

    #[test]
    fn catalog_matches_docs() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md");
        let text = std::fs::read_to_string(path).expect("docs/errors.md exists");
        let documented: std::collections::BTreeMap<String, u16> = text
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((code.to_string(), cells.get(2)?.parse().ok()?))
            })
            .collect();
        let in_code: std::collections::BTreeMap<String, u16> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), c.http_status()))
            .collect();
        assert_eq!(documented, in_code, "docs/errors.md and ErrorCode disagree");
    }

    #[test]
    fn internal_errors_never_expose_the_cause() {
        let e = Error::internal("disk I/O error at /var/lib/x");
        assert!(!e.body().to_string().contains("/var/lib/x"));
        assert!(e.to_string().contains("/var/lib/x"));
    }

    #[test]
    fn precondition_failed_names_the_current_generation() {
        let e = Error::precondition_failed("service", "worker", 4, 3);
        assert_eq!(e.code.http_status(), 412);
        assert!(e.message.contains("generation 4, not 3"));
        assert_eq!(e.details["currentGeneration"], 4);
    }

    #[test]
    fn a_taken_tenant_name_is_not_advised_an_update() {
        assert!(Error::already_exists("service", "w")
            .message
            .contains("update the existing one"));
        let e = Error::already_exists("tenant", "demo");
        assert!(!e.message.contains("update"), "{}", e.message);
    }

    #[test]
    fn host_unfit_lists_its_problems_in_details() {
        let problems = vec!["crun: not found".to_string(), "root: not root".to_string()];
        let e = Error::host_unfit(&problems);
        assert_eq!(e.code.http_status(), 503);
        assert_eq!(
            e.message,
            "this host cannot run container sandboxes: crun: not found; root: not root"
        );
        assert_eq!(e.details["problems"], json!(problems));
    }
}
