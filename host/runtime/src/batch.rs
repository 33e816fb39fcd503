//! Coalesces `nft` scripts submitted while one is being applied into a single run. `nft` reads
//! the table on every invocation and a run costs 8–16 ms even for one set element, so under a
//! burst of launches one call for many sandboxes is far cheaper than one call each, and the
//! calls no longer queue behind each other. A script is applied atomically with the rest of
//! its batch; when a batch fails, each of its scripts is applied on its own, so one sandbox's
//! bad rules fail only that sandbox's launch.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use tokio::sync::oneshot;

type Outcome = Result<(), String>;
type RunFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Runs scripts through `run` (for Nimbus: `nft -f -`), batching concurrent submissions.
pub struct ScriptBatcher {
    run: Box<dyn Fn(String) -> RunFuture + Send + Sync>,
    pending: Mutex<Vec<(String, oneshot::Sender<Outcome>)>>,
    /// Held by whoever is applying a batch; the others queue their script meanwhile.
    lane: tokio::sync::Mutex<()>,
}

impl ScriptBatcher {
    pub fn new(run: impl Fn(String) -> RunFuture + Send + Sync + 'static) -> ScriptBatcher {
        ScriptBatcher {
            run: Box::new(run),
            pending: Mutex::new(Vec::new()),
            lane: tokio::sync::Mutex::new(()),
        }
    }

    /// Applies `script`, alone or together with others submitted meanwhile, and returns its
    /// own outcome.
    pub async fn apply(&self, script: String) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.queue().push((script.clone(), tx));
        {
            // Whoever gets the lane applies everything queued so far, which may include this
            // script (or it was already applied by the previous holder).
            let _lane = self.lane.lock().await;
            let batch = std::mem::take(&mut *self.queue());
            self.run_batch(batch).await;
        }
        match rx.await {
            Ok(outcome) => outcome,
            // The holder that took this script was cancelled mid-run: apply it alone.
            Err(_) => (self.run)(script).await,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<(String, oneshot::Sender<Outcome>)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run_batch(&self, batch: Vec<(String, oneshot::Sender<Outcome>)>) {
        if batch.is_empty() {
            return;
        }
        let whole: String = batch.iter().map(|(s, _)| s.as_str()).collect();
        let outcome = (self.run)(whole).await;
        if outcome.is_ok() || batch.len() == 1 {
            for (_, tx) in batch {
                let _ = tx.send(outcome.clone());
            }
            return;
        }
        for (script, tx) in batch {
            let _ = tx.send((self.run)(script).await);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn batcher(calls: Arc<AtomicUsize>) -> Arc<ScriptBatcher> {
        Arc::new(ScriptBatcher::new(move |script: String| {
            let calls = calls.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if script.contains("bad") {
                    Err(format!("rejected: {script}"))
                } else {
                    Ok(())
                }
            })
        }))
    }

    #[tokio::test]
    async fn concurrent_scripts_share_runs() {
        let calls = Arc::new(AtomicUsize::new(0));
        let b = batcher(calls.clone());
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.apply(format!("add element {i}\n")).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(()));
        }
        // The first run goes alone; everything submitted meanwhile waits for the next one.
        let n = calls.load(Ordering::SeqCst);
        assert!((1..=3).contains(&n), "20 scripts took {n} runs");
    }

    #[tokio::test]
    async fn a_bad_script_fails_alone() {
        let calls = Arc::new(AtomicUsize::new(0));
        let b = batcher(calls.clone());
        // Hold the lane so the next three are batched together.
        let first = {
            let b = b.clone();
            tokio::spawn(async move { b.apply("first\n".into()).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let tasks: Vec<_> = ["ok-1\n", "bad\n", "ok-2\n"]
            .into_iter()
            .map(|s| {
                let b = b.clone();
                tokio::spawn(async move { (s, b.apply(s.into()).await) })
            })
            .collect();
        assert_eq!(first.await.unwrap(), Ok(()));
        for t in tasks {
            let (script, outcome) = t.await.unwrap();
            assert_eq!(outcome.is_err(), script == "bad\n", "{script}: {outcome:?}");
        }
    }
}
