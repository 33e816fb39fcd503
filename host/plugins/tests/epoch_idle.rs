//! The epoch ticker rests while no plugin call runs, and a call that starts while it rests
//! still gets its deadline. Its own test binary: no other test's calls keep the ticker up.

mod common;

use std::time::{Duration, Instant};

use common::{config, guest, request, TempDir};
use nimbus_core::authz::{actions, ResourceKind};
use nimbus_plugins::{PluginHost, PluginStore};

/// Wake-ups (voluntary context switches) of this process's epoch ticker thread so far.
fn ticker_wakeups() -> u64 {
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task entry").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "nimbus-plugin-e" {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).expect("task status");
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches in the task status");
    }
    panic!("no epoch ticker thread (nimbus-plugin-epoch) in this process");
}

/// Waits until the ticker stops waking up; panics if it still ticks after `within`.
fn wait_until_parked(within: Duration) {
    let start = Instant::now();
    loop {
        let before = ticker_wakeups();
        std::thread::sleep(Duration::from_millis(200));
        // A ticking thread wakes every 10 ms: 20 times in this window.
        if ticker_wakeups() == before {
            return;
        }
        assert!(
            start.elapsed() < within,
            "the epoch ticker still wakes up {within:?} after the last plugin call"
        );
    }
}

#[test]
fn the_ticker_rests_between_calls_and_a_call_that_wakes_it_still_meets_its_deadline() {
    let dir = TempDir::new("epoch-idle");
    let store = PluginStore::open(dir.path()).unwrap();
    store.install(&guest("spin_policy"), None, None).unwrap();
    let host = PluginHost::open(
        dir.path(),
        &config(
            "[authz]\nplugin = \"spin-policy\"\nlimits = { timeout_ms = 50, fuel = 20000000000 }\n",
        ),
    )
    .unwrap();
    // Loading the plugins ran calls (each is instantiated once); then nothing runs.
    wait_until_parked(Duration::from_secs(5));
    eprintln!("parked after loading");

    // A policy that never returns, started while the ticker rests: the epoch deadline must stop
    // it (its fuel would last seconds more, and the test then fails naming `fuel`).
    let started = Instant::now();
    let decision = host.authorizer().authorize(&request(
        &["server:admin"],
        actions::SERVICES_LIST,
        ResourceKind::Service,
        None,
    ));
    let took = started.elapsed();
    assert!(!decision.allow, "{decision:?}");
    assert!(
        decision.reasons[0].contains("failed (timeout)"),
        "the call should have hit its deadline: {decision:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "a 50 ms deadline took {took:?} to fire"
    );

    // And it rests again once the call is over.
    wait_until_parked(Duration::from_secs(5));
}
