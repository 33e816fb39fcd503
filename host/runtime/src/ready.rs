//! What launches take ready-made instead of making it on their path: network namespaces (the
//! warm pool, pool.rs) and sandbox disks (disks.rs). A queue kept at its size by background
//! refills, each item given back when a launch could not use it, and emptied at shutdown.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct ReadyQueue<T> {
    size: usize,
    ready: Mutex<VecDeque<T>>,
    /// Preparations under way, counted so concurrent refills never overshoot `size`.
    in_flight: AtomicUsize,
    /// Set by `drain`: preparations that finish afterwards are undone, not kept.
    closed: AtomicBool,
}

impl<T> ReadyQueue<T> {
    /// Failed preparations after which a refill gives up until the next one is asked for
    /// (launches make their own meanwhile).
    const ATTEMPTS: u32 = 3;

    pub fn new(size: usize) -> Self {
        ReadyQueue {
            size,
            ready: Mutex::new(VecDeque::new()),
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready item, if there is one.
    pub fn take(&self) -> Option<T> {
        self.lock().pop_front()
    }

    /// Returns an item a launch took but could not use. After a drain it stays queued until
    /// the process ends (the next start finds and removes what it left).
    pub fn put_back(&self, item: T) {
        self.lock().push_front(item);
    }

    /// Calls `f` with the items ready now.
    pub fn with_ready<R>(&self, f: impl FnOnce(&VecDeque<T>) -> R) -> R {
        f(&self.lock())
    }

    /// Prepares items with `prepare` until `size` are ready or under way. A failure is logged
    /// (naming `what`) and retried a few times, waiting longer each time (a busy host's tools
    /// can fail transiently); after that the queue stays short until the next refill. An item
    /// that is ready after a drain is given to `undo`.
    pub async fn refill<P, PF, U, UF>(&self, what: &str, mut prepare: P, undo: U)
    where
        P: FnMut() -> PF,
        PF: Future<Output = Result<T, String>>,
        U: Fn(T) -> UF,
        UF: Future<Output = ()>,
    {
        let mut failures = 0;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let ready = self.lock().len();
            let flying = self.in_flight.fetch_add(1, Ordering::SeqCst);
            if ready + flying >= self.size {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let kept = match prepare().await {
                Ok(item) if self.closed.load(Ordering::SeqCst) => {
                    undo(item).await;
                    false
                }
                Ok(item) => {
                    self.lock().push_back(item);
                    true
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, attempt = failures, "could not prepare {what} ahead of launches");
                    false
                }
            };
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !kept {
                if self.closed.load(Ordering::SeqCst) || failures >= Self::ATTEMPTS {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            }
        }
    }

    /// Stops refilling, waits (up to 10 s) for preparations under way, which undo their own
    /// item, and gives every ready item to `undo` (server shutdown, tests).
    pub async fn drain<U, UF>(&self, undo: U)
    where
        U: Fn(T) -> UF,
        UF: Future<Output = ()>,
    {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ready: Vec<T> = self.lock().drain(..).collect();
        for item in ready {
            undo(item).await;
        }
    }
}
