//! Monitors started ahead of launches. Starting a monitor (a process spawn, its exec and
//! dynamic linking, its session, a sealed copy of crun) took about 3–4 ms of every launch on
//! the 2-core test VM, all of it before crun could start. A standby monitor has done all that
//! and waits for its [`Assignment`] on stdin, so a launch hands it the sandbox with one write.
//!
//! A standby monitor holds nothing of a sandbox: the server owns the write end of its stdin,
//! and the monitor exits at end-of-file, so monitors the server never used go away when it
//! stops, is killed, or drops them ([`MonitorPool::drain`]). A launch that finds none ready
//! (or one that died) starts one as before.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::monitor::{command_line, Assignment};

pub struct MonitorPool {
    exe: PathBuf,
    crun: PathBuf,
    /// Where monitors write until they have a sandbox (then it is its `monitor.log`): what a
    /// monitor says before it is assigned, e.g. that it could not start, is kept here.
    early_log: PathBuf,
    size: usize,
    ready: Mutex<VecDeque<Child>>,
    /// Monitors being started by refills, counted so concurrent refills never overshoot.
    starting: AtomicUsize,
    /// Set by `drain`: no more standby monitors are started.
    closed: AtomicBool,
}

/// A monitor handed a sandbox.
pub struct Assigned {
    pub child: Child,
    /// Whether it was a standby one (started before this launch).
    pub was_standby: bool,
}

impl MonitorPool {
    pub fn new(exe: &Path, crun: &Path, early_log: &Path, size: usize) -> MonitorPool {
        MonitorPool {
            exe: exe.to_path_buf(),
            crun: crun.to_path_buf(),
            early_log: early_log.to_path_buf(),
            size,
            ready: Mutex::new(VecDeque::new()),
            starting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Where monitors write before they have a sandbox.
    pub fn early_log(&self) -> &Path {
        &self.early_log
    }

    /// Starts a monitor waiting for its assignment.
    fn start(&self) -> std::io::Result<Child> {
        let early_log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.early_log)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot open {} for the monitor's output: {e}",
                        self.early_log.display()
                    ),
                )
            })?;
        Command::new(&self.exe)
            .args(command_line(&self.crun))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(early_log)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot start the monitor {}: {e}", self.exe.display()),
                )
            })
    }

    /// Starts standby monitors until `size` are ready (dropping any that died meanwhile).
    /// Call from within the async runtime.
    pub fn refill(&self) {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let ready = {
                let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                ready.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                ready.len()
            };
            let starting = self.starting.fetch_add(1, Ordering::SeqCst);
            if ready + starting >= self.size {
                self.starting.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let started = self.start();
            self.starting.fetch_sub(1, Ordering::SeqCst);
            match started {
                Ok(child) => {
                    let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                    // Drained while it started: it is let go like the others.
                    if !self.closed.load(Ordering::SeqCst) {
                        ready.push_back(child);
                    }
                }
                Err(e) => {
                    tracing::warn!("no standby monitor: {e}");
                    return;
                }
            }
        }
    }

    /// A standby monitor that is still alive, if any.
    fn take_ready(&self) -> Option<Child> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut child) = ready.pop_front() {
            if matches!(child.try_wait(), Ok(None)) {
                return Some(child);
            }
        }
        None
    }

    /// Hands `assignment` to a monitor, a standby one if one is ready and `standby` allows it,
    /// and returns it (its stdout carries the handshake).
    pub async fn assign(
        &self,
        assignment: &Assignment,
        standby: bool,
    ) -> std::io::Result<Assigned> {
        let mut line = serde_json::to_vec(assignment)?;
        line.push(b'\n');
        if let Some(mut child) = standby.then(|| self.take_ready()).flatten() {
            // It can still have died since: then a fresh one gets the sandbox.
            if tell(&mut child, &line).await.is_ok() {
                return Ok(Assigned {
                    child,
                    was_standby: true,
                });
            }
        }
        let mut child = self.start()?;
        tell(&mut child, &line).await?;
        Ok(Assigned {
            child,
            was_standby: false,
        })
    }

    /// Lets every standby monitor go (they exit at end-of-file) and starts no more.
    pub fn drain(&self) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::SeqCst);
        ready.clear();
    }

    /// Standby monitors ready now (for tests).
    pub fn ready_pids(&self) -> Vec<u32> {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Child::id)
            .collect()
    }
}

/// Writes the assignment and closes the monitor's stdin.
async fn tell(child: &mut Child, line: &[u8]) -> std::io::Result<()> {
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the monitor's stdin is gone"))?;
    stdin.write_all(line).await?;
    stdin.flush().await
}
