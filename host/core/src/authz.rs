//! Authorization: the question every API request asks, and the native grants policy.
//!
//! The server asks an [`Authorizer`] before it touches the store ("authorization before
//! existence"). The default policy is a WebAssembly component (`grants-policy`) implementing
//! `nimbus:authz`; [`GrantsPolicy`] is the same rules in native Rust, used as the reference the
//! component is tested against and as the baseline in benchmarks.
//!
//! Grant strings (documented in `docs/authz.md`):
//! - `server:admin` — everything, in every tenant (the credential written at first start).
//! - `tenant:admin` — everything inside the principal's tenant.
//! - `tenant:read` — `get`/`list` of services, sandboxes and sessions in the tenant.
//! - `service:<name>:session` — open sessions on that service (exact name, no wildcards).
//! - `service:<name>:read` — get that service.
//! - `service:<name>:manage` — get/update/delete/start/stop/restart that service.
//! - `sandbox:<id>:reach` — open sessions on that sandbox, and get it.
//! - `sandbox:<id>:manage` — get/stop/delete/read logs of that sandbox.
//! - `services:create`, `sandboxes:create` — create in the tenant.
//!
//! A session's opener may always get and close its own session.

use serde::{Deserialize, Serialize};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// Credential id (`cred_…`) or, for workload identity, the workload (`sandbox:sbx_…`).
    pub id: String,
    pub kind: PrincipalKind,
    /// The tenant the credential belongs to.
    pub tenant_id: String,
    pub grants: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub enum PrincipalKind {
    Token,
    ApiKey,
    Workload,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Token => "token",
            PrincipalKind::ApiKey => "apiKey",
            PrincipalKind::Workload => "workload",
        }
    }
}

/// What is being acted on. `name` is a service name, sandbox id, session id, credential id or
/// tenant id; `None` for collection actions (`list`, `create` before a name exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRef {
    pub tenant_id: String,
    pub kind: ResourceKind,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub enum ResourceKind {
    Tenant,
    Service,
    Sandbox,
    Session,
    Credential,
    Audit,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Tenant => "tenant",
            ResourceKind::Service => "service",
            ResourceKind::Sandbox => "sandbox",
            ResourceKind::Session => "session",
            ResourceKind::Credential => "credential",
            ResourceKind::Audit => "audit",
        }
    }
}

/// One authorization question. `action` is `<collection>.<verb>`, e.g. `services.update`,
/// `sessions.open` (see [`actions`]). `context` carries facts the policy may need, e.g. for
/// `sessions.open` the target (`targetKind` = `service`|`sandbox`, `targetName`), and for
/// `sessions.get`/`sessions.close`/`sessions.attach` the session's `createdBy` and its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct AuthzRequest {
    pub principal: Principal,
    pub action: String,
    pub resource: ResourceRef,
    pub context: Vec<(String, String)>,
}

impl AuthzRequest {
    pub fn context_value(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The answer. A denial carries reasons a human can act on; they are logged and audited,
/// and the first one is returned to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub allow: bool,
    pub policy_ids: Vec<String>,
    pub reasons: Vec<String>,
}

impl Decision {
    pub fn allow(policy_id: &str, reason: impl Into<String>) -> Self {
        Decision {
            allow: true,
            policy_ids: vec![policy_id.to_string()],
            reasons: vec![reason.into()],
        }
    }

    pub fn deny(policy_id: &str, reason: impl Into<String>) -> Self {
        Decision {
            allow: false,
            policy_ids: vec![policy_id.to_string()],
            reasons: vec![reason.into()],
        }
    }
}

/// Anything that can answer an [`AuthzRequest`]. Implementations must fail closed: an internal
/// fault is a denial, never an allow.
pub trait Authorizer: Send + Sync {
    fn authorize(&self, request: &AuthzRequest) -> Decision;
}

/// The action names the API uses, one per route.
pub mod actions {
    pub const TENANTS_CREATE: &str = "tenants.create";
    pub const TENANTS_GET: &str = "tenants.get";
    pub const CREDENTIALS_CREATE: &str = "credentials.create";
    pub const CREDENTIALS_LIST: &str = "credentials.list";
    pub const CREDENTIALS_REVOKE: &str = "credentials.revoke";
    pub const AUDIT_LIST: &str = "audit.list";
    pub const SERVICES_CREATE: &str = "services.create";
    pub const SERVICES_GET: &str = "services.get";
    pub const SERVICES_LIST: &str = "services.list";
    pub const SERVICES_UPDATE: &str = "services.update";
    pub const SERVICES_DELETE: &str = "services.delete";
    pub const SERVICES_START: &str = "services.start";
    pub const SERVICES_STOP: &str = "services.stop";
    pub const SERVICES_RESTART: &str = "services.restart";
    pub const SANDBOXES_CREATE: &str = "sandboxes.create";
    pub const SANDBOXES_GET: &str = "sandboxes.get";
    pub const SANDBOXES_LIST: &str = "sandboxes.list";
    pub const SANDBOXES_STOP: &str = "sandboxes.stop";
    pub const SANDBOXES_DELETE: &str = "sandboxes.delete";
    pub const SANDBOXES_LOGS: &str = "sandboxes.logs";
    pub const SESSIONS_OPEN: &str = "sessions.open";
    pub const SESSIONS_GET: &str = "sessions.get";
    pub const SESSIONS_LIST: &str = "sessions.list";
    pub const SESSIONS_CLOSE: &str = "sessions.close";
    /// Using a session's `stdio` channel: writing to the process's stdin and reading its output.
    pub const SESSIONS_ATTACH: &str = "sessions.attach";
}

/// The policy id the grants rules answer with, native or as a component.
pub const GRANTS_POLICY_ID: &str = "grants-policy";

/// The grant rules in native Rust. See the module docs for the grammar.
#[derive(Debug, Default, Clone, Copy)]
pub struct GrantsPolicy;

impl Authorizer for GrantsPolicy {
    fn authorize(&self, request: &AuthzRequest) -> Decision {
        decide_by_grants(request)
    }
}

/// `s` in double quotes for a reason: as `{:?}` prints it for ASCII (quotes, backslashes and
/// control characters escaped), and every other character as `\u{…}`. The grants-policy
/// component escapes the same way; `{:?}` itself would need Unicode tables that make every
/// instance of the component copy and reset a second page of memory.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            ' '..='~' => out.push(c),
            _ => out.extend(c.escape_unicode()),
        }
    }
    out.push('"');
    out
}

/// The grant rules as a pure function, shared by [`GrantsPolicy`] and its tests.
pub fn decide_by_grants(request: &AuthzRequest) -> Decision {
    let p = &request.principal;
    let has = |grant: &str| p.grants.iter().any(|g| g == grant);
    let allow = |why: String| Decision::allow(GRANTS_POLICY_ID, why);

    if has("server:admin") {
        return allow("grant server:admin".into());
    }
    // Before the tenant check: the tenant being created is not the caller's, and saying so
    // would hide the reason.
    if request.action == actions::TENANTS_CREATE {
        return Decision::deny(GRANTS_POLICY_ID, "only a server admin may create tenants");
    }
    if p.tenant_id != request.resource.tenant_id {
        return Decision::deny(
            GRANTS_POLICY_ID,
            format!(
                "credential belongs to tenant {}, not {}",
                quoted(&p.tenant_id),
                quoted(&request.resource.tenant_id)
            ),
        );
    }
    if has("tenant:admin") {
        return allow("grant tenant:admin".into());
    }

    let (collection, verb) = request.action.split_once('.').unwrap_or(("", ""));
    let name = request.resource.name.as_deref().unwrap_or("");
    let read_verb = matches!(verb, "get" | "list");
    let readable_collection = matches!(collection, "services" | "sandboxes" | "sessions");
    if read_verb && readable_collection && has("tenant:read") {
        return allow("grant tenant:read".into());
    }

    let granted = |g: String| has(&g).then_some(g);
    let hit: Option<String> = match request.action.as_str() {
        actions::SERVICES_CREATE => granted("services:create".into()),
        actions::SANDBOXES_CREATE => granted("sandboxes:create".into()),
        actions::SERVICES_GET => granted(format!("service:{name}:read"))
            .or_else(|| granted(format!("service:{name}:manage"))),
        actions::SERVICES_UPDATE
        | actions::SERVICES_DELETE
        | actions::SERVICES_START
        | actions::SERVICES_STOP
        | actions::SERVICES_RESTART => granted(format!("service:{name}:manage")),
        actions::SANDBOXES_GET => granted(format!("sandbox:{name}:reach"))
            .or_else(|| granted(format!("sandbox:{name}:manage"))),
        actions::SANDBOXES_STOP | actions::SANDBOXES_DELETE | actions::SANDBOXES_LOGS => {
            granted(format!("sandbox:{name}:manage"))
        }
        actions::SESSIONS_OPEN => session_target_grant(request).and_then(granted),
        actions::SESSIONS_GET | actions::SESSIONS_CLOSE | actions::SESSIONS_ATTACH => {
            if request.context_value("createdBy") == Some(p.id.as_str()) {
                Some("opener of the session".into())
            } else {
                session_target_grant(request).and_then(granted)
            }
        }
        _ => None,
    };
    match hit {
        Some(why) => allow(why),
        None => Decision::deny(
            GRANTS_POLICY_ID,
            match request.resource.name.as_deref() {
                Some(n) => format!(
                    "no grant allows {} on {} {}",
                    request.action,
                    request.resource.kind.as_str(),
                    quoted(n)
                ),
                // A session being opened has no name yet: its target says what was refused.
                None => match (
                    request.context_value("targetKind"),
                    request.context_value("targetName"),
                ) {
                    (Some(kind), Some(target)) => format!(
                        "no grant allows {} on {} {}",
                        request.action,
                        kind,
                        quoted(target)
                    ),
                    _ => format!(
                        "no grant allows {} in tenant {}",
                        request.action,
                        quoted(&request.resource.tenant_id)
                    ),
                },
            },
        ),
    }
}

/// The grant that reaches a session's target, from `targetKind`/`targetName` in the context.
fn session_target_grant(request: &AuthzRequest) -> Option<String> {
    let target = request.context_value("targetName")?;
    match request.context_value("targetKind")? {
        "service" => Some(format!("service:{target}:session")),
        "sandbox" => Some(format!("sandbox:{target}:reach")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_prints_ascii_as_debug_does_and_escapes_everything_else() {
        for s in [
            "demo",
            "a \"b\" \\ c",
            "tab\tnl\ncr\rnul\0",
            "esc\u{1b}del\u{7f}",
            "",
        ] {
            assert_eq!(quoted(s), format!("{s:?}"));
        }
        assert_eq!(quoted("café ✓\u{301}"), "\"caf\\u{e9} \\u{2713}\\u{301}\"");
    }

    fn principal(tenant: &str, grants: &[&str]) -> Principal {
        Principal {
            id: "cred_1".into(),
            kind: PrincipalKind::Token,
            tenant_id: tenant.into(),
            grants: grants.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn req(p: Principal, action: &str, kind: ResourceKind, name: Option<&str>) -> AuthzRequest {
        AuthzRequest {
            principal: p,
            action: action.into(),
            resource: ResourceRef {
                tenant_id: "demo".into(),
                kind,
                name: name.map(str::to_string),
            },
            context: vec![],
        }
    }

    #[test]
    fn a_refused_session_open_names_its_target() {
        let mut r = req(
            principal("demo", &["service:br:session"]),
            actions::SESSIONS_OPEN,
            ResourceKind::Session,
            None,
        );
        r.context = vec![
            ("targetKind".into(), "service".into()),
            ("targetName".into(), "browser".into()),
        ];
        let d = decide_by_grants(&r);
        assert!(!d.allow);
        assert_eq!(
            d.reasons,
            ["no grant allows sessions.open on service \"browser\""]
        );
    }

    #[test]
    fn server_admin_may_act_in_any_tenant() {
        let r = req(
            principal("other", &["server:admin"]),
            actions::SERVICES_DELETE,
            ResourceKind::Service,
            Some("worker"),
        );
        assert!(decide_by_grants(&r).allow);
    }

    #[test]
    fn tenant_admin_of_another_tenant_is_denied() {
        let r = req(
            principal("other", &["tenant:admin"]),
            actions::SERVICES_GET,
            ResourceKind::Service,
            Some("worker"),
        );
        let d = decide_by_grants(&r);
        assert!(!d.allow);
        assert!(d.reasons[0].contains("tenant"), "{d:?}");
    }

    #[test]
    fn tenant_admin_cannot_create_tenants_and_is_told_why() {
        let mut r = req(
            principal("demo", &["tenant:admin"]),
            actions::TENANTS_CREATE,
            ResourceKind::Tenant,
            Some("demo"),
        );
        r.resource.tenant_id = "newco".into();
        let d = decide_by_grants(&r);
        assert!(!d.allow);
        assert_eq!(d.reasons[0], "only a server admin may create tenants");
    }

    #[test]
    fn session_grant_is_exact_for_the_service_name() {
        let mut r = req(
            principal("demo", &["service:worker:session"]),
            actions::SESSIONS_OPEN,
            ResourceKind::Session,
            None,
        );
        r.context = vec![
            ("targetKind".into(), "service".into()),
            ("targetName".into(), "worker".into()),
        ];
        assert!(decide_by_grants(&r).allow);
        r.context[1].1 = "worker2".into();
        assert!(!decide_by_grants(&r).allow);
    }

    #[test]
    fn sandbox_reach_allows_sessions_and_get_but_not_delete() {
        let p = principal("demo", &["sandbox:sbx_a:reach"]);
        let mut open = req(
            p.clone(),
            actions::SESSIONS_OPEN,
            ResourceKind::Session,
            None,
        );
        open.context = vec![
            ("targetKind".into(), "sandbox".into()),
            ("targetName".into(), "sbx_a".into()),
        ];
        assert!(decide_by_grants(&open).allow);
        let get = req(
            p.clone(),
            actions::SANDBOXES_GET,
            ResourceKind::Sandbox,
            Some("sbx_a"),
        );
        assert!(decide_by_grants(&get).allow);
        let del = req(
            p,
            actions::SANDBOXES_DELETE,
            ResourceKind::Sandbox,
            Some("sbx_a"),
        );
        assert!(!decide_by_grants(&del).allow);
    }

    #[test]
    fn opener_may_close_own_session_without_grants() {
        let mut r = req(
            principal("demo", &[]),
            actions::SESSIONS_CLOSE,
            ResourceKind::Session,
            Some("ses_1"),
        );
        r.context = vec![("createdBy".into(), "cred_1".into())];
        assert!(decide_by_grants(&r).allow);
        r.context = vec![("createdBy".into(), "cred_2".into())];
        assert!(!decide_by_grants(&r).allow);
    }

    /// Using a session's stdio writes to a process: the opener (or whoever may open one on
    /// its target) may, a read-only credential may not.
    #[test]
    fn attaching_to_a_session_is_for_its_opener_not_for_readers() {
        let mut r = req(
            principal("demo", &["tenant:read"]),
            actions::SESSIONS_ATTACH,
            ResourceKind::Session,
            Some("ses_1"),
        );
        r.context = vec![("createdBy".into(), "cred_2".into())];
        assert!(!decide_by_grants(&r).allow);
        r.context = vec![("createdBy".into(), "cred_1".into())];
        assert!(decide_by_grants(&r).allow);
        r.context = vec![
            ("createdBy".into(), "cred_2".into()),
            ("targetKind".into(), "sandbox".into()),
            ("targetName".into(), "sbx_a".into()),
        ];
        r.principal.grants = vec!["sandbox:sbx_a:reach".into()];
        assert!(decide_by_grants(&r).allow);
    }

    #[test]
    fn no_grants_means_denied_with_a_reason_naming_the_action() {
        let r = req(
            principal("demo", &[]),
            actions::SERVICES_LIST,
            ResourceKind::Service,
            None,
        );
        let d = decide_by_grants(&r);
        assert!(!d.allow);
        assert!(d.reasons[0].contains("services.list"));
        assert_eq!(d.policy_ids, vec![GRANTS_POLICY_ID.to_string()]);
    }

    #[test]
    fn tenant_read_allows_reads_only() {
        let p = principal("demo", &["tenant:read"]);
        let get = req(
            p.clone(),
            actions::SERVICES_GET,
            ResourceKind::Service,
            Some("w"),
        );
        assert!(decide_by_grants(&get).allow);
        let upd = req(
            p,
            actions::SERVICES_UPDATE,
            ResourceKind::Service,
            Some("w"),
        );
        assert!(!decide_by_grants(&upd).allow);
    }
}
