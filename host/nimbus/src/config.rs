//! `nimbus.toml`, the operator's configuration. Unknown keys are errors, and every error names
//! the key, so a typo never silently changes behaviour.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: nimbus_api::app::Limits,
    #[serde(default)]
    pub runtime: nimbus_runtime::RuntimeConfig,
    #[serde(default)]
    pub plugins: nimbus_plugins::PluginsConfig,
}

/// What runs sandboxes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxDriver {
    /// OCI containers through crun (the default).
    #[default]
    Container,
    /// None: sandboxes are recorded and stay `pending` (for control-plane-only deployments).
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Overridden by `--listen`.
    pub listen: Option<SocketAddr>,
    /// Overridden by `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// The tenant created at first start and written to the credential file.
    pub default_tenant: Option<String>,
    #[serde(default)]
    pub sandbox_driver: SandboxDriver,
    #[serde(default)]
    pub authorizer: AuthorizerKind,
    /// Where to serve request and plugin metrics (`GET /metrics`, Prometheus text,
    /// unauthenticated); off when unset, and requests are then not timed.
    pub metrics_listen: Option<SocketAddr>,
}

/// Who answers authorization questions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthorizerKind {
    /// The `[plugins.authz]` component (default `grants-policy`).
    #[default]
    Plugin,
    /// The same grant rules compiled into the server; for comparison benchmarks and for hosts
    /// that cannot run WebAssembly. Replacing the policy then needs a rebuild.
    Native,
    /// Every authenticated request is allowed, across tenants: the baseline the policy's cost
    /// is measured against (`bench/api_authz.sh`). The name says it: never for real use.
    AllowAllBenchmarkOnly,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use std::io::Read;
        let shown = path.display();
        // Not a device (`/dev/zero` would be read forever), a FIFO (opening it waits for a
        // writer) or a directory: checked before opening, then again on what was opened.
        let regular = |m: std::io::Result<std::fs::Metadata>| m.is_ok_and(|m| m.is_file());
        if std::fs::metadata(path).is_ok() && !regular(std::fs::metadata(path)) {
            anyhow::bail!("config file {shown} is not a regular file");
        }
        let file =
            std::fs::File::open(path).with_context(|| format!("reading config file {shown}"))?;
        if !regular(file.metadata()) {
            anyhow::bail!("config file {shown} is not a regular file");
        }
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading config file {shown}"))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            anyhow::bail!("config file {shown} is over {MAX_CONFIG_BYTES} bytes");
        }
        let config = Config::parse(&text).map_err(|e| anyhow!("config file {shown}: {e}"))?;
        // Every command that reads a config refuses one `serve` would refuse.
        config
            .runtime
            .check()
            .map_err(|e| anyhow!("config file {shown}: {e}"))?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        // serde takes a struct from an array of its fields' values too (`limits = [5, 6]`);
        // every section and every struct-typed value here is a table.
        if let Ok(table) = text.parse::<toml::Table>() {
            for pattern in TABLES {
                let parts: Vec<&str> = pattern.split('.').collect();
                if let Some((path, found)) = not_a_table(&table, &parts, "") {
                    return Err(format!(
                        "key `{path}`: expected a table (`[{path}]`), found {found}"
                    ));
                }
            }
        }
        let de = toml::Deserializer::new(text);
        let config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut msg = inner.message().trim_end().to_string();
            if let Some(span) = inner.span() {
                let (line, column) = line_and_column(text, span.start);
                msg = format!("{msg} (line {line}, column {column})");
            }
            if key == "." || key.is_empty() {
                msg
            } else {
                format!("key `{key}`: {msg}")
            }
        })?;
        Ok(config)
    }
}

/// Larger than any real nimbus.toml by far.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Where the config file has tables (sections, and struct- or map-typed values); `*` stands for
/// any key (a slot or provider name). A new section or struct-typed key belongs here.
const TABLES: [&str; 17] = [
    "server",
    "limits",
    "runtime",
    "runtime.mirrors",
    "plugins",
    "plugins.limits",
    "plugins.authz",
    "plugins.authz.limits",
    "plugins.authz.config",
    "plugins.health",
    "plugins.health.*",
    "plugins.health.*.limits",
    "plugins.health.*.config",
    "plugins.providers",
    "plugins.providers.*",
    "plugins.providers.*.limits",
    "plugins.providers.*.config",
];

/// The first value at `parts` (below `table`, whose path is `prefix`) that is present but not
/// a table: its dotted path and its TOML type.
fn not_a_table(
    table: &toml::Table,
    parts: &[&str],
    prefix: &str,
) -> Option<(String, &'static str)> {
    let (first, rest) = parts.split_first()?;
    let entries: Vec<(&String, &toml::Value)> = if *first == "*" {
        table.iter().collect()
    } else {
        table.get_key_value(*first).into_iter().collect()
    };
    for (key, value) in entries {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value.as_table() {
            None => return Some((path, value.type_str())),
            Some(inner) if !rest.is_empty() => {
                if let Some(found) = not_a_table(inner, rest, &path) {
                    return Some(found);
                }
            }
            Some(_) => {}
        }
    }
    None
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// `$XDG_DATA_HOME/nimbus`, else `$HOME/.local/share/nimbus`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("nimbus"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("HOME is not set; pass --data-dir DIR"))?;
    Ok(PathBuf::from(home).join(".local/share/nimbus"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_path_that_is_no_regular_file_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        for path in [fifo.as_path(), Path::new("/dev/zero"), &link, dir.path()] {
            let err = Config::load(path).unwrap_err().to_string();
            assert!(
                err.contains("is not a regular file"),
                "{}: {err}",
                path.display()
            );
        }
    }

    #[test]
    fn authorizer_kinds_parse_and_the_baseline_is_spelled_out() {
        for (text, kind) in [
            ("plugin", AuthorizerKind::Plugin),
            ("native", AuthorizerKind::Native),
            (
                "allow-all-benchmark-only",
                AuthorizerKind::AllowAllBenchmarkOnly,
            ),
        ] {
            let c = Config::parse(&format!("[server]\nauthorizer = \"{text}\"\n")).unwrap();
            assert_eq!(c.server.authorizer, kind);
        }
        let err = Config::parse("[server]\nauthorizer = \"allow-all\"\n").unwrap_err();
        assert!(err.contains("server.authorizer"), "{err}");
    }

    #[test]
    fn sections_must_be_tables_and_syntax_errors_say_where() {
        for (text, key) in [
            ("limits = [5, 6]\n", "limits"),
            ("plugins = []\n", "plugins"),
            ("[plugins]\nauthz = [\"grants-policy\"]\n", "plugins.authz"),
            (
                "[plugins.health]\nhttp = [\"http-health\"]\n",
                "plugins.health.http",
            ),
            (
                "[plugins.providers]\nbrowser = [\"x\"]\n",
                "plugins.providers.browser",
            ),
            (
                "[plugins.authz]\nplugin = \"grants-policy\"\nlimits = [1]\n",
                "plugins.authz.limits",
            ),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(
                err.contains(&format!("key `{key}`")) && err.contains("table"),
                "{text}: {err}"
            );
        }
        // Values that are not tables where none is expected stay accepted.
        let c = Config::parse(
            "[runtime]\nmonitor = \"/usr/lib/nimbus/nimbus-monitor\"\n[runtime.mirrors]\n\"docker.io\" = [\"http://m:5000\"]\n",
        )
        .unwrap();
        assert!(c.runtime.monitor.is_some());
        let err = Config::parse("[server]\n\nsandbox_driver = \"none\" \"x\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_naming_the_key() {
        let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n").unwrap_err();
        assert!(err.contains("listne"), "{err}");
        let err = Config::parse("[server]\nlisten = \"not an address\"\n").unwrap_err();
        assert!(err.contains("server.listen"), "{err}");
        let err = Config::parse("[server]\nmetrics_listen = \"localhost\"\n").unwrap_err();
        assert!(err.contains("server.metrics_listen"), "{err}");
    }

    #[test]
    fn an_empty_file_is_the_default() {
        let c = Config::parse("").unwrap();
        assert!(c.server.listen.is_none());
    }
}
