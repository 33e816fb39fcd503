//! Cost of one authorization decision: through the grants-policy component (fresh instance +
//! call, as the server does it), natively (`decide_by_grants`), and wasmtime's floor (fresh
//! instance + call of an empty component under the same per-call setup). Plain harness:
//! `cargo bench -p nimbus-plugins --bench authz`. Prints per-call medians and the ratios.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nimbus_core::authz::{
    actions, decide_by_grants, AuthzRequest, Principal, PrincipalKind, ResourceKind, ResourceRef,
};
use nimbus_plugins::{bench::Floor, PluginHost, PluginsConfig};

/// Nanoseconds this thread has spent on a CPU (first field of /proc/thread-self/schedstat).
/// The machine running the benchmark may be shared, so CPU time is reported beside wall time:
/// it does not count time spent waiting for a core.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

/// Runs `f` in batches for about `budget`: median wall time per call, mean CPU time per call.
fn measure(budget: Duration, mut f: impl FnMut()) -> Timing {
    for _ in 0..200 {
        f();
    }
    let batch = 200u32;
    let mut wall = Vec::new();
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    while start.elapsed() < budget || wall.len() < 15 {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        wall.push(t.elapsed() / batch);
    }
    // The kernel updates a running thread's CPU time coarsely, so CPU time is a mean over the
    // whole run rather than a per-batch median.
    let calls = batch as u64 * wall.len() as u64;
    let cpu = match (cpu_start, thread_cpu_ns()) {
        (Some(a), Some(b)) => Some(Duration::from_nanos(b.saturating_sub(a) / calls)),
        _ => None,
    };
    wall.sort();
    Timing {
        wall: wall[wall.len() / 2],
        cpu,
    }
}

fn request() -> AuthzRequest {
    // A representative non-admin decision: a session grant checked against the context.
    AuthzRequest {
        principal: Principal {
            id: "cred_01HZX".into(),
            kind: PrincipalKind::ApiKey,
            tenant_id: "demo".into(),
            grants: vec![
                "tenant:read".into(),
                "service:web:session".into(),
                "sandbox:sbx_a:reach".into(),
            ],
        },
        action: actions::SESSIONS_OPEN.into(),
        resource: ResourceRef {
            tenant_id: "demo".into(),
            kind: ResourceKind::Session,
            name: None,
        },
        context: vec![
            ("targetKind".into(), "service".into()),
            ("targetName".into(), "web".into()),
        ],
    }
}

const EMPTY_COMPONENT: &str = r#"(component
    (core module $m (func (export "run")))
    (core instance $i (instantiate $m))
    (func (export "run") (canon lift (core func $i "run"))))"#;

/// The same, with one 64 KiB page of linear memory (what the grants-policy guest starts with):
/// shows the part of the cost that is resetting memory between instances.
const EMPTY_COMPONENT_WITH_MEMORY: &str = r#"(component
    (core module $m (memory (export "memory") 1) (func (export "run")))
    (core instance $i (instantiate $m))
    (func (export "run") (canon lift (core func $i "run"))))"#;

fn main() {
    let budget = Duration::from_secs(
        std::env::var("NIMBUS_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    let dir = std::env::temp_dir().join(format!("nimbus-plugins-bench-{}", std::process::id()));
    let config: PluginsConfig = PluginsConfig {
        watch_interval_ms: Some(0),
        ..PluginsConfig::default()
    };
    let host = PluginHost::open(&dir, &config).expect("open plugin host");
    let authz = host.authorizer();
    let req = request();
    assert_eq!(
        authz.authorize(&req),
        decide_by_grants(&req),
        "plugin and native must agree"
    );
    assert!(authz.authorize(&req).allow);

    let empty = wat::parse_str(EMPTY_COMPONENT).expect("empty component");
    let floor = Floor::new(&empty).expect("floor component");
    let with_memory = wat::parse_str(EMPTY_COMPONENT_WITH_MEMORY).expect("component with memory");
    let floor_mem = Floor::new(&with_memory).expect("floor component with memory");

    let only = std::env::var("NIMBUS_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only == name;
    let skipped = || Timing {
        wall: Duration::from_nanos(1),
        cpu: None,
    };
    let t_floor = if run("floor") {
        measure(budget, || floor.run_once().expect("floor call"))
    } else {
        skipped()
    };
    let t_floor_mem = if run("floor-memory") {
        measure(budget, || floor_mem.run_once().expect("floor call"))
    } else {
        skipped()
    };
    let t_plugin = if run("plugin") {
        measure(budget, || {
            black_box(authz.authorize(black_box(&req)));
        })
    } else {
        skipped()
    };
    let t_native = if run("native") {
        measure(budget, || {
            black_box(decide_by_grants(black_box(&req)));
        })
    } else {
        skipped()
    };
    let _ = std::fs::remove_dir_all(&dir);

    let ns = |d: Duration| d.as_nanos() as f64;
    let cpu = |t: &Timing| t.cpu.map(ns).unwrap_or(f64::NAN);
    println!(
        "authz decision per call ({}s per case)          wall ns (median)  cpu ns (mean)",
        budget.as_secs()
    );
    for (name, t) in [
        (
            "wasmtime floor (instantiate + call empty component)",
            &t_floor,
        ),
        (
            "floor with one 64 KiB memory page                  ",
            &t_floor_mem,
        ),
        (
            "grants-policy component (instantiate + call)       ",
            &t_plugin,
        ),
        (
            "native decide_by_grants                            ",
            &t_native,
        ),
    ] {
        println!("  {name} {:>9.0} {:>10.0}", ns(t.wall), cpu(t));
    }
    println!(
        "  plugin / floor:  {:.2}x wall, {:.2}x cpu",
        ns(t_plugin.wall) / ns(t_floor.wall),
        cpu(&t_plugin) / cpu(&t_floor)
    );
    println!(
        "  plugin / floor with memory:  {:.2}x wall, {:.2}x cpu",
        ns(t_plugin.wall) / ns(t_floor_mem.wall),
        cpu(&t_plugin) / cpu(&t_floor_mem)
    );
    println!(
        "  plugin / native: {:.0}x wall, {:.0}x cpu",
        ns(t_plugin.wall) / ns(t_native.wall).max(1.0),
        cpu(&t_plugin) / cpu(&t_native).max(1.0)
    );
}
