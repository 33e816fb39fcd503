//! Shared helpers for the plugin host's integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nimbus_core::authz::{AuthzRequest, Principal, PrincipalKind, ResourceKind, ResourceRef};
use nimbus_plugins::PluginsConfig;

/// The bytes of a guest built by the crate's build script (plugins/ and plugins/testdata/).
pub fn guest(name: &str) -> Vec<u8> {
    let path = Path::new(env!("NIMBUS_PLUGINS_WASM_DIR")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A fresh data directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "nimbus-plugins-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parses a `[plugins]` table; hot swapping off unless the text turns it on. Unless the text
/// sets limits, calls get a generous deadline: the tests run in debug builds on a shared machine,
/// and a test about decisions must not fail because a call was descheduled past 200 ms.
pub fn config(toml_text: &str) -> PluginsConfig {
    let mut text = String::new();
    if !toml_text.contains("watch_interval_ms") {
        text.push_str("watch_interval_ms = 0\n");
    }
    text.push_str(toml_text);
    if !toml_text.contains("[limits]") {
        text.push_str("\n[limits]\ntimeout_ms = 30000\n");
    }
    toml::from_str(&text).unwrap_or_else(|e| panic!("bad test config: {e}\n{text}"))
}

pub fn request(
    grants: &[&str],
    action: &str,
    kind: ResourceKind,
    name: Option<&str>,
) -> AuthzRequest {
    AuthzRequest {
        principal: Principal {
            id: "cred_1".into(),
            kind: PrincipalKind::Token,
            tenant_id: "demo".into(),
            grants: grants.iter().map(|g| g.to_string()).collect(),
        },
        action: action.into(),
        resource: ResourceRef {
            tenant_id: "demo".into(),
            kind,
            name: name.map(str::to_string),
        },
        context: vec![],
    }
}

/// A real HTTP/1.1 server on loopback answering every request with `status` and a short body.
pub struct TestHttpServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub status: Arc<AtomicU16>,
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl TestHttpServer {
    pub fn start(status: u16) -> TestHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(AtomicU16::new(status));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, st, rq) = (stop.clone(), status.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                rq.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let code = st.load(Ordering::SeqCst);
                let body = if code < 400 { "ok" } else { "draining" };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TestHttpServer {
            port,
            stop,
            status,
            requests,
            thread: Some(thread),
        }
    }

    /// Stops accepting and closes the listening socket.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestHttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}
