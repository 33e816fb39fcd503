//! Builds the guest components in `plugins/` (their own workspace, target wasm32-wasip2) so that
//! a plain `cargo build` of the server produces the bundled plugins it embeds. The test guests
//! under `plugins/testdata/` are built by the same invocation; the host's tests load them from
//! `NIMBUS_PLUGINS_WASM_DIR`.
//!
//! Needs: `rustup target add wasm32-wasip2` (the target ships `wasm-component-ld`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let repo = manifest_dir.join("../..");
    let plugins = repo.join("plugins");
    let wit = repo.join("wit");
    println!("cargo:rerun-if-changed={}", plugins.display());
    println!("cargo:rerun-if-changed={}", wit.display());

    // A stable directory beside the host's profile dirs, so that the guests are not rebuilt from
    // scratch whenever this build script's OUT_DIR changes. OUT_DIR is
    // <target>/<profile>/build/<pkg>-<hash>/out.
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let target_root = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.join("wasm"));
    let wasm_target = target_root.join("nimbus-plugins-wasm");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&wasm_target);
    // The outer build's settings are for the host target; the guests take theirs from
    // plugins/.cargo/config.toml.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_PKG_NAME",
    ] {
        cmd.env_remove(var);
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => panic!(
            "nimbus-plugins: cannot run cargo to build the guest components in plugins/: {e}"
        ),
    };
    if !status.success() {
        panic!(
            "nimbus-plugins: building the guest components in plugins/ for wasm32-wasip2 failed \
             (see the output above). If the target is missing, run `rustup target add wasm32-wasip2`."
        );
    }
    let dir = wasm_target.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=NIMBUS_PLUGINS_WASM_DIR={}", dir.display());
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo did not set {name} for the build script"))
}
