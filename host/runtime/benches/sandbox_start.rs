//! Sandbox start latency: create → first byte of output with the image already pulled,
//! side by side with raw `crun run` of an equivalent bundle and `podman run`, and 50
//! concurrent creates (p50/p99). Run with `bench/sandbox_start.sh` (as root).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nimbus_runtime::Runtime;

/// Rounds per path; BENCH_ROUNDS overrides (a quick look while profiling).
fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median over rounds of `a[i] / b[i]`: each round runs every path back to back, so a ratio
/// within a round cancels the VM's drift between rounds, which a ratio of medians does not.
fn paired_ratio(a: &[Duration], b: &[Duration]) -> f64 {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64().max(1e-9))
        .collect();
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

/// All CPUs' (steal, busy) time from /proc/stat, in clock ticks: busy is every state but
/// idle and iowait (a halted vCPU has nothing stolen, so idle time would dilute the share).
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...; guest time is already in user.
    let total: u64 = fields.iter().take(8).sum();
    Some((*fields.get(7)?, total - fields.get(3)? - fields.get(4)?))
}

/// The share of busy CPU time stolen by the hypervisor between two `cpu_times` readings.
fn steal_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((s0, b0), (s1, b1)) = (before?, after?);
    (b1 > b0).then(|| s1.saturating_sub(s0) as f64 / (b1 - b0) as f64)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn first_byte_of(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    let n = out.read(&mut b).unwrap();
    let t = start.elapsed();
    assert_eq!(n, 1, "no output from {cmd:?}");
    let _ = child.wait();
    t
}

/// The `nimbus` server binary: `NIMBUS_BIN`, else the one built next to this bench.
fn nimbus_bin() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("NIMBUS_BIN") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("nimbus");
    p.exists().then_some(p)
}

/// A real `nimbus serve` (bridge and subnet of its own) for the through-the-API column.
struct ApiServer {
    child: std::process::Child,
    base: String,
    token: String,
    client: reqwest::Client,
    _root: tempfile::TempDir,
}

impl ApiServer {
    async fn start(bin: &std::path::Path) -> ApiServer {
        let root = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = root.path().join("nimbus.toml");
        std::fs::write(
            &config,
            "[runtime]\nbridge = \"nmbbench\"\nsubnet = \"10.232.0.0/24\"\n",
        )
        .unwrap();
        let child = Command::new(bin)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(root.path().join("data"))
            .arg("--config")
            .arg(&config)
            .env("HOME", root.path())
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(match std::env::var_os("BENCH_SERVER_LOG") {
                // BENCH_SERVER_LOG=nimbus_runtime=debug shows the server's launch phases.
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            })
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let adc = root
            .path()
            .join(".config/nimbus/application_default_credentials.json");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let up = client.get(format!("{base}/healthz")).send().await.is_ok();
            if up && adc.exists() {
                break;
            }
            assert!(Instant::now() < deadline, "nimbus serve did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cred: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&adc).unwrap()).unwrap();
        ApiServer {
            child,
            base,
            token: cred["token"].as_str().unwrap().to_string(),
            client,
            _root: root,
        }
    }

    /// POST a sandbox running `argv`, then follow its logs: time to the first byte of output.
    async fn first_byte(&self, image: &str, argv: &[&str]) -> Duration {
        let body = serde_json::json!({ "profile": "worker", "spec": {
            "owner": { "kind": "standalone", "displayName": "bench" },
            "backend": "container",
            "root": { "kind": "oci_image", "source": { "kind": "reference", "reference": image } },
            "process": { "argv": argv }
        }});
        let sandboxes = format!("{}/v1/tenants/demo/sandboxes", self.base);
        let start = Instant::now();
        let created: serde_json::Value = self
            .client
            .post(&sandboxes)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let Some(id) = created["metadata"]["id"].as_str().map(str::to_string) else {
            panic!("create answered {created}");
        };
        let mut logs = self
            .client
            .get(format!("{sandboxes}/{id}/logs?follow=true"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let following = start.elapsed();
        let chunk = logs.chunk().await.unwrap();
        let t = start.elapsed();
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!(
                "api: POST at {:.6} {id}: created+following after {:.1} ms, first byte at {:.1} ms",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
                    - t.as_secs_f64(),
                following.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e3
            );
        }
        assert!(chunk.is_some_and(|c| !c.is_empty()), "no output from {id}");
        drop(logs);
        let _ = self
            .client
            .delete(format!("{sandboxes}/{id}"))
            .bearer_auth(&self.token)
            .send()
            .await;
        t
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // Its bridge and table: left behind, they slow every later `nft` call on the host.
        for family in ["inet", "bridge"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, "nimbus_nmbbench"])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "delete", "nmbbench"])
            .status();
    }
}

/// `crun run` of `bundle` as a container named after `name` and this process.
fn crun_run(root: &std::path::Path, bundle: &std::path::Path, name: &str) -> Command {
    let mut c = Command::new("crun");
    c.arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(format!("{name}-{}", std::process::id()));
    c
}

fn main() {
    require_host();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let rt_tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt_tokio.block_on(async {
        let reg = Registry::start(None);
        reg.push_busybox("tools/busybox", "v1").await;
        let image = format!("{}/tools/busybox:v1", reg.host);
        let data = tempfile::tempdir().unwrap();
        let rt = runtime(50, data.path(), |c| c.warm_pool = 2);
        rt.warm_up().await.unwrap();
        // A second runtime, its launches following the first's in every round (a same-run
        // A/B): without user namespaces when the first has them, with BENCH_TWIN=no-standby
        // without standby monitors, or with BENCH_TWIN=no-disk without sandbox disks.
        let twin = std::env::var("BENCH_TWIN").unwrap_or_default();
        let no_standby = twin == "no-standby";
        let no_disk = twin == "no-disk";
        let twin_label = if no_standby {
            "without standby monitors"
        } else if no_disk {
            "without sandbox disks"
        } else {
            "without user namespaces"
        };
        let plain = if rt.user_namespaces() || no_standby || no_disk {
            let plain_data = tempfile::tempdir().unwrap();
            let rt_plain = runtime(51, plain_data.path(), |c| {
                c.warm_pool = 2;
                if no_standby {
                    c.standby_monitors = 0;
                } else if no_disk {
                    c.disk_mb = 0;
                } else {
                    c.user_namespaces = nimbus_runtime::config::UserNamespaces::Off;
                }
            });
            rt_plain.warm_up().await.unwrap();
            let _ = run_to_end(&rt_plain, &spec(&image, &["echo", "warm"])).await;
            Some((rt_plain, plain_data))
        } else {
            None
        };
        // Pull once (not measured), and warm up.
        let (_, _) = run_to_end(&rt, &spec(&image, &["echo", "warm"])).await;

        // Raw crun: an equivalent bundle (same busybox rootfs as a plain dir, crun's default
        // config with the same argv), `crun run` → first byte on its stdout.
        let bundle = tempfile::tempdir().unwrap();
        let rootfs = bundle.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        tar::Archive::new(std::io::Cursor::new(busybox_layer()))
            .unpack(&rootfs)
            .unwrap();
        let st = Command::new("crun")
            .arg("spec")
            .current_dir(bundle.path())
            .status()
            .unwrap();
        assert!(st.success());
        let cfg_path = bundle.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["process"]["terminal"] = false.into();
        cfg["process"]["args"] = serde_json::json!(["echo", "hi"]);
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        let crun_root = bundle.path().join("state");

        // Raw crun with Nimbus's own hardened config.json (seccomp, caps, masks, limits,
        // pre-compiled filter), minus the overlay/netns wiring: what the container alone costs.
        let probe = new_id();
        rt.launch(&probe, "demo", &spec(&image, &["sleep", "60"]), |_| {}).await.unwrap();
        let generated = data.path().join(format!("runtime/sandboxes/{probe}/bundle/config.json"));
        let mut hardened: serde_json::Value = serde_json::from_slice(&std::fs::read(&generated).unwrap()).unwrap();
        rt.delete(&probe).await.unwrap();
        let hb = tempfile::tempdir().unwrap();
        std::fs::create_dir(hb.path().join("rootfs")).unwrap();
        tar::Archive::new(std::io::Cursor::new(busybox_layer())).unpack(hb.path().join("rootfs")).unwrap();
        hardened["root"]["path"] = "rootfs".into();
        hardened["process"]["args"] = serde_json::json!(["echo", "hi"]);
        hardened["linux"]["cgroupsPath"] = format!("/nimbus/bench-{}", std::process::id()).into();
        for ns in hardened["linux"]["namespaces"].as_array_mut().unwrap() {
            ns.as_object_mut().unwrap().remove("path");
        }
        let mounts: Vec<serde_json::Value> = hardened["mounts"].as_array().unwrap().iter().filter(|m| !m["destination"].as_str().unwrap().starts_with("/etc/")).cloned().collect();
        hardened["mounts"] = mounts.into();
        // With user namespaces the config maps root to an unprivileged range; crun makes the
        // user namespace itself here, over a root owned by that range (the launch path sees
        // the layers through an idmapped mount instead, which raw crun cannot be given).
        let hardened_userns = hardened["linux"]["uidMappings"][0]["hostID"].is_u64();
        if let Some(first) = hardened["linux"]["uidMappings"][0]["hostID"].as_u64() {
            let st = Command::new("chown")
                .args(["-R", &format!("{first}:{first}")])
                .arg(hb.path().join("rootfs"))
                .status()
                .unwrap();
            assert!(st.success());
        }
        std::fs::write(hb.path().join("config.json"), serde_json::to_vec(&hardened).unwrap()).unwrap();
        // The same bundle running `sleep 60`, started detached, for the delete baseline.
        let hb_sleep = tempfile::tempdir().unwrap();
        let mut sleeping = hardened.clone();
        sleeping["root"]["path"] = hb.path().join("rootfs").display().to_string().into();
        sleeping["process"]["args"] = serde_json::json!(["sleep", "60"]);
        sleeping["linux"]["cgroupsPath"] = format!("/nimbus/bench-delete-{}", std::process::id()).into();
        std::fs::write(hb_sleep.path().join("config.json"), serde_json::to_vec(&sleeping).unwrap()).unwrap();

        // Through the API: a real server, POST the sandbox, follow its logs to the first byte.
        let server = match nimbus_bin() {
            Some(bin) => {
                let server = ApiServer::start(&bin).await;
                server.first_byte(&image, &["echo", "warm"]).await;
                Some(server)
            }
            None => {
                println!("no nimbus binary (build it with `cargo build --release -p nimbus` or set NIMBUS_BIN): API column skipped");
                None
            }
        };

        // Each round runs every path once, back to back, so a busy machine weighs on all of
        // them alike; medians over the rounds.
        let (mut api, mut nimbus, mut launch_only, mut crun, mut crun_hardened) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut plain_launch = Vec::new();
        let (mut deletes, mut crun_deletes) = (Vec::new(), Vec::new());
        let steal_before = cpu_times();
        for i in 0..rounds() {
            // The order rotates, so no path always follows another's cleanup.
            for step in 0..4 {
                match (i + step) % 4 {
                    0 => {
                        if let Some(server) = &server {
                            api.push(server.first_byte(&image, &["echo", "hi"]).await);
                        }
                    }
                    1 => {
                        let (first, returned) = launch_first_byte(&rt, data.path(), &image).await;
                        nimbus.push(first);
                        launch_only.push(returned);
                        // The same without user namespaces, right after (an A/B on one host state).
                        if let Some((rt_plain, plain_data)) = &plain {
                            plain_launch.push(launch_first_byte(rt_plain, plain_data.path(), &image).await.0);
                        }
                    }
                    2 => {
                        crun.push(first_byte_of(crun_run(&crun_root, bundle.path(), &format!("bench-{i}"))));
                        // Deleting a running sandbox, against `crun delete --force` of the
                        // hardened bundle running the same process.
                        deletes.push(delete_running(&rt, &image).await);
                        crun_deletes.push(crun_delete_running(&crun_root, hb_sleep.path(), &format!("benchd-{i}")));
                    }
                    _ => crun_hardened.push(first_byte_of(crun_run(&crun_root, hb.path(), &format!("benchh-{i}")))),
                }
                // Let the step's sandbox finish going away (and the warm pool refill) before
                // the next step, so no path pays for another's cleanup.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        let steal = steal_share(steal_before, cpu_times());
        // A burst through the API: 50 creates at once, each followed to its first byte.
        let api_burst = match &server {
            Some(server) => {
                let start = Instant::now();
                let each = futures_util::future::join_all(
                    (0..50).map(|_| server.first_byte(&image, &["echo", "hi"])),
                )
                .await;
                Some((start.elapsed(), each))
            }
            None => None,
        };
        drop(server);

        // podman run, image pre-pulled into a private storage root.
        let proot = tempfile::tempdir().unwrap();
        let podman = |args: &[&str]| {
            let mut c = Command::new("podman");
            c.arg("--root")
                .arg(proot.path().join("storage"))
                .arg("--runroot")
                .arg(proot.path().join("run"))
                .args([
                    "--storage-driver",
                    "vfs",
                    "--cgroup-manager",
                    "cgroupfs",
                    "--events-backend",
                    "none",
                ])
                .args(args);
            c
        };
        let pulled = podman(&["pull", "--tls-verify=false", "-q", &image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let mut pod = Vec::new();
        if pulled.is_ok_and(|s| s.success()) {
            for _ in 0..rounds().min(10) {
                pod.push(first_byte_of(podman(&[
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "--ulimit",
                    "nofile=4096:4096",
                    "--ulimit",
                    "nproc=4096:4096",
                    &image,
                    "echo",
                    "hi",
                ])));
            }
        } else {
            println!("podman: could not pull {image} into a private store; podman column skipped");
        }

        let paired = |a: &[Duration]| (paired_ratio(a, &crun), paired_ratio(a, &crun_hardened));
        let (api_paired, launch_paired) = ((!api.is_empty()).then(|| paired(&api)), paired(&nimbus));
        let n = median(nimbus);
        let l = median(launch_only);
        let c = median(crun);
        let h = median(crun_hardened);
        println!("create -> first byte of output (median of {}, image already pulled)", rounds());
        // On a VM, time the hypervisor gives to other guests slows every path, but not alike
        // (the paths with more processes and wake-ups suffer more), so say how much there was.
        if let Some(steal) = steal {
            println!(
                "  CPU stolen by the hypervisor during the rounds: {:.1}% of the busy time{}",
                steal * 100.0,
                if steal > 0.10 { " (a busy host: the ratios below are inflated)" } else { "" }
            );
        }
        // Changes every column by 10-25 ms here (see `nimbus doctor`), so say which it was.
        println!(
            "  host: {}",
            match nimbus_runtime::doctor::cgroup_migrations() {
                nimbus_runtime::doctor::CgroupMigrations::Fast => "favordynmods set (cgroup migrations do not wait)",
                nimbus_runtime::doctor::CgroupMigrations::Slow { .. } => "favordynmods not set (each start waits for an RCU grace period; `nimbus doctor --fix`)",
                nimbus_runtime::doctor::CgroupMigrations::Unavailable => "no favordynmods on this kernel",
            }
        );
        let api_median = (!api.is_empty()).then(|| median(api.clone()));
        if let Some(a) = api_median {
            println!("  nimbus API      {:>8.1} ms   (POST the sandbox, follow its logs)", a.as_secs_f64() * 1e3);
        }
        println!("  nimbus launch   {:>8.1} ms   (the runtime alone, no HTTP or store)", n.as_secs_f64() * 1e3);
        println!("    of which launch() returned after {:>8.1} ms", l.as_secs_f64() * 1e3);
        if !plain_launch.is_empty() {
            println!(
                "  nimbus launch   {:>8.1} ms   (the same {twin_label}, right after each)",
                median(plain_launch).as_secs_f64() * 1e3
            );
        }
        println!("  raw crun run    {:>8.1} ms   (crun's default config)", c.as_secs_f64() * 1e3);
        println!(
            "  raw crun run    {:>8.1} ms   (Nimbus's hardened config.json, no overlay/netns wiring{})",
            h.as_secs_f64() * 1e3,
            if hardened_userns { "; crun makes the user namespace" } else { "" }
        );
        if !pod.is_empty() {
            let p = median(pod);
            println!("  podman run      {:>8.1} ms", p.as_secs_f64() * 1e3);
            println!(
                "  ratio {}/podman   {:.2}x",
                if api_median.is_some() { "API" } else { "launch" },
                api_median.unwrap_or(n).as_secs_f64() / p.as_secs_f64()
            );
        }
        // The equivalent bundle is the hardened one (the same config.json a launch writes);
        // crun's default config has no seccomp filter, no user namespace and no limits.
        if let Some(a) = api_median {
            println!(
                "  ratio API/crun        {:.2}x against the equivalent (hardened) bundle (target <= 1.5x); {:.2}x against crun's default config",
                a.as_secs_f64() / h.as_secs_f64(),
                a.as_secs_f64() / c.as_secs_f64()
            );
        }
        println!(
            "  ratio launch/crun     {:.2}x against the hardened bundle; {:.2}x against the default config",
            n.as_secs_f64() / h.as_secs_f64(),
            n.as_secs_f64() / c.as_secs_f64()
        );
        println!(
            "delete of a running sandbox (median of {}): nimbus {:.1} ms (kill, unmount, network and conntrack teardown), raw `crun delete --force` {:.1} ms (hardened bundle); per-round ratio {:.2}x",
            rounds(),
            median(deletes.clone()).as_secs_f64() * 1e3,
            median(crun_deletes.clone()).as_secs_f64() * 1e3,
            paired_ratio(&deletes, &crun_deletes)
        );
        println!("  median of per-round ratios (paths of one round run back to back):");
        if let Some((d, hd)) = api_paired {
            println!("    API/crun      {hd:.2}x against the hardened bundle; {d:.2}x against the default config");
        }
        println!(
            "    launch/crun   {:.2}x against the hardened bundle; {:.2}x against the default config",
            launch_paired.1, launch_paired.0
        );

        if let Some((wall, each)) = api_burst {
            println!(
                "50 concurrent creates through the API (each to its first byte): wall {:.0} ms, p50 {:.0} ms, p99 {:.0} ms",
                wall.as_secs_f64() * 1e3,
                pct(&each, 0.5).as_secs_f64() * 1e3,
                pct(&each, 0.99).as_secs_f64() * 1e3
            );
        }
        // 50 concurrent creates; then the same without user namespaces, when that runtime exists.
        let mut bursts = vec![(String::new(), rt.clone())];
        if let Some((rt_plain, _)) = &plain {
            bursts.push((format!(", {twin_label}"), rt_plain.clone()));
        }
        for (label, rt) in bursts {
            let (wall, each) = runtime_burst(&rt, &image).await;
            println!(
                "50 concurrent creates through the runtime{label} (each until launch returns): wall {:.0} ms, p50 {:.0} ms, p99 {:.0} ms",
                wall.as_secs_f64() * 1e3,
                pct(&each, 0.5).as_secs_f64() * 1e3,
                pct(&each, 0.99).as_secs_f64() * 1e3
            );
        }
        rt.drain_pool().await;
        if let Some((rt_plain, _)) = &plain {
            rt_plain.drain_pool().await;
        }
    });
}

/// The runtime alone: launch → first byte in the sandbox's log, and launch → launch() returned.
async fn launch_first_byte(
    rt: &Runtime,
    data: &std::path::Path,
    image: &str,
) -> (Duration, Duration) {
    let id = new_id();
    let log = data.join(format!("runtime/sandboxes/{id}/log"));
    let start = Instant::now();
    // The first byte may come before launch() returns (a sandbox allowed nothing gets its
    // rules after it starts), so watch the log meanwhile.
    let first_byte = async {
        while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        start.elapsed()
    };
    let launched = async {
        rt.launch(&id, "demo", &spec(image, &["echo", "hi"]), |_| {})
            .await
            .unwrap();
        start.elapsed()
    };
    let times = tokio::join!(first_byte, launched);
    rt.delete(&id).await.unwrap();
    times
}

/// Launches a `sleep 60` sandbox (not timed) and times its delete.
async fn delete_running(rt: &Runtime, image: &str) -> Duration {
    let id = new_id();
    rt.launch(&id, "demo", &spec(image, &["sleep", "60"]), |_| {})
        .await
        .unwrap();
    let start = Instant::now();
    rt.delete(&id).await.unwrap();
    start.elapsed()
}

/// Starts `bundle` detached with crun (not timed) and times `crun delete --force`.
fn crun_delete_running(root: &std::path::Path, bundle: &std::path::Path, name: &str) -> Duration {
    let name = format!("{name}-{}", std::process::id());
    let st = Command::new("crun")
        .arg("--root")
        .arg(root)
        .args(["run", "--detach", "--bundle"])
        .arg(bundle)
        .arg(&name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(st.success(), "crun run --detach {name}");
    let start = Instant::now();
    let st = Command::new("crun")
        .arg("--root")
        .arg(root)
        .args(["delete", "--force", &name])
        .status()
        .unwrap();
    let t = start.elapsed();
    assert!(st.success(), "crun delete --force {name}");
    t
}

/// 50 launches at once through `rt`, then their deletes: (wall time, each launch's time).
async fn runtime_burst(rt: &std::sync::Arc<Runtime>, image: &str) -> (Duration, Vec<Duration>) {
    let ids: Vec<_> = (0..50).map(|_| new_id()).collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let rt = rt.clone();
        let image = image.to_string();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            rt.launch(&id, "demo", &spec(&image, &["sleep", "60"]), |_| {})
                .await
                .unwrap();
            t.elapsed()
        }));
    }
    let mut each = Vec::new();
    for t in tasks {
        each.push(t.await.unwrap());
    }
    let wall = start.elapsed();
    for id in ids {
        rt.delete(&id).await.unwrap();
    }
    (wall, each)
}
