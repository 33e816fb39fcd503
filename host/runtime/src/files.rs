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
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

/// Why a file operation failed; each maps to an API error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("{0} does not exist in the sandbox")]
    NotFound(String),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    /// The filesystem holding the sandbox's files is full.
    #[error("{0}: no space left for the sandbox's files on this host")]
    NoSpace(String),
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
}

/// The components of an absolute path inside the sandbox, checked: no empty, `.` or `..`
/// components (they would make the target ambiguous), no NUL.
pub fn components(path: &str) -> Result<Vec<&str>, FileError> {
    if path.contains('\0') {
        return Err(invalid(path, "contains a NUL byte"));
    }
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
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
        })
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
        let fd: RawFd = openat2(self.root.as_raw_fd(), path.as_str(), how)?;
        // SAFETY: openat2 just returned this descriptor, and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
        let rel = components(path)?;
        let handle = self
            .open_in(&rel, OFlag::O_PATH, Mode::empty())
            .map_err(|e| errno(path, e))?;
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
    /// replacing an existing file in one step. Returns the size written.
    pub fn write(&self, path: &str, mut bytes: impl Read) -> Result<u64, FileError> {
        let rel = components(path)?;
        let Some((name, parents)) = rel.split_last() else {
            return Err(invalid(path, "names the root directory, not a file"));
        };
        for depth in 0..parents.len() {
            let at = self.dir(&parents[..depth], path)?;
            match mkdirat(
                Some(at.as_raw_fd()),
                parents[depth],
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) => {
                    // Not O_PATH: fchown needs a descriptor opened for real.
                    let made = self
                        .open_in(
                            &parents[..=depth],
                            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                            Mode::empty(),
                        )
                        .map_err(|e| errno(path, e))?;
                    self.chown(&made, path)?;
                }
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(errno(path, e)),
            }
        }
        let parent = self.dir(parents, path)?;
        let tmp = format!(".nimbus-upload-{}-{}", std::process::id(), unique());
        let mut tmp_rel: Vec<&str> = parents.to_vec();
        tmp_rel.push(&tmp);
        let fd = self
            .open_in(
                &tmp_rel,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(|e| errno(path, e))?;
        let outcome = (|| {
            self.chown(&fd, path)?;
            let mut file = File::from(fd);
            let written = std::io::copy(&mut bytes, &mut file).map_err(|e| io(path, e))?;
            file.flush().map_err(|e| io(path, e))?;
            nix::fcntl::renameat(
                Some(parent.as_raw_fd()),
                tmp.as_str(),
                Some(parent.as_raw_fd()),
                *name,
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
        let Some((name, parents)) = rel.split_last() else {
            return Err(invalid(path, "is the root directory"));
        };
        let parent = self.dir(parents, path)?;
        let st = fstatat(
            Some(parent.as_raw_fd()),
            *name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| errno(path, e))?;
        let flag = if kind(st.st_mode) == "dir" {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unlinkat(Some(parent.as_raw_fd()), *name, flag).map_err(|e| match e {
            Errno::ENOTEMPTY | Errno::EEXIST => invalid(path, "is a directory that is not empty"),
            e => errno(path, e),
        })
    }

    /// The entries of the directory at `path`, sorted by name.
    pub fn list(&self, path: &str) -> Result<Vec<Entry>, FileError> {
        let rel = components(path)?;
        let dir = self
            .open_in(&rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| errno(path, e))?;
        // The descriptor already points inside the sandbox; reading it through its
        // /proc/self/fd link resolves nothing else.
        let link = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&link).map_err(|e| io(path, e))? {
            let entry = entry.map_err(|e| io(path, e))?;
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
        Ok(out)
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

/// A number for an upload's temporary name. Not `registry::tmp_path`: that name embeds the
/// target's, and a target name near the 255-byte limit would make it too long.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_component_lists_without_dots() {
        assert_eq!(components("/a/b.txt").unwrap(), vec!["a", "b.txt"]);
        assert_eq!(components("a/b/").unwrap(), vec!["a", "b"]);
        assert!(components("/").unwrap().is_empty());
        for bad in ["/a/../b", "/a/./b", "/a//b", "/a\0b", ".."] {
            assert!(
                matches!(components(bad), Err(FileError::Invalid { .. })),
                "{bad}"
            );
        }
    }
}
