//! The `[runtime]` table of `nimbus.toml`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Operator settings for the container backend. Every field has a default, so an absent
/// `[runtime]` table is a working configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The crun executable (a name is looked up on PATH).
    pub crun: PathBuf,
    /// Registry host → mirrors tried before it, e.g. `"docker.io" = ["mirror.internal:5000"]`.
    /// A mirror written `http://host` is spoken to over plain HTTP.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registries spoken to over plain HTTP. Loopback registries always are.
    pub insecure_registries: Vec<String>,
    /// Docker client config with registry credentials; default `$DOCKER_CONFIG/config.json`
    /// or `$HOME/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// IPv4 range sandbox addresses come from; the first address is the bridge's.
    pub subnet: String,
    /// Name of the host bridge sandboxes attach to.
    pub bridge: String,
    /// Seconds between SIGTERM and SIGKILL when a stop names no grace period.
    pub stop_grace_seconds: u64,
    /// Cap on each sandbox's log file; older output is dropped when it is reached.
    pub log_max_bytes: u64,
    /// Memory limit when the spec gives none.
    pub default_memory_mb: u64,
    /// Process limit when the spec gives none.
    pub default_pids: u64,
    /// Open-files rlimit inside sandboxes.
    pub nofile: u64,
    /// The monitor executable. Default: `nimbus-monitor` next to the running binary, else the
    /// running binary itself (which must call `nimbus_runtime::monitor::main_if_requested`).
    pub monitor: Option<PathBuf>,
    /// Mount the v1 hugetlb hierarchy at open when the host needs it for crun (what
    /// `nimbus doctor --fix` does), instead of refusing container launches.
    pub fix_cgroups: bool,
    /// Network namespaces kept created and wired ahead of launches (the warm pool); 0 wires
    /// each sandbox's namespace during its launch.
    pub warm_pool: usize,
    /// The size of each sandbox's disk, in MiB: its writable layer is a file system of its
    /// own (a sparse ext4 image on a loop device), so a sandbox that fills it gets ENOSPC and
    /// nothing else runs short. `warm_pool` of them are kept ready. 0 puts writable layers in
    /// the data dir, unbounded.
    pub disk_mb: u64,
    /// Monitors kept started ahead of launches, each waiting for a sandbox (see standby.rs);
    /// 0 starts each sandbox's monitor during its launch.
    pub standby_monitors: usize,
    /// Whether each sandbox runs in its own user namespace (root inside is an unprivileged id
    /// range on the host): `auto` when the host supports it, `required`, or `off`.
    pub user_namespaces: UserNamespaces,
    /// First host id handed to sandboxes' user namespaces; each gets the next free range of
    /// 65536 ids from here.
    pub id_range_first: u32,
    /// How many such ranges there are (the most sandboxes that can exist at once).
    pub id_range_slots: u32,
}

/// `runtime.user_namespaces`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UserNamespaces {
    /// Used when the host supports them (`nimbus doctor` says whether it does); otherwise
    /// sandboxes run without, and the server logs a warning at start.
    Auto,
    /// The server refuses to start on a host that does not support them.
    Required,
    Off,
}

/// The largest and smallest sandbox disk (`disk_mb`), in MiB: 1 TiB, and 16 MiB (ext4 needs a
/// few MiB of its own).
pub const MAX_DISK_MB: u64 = 1 << 20;
pub const MIN_DISK_MB: u64 = 16;
/// Least open-files limit, process limit and memory (MiB) a sandbox can start with.
const MIN_NOFILE: u64 = 16;
const MIN_PIDS: u64 = 4;
const MIN_MEMORY_MB: u64 = 8;

impl RuntimeConfig {
    /// Checks what deserializing cannot: a message naming the key for each value out of range.
    pub fn check(&self) -> Result<(), String> {
        if self.disk_mb != 0 && !(MIN_DISK_MB..=MAX_DISK_MB).contains(&self.disk_mb) {
            return Err(format!(
                "runtime.disk_mb = {}: a sandbox's disk is {MIN_DISK_MB} to {MAX_DISK_MB} MiB (1 TiB), or 0 for none (writable layers unbounded in the data dir)",
                self.disk_mb
            ));
        }
        self.check_registries()?;
        crate::network::check_bridge_name(&self.bridge)?;
        crate::network::Subnet::parse(&self.subnet)?;
        if self.user_namespaces != UserNamespaces::Off {
            crate::userns::IdRanges::new(self.id_range_first, self.id_range_slots)?;
        }
        // Below these, every launch would fail (a shell alone opens a few files and forks).
        for (key, value, least) in [
            ("nofile", self.nofile, MIN_NOFILE),
            ("default_pids", self.default_pids, MIN_PIDS),
            ("default_memory_mb", self.default_memory_mb, MIN_MEMORY_MB),
        ] {
            if value < least {
                return Err(format!(
                    "runtime.{key} = {value}: at least {least}, or no sandbox could start"
                ));
            }
        }
        if let Some(monitor) = &self.monitor {
            use std::os::unix::fs::PermissionsExt;
            let runnable = std::fs::metadata(monitor)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !runnable {
                return Err(format!(
                    "runtime.monitor = {:?} is not an executable file; remove the key to use the nimbus-monitor installed with nimbus",
                    monitor.display().to_string()
                ));
            }
        }
        Ok(())
    }
}

impl RuntimeConfig {
    /// Registry hosts as references name them (`host[:port]`, lowercase), and mirrors as
    /// http(s) URLs or hosts: an entry that can never match or be reached is refused rather
    /// than skipped at every pull.
    fn check_registries(&self) -> Result<(), String> {
        let host = |key: &str, h: &str| {
            crate::reference::check_registry_host(h)
                .map_err(|why| format!("{key}: {h:?}: {why} (a host[:port], e.g. \"registry.lab:5000\", no scheme or path)"))?;
            if h != h.to_ascii_lowercase() {
                return Err(format!(
                    "{key}: {h:?}: write host names in lowercase, as references are matched"
                ));
            }
            Ok(())
        };
        for h in &self.insecure_registries {
            host("runtime.insecure_registries", h)?;
        }
        for (registry, mirrors) in &self.mirrors {
            let key = format!("runtime.mirrors.{registry:?}");
            host(&key, registry)?;
            for m in mirrors {
                let rest = m
                    .strip_prefix("https://")
                    .or_else(|| m.strip_prefix("http://"))
                    .unwrap_or(m);
                if rest.contains("://") {
                    return Err(format!(
                        "{key}: {m:?}: a mirror is an http:// or https:// URL, or a host[:port]"
                    ));
                }
                host(&key, rest.split('/').next().unwrap_or(rest))?;
            }
        }
        Ok(())
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            crun: PathBuf::from("crun"),
            mirrors: BTreeMap::new(),
            insecure_registries: Vec::new(),
            docker_config: None,
            subnet: "10.88.0.0/16".to_string(),
            bridge: "nimbus0".to_string(),
            stop_grace_seconds: 10,
            log_max_bytes: 8 << 20,
            default_memory_mb: 512,
            default_pids: 256,
            nofile: 4096,
            monitor: None,
            fix_cgroups: false,
            warm_pool: 2,
            disk_mb: 10240,
            standby_monitors: 2,
            user_namespaces: UserNamespaces::Auto,
            // In the range systemd leaves to containers (524288–1879048191); 4096 ranges end at
            // 0x50000000. `systemd-nspawn --private-users=pick` draws from the same space, so
            // a host running both should give Nimbus ranges nspawn does not use.
            id_range_first: 0x4000_0000,
            id_range_slots: 4096,
        }
    }
}

impl RuntimeConfig {
    pub(crate) fn docker_config_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.docker_config {
            return Some(p.clone());
        }
        if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(d).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_no_sandbox_could_start_with_are_refused_naming_the_key() {
        let with = |edit: &dyn Fn(&mut RuntimeConfig)| {
            let mut c = RuntimeConfig::default();
            edit(&mut c);
            c.check().unwrap_err()
        };
        assert!(RuntimeConfig::default().check().is_ok());
        assert!(with(&|c| c.subnet = "banana".into()).contains("runtime.subnet"));
        assert!(with(&|c| c.subnet = "10.214.0.5/16".into()).contains("10.214.0.0/16"));
        assert!(with(&|c| c.bridge = "a bridge".into()).contains("runtime.bridge"));
        assert!(with(&|c| c.nofile = 0).contains("runtime.nofile = 0"));
        assert!(with(&|c| c.default_pids = 1).contains("runtime.default_pids = 1"));
        assert!(with(&|c| c.default_memory_mb = 0).contains("runtime.default_memory_mb"));
        assert!(with(&|c| c.id_range_slots = 0).contains("runtime.id_range_slots = 0"));
        assert!(with(&|c| c.id_range_first = 0).contains("runtime.id_range_first = 0"));
        assert!(with(&|c| c.monitor = Some("/nonexistent".into())).contains("runtime.monitor"));
        assert!(
            with(&|c| c.insecure_registries = vec!["http://reg.lab:5000".into()])
                .contains("runtime.insecure_registries")
        );
        assert!(with(&|c| c.insecure_registries = vec!["Reg.Lab".into()]).contains("lowercase"));
        let mirror = |m: &str| {
            with(&|c| {
                c.mirrors.insert("docker.io".into(), vec![m.to_string()]);
            })
        };
        assert!(mirror("ftp://mirror.lab").contains("http:// or https://"));
        assert!(mirror("https://mirror lab").contains("runtime.mirrors"));
        let mut ok = RuntimeConfig {
            insecure_registries: vec!["registry.lab:5000".into()],
            ..RuntimeConfig::default()
        };
        ok.mirrors.insert(
            "docker.io".into(),
            vec![
                "https://mirror.lab/dockerhub".into(),
                "mirror2.lab:5000".into(),
            ],
        );
        assert!(ok.check().is_ok(), "{:?}", ok.check());
        let mut off = RuntimeConfig {
            user_namespaces: UserNamespaces::Off,
            ..RuntimeConfig::default()
        };
        off.id_range_slots = 0;
        assert!(
            off.check().is_ok(),
            "id ranges are unused without user namespaces"
        );
    }

    #[derive(Deserialize)]
    struct File {
        runtime: RuntimeConfig,
    }

    #[test]
    fn runtime_table_parses_and_unknown_keys_are_refused() {
        let f: File = serde_json::from_value(serde_json::json!({
            "runtime": {"mirrors": {"docker.io": ["http://127.0.0.1:5001"]}, "bridge": "nb1"}
        }))
        .unwrap();
        assert_eq!(f.runtime.bridge, "nb1");
        assert_eq!(f.runtime.subnet, "10.88.0.0/16");
        assert_eq!(f.runtime.user_namespaces, UserNamespaces::Auto);
        let off: File =
            serde_json::from_value(serde_json::json!({"runtime": {"user_namespaces": "off"}}))
                .unwrap();
        assert_eq!(off.runtime.user_namespaces, UserNamespaces::Off);
        assert!(serde_json::from_value::<File>(
            serde_json::json!({"runtime": {"user_namespaces": "yes"}})
        )
        .is_err());
        let bad = serde_json::from_value::<File>(serde_json::json!({"runtime": {"brige": "x"}}));
        assert!(bad.is_err());
    }
}
