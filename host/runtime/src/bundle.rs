//! The OCI runtime `config.json` for a sandbox, built with `oci-spec`: the image config merged
//! with the spec's process, the hardened defaults of docs/security.md, the spec's limits and the
//! sandbox's network namespace. Nothing is left to runtime defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nimbus_core::spec::{Process, Resources};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::images::ContainerConfig;
use crate::seccomp;
use crate::userns::UserNs;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths hidden from sandboxes (bind-mounted over with /dev/null or an empty tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths sandboxes can read but not write.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A problem with the sandbox's process that the caller must fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecProblem {
    pub field: &'static str,
    pub reason: String,
}

pub struct BundleInput<'a> {
    pub id: &'a str,
    pub rootfs: &'a Path,
    pub image: &'a ContainerConfig,
    pub process: &'a Process,
    pub resources: &'a Resources,
    pub netns_path: &'a Path,
    /// The user namespace to join (it owns the network namespace), if sandboxes get one.
    pub user: Option<&'a UserNs>,
    /// Directory holding `hosts`, `hostname` and `resolv.conf` for the sandbox.
    pub etc_dir: &'a Path,
    pub default_memory_mb: u64,
    pub default_pids: u64,
    pub nofile: u64,
}

fn problem(field: &'static str, reason: impl Into<String>) -> SpecProblem {
    SpecProblem {
        field,
        reason: reason.into(),
    }
}

fn internal(e: impl std::fmt::Display) -> SpecProblem {
    problem("config", format!("building the OCI config failed: {e}"))
}

/// Merges image environment with the spec's (the spec wins), keeping image order.
pub fn merge_env(
    image: &[String],
    spec: &BTreeMap<String, String>,
    home: &str,
    hostname: &str,
) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str, order: &mut Vec<String>| {
        if values.insert(k.to_string(), v.to_string()).is_none() {
            order.push(k.to_string());
        }
    };
    set("PATH", DEFAULT_PATH, &mut order);
    set("HOSTNAME", hostname, &mut order);
    set("HOME", home, &mut order);
    for kv in image {
        if let Some((k, v)) = kv.split_once('=') {
            set(k, v, &mut order);
        }
    }
    for (k, v) in spec {
        set(k, v, &mut order);
    }
    order
        .into_iter()
        .map(|k| format!("{k}={}", values[&k]))
        .collect()
}

/// `process.cwd` must be absolute, free of `..`, and not inside the kernel's pseudo
/// filesystems (a cwd like `/proc/self/fd/N` would start the process outside its root).
pub fn check_cwd(cwd: &str) -> Result<(), SpecProblem> {
    if !cwd.starts_with('/') {
        return Err(problem(
            "process.workingDir",
            format!("{cwd:?} must be an absolute path"),
        ));
    }
    if cwd.split('/').any(|c| c == "..") || cwd.contains('\0') {
        return Err(problem(
            "process.workingDir",
            format!("{cwd:?} must not contain '..'"),
        ));
    }
    for forbidden in ["/proc", "/sys", "/dev"] {
        if cwd == forbidden || cwd.starts_with(&format!("{forbidden}/")) {
            return Err(problem(
                "process.workingDir",
                format!("{cwd:?} is inside {forbidden}, which is not allowed"),
            ));
        }
    }
    Ok(())
}

/// Reads a file of the image's /etc without following symlinks out of the rootfs.
fn read_image_etc(rootfs: &Path, name: &str) -> Option<String> {
    let etc = rootfs.join("etc");
    let file = etc.join(name);
    for p in [&etc, &file] {
        if p.symlink_metadata().ok()?.file_type().is_symlink() {
            return None;
        }
    }
    // A regular file of sane size: a sparse 8 GiB "passwd" (4 KiB on disk, in a 1.5 KB layer)
    // would otherwise be read whole at every launch.
    let md = file.symlink_metadata().ok()?;
    if !md.is_file() || md.len() > MAX_IMAGE_ETC_BYTES {
        return None;
    }
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(file)
        .ok()?
        .take(MAX_IMAGE_ETC_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The largest /etc/passwd or /etc/group of an image that is read.
const MAX_IMAGE_ETC_BYTES: u64 = 1 << 20;

/// Resolves `user`, `user:group`, `uid`, `uid:gid` against the image's passwd/group files.
/// Returns (uid, gid, home).
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, String), SpecProblem> {
    let passwd = read_image_etc(rootfs, "passwd").unwrap_or_default();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && (f[0] == u || f[2] == u)).then(|| {
            (
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
                f[5].to_string(),
            )
        })
    });
    let (uid, primary_gid, home) = match (u.parse::<u32>(), entry) {
        (Ok(uid), Some((_, g, h))) => (uid, g.unwrap_or(0), h),
        (Ok(uid), None) => (uid, 0, "/".to_string()),
        (Err(_), Some((Some(uid), g, h))) => (uid, g.unwrap_or(0), h),
        (Err(_), _) => {
            return Err(problem(
                "process.user",
                format!("user {u:?} is not in the image's /etc/passwd"),
            ))
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let group = read_image_etc(rootfs, "group").unwrap_or_default();
                group
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse::<u32>().ok())
                            .flatten()
                    })
                    .ok_or_else(|| {
                        problem(
                            "process.user",
                            format!("group {g:?} is not in the image's /etc/group"),
                        )
                    })?
            }
        },
    };
    // The image's passwd and group are the image author's: ids outside the mapped range (or
    // 4294967295, which setresuid reads as "unchanged", i.e. root) are refused here too.
    let max = nimbus_core::spec::MAX_SANDBOX_ID;
    if uid > max || gid > max {
        return Err(problem(
            "process.user",
            format!("{user:?} resolves to {uid}:{gid} in the image, outside 0–{max}, the ids a sandbox's user namespace maps"),
        ));
    }
    Ok((uid, gid, if home.is_empty() { "/".into() } else { home }))
}

fn caps() -> Result<Capabilities, SpecProblem> {
    seccomp::CAPABILITIES
        .iter()
        .map(|c| {
            serde_json::from_value::<Capability>(serde_json::Value::String(c.to_string()))
                .map_err(internal)
        })
        .collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecProblem> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(internal)
}

pub fn build_spec(input: &BundleInput<'_>) -> Result<Spec, SpecProblem> {
    let p = input.process;
    let img = input.image;
    let hostname: String = input.id.chars().take(30).collect();
    let user = p
        .user
        .clone()
        .or_else(|| img.user.clone().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "0".into());
    let (uid, gid, home) = resolve_user(input.rootfs, &user)?;
    let cwd = p
        .working_dir
        .clone()
        .or_else(|| img.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    check_cwd(&cwd)?;
    if p.argv.is_empty() || p.argv[0].is_empty() {
        return Err(problem("process.argv", "must name the program to run"));
    }
    let env = merge_env(
        img.env.as_deref().unwrap_or(&[]),
        &p.environment,
        &home,
        &hostname,
    );
    let caps = caps()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(internal)?,
        )
        .args(p.argv.clone())
        .env(env)
        .cwd(PathBuf::from(&cwd))
        .no_new_privileges(true)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(Capabilities::new())
                .ambient(Capabilities::new())
                .build()
                .map_err(internal)?,
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(input.nofile)
            .soft(input.nofile)
            .build()
            .map_err(internal)?])
        .oom_score_adj(500)
        .build()
        .map_err(internal)?;

    let memory_mb = input.resources.memory_mb.unwrap_or(input.default_memory_mb);
    let memory_bytes = i64::try_from(memory_mb.saturating_mul(1 << 20)).map_err(internal)?;
    let pids =
        i64::try_from(input.resources.pids.unwrap_or(input.default_pids)).map_err(internal)?;
    let cpus = input
        .resources
        .cpus
        .unwrap_or(Resources::DEFAULT_CPUS)
        .clamp(0.01, 1024.0);
    let period: u64 = 100_000;
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(internal)?])
        // swap == limit: no swap beyond the memory limit, so the limit is the OOM point.
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory_bytes)
                .swap(memory_bytes)
                .build()
                .map_err(internal)?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(pids)
                .build()
                .map_err(internal)?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares((1024.0 * cpus) as u64)
                .quota((period as f64 * cpus) as i64)
                .period(period)
                .build()
                .map_err(internal)?,
        )
        .build()
        .map_err(internal)?;

    let ns = |t: LinuxNamespaceType| {
        LinuxNamespaceBuilder::default()
            .typ(t)
            .build()
            .map_err(internal)
    };
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
        ns(LinuxNamespaceType::Cgroup)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(input.netns_path)
            .build()
            .map_err(internal)?,
    ];
    let mut linux = LinuxBuilder::default();
    if let Some(user) = input.user {
        // Joined by path (it exists before the launch: it owns the network namespace). The
        // mappings repeat what it maps, for crun's own ownership decisions.
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .path(&user.path)
                .build()
                .map_err(internal)?,
        );
        let mapping = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(user.map.first)
            .size(user.map.count)
            .build()
            .map_err(internal)?;
        linux = linux
            .uid_mappings(vec![mapping])
            .gid_mappings(vec![mapping]);
    }
    let linux = linux
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(cgroup_path(input.id)))
        .seccomp(seccomp::profile().map_err(|e| problem("config", e))?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .rootfs_propagation("private")
        .build()
        .map_err(internal)?;

    let etc = |name: &str| input.etc_dir.join(name).to_string_lossy().into_owned();
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
        mount(
            "/etc/hosts",
            "bind",
            &etc("hosts"),
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?,
        mount(
            "/etc/hostname",
            "bind",
            &etc("hostname"),
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?,
        mount(
            "/etc/resolv.conf",
            "bind",
            &etc("resolv.conf"),
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?,
    ];

    let mut spec = Spec::default();
    spec.set_hostname(Some(hostname))
        .set_root(Some(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(false)
                .build()
                .map_err(internal)?,
        ))
        .set_process(Some(process))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux))
        .set_hooks(None)
        .set_annotations(None);
    Ok(spec)
}

/// Writes the per-sandbox `/etc` files the config bind-mounts.
pub fn write_etc_files(
    dir: &Path,
    hostname: &str,
    address: std::net::Ipv4Addr,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    std::fs::write(
        dir.join("hosts"),
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"),
    )?;
    // The host's resolvers minus loopback ones (a sandbox can never reach the host's loopback).
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::new();
    for line in host.lines() {
        let l = line.trim();
        if let Some(ns) = l.strip_prefix("nameserver") {
            let ip = ns.trim();
            if ip
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            {
                continue;
            }
        }
        if l.starts_with("nameserver") || l.starts_with("search") || l.starts_with("options") {
            out.push_str(l);
            out.push('\n');
        }
    }
    std::fs::write(dir.join("resolv.conf"), out)
}

/// The sandbox's cgroup, relative to each hierarchy's root (the OCI `cgroupsPath`): the runtime,
/// its monitors and the orphan sweep all find a sandbox's processes and counters there.
pub(crate) fn cgroup_path(id: &str) -> String {
    format!("/nimbus/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_etc_file_is_read_only_when_regular_and_small() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "app:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        assert!(read_image_etc(root.path(), "passwd").is_some());
        // Sparse: 8 GiB long, nothing on disk; read whole it would take 8 GiB of memory.
        let group = std::fs::File::create(root.path().join("etc/group")).unwrap();
        group.set_len(8 << 30).unwrap();
        assert!(read_image_etc(root.path(), "group").is_none());
        std::fs::remove_file(root.path().join("etc/group")).unwrap();
        nix::unistd::mkfifo(
            &root.path().join("etc/group"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        assert!(
            read_image_etc(root.path(), "group").is_none(),
            "a FIFO would block"
        );
    }

    #[test]
    fn spec_environment_overrides_the_image_and_keeps_defaults() {
        let mut spec = BTreeMap::new();
        spec.insert("A".to_string(), "spec".to_string());
        let env = merge_env(
            &["A=img".into(), "PATH=/img/bin".into(), "B=2".into()],
            &spec,
            "/root",
            "h",
        );
        assert_eq!(
            env,
            vec!["PATH=/img/bin", "HOSTNAME=h", "HOME=/root", "A=spec", "B=2"]
        );
    }

    #[test]
    fn working_dirs_outside_the_root_are_refused() {
        for bad in ["relative", "/proc/self/fd/3", "/a/../b", "/sys", "/dev/shm"] {
            assert!(check_cwd(bad).is_err(), "{bad}");
        }
        check_cwd("/work/dir").unwrap();
    }

    #[test]
    fn users_resolve_from_the_image_passwd_and_group() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nsneaky:x:4294967295:0::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:\nwide:x:70000:\n",
        )
        .unwrap();
        assert_eq!(
            resolve_user(d.path(), "app").unwrap(),
            (1000, 1001, "/home/app".into())
        );
        assert_eq!(
            resolve_user(d.path(), "app:staff").unwrap(),
            (1000, 50, "/home/app".into())
        );
        assert_eq!(
            resolve_user(d.path(), "4242:7").unwrap(),
            (4242, 7, "/".into())
        );
        assert!(resolve_user(d.path(), "nobody-here").is_err());
        // An image's passwd may name ids a sandbox does not map; (uid_t)-1 would mean root.
        for user in ["sneaky", "app:wide"] {
            let err = resolve_user(d.path(), user).unwrap_err();
            assert_eq!(err.field, "process.user", "{user}");
        }
    }

    #[test]
    fn generated_config_carries_every_hardening_default() {
        let d = tempfile::tempdir().unwrap();
        let process = Process {
            argv: vec!["/bin/true".into()],
            environment: BTreeMap::new(),
            working_dir: None,
            user: None,
        };
        let resources = Resources {
            memory_mb: Some(64),
            pids: Some(32),
            cpus: Some(0.5),
        };
        let spec = build_spec(&BundleInput {
            id: "sbx_test",
            rootfs: d.path(),
            image: &ContainerConfig::default(),
            process: &process,
            resources: &resources,
            netns_path: Path::new("/run/netns/x"),
            user: None,
            etc_dir: d.path(),
            default_memory_mb: 512,
            default_pids: 256,
            nofile: 1024,
        })
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let bounding: Vec<&str> = v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(!bounding.contains(&"CAP_NET_RAW") && !bounding.contains(&"CAP_SYS_ADMIN"));
        assert_eq!(bounding.len(), seccomp::CAPABILITIES.len());
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 32);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/kcore"));
        assert!(v["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/sys"));
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for t in ["pid", "ipc", "uts", "mount", "cgroup", "network"] {
            assert!(ns.contains(&t), "{t} namespace missing");
        }
        assert_eq!(v["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
    }
}
