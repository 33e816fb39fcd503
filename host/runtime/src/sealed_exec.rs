//! Running crun from a sealed in-memory copy of its binary.
//!
//! crun protects the host binary against CVE-2019-5736 (a container overwriting the runtime
//! through `/proc/self/exe`) by re-executing itself from a copy on every invocation: it
//! bind-mounts its binary read-only (or copies it into a sealed memfd) and execs that, which
//! costs a second exec, its dynamic linking, and a mount and unmount, about 4 ms a call on the
//! 2-core test VM (`crun list`: 7.1–8.2 ms from the path, 3.1–3.9 ms from a sealed copy).
//! crun skips all that when it already runs from a memfd sealed against writes, growing and
//! shrinking, since nothing can change such a file (the arrangement runc's `memfd-bind` uses).
//! The monitor therefore makes that copy itself and runs crun from it: the same protection,
//! one exec.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// A sealed copy of an executable, runnable as [`SealedCopy::path`] by this process and the
/// children it starts while the copy is alive.
pub struct SealedCopy {
    fd: OwnedFd,
}

impl SealedCopy {
    /// Copies `binary` into a memfd and seals it the way crun checks for (seal, shrink, grow,
    /// write).
    pub fn of(binary: &Path) -> std::io::Result<SealedCopy> {
        let bytes = std::fs::read(binary)?;
        let name = CString::new("crun_cloned:/proc/self/exe").unwrap_or_default();
        let flags = MemFdCreateFlag::MFD_ALLOW_SEALING | MemFdCreateFlag::MFD_CLOEXEC;
        let fd = memfd_create(&name, flags)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&bytes)?;
        let fd = OwnedFd::from(file);
        let seals = SealFlag::F_SEAL_SEAL
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE;
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
        Ok(SealedCopy { fd })
    }

    /// The copy's path in this process (`/proc/self/fd/N`). A child started from this
    /// process can exec it: the kernel opens the file before it closes the close-on-exec
    /// descriptor, so the program (and whatever it starts) does not keep it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_runs_and_cannot_be_changed() {
        let copy = SealedCopy::of(Path::new("/bin/sh")).unwrap();
        let out = std::process::Command::new(copy.path())
            .args(["-c", "echo from-the-copy"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "from-the-copy\n");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(copy.path())
            .unwrap();
        assert!(
            f.write_all(b"x").is_err(),
            "a sealed copy must refuse writes"
        );
        let seals = fcntl(copy.fd.as_raw_fd(), FcntlArg::F_GET_SEALS).unwrap();
        assert_eq!(seals, 0b1111, "crun checks for exactly these seals");
    }
}
