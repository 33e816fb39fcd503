//! The warm pool: a few network namespaces created and wired to the bridge ahead of time, so a
//! launch takes one instead of paying for `ip netns add` and the veth wiring (the larger part
//! of a launch that is not crun itself). A launch that finds the pool empty wires its own.
//!
//! A prepared namespace belongs to no sandbox and has no verdict-map entry, so every packet it
//! sends is dropped until its sandbox's rules are installed. Its address lease names it
//! (`warm-pool:<token>`, the namespace's names derive from the token), so a server that starts
//! again finds and removes what its predecessor prepared and never handed out, whenever it was
//! killed; [`WarmPool::drain`] removes them at shutdown.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::network::{Network, SandboxNet, POOL_OWNER};

/// A namespace ready to be handed to a sandbox.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Names the lease owner (`warm-pool:<token>`) and the namespace.
    pub token: String,
    pub net: SandboxNet,
}

pub struct WarmPool {
    size: usize,
    ready: Mutex<VecDeque<Prepared>>,
    /// Preparations under way, counted so concurrent refills never overshoot `size`.
    in_flight: AtomicUsize,
    /// Set by `drain`: preparations that finish afterwards are removed, not kept.
    closed: AtomicBool,
    counter: AtomicU64,
}

impl WarmPool {
    /// Failed preparations after which a refill gives up until the next launch.
    const ATTEMPTS: u64 = 3;

    pub fn new(size: usize) -> WarmPool {
        WarmPool {
            size,
            ready: Mutex::new(VecDeque::new()),
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            counter: AtomicU64::new(0),
        }
    }

    /// A prepared namespace, if one is ready.
    pub fn take(&self) -> Option<Prepared> {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Returns a namespace a launch took but could not use (it was never recorded as the
    /// launch's). After a drain it stays on the host until the next start removes it.
    pub fn put_back(&self, prepared: Prepared) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_front(prepared);
    }

    /// Prepares namespaces until `size` are ready or being prepared. A failure is logged and
    /// retried a few times (a busy host's `ip` can fail transiently); after that the pool
    /// stays smaller until the next launch refills it, and launches wire their own namespace
    /// meanwhile, as without a pool.
    pub async fn refill(self: Arc<Self>, network: Arc<Network>) {
        let mut failures = 0;
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
            // The bridge makes tokens (and the interface names hashed from them) unique
            // between runtimes in one process too.
            let token = format!(
                "{}-{}-{}-{}",
                network.bridge,
                std::process::id(),
                self.counter.fetch_add(1, Ordering::Relaxed),
                crate::monitor::now_secs()
            );
            let prepared = network.prepare_unassigned(&token).await;
            let kept = match prepared {
                Ok(net) => Some(self.keep(&network, Prepared { token, net }).await),
                Err(e) => {
                    tracing::warn!(error = %e, attempt = failures + 1, "could not prepare a network namespace for the warm pool");
                    None
                }
            };
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            match kept {
                Some(true) => {}
                // Drained meanwhile.
                Some(false) => return,
                None => {
                    failures += 1;
                    if failures >= Self::ATTEMPTS {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * failures)).await;
                }
            }
        }
    }

    /// Queues a prepared namespace, or removes it if the pool was drained meanwhile.
    async fn keep(&self, network: &Network, p: Prepared) -> bool {
        if self.closed.load(Ordering::SeqCst) {
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while let Some(p) = self.take() {
            remove(network, &p).await;
        }
    }

    /// Removes the namespaces a previous server process prepared and never handed out (found
    /// by their leases). Call before this process prepares any.
    pub async fn remove_stale(&self, network: &Network) {
        for (address, token) in network.pool_leases() {
            let net = network.unassigned(&token, address);
            remove(network, &Prepared { token, net }).await;
        }
    }
}

async fn remove(network: &Network, p: &Prepared) {
    if let Err(e) = network.teardown(&p.net).await {
        tracing::warn!(error = %e, "removing a warm-pool namespace was incomplete");
    }
    network.release(&p.net, &format!("{POOL_OWNER}{}", p.token));
}
