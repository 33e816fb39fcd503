//! The plugin store through the real `nimbus` binary, on a running server's data dir.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nimbus_e2e::{assert_error, Server};

const T: &str = "/v1/tenants/demo";

/// A guest component built by nimbus-plugins' build script into
/// `<target>/nimbus-plugins-wasm/wasm32-wasip2/release/` (beside `<target>/debug/nimbus`).
fn guest(name: &str) -> PathBuf {
    let bin = nimbus_e2e::nimbus_bin();
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
            "0.1.3"
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
    assert!(calls >= 3.0, "{text}");
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
