//! The status a write through the API gives a resource before a controller has looked at it
//! (a service started, stopped or restarted; a sandbox accepted or asked to stop).

use chrono::{DateTime, Utc};
use nimbus_core::lifecycle::{DesiredRunState, SandboxState, ServiceState};
use nimbus_core::resource::{
    set_condition, ConditionStatus, Health, Readiness, SandboxStatus, ServiceStatus,
};
use nimbus_core::spec::{HealthProbe, ServiceBackend};

/// The `Ready` reason of a started sandbox-backed service on a server without a sandbox driver;
/// the condition will not change by waiting (see `?waitUntil=`).
pub const LAUNCHER_UNAVAILABLE: &str = "LauncherUnavailable";

/// The `Ready` reason of a sandbox-backed service while the service manager launches its
/// sandbox.
pub const LAUNCHING: &str = "Launching";

/// The status of a service after a write, from its backend and desired run state. Keeps the
/// previous conditions so transition times stay true, and an external service's checked state
/// (the health controller owns it) while its definition stays the same. `launcher` says
/// whether a service manager runs sandbox-backed services here; it refines what this says on
/// its next pass (within a second).
pub fn service_status(
    backend: &ServiceBackend,
    desired: DesiredRunState,
    generation: i64,
    previous: Option<&ServiceStatus>,
    now: DateTime<Utc>,
    launcher: bool,
) -> ServiceStatus {
    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    let (state, health) = match backend {
        ServiceBackend::Sandbox { .. } if launcher => {
            let was = previous.map_or(ServiceState::Stopped, |p| p.lifecycle_state);
            // Started again, or relabelled, while it runs: it still runs. Likewise while it
            // backs off after its process ended: the manager relaunches it when the backoff
            // says (a restart relaunches at once). A new definition (generation) is not running
            // until the manager has replaced the sandbox.
            let unchanged = previous.filter(|p| {
                p.observed_generation == generation
                    && (p.lifecycle_state == ServiceState::Running
                        || (p.lifecycle_state == ServiceState::Failed
                            && p.desired_state == DesiredRunState::Running))
            });
            if let (DesiredRunState::Running, Some(p)) = (desired, unchanged) {
                return ServiceStatus {
                    desired_state: desired,
                    ..p.clone()
                };
            }
            match desired {
                DesiredRunState::Running => {
                    let message = if was == ServiceState::Running {
                        format!("the service manager is replacing the service's sandbox with one of generation {generation}")
                    } else {
                        "the service manager is launching the service's sandbox".to_string()
                    };
                    set_condition(
                        &mut conditions,
                        "Ready",
                        ConditionStatus::False,
                        LAUNCHING,
                        message,
                        now,
                        generation,
                    );
                    (ServiceState::Starting, Health::Unknown)
                }
                DesiredRunState::Stopped
                    if matches!(was, ServiceState::Stopped | ServiceState::Declared) =>
                {
                    set_condition(
                        &mut conditions,
                        "Ready",
                        ConditionStatus::False,
                        "Stopped",
                        "the service is not started; start it to launch its sandbox",
                        now,
                        generation,
                    );
                    (ServiceState::Stopped, Health::Unknown)
                }
                DesiredRunState::Stopped => {
                    set_condition(
                        &mut conditions,
                        "Ready",
                        ConditionStatus::False,
                        "Stopping",
                        "the service manager is stopping the service's sandbox",
                        now,
                        generation,
                    );
                    (ServiceState::Stopping, Health::Unknown)
                }
            }
        }
        ServiceBackend::Sandbox { .. } => {
            let (reason, message) = match desired {
                DesiredRunState::Stopped => ("Stopped", "the service is not started; start it to launch its sandbox".to_string()),
                DesiredRunState::Running => (
                    LAUNCHER_UNAVAILABLE,
                    "the service is started (desired state running), but this server runs no sandboxes (server.sandbox_driver = \"none\"); the desired state is recorded".to_string(),
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
        ServiceBackend::External { health, .. } => {
            // The health checks own an external service's state (Nimbus does not run it): a
            // start, stop or label edit of the same definition leaves what they last saw.
            if let Some(p) = previous.filter(|p| {
                p.observed_generation == generation && p.lifecycle_state != ServiceState::Declared
            }) {
                return ServiceStatus {
                    desired_state: desired,
                    ..p.clone()
                };
            }
            // New, or a new definition (its endpoint may differ): nothing checked yet.
            let message = if *health == HealthProbe::None {
                "the service declares no health check (health.kind none); this server does not run it"
            } else {
                "the endpoint has not been health-checked yet"
            };
            set_condition(
                &mut conditions,
                "Ready",
                ConditionStatus::Unknown,
                "NotChecked",
                message,
                now,
                generation,
            );
            (ServiceState::Declared, Health::Unknown)
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

/// A restarted sandbox-backed service: whatever ran is being replaced, so it is `starting` (not
/// the `running` of the sandbox that is about to stop) until the manager sees the new one run.
pub fn restarting(status: &mut ServiceStatus, generation: i64, now: DateTime<Utc>) {
    status.lifecycle_state = ServiceState::Starting;
    status.readiness = Readiness::NotReady;
    status.health = Health::Unknown;
    set_condition(
        &mut status.conditions,
        "Ready",
        ConditionStatus::False,
        LAUNCHING,
        "restart requested: the service manager is replacing the service's sandbox",
        now,
        generation,
    );
}

/// Records a stop request on sandbox `r` (`sandboxes.stop`, or the service manager replacing a
/// service's sandbox): `stopping`, or `stopped` at once if it was never launched. Returns the
/// state it is now in; the caller tells the controller to stop a `stopping` one.
pub fn request_sandbox_stop(
    r: &mut nimbus_core::resource::SandboxRecord,
    now: DateTime<Utc>,
) -> Result<SandboxState, nimbus_core::Error> {
    let id = r.id.clone();
    let next = r
        .status
        .lifecycle_state
        .on(nimbus_core::lifecycle::SandboxEvent::StopRequested)
        .map_err(|t| {
            nimbus_core::Error::invalid_transition(
                "sandbox",
                id.as_str(),
                t.from,
                format!("sandbox {id} cannot be stopped while {}", t.from),
            )
        })?;
    if next != r.status.lifecycle_state {
        r.status.lifecycle_state = next;
        r.status.readiness = Readiness::NotReady;
        r.meta.updated_at = now;
        let (reason, message) = if next == SandboxState::Stopped {
            ("Stopped", "stopped before it was launched")
        } else {
            (
                "Stopping",
                "stop requested: SIGTERM now, SIGKILL after the grace period",
            )
        };
        set_condition(
            &mut r.status.conditions,
            "Ready",
            ConditionStatus::False,
            reason,
            message,
            now,
            r.meta.generation,
        );
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox_backend() -> ServiceBackend {
        serde_json::from_value(serde_json::json!({
            "kind": "sandbox",
            "sandbox": {
                "owner": {"kind": "service", "serviceName": "w"},
                "backend": "container",
                "root": {"kind": "rootfs", "path": "/srv/w"},
                "process": {"argv": ["sh"]}
            }
        }))
        .unwrap()
    }

    fn backing_off(generation: i64) -> ServiceStatus {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            "Ready",
            ConditionStatus::False,
            "BackOff",
            "the process exited with code 3; relaunching at 12:00:01 UTC (1 in a row)",
            Utc::now(),
            generation,
        );
        ServiceStatus {
            lifecycle_state: ServiceState::Failed,
            readiness: Readiness::NotReady,
            health: Health::Unhealthy,
            observed_generation: generation,
            desired_state: DesiredRunState::Running,
            conditions,
        }
    }

    #[test]
    fn a_start_or_label_edit_during_a_backoff_leaves_the_backoff_showing() {
        let previous = backing_off(2);
        let after = service_status(
            &sandbox_backend(),
            DesiredRunState::Running,
            2,
            Some(&previous),
            Utc::now(),
            true,
        );
        assert_eq!(after, previous);
        // A new definition is launched anew; a stop stops.
        let replaced = service_status(
            &sandbox_backend(),
            DesiredRunState::Running,
            3,
            Some(&previous),
            Utc::now(),
            true,
        );
        assert_eq!(replaced.lifecycle_state, ServiceState::Starting);
        let stopped = service_status(
            &sandbox_backend(),
            DesiredRunState::Stopped,
            2,
            Some(&previous),
            Utc::now(),
            true,
        );
        assert_eq!(stopped.desired_state, DesiredRunState::Stopped);
        assert_ne!(stopped.lifecycle_state, ServiceState::Failed);
    }
}
