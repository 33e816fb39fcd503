//! Controllers: level-triggered loops that move what the store says should be toward what the
//! host runs, one step at a time, writing status back.
//!
//! - [`sandboxes::SandboxController`] launches, watches, stops and tears down sandboxes through
//!   `nimbus-runtime`, and adopts running sandboxes after a server restart.
//! - [`health::HealthController`] checks `external` services through the health plugins.
//! - [`services::ServiceManager`] launches and supervises the sandboxes of started
//!   sandbox-backed services, through the sandbox controller.

pub mod health;
pub mod sandboxes;
pub mod services;
