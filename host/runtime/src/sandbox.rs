//! [`Runtime`]: launch, observe, stop, delete, logs and adoption of sandboxes.
//!
//! Per-sandbox state lives in `<data>/runtime/sandboxes/<id>/`: `meta.json` (what was set up,
//! so delete and adoption need nothing else), `bundle/` (config.json and the overlay mount
//! point), `upper/` and `work/` (the sandbox's writable layer), `etc/`, the monitor's files
//! (`monitor.pid`, `container.pid`, `log`, `log.1`, `exit.json`, `crun.log`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::names::SandboxId;
use nimbus_core::spec::{ImageSource, Root, SandboxBackend, SandboxSpec};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

use crate::bundle::{build_spec, write_etc_files, BundleInput};
use crate::config::{RuntimeConfig, UserNamespaces};
use crate::disks::Disks;
use crate::doctor::{self, HostUnfit};
use crate::images::{ContainerConfig, ImageStore};
use crate::logs::{stream_logs, LogStream};
use crate::monitor::{Assignment, ExitRecord};
use crate::network::{Network, SandboxNet};
use crate::pool::WarmPool;
use crate::reference::ImageRef;
use crate::registry::{CredentialSource, Credentials, RegistryClient};
use crate::sealed_exec::SealedCopy;
use crate::standby::MonitorPool;
use crate::userns::{IdRanges, UserNs};
use crate::{LaunchError, ProgressEvent, RuntimeError};

/// How the host reaches a sandbox: its address on the sandbox bridge, and the ports its image
/// declares (`EXPOSE`). Any port the process listens on is reachable from the host at `address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub pid: i32,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ExitReason {
    /// The process exited by itself (code 0 or not).
    Exited,
    /// Killed by a signal (after `stop`, or from inside the sandbox).
    Signaled(i32),
    /// The kernel's OOM killer ended it at the sandbox's memory limit.
    OomKilled,
    /// It failed after the sandbox refused it new processes (`refused` times) at its process
    /// limit: a fork that fails is the likely cause.
    PidsLimit { refused: u64 },
    /// The container never started; the message says why.
    StartFailed(String),
    /// Its monitor is gone without recording an exit (for example the host rebooted).
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Running { pid: i32, endpoint: Endpoint },
    Exited { code: i32, reason: ExitReason },
    Missing,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    tenant: String,
    net: Option<SandboxNet>,
    ports: Vec<u16>,
    created_at: u64,
    /// Set once the process has ended and `net` has been torn down and its address given up
    /// (see [`Runtime::release_network`]): `net` then only describes the id range, which the
    /// sandbox's files keep until delete, and must not be torn down again (its address may
    /// belong to another sandbox by then).
    #[serde(default)]
    network_released: bool,
    /// The token of the sandbox's disk (see disks.rs), when it has one.
    #[serde(default)]
    disk: Option<String>,
}

pub struct Runtime {
    root: PathBuf,
    config: RuntimeConfig,
    images: ImageStore,
    network: Arc<Network>,
    pool: Arc<WarmPool>,
    /// Each sandbox's own file system for its writable layer (`runtime.disk_mb`; when that is
    /// 0, new sandboxes' writable layers live in their state dir).
    disks: Arc<Disks>,
    crun: PathBuf,
    /// A sealed copy of crun for the server's own crun calls (kill, delete): crun skips
    /// re-executing itself from such a copy (see sealed_exec.rs). Made on first use.
    sealed_crun: std::sync::OnceLock<Option<SealedCopy>>,
    crun_root: PathBuf,
    /// Monitors started ahead of launches (see standby.rs).
    monitors: Arc<MonitorPool>,
    /// The last preflight and when it ran (see `recent_preflight`).
    last_preflight: std::sync::Mutex<Option<(std::time::Instant, Result<(), HostUnfit>)>>,
    host_ready: tokio::sync::OnceCell<()>,
    /// Serialises the teardowns of one sandbox (a delete and the release of its network at
    /// exit), so that neither tears down what the other has already given away.
    teardowns: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn internal(e: impl std::fmt::Display) -> LaunchError {
    LaunchError::Internal(e.to_string())
}

fn find_on_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
        })
        .unwrap_or(None)
}

/// The id ranges sandboxes' user namespaces get, or `None` to run sandboxes without them.
fn id_ranges(config: &RuntimeConfig, layers: &Path) -> Result<Option<IdRanges>, String> {
    if config.user_namespaces == UserNamespaces::Off {
        return Ok(None);
    }
    let ranges = IdRanges::new(config.id_range_first, config.id_range_slots)?;
    match crate::userns::probe(layers) {
        Ok(()) => Ok(Some(ranges)),
        Err(e) if config.user_namespaces == UserNamespaces::Auto => {
            tracing::warn!(error = %e, "this host cannot give sandboxes user namespaces; they run without (runtime.user_namespaces = \"auto\"; see `nimbus doctor`)");
            Ok(None)
        }
        Err(e) => Err(format!(
            "runtime.user_namespaces = \"required\", but this host cannot give sandboxes user namespaces: {e}"
        )),
    }
}

impl Runtime {
    /// Whether sandboxes get user namespaces (`runtime.user_namespaces` and what the host can do).
    pub fn user_namespaces(&self) -> bool {
        self.network.has_user_namespaces()
    }

    /// Opens (creating if needed) the runtime's state under `<data_dir>/runtime`. Does not touch
    /// the host network until the first launch; call [`Runtime::preflight`] to check the host.
    pub fn open(data_dir: &Path, config: &RuntimeConfig) -> Result<Arc<Runtime>, String> {
        // Monitors work in their sandbox's dir and crun in theirs: every path handed to them
        // must be absolute.
        let data_dir = &std::path::absolute(data_dir)
            .map_err(|e| format!("cannot resolve {}: {e}", data_dir.display()))?;
        let root = data_dir.join("runtime");
        for d in ["sandboxes", "crun", "net"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(|e| format!("cannot create {}: {e}", root.join(d).display()))?;
        }
        if let Some(named) = config.docker_config.as_ref().filter(|p| !p.exists()) {
            // Read once it appears (a `docker login` there), like any change to it.
            tracing::warn!(
                path = %named.display(),
                "runtime.docker_config names a file that does not exist (yet): pulls go without registry credentials until it does"
            );
        }
        let creds = match config.docker_config_path() {
            Some(p) => CredentialSource::file(p)?,
            None => Credentials::default().into(),
        };
        let client = RegistryClient::new(config, creds)?;
        let images = ImageStore::open(&root.join("images"), client)
            .map_err(|e| format!("cannot open the image store: {e}"))?;
        // Not fatal here: a host that cannot run sandboxes still serves everything else, and
        // a launch names the problem.
        if let Err(e) = std::fs::create_dir_all(ROOTFS_MOUNTS).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(ROOTFS_MOUNTS, std::fs::Permissions::from_mode(0o711))
        }) {
            tracing::warn!(error = %e, "cannot create {ROOTFS_MOUNTS}; sandbox launches will fail");
        }
        let ids = id_ranges(config, &root.join("images"))?;
        check_network_unchanged(&root, &config.bridge, &config.subnet)?;
        let network = Arc::new(Network::new(
            &config.bridge,
            &config.subnet,
            &root.join("net"),
            ids,
        )?);
        let pool = Arc::new(WarmPool::new(config.warm_pool));
        let disks = Disks::new(&root, config.disk_mb, config.warm_pool)?;
        let crun = find_on_path(&config.crun).unwrap_or_else(|| config.crun.clone());
        let monitor = match &config.monitor {
            Some(m) => m.clone(),
            None => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find the running executable: {e}"))?;
                let sibling = exe.with_file_name("nimbus-monitor");
                if sibling.is_file() {
                    sibling
                } else {
                    exe
                }
            }
        };
        if config.fix_cgroups {
            for done in doctor::apply_fixes()? {
                tracing::info!("runtime.fix_cgroups: {done}");
            }
        }
        let monitors = Arc::new(MonitorPool::new(
            &monitor,
            &crun,
            &root.join("monitors.log"),
            config.standby_monitors,
        ));
        Ok(Arc::new(Runtime {
            root,
            config: config.clone(),
            images,
            network,
            pool,
            disks,
            monitors,
            last_preflight: std::sync::Mutex::new(None),
            crun,
            sealed_crun: std::sync::OnceLock::new(),
            crun_root: data_dir.join("runtime/crun"),
            host_ready: tokio::sync::OnceCell::new(),
            teardowns: std::sync::Mutex::new(std::collections::HashMap::new()),
        }))
    }

    /// Checks that this host can run container sandboxes; the error lists what to fix.
    pub fn preflight(&self) -> Result<(), HostUnfit> {
        doctor::preflight(&self.crun)
    }

    /// [`Runtime::preflight`] as of at most a few seconds ago: launches and the server's
    /// refusal of creates on an unfit host ask it often (the checks took ~0.3 ms of every
    /// launch). A host fixed meanwhile is seen within that time.
    pub fn recent_preflight(&self) -> Result<(), HostUnfit> {
        const FRESH_FOR: Duration = Duration::from_secs(5);
        let mut last = self
            .last_preflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return result.clone();
            }
        }
        let result = doctor::preflight(&self.crun);
        *last = Some((std::time::Instant::now(), result.clone()));
        result
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    /// The bridge and base rules, once per process; namespaces a previous process left in the
    /// warm pool are removed first (their addresses become free again).
    async fn ensure_host(&self) -> Result<(), LaunchError> {
        self.host_ready
            .get_or_try_init(|| async {
                self.pool.remove_stale(&self.network).await;
                self.remove_stray_disks();
                self.network.ensure_host(&self.known_nets()).await
            })
            .await
            .map(|_| ())
            .map_err(|e| {
                // A bridge setting that would take over another interface, or share another
                // server's bridge, is the operator's to change, and says how itself.
                if e.starts_with("runtime.bridge") || e.starts_with("bridge ") {
                    return LaunchError::HostUnfit(HostUnfit { problems: vec![e] });
                }
                internal(format!(
                    "setting up the sandbox bridge failed: {e}; `nimbus doctor` checks whether \
                     this host's kernel takes the sandbox network's nftables rules"
                ))
            })
    }

    /// Sets up the host network and fills the warm pool in the background, so the first
    /// launches are as quick as later ones. Servers call it at start; launches refill anyway.
    pub async fn warm_up(&self) -> Result<(), LaunchError> {
        self.ensure_host().await?;
        self.refill_pool();
        Ok(())
    }

    fn refill_pool(&self) {
        tokio::spawn(self.pool.clone().refill(self.network.clone()));
        tokio::spawn(self.disks.clone().refill());
        let monitors = self.monitors.clone();
        tokio::spawn(async move { monitors.refill() });
    }

    /// Removes the warm pool's namespaces, lets the standby monitors go and stops refilling
    /// both (at shutdown).
    pub async fn drain_pool(&self) {
        self.monitors.drain();
        self.pool.drain(&self.network).await;
        self.disks.drain().await;
    }

    /// Process ids of the monitors waiting for a sandbox (for tests).
    pub fn standby_monitors(&self) -> Vec<u32> {
        self.monitors.ready_pids()
    }

    /// Launches `spec` as sandbox `id` of `tenant` and returns once its process runs. On failure
    /// nothing of the sandbox is left behind.
    pub async fn launch(
        &self,
        id: &SandboxId,
        tenant: &str,
        spec: &SandboxSpec,
        progress: impl Fn(ProgressEvent) + Send + Sync,
    ) -> Result<Launched, LaunchError> {
        self.launch_gated(id, tenant, spec, progress, std::future::ready(true))
            .await
    }

    /// [`Runtime::launch`], preparing everything (root filesystem, network, config) while
    /// `go` is pending and starting the process only if it yields true; otherwise the launch
    /// is undone and fails with `Withdrawn`. The server overlaps a launch with the durable
    /// write of the sandbox's record this way.
    pub async fn launch_gated(
        &self,
        id: &SandboxId,
        tenant: &str,
        spec: &SandboxSpec,
        progress: impl Fn(ProgressEvent) + Send + Sync,
        go: impl std::future::Future<Output = bool> + Send,
    ) -> Result<Launched, LaunchError> {
        if spec.backend == SandboxBackend::Krun {
            return Err(LaunchError::NotSupported(
                "the krun backend does not run processes yet: its network egress enforcement is not at parity with the container backend; use backend \"container\"".into(),
            ));
        }
        let t_launch = std::time::Instant::now();
        self.recent_preflight()?;
        tracing::debug!(sandbox = %id, elapsed_ms = t_launch.elapsed().as_secs_f64() * 1e3, "preflight done");
        let dir = self.dir(id.as_str());
        // Claiming the state dir is atomic, so two launches of one id cannot both proceed.
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LaunchError::AlreadyExists(id.to_string()))
            }
            Err(e) => return Err(internal(format!("cannot create {}: {e}", dir.display()))),
        }
        // A pull or build is real work: it waits for the go-ahead. A root already at hand is
        // prepared while the caller decides.
        let mut go = std::pin::pin!(go);
        let mut verdict = None;
        if !self.root_at_hand(spec) {
            let v = go.as_mut().await;
            if !v {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(LaunchError::Withdrawn(id.to_string()));
            }
            verdict = Some(v);
        }
        let go = async move {
            match verdict {
                Some(v) => v,
                None => go.await,
            }
        };
        // Resolve the root material before setting anything up, so image errors leave no trace.
        let (lower, image_cfg) = match self.root_material(spec, &progress).await {
            Ok(m) => {
                tracing::debug!(sandbox = %id, elapsed_ms = t_launch.elapsed().as_secs_f64() * 1e3, "root material ready");
                m
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // From here the launch makes host state. A delete of this sandbox (which takes the
        // same lock) waits until all of it is made, or undone: one that ran alongside would
        // remove half of a launch that then went on, leaving a process nothing tracks.
        let lock = self.teardown_lock(id.as_str());
        let _serialised = lock.lock().await;
        if !dir.exists() {
            // Deleted while its root was pulled or built: nothing is made.
            return Err(LaunchError::Withdrawn(id.to_string()));
        }
        match self
            .create(
                id.as_str(),
                tenant,
                spec,
                &dir,
                lower,
                image_cfg,
                &progress,
                go,
            )
            .await
        {
            Ok(l) => Ok(l),
            Err(e) => {
                if let Err(cleanup) = self.delete_dir_locked(id.as_str()).await {
                    tracing::warn!(sandbox = %id, "cleanup after failed launch incomplete: {cleanup}");
                }
                Err(e)
            }
        }
    }

    /// Where what sandbox `id` writes takes host space: the disks' directory (which an operator
    /// may mount on a file system of its own), or without disks the sandbox's state dir.
    fn writes_dir(&self, id: &str) -> PathBuf {
        if self.disks.enabled() {
            self.disks.images_dir()
        } else {
            self.dir(id)
        }
    }

    /// Refuses a launch once the file system its writable layer will take space from (the
    /// disks' directory, which an operator may mount on a file system of its own; else the
    /// sandbox's state dir) is down to the free space pulls keep (1 GiB). Sandbox disks are
    /// sparse: each takes on the host what it holds, up to `runtime.disk_mb`, so together they
    /// can outgrow the host's free space, and a loop device whose backing file cannot grow
    /// fails its writes with I/O errors. New sandboxes are refused first, while the database
    /// and the running sandboxes still have room.
    fn ensure_room_to_launch(&self, id: &str) -> Result<(), LaunchError> {
        let dir = self.writes_dir(id);
        self.images
            .disk_reserve()
            .ensure_room(&dir, 0, &format!("launching sandbox {id}"))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::StorageFull => LaunchError::HostUnfit(HostUnfit {
                    problems: vec![e.to_string()],
                }),
                _ => internal(format!(
                    "cannot read the free space of {}: {e}",
                    dir.display()
                )),
            })
    }

    /// Whether the spec's root needs no pull or build.
    fn root_at_hand(&self, spec: &SandboxSpec) -> bool {
        match &spec.root {
            Root::OciImage {
                source: ImageSource::Reference { reference },
            } => ImageRef::parse(reference)
                .ok()
                .and_then(|r| self.images.lookup(&r.to_string()).ok().flatten())
                .is_some(),
            Root::OciImage { .. } => false,
            Root::Rootfs { .. } => true,
        }
    }

    async fn root_material(
        &self,
        spec: &SandboxSpec,
        progress: &(dyn Fn(ProgressEvent) + Send + Sync),
    ) -> Result<(Vec<PathBuf>, ContainerConfig), LaunchError> {
        match &spec.root {
            Root::OciImage {
                source: ImageSource::Reference { reference },
            } => {
                let r = ImageRef::parse(reference).map_err(|e| LaunchError::BadSpec {
                    field: "root.source.reference".into(),
                    reason: e.to_string(),
                })?;
                let img = self.images.pull(&r, progress).await?;
                Ok((img.layer_dirs, img.config))
            }
            Root::OciImage {
                source:
                    ImageSource::Build {
                        dockerfile,
                        context,
                    },
            } => {
                progress(ProgressEvent::Building {
                    context: context.clone(),
                });
                let img = crate::build::build(
                    &self.images,
                    &self.root.join("buildah"),
                    dockerfile,
                    Path::new(context),
                    &self.config,
                    progress,
                )
                .await?;
                Ok((img.layer_dirs, img.config))
            }
            Root::Rootfs { path } => {
                let p = Path::new(path);
                if !p.is_absolute() || !p.is_dir() {
                    return Err(LaunchError::BadSpec {
                        field: "root.path".into(),
                        reason: format!("{path} is not a directory on the host"),
                    });
                }
                // Through symlinks too, the host's own root is never a sandbox's.
                let real = std::fs::canonicalize(p).map_err(|e| LaunchError::BadSpec {
                    field: "root.path".into(),
                    reason: format!("{path} cannot be resolved on the host: {e}"),
                })?;
                if nimbus_core::spec::is_host_root(&real) {
                    return Err(LaunchError::BadSpec {
                        field: "root.path".into(),
                        reason: format!(
                            "{path} is the host's own root, which cannot be a sandbox root"
                        ),
                    });
                }
                Ok((vec![real], ContainerConfig::default()))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        id: &str,
        tenant: &str,
        spec: &SandboxSpec,
        dir: &Path,
        lower: Vec<PathBuf>,
        image: ContainerConfig,
        progress: &(dyn Fn(ProgressEvent) + Send + Sync),
        go: impl std::future::Future<Output = bool> + Send,
    ) -> Result<Launched, LaunchError> {
        progress(ProgressEvent::Creating);
        let t0 = std::time::Instant::now();
        let phase = |name: &str| {
            tracing::debug!(
                sandbox = id,
                phase = name,
                elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
                "launch phase done"
            )
        };
        let ports: Vec<u16> = image
            .exposed_ports
            .iter()
            .flatten()
            .filter_map(|(k, _)| k.split('/').next().and_then(|p| p.parse().ok()))
            .collect();
        self.ensure_room_to_launch(id)?;
        // Network first: a namespace from the warm pool, else one made and wired now. The
        // state file names it before anything is wired, so a failed launch's cleanup finds it.
        self.ensure_host().await?;
        // Whichever way this launch ends, what it took from the warm pool is replaced, but
        // only then: preparing a namespace costs CPU the launch needs.
        let refill = RefillWhenDone(self);
        // Its disk, named in the state file with the network.
        let disk = TakenDisk::take(&self.disks).await?;
        let prepared = self.pool.take();
        let net = match &prepared {
            Some(p) => self.network.assigned(p.net.clone(), id, tenant),
            None => {
                tracing::debug!(sandbox = id, "warm pool empty: wiring a namespace now");
                let address = self.network.allocate(id).map_err(internal)?;
                let mut net = self.network.plan(id, tenant, address);
                match self.network.allocate_user(id, &net.netns) {
                    Ok(user) => net.user = user,
                    Err(e) => {
                        self.network.release(&net, id);
                        return Err(internal(e));
                    }
                }
                net
            }
        };
        let address = net.address;
        let meta = Meta {
            id: id.into(),
            tenant: tenant.into(),
            net: Some(net.clone()),
            ports,
            created_at: crate::monitor::now_secs(),
            network_released: false,
            disk: disk.token().map(str::to_string),
        };
        if let Err(e) = write_meta(dir, &meta) {
            // Not recorded anywhere, so the cleanup would not find them: give them back now
            // (the disk goes back as `disk` drops).
            match &prepared {
                Some(p) => self.pool.put_back(p.clone()),
                None => self.network.release(&net, id),
            }
            return Err(e);
        }
        let layer = disk.recorded(dir);
        let (transferred, bundle) = match &prepared {
            Some(p) => {
                // The leases change hands on another thread while the bundle is prepared on
                // this one: each is a handful of metadata writes, slow ones on some hosts.
                std::thread::scope(|scope| {
                    let transfer = scope.spawn(|| self.network.transfer_lease(&net, &p.token, id));
                    let bundle = self.prepare_bundle(id, spec, dir, &layer, &lower, &image, &net);
                    let transferred = transfer
                        .join()
                        .unwrap_or_else(|_| Err("the lease transfer panicked".to_string()));
                    (transferred, bundle)
                })
            }
            None => {
                self.network.create_netns(&net).await.map_err(internal)?;
                self.network.link(&net).await.map_err(internal)?;
                (
                    Ok(()),
                    self.prepare_bundle(id, spec, dir, &layer, &lower, &image, &net),
                )
            }
        };
        if let (Err(e), Some(p)) = (transferred, &prepared) {
            // What is still the pool's goes back now; the failed launch's cleanup removes the
            // namespace and gives back what is already the sandbox's.
            self.network
                .release(&net, &format!("{}{}", crate::network::POOL_OWNER, p.token));
            return Err(internal(e));
        }
        let cached_bpf = bundle?;
        phase("bundle");

        // The monitor runs the container and reports its pid (or why it could not). Until the
        // sandbox's rules are in, the namespace's traffic is dropped entirely (it has no
        // verdict-map entry). A sandbox allowed nothing therefore starts first and gets its
        // rules (its chain, and the tenant-set entry that lets allowed siblings reach it) right
        // after, off the path to its first instruction; one with an allow-list gets them
        // before it starts, so its first connection is not dropped.
        let deny_all = spec.network.egress.allow.is_empty();
        if !go.await {
            return Err(LaunchError::Withdrawn(id.to_string()));
        }
        phase("go");
        if !deny_all {
            self.network
                .apply_rules(&net, &spec.network)
                .await
                .map_err(internal)?;
        }
        let created = self.spawn_monitor(id, dir, cached_bpf.is_none()).await;
        phase("running");
        if deny_all {
            self.network
                .apply_rules(&net, &spec.network)
                .await
                .map_err(internal)?;
        }
        drop(refill);
        let line = created?;
        let answer: serde_json::Value = serde_json::from_str(line.trim()).map_err(internal)?;
        if let Some(err) = answer["error"].as_str() {
            return Err(classify_create_error(err));
        }
        let pid = answer["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| internal(format!("monitor said {line:?}")))?;
        if cached_bpf.is_none() {
            self.remember_seccomp_bpf(dir);
        }
        progress(ProgressEvent::Started { pid });
        Ok(Launched {
            pid,
            endpoint: Endpoint {
                address,
                ports: meta.ports,
            },
        })
    }

    /// The sandbox's root filesystem (the image layers, top first, under its own upper dir),
    /// its /etc files and its OCI config; returns the cached seccomp filter handed to crun,
    /// if there is one.
    #[allow(clippy::too_many_arguments)]
    fn prepare_bundle(
        &self,
        id: &str,
        spec: &SandboxSpec,
        dir: &Path,
        layer: &Path,
        lower: &[PathBuf],
        image: &ContainerConfig,
        net: &SandboxNet,
    ) -> Result<Option<String>, LaunchError> {
        // Root filesystem: the image layers (top first) under the sandbox's own upper dir,
        // mounted on another thread while the /etc files are written here. The config comes
        // after both: it resolves `process.user` in the mounted root's /etc/passwd.
        let rootfs = rootfs_dir(id);
        // A `rootfs` root is the caller's directory: a filesystem that cannot be idmapped is
        // theirs to change, so that failure names `root.path`.
        let root_field = matches!(spec.root, Root::Rootfs { .. }).then_some("root.path");
        std::thread::scope(|scope| {
            let mounted = scope
                .spawn(|| mount_root(dir, layer, &rootfs, lower, net.user.as_ref(), root_field));
            let written = write_etc(id, dir, net);
            let mounted = mounted
                .join()
                .unwrap_or_else(|_| Err(internal("mounting the root filesystem panicked")));
            mounted.and(written)
        })?;
        self.write_config(id, spec, dir, &rootfs, image, net)
    }

    /// The sandbox's OCI config (`bundle/config.json`), once its root is mounted; returns the
    /// cached seccomp filter handed to crun, if there is one.
    fn write_config(
        &self,
        id: &str,
        spec: &SandboxSpec,
        dir: &Path,
        rootfs: &Path,
        image: &ContainerConfig,
        net: &SandboxNet,
    ) -> Result<Option<String>, LaunchError> {
        let oci = build_spec(&BundleInput {
            id,
            rootfs,
            image,
            process: &spec.process,
            resources: &spec.resources,
            netns_path: &net.netns_path,
            user: net.user.as_ref(),
            etc_dir: &dir.join("etc"),
            default_memory_mb: self.config.default_memory_mb,
            default_pids: self.config.default_pids,
            nofile: self.config.nofile,
        })
        .map_err(|p| LaunchError::BadSpec {
            field: p.field.into(),
            reason: p.reason,
        })?;
        let mut oci = oci;
        let cached_bpf = self.cached_seccomp_bpf();
        if let Some(b64) = &cached_bpf {
            // crun compiles linux.seccomp with libseccomp on every create (about 30 ms for
            // this profile); the same filter compiled once is handed over pre-built. The
            // readable profile stays in config.json.
            let mut ann = std::collections::HashMap::new();
            ann.insert("run.oci.seccomp_bpf_data".to_string(), b64.clone());
            oci.set_annotations(Some(ann));
        }
        let json = serde_json::to_vec_pretty(&oci).map_err(internal)?;
        std::fs::write(dir.join("bundle/config.json"), json).map_err(internal)?;
        Ok(cached_bpf)
    }

    /// Hands the sandbox to a monitor (a standby one when one is ready) and returns its
    /// handshake line. `keep_seccomp` asks it to keep crun's compiled filter for the cache.
    async fn spawn_monitor(
        &self,
        id: &str,
        dir: &Path,
        keep_seccomp: bool,
    ) -> Result<String, LaunchError> {
        let assignment = Assignment {
            dir: dir.to_path_buf(),
            crun_root: self.crun_root.clone(),
            id: id.to_string(),
            log_max: self.config.log_max_bytes,
            keep_seccomp,
        };
        let mut standby = true;
        loop {
            let assigned = self
                .monitors
                .assign(&assignment, standby)
                .await
                .map_err(internal)?;
            let mut child = assigned.child;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| internal("monitor stdout missing"))?;
            let mut line = String::new();
            let read = tokio::time::timeout(
                Duration::from_secs(120),
                tokio::io::BufReader::new(stdout).read_line(&mut line),
            )
            .await;
            if matches!(read, Ok(Ok(n)) if n > 0) {
                // The monitor lives on after the handshake; tokio reaps it when it exits.
                return Ok(line);
            }
            // No answer: make sure this monitor is gone before anything else happens.
            let _ = child.start_kill();
            let _ = child.wait().await;
            // A standby monitor that died before it took the sandbox up (it writes
            // monitor.pid before it runs crun) started nothing: a fresh one gets the sandbox.
            let died = matches!(read, Ok(Ok(0)));
            if assigned.was_standby && died && !dir.join("monitor.pid").exists() {
                tracing::warn!(
                    sandbox = id,
                    "a standby monitor died before taking the sandbox; starting another"
                );
                standby = false;
                continue;
            }
            let why = std::fs::read_to_string(dir.join("monitor.log")).unwrap_or_default();
            let why = match why.trim() {
                "" => format!(
                    "it wrote nothing to monitor.log; what monitors say before they have a sandbox is in {}",
                    self.monitors.early_log().display()
                ),
                why => why.to_string(),
            };
            return Err(internal(format!("the monitor gave no answer: {why}")));
        }
    }

    /// Where the compiled seccomp filter is kept: keyed by the profile and the crun binary, so
    /// a changed profile or crun upgrade compiles afresh.
    fn seccomp_cache_path(&self) -> PathBuf {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(crate::seccomp::PROFILE_JSON.as_bytes());
        if let Ok(md) = std::fs::metadata(&self.crun) {
            use std::os::unix::fs::MetadataExt;
            h.update(format!("{}:{}:{}", self.crun.display(), md.len(), md.mtime()).as_bytes());
        }
        self.root.join(format!(
            "seccomp-{}.bpf.b64",
            &hex::encode(h.finalize())[..32]
        ))
    }

    fn cached_seccomp_bpf(&self) -> Option<String> {
        std::fs::read_to_string(self.seccomp_cache_path())
            .ok()
            .filter(|s| !s.is_empty())
    }

    /// Keeps the filter crun compiled for a container (the monitor copies it from crun's state
    /// into the sandbox dir, where it outlives a quick exit).
    fn remember_seccomp_bpf(&self, dir: &Path) {
        use base64::Engine as _;
        let Ok(bpf) = std::fs::read(dir.join("seccomp.bpf")) else {
            return;
        };
        // A classic BPF program is a sequence of 8-byte instructions.
        if bpf.is_empty() || bpf.len() % 8 != 0 {
            return;
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(bpf);
        let _ = crate::monitor::write_atomic(&self.seccomp_cache_path(), b64.as_bytes());
    }

    /// Disk tokens named by the state of every sandbox this data dir has.
    fn used_disks(&self) -> std::collections::HashSet<String> {
        std::fs::read_dir(self.root.join("sandboxes"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| read_meta(&e.path()).ok())
                    .filter_map(|m| m.disk)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Disks on the host that no sandbox names and that are not ready for a launch: left by an
    /// earlier process (its ready ones, or one taken by a launch cut off before it recorded
    /// it). Empty after [`Self::remove_stray_disks`], and whenever nothing leaked.
    pub fn stray_disks(&self) -> Vec<String> {
        self.disks.strays(&self.used_disks())
    }

    fn remove_stray_disks(&self) {
        for token in self.disks.strays(&self.used_disks()) {
            tracing::info!(disk = token, "removing a sandbox disk no sandbox uses");
            if let Err(e) = self.disks.remove(&token) {
                tracing::warn!(error = %e, "removing a stray sandbox disk was incomplete");
            }
        }
    }

    /// Network plans of every sandbox this data dir has state for.
    fn known_nets(&self) -> Vec<SandboxNet> {
        std::fs::read_dir(self.root.join("sandboxes"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| read_meta(&e.path()).ok())
                    // A released network is gone, and its address may be another's by now.
                    .filter(|m| !m.network_released)
                    .filter_map(|m| m.net)
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn crun_cmd(&self, args: &[&str]) -> Result<String, String> {
        let root = self.crun_root.to_string_lossy().into_owned();
        let mut full = vec!["--root", root.as_str()];
        full.extend_from_slice(args);
        let sealed = self
            .sealed_crun
            .get_or_init(|| SealedCopy::of(&self.crun).ok())
            .as_ref()
            .map(SealedCopy::path);
        let crun = sealed.as_deref().unwrap_or(&self.crun).to_string_lossy();
        crate::cmd::run_cmd(&crun, &full, None)
            .await
            // Errors name crun, not the copy's /proc/self/fd path.
            .map_err(|e| e.replace(crun.as_ref(), &self.crun.to_string_lossy()))
    }

    /// What the runtime sees of sandbox `id` right now.
    /// Whether sandbox `id` has a state dir, even one a launch claimed and wrote nothing in.
    pub fn has_state_dir(&self, id: &SandboxId) -> bool {
        self.dir(id.as_str()).exists()
    }

    pub fn observe(&self, id: &SandboxId) -> Observed {
        self.observe_str(id.as_str())
    }

    fn observe_str(&self, id: &str) -> Observed {
        let dir = self.dir(id);
        let Ok(meta) = read_meta(&dir) else {
            return Observed::Missing;
        };
        if let Some(rec) = read_exit(&dir) {
            return Observed::Exited {
                code: rec.code,
                reason: exit_reason(&rec),
            };
        }
        let monitor_alive = read_pid(&dir.join("monitor.pid")).is_some_and(is_monitor);
        let pid = read_pid(&dir.join("container.pid"));
        match (monitor_alive, pid) {
            (true, Some(pid)) => Observed::Running {
                pid,
                endpoint: Endpoint {
                    address: meta
                        .net
                        .as_ref()
                        .map(|n| n.address)
                        .unwrap_or(Ipv4Addr::UNSPECIFIED),
                    ports: meta.ports,
                },
            },
            // A monitor that is alive but has no container yet is mid-launch; after a restart
            // that launch can never be completed, so it is reported as failed.
            (true, None) => Observed::Exited {
                code: -1,
                reason: ExitReason::StartFailed("launch interrupted".into()),
            },
            // Re-check: the monitor may have written exit.json between the two reads.
            (false, _) => match read_exit(&dir) {
                Some(rec) => Observed::Exited {
                    code: rec.code,
                    reason: exit_reason(&rec),
                },
                None => Observed::Exited {
                    code: -1,
                    reason: ExitReason::Lost,
                },
            },
        }
    }

    /// Stops the sandbox's process: SIGTERM, then SIGKILL after `grace` (default
    /// `runtime.stop_grace_seconds`). Returns what was observed afterwards. Stopping an exited
    /// sandbox is a no-op.
    pub async fn stop(
        &self,
        id: &SandboxId,
        grace: Option<Duration>,
    ) -> Result<Observed, RuntimeError> {
        self.stop_str(id.as_str(), grace).await
    }

    async fn stop_str(&self, id: &str, grace: Option<Duration>) -> Result<Observed, RuntimeError> {
        let grace = grace.unwrap_or(Duration::from_secs(self.config.stop_grace_seconds));
        match self.observe_str(id) {
            Observed::Missing => return Err(RuntimeError::NotFound(id.into())),
            Observed::Exited { .. } => return Ok(self.observe_str(id)),
            Observed::Running { .. } => {}
        }
        let dir = self.dir(id);
        // The sandbox's process is the init of its own PID namespace: signalling it directly
        // does what `crun kill` would, without running crun, and SIGKILL to a namespace's init
        // ends every process in it. crun is the fallback when the init cannot be confirmed.
        if !grace.is_zero() {
            if !signal_init(&dir, id, Signal::SIGTERM) {
                let _ = self.crun_cmd(&["kill", id, "TERM"]).await;
            }
            if wait_exit(&dir, grace).await {
                return Ok(self.observe_str(id));
            }
        }
        if !signal_init(&dir, id, Signal::SIGKILL) {
            let _ = self.crun_cmd(&["kill", "--all", id, "KILL"]).await;
        }
        if !wait_exit(&dir, Duration::from_secs(10)).await {
            // Once more, in case crun's state had gone while the init had not: a kill that
            // still checks the pid is the sandbox's.
            signal_init(&dir, id, Signal::SIGKILL);
            wait_exit(&dir, Duration::from_secs(5)).await;
        }
        Ok(self.observe_str(id))
    }

    /// Removes every trace of the sandbox: processes, container, mounts, network namespace,
    /// nftables rules, address lease, cgroups and its state directory. Deleting a sandbox the
    /// runtime does not know is not an error (delete is idempotent).
    pub async fn delete(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.delete_dir(id.as_str())
            .await
            .map_err(RuntimeError::Internal)
    }

    /// The lock that serialises sandbox `id`'s teardowns (see `teardowns`).
    fn teardown_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.teardowns.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.to_string()).or_default().clone()
    }

    fn forget_teardown_lock(&self, id: &str) {
        let mut locks = self.teardowns.lock().unwrap_or_else(|p| p.into_inner());
        locks.remove(id);
    }

    /// Gives up the network of a sandbox whose process has ended: its namespace, host
    /// interface, nftables rules, tracked connections and address. A stopped sandbox uses none
    /// of them, and addresses are the scarce part (a /24 holds about 250 sandboxes). Its root
    /// filesystem stays, for the files channel ("fetch results after a run"), and so do its id
    /// range (the owner of those files), logs and exit record, until `delete`.
    /// A sandbox still running, unknown, or whose exit was not recorded (a lost monitor: its
    /// process may live on) is left alone; releasing twice is a no-op.
    pub async fn release_network(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let id = id.as_str();
        let lock = self.teardown_lock(id);
        let _serialised = lock.lock().await;
        let dir = self.dir(id);
        let Ok(mut meta) = read_meta(&dir) else {
            return Ok(());
        };
        let Some(net) = meta.net.clone() else {
            return Ok(());
        };
        if meta.network_released || read_exit(&dir).is_none() {
            return Ok(());
        }
        self.network
            .teardown(&net)
            .await
            .map_err(|e| RuntimeError::Internal(format!("releasing the network of {id}: {e}")))?;
        // Recorded before the address is given up: once another sandbox may hold it, nothing
        // must tear this network down again. A crash in between leaves the lease, which the
        // delete gives back.
        meta.network_released = true;
        write_meta(&dir, &meta).map_err(|e| RuntimeError::Internal(e.to_string()))?;
        self.network.release_address(&net, id);
        Ok(())
    }

    async fn delete_dir(&self, id: &str) -> Result<(), String> {
        let lock = self.teardown_lock(id);
        let _serialised = lock.lock().await;
        let result = self.delete_dir_locked(id).await;
        if result.is_ok() {
            self.forget_teardown_lock(id);
        }
        result
    }

    async fn delete_dir_locked(&self, id: &str) -> Result<(), String> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Ok(());
        }
        if matches!(self.observe_str(id), Observed::Running { .. }) {
            let _ = self.stop_str(id, Some(Duration::ZERO)).await;
        }
        let disk = read_meta(&dir).ok().and_then(|m| m.disk);
        // With the process gone, the container's cleanup (the monitor's `crun delete`, then
        // the root's mount) and the network's (rules, namespace, tracked connections) need
        // nothing from each other: they run side by side.
        let (mut problems, (network_problems, rules_gone)) = tokio::join!(
            self.remove_container(id, &dir),
            self.remove_network(id, &dir)
        );
        problems.extend(network_problems);
        // The disk after the root whose upper layer it holds.
        if let Some(token) = &disk {
            if let Err(e) = self.disks.remove(token) {
                problems.push(e);
            }
        }
        remove_cgroups(id);
        if problems.is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                problems.push(format!("removing {}: {e}", dir.display()));
            }
        }
        let left = self.traces(id, !rules_gone, disk.as_deref()).await;
        problems.extend(left);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "sandbox {id} was not fully removed: {}",
                problems.join("; ")
            ))
        }
    }

    /// Waits for the monitor to finish its own cleanup (`crun delete`), deletes the container
    /// itself if the monitor could not, and unmounts and removes the root. Returns problems.
    async fn remove_container(&self, id: &str, dir: &Path) -> Vec<String> {
        if let Some(mpid) = read_pid(&dir.join("monitor.pid")) {
            for _ in 0..(5000 / EXIT_POLL.as_millis()) {
                if !is_monitor(mpid) {
                    break;
                }
                tokio::time::sleep(EXIT_POLL).await;
            }
            if is_monitor(mpid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(mpid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let mut problems = Vec::new();
        // The monitor deletes the container itself when the process ends; crun is run only
        // when its state is still there (a monitor killed or gone before it could).
        if self.crun_root.join(id).exists() {
            let _ = self.crun_cmd(&["delete", "--force", id]).await;
        }
        // The gate itself and `bundle/rootfs`: where sandboxes launched by earlier versions
        // have their root.
        for rootfs in [rootfs_dir(id), rootfs_gate(id), dir.join("bundle/rootfs")] {
            if is_mountpoint(&rootfs) {
                if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
                    problems.push(format!("unmounting {}: {e}", rootfs.display()));
                }
            }
        }
        for empty in [rootfs_dir(id), rootfs_gate(id)] {
            match std::fs::remove_dir(&empty) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    problems.push(format!("removing {}: {e}", empty.display()))
                }
                _ => {}
            }
        }
        problems
    }

    /// Tears down the sandbox's network and gives up its leases. Returns problems, and whether
    /// its nftables rules are known to be gone (a teardown that succeeds has deleted them in
    /// one transaction or checked the chain itself).
    async fn remove_network(&self, id: &str, dir: &Path) -> (Vec<String>, bool) {
        let mut problems = Vec::new();
        let mut rules_gone = false;
        match read_meta(dir) {
            Ok(meta) => {
                if let Some(net) = &meta.net {
                    if meta.network_released {
                        // Torn down at exit; its address may be another sandbox's now.
                        rules_gone = true;
                    } else {
                        match self.network.teardown(net).await {
                            Ok(()) => rules_gone = true,
                            Err(e) => problems.push(e),
                        }
                    }
                    self.network.release(net, id);
                }
            }
            // A launch cut off before its state file was written may hold leases.
            Err(_) => self.network.release_all_of(id),
        }
        (problems, rules_gone)
    }

    /// Traces of sandbox `id` still present on the host (empty after a successful delete):
    /// its state dir, crun container, network and user namespaces, id range lease, nftables
    /// chain, cgroups, mounts.
    /// A namespace taken from the warm pool is not named after the sandbox; `delete` checks
    /// that one by the names recorded in the sandbox's state (see `Network::teardown`).
    pub async fn leftovers(&self, id: &str) -> Vec<String> {
        let disk = read_meta(&self.dir(id)).ok().and_then(|m| m.disk);
        self.traces(id, true, disk.as_deref()).await
    }

    /// [`Self::leftovers`], asking nftables about the sandbox's chain only with `check_rules`
    /// (an `nft` run; a delete whose teardown succeeded knows the answer), and about its disk
    /// when its token is known (`disk`).
    async fn traces(&self, id: &str, check_rules: bool, disk: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(token) = disk {
            out.extend(self.disks.traces(token));
        }
        let dir = self.dir(id);
        if dir.exists() {
            out.push(format!("state dir {}", dir.display()));
        }
        if rootfs_gate(id).exists() {
            out.push(format!(
                "root filesystem mount point {}",
                rootfs_gate(id).display()
            ));
        }
        if self.crun_root.join(id).exists() {
            out.push(format!("crun state {}", self.crun_root.join(id).display()));
        }
        let plan = self.network.plan(id, "", Ipv4Addr::UNSPECIFIED);
        if plan.netns_path.exists() {
            out.push(format!("netns {}", plan.netns));
        }
        let userns = crate::userns::path_for(&plan.netns);
        if userns.exists() {
            out.push(format!("user namespace {}", userns.display()));
        }
        for slot in self.network.id_leases_of(id) {
            out.push(format!("id range lease {slot}"));
        }
        if Path::new("/sys/class/net").join(&plan.host_if).exists() {
            out.push(format!("interface {}", plan.host_if));
        }
        if check_rules && self.network.chain_exists(&plan.chain).await {
            out.push(format!("nftables chain {}", plan.chain));
        }
        for c in cgroup_dirs(id) {
            if c.exists() {
                out.push(format!("cgroup {}", c.display()));
            }
        }
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            if mounts.contains(&format!("/{id}/")) {
                out.push("a mount under its state dir".into());
            }
        }
        out
    }

    /// The sandbox's output; with `follow`, keeps streaming until the process exits. A
    /// launch claims the sandbox's state dir first thing, so a follower of a sandbox still
    /// being prepared waits on that dir (woken by inotify) rather than being told NotFound;
    /// if the launch fails or is withdrawn, the dir goes and the stream ends.
    pub async fn logs(&self, id: &SandboxId, follow: bool) -> Result<LogStream, RuntimeError> {
        let dir = self.dir(id.as_str());
        if !dir.is_dir() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move { stream_logs(dir, follow, tx).await });
        Ok(LogStream { rx })
    }

    /// Connects to the sandbox's stdio through its monitor's attach socket (protocol in
    /// [`crate::attach`]): output from now on, frames for stdin. Works for as long as the
    /// process runs, across server restarts (and with monitors of an older server, on their
    /// socket).
    pub async fn attach(&self, id: &SandboxId) -> Result<crate::attach::Attachment, RuntimeError> {
        let dir = self.dir(id.as_str());
        if !dir.is_dir() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let path = crate::attach::socket_path(&dir);
        let legacy = dir.join(crate::attach::LEGACY_SOCKET);
        let connected = match connect_unix(&path).await {
            Err(e) if is_absent(&e) && legacy.exists() => connect_unix(&legacy)
                .await
                .map(crate::attach::Attachment::legacy),
            other => other.map(crate::attach::Attachment::new),
        };
        match connected {
            Ok(attachment) => Ok(attachment),
            // No socket, or nobody listening on it: the monitor is gone or not there yet --
            // unless the process runs, when the monitor could not offer one (its log says why).
            Err(e) if is_absent(&e) => match self.observe(id) {
                Observed::Running { .. } => Err(RuntimeError::Internal(format!(
                    "sandbox {id} runs, but its monitor offers no attach socket at {}; \
                     {} says why",
                    path.display(),
                    dir.join("monitor.log").display()
                ))),
                _ => Err(RuntimeError::NotRunning(id.to_string())),
            },
            Err(e) => Err(RuntimeError::Internal(format!(
                "cannot attach to {id} through {}: {e}",
                path.display()
            ))),
        }
    }

    /// The sandbox's root filesystem, for reading and writing files in it (the session files
    /// channel). Available from the launch until the delete, whether the process runs or not.
    pub fn files(&self, id: &SandboxId) -> Result<crate::files::SandboxFiles, RuntimeError> {
        let dir = self.dir(id.as_str());
        let meta = read_meta(&dir).map_err(|_| RuntimeError::NotFound(id.to_string()))?;
        let owner = meta
            .net
            .and_then(|n| n.user)
            .map(|user| user.map.host_id(0));
        // A sandbox launched by an earlier version (and adopted) has its root mounted on the
        // gate itself; `<gate>/root` would then be its /root directory.
        let root = if is_mountpoint(&rootfs_gate(id.as_str())) {
            rootfs_gate(id.as_str())
        } else {
            rootfs_dir(id.as_str())
        };
        let reserve = self.images.disk_reserve();
        crate::files::SandboxFiles::open(&root, owner)
            .map(|files| {
                files
                    .with_upload_journal(dir.join("uploads"))
                    .with_room_check(reserve, self.writes_dir(id.as_str()))
            })
            .map_err(|e| match e {
                crate::files::FileError::NotFound(_) => RuntimeError::NotFound(id.to_string()),
                e => RuntimeError::Internal(e.to_string()),
            })
    }

    /// Whether sandbox `id`'s state dir was made at or after `since` (its birth time; false when
    /// the file system cannot tell or the dir is gone).
    pub fn made_since(&self, id: &SandboxId, since: std::time::SystemTime) -> bool {
        std::fs::metadata(self.dir(id.as_str()))
            .and_then(|m| m.created())
            .is_ok_and(|born| born >= since)
    }

    /// The host directory holding what sandbox `id` wrote to its root filesystem (the
    /// overlay's upper dir: on its disk, or in its state dir without disks).
    pub fn writable_layer(&self, id: &SandboxId) -> Option<PathBuf> {
        let dir = self.dir(id.as_str());
        let meta = read_meta(&dir).ok()?;
        Some(match &meta.disk {
            Some(token) => self.disks.mount_path(token).join("upper"),
            None => dir.join("upper"),
        })
    }

    /// After a server restart: every sandbox the runtime has state for, with what is observed
    /// now (running ones kept running; exits that happened meanwhile reported).
    pub fn adopt_all(&self) -> Vec<(SandboxId, Observed)> {
        let Ok(entries) = std::fs::read_dir(self.root.join("sandboxes")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match SandboxId::try_from(name.clone()) {
                Ok(id) => {
                    let obs = self.observe_str(&name);
                    out.push((id, obs));
                }
                Err(_) => tracing::warn!(
                    "ignoring {} in the sandbox state dir: not a sandbox id",
                    name
                ),
            }
        }
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        out
    }

    /// Removes the image store's blobs and layers that no image record names and no
    /// sandbox's root on this host uses (see [`ImageStore::prune`]).
    pub fn prune_images(&self) -> std::io::Result<crate::images::Pruned> {
        let in_use = layers_in_use(&self.root).map_err(std::io::Error::other)?;
        self.images.prune(&in_use)
    }

    /// The image store (pulls without launching, e.g. to pre-warm).
    pub fn images(&self) -> &ImageStore {
        &self.images
    }
}

/// Where root filesystems are mounted: outside the data dir, which is private (0700) and may
/// sit in a private home, because crun resolves the root's path after joining the sandbox's
/// user namespace, where root is an unprivileged host id. Traversable, not listable.
const ROOTFS_MOUNTS: &str = "/run/nimbus/rootfs";

/// Refills the warm pool and the standby monitors when dropped: a launch holds one from the
/// moment it takes from the pool, so a launch that fails or is withdrawn by its caller (a
/// create refused by its quota) replaces what it took as a started one does.
struct RefillWhenDone<'a>(&'a Runtime);

/// The disk a launch took: given back to the ready ones if the launch ends before the
/// sandbox's state names it (from then on, the sandbox's delete removes it).
struct TakenDisk<'a> {
    disks: &'a Disks,
    token: Option<String>,
}

impl<'a> TakenDisk<'a> {
    async fn take(disks: &'a Disks) -> Result<TakenDisk<'a>, LaunchError> {
        let token = if disks.enabled() {
            Some(
                disks
                    .take()
                    .await
                    .map_err(|e| internal(format!("preparing the sandbox's disk failed: {e}")))?,
            )
        } else {
            None
        };
        Ok(TakenDisk { disks, token })
    }

    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The state file names the disk now: returns where the sandbox's writable layer goes
    /// (the disk, or the state dir `dir` without disks).
    fn recorded(mut self, dir: &Path) -> PathBuf {
        match self.token.take() {
            Some(token) => self.disks.mount_path(&token),
            None => dir.to_path_buf(),
        }
    }
}

impl Drop for TakenDisk<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.disks.put_back(token);
        }
    }
}

impl Drop for RefillWhenDone<'_> {
    fn drop(&mut self) {
        // A launch dropped while its runtime shuts down has nothing to refill for.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.0.refill_pool();
        }
    }
}

/// The sandbox's `bundle` dir and its /etc files (hosts, hostname, resolv.conf), owned by
/// root inside the sandbox.
fn write_etc(id: &str, dir: &Path, net: &SandboxNet) -> Result<(), LaunchError> {
    std::fs::create_dir_all(dir.join("bundle")).map_err(internal)?;
    let hostname: String = id.chars().take(30).collect();
    write_etc_files(&dir.join("etc"), &hostname, net.address).map_err(internal)?;
    if let Some(user) = &net.user {
        // Root-owned, they would show as `nobody` inside; they are bound read-only anyway.
        chown_to(
            user,
            0,
            &[
                &dir.join("etc/hosts"),
                &dir.join("etc/hostname"),
                &dir.join("etc/resolv.conf"),
            ],
        )?;
    }
    Ok(())
}

/// The sandbox's root filesystem mount point, `<ROOTFS_MOUNTS>/<id>/root`. Its parent (the
/// "gate", [`rootfs_gate`]) is 0700 and owned by the sandbox's root, so that no other host user
/// reaches the sandbox's files: ids are not secret (`/proc/mounts` lists every mount point).
fn rootfs_dir(id: &str) -> PathBuf {
    rootfs_gate(id).join("root")
}

fn rootfs_gate(id: &str) -> PathBuf {
    Path::new(ROOTFS_MOUNTS).join(id)
}

/// Mounts the sandbox's root filesystem at `rootfs`: the layers (`lower`, bottom first) under
/// the sandbox's own upper dir, which is in `layer` (its disk, or its state dir `dir`). With a user namespace, the layers are seen through idmapped
/// mounts (one per directory holding layers, detached once the overlay holds them) and the
/// upper dir belongs to the sandbox's root, so files keep their image owners inside. With
/// `root_field`, a layer that cannot be idmapped is a bad spec naming that field.
fn mount_root(
    dir: &Path,
    layer: &Path,
    rootfs: &Path,
    lower: &[PathBuf],
    user: Option<&UserNs>,
    root_field: Option<&'static str>,
) -> Result<(), LaunchError> {
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    if let Some(gate) = rootfs.parent() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(gate).map_err(internal)?;
        std::fs::set_permissions(gate, std::fs::Permissions::from_mode(0o700)).map_err(internal)?;
        // crun resolves the root's path as the sandbox's root (see ROOTFS_MOUNTS).
        if let Some(user) = user {
            chown_to(user, 0, &[gate])?;
        }
    }
    for d in [rootfs, &upper, &work] {
        std::fs::create_dir_all(d).map_err(internal)?;
    }
    let mut lower = lower.to_vec();
    if lower.is_empty() {
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).map_err(internal)?;
        lower.push(empty);
    }
    record_layers(dir, &lower)?;
    let mut idmapped = Vec::new();
    if let Some(user) = user {
        chown_to(user, 0, &[&upper])?;
        let mapped = idmap_layers(dir, &lower, user, root_field, &mut idmapped);
        if mapped.is_err() {
            detach_all(&idmapped);
        }
        lower = mapped?;
    }
    let top_first: Vec<&Path> = lower.iter().rev().map(PathBuf::as_path).collect();
    let mounted = crate::overlay::mount(rootfs, &top_first, &upper, &work);
    // The overlay keeps its own references to its layers.
    detach_all(&idmapped);
    mounted.map_err(|e| internal(format!("mounting the sandbox's root filesystem: {e}")))
}

/// The file in a sandbox's state dir that names the image store's layers its root uses.
const LAYERS_FILE: &str = "layers";

/// Writes which of the store's layers (by directory name, a digest's hex) the root about to be
/// mounted uses, before it is mounted: `nimbus image prune` keeps them for as long as the
/// sandbox's state dir exists (its root serves its files after it stops, too).
fn record_layers(dir: &Path, lower: &[PathBuf]) -> Result<(), LaunchError> {
    let names: Vec<String> = lower
        .iter()
        .filter_map(|l| l.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| is_layer_name(n))
        .collect();
    let path = dir.join(LAYERS_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, names.join("\n")).map_err(internal)?;
    std::fs::rename(&tmp, &path).map_err(internal)
}

fn is_layer_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The image store's layers that sandboxes of the data dir whose runtime state is `root`
/// (`<data dir>/runtime`) use, and any overlay mounted on this host shows. A sandbox launched
/// by an earlier version did not record its layers: the answer is then an error naming it, so
/// that nothing it may use is freed.
pub fn layers_in_use(root: &Path) -> Result<std::collections::HashSet<String>, String> {
    let mut used = crate::overlay::layers_in_use();
    let sandboxes = root.join("sandboxes");
    let entries = match std::fs::read_dir(&sandboxes) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(used),
        Err(e) => return Err(format!("reading {}: {e}", sandboxes.display())),
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        match std::fs::read_to_string(dir.join(LAYERS_FILE)) {
            Ok(text) => used.extend(
                text.lines()
                    .filter(|l| is_layer_name(l))
                    .map(str::to_string),
            ),
            // A launch that has not reached its root yet records its layers before mounting.
            Err(_) if !dir.join("meta.json").exists() => {}
            Err(_) => {
                return Err(format!(
                    "sandbox {} was launched by an earlier version of Nimbus, which did not record \
                     the layers its root uses; prune once it is deleted",
                    entry.file_name().to_string_lossy()
                ))
            }
        }
    }
    Ok(used)
}

/// The layers as seen through idmapped mounts for `user` under `<dir>/idmapped/<n>`: one mount
/// per distinct parent directory (all of an image's layers share the store's, so an image
/// costs one mount whatever its layer count), pushed onto `mounts` as they are made.
fn idmap_layers(
    dir: &Path,
    lower: &[PathBuf],
    user: &UserNs,
    root_field: Option<&'static str>,
    mounts: &mut Vec<PathBuf>,
) -> Result<Vec<PathBuf>, LaunchError> {
    let mut parents: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut out = Vec::with_capacity(lower.len());
    for layer in lower {
        // A single directory (a `rootfs` root) is mapped itself: its parent's mount would not
        // carry a filesystem mounted on it.
        let (parent, name) = match (layer.parent(), layer.file_name()) {
            (Some(p), Some(n)) if lower.len() > 1 => (p.to_path_buf(), n.to_owned()),
            _ => (layer.clone(), std::ffi::OsString::new()),
        };
        let at = match parents.iter().find(|(p, _)| *p == parent) {
            Some((_, at)) => at.clone(),
            None => {
                let at = dir.join("idmapped").join(parents.len().to_string());
                std::fs::create_dir_all(&at).map_err(internal)?;
                crate::userns::idmapped_bind(&parent, &at, &user.path).map_err(
                    |e| match root_field {
                        Some(field) => LaunchError::BadSpec {
                            field: field.into(),
                            reason: e,
                        },
                        None => internal(e),
                    },
                )?;
                mounts.push(at.clone());
                parents.push((parent, at.clone()));
                at
            }
        };
        out.push(if name.is_empty() { at } else { at.join(name) });
    }
    Ok(out)
}

fn detach_all(mounts: &[PathBuf]) {
    for m in mounts {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Gives `paths` to id `inside` of the sandbox's user namespace.
fn chown_to(user: &UserNs, inside: u32, paths: &[&Path]) -> Result<(), LaunchError> {
    let id = user.map.host_id(inside);
    for p in paths {
        std::os::unix::fs::chown(p, Some(id), Some(id))
            .map_err(|e| internal(format!("cannot chown {}: {e}", p.display())))?;
    }
    Ok(())
}

fn classify_create_error(msg: &str) -> LaunchError {
    let m = msg.trim();
    if m.contains("not found in $PATH")
        || m.contains("executable file")
        || m.contains("exec format error")
        || m.contains("Permission denied")
        // crun opens argv[0] before it execs it; a directory there fails with EPERM.
        || m.contains("open executable")
    {
        LaunchError::BadArgv(m.to_string())
    } else if m.contains("chdir") || m.contains("cwd") {
        LaunchError::BadSpec {
            field: "process.workingDir".into(),
            reason: m.to_string(),
        }
    } else {
        LaunchError::Internal(format!("crun could not create the container: {m}"))
    }
}

fn exit_reason(rec: &ExitRecord) -> ExitReason {
    if let Some(e) = &rec.start_error {
        ExitReason::StartFailed(e.clone())
    } else if rec.oom_killed && rec.code != 0 {
        // The cgroup saw an OOM kill and the process did not succeed: the kill is the likely
        // cause (the process itself, or a child whose death it passed on). A process that
        // exits 0 after a child was killed handled it, and completed.
        ExitReason::OomKilled
    } else if rec.pids_refused > 0 && rec.code != 0 && rec.signal.is_none() {
        ExitReason::PidsLimit {
            refused: rec.pids_refused,
        }
    } else if let Some(s) = rec.signal {
        ExitReason::Signaled(s)
    } else {
        ExitReason::Exited
    }
}

/// Replaces `meta.json` atomically but without an fsync: it describes kernel objects
/// (mounts, a network namespace, processes) that a host crash takes with it, while a server
/// crash leaves the page cache intact. The fsync cost about 0.8 ms of every launch.
fn write_meta(dir: &Path, meta: &Meta) -> Result<(), LaunchError> {
    let json = serde_json::to_vec_pretty(meta).map_err(internal)?;
    let path = dir.join("meta.json");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| internal(format!("cannot write {}: {e}", path.display())))
}

/// The bridge and subnet this data dir's sandboxes were wired to, as recorded at the last start.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct NetworkIdentity {
    bridge: String,
    subnet: String,
}

/// Refuses a start whose `runtime.bridge` or `runtime.subnet` differ from those this data dir's
/// sandboxes still have their network on: the new bridge would carry the same routes as the
/// old one (traffic to the sandboxes goes astray), and their teardown would look for their
/// firewall rules in the new bridge's table, leaving the old ones behind. With no sandbox on
/// the network, the change is taken, and recorded.
fn check_network_unchanged(root: &Path, bridge: &str, subnet: &str) -> Result<(), String> {
    let path = root.join("net/network.json");
    let now = NetworkIdentity {
        bridge: bridge.to_string(),
        subnet: subnet.to_string(),
    };
    let before: Option<NetworkIdentity> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(before) = before.filter(|b| *b != now) {
        let on_it = sandboxes_on_the_network(root);
        if !on_it.is_empty() {
            let shown: Vec<&str> = on_it.iter().take(5).map(String::as_str).collect();
            let more = if on_it.len() > 5 { ", …" } else { "" };
            return Err(format!(
                "runtime.bridge / runtime.subnet changed to {:?} / {:?}, but {} sandbox(es) of \
                 this data dir ({}{more}) have their network on bridge {:?} with subnet {:?}: \
                 set runtime.bridge and runtime.subnet back, delete those sandboxes, then \
                 change them",
                now.bridge,
                now.subnet,
                on_it.len(),
                shown.join(", "),
                before.bridge,
                before.subnet
            ));
        }
        // Nothing is on the old network: the bridge's old gateway address (this server's own,
        // as recorded) goes, so that the new one can take the bridge.
        if before.bridge == now.bridge {
            if let Ok(old) = crate::network::Subnet::parse(&before.subnet) {
                let address = format!("{}/{}", old.gateway(), old.prefix);
                let _ = std::process::Command::new("ip")
                    .args(["addr", "del", &address, "dev", &before.bridge])
                    .stderr(std::process::Stdio::null())
                    .status();
                tracing::info!(bridge = %before.bridge, %address, "runtime.subnet changed: removed the earlier gateway address from the bridge");
            }
        }
    } else if path.exists() {
        return Ok(());
    }
    let bytes = serde_json::to_vec(&now).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    std::fs::create_dir_all(root.join("net"))
        .and_then(|()| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            format!(
                "cannot record the sandbox network in {}: {e}",
                path.display()
            )
        })
}

/// Sandboxes of the runtime at `root` whose network is set up (not yet released at their end).
fn sandboxes_on_the_network(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.join("sandboxes")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| read_meta(&e.path()).is_ok_and(|m| m.net.is_some() && !m.network_released))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn read_meta(dir: &Path) -> Result<Meta, String> {
    let bytes = std::fs::read(dir.join("meta.json")).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn read_exit(dir: &Path) -> Option<ExitRecord> {
    std::fs::read(dir.join("exit.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends `signal` to sandbox `id`'s init process (`container.pid` in its state dir `dir`) if
/// that process is still in the sandbox's cgroup, so that a pid recycled by another process is
/// never signalled. Returns whether the signal was sent.
fn signal_init(dir: &Path, id: &str, signal: Signal) -> bool {
    let Some(pid) = read_pid(&dir.join("container.pid")) else {
        return false;
    };
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    if !in_sandbox_cgroup(&cgroups, id) {
        return false;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok()
}

/// Whether a `/proc/<pid>/cgroup` listing (`hierarchy:controllers:path` lines, read from the
/// host's cgroup namespace) puts the process in sandbox `id`'s cgroup (`cgroupsPath:
/// /nimbus/<id>`, or below it).
fn in_sandbox_cgroup(listing: &str, id: &str) -> bool {
    let own = crate::bundle::cgroup_path(id);
    listing.lines().any(|line| {
        line.splitn(3, ':').nth(2).is_some_and(|path| {
            path == own || path.strip_prefix(&own).is_some_and(|r| r.starts_with('/'))
        })
    })
}

/// True when `pid` is alive and is a Nimbus monitor (pids get reused).
fn is_monitor(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .any(|a| a == crate::monitor::MONITOR_ARG.as_bytes())
        })
        .unwrap_or(false)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

pub(crate) fn is_mountpoint(p: &Path) -> bool {
    let target = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(target.as_ref()))
        })
        .unwrap_or(false)
}

/// How often a stop or delete looks for the process's end and the monitor's: a `stat` or a
/// `/proc` read each time, while every millisecond waited is a millisecond of the caller's.
const EXIT_POLL: Duration = Duration::from_millis(2);

async fn wait_exit(dir: &Path, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if dir.join("exit.json").exists() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// Cgroup directories crun creates for `cgroupsPath: /nimbus/<id>` on v1, hybrid and v2 hosts.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let own = crate::bundle::cgroup_path(id);
    let below = own.trim_start_matches('/');
    let mut out = vec![Path::new("/sys/fs/cgroup").join(below)];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path().join(below);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

fn remove_cgroups(id: &str) {
    for c in cgroup_dirs(id) {
        if c.exists() {
            // Empty cgroups are removed with rmdir; a populated one stays and is reported.
            let _ = std::fs::remove_dir(&c);
        }
    }
}

/// Connects to a Unix socket, through its directory where the path is too long for an address.
async fn connect_unix(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let (addr, _dir) = crate::attach::short_path(path)?;
    tokio::net::UnixStream::connect(&addr).await
}

/// Whether a connect failed for want of a listener (no socket file, or nobody behind it).
fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::{layers_in_use, LAYERS_FILE};

    #[test]
    fn layers_in_use_come_from_each_sandbox_and_an_unrecorded_one_stops_the_answer() {
        let root = tempfile::tempdir().unwrap();
        let sandboxes = root.path().join("sandboxes");
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        for (id, layers) in [
            ("sbx_one", Some(format!("{a}\n{b}"))),
            ("sbx_launching", None),
        ] {
            std::fs::create_dir_all(sandboxes.join(id)).unwrap();
            if let Some(l) = layers {
                std::fs::write(sandboxes.join(id).join(LAYERS_FILE), l).unwrap();
            }
        }
        let used = layers_in_use(root.path()).unwrap();
        assert!(used.contains(&a) && used.contains(&b), "{used:?}");
        std::fs::create_dir_all(sandboxes.join("sbx_old")).unwrap();
        std::fs::write(sandboxes.join("sbx_old/meta.json"), "{}").unwrap();
        let err = layers_in_use(root.path()).unwrap_err();
        assert!(err.contains("sbx_old"), "{err}");
    }

    use super::in_sandbox_cgroup;

    #[test]
    fn the_init_is_recognised_by_its_sandbox_cgroup_only() {
        let v1 = "12:pids:/nimbus/sbx_abc\n11:memory:/nimbus/sbx_abc\n1:name=systemd:/user.slice\n";
        assert!(in_sandbox_cgroup(v1, "sbx_abc"));
        assert!(in_sandbox_cgroup("0::/nimbus/sbx_abc\n", "sbx_abc"));
        assert!(in_sandbox_cgroup("0::/nimbus/sbx_abc/sub\n", "sbx_abc"));
        // Another sandbox whose id starts with this one's, the parent, and host processes.
        assert!(!in_sandbox_cgroup("0::/nimbus/sbx_abcd\n", "sbx_abc"));
        assert!(!in_sandbox_cgroup("0::/nimbus\n", "sbx_abc"));
        assert!(!in_sandbox_cgroup(
            "0::/system.slice/ssh.service\n",
            "sbx_abc"
        ));
        assert!(!in_sandbox_cgroup("", "sbx_abc"));
    }
}
