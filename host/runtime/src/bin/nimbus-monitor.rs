//! The per-sandbox monitor as its own executable; see `nimbus_runtime::monitor`.
fn main() -> std::process::ExitCode {
    nimbus_runtime::monitor::main_from_args(std::env::args_os().skip(1).collect())
}
