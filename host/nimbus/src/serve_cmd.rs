//! `nimbus serve`: open the store, bootstrap, wire the API, serve until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use nimbus_api::auth::WorkloadSigner;
use nimbus_api::App;
use nimbus_core::names::Name;
use nimbus_store::Store;

use crate::bootstrap;
use crate::config::{default_data_dir, AuthorizerKind, Config, SandboxDriver};
use nimbus_api::control::{SandboxControl, ServiceControl};
use nimbus_control::health::HealthController;
use nimbus_control::sandboxes::{ControlHandle, SandboxController};
use nimbus_control::services::{ServiceHandle, ServiceManager};
use nimbus_plugins::PluginHost;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Where the server keeps its state (default: $HOME/.local/share/nimbus).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Operator configuration (nimbus.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Makes sure `data_dir` is a private directory (mode 0700): it holds the database with the
/// server's keys, and unpacked image layers whose setuid files no other local user may reach.
///
/// A missing directory is created 0700. An existing one open to other users is made private
/// only when it is Nimbus's own (it holds `nimbus.db`) or empty (made for Nimbus); one that holds
/// other files (`/tmp`, a home directory, a mistyped path) is refused rather than changed,
/// since its mode is not Nimbus's to take from the other users.
pub fn create_private_data_dir(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let shown = data_dir.display();
    let meta = match std::fs::metadata(data_dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .with_context(|| format!("creating data dir {shown}"));
        }
        Err(e) => return Err(e).with_context(|| format!("reading data dir {shown}")),
    };
    if !meta.is_dir() {
        anyhow::bail!("data dir {shown} is not a directory: pass --data-dir a directory of its own (it is created if missing)");
    }
    // Another user who owns the directory (or a database planted in it) could read the
    // server's keys or rewrite its credentials, whatever the mode is made.
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let owned_by_another = |path: &std::path::Path| {
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| m.uid())
            .filter(|uid| *uid != me)
    };
    // What is in it, too: a subtree another user made (runtime/, plugins/) stays theirs to
    // write however private the top is made.
    let entries: Vec<std::path::PathBuf> = std::fs::read_dir(data_dir)
        .with_context(|| format!("reading data dir {shown}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    for path in std::iter::once(data_dir.to_path_buf()).chain(entries) {
        if let Some(uid) = owned_by_another(&path) {
            anyhow::bail!(
                "{} belongs to user {uid}, not to the user running nimbus ({me}); the data dir \
                 holds the server's keys, and its owner could read or change them. Pass --data-dir \
                 a directory of your own (it is created if missing)",
                path.display()
            );
        }
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let ours = data_dir.join("nimbus.db").is_file();
    let empty = std::fs::read_dir(data_dir)
        .with_context(|| format!("reading data dir {shown}"))?
        .next()
        .is_none();
    if !ours && !empty {
        anyhow::bail!(
            "data dir {shown} is open to other users (mode {mode:o}) and holds files that are not \
             Nimbus's; Nimbus keeps its keys there and needs it private (mode 0700), which it will \
             not impose on a directory others use. Pass --data-dir a directory of its own (it is \
             created if missing), or make this one private yourself (chmod 700 {shown})"
        );
    }
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making data dir {shown} private (mode 0700)"))?;
    tracing::info!(data_dir = %shown, "made the data dir private (mode {mode:o} → 700)");
    Ok(())
}

/// Refuses a data dir that does not exist, for commands that only read one: they would
/// otherwise create an empty data dir at a mistyped path and report it empty.
pub fn require_existing_data_dir(data_dir: &std::path::Path) -> anyhow::Result<()> {
    if data_dir.is_dir() {
        return Ok(());
    }
    if data_dir.exists() {
        anyhow::bail!(
            "data dir {} is not a directory: pass the --data-dir your server uses",
            data_dir.display()
        );
    }
    anyhow::bail!(
        "data dir {} does not exist: pass the --data-dir your server uses",
        data_dir.display()
    )
}

/// Opens the store under `data_dir`, creating the directory (mode 0700) if needed.
pub async fn open_store(data_dir: &std::path::Path) -> anyhow::Result<Store> {
    create_private_data_dir(data_dir)?;
    let db = data_dir.join("nimbus.db");
    Store::open(&db)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", db.display()))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    config.runtime.check().map_err(anyhow::Error::msg)?;
    let listen = match args.listen.or(config.server.listen) {
        Some(a) => a,
        None => DEFAULT_LISTEN.parse().context("default listen address")?,
    };
    // Port 0 asks for any free port, which the two listeners get separately.
    if listen.port() != 0 && config.server.metrics_listen == Some(listen) {
        anyhow::bail!(
            "server.metrics_listen = \"{listen}\" is the API's own address (--listen / server.listen); \
             give the metrics another port"
        );
    }
    let data_dir = match args.data_dir.clone().or(config.server.data_dir.clone()) {
        Some(d) => d,
        None => default_data_dir()?,
    };
    let tenant = Name::parse(
        "server.default_tenant",
        config.server.default_tenant.as_deref().unwrap_or("demo"),
    )
    .map_err(|e| anyhow::anyhow!("config: {}", e.message))?;

    // Before anything in the data dir is read or written: one server per data dir.
    create_private_data_dir(&data_dir)?;
    let _data_dir_lock = crate::data_dir_lock::lock(&data_dir)?;
    let store = open_store(&data_dir).await?;
    // Plugins: the authorization policy every request passes through, and health checks. Loaded
    // before anything else is set up, so that a bad `[plugins]` section (a plugin that is not
    // installed, a pin that does not match) stops the server before it writes a tenant or a
    // credential, listens, or touches the host's network.
    let plugins =
        nimbus_plugins::PluginHost::open(&data_dir, &config.plugins).context("loading plugins")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "listening on {listen} (is another server running there? pass --listen ADDR:PORT)"
            )
        })?;
    let local = listener.local_addr()?;
    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        local.ip().to_string()
    };
    let endpoint = if local.is_ipv6() {
        format!("http://[{host}]:{}", local.port())
    } else {
        format!("http://{host}:{}", local.port())
    };
    let signer = WorkloadSigner::load(&store).await?;
    let (control, controller): (Option<Arc<dyn SandboxControl>>, _) = match config
        .server
        .sandbox_driver
    {
        SandboxDriver::Container => {
            let runtime = nimbus_runtime::Runtime::open(&data_dir, &config.runtime)
                .map_err(|e| anyhow::anyhow!("starting the sandbox runtime: {e}"))?;
            if let Err(unfit) = runtime.preflight() {
                tracing::warn!("this host cannot run container sandboxes until this is fixed (creates answer runtime.unavailable): {unfit}");
            }
            let controller = SandboxController::new(store.clone(), runtime, signer.clone());
            (
                Some(Arc::new(ControlHandle(controller.clone()))),
                Some(controller),
            )
        }
        SandboxDriver::None => {
            tracing::info!("server.sandbox_driver = \"none\": sandboxes are recorded but not run");
            (None, None)
        }
    };
    let metrics_listener = match config.server.metrics_listen {
        Some(addr) => Some((addr, crate::metrics_endpoint::bind(addr).await?)),
        None => None,
    };
    // Last of what can stop a start: a start that fails leaves the credential file (which a
    // running server's users may rely on) as it was.
    let credential_file = bootstrap::ensure(&store, &tenant, &endpoint).await?;

    let (adopted, adoption) = tokio::sync::oneshot::channel();
    let controller_task = controller.clone().map(|c| tokio::spawn(c.run(adopted)));
    // Sandbox-backed services are launched through the sandbox controller, so only with one.
    let service_manager = controller
        .clone()
        .map(|c| ServiceManager::new(store.clone(), c, config.limits.sandboxes_per_tenant));
    let services: Option<Arc<dyn ServiceControl>> = service_manager
        .clone()
        .map(|m| Arc::new(ServiceHandle(m)) as Arc<dyn ServiceControl>);
    let service_task = service_manager.map(|m| tokio::spawn(m.run()));
    // Requests are timed only when something serves the figures.
    let (metrics_task, http_metrics) = match metrics_listener {
        Some((addr, listener)) => {
            let http = Arc::new(nimbus_api::http_metrics::HttpMetrics::default());
            tracing::info!(metrics = %addr, "serving request and plugin metrics at http://{addr}/metrics");
            let router = crate::metrics_endpoint::router(http.clone(), plugins.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!("the metrics listener stopped: {e}");
                }
            });
            (Some(task), Some(http))
        }
        None => (None, None),
    };
    let health_task = tokio::spawn(HealthController::new(store.clone(), plugins.clone()).run());
    // However this function returns (an error below included), health checks' HTTP, which runs
    // on this runtime, must end before the runtime shuts down under it.
    let _end_health_checks = EndHealthChecks(plugins.clone());
    let page_tokens = nimbus_api::pagination::PageTokens::load(&store).await?;
    let app = Arc::new(App {
        signer,
        page_tokens,
        control,
        services,
        store: store.clone(),
        authorizer: match config.server.authorizer {
            AuthorizerKind::Plugin => plugins.authorizer(),
            AuthorizerKind::Native => Arc::new(nimbus_core::authz::GrantsPolicy),
            AuthorizerKind::AllowAllBenchmarkOnly => {
                tracing::warn!("server.authorizer = \"allow-all-benchmark-only\": every authenticated request is allowed, across tenants; this is for measuring the policy's cost only");
                Arc::new(AllowAll)
            }
        },
        reaper_wake: tokio::sync::Notify::new(),
        quota_refusals: Default::default(),
        stopping: Default::default(),
        limits: config.limits,
    });
    let reaper = tokio::spawn(nimbus_api::reaper::run(app.clone()));
    let signalled = app.clone();
    let router = match http_metrics {
        Some(m) => nimbus_api::http_metrics::track(nimbus_api::router(app), m),
        None => nimbus_api::router(app),
    };

    // Records first say what the host holds: a sandbox that ended while the server was down
    // must not be read as ready. Requests wait in the listener's backlog meanwhile. (Without a
    // sandbox driver the sender is gone, and this returns at once.)
    if tokio::time::timeout(ADOPTION_WAIT, adoption).await.is_err() {
        tracing::warn!(
            "adopting the sandboxes takes over {} s; serving meanwhile (their records catch up as it goes)",
            ADOPTION_WAIT.as_secs()
        );
    }
    tracing::info!(%endpoint, data_dir = %data_dir.display(), credentials = %credential_file.display(), "nimbus is serving");
    // No Nagle: streamed responses (followed logs, events) are many small writes, and each
    // would otherwise wait for the client's delayed ACK of the one before it.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
        }
    });
    let stopping = Arc::new(tokio::sync::Notify::new());
    let serving = axum::serve(listener, router).with_graceful_shutdown({
        let stopping = stopping.clone();
        async move {
            wait_for_signal("shutting down").await;
            signalled.stopping.begin();
            stopping.notify_one();
        }
    });
    // Requests in flight get SHUTDOWN_GRACE to finish. Streams that never end on their own
    // (followed logs, attached stdio) would otherwise hold the server up for as long as their
    // clients stay; a second signal stops at once.
    tokio::select! {
        served = serving => served.context("serving HTTP")?,
        () = async {
            stopping.notified().await;
            tokio::select! {
                () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!(
                    "requests still open {} s after the signal (followed logs, attached sessions) are cut",
                    SHUTDOWN_GRACE.as_secs()
                ),
                () = wait_for_signal("stopping at once") => {}
            }
        } => {}
    }
    reaper.abort();
    // Sandboxes keep running: their monitors outlive the server and are adopted on the next start.
    health_task.abort();
    // Health checks run on blocking threads that make their HTTP requests on this runtime;
    // they must end before it shuts down.
    plugins.stop().await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(t) = service_task {
        t.abort();
    }
    if let Some(t) = controller_task {
        t.abort();
    }
    if let Some(c) = controller {
        c.shutdown().await;
    }
    store.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The baseline of `bench/api_authz.sh`: allows every authenticated request.
struct AllowAll;

impl nimbus_core::authz::Authorizer for AllowAll {
    fn authorize(&self, _: &nimbus_core::authz::AuthzRequest) -> nimbus_core::authz::Decision {
        nimbus_core::authz::Decision::allow("allow-all-benchmark-only", "benchmark baseline")
    }
}

/// How long a start waits for the sandboxes' records to be reconciled with the host before
/// it serves anyway.
const ADOPTION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a stopping server waits for the requests in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Returns at SIGTERM or SIGINT, logging which and `what` the server does now.
async fn wait_for_signal(what: &str) {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: {what}"),
                _ = int.recv() => tracing::info!("SIGINT: {what}"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop the server with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

/// Cuts the health checks' outbound HTTP when dropped ([`PluginHost::begin_stop`]); the clean
/// path also waits for the checks to end ([`PluginHost::stop`]).
struct EndHealthChecks(Arc<PluginHost>);

impl Drop for EndHealthChecks {
    fn drop(&mut self) {
        self.0.begin_stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn dir_with_mode(parent: &std::path::Path, name: &str, mode: u32) -> PathBuf {
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    #[test]
    fn a_missing_data_dir_is_created_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        create_private_data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_shared_directory_with_other_files_is_refused_and_left_as_it_was() {
        let root = tempfile::tempdir().unwrap();
        let dir = dir_with_mode(root.path(), "shared", 0o1777);
        std::fs::write(dir.join("someone-elses-file"), "x").unwrap();
        let err = create_private_data_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("open to other users (mode 1777)"), "{err}");
        assert!(err.contains("a directory of its own"), "{err}");
        assert_eq!(mode(&dir), 0o1777);
        assert!(!dir.join("nimbus.db").exists());
    }

    #[test]
    fn an_empty_directory_or_nimbus_own_is_made_private() {
        let root = tempfile::tempdir().unwrap();
        let empty = dir_with_mode(root.path(), "empty", 0o755);
        create_private_data_dir(&empty).unwrap();
        assert_eq!(mode(&empty), 0o700);
        let ours = dir_with_mode(root.path(), "ours", 0o755);
        std::fs::write(ours.join("nimbus.db"), "").unwrap();
        create_private_data_dir(&ours).unwrap();
        assert_eq!(mode(&ours), 0o700);
    }

    #[test]
    fn a_directory_or_database_of_another_user_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let theirs = dir_with_mode(root.path(), "theirs", 0o755);
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = create_private_data_dir(&theirs).unwrap_err().to_string();
        assert!(err.contains("belongs to user 65534"), "{err}");
        assert_eq!(mode(&theirs), 0o755);
        // A directory of ours holding another user's subtree.
        let mixed = dir_with_mode(root.path(), "mixed", 0o700);
        std::fs::create_dir(mixed.join("runtime")).unwrap();
        std::os::unix::fs::chown(mixed.join("runtime"), Some(65534), Some(65534)).unwrap();
        let err = create_private_data_dir(&mixed).unwrap_err().to_string();
        assert!(err.contains("runtime belongs to user 65534"), "{err}");
        // A shared directory where another user planted a database.
        let shared = dir_with_mode(root.path(), "shared", 0o1777);
        std::fs::write(shared.join("nimbus.db"), "").unwrap();
        std::os::unix::fs::chown(shared.join("nimbus.db"), Some(65534), Some(65534)).unwrap();
        let err = create_private_data_dir(&shared).unwrap_err().to_string();
        assert!(err.contains("nimbus.db belongs to user 65534"), "{err}");
        assert_eq!(mode(&shared), 0o1777);
    }

    #[test]
    fn a_file_is_not_a_data_dir() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = create_private_data_dir(&file).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
        assert!(require_existing_data_dir(&root.path().join("missing")).is_err());
    }
}
