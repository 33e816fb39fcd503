//! Everything that touches wasmtime types: the WIT bindings, the per-call store data and host
//! imports, world checks, loading a component into an `InstancePre`, and running one call under
//! its limits. Nothing here is public outside the crate.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _};
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, HasSelf, InstancePre, Lift, Linker, Lower,
    TypedFunc, WasmList, WasmStr,
};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};

use crate::config::EffectiveLimits;
use crate::net::{self, NetFailure, NetGrants};

mod health_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/health/0.1.0",
        world: "health-check",
    });
}

mod authz_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/authz/0.1.0",
        world: "authz-policy",
        with: {
            "nimbus:host/log": super::health_bindings::nimbus::host::log,
            "nimbus:host/clock": super::health_bindings::nimbus::host::clock,
            "nimbus:host/config": super::health_bindings::nimbus::host::config,
        },
    });
}

use authz_bindings::nimbus::authz::types as az;
use health_bindings::nimbus::health::types as hz;
use health_bindings::nimbus::host as hi;

/// The worlds this host implements, as `nimbus plugin list` names them.
pub const AUTHZ_WORLD: &str = "nimbus:authz/authz-policy@0.1.0";
pub const HEALTH_WORLD: &str = "nimbus:health/health-check@0.1.0";

/// Which world a component implements; decided by its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Authz,
    Health,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::Authz => AUTHZ_WORLD,
            World::Health => HEALTH_WORLD,
        }
    }
}

/// Most log lines a plugin may write per call, and the longest line kept.
const MAX_LOG_LINES: u32 = 64;
const MAX_LOG_BYTES: usize = 2048;

/// The store data of one call.
pub(crate) struct CallCtx {
    limiter: Limiter,
    label: Arc<str>,
    config: Arc<Vec<(String, String)>>,
    net: Option<NetAccess>,
    deadline: Instant,
    log_lines: u32,
    /// Keeps the epoch advancing while this call's store lives (its deadline depends on it).
    _ticking: crate::engine::Ticking,
}

/// Network access for a health-check call.
pub(crate) struct NetAccess {
    pub grants: NetGrants,
    pub client: reqwest::Client,
    pub runtime: tokio::runtime::Handle,
    /// True once the server is stopping: see `net::http_send`.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Enforces the memory limit and remembers that it did, so the failure is reported as a memory
/// limit rather than as a generic trap.
struct Limiter {
    memory_bytes: usize,
    hit: Option<String>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = Some(format!(
                "memory limit: tried to grow linear memory from {current} to {desired} bytes, limit {}",
                self.memory_bytes
            ));
            // Trap instead of letting the guest see a failed grow: a plugin at its limit is done.
            return Err(anyhow::anyhow!("plugin memory limit reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl CallCtx {
    pub fn new(
        label: Arc<str>,
        config: Arc<Vec<(String, String)>>,
        net: Option<NetAccess>,
        limits: &EffectiveLimits,
    ) -> CallCtx {
        CallCtx {
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
                hit: None,
            },
            label,
            config,
            net,
            deadline: Instant::now() + limits.timeout,
            log_lines: 0,
            _ticking: crate::engine::Ticking::start(),
        }
    }

    /// The time left before the call's deadline (a host call never waits past it).
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn net(&self) -> Result<&NetAccess, hi::network_types::NetError> {
        self.net.as_ref().ok_or_else(|| {
            hi::network_types::NetError::NotGranted(
                "this plugin's slot has no network access".into(),
            )
        })
    }
}

impl hi::log::Host for CallCtx {
    fn log(&mut self, level: hi::log::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_BYTES {
            message.truncate(message.floor_char_boundary(MAX_LOG_BYTES));
            message.push('…');
        }
        let plugin = &*self.label;
        use hi::log::Level;
        match level {
            Level::Trace => tracing::trace!(target: "nimbus::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "nimbus::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "nimbus::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "nimbus::plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "nimbus::plugin", plugin, "{message}"),
        }
    }
}

impl hi::clock::Host for CallCtx {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn monotonic_ns(&mut self) -> u64 {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

impl hi::config::Host for CallCtx {
    fn get(&mut self, key: String) -> Option<String> {
        self.config
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.config.as_ref().clone()
    }
}

impl hi::network_types::Host for CallCtx {}
// The worlds' types interfaces define no functions.
impl az::Host for CallCtx {}
impl hz::Host for CallCtx {}

fn to_wit_net(e: NetFailure) -> hi::network_types::NetError {
    use hi::network_types::NetError as W;
    match e {
        NetFailure::NotGranted(m) => W::NotGranted(m),
        NetFailure::InvalidAddress(m) => W::InvalidAddress(m),
        NetFailure::Dns(m) => W::Dns(m),
        NetFailure::ConnectionRefused(m) => W::ConnectionRefused(m),
        NetFailure::Timeout => W::Timeout,
        NetFailure::Io(m) => W::Io(m),
    }
}

impl hi::http::Host for CallCtx {
    fn send(
        &mut self,
        request: hi::http::Request,
    ) -> Result<hi::http::Response, hi::network_types::NetError> {
        let timeout = Duration::from_millis(request.timeout_ms as u64).min(self.remaining());
        let label = self.label.clone();
        let access = self.net()?;
        let result = net::http_send(
            &access.client,
            &access.runtime,
            &access.stopping,
            &access.grants,
            net::HttpRequest {
                method: request.method,
                url: request.url,
                headers: request.headers,
                body: request.body,
                timeout,
                max_body_bytes: request.max_body_bytes,
            },
        );
        match result {
            Ok(r) => Ok(hi::http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
                elapsed_ms: r.elapsed.as_millis().min(u32::MAX as u128) as u32,
            }),
            Err(e) => {
                if let NetFailure::NotGranted(m) = &e {
                    tracing::warn!(event = "plugin.net_denied", plugin = &*label, "{m}");
                }
                Err(to_wit_net(e))
            }
        }
    }
}

impl hi::tcp::Host for CallCtx {
    fn exchange(
        &mut self,
        host: String,
        port: u16,
        send: Vec<u8>,
        read_max: u32,
        timeout_ms: u32,
    ) -> Result<hi::tcp::ExchangeResult, hi::network_types::NetError> {
        let timeout = Duration::from_millis(timeout_ms as u64).min(self.remaining());
        let label = self.label.clone();
        let access = self.net()?;
        match net::tcp_exchange(&access.grants, &host, port, &send, read_max, timeout) {
            Ok(r) => Ok(hi::tcp::ExchangeResult {
                elapsed_ms: r.elapsed.as_millis().min(u32::MAX as u128) as u32,
                received: r.received,
            }),
            Err(e) => {
                if let NetFailure::NotGranted(m) = &e {
                    tracing::warn!(event = "plugin.net_denied", plugin = &*label, "{m}");
                }
                Err(to_wit_net(e))
            }
        }
    }
}

fn authz_linker(engine: &Engine) -> anyhow::Result<Linker<CallCtx>> {
    let mut linker = Linker::new(engine);
    authz_bindings::AuthzPolicy::add_to_linker::<CallCtx, HasSelf<CallCtx>>(&mut linker, |c| c)
        .map_err(|e| anyhow!("{e:#}"))?;
    Ok(linker)
}

fn health_linker(engine: &Engine) -> anyhow::Result<Linker<CallCtx>> {
    let mut linker = Linker::new(engine);
    health_bindings::HealthCheck::add_to_linker::<CallCtx, HasSelf<CallCtx>>(&mut linker, |c| c)
        .map_err(|e| anyhow!("{e:#}"))?;
    Ok(linker)
}

/// Which known interface a component exports, from its export names. A major or (for 0.x)
/// minor version other than ours is named in the error.
pub(crate) fn detect_world(engine: &Engine, component: &Component) -> anyhow::Result<World> {
    let ty = component.component_type();
    let names: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    for name in &names {
        for (prefix, world) in [
            ("nimbus:authz/policy@", World::Authz),
            ("nimbus:health/check@", World::Health),
        ] {
            if let Some(version) = name.strip_prefix(prefix) {
                if version.starts_with("0.1.") {
                    return Ok(world);
                }
                anyhow::bail!(
                    "the component exports {name}, but this Nimbus supports {} (0.1.x); \
                     rebuild the plugin against wit/{}/0.1.0",
                    world.name(),
                    if world == World::Authz {
                        "authz"
                    } else {
                        "health"
                    }
                );
            }
        }
    }
    anyhow::bail!(
        "the component implements no Nimbus plugin world: it exports [{}], expected \
         nimbus:authz/policy@0.1.x ({AUTHZ_WORLD}) or nimbus:health/check@0.1.x ({HEALTH_WORLD})",
        names.join(", ")
    )
}

/// A component ready to instantiate: imports resolved against its world's host functions and
/// exports type-checked.
#[derive(Clone)]
pub(crate) enum Prepared {
    Authz(AuthzPre),
    Health(health_bindings::HealthCheckPre<CallCtx>),
}

/// An authz policy ready to instantiate, with the index of its `decide` export, whose type was
/// checked once at load (see [`decide_func`]).
#[derive(Clone)]
pub(crate) struct AuthzPre {
    pre: InstancePre<CallCtx>,
    decide: ComponentExportIndex,
    /// Whether the component imports `nimbus:host/clock`: without it, its decisions depend on
    /// the request and the slot's config alone (see `memo`).
    reads_clock: bool,
}

/// `nimbus:authz/types.request`, borrowed from the host's [`nimbus_core::authz::AuthzRequest`]:
/// the call lowers straight from the server's request instead of first cloning it into the
/// bindings' owned types.
#[derive(ComponentType, Lower)]
#[component(record)]
struct RequestRef<'a> {
    principal: PrincipalRef<'a>,
    action: &'a str,
    resource: ResourceRefRef<'a>,
    context: &'a [(String, String)],
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct PrincipalRef<'a> {
    id: &'a str,
    kind: az::PrincipalKind,
    #[component(name = "tenant-id")]
    tenant_id: &'a str,
    grants: &'a [String],
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct ResourceRefRef<'a> {
    #[component(name = "tenant-id")]
    tenant_id: &'a str,
    kind: az::ResourceKind,
    name: Option<&'a str>,
}

/// `nimbus:authz/types.decision` as a call returns it: its lists stay in the guest's memory
/// until [`read_answer`] has checked their lengths, so an answer of millions of entries is
/// refused by its length in microseconds instead of being copied first (outside the call's
/// deadline, which ends when the guest returns).
#[derive(ComponentType, Lift)]
#[component(record)]
struct DecisionInGuest {
    allow: bool,
    #[component(name = "policy-ids")]
    policy_ids: WasmList<WasmStr>,
    reasons: WasmList<WasmStr>,
}

/// `nimbus:authz/types.error`, its message left in the guest's memory (see [`DecisionInGuest`]).
#[derive(ComponentType, Lift)]
#[component(variant)]
enum ErrorInGuest {
    #[component(name = "invalid-config")]
    InvalidConfig(WasmStr),
    #[component(name = "invalid-request")]
    InvalidRequest(WasmStr),
    #[component(name = "other")]
    Other(WasmStr),
}

type Answer = Result<DecisionInGuest, ErrorInGuest>;

type DecideFunc<'a> = TypedFunc<(RequestRef<'a>,), (Answer,)>;

/// The `decide` function of a fresh instance of `pre`.
fn decide_func<'a>(
    store: &mut Store<CallCtx>,
    pre: &AuthzPre,
    instance: &wasmtime::component::Instance,
) -> wasmtime::Result<DecideFunc<'a>> {
    let func = instance
        .get_func(&mut *store, pre.decide)
        .ok_or_else(|| anyhow::anyhow!("the component has no decide function"))?;
    // SAFETY: `pre.decide` indexes the `decide` export of the component `pre` instantiates, and
    // `prepare` type-checked that export against exactly this signature (`Func::typed` in
    // `trial_instantiate`) before the `AuthzPre` was handed out; every instance of one
    // component has the same types. This skips repeating that check on every call.
    #[allow(unsafe_code)]
    Ok(unsafe { DecideFunc::new_unchecked(func) })
}

impl Prepared {
    /// Whether this is an authorization policy whose decision is a function of the request
    /// (and the slot's config): one that cannot read the time. Its world offers it nothing
    /// else that changes from call to call (no network, no WASI), and each call gets a fresh
    /// instance.
    pub fn decides_from_the_request_alone(&self) -> bool {
        matches!(self, Prepared::Authz(pre) if !pre.reads_clock)
    }

    pub fn world(&self) -> World {
        match self {
            Prepared::Authz(_) => World::Authz,
            Prepared::Health(_) => World::Health,
        }
    }
}

/// Links `component` for its world; errors say which import the world does not offer.
pub(crate) fn prepare(engine: &Engine, component: &Component) -> anyhow::Result<Prepared> {
    let world = detect_world(engine, component)?;
    let imports: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .collect();
    let offered: &[&str] = match world {
        World::Authz => &[
            "nimbus:host/log@",
            "nimbus:host/clock@",
            "nimbus:host/config@",
        ],
        World::Health => &[
            "nimbus:host/log@",
            "nimbus:host/clock@",
            "nimbus:host/config@",
            "nimbus:host/http@",
            "nimbus:host/tcp@",
            "nimbus:host/network-types@",
        ],
    };
    // Host interfaces exist at 0.1.x only: name a newer one plainly rather than let the linker
    // report a "wrong type".
    if let Some(newer) = imports
        .iter()
        .find(|i| i.starts_with("nimbus:host/") && !i.contains("@0.1."))
    {
        anyhow::bail!(
            "the component imports {newer}, but this server offers nimbus:host interfaces at \
             0.1.x only; rebuild the plugin against nimbus:host@0.1.0 (wit/ in the Nimbus tree)"
        );
    }
    let extra: Vec<&String> = imports
        .iter()
        .filter(|i| !offered.iter().any(|o| i.starts_with(o)) && !is_types_import(i, world))
        .collect();
    if !extra.is_empty() {
        anyhow::bail!(
            "the component implements {} but imports {}, which that world does not offer \
             (plugins get no ambient authority)",
            world.name(),
            extra
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let host_mismatch = |e: wasmtime::Error| {
        anyhow!(
            "its imports do not match what this server offers for {} (the functions of \
             nimbus:host@0.1.0 in wit/; a function the component expects is missing or has \
             another type): {e:#}",
            world.name()
        )
    };
    let result = match world {
        World::Authz => {
            let pre = authz_linker(engine)?
                .instantiate_pre(component)
                .map_err(host_mismatch)?;
            // The bindings check that the policy interface and its `decide` function exist.
            authz_bindings::AuthzPolicyPre::new(pre.clone()).and_then(|_| {
                let interface = component
                    .component_type()
                    .exports(engine)
                    .map(|(n, _)| n.to_string())
                    .find(|n| n.starts_with("nimbus:authz/policy@"))
                    .ok_or_else(|| anyhow::anyhow!("no nimbus:authz/policy export"))?;
                let decide = component
                    .get_export_index(None, &interface)
                    .and_then(|i| component.get_export_index(Some(&i), "decide"))
                    .ok_or_else(|| anyhow::anyhow!("no {interface}#decide export"))?;
                Ok(Prepared::Authz(AuthzPre {
                    pre,
                    decide,
                    reads_clock: imports.iter().any(|i| i.starts_with("nimbus:host/clock@")),
                }))
            })
        }
        World::Health => {
            let pre = health_linker(engine)?
                .instantiate_pre(component)
                .map_err(host_mismatch)?;
            health_bindings::HealthCheckPre::new(pre).map(Prepared::Health)
        }
    };
    let prepared = result
        .map_err(|e| anyhow!("{e:#}"))
        .with_context(|| format!("the component does not match {}", world.name()))?;
    // The largest limits any slot may set: what cannot start within them can serve no slot.
    // Each slot checks its own limits when it loads the plugin (`check_starts_within`).
    let ceiling = EffectiveLimits {
        timeout: Duration::from_secs(1),
        fuel: TRIAL_FUEL,
        memory_bytes: (crate::config::MAX_MEMORY_MIB as usize) << 20,
    };
    match trial_instantiate(engine, &prepared, &ceiling) {
        Ok(()) => Ok(prepared),
        Err(TrialFailure::Mismatch(e)) => {
            Err(e.context(format!("the component does not match {}", world.name())))
        }
        Err(TrialFailure::Limit(failure)) => anyhow::bail!(
            "the component cannot start even within the largest limits a slot may have \
             ({} MiB of memory, {TRIAL_FUEL} fuel, 1 s): it {}",
            crate::config::MAX_MEMORY_MIB,
            start_failure(&failure)
        ),
    }
}

/// Fuel for a trial instantiation at install: start-up code (data segments, start functions)
/// must fit in it whatever the slot.
const TRIAL_FUEL: u64 = 1_000_000_000;

/// What went wrong starting an instance, as the end of a sentence starting "it ".
fn start_failure(failure: &CallFailure) -> String {
    match failure {
        CallFailure::Memory(m) => format!("needs more memory to start than allowed ({m})"),
        CallFailure::Fuel => "ran out of fuel in its start-up code".into(),
        CallFailure::Timeout => "ran past the deadline in its start-up code".into(),
        CallFailure::Trap(m) => format!("trapped in its start-up code: {m}"),
        CallFailure::Instantiate(m) | CallFailure::Malformed(m) => {
            format!("could not be instantiated: {m}")
        }
    }
}

/// Why a trial instantiation failed.
pub(crate) enum TrialFailure {
    /// The component's exports do not have the world's types.
    Mismatch(anyhow::Error),
    /// Starting it ran into a limit (memory, fuel, deadline) or trapped.
    Limit(CallFailure),
}

/// Instantiates once under `limits`: this type-checks the exported functions against the
/// world (linking alone checks only their names) and runs any start function.
fn trial_instantiate(
    engine: &Engine,
    prepared: &Prepared,
    limits: &EffectiveLimits,
) -> Result<(), TrialFailure> {
    let ctx = CallCtx::new(Arc::from("trial"), Arc::new(Vec::new()), None, limits);
    let mut store = new_store(engine, ctx, limits);
    let instance = match prepared {
        Prepared::Authz(pre) => pre.pre.instantiate(&mut store).map(Some),
        Prepared::Health(pre) => pre.instantiate(&mut store).map(|_| None),
    };
    let instance = match instance {
        Ok(i) => i,
        Err(e) => {
            return Err(match classify(e, store.data()) {
                // Not a trap: the pool or the linker refused it.
                CallFailure::Malformed(m) => TrialFailure::Limit(CallFailure::Instantiate(m)),
                other => TrialFailure::Limit(other),
            });
        }
    };
    if let (Some(instance), Prepared::Authz(pre)) = (instance, prepared) {
        // The one full type check of `decide`; calls rely on it (see `decide_func`).
        let func = instance.get_func(&mut store, pre.decide).ok_or_else(|| {
            TrialFailure::Mismatch(anyhow!("the component has no decide function"))
        })?;
        func.typed::<(RequestRef<'_>,), (Answer,)>(&store)
            .map_err(|e| TrialFailure::Mismatch(anyhow!("{e:#}")))?;
    }
    Ok(())
}

/// Checks that a prepared plugin starts within a slot's `limits` (memory for its initial
/// state, fuel and time for its start-up code): a plugin that cannot would fail every call.
pub(crate) fn check_starts_within(
    engine: &Engine,
    prepared: &Prepared,
    limits: &EffectiveLimits,
) -> Result<(), String> {
    match trial_instantiate(engine, prepared, limits) {
        Ok(()) => Ok(()),
        Err(TrialFailure::Limit(failure)) => Err(format!("it {}", start_failure(&failure))),
        Err(TrialFailure::Mismatch(e)) => Err(format!("{e:#}")),
    }
}

/// The types interfaces of a world's own package are implicit imports of its exports.
fn is_types_import(name: &str, world: World) -> bool {
    match world {
        World::Authz => name.starts_with("nimbus:authz/types@0.1."),
        World::Health => name.starts_with("nimbus:health/types@0.1."),
    }
}

/// Why a call produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallFailure {
    Trap(String),
    Timeout,
    Fuel,
    Memory(String),
    Instantiate(String),
    Malformed(String),
}

impl CallFailure {
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Trap(_) => "trap",
            CallFailure::Timeout => "timeout",
            CallFailure::Fuel => "fuel",
            CallFailure::Memory(_) => "memory",
            CallFailure::Instantiate(_) => "instantiate",
            CallFailure::Malformed(_) => "malformed",
        }
    }

    pub fn message(&self) -> String {
        match self {
            CallFailure::Trap(m) => format!("trapped: {m}"),
            CallFailure::Timeout => "ran past its deadline".into(),
            CallFailure::Fuel => "ran out of fuel".into(),
            CallFailure::Memory(m) => m.clone(),
            CallFailure::Instantiate(m) => format!("could not be instantiated: {m}"),
            CallFailure::Malformed(m) => format!("returned a malformed result: {m}"),
        }
    }
}

fn classify(err: wasmtime::Error, ctx: &CallCtx) -> CallFailure {
    if let Some(m) = &ctx.limiter.hit {
        return CallFailure::Memory(m.clone());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallFailure::Timeout,
        Some(Trap::OutOfFuel) => CallFailure::Fuel,
        Some(t) => CallFailure::Trap(t.to_string()),
        // Errors that are not traps come from lifting the result (invalid discriminant, bad
        // UTF-8, out-of-bounds pointer): the plugin's answer was garbage.
        None => CallFailure::Malformed(format!("{err:#}")),
    }
}

fn new_store(engine: &Engine, ctx: CallCtx, limits: &EffectiveLimits) -> Store<CallCtx> {
    let mut store = Store::new(engine, ctx);
    store.limiter(|c| &mut c.limiter);
    // Fuel and the memory limit bound the work; the epoch deadline bounds the wall time, which
    // also covers time spent in host calls once the guest resumes.
    let _ = store.set_fuel(limits.fuel);
    store.set_epoch_deadline(crate::engine::ticks_for(limits.timeout));
    store.epoch_deadline_trap();
    store
}

/// Longest string, and most list entries, a plugin may put in an answer.
const MAX_ANSWER_STRING: usize = 4096;
const MAX_ANSWER_ITEMS: usize = 32;

/// Host-side mirror of `nimbus:authz/types.error`.
pub(crate) enum PolicyError {
    InvalidConfig(String),
    InvalidRequest(String),
    Other(String),
}

pub(crate) fn call_authz(
    engine: &Engine,
    prepared: &Prepared,
    ctx: CallCtx,
    limits: &EffectiveLimits,
    request: &nimbus_core::authz::AuthzRequest,
) -> Result<Result<nimbus_core::authz::Decision, PolicyError>, CallFailure> {
    let Prepared::Authz(pre) = prepared else {
        return Err(CallFailure::Instantiate(
            "the slot holds a non-authz component".into(),
        ));
    };
    let mut store = new_store(engine, ctx, limits);
    let decide = match pre
        .pre
        .instantiate(&mut store)
        .and_then(|instance| decide_func(&mut store, pre, &instance))
    {
        Ok(f) => f,
        Err(e) => {
            return Err(match classify(e, store.data()) {
                CallFailure::Malformed(m) => CallFailure::Instantiate(m),
                other => other,
            })
        }
    };
    let (answer,) = decide
        .call(&mut store, (request_ref(request),))
        .map_err(|e| classify(e, store.data()))?;
    read_answer(&mut store, answer)
}

/// Checks a policy's answer and copies it out of the guest's memory: at most
/// [`MAX_ANSWER_ITEMS`] entries per list, each of 1 to [`MAX_ANSWER_STRING`] bytes of UTF-8, and
/// an error's message within [`MAX_ANSWER_STRING`] bytes; anything else is malformed. Lengths
/// are checked before anything is copied.
fn read_answer(
    store: &mut Store<CallCtx>,
    answer: Answer,
) -> Result<Result<nimbus_core::authz::Decision, PolicyError>, CallFailure> {
    let message = |store: &Store<CallCtx>, m: WasmStr| -> Result<String, CallFailure> {
        let text = m
            .to_str(store)
            .map_err(|e| CallFailure::Malformed(format!("error message: {e:#}")))?;
        if text.len() > MAX_ANSWER_STRING {
            return Err(CallFailure::Malformed(format!(
                "the error's message is {} bytes (at most {MAX_ANSWER_STRING})",
                text.len()
            )));
        }
        Ok(text.into_owned())
    };
    match answer {
        Ok(d) => Ok(Ok(nimbus_core::authz::Decision {
            allow: d.allow,
            policy_ids: read_strings(store, "policy-ids", &d.policy_ids)?,
            reasons: read_strings(store, "reasons", &d.reasons)?,
        })),
        Err(ErrorInGuest::InvalidConfig(m)) => {
            Ok(Err(PolicyError::InvalidConfig(message(store, m)?)))
        }
        Err(ErrorInGuest::InvalidRequest(m)) => {
            Ok(Err(PolicyError::InvalidRequest(message(store, m)?)))
        }
        Err(ErrorInGuest::Other(m)) => Ok(Err(PolicyError::Other(message(store, m)?))),
    }
}

fn read_strings(
    store: &mut Store<CallCtx>,
    field: &str,
    items: &WasmList<WasmStr>,
) -> Result<Vec<String>, CallFailure> {
    if items.len() == 0 {
        return Err(CallFailure::Malformed(format!("decision.{field} is empty")));
    }
    if items.len() > MAX_ANSWER_ITEMS {
        return Err(CallFailure::Malformed(format!(
            "decision.{field} has {} entries (at most {MAX_ANSWER_ITEMS})",
            items.len()
        )));
    }
    let mut read = Vec::with_capacity(items.len());
    for i in 0..items.len() {
        let malformed =
            |e: wasmtime::Error| CallFailure::Malformed(format!("decision.{field}[{i}]: {e:#}"));
        let item = match items.get(&mut *store, i) {
            Some(item) => item.map_err(malformed)?,
            None => break,
        };
        let text = item.to_str(&*store).map_err(malformed)?;
        if text.is_empty() || text.len() > MAX_ANSWER_STRING {
            return Err(CallFailure::Malformed(format!(
                "decision.{field} has an entry of {} bytes (1 to {MAX_ANSWER_STRING})",
                text.len()
            )));
        }
        read.push(text.into_owned());
    }
    Ok(read)
}

fn request_ref(r: &nimbus_core::authz::AuthzRequest) -> RequestRef<'_> {
    use nimbus_core::authz::{PrincipalKind, ResourceKind};
    RequestRef {
        principal: PrincipalRef {
            id: &r.principal.id,
            kind: match r.principal.kind {
                PrincipalKind::Token => az::PrincipalKind::Token,
                PrincipalKind::ApiKey => az::PrincipalKind::ApiKey,
                PrincipalKind::Workload => az::PrincipalKind::Workload,
            },
            tenant_id: &r.principal.tenant_id,
            grants: &r.principal.grants,
        },
        action: &r.action,
        resource: ResourceRefRef {
            tenant_id: &r.resource.tenant_id,
            kind: match r.resource.kind {
                ResourceKind::Tenant => az::ResourceKind::Tenant,
                ResourceKind::Service => az::ResourceKind::Service,
                ResourceKind::Sandbox => az::ResourceKind::Sandbox,
                ResourceKind::Session => az::ResourceKind::Session,
                ResourceKind::Credential => az::ResourceKind::Credential,
                ResourceKind::Audit => az::ResourceKind::Audit,
            },
            name: r.resource.name.as_deref(),
        },
        context: &r.context,
    }
}

/// Host-side mirror of the health world's answer.
pub(crate) enum HealthAnswer {
    Report {
        healthy: bool,
        detail: String,
        latency_ms: Option<u32>,
    },
    Error(String),
}

pub(crate) fn call_health(
    engine: &Engine,
    prepared: &Prepared,
    ctx: CallCtx,
    limits: &EffectiveLimits,
    target: &crate::health::HealthTarget,
) -> Result<HealthAnswer, CallFailure> {
    let Prepared::Health(pre) = prepared else {
        return Err(CallFailure::Instantiate(
            "the slot holds a non-health component".into(),
        ));
    };
    let mut store = new_store(engine, ctx, limits);
    let instance = match pre.instantiate(&mut store) {
        Ok(i) => i,
        Err(e) => {
            return Err(match classify(e, store.data()) {
                CallFailure::Malformed(m) => CallFailure::Instantiate(m),
                other => other,
            })
        }
    };
    let wit_target = to_wit_target(target);
    let answer = instance
        .nimbus_health_check()
        .call_check(&mut store, &wit_target)
        .map_err(|e| classify(e, store.data()))?;
    Ok(match answer {
        Ok(r) => {
            if r.detail.is_empty() || r.detail.len() > MAX_ANSWER_STRING {
                return Err(CallFailure::Malformed(format!(
                    "report.detail is {} bytes (1 to {MAX_ANSWER_STRING})",
                    r.detail.len()
                )));
            }
            HealthAnswer::Report {
                healthy: r.healthy,
                detail: r.detail,
                latency_ms: r.latency_ms,
            }
        }
        Err(hz::Error::InvalidTarget(m)) => HealthAnswer::Error(format!("invalid target: {m}")),
        Err(hz::Error::UnsupportedProbe(m)) => {
            HealthAnswer::Error(format!("unsupported probe: {m}"))
        }
        Err(hz::Error::Other(m)) => HealthAnswer::Error(m),
    })
}

fn to_wit_target(t: &crate::health::HealthTarget) -> hz::Target {
    use crate::health::{HealthAuth, HealthProbe};
    let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
    hz::Target {
        endpoint: t.endpoint.clone(),
        auth: match &t.auth {
            HealthAuth::None => hz::Auth::None,
            HealthAuth::Bearer(token) => hz::Auth::Bearer(token.clone()),
            HealthAuth::Basic { username, password } => hz::Auth::Basic(hz::BasicCredentials {
                username: username.clone(),
                password: password.clone(),
            }),
            HealthAuth::Header { name, value } => hz::Auth::Header(hz::Header {
                name: name.clone(),
                value: value.clone(),
            }),
        },
        probe: match &t.probe {
            HealthProbe::Http(p) => hz::Probe::Http(hz::HttpProbe {
                path: p.path.clone(),
                method: p.method.clone(),
                expect_status: hz::StatusRange {
                    min: p.status_min,
                    max: p.status_max,
                },
                timeout_ms: ms(p.timeout),
            }),
            HealthProbe::Tcp(p) => hz::Probe::Tcp(hz::TcpProbe {
                timeout_ms: ms(p.timeout),
                send: p.send.clone(),
                expect: p.expect.clone(),
            }),
        },
    }
}

/// Compiles a component from its bytes. Compiled components are remembered by sha256 for the
/// life of the process (the engine is per process too), so that the same bytes are compiled once.
pub(crate) fn compile(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    static COMPILED: std::sync::Mutex<Vec<(String, Component)>> = std::sync::Mutex::new(Vec::new());
    let sha = crate::catalog::sha256_hex(bytes);
    if let Ok(memo) = COMPILED.lock() {
        if let Some((_, c)) = memo.iter().find(|(s, _)| *s == sha) {
            return Ok(c.clone());
        }
    }
    let component = Component::new(engine, bytes).map_err(|e| anyhow!("{e:#}"))?;
    if let Ok(mut memo) = COMPILED.lock() {
        // Bounded: a long-running server installs few plugins, but never grows without limit.
        if memo.len() >= 64 {
            memo.remove(0);
        }
        memo.push((sha, component.clone()));
    }
    Ok(component)
}

/// Ahead-of-time compiled code of `component`, for the cache.
pub(crate) fn serialize(component: &Component) -> anyhow::Result<Vec<u8>> {
    component.serialize().map_err(|e| anyhow!("{e:#}"))
}

/// Loads code produced by [`precompile`] with this engine.
pub(crate) fn load_precompiled(engine: &Engine, cwasm: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: wasmtime trusts precompiled code to be its own output. These bytes are read from
    // the plugin cache under the server's data directory (created 0700, written only by Nimbus
    // from components it compiled itself), and the caller has checked them against the sha256
    // recorded when they were written, so they are exactly what this engine produced (the
    // engine also rejects code from an incompatible build).
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, cwasm) };
    component.map_err(|e| anyhow!("{e:#}"))
}

/// A benchmark floor: instantiates an empty component (see the authz bench's `floors.rs`) and
/// calls it under the same store setup as a plugin call.
pub(crate) struct FloorRunner {
    engine: Engine,
    pre: wasmtime::component::InstancePre<CallCtx>,
    limits: EffectiveLimits,
    /// The `decide` export, found once by name as a policy's is at load.
    decide: Option<ComponentExportIndex>,
    /// Set once `decide` passed the policy's type check (see [`FloorRunner::run_decide_once`]).
    decide_checked: std::sync::OnceLock<()>,
}

impl FloorRunner {
    pub fn new(engine: &Engine, bytes: &[u8], limits: EffectiveLimits) -> anyhow::Result<Self> {
        let component = compile(engine, bytes)?;
        let linker: Linker<CallCtx> = Linker::new(engine);
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("{e:#}"))?;
        Ok(FloorRunner {
            engine: engine.clone(),
            pre,
            limits,
            decide: component.get_export_index(None, "decide"),
            decide_checked: std::sync::OnceLock::new(),
        })
    }

    /// A fresh store (with the per-call setup of a plugin call) and an instance in it.
    fn instantiate(&self) -> anyhow::Result<(Store<CallCtx>, wasmtime::component::Instance)> {
        let ctx = CallCtx::new(Arc::from("floor"), Arc::new(Vec::new()), None, &self.limits);
        let mut store = new_store(&self.engine, ctx, &self.limits);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("{e:#}"))?;
        Ok((store, instance))
    }

    /// For a component exporting `run: func()`.
    pub fn run_once(&self) -> anyhow::Result<()> {
        let (mut store, instance) = self.instantiate()?;
        let run = instance
            .get_typed_func::<(), ()>(&mut store, "run")
            .map_err(|e| anyhow!("{e:#}"))?;
        run.call(&mut store, ()).map_err(|e| anyhow!("{e:#}"))?;
        Ok(())
    }

    /// For a component exporting `decide: func(request: request)` (the authz request type, no
    /// result): calls it with `request`, lowered by the host exactly as for a policy. What any
    /// component that receives an authorization request costs before it answers.
    pub fn run_request_once(
        &self,
        request: &nimbus_core::authz::AuthzRequest,
    ) -> anyhow::Result<()> {
        let (mut store, instance) = self.instantiate()?;
        let decide = instance
            .get_typed_func::<(RequestRef<'_>,), ()>(&mut store, "decide")
            .map_err(|e| anyhow!("{e:#}"))?;
        decide
            .call(&mut store, (request_ref(request),))
            .map_err(|e| anyhow!("{e:#}"))?;
        Ok(())
    }

    /// For a component exporting `decide` typed exactly as `nimbus:authz/policy` has it: asks
    /// it for a decision on `request`, the whole call a policy gets (lowering the request,
    /// lifting the answer) without the slot around it. The export is reached as a policy's is
    /// (by index, its type checked once rather than on every call), so the floor does no work
    /// a policy call skips.
    pub fn run_decide_once(
        &self,
        request: &nimbus_core::authz::AuthzRequest,
    ) -> anyhow::Result<nimbus_core::authz::Decision> {
        let (mut store, instance) = self.instantiate()?;
        let func = self
            .decide
            .and_then(|i| instance.get_func(&mut store, i))
            .ok_or_else(|| anyhow!("the component exports no decide function"))?;
        if self.decide_checked.get().is_none() {
            func.typed::<(RequestRef<'_>,), (Answer,)>(&store)
                .map_err(|e| anyhow!("decide is not typed as a policy's: {e:#}"))?;
            let _ = self.decide_checked.set(());
        }
        // SAFETY: `func` is the `decide` export of an instance of this runner's one component,
        // and that export passed `Func::typed` against exactly this signature above (on this
        // call or an earlier one); every instance of one component has the same types.
        #[allow(unsafe_code)]
        let decide = unsafe { DecideFunc::new_unchecked(func) };
        let (answer,) = decide
            .call(&mut store, (request_ref(request),))
            .map_err(|e| anyhow!("{e:#}"))?;
        match read_answer(&mut store, answer) {
            Ok(Ok(decision)) => Ok(decision),
            Ok(Err(PolicyError::InvalidConfig(m))) => {
                Err(anyhow!("the component answered invalid-config: {m}"))
            }
            Ok(Err(PolicyError::InvalidRequest(m))) => {
                Err(anyhow!("the component answered invalid-request: {m}"))
            }
            Ok(Err(PolicyError::Other(m))) => Err(anyhow!("the component answered an error: {m}")),
            Err(failure) => Err(anyhow!("{}", failure.message())),
        }
    }
}
