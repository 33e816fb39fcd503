//! Shared test fixtures: a real OCI registry (Debian's `docker-registry`) on a free loopback
//! port with a temp storage dir, images built here from `busybox-static` and pushed over the
//! distribution protocol, and a `Runtime` on its own bridge, subnet and data dir.
//!
//! These tests need root, crun, nftables and iproute2 (CI runs as root). When something is
//! missing they fail and say what, never pass silently.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use nimbus_core::names::SandboxId;
use nimbus_core::spec::{
    ImageSource, NetworkPolicy, Owner, Process, Resources, Root, SandboxBackend, SandboxSpec,
};
use nimbus_runtime::{Observed, Runtime, RuntimeConfig};
use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/usr/bin/busybox";

/// Fails the test with the reason when the host cannot run these tests.
pub fn require_host() {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root (they mount overlays and create netns); run them as root like CI does");
    for tool in ["crun", "nft", "ip", "docker-registry"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "{tool} is not installed; run tests/setup-host.sh");
    }
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} missing; apt-get install busybox-static"
    );
    if let Err(e) = nimbus_runtime::doctor::preflight(Path::new("crun")) {
        panic!("host not ready: {e}\nrun `nimbus doctor --fix` (tests/setup-host.sh does)");
    }
}

pub struct Registry {
    child: Child,
    pub host: String,
    pub creds: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a registry; with `creds`, every request needs HTTP basic auth (htpasswd).
    pub fn start(creds: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = creds {
            let hash = bcrypt::hash(p, 4).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("{u}:{hash}\n")).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: nimbus-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry could not start (apt-get install docker-registry)");
        let mut child = child;
        let host = format!("127.0.0.1:{port}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(&host).is_ok() {
                return Registry {
                    child,
                    host,
                    creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("docker-registry did not listen on {host}");
    }

    fn req(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.creds {
            Some((u, p)) => b.basic_auth(u, Some(p)),
            None => b,
        }
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let c = reqwest::Client::new();
        let r = self
            .req(c.post(format!("http://{}/v2/{repo}/blobs/uploads/", self.host)))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            202,
            "upload start: {}",
            r.text().await.unwrap_or_default()
        );
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", self.host)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .req(c.put(format!("{loc}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "blob upload: {}",
            r.text().await.unwrap_or_default()
        );
        digest
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let c = reqwest::Client::new();
        let r = self
            .req(c.put(format!("http://{}/v2/{repo}/manifests/{tag}", self.host)))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "manifest upload: {}",
            r.text().await.unwrap_or_default()
        );
        format!("sha256:{}", hex::encode(Sha256::digest(body)))
    }

    /// Pushes an image made of `layers` (tar bytes, gzipped here) with `config`; returns the
    /// manifest (bytes, digest).
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Vec<u8>],
        config: serde_json::Value,
        arch: &str,
    ) -> (Vec<u8>, String) {
        self.push_image_compressed(repo, tag, layers, config, arch, Compression::Gzip)
            .await
    }

    pub async fn push_image_compressed(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Vec<u8>],
        config: serde_json::Value,
        arch: &str,
        compression: Compression,
    ) -> (Vec<u8>, String) {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(l))));
            let (blob, media_type) = compression.compress(l);
            let d = self.push_blob(repo, &blob).await;
            descs.push(
                serde_json::json!({"mediaType": media_type, "digest": d, "size": blob.len()}),
            );
        }
        let cfg = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
        let cfg_digest = self.push_blob(repo, &cfg_bytes).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_bytes.len()},
            "layers": descs,
        });
        let body = serde_json::to_vec(&manifest).unwrap();
        let digest = self
            .push_manifest(
                repo,
                tag,
                "application/vnd.oci.image.manifest.v1+json",
                &body,
            )
            .await;
        (body, digest)
    }

    /// Pushes the standard busybox test image as `repo:tag`.
    pub async fn push_busybox(&self, repo: &str, tag: &str) -> String {
        self.push_image(repo, tag, &[busybox_layer()], busybox_config(), "amd64")
            .await
            .1
    }
}

/// How a test image's layers are compressed.
#[derive(Clone, Copy)]
pub enum Compression {
    Gzip,
    /// A skippable frame, then the layer split across two zstd frames (as zstd:chunked and
    /// parallel compressors write them).
    ZstdFrames,
}

impl Compression {
    fn compress(self, layer: &[u8]) -> (Vec<u8>, &'static str) {
        match self {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(layer).unwrap();
                (
                    gz.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::ZstdFrames => {
                use ruzstd::encoding::{compress_to_vec, CompressionLevel};
                let (a, b) = layer.split_at(layer.len() / 2);
                let mut out = vec![0x5e, 0x2a, 0x4d, 0x18];
                out.extend_from_slice(&3u32.to_le_bytes());
                out.extend_from_slice(b"toc");
                out.extend(compress_to_vec(a, CompressionLevel::Fastest));
                out.extend(compress_to_vec(b, CompressionLevel::Fastest));
                (out, "application/vnd.oci.image.layer.v1.tar+zstd")
            }
        }
    }
}

pub fn busybox_config() -> serde_json::Value {
    serde_json::json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "IMAGE_VAR=from-image"],
        "Cmd": ["sh"],
        "WorkingDir": "/",
        "ExposedPorts": {"8080/tcp": {}},
    })
}

fn tar_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    h.set_cksum();
    b.append_data(&mut h, path, std::io::empty()).unwrap();
}

pub fn tar_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append_data(&mut h, path, data).unwrap();
}

fn applets() -> Vec<String> {
    let out = Command::new(BUSYBOX).arg("--list").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A root filesystem layer: static busybox with every applet linked in /bin, passwd/group,
/// /tmp, and /etc/gone.txt (which `whiteout_layer` deletes).
pub fn busybox_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in [
        "bin/",
        "etc/",
        "tmp/",
        "root/",
        "home/",
        "home/app/",
        "var/",
        "var/cache/",
    ] {
        tar_dir(&mut b, d, if d == "tmp/" { 0o1777 } else { 0o755 });
    }
    tar_file(
        &mut b,
        "bin/busybox",
        0o755,
        &std::fs::read(BUSYBOX).unwrap(),
    );
    for a in applets() {
        if a == "busybox" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    tar_file(&mut b, "etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n");
    tar_file(
        &mut b,
        "etc/group",
        0o644,
        b"root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
    );
    tar_file(
        &mut b,
        "etc/gone.txt",
        0o644,
        b"deleted by the upper layer\n",
    );
    tar_file(
        &mut b,
        "var/cache/old.txt",
        0o644,
        b"hidden by an opaque dir\n",
    );
    b.into_inner().unwrap()
}

/// A second layer: deletes /etc/gone.txt (whiteout), makes /var/cache opaque, adds a file.
pub fn whiteout_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    tar_dir(&mut b, "etc/", 0o755);
    tar_file(&mut b, "etc/.wh.gone.txt", 0o644, b"");
    tar_dir(&mut b, "var/cache/", 0o755);
    tar_file(&mut b, "var/cache/.wh..wh..opq", 0o644, b"");
    tar_file(&mut b, "var/cache/new.txt", 0o644, b"new\n");
    tar_file(&mut b, "etc/layer2.txt", 0o644, b"from layer two\n");
    b.into_inner().unwrap()
}

/// Test numbers whose bridge and table this process created. They are removed when the
/// process exits (after its last test): left on the host, every later `nft` call anywhere
/// pays for reading them (16 ms against 48 ms with 50 stale tables).
static USED: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

extern "C" fn clean_used_hosts() {
    let used = USED.lock().map(|u| u.clone()).unwrap_or_default();
    for n in used {
        clean_host(n);
    }
}

fn remember_for_cleanup(n: u8) {
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    if used.is_empty() {
        // SAFETY: registers a plain function with no captured state; it runs once, at exit.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(clean_used_hosts);
        }
    }
    if !used.contains(&n) {
        used.push(n);
    }
}

/// A runtime with its own data dir, bridge and subnet (`n` must be unique per test).
pub fn runtime(n: u8, data: &Path, tweak: impl FnOnce(&mut RuntimeConfig)) -> Arc<Runtime> {
    // The runtime's warnings (e.g. a warm-pool namespace that could not be prepared) go to
    // the test's captured output, shown when it fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "nimbus_runtime=warn".into()),
        )
        .with_test_writer()
        .try_init();
    clean_host(n);
    remember_for_cleanup(n);
    reopen_runtime(n, data, tweak)
}

/// Drops the bridge and nftables table an earlier, interrupted run of test `n` left behind.
pub fn clean_host(n: u8) {
    nimbus_runtime::orphans::remove_orphans_under(&std::env::temp_dir());
    // Warm-pool namespaces an interrupted run left (tests count them host-wide).
    if let Ok(list) = Command::new("ip").args(["netns", "list"]).output() {
        let prefix = format!("nimbus-nbt{n}-w");
        for ns in String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|ns| ns.starts_with(&prefix))
        {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
    // ...and the user namespaces that owned them.
    if let Ok(entries) = std::fs::read_dir("/run/nimbus/userns") {
        let prefix = format!("nimbus-nbt{n}-w");
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for family in ["inet", "bridge"] {
        let _ = Command::new("nft")
            .args(["delete", "table", family, &format!("nimbus_nbt{n}")])
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("ip")
        .args(["link", "delete", &format!("nbt{n}")])
        .stderr(Stdio::null())
        .status();
}

/// A runtime on test `n`'s bridge without cleaning the host first (a server restart).
pub fn reopen_runtime(n: u8, data: &Path, tweak: impl FnOnce(&mut RuntimeConfig)) -> Arc<Runtime> {
    let mut cfg = RuntimeConfig {
        bridge: format!("nbt{n}"),
        subnet: format!("10.{}.0.0/16", 100 + u16::from(n)),
        monitor: Some(PathBuf::from(env!("CARGO_BIN_EXE_nimbus-monitor"))),
        docker_config: Some(data.join("no-docker-config.json")),
        stop_grace_seconds: 5,
        // Tests that want the warm pool turn it on and drain it; the rest would leave its
        // namespaces behind when the test's async runtime ends.
        warm_pool: 0,
        ..RuntimeConfig::default()
    };
    tweak(&mut cfg);
    Runtime::open(data, &cfg).unwrap()
}

pub fn spec(reference: &str, argv: &[&str]) -> SandboxSpec {
    SandboxSpec {
        owner: Owner::Standalone {
            display_name: Some("test".into()),
        },
        backend: SandboxBackend::Container,
        root: Root::OciImage {
            source: ImageSource::Reference {
                reference: reference.into(),
            },
        },
        process: Process {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            environment: BTreeMap::new(),
            working_dir: None,
            user: None,
        },
        network: NetworkPolicy::default(),
        resources: Resources::default(),
        workload_identity: false,
    }
}

pub fn new_id() -> SandboxId {
    SandboxId::generate()
}

/// Waits until the sandbox is no longer running; returns what was observed.
pub async fn wait_exited(rt: &Runtime, id: &SandboxId, within: Duration) -> Observed {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let o = rt.observe(id);
        if !matches!(o, Observed::Running { .. }) {
            return o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sandbox {id} still running after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn all_logs(rt: &Runtime, id: &SandboxId) -> String {
    let mut s = rt.logs(id, false).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next_chunk().await {
        out.extend(c);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Launches, waits for the exit and returns (observed exit, logs); deletes the sandbox.
pub async fn run_to_end(rt: &Runtime, spec: &SandboxSpec) -> (Observed, String) {
    let id = new_id();
    rt.launch(&id, "demo", spec, |_| {})
        .await
        .unwrap_or_else(|e| panic!("launch failed: {e}"));
    let o = wait_exited(rt, &id, Duration::from_secs(60)).await;
    let logs = all_logs(rt, &id).await;
    rt.delete(&id).await.unwrap();
    (o, logs)
}

pub fn basic_auth_config(path: &Path, host: &str, user: &str, pass: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        path,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
}

/// Deletes sandbox `id` and checks that nothing of it is left on the host.
pub async fn delete_leaving_nothing(rt: &Runtime, id: &SandboxId) {
    rt.delete(id).await.unwrap();
    let left = rt.leftovers(id.as_str()).await;
    assert!(left.is_empty(), "{id} left {left:?}");
}
