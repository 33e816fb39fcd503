//! Sandboxes that really run, driven through the API: launch, output, stop, delete, and a
//! server `kill -9` that leaves sandboxes running to be adopted. Needs root and crun (CI runs
//! as root; `nimbus doctor --fix` prepares the host).

use std::path::Path;
use std::time::{Duration, Instant};

use nimbus_e2e::{assert_error, json, nimbus_bin, Server};

const T: &str = "/v1/tenants/demo";

/// A root filesystem with busybox-static in it, built from the host's busybox.
fn busybox_rootfs(dir: &Path) -> String {
    nimbus_e2e::busybox_rootfs(dir, &["sh", "echo", "cat", "sleep", "grep"])
}

fn sandbox(root: &str, script: &str) -> serde_json::Value {
    json!({
        "profile": "worker",
        "spec": {
            "owner": {"kind": "standalone", "displayName": "api-test"},
            "backend": "container",
            "root": {"kind": "rootfs", "path": root},
            "process": {"argv": ["sh", "-c", script], "environment": {"GREETING": "hello"}}
        },
        "labels": {"suite": "sandboxes-api"}
    })
}

async fn wait_state(s: &Server, id: &str, want: &[&str], within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, sbx) = s.call("GET", &format!("{T}/sandboxes/{id}"), None).await;
        let state = sbx["status"]["lifecycleState"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if want.contains(&state.as_str()) {
            return sbx;
        }
        assert!(
            Instant::now() < deadline,
            "sandbox {id} did not reach {want:?} in {within:?}; last: {sbx}\nserver log:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn logs(s: &Server, id: &str) -> String {
    let r = s
        .client
        .get(format!("{}{T}/sandboxes/{id}/logs", s.base_url()))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn a_sandbox_runs_hardened_and_reports_output_stop_and_delete() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let (st, created) = s.call("POST", &format!("{T}/sandboxes"), Some(sandbox(&root, "echo $GREETING from nimbus; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; exec sleep 300"))).await;
    assert_eq!(st, 201, "{created}");
    let id = created["metadata"]["id"].as_str().unwrap().to_string();
    let ready = wait_state(&s, &id, &["ready", "failed"], Duration::from_secs(60)).await;
    assert_eq!(ready["status"]["lifecycleState"], "ready", "{ready}");
    assert_eq!(ready["status"]["readiness"], "ready");
    assert_eq!(ready["status"]["health"], "healthy");
    assert!(
        ready["status"]["endpoints"][0]["address"]
            .as_str()
            .is_some_and(|a| !a.is_empty()),
        "{ready}"
    );
    // Output is readable, and the process is hardened (probe 1 of the security baseline).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = logs(&s, &id).await;
    while !out.contains("NoNewPrivs") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        out = logs(&s, &id).await;
    }
    assert!(out.contains("hello from nimbus"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.trim_end().ends_with('1')),
        "{out}"
    );
    // Sessions can now open on it.
    let (st, _) = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"sandbox": {"id": id}}, "channels": ["stdio"]})),
        )
        .await;
    assert_eq!(st, 201);
    // What the sandbox holds on the host while it runs (its state file names it all).
    let state_dir = s.data_dir().join("runtime/sandboxes").join(&id);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("meta.json")).unwrap()).unwrap();
    let net = &meta["net"];
    let netns = Path::new(net["netns_path"].as_str().unwrap()).to_path_buf();
    let host_if = Path::new("/sys/class/net").join(net["host_if"].as_str().unwrap());
    let lease = s
        .data_dir()
        .join("runtime/net/leases")
        .join(net["address"].as_str().unwrap());
    assert!(
        netns.exists() && host_if.exists() && lease.exists(),
        "{meta}"
    );
    // Stop: SIGTERM, then the exit is recorded.
    let (st, stopping) = s
        .call("POST", &format!("{T}/sandboxes/{id}/stop"), None)
        .await;
    assert_eq!(st, 202);
    assert_eq!(stopping["status"]["lifecycleState"], "stopping");
    let stopped = wait_state(&s, &id, &["stopped", "failed"], Duration::from_secs(30)).await;
    assert_eq!(stopped["status"]["lifecycleState"], "stopped", "{stopped}");
    assert!(stopped["status"]["exitCode"].is_i64(), "{stopped}");
    assert_eq!(stopped["status"]["endpoints"], json!([]), "{stopped}");
    // The ended sandbox gives its network back (namespace, interface, address), and keeps its
    // logs and state until it is deleted.
    let deadline = Instant::now() + Duration::from_secs(15);
    while (netns.exists() || host_if.exists() || lease.exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !netns.exists(),
        "{} is left after the exit",
        netns.display()
    );
    assert!(
        !host_if.exists(),
        "{} is left after the exit",
        host_if.display()
    );
    assert!(!lease.exists(), "the address lease is kept after the exit");
    assert!(state_dir.exists());
    assert!(logs(&s, &id).await.contains("hello from nimbus"));
    // Delete removes it.
    assert_eq!(
        s.call("DELETE", &format!("{T}/sandboxes/{id}"), None)
            .await
            .0,
        200
    );
    assert_error(
        &s.call("GET", &format!("{T}/sandboxes/{id}"), None).await,
        404,
        "resource.not_found",
    );
    assert!(
        !s.data_dir().join("runtime/sandboxes").join(&id).exists(),
        "the sandbox's state dir is left behind"
    );
}

#[tokio::test]
async fn exit_codes_and_bad_argv_are_reported_in_status() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let (_, a) = s
        .call(
            "POST",
            &format!("{T}/sandboxes"),
            Some(sandbox(&root, "echo bye; exit 3")),
        )
        .await;
    let a = a["metadata"]["id"].as_str().unwrap().to_string();
    let failed = wait_state(&s, &a, &["failed", "stopped"], Duration::from_secs(60)).await;
    assert_eq!(
        (
            failed["status"]["lifecycleState"].as_str(),
            failed["status"]["exitCode"].as_i64()
        ),
        (Some("failed"), Some(3)),
        "{failed}"
    );
    assert!(logs(&s, &a).await.contains("bye"));
    let mut bad = sandbox(&root, "");
    bad["spec"]["process"]["argv"] = json!(["/no/such/program"]);
    let (_, b) = s.call("POST", &format!("{T}/sandboxes"), Some(bad)).await;
    let b = b["metadata"]["id"].as_str().unwrap().to_string();
    let failed = wait_state(&s, &b, &["failed"], Duration::from_secs(60)).await;
    let reason = failed["status"]["conditions"][0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ["BadArgv", "StartFailed"].contains(&reason.as_str()),
        "{failed}"
    );
    // Ended sandboxes keep their network namespace and state until they are deleted.
    for id in [a, b] {
        assert_eq!(
            s.call("DELETE", &format!("{T}/sandboxes/{id}"), None)
                .await
                .0,
            200
        );
        assert!(
            !s.data_dir().join("runtime/sandboxes").join(&id).exists(),
            "{id} left its state dir"
        );
    }
}

#[tokio::test]
async fn kill_9_of_the_server_leaves_sandboxes_running_and_a_restart_adopts_them() {
    let mut s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let (_, long) = s
        .call(
            "POST",
            &format!("{T}/sandboxes"),
            Some(sandbox(&root, "echo up; exec sleep 300")),
        )
        .await;
    let long = long["metadata"]["id"].as_str().unwrap().to_string();
    let (_, short) = s
        .call(
            "POST",
            &format!("{T}/sandboxes"),
            Some(sandbox(&root, "sleep 2; exit 7")),
        )
        .await;
    let short = short["metadata"]["id"].as_str().unwrap().to_string();
    wait_state(&s, &long, &["ready"], Duration::from_secs(60)).await;
    wait_state(&s, &short, &["ready"], Duration::from_secs(60)).await;
    s.kill9();
    // The short one exits while the server is down.
    tokio::time::sleep(Duration::from_secs(4)).await;
    s.restart().await;
    // From the first answer on, the restarted server says it ended: its record was reconciled
    // with the host before the server served.
    let (_, first) = s.call("GET", &format!("{T}/sandboxes/{short}"), None).await;
    assert_eq!(first["status"]["lifecycleState"], "failed", "{first}");
    let adopted = wait_state(
        &s,
        &long,
        &["ready", "failed", "stopped"],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        adopted["status"]["lifecycleState"], "ready",
        "a running sandbox was not kept: {adopted}"
    );
    let ended = wait_state(&s, &short, &["failed"], Duration::from_secs(10)).await;
    assert_eq!(ended["status"]["exitCode"], 7, "{ended}");
    // It is still the same process: its output is the one from before the restart.
    assert!(logs(&s, &long).await.contains("up"));
    assert_eq!(
        s.call("DELETE", &format!("{T}/sandboxes/{long}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.call("DELETE", &format!("{T}/sandboxes/{short}"), None)
            .await
            .0,
        200
    );
}

/// A sandbox stopped while its launch still prepares, the server killed before that launch could
/// undo itself: the launch goes on without the server (its monitor may start the process). The
/// record says it never ran, so the next start removes all of it; nothing of it may run on.
#[tokio::test]
async fn a_launch_that_outlives_its_stop_and_a_crash_is_removed_at_the_next_start() {
    let mut s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    for delay_ms in [20u64, 30, 40, 50, 60] {
        let (st, created) = s
            .call(
                "POST",
                &format!("{T}/sandboxes"),
                Some(sandbox(&root, "exec sleep 100000")),
            )
            .await;
        assert_eq!(st, 201, "{created}");
        let id = created["metadata"]["id"].as_str().unwrap().to_string();
        let (st, stopped) = s
            .call("POST", &format!("{T}/sandboxes/{id}/stop"), None)
            .await;
        assert_eq!(st, 202, "{stopped}");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        s.kill9();
        s.restart().await;
        let ended = wait_state(&s, &id, &["stopped", "failed"], Duration::from_secs(30)).await;
        let state_dir = s.data_dir().join("runtime/sandboxes").join(&id);
        let netns = std::path::Path::new("/run/netns").join(format!("nimbus-{id}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // Never ran: nothing left. Ran and ended: its exit recorded, its network given up.
            let clean = if ended["status"]["exitCode"].is_null() {
                !state_dir.exists() && !netns.exists()
            } else {
                !netns.exists()
            };
            if clean {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after a kill {delay_ms} ms after the stop, {id} ({}) left its launch on the \
                 host: state dir {}, netns {}\n{}",
                ended["status"],
                state_dir.exists(),
                netns.exists(),
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
        assert_eq!(st, 200);
    }
}

#[tokio::test]
async fn a_host_that_cannot_run_containers_refuses_creates_with_runtime_unavailable() {
    let s = Server::start_with_config("[runtime]\ncrun = \"/nonexistent/crun\"\nbridge = \"nmbtunfit\"\nsubnet = \"10.232.0.0/24\"\n").await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let r = s
        .call(
            "POST",
            &format!("{T}/sandboxes"),
            Some(sandbox(&root, "true")),
        )
        .await;
    assert_error(&r, 503, "runtime.unavailable");
    assert!(
        r.1["error"]["message"].as_str().unwrap().contains("crun"),
        "{}",
        r.1
    );
    // Nothing was recorded.
    let (_, list) = s.call("GET", &format!("{T}/sandboxes"), None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn creates_refused_by_quota_or_for_a_missing_tenant_start_nothing_though_their_launch_was_prepared_alongside(
) {
    let root_dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(root_dir.path());
    let s = Server::start_with_config("[limits]\nsandboxes_per_tenant = 1\n").await;
    let (st, first) = s
        .call(
            "POST",
            &format!("{T}/sandboxes"),
            Some(sandbox(&root, "sleep 60")),
        )
        .await;
    assert_eq!(st, 201, "{first}");
    let first = first["metadata"]["id"].as_str().unwrap().to_string();
    wait_state(&s, &first, &["ready"], Duration::from_secs(30)).await;
    // The launch of a refused create may already have prepared its root and network; it must
    // undo them and start no process.
    for _ in 0..3 {
        let r = s
            .call(
                "POST",
                &format!("{T}/sandboxes"),
                Some(sandbox(&root, "echo should-not-run")),
            )
            .await;
        assert_error(&r, 429, "quota.exhausted");
    }
    // A valid create in a tenant that does not exist starts its launch before the tenant
    // lookup answers 404; that launch must be withdrawn too. A bad body there is still a 404
    // (the tenant is checked first).
    let r = s
        .call(
            "POST",
            "/v1/tenants/no-such-tenant/sandboxes",
            Some(sandbox(&root, "echo should-not-run")),
        )
        .await;
    assert_error(&r, 404, "resource.not_found");
    let r = s
        .call(
            "POST",
            "/v1/tenants/no-such-tenant/sandboxes",
            Some({
                let mut bad = sandbox(&root, "echo should-not-run");
                bad["spec"]["process"]["argv"] = json!([]);
                bad
            }),
        )
        .await;
    assert_error(&r, 404, "resource.not_found");
    let sandboxes_dir = s.data_dir().join("runtime/sandboxes");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dirs: Vec<String> = std::fs::read_dir(&sandboxes_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if dirs == vec![first.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refused creates left state behind: {dirs:?}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let monitors = nimbus_runtime::orphans::monitors_under(&s.data_dir()).len();
    assert_eq!(monitors, 1, "only the admitted sandbox has a monitor");
    let (st, _) = s
        .call("DELETE", &format!("{T}/sandboxes/{first}"), None)
        .await;
    assert!(st.is_success());
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects to a session's stdio channel with `token`; on refusal, the HTTP status and the
/// JSON error body.
async fn stdio(s: &Server, session: &str, token: &str) -> Result<Ws, (u16, serde_json::Value)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{T}/sessions/{session}/stdio", s.base_url()).replace("http://", "ws://");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(s.base_url().trim_start_matches("http://"))
        .await
        .unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Err((
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            ))
        }
        Err(e) => panic!("stdio channel of {session}: {e}"),
    }
}

/// Reads binary output until it ends with `end`; returns it.
async fn read_output(ws: &mut Ws, end: &str) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut got = String::new();
    while !got.ends_with(end) {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {end:?} after {got:?}"));
        match msg {
            Some(Ok(Message::Binary(b))) => got.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("expected output, got {other:?} after {got:?}"),
        }
    }
    got
}

/// The close frame that ends a channel: (code, reason).
async fn closed_with(ws: &mut Ws) -> (u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("the channel closes");
    match msg {
        Some(Ok(Message::Close(Some(f)))) => (f.code.into(), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Asserts that a files-channel `(status, body)` is the documented error `code`; its JSON.
fn get_error((status, body): (u16, Vec<u8>), want: u16, code: &str) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_error(&(status.try_into().unwrap(), body.clone()), want, code);
    body
}

/// A sandbox running `script` in `root`, once it is ready.
async fn ready_sandbox(s: &Server, root: &str, script: &str) -> String {
    let (st, created) = s
        .call(
            "POST",
            &format!("{T}/sandboxes"),
            Some(sandbox(root, script)),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["metadata"]["id"].as_str().unwrap().to_string();
    wait_state(s, &id, &["ready"], Duration::from_secs(60)).await;
    id
}

/// A session on sandbox `id` with `channels`; its id.
async fn open_session(s: &Server, id: &str, channels: &[&str]) -> String {
    let body = json!({"target": {"sandbox": {"id": id}}, "channels": channels});
    let (st, ses) = s.call("POST", &format!("{T}/sessions"), Some(body)).await;
    assert_eq!(st, 201, "{ses}");
    ses["metadata"]["id"].as_str().unwrap().to_string()
}

/// `GET /sessions/{id}/stdio`: input reaches the process's stdin, its output comes back, an
/// empty message closes stdin, and the channel closes with 1000 when the process exits. A
/// session closed through the API ends its channel with 1008. Refusals are JSON errors.
#[tokio::test]
async fn a_stdio_session_talks_to_the_process_over_a_websocket() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let script = "echo ready; while read line; do echo \"got $line\"; done; echo bye; exit 3";
    let id = ready_sandbox(&s, &root, script).await;
    let open = |channels: &'static [&'static str]| open_session(&s, &id, channels);
    let (stdio_session, files_session, closing_session) = (
        open(&["stdio"]).await,
        open(&["files"]).await,
        open(&["stdio"]).await,
    );

    // Refusals, each a documented JSON error.
    let plain = s
        .call("GET", &format!("{T}/sessions/{stdio_session}/stdio"), None)
        .await;
    assert_error(&plain, 400, "request.invalid_argument");
    let (st, body) = stdio(&s, &files_session, &s.token).await.err().unwrap();
    assert_error(
        &(st.try_into().unwrap(), body.clone()),
        400,
        "request.invalid_argument",
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("stdio"),
        "{body}"
    );
    let (st, reader) = s
        .call(
            "POST",
            &format!("{T}/credentials"),
            Some(json!({"kind": "token", "grants": ["tenant:read"]})),
        )
        .await;
    assert_eq!(st, 201, "{reader}");
    let (st, body) = stdio(&s, &stdio_session, reader["secret"].as_str().unwrap())
        .await
        .err()
        .unwrap();
    assert_error(
        &(st.try_into().unwrap(), body),
        403,
        "auth.permission_denied",
    );

    // A channel whose session is closed through the API ends with 1008.
    let mut doomed = stdio(&s, &closing_session, &s.token).await.unwrap();
    let (st, closed) = s
        .call(
            "POST",
            &format!("{T}/sessions/{closing_session}/close"),
            Some(json!({"reason": "done"})),
        )
        .await;
    assert_eq!(st, 200, "{closed}");
    let (code, reason) = closed_with(&mut doomed).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("closed"), "{reason}");
    let (st, body) = stdio(&s, &closing_session, &s.token).await.err().unwrap();
    assert_error(
        &(st.try_into().unwrap(), body),
        409,
        "state.invalid_transition",
    );

    // The conversation.
    let mut ws = stdio(&s, &stdio_session, &s.token).await.unwrap();
    ws.send(Message::binary(b"hello\n".to_vec())).await.unwrap();
    assert_eq!(read_output(&mut ws, "got hello\n").await, "got hello\n");
    ws.send(Message::text("world\n")).await.unwrap();
    assert_eq!(read_output(&mut ws, "got world\n").await, "got world\n");
    ws.send(Message::binary(Vec::new())).await.unwrap();
    assert_eq!(read_output(&mut ws, "bye\n").await, "bye\n");
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, 1000, "{reason}");
    let sbx = wait_state(&s, &id, &["stopped", "failed"], Duration::from_secs(30)).await;
    assert_eq!(sbx["status"]["exitCode"], 3, "{sbx}");
    assert_eq!(logs(&s, &id).await, "ready\ngot hello\ngot world\nbye\n");
    // The process is gone: nothing to attach to.
    let (st, body) = stdio(&s, &stdio_session, &s.token).await.err().unwrap();
    assert_error(
        &(st.try_into().unwrap(), body),
        409,
        "state.invalid_transition",
    );
    let (_, audit) = s.call("GET", &format!("{T}/audit"), None).await;
    assert!(audit.to_string().contains("sessions.attach"), "{audit}");
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// Polls `done` every 50 ms until it holds; panics with `what` after `within`.
async fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until sandbox `id`'s monitor has disconnected a client for reading too slowly.
async fn monitor_drops_a_slow_client(s: &Server, id: &str) {
    let monitor_log = s
        .data_dir()
        .join(format!("runtime/sandboxes/{id}/monitor.log"));
    eventually(
        Duration::from_secs(60),
        "the monitor drops the slow client",
        || std::fs::read_to_string(&monitor_log).is_ok_and(|l| l.contains("read too slowly")),
    )
    .await;
}

/// Reads a stdio channel to its close: the output bytes received, then the close's code and
/// reason.
async fn drain_to_close(ws: &mut Ws) -> (usize, u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut received = 0usize;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the channel ends");
        match msg {
            Some(Ok(Message::Binary(b))) => received += b.len(),
            Some(Ok(Message::Close(Some(f)))) => {
                return (received, u16::from(f.code), f.reason.to_string())
            }
            other => panic!("expected output or a close frame, got {other:?}"),
        }
    }
}

/// A client that reads too slowly is disconnected by the monitor while the process runs: it
/// is told so (1013, attach again), not that the process exited (1000), and can attach again.
#[tokio::test]
async fn a_slow_stdio_client_is_told_to_attach_again_not_that_the_process_exited() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let id = ready_sandbox(&s, &root, &format!("exec yes {}", "a".repeat(100))).await;
    let session = open_session(&s, &id, &["stdio"]).await;
    let mut ws = stdio(&s, &session, &s.token).await.unwrap();
    // Read nothing until the monitor has let this client go, then drain: what was queued for
    // it, and then the close.
    monitor_drops_a_slow_client(&s, &id).await;
    let (_, code, reason) = drain_to_close(&mut ws).await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("attach again"), "{reason}");
    let sbx = wait_state(&s, &id, &["ready"], Duration::from_secs(1)).await;
    assert_eq!(sbx["status"]["lifecycleState"], "ready");
    // It can attach again.
    let mut again = stdio(&s, &session, &s.token).await.unwrap();
    assert!(read_output(&mut again, "a\n").await.ends_with("a\n"));
    drop((ws, again));
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// A client cut for reading too slowly whose process then exits is still told its output was
/// cut (1013, the logs have it all), not that the process exited with its output sent (1000).
#[tokio::test]
async fn a_slow_stdio_client_is_told_its_output_was_cut_though_the_process_exited_since() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let id = ready_sandbox(&s, &root, "read go; head -c 30000000 /dev/zero; exit 3").await;
    let session = open_session(&s, &id, &["stdio"]).await;
    let mut ws = stdio(&s, &session, &s.token).await.unwrap();
    ws.send(Message::binary(b"go\n".to_vec())).await.unwrap();
    // Read nothing until the monitor has let this client go and the process has exited.
    monitor_drops_a_slow_client(&s, &id).await;
    let sbx = wait_state(&s, &id, &["stopped", "failed"], Duration::from_secs(60)).await;
    assert_eq!(sbx["status"]["exitCode"], 3, "{sbx}");
    let (received, code, reason) = drain_to_close(&mut ws).await;
    assert!(received < 30_000_000, "{received}");
    assert_eq!(code, 1013, "{received} bytes, then {reason}");
    assert!(
        reason.contains("incomplete") && reason.contains("logs"),
        "{reason}"
    );
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// A client that breaks the WebSocket protocol, or sends a text message that is not UTF-8, is
/// told so in the close (1002, 1007), and the process runs on for the next client.
#[tokio::test]
async fn a_stdio_client_breaking_the_protocol_is_told_why_in_the_close() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let id = ready_sandbox(&s, &root, "while read l; do echo \"got $l\"; done").await;
    let session = open_session(&s, &id, &["stdio"]).await;

    let mut ws = stdio(&s, &session, &s.token).await.unwrap();
    let not_utf8 = Frame::message(
        vec![b'a', 0xff, 0xfe, b'\n'],
        OpCode::Data(Data::Text),
        true,
    );
    ws.send(Message::Frame(not_utf8)).await.unwrap();
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains("binary"), "{reason}");

    let mut ws = stdio(&s, &session, &s.token).await.unwrap();
    let mut reserved = Frame::message(b"x\n".to_vec(), OpCode::Data(Data::Binary), true);
    reserved.header_mut().rsv1 = true;
    ws.send(Message::Frame(reserved)).await.unwrap();
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("protocol"), "{reason}");

    let mut ws = stdio(&s, &session, &s.token).await.unwrap();
    ws.send(Message::binary(b"two\n".to_vec())).await.unwrap();
    assert_eq!(read_output(&mut ws, "got two\n").await, "got two\n");
    // A client's own close is echoed.
    let bye = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    };
    ws.send(Message::Close(Some(bye))).await.unwrap();
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, 1000, "{reason}");
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// A monitor killed under an attached client ends the channel saying the sandbox is lost, not
/// that the client read too slowly or that the process exited.
#[tokio::test]
async fn a_stdio_client_whose_sandbox_monitor_dies_is_told_the_sandbox_is_lost() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let id = ready_sandbox(&s, &root, "while read l; do echo \"got $l\"; done").await;
    let session = open_session(&s, &id, &["stdio"]).await;
    let mut ws = stdio(&s, &session, &s.token).await.unwrap();
    let pid = std::fs::read_to_string(
        s.data_dir()
            .join(format!("runtime/sandboxes/{id}/monitor.pid")),
    )
    .unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("lost"), "{reason}");
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// A stopping server closes attached stdio channels with 1001 and a reason (the process runs
/// on), instead of holding its shutdown for them and then cutting them without a word.
#[tokio::test]
async fn a_stopping_server_tells_attached_stdio_clients_why_the_channel_closes() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let id = ready_sandbox(&s, &root, "while read l; do echo \"got $l\"; done").await;
    let session = open_session(&s, &id, &["stdio"]).await;
    let mut ws = stdio(&s, &session, &s.token).await.unwrap();
    ws.send(Message::binary(b"one\n".to_vec())).await.unwrap();
    assert_eq!(read_output(&mut ws, "got one\n").await, "got one\n");
    let stopping = tokio::task::spawn_blocking(move || {
        let status = s.terminate();
        (s, status)
    });
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("attach again"), "{reason}");
    let (mut s, status) = stopping.await.unwrap();
    assert!(status.success(), "{status}\n{}", s.log());
    assert!(!s.log().contains("are cut"), "{}", s.log());
    // The process ran on; the next server adopts it.
    s.restart().await;
    let v = wait_state(&s, &id, &["ready"], Duration::from_secs(30)).await;
    assert_eq!(v["status"]["lifecycleState"], "ready", "{v}");
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// Revoking the credential that attached a stdio channel ends the channel (1008), as it ends
/// the credential's next request: the channel does not outlive the access it was opened with.
#[tokio::test]
async fn revoking_the_credential_that_attached_ends_the_stdio_channel() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let id = ready_sandbox(&s, &root, "while read l; do echo \"got $l\"; done").await;
    let session = open_session(&s, &id, &["stdio"]).await;
    let (st, reach) = s
        .call(
            "POST",
            &format!("{T}/credentials"),
            Some(json!({"kind": "token", "grants": [format!("sandbox:{id}:reach")]})),
        )
        .await;
    assert_eq!(st, 201, "{reach}");
    let mut ws = stdio(&s, &session, reach["secret"].as_str().unwrap())
        .await
        .unwrap();
    ws.send(Message::binary(b"one\n".to_vec())).await.unwrap();
    assert_eq!(read_output(&mut ws, "got one\n").await, "got one\n");
    let cred = reach["metadata"]["id"]
        .as_str()
        .or(reach["id"].as_str())
        .unwrap()
        .to_string();
    let (st, body) = s
        .call("DELETE", &format!("{T}/credentials/{cred}"), None)
        .await;
    assert_eq!(st, 200, "{body}");
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// Threads and open files of the sandbox's monitor: (threads, fds).
fn monitor_load(s: &Server, id: &str) -> (usize, usize) {
    let pid = std::fs::read_to_string(
        s.data_dir()
            .join(format!("runtime/sandboxes/{id}/monitor.pid")),
    )
    .unwrap();
    let count = |what: &str| {
        std::fs::read_dir(format!("/proc/{}/{what}", pid.trim()))
            .unwrap()
            .count()
    };
    (count("task"), count("fd"))
}

/// Input for a process that never reads its stdin: a message over 1 MiB ends the channel with
/// 1009; clients that pushed as much as they could and left leave nothing behind in the monitor
/// (threads, connections) or the server (their connections to it); at most 16 channels attach
/// to a sandbox at once (429 `quota.exhausted` for one more), and a freed place can be taken.
#[tokio::test]
async fn stdio_input_a_process_does_not_read_is_bounded_and_leaves_nothing_behind() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let id = ready_sandbox(&s, &root, "exec sleep 3600").await;
    let session = open_session(&s, &id, &["stdio"]).await;
    let baseline = monitor_load(&s, &id);

    // Too big a message: 1 MiB + 1 byte, in fragments, so that the server reads all of it
    // before it refuses (a client that still has bytes of it to send may see a reset instead).
    let mut ws = stdio(&s, &session, &s.token).await.unwrap();
    {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        for i in 0..=16 {
            let (bytes, op, last) = match i {
                0 => (64 * 1024, Data::Binary, false),
                16 => (1, Data::Continue, true),
                _ => (64 * 1024, Data::Continue, false),
            };
            let frame = Frame::message(vec![b'x'; bytes], OpCode::Data(op), last);
            ws.send(Message::Frame(frame)).await.unwrap();
        }
    }
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, 1009, "{reason}");
    drop(ws);

    // Clients push 1 MiB messages until the server takes no more, then vanish.
    for _ in 0..4 {
        let mut ws = stdio(&s, &session, &s.token).await.unwrap();
        for _ in 0..32 {
            let send = ws.send(Message::binary(vec![b'x'; 1024 * 1024]));
            match tokio::time::timeout(Duration::from_secs(2), send).await {
                Ok(Ok(())) => {}
                // Blocked (everything on the way is full) or refused: enough.
                _ => break,
            }
        }
        drop(ws);
    }
    // (The server notices vanished clients by its pings, lets their queued input go after a
    // grace period, and the monitor then lets their connections go.)
    eventually(
        Duration::from_secs(60),
        "the monitor is back to its threads and files before the attaches",
        || monitor_load(&s, &id) == baseline,
    )
    .await;

    // The cap.
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(stdio(&s, &session, &s.token).await.unwrap());
    }
    let (st, body) = stdio(&s, &session, &s.token).await.err().unwrap();
    assert_error(&(st.try_into().unwrap(), body), 429, "quota.exhausted");
    let mut first = held.remove(0);
    first.send(Message::Close(None)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        match stdio(&s, &session, &s.token).await {
            Ok(ws) => break ws,
            Err((429, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("attach after one left: {e:?}"),
        }
    };
    drop((first, again, held));
    let sbx = wait_state(&s, &id, &["ready"], Duration::from_secs(1)).await;
    assert_eq!(sbx["status"]["lifecycleState"], "ready");
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// `nimbus doctor --config` checks the crun and the data dir `serve` would use with that file.
#[test]
fn doctor_checks_what_the_operator_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("elsewhere/data");
    let config = dir.path().join("nimbus.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = {:?}\n[runtime]\ncrun = \"/nonexistent/crun\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let doctor = |args: &[&str]| {
        std::process::Command::new(nimbus_bin())
            .arg("doctor")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = doctor(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAIL crun        /nonexistent/crun not found"),
        "{text}"
    );
    // The data dir does not exist yet: the check uses its nearest existing ancestor.
    assert!(
        text.contains(&format!("under {}", dir.path().display())),
        "{text}"
    );
    // A flag still wins over the file.
    let out = doctor(&["--crun", "crun"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok   crun"), "{text}");
    assert!(text.contains("ok   free space"), "{text}");
    // A data dir on a file system down to the free space pulls and launches keep fails.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mount = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
    };
    assert!(mount(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=64m",
        "tmpfs",
        small.to_str().unwrap()
    ])
    .unwrap()
    .success());
    let out = doctor(&["--crun", "crun", "--data-dir", small.to_str().unwrap()]);
    let _ = mount(&["umount", "-l", small.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAIL free space  the next pull or launch stopped")
            && text.contains("Nimbus keeps 1024 MiB free there"),
        "{text}"
    );
    // A config with a mistake names the key.
    std::fs::write(&config, "[runtime]\ncrun_path = \"x\"\n").unwrap();
    let out = doctor(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("crun_path"), "{err}");
}

/// The files channel over HTTP: write a file the process waits for, read back what it wrote,
/// list, delete; bad paths, missing files and the wrong session are JSON errors; the files
/// stay reachable after the process exits.
#[tokio::test]
async fn a_files_session_reads_writes_lists_and_deletes_in_the_sandbox() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let script = "while [ ! -f /work/in.txt ]; do sleep 0.05; done; \
                  cat /work/in.txt > /work/out.txt; echo done";
    let id = ready_sandbox(&s, &root, script).await;
    let open = |channels: &'static [&'static str]| open_session(&s, &id, channels);
    let (files, stdio_only) = (open(&["files"]).await, open(&["stdio"]).await);
    let url =
        |session: &str, path: &str| format!("{}{T}/sessions/{session}/files{path}", s.base_url());
    let put = |session: String, path: &'static str, body: &'static [u8]| {
        let req = s
            .client
            .put(url(&session, path))
            .bearer_auth(&s.token)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let get = |session: String, path: &'static str| {
        let req = s.client.get(url(&session, path)).bearer_auth(&s.token);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }
    };

    let (st, body) = put(files.clone(), "/work/in.txt", b"hello files\n").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["size"], 12, "{body}");
    wait_state(&s, &id, &["stopped", "failed"], Duration::from_secs(30)).await;
    // The process has exited; its files are still there for the session.
    let (st, bytes) = get(files.clone(), "/work/out.txt").await;
    assert_eq!((st, bytes.as_slice()), (200, &b"hello files\n"[..]));
    let (st, listing) = get(files.clone(), "/work/?list").await;
    assert_eq!(st, 200);
    let listing: serde_json::Value = serde_json::from_slice(&listing).unwrap();
    let names: Vec<&str> = listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["in.txt", "out.txt"], "{listing}");
    assert_eq!(listing["items"][0]["kind"], "file");
    assert_eq!(listing["items"][0]["size"], 12);
    let (st, root_listing) = get(files.clone(), "/?list").await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&root_listing).contains("\"work\""));

    // Errors.
    // (HTTP clients remove `..` from URLs themselves; an empty component reaches the server.)
    get_error(
        get(files.clone(), "/work//out.txt").await,
        400,
        "request.invalid_argument",
    );
    get_error(
        get(files.clone(), "/work/nothing").await,
        404,
        "resource.not_found",
    );
    get_error(
        get(files.clone(), "/work").await,
        400,
        "request.invalid_argument",
    );
    // What the sandbox mounts over its root (/proc, /sys, /dev, /etc/hosts…) is not the root
    // filesystem the channel works on: refused, rather than a write the process never sees.
    let (st, body) = put(files.clone(), "/etc/hosts", b"10.0.0.1 x\n").await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body.to_string().contains("mounts over its root filesystem"),
        "{body}"
    );
    for under_a_mount in ["/proc/1/environ", "/dev/?list"] {
        get_error(
            get(files.clone(), under_a_mount).await,
            400,
            "request.invalid_argument",
        );
    }
    let body = get_error(
        get(stdio_only.clone(), "/work/out.txt").await,
        400,
        "request.invalid_argument",
    );
    assert!(body.to_string().contains("files channel"), "{body}");

    // Delete, then the file is gone.
    let r = s
        .client
        .delete(url(&files, "/work/in.txt"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, _) = get(files.clone(), "/work/in.txt").await;
    assert_eq!(st, 404);
    let (_, audit) = s.call("GET", &format!("{T}/audit"), None).await;
    assert!(audit.to_string().contains("files of sandbox/"), "{audit}");
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// A sandbox's writable layer is a disk of its own (`runtime.disk_mb`): filling it is ENOSPC
/// inside the sandbox, not a full data dir for the server and every other sandbox.
#[tokio::test]
async fn a_sandbox_that_fills_its_disk_gets_enospc_inside_and_its_delete_removes_the_disk() {
    let mut s = Server::start_with_config("[runtime]\ndisk_mb = 32\n").await;
    let dir = tempfile::tempdir().unwrap();
    let root = nimbus_e2e::busybox_rootfs(dir.path(), &["sh", "dd", "echo", "sleep"]);
    let (st, created) = s
        .call(
            "POST",
            &format!("{T}/sandboxes"),
            Some(sandbox(
                &root,
                "dd if=/dev/zero of=/fill bs=1M count=64 2>&1; echo dd-exit=$?; exec sleep 300",
            )),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["metadata"]["id"].as_str().unwrap().to_string();
    let ready = wait_state(&s, &id, &["ready", "failed"], Duration::from_secs(60)).await;
    assert_eq!(ready["status"]["lifecycleState"], "ready", "{ready}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = logs(&s, &id).await;
    while !out.contains("dd-exit=") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        out = logs(&s, &id).await;
    }
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.contains("dd-exit=1"), "{out}");
    // An upload into the full disk is refused (429) and leaves nothing, not even the
    // directories it made on the way.
    let body = json!({"target": {"sandbox": {"id": id}}, "channels": ["files"]});
    let (st, ses) = s.call("POST", &format!("{T}/sessions"), Some(body)).await;
    assert_eq!(st, 201, "{ses}");
    let files = format!(
        "{}{T}/sessions/{}/files",
        s.base_url(),
        ses["metadata"]["id"].as_str().unwrap()
    );
    let r = s
        .client
        .put(format!("{files}/new/deep/file"))
        .bearer_auth(&s.token)
        .body(vec![7u8; 1 << 20])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let refusal: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 429, "{refusal}");
    assert_eq!(refusal["error"]["code"], "quota.exhausted", "{refusal}");
    let r = s
        .client
        .get(format!("{files}/new/?list"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "the refused upload left /new behind"
    );
    // The disk is a sparse image of the configured size, named in the sandbox's state.
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            s.data_dir()
                .join("runtime/sandboxes")
                .join(&id)
                .join("meta.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let token = meta["disk"]
        .as_str()
        .expect("the sandbox names its disk")
        .to_string();
    let image = s.data_dir().join(format!("runtime/disks/{token}.img"));
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 32 << 20);
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|m| m.ends_with(&format!("/{token}")))
            })
    };
    assert!(mounted(), "the disk {token} is not mounted");
    // Disks made before are still managed by a server that makes none any more.
    s.restart_with_config("[runtime]\ndisk_mb = 0\n").await;
    let adopted = wait_state(&s, &id, &["ready", "failed"], Duration::from_secs(30)).await;
    assert_eq!(adopted["status"]["lifecycleState"], "ready", "{adopted}");
    assert!(
        mounted(),
        "a restart must not take a running sandbox's disk"
    );
    assert_eq!(
        s.call("DELETE", &format!("{T}/sandboxes/{id}"), None)
            .await
            .0,
        200
    );
    assert!(!image.exists(), "the disk image outlived its sandbox");
    assert!(!mounted(), "the disk mount outlived its sandbox");
}
