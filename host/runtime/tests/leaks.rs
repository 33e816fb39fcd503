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

fn cgroups_under_nimbus() -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        if let Ok(children) = std::fs::read_dir(e.path().join("nimbus")) {
            n += children.flatten().filter(|c| c.path().is_dir()).count();
        }
    }
    n
}

#[tokio::test]
async fn fifty_create_delete_cycles_leave_no_trace() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(40, data.path(), |_| {});
    let image = format!("{}/tools/busybox:v1", reg.host);
    let table = "nimbus_nbt40";
    let dir = data.path().display().to_string();
    let before_cgroups = cgroups_under_nimbus();
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
    }
    assert_eq!(
        count_lines(&["ip", "netns", "list"], "nimbus-sbx_"),
        0,
        "network namespaces left"
    );
    assert_eq!(
        count_lines(&["ip", "-o", "link"], "nbv"),
        0,
        "veth interfaces left"
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
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&dir))
            .count(),
        0,
        "mounts left"
    );
    assert_eq!(
        count_lines(&["ps", "-eo", "args"], &dir),
        0,
        "processes (monitors) left"
    );
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
    assert!(cgroups_under_nimbus() <= before_cgroups, "cgroups left");
}
