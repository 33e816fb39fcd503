//! External services are health-checked through the health plugins by the server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_e2e::{json, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: &str = "/v1/tenants/demo";
const NO_DRIVER: &str = "[server]\nsandbox_driver = \"none\"\n";

/// A loopback HTTP server, until aborted: its port, the connections it accepted (one per
/// check: it closes each), and its task. `answer` gives the n-th connection's delay and the
/// whole response it then writes.
async fn loopback_http(
    answer: impl Fn(usize) -> (Duration, String) + Send + Sync + 'static,
) -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (delay, response) = answer(count.fetch_add(1, Ordering::SeqCst));
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, accepted, task)
}

/// An HTTP response with `status` (e.g. `200 OK`) and `body`, closing the connection.
fn response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A minimal HTTP server on loopback answering `200 ok` to everything (see [`loopback_http`]).
async fn http_server() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    loopback_http(|_| (Duration::ZERO, response("200 OK", "ok"))).await
}

/// [`http_server`], answering its n-th connection after `(n % 3) * step_ms` milliseconds, so
/// that successive checks measure different latencies.
async fn http_server_with_delays(
    step_ms: u64,
) -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    loopback_http(move |n| {
        let delay = Duration::from_millis((n as u64 % 3) * step_ms);
        (delay, response("200 OK", "ok"))
    })
    .await
}

/// A loopback HTTP server answering `500` with an error page that differs every time (it counts
/// its connections).
async fn error_page_server() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    loopback_http(|n| {
        let page = format!("error #{n}");
        (Duration::ZERO, response("500 Internal Server Error", &page))
    })
    .await
}

/// A loopback listener that accepts connections and never answers, holding them open, until
/// aborted: an HTTP check of it lasts its whole timeout. Its port, the connections it
/// accepted, and its task.
async fn silent_server() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    (port, accepted, task)
}

/// Waits up to `within` for `counter` to reach `n`; whether it did.
async fn reaches(counter: &AtomicUsize, n: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while counter.load(Ordering::SeqCst) < n {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
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
    let (port, _, server) = http_server().await;
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

/// The health checks own an external service's state: steady health is not rewritten on every
/// check (so a labels read-modify-write guarded by resourceVersion goes through), a stop leaves
/// the checked state and is not waited for, and the service deletes without force, since this
/// server runs nothing for it.
#[tokio::test]
async fn an_external_services_checked_state_is_steady_survives_a_stop_and_deletes_without_force() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (port, accepted, _server) = http_server_with_delays(15).await;
    let health = json!({"kind": "http", "path": "/", "intervalSeconds": 1, "timeoutMs": 2000});
    let body = json!({"name": "web", "backend": {"kind": "external", "endpoint": {"url": format!("http://127.0.0.1:{port}")}, "auth": {"kind": "none"}, "health": health}});
    let (st, created) = s.call("POST", &format!("{T}/services"), Some(body)).await;
    assert_eq!(st, 201, "{created}");
    let healthy = wait_health(&s, "web", "healthy").await;
    let version = healthy["metadata"]["resourceVersion"].clone();
    // Three more checks, each answered after a different delay.
    let seen = accepted.load(Ordering::SeqCst);
    assert!(reaches(&accepted, seen + 4, Duration::from_secs(20)).await);
    let (_, now) = s.call("GET", &format!("{T}/services/web"), None).await;
    assert_eq!(
        now["metadata"]["resourceVersion"], version,
        "steady health rewrote the service: {healthy}\n{now}"
    );
    let (st, labelled) = s
        .call(
            "PUT",
            &format!("{T}/services/web"),
            Some(json!({"labels": {"team": "search"}, "ifMatchGeneration": 1, "ifMatchResourceVersion": version})),
        )
        .await;
    assert_eq!(st, 200, "{labelled}");
    assert_eq!(
        labelled["status"]["lifecycleState"], "running",
        "{labelled}"
    );
    // Started then stopped: the answer (at once, as `stopped` cannot come) shows what the checks see.
    s.call("POST", &format!("{T}/services/web/start"), None)
        .await;
    let asked = Instant::now();
    let (st, stopped) = s
        .call(
            "POST",
            &format!("{T}/services/web/stop?waitUntil=stopped&timeoutMs=20000"),
            None,
        )
        .await;
    assert_eq!(st, 202, "{stopped}");
    assert!(asked.elapsed() < Duration::from_secs(10), "it waited");
    assert_eq!(stopped["status"]["desiredState"], "stopped", "{stopped}");
    assert_eq!(stopped["status"]["lifecycleState"], "running", "{stopped}");
    assert_eq!(stopped["status"]["readiness"], "ready", "{stopped}");
    assert_eq!(stopped["status"]["conditions"][0]["status"], "True");
    // Started again, and deleted without force.
    let (_, started) = s
        .call("POST", &format!("{T}/services/web/start"), None)
        .await;
    assert_eq!(started["status"]["lifecycleState"], "running", "{started}");
    let generation = started["metadata"]["generation"].as_i64().unwrap();
    let (st, deleted) = s
        .call(
            "DELETE",
            &format!("{T}/services/web?ifMatchGeneration={generation}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{deleted}");
}

/// A failing service whose error page differs on every check is not rewritten on every check
/// either: its new detail is written at most once a minute.
#[tokio::test]
async fn a_failing_external_service_is_not_rewritten_for_each_new_error_page() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (port, accepted, _server) = error_page_server().await;
    let health = json!({"kind": "http", "path": "/", "intervalSeconds": 1, "timeoutMs": 2000});
    let body = json!({"name": "web", "backend": {"kind": "external", "endpoint": {"url": format!("http://127.0.0.1:{port}")}, "auth": {"kind": "none"}, "health": health}});
    let (st, created) = s.call("POST", &format!("{T}/services"), Some(body)).await;
    assert_eq!(st, 201, "{created}");
    let failing = wait_health(&s, "web", "unhealthy").await;
    assert!(
        failing["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("error #"),
        "{failing}"
    );
    let seen = accepted.load(Ordering::SeqCst);
    assert!(reaches(&accepted, seen + 4, Duration::from_secs(20)).await);
    let (_, now) = s.call("GET", &format!("{T}/services/web"), None).await;
    assert_eq!(
        now["metadata"]["resourceVersion"], failing["metadata"]["resourceVersion"],
        "each error page rewrote the service: {failing}\n{now}"
    );
}

/// `?waitUntil=` on start makes the server answer once the status shows the condition, or when
/// `timeoutMs` has passed, with the object as it then is.
#[tokio::test]
async fn start_with_wait_until_answers_once_the_condition_holds_or_the_time_is_up() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (port, _, _server) = http_server().await;
    let health = json!({"kind": "http", "path": "/", "intervalSeconds": 1, "timeoutMs": 500});
    let body = json!({"name": "web", "backend": {"kind": "external", "endpoint": {"url": format!("http://127.0.0.1:{port}")}, "auth": {"kind": "none"}, "health": health}});
    let (st, created) = s.call("POST", &format!("{T}/services"), Some(body)).await;
    assert_eq!(st, 201, "{created}");
    assert_ne!(created["status"]["health"], "healthy", "{created}");
    let (st, started) = s
        .call(
            "POST",
            &format!("{T}/services/web/start?waitUntil=healthy&timeoutMs=20000"),
            None,
        )
        .await;
    assert_eq!(st, 202, "{started}");
    assert_eq!(started["status"]["health"], "healthy", "{started}");
    // A condition that does not come: the answer comes at the timeout, showing the status.
    let health = json!({"kind": "tcp", "intervalSeconds": 1, "timeoutMs": 200});
    let body = json!({"name": "quiet", "backend": {"kind": "external", "endpoint": {"url": "http://127.0.0.1:9"}, "auth": {"kind": "none"}, "health": health}});
    s.call("POST", &format!("{T}/services"), Some(body)).await;
    let asked = Instant::now();
    let (st, quiet) = s
        .call(
            "POST",
            &format!("{T}/services/quiet/start?waitUntil=healthy&timeoutMs=300"),
            None,
        )
        .await;
    assert_eq!(st, 202, "{quiet}");
    assert_ne!(quiet["status"]["health"], "healthy", "{quiet}");
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "it did not wait"
    );
    // A condition that cannot come is not waited for: a built-in provider is a declared
    // definition this server does not run.
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(json!({"name": "lb", "backend": {"kind": "builtIn", "provider": "loadBalancer"}})),
    )
    .await;
    let asked = Instant::now();
    let (st, lb) = s
        .call(
            "POST",
            &format!("{T}/services/lb/start?waitUntil=ready&timeoutMs=20000"),
            None,
        )
        .await;
    assert_eq!(st, 202, "{lb}");
    assert_eq!(lb["status"]["readiness"], "notReady", "{lb}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "it waited for what cannot come"
    );
}

/// One service whose endpoint never answers must not delay another's checks (services are
/// scheduled each on its own, not in rounds that wait for their slowest check), and a service
/// never has two checks in flight.
#[tokio::test]
async fn a_service_that_never_answers_does_not_delay_other_services_checks() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let service = |name: &str, port: u16, timeout_ms: u32| {
        json!({"name": name, "backend": {"kind": "external", "endpoint": {"url": format!("http://127.0.0.1:{port}")}, "auth": {"kind": "none"},
            "health": {"kind": "http", "intervalSeconds": 1, "timeoutMs": timeout_ms}}})
    };
    let (silent_port, silent_accepted, silent) = silent_server().await;
    let (st, created) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(service("slow", silent_port, 15_000)),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    // Its first check is in flight: connected, waiting 15 s for an answer that never comes.
    assert!(
        reaches(&silent_accepted, 1, Duration::from_secs(10)).await,
        "slow was never checked\n{}",
        s.log()
    );

    let (port, fast_accepted, fast) = http_server().await;
    let (st, created) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(service("fast", port, 2000)),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    // Checked every second, so three checks take about 3 s; 8 s is generous, and well within
    // the slow check's 15 s.
    assert!(
        reaches(&fast_accepted, 3, Duration::from_secs(8)).await,
        "fast was checked {} times in 8 s while slow's check was in flight\n{}",
        fast_accepted.load(Ordering::SeqCst),
        s.log()
    );
    let (_, svc) = s.call("GET", &format!("{T}/services/fast"), None).await;
    assert_eq!(svc["status"]["health"], "healthy", "{svc}");
    // Slow still has its first check, and only it, in flight: no result, no second connection.
    assert_eq!(silent_accepted.load(Ordering::SeqCst), 1);
    let (_, svc) = s.call("GET", &format!("{T}/services/slow"), None).await;
    assert_eq!(svc["status"]["health"], "unknown", "{svc}");
    silent.abort();
    fast.abort();
}

/// `openssl s_server -www` on a free loopback port with a certificate for 127.0.0.1 from a
/// fresh private CA (a real TLS server answering `200` to any GET): its port, the CA file, and
/// the process (killed on drop).
struct TlsServer {
    port: u16,
    ca: std::path::PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_server() -> TlsServer {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(ok.success(), "openssl {args:?} failed");
    };
    // A private CA, and a server certificate for 127.0.0.1 it signs (webpki refuses a CA
    // certificate as the server's own).
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=nimbus test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let (cert, key) = (p("cert.pem"), p("key.pem"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsServer {
        port,
        ca: p("ca.pem"),
        child,
        _dir: dir,
    }
}

#[tokio::test]
async fn https_services_are_probed_over_tls_trusting_the_configured_ca_only() {
    let tls = tls_server();
    let url = format!("https://127.0.0.1:{}", tls.port);
    let service = json!({"name": "secure", "backend": {"kind": "external", "endpoint": {"url": url}, "auth": {"kind": "none"},
        "health": {"kind": "http", "path": "/healthz", "intervalSeconds": 1, "timeoutMs": 2000}}});

    // Trusting the server's CA: healthy.
    let trusting = Server::start_with_config(&format!(
        "{NO_DRIVER}[plugins]\ntls_ca_file = \"{}\"\n",
        tls.ca.display()
    ))
    .await;
    let (st, created) = trusting
        .call("POST", &format!("{T}/services"), Some(service.clone()))
        .await;
    assert_eq!(st, 201, "{created}");
    let svc = wait_health(&trusting, "secure", "healthy").await;
    assert_eq!(svc["status"]["lifecycleState"], "running", "{svc}");

    // Without it the certificate is not trusted: unhealthy, and the condition says why.
    let plain = Server::start_with_config(NO_DRIVER).await;
    let (st, created) = plain
        .call("POST", &format!("{T}/services"), Some(service))
        .await;
    assert_eq!(st, 201, "{created}");
    let svc = wait_health(&plain, "secure", "unhealthy").await;
    let message = svc["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(message.contains("certificate"), "{svc}");
}

#[tokio::test]
async fn an_unreadable_tls_ca_file_stops_the_server_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("ca.pem");
    // No PEM at all, and a PEM block around bytes that are no certificate.
    for text in [
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGUgYXQgYWxs\n-----END CERTIFICATE-----\n",
    ] {
        std::fs::write(&bogus, text).unwrap();
        let err = nimbus_e2e::serve_refused(
            &format!(
                "{NO_DRIVER}[plugins]\ntls_ca_file = \"{}\"\n",
                bogus.display()
            ),
            "127.0.0.1:0",
        )
        .stderr;
        assert!(err.contains("plugins.tls_ca_file"), "{text:?}: {err}");
    }
}

#[tokio::test]
async fn a_stop_during_health_checks_in_flight_is_clean_and_records_nothing() {
    let mut s = Server::start_with_config(NO_DRIVER).await;
    let (silent_port, silent_accepted, silent) = silent_server().await;
    for i in 0..4 {
        let (st, created) = s
            .call(
                "POST",
                &format!("{T}/services"),
                Some(json!({"name": format!("slow{i}"), "backend": {"kind": "external",
                    "endpoint": {"url": format!("http://127.0.0.1:{silent_port}")}, "auth": {"kind": "none"},
                    "health": {"kind": "http", "intervalSeconds": 1, "timeoutMs": 20_000}}})),
            )
            .await;
        assert_eq!(st, 201, "{created}");
    }
    // Every check is in flight, waiting for answers that never come.
    assert!(
        reaches(&silent_accepted, 4, Duration::from_secs(10)).await,
        "the services were never checked\n{}",
        s.log()
    );
    let asked = Instant::now();
    let status = s.terminate();
    let log = s.log();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "the stop waited for the checks' 20 s timeouts\n{log}"
    );
    // The checks' requests ran on the runtime that shut down: none may outlive it (a panic in
    // a blocking thread), and none of their cut-short outcomes is recorded.
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    s.restart().await;
    for i in 0..4 {
        let (_, svc) = s.call("GET", &format!("{T}/services/slow{i}"), None).await;
        assert_eq!(svc["status"]["health"], "unknown", "{svc}");
    }
    silent.abort();
}

#[tokio::test]
async fn endpoints_that_hang_until_their_timeout_do_not_hold_up_services_that_answer() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (silent_port, silent_accepted, silent) = silent_server().await;
    // About three times as many hanging endpoints as checks may run at once in a lane (64): in
    // one queue, every check would wait for two timeouts.
    const HANGING: usize = 200;
    for i in 0..HANGING {
        let (st, created) = s
            .call(
                "POST",
                &format!("{T}/services"),
                // The default probe timeout (2 s).
                Some(json!({"name": format!("hangs{i}"), "backend": {"kind": "external",
                    "endpoint": {"url": format!("http://127.0.0.1:{silent_port}")}, "auth": {"kind": "none"},
                    "health": {"kind": "http", "intervalSeconds": 1}}})),
            )
            .await;
        assert_eq!(st, 201, "{created}");
    }
    // Every one has been checked once (the last ones after the first 64 timed out), and has
    // timed out.
    assert!(
        reaches(&silent_accepted, HANGING, Duration::from_secs(30)).await,
        "{} of the hanging services were checked\n{}",
        silent_accepted.load(Ordering::SeqCst),
        s.log()
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (port, answered, fast) = http_server().await;
    let (st, created) = s
        .call(
            "POST",
            &format!("{T}/services"),
            Some(json!({"name": "answers", "backend": {"kind": "external",
                "endpoint": {"url": format!("http://127.0.0.1:{port}")}, "auth": {"kind": "none"},
                "health": {"kind": "http", "intervalSeconds": 1, "timeoutMs": 2000}}})),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    // Checked every second: three checks take about 3 s. Were it queued behind the hanging
    // ones, it would get one check per 2 s timeout at best.
    assert!(
        reaches(&answered, 3, Duration::from_secs(6)).await,
        "the answering service was checked {} times in 6 s\n{}",
        answered.load(Ordering::SeqCst),
        s.log()
    );
    // The hanging ones are still checked, in their own lane.
    let before = silent_accepted.load(Ordering::SeqCst);
    assert!(reaches(&silent_accepted, before + 32, Duration::from_secs(10)).await);
    silent.abort();
    fast.abort();
}
