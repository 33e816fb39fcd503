//! End-to-end harness: starts the real `nimbus` binary on a free loopback port with a temp
//! data dir and a temp HOME (so the credential file lands there), and talks to it over HTTP.
//!
//! The binary is found through `NIMBUS_BIN`, else next to the test executable's target dir
//! (`target/debug/nimbus`); build it first with `cargo build -p nimbus`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub use reqwest;
pub use serde_json::json;

/// Where the `nimbus` binary is.
/// A guest component built by nimbus-plugins' build script into
/// `<target>/nimbus-plugins-wasm/wasm32-wasip2/release/` (beside `<target>/debug/nimbus`).
pub fn guest_component(name: &str) -> PathBuf {
    let bin = nimbus_bin();
    let target = bin
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir above the nimbus binary");
    let path = target
        .join("nimbus-plugins-wasm/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: `cargo build -p nimbus` builds the guest components",
        path.display()
    );
    path
}

pub fn nimbus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NIMBUS_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/<test> -> target/debug/nimbus
    let exe = std::env::current_exe().expect("current exe");
    let debug_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = debug_dir.join("nimbus");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p nimbus` first or set NIMBUS_BIN",
        bin.display()
    );
    bin
}

/// A distinct small number per server started by this process (0..250).
fn next_network_slot() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() % 50 * 5;
    (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 250
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A running server and what a client needs to reach it.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    /// Holds HOME and the data dir; removed on drop.
    pub root: tempfile::TempDir,
    config: Option<String>,
    pub token: String,
    pub client: reqwest::Client,
    /// The bridge the harness chose for this server (removed with it).
    harness_bridge: Option<String>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with_config("").await
    }

    /// Starts a server whose `--config` file has `toml` as its text (none when empty).
    pub async fn start_with_config(toml: &str) -> Server {
        // Sandboxes an earlier, failed run left running after its data dir went.
        nimbus_runtime::orphans::remove_orphans_under(&std::env::temp_dir());
        let root = tempfile::tempdir().expect("temp dir");
        // Servers of one test binary run side by side on one host: give each its own bridge
        // and address range so their sandboxes' networks never collide.
        let mut toml = toml.to_string();
        let mut harness_bridge = None;
        if !toml.contains("[runtime]") {
            let n = next_network_slot();
            toml.push_str(&format!(
                "\n[runtime]\nbridge = \"nmbt{n}\"\nsubnet = \"10.231.{n}.0/24\"\n"
            ));
            // Only a server that runs sandboxes makes them.
            if !toml.contains("sandbox_driver = \"none\"") {
                harness_bridge = Some(format!("nmbt{n}"));
            }
        }
        let config = Some(toml);
        let mut s = Server {
            child: None,
            port: free_port(),
            root,
            config,
            token: String::new(),
            client: reqwest::Client::new(),
            harness_bridge,
        };
        s.spawn().await;
        s
    }

    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn credential_file(&self) -> PathBuf {
        self.home()
            .join(".config/nimbus/application_default_credentials.json")
    }

    /// Runs `nimbus <args>` against this server's data dir and HOME; returns stdout.
    pub fn cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let out = Command::new(nimbus_bin())
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("HOME", self.home())
            .output()
            .expect("run nimbus");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn spawn(&mut self) {
        std::fs::create_dir_all(self.home()).expect("home");
        let mut cmd = Command::new(nimbus_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.data_dir());
        if let Some(text) = &self.config {
            let path = self.root.path().join("nimbus.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("server.log"))
            .expect("log file");
        cmd.env("HOME", self.home())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn nimbus serve"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nimbus serve exited with {status} before it was ready; log:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = self
                .client
                .get(format!("{}/healthz", self.base_url()))
                .send()
                .await
            {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nimbus serve did not become ready in 30s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let text = std::fs::read_to_string(self.credential_file())
            .expect("the server writes the credential file at first start");
        let v: Value = serde_json::from_str(&text).expect("credential file is JSON");
        self.token = v["token"].as_str().expect("token").to_string();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("server running");
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop within 20s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port, data dir and HOME, with `toml` as its whole
    /// nimbus.toml (the harness's own `[runtime]` lines are not added again: meant for servers
    /// with `sandbox_driver = "none"`).
    pub async fn restart_with_config(&mut self, toml: &str) {
        self.config = Some(toml.to_string());
        self.restart().await;
    }

    /// Starts the server again on the same port, data dir and HOME.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        self.spawn().await;
    }

    /// A request as the admin from the credential file.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(Auth::Bearer(&self.token), method, path, body)
            .await
    }

    pub async fn call_as(
        &self,
        auth: Auth<'_>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base_url(), path));
        req = match auth {
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::ApiKey(k) => req.header("X-Nimbus-Api-Key", k),
            Auth::None => req,
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// A raw body (for malformed and oversized JSON), on a connection of its own: the server
    /// stops reading an oversized body, so that connection cannot be reused.
    pub async fn call_raw(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let resp = client
            .request(method, format!("{}{}", self.base_url(), path))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request reaches the server");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Drop for Server {
    /// SIGTERM first, so the server removes what only it uses (its warm network pool); SIGKILL
    /// if it has not stopped within a few seconds. Then the bridge and nftables table the
    /// harness gave it go too: left behind, every later `nft` call on the host pays for them.
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill9();
        if let Some(bridge) = &self.harness_bridge {
            let quiet = |cmd: &str, args: &[&str]| {
                let _ = Command::new(cmd)
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            };
            for family in ["inet", "bridge"] {
                quiet(
                    "nft",
                    &["delete", "table", family, &format!("nimbus_{bridge}")],
                );
            }
            quiet("ip", &["link", "delete", bridge]);
            // Warm-pool namespaces a server killed mid-preparation (or by `kill9`) left: the
            // next server on this bridge would remove them, but there may be none.
            let prefix = format!("nimbus-{bridge}-");
            if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    if let Some(ns) = line
                        .split_whitespace()
                        .next()
                        .filter(|n| n.starts_with(&prefix))
                    {
                        quiet("ip", &["netns", "delete", ns]);
                    }
                }
            }
            // ...and their user namespaces, also those whose network namespace was already
            // gone (a teardown cut off by the server's exit, which the next start would finish).
            if let Ok(kept) = std::fs::read_dir("/run/nimbus/userns") {
                for e in kept.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        quiet("umount", &["-l", &e.path().to_string_lossy()]);
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
pub enum Auth<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
    None,
}

/// Asserts `(status, body)` is the documented error with `code`.
#[track_caller]
pub fn assert_error(resp: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(
        resp.0.as_u16(),
        status,
        "expected {status} {code}, got {} {}",
        resp.0,
        resp.1
    );
    assert_eq!(resp.1["error"]["code"], code, "body: {}", resp.1);
    assert!(
        resp.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error message missing: {}",
        resp.1
    );
    assert!(
        resp.1["error"]["details"].is_object(),
        "error details missing: {}",
        resp.1
    );
}

/// [`assert_error`], and its message contains `says`.
#[track_caller]
pub fn assert_error_says(resp: &(StatusCode, Value), status: u16, code: &str, says: &str) {
    assert_error(resp, status, code);
    assert!(
        resp.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(says)),
        "the message does not say {says:?}: {}",
        resp.1
    );
}

/// A sandbox-backed service definition as in the guides.
pub fn worker_service(name: &str) -> Value {
    json!({
        "name": name,
        "backend": { "kind": "sandbox", "sandbox": {
            "owner": { "kind": "service", "serviceName": name },
            "backend": "container",
            "root": { "kind": "oci_image", "source": { "kind": "reference", "reference": "docker.io/library/node:22-alpine" } },
            "process": { "argv": ["node", "server.js"] }
        } },
        "labels": { "team": "search" }
    })
}

/// A standalone sandbox as in the guides.
pub fn batch_sandbox() -> Value {
    json!({
        "profile": "worker",
        "spec": {
            "owner": { "kind": "standalone", "displayName": "batch-job" },
            "backend": "container",
            "root": { "kind": "oci_image", "source": { "kind": "reference", "reference": "docker.io/library/python:3.12-slim" } },
            "process": { "argv": ["python", "job.py"] }
        },
        "labels": { "purpose": "batch" }
    })
}

/// What `nimbus serve` said when it refused to start.
pub struct Refusal {
    pub stderr: String,
    /// Whether it created its data dir before refusing.
    pub data_dir_created: bool,
    /// Whether it wrote the admin credential file (its HOME's
    /// `.config/nimbus/application_default_credentials.json`) before refusing.
    pub credential_written: bool,
}

/// Runs `nimbus serve --listen <listen>` with `config` as its nimbus.toml (and a fresh data dir
/// and HOME), expects it to exit with an error at start, and returns what it said.
pub fn serve_refused(config: &str, listen: &str) -> Refusal {
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path().join("nimbus.toml");
    std::fs::write(&path, config).expect("write nimbus.toml");
    let out = Command::new(nimbus_bin())
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(root.path().join("data"))
        .arg("--config")
        .arg(&path)
        .env("HOME", root.path())
        .output()
        .expect("run nimbus serve");
    assert!(!out.status.success(), "the server started with:\n{config}");
    Refusal {
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        data_dir_created: root.path().join("data").exists(),
        credential_written: root
            .path()
            .join(".config/nimbus/application_default_credentials.json")
            .exists(),
    }
}

/// A root filesystem in `dir` with busybox-static in it (copied from the host's), the applets
/// `applets` linked in `/bin`, and the usual top-level directories; its path.
pub fn busybox_rootfs(dir: &Path, applets: &[&str]) -> String {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (scripts/setup.sh installs it)");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    dir.to_str().unwrap().to_string()
}
