//! Counters for plugin calls, readable as a snapshot or in Prometheus text format. Each loaded
//! plugin gets its own set of atomic counters, so counting costs no lock on the call path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Failure kinds: the call failed (`trap`, `timeout`, `fuel`, `memory`, `instantiate`,
/// `malformed`), or the plugin answered with its own error variant (`error`).
pub(crate) const KINDS: [&str; 7] = [
    "trap",
    "timeout",
    "fuel",
    "memory",
    "instantiate",
    "malformed",
    "error",
];

#[derive(Debug, Default)]
pub(crate) struct Counters {
    calls: AtomicU64,
    failures: [AtomicU64; KINDS.len()],
}

impl Counters {
    pub fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fail(&self, kind: &str) {
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every slot/plugin pair that has been loaded in this host, with its counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    registry: Mutex<Vec<(String, String, Arc<Counters>)>>,
}

/// One counter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSample {
    /// `calls` or `failures`.
    pub name: &'static str,
    pub slot: String,
    /// `id@version`.
    pub plugin: String,
    /// Failure kind; `-` for calls.
    pub kind: String,
    pub value: u64,
}

impl Metrics {
    /// The counters of `plugin` in `slot`, created on first use.
    pub fn counters(&self, slot: &str, plugin: &str) -> Arc<Counters> {
        let mut reg = match self.registry.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        if let Some((_, _, c)) = reg.iter().find(|(s, p, _)| s == slot && p == plugin) {
            return c.clone();
        }
        let c = Arc::new(Counters::default());
        reg.push((slot.to_string(), plugin.to_string(), c.clone()));
        c
    }

    pub fn snapshot(&self) -> Vec<MetricSample> {
        let reg = match self.registry.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let mut out = Vec::new();
        for (slot, plugin, c) in reg.iter() {
            out.push(MetricSample {
                name: "calls",
                slot: slot.clone(),
                plugin: plugin.clone(),
                kind: "-".into(),
                value: c.calls.load(Ordering::Relaxed),
            });
            for (i, kind) in KINDS.iter().enumerate() {
                let value = c.failures[i].load(Ordering::Relaxed);
                if value > 0 {
                    out.push(MetricSample {
                        name: "failures",
                        slot: slot.clone(),
                        plugin: plugin.clone(),
                        kind: kind.to_string(),
                        value,
                    });
                }
            }
        }
        out
    }
}

/// `nimbus_plugin_calls_total` and `nimbus_plugin_failures_total` in Prometheus text format.
pub fn render_prometheus(samples: &[MetricSample]) -> String {
    let mut out = String::new();
    out.push_str("# TYPE nimbus_plugin_calls_total counter\n");
    for s in samples.iter().filter(|s| s.name == "calls") {
        out.push_str(&format!(
            "nimbus_plugin_calls_total{{slot=\"{}\",plugin=\"{}\"}} {}\n",
            s.slot, s.plugin, s.value
        ));
    }
    out.push_str("# TYPE nimbus_plugin_failures_total counter\n");
    for s in samples.iter().filter(|s| s.name == "failures") {
        out.push_str(&format!(
            "nimbus_plugin_failures_total{{slot=\"{}\",plugin=\"{}\",kind=\"{}\"}} {}\n",
            s.slot, s.plugin, s.kind, s.value
        ));
    }
    out
}
