//! The control plane driven over HTTP through the real `nimbus serve`.

use std::collections::BTreeSet;
use std::time::Duration;

use nimbus_e2e::{assert_error, assert_error_says, batch_sandbox, json, worker_service, Server};

const T: &str = "/v1/tenants/demo";
/// These tests are about the control plane; launching sandboxes is tested with the runtime.
const NO_DRIVER: &str = "[server]\nsandbox_driver = \"none\"\n";

#[tokio::test]
async fn guide_service_examples_work_as_http_requests() {
    let s = Server::start_with_config(NO_DRIVER).await;
    // Create (services guide).
    let (st, created) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(worker_service("worker")),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["name"], "worker");
    assert_eq!(created["metadata"]["labels"]["team"], "search");
    assert_eq!(created["status"]["lifecycleState"], "stopped");
    assert_eq!(
        created["spec"]["backend"]["sandbox"]["process"]["argv"],
        json!({"redacted": true, "valueCount": 2})
    );
    // Start: desired state recorded, honest conditions.
    let (st, started) = s
        .call("POST", &format!("{T}/services/worker/start"), None)
        .await;
    assert_eq!(st, 202);
    assert_eq!(started["status"]["desiredState"], "running");
    assert_eq!(
        started["status"]["conditions"][0]["reason"],
        "LauncherUnavailable"
    );
    // A started sandbox-backed service needs force to be deleted; the error names its state.
    let del = s
        .call(
            "DELETE",
            &format!("{T}/services/worker?ifMatchGeneration=1"),
            None,
        )
        .await;
    assert_error(&del, 409, "state.invalid_transition");
    assert_eq!(
        del.1["error"]["details"]["state"],
        started["status"]["lifecycleState"]
    );
    // Get, update with the current generation.
    let (_, current) = s.call("GET", &format!("{T}/services/worker"), None).await;
    let generation = current["metadata"]["generation"].as_i64().unwrap();
    let (st, updated) = s
        .call("PUT", &format!("{T}/services/worker"), Some(json!({"backend": {"kind": "builtIn", "provider": "loadBalancer"}, "ifMatchGeneration": generation})))
        .await;
    assert_eq!(st, 200, "{updated}");
    assert_eq!(updated["metadata"]["generation"], generation + 1);
    assert_ne!(
        updated["metadata"]["resourceVersion"],
        current["metadata"]["resourceVersion"]
    );
    assert_eq!(updated["status"]["lifecycleState"], "declared");
    // The guide's delete uses generation + 1, which is now current. The service was started,
    // but a built-in backend runs nothing here, so it deletes without force, as the guide shows.
    let (st, deleted) = s
        .call(
            "DELETE",
            &format!("{T}/services/worker?ifMatchGeneration={}", generation + 1),
            None,
        )
        .await;
    assert_eq!(st, 200, "{deleted}");
    assert_eq!(deleted["metadata"]["name"], "worker");
    assert_error(
        &s.call("GET", &format!("{T}/services/worker"), None).await,
        404,
        "resource.not_found",
    );
    // Built-in and external backends are declared definitions.
    let (st, b) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(json!({"name": "browser", "backend": {"kind": "builtIn", "provider": "browser"}})),
        )
        .await;
    assert_eq!(
        (st.as_u16(), b["status"]["lifecycleState"].as_str()),
        (201, Some("declared"))
    );
    let ext = json!({"name": "search", "backend": {"kind": "external", "endpoint": {"url": "https://search.internal:9200"}, "auth": {"kind": "none"}, "health": {"kind": "http", "path": "/healthz"}}});
    let (st, e) = s.call("POST", &format!("{T}/services"), Some(ext)).await;
    assert_eq!(
        (st.as_u16(), e["status"]["lifecycleState"].as_str()),
        (201, Some("declared"))
    );
    // Stop and restart return the object with 202.
    let (st, stopped) = s
        .call(
            "POST",
            &format!("{T}/services/browser/stop?waitUntil=stopped"),
            None,
        )
        .await;
    assert_eq!(
        (st.as_u16(), stopped["status"]["desiredState"].as_str()),
        (202, Some("stopped"))
    );
    let (st, _) = s
        .call("POST", &format!("{T}/services/browser/restart"), None)
        .await;
    assert_eq!(st, 202);
}

#[tokio::test]
async fn generation_changes_only_on_spec_changes_and_resource_version_on_every_write() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (_, a) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(json!({"name": "a", "backend": {"kind": "builtIn", "provider": "browser"}})),
        )
        .await;
    let (_, b) = s
        .call(
            "PUT",
            &format!("{T}/services/a"),
            Some(json!({"labels": {"x": "y"}, "ifMatchGeneration": 1})),
        )
        .await;
    assert_eq!(b["metadata"]["generation"], 1);
    assert_ne!(
        a["metadata"]["resourceVersion"],
        b["metadata"]["resourceVersion"]
    );
    let (_, c) = s.call("PUT", &format!("{T}/services/a"), Some(json!({"backend": {"kind": "builtIn", "provider": "browser"}, "ifMatchGeneration": 1}))).await;
    assert_eq!(
        c["metadata"]["generation"], 1,
        "same backend is no spec change"
    );
    let (_, d) = s.call("POST", &format!("{T}/services/a/start"), None).await;
    assert_eq!(d["metadata"]["generation"], 1);
    assert_ne!(
        d["metadata"]["resourceVersion"],
        c["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn stale_generation_is_rejected_with_precondition_failed_naming_the_current_one() {
    let s = Server::start_with_config(NO_DRIVER).await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    s.call(
        "PUT",
        &format!("{T}/services/worker"),
        Some(
            json!({"backend": {"kind": "builtIn", "provider": "browser"}, "ifMatchGeneration": 1}),
        ),
    )
    .await;
    let r = s
        .call(
            "PUT",
            &format!("{T}/services/worker"),
            Some(json!({"labels": {}, "ifMatchGeneration": 1})),
        )
        .await;
    assert_error(&r, 412, "op.precondition_failed");
    assert!(r.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("generation 2"));
    assert_eq!(r.1["error"]["details"]["currentGeneration"], 2);
    assert_error(
        &s.call(
            "DELETE",
            &format!("{T}/services/worker?ifMatchGeneration=1"),
            None,
        )
        .await,
        412,
        "op.precondition_failed",
    );
    assert_error(
        &s.call(
            "PUT",
            &format!("{T}/services/worker"),
            Some(json!({"labels": {}})),
        )
        .await,
        400,
        "request.invalid_argument",
    );
    assert_error(
        &s.call("DELETE", &format!("{T}/services/worker"), None)
            .await,
        400,
        "request.invalid_argument",
    );
}

#[tokio::test]
async fn concurrent_updates_with_one_generation_have_exactly_one_winner() {
    let s = Server::start_with_config(NO_DRIVER).await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let providers = [
        "loadBalancer",
        "serviceDiscovery",
        "browser",
        "modelGateway",
    ];
    let calls = (0..12).map(|i| {
        let body = json!({"backend": {"kind": "builtIn", "provider": providers[i % 4]}, "ifMatchGeneration": 1});
        s.call("PUT", "/v1/tenants/demo/services/worker", Some(body))
    });
    let results = futures_util::future::join_all(calls).await;
    let wins = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in results.iter().filter(|r| r.0 != 200) {
        assert_error(r, 412, "op.precondition_failed");
    }
}

#[tokio::test]
async fn listing_paginates_over_several_pages_with_stable_order_and_rejects_bad_tokens() {
    let s = Server::start_with_config(NO_DRIVER).await;
    for i in 0..7 {
        let (st, _) = s.call("POST", &format!("{T}/services"), Some(json!({"name": format!("svc-{i}"), "backend": {"kind": "builtIn", "provider": "browser"}}))).await;
        assert_eq!(st, 201);
        let (st, _) = s
            .call("POST", &format!("{T}/sandboxes"), Some(batch_sandbox()))
            .await;
        assert_eq!(st, 201);
    }
    for collection in ["services", "sandboxes"] {
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let q = if token.is_empty() {
                "limit=3".to_string()
            } else {
                format!("limit=3&pageToken={token}")
            };
            let (st, page) = s.call("GET", &format!("{T}/{collection}?{q}"), None).await;
            assert_eq!(st, 200, "{page}");
            pages += 1;
            for item in page["items"].as_array().unwrap() {
                seen.push(
                    item["metadata"]["name"]
                        .as_str()
                        .or(item["metadata"]["id"].as_str())
                        .unwrap()
                        .to_string(),
                );
            }
            token = page["metadata"]["nextPageToken"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(pages, 3, "{collection}");
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "{collection} order");
        assert_eq!(
            seen.iter().collect::<BTreeSet<_>>().len(),
            7,
            "{collection} every item once"
        );
    }
    let r = s
        .call("GET", &format!("{T}/services?pageToken=bogus"), None)
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    assert_eq!(r.1["error"]["details"]["field"], "pageToken");
    // A sandboxes token is not a services token.
    let (_, page) = s.call("GET", &format!("{T}/sandboxes?limit=1"), None).await;
    let tok = page["metadata"]["nextPageToken"].as_str().unwrap();
    assert_error(
        &s.call("GET", &format!("{T}/services?pageToken={tok}"), None)
            .await,
        400,
        "request.invalid_argument",
    );
    // A token is bound to its listing's filters; only the limit may change between pages.
    let filtered = "labelKey=purpose&labelValue=batch";
    let (_, page) = s
        .call("GET", &format!("{T}/sandboxes?limit=1&{filtered}"), None)
        .await;
    let tok = page["metadata"]["nextPageToken"].as_str().unwrap();
    let (st, next) = s
        .call(
            "GET",
            &format!("{T}/sandboxes?limit=4&labelValue=batch&labelKey=purpose&pageToken={tok}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{next}");
    for other in ["", "&labelKey=purpose", "&state=pending"] {
        let r = s
            .call(
                "GET",
                &format!("{T}/sandboxes?limit=1{other}&pageToken={tok}"),
                None,
            )
            .await;
        assert_error(&r, 400, "request.invalid_argument");
        assert!(
            r.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("same filters"),
            "{}",
            r.1
        );
    }
}

#[tokio::test]
async fn sandboxes_are_stored_pending_with_a_truthful_condition_and_redacted_inputs() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let mut body = batch_sandbox();
    body["spec"]["process"]["environment"] = json!({"API_KEY": "hunter2"});
    let (st, sbx) = s.call("POST", &format!("{T}/sandboxes"), Some(body)).await;
    assert_eq!(st, 201, "{sbx}");
    let id = sbx["metadata"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sbx_") && id.len() == 30, "{id}");
    assert_eq!(sbx["status"]["lifecycleState"], "pending");
    assert_eq!(sbx["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(sbx["status"]["conditions"][0]["status"], "False");
    assert_eq!(
        sbx["status"]["conditions"][0]["reason"],
        "DriverUnavailable"
    );
    let (_, got) = s.call("GET", &format!("{T}/sandboxes/{id}"), None).await;
    assert!(
        !got.to_string().contains("hunter2") && !got.to_string().contains("job.py"),
        "{got}"
    );
    assert_eq!(
        got["spec"]["process"]["environment"],
        json!({"redacted": true, "valueCount": 1})
    );
    // Label and state filters.
    let mut other = batch_sandbox();
    other["labels"] = json!({"purpose": "other"});
    let (_, other) = s.call("POST", &format!("{T}/sandboxes"), Some(other)).await;
    let other_id = other["metadata"]["id"].as_str().unwrap().to_string();
    let (_, batch) = s
        .call(
            "GET",
            &format!("{T}/sandboxes?labelKey=purpose&labelValue=batch"),
            None,
        )
        .await;
    assert_eq!(batch["items"].as_array().unwrap().len(), 1);
    let (_, keyed) = s
        .call("GET", &format!("{T}/sandboxes?labelKey=purpose"), None)
        .await;
    assert_eq!(keyed["items"].as_array().unwrap().len(), 2);
    // Stop a pending sandbox: it ends at once; stopping again is a no-op.
    let (st, stopped) = s
        .call("POST", &format!("{T}/sandboxes/{id}/stop"), None)
        .await;
    assert_eq!(
        (st.as_u16(), stopped["status"]["lifecycleState"].as_str()),
        (202, Some("stopped"))
    );
    let (st, _) = s
        .call("POST", &format!("{T}/sandboxes/{id}/stop"), None)
        .await;
    assert_eq!(st, 202);
    let (_, by_state) = s
        .call("GET", &format!("{T}/sandboxes?state=stopped"), None)
        .await;
    assert_eq!(by_state["items"].as_array().unwrap().len(), 1);
    assert_error(
        &s.call("GET", &format!("{T}/sandboxes?state=running"), None)
            .await,
        400,
        "request.invalid_argument",
    );
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
    assert_error(
        &s.call("GET", &format!("{T}/sandboxes/{id}"), None).await,
        404,
        "resource.not_found",
    );
    // A sandbox deleted before it ended answers with its final state, not the one it had.
    let (st, deleted) = s
        .call("DELETE", &format!("{T}/sandboxes/{other_id}"), None)
        .await;
    assert_eq!(st, 200, "{deleted}");
    assert_eq!(deleted["status"]["lifecycleState"], "stopped", "{deleted}");
    assert_eq!(deleted["status"]["readiness"], "notReady", "{deleted}");
    assert_eq!(
        deleted["status"]["conditions"][0]["reason"], "Deleted",
        "{deleted}"
    );
    // Service-owned sandboxes are not created through this API.
    let mut owned = batch_sandbox();
    owned["spec"]["owner"] = json!({"kind": "service", "serviceName": "worker"});
    let r = s.call("POST", &format!("{T}/sandboxes"), Some(owned)).await;
    assert_error(&r, 400, "request.invalid_argument");
    assert_eq!(r.1["error"]["details"]["field"], "spec.owner");
    // krun specs are validated, then process execution fails closed.
    let mut krun = batch_sandbox();
    krun["spec"]["backend"] = json!("krun");
    let r = s
        .call("POST", &format!("{T}/sandboxes"), Some(krun.clone()))
        .await;
    assert_error(&r, 501, "op.not_supported");
    assert!(r.1["error"]["message"].as_str().unwrap().contains("egress"));
    krun["spec"]["process"]["argv"] = json!([]);
    assert_error(
        &s.call("POST", &format!("{T}/sandboxes"), Some(krun)).await,
        400,
        "request.invalid_argument",
    );
}

#[tokio::test]
async fn sessions_open_list_close_with_snapshot_ttl_and_channel_rules() {
    let s = Server::start_with_config(NO_DRIVER).await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let (st, ses) = s
        .call("POST", &format!("{T}/sessions"), Some(json!({"target": {"service": {"name": "worker"}}, "channels": ["stdio"], "requestedTtlMs": 600000})))
        .await;
    assert_eq!(st, 201, "{ses}");
    let id = ses["metadata"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        ses["spec"]["targetSnapshot"],
        json!({"kind": "service", "name": "worker", "generation": 1, "backend": "sandbox"})
    );
    assert_eq!(ses["status"]["lifecycleState"], "open");
    assert_eq!(ses["spec"]["ttlMs"], 600000);
    // Default and capped TTLs.
    let (_, d) = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "worker"}}, "channels": ["files"]})),
        )
        .await;
    assert_eq!(d["spec"]["ttlMs"], 15 * 60 * 1000);
    let (_, c) = s.call("POST", &format!("{T}/sessions"), Some(json!({"target": {"service": {"name": "worker"}}, "channels": ["stdio"], "requestedTtlMs": 7_200_000}))).await;
    assert_eq!(
        (
            c["spec"]["ttlMs"].as_i64(),
            c["spec"]["ttlClamped"].as_bool()
        ),
        (Some(3_600_000), Some(true))
    );
    // Channels checked against the target kind.
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(json!({"name": "lb", "backend": {"kind": "builtIn", "provider": "loadBalancer"}})),
    )
    .await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(json!({"name": "browser", "backend": {"kind": "builtIn", "provider": "browser"}})),
    )
    .await;
    let r = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "worker"}}, "channels": ["cdp"]})),
        )
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    assert!(r.1["error"]["message"].as_str().unwrap().contains("cdp"));
    assert_error(
        &s.call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "lb"}}, "channels": ["stdio"]})),
        )
        .await,
        400,
        "request.invalid_argument",
    );
    assert_eq!(
        s.call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "browser"}}, "channels": ["cdp", "page"]}))
        )
        .await
        .0,
        201
    );
    assert_error(
        &s.call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "worker"}}, "channels": ["tty"]})),
        )
        .await,
        400,
        "request.invalid_argument",
    );
    // Exactly one target.
    let both = json!({"target": {"service": {"name": "worker"}, "sandbox": {"id": "sbx_00000000000000000000000000"}}, "channels": []});
    assert_error(
        &s.call("POST", &format!("{T}/sessions"), Some(both)).await,
        400,
        "request.invalid_argument",
    );
    assert_error(
        &s.call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {}, "channels": []})),
        )
        .await,
        400,
        "request.invalid_argument",
    );
    assert_error(
        &s.call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "nope"}}, "channels": []})),
        )
        .await,
        404,
        "resource.not_found",
    );
    // A sandbox target must be ready.
    let (_, sbx) = s
        .call("POST", &format!("{T}/sandboxes"), Some(batch_sandbox()))
        .await;
    let sid = sbx["metadata"]["id"].as_str().unwrap();
    let r = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"sandbox": {"id": sid}}, "channels": ["stdio"]})),
        )
        .await;
    assert_error(&r, 409, "state.invalid_transition");
    // List by state, close with a reason, closing twice is refused.
    let (_, open) = s
        .call("GET", &format!("{T}/sessions?state=open"), None)
        .await;
    assert_eq!(open["items"].as_array().unwrap().len(), 4);
    let (st, closed) = s
        .call(
            "POST",
            &format!("{T}/sessions/{id}/close"),
            Some(json!({"reason": "done"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        (
            closed["status"]["lifecycleState"].as_str(),
            closed["status"]["closeReason"].as_str()
        ),
        (Some("closed"), Some("done"))
    );
    assert_error(
        &s.call(
            "POST",
            &format!("{T}/sessions/{id}/close"),
            Some(json!({"reason": "again"})),
        )
        .await,
        409,
        "state.invalid_transition",
    );
    let (_, closed_list) = s
        .call("GET", &format!("{T}/sessions?state=closed"), None)
        .await;
    assert_eq!(closed_list["items"].as_array().unwrap().len(), 1);
    assert_error(
        &s.call("GET", &format!("{T}/sessions?state=gone"), None)
            .await,
        400,
        "request.invalid_argument",
    );
}

#[tokio::test]
async fn sessions_expire_on_time_without_anyone_asking() {
    let s = Server::start_with_config(NO_DRIVER).await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let (_, ses) = s.call("POST", &format!("{T}/sessions"), Some(json!({"target": {"service": {"name": "worker"}}, "channels": ["stdio"], "requestedTtlMs": 1000}))).await;
    let id = ses["metadata"]["id"].as_str().unwrap().to_string();
    // Only list (which never expires anything itself) until the reaper has done its job.
    let mut expired = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, list) = s
            .call("GET", &format!("{T}/sessions?state=expired"), None)
            .await;
        if list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["metadata"]["id"] == id.as_str())
        {
            expired = true;
            break;
        }
    }
    assert!(
        expired,
        "the session was not expired by the reaper within 10s"
    );
    let (_, got) = s.call("GET", &format!("{T}/sessions/{id}"), None).await;
    assert_eq!(got["status"]["lifecycleState"], "expired");
    let (_, audit) = s.call("GET", &format!("{T}/audit?limit=1000"), None).await;
    assert!(audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "sessions.expire"));
}

#[tokio::test]
async fn a_session_whose_service_changed_mid_open_is_a_conflict_or_pins_the_new_generation() {
    // Race updates against opens: every open either pins a generation that existed, or is a
    // resource.conflict; never a 5xx.
    let s = Server::start_with_config(NO_DRIVER).await;
    s.call("POST", &format!("{T}/services"), Some(worker_service("w")))
        .await;
    let mut conflicts = 0;
    for round in 0..20i64 {
        // A new definition each round (another argv), offering the same channels.
        let mut backend = worker_service("w")["backend"].clone();
        backend["sandbox"]["process"]["argv"] = json!(["node", format!("server-{round}.js")]);
        let update = s.call(
            "PUT",
            "/v1/tenants/demo/services/w",
            Some(json!({"backend": backend, "ifMatchGeneration": round + 1})),
        );
        let open = s.call(
            "POST",
            "/v1/tenants/demo/sessions",
            Some(json!({"target": {"service": {"name": "w"}}, "channels": ["stdio"]})),
        );
        let (u, o) = tokio::join!(update, open);
        assert_eq!(u.0, 200, "{}", u.1);
        match o.0.as_u16() {
            201 => {
                let g = o.1["spec"]["targetSnapshot"]["generation"]
                    .as_i64()
                    .unwrap();
                assert!(g == round + 1 || g == round + 2);
            }
            409 => {
                assert_error(&o, 409, "resource.conflict");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", o.1),
        }
    }
    eprintln!("{conflicts} of 20 opens raced into a conflict");
}

#[tokio::test]
async fn bad_input_gets_a_400_naming_the_field() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"name": "Bad_Name", "backend": {"kind": "builtIn", "provider": "browser"}}),
            "name",
        ),
        (
            json!({"name": "ok", "backend": {"kind": "builtIn", "provider": "ftp"}}),
            "backend.provider",
        ),
        (
            json!({"name": "ok", "backend": {"kind": "external", "endpoint": {"url": "http://x"}, "health": {"kind": "http", "path": 5}}}),
            "backend.health.path",
        ),
        (
            json!({"name": "ok", "backend": {"kind": "teleport"}}),
            "backend.kind",
        ),
        (
            json!({"name": "ok", "backend": {"kind": "builtIn", "provider": "browser"}, "colour": 1}),
            "",
        ),
        (json!({"name": "ok"}), "backend"),
        (
            json!({"name": "ok", "backend": {"kind": "external", "endpoint": {"url": "ftp://x"}}}),
            "backend.endpoint.url",
        ),
    ];
    for (body, field) in cases {
        let r = s
            .call("POST", &format!("{T}/services"), Some(body.clone()))
            .await;
        assert_error(&r, 400, "request.invalid_argument");
        if !field.is_empty() {
            assert_eq!(r.1["error"]["details"]["field"], field, "{body}: {}", r.1);
        } else {
            assert!(
                r.1["error"]["message"].as_str().unwrap().contains("colour"),
                "{}",
                r.1
            );
        }
    }
    let r = s
        .call_raw("POST", &format!("{T}/services"), b"{\"name\": ".to_vec())
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    let r = s
        .call_raw("POST", &format!("{T}/services"), b"[]".to_vec())
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    // An array is not taken for an object, field by position (it was: 201).
    let r = s
        .call_raw(
            "POST",
            &format!("{T}/services"),
            br#"["arr", {"kind": "builtIn", "provider": "browser"}, {}]"#.to_vec(),
        )
        .await;
    assert_error_says(&r, 400, "request.invalid_argument", "must be a JSON object");
    // A key given twice is refused, not silently resolved to one of its values.
    for body in [
        r#"{"name": "twice", "backend": {"kind": "builtIn", "provider": "browser"}, "labels": {"a": "1", "a": "2"}}"#,
        r#"{"profile": "worker", "spec": {"owner": {"kind": "standalone", "displayName": "twice"}, "backend": "container", "root": {"kind": "oci_image", "source": {"kind": "reference", "reference": "busybox"}}, "process": {"argv": ["true"], "environment": {"X": "1", "X": "2"}}}}"#,
    ] {
        let path = if body.contains("profile") {
            "sandboxes"
        } else {
            "services"
        };
        let r = s
            .call_raw("POST", &format!("{T}/{path}"), body.as_bytes().to_vec())
            .await;
        assert_error(&r, 400, "request.invalid_argument");
        assert!(
            r.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("given twice"),
            "{}",
            r.1
        );
    }
    // A generation below 1 is no generation ever read: a bad request, not a stale one.
    let r = s
        .call(
            "DELETE",
            &format!("{T}/services/none-yet?ifMatchGeneration=-1"),
            None,
        )
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    assert_eq!(r.1["error"]["details"]["field"], "ifMatchGeneration");
    // A label filter no label could match is refused, naming it.
    let r = s
        .call("GET", &format!("{T}/sandboxes?labelKey=BAD%20KEY"), None)
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    assert_eq!(r.1["error"]["details"]["field"], "labelKey");
    let big = format!("{{\"name\": \"x\", \"backend\": {{\"kind\": \"builtIn\", \"provider\": \"browser\"}}, \"labels\": {{\"a\": \"{}\"}}}}", "x".repeat(2 * 1024 * 1024));
    assert_error(
        &s.call_raw("POST", &format!("{T}/services"), big.into_bytes())
            .await,
        400,
        "request.invalid_argument",
    );
    let mut sbx = batch_sandbox();
    sbx["spec"]["process"]["workingDir"] = json!("/proc/self/fd/3");
    let r = s.call("POST", &format!("{T}/sandboxes"), Some(sbx)).await;
    assert_eq!(
        r.1["error"]["details"]["field"], "spec.process.workingDir",
        "{}",
        r.1
    );
    let mut sbx = batch_sandbox();
    sbx["profile"] = json!("gamer");
    assert_eq!(
        s.call("POST", &format!("{T}/sandboxes"), Some(sbx)).await.1["error"]["details"]["field"],
        "profile"
    );
    assert_error(
        &s.call("GET", "/v1/tenants/Not_A_Tenant/services", None)
            .await,
        400,
        "request.invalid_argument",
    );
    assert_error(
        &s.call("GET", &format!("{T}/services?limit=0"), None).await,
        400,
        "request.invalid_argument",
    );
    assert_error(
        &s.call("GET", &format!("{T}/services?limt=5"), None).await,
        400,
        "request.invalid_argument",
    );
    assert_error(
        &s.call("GET", &format!("{T}/sandboxes/not-an-id"), None)
            .await,
        400,
        "request.invalid_argument",
    );
    let dup = json!({"name": "dup", "backend": {"kind": "builtIn", "provider": "browser"}});
    assert_eq!(
        s.call("POST", &format!("{T}/services"), Some(dup.clone()))
            .await
            .0,
        201
    );
    assert_error(
        &s.call("POST", &format!("{T}/services"), Some(dup)).await,
        409,
        "resource.already_exists",
    );
}

/// Labels do not move the generation, so two read-modify-writes of labels at one generation
/// would both succeed; `ifMatchResourceVersion` lets the second one learn it is stale.
#[tokio::test]
async fn label_writes_can_be_guarded_by_the_resource_version() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (_, svc) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(worker_service("lbl")),
        )
        .await;
    let rv = svc["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let put = |owner: &str| json!({"labels": {"owner": owner}, "ifMatchGeneration": 1, "ifMatchResourceVersion": rv});
    let (st, bob) = s
        .call("PUT", &format!("{T}/services/lbl"), Some(put("bob")))
        .await;
    assert_eq!(st, 200, "{bob}");
    let stale = s
        .call("PUT", &format!("{T}/services/lbl"), Some(put("carol")))
        .await;
    assert_error(&stale, 412, "op.precondition_failed");
    assert_eq!(
        stale.1["error"]["details"]["currentResourceVersion"], bob["metadata"]["resourceVersion"],
        "{}",
        stale.1
    );
    // A value that cannot be a resourceVersion is a bad request, not a stale one.
    for bad in ["", "v3", "-1"] {
        let r = s
            .call(
                "PUT",
                &format!("{T}/services/lbl"),
                Some(json!({"labels": {}, "ifMatchGeneration": 1, "ifMatchResourceVersion": bad})),
            )
            .await;
        assert_error_says(
            &r,
            400,
            "request.invalid_argument",
            "is not a resourceVersion",
        );
    }
    let (_, now) = s.call("GET", &format!("{T}/services/lbl"), None).await;
    assert_eq!(
        now["metadata"]["labels"]["owner"], "bob",
        "the stale write changed nothing"
    );
    // `null` for the optional labels means "unchanged", as for any optional field.
    let (st, same) = s
        .call(
            "PUT",
            &format!("{T}/services/lbl"),
            Some(json!({"labels": null, "ifMatchGeneration": 1})),
        )
        .await;
    assert_eq!(st, 200, "{same}");
    assert_eq!(same["metadata"]["labels"]["owner"], "bob", "{same}");
    // A write of what is already there writes nothing: the resource version holds, so a
    // reader's guarded write still goes through.
    assert_eq!(
        same["metadata"]["resourceVersion"], bob["metadata"]["resourceVersion"],
        "{same}"
    );
    let bob_rv = bob["metadata"]["resourceVersion"].as_str().unwrap();
    let mut again = worker_service("lbl");
    again.as_object_mut().unwrap().remove("name");
    again["labels"] = json!({"owner": "bob"});
    again["ifMatchGeneration"] = json!(1);
    again["ifMatchResourceVersion"] = json!(bob_rv);
    let (st, same) = s
        .call("PUT", &format!("{T}/services/lbl"), Some(again))
        .await;
    assert_eq!(st, 200, "{same}");
    assert_eq!(same["metadata"]["resourceVersion"], bob_rv, "{same}");
    assert_eq!(same["metadata"]["generation"], 1, "{same}");
    assert_eq!(
        same["metadata"]["updatedAt"], bob["metadata"]["updatedAt"],
        "{same}"
    );
}

/// Tenants and sessions have the shape every resource has (http-api.md): metadata with a
/// generation and times, spec, and a status with readiness, health and a Ready condition.
#[tokio::test]
async fn tenants_sandboxes_and_sessions_have_the_shape_of_every_resource() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (st, tenant) = s.call("GET", T, None).await;
    assert_eq!(st, 200, "{tenant}");
    let (_, svc) = s
        .call("POST", &format!("{T}/services"), Some(worker_service("w")))
        .await;
    assert!(svc["metadata"]["generation"].is_i64(), "{svc}");
    let (_, open) = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "w"}}, "channels": ["stdio"]})),
        )
        .await;
    let id = open["metadata"]["id"].as_str().unwrap().to_string();
    let (_, closed) = s
        .call(
            "POST",
            &format!("{T}/sessions/{id}/close"),
            Some(json!({"reason": "done"})),
        )
        .await;
    let (st, sandbox) = s
        .call("POST", &format!("{T}/sandboxes"), Some(batch_sandbox()))
        .await;
    assert_eq!(st, 201, "{sandbox}");
    for r in [&tenant, &open, &closed, &sandbox] {
        for key in [
            "generation",
            "resourceVersion",
            "createdAt",
            "updatedAt",
            "labels",
        ] {
            assert!(!r["metadata"][key].is_null(), "no metadata.{key}: {r}");
        }
        assert!(r["spec"].is_object(), "{r}");
        for key in [
            "lifecycleState",
            "readiness",
            "health",
            "observedGeneration",
        ] {
            assert!(!r["status"][key].is_null(), "no status.{key}: {r}");
        }
        assert_eq!(r["status"]["conditions"][0]["type"], "Ready", "{r}");
    }
    assert_eq!(tenant["status"]["conditions"][0]["status"], "True");
    assert_eq!(open["status"]["readiness"], "ready");
    assert_eq!(closed["status"]["readiness"], "notReady");
    assert_eq!(closed["status"]["conditions"][0]["reason"], "Closed");
    assert_eq!(closed["status"]["conditions"][0]["status"], "False");
    // A sandbox has no health check: unknown until its process runs.
    assert_eq!(sandbox["status"]["health"], "unknown", "{sandbox}");
}

/// A read-modify-write that sends back what a read shows in place of a secret is told which
/// value that is and what to send instead.
#[tokio::test]
async fn sending_back_a_redacted_value_names_it() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let body = json!({"name": "ext", "backend": {"kind": "external", "endpoint": {"url": "https://search.internal:9200"}, "auth": {"kind": "bearer", "token": "s3cret"}}});
    let (st, created) = s.call("POST", &format!("{T}/services"), Some(body)).await;
    assert_eq!(st, 201, "{created}");
    let (_, read) = s.call("GET", &format!("{T}/services/ext"), None).await;
    assert_eq!(
        read["spec"]["backend"]["auth"]["token"]["redacted"], true,
        "{read}"
    );
    let r = s
        .call(
            "PUT",
            &format!("{T}/services/ext"),
            Some(json!({"backend": read["spec"]["backend"], "ifMatchGeneration": 1})),
        )
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    assert_eq!(
        r.1["error"]["details"]["field"], "backend.auth.token",
        "{}",
        r.1
    );
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send the value itself"),
        "{}",
        r.1
    );
}

/// Free text that ends up in audit logs and terminals may not hide what it says: control
/// characters and invisible formatting ones (a right-to-left override, a line separator) are
/// refused in a close reason, a credential description and a sandbox's display name.
#[tokio::test]
async fn free_text_with_invisible_formatting_characters_is_refused() {
    let s = Server::start_with_config(NO_DRIVER).await;
    s.call("POST", &format!("{T}/services"), Some(worker_service("w")))
        .await;
    let (_, ses) = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "w"}}, "channels": ["stdio"]})),
        )
        .await;
    let id = ses["metadata"]["id"].as_str().unwrap();
    for sneaky in [
        "done\u{202E}txt.exe",
        "line\u{2028}break",
        "zero\u{200B}width",
    ] {
        let r = s
            .call(
                "POST",
                &format!("{T}/sessions/{id}/close"),
                Some(json!({ "reason": sneaky })),
            )
            .await;
        assert_error(&r, 400, "request.invalid_argument");
        assert_eq!(r.1["error"]["details"]["field"], "reason");
        let r = s
            .call(
                "POST",
                &format!("{T}/credentials"),
                Some(json!({"kind": "token", "grants": ["tenant:read"], "description": sneaky})),
            )
            .await;
        assert_error(&r, 400, "request.invalid_argument");
        let mut sbx = batch_sandbox();
        sbx["spec"]["owner"]["displayName"] = json!(sneaky);
        let r = s.call("POST", &format!("{T}/sandboxes"), Some(sbx)).await;
        assert_error(&r, 400, "request.invalid_argument");
    }
    // The session is still open: nothing was written.
    let (_, still) = s.call("GET", &format!("{T}/sessions/{id}"), None).await;
    assert_eq!(still["status"]["lifecycleState"], "open", "{still}");
}

/// Input the contract refuses, found by probing every route with malformed requests: each is a
/// 400 with the JSON error body, and nothing is written.
#[tokio::test]
async fn malformed_requests_are_refused_whole_and_write_nothing() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let svc = |name: &str| {
        format!(
            "{{\"name\":\"{name}\",\"backend\":{{\"kind\":\"builtIn\",\"provider\":\"browser\"}}}}"
        )
    };

    // Anything after the JSON value: refused, not cut short, and no record appears.
    for (i, tail) in ["xx", " {\"name\":\"other\"}", "}}", "\u{0}"]
        .iter()
        .enumerate()
    {
        let name = format!("trail-{i}");
        let r = s
            .call_raw(
                "POST",
                &format!("{T}/services"),
                format!("{}{tail}", svc(&name)).into_bytes(),
            )
            .await;
        assert_error(&r, 400, "request.invalid_argument");
        assert!(
            r.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("malformed JSON"),
            "{}",
            r.1
        );
        assert_error(
            &s.call("GET", &format!("{T}/services/{name}"), None).await,
            404,
            "resource.not_found",
        );
    }
    let (st, created) = s
        .call_raw("POST", &format!("{T}/services"), svc("kept").into_bytes())
        .await;
    assert_eq!(st, 201, "{created}");
    let update = "{\"labels\":{\"a\":\"b\"},\"ifMatchGeneration\":1}garbage";
    assert_error(
        &s.call_raw(
            "PUT",
            &format!("{T}/services/kept"),
            update.as_bytes().to_vec(),
        )
        .await,
        400,
        "request.invalid_argument",
    );

    // A compressed body is refused by name, not as malformed JSON.
    let compressed = s
        .client
        .post(format!("{}{T}/services", s.base_url()))
        .bearer_auth(&s.token)
        .header("Content-Encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(compressed.status(), 400);
    let body: serde_json::Value = compressed.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Content-Encoding \"gzip\" is not supported"),
        "{body}"
    );

    // Query parameters a call does not take, on calls that take none.
    for (method, path) in [
        ("GET", format!("{T}/services/kept?bogus=1")),
        ("GET", format!("{T}?x=1")),
        ("GET", "/healthz?x=1".to_string()),
        ("GET", "/v1/openapi.json?x=1".to_string()),
        (
            "GET",
            format!("{T}/sandboxes/sbx_0123456789abcdef01234567?force=true"),
        ),
    ] {
        let r = s.call(method, &path, None).await;
        assert_error(&r, 400, "request.invalid_argument");
    }
    let r = s
        .call(
            "PUT",
            &format!("{T}/services/kept?bogusParam=1"),
            Some(json!({"labels": {"a": "b"}, "ifMatchGeneration": 1})),
        )
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    assert_eq!(r.1["error"]["details"]["field"], "bogusParam", "{}", r.1);

    // An explicitly empty value is a mistake, not the default.
    let r = s
        .call("POST", &format!("{T}/services/kept/start?waitUntil="), None)
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    assert_eq!(r.1["error"]["details"]["field"], "waitUntil", "{}", r.1);

    // start/stop/restart take no body; an empty object is allowed for clients that always send one.
    for body in ["{\"unknownField\":1}", "{", "[]", "null"] {
        assert_error(
            &s.call_raw(
                "POST",
                &format!("{T}/services/kept/start"),
                body.as_bytes().to_vec(),
            )
            .await,
            400,
            "request.invalid_argument",
        );
    }
    let (st, after) = s.call("GET", &format!("{T}/services/kept"), None).await;
    assert_eq!(st, 200);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    assert_eq!(after["metadata"]["labels"], created["metadata"]["labels"]);
    for body in ["", "{}", " { } "] {
        let (st, v) = s
            .call_raw(
                "POST",
                &format!("{T}/services/kept/stop"),
                body.as_bytes().to_vec(),
            )
            .await;
        assert_eq!(st, 202, "{body:?}: {v}");
    }
    // Nor do GET and DELETE: a body is refused before the call runs, not ignored.
    for (method, query, body) in [
        ("GET", "", "{\"junk\":"),
        ("DELETE", "?ifMatchGeneration=1", "{\"bogus\":true}"),
        ("DELETE", "?ifMatchGeneration=1", "not json at all"),
    ] {
        let r = s
            .call_raw(
                method,
                &format!("{T}/services/kept{query}"),
                body.as_bytes().to_vec(),
            )
            .await;
        assert_error_says(&r, 400, "request.invalid_argument", "takes no request body");
    }
    let (st, kept) = s.call("GET", &format!("{T}/services/kept"), None).await;
    assert_eq!(st, 200, "a refused delete deleted the service: {kept}");

    // A path segment that is not UTF-8: the JSON error body, not axum's plain text.
    let r = s.call("GET", &format!("{T}/services/%FF"), None).await;
    assert_error_says(&r, 400, "request.invalid_argument", "percent-encoded UTF-8");

    // Page tokens are signed: a well-formed made-up one and an edited real one are refused.
    for i in 0..3 {
        s.call_raw(
            "POST",
            &format!("{T}/services"),
            svc(&format!("page-{i}")).into_bytes(),
        )
        .await;
    }
    let (st, page) = s.call("GET", &format!("{T}/services?limit=1"), None).await;
    assert_eq!(st, 200);
    let token = page["metadata"]["nextPageToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.call(
            "GET",
            &format!("{T}/services?limit=1&pageToken={token}"),
            None
        )
        .await
        .0,
        200
    );
    let mut edited = token.clone().into_bytes();
    let last = edited.len() - 2;
    edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).unwrap();
    use base64::Engine;
    // The current payload format (version, collection, tenant, the digest of no filters, the
    // key to continue after), without the server's tag.
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode("p3\nservices\ndemo\ne3b0c44298fc1c14\nzzz");
    for bad in [edited, forged] {
        let r = s
            .call(
                "GET",
                &format!("{T}/services?limit=1&pageToken={bad}"),
                None,
            )
            .await;
        assert_error(&r, 400, "request.invalid_argument");
        assert_eq!(r.1["error"]["details"]["field"], "pageToken", "{}", r.1);
    }

    // Required fields are required: a session's channels, a credential's grants.
    let r = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "kept"}}})),
        )
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    assert_eq!(r.1["error"]["details"]["field"], "channels", "{}", r.1);
    let r = s
        .call(
            "POST",
            &format!("{T}/credentials"),
            Some(json!({"kind": "token"})),
        )
        .await;
    assert_error(&r, 400, "request.invalid_argument");
    assert_eq!(r.1["error"]["details"]["field"], "grants", "{}", r.1);
    let (_, sessions) = s.call("GET", &format!("{T}/sessions"), None).await;
    assert_eq!(sessions["items"].as_array().unwrap().len(), 0, "{sessions}");
}

#[tokio::test]
async fn deleting_a_service_closes_its_open_sessions() {
    let s = Server::start_with_config(NO_DRIVER).await;
    for name in ["worker", "other"] {
        let (st, _) = s
            .call("POST", &format!("{T}/services"), Some(worker_service(name)))
            .await;
        assert_eq!(st, 201);
    }
    let open =
        |name: &str| Some(json!({"target": {"service": {"name": name}}, "channels": ["stdio"]}));
    let sessions = format!("{T}/sessions");
    let (_, on_worker) = s.call("POST", &sessions, open("worker")).await;
    let (_, on_other) = s.call("POST", &sessions, open("other")).await;
    let (st, deleted) = s
        .call(
            "DELETE",
            &format!("{T}/services/worker?ifMatchGeneration=1&force=true"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{deleted}");
    let path = |ses: &serde_json::Value| {
        format!("{T}/sessions/{}", ses["metadata"]["id"].as_str().unwrap())
    };
    let (_, closed) = s.call("GET", &path(&on_worker), None).await;
    assert_eq!(closed["status"]["lifecycleState"], "closed", "{closed}");
    assert_eq!(
        closed["status"]["closeReason"],
        "the service worker was deleted"
    );
    let (_, other) = s.call("GET", &path(&on_other), None).await;
    assert_eq!(other["status"]["lifecycleState"], "open");
    // A service created again under the name has no session from before.
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let (_, page) = s
        .call("GET", &format!("{T}/sessions?state=open"), None)
        .await;
    let open_ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(open_ids, vec![on_other["metadata"]["id"].as_str().unwrap()]);
    let (_, audit) = s.call("GET", &format!("{T}/audit?limit=1000"), None).await;
    assert!(audit["items"].as_array().unwrap().iter().any(|e| {
        e["action"] == "sessions.close" && e["reason"] == "the service worker was deleted"
    }));
}

/// Label keys under `nimbus.` are the server's (the service manager marks its sandboxes with
/// them): a client's sandbox or service may not carry them, so a client's sandbox can never
/// pass for a service's and be stopped or deleted by the manager.
#[tokio::test]
async fn label_keys_in_the_servers_namespace_are_refused() {
    let s = Server::start().await;
    let (st, created) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(worker_service("labelled")),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let mut sandbox = nimbus_e2e::batch_sandbox();
    sandbox["labels"] = json!({"nimbus.service": "w1", "nimbus.service-uid": "x"});
    let mut service = worker_service("other");
    service["labels"] = json!({"nimbus.team": "a"});
    let update = json!({"labels": {"nimbus.service": "other"}, "ifMatchGeneration": 1});
    for (method, path, body) in [
        ("POST", format!("{T}/sandboxes"), sandbox),
        ("POST", format!("{T}/services"), service),
        ("PUT", format!("{T}/services/labelled"), update),
    ] {
        let r = s.call(method, &path, Some(body)).await;
        assert_error_says(
            &r,
            400,
            "request.invalid_argument",
            "reserved for the server",
        );
    }
    let (_, list) = s.call("GET", &format!("{T}/sandboxes"), None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
}
