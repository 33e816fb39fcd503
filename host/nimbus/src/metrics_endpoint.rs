//! `[server] metrics_listen`: request and plugin metrics in Prometheus text format on their own
//! listener.
//! It is unauthenticated, as scrapers expect, so it is off by default and kept apart from the
//! API's port: bind it to loopback or to a network only the monitoring system reaches.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use nimbus_api::http_metrics::HttpMetrics;
use nimbus_plugins::PluginHost;

/// Binds the metrics listener; a failure names the config key, so the server does not start.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("server.metrics_listen = \"{addr}\": cannot listen there"))
}

/// `GET /metrics`: the API's request durations, and the call, failure and duration metrics of
/// every plugin slot.
pub fn router(http: Arc<HttpMetrics>, plugins: Arc<PluginHost>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = http.render() + &plugins.metrics_text();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    )
}
