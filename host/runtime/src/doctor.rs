//! Host checks behind `nimbus doctor` and [`crate::Runtime::preflight`], and the fixes the
//! runtime can apply itself: the v1 hugetlb mount crun needs on hybrid cgroup hosts, and
//! `favordynmods` on the v2 hierarchy so starting a sandbox does not wait on the kernel.

use std::path::{Path, PathBuf};

/// The host cannot run container sandboxes; each entry says what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this host cannot run container sandboxes: {}", .problems.join("; "))]
pub struct HostUnfit {
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Sandboxes cannot run until this is fixed.
    Fail,
    /// Worth knowing, not blocking container sandboxes.
    Info,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// Exactly what to do, when the status is not Ok.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Pure cgroup v2 at /sys/fs/cgroup.
    Unified,
    /// v1 controllers with a v2 hierarchy at /sys/fs/cgroup/unified holding these controllers.
    Hybrid {
        unified_controllers: Vec<String>,
    },
    /// v1 only.
    Legacy,
    Unknown,
}

pub fn cgroup_layout(root: &Path) -> CgroupLayout {
    if root.join("cgroup.controllers").exists() {
        return CgroupLayout::Unified;
    }
    let unified = root.join("unified");
    if unified.join("cgroup.controllers").exists() {
        let controllers = std::fs::read_to_string(unified.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        return CgroupLayout::Hybrid {
            unified_controllers: controllers,
        };
    }
    if root.join("memory").exists() {
        CgroupLayout::Legacy
    } else {
        CgroupLayout::Unknown
    }
}

fn fix_command(controllers: &[String]) -> String {
    controllers
        .iter()
        .map(|c| {
            format!(
                "mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}"
            )
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

fn crun_path(crun: &Path) -> Option<PathBuf> {
    if crun.components().count() > 1 {
        return crun.is_file().then(|| crun.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(crun))
            .find(|c| c.is_file())
    })
}

fn tool(name: &'static str, package: &str) -> Check {
    match crun_path(Path::new(name)) {
        Some(p) => Check {
            name,
            status: Status::Ok,
            detail: p.display().to_string(),
            fix: None,
        },
        None => Check {
            name,
            status: Status::Fail,
            detail: format!("{name} is not on PATH"),
            fix: Some(format!("apt-get install {package}")),
        },
    }
}

/// The checks that decide whether container launches can work. Cheap: reads files only.
pub fn essential_checks(crun: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    out.push(Check {
        name: "root",
        status: if root { Status::Ok } else { Status::Fail },
        detail: if root { "running as root".into() } else { "not running as root".into() },
        fix: (!root).then(|| "run the Nimbus server as root (it mounts overlays, creates network namespaces and nftables rules)".into()),
    });
    out.push(match crun_path(crun) {
        Some(p) => Check {
            name: "crun",
            status: Status::Ok,
            detail: p.display().to_string(),
            fix: None,
        },
        None => Check {
            name: "crun",
            status: Status::Fail,
            detail: format!("{} not found", crun.display()),
            fix: Some("apt-get install crun (or set runtime.crun in nimbus.toml)".into()),
        },
    });
    out.push(match cgroup_layout(Path::new("/sys/fs/cgroup")) {
        CgroupLayout::Hybrid { unified_controllers } if !unified_controllers.is_empty() => Check {
            name: "cgroups",
            status: Status::Fail,
            detail: format!(
                "hybrid cgroup layout whose v2 hierarchy holds {}; crun refuses it (\"cgroups in hybrid mode not supported, drop all controllers from cgroupv2\")",
                unified_controllers.join(", ")
            ),
            fix: Some(format!(
                "run `nimbus doctor --fix`, set runtime.fix_cgroups = true, or run: {}",
                fix_command(&unified_controllers)
            )),
        },
        CgroupLayout::Unknown => Check {
            name: "cgroups",
            status: Status::Fail,
            detail: "no cgroup hierarchy found at /sys/fs/cgroup".into(),
            fix: Some("mount cgroup2 at /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)".into()),
        },
        layout => Check {
            name: "cgroups",
            status: Status::Ok,
            detail: match layout {
                CgroupLayout::Unified => "cgroup v2 (unified)".into(),
                CgroupLayout::Legacy => "cgroup v1 (legacy)".into(),
                _ => "cgroup v1 with an empty v2 hierarchy (hybrid, as crun accepts it)".into(),
            },
            fix: None,
        },
    });
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let overlay = fs.lines().any(|l| l.trim_end().ends_with("overlay"));
    out.push(Check {
        name: "overlayfs",
        status: if overlay { Status::Ok } else { Status::Fail },
        detail: if overlay {
            "overlay filesystem available".into()
        } else {
            "overlay is not in /proc/filesystems".into()
        },
        fix: (!overlay).then(|| "modprobe overlay".into()),
    });
    out.push(tool("nft", "nftables"));
    out.push(tool("ip", "iproute2"));
    out.push(tool("bridge", "iproute2"));
    // Deleting a sandbox deletes its tracked connections (see `Network::teardown`).
    out.push(tool("conntrack", "conntrack"));
    let netns = Path::new("/proc/self/ns/net").exists();
    out.push(Check {
        name: "netns",
        status: if netns { Status::Ok } else { Status::Fail },
        detail: if netns {
            "network namespaces supported".into()
        } else {
            "no network namespace support".into()
        },
        fix: (!netns).then(|| "use a kernel with CONFIG_NET_NS".into()),
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let seccomp = status.lines().any(|l| l.starts_with("Seccomp:"));
    out.push(Check {
        name: "seccomp",
        status: if seccomp { Status::Ok } else { Status::Fail },
        detail: if seccomp {
            "seccomp filters supported".into()
        } else {
            "kernel without seccomp".into()
        },
        fix: (!seccomp).then(|| "use a kernel with CONFIG_SECCOMP_FILTER".into()),
    });
    out
}

/// What sandbox disks (`runtime.disk_mb`, disks.rs) need: `mkfs.ext4` and loop devices.
/// Informational, since `disk_mb = 0` needs neither; with disks, launches fail without them.
fn disks_check() -> Check {
    let mkfs = crun_path(Path::new("mkfs.ext4"));
    let loop_control = Path::new("/dev/loop-control").exists();
    let ok = mkfs.is_some() && loop_control;
    let mut missing = Vec::new();
    if mkfs.is_none() {
        missing.push("mkfs.ext4 not found");
    }
    if !loop_control {
        missing.push("/dev/loop-control missing (no loop devices)");
    }
    Check {
        name: "disks",
        status: if ok { Status::Ok } else { Status::Info },
        detail: if ok {
            "mkfs.ext4 and loop devices present (each sandbox's writable layer is a disk of its own)"
                .into()
        } else {
            format!(
                "{}: sandboxes cannot get disks and their launches fail while runtime.disk_mb is not 0",
                missing.join("; ")
            )
        },
        fix: (!ok).then(|| {
            "apt-get install e2fsprogs and load the loop module (modprobe loop), or set runtime.disk_mb = 0 (writable layers unbounded in the data dir)".into()
        }),
    }
}

/// Everything `nimbus doctor` reports: the essential checks plus informational ones.
pub fn all_checks(crun: &Path) -> Vec<Check> {
    let mut out = essential_checks(crun);
    out.push(migrations_check());
    let kvm = Path::new("/dev/kvm").exists();
    out.push(Check {
        name: "kvm",
        status: if kvm { Status::Ok } else { Status::Info },
        detail: if kvm {
            "/dev/kvm present (the krun backend still fails closed: egress enforcement not at parity)".into()
        } else {
            "/dev/kvm missing (only needed by the krun backend, which is not enabled yet)".into()
        },
        fix: None,
    });
    out.push(disks_check());
    let buildah = crun_path(Path::new("buildah"));
    out.push(Check {
        name: "buildah",
        status: if buildah.is_some() {
            Status::Ok
        } else {
            Status::Info
        },
        detail: buildah.map(|p| p.display().to_string()).unwrap_or_else(|| {
            "not installed: sandboxes with `root.source.kind: build` will fail".into()
        }),
        fix: None,
    });
    if let Ok(listing) = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
    {
        let dropping = forward_drop_tables(&String::from_utf8_lossy(&listing.stdout));
        out.push(Check {
            name: "forwarding",
            status: if dropping.is_empty() { Status::Ok } else { Status::Info },
            detail: if dropping.is_empty() {
                "no other firewall table drops forwarded traffic".into()
            } else {
                format!(
                    "forward chains with policy drop in {}: allow-listed sandbox egress cannot leave the host through them",
                    dropping.join(", ")
                )
            },
            fix: (!dropping.is_empty()).then(|| {
                "accept traffic from and to the Nimbus bridge in those tables (e.g. `iptables -I FORWARD -i nimbus0 -j ACCEPT; iptables -I FORWARD -o nimbus0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)".into()
            }),
        });
    }
    out.push(nftables_check());
    let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    out.push(Check {
        name: "ip_forward",
        status: Status::Info,
        detail: format!(
            "net.ipv4.ip_forward={} (Nimbus sets it to 1 at the first launch so allow-listed egress can leave the host)",
            fwd.trim()
        ),
        fix: None,
    });
    out
}

/// Whether the kernel takes the host ruleset every sandbox network needs (the `inet` table
/// with its verdict map and NAT chain, and the `bridge` table that binds ports to addresses):
/// `nft --check` loads it under a probe name and applies nothing. A kernel built without one
/// of these nftables features would otherwise fail only at the first launch.
fn nftables_check() -> Check {
    if !nix::unistd::geteuid().is_root() {
        return Check {
            name: "nftables",
            status: Status::Info,
            detail: "not checked: loading nftables rules, even to check them, needs root".into(),
            fix: None,
        };
    }
    // Which subnet does not matter to the kernel's answer; the default one is as good as any.
    let subnet =
        match crate::network::Subnet::parse(&crate::config::RuntimeConfig::default().subnet) {
            Ok(subnet) => subnet,
            Err(e) => {
                return Check {
                    name: "nftables",
                    status: Status::Info,
                    detail: format!("not checked: the default subnet does not parse: {e}"),
                    fix: None,
                }
            }
        };
    let rules = crate::network::host_rules("nimbus_doctor_probe", "nimbus-probe", subnet);
    nft_check(&rules)
}

/// `nft --check` on `rules`, as a doctor check.
fn nft_check(rules: &str) -> Check {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let outcome = Command::new("nft")
        .args(["--check", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(rules.as_bytes())?;
            }
            child.wait_with_output()
        });
    match outcome {
        Ok(out) if out.status.success() => Check {
            name: "nftables",
            status: Status::Ok,
            detail: "the kernel accepts the sandbox network's rules (inet and bridge tables)"
                .into(),
            fix: None,
        },
        Ok(out) => Check {
            name: "nftables",
            status: Status::Fail,
            detail: format!(
                "the kernel refuses the sandbox network's rules: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            fix: Some(
                "use a kernel with nf_tables for the inet and bridge families, NAT, conntrack and \
                 sets (CONFIG_NF_TABLES_INET, CONFIG_NF_TABLES_BRIDGE, CONFIG_NFT_NAT, \
                 CONFIG_NFT_CT, CONFIG_NF_TABLES_SET)"
                    .into(),
            ),
        },
        Err(e) => Check {
            name: "nftables",
            status: Status::Fail,
            detail: format!("cannot run nft: {e}"),
            fix: Some("apt-get install nftables".into()),
        },
    }
}

/// Whether the file system holding `data_dir` has room above the reserve that pulls and
/// launches keep (disk_reserve.rs): once it is down to that, both are refused.
pub fn free_space_check(data_dir: &Path) -> Check {
    use crate::disk_reserve::{free_space, DiskReserve};
    // A data dir not made yet takes its space from the nearest directory that exists.
    let dir = data_dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    let reserve = DiskReserve::default();
    match reserve
        .ensure_room(dir, 0, "the next pull or launch")
        .and_then(|()| free_space(dir))
    {
        Ok(free) => Check {
            name: "free space",
            status: Status::Ok,
            detail: format!(
                "{} MiB free on the file system holding {} (pulls and launches stop at {} MiB)",
                free >> 20,
                data_dir.display(),
                reserve.bytes() >> 20
            ),
            fix: None,
        },
        Err(e) if e.kind() == std::io::ErrorKind::StorageFull => Check {
            name: "free space",
            status: Status::Fail,
            detail: e.to_string(),
            fix: Some(
                "delete sandboxes you no longer need and unused images, or put the data dir on a larger file system"
                    .into(),
            ),
        },
        Err(e) => Check {
            name: "free space",
            status: Status::Info,
            detail: format!("cannot read the free space of {}: {e}", dir.display()),
            fix: None,
        },
    }
}

/// Whether sandboxes can get user namespaces with their layers under `dir` (the data dir): a
/// user namespace and an idmapped mount are tried for real. Informational, because
/// `runtime.user_namespaces = "auto"` runs sandboxes without them on a host that cannot.
pub fn user_namespaces_check(dir: &Path) -> Check {
    // Probed where the layers will be, or in the nearest directory that exists yet (the same
    // filesystem, unless one is mounted in between); nothing is left behind.
    let at = dir
        .ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/"));
    let probed = crate::userns::probe(at);
    match probed {
        Ok(()) => Check {
            name: "userns",
            status: Status::Ok,
            detail: format!(
                "user namespaces and idmapped mounts work under {}: each sandbox's root is an unprivileged host id range",
                at.display()
            ),
            fix: None,
        },
        Err(e) => Check {
            name: "userns",
            status: Status::Info,
            detail: format!("sandboxes will run without user namespaces: {e}"),
            fix: Some(
                "a kernel of 5.19 or later with user.max_user_namespaces above 0, and a data dir on a filesystem with idmapped mounts (ext4, xfs, btrfs, tmpfs)".into(),
            ),
        },
    }
}

/// Whether the kernel waits for an RCU grace period on every cgroup migration. crun moves
/// each new container into its cgroups, so without `favordynmods` every sandbox start (and
/// every `crun run`, `podman run`…) waits one out: about 10–25 ms on a 2-core VM, half of a
/// start. The mount option (kernel 6.0+) trades that for slightly dearer fork and exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMigrations {
    /// Set on the v2 hierarchy: migrations do not wait.
    Fast,
    /// Supported, not set on the v2 hierarchy mounted at `path` with these options.
    Slow { path: PathBuf, options: Vec<String> },
    /// The kernel has no such option, or there is no v2 hierarchy to set it on.
    Unavailable,
}

/// Reads the state from `/sys/kernel/cgroup/features` and the v2 hierarchy's mount options.
pub fn cgroup_migrations() -> CgroupMigrations {
    let features = std::fs::read_to_string("/sys/kernel/cgroup/features").unwrap_or_default();
    let path = match cgroup_layout(Path::new("/sys/fs/cgroup")) {
        CgroupLayout::Unified => "/sys/fs/cgroup",
        CgroupLayout::Hybrid { .. } => "/sys/fs/cgroup/unified",
        CgroupLayout::Legacy | CgroupLayout::Unknown => return CgroupMigrations::Unavailable,
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    migrations_from(&features, &mountinfo, path)
}

fn migrations_from(features: &str, mountinfo: &str, path: &str) -> CgroupMigrations {
    if !features.split_whitespace().any(|f| f == "favordynmods") {
        return CgroupMigrations::Unavailable;
    }
    // mountinfo: id parent dev root mountpoint opts [optional…] - fstype source superopts
    let Some(superopts) = mountinfo.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mountpoint = left.split_whitespace().nth(4)?;
        let mut r = right.split_whitespace();
        (mountpoint == path && r.next()? == "cgroup2").then(|| r.nth(1).unwrap_or("").to_string())
    }) else {
        return CgroupMigrations::Unavailable;
    };
    let options: Vec<String> = superopts
        .split(',')
        .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
        .map(str::to_string)
        .collect();
    if options.iter().any(|o| o == "favordynmods") {
        CgroupMigrations::Fast
    } else {
        CgroupMigrations::Slow {
            path: PathBuf::from(path),
            options,
        }
    }
}

fn migrations_check() -> Check {
    match cgroup_migrations() {
        CgroupMigrations::Fast => Check {
            name: "cgroup-migrations",
            status: Status::Ok,
            detail: "favordynmods is set: moving a new sandbox into its cgroups does not wait".into(),
            fix: None,
        },
        CgroupMigrations::Slow { path, options } => Check {
            name: "cgroup-migrations",
            status: Status::Info,
            detail: format!(
                "favordynmods is not set on {}: every sandbox start waits for an RCU grace period (10-25 ms here) while crun moves it into its cgroups",
                path.display()
            ),
            fix: Some(format!(
                "run `nimbus doctor --fix`, set runtime.fix_cgroups = true, or run: mount -o remount,{} {}",
                remount_options(&options),
                path.display()
            )),
        },
        CgroupMigrations::Unavailable => Check {
            name: "cgroup-migrations",
            status: Status::Info,
            detail: "this kernel or cgroup layout has no favordynmods option (kernel 6.0+ with a v2 hierarchy): sandbox starts may wait for an RCU grace period".into(),
            fix: None,
        },
    }
}

/// A remount of cgroup2 resets every root flag it is not given (nsdelegate, …), so the
/// current ones are passed along with favordynmods.
fn remount_options(current: &[String]) -> String {
    let mut opts: Vec<&str> = current.iter().map(String::as_str).collect();
    opts.push("favordynmods");
    opts.join(",")
}

/// Every fix Nimbus makes itself (`nimbus doctor --fix`, `runtime.fix_cgroups`): the hugetlb
/// mount, whose failure leaves the host unfit and is an error, and favordynmods, whose failure
/// only makes starts slower and is reported as a line saying so. Returns what was done.
pub fn apply_fixes() -> Result<Vec<String>, String> {
    let mut done = fix_hugetlb()?;
    match fix_cgroup_migrations() {
        Ok(Some(d)) => done.push(d),
        Ok(None) => {}
        Err(e) => done.push(format!(
            "not applied, sandboxes start more slowly without it: {e}"
        )),
    }
    Ok(done)
}

/// Sets favordynmods on the v2 hierarchy when the kernel has it and it is not set yet.
/// Returns what it did, if anything.
pub fn fix_cgroup_migrations() -> Result<Option<String>, String> {
    let CgroupMigrations::Slow { path, options } = cgroup_migrations() else {
        return Ok(None);
    };
    let data = remount_options(&options);
    nix::mount::mount(
        None::<&str>,
        &path,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some(data.as_str()),
    )
    .map_err(|e| format!("remounting {} with {data} failed: {e}", path.display()))?;
    Ok(Some(format!(
        "remounted {} with {data}: cgroup migrations no longer wait for an RCU grace period",
        path.display()
    )))
}

/// Tables other than Nimbus's own whose forward-hook chains drop by default: they would drop
/// allow-listed sandbox egress after Nimbus accepted it.
pub fn forward_drop_tables(ruleset: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut table = String::new();
    for line in ruleset.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("table ") {
            table = rest.trim_end_matches('{').trim().to_string();
        } else if l.contains("hook forward")
            && l.contains("policy drop")
            && !table.contains(" nimbus_")
            && !out.contains(&table)
        {
            out.push(table.clone());
        }
    }
    out
}

pub fn preflight(crun: &Path) -> Result<(), HostUnfit> {
    let problems: Vec<String> = essential_checks(crun)
        .into_iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| match c.fix {
            Some(f) => format!("{}: {} — fix: {f}", c.name, c.detail),
            None => format!("{}: {}", c.name, c.detail),
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(HostUnfit { problems })
    }
}

/// Moves every controller out of the hybrid layout's v2 hierarchy by mounting a v1 hierarchy
/// for it (on Debian's crun 1.8 hosts: hugetlb). Does nothing on other layouts.
pub fn fix_hugetlb() -> Result<Vec<String>, String> {
    let CgroupLayout::Hybrid {
        unified_controllers,
    } = cgroup_layout(Path::new("/sys/fs/cgroup"))
    else {
        return Ok(Vec::new());
    };
    let mut done = Vec::new();
    for c in unified_controllers {
        if !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("unexpected controller name {c:?}"));
        }
        let target = PathBuf::from(format!("/sys/fs/cgroup/{c}"));
        std::fs::create_dir_all(&target)
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        nix::mount::mount(
            Some("cgroup"),
            &target,
            Some("cgroup"),
            nix::mount::MsFlags::empty(),
            Some(c.as_str()),
        )
        .map_err(|e| {
            format!(
                "mounting the v1 {c} hierarchy at {} failed: {e}",
                target.display()
            )
        })?;
        done.push(format!(
            "mounted the v1 {c} hierarchy at {}",
            target.display()
        ));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_takes_the_sandbox_network_rules_and_nothing_is_applied() {
        let check = nftables_check();
        assert_eq!(check.status, Status::Ok, "{check:?}");
        let tables = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft list tables");
        assert!(
            !String::from_utf8_lossy(&tables.stdout).contains("nimbus_doctor_probe"),
            "the check left its probe table behind"
        );
    }

    #[test]
    fn rules_the_kernel_refuses_fail_the_check_with_its_words() {
        // A NAT chain cannot hook forward: nft parses this, the kernel refuses it.
        let check = nft_check(
            "add table inet nimbus_doctor_bad\n\
             add chain inet nimbus_doctor_bad c { type nat hook forward priority 0; }\n",
        );
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.detail.contains("refuses"), "{}", check.detail);
        assert!(
            check.detail.contains("nimbus_doctor_bad"),
            "{}",
            check.detail
        );
        assert!(check.fix.is_some());
    }

    #[test]
    fn hybrid_layout_with_hugetlb_in_v2_is_detected() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("unified")).unwrap();
        std::fs::create_dir_all(d.path().join("memory")).unwrap();
        std::fs::write(d.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        assert_eq!(
            cgroup_layout(d.path()),
            CgroupLayout::Hybrid {
                unified_controllers: vec!["hugetlb".into()]
            }
        );
        std::fs::write(d.path().join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(
            cgroup_layout(d.path()),
            CgroupLayout::Hybrid {
                unified_controllers: vec![]
            }
        );
        assert!(fix_command(&["hugetlb".into()])
            .contains("mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb"));
    }

    #[test]
    fn forward_drop_policies_of_other_tables_are_found() {
        let ruleset = "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\ntable inet nimbus_nimbus0 {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n";
        assert_eq!(forward_drop_tables(ruleset), vec!["ip filter".to_string()]);
        assert!(forward_drop_tables(
            "table inet x {\n chain f { type filter hook forward priority 0; policy accept; }\n}"
        )
        .is_empty());
    }

    #[test]
    fn favordynmods_is_read_from_the_v2_mount_and_kept_flags_survive_the_remount() {
        let features = "nsdelegate\nfavordynmods\nmemory_localevents\n";
        let unset = "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        match migrations_from(features, unset, "/sys/fs/cgroup") {
            CgroupMigrations::Slow { path, options } => {
                assert_eq!(path, PathBuf::from("/sys/fs/cgroup"));
                assert_eq!(
                    remount_options(&options),
                    "nsdelegate,memory_recursiveprot,favordynmods"
                );
            }
            other => panic!("{other:?}"),
        }
        let set =
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,favordynmods\n";
        assert_eq!(
            migrations_from(features, set, "/sys/fs/cgroup/unified"),
            CgroupMigrations::Fast
        );
        // An older kernel, or a mount point that is not cgroup2.
        assert_eq!(
            migrations_from("nsdelegate\n", unset, "/sys/fs/cgroup"),
            CgroupMigrations::Unavailable
        );
        assert_eq!(
            migrations_from(features, unset, "/sys/fs/cgroup/unified"),
            CgroupMigrations::Unavailable
        );
    }

    #[test]
    fn unified_and_legacy_layouts_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("memory")).unwrap();
        assert_eq!(cgroup_layout(d.path()), CgroupLayout::Legacy);
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        assert_eq!(cgroup_layout(d.path()), CgroupLayout::Unified);
    }
}
