//! `nimbus doctor`: checks that this host can run container sandboxes and says exactly what to
//! fix; `--fix` applies the fixes the runtime can make itself (the v1 hugetlb cgroup mount that
//! Debian's crun needs on hybrid cgroup hosts, and `favordynmods` for quick sandbox starts).

use std::io::Write;
use std::path::PathBuf;

use nimbus_runtime::doctor::{self, Status};

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Apply the fixes Nimbus can make itself (cgroup mounts and mount options), then check
    /// again.
    #[arg(long)]
    pub fix: bool,
    /// The crun executable to check (default: `runtime.crun` from `--config`, else crun on
    /// PATH).
    #[arg(long)]
    pub crun: Option<PathBuf>,
    /// The data dir whose filesystem must support idmapped mounts for user namespaces
    /// (default: `server.data_dir` from `--config`, else $HOME/.local/share/nimbus, like
    /// `serve`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The operator configuration `serve` uses (nimbus.toml), so that the checks look at the
    /// same crun and data dir.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    // Output errors (a closed pipe) are ignored: the exit status carries the verdict.
    let mut out = std::io::stdout().lock();
    // The config first: a bad one stops the command before `--fix` changes anything.
    let config = match &args.config {
        Some(p) => crate::config::Config::load(p)?,
        None => crate::config::Config::default(),
    };
    if args.fix {
        match doctor::apply_fixes() {
            Ok(done) if done.is_empty() => {
                let _ = writeln!(out, "fix: nothing to do");
            }
            Ok(done) => {
                for d in done {
                    let _ = writeln!(out, "fix: {d}");
                }
            }
            Err(e) => anyhow::bail!("fix failed: {e}"),
        }
    }
    let crun = args.crun.unwrap_or(config.runtime.crun);
    let mut checks = doctor::all_checks(&crun);
    let data_dir = match args.data_dir.or(config.server.data_dir) {
        Some(d) => d,
        None => crate::config::default_data_dir()?,
    };
    checks.push(doctor::user_namespaces_check(
        &data_dir.join("runtime/images"),
    ));
    checks.push(doctor::free_space_check(&data_dir));
    let mut failed = 0;
    for c in &checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Fail => {
                failed += 1;
                "FAIL"
            }
            Status::Info => "info",
        };
        let _ = writeln!(out, "{tag} {:<11} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "     {:<11} fix: {fix}", "");
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed: container sandboxes cannot run on this host until they are fixed");
    }
    let _ = writeln!(out, "this host can run container sandboxes");
    Ok(())
}
