//! The per-sandbox monitor (the role conmon plays for podman). One process per sandbox, in its
//! own session so it outlives the server: it runs `crun run --detach` (from a sealed copy of
//! crun, see `sealed_exec.rs`) with the container's stdio on pipes it owns, becomes the
//! container's parent (child subreaper), copies output into a bounded log, serves stdin and live
//! output on `attach-v2.sock` (see `attach.rs`), records the exit (code, signal, OOM kill) in
//! `exit.json`, then deletes the crun container. One crun invocation (not `create` then
//! `start`) is a good part of why a launch is quick; the server makes sure the network is ready
//! before it hands the sandbox over.
//!
//! A monitor starts before it has a sandbox: `<exe> __monitor --crun PATH` makes its session,
//! becomes a subreaper and copies crun, then waits for its [`Assignment`], one JSON line on
//! stdin. The server keeps a few monitors started this way (see `standby.rs`), so a launch
//! does not wait for a process to start; end-of-file instead of an assignment (the server
//! stopped, or no longer wants it) makes it exit. Once assigned, its working directory is the
//! sandbox's state dir, which is how [`crate::orphans`] tells whose monitor it is.
//!
//! Handshake with the launching server: the monitor prints one JSON line on stdout —
//! `{"pid":N}` once the container runs, or `{"error":"…"}` — and then stops using stdout.
//!
//! Entry points: the `nimbus-monitor` binary, or any binary that calls [`main_if_requested`]
//! first thing in `main` (the `nimbus` server does).

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::attach::AttachServer;
use crate::sealed_exec::SealedCopy;

pub const MONITOR_ARG: &str = "__monitor";

/// What `exit.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// Exit status, or 128+signal when killed by a signal (shell convention).
    pub code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    /// How many times the sandbox was refused a new process at its process limit.
    #[serde(default)]
    pub pids_refused: u64,
    /// Set when the container never started; the message says why.
    #[serde(default)]
    pub start_error: Option<String>,
    /// Seconds since the Unix epoch.
    pub finished_at: u64,
}

/// The sandbox a started monitor is handed: one JSON line on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Assignment {
    /// The sandbox's state dir (bundle, log, exit record, attach socket).
    pub dir: PathBuf,
    pub crun_root: PathBuf,
    pub id: String,
    pub log_max: u64,
    /// Copy crun's compiled seccomp filter into the sandbox dir (the server asks while it has
    /// no cached filter).
    pub keep_seccomp: bool,
}

/// A monitor's command line after the executable: `__monitor --crun PATH`.
pub fn command_line(crun: &Path) -> Vec<OsString> {
    vec![MONITOR_ARG.into(), "--crun".into(), crun.into()]
}

fn parse_command_line(args: Vec<OsString>) -> Result<PathBuf, String> {
    let mut it = args.into_iter().peekable();
    if it.peek().is_some_and(|a| a == MONITOR_ARG) {
        it.next();
    }
    let mut crun = None;
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag:?} needs a value"))?;
        match flag.to_str() {
            Some("--crun") => crun = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown monitor flag {flag:?}")),
        }
    }
    crun.ok_or_else(|| "--crun missing".to_string())
}

/// Call first thing in `main`: when the process was started as a monitor, runs it and returns
/// the exit code to return from `main`; otherwise returns `None` and the program goes on.
pub fn main_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == MONITOR_ARG) {
        Some(main_from_args(std::env::args_os().skip(1).collect()))
    } else {
        None
    }
}

pub fn main_from_args(args: Vec<OsString>) -> ExitCode {
    let crun = match parse_command_line(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nimbus monitor: {e}");
            return ExitCode::from(2);
        }
    };
    let ready = Prepared::new(&crun);
    let a = match read_assignment() {
        Ok(Some(a)) => a,
        // Never used: the server stopped, or drained its standby monitors.
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            handshake(&serde_json::json!({ "error": e }));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = take_up(&a) {
        handshake(&serde_json::json!({ "error": e }));
        return ExitCode::FAILURE;
    }
    for warning in &ready.warnings {
        eprintln!("nimbus monitor: {warning}");
    }
    match run(&a, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nimbus monitor for {}: {e}", a.id);
            ExitCode::FAILURE
        }
    }
}

/// What a monitor sets up before it has a sandbox.
struct Prepared {
    crun: PathBuf,
    /// crun from a sealed copy: it skips re-executing itself (see sealed_exec.rs).
    sealed: Option<SealedCopy>,
    /// Set when the monitor cannot supervise (it could not become a subreaper).
    unfit: Option<String>,
    /// Said in `monitor.log` once there is one.
    warnings: Vec<String>,
}

impl Prepared {
    fn new(crun: &Path) -> Prepared {
        let mut warnings = Vec::new();
        // Own session: the server's terminal, process group and death do not reach the
        // monitor. (It must not be started as a process-group leader, or setsid fails.)
        if let Err(e) = nix::unistd::setsid() {
            warnings.push(format!(
                "setsid failed ({e}); staying in the server's session"
            ));
        }
        // Until assigned, a monitor works in `/`: the directory it was started in may be
        // anything, and an assigned monitor's working directory names its sandbox.
        if let Err(e) = std::env::set_current_dir("/") {
            warnings.push(format!("cannot enter /: {e}"));
        }
        let unfit = nix::sys::prctl::set_child_subreaper(true)
            .err()
            .map(|e| format!("cannot become child subreaper: {e}"));
        // Without a sealed copy (no memfd support), crun copies itself, as it always does.
        let sealed = match SealedCopy::of(crun) {
            Ok(copy) => Some(copy),
            Err(e) => {
                warnings.push(format!(
                    "no sealed copy of {} ({e}); crun copies itself",
                    crun.display()
                ));
                None
            }
        };
        Prepared {
            crun: crun.to_path_buf(),
            sealed,
            unfit,
            warnings,
        }
    }
}

/// The assignment line, or `None` at end-of-file.
fn read_assignment() -> Result<Option<Assignment>, String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| format!("unreadable assignment {:?}: {e}", line.trim())),
        Err(e) => Err(format!("cannot read the assignment: {e}")),
    }
}

/// Becomes the monitor of `a`: stderr into its `monitor.log`, its state dir as working
/// directory, stdin let go (the server's pipe), the pid recorded.
fn take_up(a: &Assignment) -> Result<(), String> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(a.dir.join("monitor.log"))
        .map_err(|e| format!("cannot open {}: {e}", a.dir.join("monitor.log").display()))?;
    let _ = nix::unistd::dup2(log.as_raw_fd(), 2);
    if let Ok(devnull) = File::open("/dev/null") {
        let _ = nix::unistd::dup2(devnull.as_raw_fd(), 0);
    }
    std::env::set_current_dir(&a.dir)
        .map_err(|e| format!("cannot enter {}: {e}", a.dir.display()))?;
    std::fs::write(a.dir.join("monitor.pid"), std::process::id().to_string())
        .map_err(|e| format!("cannot write monitor.pid: {e}"))
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

fn handshake(msg: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

fn record_exit(dir: &Path, rec: &ExitRecord) -> Result<(), String> {
    let json = serde_json::to_vec(rec).map_err(|e| e.to_string())?;
    write_atomic(&dir.join("exit.json"), &json).map_err(|e| format!("cannot write exit.json: {e}"))
}

fn run(a: &Assignment, ready: Prepared) -> Result<(), String> {
    if let Some(why) = &ready.unfit {
        fail(a, &ready.crun, why);
        return Err(why.clone());
    }
    // Close-on-exec, so crun and the container get only the ends they are handed as stdio.
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
    let write_clone = write_end.try_clone().map_err(|e| format!("dup: {e}"))?;
    // The process's stdin stays open for stdio sessions, which attach through the socket.
    let (stdin_read, stdin_write): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
    // The copier runs from before crun starts, so the process's first output reaches the log
    // (and whoever follows it) as soon as it is written, not once crun has exited. Attached
    // clients get output once the socket is up (no client can attach before the launch
    // returns, which is after that).
    let attach: Arc<OnceLock<AttachServer>> = Arc::new(OnceLock::new());
    let logger = {
        let (dir, log_max, tap) = (a.dir.clone(), a.log_max, attach.clone());
        std::thread::spawn(move || {
            copy_log(File::from(read_end), &dir, log_max, |chunk| {
                if let Some(server) = tap.get() {
                    server.broadcast(chunk)
                }
            })
        })
    };
    let pid_file = a.dir.join("container.pid");
    let crun_log = a.dir.join("crun.log");
    let crun = ready
        .sealed
        .as_ref()
        .map_or_else(|| ready.crun.clone(), SealedCopy::path);
    let child = Command::new(&crun)
        .arg("--root")
        .arg(&a.crun_root)
        .arg(format!("--log=file:{}", crun_log.display()))
        .arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(a.dir.join("bundle"))
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&a.id)
        .stdin(Stdio::from(stdin_read))
        .stdout(Stdio::from(write_clone))
        .stderr(Stdio::from(write_end))
        .spawn();
    // The attach socket is made while crun works.
    match AttachServer::start(&a.dir, File::from(stdin_write)) {
        Ok(server) => {
            let _ = attach.set(server);
        }
        Err(e) => {
            eprintln!("nimbus monitor: no attach socket ({e}); stdio sessions cannot attach")
        }
    }
    let status = child.and_then(|mut c| c.wait());
    // Kept only for the start: the copy is half a megabyte of memory per sandbox.
    drop(ready.sealed);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot run {}: {e}", ready.crun.display());
            fail(a, &ready.crun, &msg);
            return Err(msg);
        }
    };
    if !status.success() {
        let msg = std::fs::read_to_string(&crun_log)
            .unwrap_or_default()
            .trim()
            .to_string();
        let msg = if msg.is_empty() {
            format!("crun run exited with {status}")
        } else {
            msg
        };
        fail(a, &ready.crun, &msg);
        // Whatever the failed create printed goes into the log, for `logs`.
        wait_until_finished(&logger, std::time::Duration::from_secs(2));
        if let Some(attach) = attach.get() {
            attach.finish(std::time::Duration::ZERO);
        }
        return Ok(());
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| "crun run left no readable pid file".to_string())?;
    // The compiled seccomp filter, kept beside the log before a quick exit removes crun's
    // state (the server caches it so later launches skip the compilation).
    if a.keep_seccomp {
        let _ = std::fs::copy(
            a.crun_root.join(&a.id).join("seccomp.bpf"),
            a.dir.join("seccomp.bpf"),
        );
    }
    handshake(&serde_json::json!({ "pid": pid }));
    if let Ok(devnull) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(devnull.as_raw_fd(), 1);
    }

    let (code, signal) = wait_for(pid);
    let oom_killed = oom_kills(&a.id) > 0;
    let pids_refused = pids_refused(&a.id);
    // The pipe closes when the last container process is gone; with a pid namespace that is
    // now. Give the copier a moment for buffered output, but never hang on a stray holder.
    wait_until_finished(&logger, std::time::Duration::from_secs(2));
    // The exit is recorded before attached clients get their end record, so a client that has
    // it finds the sandbox exited. (Servers that predate the end record, reading end-of-file
    // with no exit record yet, concluded the client had been disconnected.)
    let recorded = record_exit(
        &a.dir,
        &ExitRecord {
            code,
            signal,
            oom_killed,
            pids_refused,
            start_error: None,
            finished_at: now_secs(),
        },
    );
    // Attached clients get the rest of the output, then the end record. Up to 5 s: a client
    // reading steadily drains a full queue in well under that; one still reading then is cut,
    // and told so by the missing end record (the log has everything).
    if let Some(server) = attach.get() {
        server.finish(std::time::Duration::from_secs(5));
    }
    recorded?;
    crun_delete(&ready.crun, a);
    Ok(())
}

/// Removes crun's state of the container (whether it ran or failed to start).
fn crun_delete(crun: &Path, a: &Assignment) {
    let _ = Command::new(crun)
        .arg("--root")
        .arg(&a.crun_root)
        .args(["delete", "--force", &a.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `limit` for `thread` to end.
fn wait_until_finished(thread: &std::thread::JoinHandle<()>, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while !thread.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn fail(a: &Assignment, crun: &Path, msg: &str) {
    handshake(&serde_json::json!({ "error": msg }));
    let _ = record_exit(
        &a.dir,
        &ExitRecord {
            code: -1,
            signal: None,
            oom_killed: false,
            pids_refused: 0,
            start_error: Some(msg.to_string()),
            finished_at: now_secs(),
        },
    );
    crun_delete(crun, a);
}

/// Reaps children until `pid` exits; returns (code, signal).
fn wait_for(pid: i32) -> (i32, Option<i32>) {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::Pid;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return (code, None),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                return (128 + sig as i32, Some(sig as i32))
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            // No children left: the container is gone without us seeing its status.
            Err(_) => return (-1, None),
        }
    }
}

/// OOM kills recorded for the container's memory cgroup.
fn oom_kills(id: &str) -> u64 {
    cgroup_event_count(
        id,
        ("memory", "memory.oom_control"),
        "memory.events",
        "oom_kill",
    )
}

/// Forks the container's pids cgroup refused at its limit.
fn pids_refused(id: &str) -> u64 {
    cgroup_event_count(id, ("pids", "pids.events"), "pids.events", "max")
}

/// The count `key` in one of the container's cgroup files: `v1` is (controller, file) in the
/// v1 layout, `v2` the file in the unified one; 0 when neither can be read.
fn cgroup_event_count(id: &str, v1: (&str, &str), v2: &str, key: &str) -> u64 {
    let own = crate::bundle::cgroup_path(id);
    let paths = [
        format!("/sys/fs/cgroup/{}{own}/{}", v1.0, v1.1),
        format!("/sys/fs/cgroup{own}/{v2}"),
    ];
    for p in paths {
        if let Ok(text) = std::fs::read_to_string(&p) {
            for line in text.lines() {
                if let Some(n) = line
                    .strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix(' '))
                {
                    return n.trim().parse().unwrap_or(0);
                }
            }
        }
    }
    0
}

/// Copies the container's output into `log`, rotating to `log.1` when `log` reaches `max / 2`,
/// so at most `max` bytes are kept; `tap` sees every chunk too (attached clients).
fn copy_log(mut src: File, dir: &Path, max: u64, tap: impl Fn(&[u8])) {
    let path = dir.join("log");
    let old = dir.join("log.1");
    let half = (max / 2).max(4096);
    let Ok(mut out) = File::options().create(true).append(true).open(&path) else {
        return;
    };
    let mut size = out.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; (64 * 1024).min(half as usize)];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if size + n as u64 > half && size > 0 {
            let _ = std::fs::rename(&path, &old);
            match File::options().create(true).append(true).open(&path) {
                Ok(f) => out = f,
                Err(_) => return,
            }
            size = 0;
        }
        tap(&buf[..n]);
        if out.write_all(&buf[..n]).is_err() {
            return;
        }
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_round_trips_and_rejects_unknown_flags() {
        let crun = Path::new("/usr/bin/crun");
        assert_eq!(parse_command_line(command_line(crun)).unwrap(), crun);
        let mut extra = command_line(crun);
        extra.extend(["--dir".into(), "/d".into()]);
        assert!(parse_command_line(extra).unwrap_err().contains("--dir"));
        assert!(parse_command_line(vec![MONITOR_ARG.into()])
            .unwrap_err()
            .contains("--crun missing"));
    }

    #[test]
    fn an_assignment_is_one_json_line_whatever_its_paths_hold() {
        let a = Assignment {
            dir: "/d\nwith a newline".into(),
            crun_root: "/r".into(),
            id: "sbx_1".into(),
            log_max: 1024,
            keep_seccomp: true,
        };
        let line = serde_json::to_string(&a).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Assignment>(&line).unwrap(), a);
    }

    #[test]
    fn logs_are_bounded_by_rotation() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::write(&src, vec![b'x'; 100_000]).unwrap();
        copy_log(File::open(&src).unwrap(), d.path(), 16_384, |_| {});
        let cur = std::fs::metadata(d.path().join("log")).unwrap().len();
        let old = std::fs::metadata(d.path().join("log.1")).unwrap().len();
        assert!(cur + old <= 16_384, "{cur} + {old}");
        assert!(cur > 0);
    }
}
