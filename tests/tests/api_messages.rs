//! What the API says when it refuses a request: messages in words a user understands (no Rust
//! or serde type names), naming the field and the value received, with grammatical counts and
//! articles; and the refusals themselves (empty channel lists, krun services, conditional
//! request headers), the default sandbox backend, and the final object of a forced delete.

use std::time::{Duration, Instant};

use nimbus_e2e::{assert_error, assert_error_says, json, worker_service, Server};
use serde_json::Value;

const T: &str = "/v1/tenants/demo";
/// Most of these are about the API alone; launching sandboxes is tested with the runtime.
const NO_DRIVER: &str = "[server]\nsandbox_driver = \"none\"\n";

fn message(r: &(nimbus_e2e::reqwest::StatusCode, Value)) -> &str {
    r.1["error"]["message"].as_str().unwrap_or("")
}

/// Asserts a 400 naming `field` whose message says `says` and none of serde's type words.
#[track_caller]
fn assert_bad_field(r: &(nimbus_e2e::reqwest::StatusCode, Value), field: &str, says: &str) {
    assert_error_says(r, 400, "request.invalid_argument", says);
    assert_eq!(r.1["error"]["details"]["field"], field, "{}", r.1);
    let m = message(r);
    for rust in [
        "u64",
        "u32",
        "u16",
        "i64",
        "f64",
        "struct",
        "a sequence",
        "a map",
        "a boolean",
        "invalid type",
        "invalid value",
        "variant",
        "malformed JSON",
    ] {
        assert!(!m.contains(rust), "{m:?} says {rust:?}");
    }
}

#[tokio::test]
async fn json_type_errors_say_what_was_expected_in_words_with_the_value_received() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (st, _) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(worker_service("worker")),
        )
        .await;
    assert_eq!(st, 201);
    let session = |extra: Value| {
        let mut body = json!({"target": {"service": {"name": "worker"}}, "channels": ["stdio"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let mut sandbox = nimbus_e2e::batch_sandbox();
    sandbox["spec"]["resources"] = json!({"memoryMb": -1});
    let mut identity = nimbus_e2e::batch_sandbox();
    identity["spec"]["workloadIdentity"] = json!("yes");
    let mut profile = nimbus_e2e::batch_sandbox();
    profile["profile"] = json!(5);
    let mut cpus = nimbus_e2e::batch_sandbox();
    cpus["spec"]["resources"] = json!({"cpus": "two"});
    for (method, path, body, field, says) in [
        (
            "POST",
            "sessions",
            session(json!({"requestedTtlMs": -5})),
            "requestedTtlMs",
            "expected a whole number of 0 or more, got -5",
        ),
        (
            "POST",
            "sessions",
            session(json!({"target": {"service": "br"}})),
            "target.service",
            "expected an object, got the string \"br\"",
        ),
        (
            "POST",
            "sessions",
            session(json!({"channels": "stdio"})),
            "channels",
            "expected an array, got the string \"stdio\"",
        ),
        (
            "POST",
            "sessions",
            session(json!({"channels": [5]})),
            "channels[0]",
            "expected a string, got 5",
        ),
        (
            "PUT",
            "services/worker",
            json!({"ifMatchGeneration": "1"}),
            "ifMatchGeneration",
            "expected an integer, got the string \"1\"",
        ),
        (
            "PUT",
            "services/worker",
            json!({"ifMatchGeneration": 1, "labels": ["a"]}),
            "labels",
            "got an array",
        ),
        (
            "POST",
            "sandboxes",
            sandbox,
            "spec.resources.memoryMb",
            "expected a whole number of 0 or more, got -1",
        ),
        (
            "POST",
            "sandboxes",
            identity,
            "spec.workloadIdentity",
            "expected true or false, got the string \"yes\"",
        ),
        (
            "POST",
            "sandboxes",
            cpus,
            "spec.resources.cpus",
            "expected a number, got the string \"two\"",
        ),
        (
            "POST",
            "sandboxes",
            profile,
            "profile",
            "expected a string, got 5",
        ),
    ] {
        let r = s.call(method, &format!("{T}/{path}"), Some(body)).await;
        assert_bad_field(&r, field, says);
    }
}

#[tokio::test]
async fn an_unknown_channel_is_named_with_the_channels_there_are_and_what_the_target_offers() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let browser = json!({"name": "br", "backend": {"kind": "builtIn", "provider": "browser"}});
    assert_eq!(
        s.call("POST", &format!("{T}/services"), Some(browser))
            .await
            .0,
        201
    );
    let r = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "br"}}, "channels": ["cdp", "bogus"]})),
        )
        .await;
    assert_bad_field(
        &r,
        "channels[1]",
        "unknown channel \"bogus\"; channels are stdio, files, cdp, page",
    );
    assert!(
        message(&r).contains("a built-in browser service target offers cdp, page"),
        "{}",
        r.1
    );
    assert_eq!(r.1["error"]["details"]["channel"], "bogus", "{}", r.1);
}

#[tokio::test]
async fn sessions_need_one_or_more_channels_the_target_offers() {
    let s = Server::start_with_config(NO_DRIVER).await;
    for body in [
        worker_service("worker"),
        json!({"name": "lb", "backend": {"kind": "builtIn", "provider": "loadBalancer"}}),
        json!({"name": "search", "backend": {"kind": "external", "endpoint": {"url": "http://127.0.0.1:9"}}}),
    ] {
        assert_eq!(
            s.call("POST", &format!("{T}/services"), Some(body)).await.0,
            201
        );
    }
    let open = |name: &str, channels: Value| {
        Some(json!({"target": {"service": {"name": name}}, "channels": channels}))
    };
    // No channels: refused, saying what the target offers.
    let r = s
        .call("POST", &format!("{T}/sessions"), open("worker", json!([])))
        .await;
    assert_error_says(&r, 400, "request.invalid_argument", "one or more channels");
    assert_eq!(r.1["error"]["details"]["field"], "channels");
    assert!(message(&r).contains("stdio, files"), "{}", r.1);
    // A target that offers none: sessions cannot be opened on it, whatever the list.
    for name in ["lb", "search"] {
        for channels in [json!([]), json!(["stdio"])] {
            let r = s
                .call("POST", &format!("{T}/sessions"), open(name, channels))
                .await;
            assert_error_says(
                &r,
                400,
                "request.invalid_argument",
                "sessions cannot be opened on it",
            );
        }
    }
    // The article fits the word: "an external service", not "a external".
    let r = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            open("search", json!(["stdio"])),
        )
        .await;
    assert_error_says(
        &r,
        400,
        "request.invalid_argument",
        "is not offered by an external service target",
    );
    let r = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            open("worker", json!(["cdp"])),
        )
        .await;
    assert_error_says(
        &r,
        400,
        "request.invalid_argument",
        "is not offered by a sandbox-backed service target, which offers stdio, files",
    );
    // Nothing was opened.
    let (_, list) = s.call("GET", &format!("{T}/sessions"), None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test]
async fn quota_messages_give_the_count_and_the_limit_apart_in_grammatical_words() {
    let mut s = Server::start_with_config(
        "[server]\nsandbox_driver = \"none\"\n[limits]\nsandboxes_per_tenant = 1\n",
    )
    .await;
    let sandbox = nimbus_e2e::batch_sandbox();
    assert_eq!(
        s.call("POST", &format!("{T}/sandboxes"), Some(sandbox.clone()))
            .await
            .0,
        201
    );
    let r = s
        .call("POST", &format!("{T}/sandboxes"), Some(sandbox))
        .await;
    assert_error_says(
        &r,
        429,
        "quota.exhausted",
        "tenant \"demo\" has 1 sandbox running or pending and its limit is 1;",
    );
    // Two open sessions, then the limit lowered below them.
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let open = json!({"target": {"service": {"name": "worker"}}, "channels": ["stdio"]});
    for _ in 0..2 {
        let (st, body) = s
            .call("POST", &format!("{T}/sessions"), Some(open.clone()))
            .await;
        assert_eq!(st, 201, "{body}");
    }
    s.restart_with_config(
        "[server]\nsandbox_driver = \"none\"\n[limits]\nopen_sessions_per_tenant = 1\n",
    )
    .await;
    let r = s.call("POST", &format!("{T}/sessions"), Some(open)).await;
    assert_error_says(
        &r,
        429,
        "quota.exhausted",
        "tenant \"demo\" has 2 open sessions and its limit is 1; close some first",
    );
    assert_eq!(r.1["error"]["details"]["limit"], 1);
    assert_eq!(r.1["error"]["details"]["current"], 2);
}

#[tokio::test]
async fn a_taken_tenant_name_advises_no_update_call_and_a_blank_close_reason_says_so() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let r = s
        .call("POST", "/v1/tenants", Some(json!({"name": "demo"})))
        .await;
    assert_error_says(&r, 409, "resource.already_exists", "tenant \"demo\"");
    assert!(!message(&r).contains("update"), "{}", r.1);
    // A service's name may still be taken over by updating the service.
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let r = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(worker_service("worker")),
        )
        .await;
    assert_error_says(
        &r,
        409,
        "resource.already_exists",
        "update the existing one",
    );

    let (st, session) = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "worker"}}, "channels": ["stdio"]})),
        )
        .await;
    assert_eq!(st, 201, "{session}");
    let id = session["metadata"]["id"].as_str().unwrap();
    let r = s
        .call(
            "POST",
            &format!("{T}/sessions/{id}/close"),
            Some(json!({"reason": "   "})),
        )
        .await;
    assert_error_says(&r, 400, "request.invalid_argument", "blank");
    assert_eq!(r.1["error"]["details"]["field"], "reason");
}

/// A sandbox-backed service whose sandbox uses `backend`.
fn service_on(name: &str, backend: Option<&str>) -> Value {
    let mut svc = worker_service(name);
    let sandbox = svc["backend"]["sandbox"].as_object_mut().unwrap();
    match backend {
        Some(b) => sandbox.insert("backend".into(), json!(b)),
        None => sandbox.remove("backend"),
    };
    svc
}

#[tokio::test]
async fn a_krun_service_is_refused_up_front_like_a_krun_sandbox() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let r = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(service_on("vm", Some("krun"))),
        )
        .await;
    assert_error_says(&r, 501, "op.not_supported", "krun");
    assert_eq!(r.1["error"]["details"]["backend"], "krun");
    let (st, _) = s.call("GET", &format!("{T}/services/vm"), None).await;
    assert_eq!(st, 404, "a refused create records nothing");
    // Nor can an update move a service onto krun.
    let (st, _) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(service_on("vm", Some("container"))),
        )
        .await;
    assert_eq!(st, 201);
    let krun = service_on("vm", Some("krun"))["backend"].clone();
    let r = s
        .call(
            "PUT",
            &format!("{T}/services/vm"),
            Some(json!({"backend": krun, "ifMatchGeneration": 1})),
        )
        .await;
    assert_error_says(&r, 501, "op.not_supported", "krun");
    let (_, svc) = s.call("GET", &format!("{T}/services/vm"), None).await;
    assert_eq!(svc["metadata"]["generation"], 1, "{svc}");
}

#[tokio::test]
async fn a_sandbox_backend_left_out_is_the_container_backend() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let mut sandbox = nimbus_e2e::batch_sandbox();
    sandbox["spec"].as_object_mut().unwrap().remove("backend");
    let (st, created) = s
        .call("POST", &format!("{T}/sandboxes"), Some(sandbox))
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["spec"]["backend"], "container", "{created}");
    let (st, created) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(service_on("worker", None)),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(
        created["spec"]["backend"]["sandbox"]["backend"], "container",
        "{created}"
    );
}

#[tokio::test]
async fn conditional_request_headers_are_refused_pointing_to_if_match_generation() {
    let s = Server::start_with_config(NO_DRIVER).await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let url = |path: &str| format!("{}{T}/{path}", s.base_url());
    let send = |req: nimbus_e2e::reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json::<Value>().await.unwrap())
    };
    let c = &s.client;
    let t = &s.token;
    let cases = [
        (
            c.put(url("services/worker"))
                .json(&json!({"labels": {"a": "b"}, "ifMatchGeneration": 1}))
                .header("If-Match", "\"1\""),
            "ifMatchResourceVersion",
        ),
        (
            c.delete(url("services/worker?ifMatchGeneration=1&force=true"))
                .header("If-Match", "*"),
            "ifMatchGeneration",
        ),
        (
            c.get(url("services/worker")).header("If-None-Match", "*"),
            "ifMatchGeneration",
        ),
        (
            c.get(url("services")).header("If-None-Match", "\"x\""),
            "ifMatchGeneration",
        ),
        (
            c.post(url("services/worker/start")).header("If-Match", "*"),
            "ifMatchGeneration",
        ),
        (
            c.delete(url("services/worker?ifMatchGeneration=1&force=true"))
                .header("If-Unmodified-Since", "Wed, 01 Jan 2020 00:00:00 GMT"),
            "ifMatchGeneration",
        ),
        // The files channel too (refused before the session is even looked up).
        (
            c.put(url("sessions/ses_00000000000000000000000000/files/a.txt"))
                .body("x")
                .header("If-None-Match", "*"),
            "ifMatchGeneration",
        ),
    ];
    for (req, says) in cases {
        let r = send(req.bearer_auth(t)).await;
        assert_error_says(&r, 400, "request.invalid_argument", says);
        assert!(message(&r).contains("If-"), "{}", r.1);
    }
    // Nothing was changed by the refused calls.
    let (st, svc) = s.call("GET", &format!("{T}/services/worker"), None).await;
    assert_eq!(st, 200);
    assert_eq!(svc["metadata"]["labels"], json!({"team": "search"}));
    assert_eq!(svc["status"]["desiredState"], "stopped");
}

#[tokio::test]
async fn runtime_unavailable_says_its_prefix_once_and_lists_the_problems_in_details() {
    let s = Server::start_with_config(
        "[runtime]\ncrun = \"/nonexistent/crun\"\nbridge = \"nmbtunfit2\"\nsubnet = \"10.232.1.0/24\"\n",
    )
    .await;
    let r = s
        .call(
            "POST",
            &format!("{T}/sandboxes"),
            Some(nimbus_e2e::batch_sandbox()),
        )
        .await;
    assert_error(&r, 503, "runtime.unavailable");
    let m = message(&r);
    assert_eq!(
        m.matches("cannot run container sandboxes").count(),
        1,
        "{m}"
    );
    let problems = r.1["error"]["details"]["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no details.problems: {}", r.1));
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("/nonexistent/crun"))),
        "{}",
        r.1
    );
}

/// Polls service `name` until `check` holds (60 s at most).
async fn until(s: &Server, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, svc) = s.call("GET", &format!("{T}/services/{name}"), None).await;
        if check(&svc) {
            return svc;
        }
        assert!(
            Instant::now() < deadline,
            "service {name} never got there: {svc}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_forced_delete_of_a_running_service_answers_with_it_deleted() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = nimbus_e2e::busybox_rootfs(dir.path(), &["sh", "sleep"]);
    let svc = json!({"name": "worker", "backend": {"kind": "sandbox", "sandbox": {
        "owner": {"kind": "service", "serviceName": "worker"}, "backend": "container",
        "root": {"kind": "rootfs", "path": root},
        "process": {"argv": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]}}}});
    let (st, created) = s.call("POST", &format!("{T}/services"), Some(svc)).await;
    assert_eq!(st, 201, "{created}");
    let (st, _) = s
        .call("POST", &format!("{T}/services/worker/start"), None)
        .await;
    assert_eq!(st, 202);
    until(&s, "worker", |v| v["status"]["lifecycleState"] == "running").await;
    let (st, deleted) = s
        .call(
            "DELETE",
            &format!("{T}/services/worker?ifMatchGeneration=1&force=true"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{deleted}");
    let status = &deleted["status"];
    assert_eq!(status["lifecycleState"], "stopping", "{deleted}");
    assert_eq!(status["readiness"], "notReady", "{deleted}");
    assert_eq!(status["health"], "unknown", "{deleted}");
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("no Ready condition: {deleted}"));
    assert_eq!(ready["status"], "False", "{deleted}");
    assert_eq!(ready["reason"], "Deleted", "{deleted}");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("deleted while running")),
        "{deleted}"
    );
    // And the manager does remove its sandbox.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = s
            .call(
                "GET",
                &format!("{T}/sandboxes?labelKey=nimbus.service&labelValue=worker"),
                None,
            )
            .await;
        if list["items"].as_array().is_some_and(|i| i.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "{list}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
