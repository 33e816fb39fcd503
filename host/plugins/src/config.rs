//! The `[plugins]` table of nimbus.toml: which plugin serves each slot, its configuration, the
//! hosts it may reach and its limits. Parsing rejects unknown keys; [`PluginsConfig::validate`]
//! rejects bad values with a message naming the key.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

/// The largest linear memory any plugin instance may have; the engine's pooling allocator
/// reserves this much address space per instance slot.
pub const MAX_MEMORY_MIB: u32 = 64;
/// The longest deadline a single plugin call may be given.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// `[plugins]` in nimbus.toml. Every key is optional; the default serves `authz` with the bundled
/// `grants-policy` and `health.http`/`health.tcp` with `http-health`/`tcp-health`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// `[plugins.authz]`: the authorization policy (world `nimbus:authz/authz-policy@0.1.x`).
    #[serde(default)]
    pub authz: Option<SlotConfig>,
    /// `[plugins.health.http]` and `[plugins.health.tcp]` (world `nimbus:health/health-check@0.1.x`).
    #[serde(default)]
    pub health: HealthSlots,
    /// `[plugins.providers.<name>]`: reserved for provider components (`nimbus:provider`).
    #[serde(default)]
    pub providers: BTreeMap<String, SlotConfig>,
    /// `[plugins.limits]`: defaults for every slot's limits.
    #[serde(default)]
    pub limits: Limits,
    /// How often the server looks for plugins installed or removed while it runs (milliseconds;
    /// 0 turns hot swapping off). Default 1000.
    #[serde(default)]
    pub watch_interval_ms: Option<u64>,
    /// PEM file of certificate authorities trusted for plugins' `https` requests (health
    /// probes of services behind a private CA), on top of the public web roots.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSlots {
    #[serde(default)]
    pub http: Option<SlotConfig>,
    #[serde(default)]
    pub tcp: Option<SlotConfig>,
}

/// One slot: `[plugins.authz]`, `[plugins.health.http]`, ….
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// Plugin id in the plugin store (`nimbus plugin list`). Without it, the slot's bundled
    /// plugin, so that a table can set only its limits, hosts or config;
    /// [`PluginsConfig::slot`] fills it in.
    #[serde(default)]
    pub plugin: Option<String>,
    /// Pin a version. Without it the slot follows the plugin's active version (the one installed
    /// last), which is what makes `nimbus plugin install` of a new version swap it in live.
    #[serde(default)]
    pub version: Option<String>,
    /// Pin the exact component bytes (hex sha256 as `nimbus plugin list` prints it).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Values the plugin reads through `nimbus:host/config`.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    /// Hosts the plugin may reach through `nimbus:host/http` and `nimbus:host/tcp`: `host`,
    /// `host:port`, `*.domain` or `*.domain:port`. Names are matched as written (no DNS).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Health slots only: also grant the host and port of the endpoint being checked, for that
    /// check. Default true; set false to confine checks to `hosts`.
    #[serde(default)]
    pub allow_target: Option<bool>,
    /// `authz` only: remember the decisions of a policy that decides from the request alone
    /// (one that does not import `nimbus:host/clock`), and answer a request asked again from
    /// memory instead of calling the policy. Default true; see `memo`.
    #[serde(default)]
    pub memoize_decisions: Option<bool>,
    /// Overrides of `[plugins.limits]` for this slot.
    #[serde(default)]
    pub limits: Limits,
}

/// A scalar config value; numbers and booleans reach the plugin as their TOML text.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

/// By hand rather than `#[serde(untagged)]`, whose error ("data did not match any variant of
/// untagged enum") says neither what was found nor what is accepted.
impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = ConfigValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, integer, float or boolean (plugins read config values as text; write a list or table as a string)")
            }
            fn visit_str<E>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue::String(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ConfigValue, E> {
                i64::try_from(v)
                    .map(ConfigValue::Integer)
                    .map_err(|_| E::custom(format!("{v} is too large; write it as a string")))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Float(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Bool(v))
            }
        }
        d.deserialize_any(Scalar)
    }
}

impl ConfigValue {
    pub fn to_plugin_string(&self) -> String {
        match self {
            ConfigValue::String(s) => s.clone(),
            ConfigValue::Integer(i) => i.to_string(),
            ConfigValue::Float(f) => f.to_string(),
            ConfigValue::Bool(b) => b.to_string(),
        }
    }
}

/// Per-call limits. Unset values fall back to `[plugins.limits]`, then to the slot's default.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one call, including the host calls it makes.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// WebAssembly fuel (roughly, instructions) one call may burn.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Linear memory one instance may grow to.
    #[serde(default)]
    pub memory_mib: Option<u32>,
}

/// Limits with every value decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub timeout: Duration,
    pub fuel: u64,
    pub memory_bytes: usize,
}

impl EffectiveLimits {
    /// Whether a call under these limits may hold its thread long enough to matter to other
    /// requests: both its deadline and its fuel (about a nanosecond a unit) allow more than
    /// ~50 ms. The default authz limits (200 ms, 20 M fuel) do not: fuel ends a spinning policy
    /// within ~20 ms.
    pub fn may_run_long(&self) -> bool {
        self.timeout > Duration::from_millis(50) && self.fuel > 50_000_000
    }
}

/// The slots a plugin can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKind {
    Authz,
    HealthHttp,
    HealthTcp,
}

impl SlotKind {
    /// The key of the slot under `[plugins]`.
    pub fn key(self) -> &'static str {
        match self {
            SlotKind::Authz => "authz",
            SlotKind::HealthHttp => "health.http",
            SlotKind::HealthTcp => "health.tcp",
        }
    }

    pub fn default_plugin(self) -> &'static str {
        match self {
            SlotKind::Authz => "grants-policy",
            SlotKind::HealthHttp => "http-health",
            SlotKind::HealthTcp => "tcp-health",
        }
    }

    fn default_limits(self) -> EffectiveLimits {
        match self {
            // Authorization runs on every request: a tight budget.
            SlotKind::Authz => EffectiveLimits {
                timeout: Duration::from_millis(200),
                fuel: 20_000_000,
                memory_bytes: 16 << 20,
            },
            // Health checks wait on the network; the probe's own timeout is clipped to this.
            SlotKind::HealthHttp | SlotKind::HealthTcp => EffectiveLimits {
                timeout: Duration::from_millis(30_000),
                fuel: 100_000_000,
                memory_bytes: 16 << 20,
            },
        }
    }

    pub(crate) fn all() -> [SlotKind; 3] {
        [SlotKind::Authz, SlotKind::HealthHttp, SlotKind::HealthTcp]
    }
}

impl PluginsConfig {
    /// The slot's configuration, or the default one.
    pub fn slot(&self, kind: SlotKind) -> SlotConfig {
        let configured = match kind {
            SlotKind::Authz => self.authz.clone(),
            SlotKind::HealthHttp => self.health.http.clone(),
            SlotKind::HealthTcp => self.health.tcp.clone(),
        };
        let mut slot = configured.unwrap_or_else(|| SlotConfig {
            plugin: None,
            version: None,
            sha256: None,
            config: BTreeMap::new(),
            hosts: Vec::new(),
            allow_target: None,
            memoize_decisions: None,
            limits: Limits::default(),
        });
        slot.plugin
            .get_or_insert_with(|| kind.default_plugin().to_string());
        slot
    }

    pub fn watch_interval(&self) -> Option<Duration> {
        match self.watch_interval_ms.unwrap_or(1000) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The limits a slot's calls run under.
    pub fn effective_limits(&self, kind: SlotKind) -> EffectiveLimits {
        let slot = self.slot(kind).limits;
        let d = kind.default_limits();
        EffectiveLimits {
            timeout: slot
                .timeout_ms
                .or(self.limits.timeout_ms)
                .map(Duration::from_millis)
                .unwrap_or(d.timeout),
            fuel: slot.fuel.or(self.limits.fuel).unwrap_or(d.fuel),
            memory_bytes: slot
                .memory_mib
                .or(self.limits.memory_mib)
                .map(|m| (m as usize) << 20)
                .unwrap_or(d.memory_bytes),
        }
    }

    /// Checks every value; the error names the offending key under `plugins.`.
    pub fn validate(&self) -> anyhow::Result<()> {
        validate_limits("plugins.limits", &self.limits)?;
        if let Some(ms) = self.watch_interval_ms {
            if ms != 0 && ms < 50 {
                bail!("plugins.watch_interval_ms = {ms}: must be 0 (off) or at least 50");
            }
        }
        for kind in SlotKind::all() {
            let key = format!("plugins.{}", kind.key());
            let slot = self.slot(kind);
            validate_slot(&key, &slot)?;
            if kind == SlotKind::Authz && !slot.hosts.is_empty() {
                bail!(
                    "{key}.hosts: an authorization policy gets no network access; remove the key"
                );
            }
            if kind == SlotKind::Authz && slot.allow_target.is_some() {
                bail!("{key}.allow_target: only health slots check targets; remove the key");
            }
            if kind != SlotKind::Authz && slot.memoize_decisions.is_some() {
                bail!(
                    "{key}.memoize_decisions: only the authz slot makes decisions; remove the key"
                );
            }
        }
        if let Some(name) = self.providers.keys().next() {
            bail!(
                "plugins.providers.{name}: provider plugins are not supported by this build yet; \
                 remove the table"
            );
        }
        Ok(())
    }
}

fn validate_slot(key: &str, slot: &SlotConfig) -> anyhow::Result<()> {
    if let Some(plugin) = slot.plugin.as_deref().filter(|p| !is_plugin_id(p)) {
        bail!(
            "{key}.plugin = {plugin:?}: not a plugin id (lowercase letters, digits and '-', as `nimbus plugin list` shows)"
        );
    }
    // Leading zeros are told apart when the pin is loaded: only if nothing installed has
    // that spelling (a server that allowed them may have installed one).
    if let Some(v) = &slot.version {
        if !is_version(v) {
            bail!("{key}.version = {v:?}: not a version like 0.1.0");
        }
    }
    if let Some(s) = &slot.sha256 {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "{key}.sha256 = {s:?}: expected 64 hex digits as `nimbus plugin list` prints them"
            );
        }
    }
    for (i, h) in slot.hosts.iter().enumerate() {
        if crate::net::HostPattern::parse(h).is_none() {
            bail!(
                "{key}.hosts[{i}] = {h:?}: not a host pattern; use host, host:port, *.domain or *.domain:port"
            );
        }
    }
    validate_limits(&format!("{key}.limits"), &slot.limits)
}

fn validate_limits(key: &str, limits: &Limits) -> anyhow::Result<()> {
    if let Some(t) = limits.timeout_ms {
        if t == 0 || t > MAX_TIMEOUT_MS {
            bail!("{key}.timeout_ms = {t}: must be between 1 and {MAX_TIMEOUT_MS}");
        }
    }
    if let Some(f) = limits.fuel {
        if f == 0 {
            bail!("{key}.fuel = 0: must be at least 1");
        }
    }
    if let Some(m) = limits.memory_mib {
        if m == 0 || m > MAX_MEMORY_MIB {
            bail!(
                "{key}.memory_mib = {m}: must be between 1 and {MAX_MEMORY_MIB} (the engine's per-instance ceiling)"
            );
        }
    }
    Ok(())
}

/// Plugin ids: 1–64 of `[a-z0-9-]`, starting with a letter.
pub fn is_plugin_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A version's core (`1.2.3`) and its pre-release (after the first `-`), if any.
fn split_version(s: &str) -> (&str, Option<&str>) {
    match s.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (s, None),
    }
}

/// `MAJOR.MINOR.PATCH` with an optional `-pre` suffix: dot-separated, non-empty identifiers of
/// `[0-9A-Za-z-]`.
pub fn is_version(s: &str) -> bool {
    let (core, pre) = split_version(s);
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
        && pre.is_none_or(|p| {
            p.len() <= 32
                && p.split('.').all(|id| {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        })
}

/// What is wrong with `v` as a plugin version, if anything, in words that say how to write it.
/// Semver's rule on leading zeros holds: 01.2.3 (or 1.2.3-rc.01) would be a second spelling
/// (and directory) of 1.2.3 (1.2.3-rc.1), sorting equal to it.
pub(crate) fn version_problem(v: &str) -> Option<String> {
    if !is_version(v) {
        return Some("not a version like 0.1.0".into());
    }
    without_leading_zeros(v).map(|plain| {
        format!("not a version: its numbers may not have leading zeros (write {plain})")
    })
}

/// One dot-separated identifier of a pre-release, ordered as semver orders them: numeric ones
/// by value (a longer digit string is larger: leading zeros are refused at install) and before
/// any alphanumeric one, which compare as text.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PreReleaseId {
    Numeric(usize, String),
    Alphanumeric(String),
}

/// Orders versions by semver precedence: the numbers, then a release after its pre-releases,
/// then the pre-release identifiers one by one (`rc.2` < `rc.10` < `rc.10.1`).
pub(crate) fn version_key(s: &str) -> (u64, u64, u64, bool, Vec<PreReleaseId>) {
    let (core, pre) = split_version(s);
    let pre = pre.unwrap_or("");
    let mut it = core.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let pre_ids = pre
        .split('.')
        .filter(|id| !id.is_empty())
        .map(|id| {
            if id.bytes().all(|b| b.is_ascii_digit()) {
                PreReleaseId::Numeric(id.len(), id.to_string())
            } else {
                PreReleaseId::Alphanumeric(id.to_string())
            }
        })
        .collect();
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        pre.is_empty(),
        pre_ids,
    )
}

/// The version spelled without leading zeros in its numbers (those of the core and the numeric
/// pre-release identifiers), if it has any.
pub(crate) fn without_leading_zeros(version: &str) -> Option<String> {
    let (core, pre) = split_version(version);
    // Every number of the core is numeric; in the pre-release only the numeric identifiers are
    // numbers ("0x" is text).
    let plain = |ids: &str| -> String {
        ids.split('.')
            .map(|n| {
                if n.len() > 1 && n.bytes().all(|b| b.is_ascii_digit()) {
                    match n.trim_start_matches('0') {
                        "" => "0",
                        t => t,
                    }
                } else {
                    n
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    };
    let written = match pre {
        Some(pre) => format!("{}-{}", plain(core), plain(pre)),
        None => plain(core),
    };
    (written != version).then_some(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<PluginsConfig> {
        let c: PluginsConfig = toml::from_str(s)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn a_slot_table_without_plugin_tunes_the_bundled_plugin() {
        let c = parse(
            "[authz]\nlimits = { timeout_ms = 100 }\n[health.http]\nhosts = [\"*.internal:8080\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.slot(SlotKind::Authz).plugin.as_deref(),
            Some("grants-policy")
        );
        assert_eq!(
            c.effective_limits(SlotKind::Authz).timeout,
            Duration::from_millis(100)
        );
        let http = c.slot(SlotKind::HealthHttp);
        assert_eq!(http.plugin.as_deref(), Some("http-health"));
        assert_eq!(http.hosts, ["*.internal:8080"]);
        // Naming one that is not an id is still refused, naming the key.
        let e = parse("[authz]\nplugin = \"\"\n").unwrap_err().to_string();
        assert!(e.contains("plugins.authz.plugin"), "{e}");
    }

    #[test]
    fn empty_table_serves_every_slot_with_the_bundled_plugin() {
        let c = parse("").unwrap();
        assert_eq!(
            c.slot(SlotKind::Authz).plugin.as_deref(),
            Some("grants-policy")
        );
        assert_eq!(
            c.slot(SlotKind::HealthHttp).plugin.as_deref(),
            Some("http-health")
        );
        assert_eq!(
            c.slot(SlotKind::HealthTcp).plugin.as_deref(),
            Some("tcp-health")
        );
    }

    #[test]
    fn unknown_key_is_rejected_and_named() {
        let e = parse("[authz]\nplugin = \"grants-policy\"\ntimeout = 3\n").unwrap_err();
        assert!(format!("{e:#}").contains("timeout"), "{e:#}");
    }

    #[test]
    fn memory_limit_above_the_engine_ceiling_names_the_key() {
        let e = parse("[health.http]\nplugin = \"http-health\"\nlimits = { memory_mib = 65 }\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("plugins.health.http.limits.memory_mib = 65"),
            "{e}"
        );
    }

    #[test]
    fn bad_host_pattern_names_its_index() {
        let e = parse("[health.tcp]\nplugin = \"tcp-health\"\nhosts = [\"db\", \"a b\"]\n")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("plugins.health.tcp.hosts[1]"),
            "{e}"
        );
    }

    #[test]
    fn authz_slot_cannot_be_granted_hosts() {
        let e =
            parse("[authz]\nplugin = \"grants-policy\"\nhosts = [\"example.com\"]\n").unwrap_err();
        assert!(e.to_string().starts_with("plugins.authz.hosts"), "{e}");
    }

    #[test]
    fn slot_limits_override_table_limits_which_override_defaults() {
        let c = parse(
            "[limits]\nfuel = 5\nmemory_mib = 2\n[authz]\nplugin = \"grants-policy\"\nlimits = { fuel = 7 }\n",
        )
        .unwrap();
        let l = c.effective_limits(SlotKind::Authz);
        assert_eq!(l.fuel, 7);
        assert_eq!(l.memory_bytes, 2 << 20);
        assert_eq!(l.timeout, Duration::from_millis(200));
    }

    #[test]
    fn config_values_reach_plugins_as_text() {
        let c =
            parse("[authz]\nplugin = \"grants-policy\"\nconfig = { a = \"x\", b = 3, c = true }\n")
                .unwrap();
        let cfg = c.slot(SlotKind::Authz).config;
        let got: Vec<String> = cfg.values().map(ConfigValue::to_plugin_string).collect();
        assert_eq!(got, vec!["x", "3", "true"]);
    }

    #[test]
    fn a_config_value_that_is_no_scalar_says_what_is_accepted() {
        let e =
            parse("[authz]\nplugin = \"grants-policy\"\nconfig = { a = [1, 2] }\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("a string, integer, float or boolean"),
            "{e:#}"
        );
        let c = parse("[authz]\nplugin = \"grants-policy\"\nconfig = { f = 1.5 }\n").unwrap();
        assert_eq!(c.slot(SlotKind::Authz).config["f"], ConfigValue::Float(1.5));
    }

    #[test]
    fn only_limits_that_allow_a_long_call_count_as_long() {
        let c = parse("").unwrap();
        assert!(!c.effective_limits(SlotKind::Authz).may_run_long());
        let c =
            parse("[authz]\nplugin = \"p\"\nlimits = { timeout_ms = 5000, fuel = 1000000000 }\n")
                .unwrap();
        assert!(c.effective_limits(SlotKind::Authz).may_run_long());
        let c = parse("[authz]\nplugin = \"p\"\nlimits = { timeout_ms = 5000 }\n").unwrap();
        assert!(
            !c.effective_limits(SlotKind::Authz).may_run_long(),
            "the default fuel still bounds the call"
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("0.10.0") > version_key("0.9.3"));
        assert!(version_key("1.0.0") > version_key("1.0.0-rc.1"));
        assert!(is_version("0.1.0") && !is_version("0.1") && !is_version("v0.1.0"));
    }

    #[test]
    fn pre_releases_compare_by_semver_precedence() {
        // semver.org's own example, in order.
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
        ];
        for pair in ordered.windows(2) {
            assert!(
                version_key(pair[0]) < version_key(pair[1]),
                "{} sorts before {}",
                pair[0],
                pair[1]
            );
        }
        assert!(version_key("1.0.0-rc.10") > version_key("1.0.0-rc.9"));
        assert!(is_version("1.0.0-rc.1") && is_version("1.0.0-x-y.2"));
        assert!(!is_version("1.0.0-rc..1") && !is_version("1.0.0-") && !is_version("1.0.0-rc."));
    }
}
