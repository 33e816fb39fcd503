//! The warm pool: a few network namespaces created and wired to the bridge ahead of time, so a
//! launch takes one instead of paying for `ip netns add` and the veth wiring (the larger part
//! of a launch that is not crun itself). A launch that finds the pool empty wires its own.
//!
//! A prepared namespace belongs to no sandbox and has no verdict-map entry, so every packet it
//! sends is dropped until its sandbox's rules are installed. Its address lease names it
//! (`warm-pool:<token>`, the namespace's names derive from the token), so a server that starts
//! again finds and removes what its predecessor prepared and never handed out, whenever it was
//! killed; [`WarmPool::drain`] removes them at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::network::{Network, SandboxNet, POOL_OWNER};
use crate::ready::ReadyQueue;

/// A namespace ready to be handed to a sandbox.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Names the lease owner (`warm-pool:<token>`) and the namespace.
    pub token: String,
    pub net: SandboxNet,
}

pub struct WarmPool {
    queue: ReadyQueue<Prepared>,
    counter: AtomicU64,
}

impl WarmPool {
    pub fn new(size: usize) -> WarmPool {
        WarmPool {
            queue: ReadyQueue::new(size),
            counter: AtomicU64::new(0),
        }
    }

    /// A prepared namespace, if one is ready.
    pub fn take(&self) -> Option<Prepared> {
        self.queue.take()
    }

    /// Returns a namespace a launch took but could not use (it was never recorded as the
    /// launch's). After a drain it stays on the host until the next start removes it.
    pub fn put_back(&self, prepared: Prepared) {
        self.queue.put_back(prepared);
    }

    /// Prepares namespaces until the pool is full (see [`ReadyQueue::refill`]); launches wire
    /// their own namespace while it is not, as without a pool.
    pub async fn refill(self: Arc<Self>, network: Arc<Network>) {
        let prepare = || {
            // The bridge makes tokens (and the interface names hashed from them) unique
            // between runtimes in one process too.
            let token = format!(
                "{}-{}-{}-{}",
                network.bridge,
                std::process::id(),
                self.counter.fetch_add(1, Ordering::Relaxed),
                crate::monitor::now_secs()
            );
            let network = &network;
            async move {
                let net = network.prepare_unassigned(&token).await?;
                Ok(Prepared { token, net })
            }
        };
        self.queue
            .refill("a network namespace for the warm pool", prepare, |p| {
                let network = network.clone();
                async move { remove(&network, &p).await }
            })
            .await;
    }

    /// Removes every prepared namespace and stops refilling (server shutdown, tests).
    pub async fn drain(&self, network: &Network) {
        self.queue
            .drain(|p| async move { remove(network, &p).await })
            .await;
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
