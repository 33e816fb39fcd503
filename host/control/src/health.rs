//! The health controller: checks every `external` service on its interval through the
//! configured health plugin and writes what it found into the service's status. Reachable
//! services are `running` and `ready`; unreachable ones `failed` with the check's detail.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use nimbus_core::lifecycle::ServiceState;
use nimbus_core::resource::{set_condition, ConditionStatus, Health, Readiness, ServiceRecord};
use nimbus_core::spec::{self, ExternalAuth, HealthProbe, ServiceBackend};
use nimbus_plugins::{HealthAuth, HealthOutcome, HealthTarget, HttpProbe, PluginHost, TcpProbe};
use nimbus_store::Store;

/// How often the controller looks for services that are due.
const TICK: Duration = Duration::from_millis(500);

pub struct HealthController {
    store: Store,
    plugins: Arc<PluginHost>,
}

impl HealthController {
    pub fn new(store: Store, plugins: Arc<PluginHost>) -> HealthController {
        HealthController { store, plugins }
    }

    pub async fn run(self) {
        // When each service (by tenant/name/uid) was last checked.
        let mut last: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::time::sleep(TICK).await;
            let services = match self.store.services_by_backend_kind("external").await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "health controller could not list services");
                    continue;
                }
            };
            let mut checks = tokio::task::JoinSet::new();
            let mut live = std::collections::HashSet::new();
            for service in services {
                let key = format!(
                    "{}/{}/{}",
                    service.meta.tenant_id, service.name, service.uid
                );
                live.insert(key.clone());
                let Some((target, interval)) = target_of(&service) else {
                    continue;
                };
                if last.get(&key).is_some_and(|t| t.elapsed() < interval) {
                    continue;
                }
                last.insert(key, Instant::now());
                let plugins = self.plugins.clone();
                checks.spawn(async move { (service, plugins.check_health(target).await) });
            }
            last.retain(|k, _| live.contains(k));
            while let Some(done) = checks.join_next().await {
                if let Ok((service, outcome)) = done {
                    self.record(&service, &outcome).await;
                }
            }
        }
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
        let current = &service.status;
        let unchanged = current.health == health
            && current.lifecycle_state == state
            && current
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.reason == reason && c.message == message);
        if unchanged {
            return;
        }
        let uid = service.uid.clone();
        let result = self
            .store
            .update_service(
                &service.meta.tenant_id,
                &service.name,
                None,
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
        match result {
            Ok(_) => {
                tracing::info!(tenant = %service.meta.tenant_id, service = %service.name, healthy = outcome.healthy, detail = %outcome.detail, "external service health changed")
            }
            Err(e) => {
                tracing::debug!(service = %service.name, error = %e, "health result not recorded")
            }
        }
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
