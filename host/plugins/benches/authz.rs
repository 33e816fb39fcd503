//! Cost of one authorization decision: through the grants-policy component (fresh instance +
//! call, as the server does it), natively (`decide_by_grants`), and wasmtime's floor (fresh
//! instance + call of an empty component under the same per-call setup). Plain harness:
//! `cargo bench -p nimbus-plugins --bench authz`. Prints per-call medians and the ratios.
//!
//! The cases are interleaved (one batch of each per round) so that load from other processes on a
//! shared machine hits them alike; ratios are medians of the per-round ratios.
//! `NIMBUS_BENCH_SECS` sets the total time (default 10), `NIMBUS_BENCH_ONLY=<case>` runs one case
//! (for `valgrind --tool=callgrind`, which counts instructions deterministically: 200 warm-up
//! calls + 15 batches of 200 with `NIMBUS_BENCH_SECS=0`).

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

/// One measured case: per-batch wall time per call, and the thread's CPU time over its batches.
struct Case<'a> {
    name: &'static str,
    label: &'static str,
    f: Box<dyn FnMut() + 'a>,
    wall: Vec<Duration>,
    cpu_ns: u64,
    calls: u64,
}

const BATCH: u32 = 200;

impl Case<'_> {
    fn batch(&mut self) {
        let cpu = thread_cpu_ns();
        let t = Instant::now();
        for _ in 0..BATCH {
            (self.f)();
        }
        self.wall.push(t.elapsed() / BATCH);
        if let (Some(a), Some(b)) = (cpu, thread_cpu_ns()) {
            self.cpu_ns += b.saturating_sub(a);
        }
        self.calls += BATCH as u64;
    }

    fn median(&self) -> f64 {
        let mut w = self.wall.clone();
        w.sort();
        w[w.len() / 2].as_nanos() as f64
    }

    /// Mean CPU ns per call: the kernel updates a running thread's CPU time coarsely, so this is
    /// a mean over all batches rather than a per-batch median.
    fn cpu(&self) -> f64 {
        self.cpu_ns as f64 / self.calls.max(1) as f64
    }
}

fn case<'a>(name: &'static str, label: &'static str, f: Box<dyn FnMut() + 'a>) -> Case<'a> {
    Case {
        name,
        label,
        f,
        wall: Vec::new(),
        cpu_ns: 0,
        calls: 0,
    }
}

/// Median over rounds of `a`'s per-call wall time divided by `b`'s in the same round.
fn ratio(a: &Case, b: &Case) -> f64 {
    let mut r: Vec<f64> = a
        .wall
        .iter()
        .zip(&b.wall)
        .map(|(x, y)| x.as_nanos() as f64 / (y.as_nanos() as f64).max(1.0))
        .collect();
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
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

/// The same, with 16 KiB of memory in 1-byte pages: about what the bundled guests start with.
const EMPTY_COMPONENT_WITH_SMALL_MEMORY: &str = r#"(component
    (core module $m (memory (export "memory") 16384 (pagesize 1)) (func (export "run")))
    (core instance $i (instantiate $m))
    (func (export "run") (canon lift (core func $i "run"))))"#;

fn main() {
    let budget = Duration::from_secs(
        std::env::var("NIMBUS_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
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

    // The same decision through a policy with no logic (plugins/testdata/empty-policy), served
    // by its own host exactly like the grants policy: what any authz plugin costs.
    let empty_policy_dir = dir.with_extension("empty-policy");
    let empty_policy_wasm =
        std::path::Path::new(env!("NIMBUS_PLUGINS_WASM_DIR")).join("empty_policy.wasm");
    nimbus_plugins::PluginStore::open(&empty_policy_dir)
        .expect("open plugin store")
        .install(
            &std::fs::read(&empty_policy_wasm).expect("read empty_policy.wasm"),
            None,
            None,
        )
        .expect("install the empty policy");
    let empty_policy_config: PluginsConfig =
        toml::from_str("watch_interval_ms = 0\n[authz]\nplugin = \"empty-policy\"\n")
            .expect("empty-policy config");
    let empty_policy_host =
        PluginHost::open(&empty_policy_dir, &empty_policy_config).expect("open plugin host");
    let empty_policy = empty_policy_host.authorizer();
    let d = empty_policy.authorize(&req);
    assert!(d.allow, "{d:?}");

    let empty = wat::parse_str(EMPTY_COMPONENT).expect("empty component");
    let floor = Floor::new(&empty).expect("floor component");
    let with_memory = wat::parse_str(EMPTY_COMPONENT_WITH_MEMORY).expect("component with memory");
    let floor_mem = Floor::new(&with_memory).expect("floor component with memory");

    let small = wat::parse_str(EMPTY_COMPONENT_WITH_SMALL_MEMORY).expect("small memory");
    let floor_small = Floor::new(&small).expect("floor component with small memory");

    let only = std::env::var("NIMBUS_BENCH_ONLY").unwrap_or_default();
    let mut cases = vec![
        case(
            "floor",
            "wasmtime floor (instantiate + call empty component)",
            Box::new(|| floor.run_once().expect("floor call")),
        ),
        case(
            "floor-memory",
            "floor with one 64 KiB memory page                  ",
            Box::new(|| floor_mem.run_once().expect("floor call")),
        ),
        case(
            "floor-small-memory",
            "floor with 16 KiB of 1-byte-page memory            ",
            Box::new(|| floor_small.run_once().expect("floor call")),
        ),
        case(
            "floor-authz",
            "empty authz policy (same world and request)        ",
            Box::new(|| {
                black_box(empty_policy.authorize(black_box(&req)));
            }),
        ),
        case(
            "plugin",
            "grants-policy component (instantiate + call)       ",
            Box::new(|| {
                black_box(authz.authorize(black_box(&req)));
            }),
        ),
        case(
            "native",
            "native decide_by_grants                            ",
            Box::new(|| {
                black_box(decide_by_grants(black_box(&req)));
            }),
        ),
    ];
    cases.retain(|c| only.is_empty() || c.name == only);
    for c in &mut cases {
        for _ in 0..BATCH {
            (c.f)();
        }
    }
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < budget || rounds < 15 {
        for c in &mut cases {
            c.batch();
        }
        rounds += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty_policy_dir);

    println!(
        "authz decision per call ({rounds} interleaved rounds of {BATCH} calls)  wall ns (median)  cpu ns (mean)"
    );
    for c in &cases {
        println!("  {} {:>9.0} {:>10.0}", c.label, c.median(), c.cpu());
    }
    let get = |name: &str| cases.iter().find(|c| c.name == name);
    if let Some(plugin) = get("plugin") {
        for (name, what) in [
            ("floor", "plugin / floor"),
            ("floor-small-memory", "plugin / floor with 16 KiB memory"),
            ("floor-memory", "plugin / floor with 64 KiB memory"),
            ("floor-authz", "plugin / empty authz policy"),
            ("native", "plugin / native"),
        ] {
            if let Some(other) = get(name) {
                println!(
                    "  {what}: {:.2}x wall (median of rounds), {:.2}x cpu",
                    ratio(plugin, other),
                    plugin.cpu() / other.cpu().max(1.0)
                );
            }
        }
    }
}
