//! The plugin store through the real `nimbus` binary, on a running server's data dir.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nimbus_e2e::{assert_error, Server};

const T: &str = "/v1/tenants/demo";

fn guest(name: &str) -> PathBuf {
    nimbus_e2e::guest_component(name)
}

fn lines(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Installs the guest `guest_name` as version 0.2.0 of `grants-policy`, the policy a server
/// with the default config uses, through the CLI on the server's data dir.
fn install_as_grants_policy_0_2_0(server: &Server, guest_name: &str) {
    let wasm = guest(guest_name);
    let (status, _, err) = server.cli(&[
        "plugin",
        "install",
        wasm.to_str().unwrap(),
        "--id",
        "grants-policy",
        "--version",
        "0.2.0",
    ]);
    assert!(status.success(), "{err}");
}

/// Lists services until the answer has `status`: the server notices the plugin store's new
/// generation on its own (no restart), within a bounded wait. Returns that answer.
async fn wait_for_services_status(
    server: &Server,
    status: u16,
    what: &str,
) -> (reqwest::StatusCode, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server.call("GET", &format!("{T}/services"), None).await;
        if r.0.as_u16() == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "the server never switched to {what}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn plugin_list_on_a_servers_data_dir_shows_the_bundled_plugins_with_their_pins() {
    let server = Server::start().await;
    let (status, out, err) = server.cli(&["plugin", "list"]);
    assert!(status.success(), "{err}");
    let rows = lines(&out);
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        ids,
        vec!["grants-policy", "http-health", "tcp-health"],
        "{out}"
    );
    for r in &rows {
        let bundled = if r[0] == "grants-policy" {
            "0.1.5"
        } else {
            "0.1.1"
        };
        assert_eq!(r[1], bundled, "{out}");
        assert_eq!(r[3].len(), 64, "sha256 column: {out}");
        assert!(r[4].contains("active") && r[4].contains("bundled"), "{out}");
    }
    assert_eq!(rows[0][2], "nimbus:authz/authz-policy@0.1.0");
    assert_eq!(rows[1][2], "nimbus:health/health-check@0.1.0");
}

#[tokio::test]
async fn plugin_inspect_prints_the_wit_world_of_the_grants_policy() {
    let server = Server::start().await;
    let (status, out, err) = server.cli(&["plugin", "inspect", "grants-policy"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("export nimbus:authz/policy@0.1.0;"), "{out}");
    assert!(out.contains("record decision"), "{out}");
}

#[tokio::test]
async fn plugin_install_accepts_a_policy_component_and_refuses_other_files() {
    let server = Server::start().await;
    let junk = server.root.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let (status, _, err) = server.cli(&["plugin", "install", junk.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("not a WebAssembly component"), "{err}");

    let net = guest("net_policy");
    let (status, _, err) = server.cli(&["plugin", "install", net.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("nimbus:host/http@0.1.0"), "{err}");

    let deny_all = guest("deny_all_policy");
    let (status, out, err) = server.cli(&["plugin", "install", deny_all.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(out.starts_with("installed deny-all-policy 0.1.0"), "{out}");
    let (_, out, _) = server.cli(&["plugin", "list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("deny-all-policy 0.1.0 nimbus:authz/authz-policy@0.1.0")),
        "{out}"
    );

    let (status, out, err) = server.cli(&["plugin", "remove", "deny-all-policy"]);
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "removed deny-all-policy 0.1.0");
}

#[tokio::test]
async fn plugin_verify_fails_when_an_installed_component_changes_on_disk() {
    let server = Server::start().await;
    let (status, _, err) = server.cli(&["plugin", "verify"]);
    assert!(status.success(), "{err}");
    let file = server
        .data_dir()
        .join("plugins/installed/tcp-health/0.1.1/component.wasm");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.push(0);
    std::fs::write(&file, bytes).unwrap();
    let (status, out, err) = server.cli(&["plugin", "verify"]);
    assert!(!status.success());
    assert!(out.contains("MISMATCH tcp-health 0.1.1"), "{out}");
    assert!(err.contains("fail their sha256 pin"), "{err}");
}

#[tokio::test]
async fn installing_a_new_policy_version_switches_a_running_servers_decisions() {
    // A generous deadline: the test is about which policy decides, and runs on a shared machine.
    let server = Server::start_with_config("[plugins.limits]\ntimeout_ms = 30000\n").await;
    let (st, _) = server.call("GET", &format!("{T}/services"), None).await;
    assert_eq!(
        st.as_u16(),
        200,
        "the bundled grants-policy allows the admin"
    );

    install_as_grants_policy_0_2_0(&server, "deny_all_policy");
    let r = wait_for_services_status(&server, 403, "grants-policy 0.2.0").await;
    assert_error(&r, 403, "auth.permission_denied");

    // Removing that version falls back to the bundled one, again without a restart.
    let (status, _, err) = server.cli(&["plugin", "remove", "grants-policy@0.2.0"]);
    assert!(status.success(), "{err}");
    wait_for_services_status(&server, 200, "the bundled grants-policy").await;
}

#[tokio::test]
async fn a_bad_plugins_table_stops_the_server_at_start_naming_the_key() {
    let err = serve_refused(
        "[plugins.authz]\nplugin = \"grants-policy\"\nlimits = { memory_mib = 65 }\n",
    );
    assert!(
        err.contains("plugins.authz.limits.memory_mib = 65"),
        "{err}"
    );
}

#[tokio::test]
async fn a_plugin_that_is_not_installed_stops_the_server_before_it_writes_a_credential() {
    // Checked against the plugin store, so only once the data dir is open; but before the
    // server bootstraps its tenant and credential, listens, or sets up sandboxes.
    let refusal = nimbus_e2e::serve_refused(
        "[plugins.authz]\nplugin = \"no-such-policy\"\n",
        "127.0.0.1:0",
    );
    let err = &refusal.stderr;
    assert!(
        err.contains("plugins.authz.plugin = \"no-such-policy\""),
        "{err}"
    );
    assert!(
        err.contains("grants-policy"),
        "lists what is installed: {err}"
    );
    assert!(
        !refusal.credential_written,
        "the credential file was written before the refusal"
    );
}

/// Runs `nimbus serve` with `config` as its nimbus.toml, expects it to exit with an error at
/// start, and returns its stderr.
fn serve_refused(config: &str) -> String {
    nimbus_e2e::serve_refused(config, "127.0.0.1:0").stderr
}

/// A loopback port nothing listens on (for the metrics listener).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The value of the first metric line that starts with `prefix` (name and labels), if any.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn plugin_calls_failures_and_durations_are_served_on_the_metrics_listener() {
    let port = free_port();
    let server = Server::start_with_config(&format!(
        "[server]\nmetrics_listen = \"127.0.0.1:{port}\"\n[plugins.limits]\ntimeout_ms = 30000\n"
    ))
    .await;
    for _ in 0..3 {
        let (st, _) = server.call("GET", &format!("{T}/services"), None).await;
        assert_eq!(st.as_u16(), 200);
    }
    let scrape = || async {
        let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("the metrics listener answers");
        assert_eq!(resp.status().as_u16(), 200);
        let ctype = resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        resp.text().await.unwrap()
    };
    let text = scrape().await;
    let calls = metric(
        &text,
        "nimbus_plugin_calls_total{slot=\"authz\",plugin=\"grants-policy@",
    )
    .unwrap_or_else(|| panic!("no authz call counter:\n{text}"));
    // The same request asked again is answered from the memo of the policy's decisions.
    let memoized = metric(
        &text,
        "nimbus_plugin_memoized_decisions_total{slot=\"authz\",plugin=\"grants-policy@",
    )
    .unwrap_or_else(|| panic!("no memoized decision counter:\n{text}"));
    assert!(calls >= 1.0 && memoized >= 2.0, "{text}");
    let timed = metric(
        &text,
        "nimbus_plugin_call_duration_seconds_count{slot=\"authz\",plugin=\"grants-policy@",
    )
    .unwrap_or_else(|| panic!("no authz duration histogram:\n{text}"));
    assert_eq!(timed, calls, "every call is timed:\n{text}");

    // A policy that traps: requests are denied, and the failures are counted by kind.
    install_as_grants_policy_0_2_0(&server, "trap_policy");
    wait_for_services_status(&server, 403, "the trapping policy").await;
    let text = scrape().await;
    let traps = metric(
        &text,
        "nimbus_plugin_failures_total{slot=\"authz\",plugin=\"grants-policy@0.2.0\",kind=\"trap\"}",
    )
    .unwrap_or_else(|| panic!("no trap counter:\n{text}"));
    assert!(traps >= 1.0, "{text}");
    assert!(server.log().contains("plugin.failed"), "{}", server.log());
}

/// The metrics listener also serves the API's own request durations, labelled by route
/// template (never by the raw path) and status code.
#[tokio::test]
async fn requests_are_timed_per_route_and_status_on_the_metrics_listener() {
    let port = free_port();
    let server = Server::start_with_config(&format!(
        "[server]\nsandbox_driver = \"none\"\nmetrics_listen = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    for _ in 0..2 {
        let (st, _) = server.call("GET", &format!("{T}/services"), None).await;
        assert_eq!(st.as_u16(), 200);
    }
    let (st, _) = server
        .call("GET", &format!("{T}/services/no-such-service"), None)
        .await;
    assert_eq!(st.as_u16(), 404);
    let (st, _) = server.call("GET", "/v1/no/such/route", None).await;
    assert_eq!(st.as_u16(), 404);
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("the metrics listener answers")
        .text()
        .await
        .unwrap();
    let count = |labels: &str| {
        metric(
            &text,
            &format!("nimbus_http_request_duration_seconds_count{{{labels}}}"),
        )
    };
    assert_eq!(
        count(r#"method="GET",route="/v1/tenants/{tenant}/services",code="200""#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        count(r#"method="GET",route="/v1/tenants/{tenant}/services/{name}",code="404""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(r#"method="GET",route="unmatched",code="404""#),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("no-such-service"),
        "raw paths leak into labels:\n{text}"
    );
    // The plugin metrics are still there, after the request metrics.
    assert!(text.contains("nimbus_plugin_calls_total"), "{text}");
}

#[tokio::test]
async fn a_metrics_listen_address_in_use_stops_the_server_at_start_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = serve_refused(&format!(
        "[server]\nsandbox_driver = \"none\"\nmetrics_listen = \"{addr}\"\n"
    ));
    assert!(
        err.contains(&format!("server.metrics_listen = \"{addr}\"")),
        "{err}"
    );
}

/// Runs `nimbus <args> --data-dir <dir>` on a plugin store without a server, killed after 60 s
/// (a command that hangs fails its test). Returns the status, stdout and stderr.
fn store_cli(dir: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let out_file = |name: &str| std::fs::File::create(dir.join(name)).expect("output file");
    let mut child = Command::new(nimbus_e2e::nimbus_bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(out_file("stdout"))
        .stderr(out_file("stderr"))
        .spawn()
        .expect("run nimbus");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`nimbus {}` did not finish in 60 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    (status, read("stdout"), read("stderr"))
}

fn store_file(dir: &Path, path: &str) -> PathBuf {
    dir.join("data/plugins").join(path)
}

#[test]
fn a_corrupt_manifest_only_disables_its_own_version() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (status, _, err) = store_cli(dir, &["plugin", "list"]);
    assert!(status.success(), "{err}");
    std::fs::write(
        store_file(dir, "installed/tcp-health/0.1.1/manifest.json"),
        "{garbage\n",
    )
    .unwrap();

    let (status, out, err) = store_cli(dir, &["plugin", "list"]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("grants-policy 0.1.5") && !out.contains("tcp-health"),
        "{out}"
    );
    assert!(
        err.contains("tcp-health/0.1.1/manifest.json is corrupt"),
        "{err}"
    );
    assert!(
        err.contains("`nimbus plugin remove tcp-health@0.1.1`"),
        "{err}"
    );

    let (status, out, err) = store_cli(dir, &["plugin", "verify"]);
    assert!(!status.success());
    assert!(out.contains("CORRUPT tcp-health 0.1.1"), "{out}");
    assert!(out.contains("ok grants-policy 0.1.5"), "{out}");
    assert!(err.contains("1 corrupt"), "{err}");

    let deny_all = guest("deny_all_policy");
    let (status, _, err) = store_cli(dir, &["plugin", "install", deny_all.to_str().unwrap()]);
    assert!(status.success(), "{err}");

    // Removing it brings the bundled version back at once.
    let (status, out, err) = store_cli(dir, &["plugin", "remove", "tcp-health@0.1.1"]);
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "removed tcp-health 0.1.1");
    assert!(!err.contains("no version of tcp-health is left"), "{err}");
    let (status, out, err) = store_cli(dir, &["plugin", "verify"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("ok tcp-health 0.1.1"), "{out}");
}

#[tokio::test]
async fn a_server_starts_with_a_corrupt_manifest_of_a_version_no_slot_uses() {
    let mut server = Server::start_with_config("[server]\nsandbox_driver = \"none\"\n").await;
    let deny_all = guest("deny_all_policy");
    let (status, _, err) = server.cli(&["plugin", "install", deny_all.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    let manifest = server
        .data_dir()
        .join("plugins/installed/deny-all-policy/0.1.0/manifest.json");
    std::fs::write(&manifest, "{garbage\n").unwrap();
    server.terminate();
    server.restart().await;
    let (st, _) = server.call("GET", &format!("{T}/services"), None).await;
    assert_eq!(st.as_u16(), 200);
    assert!(
        server
            .log()
            .contains("deny-all-policy/0.1.0/manifest.json is corrupt"),
        "{}",
        server.log()
    );
}

#[test]
fn plugin_install_refuses_devices_and_pipes_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let fifo = dir.join("fifo.wasm");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    let link = dir.join("zero.wasm");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    for file in [Path::new("/dev/zero"), fifo.as_path(), link.as_path(), dir] {
        let file = file.to_str().unwrap();
        let args = [
            "plugin",
            "install",
            file,
            "--id",
            "x-y",
            "--version",
            "0.1.0",
        ];
        let (status, _, err) = store_cli(dir, &args);
        assert!(!status.success());
        assert!(
            err.contains(&format!("{file} is not a regular file")),
            "{err}"
        );
    }
}

#[test]
fn plugin_install_refuses_a_version_with_leading_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let deny_all = guest("deny_all_policy");
    let args = [
        "plugin",
        "install",
        deny_all.to_str().unwrap(),
        "--version",
        "01.2.3",
    ];
    let (status, _, err) = store_cli(dir.path(), &args);
    assert!(!status.success());
    assert!(err.contains("leading zeros (write 1.2.3)"), "{err}");
    let (_, out, _) = store_cli(dir.path(), &["plugin", "list"]);
    assert!(!out.contains("deny-all-policy"), "{out}");
}

#[test]
fn plugin_verify_finds_precompiled_code_swapped_for_another_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (status, out, err) = store_cli(dir, &["plugin", "list"]);
    assert!(status.success(), "{err}");
    let sha = |id: &str| {
        let row = lines(&out).into_iter().find(|r| r[0] == id).unwrap();
        row[3].clone()
    };
    let cache = std::fs::read_dir(store_file(dir, "cache"))
        .unwrap()
        .next()
        .expect("an engine's cache directory")
        .unwrap()
        .path();
    let other = std::fs::read(cache.join(format!("{}.cwasm", sha("http-health")))).unwrap();
    let target = cache.join(format!("{}.cwasm", sha("tcp-health")));
    std::fs::write(&target, &other).unwrap();
    let sum = Command::new("sha256sum").arg(&target).output().unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    std::fs::write(target.with_extension("cwasm.sha256"), &sum[..64]).unwrap();

    let (status, out, err) = store_cli(dir, &["plugin", "verify"]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("CORRUPT tcp-health 0.1.1"), "{out}");
    assert!(out.contains("run `nimbus plugin precompile`"), "{out}");
    let (status, _, err2) = store_cli(dir, &["plugin", "precompile"]);
    assert!(status.success(), "{err} {err2}");
    let (status, out, err) = store_cli(dir, &["plugin", "verify"]);
    assert!(status.success(), "{out}{err}");
}

#[test]
fn plugin_precompile_does_every_plugin_and_fails_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (status, _, err) = store_cli(dir, &["plugin", "list"]);
    assert!(status.success(), "{err}");
    std::fs::write(
        store_file(dir, "installed/grants-policy/0.1.5/component.wasm"),
        b"tampered",
    )
    .unwrap();
    let cache = std::fs::read_dir(store_file(dir, "cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_dir_all(&cache).unwrap();

    let (status, _, err) = store_cli(dir, &["plugin", "precompile"]);
    assert!(!status.success());
    assert!(err.contains("cannot precompile 1 of 3 plugins"), "{err}");
    assert!(err.contains("grants-policy 0.1.5 fails its pin"), "{err}");
    let cached = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        cached, 4,
        "http-health and tcp-health, after grants-policy, are precompiled"
    );
}
