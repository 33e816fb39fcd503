//! Request parsing at the edge: JSON bodies with a size limit and field-named errors, and
//! query strings with known keys only. The extractors also refuse HTTP's conditional request
//! headers (see [`refuse_conditional_headers`]).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use nimbus_core::Error;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The largest request body accepted. Sandbox specs with large environments fit well within it.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body parsed into `T` (which rejects unknown fields). Errors name the field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Self::Rejection> {
        refuse_conditional_headers(req.headers())?;
        // The body must parse as JSON whatever Content-Type says (curl's default is a form type).
        let bytes = read_body(req).await?;
        parse_json(&bytes).map(JsonBody).map_err(ApiError)
    }
}

/// The request's body, at most [`MAX_BODY_BYTES`]. A compressed body is refused by name:
/// read as it is, it would only fail as "malformed JSON".
async fn read_body(req: Request<Body>) -> Result<axum::body::Bytes, ApiError> {
    let (parts, body) = req.into_parts();
    read_body_of(&parts.headers, body).await
}

async fn read_body_of(
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    if let Some(encoding) = headers.get(axum::http::header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(ApiError(Error::invalid_argument(
                "",
                format!(
                    "Content-Encoding {encoding:?} is not supported; send the body uncompressed"
                ),
            )));
        }
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError(Error::invalid_argument(
                "",
                format!(
                    "the request body is larger than {MAX_BODY_BYTES} bytes or could not be read"
                ),
            ))
        })
}

/// Parses JSON into `T`, naming the offending field (`spec.process.argv[0]`) on error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid_argument(
            "",
            "the request body is empty; send a JSON object",
        ));
    }
    // serde would take `[a, b, c]` for a struct, matching values to fields by position: a body
    // is an object with named fields, whatever the order of the fields in the code.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let found = match serde_json::from_slice::<serde_json::Value>(bytes) {
            // Not JSON at all: the parse below says where it breaks.
            Ok(serde_json::Value::Object(_)) | Err(_) => None,
            Ok(v) => Some(nimbus_core::spec::json_kind(&v)),
        };
        if let Some(found) = found {
            return Err(Error::invalid_argument(
                "",
                format!("the request body must be a JSON object ({{\"name\": …}}), not {found}"),
            ));
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let mut field = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        let mut text = inner.to_string();
        // An error from inside a tagged variant carries its path below the variant.
        while let Some((below, rest)) = text
            .strip_prefix(nimbus_core::spec::NESTED_PATH_PREFIX)
            .and_then(|r| r.split_once("`: "))
        {
            field = join_path(&field, below);
            text = rest.to_string();
        }
        // serde reports a missing field at its parent; name the field itself.
        if let Some(missing) = text
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            field = join_path(&field, missing);
        }
        // serde_json calls a value of the wrong kind where it reads an enum (a channel, a
        // profile: `5`, `{}`) a syntax error; in a body that is JSON all the same, it is not.
        let body: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
        let message = if (inner.is_syntax() || inner.is_eof()) && body.is_none() {
            field = String::new();
            format!("malformed JSON: {inner}")
        } else if let Some(at) = redacted_value_in(body.as_ref()) {
            // A read-modify-write sent back what a read shows in place of a secret; serde's
            // "invalid type: map" (at the enclosing tagged field at best) would not say so.
            field = at;
            "this value reads back as {\"redacted\": true} (reads never return secrets, \
             arguments or environments); send the value itself"
                .to_string()
        } else {
            // serde's own text, without its line/column suffix, in words.
            let text = match text.rfind(" at line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            let received = body.as_ref().and_then(|b| value_at(b, &field));
            in_words(&text, received)
        };
        Error::invalid_argument(&field, message)
    })?;
    // One JSON value and nothing after it: `{…}garbage` or two objects are refused, not cut short.
    de.end().map_err(|e| {
        Error::invalid_argument(
            "",
            format!(
                "malformed JSON: {e} after the request's JSON value; send exactly one JSON object"
            ),
        )
    })?;
    Ok(value)
}

/// `parent.child`, or `parent[0]` for an index; either side may be empty.
fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else if child.is_empty() || child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

/// serde's data error `text` in words a user of the API knows: JSON's kinds of value rather
/// than Rust's types (`expected u64` is "expected a whole number of 0 or more"), with the value
/// received. `received` is the value at the error's field, where it is known. Text that is
/// not one of serde's forms (the spec's own messages) is kept as it is.
fn in_words(text: &str, received: Option<&serde_json::Value>) -> String {
    // "invalid type: string \"1\", expected i64" (or "invalid value"); the received part may
    // hold ", expected " itself (a string value), the expected part never does.
    let typed = text
        .strip_prefix("invalid type: ")
        .or_else(|| text.strip_prefix("invalid value: "))
        .and_then(|rest| rest.rsplit_once(", expected "));
    if let Some((got, expected)) = typed {
        return format!(
            "expected {}, got {}",
            expected_in_words(expected),
            received_in_words(got)
        );
    }
    // "invalid length 0, expected struct SessionTarget with 2 elements": an array where an
    // object belongs (serde reads a struct from an array by position).
    if let Some((_, expected)) = text
        .strip_prefix("invalid length ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        return format!("expected {}, got an array", expected_in_words(expected));
    }
    // An enum's value must be a string (see `parse_json`).
    if text == "expected value" {
        return match received {
            Some(v) => format!("expected a string, got {}", describe(v)),
            None => "expected a string".to_string(),
        };
    }
    // "unknown variant `tarball`, expected `reference` or `build`"
    if let Some((value, expected)) = text
        .strip_prefix("unknown variant `")
        .and_then(|rest| rest.rsplit_once("`, expected "))
    {
        return format!(
            "unknown value {value:?}; expected {}",
            expected.replace('`', "\"")
        );
    }
    text.to_string()
}

/// What serde expected (`u64`, `struct ServiceTarget`, `a sequence`), in JSON's words.
fn expected_in_words(expected: &str) -> String {
    let words = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "u128" | "usize" => "a whole number of 0 or more",
        "i8" => "an integer from -128 to 127",
        "i16" => "an integer from -32768 to 32767",
        "i32" => "an integer from -2147483648 to 2147483647",
        "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        "a map" => "an object",
        "a character" => "a string of one character",
        "unit" => "null",
        e if e.starts_with("struct ") => "an object",
        e if e.starts_with("internally tagged enum ") => "an object with a \"kind\"",
        e => {
            if let Some(n) = e
                .strip_prefix("a tuple of size ")
                .or_else(|| e.strip_prefix("tuple struct "))
            {
                return format!("an array of {n} items");
            }
            return e.replace('`', "\"");
        }
    };
    words.to_string()
}

/// What serde received (`integer \`-5\``, `string "br"`, `map`), in JSON's words.
fn received_in_words(got: &str) -> String {
    let quoted = |kind: &str| {
        got.strip_prefix(kind)
            .and_then(|r| r.strip_prefix(" `"))
            .and_then(|r| r.strip_suffix('`'))
    };
    if let Some(v) = quoted("integer").or_else(|| quoted("boolean")) {
        return v.to_string();
    }
    // `1e3`, `-0` and integers past 2^64 arrive as floating point: say so, or "expected a
    // whole number, got 1000.0" reads as a contradiction.
    if let Some(v) = quoted("floating point") {
        return format!("{v} (a number with a fraction or an exponent, or too large)");
    }
    if let Some(s) = got.strip_prefix("string ") {
        return format!("the string {s}");
    }
    match got {
        "map" => "an object".to_string(),
        "sequence" => "an array".to_string(),
        "unit" | "null" => "null".to_string(),
        other => other.to_string(),
    }
}

/// A JSON value as a message shows what was received.
fn describe(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => format!("the string {s:?}"),
        serde_json::Value::Array(_) => "an array".to_string(),
        serde_json::Value::Object(_) => "an object".to_string(),
        other => other.to_string(),
    }
}

/// The value at `path` (`spec.process.argv[1]`, as errors name fields) in `body`.
fn value_at<'a>(body: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    let mut at = body;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            at = at.get(key)?;
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            at = at.get(index.strip_suffix(']')?.parse::<usize>().ok()?)?;
        }
    }
    Some(at)
}

/// The path (`backend.auth.token`) of the first object in the body that is a redaction marker
/// (`{"redacted": true, …}`), as responses show secrets and sandbox inputs.
fn redacted_value_in(value: Option<&serde_json::Value>) -> Option<String> {
    fn find(v: &serde_json::Value, path: String) -> Option<String> {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            serde_json::Value::Object(m) if m.get("redacted") == Some(&true.into()) => Some(path),
            serde_json::Value::Object(m) => m.iter().find_map(|(k, v)| find(v, join(k))),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| find(v, format!("{path}[{i}]"))),
            _ => None,
        }
    }
    find(value?, String::new())
}

/// For calls that take no request body (`POST …/start`): an empty body, or an empty JSON
/// object for clients that always send one. Anything else is refused as any body is.
pub struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        refuse_conditional_headers(&parts.headers)?;
        refuse_body(&parts.headers, body).await.map(|()| NoBody)
    }
}

/// Reads a request's body and refuses anything but an empty one or an empty JSON object.
pub async fn refuse_body(headers: &axum::http::HeaderMap, body: Body) -> Result<(), ApiError> {
    let bytes = read_body_of(headers, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let refuse = |field: &str, why: String| {
        ApiError(Error::invalid_argument(
            field,
            format!("this call takes no request body (or an empty object): {why}"),
        ))
    };
    let object = parse_json::<serde_json::Map<String, serde_json::Value>>(&bytes)
        .map_err(|e| refuse("", e.message))?;
    match object.keys().next() {
        None => Ok(()),
        Some(key) => Err(refuse(key, format!("unknown field `{key}`"))),
    }
}

/// For calls that take no query parameters: any parameter is refused, as unknown ones are
/// where some are taken.
pub struct NoQuery;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        refuse_conditional_headers(&parts.headers)?;
        QueryParams::parse(parts.uri.query(), &[])
            .map(|_| NoQuery)
            .map_err(ApiError)
    }
}

/// For calls that take a query of their own and no body (lists, a service's delete, logs):
/// refuses conditional request headers, as [`JsonBody`], [`NoBody`] and [`NoQuery`] do.
pub struct Unconditional;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Unconditional {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        refuse_conditional_headers(&parts.headers).map(|()| Unconditional)
    }
}

/// HTTP's preconditions `If-Match` and `If-None-Match` are refused rather than ignored: the
/// API has no ETags, and a client that sent `If-Match` believes its write is guarded when it is
/// not. The API's own preconditions are `ifMatchGeneration` (an update's body, a delete's
/// query) and `ifMatchResourceVersion` (an update's body).
pub fn refuse_conditional_headers(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    use axum::http::header::IF_UNMODIFIED_SINCE;
    use axum::http::header::{IF_MATCH, IF_NONE_MATCH};
    let name = if headers.contains_key(IF_MATCH) {
        "If-Match"
    } else if headers.contains_key(IF_NONE_MATCH) {
        "If-None-Match"
    } else if headers.contains_key(IF_UNMODIFIED_SINCE) {
        "If-Unmodified-Since"
    } else {
        return Ok(());
    };
    Err(ApiError(Error::invalid_argument(
        name,
        "conditional request headers are not supported (the API has no ETags); guard a write \
         with ifMatchGeneration instead (in an update's body, or ?ifMatchGeneration= on a \
         delete), and with ifMatchResourceVersion in an update's body",
    )))
}

/// A query string as known key/value pairs. Unknown keys are rejected so typos are noticed.
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<QueryParams, Error> {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k).map_err(|why| Error::invalid_argument(k, why))?;
            let v = percent_decode(v).map_err(|why| Error::invalid_argument(&k, why))?;
            // `?waitUntil=` is a mistake (a variable that was empty), not the default.
            if v.is_empty() && allowed.contains(&k.as_str()) {
                return Err(Error::invalid_argument(
                    &k,
                    "has no value; give one, or leave the parameter out for the default",
                ));
            }
            if !allowed.contains(&k.as_str()) {
                return Err(Error::invalid_argument(
                    &k,
                    format!(
                        "unknown query parameter; this call accepts {}",
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(Error::invalid_argument(&k, "given more than once"));
            }
        }
        Ok(QueryParams(map))
    }

    /// Every parameter given, in no particular order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn u32(&self, key: &str, min: u32, max: u32) -> Result<Option<u32>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .map(Some)
                .ok_or_else(|| {
                    Error::invalid_argument(
                        key,
                        format!("{v:?} must be a whole number from {min} to {max}"),
                    )
                }),
        }
    }

    pub fn i64(&self, key: &str) -> Result<Option<i64>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| Error::invalid_argument(key, format!("{v:?} must be a whole number"))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool, Error> {
        match self.get(key) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(Error::invalid_argument(
                key,
                format!("{v:?} must be true or false"),
            )),
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => out.push(b),
                    None => return Err("has a malformed percent escape".into()),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "is not valid UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct ServiceBody {
        backend: nimbus_core::spec::ServiceBackend,
    }

    fn backend_error(backend: &str) -> (String, String) {
        let body = format!(r#"{{"backend": {backend}}}"#);
        let e = parse_json::<ServiceBody>(body.as_bytes()).unwrap_err();
        let field = e.details["field"].as_str().unwrap_or("").to_string();
        (field, e.message)
    }

    #[test]
    fn errors_inside_a_service_backend_name_their_place() {
        let sandbox = |process: &str| {
            format!(
                r#"{{"kind": "sandbox", "sandbox": {{"owner": {{"kind": "service", "serviceName": "w"}},
                "backend": "container", "root": {{"kind": "rootfs", "path": "/srv/r"}}, "process": {process}}}}}"#
            )
        };
        let sandbox_root = |root: &str| {
            format!(
                r#"{{"kind": "sandbox", "sandbox": {{"owner": {{"kind": "service", "serviceName": "w"}},
                "backend": "container", "root": {root}, "process": {{"argv": ["sh"]}}}}}}"#
            )
        };
        for (backend, field, says) in [
            (
                sandbox(r#"{"argv": ["sh", 5]}"#),
                "backend.sandbox.process.argv[1]",
                "expected a string",
            ),
            (
                sandbox(r#"{"argv": ["sh"], "environment": {"A": "1", "A": "2"}}"#),
                "backend.sandbox.process.environment",
                "given twice",
            ),
            (
                sandbox(r#"{"argv": ["sh"], "bogus": 1}"#),
                "backend.sandbox.process.bogus",
                "unknown field `bogus`",
            ),
            (
                sandbox(r#"{}"#),
                "backend.sandbox.process.argv",
                "missing field `argv`",
            ),
            (
                sandbox_root(r#"{"kind": "oci_image", "source": {"kind": "reference"}}"#),
                "backend.sandbox.root.source.reference",
                "missing field `reference`",
            ),
            (
                sandbox_root(
                    r#"{"kind": "oci_image", "source": {"kind": "build", "context": "/c"}}"#,
                ),
                "backend.sandbox.root.source.dockerfile",
                "missing field `dockerfile`",
            ),
            (
                sandbox_root(
                    r#"{"kind": "oci_image", "source": {"kind": "reference", "reference": 1}}"#,
                ),
                "backend.sandbox.root.source.reference",
                "expected a string",
            ),
            (
                sandbox_root(r#"{"kind": "oci_image", "source": {"kind": "tarball"}}"#),
                "backend.sandbox.root.source.kind",
                "unknown value \"tarball\"; expected one of \"reference\", \"build\"",
            ),
            (
                sandbox_root(r#"{"kind": "rootfs", "path": "/r", "x": 1}"#),
                "backend.sandbox.root.x",
                "unknown field `x`",
            ),
            (
                sandbox_root(r#"{"kind": "rootfs"}"#),
                "backend.sandbox.root.path",
                "missing field `path`",
            ),
            (
                r#"{"kind": "external", "endpoint": {"url": "http://a"}, "health": {"kind": "http", "expectStatus": {"min": 200}}}"#.into(),
                "backend.health.expectStatus.max",
                "missing field `max`",
            ),
            (
                r#"{"kind": "external", "endpoint": {"url": "http://a"}, "health": {"kind": "tcp", "path": "/"}}"#.into(),
                "backend.health.path",
                "unknown field `path`",
            ),
            (
                r#"{"kind": "external", "endpoint": {"url": 5}}"#.into(),
                "backend.endpoint.url",
                "expected a string",
            ),
            (
                r#"{"kind": "builtIn", "provider": "browser", "x": 1}"#.into(),
                "backend.x",
                "unknown field `x`",
            ),
            (
                r#"{"kind": "sandboxx"}"#.into(),
                "backend.kind",
                "unknown value \"sandboxx\"; expected one of \"sandbox\", \"builtIn\", \"external\"",
            ),
            (
                r#"{"provider": "browser"}"#.into(),
                "backend.kind",
                "missing field `kind`",
            ),
            (
                r#"[1]"#.into(),
                "backend",
                "expected an object with a \"kind\"",
            ),
        ] {
            let (got_field, message) = backend_error(&backend);
            assert_eq!(got_field, field, "{backend}: {message}");
            assert!(message.contains(says), "{backend}: {message}");
            assert!(
                !message.contains("at `") && !message.contains(" line "),
                "{message}"
            );
        }
        // And a good one still reads, whatever the order of its keys.
        let ok = r#"{"backend": {"provider": "browser", "kind": "builtIn"}}"#;
        assert!(parse_json::<ServiceBody>(ok.as_bytes()).is_ok());
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Inner,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Body>(br#"{"name": "a", "inner": {"count": "x"}}"#).unwrap_err();
        assert_eq!(e.details["field"], "inner.count");
        let e =
            parse_json::<Body>(br#"{"name": "a", "inner": {"count": 1}, "extra": 1}"#).unwrap_err();
        assert!(e.message.contains("extra"), "{}", e.message);
        let e = parse_json::<Body>(br#"{"name": "a", "inner": {}}"#).unwrap_err();
        assert_eq!(e.details["field"], "inner.count");
        let e = parse_json::<Body>(b"{not json").unwrap_err();
        assert!(e.message.starts_with("malformed JSON"));
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Typed {
        #[serde(default)]
        ttl_ms: Option<u64>,
        #[serde(default)]
        generation: Option<i64>,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        cpus: Option<f64>,
        #[serde(default)]
        on: Option<bool>,
        #[serde(default)]
        names: Option<Vec<String>>,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        profile: Option<nimbus_core::spec::Profile>,
        #[serde(default)]
        profiles: Option<Vec<nimbus_core::spec::Profile>>,
    }

    #[test]
    fn type_errors_say_what_was_expected_in_words_and_what_came() {
        for (body, field, says) in [
            (
                r#"{"ttlMs": -5}"#,
                "ttlMs",
                "expected a whole number of 0 or more, got -5",
            ),
            (
                r#"{"ttlMs": 1.5}"#,
                "ttlMs",
                "expected a whole number of 0 or more, got 1.5 (a number with a fraction or an exponent, or too large)",
            ),
            (
                r#"{"ttlMs": 1e3}"#,
                "ttlMs",
                "expected a whole number of 0 or more, got 1000.0 (a number with a fraction or an exponent, or too large)",
            ),
            (
                r#"{"generation": "1"}"#,
                "generation",
                "expected an integer, got the string \"1\"",
            ),
            (
                r#"{"port": 70000}"#,
                "port",
                "expected a whole number from 0 to 65535, got 70000",
            ),
            (r#"{"cpus": true}"#, "cpus", "expected a number, got true"),
            (
                r#"{"on": "yes"}"#,
                "on",
                "expected true or false, got the string \"yes\"",
            ),
            (
                r#"{"names": "a"}"#,
                "names",
                "expected an array, got the string \"a\"",
            ),
            (
                r#"{"names": {}}"#,
                "names",
                "expected an array, got an object",
            ),
            (
                r#"{"names": [null]}"#,
                "names[0]",
                "expected a string, got null",
            ),
            (
                r#"{"inner": "br"}"#,
                "inner",
                "expected an object, got the string \"br\"",
            ),
            (
                r#"{"inner": []}"#,
                "inner",
                "expected an object, got an array",
            ),
            (
                r#"{"inner": {"count": []}}"#,
                "inner.count",
                "expected a whole number from 0 to 4294967295, got an array",
            ),
            (r#"{"profile": 5}"#, "profile", "expected a string, got 5"),
            (
                r#"{"profiles": ["worker", {}]}"#,
                "profiles[1]",
                "expected a string, got an object",
            ),
            (
                r#"{"profile": "big"}"#,
                "profile",
                "unknown value \"big\"; expected \"worker\" or \"desktop\"",
            ),
            // A string value holding serde's own separator is still read right.
            (
                r#"{"generation": "x, expected y"}"#,
                "generation",
                "expected an integer, got the string \"x, expected y\"",
            ),
        ] {
            let e = parse_json::<Typed>(body.as_bytes()).unwrap_err();
            assert_eq!(e.details["field"], field, "{body}: {}", e.message);
            assert_eq!(e.message, format!("{field}: {says}"), "{body}");
        }
        // Malformed JSON is still said to be.
        let e = parse_json::<Typed>(br#"{"profile": }"#).unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
    }

    #[test]
    fn unknown_query_parameters_are_rejected() {
        assert!(QueryParams::parse(Some("limit=5&pageToken=x"), &["limit", "pageToken"]).is_ok());
        let e = QueryParams::parse(Some("limt=5"), &["limit"])
            .err()
            .unwrap();
        assert_eq!(e.details["field"], "limt");
        let q = QueryParams::parse(Some("limit=0"), &["limit"])
            .ok()
            .unwrap();
        assert!(q.u32("limit", 1, 1000).is_err());
        let q = QueryParams::parse(Some("labelValue=a%20b"), &["labelValue"])
            .ok()
            .unwrap();
        assert_eq!(q.get("labelValue"), Some("a b"));
    }
}
