//! `nimbus image …`: pull images into the server's image store ahead of time (with progress),
//! and list what the store holds. A sandbox whose image was pulled here starts without
//! touching the registry. The logic lives in `nimbus_runtime::images::ImageStore`.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nimbus_runtime::reference::ImageRef;
use nimbus_runtime::ProgressEvent;

use crate::config::{default_data_dir, Config};

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Where the server keeps its state (default: server.data_dir from --config, else
    /// $HOME/.local/share/nimbus), as for `serve`.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Operator configuration (nimbus.toml): registry mirrors, plain-HTTP registries.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Pull an image by reference (e.g. `docker.io/library/python:3.12-slim`), showing progress.
    Pull { reference: String },
    /// List the images in the store: reference, manifest digest, layer count.
    List,
    /// Forget the image a reference resolved to (launches of it pull again); `prune` then
    /// frees its layers.
    Remove { reference: String },
    /// Free the blobs and layers no image in the store names and no sandbox on this host uses.
    Prune,
}

pub async fn run(args: ImageArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let data_dir = match args.data_dir.clone().or(config.server.data_dir.clone()) {
        Some(d) => d,
        None => default_data_dir()?,
    };
    match args.command {
        // A pull may come before the server's first start, and makes the data dir then.
        ImageCommand::Pull { .. } => crate::serve_cmd::create_private_data_dir(&data_dir)?,
        ImageCommand::List | ImageCommand::Remove { .. } | ImageCommand::Prune => {
            crate::serve_cmd::require_existing_data_dir(&data_dir)?
        }
    }
    if let ImageCommand::List = args.command {
        // Read only: nothing is created in the data dir (it may not be a server's at all).
        let mut out = std::io::stdout().lock();
        let store = std::path::absolute(&data_dir)?.join("runtime/images");
        for rec in
            nimbus_runtime::images::list_records(&store).context("reading the image store")?
        {
            let _ = writeln!(
                out,
                "{}\t{}\t{} layer{}",
                rec.reference,
                rec.manifest_digest,
                rec.layers.len(),
                if rec.layers.len() == 1 { "" } else { "s" }
            );
        }
        return Ok(());
    }
    // Removals touch only what is there, after checking who controls it: nothing is created,
    // and the store is not opened (which would set up the runtime's directories).
    match &args.command {
        ImageCommand::Remove { reference } => {
            let r = ImageRef::parse(reference)
                .map_err(|e| anyhow::anyhow!("{reference:?} is not an image reference: {e}"))?;
            let store = own_image_store(&data_dir)?;
            match nimbus_runtime::images::remove_record(&store, &r.to_string())
                .with_context(|| format!("removing {r}"))?
            {
                Some(rec) => println!(
                    "removed {r} ({}); `nimbus image prune` frees its layers once nothing else uses them",
                    rec.manifest_digest
                ),
                None => anyhow::bail!("the store has no image {r} (`nimbus image list` shows what it has)"),
            }
            return Ok(());
        }
        ImageCommand::Prune => {
            let store = own_image_store(&data_dir)?;
            let runtime_root = store.parent().unwrap_or(&store).to_path_buf();
            let in_use = nimbus_runtime::layers_in_use(&runtime_root)
                .map_err(|e| anyhow::anyhow!("nothing pruned: {e}"))?;
            let pruned = nimbus_runtime::images::prune_store(&store, &in_use)
                .context("pruning the image store")?;
            println!(
                "removed {} blob{} and {} layer{}, {:.1} MiB",
                pruned.blobs,
                if pruned.blobs == 1 { "" } else { "s" },
                pruned.layers,
                if pruned.layers == 1 { "" } else { "s" },
                pruned.bytes as f64 / f64::from(1 << 20)
            );
            return Ok(());
        }
        _ => {}
    }
    let runtime = nimbus_runtime::Runtime::open(&data_dir, &config.runtime)
        .map_err(|e| anyhow::anyhow!("opening the image store: {e}"))?;
    let images = runtime.images();
    match args.command {
        ImageCommand::Pull { reference } => {
            let r = ImageRef::parse(&reference)
                .map_err(|e| anyhow::anyhow!("{reference:?} is not an image reference: {e}"))?;
            let progress = ProgressPrinter::new();
            let started = Instant::now();
            let img = images
                .pull_latest(&r, &|e| progress.event(e))
                .await
                .map_err(|e| anyhow::anyhow!("pulling {r}: {e}"))?;
            progress.finish();
            println!(
                "{r}: {} ({} layer{}) in {:.1} s",
                img.record.manifest_digest,
                img.record.layers.len(),
                if img.record.layers.len() == 1 {
                    ""
                } else {
                    "s"
                },
                started.elapsed().as_secs_f64()
            );
        }
        ImageCommand::List => {} // answered above, without opening the store
        ImageCommand::Remove { .. } | ImageCommand::Prune => {} // answered above
    }
    Ok(())
}

/// The image store under `data_dir` (`runtime/images`), for a command that removes from it.
/// Every directory on the way must be a real directory (not a link) of the user running
/// nimbus: one that another user controls could steer the removals to files elsewhere.
fn own_image_store(data_dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let data_dir = std::path::absolute(data_dir)?;
    let store = data_dir.join("runtime/images");
    let owner_of = |meta: &std::fs::Metadata, path: &std::path::Path| {
        if meta.uid() != me {
            anyhow::bail!(
                "{} belongs to user {}, not to the user running nimbus ({me}); refusing to remove anything under it",
                path.display(),
                meta.uid()
            );
        }
        Ok(())
    };
    // The data dir itself may be reached through a link the operator made.
    let meta =
        std::fs::metadata(&data_dir).with_context(|| format!("data dir {}", data_dir.display()))?;
    owner_of(&meta, &data_dir)?;
    for dir in [
        data_dir.join("runtime"),
        store.clone(),
        store.join("images"),
        store.join("layers"),
        store.join("blobs"),
        store.join("blobs/sha256"),
        data_dir.join("runtime/sandboxes"),
    ] {
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => owner_of(&meta, &dir)?,
            Ok(_) => anyhow::bail!(
                "{} is not a directory (a link?); refusing to remove anything under it",
                dir.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.starts_with(&store) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != store => {}
            Err(_) => anyhow::bail!("{} holds no image store", data_dir.display()),
        }
    }
    Ok(store)
}

/// Prints pull progress on stderr: one self-updating line on a terminal, otherwise a line per
/// phase and at most one a second within a phase (so logs stay readable).
struct ProgressPrinter {
    tty: bool,
    last: Mutex<(Option<Instant>, String)>,
}

impl ProgressPrinter {
    fn new() -> ProgressPrinter {
        ProgressPrinter {
            tty: std::io::stderr().is_terminal(),
            last: Mutex::new((None, String::new())),
        }
    }

    fn event(&self, e: ProgressEvent) {
        let (phase, text, complete) = match e {
            ProgressEvent::Pulling {
                reference,
                bytes_done,
                bytes_total,
            } => (
                "pull",
                format!(
                    "pulling {reference}: {:.1} of {:.1} MiB",
                    bytes_done as f64 / 1048576.0,
                    bytes_total as f64 / 1048576.0
                ),
                bytes_done >= bytes_total,
            ),
            ProgressEvent::Unpacking {
                layer,
                index,
                count,
            } => (
                "unpack",
                format!(
                    "unpacking layer {index} of {count} ({})",
                    layer.get(..19).unwrap_or(&layer)
                ),
                true,
            ),
            _ => return,
        };
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let new_phase = !last.1.starts_with(phase);
        if !new_phase && !complete && last.0.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        *last = (Some(Instant::now()), format!("{phase} {text}"));
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{text}")
        } else {
            writeln!(err, "{text}")
        };
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
