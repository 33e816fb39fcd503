//! Request durations per route and status code, for the metrics listener
//! (`[server] metrics_listen`). Routes are labelled by the router's path templates
//! (`/v1/tenants/{tenant}/services/{name}`), so the number of series stays bounded whatever
//! paths clients send; requests no route matched share `route="unmatched"`, and methods other
//! than HTTP's standard ones (which clients may invent freely) share `method="other"`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use nimbus_core::histogram::{escape_label, Histogram};

/// Upper bounds of the duration buckets, in seconds: from a cached read to a slow pull.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// (method, route template, status code).
type SeriesKey = (String, String, u16);

/// The durations of the requests the server answered since it started.
#[derive(Default)]
pub struct HttpMetrics {
    series: Mutex<BTreeMap<SeriesKey, Histogram>>,
}

/// Times every request `router` serves into `metrics`.
pub fn track(router: Router, metrics: Arc<HttpMetrics>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(metrics, observe))
}

async fn observe(State(metrics): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let method = method_label(req.method()).to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics.record(method, route, response.status().as_u16(), started.elapsed());
    response
}

/// The method's label: one of the standard methods, else `other`, so that a client sending
/// made-up methods cannot add series (and memory) without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD
        .iter()
        .find(|m| *m == method)
        .map_or("other", Method::as_str)
}

impl HttpMetrics {
    /// Counts one request that took `took` until its response's head was ready (a streamed
    /// body, such as followed logs, is not included).
    pub fn record(&self, method: String, route: String, status: u16, took: Duration) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .entry((method, route, status))
            .or_insert_with(|| Histogram::new(&BUCKETS))
            .observe(took);
    }

    /// The Prometheus text exposition of `nimbus_http_request_duration_seconds`.
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let name = "nimbus_http_request_duration_seconds";
        let mut out = format!(
            "# HELP {name} Time from a request's arrival to its response's head, by method, route template and status code.\n# TYPE {name} histogram\n"
        );
        for ((method, route, status), histogram) in series.iter() {
            let labels = format!(
                "method=\"{}\",route=\"{}\",code=\"{status}\"",
                escape_label(method),
                escape_label(route)
            );
            histogram.snapshot().render(&mut out, name, &labels);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for made_up in ["MKCOL", "M1234567", "get"] {
            let method = Method::from_bytes(made_up.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{made_up}");
        }
    }

    #[test]
    fn requests_are_bucketed_cumulatively_per_method_route_and_code() {
        let m = HttpMetrics::default();
        let route = "/v1/tenants/{tenant}/services/{name}";
        let get = |code, micros| {
            m.record(
                "GET".into(),
                route.into(),
                code,
                Duration::from_micros(micros),
            )
        };
        get(200, 80);
        get(200, 300);
        get(200, 20_000_000);
        get(404, 80);
        let text = m.render();
        let line = |suffix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("nimbus_http_request_duration_seconds{suffix}")))
                .unwrap_or_else(|| panic!("no line {suffix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let ok = format!("method=\"GET\",route=\"{route}\",code=\"200\"");
        assert_eq!(line(&format!("_bucket{{{ok},le=\"0.0001\"}}")), "1");
        assert_eq!(line(&format!("_bucket{{{ok},le=\"0.0005\"}}")), "2");
        assert_eq!(line(&format!("_bucket{{{ok},le=\"10\"}}")), "2");
        assert_eq!(line(&format!("_bucket{{{ok},le=\"+Inf\"}}")), "3");
        assert_eq!(line(&format!("_count{{{ok}}}")), "3");
        let sum: f64 = line(&format!("_sum{{{ok}}}")).parse().unwrap();
        assert!((sum - 20.00038).abs() < 1e-9, "{sum}");
        let missing = format!("method=\"GET\",route=\"{route}\",code=\"404\"");
        assert_eq!(line(&format!("_count{{{missing}}}")), "1");
        assert!(text.contains("# TYPE nimbus_http_request_duration_seconds histogram"));
    }
}
