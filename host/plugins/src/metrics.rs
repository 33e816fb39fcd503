//! Counters for plugin calls, readable as a snapshot or in Prometheus text format.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Calls and failures per slot and plugin. Failure kinds: `trap`, `timeout`, `fuel`, `memory`,
/// `instantiate`, `malformed`, `unavailable` (no plugin loaded), and `error` (the plugin answered
/// with its own error variant).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<BTreeMap<(String, String, String), u64>>,
}

/// One counter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSample {
    /// `calls` or `failures`.
    pub name: &'static str,
    pub slot: String,
    pub plugin: String,
    /// Failure kind; `-` for calls.
    pub kind: String,
    pub value: u64,
}

impl Metrics {
    pub fn count(&self, slot: &str, plugin: &str, kind: &str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.entry((slot.to_string(), plugin.to_string(), kind.to_string()))
                .or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> Vec<MetricSample> {
        let Ok(m) = self.inner.lock() else {
            return Vec::new();
        };
        m.iter()
            .map(|((slot, plugin, kind), v)| MetricSample {
                name: if kind == "-" { "calls" } else { "failures" },
                slot: slot.clone(),
                plugin: plugin.clone(),
                kind: kind.clone(),
                value: *v,
            })
            .collect()
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
