//! Sandboxes orphaned by a vanished data dir: a test (or a bench) that failed before deleting
//! its sandboxes and whose temporary data dir was then removed leaves their monitors and
//! processes running with nothing left to find them by. Test harnesses call
//! [`remove_orphans_under`] with the temporary directory before they start, so a failed run does
//! not leave a process looping on the host for the next ones. Servers never call it: a data dir
//! that vanished under a running server is an operator's decision to undo by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Removes the sandboxes whose monitor still runs but whose state dir, somewhere under `root`,
/// is gone; returns their ids. Their processes are killed and their host traces removed
/// (cgroups, network and user namespaces, rootfs mount). Sandboxes whose state dir exists are
/// not touched.
pub fn remove_orphans_under(root: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for (pid, dir) in monitors_under(root) {
        if dir.exists() {
            continue;
        }
        let Some(id) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        // The container's network namespace, by inode: a warm-pool one is not named after
        // the sandbox.
        let netns = children
            .split_whitespace()
            .find_map(|c| netns_of(c.parse().ok()?))
            .unwrap_or_else(|| format!("nimbus-{id}"));
        let kill = |pid: i32| nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            let _ = kill(child);
        }
        let _ = kill(pid);
        remove_namespaces(&netns);
        remove_root_mount(&id);
        std::thread::sleep(Duration::from_millis(100));
        remove_cgroups(&id);
        removed.push(id);
    }
    removed.extend(remove_orphan_roots_under(root));
    remove_orphan_disks_under(root);
    removed
}

/// Removes what sandboxes whose monitor died with them left once their state dir under `root`
/// vanished too: their root filesystem's mount (an overlay over that dir's layers) and their
/// network and user namespaces. Returns their ids.
fn remove_orphan_roots_under(root: &Path) -> Vec<String> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for line in mountinfo.lines() {
        let Some(mount) = line.split(' ').nth(4).map(Path::new) else {
            continue;
        };
        // `/run/nimbus/rootfs/<id>/root`
        let Some(id) = mount
            .strip_prefix("/run/nimbus/rootfs")
            .ok()
            .filter(|rest| rest.ends_with("root"))
            .and_then(|rest| rest.parent())
            .and_then(|gate| gate.to_str())
            .filter(|id| !id.is_empty() && !id.contains('/'))
        else {
            continue;
        };
        let options = line.split(" - ").nth(1).and_then(|t| t.split(' ').nth(2));
        let layers: Vec<&Path> = options
            .into_iter()
            .flat_map(|o| o.split(','))
            .filter_map(|o| {
                // `lowerdir+=` once per layer when mounted layer by layer (Linux 6.8+).
                o.strip_prefix("lowerdir=")
                    .or_else(|| o.strip_prefix("lowerdir+="))
                    .or_else(|| o.strip_prefix("upperdir="))
            })
            .flat_map(|dirs| dirs.split(':'))
            .map(Path::new)
            .collect();
        if !state_dir_vanished(&layers, id, &root) {
            continue;
        }
        remove_root_mount(id);
        remove_namespaces(&format!("nimbus-{id}"));
        remove_cgroups(id);
        removed.push(id.to_string());
    }
    removed
}

/// Whether sandbox `id`, whose root mount names `layers` (lower and upper dirs), belongs to a
/// data dir under `root` whose state for it is gone: its `<data>/runtime/sandboxes/<id>`, found
/// from the layers under `root`. Not whether the layer paths exist: an image's layers are
/// mounted through idmapped mounts that are detached once the root is mounted, so a live
/// sandbox's lower dirs do not exist as paths.
fn state_dir_vanished(layers: &[&Path], id: &str, root: &Path) -> bool {
    layers.iter().filter(|l| l.starts_with(root)).any(|layer| {
        let Some(text) = layer.to_str() else {
            return false;
        };
        // Everything below a data dir's `runtime/` is named by Nimbus (hex, ids), so the last
        // `/runtime/` in the path is the data dir's.
        match text.rfind("/runtime/") {
            Some(at) => !Path::new(&text[..at])
                .join("runtime/sandboxes")
                .join(id)
                .exists(),
            None => !layer.exists(),
        }
    })
}

/// Unmounts sandbox `id`'s root filesystem and removes its mount points: `<id>/root` under its
/// gate, and `<id>` itself (sandboxes of earlier versions mounted there).
fn remove_root_mount(id: &str) {
    let gate = Path::new("/run/nimbus/rootfs").join(id);
    for rootfs in [gate.join("root"), gate] {
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&rootfs);
    }
}

/// Removes sandbox `id`'s cgroups in every hierarchy (its processes are gone: crun's own
/// cleanup never ran).
fn remove_cgroups(id: &str) {
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        let own = crate::bundle::cgroup_path(id);
        for h in hierarchies.flatten() {
            let _ = std::fs::remove_dir(h.path().join(own.trim_start_matches('/')));
        }
    }
}

/// Deletes network namespace `netns` (its veth goes with it) and the user namespace kept
/// under the same name.
fn remove_namespaces(netns: &str) {
    let _ = Command::new("ip")
        .args(["netns", "delete", netns])
        .stderr(Stdio::null())
        .status();
    let userns = Path::new("/run/nimbus/userns").join(netns);
    let _ = nix::mount::umount2(&userns, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(&userns);
}

/// Removes sandbox disks (see disks.rs) whose image was under `root` and is gone (a test's
/// temporary data dir removed while a disk of its runtime was still mounted, ready or in use),
/// and the empty mount directories of data dirs; returns the mount points removed.
pub fn remove_orphan_disks_under(root: &Path) -> Vec<PathBuf> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut removed = Vec::new();
    let Ok(data_dirs) = std::fs::read_dir(crate::disks::MOUNTS) else {
        return removed;
    };
    for data_dir in data_dirs.flatten() {
        for disk in std::fs::read_dir(data_dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let mount = disk.path();
            match crate::disks::backing_image(&mount) {
                Some((image, deleted))
                    if image.starts_with(&root) && (deleted || !image.exists()) =>
                {
                    let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_dir(&mount);
                    removed.push(mount);
                }
                // The empty mount point of a disk whose server was killed while preparing it
                // (only that server's next start would remove it). Never mounted, so nothing
                // is lost; `remove_dir` leaves anything not empty.
                None if !maker_alive(&disk.file_name().to_string_lossy())
                    && std::fs::remove_dir(&mount).is_ok() =>
                {
                    removed.push(mount);
                }
                _ => {}
            }
        }
        // Only if empty: a live data dir's disks stay.
        let _ = std::fs::remove_dir(data_dir.path());
    }
    removed
}

/// Whether the process that made disk `token` (`d<pid>-<secs>-<n>`, see disks.rs) still runs;
/// true when the token does not say.
fn maker_alive(token: &str) -> bool {
    token
        .strip_prefix('d')
        .and_then(|t| t.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Sandbox monitors (pid, state dir) whose sandbox's state dir is, or was, under `root`.
/// Standby monitors, which have no sandbox yet, are not among them.
pub fn monitors_under(root: &Path) -> Vec<(i32, PathBuf)> {
    // A monitor's working directory reads with symlinks resolved.
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.iter().any(|a| a == crate::monitor::MONITOR_ARG) {
                return None;
            }
            let dir = monitor_dir(pid, &args)?;
            dir.starts_with(&root).then_some((pid, dir))
        })
        .collect()
}

/// The name under /run/netns of the network namespace process `pid` is in.
fn netns_of(pid: i32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// The state dir of the sandbox monitor `pid` watches: its working directory (monitors enter
/// their sandbox's dir once assigned; a standby monitor is still in `/`), or the `--dir`
/// argument of monitors started by earlier versions. A removed dir reads as its old path.
fn monitor_dir(pid: i32, args: &[String]) -> Option<PathBuf> {
    if let Some(dir) = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
    {
        return Some(PathBuf::from(dir));
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let cwd = cwd.to_string_lossy();
    Some(PathBuf::from(
        cwd.strip_suffix(" (deleted)").unwrap_or(&cwd),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live sandbox's idmapped lower dirs do not exist as paths (the mounts are detached once
    /// the root is mounted): that alone must not make it an orphan; its state dir gone does.
    #[test]
    fn a_root_is_orphaned_by_its_state_dir_not_by_lower_dirs_that_are_not_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let state = root.join("data/runtime/sandboxes/sbx_1");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(root.join("data/runtime/images/layers/aa")).unwrap();
        let idmapped = state.join("idmapped/0/bb");
        let plain = root.join("data/runtime/images/layers/aa");
        let upper = state.join("upper");
        let layers = [idmapped.as_path(), plain.as_path(), upper.as_path()];
        assert!(!state_dir_vanished(&layers, "sbx_1", root));
        std::fs::remove_dir_all(&state).unwrap();
        assert!(state_dir_vanished(&layers, "sbx_1", root));
        // The whole data dir gone (a test's temporary dir removed).
        std::fs::remove_dir_all(root.join("data")).unwrap();
        assert!(state_dir_vanished(&layers[1..2], "sbx_1", root));
        // Layers outside `root` are another data dir's business.
        let elsewhere = Path::new("/nonexistent/runtime/sandboxes/sbx_1/upper");
        assert!(!state_dir_vanished(&[elsewhere], "sbx_1", root));
    }
}
