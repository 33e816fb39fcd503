//! A sandbox's output as the API reads it: the log the monitor writes (`log`, and `log.1`
//! once it rotates), as a snapshot or followed live. A follower is woken by inotify when the
//! state dir changes rather than on a timer, and keeps the log open across a rotation.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Chunks of a sandbox's output (stdout and stderr interleaved, as written).
pub struct LogStream {
    pub(crate) rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
}

impl LogStream {
    /// The next chunk; `None` at the end (immediately for a snapshot, at exit when following).
    pub async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }
    /// The underlying receiver (wrap in `tokio_stream::wrappers::ReceiverStream` for a `Stream`).
    pub fn into_receiver(self) -> tokio::sync::mpsc::Receiver<Vec<u8>> {
        self.rx
    }
}

/// Sends the log in `dir` to `tx`: what is there, then (with `follow`) what is appended,
/// until the process has exited and its output is sent, or the receiver is gone.
pub(crate) async fn stream_logs(
    dir: PathBuf,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    // Older rotated output first (up to half the log cap: read off the async threads).
    let rotated = dir.join("log.1");
    if let Ok(Ok(old)) = tokio::task::spawn_blocking(move || std::fs::read(rotated)).await {
        if !old.is_empty() && tx.send(old).await.is_err() {
            return;
        }
    }
    let mut log = LogTail::new(dir.join("log"));
    let mut watch = DirWatch::new(&dir);
    loop {
        let exited = dir.join("exit.json").exists() || !dir.exists();
        while let Some(chunk) = log.next_chunk() {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        if !follow || exited {
            return;
        }
        watch.changed().await;
    }
}

/// Reads what was appended to a sandbox's log since the last read, following its rotation.
/// The reads are plain blocking ones on the async thread: they read a local file the monitor
/// has just written, out of the page cache, in microseconds, while the four trips through the
/// blocking pool that `tokio::fs` makes for open, stat, seek and read cost more than that on a
/// busy host, and stood between a process's first output and its follower.
struct LogTail {
    path: PathBuf,
    /// The log being read, kept open: when the monitor rotates it (renames it to `log.1` and
    /// starts a new `log`), the rest of the old one is still read through this handle.
    file: Option<std::fs::File>,
}

impl LogTail {
    /// At most this much per chunk, so a long log is sent in pieces.
    const CHUNK: u64 = 256 * 1024;

    fn new(path: PathBuf) -> LogTail {
        LogTail { path, file: None }
    }

    /// The next piece of new output, if there is any.
    fn next_chunk(&mut self) -> Option<Vec<u8>> {
        use std::io::Read as _;
        use std::os::unix::fs::MetadataExt;
        loop {
            if self.file.is_none() {
                self.file = Some(std::fs::File::open(&self.path).ok()?);
            }
            let file = self.file.as_mut()?;
            let mut buf = Vec::new();
            file.by_ref().take(Self::CHUNK).read_to_end(&mut buf).ok()?;
            if !buf.is_empty() {
                return Some(buf);
            }
            // At the end of this file: if `log` is now another file, it was rotated, and
            // reading goes on from the start of the new one.
            let current = std::fs::metadata(&self.path).ok()?.ino();
            if file.metadata().ok()?.ino() == current {
                return None;
            }
            self.file = None;
        }
    }
}

/// Wakes a log follower as soon as the sandbox's state dir changes (output appended, the log
/// rotated, the exit recorded) instead of on a timer, so followed output arrives when it is
/// written. Falls back to polling where inotify is unavailable.
struct DirWatch(Option<tokio::io::unix::AsyncFd<InotifyFd>>);

/// `AsyncFd` needs `AsRawFd`, which nix's `Inotify` does not implement.
struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWatch {
    /// Even with a watch, look again now and then: a missed event must not stall a follower.
    const FALLBACK: Duration = Duration::from_millis(500);

    fn new(dir: &Path) -> DirWatch {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .ok()
            .and_then(|i| {
                i.add_watch(
                    dir,
                    AddWatchFlags::IN_MODIFY
                        | AddWatchFlags::IN_CREATE
                        | AddWatchFlags::IN_MOVED_TO
                        | AddWatchFlags::IN_DELETE_SELF,
                )
                .ok()?;
                // SAFETY: the AsyncFd owns the InotifyFd, which owns the descriptor, so it
                // stays open and the same for the AsyncFd's whole life.
                #[allow(unsafe_code)]
                unsafe {
                    tokio::io::unix::AsyncFd::register(InotifyFd(i)).ok()
                }
            });
        DirWatch(watch)
    }

    async fn changed(&mut self) {
        let Some(fd) = &self.0 else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        };
        if let Ok(Ok(mut ready)) = tokio::time::timeout(Self::FALLBACK, fd.readable()).await {
            // Drain every queued event; one wake-up covers them all.
            while fd.get_ref().0.read_events().is_ok_and(|e| !e.is_empty()) {}
            ready.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_log_tail_reads_appends_in_bounded_chunks_and_follows_rotation() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("log");
        let mut tail = LogTail::new(path.clone());
        assert_eq!(tail.next_chunk(), None, "no log yet");
        let big = vec![b'a'; LogTail::CHUNK as usize + 10];
        std::fs::write(&path, &big).unwrap();
        assert_eq!(tail.next_chunk().unwrap().len(), LogTail::CHUNK as usize);
        assert_eq!(tail.next_chunk().unwrap(), vec![b'a'; 10]);
        assert_eq!(tail.next_chunk(), None);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"more")
            .unwrap();
        assert_eq!(tail.next_chunk().unwrap(), b"more");
        // Rotation: the log moves to log.1 and a new one starts.
        std::fs::rename(&path, d.path().join("log.1")).unwrap();
        std::fs::write(&path, b"fresh").unwrap();
        assert_eq!(tail.next_chunk().unwrap(), b"fresh");
        assert_eq!(tail.next_chunk(), None);
        // Rotated while a follower is partway through: it reads the rest of the old log first.
        std::fs::write(&path, &big).unwrap();
        let mut tail = LogTail::new(path.clone());
        assert_eq!(tail.next_chunk().unwrap().len(), LogTail::CHUNK as usize);
        std::fs::rename(&path, d.path().join("log.1")).unwrap();
        std::fs::write(&path, b"after").unwrap();
        assert_eq!(tail.next_chunk().unwrap(), vec![b'a'; 10]);
        assert_eq!(tail.next_chunk().unwrap(), b"after");
        assert_eq!(tail.next_chunk(), None);
    }
}
