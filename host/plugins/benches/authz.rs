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

/// Runs `f` in batches for about `budget` and returns the median time per call.
fn measure(budget: Duration, mut f: impl FnMut()) -> Duration {
    for _ in 0..200 {
        f();
    }
    let batch = 200u32;
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 15 {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        samples.push(t.elapsed() / batch);
    }
    samples.sort();
    samples[samples.len() / 2]
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

    let t_floor = measure(budget, || floor.run_once().expect("floor call"));
    let t_plugin = measure(budget, || {
        black_box(authz.authorize(black_box(&req)));
    });
    let t_native = measure(budget, || {
        black_box(decide_by_grants(black_box(&req)));
    });
    let _ = std::fs::remove_dir_all(&dir);

    let ns = |d: Duration| d.as_nanos() as f64;
    println!(
        "authz decision, median per call ({}s per case)",
        budget.as_secs()
    );
    println!(
        "  wasmtime floor (instantiate + call empty component): {:>9.0} ns",
        ns(t_floor)
    );
    println!(
        "  grants-policy component (instantiate + call):        {:>9.0} ns",
        ns(t_plugin)
    );
    println!(
        "  native decide_by_grants:                             {:>9.0} ns",
        ns(t_native)
    );
    println!("  plugin / floor:  {:.2}x", ns(t_plugin) / ns(t_floor));
    println!(
        "  plugin / native: {:.0}x",
        ns(t_plugin) / ns(t_native).max(1.0)
    );
}
