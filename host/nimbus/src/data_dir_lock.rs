//! One server per data dir. Two servers on one data dir would each adopt the other's sandboxes,
//! take each other's leases, and remove the disks the other keeps ready as strays: the first
//! would then fail launches and deletes it cannot recover from. `serve` holds an exclusive
//! `flock` on `<data-dir>/serve.lock` for as long as it runs; the kernel lets go of it when the
//! process ends, however it ends, so a crash never leaves the data dir locked.

use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Held while the server runs; dropping it (or the process ending) unlocks the data dir.
pub struct DataDirLock {
    _file: Flock<std::fs::File>,
}

/// Locks `data_dir` (which exists) for this server, or says which server holds it.
pub fn lock(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = data_dir.join("serve.lock");
    // Opened with O_CLOEXEC (std's default): the sandbox monitors the server starts do not
    // inherit the lock, so it ends with the server even while they run on.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another nimbus server".to_string(),
                pid => format!("another nimbus server (pid {pid})"),
            };
            bail!(
                "data dir {} is in use by {holder}; stop that server first, or give this one a data dir of its own (--data-dir)",
                data_dir.display()
            );
        }
        Err((_, e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    };
    // Who holds it, for the message above.
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(DataDirLock { _file: file })
}
