//! Monitors started ahead of launches (as many as `runtime.warm_pool`), so a launch hands its
//! arguments to a process that is already running instead of paying for spawning one: about
//! 1–2 ms of a start on a 2-core VM, the exec of the monitor while the server waits.
//!
//! A standby monitor is `<monitor exe> __monitor --standby <runtime root>` reading stdin. It
//! gets its arguments (see [`crate::monitor::MonitorArgs::to_standby_input`]) and an EOF, and
//! from then on is exactly the monitor a launch would have started. The server holds the write
//! end of its stdin; when the server stops or dies the monitor reads EOF and exits, so nothing
//! is left behind that a later start has to clean up.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::io::AsyncWriteExt;
use tokio::process::Child;

use crate::monitor::{MonitorArgs, MONITOR_ARG, STANDBY_ARG};

pub struct StandbyMonitors {
    exe: PathBuf,
    /// Shown in the standby's command line, so `ps` says whose it is.
    root: PathBuf,
    size: usize,
    ready: Mutex<VecDeque<Child>>,
    /// Set by `drain`: no more are started.
    closed: AtomicBool,
}

impl StandbyMonitors {
    pub fn new(exe: PathBuf, root: PathBuf, size: usize) -> StandbyMonitors {
        StandbyMonitors {
            exe,
            root,
            size,
            ready: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Hands `args` to a standby monitor and returns it, now running them; `None` when none is
    /// ready (or the one taken had died), and the caller starts a monitor itself.
    pub async fn assign(&self, args: &MonitorArgs) -> Option<Child> {
        loop {
            let mut child = self
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()?;
            let Some(mut stdin) = child.stdin.take() else {
                continue;
            };
            // Dropping `stdin` after the write is the EOF the monitor waits for.
            match stdin.write_all(&args.to_standby_input()).await {
                Ok(()) => return Some(child),
                Err(e) => tracing::debug!("a standby monitor could not take its arguments: {e}"),
            }
        }
    }

    /// Starts standby monitors until `size` are ready. A failure is logged and leaves fewer:
    /// launches then start their own monitor, as without standbys.
    pub fn refill(&self) {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            if ready.len() >= self.size {
                return;
            }
            let spawned = tokio::process::Command::new(&self.exe)
                .arg(MONITOR_ARG)
                .arg(STANDBY_ARG)
                .arg(&self.root)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            match spawned {
                Ok(child) => ready.push_back(child),
                Err(e) => {
                    tracing::warn!("cannot start a standby monitor {}: {e}", self.exe.display());
                    return;
                }
            }
        }
    }

    /// Lets every standby monitor go (each reads EOF and exits) and starts no more.
    pub fn drain(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
