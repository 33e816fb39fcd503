//! `nimbus`: the server and its command line. This file only parses arguments and dispatches;
//! each subcommand lives in its own module and the logic in the library crates.

mod admin_cmd;
mod bootstrap;
mod config;
mod data_dir_lock;
mod doctor_cmd;
mod image_cmd;
mod metrics_endpoint;
mod plugin_cmd;
mod serve_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nimbus",
    version,
    about = "Nimbus: sandboxes, services and sessions on your own Linux host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(serve_cmd::ServeArgs),
    /// Manage tenants.
    Tenant(admin_cmd::TenantArgs),
    /// Manage credentials (tokens, API keys, workload identity tokens).
    Credential(admin_cmd::CredentialArgs),
    /// Check that this host can run sandboxes, and say exactly what to fix.
    Doctor(doctor_cmd::DoctorArgs),
    /// Pull images into the store ahead of time (with progress), list them, remove them and
    /// free the space they no longer need.
    Image(image_cmd::ImageArgs),
    /// Manage the WebAssembly plugin store.
    Plugin(plugin_cmd::PluginArgs),
}

fn main() -> std::process::ExitCode {
    // The per-sandbox monitor is this binary re-executed as `nimbus __monitor …`; it must take
    // over before anything else (no async runtime, no argument parsing).
    if let Some(code) = nimbus_runtime::monitor::main_if_requested() {
        return code;
    }
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nimbus: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve_cmd::run(args).await,
            Command::Tenant(args) => admin_cmd::run_tenant(args).await,
            Command::Credential(args) => admin_cmd::run_credential(args).await,
            Command::Doctor(args) => doctor_cmd::run(args).await,
            Command::Image(args) => image_cmd::run(args).await,
            Command::Plugin(args) => plugin_cmd::run(args).await,
        }
    });
    // Tasks still running (a stdio channel's blocking read) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nimbus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` (e.g. `nimbus=debug`) overrides the default `info`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a terminal: escape codes in a log file or a journal are noise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
