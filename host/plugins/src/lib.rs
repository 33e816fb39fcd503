//! nimbus-plugins: the Nimbus plugin host.
//!
//! Plugins are WebAssembly components implementing the WIT worlds in `wit/`
//! (`nimbus:authz/authz-policy@0.1.0`, `nimbus:health/health-check@0.1.0`) and importing only
//! what `nimbus:host@0.1.0` offers their slot. One wasmtime engine per process (pooling
//! allocator, epoch interruption, fuel); one `InstancePre` per loaded plugin; a fresh store per
//! call, bounded by a deadline, fuel and a memory limit from config. A plugin that traps, runs
//! out of time, fuel or memory, or answers garbage is logged as `plugin.failed`, counted, and —
//! for authorization — denies.
//!
//! The server uses [`PluginsConfig`] (the `[plugins]` table of nimbus.toml), [`PluginHost::open`],
//! [`PluginHost::authorizer`] and [`PluginHost::check_health`]; the CLI uses [`PluginStore`].
//! No wasmtime type appears in this API.

mod catalog;
mod config;
mod engine;
mod health;
mod host;
mod memo;
mod metrics;
mod net;
mod wasm;

pub use catalog::{check_component_size, PluginInfo, VerifyReport, MAX_COMPONENT_BYTES};
pub use config::{
    ConfigValue, HealthSlots, Limits, PluginsConfig, SlotConfig, MAX_MEMORY_MIB, MAX_TIMEOUT_MS,
};
pub use health::{HealthAuth, HealthOutcome, HealthProbe, HealthTarget, HttpProbe, TcpProbe};
pub use host::{bench, world_text, PluginHost, PluginStore};
pub use metrics::{render_durations, render_prometheus, DurationSample, MetricSample};
pub use wasm::{AUTHZ_WORLD, HEALTH_WORLD};
