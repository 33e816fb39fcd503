//! The seam between the API and whatever runs sandboxes. The API records desired state in the
//! store and tells the controller through this trait; it never calls a driver itself.

use std::future::Future;
use std::pin::Pin;

use nimbus_core::names::{Name, SandboxId};
use nimbus_core::spec::SandboxSpec;

/// Whether a sandbox's record committed: `None` while the write is in flight, then
/// `Some(committed)`. A dropped sender counts as not committed.
pub type Commit = tokio::sync::watch::Receiver<Option<bool>>;

/// A [`Commit`] for a record written long ago (a launch resumed after a restart).
pub fn already_committed() -> Commit {
    tokio::sync::watch::channel(Some(true)).1
}

/// Waits for the outcome of the write `commit` follows.
pub async fn committed(mut commit: Commit) -> bool {
    match commit.wait_for(Option::is_some).await {
        Ok(outcome) => *outcome == Some(true),
        Err(_) => false,
    }
}
use nimbus_core::Error;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The seam between the API and the service manager, which launches and supervises the
/// sandboxes of started sandbox-backed services.
pub trait ServiceControl: Send + Sync {
    /// A service was created, started, stopped, updated or deleted: reconcile now rather than
    /// at the next pass.
    fn changed(&self);
    /// Replaces the running sandbox of `service` (tenant, uid) with a new one, now and without
    /// waiting out a crash backoff. The current sandbox is recorded `stopping` before this
    /// returns, so a restart the server answered survives the server's own restart.
    fn restart<'a>(&'a self, tenant: &'a Name, uid: &'a str) -> BoxFuture<'a, Result<(), Error>>;
}

pub trait SandboxControl: Send + Sync {
    /// What stops sandboxes from running on this host right now (`runtime.unavailable`), one
    /// problem each, if anything does.
    fn unavailable(&self) -> Option<Vec<String>>;
    /// Sandbox `id` with `spec` is being recorded as `pending`: launch it. The launch may
    /// prepare while the record is written, and starts the process only once `commit` says the
    /// write committed (it is undone if not).
    fn launch(&self, tenant: Name, id: SandboxId, spec: SandboxSpec, commit: Commit);
    /// Sandbox `id` was recorded as `stopping`: stop its process.
    fn stop(&self, tenant: Name, id: SandboxId);
    /// Removes every trace of the sandbox from the host; called before its record is deleted.
    fn teardown<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<(), Error>>;
    /// The sandbox's output, as chunks; with `follow`, until the process exits (waiting for
    /// the process first when the sandbox is still being launched).
    fn logs<'a>(
        &'a self,
        tenant: &'a Name,
        id: &'a SandboxId,
        follow: bool,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<Vec<u8>>, Error>>;
    /// A connection to the running process's stdio: its output from now on, and its stdin.
    fn attach<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<Attached, Error>>;
    /// The sandbox's root filesystem, from its launch until its delete.
    fn files(&self, id: &SandboxId) -> Result<Box<dyn SandboxFiles>, Error>;
}

/// Files in a sandbox's root filesystem. Paths are absolute inside the sandbox and resolved
/// there (symlinks and `..` never leave it). The calls block: run them on a blocking thread.
pub trait SandboxFiles: Send + Sync {
    /// The regular file at `path`, open for reading.
    fn read(&self, path: &str) -> Result<std::fs::File, Error>;
    /// Replaces (or creates, with missing parent directories) the file at `path`; returns the
    /// size written.
    fn write(&self, path: &str, bytes: &[u8]) -> Result<u64, Error>;
    /// Removes the file, symlink or empty directory at `path`.
    fn delete(&self, path: &str) -> Result<(), Error>;
    /// The entries of the directory at `path`, sorted by name, and whether there were more
    /// than a listing returns.
    fn list(&self, path: &str) -> Result<(Vec<FileEntry>, bool), Error>;
}

/// One directory entry, as the files channel lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    /// Permission bits (e.g. 420 for 0644).
    pub mode: u32,
    /// Last modification, seconds since the Unix epoch.
    pub modified: i64,
}

/// What a client sends to an attached process's stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinInput {
    Bytes(bytes::Bytes),
    /// Closes stdin: the process reads end-of-file.
    Close,
}

/// A live connection to a running process's stdio.
pub struct Attached {
    /// The process's output (stdout and stderr) from the moment of attaching; it ends when the
    /// process has exited, or when the monitor disconnects this client (see `ended`).
    pub output: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    /// Input for its stdin, written in order. Dropping it leaves stdin open.
    pub input: StdinSender,
    /// The task writing `input` to the process. It ends once `input` is dropped and what was
    /// queued is written (or cannot be); whoever drops `input` makes sure it does not outlive
    /// that for long (a process that never reads would keep it, and its connection, forever).
    pub writer: tokio::task::JoinHandle<()>,
    /// How `output` ended; asked once it has. May read the sandbox's state dir: call it on a
    /// blocking thread.
    pub ended: Box<dyn Fn() -> OutputEnded + Send + Sync>,
}

/// How an attached client's output ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputEnded {
    /// The process exited and the client was sent all of its output.
    Exited,
    /// The client was disconnected before the end of the output (it read too slowly, too many
    /// clients were attached, or it was still reading when the process's monitor had to go);
    /// `running` says whether the process still runs (then it can attach again).
    Cut { running: bool },
    /// The sandbox's monitor, which holds the process's stdio, is gone: the sandbox is lost
    /// (its status says so), and attaching again cannot work.
    Lost,
}

/// The sending side of a stdin queue bounded in bytes (not in messages: a few large messages
/// must not pin a lot of memory behind a process that does not read its stdin).
pub struct StdinSender {
    tx: tokio::sync::mpsc::UnboundedSender<(StdinInput, tokio::sync::OwnedSemaphorePermit)>,
    budget: std::sync::Arc<tokio::sync::Semaphore>,
    bytes: usize,
}

/// Input taken from a [`StdinSender`]; dropping the permit gives its bytes back to the queue
/// (drop it once the input is written).
pub type StdinReceiver =
    tokio::sync::mpsc::UnboundedReceiver<(StdinInput, tokio::sync::OwnedSemaphorePermit)>;

/// What each queued input costs beyond its bytes, so that many tiny messages are bounded too.
const STDIN_INPUT_OVERHEAD: usize = 64;

/// A stdin queue holding at most `bytes` (an input larger than that waits for an empty queue).
pub fn stdin_queue(bytes: usize) -> (StdinSender, StdinReceiver) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let bytes = bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(bytes));
    (StdinSender { tx, budget, bytes }, rx)
}

impl StdinSender {
    /// Queues `input`, waiting for room; `Err` once the writer is gone.
    pub async fn send(&self, input: StdinInput) -> Result<(), ()> {
        let len = match &input {
            StdinInput::Bytes(b) => b.len(),
            StdinInput::Close => 0,
        };
        let cost = (len + STDIN_INPUT_OVERHEAD).min(self.bytes);
        let room = self
            .budget
            .clone()
            .acquire_many_owned(u32::try_from(cost).unwrap_or(u32::MAX));
        // A writer that is gone never gives room back: do not wait for it.
        let permit = tokio::select! {
            permit = room => permit.map_err(|_| ())?,
            _ = self.tx.closed() => return Err(()),
        };
        self.tx.send((input, permit)).map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_commit_says_what_the_write_did_and_a_dropped_writer_counts_as_not_committed() {
        assert!(committed(already_committed()).await);
        let (tx, rx) = tokio::sync::watch::channel(None);
        let waiting = tokio::spawn(committed(rx));
        tx.send(Some(false)).unwrap();
        assert!(!waiting.await.unwrap());
        let (tx, rx) = tokio::sync::watch::channel(None::<bool>);
        drop(tx);
        assert!(!committed(rx).await);
    }

    #[tokio::test]
    async fn a_stdin_queue_is_bounded_in_bytes() {
        let (input, mut rx) = stdin_queue(1000);
        let big = || StdinInput::Bytes(bytes::Bytes::from(vec![0u8; 600]));
        input.send(big()).await.unwrap();
        // A second one does not fit until the first is taken and written.
        let second = tokio::time::timeout(std::time::Duration::from_millis(50), input.send(big()));
        assert!(second.await.is_err(), "waits for room");
        let (first, permit) = rx.recv().await.unwrap();
        assert_eq!(first, big());
        drop(permit);
        input.send(big()).await.unwrap();
        // Larger than the whole queue: still goes, once the queue is empty.
        drop(rx.recv().await.unwrap());
        input
            .send(StdinInput::Bytes(bytes::Bytes::from(vec![0u8; 5000])))
            .await
            .unwrap();
        drop(rx);
        assert!(input.send(StdinInput::Close).await.is_err());
    }
}
