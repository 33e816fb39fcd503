//! The warm pool: a few network namespaces created and wired to the bridge ahead of time, so a
//! launch takes one instead of paying for `ip netns add` and the veth wiring (the larger part
//! of a launch that is not crun itself). A launch that finds the pool empty wires its own.
//!
//! A prepared namespace belongs to no sandbox and has no verdict-map entry, so every packet it
//! sends is dropped until its sandbox's rules are installed. Each one is recorded in
//! `<runtime>/net/pool/<address>.json`; a server that starts again removes the ones its
//! predecessor left, and [`WarmPool::drain`] removes them at shutdown.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::network::{Network, SandboxNet, POOL_OWNER};

/// A namespace ready to be handed to a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    /// Names the lease owner (`warm-pool:<token>`) and the namespace.
    pub token: String,
    pub net: SandboxNet,
}

pub struct WarmPool {
    size: usize,
    dir: PathBuf,
    ready: Mutex<VecDeque<Prepared>>,
    /// Preparations under way, counted so concurrent refills never overshoot `size`.
    in_flight: AtomicUsize,
    /// Set by `drain`: preparations that finish afterwards are removed, not kept.
    closed: AtomicBool,
    counter: AtomicU64,
}

impl WarmPool {
    pub fn new(size: usize, net_state: &Path) -> Result<WarmPool, String> {
        let dir = net_state.join("pool");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(WarmPool {
            size,
            dir,
            ready: Mutex::new(VecDeque::new()),
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            counter: AtomicU64::new(0),
        })
    }

    fn record_path(&self, p: &Prepared) -> PathBuf {
        self.dir.join(format!("{}.json", p.net.address))
    }

    /// A prepared namespace, if one is ready.
    pub fn take(&self) -> Option<Prepared> {
        let p = self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()?;
        let _ = std::fs::remove_file(self.record_path(&p));
        Some(p)
    }

    /// Prepares namespaces until `size` are ready or being prepared. Failures are logged and
    /// leave the pool smaller: launches then wire their own namespace, as without a pool.
    pub async fn refill(self: Arc<Self>, network: Arc<Network>) {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner()).len();
            let flying = self.in_flight.fetch_add(1, Ordering::SeqCst);
            if ready + flying >= self.size {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let token = format!(
                "{}-{}-{}",
                std::process::id(),
                self.counter.fetch_add(1, Ordering::Relaxed),
                crate::monitor::now_secs()
            );
            let made = network.prepare_unassigned(&token).await;
            let kept = self.keep(&network, token, made).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !kept {
                return;
            }
        }
    }

    /// Records and queues a prepared namespace; false (and nothing kept) when it could not be
    /// prepared or recorded, or the pool was drained meanwhile.
    async fn keep(
        &self,
        network: &Network,
        token: String,
        made: Result<SandboxNet, String>,
    ) -> bool {
        let net = match made {
            Ok(net) => net,
            Err(e) => {
                tracing::warn!(error = %e, "could not prepare a network namespace for the warm pool");
                return false;
            }
        };
        let p = Prepared { token, net };
        let recorded = serde_json::to_vec(&p)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                crate::monitor::write_atomic(&self.record_path(&p), &json)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record a warm-pool namespace; removing it");
            remove(network, &p).await;
            return false;
        }
        if self.closed.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(self.record_path(&p));
            remove(network, &p).await;
            return false;
        }
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(p);
        true
    }

    /// Removes every prepared namespace and stops refilling (server shutdown, tests).
    pub async fn drain(&self, network: &Network) {
        self.closed.store(true, Ordering::SeqCst);
        // Preparations under way remove their own namespace when they see `closed`; wait for
        // them so nothing outlives the drain.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.in_flight.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        while let Some(p) = self.take() {
            remove(network, &p).await;
        }
    }

    /// Removes the namespaces a previous server process prepared and never handed out.
    pub async fn remove_stale(&self, network: &Network) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if let Ok(p) =
                serde_json::from_slice::<Prepared>(&std::fs::read(&path).unwrap_or_default())
            {
                remove(network, &p).await;
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}

async fn remove(network: &Network, p: &Prepared) {
    if let Err(e) = network.teardown(&p.net).await {
        tracing::warn!(error = %e, "removing a warm-pool namespace was incomplete");
    }
    network.release(p.net.address, &format!("{POOL_OWNER}{}", p.token));
}
