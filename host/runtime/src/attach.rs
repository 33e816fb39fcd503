//! The attach socket: how a client reaches a running sandbox's stdio through its monitor.
//!
//! The monitor owns the container's stdin (a pipe it keeps open) and its output (one pipe for
//! stdout and stderr, which it copies into the log). It listens on `attach.sock` in the
//! sandbox's state dir, so a stdio session can attach at any time while the process runs, also
//! after a server restart: the monitor, not the server, holds the pipes.
//!
//! Protocol, per connection (a Unix stream socket; only root can reach the private data dir):
//! - monitor → client: the process's output from the moment of connecting (the log keeps the
//!   history), in records of `[len: u32 big-endian][len bytes]`. When the process has exited
//!   and this client has been sent all of its output, the monitor sends the end record
//!   ([`OUTPUT_END`] as the length, no bytes) and closes the connection. A connection that
//!   closes without it was cut: the client read too slowly, was over [`MAX_CLIENTS`], or was
//!   still reading when the monitor had to go; its output is incomplete.
//!   (Monitors before this protocol listened on [`LEGACY_SOCKET`] and sent raw bytes with no
//!   end record; a client that read end-of-file while the process still ran had been cut.)
//! - client → monitor: frames of `[kind: u8][len: u32 big-endian][len bytes]`. Kind
//!   [`FRAME_STDIN`] writes the bytes to the process's stdin; [`FRAME_CLOSE_STDIN`] (no bytes)
//!   closes it, so the process reads end-of-file, for every client. A connection that closes
//!   without it leaves stdin open for the next one.
//!
//! A client that reads its output too slowly is disconnected (the monitor never lets one
//! client hold up the process's output or the log); it can attach again.
//!
//! Stdin is written by one thread of its own from a queue bounded in bytes
//! ([`STDIN_QUEUE_BYTES`]); a client whose input does not fit waits (its socket fills, which
//! holds up its sender) for as long as it stays connected. No client thread ever blocks on the
//! pipe itself, so a process that never reads its stdin cannot pin client threads: a client
//! that hangs up is let go (its waiting input with it, after [`DEPARTED_GRACE`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The socket's name in the sandbox's state dir.
pub const SOCKET: &str = "attach-v2.sock";
/// The socket of monitors started by an older server (raw output, no end record), which a
/// server reaches for as long as their sandboxes run.
pub const LEGACY_SOCKET: &str = "attach.sock";
/// The length that marks the end record: all of the process's output was sent.
pub const OUTPUT_END: u32 = u32::MAX;
/// Frame kind: bytes for the process's stdin.
pub const FRAME_STDIN: u8 = 0;
/// Frame kind: close the process's stdin.
pub const FRAME_CLOSE_STDIN: u8 = 1;
/// The largest frame the monitor accepts; larger writes are split by the client.
pub const MAX_FRAME: usize = 64 * 1024;
/// Clients connected at once. Each costs two small threads, so this bounds what a flood of
/// attaches can take from the monitor; one over it is disconnected at once (it reads
/// end-of-file while the process runs). The server refuses attaches earlier, below this.
pub const MAX_CLIENTS: usize = 32;
/// Stdin input queued in the monitor (all clients together, the frame being written
/// included) before clients wait for the process to read.
pub const STDIN_QUEUE_BYTES: usize = 256 * 1024;
/// How long input of a client that has hung up may wait for room in the stdin queue before it
/// is dropped with its client ("send and hang up" reaches a process that reads, without a
/// process that does not read keeping the client's threads forever).
pub const DEPARTED_GRACE: Duration = Duration::from_secs(5);
/// Output chunks queued for one client before it counts as too slow and is disconnected.
const CLIENT_QUEUE: usize = 256;
/// How often a waiting client thread checks that its client is still connected.
const LIVENESS_CHECK: Duration = Duration::from_millis(200);
/// After a failed accept (out of file descriptors or memory): wait, then accept again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Client threads do little; small stacks keep [`MAX_CLIENTS`] of them cheap.
const CLIENT_STACK: usize = 128 * 1024;

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// A frame for `bytes` of stdin (callers keep `bytes` within [`MAX_FRAME`]).
pub fn stdin_frame(bytes: &[u8]) -> Vec<u8> {
    frame(FRAME_STDIN, bytes)
}

/// The frame that closes the process's stdin.
pub fn close_stdin_frame() -> Vec<u8> {
    frame(FRAME_CLOSE_STDIN, &[])
}

fn frame(kind: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + bytes.len());
    out.push(kind);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// How a client's output ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputEnd {
    /// The process exited and all of its output was sent (the end record came).
    Complete,
    /// The connection closed without the end record: the client was cut (too slow, too many
    /// clients, or still reading when the monitor had to go), or the monitor died.
    Cut,
    /// A monitor of an older server, which sends no end record: whether the process still
    /// runs tells the two apart (one that runs cut the client).
    Unknown,
}

/// Where a client learns how its output ended, once it has.
#[derive(Clone, Default)]
pub struct OutputEndWatch(Arc<std::sync::OnceLock<OutputEnd>>);

impl OutputEndWatch {
    /// How the output ended; `None` while it goes on.
    pub fn get(&self) -> Option<OutputEnd> {
        self.0.get().copied()
    }

    fn set(&self, end: OutputEnd) {
        let _ = self.0.set(end);
    }
}

/// A client's connection to a sandbox's stdio: the process's output as plain bytes (the
/// records unwrapped), and the monitor's side for stdin frames.
pub struct Attachment {
    /// The output; it ends when the monitor closes the connection. Set in [`Self::end`] by then.
    pub output: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    /// Where stdin frames go ([`stdin_frame`], [`close_stdin_frame`]).
    pub input: tokio::net::unix::OwnedWriteHalf,
    /// How the output ended.
    pub end: OutputEndWatch,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("end", &self.end.get())
            .finish_non_exhaustive()
    }
}

/// The most a client's read takes from the connection at once.
const UNWRAP_CHUNK: usize = 64 * 1024;

impl Attachment {
    /// A connection to a monitor of this protocol: the output's records are unwrapped as the
    /// client reads, and [`Self::end`] says how the output ended by the time it reads the end.
    pub fn new(conn: tokio::net::UnixStream) -> Attachment {
        let (from_monitor, input) = conn.into_split();
        let end = OutputEndWatch::default();
        Attachment {
            output: Box::new(Unwrap {
                from_monitor,
                header: [0; 4],
                have: 0,
                left: 0,
                scratch: Vec::new(),
                end: end.clone(),
            }),
            input,
            end,
        }
    }

    /// A connection to a monitor of an older server: raw output, no end record.
    pub fn legacy(conn: tokio::net::UnixStream) -> Attachment {
        let (output, input) = conn.into_split();
        let end = OutputEndWatch::default();
        end.set(OutputEnd::Unknown);
        Attachment {
            output: Box::new(output),
            input,
            end,
        }
    }
}

/// Reads the output's records as plain bytes; at the end (the end record, or the connection
/// closing without it) notes how the output ended, then reads end-of-file. It holds no task:
/// once it and the input are dropped the connection closes, and the monitor lets the client go.
struct Unwrap {
    from_monitor: tokio::net::unix::OwnedReadHalf,
    /// The length of the next record, as far as it has come.
    header: [u8; 4],
    have: usize,
    /// Bytes of the current record not yet read.
    left: u32,
    scratch: Vec<u8>,
    end: OutputEndWatch,
}

impl tokio::io::AsyncRead for Unwrap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.end.get().is_some() {
                return Poll::Ready(Ok(()));
            }
            if this.left > 0 {
                let max = (this.left as usize).min(buf.remaining()).min(UNWRAP_CHUNK);
                if max == 0 {
                    return Poll::Ready(Ok(()));
                }
                this.scratch.resize(max, 0);
                let mut part = tokio::io::ReadBuf::new(&mut this.scratch[..max]);
                let read = std::pin::Pin::new(&mut this.from_monitor).poll_read(cx, &mut part);
                match read {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) if !part.filled().is_empty() => {
                        let n = part.filled().len();
                        buf.put_slice(part.filled());
                        this.left -= n as u32;
                        return Poll::Ready(Ok(()));
                    }
                    // Closed (or failed) inside a record: cut.
                    Poll::Ready(_) => {
                        this.end.set(OutputEnd::Cut);
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            let mut header = tokio::io::ReadBuf::new(&mut this.header[this.have..]);
            let read = std::pin::Pin::new(&mut this.from_monitor).poll_read(cx, &mut header);
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !header.filled().is_empty() => {
                    this.have += header.filled().len();
                }
                // Closed (or failed) without the end record: cut.
                Poll::Ready(_) => {
                    this.end.set(OutputEnd::Cut);
                    return Poll::Ready(Ok(()));
                }
            }
            if this.have == 4 {
                this.have = 0;
                match u32::from_be_bytes(this.header) {
                    OUTPUT_END => this.end.set(OutputEnd::Complete),
                    len => this.left = len,
                }
            }
        }
    }
}

/// A Unix socket address for `path` that fits `sun_path` (108 bytes): long paths (a deep data
/// dir) go through `/proc/self/fd` of their directory, which the returned file keeps open.
pub fn short_path(path: &Path) -> std::io::Result<(PathBuf, Option<File>)> {
    use std::os::fd::AsRawFd;
    if path.as_os_str().len() < 100 {
        return Ok((path.to_path_buf(), None));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok((path.to_path_buf(), None));
    };
    let dir = File::open(parent)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    Ok((short, Some(dir)))
}

/// One client's output queue, and whether the client was cut (its output stops short).
type OutputQueue = (SyncSender<Arc<[u8]>>, Arc<AtomicBool>);

/// What the accept thread and the client threads share.
struct Shared {
    /// The attached clients' output queues, by client id.
    clients: Mutex<Vec<(u64, OutputQueue)>>,
    /// Clients whose output writer still runs, so that [`AttachServer::finish`] can let them
    /// deliver the last output before the monitor exits.
    writers: AtomicUsize,
    /// Clients with a thread still running (counted against [`MAX_CLIENTS`]).
    connected: AtomicUsize,
    next_id: AtomicU64,
    /// Set while attaches are refused, so that a flood is logged once, not per attach.
    refusing: AtomicBool,
    stdin: StdinQueue,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            clients: Mutex::default(),
            writers: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            stdin: StdinQueue::default(),
        })
    }
}

/// The monitor's side: accepts clients, feeds their frames to stdin, fans output out to them.
pub struct AttachServer {
    path: PathBuf,
    shared: Arc<Shared>,
}

impl AttachServer {
    /// Listens on `attach.sock` in `dir`; `stdin` is the write end of the process's stdin.
    pub fn start(dir: &Path, stdin: File) -> std::io::Result<Self> {
        let path = socket_path(dir);
        let _ = std::fs::remove_file(&path);
        let (addr, _dir) = short_path(&path)?;
        let listener = UnixListener::bind(&addr)?;
        let shared = Shared::new();
        let queue = shared.clone();
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || write_stdin(&queue.stdin, stdin))?;
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("attach".into())
            .spawn(move || accept_loop(|| Some(listener.accept().map(|(c, _)| c)), &accepting))?;
        Ok(AttachServer { path, shared })
    }

    /// Clients connected right now.
    pub fn connected(&self) -> usize {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Sends an output chunk to every attached client; drops the ones that cannot keep up.
    pub fn broadcast(&self, chunk: &[u8]) {
        let mut clients = lock(&self.shared.clients);
        if clients.is_empty() {
            return;
        }
        let chunk: Arc<[u8]> = Arc::from(chunk);
        clients.retain(|(_, (queue, cut))| match queue.try_send(chunk.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                eprintln!("nimbus monitor: an attached client read too slowly; disconnected it");
                cut.store(true, Ordering::SeqCst);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// The process is gone and its output drained: clients get the rest of it and then the
    /// end record (waiting up to `grace` for them; one still reading then is cut), and the
    /// socket goes.
    pub fn finish(&self, grace: Duration) {
        let _ = std::fs::remove_file(&self.path);
        lock(&self.shared.clients).clear();
        let deadline = Instant::now() + grace;
        while self.shared.writers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts clients until `accept` says there are no more (`None`; the real listener never
/// does). A failed accept (EMFILE, ENFILE, ENOMEM under a flood of attaches) is waited out,
/// never a reason to stop: the sandbox would be unreachable for the rest of its life.
fn accept_loop(
    mut accept: impl FnMut() -> Option<std::io::Result<UnixStream>>,
    shared: &Arc<Shared>,
) {
    let mut failing = false;
    while let Some(conn) = accept() {
        match conn {
            Ok(conn) => {
                failing = false;
                admit(conn, shared);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !failing {
                    eprintln!("nimbus monitor: attach socket cannot accept ({e}); retrying");
                    failing = true;
                }
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// A client's place: held by both of its threads; the last one to end frees it.
struct Slot {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.shared.clients).retain(|(id, _)| *id != self.id);
        self.shared.connected.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One client, if there is room: a writer thread sends it output; a reader thread queues its
/// frames for stdin.
fn admit(conn: UnixStream, shared: &Arc<Shared>) {
    // Only this thread adds clients, so the count cannot pass the cap between check and add.
    if shared.connected.load(Ordering::SeqCst) >= MAX_CLIENTS {
        if !shared.refusing.swap(true, Ordering::SeqCst) {
            eprintln!(
                "nimbus monitor: {MAX_CLIENTS} clients are attached; disconnecting further ones"
            );
        }
        return;
    }
    shared.refusing.store(false, Ordering::SeqCst);
    let Ok(out) = conn.try_clone() else {
        return;
    };
    shared.connected.fetch_add(1, Ordering::SeqCst);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let slot = Arc::new(Slot {
        shared: shared.clone(),
        id,
    });
    let (tx, rx) = sync_channel::<Arc<[u8]>>(CLIENT_QUEUE);
    let cut = Arc::new(AtomicBool::new(false));
    lock(&shared.clients).push((id, (tx, cut.clone())));
    shared.writers.fetch_add(1, Ordering::SeqCst);
    let writing = slot.clone();
    let spawned = std::thread::Builder::new()
        .stack_size(CLIENT_STACK)
        .spawn(move || {
            send_output(out, rx, &cut);
            writing.shared.writers.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        // Out of threads: the client goes (the closure, and its slot, were dropped).
        shared.writers.fetch_sub(1, Ordering::SeqCst);
        let _ = conn.shutdown(std::net::Shutdown::Both);
        return;
    }
    let closer = conn.try_clone();
    let spawned = std::thread::Builder::new()
        .stack_size(CLIENT_STACK)
        .spawn(move || {
            apply_frames(&conn, &slot.shared.stdin);
            // Its input is over. Output goes on while the client stays connected (it may
            // have only shut down its sending side).
        });
    if let (Err(_), Ok(closer)) = (spawned, closer) {
        // No reader: disconnect it rather than ignore its input (its writer then ends).
        let _ = closer.shutdown(std::net::Shutdown::Both);
    }
}

/// Copies output chunks to the client as records until it is dropped (cut, or the process
/// ended: then the end record follows) or hangs up. Waiting for output, it checks now and then
/// that the client is still there: a process with no output must not keep a departed client's
/// thread.
fn send_output(mut out: UnixStream, rx: std::sync::mpsc::Receiver<Arc<[u8]>>, cut: &AtomicBool) {
    loop {
        match rx.recv_timeout(LIVENESS_CHECK) {
            Ok(chunk) => {
                let Ok(len) = u32::try_from(chunk.len()) else {
                    break;
                };
                let sent = out
                    .write_all(&len.to_be_bytes())
                    .and_then(|()| out.write_all(&chunk));
                if sent.is_err() {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) if hung_up(&out) => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if !cut.load(Ordering::SeqCst) {
                    let _ = out.write_all(&OUTPUT_END.to_be_bytes());
                }
                break;
            }
        }
    }
    // Output is over for this client (the process ended, it was too slow, or it left).
    let _ = out.shutdown(std::net::Shutdown::Both);
}

/// Whether the client has closed its end of the connection entirely (not just its sending
/// side).
fn hung_up(conn: &UnixStream) -> bool {
    let mut fd = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd for an fd `conn` keeps open, no wait. (nix's poll is not
    // among the features the workspace builds.)
    #[allow(unsafe_code)]
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Reads frames from a client until it disconnects or sends something malformed, or its input
/// cannot be delivered after it has hung up.
fn apply_frames(mut conn: &UnixStream, stdin: &StdinQueue) {
    let mut header = [0u8; 5];
    loop {
        if conn.read_exact(&mut header).is_err() {
            return;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_FRAME {
            eprintln!(
                "nimbus monitor: an attached client sent a {len}-byte frame; disconnected it"
            );
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        let mut buf = vec![0u8; len];
        if conn.read_exact(&mut buf).is_err() {
            return;
        }
        let input = match header[0] {
            FRAME_STDIN if buf.is_empty() => continue,
            FRAME_STDIN => Input::Bytes(buf),
            FRAME_CLOSE_STDIN => Input::Close,
            kind => {
                eprintln!(
                    "nimbus monitor: an attached client sent frame kind {kind}; disconnected it"
                );
                let _ = conn.shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        if !stdin.push(input, || hung_up(conn)) {
            eprintln!(
                "nimbus monitor: an attached client left while the process was not reading its \
                 input; dropped that input"
            );
            return;
        }
    }
}

enum Input {
    Bytes(Vec<u8>),
    Close,
}

impl Input {
    fn len(&self) -> usize {
        match self {
            Input::Bytes(b) => b.len(),
            Input::Close => 0,
        }
    }
}

/// Input on its way to the process's stdin, in the order the clients' frames came.
#[derive(Default)]
struct StdinQueue {
    state: Mutex<StdinState>,
    /// Signalled whenever the queue or `closed` changes.
    changed: Condvar,
}

#[derive(Default)]
struct StdinState {
    items: VecDeque<Input>,
    /// Bytes queued, the ones being written included.
    bytes: usize,
    /// Stdin is closed for good: input is dropped.
    closed: bool,
}

impl StdinQueue {
    /// Queues `input`, waiting for room while the client is there (`gone` says when it is no
    /// longer). Returns false when the client has been gone for [`DEPARTED_GRACE`] with its
    /// input still waiting: it is dropped.
    fn push(&self, input: Input, gone: impl Fn() -> bool) -> bool {
        let mut state = lock(&self.state);
        let mut gone_since: Option<Instant> = None;
        loop {
            if state.closed {
                return true;
            }
            // A frame always fits into an empty queue, whatever the budget.
            if state.bytes == 0 || state.bytes + input.len() <= STDIN_QUEUE_BYTES {
                state.bytes += input.len();
                state.items.push_back(input);
                self.changed.notify_all();
                return true;
            }
            state = self
                .changed
                .wait_timeout(state, LIVENESS_CHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if gone() {
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= DEPARTED_GRACE {
                    return false;
                }
            }
        }
    }

    /// Stdin is gone: nothing more is queued, waiting clients go on.
    fn close(&self, state: &mut StdinState) {
        state.closed = true;
        state.items.clear();
        state.bytes = 0;
        self.changed.notify_all();
    }
}

/// The one thread that writes stdin. Blocking on a process that does not read holds up only
/// the queue, never a client thread or a lock. Ends when stdin is closed (a close frame, or a
/// failed write: the process stopped reading or exited, like a broken pipe in a shell).
fn write_stdin(queue: &StdinQueue, mut stdin: File) {
    loop {
        let input = {
            let mut state = lock(&queue.state);
            loop {
                if let Some(input) = state.items.pop_front() {
                    break input;
                }
                state = queue.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let written = match &input {
            Input::Bytes(b) => stdin.write_all(b).is_ok(),
            Input::Close => false,
        };
        let mut state = lock(&queue.state);
        if !written {
            queue.close(&mut state);
            return;
        }
        state.bytes -= input.len();
        queue.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads output records until the connection ends: the bytes, and whether the end record
    /// came.
    fn read_records(conn: &mut UnixStream) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            let mut len = [0u8; 4];
            if conn.read_exact(&mut len).is_err() {
                return (out, false);
            }
            let len = u32::from_be_bytes(len);
            if len == OUTPUT_END {
                let mut after = Vec::new();
                conn.read_to_end(&mut after).unwrap();
                assert!(after.is_empty(), "nothing after the end record");
                return (out, true);
            }
            let mut record = vec![0u8; len as usize];
            conn.read_exact(&mut record).unwrap();
            out.extend_from_slice(&record);
        }
    }

    /// One output record.
    fn read_record(conn: &mut UnixStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).unwrap();
        let mut record = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut record).unwrap();
        record
    }

    #[test]
    fn frames_carry_their_kind_and_length() {
        assert_eq!(stdin_frame(b"hi"), vec![0, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(close_stdin_frame(), vec![1, 0, 0, 0, 0]);
    }

    #[test]
    fn long_socket_paths_go_through_their_directory() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let (addr, keep) = short_path(&deep.join(SOCKET)).unwrap();
        assert!(
            keep.is_some() && addr.starts_with("/proc/self/fd"),
            "{addr:?}"
        );
        let _l = UnixListener::bind(&addr).unwrap();
        assert!(deep.join(SOCKET).exists());
        let (addr, keep) = short_path(Path::new("/run/x/attach.sock")).unwrap();
        assert!(keep.is_none() && addr == Path::new("/run/x/attach.sock"));
    }

    /// Stdin frames reach the pipe, output reaches every client, close-stdin gives the reader
    /// end-of-file, and finishing disconnects the clients.
    #[test]
    fn clients_write_stdin_and_read_output() {
        let d = tempfile::tempdir().unwrap();
        let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
        let server = AttachServer::start(d.path(), File::from(stdin_w)).unwrap();
        let mut a = UnixStream::connect(socket_path(d.path())).unwrap();
        let mut b = UnixStream::connect(socket_path(d.path())).unwrap();
        let mut stdin_r = File::from(stdin_r);
        a.write_all(&stdin_frame(b"one ")).unwrap();
        let mut first = [0u8; 4];
        stdin_r.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"one ");
        b.write_all(&stdin_frame(b"two")).unwrap();
        b.write_all(&close_stdin_frame()).unwrap();
        let mut rest = String::new();
        stdin_r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "two");
        // Both clients are registered once their reader threads run; wait for that.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while server.connected() < 2 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        server.broadcast(b"out");
        server.finish(std::time::Duration::from_secs(5));
        for c in [&mut a, &mut b] {
            assert_eq!(read_records(c), (b"out".to_vec(), true));
        }
        assert!(!socket_path(d.path()).exists());
    }

    /// Waits up to `limit` for `done`.
    fn wait_for(limit: Duration, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < deadline, "{what} within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A process that never reads its stdin: a client that sent more than the pipe and the
    /// queue hold, then hung up, is let go (its threads end) rather than blocking forever on
    /// the pipe; meanwhile other clients attach and get output, and stdin still works.
    #[test]
    fn a_client_whose_input_is_not_read_is_let_go_once_it_hangs_up() {
        let d = tempfile::tempdir().unwrap();
        // Close-on-exec: a child another test spawns must not hold the pipe open.
        let (stdin_r, stdin_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let server = AttachServer::start(d.path(), File::from(stdin_w)).unwrap();
        let mut a = UnixStream::connect(socket_path(d.path())).unwrap();
        // Frames until the socket takes no more: the pipe (64 KiB), the monitor's queue and
        // the socket's buffers are full.
        a.set_nonblocking(true).unwrap();
        let frame = stdin_frame(&vec![b'x'; MAX_FRAME]);
        let mut sent = 0usize;
        let mut pending: &[u8] = &frame;
        let mut idle_since = Instant::now();
        while idle_since.elapsed() < Duration::from_millis(500) {
            match a.write(pending) {
                Ok(n) => {
                    sent += n;
                    pending = &pending[n..];
                    if pending.is_empty() {
                        pending = &frame;
                    }
                    idle_since = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(sent > STDIN_QUEUE_BYTES + 64 * 1024, "{sent}");
        wait_for(Duration::from_secs(5), "client a attached", || {
            server.connected() == 1
        });
        // Another client attaches and reads output while a's input waits.
        let mut b = UnixStream::connect(socket_path(d.path())).unwrap();
        wait_for(Duration::from_secs(5), "client b attached", || {
            server.connected() == 2
        });
        server.broadcast(b"out");
        assert_eq!(read_record(&mut b), b"out");
        // a hangs up: its threads end once its input has waited out the grace period.
        drop(a);
        wait_for(DEPARTED_GRACE * 3, "client a let go", || {
            server.connected() == 1
        });
        // Stdin still works: b closes it, the process reads what was queued, then EOF.
        b.write_all(&close_stdin_frame()).unwrap();
        let mut read = Vec::new();
        File::from(stdin_r).read_to_end(&mut read).unwrap();
        assert!(
            read.len() < sent && read.iter().all(|&c| c == b'x'),
            "{}",
            read.len()
        );
    }

    /// Clients over [`MAX_CLIENTS`] read end-of-file at once; a freed place can be taken again.
    #[test]
    fn attaches_over_the_cap_are_disconnected_at_once() {
        let d = tempfile::tempdir().unwrap();
        let (_stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
        let server = AttachServer::start(d.path(), File::from(stdin_w)).unwrap();
        let connect = || UnixStream::connect(socket_path(d.path())).unwrap();
        let mut clients: Vec<UnixStream> = (0..MAX_CLIENTS).map(|_| connect()).collect();
        wait_for(Duration::from_secs(5), "all attached", || {
            server.connected() == MAX_CLIENTS
        });
        let mut over = connect();
        over.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(over.read(&mut buf).unwrap(), 0, "refused: end-of-file");
        drop(clients.pop());
        wait_for(Duration::from_secs(5), "a place freed", || {
            server.connected() == MAX_CLIENTS - 1
        });
        let mut again = connect();
        wait_for(Duration::from_secs(5), "attached again", || {
            server.connected() == MAX_CLIENTS
        });
        server.broadcast(b"hi");
        again
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(read_record(&mut again), b"hi");
    }

    /// The client's side unwraps records however the bytes arrive (a length split across
    /// writes, a record in pieces), tells a complete end from a cut one, and a monitor of an
    /// older server's raw output passes through as it is.
    #[tokio::test]
    async fn a_client_unwraps_records_and_tells_complete_from_cut() {
        use tokio::io::AsyncReadExt;
        let read_all = |mut a: Attachment| async move {
            let mut out = Vec::new();
            a.output.read_to_end(&mut out).await.unwrap();
            (out, a.end.get())
        };
        let pair = || {
            let (ours, theirs) = UnixStream::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            (tokio::net::UnixStream::from_std(ours).unwrap(), theirs)
        };
        let mut bytes = Vec::new();
        for record in [&b"hello "[..], b"", b"world"] {
            bytes.extend_from_slice(&(record.len() as u32).to_be_bytes());
            bytes.extend_from_slice(record);
        }
        // Complete: the end record, the bytes written a few at a time.
        let (ours, mut monitor) = pair();
        let mut complete = bytes.clone();
        complete.extend_from_slice(&OUTPUT_END.to_be_bytes());
        let writer = std::thread::spawn(move || {
            for piece in complete.chunks(3) {
                monitor.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let got = read_all(Attachment::new(ours)).await;
        writer.join().unwrap();
        assert_eq!(got, (b"hello world".to_vec(), Some(OutputEnd::Complete)));
        // Cut: the connection closes without the end record, or inside a record.
        for cut_at in [bytes.len(), bytes.len() - 2] {
            let (ours, mut monitor) = pair();
            monitor.write_all(&bytes[..cut_at]).unwrap();
            drop(monitor);
            let (out, end) = read_all(Attachment::new(ours)).await;
            assert_eq!(end, Some(OutputEnd::Cut), "cut at {cut_at}");
            assert!(b"hello world".starts_with(&out), "{out:?}");
        }
        // An older monitor: raw bytes, no verdict of its own.
        let (ours, mut monitor) = pair();
        monitor.write_all(b"raw output").unwrap();
        drop(monitor);
        let got = read_all(Attachment::legacy(ours)).await;
        assert_eq!(got, (b"raw output".to_vec(), Some(OutputEnd::Unknown)));
    }

    /// A client that reads too slowly is cut: it gets what was queued for it, but not the end
    /// record, so it can tell its output is incomplete though the process then exits; a
    /// client that keeps up gets everything and the end record.
    #[test]
    fn a_cut_client_gets_no_end_record() {
        let d = tempfile::tempdir().unwrap();
        let (_stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
        let server = AttachServer::start(d.path(), File::from(stdin_w)).unwrap();
        let mut slow = UnixStream::connect(socket_path(d.path())).unwrap();
        let mut steady = UnixStream::connect(socket_path(d.path())).unwrap();
        wait_for(Duration::from_secs(5), "both attached", || {
            server.connected() == 2
        });
        let steady_reader = std::thread::spawn(move || read_records(&mut steady));
        // The slow client reads nothing until its socket and its queue are full.
        let chunk = vec![b'x'; 64 * 1024];
        let chunks = CLIENT_QUEUE * 2;
        for _ in 0..chunks {
            server.broadcast(&chunk);
            std::thread::sleep(Duration::from_millis(1));
        }
        let slow_reader = std::thread::spawn(move || read_records(&mut slow));
        server.finish(Duration::from_secs(30));
        let (got, complete) = slow_reader.join().unwrap();
        assert!(!complete, "a cut client is not told the output is complete");
        assert!(got.len() < chunks * chunk.len(), "{}", got.len());
        let (got, complete) = steady_reader.join().unwrap();
        assert!(complete);
        assert_eq!(got.len(), chunks * chunk.len());
    }

    /// Failed accepts (out of file descriptors or memory) are waited out; later clients are
    /// still accepted.
    #[test]
    fn accept_errors_do_not_stop_the_accept_loop() {
        let shared = Shared::new();
        let (client, conn) = UnixStream::pair().unwrap();
        let mut script = vec![
            Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
            Err(std::io::Error::from_raw_os_error(libc::ENOMEM)),
            Err(std::io::Error::from_raw_os_error(libc::ENFILE)),
            Ok(conn),
        ]
        .into_iter();
        accept_loop(|| script.next(), &shared);
        assert_eq!(shared.connected.load(Ordering::SeqCst), 1);
        drop(client);
    }
}
