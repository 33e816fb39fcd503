//! Mounting a sandbox's overlay root with any number of layers.
//!
//! `mount(2)` takes an overlay's options in one string of at most a page (4 KiB), and each
//! layer's path there is ~140 bytes (the data dir, the sandbox's id, a 64-digit layer digest):
//! an image of more than ~27 layers would not fit, and the kernel would see a cut path. Linux
//! 6.8 and later take each layer on its own through the file-system context API
//! (`fsopen`/`fsconfig` with `lowerdir+`, then `fsmount` and `move_mount`), up to overlayfs's
//! own limit of 500 layers. Older kernels get the one string, and an image whose paths do not
//! fit is refused with a message that says so instead of failing on a cut path.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// The longest options string `mount(2)` passes on (a page, less its terminating NUL).
const MAX_LEGACY_OPTIONS: usize = 4095;

/// Mounts an overlay at `target` (an existing directory) with `nodev` and `nosuid`: `lower`
/// top-most first, then `upper` and `work`.
///
/// nodev: a device node an image carries (tar layers may) opens nothing, inside (the device
/// cgroup denies it too) or from the host (the files channel). The sandbox's /dev is crun's own
/// tmpfs and unaffected. nosuid: a setuid file a sandbox writes never raises whoever runs it on
/// the host; inside, no_new_privs already makes setuid bits inert.
pub(crate) fn mount(
    target: &Path,
    lower: &[&Path],
    upper: &Path,
    work: &Path,
) -> Result<(), String> {
    match mount_layer_by_layer(target, lower, upper, work) {
        Err(Unsupported) => mount_legacy(target, lower, upper, work),
        Ok(result) => result,
    }
}

/// The kernel has no `lowerdir+` (before Linux 6.8) or no file-system context API at all.
struct Unsupported;

fn mount_layer_by_layer(
    target: &Path,
    lower: &[&Path],
    upper: &Path,
    work: &Path,
) -> Result<Result<(), String>, Unsupported> {
    // SAFETY: fsopen(2) with a valid C string; the result is checked and owned below.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(Unsupported);
    }
    // SAFETY: fd was just returned by fsopen and is owned by nothing else.
    let context = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for (n, layer) in lower.iter().enumerate() {
        if let Err(e) = set_string(&context, "lowerdir+", layer) {
            if n == 0 && e.raw_os_error() == Some(libc::EINVAL) {
                return Err(Unsupported);
            }
            return Ok(Err(failed(
                &context,
                &format!("layer {}", layer.display()),
                &e,
            )));
        }
    }
    // "overlay" as the source, as mount(2) gives it, for whoever reads /proc/self/mountinfo.
    for (key, dir) in [
        ("source", Path::new("overlay")),
        ("upperdir", upper),
        ("workdir", work),
    ] {
        if let Err(e) = set_string(&context, key, dir) {
            return Ok(Err(failed(&context, key, &e)));
        }
    }
    // SAFETY: fsconfig(2) command with no key or value, on our context.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Ok(Err(failed(&context, "creating the overlay", &e)));
    }
    // SAFETY: fsmount(2) of our created context; the result is checked and owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Ok(Err(failed(&context, "making the overlay's mount", &e)));
    }
    // SAFETY: fd was just returned by fsmount and is owned by nothing else.
    let mounted = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let Ok(to) = CString::new(target.as_os_str().as_bytes()) else {
        return Ok(Err(format!("{} contains NUL", target.display())));
    };
    // SAFETY: move_mount(2) of our detached mount onto a path given as a valid C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mounted.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Ok(Err(format!(
            "attaching the overlay at {}: {e}",
            target.display()
        )));
    }
    Ok(Ok(()))
}

/// The layer directories (by name: a digest's 64 hex digits) that mounted overlays on this
/// host use, from `/proc/self/mountinfo`: a sandbox's root, running or kept for its files,
/// holds its image's layers (through idmapped mounts of the store's directory, whose entries
/// have the same names).
pub(crate) fn layers_in_use() -> std::collections::HashSet<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| line.split(" - ").nth(1))
        .filter(|fs| fs.starts_with("overlay "))
        .filter_map(|fs| fs.split(' ').nth(2))
        .flat_map(|options| options.split(','))
        .filter_map(|o| {
            o.strip_prefix("lowerdir=")
                .or_else(|| o.strip_prefix("lowerdir+="))
        })
        .flat_map(|dirs| dirs.split(':'))
        .filter_map(|dir| dir.rsplit('/').next())
        .filter(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}

fn set_string(context: &OwnedFd, key: &str, value: &Path) -> std::io::Result<()> {
    let key = CString::new(key).map_err(std::io::Error::other)?;
    let value = CString::new(value.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: fsconfig(2) setting a string parameter, both given as valid C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What failed, with the kernel's own explanation when the context has one: overlayfs says
/// there why it refused a layer, which the error number alone does not.
fn failed(context: &OwnedFd, what: &str, e: &std::io::Error) -> String {
    let mut said = Vec::new();
    if let Ok(log) = context.try_clone().map(std::fs::File::from) {
        let mut buf = [0u8; 1024];
        // Each read returns one message ("e overlay: …"); ENODATA once the log is empty.
        for _ in 0..8 {
            match (&log).read(&mut buf) {
                Ok(n) if n > 0 => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    said.push(text.get(2..).unwrap_or(&text).trim().to_string());
                }
                _ => break,
            }
        }
    }
    if said.is_empty() {
        format!("{what}: {e}")
    } else {
        format!("{what}: {e} ({})", said.join("; "))
    }
}

fn mount_legacy(target: &Path, lower: &[&Path], upper: &Path, work: &Path) -> Result<(), String> {
    let lowers: Vec<String> = lower
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if lowers.iter().any(|l| l.contains(',') || l.contains(':')) {
        return Err("a layer path contains ',' or ':', which overlayfs cannot take in its options before Linux 6.8; use a data dir without them".into());
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() > MAX_LEGACY_OPTIONS {
        return Err(format!(
            "the image's {} layers do not fit in one overlay mount on this kernel: before Linux 6.8 \
             the layers' paths share one 4 KiB options string, and here they take {} bytes; run \
             Nimbus on Linux 6.8 or later (which takes up to 500 layers), give it a data dir with \
             a shorter path, or use an image with fewer layers",
            lower.len(),
            options.len()
        ));
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOSUID,
        Some(options.as_str()),
    )
    .map_err(|e| format!("mounting the overlay: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// `count` layers under `root`, each named like a layer digest, holding `own-<n>` and a
    /// `shared` file saying which layer it is; bottom-most first.
    fn layers(root: &Path, count: usize) -> Vec<PathBuf> {
        (0..count)
            .map(|n| {
                let dir = root.join(format!("{n:064x}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("own-{n}")), "").unwrap();
                std::fs::write(dir.join("shared"), n.to_string()).unwrap();
                dir
            })
            .collect()
    }

    /// An upper dir, a work dir and a mount point under `dir`, made.
    fn scratch(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let made = (dir.join("u"), dir.join("w"), dir.join("r"));
        for d in [&made.0, &made.1, &made.2] {
            std::fs::create_dir_all(d).unwrap();
        }
        made
    }

    #[test]
    fn an_image_of_hundreds_of_layers_mounts_with_the_top_layer_winning() {
        // 300 paths of ~110 bytes: 33 KiB of lower dirs, eight times what one mount(2) options
        // string carries (the kernel here is newer than 6.8, as on the machines CI runs on).
        let dir = tempfile::tempdir().unwrap();
        let deep = dir
            .path()
            .join("a-data-dir-with-a-longish-path/runtime/sandboxes");
        let bottom_first = layers(&deep, 300);
        let (upper, work, root) = scratch(dir.path());
        let top_first: Vec<&Path> = bottom_first.iter().rev().map(PathBuf::as_path).collect();
        mount(&root, &top_first, &upper, &work).expect("mounted");
        let seen = (
            std::fs::read_to_string(root.join("shared")),
            root.join("own-0").exists(),
            root.join("own-299").exists(),
        );
        let in_use = layers_in_use();
        let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
        assert_eq!(seen.0.unwrap(), "299");
        assert!(seen.1 && seen.2, "every layer's files are there");
        for n in [0usize, 150, 299] {
            assert!(
                in_use.contains(&format!("{n:064x}")),
                "layer {n} is not seen in use"
            );
        }
    }

    #[test]
    fn layers_that_do_not_fit_one_options_string_are_refused_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let bottom_first = layers(dir.path(), 60);
        let top_first: Vec<&Path> = bottom_first.iter().rev().map(PathBuf::as_path).collect();
        let (upper, work, root) = scratch(dir.path());
        let err = mount_legacy(&root, &top_first, &upper, &work).unwrap_err();
        assert!(err.contains("60 layers do not fit"), "{err}");
        assert!(err.contains("Linux 6.8"), "{err}");
    }

    #[test]
    fn a_missing_layer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, work, root) = scratch(dir.path());
        let missing = dir.path().join("no-such-layer");
        let err = mount(&root, &[missing.as_path()], &upper, &work).unwrap_err();
        assert!(err.contains("no-such-layer"), "{err}");
    }
}
