//! The health controller: checks every `external` service on its interval through the
//! configured health plugin and writes what it found into the service's status. Reachable
//! services are `running` and `ready`; unreachable ones `failed` with the check's detail.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use nimbus_core::lifecycle::ServiceState;
use nimbus_core::resource::{set_condition, ConditionStatus, Health, Readiness, ServiceRecord};
use nimbus_core::spec::{self, ExternalAuth, HealthProbe, ServiceBackend};
use nimbus_plugins::{HealthAuth, HealthOutcome, HealthTarget, HttpProbe, PluginHost, TcpProbe};
use nimbus_store::Store;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};

/// How often the controller looks for services that are due.
const TICK: Duration = Duration::from_millis(500);

/// Checks that may run at once, across all services and tenants, in each of the two lanes.
/// Each running check holds a blocking thread and a plugin instance from the pool the
/// authorization policy also draws from, so an unbounded number of slow endpoints must not
/// exhaust either; checks beyond a lane's cap wait for a free permit in it.
const MAX_CONCURRENT_CHECKS: usize = 64;
const MAX_CONCURRENT_SLOW_CHECKS: usize = 32;

/// A service whose latest check took longer than this, or than most of its probe's timeout
/// (see [`slow_after`]), is checked in the slow lane, so that endpoints that hang until their
/// timeout (many at once, in an outage) cannot hold every permit and delay the checks of
/// services that answer. A service returns to the fast lane once a check of it is quick again.
const SLOW_CHECK: Duration = Duration::from_secs(2);

/// How long a check of `target` may take and still count as quick: [`SLOW_CHECK`], or 80% of
/// the probe's timeout if that is shorter (a check that ran into a short timeout is slow too).
fn slow_after(target: &HealthTarget) -> Duration {
    let timeout = match &target.probe {
        nimbus_plugins::HealthProbe::Http(p) => p.timeout,
        nimbus_plugins::HealthProbe::Tcp(p) => p.timeout,
    };
    SLOW_CHECK.min(timeout * 4 / 5)
}

pub struct HealthController {
    store: Store,
    plugins: Arc<PluginHost>,
    /// When each service (by uid) last had its status written by this controller.
    last_written: std::sync::Mutex<HashMap<String, Instant>>,
}

/// How often a failing service's status may be rewritten for a new detail alone (the same
/// health, another message): each write changes its resourceVersion, and a detail can change
/// on every check (an error page with a timestamp).
const REWORD_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// One service's place in the schedule: when its latest check was started, and that check's
/// task (still waiting for a permit, probing, or recording; or finished).
struct Scheduled {
    started: Instant,
    check: AbortHandle,
    /// Whether the latest finished check took longer than [`SLOW_CHECK`] (set by the check).
    slow: Arc<std::sync::atomic::AtomicBool>,
}

/// The two lanes' permits.
struct Lanes {
    fast: Arc<Semaphore>,
    slow: Arc<Semaphore>,
}

impl HealthController {
    pub fn new(store: Store, plugins: Arc<PluginHost>) -> HealthController {
        HealthController {
            store,
            plugins,
            last_written: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Runs until aborted. Every service is scheduled on its own: a check runs in a task of
    /// its own and the loop never waits for one, so a slow endpoint delays only its own
    /// service's next check, never another service's (or tenant's). Aborting this future drops
    /// `checks`, which aborts the checks in flight.
    pub async fn run(self) {
        let this = Arc::new(self);
        let lanes = Lanes {
            fast: Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS)),
            slow: Arc::new(Semaphore::new(MAX_CONCURRENT_SLOW_CHECKS)),
        };
        // Keyed by tenant/name/uid, so a service deleted and created again starts afresh.
        let mut schedule: HashMap<String, Scheduled> = HashMap::new();
        let mut checks = JoinSet::new();
        loop {
            tokio::time::sleep(TICK).await;
            // Reap finished checks so the set does not grow; their results are already written.
            while checks.try_join_next().is_some() {}
            let services = match this.store.services_by_backend_kind("external").await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "health controller could not list services");
                    continue;
                }
            };
            let mut live = HashSet::new();
            for service in services {
                let key = format!(
                    "{}/{}/{}",
                    service.meta.tenant_id, service.name, service.uid
                );
                live.insert(key.clone());
                let Some((target, interval)) = target_of(&service) else {
                    continue;
                };
                let previous = schedule.get(&key);
                if !is_due(previous, interval) {
                    continue;
                }
                // A new service starts in the fast lane.
                let slow = previous.map_or_else(Default::default, |p| p.slow.clone());
                let permits = match slow.load(std::sync::atomic::Ordering::SeqCst) {
                    true => lanes.slow.clone(),
                    false => lanes.fast.clone(),
                };
                let check =
                    checks.spawn(this.clone().check(service, target, permits, slow.clone()));
                let started = Instant::now();
                schedule.insert(
                    key,
                    Scheduled {
                        started,
                        check,
                        slow,
                    },
                );
            }
            // Forget deleted services. A check of one still in flight finishes on its own; its
            // result is then not recorded (the service is gone).
            schedule.retain(|k, _| live.contains(k));
        }
    }

    /// Checks one service once, when a permit of its lane is free, records the outcome, and
    /// notes in `slow` which lane its next check goes to.
    async fn check(
        self: Arc<Self>,
        service: ServiceRecord,
        target: HealthTarget,
        permits: Arc<Semaphore>,
        slow: Arc<std::sync::atomic::AtomicBool>,
    ) {
        // The semaphore is never closed; should it be, there is nothing to do.
        let Ok(_permit) = permits.acquire_owned().await else {
            return;
        };
        let began = Instant::now();
        let quick_within = slow_after(&target);
        let outcome = self.plugins.check_health(target).await;
        slow.store(
            began.elapsed() > quick_within,
            std::sync::atomic::Ordering::SeqCst,
        );
        // A check cut short by the server's stop says nothing about the service.
        if self.plugins.is_stopping() {
            return;
        }
        self.record(&service, &outcome).await;
    }

    async fn record(&self, service: &ServiceRecord, outcome: &HealthOutcome) {
        let (health, state, readiness, status, reason) = if outcome.healthy {
            (
                Health::Healthy,
                ServiceState::Running,
                Readiness::Ready,
                ConditionStatus::True,
                "Healthy",
            )
        } else {
            (
                Health::Unhealthy,
                ServiceState::Failed,
                Readiness::NotReady,
                ConditionStatus::False,
                "Unhealthy",
            )
        };
        let message = format!("{} (checked by {})", outcome.detail, outcome.checked_by);
        // A check runs for up to its timeout: compare with the service as it is now, not as it
        // was when the check started. A result about another definition (replaced, or updated
        // to another endpoint) says nothing about this one.
        let Ok(Some(fresh)) = self
            .store
            .get_service(&service.meta.tenant_id, &service.name)
            .await
        else {
            return;
        };
        if fresh.uid != service.uid || fresh.meta.generation != service.meta.generation {
            return;
        }
        let current = &fresh.status;
        // Every status write changes the service's resourceVersion, which a client's labels
        // read-modify-write checks: a service is rewritten when its health changes, not for a
        // detail that differs from check to check (a latency). A failing one's new detail is
        // written too, so that its condition says what fails now, but at most once in
        // REWORD_AT_MOST_EVERY (an error page may carry a timestamp).
        let same_health = current.health == health
            && current.lifecycle_state == state
            && current
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.reason == reason);
        let same_message = current
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.message == message);
        if same_health && (outcome.healthy || same_message || self.written_lately(&service.uid)) {
            return;
        }
        let health_changed = current.health != health;
        let uid = service.uid.clone();
        let result = self
            .store
            .update_service(
                &service.meta.tenant_id,
                &service.name,
                // Refused if the definition changed since the check started (its endpoint may).
                Some(service.meta.generation),
                |r| {
                    // The service was replaced or its backend changed meanwhile: drop this result.
                    if r.uid != uid || r.backend.kind() != "external" {
                        return Err(nimbus_core::Error::conflict(
                            "service",
                            r.name.as_str(),
                            "changed during the check",
                        ));
                    }
                    let now = Utc::now();
                    r.status.health = health;
                    r.status.lifecycle_state = state;
                    r.status.readiness = readiness;
                    set_condition(
                        &mut r.status.conditions,
                        "Ready",
                        status,
                        reason,
                        message.clone(),
                        now,
                        r.meta.generation,
                    );
                    Ok(())
                },
                None,
            )
            .await;
        if result.is_ok() {
            self.note_written(&service.uid);
        }
        match result {
            Ok(_) if health_changed => {
                tracing::info!(tenant = %service.meta.tenant_id, service = %service.name, healthy = outcome.healthy, detail = %outcome.detail, "external service health changed")
            }
            Ok(_) => {
                tracing::debug!(tenant = %service.meta.tenant_id, service = %service.name, detail = %outcome.detail, "external service still failing, for another reason")
            }
            Err(e) => {
                tracing::debug!(service = %service.name, error = %e, "health result not recorded")
            }
        }
    }
}

impl HealthController {
    /// Whether the service's status was written within [`REWORD_AT_MOST_EVERY`], so that a new
    /// detail alone must wait.
    fn written_lately(&self, uid: &str) -> bool {
        self.last_written.lock().is_ok_and(|written| {
            written
                .get(uid)
                .is_some_and(|at| at.elapsed() < REWORD_AT_MOST_EVERY)
        })
    }

    fn note_written(&self, uid: &str) {
        if let Ok(mut written) = self.last_written.lock() {
            // Bounded: entries of services long gone are dropped once they are stale anyway.
            if written.len() > 10_000 {
                written.retain(|_, at| at.elapsed() < REWORD_AT_MOST_EVERY);
            }
            written.insert(uid.to_string(), Instant::now());
        }
    }
}

/// Whether a service is due for a check. Never while its previous check is unfinished (one
/// check in flight per service); otherwise when `interval` has passed since that check
/// *started*, so a service is checked every `interval` however long each check takes, unless a
/// check takes longer than that, when the next one starts (at the next tick) after it ends.
/// The interval is read from the current spec on every tick, so a changed one applies at once.
fn is_due(previous: Option<&Scheduled>, interval: Duration) -> bool {
    match previous {
        None => true,
        Some(p) => p.check.is_finished() && p.started.elapsed() >= interval,
    }
}

/// The check for an external service, and its interval; `None` when it is not checked.
fn target_of(service: &ServiceRecord) -> Option<(HealthTarget, Duration)> {
    let ServiceBackend::External {
        endpoint,
        auth,
        health,
    } = &service.backend
    else {
        return None;
    };
    let auth = match auth {
        ExternalAuth::None => HealthAuth::None,
        ExternalAuth::Bearer { token } => HealthAuth::Bearer(token.clone()),
    };
    let (probe, interval, endpoint) = match health {
        HealthProbe::None => return None,
        HealthProbe::Http {
            path,
            expect_status,
            interval_seconds,
            timeout_ms,
        } => {
            let mut p = HttpProbe {
                path: path.clone(),
                ..HttpProbe::default()
            };
            if let Some(r) = expect_status {
                p.status_min = r.min;
                p.status_max = r.max;
            }
            p.timeout = Duration::from_millis(u64::from(
                timeout_ms.unwrap_or(HealthProbe::DEFAULT_TIMEOUT_MS),
            ));
            (
                nimbus_plugins::HealthProbe::Http(p),
                interval_seconds,
                endpoint.url.trim_end_matches('/').to_string(),
            )
        }
        HealthProbe::Tcp {
            interval_seconds,
            timeout_ms,
        } => {
            let url = spec::parse_http_url(&endpoint.url).ok()?;
            let p = TcpProbe {
                timeout: Duration::from_millis(u64::from(
                    timeout_ms.unwrap_or(HealthProbe::DEFAULT_TIMEOUT_MS),
                )),
                ..TcpProbe::default()
            };
            (
                nimbus_plugins::HealthProbe::Tcp(p),
                interval_seconds,
                format!("tcp://{}:{}", url.host, url.port),
            )
        }
    };
    let interval = Duration::from_secs(u64::from(
        interval.unwrap_or(HealthProbe::DEFAULT_INTERVAL_SECONDS),
    ));
    Some((
        HealthTarget {
            endpoint,
            auth,
            probe,
        },
        interval,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_target(timeout_ms: u64) -> HealthTarget {
        HealthTarget {
            endpoint: "http://127.0.0.1:1".into(),
            auth: HealthAuth::None,
            probe: nimbus_plugins::HealthProbe::Http(HttpProbe {
                timeout: Duration::from_millis(timeout_ms),
                ..HttpProbe::default()
            }),
        }
    }

    #[test]
    fn a_check_is_slow_past_two_seconds_or_most_of_its_timeout() {
        // The default probe timeout (2 s): a check that ran into it is slow.
        assert_eq!(slow_after(&http_target(2000)), Duration::from_millis(1600));
        assert_eq!(slow_after(&http_target(100)), Duration::from_millis(80));
        assert_eq!(slow_after(&http_target(30_000)), SLOW_CHECK);
    }
}
