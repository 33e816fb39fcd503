//! The free space the image store leaves on its file system. Image content comes from
//! registries and Dockerfiles, neither of them trusted: a manifest may declare blobs of any size,
//! and a layer may decompress to a thousand times its download (a gzip of zeros). The store
//! lives beside the server's database and sandboxes' writable layers, so filling that disk
//! would break far more than the pull; pulls and unpacks stop while a reserve is still free.
//! Launches keep the same reserve on the file system holding the sandboxes' disks, which are
//! sparse and can together outgrow it (see `ensure_room_to_launch` in sandbox.rs).

use std::io::Read;
use std::path::{Path, PathBuf};

/// Free space kept on the store's file system unless configured otherwise: 1 GiB.
pub const DEFAULT_RESERVE_BYTES: u64 = 1 << 30;

/// How many bytes an unpack reads between two looks at the free space (a `statvfs` each). An
/// empty file is one 512-byte tar header: 1 MiB is at most 2 048 new files between looks.
const CHECK_EVERY: u64 = 1 << 20;

/// Inodes (files) kept free on the store's file system: 5% of them, at least this many. A
/// layer of a million empty files is 6 MB of gzip and would otherwise leave the database and
/// the sandboxes' writable layers unable to create a file while gigabytes stay free.
const MIN_RESERVE_INODES: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReserve {
    bytes: u64,
}

impl Default for DiskReserve {
    fn default() -> Self {
        Self::new(DEFAULT_RESERVE_BYTES)
    }
}

impl DiskReserve {
    pub fn new(bytes: u64) -> Self {
        Self { bytes }
    }

    /// The bytes kept free.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Succeeds if writing `more` bytes under `dir` leaves the reserve free; otherwise says what
    /// (`what`, e.g. "pulling docker.io/library/busybox:latest") could not go on, and why.
    pub fn ensure_room(&self, dir: &Path, more: u64, what: &str) -> std::io::Result<()> {
        let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
        let free = free_bytes(&st);
        // A file system that does not count inodes (btrfs says 0 of 0) has no such limit.
        let total_inodes = st.files();
        let free_inodes = st.files_available();
        let keep_inodes = (total_inodes / 20).max(MIN_RESERVE_INODES);
        if total_inodes > 0 && free_inodes < keep_inodes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "{what} stopped: the file system holding {} has room for {free_inodes} more \
                     files, and Nimbus keeps room for {keep_inodes} there (pulls and sandbox \
                     launches stop short of it, so that countless small files cannot exhaust \
                     it); remove unused images or sandboxes, then try again",
                    dir.display()
                ),
            ));
        }
        if free >= more.saturating_add(self.bytes) {
            return Ok(());
        }
        let needs = if more > 0 {
            format!("{what} needs {} more", mib(more))
        } else {
            format!("{what} stopped")
        };
        Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "{needs}: the file system holding {} has {} free, and Nimbus keeps {} free there \
                 (pulls and sandbox launches stop short of it, so that an oversized image or \
                 the sandboxes' growing disks cannot fill it); free some space, then try again",
                dir.display(),
                mib(free),
                mib(self.bytes)
            ),
        ))
    }

    /// Wraps the reader an unpack reads from, so that it fails (with [`Self::ensure_room`]'s
    /// error) once the file system holding `dir` nears the reserve.
    pub fn guard<R: Read>(&self, inner: R, dir: &Path, what: String) -> Guarded<R> {
        Guarded {
            inner,
            reserve: *self,
            dir: dir.to_path_buf(),
            what,
            since_check: 0,
        }
    }
}

/// A reader that checks the reserve every [`CHECK_EVERY`] bytes; see [`DiskReserve::guard`].
pub struct Guarded<R> {
    inner: R,
    reserve: DiskReserve,
    dir: PathBuf,
    what: String,
    since_check: u64,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.since_check >= CHECK_EVERY {
            self.reserve.ensure_room(&self.dir, 0, &self.what)?;
            self.since_check = 0;
        }
        let n = self.inner.read(buf)?;
        self.since_check += n as u64;
        Ok(n)
    }
}

/// The free space ([`DiskReserve::ensure_room`]'s measure) on the file system holding `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    Ok(free_bytes(
        &nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?,
    ))
}

fn free_bytes(st: &nix::sys::statvfs::Statvfs) -> u64 {
    // What an unprivileged writer may use; root could dip into the file system's own reserve,
    // but that reserve is the system's, not the image store's.
    st.blocks_available().saturating_mul(st.fragment_size())
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_at(dir: &Path) -> u64 {
        free_bytes(&nix::sys::statvfs::statvfs(dir).unwrap())
    }

    #[test]
    fn room_is_refused_when_few_inodes_are_left_whatever_the_bytes() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64m,nr_inodes=6000"),
        )
        .unwrap();
        let reserve = DiskReserve::new(0);
        let outcome = (|| {
            reserve.ensure_room(dir.path(), 0, "unpacking z")?;
            // 2 000 empty files: next to nothing in bytes, a third of the inodes.
            for i in 0..2000 {
                std::fs::File::create(dir.path().join(format!("f{i}")))?;
            }
            reserve.ensure_room(dir.path(), 0, "unpacking z")
        })();
        nix::mount::umount(dir.path()).unwrap();
        let err = outcome.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        assert!(err.to_string().contains("keeps room for 4096"), "{err}");
        assert!(err.to_string().starts_with("unpacking z stopped"), "{err}");
    }

    #[test]
    fn room_is_refused_past_the_reserve_naming_what_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_at(dir.path());
        let reserve = DiskReserve::new(free / 2);
        reserve
            .ensure_room(dir.path(), free / 4, "pulling x")
            .unwrap();
        let err = reserve
            .ensure_room(dir.path(), free, "pulling x")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        let msg = err.to_string();
        assert!(msg.starts_with("pulling x needs "), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains("free some space"), "{msg}");
    }

    #[test]
    fn a_guarded_reader_stops_once_the_reserve_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_at(dir.path());
        // Nothing is written here, so the reserve decides alone: above the free space, the
        // first check (after CHECK_EVERY bytes) fails; below it, everything is read.
        let data = vec![0u8; (CHECK_EVERY * 2) as usize];
        let mut ok = DiskReserve::new(0).guard(&data[..], dir.path(), "unpacking y".into());
        assert_eq!(
            std::io::copy(&mut ok, &mut std::io::sink()).unwrap(),
            data.len() as u64
        );
        let mut full =
            DiskReserve::new(free + (1 << 40)).guard(&data[..], dir.path(), "unpacking y".into());
        let err = std::io::copy(&mut full, &mut std::io::sink()).unwrap_err();
        assert!(
            err.to_string().starts_with("unpacking y stopped: "),
            "{err}"
        );
    }
}
