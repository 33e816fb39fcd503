//! [`PluginHost`]: the plugin store plus one loaded plugin per slot, swapped live when the store
//! changes.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use nimbus_core::authz::{Authorizer, AuthzRequest, Decision};
use wasmtime::Engine;

use crate::catalog::{Catalog, PluginInfo, VerifyReport};
use crate::config::{EffectiveLimits, PluginsConfig, SlotConfig, SlotKind};
use crate::health::{endpoint_host_port, HealthOutcome, HealthProbe, HealthTarget};
use crate::memo::DecisionMemo;
use crate::metrics::{Counters, MetricSample, Metrics};
use crate::net::{HostPattern, NetGrants};
use crate::wasm::{self, CallCtx, HealthAnswer, NetAccess, PolicyError, Prepared, World};

/// One plugin version loaded for a slot.
struct Loaded {
    info: PluginInfo,
    /// `id@version`, for logs and metrics.
    label: Arc<str>,
    prepared: Prepared,
    counters: Arc<Counters>,
    /// The decisions of an authorization policy that decides from the request alone, unless
    /// the slot turns that off (`memoize_decisions = false`).
    memo: Option<DecisionMemo>,
}

/// A slot (`authz`, `health.http`, `health.tcp`) and the plugin currently serving it.
struct Slot {
    kind: SlotKind,
    cfg: SlotConfig,
    limits: EffectiveLimits,
    config_pairs: Arc<Vec<(String, String)>>,
    grants: Vec<HostPattern>,
    allow_target: bool,
    /// Swapped whole: a call clones the `Arc` and keeps its version until it returns, so a swap
    /// never disturbs calls in flight.
    current: RwLock<Arc<Loaded>>,
}

impl Slot {
    fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            // A poisoned lock only means a panic elsewhere while holding it; the value is intact.
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, loaded: Arc<Loaded>) {
        match self.current.write() {
            Ok(mut g) => *g = loaded,
            Err(p) => *p.into_inner() = loaded,
        }
    }
}

/// The plugin host. Create one per server with [`PluginHost::open`].
pub struct PluginHost {
    engine: &'static Engine,
    catalog: Catalog,
    authz: Arc<Slot>,
    health_http: Arc<Slot>,
    health_tcp: Arc<Slot>,
    metrics: Arc<Metrics>,
    http_client: reqwest::Client,
    seen_generation: Mutex<u64>,
    /// Per slot, the last swap failure logged: a failed swap is retried on every watch tick
    /// (it may have been transient, e.g. a deadline missed under load), but logged once.
    swap_failures: Mutex<std::collections::HashMap<&'static str, String>>,
    /// Set by [`PluginHost::stop`]: health checks' outbound HTTP ends at once, because it runs
    /// on the server's tokio runtime, which is about to shut down under it.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Health checks started and not yet ended (waiting for a blocking thread, or running).
    checks_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts one health check in [`PluginHost::checks_in_flight`] until dropped, whether the
/// check ran or its blocking task was dropped unstarted.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> InFlight {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How long [`PluginHost::stop`] waits for health checks in flight to end. HTTP checks end at
/// once; a TCP check ends at its next deadline, which may be later: it holds no runtime
/// resource, and the process may exit under it.
const STOP_WAIT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("store", &self.catalog.root())
            .field("authz", &self.authz.current().label)
            .field("health.http", &self.health_http.current().label)
            .field("health.tcp", &self.health_tcp.current().label)
            .finish()
    }
}

/// Opens the plugin store under `<data_dir>/plugins` without loading any slot (for the CLI).
pub struct PluginStore {
    engine: &'static Engine,
    catalog: Catalog,
}

impl PluginStore {
    /// Opens the store, installing the bundled plugins if they are missing.
    pub fn open(data_dir: &Path) -> anyhow::Result<PluginStore> {
        let engine = crate::engine::engine()?;
        let catalog = Catalog::open(data_dir)?;
        catalog.ensure_bundled(engine)?;
        Ok(PluginStore { engine, catalog })
    }

    pub fn list(&self) -> anyhow::Result<Vec<PluginInfo>> {
        self.catalog.list()
    }

    /// Installs a component file's bytes and makes it its plugin's active version. Refuses a
    /// component that implements no known world at a compatible version, or that imports what its
    /// world does not offer.
    pub fn install(
        &self,
        bytes: &[u8],
        id: Option<&str>,
        version: Option<&str>,
    ) -> anyhow::Result<PluginInfo> {
        self.catalog.install(self.engine, bytes, id, version)
    }

    pub fn remove(&self, spec: &str) -> anyhow::Result<Vec<PluginInfo>> {
        self.catalog.remove(spec)
    }

    pub fn verify(&self) -> anyhow::Result<Vec<VerifyReport>> {
        self.catalog.verify()
    }

    pub fn precompile(&self) -> anyhow::Result<Vec<PluginInfo>> {
        self.catalog.precompile_all(self.engine)
    }

    /// The installed versions matching `id` or `id@version`.
    pub fn resolve(&self, spec: &str) -> anyhow::Result<Vec<PluginInfo>> {
        self.catalog.resolve(spec)
    }

    /// The WIT of the component (its world and the interfaces it uses), as text. `spec` is `id`
    /// (the active version) or `id@version`.
    pub fn inspect(&self, spec: &str) -> anyhow::Result<(PluginInfo, String)> {
        let matches = self.catalog.resolve(spec)?;
        let info = match spec.contains('@') {
            true => matches.into_iter().next(),
            false => matches.into_iter().find(|p| p.active),
        }
        .ok_or_else(|| anyhow!("{spec} has no active version; name one as {spec}@<version>"))?;
        let bytes = self.catalog.component_bytes(&info.id, &info.version)?;
        Ok((info, world_text(&bytes)?))
    }

    pub fn root(&self) -> &Path {
        self.catalog.root()
    }
}

/// Prints a component's world as WIT, with the packages it refers to nested after it.
pub fn world_text(bytes: &[u8]) -> anyhow::Result<String> {
    let decoded = wit_component::decode(bytes).context("cannot decode the component's WIT")?;
    let resolve = decoded.resolve();
    let root = decoded.package();
    let nested: Vec<_> = resolve
        .packages
        .iter()
        .map(|(id, _)| id)
        .filter(|id| *id != root)
        .collect();
    let mut printer = wit_component::WitPrinter::default();
    printer.print(resolve, root, &nested)?;
    Ok(printer.output.to_string())
}

impl PluginHost {
    /// Opens the plugin store under `<data_dir>/plugins`, installs the bundled plugins on first
    /// start, validates `config` and loads the plugin of every slot. Any problem is an error
    /// naming the config key to fix. Starts the store watcher unless `watch_interval_ms = 0`.
    pub fn open(data_dir: &Path, config: &PluginsConfig) -> anyhow::Result<Arc<PluginHost>> {
        config.validate()?;
        let store = PluginStore::open(data_dir)?;
        let (engine, catalog) = (store.engine, store.catalog);
        let generation = catalog.generation();
        let metrics = Arc::new(Metrics::default());
        let make = |kind: SlotKind| -> anyhow::Result<Arc<Slot>> {
            let cfg = config.slot(kind);
            let limits = config.effective_limits(kind);
            let loaded = load_for_slot(engine, &catalog, &metrics, kind, &cfg, &limits)?;
            let grants = cfg
                .hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h))
                .collect();
            Ok(Arc::new(Slot {
                kind,
                limits,
                config_pairs: Arc::new(
                    cfg.config
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_plugin_string()))
                        .collect(),
                ),
                grants,
                allow_target: cfg.allow_target.unwrap_or(true),
                cfg,
                current: RwLock::new(Arc::new(loaded)),
            }))
        };
        let authz = make(SlotKind::Authz)?;
        let health_http = make(SlotKind::HealthHttp)?;
        let health_tcp = make(SlotKind::HealthTcp)?;
        let host = Arc::new(PluginHost {
            engine,
            authz,
            health_http,
            health_tcp,
            catalog,
            metrics,
            http_client: crate::net::http_client(config.tls_ca_file.as_deref())?,
            seen_generation: Mutex::new(generation),
            swap_failures: Mutex::new(std::collections::HashMap::new()),
            stopping: tokio::sync::watch::Sender::new(false),
            checks_in_flight: Arc::default(),
        });
        for slot in host.slots() {
            let l = slot.current();
            tracing::info!(
                event = "plugin.loaded",
                slot = slot.kind.key(),
                plugin = &*l.label,
                sha256 = %l.info.sha256,
                memoized = l.memo.is_some(),
                "plugin slot {} served by {}",
                slot.kind.key(),
                l.label
            );
        }
        if let Some(interval) = config.watch_interval() {
            spawn_watcher(Arc::downgrade(&host), interval)?;
        }
        Ok(host)
    }

    fn slots(&self) -> [&Arc<Slot>; 3] {
        [&self.authz, &self.health_http, &self.health_tcp]
    }

    fn slot(&self, kind: SlotKind) -> &Arc<Slot> {
        match kind {
            SlotKind::Authz => &self.authz,
            SlotKind::HealthHttp => &self.health_http,
            SlotKind::HealthTcp => &self.health_tcp,
        }
    }

    /// The authorization policy as an [`Authorizer`]. It follows hot swaps, and denies whenever
    /// the plugin fails (trap, deadline, fuel, memory, malformed answer).
    pub fn authorizer(&self) -> Arc<dyn Authorizer> {
        Arc::new(PluginAuthorizer {
            engine: self.engine,
            slot: self.authz.clone(),
        })
    }

    /// Runs one health check with the `health.http` or `health.tcp` plugin (by the probe's
    /// kind) on a blocking thread. Never fails: a plugin failure is an unhealthy outcome.
    /// Call it from a multi-threaded tokio runtime (the server's): the plugin's outbound HTTP
    /// runs on that runtime while the blocking thread waits for it.
    pub async fn check_health(&self, target: HealthTarget) -> HealthOutcome {
        let kind = match target.probe {
            HealthProbe::Http(_) => SlotKind::HealthHttp,
            HealthProbe::Tcp(_) => SlotKind::HealthTcp,
        };
        let slot = self.slot(kind).clone();
        let client = self.http_client.clone();
        let engine = self.engine;
        let runtime = tokio::runtime::Handle::current();
        let stopping = self.stopping.subscribe();
        let in_flight = InFlight::new(&self.checks_in_flight);
        let task = tokio::task::spawn_blocking(move || {
            let _in_flight = in_flight;
            run_health(engine, &slot, client, runtime, stopping, &target)
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(e) => HealthOutcome {
                healthy: false,
                detail: format!("the health check did not complete: {e}"),
                latency: None,
                checked_by: "nimbus".into(),
            },
        }
    }

    /// Ends the health checks in flight before the server's runtime shuts down: their outbound
    /// HTTP answers "the server is stopping" at once, and new checks make no request. Waits up
    /// to [`STOP_WAIT`] for them to end. Their outcomes must not be recorded (the caller has
    /// stopped the health controller first).
    pub async fn stop(&self) {
        self.begin_stop();
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while self
            .checks_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first half of [`PluginHost::stop`], for paths that cannot wait (a start that fails
    /// after the health controller started): health checks' HTTP ends at once.
    pub fn begin_stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Whether [`PluginHost::stop`] was called: a health outcome from then on may be the stop's
    /// doing, not the service's.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Looks at the plugin store now and swaps every slot whose plugin changed (a new active
    /// version, or a removed one). Returns the slots swapped. The watcher calls this when the
    /// store's generation changes; a slot whose new plugin fails to load keeps its current one.
    pub fn refresh(&self) -> Vec<String> {
        let generation = self.catalog.generation();
        let mut all_loaded = true;
        let mut swapped = Vec::new();
        for slot in self.slots() {
            let current = slot.current();
            match load_for_slot(
                self.engine,
                &self.catalog,
                &self.metrics,
                slot.kind,
                &slot.cfg,
                &slot.limits,
            ) {
                // The same bytes under another version still switch: logs and metrics name
                // the version serving.
                Ok(next)
                    if next.label == current.label && next.info.sha256 == current.info.sha256 => {}
                Ok(next) => {
                    tracing::info!(
                        event = "plugin.swapped",
                        slot = slot.kind.key(),
                        from = &*current.label,
                        to = &*next.label,
                        memoized = next.memo.is_some(),
                        "plugin slot {} now served by {}",
                        slot.kind.key(),
                        next.label
                    );
                    swapped.push(format!("{}={}", slot.kind.key(), next.label));
                    slot.set(Arc::new(next));
                }
                Err(e) => {
                    all_loaded = false;
                    let message = format!("{e:#}");
                    let mut logged = self.swap_failures.lock().unwrap_or_else(|p| p.into_inner());
                    if logged.get(slot.kind.key()) != Some(&message) {
                        tracing::error!(
                            event = "plugin.swap_failed",
                            slot = slot.kind.key(),
                            keeping = &*current.label,
                            "cannot switch plugin slot {}: {message}; keeping {} (retried while the store stays as it is)",
                            slot.kind.key(),
                            current.label
                        );
                        logged.insert(slot.kind.key(), message);
                    }
                    continue;
                }
            }
            if let Ok(mut logged) = self.swap_failures.lock() {
                logged.remove(slot.kind.key());
            }
        }
        // Only a refresh in which every slot loaded settles this generation; otherwise the
        // watcher tries again at its next tick.
        if all_loaded {
            if let Ok(mut g) = self.seen_generation.lock() {
                *g = generation;
            }
        }
        swapped
    }

    fn refresh_if_changed(&self) {
        let generation = self.catalog.generation();
        let seen = self.seen_generation.lock().map(|g| *g).unwrap_or(0);
        if generation != seen {
            self.refresh();
        }
    }

    /// `id@version` of the plugin serving a slot (`authz`, `health.http`, `health.tcp`).
    pub fn serving(&self, slot_key: &str) -> Option<String> {
        SlotKind::all()
            .into_iter()
            .find(|k| k.key() == slot_key)
            .map(|k| self.slot(k).current().label.to_string())
    }

    /// Call and failure counters.
    pub fn metrics(&self) -> Vec<MetricSample> {
        self.metrics.snapshot()
    }

    /// Call-duration histograms, one per slot/plugin pair loaded so far.
    pub fn durations(&self) -> Vec<crate::metrics::DurationSample> {
        self.metrics.durations()
    }

    /// Metrics in Prometheus text format: call and failure counters, call durations.
    pub fn metrics_text(&self) -> String {
        let mut text = crate::metrics::render_prometheus(&self.metrics.snapshot());
        text.push_str(&crate::metrics::render_durations(&self.metrics.durations()));
        text
    }

    /// The installed plugins.
    pub fn list(&self) -> anyhow::Result<Vec<PluginInfo>> {
        self.catalog.list()
    }
}

fn spawn_watcher(host: Weak<PluginHost>, interval: Duration) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("nimbus-plugin-watch".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            match host.upgrade() {
                Some(h) => h.refresh_if_changed(),
                None => break,
            }
        })
        .map(|_| ())
        .map_err(|e| anyhow!("cannot start the plugin store watcher: {e}"))
}

/// Resolves a slot's configuration to an installed version and loads it, checking its world,
/// its pins, and that it starts within the slot's `limits`. Errors name the config key.
fn load_for_slot(
    engine: &Engine,
    catalog: &Catalog,
    metrics: &Metrics,
    kind: SlotKind,
    cfg: &SlotConfig,
    limits: &EffectiveLimits,
) -> anyhow::Result<Loaded> {
    let key = format!("plugins.{}", kind.key());
    let plugin = cfg.plugin.as_deref().unwrap_or(kind.default_plugin());
    let pinned_by_sha = match (&cfg.version, &cfg.sha256) {
        // A sha256 pin without a version names the version: the one installed with those bytes.
        (None, Some(pin)) => Some(version_with_sha(catalog, plugin, pin).ok_or_else(|| {
            let installed: Vec<String> = catalog
                .list()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.id == plugin)
                .map(|p| format!("{} ({}…)", p.version, &p.sha256[..12.min(p.sha256.len())]))
                .collect();
            anyhow!(
                "{key}.sha256 = {pin:?}: no installed version of {} has those bytes (installed: \
                 {}); install the pinned component, or update the pin",
                plugin,
                if installed.is_empty() {
                    "none".to_string()
                } else {
                    installed.join(", ")
                }
            )
        })?),
        _ => None,
    };
    let version = match (pinned_by_sha, &cfg.version) {
        (Some(v), _) => v,
        (None, Some(v)) if catalog.manifest(plugin, v).is_err() => {
            if let Some(problem) = crate::config::version_problem(v) {
                bail!("{key}.version = {v:?}: {problem}");
            }
            let versions = installed_versions(catalog, plugin);
            bail!(
                "{key}.version = {v:?}: {} {v} is not installed (installed versions: {}); \
                 install it, or pin one of those",
                plugin,
                if versions.is_empty() {
                    "none".to_string()
                } else {
                    versions.join(", ")
                }
            );
        }
        (None, Some(v)) => v.clone(),
        (None, None) => catalog.active_version(plugin).ok_or_else(|| {
            let versions = installed_versions(catalog, plugin);
            if !versions.is_empty() {
                return anyhow!(
                    "{key}.plugin = {:?}: {} has no active version (installed: {}); pin one with \
                     {key}.version, or install it again",
                    plugin,
                    plugin,
                    versions.join(", ")
                );
            }
            let installed: Vec<String> = catalog
                .list()
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.id)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            anyhow!(
                "{key}.plugin = {:?}: no plugin with that id is installed (installed: {}); \
                 install it with `nimbus plugin install <file.wasm>`",
                plugin,
                installed.join(", ")
            )
        })?,
    };
    let (info, prepared) = catalog
        .load(engine, plugin, &version)
        .with_context(|| format!("{key}: cannot load {} {version}", plugin))?;
    let wanted = match kind {
        SlotKind::Authz => World::Authz,
        SlotKind::HealthHttp | SlotKind::HealthTcp => World::Health,
    };
    if prepared.world() != wanted {
        bail!(
            "{key}.plugin = {:?}: it implements {}, but this slot needs {}",
            plugin,
            prepared.world().name(),
            wanted.name()
        );
    }
    if let Some(pin) = &cfg.sha256 {
        if !pin.eq_ignore_ascii_case(&info.sha256) {
            bail!(
                "{key}.sha256 = {pin:?}, but {} {} has sha256 {}; update the pin or install the pinned component",
                info.id,
                info.version,
                info.sha256
            );
        }
    }
    wasm::check_starts_within(engine, &prepared, limits).map_err(|why| {
        anyhow!(
            "{key}: {} {} cannot start within this slot's limits ({} MiB of memory, {} fuel, \
             {} ms): {why}; raise {key}.limits (or [plugins.limits]), or use another version",
            info.id,
            info.version,
            limits.memory_bytes >> 20,
            limits.fuel,
            limits.timeout.as_millis()
        )
    })?;
    let label = format!("{}@{}", info.id, info.version);
    let memo = (kind == SlotKind::Authz
        && cfg.memoize_decisions != Some(false)
        && prepared.decides_from_the_request_alone())
    .then(DecisionMemo::new);
    Ok(Loaded {
        counters: metrics.counters(kind.key(), &label),
        label: Arc::from(label),
        info,
        prepared,
        memo,
    })
}

/// The version of plugin `id` installed with sha256 `pin`: the active one if it matches, else
/// the newest that does.
fn version_with_sha(catalog: &Catalog, id: &str, pin: &str) -> Option<String> {
    let matching: Vec<String> = catalog
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.id == id && p.sha256.eq_ignore_ascii_case(pin))
        .map(|p| p.version)
        .collect();
    match catalog.active_version(id) {
        Some(active) if matching.contains(&active) => Some(active),
        _ => matching.last().cloned(),
    }
}

/// The installed versions of plugin `id`, oldest first (for error messages).
fn installed_versions(catalog: &Catalog, id: &str) -> Vec<String> {
    catalog
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.id == id)
        .map(|p| p.version)
        .collect()
}

/// The `authz` slot as an [`Authorizer`].
struct PluginAuthorizer {
    engine: &'static Engine,
    slot: Arc<Slot>,
}

impl Authorizer for PluginAuthorizer {
    fn authorize(&self, request: &AuthzRequest) -> Decision {
        let slot = &self.slot;
        let loaded = slot.current();
        let label = &*loaded.label;
        let memo_key = loaded.memo.as_ref().and_then(|memo| memo.key(request));
        if let (Some(memo), Some(key)) = (&loaded.memo, &memo_key) {
            if let Some(decision) = memo.get(key, request) {
                loaded.counters.memoized();
                return decision;
            }
        }
        loaded.counters.call();
        let ctx = CallCtx::new(
            loaded.label.clone(),
            slot.config_pairs.clone(),
            None,
            &slot.limits,
        );
        let started = std::time::Instant::now();
        let call = || wasm::call_authz(self.engine, &loaded.prepared, ctx, &slot.limits, request);
        // Decisions run on the API's async workers: a policy that may run long (as its limits
        // allow) must not stall the other requests of its worker meanwhile.
        let result = if slot.limits.may_run_long() {
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if multi_thread {
                tokio::task::block_in_place(call)
            } else {
                call()
            }
        } else {
            call()
        };
        loaded.counters.observe(started.elapsed());
        match result {
            Ok(Ok(decision)) => {
                if let (Some(memo), Some(key)) = (&loaded.memo, memo_key) {
                    memo.put(key, request, &decision);
                }
                decision
            }
            Ok(Err(error)) => {
                let msg = match error {
                    PolicyError::InvalidConfig(m) => format!("invalid configuration: {m}"),
                    PolicyError::InvalidRequest(m) => format!("invalid request: {m}"),
                    PolicyError::Other(m) => m,
                };
                loaded.counters.fail("error");
                tracing::warn!(
                    event = "plugin.error",
                    slot = "authz",
                    plugin = label,
                    action = %request.action,
                    "authorization policy {label} could not decide: {msg}; denying"
                );
                Decision::deny(
                    &loaded.info.id,
                    format!("authorization policy {label} could not decide: {msg}"),
                )
            }
            Err(failure) => {
                loaded.counters.fail(failure.kind());
                tracing::error!(
                    event = "plugin.failed",
                    slot = "authz",
                    plugin = label,
                    kind = failure.kind(),
                    action = %request.action,
                    "authorization policy {label} {}; denying (fail closed)",
                    failure.message()
                );
                let mut denied = Decision::deny(
                    &loaded.info.id,
                    format!(
                        "authorization policy {label} failed ({}); the request is denied",
                        failure.kind()
                    ),
                );
                // What went wrong, after the reason callers see (the 403 and the audit event
                // give the first reason only; the log line above has this too).
                denied
                    .reasons
                    .push(format!("{label}: {}", failure.message()));
                denied
            }
        }
    }
}

fn run_health(
    engine: &'static Engine,
    slot: &Slot,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    stopping: tokio::sync::watch::Receiver<bool>,
    target: &HealthTarget,
) -> HealthOutcome {
    let loaded = slot.current();
    let label = &*loaded.label;
    let key = slot.kind.key();
    loaded.counters.call();
    let mut patterns = slot.grants.clone();
    if slot.allow_target {
        if let Some((host, port)) = endpoint_host_port(target) {
            let literal = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            patterns.extend(HostPattern::parse(&literal));
        }
    }
    let net = NetAccess {
        grants: NetGrants {
            patterns,
            slot_key: key,
        },
        client,
        runtime,
        stopping,
    };
    let ctx = CallCtx::new(
        loaded.label.clone(),
        slot.config_pairs.clone(),
        Some(net),
        &slot.limits,
    );
    let checked_by = loaded.label.to_string();
    let started = std::time::Instant::now();
    let result = wasm::call_health(engine, &loaded.prepared, ctx, &slot.limits, target);
    loaded.counters.observe(started.elapsed());
    match result {
        Ok(HealthAnswer::Report {
            healthy,
            detail,
            latency_ms,
        }) => HealthOutcome {
            healthy,
            detail,
            latency: latency_ms.map(|ms| Duration::from_millis(ms as u64)),
            checked_by,
        },
        Ok(HealthAnswer::Error(msg)) => {
            loaded.counters.fail("error");
            tracing::warn!(
                event = "plugin.error",
                slot = key,
                plugin = label,
                "health check could not be made: {msg}"
            );
            HealthOutcome {
                healthy: false,
                detail: format!("health check could not be made: {msg}"),
                latency: None,
                checked_by,
            }
        }
        Err(failure) => {
            loaded.counters.fail(failure.kind());
            tracing::error!(
                event = "plugin.failed",
                slot = key,
                plugin = label,
                kind = failure.kind(),
                endpoint = %target.endpoint,
                "health plugin {label} {}",
                failure.message()
            );
            HealthOutcome {
                healthy: false,
                detail: format!("health plugin {label} failed ({})", failure.kind()),
                latency: None,
                checked_by,
            }
        }
    }
}

/// Benchmark support: not part of the server's API.
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// Instantiates and calls a component exporting `run: func()` with the same per-call setup
    /// (fresh store, fuel, epoch deadline, memory limiter) that plugin calls get.
    pub struct Floor(wasm::FloorRunner);

    impl Floor {
        pub fn new(component_bytes: &[u8]) -> anyhow::Result<Floor> {
            let limits = PluginsConfig::default().effective_limits(SlotKind::Authz);
            Ok(Floor(wasm::FloorRunner::new(
                crate::engine::engine()?,
                component_bytes,
                limits,
            )?))
        }

        pub fn run_once(&self) -> anyhow::Result<()> {
            self.0.run_once()
        }

        /// For a component exporting `decide: func(request: request)` (the authz request, no
        /// result): instantiates it and passes `request` the way a policy receives it.
        pub fn run_request_once(&self, request: &AuthzRequest) -> anyhow::Result<()> {
            self.0.run_request_once(request)
        }

        /// For a component exporting `decide` typed as `nimbus:authz/policy` has it:
        /// instantiates it and asks it for a decision on `request`.
        pub fn run_decide_once(&self, request: &AuthzRequest) -> anyhow::Result<Decision> {
            self.0.run_decide_once(request)
        }
    }
}
