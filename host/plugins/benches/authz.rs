//! Cost of one authorization decision: through the grants-policy component (fresh instance +
//! call, as the server does it), natively (`decide_by_grants`), and wasmtime's floors (fresh
//! instance + call of an empty component under the same per-call setup; see `floors.rs`): the
//! floor for `decide` itself (an empty component typed like a policy: the request in, a constant
//! decision out, no logic), which the target of 1.5x is read against, and the bare floor (no
//! memory, no arguments, no result) with steps in between. Plain harness:
//! `cargo bench -p nimbus-plugins --bench authz`. Prints per-call medians and the ratios.
//!
//! The cases are interleaved (one batch of each per round) so that load from other processes on a
//! shared machine hits them alike; ratios are medians of the per-round ratios.
//! `NIMBUS_BENCH_EVICT_MIB=32` evicts the caches before every call (see [`Evictor`]): a server
//! makes each decision with caches cold from the rest of the request, and there a decision costs
//! several times its hot-loop figure.
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
/// Calls per batch when caches are evicted before each call (each eviction takes milliseconds).
const COLD_BATCH: u32 = 20;

/// With `NIMBUS_BENCH_EVICT_MIB=N`, every call is preceded by writing one byte per cache line of
/// an N MiB buffer, so that it starts with cold caches and TLB, as a decision does on a server
/// that handled a request in between. Only the call is timed.
struct Evictor(Vec<u8>);

impl Evictor {
    fn evict(&mut self, round: u8) {
        for i in (0..self.0.len()).step_by(64) {
            self.0[i] = self.0[i].wrapping_add(round);
        }
        black_box(&self.0);
    }
}

impl Case<'_> {
    fn batch(&mut self, evictor: Option<&mut Evictor>) {
        let Some(evictor) = evictor else {
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
            return;
        };
        // Cold: CPU time would include the evictions, so only wall time is kept.
        let mut spent = Duration::ZERO;
        for i in 0..COLD_BATCH {
            evictor.evict(i as u8);
            let t = Instant::now();
            (self.f)();
            spent += t.elapsed();
        }
        self.wall.push(spent / COLD_BATCH);
    }

    fn median(&self) -> f64 {
        let mut w = self.wall.clone();
        w.sort();
        w[w.len() / 2].as_nanos() as f64
    }

    /// Mean CPU ns per call: the kernel updates a running thread's CPU time coarsely, so this is
    /// a mean over all batches rather than a per-batch median. None when not measured (cold).
    fn cpu(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.cpu_ns as f64 / self.calls as f64)
    }
}

/// "<a / b>x wall (median of rounds), <a / b>x cpu", the CPU part only where both were measured.
fn ratios(a: &Case, b: &Case) -> String {
    let wall = format!("{:.2}x wall (median of rounds)", ratio(a, b));
    match (a.cpu(), b.cpu()) {
        (Some(x), Some(y)) => format!("{wall}, {:.2}x cpu", x / y.max(1.0)),
        _ => wall,
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

mod floors;

use floors::{
    DECIDE_FLOOR_COMPONENT, EMPTY_COMPONENT, EMPTY_COMPONENT_WITH_MEMORY,
    EMPTY_COMPONENT_WITH_SMALL_MEMORY, REQUEST_FLOOR_COMPONENT,
};

fn main() {
    let budget = Duration::from_secs(
        std::env::var("NIMBUS_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let dir = std::env::temp_dir().join(format!("nimbus-plugins-bench-{}", std::process::id()));
    // Every decision a call: the memo of a pure policy's decisions (the server's default)
    // would answer the same request from memory. Its own case below measures that.
    let config: PluginsConfig =
        toml::from_str("watch_interval_ms = 0\n[authz]\nmemoize_decisions = false\n")
            .expect("grants-policy config");
    let host = PluginHost::open(&dir, &config).expect("open plugin host");
    let authz = host.authorizer();
    let memo_config: PluginsConfig =
        toml::from_str("watch_interval_ms = 0\n").expect("grants-policy config");
    let memo_host = PluginHost::open(&dir, &memo_config).expect("open plugin host");
    let memoized = memo_host.authorizer();
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
    let empty_policy_config: PluginsConfig = toml::from_str(
        "watch_interval_ms = 0\n[authz]\nplugin = \"empty-policy\"\nmemoize_decisions = false\n",
    )
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

    let request_floor =
        wat::parse_str(REQUEST_FLOOR_COMPONENT).expect("component receiving a request");
    let floor_request = Floor::new(&request_floor).expect("floor component receiving a request");
    let decide_floor = wat::parse_str(DECIDE_FLOOR_COMPONENT).expect("decide floor component");
    let floor_decide = Floor::new(&decide_floor).expect("decide floor");

    let only = std::env::var("NIMBUS_BENCH_ONLY").unwrap_or_default();
    let mut cases = vec![
        case(
            "floor",
            "bare floor: empty component, `run: func()`          ",
            Box::new(|| floor.run_once().expect("floor call")),
        ),
        case(
            "floor-memory",
            "bare floor with one 64 KiB memory page             ",
            Box::new(|| floor_mem.run_once().expect("floor call")),
        ),
        case(
            "floor-small-memory",
            "bare floor with 16 KiB of 1-byte-page memory       ",
            Box::new(|| floor_small.run_once().expect("floor call")),
        ),
        case(
            "floor-request",
            "empty component receiving the request              ",
            Box::new(|| {
                floor_request
                    .run_request_once(black_box(&req))
                    .expect("floor call with the request")
            }),
        ),
        case(
            "floor-decide",
            "floor for decide: request in, constant decision out",
            Box::new(|| {
                black_box(
                    floor_decide
                        .run_decide_once(black_box(&req))
                        .expect("decide floor call"),
                );
            }),
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
            "memoized",
            "grants-policy, the same request again (memoized)   ",
            Box::new(|| {
                black_box(memoized.authorize(black_box(&req)));
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
    let mut evictor = std::env::var("NIMBUS_BENCH_EVICT_MIB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&mib| mib > 0)
        .map(|mib| Evictor(vec![1u8; mib << 20]));
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < budget || rounds < 15 {
        for c in &mut cases {
            c.batch(evictor.as_mut());
        }
        rounds += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty_policy_dir);

    match &evictor {
        None => println!(
            "authz decision per call ({rounds} interleaved rounds of {BATCH} calls)  wall ns (median)  cpu ns (mean)"
        ),
        Some(e) => println!(
            "authz decision per call, caches evicted ({} MiB) before each ({rounds} interleaved rounds of {COLD_BATCH} calls)  wall ns (median)  cpu ns (not measured)",
            e.0.len() >> 20
        ),
    }
    for c in &cases {
        let cpu = c.cpu().map_or("-".to_string(), |ns| format!("{ns:.0}"));
        println!("  {} {:>9.0} {:>10}", c.label, c.median(), cpu);
    }
    let get = |name: &str| cases.iter().find(|c| c.name == name);
    if let Some(plugin) = get("plugin") {
        for (name, what) in [
            ("floor", "plugin / bare floor"),
            (
                "floor-small-memory",
                "plugin / bare floor with 16 KiB memory",
            ),
            ("floor-memory", "plugin / bare floor with 64 KiB memory"),
            (
                "floor-request",
                "plugin / empty component receiving the request",
            ),
            ("floor-decide", "plugin / floor for decide (target <= 1.5x)"),
            ("floor-authz", "plugin / empty authz policy"),
            ("native", "plugin / native"),
            ("memoized", "plugin / the same decision from the memo"),
        ] {
            if let Some(other) = get(name) {
                println!("  {what}: {}", ratios(plugin, other));
            }
        }
    }
    // What no policy can go below: the decide call itself, and receiving its request alone,
    // against the bare floor.
    for (name, what) in [
        ("floor-decide", "floor for decide / bare floor"),
        (
            "floor-request",
            "empty component receiving the request / bare floor",
        ),
    ] {
        if let (Some(c), Some(floor)) = (get(name), get("floor")) {
            println!("  {what}: {}", ratios(c, floor));
        }
    }
}
