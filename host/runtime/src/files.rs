//! Files inside a sandbox's root filesystem, for the session `files` channel.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)` from the sandbox's mounted root, as if the server were chrooted there: `..`
//! stops at the root, and a symlink the sandbox planted (even `/etc -> /host/etc` or
//! `x -> ../../../..`) resolves inside it, never to the host. Writes go to a temporary file in
//! the target's directory and are renamed over it, so a reader inside never sees half a file;
//! they belong to the sandbox's root (its user namespace's id 0), as if root inside wrote them.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Why a file operation failed; each maps to an API error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("{0} does not exist in the sandbox")]
    NotFound(String),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    /// The filesystem holding the sandbox's files (its disk) is full.
    #[error("{0}: no space left in the sandbox's root filesystem")]
    NoSpace(String),
    /// The host cannot take the write: the file system under the data dir (holding the
    /// sandbox disks' sparse images and the upload journal) is down to its reserve, or the
    /// sandbox's disk failed to store what was written.
    #[error("{0}")]
    HostUnfit(String),
    /// The path kept changing while it was resolved (renames racing the lookup, on the
    /// sandbox's side or anywhere on the host); the caller may retry.
    #[error("{0}: the path changed while it was being resolved; retry")]
    Busy(String),
    #[error("{0}")]
    Io(String),
}

/// What a directory listing says about one entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: &'static str,
    pub size: u64,
    /// Permission bits, e.g. 420 for 0644.
    pub mode: u32,
    /// Seconds since the Unix epoch.
    pub modified: i64,
}

/// A sandbox's mounted root, opened once for a series of operations.
pub struct SandboxFiles {
    root: OwnedFd,
    /// The host id of root inside (with user namespaces); new files and directories get it.
    owner: Option<u32>,
    /// Where uploads in progress are recorded, so that a crash's are undone later.
    journal: Option<crate::upload_journal::UploadJournal>,
    /// Uploads stop while the file system at this path (where the sandbox's writes take host
    /// space) is down to the reserve, as launches do.
    room: Option<(crate::disk_reserve::DiskReserve, PathBuf)>,
}

/// The components of an absolute path inside the sandbox, checked: no empty, `.` or `..`
/// components (they would make the target ambiguous), no NUL.
pub fn components(path: &str) -> Result<Vec<&str>, FileError> {
    if path.contains('\0') {
        return Err(invalid(path, "contains a NUL byte"));
    }
    // One trailing / (a directory's spelling) is dropped; more would be empty components.
    let trimmed = path.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(invalid(
            path,
            "has an empty, `.` or `..` component; give the path from / without them",
        ));
    }
    Ok(parts)
}

/// Refuses a path under one of the mounts the sandbox's process sees over its root filesystem
/// (bundle.rs: `/proc`, `/sys`, `/dev`, and the `/etc` files Nimbus writes). The files channel
/// works on the root filesystem itself: what it read there is not what the process reads, and
/// what it wrote there the process would never see. By name, as given; each operation checks
/// again where the path leads once symlinks are resolved ([`SandboxFiles::resolved_outside_mounts`]).
fn outside_mounts(path: &str, rel: &[&str]) -> Result<(), FileError> {
    let mount = match rel {
        [top @ ("proc" | "sys" | "dev"), ..] => format!("/{top}"),
        ["etc", file @ ("hosts" | "hostname" | "resolv.conf")] => format!("/etc/{file}"),
        _ => return Ok(()),
    };
    Err(invalid(
        path,
        format!("is under {mount}, which the sandbox mounts over its root filesystem: the process sees that mount, not this file; use a process (the stdio channel) to reach it"),
    ))
}

fn invalid(path: &str, reason: impl Into<String>) -> FileError {
    FileError::Invalid {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn io(path: &str, e: std::io::Error) -> FileError {
    match e.raw_os_error() {
        Some(code) => errno(path, Errno::from_raw(code)),
        None => FileError::Io(format!("{path}: {e}")),
    }
}

fn errno(path: &str, e: Errno) -> FileError {
    match e {
        Errno::ENOENT => FileError::NotFound(path.to_string()),
        Errno::ENOTDIR => invalid(path, "a component of the path is not a directory"),
        Errno::EXDEV => invalid(path, "crosses into another filesystem"),
        Errno::ELOOP => invalid(path, "too many symbolic links"),
        Errno::ENAMETOOLONG => invalid(
            path,
            "has a name longer than 255 bytes, or is longer than 4096 bytes",
        ),
        Errno::ENOSPC | Errno::EDQUOT => FileError::NoSpace(path.to_string()),
        Errno::EAGAIN => FileError::Busy(path.to_string()),
        other => FileError::Io(format!("{path}: {other}")),
    }
}

impl SandboxFiles {
    /// Opens the sandbox root mounted at `rootfs`. Refuses a directory that is not a mount of
    /// its own (a root that is no longer mounted must not let writes land on the host).
    pub fn open(rootfs: &Path, owner: Option<u32>) -> Result<SandboxFiles, FileError> {
        let display = rootfs.display().to_string();
        let root = File::open(rootfs).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FileError::NotFound("/".into()),
            _ => io(&display, e),
        })?;
        let parent = rootfs
            .parent()
            .map(std::fs::metadata)
            .transpose()
            .map_err(|e| io(&display, e))?;
        let md = root.metadata().map_err(|e| io(&display, e))?;
        if parent.is_some_and(|p| p.dev() == md.dev()) {
            return Err(FileError::NotFound("/".into()));
        }
        Ok(SandboxFiles {
            root: OwnedFd::from(root),
            owner,
            journal: None,
            room: None,
        })
    }

    /// Refuses uploads while the file system holding `dir` is down to `reserve`: a sandbox
    /// disk is a sparse file, and one that cannot grow on the host fails its writes with I/O
    /// errors underneath (data the kernel took into its cache, never stored).
    pub fn with_room_check(
        mut self,
        reserve: crate::disk_reserve::DiskReserve,
        dir: PathBuf,
    ) -> SandboxFiles {
        self.room = Some((reserve, dir));
        self
    }

    /// Records uploads in progress under `dir` (host-side, beside the sandbox's state), and
    /// first undoes those a server process that is gone left unfinished.
    pub fn with_upload_journal(mut self, dir: PathBuf) -> SandboxFiles {
        let journal = crate::upload_journal::UploadJournal::new(dir);
        for (entry, upload) in journal.interrupted() {
            let parents: Vec<&str> = upload.parents.iter().map(String::as_str).collect();
            if let Ok(at) = self.dir(&parents, "") {
                let _ = unlinkat(
                    Some(at.as_raw_fd()),
                    upload.tmp.as_str(),
                    UnlinkatFlags::NoRemoveDir,
                );
            }
            self.remove_made_dirs(&parents, &upload.made);
            tracing::info!(journal = %journal.dir().display(), tmp = %upload.tmp, "undid an upload a server crash cut off");
            journal.end(Some(entry));
        }
        self.journal = Some(journal);
        self
    }

    /// Opens `rel` (components from the root) with `flags`, resolved inside the root.
    fn open_in(&self, rel: &[&str], flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        let path = if rel.is_empty() {
            ".".to_string()
        } else {
            rel.join("/")
        };
        // openat2 refuses O_PATH with any flag but O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC.
        let extra = if flags.contains(OFlag::O_PATH) {
            OFlag::O_CLOEXEC
        } else {
            OFlag::O_CLOEXEC | OFlag::O_NOCTTY
        };
        let how = OpenHow::new().flags(flags | extra).mode(mode).resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
        // With RESOLVE_IN_ROOT, openat2 fails with EAGAIN when a rename (or mount) anywhere on
        // the host may have raced its walk of a `..`: a sandbox renaming in a loop, or any
        // other tenant's, would otherwise fail lookups through relative symlinks. Each retry
        // is a fresh, equally safe lookup.
        let mut attempts = 0;
        let fd: RawFd = loop {
            match openat2(self.root.as_raw_fd(), path.as_str(), how) {
                Err(Errno::EAGAIN) if attempts < LOOKUP_RETRIES => attempts += 1,
                other => break other?,
            }
        };
        // SAFETY: openat2 just returned this descriptor, and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// [`outside_mounts`] for where `at` (then `name` in it) really is, symlinks resolved: a
    /// link such as `rootlink -> /` must not carry `rootlink/proc` or `rootlink/etc/hosts` past
    /// the check by name, since deleting or replacing what is under a mount tears the mount out
    /// of the sandbox.
    fn resolved_outside_mounts(
        &self,
        path: &str,
        at: &OwnedFd,
        name: Option<&str>,
    ) -> Result<(), FileError> {
        let link = |fd: RawFd| std::fs::read_link(format!("/proc/self/fd/{fd}"));
        let (Ok(root), Ok(there)) = (link(self.root.as_raw_fd()), link(at.as_raw_fd())) else {
            return Err(FileError::Busy(path.to_string()));
        };
        // Under the root by construction (RESOLVE_IN_ROOT); a directory removed meanwhile
        // reads "… (deleted)" and is not: the sandbox is changing it, so retry.
        let Ok(inside) = there.strip_prefix(&root) else {
            return Err(FileError::Busy(path.to_string()));
        };
        let mut rel: Vec<String> = inside
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        rel.extend(name.map(str::to_string));
        let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
        outside_mounts(path, &rel)
    }

    fn dir(&self, rel: &[&str], path: &str) -> Result<OwnedFd, FileError> {
        self.open_in(rel, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| errno(path, e))
    }

    fn chown(&self, fd: &OwnedFd, path: &str) -> Result<(), FileError> {
        if let Some(id) = self.owner {
            fchown(
                fd.as_raw_fd(),
                Some(Uid::from_raw(id)),
                Some(Gid::from_raw(id)),
            )
            .map_err(|e| errno(path, e))?;
        }
        Ok(())
    }

    /// The regular file at `path`, open for reading. Anything else is refused before it is
    /// opened for reading: opening a FIFO the sandbox made would block, and a device node
    /// would reach the host's device.
    pub fn read(&self, path: &str) -> Result<File, FileError> {
        if path.ends_with('/') {
            return Err(invalid(
                path,
                "ends with / and so names a directory; list it with ?list, or drop the / to read a file",
            ));
        }
        let rel = components(path)?;
        outside_mounts(path, &rel)?;
        let handle = self
            .open_in(&rel, OFlag::O_PATH, Mode::empty())
            .map_err(|e| errno(path, e))?;
        self.resolved_outside_mounts(path, &handle, None)?;
        let st = nix::sys::stat::fstat(handle.as_raw_fd()).map_err(|e| errno(path, e))?;
        match kind(st.st_mode) {
            "file" => {}
            "dir" => return Err(invalid(path, "is a directory; list it with ?list")),
            _ => return Err(invalid(path, "is not a regular file")),
        }
        // Reopened through the handle itself: nothing is resolved again.
        File::open(format!("/proc/self/fd/{}", handle.as_raw_fd())).map_err(|e| io(path, e))
    }

    /// Writes `bytes` to `path` (mode 0644), creating missing parent directories (0755), and
    /// replacing an existing file in one step. Returns the size written. A write that fails
    /// (a full disk, a bad name) leaves nothing: neither the file nor the directories it made.
    pub fn write(&self, path: &str, bytes: &[u8]) -> Result<u64, FileError> {
        self.write_from(path, bytes, bytes.len() as u64)
    }

    /// [`Self::write`] from a reader of `len` bytes (what the free-space check counts).
    pub fn write_from(&self, path: &str, bytes: impl Read, len: u64) -> Result<u64, FileError> {
        let rel = components(path)?;
        outside_mounts(path, &rel)?;
        let Some((name, parents)) = rel.split_last() else {
            return Err(invalid(path, "names the root directory, not a file"));
        };
        if path.ends_with('/') {
            return Err(invalid(
                path,
                "ends with / and so names a directory; drop the / to write a file",
            ));
        }
        if let Some((reserve, dir)) = &self.room {
            reserve
                .ensure_room(dir, len, &format!("the upload of {path}"))
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::StorageFull => FileError::HostUnfit(e.to_string()),
                    _ => io(path, e),
                })?;
        }
        let mut made = Vec::new();
        let mut entry = None;
        let outcome = self.write_making_parents(path, name, parents, bytes, &mut made, &mut entry);
        if outcome.is_err() {
            self.remove_made_dirs(parents, &made);
        }
        if let Some(journal) = &self.journal {
            journal.end(entry);
        }
        outcome
    }

    /// Removes the directories at `made` (depths in `parents`) an upload created, deepest
    /// first. One that is no longer empty (the sandbox wrote into it meanwhile) is the
    /// sandbox's now and stays.
    fn remove_made_dirs(&self, parents: &[&str], made: &[usize]) {
        for &depth in made.iter().rev() {
            if let Ok(at) = self.dir(&parents[..depth], "") {
                let _ = unlinkat(
                    Some(at.as_raw_fd()),
                    parents[depth],
                    UnlinkatFlags::RemoveDir,
                );
            }
        }
    }

    /// [`Self::write`]'s work; `made` collects the depths of the parent directories it created,
    /// `entry` the upload's record in the journal.
    fn write_making_parents(
        &self,
        path: &str,
        name: &str,
        parents: &[&str],
        mut bytes: impl Read,
        made: &mut Vec<usize>,
        entry: &mut Option<PathBuf>,
    ) -> Result<u64, FileError> {
        for depth in 0..parents.len() {
            let at = self.dir(&parents[..depth], path)?;
            match mkdirat(
                Some(at.as_raw_fd()),
                parents[depth],
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) => {
                    made.push(depth);
                    // Through the same parent descriptor, without following a link: were the
                    // new directory swapped meanwhile, what gets chowned is still the
                    // sandbox's own entry, and a lookup by path that fails would leave the
                    // directory owned by host root, which the sandbox could not remove.
                    if let Some(id) = self.owner {
                        fchownat(
                            Some(at.as_raw_fd()),
                            parents[depth],
                            Some(Uid::from_raw(id)),
                            Some(Gid::from_raw(id)),
                            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                        )
                        .map_err(|e| errno(path, e))?;
                    }
                }
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(errno(path, e)),
            }
        }
        let parent = self.dir(parents, path)?;
        self.resolved_outside_mounts(path, &parent, Some(name))?;
        // Made in the parent descriptor, under a name the sandbox cannot guess: a predictable
        // one could be taken ahead (a planted symlink), failing every upload to the directory.
        let mut attempts = 0;
        let (tmp, raw) = loop {
            let tmp = upload_name();
            match nix::fcntl::openat(
                Some(parent.as_raw_fd()),
                tmp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(fd) => break (tmp, fd),
                Err(Errno::EEXIST) if attempts < OPEN_RETRIES => attempts += 1,
                Err(e) => return Err(errno(path, e)),
            }
        };
        // SAFETY: openat just returned this descriptor, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let outcome = (|| {
            if let Some(journal) = &self.journal {
                *entry = Some(journal.begin(parents, made, &tmp).map_err(|e| {
                    FileError::HostUnfit(format!(
                        "{path}: not written: {e} (free space on the host's file system \
                         holding the data dir, then upload again)"
                    ))
                })?);
            }
            self.chown(&fd, path)?;
            let mut file = File::from(fd);
            let written = std::io::copy(&mut bytes, &mut file).map_err(|e| io(path, e))?;
            // Stored, not only cached, before it is answered: a disk that cannot take the
            // bytes (its sparse image unable to grow on a full host) fails here, not later
            // and silently.
            file.sync_data().map_err(|e| match e.raw_os_error() {
                Some(libc::EIO) => FileError::HostUnfit(format!(
                    "{path}: not written: the sandbox's disk could not store it (an I/O error; \
                     the host file system holding the sandbox disks may be full: free space \
                     there, then upload again)"
                )),
                _ => io(path, e),
            })?;
            nix::fcntl::renameat(
                Some(parent.as_raw_fd()),
                tmp.as_str(),
                Some(parent.as_raw_fd()),
                name,
            )
            .map_err(|e| match e {
                Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST => invalid(path, "is a directory"),
                e => errno(path, e),
            })?;
            Ok(written)
        })();
        if outcome.is_err() {
            let _ = unlinkat(
                Some(parent.as_raw_fd()),
                tmp.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
        outcome
    }

    /// Removes the file, symlink or empty directory at `path`.
    pub fn delete(&self, path: &str) -> Result<(), FileError> {
        let rel = components(path)?;
        outside_mounts(path, &rel)?;
        let Some((name, parents)) = rel.split_last() else {
            return Err(invalid(path, "is the root directory"));
        };
        let parent = self.dir(parents, path)?;
        self.resolved_outside_mounts(path, &parent, Some(name))?;
        let st = fstatat(
            Some(parent.as_raw_fd()),
            *name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| errno(path, e))?;
        let mut dir = kind(st.st_mode) == "dir";
        if path.ends_with('/') && !dir {
            return Err(invalid(
                path,
                "ends with / and so names a directory, but is not one; drop the / to delete it",
            ));
        }
        // The entry can change type between the stat and the unlink (the sandbox swapping a
        // file and a directory): the kernel says which it now is, so try the other way.
        let mut attempts = 0;
        loop {
            let flag = if dir {
                UnlinkatFlags::RemoveDir
            } else {
                UnlinkatFlags::NoRemoveDir
            };
            match unlinkat(Some(parent.as_raw_fd()), *name, flag) {
                Ok(()) => return Ok(()),
                Err(Errno::EISDIR | Errno::ENOTDIR) if attempts < OPEN_RETRIES => {
                    attempts += 1;
                    dir = !dir;
                }
                Err(Errno::EISDIR | Errno::ENOTDIR) => return Err(FileError::Busy(path.into())),
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                    return Err(invalid(path, "is a directory that is not empty"))
                }
                Err(e) => return Err(errno(path, e)),
            }
        }
    }

    /// The entries of the directory at `path`, sorted by name: at most [`MAX_LISTED`] of them
    /// (in the directory's own order before sorting), and whether there were more.
    pub fn list(&self, path: &str) -> Result<(Vec<Entry>, bool), FileError> {
        let rel = components(path)?;
        outside_mounts(path, &rel)?;
        let dir = self
            .open_in(&rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| errno(path, e))?;
        self.resolved_outside_mounts(path, &dir, None)?;
        // The descriptor already points inside the sandbox; reading it through its
        // /proc/self/fd link resolves nothing else.
        let link = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let mut out = Vec::new();
        let mut truncated = false;
        for entry in std::fs::read_dir(&link).map_err(|e| io(path, e))? {
            let entry = entry.map_err(|e| io(path, e))?;
            if out.len() == MAX_LISTED {
                truncated = true;
                break;
            }
            let name = entry.file_name();
            let Ok(st) = fstatat(
                Some(dir.as_raw_fd()),
                name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue; // removed meanwhile
            };
            out.push(Entry {
                name: name.to_string_lossy().into_owned(),
                kind: kind(st.st_mode),
                size: st.st_size as u64,
                mode: st.st_mode & 0o7777,
                modified: st.st_mtime,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((out, truncated))
    }
}

/// `file`, `dir`, `symlink` or `other`, from a stat mode.
fn kind(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => "file",
        SFlag::S_IFDIR => "dir",
        SFlag::S_IFLNK => "symlink",
        _ => "other",
    }
}

/// How many times a temporary name or an unlink that lost a race is tried again.
const OPEN_RETRIES: u32 = 32;

/// How many times a lookup that raced a rename is tried again. Each try fails only if a rename
/// lands inside its own few microseconds, but a host renaming in a tight loop (another
/// tenant's sandbox, say) made most tries fail: 1024 keeps the chance of all of them failing
/// negligible, and costs milliseconds at worst.
const LOOKUP_RETRIES: u32 = 1024;

/// Most entries one listing returns: a directory of 300 000 files would otherwise take seconds
/// and tens of MiB of JSON per request.
pub const MAX_LISTED: usize = 10_000;

/// An upload's temporary name: a random (v4) UUID the sandbox cannot predict (nothing of the
/// server's pid or a counter shows through). Not `registry::tmp_path`: that name embeds the
/// target's, and a target name near the 255-byte limit would make it too long.
fn upload_name() -> String {
    format!(".nimbus-upload-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files over a plain directory (the tests' stand-in for a sandbox's mounted root), its
    /// uploads recorded in `journal`.
    fn files_over(root: &Path, journal: &Path) -> SandboxFiles {
        SandboxFiles {
            root: OwnedFd::from(File::open(root).unwrap()),
            owner: None,
            journal: None,
            room: None,
        }
        .with_upload_journal(journal.to_path_buf())
    }

    fn journal_entries(journal: &Path) -> Vec<String> {
        std::fs::read_dir(journal)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn an_upload_is_recorded_while_it_runs_and_forgotten_once_done() {
        let (root, journal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let files = files_over(root.path(), journal.path());
        /// Checks the journal when the upload first reads its bytes.
        struct Body<'a> {
            journal: &'a Path,
            seen: Option<Vec<String>>,
            sent: bool,
        }
        impl Read for Body<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.seen.is_none() {
                    self.seen = Some(journal_entries(self.journal));
                }
                if self.sent {
                    return Ok(0);
                }
                self.sent = true;
                buf[..2].copy_from_slice(b"hi");
                Ok(2)
            }
        }
        let mut body = Body {
            journal: journal.path(),
            seen: None,
            sent: false,
        };
        assert_eq!(files.write_from("/new/dir/f.txt", &mut body, 2).unwrap(), 2);
        let seen = body.seen.unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].starts_with(".nimbus-upload-"), "{seen:?}");
        assert!(journal_entries(journal.path()).is_empty());
        assert_eq!(
            std::fs::read(root.path().join("new/dir/f.txt")).unwrap(),
            b"hi"
        );
    }

    /// Every top-level entry of `root` but the journal: what an upload left.
    fn left_in(root: &Path) -> Vec<String> {
        journal_entries(root)
    }

    #[test]
    fn an_upload_that_cannot_be_recorded_or_finds_the_host_at_its_reserve_writes_nothing() {
        let (root, scratch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // The journal's directory cannot be made (a file is in the way), as when the data
        // dir's file system is full.
        let blocked = scratch.path().join("file");
        std::fs::write(&blocked, "").unwrap();
        let files = files_over(root.path(), &blocked.join("uploads"));
        let err = files.write("/new/f.txt", &b"hi"[..]).unwrap_err();
        assert!(matches!(err, FileError::HostUnfit(_)), "{err}");
        assert!(
            err.to_string().contains("cannot record the upload"),
            "{err}"
        );
        assert!(
            left_in(root.path()).is_empty(),
            "{:?}",
            left_in(root.path())
        );

        let journal = scratch.path().join("uploads");
        let files = files_over(root.path(), &journal).with_room_check(
            crate::disk_reserve::DiskReserve::new(u64::MAX / 4),
            scratch.path().to_path_buf(),
        );
        let err = files.write("/new/f.txt", &b"hi"[..]).unwrap_err();
        assert!(matches!(err, FileError::HostUnfit(_)), "{err}");
        assert!(
            err.to_string().contains("the upload of /new/f.txt"),
            "{err}"
        );
        assert!(
            left_in(root.path()).is_empty(),
            "{:?}",
            left_in(root.path())
        );
    }

    /// The free-space check counts the upload itself: one that would take the host into the
    /// reserve is refused, not only the uploads after it.
    #[test]
    fn an_upload_that_would_reach_into_the_reserve_is_refused() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let (root, journal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let host = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(host.path())
            .status()
            .unwrap();
        assert!(st.success());
        let files = files_over(root.path(), journal.path()).with_room_check(
            crate::disk_reserve::DiskReserve::new(32 << 20),
            host.path().to_path_buf(),
        );
        let big = files.write("/big", &vec![7u8; 40 << 20]);
        let small = files.write("/small", &[7u8; 1024]);
        let _ = nix::mount::umount2(host.path(), nix::mount::MntFlags::MNT_DETACH);
        let err = big.unwrap_err();
        assert!(matches!(err, FileError::HostUnfit(_)), "{err}");
        assert!(!root.path().join("big").exists());
        assert_eq!(small.unwrap(), 1024);
    }

    /// A sandbox disk is a sparse image: on a host file system without room for it to grow,
    /// the kernel takes an upload into its cache and fails to store it later. The upload syncs
    /// its data, so it fails then and there instead of answering that it was written.
    #[test]
    fn an_upload_to_a_disk_that_cannot_grow_on_the_host_fails_instead_of_being_lost() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let (host, mnt) = (scratch.path().join("host"), scratch.path().join("mnt"));
        std::fs::create_dir_all(&host).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let run = |cmd: &str, args: &[&str]| {
            let st = std::process::Command::new(cmd).args(args).status().unwrap();
            assert!(st.success(), "{cmd} {args:?}");
        };
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=8m",
                "tmpfs",
                host.to_str().unwrap(),
            ],
        );
        let image = host.join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        run(
            "mkfs.ext4",
            &["-q", "-F", "-O", "^has_journal", image.to_str().unwrap()],
        );
        run(
            "mount",
            &["-o", "loop", image.to_str().unwrap(), mnt.to_str().unwrap()],
        );
        let outcome = {
            let files = SandboxFiles::open(&mnt, None).unwrap();
            // Bytes that do not compress or dedupe away: 24 MiB, three times the host's room.
            let mut data = vec![0u8; 24 << 20];
            for (i, b) in data.iter_mut().enumerate() {
                *b = (i.wrapping_mul(2654435761) >> 13) as u8;
            }
            files.write("/big", &data[..])
        };
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        let _ = std::process::Command::new("umount").arg(&host).status();
        let err = outcome.unwrap_err();
        assert!(
            matches!(err, FileError::HostUnfit(_) | FileError::NoSpace(_)),
            "{err}"
        );
    }

    #[test]
    fn uploads_a_gone_server_left_unfinished_are_undone_and_running_ones_kept() {
        let (root, journal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // A crash's leftovers: two directories the upload made, inside one that was there,
        // and its partial file.
        std::fs::create_dir_all(root.path().join("kept/made/deeper")).unwrap();
        let tmp = ".nimbus-upload-0123456789abcdef0123456789abcdef";
        std::fs::write(root.path().join("kept/made/deeper").join(tmp), b"partial").unwrap();
        let entry = serde_json::json!({"process": "gone", "parents": ["kept", "made", "deeper"], "made": [1, 2], "tmp": tmp});
        std::fs::write(
            journal.path().join(format!("{tmp}.json")),
            entry.to_string(),
        )
        .unwrap();
        // One of this process's own, in progress: left alone.
        let files = files_over(root.path(), journal.path());
        let running = files
            .journal
            .as_ref()
            .unwrap()
            .begin(&["kept"], &[], ".nimbus-upload-running")
            .unwrap();
        let _ = files_over(root.path(), journal.path());
        assert!(!root.path().join("kept/made").exists());
        assert!(root.path().join("kept").is_dir());
        assert_eq!(
            journal_entries(journal.path()),
            [".nimbus-upload-running.json"]
        );
        files.journal.as_ref().unwrap().end(Some(running));
        assert!(journal_entries(journal.path()).is_empty());
    }

    #[test]
    fn upload_names_are_unpredictable() {
        let (a, b) = (upload_name(), upload_name());
        assert_ne!(a, b);
        assert_eq!(a.len(), ".nimbus-upload-".len() + 32, "{a}");
    }

    #[test]
    fn paths_under_the_sandboxs_own_mounts_are_refused_and_their_neighbours_pass() {
        for path in [
            "/proc/x",
            "/proc",
            "/sys/fs/cgroup/x",
            "/dev/null",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
        ] {
            let rel = components(path).unwrap();
            match outside_mounts(path, &rel) {
                Err(FileError::Invalid { reason, .. }) => {
                    assert!(
                        reason.contains("mounts over its root filesystem"),
                        "{path}: {reason}"
                    )
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        for path in [
            "/",
            "/etc",
            "/etc/passwd",
            "/etc/hosts.allow",
            "/tmp/proc",
            "/devices",
            "/work/dev/x",
        ] {
            outside_mounts(path, &components(path).unwrap()).unwrap();
        }
    }

    /// A symlink in the sandbox does not carry a path past the mount check: `rootlink -> /`
    /// makes `rootlink/proc` the sandbox's `/proc`, refused like `/proc` itself.
    #[test]
    fn paths_through_symlinks_into_the_sandboxs_own_mounts_are_refused() {
        let (root, journal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir_all(root.path().join("proc/1")).unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(root.path().join("etc/passwd"), "root:x:0:0\n").unwrap();
        std::os::unix::fs::symlink("/", root.path().join("rootlink")).unwrap();
        std::os::unix::fs::symlink("../etc", root.path().join("etclink")).unwrap();
        let files = files_over(root.path(), journal.path());
        let refused = |outcome: Result<(), FileError>, what: &str| match outcome {
            Err(FileError::Invalid { reason, .. }) => assert!(
                reason.contains("mounts over its root filesystem"),
                "{what}: {reason}"
            ),
            other => panic!("{what}: {other:?}"),
        };
        refused(files.read("/rootlink/etc/hosts").map(drop), "read");
        refused(
            files.read("/etclink/hosts").map(drop),
            "read via a relative link",
        );
        refused(files.delete("/rootlink/proc"), "delete");
        refused(files.delete("/rootlink/etc/hosts"), "delete a file");
        refused(
            files
                .write("/rootlink/etc/resolv.conf", &b"nameserver 6.6.6.6\n"[..])
                .map(drop),
            "write",
        );
        refused(
            files.write("/rootlink/proc/x/y", &b"z"[..]).map(drop),
            "write under",
        );
        refused(files.list("/rootlink/proc").map(drop), "list");
        assert!(root.path().join("proc/1").is_dir());
        assert!(root.path().join("etc/hosts").is_file());
        assert!(!root.path().join("etc/resolv.conf").exists());
        assert!(
            !root.path().join("proc/x").exists(),
            "the made directory is undone"
        );
        // Elsewhere, links are followed as before.
        let mut passwd = String::new();
        files
            .read("/rootlink/etc/passwd")
            .unwrap()
            .read_to_string(&mut passwd)
            .unwrap();
        assert_eq!(passwd, "root:x:0:0\n");
        files.write("/rootlink/tmp/ok", &b"ok"[..]).unwrap();
        assert!(root.path().join("tmp/ok").is_file());
    }

    #[test]
    fn paths_are_absolute_component_lists_without_dots() {
        assert_eq!(components("/a/b.txt").unwrap(), vec!["a", "b.txt"]);
        assert_eq!(components("a/b/").unwrap(), vec!["a", "b"]);
        assert!(components("/").unwrap().is_empty());
        for bad in ["/a/../b", "/a/./b", "/a//b", "/a\0b", "..", "/a/b//"] {
            assert!(
                matches!(components(bad), Err(FileError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_trailing_slash_names_a_directory_for_writes_and_deletes_too() {
        let (root, journal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let files = files_over(root.path(), journal.path());
        let err = files.write("/new/", &b"hi"[..]).unwrap_err();
        assert!(err.to_string().contains("ends with /"), "{err}");
        assert!(!root.path().join("new").exists());
        files.write("/f", &b"hi"[..]).unwrap();
        let err = files.delete("/f/").unwrap_err();
        assert!(err.to_string().contains("is not one"), "{err}");
        assert!(root.path().join("f").exists());
        std::fs::create_dir(root.path().join("d")).unwrap();
        files.delete("/d/").unwrap();
        assert!(!root.path().join("d").exists());
    }
}
