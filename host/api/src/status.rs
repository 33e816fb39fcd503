//! What the server can truthfully say about a resource it has not launched (yet).

use chrono::{DateTime, Utc};
use nimbus_core::lifecycle::{DesiredRunState, SandboxState, ServiceState};
use nimbus_core::resource::{
    set_condition, ConditionStatus, Health, Readiness, SandboxStatus, ServiceStatus,
};
use nimbus_core::spec::ServiceBackend;

/// The `Ready` reason of a started sandbox-backed service this server cannot launch yet; the
/// condition will not change by waiting (see `?waitUntil=`).
pub const LAUNCHER_UNAVAILABLE: &str = "LauncherUnavailable";

/// The status of a service after a write, from its backend and desired run state. Keeps the
/// previous conditions (and health, which the health controller owns) so transition times stay
/// true.
pub fn service_status(
    backend: &ServiceBackend,
    desired: DesiredRunState,
    generation: i64,
    previous: Option<&ServiceStatus>,
    now: DateTime<Utc>,
) -> ServiceStatus {
    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    let health = previous.map(|p| p.health).unwrap_or(Health::Unknown);
    let (state, health) = match backend {
        ServiceBackend::Sandbox { .. } => {
            let (reason, message) = match desired {
                DesiredRunState::Stopped => ("Stopped", "the service is not started; start it to launch its sandbox".to_string()),
                DesiredRunState::Running => (
                    LAUNCHER_UNAVAILABLE,
                    "the service is started (desired state running), but this server does not launch service sandboxes yet; the desired state is recorded".to_string(),
                ),
            };
            set_condition(
                &mut conditions,
                "Ready",
                ConditionStatus::False,
                reason,
                message,
                now,
                generation,
            );
            (ServiceState::Stopped, Health::Unknown)
        }
        ServiceBackend::BuiltIn { provider } => {
            set_condition(
                &mut conditions,
                "Ready",
                ConditionStatus::False,
                "Declared",
                format!("built-in provider {} is a declared definition; this server does not run built-in providers yet", serde_json::to_value(provider).unwrap_or_default().as_str().unwrap_or("")),
                now,
                generation,
            );
            (ServiceState::Declared, Health::Unknown)
        }
        ServiceBackend::External { .. } => {
            if !conditions.iter().any(|c| c.kind == "Ready") {
                set_condition(
                    &mut conditions,
                    "Ready",
                    ConditionStatus::Unknown,
                    "NotChecked",
                    "the endpoint has not been health-checked yet",
                    now,
                    generation,
                );
            }
            (ServiceState::Declared, health)
        }
    };
    ServiceStatus {
        lifecycle_state: state,
        readiness: Readiness::NotReady,
        health,
        observed_generation: generation,
        desired_state: desired,
        conditions,
    }
}

/// A sandbox just accepted: pending until a driver takes it.
pub fn pending_sandbox_status(
    generation: i64,
    now: DateTime<Utc>,
    reason: &str,
    message: &str,
) -> SandboxStatus {
    let mut conditions = Vec::new();
    set_condition(
        &mut conditions,
        "Ready",
        ConditionStatus::False,
        reason,
        message,
        now,
        generation,
    );
    SandboxStatus {
        lifecycle_state: SandboxState::Pending,
        readiness: Readiness::NotReady,
        observed_generation: generation,
        conditions,
        endpoints: vec![],
        exit_code: None,
    }
}
