//! Sandboxes actually running through the real `nimbus serve`: an image built here (busybox-static
//! packed with umoci) pushed with skopeo to Debian's `docker-registry` on a free loopback port,
//! launched by reference over HTTP, logs read back, stop/delete, failure reasons, and a
//! `kill -9` of the server that leaves sandboxes running for the restarted server to adopt.
//! Needs root, crun, docker-registry, umoci, skopeo (scripts/setup.sh); fails saying so otherwise.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nimbus_e2e::{assert_error, json, Server};
use serde_json::Value;

const T: &str = "/v1/tenants/demo";
const BUSYBOX: &str = "/usr/bin/busybox";

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry on loopback holding `e2e/busybox:v1`, built from busybox-static with umoci and
/// pushed with skopeo.
/// Builds a busybox image (plus `extra_bytes` of random data in /payload) in `work` and pushes
/// it to the registry at `host` as `repo` (`name:tag`).
fn push_busybox_image(host: &str, work: &Path, repo: &str, extra_bytes: usize) {
    let layout = work.join(format!("layout-{}", repo.replace(['/', ':'], "-")));
    let bundle = work.join(format!("bundle-{}", repo.replace(['/', ':'], "-")));
    let image = format!("{}:v1", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    let applets = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for a in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    if extra_bytes > 0 {
        // Incompressible, so the layer is as large as this file.
        let mut random = std::fs::File::open("/dev/urandom").unwrap();
        let mut out = std::fs::File::create(rootfs.join("payload")).unwrap();
        std::io::copy(
            &mut std::io::Read::take(&mut random, extra_bytes as u64),
            &mut out,
        )
        .unwrap();
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/bin",
        "--config.cmd",
        "sh",
    ]));
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{image}"),
        &format!("docker://{host}/{repo}"),
    ]));
}

fn registry_with_busybox() -> Registry {
    let euid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert_eq!(
        euid.as_deref().ok(),
        Some("0"),
        "sandbox end-to-end tests need root (CI runs as root)"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} missing: apt-get install busybox-static"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry could not start (apt-get install docker-registry)");
    let host = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&host).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("docker-registry did not listen on {host}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }

    push_busybox_image(&host, dir.path(), "e2e/busybox:v1", 0);
    Registry {
        child,
        host,
        _dir: dir,
    }
}

fn sandbox(reference: &str, argv: &[&str]) -> Value {
    json!({
        "profile": "worker",
        "spec": {
            "owner": {"kind": "standalone", "displayName": "e2e"},
            "backend": "container",
            "root": {"kind": "oci_image", "source": {"kind": "reference", "reference": reference}},
            "process": {"argv": argv},
        },
    })
}

async fn create(s: &Server, body: Value) -> String {
    let (st, v) = s.call("POST", &format!("{T}/sandboxes"), Some(body)).await;
    assert!(st.is_success(), "create: {st} {v}");
    v["metadata"]["id"].as_str().unwrap().to_string()
}

/// A sandbox of the registry's busybox image running `argv`, once it is ready.
async fn running(s: &Server, reg: &Registry, argv: &[&str]) -> String {
    let image = format!("{}/e2e/busybox:v1", reg.host);
    let id = create(s, sandbox(&image, argv)).await;
    wait_state(s, &id, &["ready"], Duration::from_secs(120)).await;
    id
}

/// The sandbox's log, followed (`?follow=true`): the response, its body still streaming.
async fn follow_logs(s: &Server, id: &str) -> reqwest::Response {
    let resp = s
        .client
        .get(format!(
            "{}{T}/sandboxes/{id}/logs?follow=true",
            s.base_url()
        ))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "logs: {}", resp.status());
    resp
}

/// Polls until the sandbox's lifecycleState is one of `states`.
async fn wait_state(s: &Server, id: &str, states: &[&str], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, v) = s.call("GET", &format!("{T}/sandboxes/{id}"), None).await;
        if states.iter().any(|st| v["status"]["lifecycleState"] == *st) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "sandbox {id} never reached {states:?}: {v}\nserver log:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn logs(s: &Server, id: &str) -> String {
    let resp = s
        .client
        .get(format!("{}{T}/sandboxes/{id}/logs", s.base_url()))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "logs: {}", resp.status());
    resp.text().await.unwrap()
}

#[tokio::test]
async fn registry_image_runs_to_completion_and_its_output_is_readable_over_http() {
    let reg = registry_with_busybox();
    let s = Server::start().await;
    let id = create(
        &s,
        sandbox(
            &format!("{}/e2e/busybox:v1", reg.host),
            &["sh", "-c", "echo hello from nimbus; exit 3"],
        ),
    )
    .await;
    let v = wait_state(&s, &id, &["stopped", "failed"], Duration::from_secs(120)).await;
    assert_eq!(v["status"]["exitCode"], 3, "{v}");
    assert_eq!(logs(&s, &id).await, "hello from nimbus\n");
    delete_all(&s, &[&id]).await;
}

#[tokio::test]
async fn running_sandbox_reports_endpoints_stops_on_request_and_bad_argv_fails_with_its_reason() {
    let reg = registry_with_busybox();
    let s = Server::start().await;
    let image = format!("{}/e2e/busybox:v1", reg.host);
    let id = create(
        &s,
        sandbox(&image, &["sh", "-c", "echo up; exec sleep 600"]),
    )
    .await;
    let v = wait_state(&s, &id, &["ready"], Duration::from_secs(120)).await;
    let endpoints = v["status"]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !endpoints.is_empty()
            && endpoints[0]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.")),
        "{v}"
    );
    let (st, _) = s
        .call("POST", &format!("{T}/sandboxes/{id}/stop"), None)
        .await;
    assert!(st.is_success());
    wait_state(&s, &id, &["stopped"], Duration::from_secs(60)).await;
    assert_eq!(logs(&s, &id).await, "up\n");

    let bad = create(&s, sandbox(&image, &["no-such-program"])).await;
    let v = wait_state(&s, &bad, &["failed"], Duration::from_secs(60)).await;
    let reasons: Vec<String> = v["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["reason"].as_str().map(str::to_string))
        .collect();
    assert!(reasons.iter().any(|r| r == "BadArgv"), "{v}");
    delete_all(&s, &[&id, &bad]).await;
}

/// Deletes the sandboxes (monitors outlive servers by design, so tests clean up after
/// themselves) and checks that their network namespaces are gone.
async fn delete_all(s: &Server, ids: &[&str]) {
    for id in ids {
        let (st, v) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
        assert!(st.is_success(), "delete {id}: {st} {v}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&out.stdout).to_string();
        if !ids.iter().any(|id| list.contains(id)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "network namespaces of {ids:?} still present after delete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_deleted_sandbox_is_never_seen_failed_on_its_way_out() {
    // Delete kills the process and removes its state before the record goes; the exit
    // watcher (every 250 ms) must not record that as an exit meanwhile. Each round reads the
    // record as fast as it can while the delete runs, so a watcher pass inside the teardown
    // shows up as a `failed` read.
    let reg = registry_with_busybox();
    let s = Server::start().await;
    let image = format!("{}/e2e/busybox:v1", reg.host);
    for round in 0..6 {
        let id = create(&s, sandbox(&image, &["sleep", "600"])).await;
        wait_state(&s, &id, &["ready"], Duration::from_secs(120)).await;
        let path = format!("{T}/sandboxes/{id}");
        let done = std::sync::atomic::AtomicBool::new(false);
        let reads = async {
            let mut seen = Vec::new();
            loop {
                let (st, v) = s.call("GET", &path, None).await;
                if st.as_u16() == 404 {
                    return seen;
                }
                seen.push(
                    v["status"]["lifecycleState"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                );
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return seen;
                }
            }
        };
        let delete = async {
            let (st, v) = s.call("DELETE", &path, None).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (st, v)
        };
        let (seen, (st, v)) = tokio::join!(reads, delete);
        assert!(st.is_success(), "delete: {st} {v}");
        // The final object says what the delete did to the running process.
        assert_eq!(v["status"]["lifecycleState"], "stopped", "{v}");
        let ready = v["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(ready["reason"], "Deleted", "{v}");
        assert!(
            seen.iter().all(|state| state == "ready"),
            "round {round}: read while deleting: {seen:?}"
        );
    }
}

#[tokio::test]
async fn sigkill_of_the_server_leaves_sandboxes_running_and_the_restarted_server_adopts_them() {
    let reg = registry_with_busybox();
    let mut s = Server::start().await;
    let image = format!("{}/e2e/busybox:v1", reg.host);
    let long = create(
        &s,
        sandbox(&image, &["sh", "-c", "echo long; exec sleep 600"]),
    )
    .await;
    let short = create(
        &s,
        sandbox(
            &image,
            &["sh", "-c", "echo short; sleep 4; echo done; exit 5"],
        ),
    )
    .await;
    for id in [&long, &short] {
        wait_state(&s, id, &["ready"], Duration::from_secs(120)).await;
    }
    let monitors_before = count_monitors(&s);
    s.kill9();
    // While the server is down the short sandbox exits; the long one keeps running.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        count_monitors(&s),
        monitors_before - 1,
        "the long sandbox's monitor must survive the server"
    );
    s.restart().await;
    let v = wait_state(&s, &short, &["stopped", "failed"], Duration::from_secs(60)).await;
    assert_eq!(v["status"]["exitCode"], 5, "{v}");
    assert_eq!(logs(&s, &short).await, "short\ndone\n");
    let v = wait_state(&s, &long, &["ready"], Duration::from_secs(10)).await;
    assert_eq!(v["status"]["lifecycleState"], "ready");
    let (st, _) = s
        .call("POST", &format!("{T}/sandboxes/{long}/stop"), None)
        .await;
    assert!(st.is_success());
    wait_state(&s, &long, &["stopped"], Duration::from_secs(60)).await;
    delete_all(&s, &[&long, &short]).await;
}

/// Rewrites a sandbox's record to `pending` in the server's database (the server must be down):
/// what the record says when the server is killed after the launch started the process but
/// before the launch's `creating` write committed.
fn rewrite_to_pending(s: &Server, id: &str) {
    let script = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
(doc,) = db.execute("SELECT doc FROM sandboxes WHERE id = ?", (sys.argv[2],)).fetchone()
doc = json.loads(doc)
status = doc["status"]
key = "lifecycleState" if "lifecycleState" in status else "lifecycle_state"
assert status[key] == "ready", status
status[key] = "pending"
db.execute("UPDATE sandboxes SET state = 'pending', doc = ? WHERE id = ?", (json.dumps(doc), sys.argv[2]))
db.commit()
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.data_dir().join("nimbus.db"))
        .arg(id));
}

/// Marks sandbox `id`'s record as a delete does before its teardown (the `Deleting`
/// condition), as if the server had been killed right after.
fn mark_deleting(s: &Server, id: &str) {
    let script = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
(doc,) = db.execute("SELECT doc FROM sandboxes WHERE id = ?", (sys.argv[2],)).fetchone()
doc = json.loads(doc)
mark = dict(doc["status"]["conditions"][0])
mark.update({"type": "Deleting", "status": "True", "reason": "DeleteRequested"})
doc["status"]["conditions"].append(mark)
db.execute("UPDATE sandboxes SET doc = ? WHERE id = ?", (json.dumps(doc), sys.argv[2]))
db.commit()
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.data_dir().join("nimbus.db"))
        .arg(id));
}

/// A delete the server was killed in (its record marked, its teardown cut off) is finished by
/// the next start: the record goes with the host state, instead of the sandbox staying as if
/// its process had failed.
#[tokio::test]
async fn a_delete_cut_off_by_a_crash_is_finished_at_the_next_start() {
    let reg = registry_with_busybox();
    let mut s = Server::start().await;
    let id = running(&s, &reg, &["sh", "-c", "echo up; exec sleep 600"]).await;
    s.kill9();
    mark_deleting(&s, &id);
    s.restart().await;
    let (st, body) = s.call("GET", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 404, "{body}\n{}", s.log());
    assert_eq!(count_monitors(&s), 0, "its monitor is gone");
    assert!(
        !s.data_dir()
            .join(format!("runtime/sandboxes/{id}"))
            .exists(),
        "its state dir is gone"
    );
    let (st, audit) = s
        .call("GET", "/v1/tenants/demo/audit?limit=1000", None)
        .await;
    assert_eq!(st, 200, "{audit}");
    assert!(
        audit.to_string().contains("finished a delete"),
        "no audit event for the finished delete: {audit}"
    );
}

#[tokio::test]
async fn a_sandbox_started_before_its_launch_recorded_creating_is_started_afresh_after_a_crash() {
    let reg = registry_with_busybox();
    let mut s = Server::start().await;
    let image = format!("{}/e2e/busybox:v1", reg.host);
    let id = create(
        &s,
        sandbox(&image, &["sh", "-c", "echo up; exec sleep 600"]),
    )
    .await;
    wait_state(&s, &id, &["ready"], Duration::from_secs(120)).await;
    let monitor_pid = |s: &Server| {
        std::fs::read_to_string(
            s.data_dir()
                .join(format!("runtime/sandboxes/{id}/monitor.pid")),
        )
        .unwrap_or_default()
    };
    let first = monitor_pid(&s);
    assert!(!first.is_empty());
    s.kill9();
    rewrite_to_pending(&s, &id);
    s.restart().await;
    // Cleared and launched again, not failed as "already exists" beside a process nobody
    // records.
    let v = wait_state(&s, &id, &["ready", "failed"], Duration::from_secs(60)).await;
    assert_eq!(v["status"]["lifecycleState"], "ready", "{v}\n{}", s.log());
    let second = monitor_pid(&s);
    assert!(
        !second.is_empty() && second != first,
        "{first} then {second}"
    );
    assert_eq!(count_monitors(&s), 1, "the first launch's monitor is gone");
    assert_eq!(logs(&s, &id).await, "up\n");
    delete_all(&s, &[&id]).await;
}

/// Monitors of this server's data dir that are alive.
fn count_monitors(s: &Server) -> usize {
    nimbus_runtime::orphans::monitors_under(&s.data_dir()).len()
}

#[tokio::test]
async fn image_pull_from_the_cli_shows_progress_and_sandboxes_then_start_without_the_registry() {
    let reg = registry_with_busybox();
    let s = Server::start().await;
    let reference = format!("{}/e2e/busybox:v1", reg.host);
    let (st, out, err) = s.cli(&["image", "pull", &reference]);
    assert!(st.success(), "image pull failed: {err}");
    assert!(
        err.contains("pulling") && err.contains("MiB"),
        "no pull progress: {err}"
    );
    assert!(
        err.contains("unpacking layer 1 of 1"),
        "no unpack progress: {err}"
    );
    assert!(out.contains(&reference) && out.contains("sha256:"), "{out}");
    let (st, out, _) = s.cli(&["image", "list"]);
    assert!(st.success());
    assert!(out.lines().any(|l| l.starts_with(&reference)), "{out}");
    let (st, _, err) = s.cli(&["image", "pull", "no such:ref"]);
    assert!(!st.success());
    assert!(err.contains("not an image reference"), "{err}");

    // The registry is gone; the pulled image is all the sandbox needs.
    drop(reg);
    let id = create(&s, sandbox(&reference, &["echo", "from the store"])).await;
    // Following the logs right after the create waits for the launch and streams the output.
    let resp = follow_logs(&s, &id).await;
    let text = tokio::time::timeout(Duration::from_secs(60), resp.text())
        .await
        .expect("the followed log ends when the process exits")
        .unwrap();
    assert_eq!(text, "from the store\n");
    let v = wait_state(&s, &id, &["stopped", "failed"], Duration::from_secs(60)).await;
    assert_eq!(v["status"]["exitCode"], 0, "{v}");
    delete_all(&s, &[&id]).await;
}

#[tokio::test]
async fn a_pull_shows_its_progress_in_the_sandboxes_ready_condition() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    // Large enough that the pull lasts many polls on loopback.
    push_busybox_image(&reg.host, work.path(), "e2e/big:v1", 48 << 20);
    let s = Server::start().await;
    let id = create(
        &s,
        sandbox(&format!("{}/e2e/big:v1", reg.host), &["echo", "big"]),
    )
    .await;
    let (mut states, mut reasons, mut pulling) = (Vec::new(), Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = s.call("GET", &format!("{T}/sandboxes/{id}"), None).await;
        let state = v["status"]["lifecycleState"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for c in v["status"]["conditions"].as_array().into_iter().flatten() {
            if c["type"] == "Ready" {
                let reason = c["reason"].as_str().unwrap_or("").to_string();
                if reason == "Pulling" {
                    pulling.push(c["message"].as_str().unwrap_or("").to_string());
                }
                if reasons.last() != Some(&reason) {
                    reasons.push(reason);
                }
            }
        }
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if ["ready", "stopped", "failed"].contains(&state.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "no end to the launch: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        states.contains(&"creating".to_string()),
        "a pull is recorded as creating: {states:?}"
    );
    assert!(
        pulling
            .iter()
            .any(|m| m.contains("e2e/big:v1") && m.contains("MiB")),
        "no pull progress in the Ready condition: reasons {reasons:?}, messages {pulling:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "Unpacking"),
        "no unpack progress: {reasons:?}"
    );
    wait_state(&s, &id, &["stopped"], Duration::from_secs(60)).await;
    assert_eq!(logs(&s, &id).await, "big\n");
    delete_all(&s, &[&id]).await;
}

#[tokio::test]
async fn sigterm_stops_the_server_within_its_grace_while_a_log_is_followed() {
    // A followed log never ends while its process runs: a stopping server waits a few seconds
    // for such requests, then cuts them, instead of waiting for the client to leave.
    let reg = registry_with_busybox();
    let mut s = Server::start().await;
    let id = running(&s, &reg, &["sh", "-c", "echo up; exec sleep 600"]).await;
    let followed = follow_logs(&s, &id).await;
    let signalled = Instant::now();
    let status = s.terminate();
    assert!(status.success(), "{status}\n{}", s.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "took {:?} to stop",
        signalled.elapsed()
    );
    assert!(s.log().contains("are cut"), "{}", s.log());
    drop(followed);
    // The sandbox outlived the server; the next one adopts it.
    s.restart().await;
    wait_state(&s, &id, &["ready"], Duration::from_secs(30)).await;
    delete_all(&s, &[&id]).await;
}

#[tokio::test]
async fn a_launch_cut_off_before_it_wrote_anything_is_launched_afresh_after_a_crash() {
    // A registry that takes connections and never answers: the launch waits in its pull with
    // its state dir claimed and nothing written in it yet, its record still pending.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = silent.local_addr().unwrap().to_string();
    let mut s = Server::start().await;
    let id = create(&s, sandbox(&format!("{host}/e2e/silent:v1"), &["true"])).await;
    let state = s.data_dir().join(format!("runtime/sandboxes/{id}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.exists() {
        assert!(
            Instant::now() < deadline,
            "the launch never claimed {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, v) = s.call("GET", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(v["status"]["lifecycleState"], "pending", "{v}");
    s.kill9();
    drop(silent);
    assert!(
        !state.join("meta.json").exists(),
        "the launch got further than meant"
    );
    s.restart().await;
    // Cleared and launched again (which now finds the registry gone), not failed as
    // "already exists in the runtime" over the empty state dir.
    let v = wait_state(&s, &id, &["failed"], Duration::from_secs(60)).await;
    assert_eq!(
        v["status"]["conditions"][0]["reason"],
        "RegistryUnreachable",
        "{v}\n{}",
        s.log()
    );
    delete_all(&s, &[&id]).await;
}

#[tokio::test]
async fn a_delete_whose_client_goes_away_still_completes() {
    let reg = registry_with_busybox();
    let s = Server::start().await;
    let id = running(&s, &reg, &["sleep", "300"]).await;
    // The client gives up long before the teardown is done.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    let cut = impatient
        .delete(format!("{}{T}/sandboxes/{id}", s.base_url()))
        .bearer_auth(&s.token)
        .send()
        .await;
    assert!(cut.is_err(), "the delete answered within 30 ms: {cut:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v) = s.call("GET", &format!("{T}/sandboxes/{id}"), None).await;
        if st == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the delete never completed: {v}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, audit) = s.call("GET", &format!("{T}/audit"), None).await;
    assert!(audit.to_string().contains("sandboxes.delete"), "{audit}");
    delete_all(&s, &[]).await;
}

#[tokio::test]
async fn once_a_create_is_refused_for_quota_the_next_ones_prepare_nothing() {
    let reg = registry_with_busybox();
    let s = Server::start_with_config("[limits]\nsandboxes_per_tenant = 1\n").await;
    let id = running(&s, &reg, &["sleep", "300"]).await;
    let image = format!("{}/e2e/busybox:v1", reg.host);
    let refused = || async {
        let r = s
            .call(
                "POST",
                &format!("{T}/sandboxes"),
                Some(sandbox(&image, &["true"])),
            )
            .await;
        assert_error(&r, 429, "quota.exhausted");
    };
    // The first refusal prepared a launch and withdrew it; let that settle.
    refused().await;
    let states = s.data_dir().join("runtime/sandboxes");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&states).unwrap().count() > 1 {
        assert!(
            Instant::now() < deadline,
            "the withdrawn launch was not undone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = std::fs::metadata(&states).unwrap().modified().unwrap();
    for _ in 0..5 {
        refused().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = std::fs::metadata(&states).unwrap().modified().unwrap();
    assert_eq!(
        before, after,
        "a refused create claimed (and removed) a state dir"
    );
    delete_all(&s, &[&id]).await;
}

#[tokio::test]
async fn image_prune_keeps_the_layers_of_a_running_sandbox() {
    // busybox here is one layer: mapped into the sandbox's user namespace by itself, so its
    // mount does not show the layer's name; the sandbox's own record of its layers does.
    let reg = registry_with_busybox();
    let s = Server::start().await;
    let id = running(&s, &reg, &["sleep", "300"]).await;
    let layers = s.data_dir().join("runtime/images/layers");
    let count = || {
        std::fs::read_dir(&layers)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().len() == 64)
            .count()
    };
    assert_eq!(count(), 1);
    let reference = format!("{}/e2e/busybox:v1", reg.host);
    let (st, _, err) = s.cli(&["image", "remove", &reference]);
    assert!(st.success(), "{err}");
    let (st, out, err) = s.cli(&["image", "prune"]);
    assert!(st.success(), "{err}");
    assert!(out.contains("0 layers"), "{out}");
    assert_eq!(count(), 1, "the running sandbox's layer was pruned");
    delete_all(&s, &[&id]).await;
    // Then it goes (unless another test's sandbox on this host mounts the same layer).
    let (st, _, err) = s.cli(&["image", "prune"]);
    assert!(st.success(), "{err}");
}
