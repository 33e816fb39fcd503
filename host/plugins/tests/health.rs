//! Health checks through the bundled http-health and tcp-health plugins against real servers on
//! loopback, and a health plugin reaching for a host it was not granted.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{config, guest, TempDir, TestHttpServer};
use nimbus_plugins::{
    HealthAuth, HealthProbe, HealthTarget, HttpProbe, PluginHost, PluginStore, TcpProbe,
};

fn http_target(port: u16, path: &str) -> HealthTarget {
    HealthTarget {
        endpoint: format!("http://127.0.0.1:{port}"),
        auth: HealthAuth::Bearer("s3cret".into()),
        probe: HealthProbe::Http(HttpProbe {
            path: path.into(),
            timeout: Duration::from_secs(2),
            ..HttpProbe::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_is_healthy_while_the_server_answers_and_unhealthy_once_it_stops() {
    let dir = TempDir::new("http");
    let host = PluginHost::open(dir.path(), &config("")).unwrap();
    let mut server = TestHttpServer::start(200);
    let port = server.port;

    let up = host.check_health(http_target(port, "/healthz")).await;
    assert!(up.healthy, "{up:?}");
    assert_eq!(up.checked_by, "http-health@0.1.1");
    assert!(up.detail.contains("answered 200"), "{up:?}");
    let seen = server.requests.lock().unwrap().clone();
    assert!(seen[0].starts_with("GET /healthz HTTP/1.1"), "{seen:?}");
    assert!(
        seen[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer s3cret"),
        "{seen:?}"
    );

    server
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let draining = host.check_health(http_target(port, "/healthz")).await;
    assert!(!draining.healthy, "{draining:?}");
    assert!(
        draining.detail.contains("503") && draining.detail.contains("200-399"),
        "{draining:?}"
    );

    server.stop();
    let down = host.check_health(http_target(port, "/healthz")).await;
    assert!(!down.healthy, "{down:?}");
    assert!(down.detail.contains("connection refused"), "{down:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_is_healthy_while_the_port_listens_and_unhealthy_once_it_closes() {
    let dir = TempDir::new("tcp");
    let host = PluginHost::open(dir.path(), &config("")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = HealthTarget {
        endpoint: format!("tcp://127.0.0.1:{port}"),
        auth: HealthAuth::None,
        probe: HealthProbe::Tcp(TcpProbe::default()),
    };
    let up = host.check_health(target.clone()).await;
    assert!(up.healthy, "{up:?}");
    assert_eq!(up.checked_by, "tcp-health@0.1.1");
    drop(listener);
    let down = host.check_health(target).await;
    assert!(!down.healthy, "{down:?}");
    assert!(down.detail.contains("connection refused"), "{down:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_outside_the_grants_is_not_reached_when_allow_target_is_off() {
    let dir = TempDir::new("grants");
    let host = PluginHost::open(
        dir.path(),
        &config("[health.http]\nplugin = \"http-health\"\nallow_target = false\nhosts = [\"db.internal\"]\n"),
    )
    .unwrap();
    let server = TestHttpServer::start(200);
    let out = host.check_health(http_target(server.port, "/")).await;
    assert!(!out.healthy, "{out:?}");
    assert!(out.detail.contains("not granted"), "{out:?}");
    assert!(out.detail.contains("plugins.health.http.hosts"), "{out:?}");
    assert!(
        server.requests.lock().unwrap().is_empty(),
        "no request may reach the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_plugin_reaching_for_an_ungranted_host_gets_nothing_and_reports_unhealthy() {
    let dir = TempDir::new("sneaky");
    let store = PluginStore::open(dir.path()).unwrap();
    store.install(&guest("sneaky_health"), None, None).unwrap();
    let host = PluginHost::open(
        dir.path(),
        &config("[health.http]\nplugin = \"sneaky-health\"\n"),
    )
    .unwrap();
    let server = TestHttpServer::start(200);
    let out = host.check_health(http_target(server.port, "/")).await;
    assert!(!out.healthy, "{out:?}");
    assert!(out.detail.contains("NotGranted"), "{out:?}");
    assert!(out.detail.contains("ungranted.invalid"), "{out:?}");
    // The host is unaffected: the bundled TCP checker still works.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = host
        .check_health(HealthTarget {
            endpoint: format!("127.0.0.1:{}", listener.local_addr().unwrap().port()),
            auth: HealthAuth::None,
            probe: HealthProbe::Tcp(TcpProbe::default()),
        })
        .await;
    assert!(tcp.healthy, "{tcp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_probe_sent_to_the_tcp_checker_is_unhealthy_with_a_reason() {
    let dir = TempDir::new("mismatch");
    let host = PluginHost::open(
        dir.path(),
        &config("[health.http]\nplugin = \"tcp-health\"\n"),
    )
    .unwrap();
    let out = host.check_health(http_target(1, "/")).await;
    assert!(!out.healthy);
    assert!(out.detail.contains("unsupported probe"), "{out:?}");
    let errors: u64 = host
        .metrics()
        .iter()
        .filter(|s| s.kind == "error" && s.slot == "health.http")
        .map(|s| s.value)
        .sum();
    assert_eq!(errors, 1);
}
