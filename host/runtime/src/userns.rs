//! User namespaces: each sandbox runs in its own, with its own range of host ids, so root in a
//! sandbox is an unprivileged id on the host that no other sandbox shares.
//!
//! The sandbox's network namespace is created inside its user namespace (both at once, by a
//! short-lived forked child), so crun, joining both by path, can mount a fresh sysfs for that
//! network namespace; a network namespace owned by the host's user namespace would make crun
//! bind the host's `/sys` instead. Both are kept by bind mounts, like `ip netns` does.
//!
//! Image layers stay stored with the image's own ids: a launch mounts the layer store through an
//! idmapped mount for the sandbox's user namespace (one per store directory, detached again once
//! the overlay holds it), so no layer is copied or chowned per sandbox.
//!
//! Unsafe code is allowed here, and only here in the runtime: `fork` (a multithreaded process
//! cannot `unshare` a user namespace itself) and the mount API calls (`open_tree`,
//! `mount_setattr`, `move_mount`) that have no safe wrapper.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Ids per sandbox: the whole 16-bit range images assume (`nobody` is 65534).
pub const IDS_PER_SANDBOX: u32 = 65536;

/// Host ids `first .. first + count` seen as `0 .. count` inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub first: u32,
    pub count: u32,
}

impl IdMap {
    /// The `/proc/<pid>/uid_map` line (and the OCI mapping) for this range.
    pub fn proc_line(&self) -> String {
        format!("0 {} {}\n", self.first, self.count)
    }

    /// The host id of id `inside` of the sandbox.
    pub fn host_id(&self, inside: u32) -> u32 {
        self.first + inside
    }
}

/// The ranges sandboxes get: `slots` consecutive ranges of [`IDS_PER_SANDBOX`] from `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRanges {
    pub first: u32,
    pub slots: u32,
}

impl IdRanges {
    /// Checks that the ranges fit below the ids the kernel reserves (`u32::MAX` is "no id").
    pub fn new(first: u32, slots: u32) -> Result<IdRanges, String> {
        if first == 0 {
            return Err(
                "runtime.id_range_first = 0: sandboxes' ids must start above 0 (the host's root)"
                    .into(),
            );
        }
        if slots == 0 {
            return Err("runtime.id_range_slots = 0: at least 1 (each sandbox running at once takes one), or runtime.user_namespaces = \"off\"".into());
        }
        let end = u64::from(first) + u64::from(slots) * u64::from(IDS_PER_SANDBOX);
        if end > u64::from(u32::MAX) {
            return Err(format!(
                "runtime.id_range_first = {first} with runtime.id_range_slots = {slots} must start above 0 and end below {} (each slot is {IDS_PER_SANDBOX} ids)",
                u32::MAX
            ));
        }
        Ok(IdRanges { first, slots })
    }

    pub fn slot(&self, n: u32) -> IdMap {
        IdMap {
            first: self.first + n * IDS_PER_SANDBOX,
            count: IDS_PER_SANDBOX,
        }
    }
}

/// A sandbox's user namespace: where it is kept and the ids it maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNs {
    pub path: PathBuf,
    pub slot: u32,
    pub map: IdMap,
}

/// Where the user namespace that owns network namespace `netns` is kept.
pub fn path_for(netns: &str) -> PathBuf {
    Path::new("/run/nimbus/userns").join(netns)
}

fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} contains NUL", p.display()))
}

/// Creates a network namespace kept at `net_path`; with `user`, inside a new user namespace
/// mapping `user.1`, kept at `user.0`. Blocking (a fork and a few syscalls, ~1 ms).
pub fn create(net_path: &Path, user: Option<(&Path, IdMap)>) -> Result<(), String> {
    let made = create_inner(net_path, user);
    if made.is_err() {
        remove_kept(net_path);
        if let Some((p, _)) = user {
            remove_kept(p);
        }
    }
    made
}

/// Closes every descriptor from 3 up except `a` and `b`. Async-signal-safe (only system
/// calls), for a forked child of a multithreaded process.
///
/// # Safety
/// Must only run in a child that does not use any other descriptor afterwards.
unsafe fn close_all_but(a: i32, b: i32) {
    let (lo, hi) = (a.min(b) as u32, a.max(b) as u32);
    for (first, last) in [
        (3, lo.wrapping_sub(1)),
        (lo + 1, hi.wrapping_sub(1)),
        (hi + 1, u32::MAX),
    ] {
        if first > last {
            continue;
        }
        if libc::syscall(libc::SYS_close_range, first, last, 0) != 0 {
            // Kernels before 5.9: one by one, up to a bound far above what the server uses.
            for fd in first..=last.min(65535) {
                libc::close(fd as i32);
            }
        }
    }
}

fn create_inner(net_path: &Path, user: Option<(&Path, IdMap)>) -> Result<(), String> {
    let flags = libc::CLONE_NEWNET | user.map_or(0, |_| libc::CLONE_NEWUSER);
    // unshare(CLONE_NEWUSER) is refused to a multithreaded process, so a forked child (single
    // threaded) makes the namespaces and waits while this process maps its ids and keeps them.
    // The two talk in explicit bytes, never by end-of-file: a child forked at the same time by
    // another launch holds copies of these pipes' ends until it exits.
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: the child only makes async-signal-safe system calls and then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(errno("fork for the sandbox's namespaces"));
    }
    if pid == 0 {
        // SAFETY: plain system calls on fds this process owns; no allocation, no locks.
        unsafe {
            // Only its own two pipe ends stay open: with the server's other descriptors (the
            // other ends of these pipes, other launches' pipes, the standby monitors' stdin) a
            // child orphaned by a killed server would never see end-of-file and would keep
            // those monitors waiting for ever.
            close_all_but(ready_w.as_raw_fd(), go_r.as_raw_fd());
            // 0, or the errno of the failure (all of unshare's fit in a byte).
            let status = if libc::unshare(flags) == 0 {
                0u8
            } else {
                *libc::__errno_location() as u8
            };
            libc::write(ready_w.as_raw_fd(), (&status as *const u8).cast(), 1);
            let mut b = 0u8;
            libc::read(go_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(go_r);
    let child = nix::unistd::Pid::from_raw(pid);
    let reap = |go_w: OwnedFd| {
        let _ = nix::unistd::write(&go_w, &[1]);
        drop(go_w);
        let _ = nix::sys::wait::waitpid(child, None);
    };
    let mut status = [1u8];
    let what = if user.is_some() {
        "a user and network namespace"
    } else {
        "a network namespace"
    };
    let answered = readable_within(&ready_r, Duration::from_secs(30))
        && loop {
            match nix::unistd::read(ready_r.as_raw_fd(), &mut status) {
                Err(nix::errno::Errno::EINTR) => continue,
                got => break got == Ok(1),
            }
        };
    if !answered {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        reap(go_w);
        return Err(format!(
            "cannot create {what}: the child making it did not answer within 30 s"
        ));
    }
    if status[0] != 0 {
        reap(go_w);
        let e = std::io::Error::from_raw_os_error(i32::from(status[0]));
        return Err(format!(
            "cannot create {what}: unshare: {e} (see `nimbus doctor`; user.max_user_namespaces or user.max_net_namespaces may be 0 or exhausted)"
        ));
    }
    let kept = (|| {
        if let Some((user_path, map)) = user {
            for file in ["uid_map", "gid_map"] {
                std::fs::write(format!("/proc/{pid}/{file}"), map.proc_line())
                    .map_err(|e| format!("writing the sandbox's {file}: {e}"))?;
            }
            keep(&format!("/proc/{pid}/ns/user"), user_path)?;
        }
        keep(&format!("/proc/{pid}/ns/net"), net_path)
    })();
    reap(go_w);
    kept
}

/// Whether `fd` has something to read within `within`. A signal (the async runtime's SIGCHLD,
/// frequent during a burst of launches) interrupts poll(2) whatever SA_RESTART says, so an
/// interrupted wait goes on for the time left.
fn readable_within(fd: &OwnedFd, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: poll(2) on one valid pollfd.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            1 => return true,
            0 => return false,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// Bind-mounts namespace file `ns` at `at`, which keeps the namespace after its process exits.
fn keep(ns: &str, at: &Path) -> Result<(), String> {
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::File::create(at).map_err(|e| format!("cannot create {}: {e}", at.display()))?;
    nix::mount::mount(
        Some(ns),
        at,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("cannot keep {ns} at {}: {e}", at.display()))
}

/// Unmounts and removes a kept namespace; a missing one is fine.
pub fn remove_kept(at: &Path) {
    let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(at);
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Mounts `source` at `target` (an existing empty directory) with ids shifted into the user
/// namespace kept at `userns`: a file owned by id N appears owned by that namespace's N.
pub fn idmapped_bind(source: &Path, target: &Path, userns: &Path) -> Result<(), String> {
    let ns = std::fs::File::open(userns)
        .map_err(|e| format!("cannot open user namespace {}: {e}", userns.display()))?;
    let src = cstr(source)?;
    // SAFETY: open_tree(2) with a valid C string; the result is checked and owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(errno(&format!("open_tree {}", source.display())));
    }
    // SAFETY: fd was just returned by open_tree and is owned by nothing else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr(2) on our detached tree with a correctly sized attribute struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(errno(&format!(
            "idmapped mount of {} for the sandbox's user namespace (its filesystem may not support idmapped mounts; put it on ext4, xfs, btrfs or tmpfs, or set runtime.user_namespaces = \"off\")",
            source.display()
        )));
    }
    let dst = cstr(target)?;
    // SAFETY: move_mount(2) of our tree onto a path given as a valid C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(errno(&format!(
            "attaching the idmapped mount at {}",
            target.display()
        )));
    }
    Ok(())
}

/// Whether this host can run sandboxes in user namespaces with layers under `dir`: makes a
/// user namespace and an idmapped mount of a directory there, then removes both.
pub fn probe(dir: &Path) -> Result<(), String> {
    let scratch = dir.join(format!(".userns-probe-{}", std::process::id()));
    let (src, dst) = (scratch.join("src"), scratch.join("dst"));
    let userns = scratch.join("ns");
    let netns = scratch.join("net");
    let result = (|| {
        for d in [&src, &dst] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let map = IdMap {
            first: u32::MAX - IDS_PER_SANDBOX,
            count: 1,
        };
        create(&netns, Some((&userns, map)))?;
        idmapped_bind(&src, &dst, &userns)?;
        let _ = nix::mount::umount2(&dst, nix::mount::MntFlags::MNT_DETACH);
        Ok(())
    })();
    remove_kept(&netns);
    remove_kept(&userns);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_consecutive_and_must_fit_in_32_bits() {
        let r = IdRanges::new(0x4000_0000, 4096).unwrap();
        assert_eq!(r.slot(0).first, 0x4000_0000);
        assert_eq!(r.slot(1).first, 0x4001_0000);
        assert_eq!(r.slot(1).proc_line(), "0 1073807360 65536\n");
        assert_eq!(r.slot(1).host_id(1000), 0x4001_0000 + 1000);
        assert!(IdRanges::new(0, 1).is_err());
        assert!(
            IdRanges::new(0xFFFF_0000, 1).is_err(),
            "would reach u32::MAX"
        );
        assert!(IdRanges::new(0xFFFE_0000, 1).is_ok());
    }
}
