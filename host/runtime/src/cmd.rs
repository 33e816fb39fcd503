//! Running host tools (ip, nft, crun, buildah) with their output captured for error messages.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// Runs `prog args…`, feeding `input` on stdin; returns stdout, or an error naming the command
/// and quoting its stderr.
pub async fn run_cmd(prog: &str, args: &[&str], input: Option<&[u8]>) -> Result<String, String> {
    run_cmd_env(prog, args, input, &[]).await
}

/// [`run_cmd`] with `env` added to the child's environment.
pub async fn run_cmd_env(
    prog: &str,
    args: &[&str],
    input: Option<&[u8]>,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e} (is it installed? see `nimbus doctor`)"))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(data)
            .await
            .map_err(|e| format!("writing to {prog}: {e}"))?;
        drop(stdin);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("waiting for {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
