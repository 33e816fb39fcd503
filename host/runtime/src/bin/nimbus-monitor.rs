//! The per-sandbox monitor as its own executable; see `nimbus_runtime::monitor`.
fn main() -> std::process::ExitCode {
    // `__monitor …` or `__namespaces …`.
    nimbus_runtime::monitor::main_if_requested().unwrap_or_else(|| {
        nimbus_runtime::monitor::main_from_args(std::env::args_os().skip(1).collect())
    })
}
