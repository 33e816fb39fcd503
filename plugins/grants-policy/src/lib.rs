//! The default Nimbus authorization policy. Implements exactly the rules of
//! `nimbus_core::authz::decide_by_grants` (same decisions, same reasons, same policy id); the host
//! crate's tests run both over a table of requests and compare.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;

wit_bindgen::generate!({
    path: "../../wit/authz/0.1.0",
    world: "authz-policy",
    generate_all,
});

use exports::nimbus::authz::policy::Guest;
use nimbus::authz::types::{Decision, Error, Request, ResourceKind};

nimbus_guest_rt::plugin_metadata!();

const POLICY_ID: &str = "grants-policy";

struct GrantsPolicy;

export!(GrantsPolicy);

impl Guest for GrantsPolicy {
    fn decide(request: Request) -> Result<Decision, Error> {
        Ok(decide_by_grants(&request))
    }
}

fn allow(reason: String) -> Decision {
    Decision {
        allow: true,
        policy_ids: vec![POLICY_ID.into()],
        reasons: vec![reason],
    }
}

fn deny(reason: String) -> Decision {
    Decision {
        allow: false,
        policy_ids: vec![POLICY_ID.into()],
        reasons: vec![reason],
    }
}

fn kind_str(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Tenant => "tenant",
        ResourceKind::Service => "service",
        ResourceKind::Sandbox => "sandbox",
        ResourceKind::Session => "session",
        ResourceKind::Credential => "credential",
        ResourceKind::Audit => "audit",
    }
}

fn context_value<'a>(request: &'a Request, key: &str) -> Option<&'a str> {
    request
        .context
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn decide_by_grants(request: &Request) -> Decision {
    let p = &request.principal;
    let has = |grant: &str| p.grants.iter().any(|g| g == grant);

    if has("server:admin") {
        return allow("grant server:admin".into());
    }
    if p.tenant_id != request.resource.tenant_id {
        return deny(format!(
            "credential belongs to tenant {:?}, not {:?}",
            p.tenant_id, request.resource.tenant_id
        ));
    }
    if request.action == "tenants.create" {
        return deny("only a server admin may create tenants".into());
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
        "services.create" => granted("services:create".into()),
        "sandboxes.create" => granted("sandboxes:create".into()),
        "services.get" => granted(format!("service:{name}:read"))
            .or_else(|| granted(format!("service:{name}:manage"))),
        "services.update" | "services.delete" | "services.start" | "services.stop"
        | "services.restart" => granted(format!("service:{name}:manage")),
        "sandboxes.get" => granted(format!("sandbox:{name}:reach"))
            .or_else(|| granted(format!("sandbox:{name}:manage"))),
        "sandboxes.stop" | "sandboxes.delete" | "sandboxes.logs" => {
            granted(format!("sandbox:{name}:manage"))
        }
        "sessions.open" => session_target_grant(request).and_then(granted),
        "sessions.get" | "sessions.close" => {
            if context_value(request, "createdBy") == Some(p.id.as_str()) {
                Some("opener of the session".into())
            } else {
                session_target_grant(request).and_then(granted)
            }
        }
        _ => None,
    };
    match hit {
        Some(why) => allow(why),
        None => deny(match request.resource.name.as_deref() {
            Some(n) => format!(
                "no grant allows {} on {} {:?}",
                request.action,
                kind_str(request.resource.kind),
                n
            ),
            None => format!(
                "no grant allows {} in tenant {:?}",
                request.action, request.resource.tenant_id
            ),
        }),
    }
}

/// The grant that reaches a session's target, from `targetKind`/`targetName` in the context.
fn session_target_grant(request: &Request) -> Option<String> {
    let target = context_value(request, "targetName")?;
    match context_value(request, "targetKind")? {
        "service" => Some(format!("service:{target}:session")),
        "sandbox" => Some(format!("sandbox:{target}:reach")),
        _ => None,
    }
}
