//! Sandbox-backed services run: the service manager launches a started service's sandbox,
//! relaunches it when it ends, replaces it on restart and on a new definition, stops it on
//! stop, removes it on a forced delete, and keeps it across a server restart. Sessions on the
//! service reach whichever sandbox runs it now. Needs root and crun, like `sandboxes_api.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use nimbus_e2e::{json, Server};
use serde_json::Value;

const T: &str = "/v1/tenants/demo";

fn busybox_rootfs(dir: &Path) -> String {
    nimbus_e2e::busybox_rootfs(dir, &["sh", "sleep", "cat", "echo", "test"])
}

/// Service `name` running `script` in `root`.
fn service(name: &str, root: &str, script: &str) -> Value {
    json!({"name": name, "backend": {"kind": "sandbox", "sandbox": {
        "owner": {"kind": "service", "serviceName": name}, "backend": "container",
        "root": {"kind": "rootfs", "path": root},
        "process": {"argv": ["sh", "-c", script]}}}})
}

async fn get_service(s: &Server, name: &str) -> Value {
    let (st, svc) = s.call("GET", &format!("{T}/services/{name}"), None).await;
    assert_eq!(st, 200, "{svc}");
    svc
}

/// Polls service `name` until `check` holds (60 s at most).
async fn until(s: &Server, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let svc = get_service(s, name).await;
        if check(&svc) {
            return svc;
        }
        assert!(
            Instant::now() < deadline,
            "service {name} never {what}: {svc}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service's sandboxes, oldest first, found by the label the manager puts on them.
async fn sandboxes_of(s: &Server, name: &str) -> Vec<Value> {
    let (st, list) = s
        .call(
            "GET",
            &format!("{T}/sandboxes?labelKey=nimbus.service&labelValue={name}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{list}");
    list["items"].as_array().unwrap().clone()
}

fn ready_reason(v: &Value) -> String {
    v["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| format!("{}: {}", c["reason"], c["message"]))
        .unwrap_or_default()
}

/// The one running sandbox of service `name`.
async fn running_sandbox(s: &Server, name: &str) -> String {
    let live: Vec<Value> = sandboxes_of(s, name)
        .await
        .into_iter()
        .filter(|x| x["status"]["lifecycleState"] == "ready")
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    live[0]["metadata"]["id"].as_str().unwrap().to_string()
}

async fn file(s: &Server, session: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let url = format!("{}{T}/sessions/{session}/files{path}", s.base_url());
    let req = match method {
        "PUT" => s.client.put(url).body(body.to_string()),
        _ => s.client.get(url),
    };
    let r = req.bearer_auth(&s.token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test]
async fn a_started_service_runs_its_sandbox_and_is_relaunched_replaced_and_stopped() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    // Exits with code 3 once /crash exists; stops at once on SIGTERM (as PID 1, sh would ignore
    // it, and a stop would wait out the grace period).
    let script = "trap 'exit 0' TERM; echo up; while ! test -f /crash; do sleep 0.1; done; exit 3";
    let (st, created) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(service("worker", &root, script)),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["status"]["lifecycleState"], "stopped");

    // Start and wait: the server answers once the sandbox runs.
    let (st, started) = s
        .call(
            "POST",
            &format!("{T}/services/worker/start?waitUntil=ready&timeoutMs=60000"),
            None,
        )
        .await;
    assert_eq!(st, 202, "{started}");
    assert_eq!(
        started["status"]["lifecycleState"],
        "running",
        "{started}\n{}",
        s.log()
    );
    assert_eq!(started["status"]["readiness"], "ready");
    assert_eq!(started["status"]["health"], "healthy");
    let first = running_sandbox(&s, "worker").await;
    let (_, sbx) = s.call("GET", &format!("{T}/sandboxes/{first}"), None).await;
    assert_eq!(sbx["spec"]["owner"]["serviceName"], "worker", "{sbx}");
    assert!(ready_reason(&started).contains(&first), "{started}");

    // A session on the service reaches its sandbox.
    let body = json!({"target": {"service": {"name": "worker"}}, "channels": ["files", "stdio"]});
    let (st, ses) = s.call("POST", &format!("{T}/sessions"), Some(body)).await;
    assert_eq!(st, 201, "{ses}");
    let session = ses["metadata"]["id"].as_str().unwrap().to_string();
    assert_eq!(file(&s, &session, "PUT", "/note", "first").await.0, 200);
    assert_eq!(
        file(&s, &session, "GET", "/note", "").await,
        (200, "first".into())
    );

    // The process ends on its own: the service says why and relaunches it after a backoff.
    assert_eq!(file(&s, &session, "PUT", "/crash", "").await.0, 200);
    let failed = until(&s, "worker", "failed", |v| {
        v["status"]["lifecycleState"] == "failed"
    })
    .await;
    let why = ready_reason(&failed);
    assert!(
        why.contains("BackOff")
            && why.contains("exited with code 3")
            && why.contains("relaunching at"),
        "{why}"
    );
    assert_eq!(failed["status"]["health"], "unhealthy");
    let relaunched = until(&s, "worker", "ran again", |v| {
        v["status"]["lifecycleState"] == "running" && !ready_reason(v).contains(&first)
    })
    .await;
    let second = running_sandbox(&s, "worker").await;
    assert_ne!(first, second);
    assert!(ready_reason(&relaunched).contains(&second));
    // The ended sandbox stays, for its logs and exit code.
    let (_, ended) = s.call("GET", &format!("{T}/sandboxes/{first}"), None).await;
    assert_eq!(ended["status"]["exitCode"], 3, "{ended}");
    // The same session now reaches the new sandbox (a fresh root: no /note).
    assert_eq!(file(&s, &session, "GET", "/note", "").await.0, 404);

    // Restart replaces the sandbox at once (no backoff), and the ended one replaces the older.
    let (st, restarted) = s
        .call(
            "POST",
            &format!("{T}/services/worker/restart?waitUntil=ready&timeoutMs=60000"),
            None,
        )
        .await;
    assert_eq!(st, 202);
    // The answer waited for the new sandbox, not the one being replaced.
    assert_eq!(restarted["status"]["readiness"], "ready", "{restarted}");
    assert!(
        !ready_reason(&restarted).contains(&second),
        "{restarted}\n{}",
        s.log()
    );
    let third = running_sandbox(&s, "worker").await;
    assert!(ready_reason(&restarted).contains(&third));
    let (_, replaced) = s
        .call("GET", &format!("{T}/sandboxes/{second}"), None)
        .await;
    assert_eq!(
        replaced["status"]["lifecycleState"], "stopped",
        "{replaced}"
    );
    assert!(ready_reason(&replaced).contains("Stopped"), "{replaced}");
    let (st, _) = s.call("GET", &format!("{T}/sandboxes/{first}"), None).await;
    assert_eq!(st, 404, "only the newest ended sandbox is kept");

    // A new definition rolls out: the old sandbox stops, one of the new spec starts.
    let generation = restarted["metadata"]["generation"].as_i64().unwrap();
    let mut update = service(
        "worker",
        &root,
        "trap 'exit 0' TERM; echo v2; while true; do sleep 0.1; done",
    );
    update["ifMatchGeneration"] = json!(generation);
    update.as_object_mut().unwrap().remove("name");
    let (st, updated) = s
        .call("PUT", &format!("{T}/services/worker"), Some(update))
        .await;
    assert_eq!(st, 200, "{updated}");
    // The new generation is not what runs yet.
    assert_eq!(updated["status"]["lifecycleState"], "starting", "{updated}");
    assert_eq!(updated["status"]["readiness"], "notReady");
    until(&s, "worker", "rolled out", |v| {
        v["status"]["readiness"] == "ready" && !ready_reason(v).contains(&third)
    })
    .await;
    let fourth = running_sandbox(&s, "worker").await;
    let (_, logs) = s
        .call("GET", &format!("{T}/sandboxes/{fourth}/logs"), None)
        .await;
    assert!(logs.to_string().contains("v2"), "{logs}");

    // Stop: the sandbox stops and the service says so.
    let (st, stopped) = s
        .call(
            "POST",
            &format!("{T}/services/worker/stop?waitUntil=stopped&timeoutMs=60000"),
            None,
        )
        .await;
    assert_eq!(st, 202);
    assert_eq!(stopped["status"]["lifecycleState"], "stopped", "{stopped}");
    assert!(sandboxes_of(&s, "worker")
        .await
        .iter()
        .all(|x| x["status"]["lifecycleState"] == "stopped"));
    assert_eq!(file(&s, &session, "GET", "/note", "").await.0, 409);

    // Every step was audited with the server as the actor.
    let (_, audit) = s.call("GET", &format!("{T}/audit?limit=200"), None).await;
    let text = audit.to_string();
    assert!(text.contains("service/worker is started"), "{audit}");
    assert!(
        text.contains("service/worker: its service was restarted"),
        "{audit}"
    );
    delete_and_wait(&s, "worker").await;
}

/// Force-deletes service `name` and waits until its sandboxes are gone (a stopped sandbox keeps
/// its root mounted until then; the host must be left clean).
async fn delete_and_wait(s: &Server, name: &str) {
    let generation = get_service(s, name).await["metadata"]["generation"].clone();
    let (st, deleted) = s
        .call(
            "DELETE",
            &format!("{T}/services/{name}?ifMatchGeneration={generation}&force=true"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{deleted}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sandboxes_of(s, name).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sandboxes outlived service {name}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_service_keeps_its_sandbox_across_a_server_crash_and_a_forced_delete_removes_it() {
    let mut s = Server::start().await;
    // Unique to this run, to find the process on the host.
    let marker = format!("keeper-{}", std::process::id());
    let keeper_script = format!("trap 'exit 0' TERM; while true; do sleep 0.1; done # {marker}");
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let (st, _) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(service("keeper", &root, &keeper_script)),
        )
        .await;
    assert_eq!(st, 201);
    let (st, started) = s
        .call(
            "POST",
            &format!("{T}/services/keeper/start?waitUntil=ready&timeoutMs=60000"),
            None,
        )
        .await;
    assert_eq!(st, 202);
    assert_eq!(started["status"]["lifecycleState"], "running", "{started}");
    let before = running_sandbox(&s, "keeper").await;

    // The server dies and comes back: the same sandbox runs the service; none was added.
    s.kill9();
    s.restart().await;
    let after = until(&s, "keeper", "running after the restart", |v| {
        v["status"]["lifecycleState"] == "running"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(running_sandbox(&s, "keeper").await, before, "{after}");
    assert_eq!(sandboxes_of(&s, "keeper").await.len(), 1);

    // The sandbox's monitor dies (the process goes on, orphaned): the sandbox is `Lost`, and
    // its process is killed before the next sandbox runs, so the service never runs twice.
    let processes = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let pids = processes();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let ppid = std::fs::read_to_string(format!("/proc/{}/stat", pids[0])).unwrap();
    let monitor = ppid
        .rsplit(") ")
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let killed = std::process::Command::new("kill")
        .args(["-9", &monitor])
        .status()
        .unwrap();
    assert!(killed.success());
    let after = until(&s, "keeper", "replaced its lost sandbox", |v| {
        v["status"]["lifecycleState"] == "running" && !ready_reason(v).contains(&before)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now_running = processes();
        if now_running.len() == 1 && now_running[0] != pids[0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lost sandbox's process still runs: {now_running:?} (was {pids:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A delete without force is refused; with force the sandbox goes with the service.
    let generation = after["metadata"]["generation"].as_i64().unwrap();
    let (st, _) = s
        .call(
            "DELETE",
            &format!("{T}/services/keeper?ifMatchGeneration={generation}"),
            None,
        )
        .await;
    assert_eq!(st, 409);
    delete_and_wait(&s, "keeper").await;
    let (st, _) = s
        .call("GET", &format!("{T}/sandboxes/{before}"), None)
        .await;
    assert_eq!(st, 404);

    // A service whose sandbox cannot launch says why, and keeps trying.
    let mut broken = service("broken", &root, "true");
    broken["backend"]["sandbox"]["process"]["argv"] = json!(["/no/such/program"]);
    let (st, _) = s.call("POST", &format!("{T}/services"), Some(broken)).await;
    assert_eq!(st, 201);
    let (st, _) = s
        .call("POST", &format!("{T}/services/broken/start"), None)
        .await;
    assert_eq!(st, 202);
    let failed = until(&s, "broken", "failed", |v| {
        v["status"]["lifecycleState"] == "failed"
    })
    .await;
    assert!(ready_reason(&failed).contains("relaunching at"), "{failed}");
    let (st, stopped) = s
        .call(
            "POST",
            &format!("{T}/services/broken/stop?waitUntil=stopped&timeoutMs=30000"),
            None,
        )
        .await;
    assert_eq!(st, 202);
    assert_eq!(stopped["status"]["lifecycleState"], "stopped", "{stopped}");
    delete_and_wait(&s, "broken").await;
}
