//! The default Nimbus authorization policy. Implements exactly the rules of
//! `nimbus_core::authz::decide_by_grants` (same decisions, same reasons, same policy id); the host
//! crate's tests run both over a table of requests and compare.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;

wit_bindgen::generate!({
    path: "../../wit/authz/0.1.0",
    world: "authz-policy",
    generate_all,
    // The helper keeps the component-type section linked from other crates; here the section
    // is in this crate. Without it the module needs no function table at all (see below).
    disable_custom_section_link_helpers: true,
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

// The reasons are built by concatenation rather than `format!`: `core::fmt` is dispatched through
// the function table, and a module with a table costs every instance a table slot to allocate
// and reset. This module has none.

/// `parts` concatenated.
fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

/// Appends `s` in double quotes, as `nimbus_core::authz::quoted` has it: as `{:?}` prints
/// ASCII (quotes, backslashes and control characters escaped), every other character as
/// `\u{…}`. (`{:?}` itself would bring Unicode tables that every instance copies and resets.)
fn push_quoted(out: &mut String, s: &str) {
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
}

fn decide_by_grants(request: &Request) -> Decision {
    let p = &request.principal;
    let has = |grant: &str| p.grants.iter().any(|g| g == grant);
    // Whether `<a><b><c>` is granted, without building it.
    let has3 = |a: &str, b: &str, c: &str| {
        p.grants.iter().any(|g| {
            g.len() == a.len() + b.len() + c.len()
                && g.starts_with(a)
                && g.ends_with(c)
                && &g[a.len()..g.len() - c.len()] == b
        })
    };
    let granted3 = |a: &str, b: &str, c: &str| has3(a, b, c).then(|| concat(&[a, b, c]));

    if has("server:admin") {
        return allow("grant server:admin".into());
    }
    // Before the tenant check, as in the native rules: the tenant being created is not the
    // caller's, and saying so would hide the reason.
    if request.action == "tenants.create" {
        return deny("only a server admin may create tenants".into());
    }
    if p.tenant_id != request.resource.tenant_id {
        let mut why = String::from("credential belongs to tenant ");
        push_quoted(&mut why, &p.tenant_id);
        why.push_str(", not ");
        push_quoted(&mut why, &request.resource.tenant_id);
        return deny(why);
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

    let granted = |g: &str| has(g).then(|| String::from(g));
    let session_target = || -> Option<String> {
        let target = context_value(request, "targetName")?;
        match context_value(request, "targetKind")? {
            "service" => granted3("service:", target, ":session"),
            "sandbox" => granted3("sandbox:", target, ":reach"),
            _ => None,
        }
    };
    let hit: Option<String> =
        match request.action.as_str() {
            "services.create" => granted("services:create"),
            "sandboxes.create" => granted("sandboxes:create"),
            "services.get" => granted3("service:", name, ":read")
                .or_else(|| granted3("service:", name, ":manage")),
            "services.update" | "services.delete" | "services.start" | "services.stop"
            | "services.restart" => granted3("service:", name, ":manage"),
            "sandboxes.get" => granted3("sandbox:", name, ":reach")
                .or_else(|| granted3("sandbox:", name, ":manage")),
            "sandboxes.stop" | "sandboxes.delete" | "sandboxes.logs" => {
                granted3("sandbox:", name, ":manage")
            }
            "sessions.open" => session_target(),
            "sessions.get" | "sessions.close" | "sessions.attach" => {
                if context_value(request, "createdBy") == Some(p.id.as_str()) {
                    Some("opener of the session".into())
                } else {
                    session_target()
                }
            }
            _ => None,
        };
    match hit {
        Some(why) => allow(why),
        None => {
            let mut why = concat(&["no grant allows ", &request.action]);
            match request.resource.name.as_deref() {
                Some(n) => {
                    why.push_str(" on ");
                    why.push_str(kind_str(request.resource.kind));
                    why.push(' ');
                    push_quoted(&mut why, n);
                }
                // A session being opened has no name yet: its target says what was refused.
                None => match (
                    context_value(request, "targetKind"),
                    context_value(request, "targetName"),
                ) {
                    (Some(kind), Some(target)) => {
                        why.push_str(" on ");
                        why.push_str(kind);
                        why.push(' ');
                        push_quoted(&mut why, target);
                    }
                    _ => {
                        why.push_str(" in tenant ");
                        push_quoted(&mut why, &request.resource.tenant_id);
                    }
                },
            }
            deny(why)
        }
    }
}
