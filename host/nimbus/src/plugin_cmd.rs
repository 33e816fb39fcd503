//! `nimbus plugin …`: manage the WebAssembly plugin store under `<data-dir>/plugins`. The logic
//! lives in `nimbus_plugins::PluginStore`; this file parses arguments and prints.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use nimbus_plugins::{PluginInfo, PluginStore};

#[derive(clap::Args)]
pub struct PluginArgs {
    /// Where the server keeps its state (default: server.data_dir from --config, else
    /// $HOME/.local/share/nimbus), as for `serve`.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The operator configuration the server runs with (nimbus.toml), for its data dir.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// List installed plugins: id, version, world, sha256 and flags, one per line.
    List {
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Install a component (.wasm) and make it its plugin's active version.
    Install {
        /// The component file.
        file: PathBuf,
        /// Plugin id (default: the component's embedded id).
        #[arg(long)]
        id: Option<String>,
        /// Version (default: the component's embedded version).
        #[arg(long)]
        version: Option<String>,
    },
    /// Print the WIT world a plugin implements.
    Inspect {
        /// `id` (its active version) or `id@version`.
        plugin: String,
    },
    /// Recheck every installed component against the sha256 recorded at install.
    Verify,
    /// Remove a plugin (`id`, every version) or one version (`id@version`).
    Remove { plugin: String },
    /// Compile every installed plugin for this server into the precompiled cache.
    Precompile,
}

fn line(p: &PluginInfo) -> String {
    let mut flags = Vec::new();
    if p.active {
        flags.push("active");
    }
    if p.source == "bundled" {
        flags.push("bundled");
    }
    let flags = if flags.is_empty() {
        "-".to_string()
    } else {
        flags.join(",")
    };
    format!("{} {} {} {} {}", p.id, p.version, p.world, p.sha256, flags)
}

/// Reads a component file. What is not a regular file (after symlinks) is refused before it is
/// opened: a device such as /dev/zero has no size to check and never ends, and opening a FIFO
/// waits for a writer. At most one byte over the limit is read, whatever the size said.
fn read_component(file: &Path) -> anyhow::Result<Vec<u8>> {
    let cannot_read = || format!("cannot read {}", file.display());
    let meta = std::fs::metadata(file).with_context(cannot_read)?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file (a directory, device, pipe or socket); install a .wasm file",
            file.display()
        );
    }
    // Checked before reading, so that a huge file is not read only to be refused.
    nimbus_plugins::check_component_size(meta.len())?;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| {
            f.take(nimbus_plugins::MAX_COMPONENT_BYTES + 1)
                .read_to_end(&mut bytes)
        })
        .with_context(cannot_read)?;
    nimbus_plugins::check_component_size(bytes.len() as u64)?;
    Ok(bytes)
}

pub async fn run(args: PluginArgs) -> anyhow::Result<()> {
    let configured = match &args.config {
        Some(p) => crate::config::Config::load(p)?.server.data_dir,
        None => None,
    };
    let data_dir = match args.data_dir.or(configured) {
        Some(d) => d,
        None => crate::config::default_data_dir()?,
    };
    // Every plugin command may come before the server's first start (to see the bundled
    // plugins, or install one): the store, with the bundled plugins, is made on first use.
    crate::serve_cmd::create_private_data_dir(&data_dir)?;
    // Compiling components is CPU work; keep it off the async runtime's threads.
    tokio::task::spawn_blocking(move || execute(data_dir, args.command))
        .await
        .context("the plugin command did not complete")?
}

fn execute(data_dir: PathBuf, command: PluginCommand) -> anyhow::Result<()> {
    // Write errors (a closed pipe) end the command with an error instead of a panic.
    let mut out = std::io::stdout().lock();
    let store = PluginStore::open(&data_dir)
        .with_context(|| format!("cannot open the plugin store in {}", data_dir.display()))?;
    match command {
        PluginCommand::List { json } => {
            let list = store.list()?;
            if json {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .map(|p| {
                        let mut v = serde_json::to_value(p).unwrap_or_default();
                        v["active"] = serde_json::Value::Bool(p.active);
                        v
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                for p in &list {
                    writeln!(out, "{}", line(p))?;
                }
            }
        }
        PluginCommand::Install { file, id, version } => {
            let bytes = read_component(&file)
                .with_context(|| format!("refusing to install {}", file.display()))?;
            let info = store
                .install(&bytes, id.as_deref(), version.as_deref())
                .with_context(|| format!("refusing to install {}", file.display()))?;
            writeln!(out, "installed {}", line(&info))?;
        }
        PluginCommand::Inspect { plugin } => {
            let (info, wit) = store.inspect(&plugin)?;
            writeln!(out, "// {}", line(&info))?;
            write!(out, "{wit}")?;
        }
        PluginCommand::Verify => {
            let reports = store.verify()?;
            let (mut bad, mut corrupt) = (0, 0);
            for r in &reports {
                if let Some(problem) = &r.problem {
                    corrupt += 1;
                    writeln!(out, "CORRUPT {} {}: {problem}", r.id, r.version)?;
                    continue;
                }
                match &r.actual_sha256 {
                    Some(actual) if *actual == r.expected_sha256 => {
                        writeln!(out, "ok {} {} {}", r.id, r.version, actual)?
                    }
                    Some(actual) => {
                        bad += 1;
                        writeln!(
                            out,
                            "MISMATCH {} {} pinned {} found {}",
                            r.id, r.version, r.expected_sha256, actual
                        )?
                    }
                    None => {
                        bad += 1;
                        writeln!(
                            out,
                            "MISSING {} {} pinned {}",
                            r.id, r.version, r.expected_sha256
                        )?
                    }
                }
            }
            let mut failures = Vec::new();
            if bad > 0 {
                failures.push(format!(
                    "{bad} fail their sha256 pin (reinstall them from a trusted file, or remove them)"
                ));
            }
            if corrupt > 0 {
                failures.push(format!(
                    "{corrupt} corrupt (each CORRUPT line says what to do)"
                ));
            }
            if !failures.is_empty() {
                bail!(
                    "{} of {} plugins fail verification: {}",
                    bad + corrupt,
                    reports.len(),
                    failures.join("; ")
                );
            }
        }
        PluginCommand::Remove { plugin } => {
            let removed = store.remove(&plugin)?;
            for p in &removed {
                writeln!(out, "removed {} {}", p.id, p.version)?;
            }
            // A version removed for its corrupt manifest may have been bundled: opening the store
            // again installs it now rather than at the next command.
            let store = match removed.iter().any(|p| p.source == "unknown") {
                true => PluginStore::open(&data_dir)?,
                false => store,
            };
            // The store cannot see servers' configs: say what removing the last version means.
            // The removal is done whatever the listing says: a store that cannot be listed now
            // only loses the warning.
            if let Some(id) = removed.first().map(|p| p.id.clone()) {
                let left = store
                    .list()
                    .map(|all| all.iter().any(|p| p.id == id))
                    .unwrap_or(true);
                if !left {
                    eprintln!(
                        "nimbus: no version of {id} is left; a server whose config names it in a slot keeps \
                         the version it has loaded, and will not start again until {id} is installed or \
                         the slot names another plugin"
                    );
                }
            }
        }
        PluginCommand::Precompile => {
            let done = store.precompile()?;
            for p in &done {
                writeln!(out, "precompiled {} {}", p.id, p.version)?;
            }
        }
    }
    Ok(())
}
