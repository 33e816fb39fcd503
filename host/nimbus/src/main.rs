//! `nimbus`: the server and its command line. This file only parses arguments and dispatches;
//! each subcommand lives in its own module and the logic in the library crates.

mod doctor_cmd;
mod plugin_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "nimbus", version, about = "Nimbus: sandboxes, services and sessions on your own Linux host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this host can run sandboxes, and say exactly what to fix.
    Doctor(doctor_cmd::DoctorArgs),
    /// Manage the WebAssembly plugin store.
    Plugin(plugin_cmd::PluginArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nimbus: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Doctor(args) => doctor_cmd::run(args).await,
            Command::Plugin(args) => plugin_cmd::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nimbus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
