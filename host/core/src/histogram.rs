//! Duration histograms in the Prometheus text format, shared by the API's request metrics and
//! the plugins' call metrics. Counting is lock-free (atomics); rendering is plain text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts durations into buckets with fixed upper bounds, in seconds, and keeps their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Durations within each bound (not cumulative; snapshots accumulate), the last one past
    /// every bound.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, durations at most that long), cumulative like Prometheus's
    /// `le` buckets; the last bound is infinite.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// `bounds`: ascending upper bounds in seconds.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        let mut total = 0;
        let buckets = bounds
            .zip(self.buckets.iter())
            .map(|(bound, n)| {
                total += n.load(Ordering::Relaxed);
                (bound, total)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: total,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl HistogramSnapshot {
    /// Appends the `<name>_bucket`, `_sum` and `_count` lines of one series; `labels` is the
    /// series' label list without braces (`method="GET",code="200"`), values escaped with
    /// [`escape_label`].
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, n) in &self.buckets {
            let le = if bound.is_infinite() {
                "+Inf".to_string()
            } else {
                bound.to_string()
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// A label value as the text format wants it.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [0.00001, 0.0001, 10.0];

    #[test]
    fn durations_land_in_cumulative_buckets_with_their_sum() {
        let h = Histogram::new(&BOUNDS);
        h.observe(Duration::from_micros(8));
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(0.00001, 1), (0.0001, 2), (10.0, 2), (f64::INFINITY, 3)]
        );
        assert_eq!(s.count, 3);
        assert!(
            (s.sum_seconds - 20.000038).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
        let mut text = String::new();
        s.render(&mut text, "x_seconds", "a=\"b\"");
        assert_eq!(
            text,
            "x_seconds_bucket{a=\"b\",le=\"0.00001\"} 1\nx_seconds_bucket{a=\"b\",le=\"0.0001\"} 2\n\
             x_seconds_bucket{a=\"b\",le=\"10\"} 2\nx_seconds_bucket{a=\"b\",le=\"+Inf\"} 3\n\
             x_seconds_sum{a=\"b\"} 20.000038\nx_seconds_count{a=\"b\"} 3\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
