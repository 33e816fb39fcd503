//! Counters for plugin calls, readable as a snapshot or in Prometheus text format. Each loaded
//! plugin gets its own set of atomic counters, so counting costs no lock on the call path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::histogram::{Histogram, HistogramSnapshot};

/// Upper bounds of the call-duration histogram's buckets, in seconds. An authorization decision
/// takes microseconds (tens of them on a busy server), a health check up to its timeout.
pub(crate) const DURATION_BUCKETS: [f64; 12] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 1.0, 10.0,
];

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

#[derive(Debug)]
pub(crate) struct Counters {
    calls: AtomicU64,
    /// Decisions given from the memo, without a call.
    memoized: AtomicU64,
    failures: [AtomicU64; KINDS.len()],
    durations: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            calls: AtomicU64::new(0),
            memoized: AtomicU64::new(0),
            failures: Default::default(),
            durations: Histogram::new(&DURATION_BUCKETS),
        }
    }
}

impl Counters {
    pub fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn memoized(&self) {
        self.memoized.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a call took, from the start of instantiation to the host's check of
    /// the answer, whatever its outcome.
    pub fn observe(&self, took: Duration) {
        self.durations.observe(took);
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
    /// `calls`, `memoized` or `failures`.
    pub name: &'static str,
    pub slot: String,
    /// `id@version`.
    pub plugin: String,
    /// Failure kind; `-` for calls.
    pub kind: String,
    pub value: u64,
}

/// The call-duration histogram of one slot/plugin pair.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationSample {
    pub slot: String,
    /// `id@version`.
    pub plugin: String,
    pub histogram: HistogramSnapshot,
}

impl Metrics {
    /// The call-duration histograms, one per slot/plugin pair loaded so far.
    pub fn durations(&self) -> Vec<DurationSample> {
        let reg = match self.registry.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        reg.iter()
            .map(|(slot, plugin, c)| DurationSample {
                slot: slot.clone(),
                plugin: plugin.clone(),
                histogram: c.durations.snapshot(),
            })
            .collect()
    }

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
            // Always for the authz slot, so that a rate over it has a series from the start.
            let memoized = c.memoized.load(Ordering::Relaxed);
            if memoized > 0 || slot == "authz" {
                out.push(MetricSample {
                    name: "memoized",
                    slot: slot.clone(),
                    plugin: plugin.clone(),
                    kind: "-".into(),
                    value: memoized,
                });
            }
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

/// `nimbus_plugin_calls_total`, `nimbus_plugin_memoized_decisions_total` and
/// `nimbus_plugin_failures_total` in Prometheus text format.
pub fn render_prometheus(samples: &[MetricSample]) -> String {
    let mut out = String::new();
    out.push_str("# TYPE nimbus_plugin_calls_total counter\n");
    for s in samples.iter().filter(|s| s.name == "calls") {
        out.push_str(&format!(
            "nimbus_plugin_calls_total{{slot=\"{}\",plugin=\"{}\"}} {}\n",
            s.slot, s.plugin, s.value
        ));
    }
    out.push_str("# TYPE nimbus_plugin_memoized_decisions_total counter\n");
    for s in samples.iter().filter(|s| s.name == "memoized") {
        out.push_str(&format!(
            "nimbus_plugin_memoized_decisions_total{{slot=\"{}\",plugin=\"{}\"}} {}\n",
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

/// `nimbus_plugin_call_duration_seconds` in Prometheus text format.
pub fn render_durations(samples: &[DurationSample]) -> String {
    let mut out = String::from("# TYPE nimbus_plugin_call_duration_seconds histogram\n");
    for s in samples {
        let labels = format!("slot=\"{}\",plugin=\"{}\"", s.slot, s.plugin);
        s.histogram
            .render(&mut out, "nimbus_plugin_call_duration_seconds", &labels);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_cumulative_buckets_with_their_sum() {
        let m = Metrics::default();
        let c = m.counters("authz", "grants-policy@0.1.3");
        c.observe(Duration::from_micros(8));
        c.observe(Duration::from_micros(30));
        c.observe(Duration::from_secs(20));
        let d = &m.durations()[0].histogram;
        assert_eq!(d.count, 3);
        assert!(
            (d.sum_seconds - 20.000038).abs() < 1e-9,
            "{}",
            d.sum_seconds
        );
        let at = |bound: f64| d.buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(0.00001), Some(1));
        assert_eq!(at(0.000025), Some(1));
        assert_eq!(at(0.00005), Some(2));
        assert_eq!(at(10.0), Some(2));
        assert_eq!(at(f64::INFINITY), Some(3));
        let text = render_durations(&m.durations());
        assert!(text.contains(
            "nimbus_plugin_call_duration_seconds_bucket{slot=\"authz\",plugin=\"grants-policy@0.1.3\",le=\"0.00005\"} 2\n"
        ), "{text}");
        assert!(text.contains("le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains(
            "nimbus_plugin_call_duration_seconds_count{slot=\"authz\",plugin=\"grants-policy@0.1.3\"} 3\n"
        ), "{text}");
    }
}
