//! The security probes of docs/security.md, run inside sandboxes. A probe succeeding inside a
//! sandbox fails the test. Each probe also runs natively (as root on the host, in throwaway
//! mount/UTS namespaces where it changes state) and must succeed there, which shows the probe
//! can detect what it looks for.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nimbus_core::spec::Resources;
use nimbus_runtime::{ExitReason, Observed};

/// Prints `key=ok|fail` per probe, plus the status lines of /proc/self/status.
const CONFINEMENT_PROBE: &str = r#"
grep -E '^(Seccomp|NoNewPrivs|CapBnd):' /proc/self/status | tr -d ' \t'
unshare -U true 2>/dev/null && echo unshareU=ok || echo unshareU=fail
unshare -n true 2>/dev/null && echo unshareN=ok || echo unshareN=fail
mkdir -p $PROBE_DIR/mnt
mount -t tmpfs none $PROBE_DIR/mnt 2>/dev/null && echo mount=ok || echo mount=fail
(cat /proc/sys/kernel/hostname > /proc/sys/kernel/hostname) 2>/dev/null && echo procsys=ok || echo procsys=fail
(echo h > /proc/sysrq-trigger) 2>/dev/null && echo sysrq=ok || echo sysrq=fail
(cat /sys/class/net/lo/mtu > /sys/class/net/lo/mtu) 2>/dev/null && echo sys=ok || echo sys=fail
echo kcore=$(stat -c %s /proc/kcore 2>/dev/null || echo 0)
echo masked=$(cat /proc/timer_list /proc/keys 2>/dev/null | wc -c)
ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1 && echo ping=ok || echo ping=fail
arping -c 1 -w 1 -I lo 127.0.0.1 2>&1 | grep -q 'socket: Operation not permitted' && echo packet=fail || echo packet=ok
grep -q "$ABSTRACT" /proc/net/unix && echo abstract=ok || echo abstract=fail
mkdir -p $PROBE_DIR/newroot
mount -t tmpfs none $PROBE_DIR/newroot 2>/dev/null; mkdir -p $PROBE_DIR/newroot/old
pivot_root $PROBE_DIR/newroot $PROBE_DIR/newroot/old 2>/dev/null && echo pivot=ok || echo pivot=fail
"#;

fn parse(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(['=', ':']))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The bounding set Nimbus grants: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
/// NET_BIND_SERVICE.
const CAP_BND: &str = "00000000000005fb";

#[tokio::test]
async fn confinement_probes_fail_inside_and_succeed_natively() {
    require_host();
    // An abstract socket on the host: visible natively, never inside a sandbox (own netns).
    use std::os::linux::net::SocketAddrExt;
    let name = format!("nimbus-probe-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _abstract = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();

    // Natively, in private mount and UTS namespaces so nothing on the host changes.
    let scratch = tempfile::tempdir().unwrap();
    let native = Command::new("unshare")
        .args([
            "-m",
            "-u",
            "--propagation",
            "private",
            BUSYBOX,
            "sh",
            "-c",
            CONFINEMENT_PROBE,
        ])
        .env("PROBE_DIR", scratch.path())
        .env("ABSTRACT", &name)
        .output()
        .unwrap();
    let native = parse(&String::from_utf8_lossy(&native.stdout));
    assert_eq!(native["Seccomp"], "0", "{native:?}");
    assert_ne!(native["CapBnd"], CAP_BND);
    for k in [
        "unshareU", "unshareN", "mount", "procsys", "sys", "ping", "packet", "abstract", "pivot",
    ] {
        assert_eq!(
            native[k], "ok",
            "probe {k} cannot detect anything natively: {native:?}"
        );
    }
    assert_ne!(
        native["masked"], "0",
        "masked-path probe reads nothing natively: {native:?}"
    );
    // Some kernels (this CI VM's) have neither /proc/sysrq-trigger nor /proc/kcore; then there
    // is nothing to protect and the native run must agree that the probe found nothing.
    for (k, path) in [("sysrq", "/proc/sysrq-trigger"), ("kcore", "/proc/kcore")] {
        let present = std::path::Path::new(path).exists();
        let detected = if k == "kcore" {
            native[k] != "0"
        } else {
            native[k] == "ok"
        };
        assert_eq!(
            detected, present,
            "probe {k} disagrees with the host about {path}: {native:?}"
        );
    }

    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(20, data.path(), |_| {});
    let mut s = spec(
        &format!("{}/tools/busybox:v1", reg.host),
        &["sh", "-c", CONFINEMENT_PROBE],
    );
    s.process
        .environment
        .insert("PROBE_DIR".into(), "/tmp".into());
    s.process
        .environment
        .insert("ABSTRACT".into(), name.clone());
    // Twice: the first launch has crun compile the seccomp profile, the second gets the
    // cached compiled filter (run.oci.seccomp_bpf_data); both must confine alike.
    for round in ["compiled", "cached"] {
        let (o, logs) = run_to_end(&rt, &s).await;
        assert!(matches!(o, Observed::Exited { .. }), "{round}");
        let logs = format!("{logs}\n[{round} filter]");
        let inside = parse(&logs);
        assert_eq!(inside["Seccomp"], "2", "{logs}");
        assert_eq!(inside["NoNewPrivs"], "1", "{logs}");
        assert_eq!(inside["CapBnd"], CAP_BND, "{logs}");
        for k in [
            "unshareU", "unshareN", "mount", "procsys", "sysrq", "sys", "ping", "packet",
            "abstract", "pivot",
        ] {
            assert_eq!(
                inside[k], "fail",
                "probe {k} succeeded inside a sandbox: {logs}"
            );
        }
        assert_eq!(inside["kcore"], "0", "/proc/kcore is not masked: {logs}");
        assert_eq!(
            inside["masked"], "0",
            "/proc/timer_list or /proc/keys is readable: {logs}"
        );
    }
    assert!(
        std::fs::read_dir(data.path().join("runtime"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("seccomp-")),
        "the compiled filter was not cached"
    );
}

#[tokio::test]
async fn fork_loop_stops_at_the_pids_limit() {
    require_host();
    let script = "i=0; while [ $i -lt 64 ]; do sleep 3 & echo forked; i=$((i+1)); done; wait";
    let native = Command::new(BUSYBOX)
        .args(["sh", "-c", script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&native.stdout)
            .matches("forked")
            .count(),
        64,
        "the loop forks 64 times natively"
    );

    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(21, data.path(), |_| {});
    let mut s = spec(
        &format!("{}/tools/busybox:v1", reg.host),
        &["sh", "-c", script],
    );
    s.resources = Resources {
        pids: Some(16),
        ..Default::default()
    };
    let (observed, logs) = run_to_end(&rt, &s).await;
    let forked = logs.matches("forked").count();
    assert!(
        forked < 16,
        "forked {forked} times under a pids limit of 16: {logs}"
    );
    assert!(logs.contains("can't fork"), "{logs}");
    // The shell gave up on the failed fork: the exit says the limit was the cause.
    assert!(
        matches!(
            observed,
            Observed::Exited { code, reason: ExitReason::PidsLimit { refused } } if code != 0 && refused > 0
        ),
        "{observed:?}"
    );
}

#[tokio::test]
async fn allocating_past_the_memory_limit_is_oom_killed_and_reported() {
    require_host();
    let argv = ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"];
    let native = Command::new(BUSYBOX).args(argv).output().unwrap();
    assert!(native.status.success(), "the allocation works natively");

    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(22, data.path(), |_| {});
    let mut s = spec(&format!("{}/tools/busybox:v1", reg.host), &argv);
    s.resources = Resources {
        memory_mb: Some(64),
        ..Default::default()
    };
    let (o, _) = run_to_end(&rt, &s).await;
    assert_eq!(
        o,
        Observed::Exited {
            code: 137,
            reason: ExitReason::OomKilled
        }
    );
    // A child killed at the limit, whose death the process handles: the process completed.
    s.process.argv = vec![
        "sh".into(),
        "-c".into(),
        format!("{}; echo child=$?", argv.join(" ")),
    ];
    let (o, logs) = run_to_end(&rt, &s).await;
    assert!(logs.contains("child=137"), "{logs}");
    assert_eq!(
        o,
        Observed::Exited {
            code: 0,
            reason: ExitReason::Exited
        },
        "{logs}"
    );
}

#[tokio::test]
async fn sandboxes_cannot_see_each_others_processes_or_files() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(23, data.path(), |_| {});
    let image = format!("{}/tools/busybox:v1", reg.host);
    let a = new_id();
    rt.launch(
        &a,
        "demo",
        &spec(
            &image,
            &["sh", "-c", "echo secret > /tmp/secret-a; exec sleep 321"],
        ),
        |_| {},
    )
    .await
    .unwrap();
    let Observed::Running { pid, .. } = rt.observe(&a) else {
        panic!("a is not running")
    };
    // Natively the probe finds a's process and file (so it can detect them)...
    for _ in 0..200 {
        if std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("321"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ps = Command::new(BUSYBOX)
        .args(["ps", "-o", "args"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ps.stdout).contains("sleep 321"));
    assert!(rt.writable_layer(&a).unwrap().join("tmp/secret-a").exists());
    // ...but from another sandbox it finds neither.
    let (_, logs) = run_to_end(
        &rt,
        &spec(&image, &["sh", "-c", "ps -o args | grep -c 'sleep 32[1]' ; ls /tmp/secret-a 2>&1; ls /proc | grep -c '^[0-9]'"]),
    )
    .await;
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[0], "0", "{logs}");
    assert!(lines[1].contains("No such file"), "{logs}");
    assert!(
        lines[2].parse::<u32>().unwrap() <= 5,
        "sees only its own few processes: {logs}"
    );
    rt.delete(&a).await.unwrap();
}

/// Prints the sandbox's id map, the owners of two image files, its network interfaces as sysfs
/// lists them, then creates a file and stays running.
const USERNS_PROBE: &str = r#"
echo "map=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')"
echo "owners=$(stat -c %u:%g /bin/busybox /etc/passwd | tr '\n' ' ')"
echo "sysnet=$(ls /sys/class/net | tr '\n' ' ')"
echo "rootopts=$(awk '$2 == "/" {print $4}' /proc/mounts | head -n 1)"
touch /made-inside && echo made=1
exec sleep 300
"#;

/// The host id a sandbox's process runs as (the `Uid:` line of its status, as the host sees it).
fn host_uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn each_sandbox_runs_in_its_own_user_namespace_with_its_own_host_ids() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    // Private, as `nimbus serve` makes its data dir: root inside the sandbox, an unprivileged
    // host id, must still reach its root filesystem.
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        data.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let rt = runtime(24, data.path(), |_| {});
    assert!(
        rt.user_namespaces(),
        "this host supports user namespaces, so `auto` must use them"
    );
    let image = format!("{}/tools/busybox:v1", reg.host);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let id = new_id();
        rt.launch(
            &id,
            "demo",
            &spec(&image, &["sh", "-c", USERNS_PROBE]),
            |_| {},
        )
        .await
        .unwrap();
        let mut logs = String::new();
        for _ in 0..500 {
            logs = all_logs(&rt, &id).await;
            if logs.contains("made=") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let out = parse(&logs);
        let Observed::Running { pid, .. } = rt.observe(&id) else {
            panic!("not running: {logs}")
        };
        // Root inside is a range of unprivileged host ids...
        let map: Vec<u64> = out["map"].split(' ').map(|n| n.parse().unwrap()).collect();
        assert_eq!(map[0], 0, "{logs}");
        assert_eq!(map[2], 65536, "{logs}");
        let first = map[1] as u32;
        assert!(first >= 0x4000_0000, "{logs}");
        assert_eq!(
            host_uid(pid),
            first,
            "the host sees root inside as the range's first id"
        );
        // ...yet image files keep their owners inside (the layers are idmapped, not copied)...
        assert_eq!(out["owners"], "0:0 0:0", "{logs}");
        assert_eq!(
            out["made"], "1",
            "root inside can write its root filesystem: {logs}"
        );
        let made = rt.writable_layer(&id).unwrap().join("made-inside");
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).unwrap()),
            first,
            "what root writes inside is owned by the range on the host"
        );
        // ...and sysfs is the sandbox's own: its two interfaces, none of the host's (natively
        // the same listing shows the test's bridge, so the probe can see host interfaces).
        assert_eq!(out["sysnet"], "eth0 lo", "{logs}");
        // Device nodes in the image's layers open nothing, and setuid bits raise no one.
        assert!(out["rootopts"].split(',').any(|o| o == "nodev"), "{logs}");
        assert!(out["rootopts"].split(',').any(|o| o == "nosuid"), "{logs}");
        // No other host user reaches the sandbox's files: the mount point's parent is the
        // sandbox root's own, 0700 (ids are public: /proc/mounts lists every mount point).
        let gate = std::path::Path::new("/run/nimbus/rootfs").join(id.as_str());
        let md = std::fs::metadata(&gate).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!((md.uid(), md.permissions().mode() & 0o777), (first, 0o700));
        let inside_file = gate.join("root/made-inside");
        let stat_as = |uid: &str| {
            Command::new("setpriv")
                .args([
                    "--reuid",
                    uid,
                    "--regid",
                    uid,
                    "--clear-groups",
                    BUSYBOX,
                    "stat",
                ])
                .arg(&inside_file)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(
            stat_as("0"),
            "the probe cannot find {}",
            inside_file.display()
        );
        assert!(
            !stat_as("65534"),
            "another host user reached the sandbox's files"
        );
        assert!(std::path::Path::new("/sys/class/net/nbt24").exists());
        seen.push((id, first));
    }
    assert_ne!(seen[0].1, seen[1].1, "two sandboxes share an id range");
    for (id, _) in &seen {
        rt.delete(id).await.unwrap();
        assert!(rt.leftovers(id.as_str()).await.is_empty());
    }
    let leases = std::fs::read_dir(data.path().join("runtime/net/id-leases"))
        .unwrap()
        .count();
    assert_eq!(leases, 0, "id ranges are given back on delete");
}

#[tokio::test]
async fn with_user_namespaces_off_root_inside_is_host_root() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(25, data.path(), |c| {
        c.user_namespaces = nimbus_runtime::config::UserNamespaces::Off
    });
    assert!(!rt.user_namespaces());
    let image = format!("{}/tools/busybox:v1", reg.host);
    let (_, logs) = run_to_end(&rt, &spec(&image, &["cat", "/proc/self/uid_map"])).await;
    assert_eq!(
        logs.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "4294967295"],
        "the identity map (the probe above can tell the difference)"
    );
}

/// Tries `socket(2)` with each address family and prints `name=<errno>` (0 when it worked). Then
/// the same through the i386 system-call ABI (`int $0x80`, open to any x86_64 process):
/// `socketcall(2)`'s `SYS_SOCKET`, whose arguments sit in memory a filter cannot read, and the
/// direct `socket` (359); each in a child, printing `killed` if the call killed it.
const SOCKET_PROBE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
static long i386_syscall(long nr, long a, long b, long c) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}
static unsigned int args[3];
static void i386_probe(const char *name, int via_socketcall, int family, int type) {
    pid_t pid = fork();
    if (pid == 0) {
        long r;
        if (via_socketcall) {
            args[0] = family; args[1] = type; args[2] = 0;
            r = i386_syscall(102, 1, (long)args, 0);
        } else {
            r = i386_syscall(359, family, type, 0);
        }
        _exit(r >= 0 ? 0 : (int)-r);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status)) printf("%s=%d\n", name, WEXITSTATUS(status));
    else printf("%s=killed\n", name);
}
int main(void) {
    struct { const char *name; int family, type; } t[] = {
        {"unix", 1, SOCK_STREAM}, {"inet", 2, SOCK_STREAM}, {"inet6", 10, SOCK_STREAM},
        {"netlink", 16, SOCK_RAW}, {"vsock", 40, SOCK_STREAM}, {"alg", 38, SOCK_SEQPACKET},
    };
    for (unsigned i = 0; i < sizeof t / sizeof t[0]; i++) {
        int fd = socket(t[i].family, t[i].type, 0);
        printf("%s=%d\n", t[i].name, fd >= 0 ? 0 : errno);
    }
    fflush(stdout);
    i386_probe("socketcall_vsock", 1, 40, SOCK_STREAM);
    i386_probe("socketcall_alg", 1, 38, SOCK_SEQPACKET);
    i386_probe("socketcall_inet", 1, 2, SOCK_STREAM);
    i386_probe("i386_socket_vsock", 0, 40, SOCK_STREAM);
    i386_probe("i386_socket_inet", 0, 2, SOCK_STREAM);
    return 0;
}
"#;

/// Socket families outside the network policy's reach fail with EPERM (seccomp's answer, told
/// apart from the kernel's EAFNOSUPPORT where a family is not built in): `AF_VSOCK` reaches the
/// hypervisor and host services of a VM past nftables. The ones the policy governs still work.
#[tokio::test]
async fn only_socket_families_the_network_policy_governs_can_be_created() {
    require_host();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("probe.c");
    let probe = dir.path().join("probe");
    std::fs::write(&source, SOCKET_PROBE_C).unwrap();
    let cc = Command::new("cc")
        .arg("-static")
        .arg("-O")
        .arg("-o")
        .arg(&probe)
        .arg(&source)
        .output()
        .expect("cc (a C compiler with static libc) is needed to build the socket probe");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );

    let native = Command::new(&probe).output().unwrap();
    let native = parse(&String::from_utf8_lossy(&native.stdout));
    assert_eq!(native["inet"], "0", "{native:?}");
    assert_eq!(
        native["socketcall_inet"], "0",
        "natively the i386 ABI works (the kernel has IA32 emulation): {native:?}"
    );
    assert_ne!(
        native["vsock"], "1",
        "natively AF_VSOCK is not refused by a filter: {native:?}"
    );

    let mut layer = tar::Builder::new(Vec::new());
    tar_file(&mut layer, "probe", 0o755, &std::fs::read(&probe).unwrap());
    let reg = Registry::start(None);
    reg.push_image(
        "tools/socket-probe",
        "v1",
        &[busybox_layer(), layer.into_inner().unwrap()],
        busybox_config(),
        "amd64",
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(53, data.path(), |_| {});
    let s = spec(&format!("{}/tools/socket-probe:v1", reg.host), &["/probe"]);
    let (o, logs) = run_to_end(&rt, &s).await;
    assert!(matches!(o, Observed::Exited { .. }), "{o:?} {logs}");
    let inside = parse(&logs);
    for allowed in ["unix", "inet", "inet6", "netlink"] {
        assert_eq!(inside[allowed], "0", "{allowed} refused inside: {logs}");
    }
    for refused in ["vsock", "alg"] {
        assert_eq!(
            inside[refused], "1",
            "{refused} not refused with EPERM: {logs}"
        );
    }
    // The i386 ABI is not in the filter at all: its first system call kills the process, so
    // `socketcall(2)` cannot carry a family past the check above.
    for refused in [
        "socketcall_vsock",
        "socketcall_alg",
        "socketcall_inet",
        "i386_socket_vsock",
        "i386_socket_inet",
    ] {
        assert_eq!(
            inside[refused], "killed",
            "{refused}: an i386 system call must kill its caller: {logs}"
        );
    }
}
