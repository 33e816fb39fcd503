//! A slot's plugin against the slot's limits and pins, through a running server: what cannot
//! start within the limits is never swapped in (nor started with), a sha256 pin picks the
//! version with those bytes, and a policy allowed to run long does not stall other requests.

use std::process::Command;
use std::time::{Duration, Instant};

use nimbus_e2e::{guest_component, nimbus_bin, Auth, Server};

const T: &str = "/v1/tenants/demo";

/// Installs guest `guest_name` as `id@version` through the CLI on the server's data dir.
fn install(server: &Server, guest_name: &str, id: &str, version: &str) {
    let wasm = guest_component(guest_name);
    let (status, _, err) = server.cli(&[
        "plugin",
        "install",
        wasm.to_str().unwrap(),
        "--id",
        id,
        "--version",
        version,
    ]);
    assert!(status.success(), "{err}");
}

/// Waits until the server's log contains `needle` (the plugin watcher acts on its own).
async fn wait_for_log(server: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the log never said {needle:?}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `nimbus serve` on the server's data dir and HOME with `config`, expecting a refusal at
/// start; returns its stderr.
fn serve_refused_on(server: &Server, config: &str) -> String {
    let path = server.data_dir().with_file_name("refused.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(nimbus_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.data_dir())
        .arg("--config")
        .arg(&path)
        .env("HOME", server.home())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started with:\n{config}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const TIGHT_AUTHZ: &str =
    "[server]\nsandbox_driver = \"none\"\n[plugins]\nwatch_interval_ms = 50\n\
    [plugins.authz]\nplugin = \"grants-policy\"\nlimits = { memory_mib = 2 }\n";

#[tokio::test]
async fn a_version_that_cannot_start_within_its_slots_limits_is_never_swapped_in() {
    let mut server = Server::start_with_config(TIGHT_AUTHZ).await;
    // The ballast policy's memory starts at 4 MiB: installable (a slot may allow up to
    // 64 MiB), but not under this slot's 2 MiB.
    install(&server, "ballast_policy", "grants-policy", "0.2.0");
    wait_for_log(&server, "cannot switch plugin slot authz").await;
    // Retried at every watch tick (50 ms here), in case it was transient; logged once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let log = server.log();
    assert_eq!(
        log.matches("cannot switch plugin slot authz").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("grants-policy 0.2.0 cannot start within this slot's limits (2 MiB"),
        "{log}"
    );
    assert!(
        log.contains("plugins.authz.limits"),
        "says what to raise: {log}"
    );
    // The slot kept the bundled policy: requests are still decided.
    let (st, _) = server.call("GET", &format!("{T}/services"), None).await;
    assert_eq!(st, 200);
    // A restart refuses the configuration, naming the slot, instead of denying every request.
    server.terminate();
    let err = serve_refused_on(&server, TIGHT_AUTHZ);
    assert!(
        err.contains("plugins.authz: grants-policy 0.2.0 cannot start"),
        "{err}"
    );
}

#[tokio::test]
async fn a_sha256_pin_without_a_version_serves_the_version_with_those_bytes() {
    let mut server = Server::start_with_config("[server]\nsandbox_driver = \"none\"\n").await;
    let (_, list, _) = server.cli(&["plugin", "list"]);
    let bundled = list
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"grants-policy"))
        .unwrap_or_else(|| panic!("{list}"))[3]
        .to_string();
    // A newer version that denies everything becomes the plugin's active version...
    install(&server, "deny_all_policy", "grants-policy", "0.2.0");
    server
        .restart_with_config(&format!(
            "[server]\nsandbox_driver = \"none\"\n[plugins.authz]\nplugin = \"grants-policy\"\nsha256 = \"{bundled}\"\n"
        ))
        .await;
    // ...but the pin names the bundled bytes, so the bundled version decides.
    let (st, _) = server.call("GET", &format!("{T}/services"), None).await;
    assert_eq!(st, 200, "{}", server.log());
}

#[tokio::test]
async fn the_same_bytes_under_a_new_version_switch_the_slot_to_that_version() {
    let server = Server::start_with_config(
        "[server]\nsandbox_driver = \"none\"\n[plugins]\nwatch_interval_ms = 50\n",
    )
    .await;
    install(&server, "grants_policy", "grants-policy", "0.9.0");
    wait_for_log(
        &server,
        "plugin slot authz now served by grants-policy@0.9.0",
    )
    .await;
}

#[tokio::test]
async fn a_policy_allowed_to_run_long_does_not_stall_other_requests() {
    // Spinning policies get 3 s each; the server has as many async workers as cores.
    let server = Server::start_with_config(
        "[server]\nsandbox_driver = \"none\"\n[plugins]\nwatch_interval_ms = 50\n\
         [plugins.authz]\nplugin = \"grants-policy\"\nlimits = { timeout_ms = 3000, fuel = 1000000000000 }\n",
    )
    .await;
    install(&server, "spin_policy", "grants-policy", "0.2.0");
    wait_for_log(&server, "now served by grants-policy@0.2.0").await;
    // More spinning requests than the server has async workers (one per core), so that without
    // `block_in_place` every worker would be held.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut spinning_calls = tokio::task::JoinSet::new();
    for _ in 0..workers + 2 {
        let request = server
            .client
            .get(format!("{}{T}/services", server.base_url()))
            .bearer_auth(&server.token);
        spinning_calls.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    }
    let spinning = async {
        let mut statuses = Vec::new();
        while let Some(done) = spinning_calls.join_next().await {
            statuses.push(done.unwrap().unwrap());
        }
        statuses
    };
    let other = async {
        // Once the spinning requests hold the policy, a request that needs no decision.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let r = server
            .call_as(Auth::None, "GET", &format!("{T}/services"), None)
            .await;
        (r.0, started.elapsed())
    };
    let (spun, (status, waited)) = tokio::join!(spinning, other);
    assert_eq!(status, 401);
    assert!(
        waited < Duration::from_millis(2000),
        "a request waited {waited:?} behind spinning policies"
    );
    for st in spun {
        assert_eq!(st, 403, "the spinning policy fails closed");
    }
}
