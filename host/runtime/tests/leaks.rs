//! 50 create/delete cycles leave nothing behind: no processes, mounts, network namespaces,
//! interfaces, nftables rules, cgroups, address leases or state dirs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn count_lines(cmd: &[&str], needle: &str) -> usize {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test]
async fn fifty_create_delete_cycles_leave_no_trace() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(40, data.path(), |c| c.warm_pool = 2);
    rt.warm_up().await.unwrap();
    let image = format!("{}/tools/busybox:v1", reg.host);
    let table = "nimbus_nbt40";
    let dir = data.path().display().to_string();
    let mut ids = Vec::new();
    for i in 0..50 {
        let id = new_id();
        // Alternate running and already-exited sandboxes: both paths must clean up.
        let argv: &[&str] = if i % 2 == 0 {
            &["sleep", "300"]
        } else {
            &["true"]
        };
        rt.launch(&id, "demo", &spec(&image, argv), |_| {})
            .await
            .unwrap();
        if i % 2 == 1 {
            wait_exited(&rt, &id, Duration::from_secs(30)).await;
        }
        rt.delete(&id).await.unwrap();
        assert!(
            rt.leftovers(id.as_str()).await.is_empty(),
            "cycle {i}: {:?}",
            rt.leftovers(id.as_str()).await
        );
        ids.push(id);
    }
    // The warm pool's namespaces and standby monitors are the runtime's, not a sandbox's; at
    // shutdown they go too.
    let standby = rt.standby_monitors();
    assert!(!standby.is_empty(), "no standby monitor was ready");
    rt.drain_pool().await;
    // Host-wide views, restricted to what this test created (other tests may run beside it).
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains("nimbus-nbt40-w"),
        "warm-pool network namespaces left: {netns}"
    );
    for id in &ids {
        assert!(
            !netns.contains(id.as_str()),
            "network namespace of {id} left"
        );
        for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            assert!(
                !c.path().join("nimbus").join(id.as_str()).exists(),
                "cgroup of {id} left in {}",
                c.path().display()
            );
        }
    }
    assert_eq!(
        count_lines(&["ip", "-o", "link", "show", "master", "nbt40"], "nbv"),
        0,
        "veth interfaces left on the bridge"
    );
    assert_eq!(
        count_lines(&["nft", "list", "table", "inet", table], "chain sb_"),
        0,
        "per-sandbox nftables chains left"
    );
    assert_eq!(
        count_lines(&["nft", "list", "map", "inet", table, "sandboxes"], "jump"),
        0,
        "verdict map entries left"
    );
    assert_eq!(
        count_lines(&["nft", "list", "set", "bridge", table, "ports"], "nbv"),
        0,
        "bridge port bindings left"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&dir))
            .count(),
        0,
        "mounts left"
    );
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&dir))
        .count();
    assert_eq!(procs, 0, "processes naming the data dir left");
    let monitors = nimbus_runtime::orphans::monitors_under(data.path());
    assert!(monitors.is_empty(), "sandbox monitors left: {monitors:?}");
    // The standby monitors go once the pool is drained (they exit at end-of-file).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while standby.iter().any(|pid| monitor_alive(*pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "standby monitors {standby:?} still run after the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_dir(data.path().join("runtime/sandboxes"))
            .unwrap()
            .count(),
        0,
        "state dirs left"
    );
    assert_eq!(
        std::fs::read_dir(data.path().join("runtime/net/leases"))
            .unwrap()
            .count(),
        0,
        "address leases left"
    );
    assert_eq!(
        std::fs::read_dir(data.path().join("runtime/crun"))
            .unwrap()
            .count(),
        0,
        "crun state left"
    );
}

/// True while `pid` runs as a monitor (not a zombie waiting to be reaped).
fn monitor_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.contains(") Z ") && s.contains("(nimbus-monitor)"))
}

fn pool_namespaces(bridge: &str) -> usize {
    count_lines(&["ip", "netns", "list"], &format!("nimbus-{bridge}-w"))
}

#[tokio::test]
async fn warm_pool_namespaces_and_disks_left_by_a_killed_server_are_removed_at_the_next_start() {
    require_host();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(41, data.path(), |c| c.warm_pool = 3);
    rt.warm_up().await.unwrap();
    // Disk images (beside them, the template they are copied from).
    let disks = || {
        std::fs::read_dir(data.path().join("runtime/disks"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
                    .count()
            })
            .unwrap_or(0)
    };
    // A disk's image file appears while it is being prepared, before it is ready (and until
    // then it counts as a stray): wait until every one is, and ready disks are not strays.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pool_namespaces("nbt41") < 3 || disks() < 3 || !rt.stray_disks().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the warm pool never filled with ready disks (strays: {:?})",
            rt.stray_disks()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A killed server: its pool is never drained. The next one is given the same data dir
    // through a symlink, and still finds its predecessor's disks.
    drop(rt);
    let elsewhere = tempfile::tempdir().unwrap();
    let link = elsewhere.path().join("data");
    std::os::unix::fs::symlink(data.path(), &link).unwrap();
    let rt = reopen_runtime(41, &link, |c| c.warm_pool = 1);
    let stale = rt.stray_disks();
    assert_eq!(stale.len(), 3, "the dead server's ready disks: {stale:?}");
    rt.warm_up().await.unwrap();
    assert_eq!(rt.stray_disks(), Vec::<String>::new());
    // Where Nimbus mounted them: other tests' sandboxes, running meanwhile, may hold copies of
    // a disk's mount (propagated into their mount trees) under other paths, which go with them.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount_points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .collect();
    for token in &stale {
        let at = mount_points
            .iter()
            .find(|m| m.starts_with("/run/nimbus/disks/") && m.ends_with(&format!("/{token}")));
        assert!(at.is_none(), "{token} is still mounted at {at:?}");
    }
    // The three stale ones go; the new server prepares its own one.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leases = std::fs::read_dir(data.path().join("runtime/net/leases"))
            .unwrap()
            .count();
        if pool_namespaces("nbt41") == 1 && leases == 1 && disks() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stale pool namespaces were not replaced: {} namespaces, {leases} leases",
            pool_namespaces("nbt41")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rt.drain_pool().await;
    assert_eq!(pool_namespaces("nbt41"), 0, "drained pool left namespaces");
    assert_eq!(
        count_lines(&["ip", "-o", "link", "show", "master", "nbt41"], "nbv"),
        0,
        "drained pool left interfaces"
    );
    assert_eq!(
        std::fs::read_dir(data.path().join("runtime/net/leases"))
            .unwrap()
            .count(),
        0,
        "drained pool left address leases"
    );
    assert_eq!(disks(), 0, "drained pool left disks");
}

#[tokio::test]
async fn rules_are_removed_even_when_the_one_transaction_removal_fails() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(42, data.path(), |_| {});
    let mut s = spec(&format!("{}/tools/busybox:v1", reg.host), &["sleep", "300"]);
    s.network.egress.allow = vec![nimbus_core::spec::EgressRule {
        cidr: "192.0.2.0/24".into(),
        ports: vec![443],
    }];
    let id = new_id();
    rt.launch(&id, "demo", &s, |_| {}).await.unwrap();
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            data.path()
                .join(format!("runtime/sandboxes/{id}/meta.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let address = meta["net"]["address"].as_str().unwrap().to_string();
    let chain = meta["net"]["chain"].as_str().unwrap().to_string();
    // The address now maps to another chain, so teardown's single transaction (which adds
    // the sandbox's own entry before deleting it) is refused and the fallback must do it.
    let table = "nimbus_nbt42";
    let script = format!(
        "add chain inet {table} decoy\ndelete element inet {table} sandboxes {{ {address} }}\nadd element inet {table} sandboxes {{ {address} : jump decoy }}\n"
    );
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    nft.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success());
    rt.delete(&id).await.unwrap();
    assert!(rt.leftovers(id.as_str()).await.is_empty());
    assert_eq!(
        count_lines(&["nft", "list", "chain", "inet", table, &chain], "chain"),
        0,
        "the sandbox's chain is gone"
    );
    assert_eq!(
        count_lines(
            &["nft", "list", "map", "inet", table, "sandboxes"],
            &address
        ),
        0,
        "no verdict-map entry is left for {address}"
    );
}

/// Namespaces are made by forked children; children forked at the same time hold copies of
/// each other's pipes, which must not make any of them wait for another (a burst of launches
/// once hung the server this way).
#[test]
fn namespaces_made_at_the_same_time_never_wait_on_each_other() {
    require_host();
    use nimbus_runtime::userns::{create, remove_kept, IdRanges};
    let ranges = IdRanges::new(0x4F00_0000, 16).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for n in 0..16u32 {
        let (net, user) = (
            std::path::PathBuf::from(format!(
                "/run/netns/nimbus-concurrency-{}-{n}",
                std::process::id()
            )),
            dir.path().join(format!("user-{n}")),
        );
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let made = create(&net, Some((&user, ranges.slot(n))));
            remove_kept(&net);
            remove_kept(&user);
            let _ = done_tx.send(made);
        });
    }
    for _ in 0..16 {
        let made = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a namespace creation hung");
        made.unwrap();
    }
}

#[tokio::test]
async fn withdrawn_launches_leave_nothing_and_the_warm_pool_refills() {
    require_host();
    let root = tempfile::tempdir().unwrap();
    tar::Archive::new(std::io::Cursor::new(busybox_layer()))
        .unpack(root.path())
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(43, data.path(), |c| c.warm_pool = 2);
    rt.warm_up().await.unwrap();
    let pool_full = |what: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while pool_namespaces("nbt43") < 2 {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    pool_full("the warm pool never filled").await;
    let mut s = spec("unused", &["echo", "should-not-run"]);
    s.root = nimbus_core::spec::Root::Rootfs {
        path: root.path().display().to_string(),
    };
    // Launches prepared from the pool (network, root, config) and then refused by their
    // caller, as a create refused by its quota or a missing tenant is.
    for _ in 0..3 {
        let id = new_id();
        let refused = rt
            .launch_gated(&id, "demo", &s, |_| {}, async { false })
            .await;
        assert!(
            matches!(refused, Err(nimbus_runtime::LaunchError::Withdrawn(_))),
            "{:?}",
            refused.err()
        );
        assert!(
            rt.leftovers(id.as_str()).await.is_empty(),
            "{:?}",
            rt.leftovers(id.as_str()).await
        );
    }
    pool_full("withdrawn launches drained the warm pool").await;
    rt.drain_pool().await;
}

/// A test whose data dir went while disks of its runtime were still mounted (a runtime dropped
/// without draining): the harnesses' orphan sweep unmounts them.
#[tokio::test]
async fn disks_of_a_vanished_data_dir_are_removed_by_the_orphan_sweep() {
    require_host();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(45, data.path(), |c| c.warm_pool = 2);
    rt.warm_up().await.unwrap();
    let images = data.path().join("runtime/disks");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let tokens = || -> Vec<String> {
        std::fs::read_dir(&images)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".img").map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    while tokens().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no disk was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokens = tokens();
    let mounted = |token: &str| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|m| m.ends_with(&format!("/{token}")))
            })
    };
    assert!(tokens.iter().all(|t| mounted(t)), "{tokens:?}");
    drop(rt);
    let parent = data.path().to_path_buf();
    drop(data);
    let removed = nimbus_runtime::orphans::remove_orphan_disks_under(&parent);
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(tokens.iter().all(|t| !mounted(t)), "{tokens:?}");

    // The empty mount point of a disk whose maker was killed before mounting it goes; one
    // whose maker runs (a disk being prepared right now) stays.
    let key = std::path::Path::new("/run/nimbus/disks/0rphan5weep0");
    let dead = key.join("d999999999-1-0");
    let alive = key.join(format!("d{}-1-0", std::process::id()));
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::create_dir_all(&alive).unwrap();
    let removed = nimbus_runtime::orphans::remove_orphan_disks_under(&parent);
    assert!(removed.contains(&dead), "{removed:?}");
    assert!(!dead.exists() && alive.exists());
    std::fs::remove_dir(&alive).unwrap();
    std::fs::remove_dir(key).unwrap();
}

/// Launches that find no ready disk make their own at the same time: each gets a loop device
/// of its own (the kernel names the same free one to every asker), and removing them leaves
/// nothing mounted.
#[tokio::test]
async fn disks_made_at_the_same_time_each_get_their_own_loop_device() {
    require_host();
    let data = tempfile::tempdir().unwrap();
    let disks = nimbus_runtime::disks::Disks::new(data.path(), 16, 0).unwrap();
    let made = futures_util::future::join_all((0..16).map(|_| disks.take())).await;
    let tokens: Vec<String> = made.into_iter().map(|t| t.unwrap()).collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let sources: std::collections::HashSet<&str> = mountinfo
        .lines()
        .filter(|l| tokens.iter().any(|t| l.contains(&format!("/{t} "))))
        .filter_map(|l| l.split(" - ").nth(1)?.split(' ').nth(1))
        .collect();
    assert_eq!(sources.len(), 16, "{sources:?}");
    for t in &tokens {
        disks.remove(t).unwrap();
        assert!(disks.traces(t).is_empty(), "{:?}", disks.traces(t));
    }
}

/// Opening the runtime without launching (`nimbus image …`, a start that fails) makes nothing
/// under /run: the disks' mount directory comes with the first disk (private), and goes when
/// the last is removed and the runtime drains.
#[tokio::test]
async fn disks_take_their_mount_directory_only_when_one_is_made() {
    use std::os::unix::fs::PermissionsExt;
    require_host();
    let data = tempfile::tempdir().unwrap();
    let disks = nimbus_runtime::disks::Disks::new(data.path(), 16, 0).unwrap();
    let mounts = disks.mount_path("any").parent().unwrap().to_path_buf();
    assert!(
        !mounts.exists(),
        "{} made before any disk",
        mounts.display()
    );
    let token = disks.take().await.unwrap();
    let mode = std::fs::metadata(&mounts).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", mounts.display());
    disks.remove(&token).unwrap();
    disks.drain().await;
    assert!(!mounts.exists(), "{} left behind", mounts.display());
}

/// Sandbox disks are sparse, so together they can outgrow the host: once the file system
/// holding them is down to the reserve pulls keep, launches are refused with a message saying
/// so, and take nothing; with room again, they go on.
#[tokio::test]
async fn launches_are_refused_once_the_disks_file_system_is_down_to_the_reserve() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let image = format!("{}/tools/busybox:v1", reg.host);
    // A data dir on a file system of its own, small enough to fill: 1.2 GiB, the reserve 1 GiB.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &data,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1200m"),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(data.clone());
    let rt = runtime(54, &data, |c| c.disk_mb = 32);
    let (first, _) = run_to_end(&rt, &spec(&image, &["true"])).await;
    assert!(
        matches!(first, nimbus_runtime::Observed::Exited { code: 0, .. }),
        "{first:?}"
    );

    // Fill it to 512 MiB short of full: below the reserve.
    let free = |p: &std::path::Path| {
        let st = nix::sys::statvfs::statvfs(p).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    };
    let ballast = data.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![1u8; 1 << 20];
        while free(&data) > 512 << 20 {
            f.write_all(&chunk).unwrap();
        }
    }
    let id = new_id();
    let err = rt
        .launch(&id, "demo", &spec(&image, &["true"]), |_| {})
        .await
        .expect_err("a launch past the reserve must be refused");
    assert!(
        matches!(err, nimbus_runtime::LaunchError::HostUnfit(_)),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&format!("launching sandbox {id}")), "{msg}");
    assert!(msg.contains("Nimbus keeps 1024 MiB free there"), "{msg}");
    assert!(
        rt.leftovers(id.as_str()).await.is_empty(),
        "{:?}",
        rt.leftovers(id.as_str()).await
    );
    assert!(rt.stray_disks().is_empty(), "{:?}", rt.stray_disks());

    std::fs::remove_file(&ballast).unwrap();
    let (again, _) = run_to_end(&rt, &spec(&image, &["true"])).await;
    assert!(
        matches!(again, nimbus_runtime::Observed::Exited { code: 0, .. }),
        "{again:?}"
    );
}

/// A test that failed with a sandbox running, whose monitor then died with the sandbox and
/// whose data dir was removed, leaves a root filesystem mount and namespaces that nothing
/// names any more: the test harnesses' orphan sweep removes them.
#[tokio::test]
async fn the_orphan_sweep_removes_what_sandboxes_whose_monitor_died_left() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let image = format!("{}/tools/busybox:v1", reg.host);
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(55, data.path(), |c| c.disk_mb = 16);
    let id = new_id();
    rt.launch(&id, "demo", &spec(&image, &["sleep", "300"]), |_| {})
        .await
        .unwrap();
    let gate = std::path::Path::new("/run/nimbus/rootfs").join(id.as_str());
    let netns = std::path::Path::new("/run/netns").join(format!("nimbus-{id}"));
    assert!(gate.join("root").exists() && netns.exists());
    // The monitor and the sandbox's process die; the data dir goes.
    let monitors = nimbus_runtime::orphans::monitors_under(data.path());
    assert_eq!(monitors.len(), 1, "{monitors:?}");
    let pid = monitors[0].0;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    for p in children
        .split_whitespace()
        .chain([pid.to_string().as_str()])
    {
        let _ = Command::new("kill").args(["-9", p]).status();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor did not die"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(rt);
    let parent = data.path().to_path_buf();
    drop(data);
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!("/run/nimbus/rootfs/{id}/root "))
    };
    // Another test of this binary starting a runtime may sweep the same temp dir at any
    // moment (the harness clears what earlier runs left), before or while this sweep runs: it
    // is the same code, so which of the two removes the sandbox's remains is not asserted;
    // that they are removed is (without a sweep, all of it stays).
    let removed = nimbus_runtime::orphans::remove_orphans_under(&parent);
    // A sweep by another test may still be under way: give it a moment to finish.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (mounted() || gate.exists() || netns.exists()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !mounted(),
        "its root filesystem is still mounted (this sweep removed {removed:?})"
    );
    assert!(!gate.exists(), "{} is left", gate.display());
    assert!(!netns.exists(), "{} is left", netns.display());
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(format!("nimbus/{id}")))
        .filter(|c| c.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let disks = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !disks.lines().any(|l| l.contains(parent.to_str().unwrap())),
        "a mount of the vanished data dir is left"
    );
}

/// A delete that arrives while a launch is preparing the sandbox waits for the launch to
/// finish (or undo) what it makes: it never removes half of a launch that then starts its
/// process with nothing left to find it by. Whichever way each race goes, once the launch
/// has returned and the sandbox is deleted (as the controller does for a sandbox deleted
/// while launching), no monitor, process or trace is left.
#[tokio::test]
async fn a_delete_racing_a_launch_leaves_no_process_or_trace() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let image = format!("{}/tools/busybox:v1", reg.host);
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(56, data.path(), |c| c.disk_mb = 16);
    // Pulled once, so that every launch below goes straight to preparing the sandbox.
    let (first, _) = run_to_end(&rt, &spec(&image, &["true"])).await;
    assert!(
        matches!(first, nimbus_runtime::Observed::Exited { code: 0, .. }),
        "{first:?}"
    );
    for i in 0..20u64 {
        let id = new_id();
        let sleeper = spec(&image, &["sleep", "1000"]);
        let launch = rt.launch(&id, "demo", &sleeper, |_| {});
        let delete = async {
            tokio::time::sleep(Duration::from_micros(i * 1500)).await;
            rt.delete(&id).await
        };
        let (launched, deleted) = tokio::join!(launch, delete);
        deleted.unwrap_or_else(|e| panic!("round {i}: the racing delete failed: {e}"));
        // The controller deletes again once the launch returns.
        rt.delete(&id).await.unwrap();
        let left = rt.leftovers(id.as_str()).await;
        assert!(left.is_empty(), "round {i} ({launched:?}) left {left:?}");
        let monitors = nimbus_runtime::orphans::monitors_under(data.path());
        assert!(
            monitors.is_empty(),
            "round {i} ({launched:?}): monitors still run: {monitors:?}"
        );
    }
}
