//! Authorization through plugins: the grants-policy component against the native rules,
//! misbehaving policies contained and denying, and policies swapped live.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, guest, request, TempDir};
use nimbus_core::authz::{
    actions, decide_by_grants, AuthzRequest, Principal, PrincipalKind, ResourceKind, ResourceRef,
};
use nimbus_plugins::{PluginHost, PluginStore};

/// Every combination of a set of principals, actions, resources and contexts that exercises each
/// rule of the grants policy, including the edge cases (no dot in the action, other tenants,
/// missing session target facts).
fn request_table() -> Vec<AuthzRequest> {
    let grant_sets: &[&[&str]] = &[
        &[],
        &["server:admin"],
        &["tenant:admin"],
        &["tenant:read"],
        &["services:create", "sandboxes:create"],
        &["service:web:read"],
        &["service:web:manage"],
        &["service:web:session"],
        &["sandbox:sbx_a:reach"],
        &["sandbox:sbx_a:manage"],
        &["service:web:session", "sandbox:sbx_a:reach", "tenant:read"],
    ];
    let all_actions = [
        actions::TENANTS_CREATE,
        actions::TENANTS_GET,
        actions::CREDENTIALS_CREATE,
        actions::CREDENTIALS_LIST,
        actions::CREDENTIALS_REVOKE,
        actions::AUDIT_LIST,
        actions::SERVICES_CREATE,
        actions::SERVICES_GET,
        actions::SERVICES_LIST,
        actions::SERVICES_UPDATE,
        actions::SERVICES_DELETE,
        actions::SERVICES_START,
        actions::SERVICES_STOP,
        actions::SERVICES_RESTART,
        actions::SANDBOXES_CREATE,
        actions::SANDBOXES_GET,
        actions::SANDBOXES_LIST,
        actions::SANDBOXES_STOP,
        actions::SANDBOXES_DELETE,
        actions::SANDBOXES_LOGS,
        actions::SESSIONS_OPEN,
        actions::SESSIONS_GET,
        actions::SESSIONS_LIST,
        actions::SESSIONS_CLOSE,
        actions::SESSIONS_ATTACH,
        "services",
        "widgets.get",
    ];
    let contexts: Vec<Vec<(String, String)>> = vec![
        vec![],
        vec![
            ("targetKind".into(), "service".into()),
            ("targetName".into(), "web".into()),
        ],
        vec![
            ("targetKind".into(), "sandbox".into()),
            ("targetName".into(), "sbx_a".into()),
            ("createdBy".into(), "cred_2".into()),
        ],
        vec![
            ("createdBy".into(), "cred_1".into()),
            ("targetKind".into(), "volume".into()),
            ("targetName".into(), "web".into()),
        ],
    ];
    let mut out = Vec::new();
    for grants in grant_sets {
        for principal_tenant in ["demo", "other", "q\"uote"] {
            for action in all_actions {
                let kind = match action.split('.').next().unwrap_or("") {
                    "tenants" => ResourceKind::Tenant,
                    "credentials" => ResourceKind::Credential,
                    "audit" => ResourceKind::Audit,
                    "sandboxes" => ResourceKind::Sandbox,
                    "sessions" => ResourceKind::Session,
                    _ => ResourceKind::Service,
                };
                // The policy escapes names as `{:?}` does without core::fmt: cover every case.
                for name in [
                    None,
                    Some("web"),
                    Some("sbx_a"),
                    Some("say \"hi\"\n"),
                    Some("it's\ta \\ path\r\0"),
                    Some("esc\u{1b}del\u{7f}"),
                    Some("café ✓ \u{301}\u{200b}"),
                ] {
                    for context in &contexts {
                        out.push(AuthzRequest {
                            principal: Principal {
                                id: "cred_1".into(),
                                kind: PrincipalKind::ApiKey,
                                tenant_id: principal_tenant.into(),
                                grants: grants.iter().map(|g| g.to_string()).collect(),
                            },
                            action: action.into(),
                            resource: ResourceRef {
                                tenant_id: "demo".into(),
                                kind,
                                name: name.map(str::to_string),
                            },
                            context: context.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The policy's instance starts with 1.5 KiB of heap: a request far larger than that (a
/// credential with hundreds of grants, long names) grows its memory page by page and is
/// decided exactly as natively, whether the matching grant comes first or last.
#[test]
fn a_request_larger_than_the_policys_initial_memory_is_decided_like_the_native_rules() {
    let dir = TempDir::new("big-request");
    let host = PluginHost::open(dir.path(), &config("")).unwrap();
    let authz = host.authorizer();
    let long = "x".repeat(300);
    let mut grants: Vec<String> = (0..400)
        .map(|i| format!("service:{long}{i}:read"))
        .collect();
    for target in ["web", "missing"] {
        for grant_last in [false, true] {
            let matching = "service:web:read".to_string();
            if grant_last {
                grants.push(matching);
            } else {
                grants.insert(0, matching);
            }
            let r = AuthzRequest {
                principal: Principal {
                    id: "cred_big".into(),
                    kind: PrincipalKind::ApiKey,
                    tenant_id: "demo".into(),
                    grants: grants.clone(),
                },
                action: actions::SERVICES_GET.into(),
                resource: ResourceRef {
                    tenant_id: "demo".into(),
                    kind: ResourceKind::Service,
                    name: Some(target.into()),
                },
                context: vec![("note".into(), long.clone())],
            };
            let native = decide_by_grants(&r);
            assert_eq!(
                authz.authorize(&r),
                native,
                "{target}, grant last: {grant_last}"
            );
            assert_eq!(native.allow, target == "web");
            grants.retain(|g| g != "service:web:read");
        }
    }
}

#[test]
fn grants_policy_component_agrees_with_the_native_rules_on_every_request_in_the_table() {
    let dir = TempDir::new("agree");
    let host = PluginHost::open(dir.path(), &config("")).unwrap();
    assert_eq!(host.serving("authz").unwrap(), "grants-policy@0.1.5");
    let authz = host.authorizer();
    let table = request_table();
    let (mut allowed, mut denied) = (0, 0);
    for r in &table {
        let native = decide_by_grants(r);
        let plugin = authz.authorize(r);
        assert_eq!(
            plugin, native,
            "component and native rules disagree on {r:?}"
        );
        if native.allow {
            allowed += 1
        } else {
            denied += 1
        }
    }
    // The table must exercise both outcomes substantially, or agreement means little.
    assert!(
        allowed > 500 && denied > 500,
        "allowed {allowed}, denied {denied}"
    );
}

fn host_with_policy(dir: &TempDir, guest_name: &str, extra: &str) -> Arc<PluginHost> {
    let store = PluginStore::open(dir.path()).unwrap();
    store.install(&guest(guest_name), None, None).unwrap();
    let id = guest_name.replace('_', "-");
    PluginHost::open(
        dir.path(),
        &config(&format!("[authz]\nplugin = \"{id}\"\n{extra}")),
    )
    .unwrap()
}

fn failures(host: &PluginHost, kind: &str) -> u64 {
    host.metrics()
        .iter()
        .filter(|s| s.name == "failures" && s.slot == "authz" && s.kind == kind)
        .map(|s| s.value)
        .sum()
}

/// An admin request every sane policy allows; a failing policy must still deny it.
fn admin_request() -> AuthzRequest {
    request(
        &["server:admin"],
        actions::SERVICES_LIST,
        ResourceKind::Service,
        None,
    )
}

fn assert_contained(host: &PluginHost, kind: &str) {
    let d = host.authorizer().authorize(&admin_request());
    assert!(!d.allow, "a failing policy must deny: {d:?}");
    assert!(
        d.reasons[0].contains(&format!("failed ({kind})")),
        "reason should name the failure {kind}: {d:?}"
    );
    assert_eq!(failures(host, kind), 1, "{:?}", host.metrics());
    // The host is unaffected: the next call fails the same way (fresh instance), and a health
    // slot of the same host still runs.
    let again = host.authorizer().authorize(&admin_request());
    assert!(!again.allow);
    assert_eq!(failures(host, kind), 2);
    assert_eq!(
        counted(host, "memoized"),
        0,
        "a failure is never remembered"
    );
    assert_eq!(host.serving("health.tcp").unwrap(), "tcp-health@0.1.1");
    // Failed calls are timed like the others.
    let timed: u64 = host
        .durations()
        .iter()
        .filter(|d| d.slot == "authz")
        .map(|d| d.histogram.count)
        .sum();
    assert_eq!(timed, 2, "{:?}", host.durations());
}

#[test]
fn a_policy_that_traps_denies_and_counts_a_trap() {
    let dir = TempDir::new("trap");
    let host = host_with_policy(&dir, "trap_policy", "");
    assert_contained(&host, "trap");
}

#[test]
fn a_policy_that_never_returns_is_stopped_at_its_deadline_and_denies() {
    let dir = TempDir::new("spin");
    let host = host_with_policy(
        &dir,
        "spin_policy",
        "limits = { timeout_ms = 50, fuel = 1000000000000 }\n",
    );
    assert_contained(&host, "timeout");
}

#[test]
fn a_policy_that_never_returns_is_stopped_by_fuel_and_denies() {
    let dir = TempDir::new("fuel");
    let host = host_with_policy(
        &dir,
        "spin_policy",
        "limits = { timeout_ms = 60000, fuel = 1000000 }\n",
    );
    assert_contained(&host, "fuel");
}

#[test]
fn a_policy_that_allocates_without_bound_hits_the_memory_limit_and_denies() {
    let dir = TempDir::new("hog");
    let host = host_with_policy(&dir, "hog_policy", "limits = { memory_mib = 4 }\n");
    assert_contained(&host, "memory");
}

#[test]
fn a_policy_that_answers_garbage_denies_as_malformed() {
    let dir = TempDir::new("garbage");
    let host = host_with_policy(&dir, "garbage_policy", "");
    assert_contained(&host, "malformed");
}

#[test]
fn a_policy_that_answers_too_many_reasons_is_refused_by_their_count() {
    // The host checks the count before it copies anything out of the guest's memory, which
    // also bounds the time spent on the answer once the call's deadline has stopped counting.
    let mut r = admin_request();
    r.context = vec![("reasons".into(), "100000".into())];
    let dir = TempDir::new("many");
    let host = host_with_policy(&dir, "garbage_policy", "");
    let d = host.authorizer().authorize(&r);
    assert!(!d.allow, "{d:?}");
    assert!(d.reasons[0].contains("failed (malformed)"), "{d:?}");
    assert_eq!(failures(&host, "malformed"), 1, "{:?}", host.metrics());
    assert!(
        d.reasons[1].contains("decision.reasons has 100000 entries (at most 32)"),
        "{d:?}"
    );
    // Within the bounds, the answer is read whole (this policy allows with it).
    r.context = vec![("reasons".into(), "32".into())];
    let d = host.authorizer().authorize(&r);
    assert!(d.allow, "{d:?}");
    assert_eq!(d.reasons.len(), 32);
}

#[test]
fn a_policy_whose_answer_cannot_be_lifted_denies_as_malformed() {
    let dir = TempDir::new("abi-garbage");
    let host = host_with_policy(&dir, "abi_garbage_policy", "");
    assert_contained(&host, "malformed");
}

#[test]
fn a_policy_that_imports_the_network_is_refused_at_install() {
    let dir = TempDir::new("netpolicy");
    let store = PluginStore::open(dir.path()).unwrap();
    let err = store.install(&guest("net_policy"), None, None).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("nimbus:host/http@0.1.0"), "{msg}");
    assert!(msg.contains("does not offer"), "{msg}");
    assert!(
        store.resolve("net-policy").is_err(),
        "nothing may be left installed"
    );
}

#[test]
fn replacing_the_authz_plugin_in_config_changes_decisions() {
    let dir = TempDir::new("config-swap");
    let store = PluginStore::open(dir.path()).unwrap();
    store
        .install(&guest("deny_all_policy"), None, None)
        .unwrap();
    let r = admin_request();
    let grants = PluginHost::open(dir.path(), &config("")).unwrap();
    assert!(grants.authorizer().authorize(&r).allow);
    let deny_all = PluginHost::open(
        dir.path(),
        &config("[authz]\nplugin = \"deny-all-policy\"\n"),
    )
    .unwrap();
    let d = deny_all.authorizer().authorize(&r);
    assert!(!d.allow);
    assert_eq!(d.policy_ids, vec!["deny-all-policy".to_string()]);
}

#[test]
fn installing_a_new_version_swaps_the_policy_live_without_failing_calls_in_flight() {
    let dir = TempDir::new("hot-swap");
    let host = PluginHost::open(dir.path(), &config("")).unwrap();
    let authz = host.authorizer();
    let r = admin_request();
    assert!(authz.authorize(&r).allow);

    // Callers keep deciding while the store changes underneath them.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (authz, stop, failed, calls, r) = (
                authz.clone(),
                stop.clone(),
                failed.clone(),
                calls.clone(),
                r.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let d = authz.authorize(&r);
                    calls.fetch_add(1, Ordering::SeqCst);
                    if d.reasons.iter().any(|x| x.contains("failed")) {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();

    let store = PluginStore::open(dir.path()).unwrap();
    let info = store
        .install(
            &guest("deny_all_policy"),
            Some("grants-policy"),
            Some("0.2.0"),
        )
        .unwrap();
    assert!(info.active);
    let swapped = host.refresh();
    assert_eq!(swapped, vec!["authz=grants-policy@0.2.0".to_string()]);
    let d = authz.authorize(&r);
    assert!(!d.allow, "the new version decides now: {d:?}");
    assert_eq!(host.serving("authz").unwrap(), "grants-policy@0.2.0");

    // Removing the new version swaps back to the bundled one.
    store.remove("grants-policy@0.2.0").unwrap();
    host.refresh();
    assert!(authz.authorize(&r).allow);

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    assert!(calls.load(Ordering::SeqCst) > 0);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no call may fail during a swap"
    );
}

#[test]
fn the_store_watcher_swaps_the_policy_without_being_asked() {
    let dir = TempDir::new("watch");
    let host = PluginHost::open(dir.path(), &config("watch_interval_ms = 50\n")).unwrap();
    let authz = host.authorizer();
    let r = admin_request();
    assert!(authz.authorize(&r).allow);
    PluginStore::open(dir.path())
        .unwrap()
        .install(
            &guest("deny_all_policy"),
            Some("grants-policy"),
            Some("0.3.0"),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while authz.authorize(&r).allow {
        assert!(
            Instant::now() < deadline,
            "the watcher never swapped the policy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host.serving("authz").unwrap(), "grants-policy@0.3.0");
}

#[test]
fn a_pinned_version_is_not_swapped_by_a_newer_install() {
    let dir = TempDir::new("pinned");
    let host = PluginHost::open(
        dir.path(),
        &config("[authz]\nplugin = \"grants-policy\"\nversion = \"0.1.5\"\n"),
    )
    .unwrap();
    PluginStore::open(dir.path())
        .unwrap()
        .install(
            &guest("deny_all_policy"),
            Some("grants-policy"),
            Some("0.2.0"),
        )
        .unwrap();
    assert!(host.refresh().is_empty());
    assert!(host.authorizer().authorize(&admin_request()).allow);
}

/// The authz slot's counter `name` (`calls`, `memoized`), summed over its plugins.
fn counted(host: &PluginHost, name: &str) -> u64 {
    host.metrics()
        .iter()
        .filter(|s| s.name == name && s.slot == "authz")
        .map(|s| s.value)
        .sum()
}

#[test]
fn a_policy_that_decides_from_the_request_alone_is_called_once_per_distinct_request() {
    let dir = TempDir::new("memo");
    // A spread of the table that fits in the memo (4096 requests).
    let table: Vec<_> = request_table().into_iter().step_by(12).collect();
    let memoized = PluginHost::open(dir.path(), &config("")).unwrap();
    let called =
        PluginHost::open(dir.path(), &config("[authz]\nmemoize_decisions = false\n")).unwrap();
    let first: Vec<_> = table
        .iter()
        .map(|r| memoized.authorizer().authorize(r))
        .collect();
    let calls = counted(&memoized, "calls");
    assert!(calls > 1500, "{calls}");
    let again: Vec<_> = table
        .iter()
        .map(|r| memoized.authorizer().authorize(r))
        .collect();
    // The same answers, the second time without a call.
    assert_eq!(first, again);
    assert_eq!(counted(&memoized, "calls"), calls);
    assert_eq!(
        counted(&memoized, "memoized"),
        2 * table.len() as u64 - calls
    );
    // And the same answers the policy gives when asked every time.
    for (r, remembered) in table.iter().zip(&again) {
        assert_eq!(&called.authorizer().authorize(r), remembered, "{r:?}");
    }
    assert_eq!(counted(&called, "calls"), table.len() as u64);
    assert_eq!(counted(&called, "memoized"), 0);
}

#[test]
fn a_policy_that_reads_the_clock_is_asked_every_time() {
    let dir = TempDir::new("clock");
    let host = host_with_policy(&dir, "clock_policy", "");
    let r = admin_request();
    let first = host.authorizer().authorize(&r);
    let second = host.authorizer().authorize(&r);
    assert!(first.allow && second.allow);
    assert_ne!(
        first.reasons, second.reasons,
        "each decision reads the clock"
    );
    assert_eq!(counted(&host, "calls"), 2);
    assert_eq!(counted(&host, "memoized"), 0);
}

#[test]
fn memoize_decisions_is_a_key_of_the_authz_slot_only() {
    let e = config("[health.http]\nmemoize_decisions = true\n")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("plugins.health.http.memoize_decisions"), "{e}");
}

#[test]
fn a_pinned_version_with_leading_zeros_is_refused_saying_how_to_write_it() {
    let dir = TempDir::new("zeros-pin");
    let e = PluginHost::open(dir.path(), &config("[authz]\nversion = \"00.1.5\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("plugins.authz.version = \"00.1.5\""), "{e}");
    assert!(e.contains("(write 0.1.5)"), "{e}");
}
