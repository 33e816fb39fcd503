//! `/v1/tenants/{t}/sessions`.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{Duration, Utc};
use nimbus_core::authz::{actions, Principal, ResourceKind};
use nimbus_core::lifecycle::{SandboxState, SessionEvent, SessionState};
use nimbus_core::names::{Name, SessionId};
use nimbus_core::resource::{
    Channel, Meta, SessionRecord, SessionSpec, SessionStatus, SessionTarget, TargetSnapshot,
};
use nimbus_core::spec::{BuiltInProvider, ServiceBackend};
use nimbus_core::Error;
use nimbus_store::TargetGuard;
use serde::Deserialize;
use serde_json::Value;

use crate::app::{target_of, tenant_name, Caller, SharedApp};
use crate::error::ApiResult;
use crate::extract::{JsonBody, NoQuery, QueryParams, Unconditional};
use crate::pagination::Paging;
use crate::wire;

pub const DEFAULT_TTL_MS: u64 = 15 * 60 * 1000;
pub const MAX_TTL_MS: u64 = 60 * 60 * 1000;
pub const MIN_TTL_MS: u64 = 1000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenSession {
    target: SessionTarget,
    /// Names, read into [`Channel`]s once the target is known, so that an unknown one is
    /// refused saying what the target offers.
    channels: Vec<String>,
    #[serde(default)]
    requested_ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloseSession {
    reason: String,
}

/// `(kind, name-or-id)` of a target that names exactly one thing.
fn target_key(target: &SessionTarget) -> Result<(ResourceKind, String), Error> {
    match (&target.service, &target.sandbox) {
        (Some(s), None) => Ok((ResourceKind::Service, s.name.to_string())),
        (None, Some(s)) => Ok((ResourceKind::Sandbox, s.id.to_string())),
        _ => Err(Error::invalid_argument(
            "target",
            "give exactly one of {\"service\": {\"name\": …}} or {\"sandbox\": {\"id\": …}}",
        )),
    }
}

/// The channels a target can offer.
fn allowed_channels(backend: &ServiceBackend) -> &'static [Channel] {
    match backend {
        ServiceBackend::Sandbox { .. } => &[Channel::Stdio, Channel::Files],
        ServiceBackend::BuiltIn {
            provider: BuiltInProvider::Browser,
        } => &[Channel::Cdp, Channel::Page],
        ServiceBackend::BuiltIn { .. } | ServiceBackend::External { .. } => &[],
    }
}

/// A service target as messages name it: "sandbox-backed service", "built-in browser
/// service", "external service".
fn service_target_kind(backend: &ServiceBackend) -> String {
    match backend {
        ServiceBackend::Sandbox { .. } => "sandbox-backed service".to_string(),
        ServiceBackend::BuiltIn { provider } => format!(
            "built-in {} service",
            serde_json::to_value(provider)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
        ServiceBackend::External { .. } => "external service".to_string(),
    }
}

/// `kind` with its indefinite article: "a sandbox", "an external service".
fn with_article(kind: &str) -> String {
    let vowel = kind
        .chars()
        .next()
        .is_some_and(|c| "aeiouAEIOU".contains(c));
    format!("{} {kind}", if vowel { "an" } else { "a" })
}

/// Reads the requested channel names into channels `target_kind` offers (`allowed`): one or
/// more, each known, offered and listed once. Errors name the channel and the target's kind,
/// and say what it offers.
fn check_channels(
    names: &[String],
    allowed: &[Channel],
    target_kind: &str,
) -> Result<Vec<Channel>, Error> {
    let target = format!("{} target", with_article(target_kind));
    let offers = if allowed.is_empty() {
        "no channels: sessions cannot be opened on it".to_string()
    } else {
        allowed
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let refuse = |field: &str, channel: Option<&str>, message: String| {
        let mut e = Error::invalid_argument(field, message);
        if let Some(c) = channel {
            e.details.insert("channel".into(), c.into());
        }
        e.details.insert("targetKind".into(), target_kind.into());
        e.details.insert(
            "offered".into(),
            allowed
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .into(),
        );
        e
    };
    if names.is_empty() {
        let message = if allowed.is_empty() {
            format!("{target} offers {offers}")
        } else {
            format!("is empty: a session is opened for one or more channels, and {target} offers {offers}")
        };
        return Err(refuse("channels", None, message));
    }
    let mut channels = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let field = format!("channels[{i}]");
        let Some(c) = Channel::parse(name) else {
            let all = Channel::ALL.map(Channel::as_str).join(", ");
            return Err(refuse(
                &field,
                Some(name),
                format!(
                    "unknown channel {name:?}; channels are {all}, and {target} offers {offers}"
                ),
            ));
        };
        if channels.contains(&c) {
            return Err(refuse(
                &field,
                Some(name),
                format!("channel {name:?} is listed twice"),
            ));
        }
        if !allowed.contains(&c) {
            return Err(refuse(
                &field,
                Some(name),
                format!("channel {name:?} is not offered by {target}, which offers {offers}"),
            ));
        }
        channels.push(c);
    }
    Ok(channels)
}

fn session_context(s: &SessionRecord) -> Vec<(String, String)> {
    vec![
        ("createdBy".into(), s.created_by.clone()),
        ("targetKind".into(), s.spec.target_snapshot.kind.clone()),
        (
            "targetName".into(),
            s.spec
                .target_snapshot
                .name
                .clone()
                .or_else(|| s.spec.target_snapshot.id.clone())
                .unwrap_or_default(),
        ),
    ]
}

pub async fn open(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<OpenSession>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = tenant_name(&tenant)?;
    let (kind, key) = target_key(&body.target)?;
    let context = vec![
        ("targetKind".to_string(), kind.as_str().to_string()),
        ("targetName".to_string(), key.clone()),
    ];
    // A refusal is audited under what the session was to reach: that is what a reader of the
    // audit log asks about.
    app.authorize_audited_as(
        &p,
        actions::SESSIONS_OPEN,
        &tenant,
        ResourceKind::Session,
        None,
        context,
        &target_of(kind, Some(&key)),
    )
    .await?;
    app.require_tenant(&tenant).await?;
    let ttl_requested = body.requested_ttl_ms;
    if let Some(t) = ttl_requested {
        if t < MIN_TTL_MS {
            return Err(Error::invalid_argument(
                "requestedTtlMs",
                format!("must be at least {MIN_TTL_MS} ms"),
            )
            .into());
        }
    }
    let (channels, snapshot, guard) = match (&body.target.service, &body.target.sandbox) {
        (Some(s), _) => {
            let service = app
                .store
                .get_service(&tenant, &s.name)
                .await?
                .ok_or_else(|| Error::not_found("service", s.name.as_str()))?;
            let channels = check_channels(
                &body.channels,
                allowed_channels(&service.backend),
                &service_target_kind(&service.backend),
            )?;
            (
                channels,
                TargetSnapshot {
                    kind: "service".into(),
                    name: Some(s.name.to_string()),
                    id: None,
                    generation: service.meta.generation,
                    backend: service.backend.kind().into(),
                },
                TargetGuard::Service {
                    name: s.name.clone(),
                    generation: service.meta.generation,
                },
            )
        }
        (_, Some(s)) => {
            let sandbox = app
                .store
                .get_sandbox(&tenant, s.id.as_str())
                .await?
                .ok_or_else(|| Error::not_found("sandbox", s.id.as_str()))?;
            let channels =
                check_channels(&body.channels, &[Channel::Stdio, Channel::Files], "sandbox")?;
            let state = sandbox.status.lifecycle_state;
            if state != SandboxState::Ready {
                return Err(Error::invalid_transition("sandbox", s.id.as_str(), state.as_str(), format!("sandbox {} is {}; sessions need a ready sandbox — wait until status.lifecycleState is \"ready\"", s.id, state.as_str())).into());
            }
            (
                channels,
                TargetSnapshot {
                    kind: "sandbox".into(),
                    name: None,
                    id: Some(s.id.to_string()),
                    generation: sandbox.meta.generation,
                    backend: TargetSnapshot::sandbox_backend(sandbox.spec.backend).into(),
                },
                TargetGuard::Sandbox {
                    id: s.id.to_string(),
                },
            )
        }
        (None, None) => return Err(Error::invalid_argument("target", "is empty").into()),
    };
    let now = Utc::now();
    let wanted = ttl_requested.unwrap_or(DEFAULT_TTL_MS);
    let ttl_ms = wanted.min(MAX_TTL_MS);
    let id = SessionId::generate();
    let mut record = SessionRecord {
        id: id.clone(),
        meta: Meta::new(tenant.clone(), Default::default(), now),
        created_by: p.id.clone(),
        spec: SessionSpec {
            target: body.target,
            channels,
            requested_ttl_ms: ttl_requested,
            ttl_ms,
            ttl_clamped: wanted > MAX_TTL_MS,
            expires_at: now + Duration::milliseconds(i64::try_from(ttl_ms).unwrap_or(i64::MAX)),
            target_snapshot: snapshot,
        },
        status: SessionStatus {
            lifecycle_state: SessionState::Open,
            close_reason: None,
            ended_at: None,
        },
    };
    let audit = app.event(
        &p,
        &tenant,
        actions::SESSIONS_OPEN,
        &format!("session/{id}"),
        "allow",
        &format!("target {}", target_of(kind, Some(&key))),
    );
    app.store
        .open_session(
            &mut record,
            &guard,
            app.limits.open_sessions_per_tenant,
            &audit,
        )
        .await?;
    app.reaper_wake.notify_one();
    Ok((StatusCode::CREATED, Json(wire::session(&record))))
}

/// Loads a session for `action` by `p`: tenant isolation first, then the policy, with the
/// session's facts (opener, target) when it exists and without them when it does not (so a
/// missing id is refused like one the caller may not see, and found missing only by a caller
/// who could read it).
async fn load(
    app: &SharedApp,
    p: &Principal,
    tenant: &Name,
    id: &str,
    action: &str,
) -> Result<SessionRecord, Error> {
    load_for_channel(app, p, tenant, id, action, None).await
}

/// [`load`] for using one of the session's channels: the policy also sees `channel`
/// (`stdio`, `files`), so a policy can allow one and not the other.
pub(crate) async fn load_for_channel(
    app: &SharedApp,
    p: &Principal,
    tenant: &Name,
    id: &str,
    action: &str,
    channel: Option<Channel>,
) -> Result<SessionRecord, Error> {
    app.require_same_tenant(p, action, tenant, ResourceKind::Session, Some(id))
        .await?;
    let id = SessionId::parse("id", id)?;
    let channel_context = channel.map(|c| ("channel".to_string(), c.as_str().to_string()));
    let Some(record) = app.store.get_session(tenant, id.as_str()).await? else {
        // Decided as for a session the caller knows nothing of (no opener, no target): a caller
        // who could not read this id were it there gets the same 403 as for one that is, so
        // session ids cannot be probed for existence; one who could learns it is not there.
        app.authorize(
            p,
            action,
            tenant,
            ResourceKind::Session,
            Some(id.as_str()),
            channel_context.into_iter().collect(),
        )
        .await?;
        return Err(Error::not_found("session", id.as_str()));
    };
    let mut context = session_context(&record);
    context.extend(channel_context);
    app.authorize(
        p,
        action,
        tenant,
        ResourceKind::Session,
        Some(id.as_str()),
        context,
    )
    .await?;
    Ok(record)
}

pub async fn get(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path((tenant, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    let mut record = load(&app, &p, &tenant, &id, actions::SESSIONS_GET).await?;
    let now = Utc::now();
    if record.status.lifecycle_state == SessionState::Open && record.spec.expires_at <= now {
        // The reaper is due to expire it; do it now so a read never shows a stale "open".
        record = crate::reaper::expire(&app, &record).await.unwrap_or(record);
    }
    app.audit_best_effort(app.event(
        &p,
        &tenant,
        actions::SESSIONS_GET,
        &format!("session/{}", record.id),
        "allow",
        "",
    ))
    .await;
    Ok(Json(wire::session(&record)))
}

pub async fn list(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: Unconditional,
    Path(tenant): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    let q = QueryParams::parse(q.as_deref(), &["state", "limit", "pageToken"])?;
    app.authorize(
        &p,
        actions::SESSIONS_LIST,
        &tenant,
        ResourceKind::Session,
        None,
        vec![],
    )
    .await?;
    app.require_tenant(&tenant).await?;
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(SessionState::parse(s).ok_or_else(|| {
            Error::invalid_argument(
                "state",
                format!("{s:?} is not one of open, closed, expired"),
            )
        })?),
    };
    let paging = Paging::from_query(&q, &app.page_tokens, "sessions", &tenant)?;
    let page = app
        .store
        .list_sessions(&tenant, state, paging.after.as_deref(), paging.limit)
        .await?;
    let next = paging.next_token(page.next_after);
    app.audit_best_effort(app.event(&p, &tenant, actions::SESSIONS_LIST, "session", "allow", ""))
        .await;
    Ok(Json(wire::list(
        page.items.iter().map(wire::session).collect(),
        next,
    )))
}

pub async fn close(
    State(app): State<SharedApp>,
    Caller(p): Caller,
    _: NoQuery,
    Path((tenant, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<CloseSession>,
) -> ApiResult<Json<Value>> {
    let tenant = tenant_name(&tenant)?;
    let record = load(&app, &p, &tenant, &id, actions::SESSIONS_CLOSE).await?;
    if body.reason.trim().is_empty() {
        return Err(Error::invalid_argument(
            "reason",
            "is blank: say why the session is closed, in 1-1024 characters; a reason of only spaces (or other whitespace) does not count",
        )
        .into());
    }
    if body.reason.chars().count() > 1024
        || body
            .reason
            .chars()
            .any(nimbus_core::spec::is_unsafe_text_char)
    {
        return Err(Error::invalid_argument(
            "reason",
            "must be 1-1024 characters with no control or invisible formatting characters (such as U+202E)",
        )
        .into());
    }
    let audit = app.event(
        &p,
        &tenant,
        actions::SESSIONS_CLOSE,
        &format!("session/{}", record.id),
        "allow",
        &body.reason,
    );
    let closed = app
        .store
        .end_session(
            &tenant,
            record.id.as_str(),
            SessionEvent::Close,
            Some(body.reason),
            Utc::now(),
            &audit,
        )
        .await?;
    Ok(Json(wire::session(&closed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn channels_are_checked_against_what_the_target_offers() {
        let sandbox = [Channel::Stdio, Channel::Files];
        assert_eq!(
            check_channels(&names(&["files", "stdio"]), &sandbox, "sandbox").unwrap(),
            vec![Channel::Files, Channel::Stdio]
        );
        for (list, allowed, kind, field, says) in [
            (
                &[][..],
                &sandbox[..],
                "sandbox",
                "channels",
                "channels: is empty: a session is opened for one or more channels, and a sandbox target offers stdio, files",
            ),
            (
                &[],
                &[],
                "external service",
                "channels",
                "channels: an external service target offers no channels: sessions cannot be opened on it",
            ),
            (
                &["bogus"],
                &sandbox,
                "sandbox",
                "channels[0]",
                "channels[0]: unknown channel \"bogus\"; channels are stdio, files, cdp, page, and a sandbox target offers stdio, files",
            ),
            (
                &["stdio"],
                &[],
                "built-in loadBalancer service",
                "channels[0]",
                "channels[0]: channel \"stdio\" is not offered by a built-in loadBalancer service target, which offers no channels: sessions cannot be opened on it",
            ),
            (
                &["stdio", "stdio"],
                &sandbox,
                "sandbox",
                "channels[1]",
                "channels[1]: channel \"stdio\" is listed twice",
            ),
        ] {
            let e = check_channels(&names(list), allowed, kind).unwrap_err();
            assert_eq!(e.details["field"], field);
            assert_eq!(e.message, says);
        }
    }

    #[test]
    fn articles_fit_the_word() {
        assert_eq!(with_article("external service"), "an external service");
        assert_eq!(with_article("sandbox"), "a sandbox");
        assert_eq!(
            with_article("built-in browser service"),
            "a built-in browser service"
        );
    }
}
