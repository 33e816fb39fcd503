//! Sandbox lifecycle on the container backend: run, output, exit codes, stop, delete, failure
//! reasons, root kinds, builds and adoption after a restart.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use nimbus_core::spec::{ImageSource, Root, SandboxBackend};
use nimbus_runtime::{attach, ExitReason, LaunchError, Observed, ProgressEvent, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads from an attached sandbox until the output so far ends with `end` (or 30 s pass).
async fn read_until(conn: &mut attach::Attachment, end: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&got).ends_with(end) {
        let n = tokio::time::timeout_at(deadline, conn.output.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {end:?} in {:?}", String::from_utf8_lossy(&got)))
            .unwrap();
        assert!(n > 0, "output ended: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// The process's stdin is a pipe its monitor keeps open: clients attach, write to it, read the
/// output live (two at once), and close it; a process that has exited cannot be attached.
#[tokio::test]
async fn stdio_clients_attach_write_stdin_read_output_and_close_stdin() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(18, data.path(), |_| {});
    let image = format!("{}/tools/busybox:v1", reg.host);
    let id = new_id();
    rt.launch(
        &id,
        "demo",
        &spec(&image, &["sh", "-c", "echo ready; cat; echo stdin-closed"]),
        |_| {},
    )
    .await
    .unwrap();
    // Output from before an attach is in the log, not on the socket.
    wait_for_log(&rt, &id, "ready\n").await;
    assert_eq!(all_logs(&rt, &id).await, "ready\n");
    let mut first = rt.attach(&id).await.unwrap();
    let mut second = rt.attach(&id).await.unwrap();
    first
        .input
        .write_all(&attach::stdin_frame(b"hello\n"))
        .await
        .unwrap();
    assert_eq!(read_until(&mut first, "hello\n").await, "hello\n");
    assert_eq!(read_until(&mut second, "hello\n").await, "hello\n");
    // A client that leaves without closing stdin leaves it open for the next one.
    drop(first);
    second
        .input
        .write_all(&attach::stdin_frame(b"again\n"))
        .await
        .unwrap();
    assert_eq!(read_until(&mut second, "again\n").await, "again\n");
    second
        .input
        .write_all(&attach::close_stdin_frame())
        .await
        .unwrap();
    assert_eq!(
        read_until(&mut second, "stdin-closed\n").await,
        "stdin-closed\n"
    );
    // The process exited: the connection ends, and nobody can attach any more.
    let mut rest = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        second.output.read_to_end(&mut rest),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(
        second.end.get(),
        Some(attach::OutputEnd::Complete),
        "all of the output was sent"
    );
    let o = wait_exited(&rt, &id, Duration::from_secs(30)).await;
    assert!(matches!(o, Observed::Exited { code: 0, .. }), "{o:?}");
    let err = rt.attach(&id).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NotRunning(_)), "{err:?}");
    assert_eq!(
        all_logs(&rt, &id).await,
        "ready\nhello\nagain\nstdin-closed\n"
    );
    rt.delete(&id).await.unwrap();
    let err = rt.attach(&id).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound(_)), "{err:?}");
    assert!(rt.leftovers(id.as_str()).await.is_empty());
}

#[tokio::test]
async fn sandbox_runs_with_merged_environment_and_reports_its_exit_code() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(10, data.path(), |_| {});
    let mut s = spec(
        &format!("{}/tools/busybox:v1", reg.host),
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; echo $IMAGE_VAR $SPEC_VAR; pwd; id -u; exit 7",
        ],
    );
    s.process.environment = BTreeMap::from([("SPEC_VAR".to_string(), "from-spec".to_string())]);
    s.process.working_dir = Some("/tmp".into());
    s.process.user = Some("app".into());
    let id = new_id();
    let events = std::sync::Mutex::new(Vec::new());
    let launched = rt
        .launch(&id, "demo", &s, |e| events.lock().unwrap().push(e))
        .await
        .unwrap();
    assert!(launched.pid > 0);
    assert_eq!(launched.endpoint.ports, vec![8080]);
    let events = events.into_inner().unwrap();
    assert!(
        matches!(events.last(), Some(ProgressEvent::Started { .. })),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, ProgressEvent::Creating)));
    let o = wait_exited(&rt, &id, Duration::from_secs(30)).await;
    assert_eq!(
        o,
        Observed::Exited {
            code: 7,
            reason: ExitReason::Exited
        }
    );
    assert_eq!(
        all_logs(&rt, &id).await,
        "out\nerr\nfrom-image from-spec\n/tmp\n1000\n"
    );
    let again = rt.launch(&id, "demo", &s, |_| {}).await.unwrap_err();
    assert!(matches!(again, LaunchError::AlreadyExists(_)), "{again:?}");
    rt.delete(&id).await.unwrap();
    assert_eq!(rt.observe(&id), Observed::Missing);
    assert!(rt.leftovers(id.as_str()).await.is_empty());
}

#[tokio::test]
async fn stop_sends_sigterm_then_sigkill_after_the_grace_period() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(11, data.path(), |_| {});
    let image = format!("{}/tools/busybox:v1", reg.host);

    // A process that exits on SIGTERM stops within the grace period with its own status.
    let id = new_id();
    let s = spec(
        &image,
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    rt.launch(&id, "demo", &s, |_| {}).await.unwrap();
    wait_for_log(&rt, &id, "ready").await;
    let o = rt.stop(&id, Some(Duration::from_secs(10))).await.unwrap();
    assert_eq!(
        o,
        Observed::Exited {
            code: 3,
            reason: ExitReason::Exited
        }
    );
    assert!(all_logs(&rt, &id).await.contains("got-term"));
    rt.delete(&id).await.unwrap();

    // One that ignores SIGTERM is killed after the grace period.
    let id = new_id();
    let s = spec(
        &image,
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    rt.launch(&id, "demo", &s, |_| {}).await.unwrap();
    wait_for_log(&rt, &id, "ready").await;
    let o = rt
        .stop(&id, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(
        o,
        Observed::Exited {
            code: 137,
            reason: ExitReason::Signaled(9)
        }
    );
    delete_leaving_nothing(&rt, &id).await;
}

/// The pids in sandbox `id`'s cgroup (`/nimbus/<id>` in whichever hierarchy has it).
fn cgroup_pids(id: &str) -> Vec<i32> {
    let mut dirs = vec![std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/nimbus/{id}"
    ))];
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        dirs.push(e.path().join("nimbus").join(id));
    }
    let mut pids: Vec<i32> = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| s.lines().filter_map(|l| l.parse().ok()).collect::<Vec<_>>())
        .collect();
    pids.sort();
    pids.dedup();
    pids
}

#[tokio::test]
async fn delete_kills_every_process_of_the_sandbox_by_signalling_its_init() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(44, data.path(), |_| {});
    let image = format!("{}/tools/busybox:v1", reg.host);
    // Children that ignore SIGTERM, one of them in its own session, beside the init.
    let s = spec(
        &image,
        &[
            "sh",
            "-c",
            "trap '' TERM; sleep 1000 & setsid sleep 1000 & echo ready; wait",
        ],
    );
    let id = new_id();
    rt.launch(&id, "demo", &s, |_| {}).await.unwrap();
    wait_for_log(&rt, &id, "ready").await;
    let Observed::Running { pid, .. } = rt.observe(&id) else {
        panic!("{id} is not running: {:?}", rt.observe(&id));
    };
    // The premise of signalling the init directly: the host sees it in the sandbox's cgroup.
    let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with(&format!("/nimbus/{id}"))),
        "{listing}"
    );
    let pids = cgroup_pids(id.as_str());
    assert!(
        pids.len() >= 3,
        "expected the init and two sleeps, got {pids:?}"
    );

    delete_leaving_nothing(&rt, &id).await;
    for _ in 0..200 {
        if pids
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("processes of {id} outlived its delete: {pids:?}");
}

async fn wait_for_log(
    rt: &nimbus_runtime::Runtime,
    id: &nimbus_core::names::SandboxId,
    needle: &str,
) {
    for _ in 0..500 {
        if all_logs(rt, id).await.contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{needle:?} never appeared in the logs of {id}");
}

#[tokio::test]
async fn logs_follow_streams_until_the_process_exits() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(12, data.path(), |_| {});
    let id = new_id();
    let s = spec(
        &format!("{}/tools/busybox:v1", reg.host),
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done",
        ],
    );
    rt.launch(&id, "demo", &s, |_| {}).await.unwrap();
    let mut stream = rt.logs(&id, true).await.unwrap();
    let mut got = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(30), stream.next_chunk())
        .await
        .unwrap()
    {
        got.extend(c);
    }
    assert_eq!(
        String::from_utf8(got).unwrap(),
        "line1\nline2\nline3\nline4\nline5\n"
    );
    rt.delete(&id).await.unwrap();
}

#[tokio::test]
async fn bad_argv_fails_the_launch_with_bad_argv_and_leaves_nothing() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(13, data.path(), |_| {});
    let id = new_id();
    let err = rt
        .launch(
            &id,
            "demo",
            &spec(
                &format!("{}/tools/busybox:v1", reg.host),
                &["no-such-program"],
            ),
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LaunchError::BadArgv(m) if m.contains("no-such-program")),
        "{err:?}"
    );
    assert_eq!(rt.observe(&id), Observed::Missing);
    // A directory as argv[0] is the caller's mistake too, not an internal error.
    let dir_id = new_id();
    let err = rt
        .launch(
            &dir_id,
            "demo",
            &spec(&format!("{}/tools/busybox:v1", reg.host), &["/tmp"]),
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, LaunchError::BadArgv(_)), "{err:?}");
    assert!(
        rt.leftovers(id.as_str()).await.is_empty(),
        "{:?}",
        rt.leftovers(id.as_str()).await
    );
    let mut s = spec(&format!("{}/tools/busybox:v1", reg.host), &["true"]);
    s.process.user = Some("ghost".into());
    let err = rt.launch(&new_id(), "demo", &s, |_| {}).await.unwrap_err();
    assert!(
        matches!(&err, LaunchError::BadSpec { field, .. } if field == "process.user"),
        "{err:?}"
    );
}

#[tokio::test]
async fn krun_backend_fails_closed_with_not_supported() {
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(14, data.path(), |_| {});
    let mut s = spec("127.0.0.1:1/x/y:v1", &["true"]);
    s.backend = SandboxBackend::Krun;
    let err = rt.launch(&new_id(), "demo", &s, |_| {}).await.unwrap_err();
    assert!(
        matches!(&err, LaunchError::NotSupported(m) if m.contains("egress enforcement")),
        "{err:?}"
    );
}

#[tokio::test]
async fn operator_rootfs_runs_with_its_own_upper_layer_and_stays_untouched() {
    require_host();
    let root = tempfile::tempdir().unwrap();
    let mut ar = tar::Archive::new(std::io::Cursor::new(busybox_layer()));
    ar.unpack(root.path()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(15, data.path(), |_| {});
    let mut s = spec(
        "unused",
        &[
            "sh",
            "-c",
            "echo written > /etc/new.txt && cat /etc/new.txt",
        ],
    );
    s.root = Root::Rootfs {
        path: root.path().display().to_string(),
    };
    let (o, logs) = run_to_end(&rt, &s).await;
    assert_eq!(
        o,
        Observed::Exited {
            code: 0,
            reason: ExitReason::Exited
        }
    );
    assert_eq!(logs, "written\n");
    assert!(
        !root.path().join("etc/new.txt").exists(),
        "writes go to the sandbox's upper dir"
    );
}

#[tokio::test]
async fn dockerfile_builds_feed_the_same_store_and_run() {
    require_host();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(BUSYBOX, ctx.path().join("busybox")).unwrap();
    std::fs::write(ctx.path().join("hello.txt"), "built by buildah\n").unwrap();
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY hello.txt /hello.txt\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox echo ran-at-build > /ran.txt\"]\nENV BUILT=yes\nENTRYPOINT [\"/bin/busybox\"]\n";
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(16, data.path(), |_| {});
    let mut s = spec(
        "unused",
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox cat /hello.txt /ran.txt; echo $BUILT",
        ],
    );
    s.root = Root::OciImage {
        source: ImageSource::Build {
            dockerfile: dockerfile.into(),
            context: ctx.path().display().to_string(),
        },
    };
    let (o, logs) = run_to_end(&rt, &s).await;
    assert_eq!(
        o,
        Observed::Exited {
            code: 0,
            reason: ExitReason::Exited
        }
    );
    assert_eq!(logs, "built by buildah\nran-at-build\nyes\n");
    let mut bad = s.clone();
    bad.root = Root::OciImage {
        source: ImageSource::Build {
            dockerfile: "FROM scratch\nCOPY missing-file /x\n".into(),
            context: ctx.path().display().to_string(),
        },
    };
    let err = rt
        .launch(&new_id(), "demo", &bad, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LaunchError::BuildFailed(m) if m.contains("missing-file")),
        "{err:?}"
    );
}

/// A build's `FROM` reaches a loopback registry over plain HTTP, as pulls do (buildah alone
/// would insist on HTTPS).
#[tokio::test]
async fn a_build_from_a_base_image_on_a_loopback_registry_runs() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello.txt"), "on a loopback base\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(57, data.path(), |_| {});
    let mut s = spec("unused", &["sh", "-c", "cat /hello.txt"]);
    s.root = Root::OciImage {
        source: ImageSource::Build {
            dockerfile: format!(
                "FROM {}/tools/busybox:v1\nCOPY hello.txt /hello.txt\n",
                reg.host
            ),
            context: ctx.path().display().to_string(),
        },
    };
    let (o, logs) = run_to_end(&rt, &s).await;
    assert_eq!(
        o,
        Observed::Exited {
            code: 0,
            reason: ExitReason::Exited
        },
        "{logs}"
    );
    assert_eq!(logs, "on a loopback base\n");
}

#[tokio::test]
async fn a_new_runtime_adopts_running_sandboxes_and_exits_that_happened_meanwhile() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let image = format!("{}/tools/busybox:v1", reg.host);
    let (long, short) = (new_id(), new_id());
    {
        let rt = runtime(17, data.path(), |_| {});
        // An allow-list gives it a chain and a verdict-map entry that must survive the restart.
        // It reads a line from stdin, which a client sends after the restart.
        let mut long_spec = spec(
            &image,
            &["sh", "-c", "echo up; read line; echo got $line; sleep 300"],
        );
        long_spec
            .network
            .egress
            .allow
            .push(nimbus_core::spec::EgressRule {
                cidr: "192.0.2.0/24".into(),
                ports: vec![443],
            });
        rt.launch(&long, "demo", &long_spec, |_| {}).await.unwrap();
        rt.launch(
            &short,
            "demo",
            &spec(&image, &["sh", "-c", "sleep 0.5; exit 4"]),
            |_| {},
        )
        .await
        .unwrap();
        // The server goes away: the Runtime is dropped with no shutdown of its sandboxes.
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rt = reopen_runtime(17, data.path(), |_| {});
    let adopted = rt.adopt_all();
    let find = |id: &nimbus_core::names::SandboxId| {
        adopted
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, o)| o.clone())
    };
    assert!(
        matches!(find(&long), Some(Observed::Running { .. })),
        "{adopted:?}"
    );
    assert_eq!(
        find(&short),
        Some(Observed::Exited {
            code: 4,
            reason: ExitReason::Exited
        })
    );
    // The new runtime's first launch rebuilds the host rules; the adopted sandbox keeps its
    // nftables entry.
    let Some(Observed::Running { endpoint, .. }) = find(&long) else {
        unreachable!()
    };
    let (o, _) = run_to_end(&rt, &spec(&image, &["true"])).await;
    assert!(matches!(o, Observed::Exited { code: 0, .. }));
    let map = std::process::Command::new("nft")
        .args(["list", "map", "inet", "nimbus_nbt17", "sandboxes"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&map.stdout).contains(&endpoint.address.to_string()),
        "adopted sandbox lost its rules: {}",
        String::from_utf8_lossy(&map.stdout)
    );
    // The adopted sandbox is fully controllable: stdio, logs, stop, delete. Its monitor, not
    // the server, holds the process's stdin, so a client attaches after the restart.
    let mut conn = rt.attach(&long).await.unwrap();
    conn.input
        .write_all(&attach::stdin_frame(b"after-restart\n"))
        .await
        .unwrap();
    assert_eq!(read_until(&mut conn, "\n").await, "got after-restart\n");
    assert_eq!(all_logs(&rt, &long).await, "up\ngot after-restart\n");
    let o = rt.stop(&long, Some(Duration::from_secs(5))).await.unwrap();
    assert!(matches!(o, Observed::Exited { .. }));
    for id in [&long, &short] {
        delete_leaving_nothing(&rt, id).await;
    }
}

#[tokio::test]
async fn a_rootfs_on_a_filesystem_without_idmapped_mounts_is_a_bad_root_path() {
    require_host();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(27, data.path(), |_| {});
    assert!(rt.user_namespaces());
    // procfs is a directory tree crun could never use, and it cannot be idmapped.
    let mut s = spec("unused", &["true"]);
    s.root = Root::Rootfs {
        path: "/proc/sys".into(),
    };
    let id = new_id();
    let err = rt.launch(&id, "demo", &s, |_| {}).await.unwrap_err();
    match err {
        LaunchError::BadSpec { field, reason } => {
            assert_eq!(field, "root.path");
            assert!(
                reason.contains("idmapped") && reason.contains("user_namespaces"),
                "{reason}"
            );
        }
        other => panic!("expected a bad root.path, got {other:?}"),
    }
    assert!(rt.leftovers(id.as_str()).await.is_empty());
}

/// The files of a sandbox, from the host: read what the process wrote, write what it reads
/// (owned by root inside), list, delete; paths and symlinks resolve inside the sandbox, so a
/// symlink to `/` or a `..` chain cannot reach the host. Files stay readable after the process
/// exits, until the delete.
#[tokio::test]
async fn files_are_read_and_written_inside_the_sandbox_root_only() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(19, data.path(), |_| {});
    let image = format!("{}/tools/busybox:v1", reg.host);
    let id = new_id();
    let marker = format!("nimbus-escape-{}", id.as_str());
    // `/tmp/out` comes last: once the test sees it, the symlinks exist (written through
    // before they did, the test's files would create a real `/tmp/up` directory instead).
    let script = "mkfifo /tmp/fifo; ln -s / /escape; ln -s ../../../../../.. /tmp/up; \
         echo made-inside > /tmp/out; \
         while [ ! -f /data/in.txt ]; do sleep 0.05; done; cat /data/in.txt; ls -ln /data/in.txt";
    rt.launch(&id, "demo", &spec(&image, &["sh", "-c", script]), |_| {})
        .await
        .unwrap();
    let files = rt.files(&id).unwrap();
    let mut out = String::new();
    for _ in 0..300 {
        if let Ok(mut f) = files.read("/tmp/out") {
            use std::io::Read;
            f.read_to_string(&mut out).unwrap();
            if !out.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(out, "made-inside\n");
    // Through the sandbox's own symlinks: they resolve inside it.
    let escape = format!("/escape/tmp/{marker}");
    files.write(&escape, &b"x"[..]).unwrap();
    files
        .write(&format!("/tmp/up/tmp/{marker}-up"), &b"y"[..])
        .unwrap();
    assert!(!std::path::Path::new("/tmp").join(&marker).exists());
    assert!(!std::path::Path::new("/tmp")
        .join(format!("{marker}-up"))
        .exists());
    let (tmp, truncated) = files.list("/tmp").unwrap();
    assert!(!truncated);
    let names: Vec<&str> = tmp.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&marker.as_str()), "{names:?}");
    assert!(
        names.contains(&format!("{marker}-up").as_str()),
        "{names:?}"
    );
    let up = tmp.iter().find(|e| e.name == "up").unwrap();
    assert_eq!(up.kind, "symlink");
    // Dots are refused outright rather than clamped.
    assert!(matches!(
        files.read("/tmp/../etc/passwd"),
        Err(nimbus_runtime::files::FileError::Invalid { .. })
    ));
    assert!(matches!(
        files.read("/no/such/file"),
        Err(nimbus_runtime::files::FileError::NotFound(_))
    ));
    assert!(matches!(
        files.read("/tmp"),
        Err(nimbus_runtime::files::FileError::Invalid { .. })
    ));
    // A FIFO is refused without being opened (opening it would wait for a writer).
    assert!(matches!(
        files.read("/tmp/fifo"),
        Err(nimbus_runtime::files::FileError::Invalid { .. })
    ));
    let long = format!("/tmp/{}", "a".repeat(300));
    assert!(matches!(
        files.write(&long, &b"x"[..]),
        Err(nimbus_runtime::files::FileError::Invalid { .. })
    ));
    // A write the process is waiting for: parents made, content whole, owned by root inside.
    let n = files
        .write("/data/in.txt", &b"from the host\n"[..])
        .unwrap();
    assert_eq!(n, 14);
    let o = wait_exited(&rt, &id, Duration::from_secs(30)).await;
    assert!(matches!(o, Observed::Exited { code: 0, .. }), "{o:?}");
    let logs = all_logs(&rt, &id).await;
    assert!(logs.starts_with("from the host\n"), "{logs}");
    let ls: Vec<&str> = logs
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(ls.get(2..4), Some(&["0", "0"][..]), "owner inside: {logs}");
    assert!(ls[0].starts_with("-rw-r--r--"), "mode: {logs}");
    // After the exit the files are still there; delete works on files and empty dirs only.
    files.delete("/tmp/out").unwrap();
    assert!(matches!(
        files.read("/tmp/out"),
        Err(nimbus_runtime::files::FileError::NotFound(_))
    ));
    assert!(matches!(
        files.delete("/data"),
        Err(nimbus_runtime::files::FileError::Invalid { .. })
    ));
    files.delete("/data/in.txt").unwrap();
    files.delete("/data").unwrap();
    drop(files);
    rt.delete(&id).await.unwrap();
    assert!(matches!(rt.files(&id), Err(RuntimeError::NotFound(_))));
    assert!(rt.leftovers(id.as_str()).await.is_empty());
}

/// Standby monitors ready now, waiting up to 10 s for at least one.
async fn standby_monitors(rt: &nimbus_runtime::Runtime) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = rt.standby_monitors();
        if !ready.is_empty() {
            return ready;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no standby monitor became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn monitor_of(data: &std::path::Path, id: &nimbus_core::names::SandboxId) -> u32 {
    let path = data.join(format!("runtime/sandboxes/{id}/monitor.pid"));
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn launches_go_to_standby_monitors_and_pass_over_one_that_died() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(26, data.path(), |c| {
        c.warm_pool = 1;
        c.standby_monitors = 1;
    });
    rt.warm_up().await.unwrap();
    let image = format!("{}/tools/busybox:v1", reg.host);

    let standby = standby_monitors(&rt).await;
    let first = new_id();
    rt.launch(&first, "demo", &spec(&image, &["echo", "one"]), |_| {})
        .await
        .unwrap();
    assert_eq!(
        monitor_of(data.path(), &first),
        standby[0],
        "the launch did not use the standby monitor"
    );
    wait_exited(&rt, &first, Duration::from_secs(30)).await;
    assert_eq!(all_logs(&rt, &first).await, "one\n");

    // The pool refills; a standby that dies before its launch is passed over, and with no
    // other one ready the launch starts its own monitor.
    let next = standby_monitors(&rt).await;
    assert_eq!(next.len(), 1, "{next:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(next[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{}/stat", next[0]))
        .is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(std::time::Instant::now() < deadline, "SIGKILL did not kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = new_id();
    rt.launch(&second, "demo", &spec(&image, &["echo", "two"]), |_| {})
        .await
        .unwrap();
    assert_ne!(monitor_of(data.path(), &second), next[0]);
    wait_exited(&rt, &second, Duration::from_secs(30)).await;
    assert_eq!(all_logs(&rt, &second).await, "two\n");
    for id in [&first, &second] {
        delete_leaving_nothing(&rt, id).await;
    }
}

#[tokio::test]
async fn a_relative_data_dir_works_like_its_absolute_path() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    // The same directory, relative to this test's working directory.
    let cwd = std::env::current_dir().unwrap();
    let relative: std::path::PathBuf = cwd
        .components()
        .skip(1)
        .map(|_| "..")
        .collect::<std::path::PathBuf>()
        .join(data.path().strip_prefix("/").unwrap());
    assert!(relative.is_relative());
    let rt = runtime(28, &relative, |_| {});
    let (observed, output) = run_to_end(
        &rt,
        &spec(&format!("{}/tools/busybox:v1", reg.host), &["echo", "rel"]),
    )
    .await;
    assert_eq!(
        observed,
        Observed::Exited {
            code: 0,
            reason: ExitReason::Exited
        }
    );
    assert_eq!(output, "rel\n");
}

#[tokio::test]
async fn a_standby_monitor_that_dies_with_its_assignment_is_replaced_by_a_fresh_one() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    // A monitor whose first instance reads its assignment and dies without a word (as one
    // killed at that moment would); every later one is the real monitor.
    let marker = data.path().join("first-monitor-started");
    let script = data.path().join("monitor.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif mkdir {} 2>/dev/null; then read line; exit 0; fi\nexec {} \"$@\"\n",
            marker.display(),
            env!("CARGO_BIN_EXE_nimbus-monitor")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rt = runtime(29, data.path(), |c| {
        c.monitor = Some(script.clone());
        c.standby_monitors = 1;
    });
    rt.warm_up().await.unwrap();
    let first = standby_monitors(&rt).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id = new_id();
    rt.launch(
        &id,
        "demo",
        &spec(
            &format!("{}/tools/busybox:v1", reg.host),
            &["echo", "again"],
        ),
        |_| {},
    )
    .await
    .unwrap();
    assert_ne!(monitor_of(data.path(), &id), first[0]);
    wait_exited(&rt, &id, Duration::from_secs(30)).await;
    assert_eq!(all_logs(&rt, &id).await, "again\n");
    delete_leaving_nothing(&rt, &id).await;
    rt.drain_pool().await;
}

/// Moving the sandbox network (`runtime.bridge`, `runtime.subnet`) while sandboxes are on it is
/// refused at start, naming them; once none is, the move is taken.
#[tokio::test]
async fn a_start_that_moves_the_network_from_under_its_sandboxes_is_refused() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let image = format!("{}/tools/busybox:v1", reg.host);
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(58, data.path(), |_| {});
    let id = new_id();
    rt.launch(&id, "demo", &spec(&image, &["sleep", "300"]), |_| {})
        .await
        .unwrap();
    let moved = |bridge: &str, subnet: &str| {
        let cfg = nimbus_runtime::RuntimeConfig {
            bridge: bridge.into(),
            subnet: subnet.into(),
            docker_config: Some(data.path().join("no-docker-config.json")),
            monitor: Some(std::path::PathBuf::from(env!(
                "CARGO_BIN_EXE_nimbus-monitor"
            ))),
            warm_pool: 0,
            ..Default::default()
        };
        nimbus_runtime::Runtime::open(data.path(), &cfg)
    };
    for (bridge, subnet) in [("nbt58b", "10.158.0.0/16"), ("nbt58", "10.159.0.0/16")] {
        let err = moved(bridge, subnet).err().expect("the move is refused");
        assert!(err.contains(id.as_str()), "{err}");
        assert!(
            err.contains("\"nbt58\"") && err.contains("10.158.0.0/16"),
            "{err}"
        );
        assert!(
            err.contains("set runtime.bridge and runtime.subnet back"),
            "{err}"
        );
    }
    rt.delete(&id).await.unwrap();
    // With nothing on it, a new subnet on the same bridge is taken, and the old gateway
    // address (the runtime's own, as recorded) leaves the bridge for the new one.
    let bridge_addresses = || {
        let out = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", "nbt58"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        bridge_addresses().contains("10.158.0.1/16"),
        "{}",
        bridge_addresses()
    );
    assert!(moved("nbt58", "10.157.0.0/16").is_ok());
    assert!(
        !bridge_addresses().contains("10.158.0.1/16"),
        "{}",
        bridge_addresses()
    );
    assert!(moved("nbt58b", "10.158.0.0/16").is_ok());
}
