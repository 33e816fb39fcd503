//! Sandbox disks. Every sandbox's writable layer (the overlay's upper and work dirs) lives on a
//! file system of its own: an ext4 image of `runtime.disk_mb` attached to a loop device. A
//! sandbox that fills it gets ENOSPC inside, while the file system of the data dir (the
//! database, other sandboxes, the image store) keeps its space. Project quotas would bound a
//! directory instead, but the kernels Nimbus runs on are built without them (docs/security.md).
//!
//! Images are sparse: one takes on the data dir's disk what its sandbox wrote, plus ext4's few
//! KiB of metadata, never more than its size. Each is a copy of a template formatted once,
//! attached to a loop device and mounted from this process (about a millisecond), and a few
//! are kept ready (mounted, nobody's), as the warm pool keeps network namespaces; a launch that
//! finds none makes its own.
//!
//! A disk is named by a token: image `<runtime>/disks/<token>.img`, mounted at
//! `/run/nimbus/disks/<data dir hash>/<token>`. A sandbox's state (`meta.json`) names its
//! disk's token before the disk is used, so its delete finds it; at start, disks that no
//! sandbox names (ready ones of an earlier process, or one a launch took and was cut off before
//! recording) are removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::cmd::run_cmd;
use crate::ready::ReadyQueue;

/// Where disks are mounted: beside the sandboxes' root mounts, outside the private data dir,
/// in a directory of each data dir's own (several servers may share a host).
pub(crate) const MOUNTS: &str = "/run/nimbus/disks";

/// The image file behind the disk mounted at `mount`, and whether it has been deleted (the
/// loop device's `backing_file`); `None` when nothing is mounted there.
pub(crate) fn backing_image(mount: &Path) -> Option<(PathBuf, bool)> {
    let target = mount.to_string_lossy();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mount-point … - fstype source options.
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target.as_ref()))?;
    let source = line.split(" - ").nth(1)?.split(' ').nth(1)?;
    let device = source.strip_prefix("/dev/")?;
    let backing = std::fs::read_to_string(format!("/sys/block/{device}/loop/backing_file")).ok()?;
    let backing = backing.trim_end_matches('\n');
    Some(match backing.strip_suffix(" (deleted)") {
        Some(path) => (PathBuf::from(path), true),
        None => (PathBuf::from(backing), false),
    })
}

pub struct Disks {
    images: PathBuf,
    mounts: PathBuf,
    /// The size of new disks; 0 makes none (sandboxes' disks from before are still found,
    /// removed and reported).
    bytes: u64,
    /// Disks kept ready, by token.
    ready: ReadyQueue<String>,
    /// The formatted file system every disk is copied from (see `template`).
    template: tokio::sync::OnceCell<PathBuf>,
}

impl Disks {
    /// Disks of `mb` MiB for the runtime rooted at `runtime_root`, `ready` of them kept
    /// prepared. With `mb` 0 no disk is made (writable layers then live in the data dir,
    /// unbounded), but disks made before are still managed.
    pub fn new(runtime_root: &Path, mb: u64, ready: usize) -> Result<Arc<Disks>, String> {
        // One data dir reached by two spellings (a symlink, `..`) must find the same disks.
        let root = std::fs::canonicalize(runtime_root)
            .map_err(|e| format!("cannot resolve {}: {e}", runtime_root.display()))?;
        let images = root.join("disks");
        let mounts = Path::new(MOUNTS).join(data_dir_key(&root));
        // The mounts' directory (under /run, outside the data dir) is made with the first
        // disk: commands that open the runtime without launching (`nimbus image …`, a start
        // that fails) leave nothing there.
        if mb > 0 {
            create_private_dir(&images)?;
        }
        Ok(Arc::new(Disks {
            images,
            mounts,
            bytes: mb.min(crate::config::MAX_DISK_MB) << 20,
            ready: ReadyQueue::new(ready),
            template: tokio::sync::OnceCell::new(),
        }))
    }

    /// Whether launches get disks (`runtime.disk_mb` is not 0).
    pub fn enabled(&self) -> bool {
        self.bytes > 0
    }

    /// Where disk `token` is mounted: the sandbox's upper and work dirs go in there.
    pub fn mount_path(&self, token: &str) -> PathBuf {
        self.mounts.join(token)
    }

    /// The directory holding the disks' images, on the file system they take their space from.
    pub fn images_dir(&self) -> PathBuf {
        self.images.clone()
    }

    fn image_path(&self, token: &str) -> PathBuf {
        self.images.join(format!("{token}.img"))
    }

    /// The size of every disk, in MiB (for messages).
    pub fn size_mb(&self) -> u64 {
        self.bytes >> 20
    }

    /// A ready disk, or one prepared now when none is.
    pub async fn take(&self) -> Result<String, String> {
        if let Some(token) = self.ready.take() {
            return Ok(token);
        }
        let token = self.new_token();
        self.prepare(&token).await?;
        Ok(token)
    }

    /// Returns a disk a launch took but did not record as its own (unused: nothing was written).
    pub fn put_back(&self, token: String) {
        self.ready.put_back(token);
    }

    fn new_token(&self) -> String {
        // The pid and time keep tokens unique across server processes sharing a data dir's
        // history; the counter within one, whatever number of runtimes it opens (a runtime
        // opened again on the same data dir in the same second took its predecessor's names).
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        format!(
            "d{}-{}-{}",
            std::process::id(),
            crate::monitor::now_secs(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates, formats and mounts disk `token`; on failure nothing of it is left.
    async fn prepare(&self, token: &str) -> Result<(), String> {
        let result = self.try_prepare(token).await;
        if result.is_err() {
            let _ = self.remove(token);
        }
        result
    }

    async fn try_prepare(&self, token: &str) -> Result<(), String> {
        let template = self.template().await?;
        let (image, mount, bytes) = (self.image_path(token), self.mount_path(token), self.bytes);
        tokio::task::spawn_blocking(move || {
            clone_sparse(&template, &image, bytes).map_err(|e| {
                format!(
                    "creating {} from {}: {e}",
                    image.display(),
                    template.display()
                )
            })?;
            create_private_dir(&mount)?;
            mount_image(&image, &mount)
        })
        .await
        .map_err(|e| format!("preparing a disk: {e}"))?
    }

    /// An empty file system of the disks' size, formatted once per process; disks are copies
    /// of it (its few hundred KiB of metadata: a copy takes well under a millisecond, a format
    /// 4 ms in a child process).
    async fn template(&self) -> Result<PathBuf, String> {
        self.template
            .get_or_try_init(|| async {
                // Remade at every start (and any of another size, from an earlier
                // `disk_mb`, goes): copies of a template of a stale size would be wrong.
                create_private_dir(&self.mounts)?;
                remove_templates(&self.images);
                let path = self.images.join(format!("template-{}.ext4", self.size_mb()));
                std::fs::File::create(&path)
                    .and_then(|f| f.set_len(self.bytes))
                    .map_err(|e| format!("creating {}: {e}", path.display()))?;
                // No journal: a disk does not outlive a host crash (its sandbox is lost with
                // it), and journal writes would cost every sandbox's writes. No resize inode:
                // disks never grow, and its reserved blocks made the format write 4.3 MiB in
                // 18 ms instead of 230 KiB in 4 ms. Lazy table init and `noinit_itable` (at
                // mount) leave the inode tables unwritten (a sparse image reads as zeros).
                run_cmd(
                    "mkfs.ext4",
                    &[
                        "-q",
                        "-F",
                        "-m",
                        "0",
                        "-O",
                        "^has_journal,^resize_inode",
                        "-E",
                        "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                        &path.to_string_lossy(),
                    ],
                    None,
                )
                .await
                .map_err(|e| {
                    let _ = std::fs::remove_file(&path);
                    format!(
                        "formatting {}: {e} (is e2fsprogs installed? `nimbus doctor` checks, line `disks`)",
                        path.display()
                    )
                })?;
                Ok(path)
            })
            .await
            .cloned()
    }

    /// Unmounts disk `token` and removes its image (its loop device goes with the last user of
    /// the mount: a sandbox's root unmounted lazily may hold it a little longer).
    pub fn remove(&self, token: &str) -> Result<(), String> {
        let mount = self.mount_path(token);
        let mut problems = Vec::new();
        if crate::sandbox::is_mountpoint(&mount) {
            if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                problems.push(format!("unmounting {}: {e}", mount.display()));
            }
        }
        for (path, result) in [
            (&mount, std::fs::remove_dir(&mount)),
            (
                &self.image_path(token),
                std::fs::remove_file(self.image_path(token)),
            ),
        ] {
            match result {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    problems.push(format!("removing {}: {e}", path.display()))
                }
                _ => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// What is left of disk `token` on the host (empty once removed).
    pub fn traces(&self, token: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.mount_path(token).exists() {
            out.push(format!("disk mount {}", self.mount_path(token).display()));
        }
        if self.image_path(token).exists() {
            out.push(format!("disk image {}", self.image_path(token).display()));
        }
        out
    }

    /// Every disk on the host, ready or in use, by token.
    pub fn all(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        if let Ok(entries) = std::fs::read_dir(&self.images) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(token) = name.strip_suffix(".img") {
                    out.insert(token.to_string());
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.mounts) {
            out.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        out
    }

    /// Disks neither ready nor named in `used` (the tokens sandboxes' state names).
    pub fn strays(&self, used: &HashSet<String>) -> Vec<String> {
        let ready: HashSet<String> = self.ready.with_ready(|r| r.iter().cloned().collect());
        let mut out: Vec<String> = self
            .all()
            .into_iter()
            .filter(|t| !used.contains(t) && !ready.contains(t))
            .collect();
        out.sort();
        out
    }

    /// Prepares disks until `warm_pool` are ready (see [`ReadyQueue::refill`]); launches
    /// prepare their own while they are not.
    pub async fn refill(self: Arc<Self>) {
        if !self.enabled() {
            return;
        }
        let disks = &*self;
        let prepare = || {
            let token = disks.new_token();
            async move { disks.prepare(&token).await.map(|()| token) }
        };
        let undo = |token: String| {
            let _ = disks.remove(&token);
            std::future::ready(())
        };
        disks.ready.refill("a sandbox disk", prepare, undo).await;
    }

    /// Removes the ready disks and stops refilling (server shutdown, tests).
    pub async fn drain(&self) {
        self.ready
            .drain(|token| {
                if let Err(e) = self.remove(&token) {
                    tracing::warn!(error = %e, "removing a ready sandbox disk was incomplete");
                }
                std::future::ready(())
            })
            .await;
        // Gone only if no sandbox's disk is mounted there (sandboxes outlive the server).
        let _ = std::fs::remove_dir(&self.mounts);
    }
}

/// Creates `to` as a copy of the sparse file `from`, `len` bytes long: only the data is copied,
/// the holes stay holes.
fn clone_sparse(from: &Path, to: &Path, len: u64) -> std::io::Result<()> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let src = std::fs::File::open(from)?;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    dst.set_len(len)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut offset = 0;
    loop {
        let data = match lseek(src.as_raw_fd(), offset, Whence::SeekData) {
            Ok(o) => o,
            // No data past `offset`.
            Err(nix::errno::Errno::ENXIO) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(src.as_raw_fd(), data, Whence::SeekHole)?;
        let mut pos = data;
        while pos < hole {
            let n = buf.len().min((hole - pos) as usize);
            src.read_exact_at(&mut buf[..n], pos as u64)?;
            dst.write_all_at(&buf[..n], pos as u64)?;
            pos += n as i64;
        }
        offset = hole;
    }
}

/// Mounts the ext4 image `image` at `mount` through a loop device attached here.
fn mount_image(image: &Path, mount: &Path) -> Result<(), String> {
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("opening {}: {e}", image.display()))?;
    let device = crate::loop_device::attach(&backing).map_err(|e| {
        format!(
            "attaching {} to a loop device: {e} (does this host have loop devices? `nimbus doctor` checks, line `disks`)",
            image.display()
        )
    })?;
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some(&device.path),
        mount,
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOATIME,
        // `discard`: what a sandbox deletes is punched out of the image, so the disk takes on
        // the host what the sandbox holds now, not the most it ever held.
        Some("noinit_itable,discard"),
    )
    .map_err(|e| format!("mounting {} at {}: {e}", image.display(), mount.display()))
    // Dropping `device` leaves the mount holding it; it detaches when the mount goes.
}

/// Removes every template in `images` (`template-<mb>.ext4`).
fn remove_templates(images: &Path) {
    for e in std::fs::read_dir(images).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("template-") && name.ends_with(".ext4") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Names the mount directory of the runtime rooted at `root` (a stable hash of its path).
fn data_dir_key(root: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}

/// Creates `dir` (and its parents) and makes it 0700: disks hold sandboxes' files.
fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}
