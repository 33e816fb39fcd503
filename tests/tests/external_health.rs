//! External services are health-checked through the health plugins by the server.

use std::time::{Duration, Instant};

use nimbus_e2e::{json, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: &str = "/v1/tenants/demo";
const NO_DRIVER: &str = "[server]\nsandbox_driver = \"none\"\n";

/// A minimal HTTP server on loopback answering `200 ok` to everything, until aborted.
async fn http_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (port, task)
}

async fn wait_health(s: &Server, name: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, svc) = s.call("GET", &format!("{T}/services/{name}"), None).await;
        if svc["status"]["health"] == want {
            return svc;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {want}: {svc}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_external_service_goes_healthy_then_unhealthy_when_its_server_stops() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (port, server) = http_server().await;
    for (name, health) in [
        (
            "web",
            json!({"kind": "http", "path": "/healthz", "intervalSeconds": 1, "timeoutMs": 500}),
        ),
        (
            "raw",
            json!({"kind": "tcp", "intervalSeconds": 1, "timeoutMs": 500}),
        ),
    ] {
        let body = json!({"name": name, "backend": {"kind": "external", "endpoint": {"url": format!("http://127.0.0.1:{port}")}, "auth": {"kind": "none"}, "health": health}});
        let (st, created) = s.call("POST", &format!("{T}/services"), Some(body)).await;
        assert_eq!(st, 201, "{created}");
    }
    for name in ["web", "raw"] {
        let svc = wait_health(&s, name, "healthy").await;
        assert_eq!(svc["status"]["lifecycleState"], "running", "{svc}");
        assert_eq!(svc["status"]["readiness"], "ready");
        assert_eq!(svc["status"]["conditions"][0]["status"], "True");
    }
    server.abort();
    let _ = server.await;
    for name in ["web", "raw"] {
        let svc = wait_health(&s, name, "unhealthy").await;
        assert_eq!(svc["status"]["lifecycleState"], "failed", "{svc}");
        assert_eq!(svc["status"]["readiness"], "notReady");
        assert!(
            svc["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1"),
            "{svc}"
        );
    }
    // An unchecked external service stays declared.
    let body = json!({"name": "quiet", "backend": {"kind": "external", "endpoint": {"url": "http://127.0.0.1:9"}}});
    let (_, quiet) = s.call("POST", &format!("{T}/services"), Some(body)).await;
    assert_eq!(quiet["status"]["lifecycleState"], "declared");
}
