//! The attach socket: how a client reaches a running sandbox's stdio through its monitor.
//!
//! The monitor owns the container's stdin (a pipe it keeps open) and its output (one pipe for
//! stdout and stderr, which it copies into the log). It listens on `attach.sock` in the
//! sandbox's state dir, so a stdio session can attach at any time while the process runs, also
//! after a server restart: the monitor, not the server, holds the pipes.
//!
//! Protocol, per connection (a Unix stream socket; only root can reach the private data dir):
//! - monitor → client: the process's output from the moment of connecting, as raw bytes (the
//!   log keeps the history). The monitor closes the connection when the process has exited and
//!   its output is drained.
//! - client → monitor: frames of `[kind: u8][len: u32 big-endian][len bytes]`. Kind
//!   [`FRAME_STDIN`] writes the bytes to the process's stdin; [`FRAME_CLOSE_STDIN`] (no bytes)
//!   closes it, so the process reads end-of-file, for every client. A connection that closes
//!   without it leaves stdin open for the next one.
//!
//! A client that reads its output too slowly is disconnected (the monitor never lets one
//! client hold up the process's output or the log); it can attach again.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// The socket's name in the sandbox's state dir.
pub const SOCKET: &str = "attach.sock";
/// Frame kind: bytes for the process's stdin.
pub const FRAME_STDIN: u8 = 0;
/// Frame kind: close the process's stdin.
pub const FRAME_CLOSE_STDIN: u8 = 1;
/// The largest frame the monitor accepts; larger writes are split by the client.
pub const MAX_FRAME: usize = 64 * 1024;
/// Output chunks queued for one client before it counts as too slow and is disconnected.
const CLIENT_QUEUE: usize = 256;

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

/// The attached clients' output queues.
type Clients = Arc<Mutex<Vec<SyncSender<Arc<[u8]>>>>>;

/// The monitor's side: accepts clients, feeds their frames to stdin, fans output out to them.
pub struct AttachServer {
    path: PathBuf,
    clients: Clients,
    /// Clients whose output writer still runs, so that [`AttachServer::finish`] can let them
    /// deliver the last output before the monitor exits.
    writers: Arc<AtomicUsize>,
}

impl AttachServer {
    /// Listens on `attach.sock` in `dir`; `stdin` is the write end of the process's stdin.
    pub fn start(dir: &Path, stdin: File) -> std::io::Result<Self> {
        let path = socket_path(dir);
        let _ = std::fs::remove_file(&path);
        let (addr, _dir) = short_path(&path)?;
        let listener = UnixListener::bind(&addr)?;
        let clients = Clients::default();
        let stdin = Arc::new(Mutex::new(Some(stdin)));
        let writers = Arc::new(AtomicUsize::new(0));
        let (accepting, counted) = (clients.clone(), writers.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => serve_client(conn, &accepting, &counted, &stdin),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        eprintln!("nimbus monitor: attach socket stopped accepting: {e}");
                        return;
                    }
                }
            }
        });
        Ok(AttachServer {
            path,
            clients,
            writers,
        })
    }

    /// Sends an output chunk to every attached client; drops the ones that cannot keep up.
    pub fn broadcast(&self, chunk: &[u8]) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.is_empty() {
            return;
        }
        let chunk: Arc<[u8]> = Arc::from(chunk);
        clients.retain(|c| match c.try_send(chunk.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                eprintln!("nimbus monitor: an attached client read too slowly; disconnected it");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// The process is gone and its output drained: clients get the rest of it and then
    /// end-of-file (waiting up to `grace` for them), and the socket goes.
    pub fn finish(&self, grace: std::time::Duration) {
        let _ = std::fs::remove_file(&self.path);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let deadline = std::time::Instant::now() + grace;
        while self.writers.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// One client: a writer thread sends it output; a reader thread applies its frames.
fn serve_client(
    conn: UnixStream,
    clients: &Clients,
    writers: &Arc<AtomicUsize>,
    stdin: &Arc<Mutex<Option<File>>>,
) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let (tx, rx) = sync_channel::<Arc<[u8]>>(CLIENT_QUEUE);
    clients.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
    writers.fetch_add(1, Ordering::SeqCst);
    let writers = writers.clone();
    std::thread::spawn(move || {
        for chunk in rx {
            if out.write_all(&chunk).is_err() {
                break;
            }
        }
        // Output is over for this client (the process ended, or it was too slow).
        let _ = out.shutdown(std::net::Shutdown::Both);
        writers.fetch_sub(1, Ordering::SeqCst);
    });
    let stdin = stdin.clone();
    std::thread::spawn(move || apply_frames(conn, &stdin));
}

/// Reads frames from a client until it disconnects or sends something malformed.
fn apply_frames(mut conn: UnixStream, stdin: &Mutex<Option<File>>) {
    let mut header = [0u8; 5];
    let mut buf = Vec::new();
    loop {
        if conn.read_exact(&mut header).is_err() {
            return;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_FRAME {
            eprintln!(
                "nimbus monitor: an attached client sent a {len}-byte frame; disconnected it"
            );
            return;
        }
        buf.resize(len, 0);
        if conn.read_exact(&mut buf).is_err() {
            return;
        }
        let mut stdin = stdin.lock().unwrap_or_else(|e| e.into_inner());
        match header[0] {
            FRAME_STDIN => {
                // A process that stopped reading (or exited) makes the write fail: stdin is
                // closed for good then, like a broken pipe in a shell.
                if let Some(f) = stdin.as_mut() {
                    if f.write_all(&buf).is_err() {
                        *stdin = None;
                    }
                }
            }
            FRAME_CLOSE_STDIN => *stdin = None,
            kind => {
                eprintln!(
                    "nimbus monitor: an attached client sent frame kind {kind}; disconnected it"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        while server.clients.lock().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        server.broadcast(b"out");
        server.finish(std::time::Duration::from_secs(5));
        for c in [&mut a, &mut b] {
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            assert_eq!(s, "out");
        }
        assert!(!socket_path(d.path()).exists());
    }
}
