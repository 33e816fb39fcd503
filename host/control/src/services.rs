//! The service manager: launches and supervises the sandbox of every started sandbox-backed
//! service, and writes what it sees into the service's status.
//!
//! Level-triggered, like the other controllers: each pass (every second, or at once when the
//! API says a service changed) compares every sandbox-backed service with the sandboxes
//! labelled with its uid, and takes the next step:
//! - started, and nothing runs: launch a sandbox from the service's embedded spec (after a
//!   backoff if the previous one ended on its own);
//! - started, and a sandbox of an older definition runs: stop it, then launch the new one;
//! - stopped: stop what runs;
//! - a service gone (deleted, or no longer sandbox-backed): stop and remove its sandboxes.
//!
//! Each service keeps its newest ended sandbox (for its logs and exit code); older ones are
//! removed. Launches, stops and removals are audited with the server as the actor. The link
//! between a service and its sandboxes lives in the sandbox records (labels), so a server
//! restart loses nothing: the sandbox controller adopts what runs, and the next pass goes on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nimbus_api::control::{BoxFuture, SandboxControl, ServiceControl};
use nimbus_api::status::{pending_sandbox_status, request_sandbox_stop, LAUNCHING};
use nimbus_core::lifecycle::{DesiredRunState, SandboxState, ServiceState};
use nimbus_core::names::{Name, SandboxId};
use nimbus_core::resource::{
    set_condition, AuditEvent, ConditionStatus, Health, Meta, Readiness, SandboxRecord,
    ServiceRecord,
};
use nimbus_core::spec::{
    Labels, Owner, Profile, SandboxSpec, ServiceBackend, SERVICE_LABEL, SERVICE_UID_LABEL,
};
use nimbus_core::Error;
use nimbus_store::Store;
use tokio::sync::Notify;

use crate::sandboxes::{ControlHandle, SandboxController};

/// Longest time between passes; a change through the API wakes the manager sooner.
const PASS: Duration = Duration::from_secs(1);
/// Delay before relaunching after the first sandbox that ended on its own; doubled for each
/// further one in a row, up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A sandbox that lived this long before it ended was not part of a crash loop: the backoff
/// starts over.
const STABLE_AFTER: Duration = Duration::from_secs(60);

pub struct ServiceManager {
    store: Store,
    sandboxes: Arc<SandboxController>,
    /// The tenant's cap on live sandboxes (`[limits] sandboxes_per_tenant`); a service's
    /// sandbox counts toward it like any other.
    max_live: u32,
    wake: Notify,
    /// Per service uid: where its relaunches stand. Kept in memory: after a server restart a
    /// crash-looping service starts its backoff over, which costs one early relaunch.
    backoff: Mutex<HashMap<String, Backoff>>,
    /// Sandboxes being torn down, each by a task of its own: a teardown can take seconds (a
    /// sandbox caught mid-launch), and the pass must not wait for it.
    removing: Mutex<HashSet<String>>,
}

#[derive(Default)]
struct Backoff {
    /// The service generation the count is for: a new definition starts it over.
    generation: i64,
    /// The newest ended sandbox already counted.
    counted: Option<SandboxId>,
    /// Sandboxes (or launch attempts) in a row that ended or failed on their own.
    failures: u32,
    /// No relaunch before this.
    not_before: Option<DateTime<Utc>>,
    /// Why the last launch could not even be recorded (e.g. the tenant's sandbox cap).
    refused: Option<String>,
}

impl ServiceManager {
    pub fn new(store: Store, sandboxes: Arc<SandboxController>, max_live: u32) -> Arc<Self> {
        Arc::new(ServiceManager {
            store,
            sandboxes,
            max_live,
            wake: Notify::new(),
            backoff: Mutex::new(HashMap::new()),
            removing: Mutex::new(HashSet::new()),
        })
    }

    /// Runs until aborted.
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "service manager pass failed; retrying");
            }
            // A change through the API, or a sandbox that became ready or ended.
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.sandboxes.changed.notified() => {}
                _ = tokio::time::sleep(PASS) => {}
            }
        }
    }

    async fn pass(self: &Arc<Self>) -> Result<(), Error> {
        let services = self.store.services_by_backend_kind("sandbox").await?;
        let mut owned: HashMap<String, Vec<SandboxRecord>> = HashMap::new();
        for s in self.store.service_sandboxes().await? {
            // Only what the manager launched: labels alone could have been set by a client
            // (before such labels were refused) on a sandbox of its own.
            if !matches!(s.spec.owner, Owner::Service { .. }) {
                continue;
            }
            if let Some(uid) = s.meta.labels.get(SERVICE_UID_LABEL) {
                owned.entry(uid.clone()).or_default().push(s);
            }
        }
        for service in &services {
            let mine = owned.remove(&service.uid).unwrap_or_default();
            if let Err(e) = self.reconcile(service, mine).await {
                tracing::warn!(tenant = %service.meta.tenant_id, service = %service.name, error = %e, "could not reconcile a service");
            }
        }
        // What is left belongs to services that are gone, or no longer sandbox-backed.
        for sandbox in owned.into_values().flatten() {
            self.remove(
                &sandbox,
                "its service was deleted or no longer runs a sandbox",
            );
        }
        if let Ok(mut backoff) = self.backoff.lock() {
            backoff.retain(|uid, _| services.iter().any(|s| &s.uid == uid));
        }
        Ok(())
    }

    /// One step for one service; `mine` are its sandboxes, oldest first.
    async fn reconcile(
        self: &Arc<Self>,
        service: &ServiceRecord,
        mine: Vec<SandboxRecord>,
    ) -> Result<(), Error> {
        let ServiceBackend::Sandbox { sandbox: spec } = &service.backend else {
            return Ok(());
        };
        let desired = service.status.desired_state;
        let (live, mut ended): (Vec<SandboxRecord>, Vec<SandboxRecord>) = mine
            .into_iter()
            .partition(|s| !s.status.lifecycle_state.is_terminal());
        // A sandbox whose monitor was lost may still have its process running: it is torn down
        // (which kills it) before anything replaces it, or the service would run twice.
        let mut lost = None;
        ended.retain(|s| {
            if ready_reason(s) == Some("Lost") {
                lost = Some(s.id.clone());
                self.remove(s, "its monitor was lost; its processes are killed");
                false
            } else {
                true
            }
        });
        // The one sandbox that should go on running: the newest of the current definition.
        let current = match desired {
            DesiredRunState::Running => live
                .iter()
                .rev()
                .find(|s| s.spec == *spec && s.status.lifecycle_state != SandboxState::Stopping),
            DesiredRunState::Stopped => None,
        };
        let mut stopping = lost;
        for s in &live {
            if current.is_some_and(|c| c.id == s.id) {
                continue;
            }
            if s.status.lifecycle_state != SandboxState::Stopping {
                self.stop(s, "its service was stopped, restarted or redefined")
                    .await;
            }
            stopping = Some(s.id.clone());
        }
        // Older ended sandboxes go; the newest stays for its logs and exit code.
        for s in ended.iter().take(ended.len().saturating_sub(1)) {
            self.remove(s, "a newer sandbox of its service ended since");
        }
        let last_ended = ended.last();
        let wait = self.wait_before_launch(service, last_ended);
        let observed = match (desired, current, &stopping) {
            (DesiredRunState::Running, Some(s), _) => running(s),
            (DesiredRunState::Running, None, Some(old)) => Observed {
                state: ServiceState::Starting,
                reason: "Replacing",
                message: format!(
                    "sandbox {old} is stopping; the service's next sandbox launches once it has"
                ),
                ..Observed::not_ready()
            },
            (DesiredRunState::Running, None, None) => match wait {
                Some(w) => w,
                None => match self.launch(service, spec).await {
                    Ok(id) => Observed {
                        state: ServiceState::Starting,
                        reason: LAUNCHING,
                        message: format!("sandbox {id} is being launched"),
                        ..Observed::not_ready()
                    },
                    Err(e) => self.refused(&service.uid, e),
                },
            },
            (DesiredRunState::Stopped, _, Some(s)) => Observed {
                state: ServiceState::Stopping,
                reason: "Stopping",
                message: format!("sandbox {s} is stopping"),
                ..Observed::not_ready()
            },
            (DesiredRunState::Stopped, _, None) => Observed {
                state: ServiceState::Stopped,
                reason: "Stopped",
                message: match last_ended {
                    Some(s) => format!(
                        "the service is stopped; its last sandbox {} ended ({})",
                        s.id,
                        ready_message(s)
                    ),
                    None => "the service is not started; start it to launch its sandbox".into(),
                },
                ..Observed::not_ready()
            },
        };
        self.write_status(service, observed).await
    }

    /// `Some(status to show)` while a relaunch must wait: the service's newest sandbox ended on
    /// its own (or a launch was refused) less than the backoff ago.
    fn wait_before_launch(
        &self,
        service: &ServiceRecord,
        last_ended: Option<&SandboxRecord>,
    ) -> Option<Observed> {
        let mut all = self.backoff.lock().ok()?;
        let b = all.entry(service.uid.clone()).or_default();
        // A new definition, or a stop, starts the count over: what failed was another spec,
        // or the user has stepped in.
        if b.generation != service.meta.generation
            || service.status.desired_state == DesiredRunState::Stopped
        {
            b.generation = service.meta.generation;
            b.failures = 0;
            b.not_before = None;
            b.refused = None;
        }
        if let Some(s) = last_ended.filter(|s| b.counted.as_ref() != Some(&s.id)) {
            b.counted = Some(s.id.clone());
            if ended_on_request(s) {
                b.failures = 0;
                b.not_before = None;
            } else {
                let lived = (s.meta.updated_at - s.meta.created_at)
                    .to_std()
                    .unwrap_or_default();
                b.failures = if lived >= STABLE_AFTER {
                    1
                } else {
                    b.failures + 1
                };
                b.not_before = Some(s.meta.updated_at + delay(b.failures));
            }
            b.refused = None;
        }
        let not_before = b.not_before?;
        (not_before - Utc::now()).to_std().ok()?;
        let why = match (&b.refused, last_ended) {
            (Some(refused), _) => refused.clone(),
            (None, Some(s)) => format!("sandbox {} ended ({})", s.id, ready_message(s)),
            (None, None) => "the last launch failed".into(),
        };
        Some(Observed {
            state: ServiceState::Failed,
            health: Health::Unhealthy,
            reason: "BackOff",
            message: format!(
                "{why}; relaunching at {} ({} in a row)",
                not_before.format("%H:%M:%S UTC"),
                failures_phrase(b.failures)
            ),
            ..Observed::not_ready()
        })
    }

    /// A launch could not be recorded: counts as a failure, shown until the next try.
    fn refused(&self, uid: &str, e: Error) -> Observed {
        let why = format!("the service's sandbox could not be launched: {}", e.message);
        if let Ok(mut all) = self.backoff.lock() {
            let b = all.entry(uid.to_string()).or_default();
            b.failures += 1;
            b.not_before = Some(Utc::now() + delay(b.failures));
            b.refused = Some(why.clone());
        }
        Observed {
            state: ServiceState::Failed,
            health: Health::Unhealthy,
            reason: "LaunchRefused",
            message: why,
            ..Observed::not_ready()
        }
    }

    /// Records a new sandbox for `service` and hands it to the sandbox controller, as a create
    /// through the API does (the launch prepares while the record is written).
    async fn launch(
        &self,
        service: &ServiceRecord,
        spec: &SandboxSpec,
    ) -> Result<SandboxId, Error> {
        let tenant = service.meta.tenant_id.clone();
        let id = SandboxId::generate();
        let (commit_tx, commit) = tokio::sync::watch::channel(None);
        tokio::spawn(self.sandboxes.clone().launch_task(
            tenant.clone(),
            id.clone(),
            Some(spec.clone()),
            commit,
        ));
        let now = Utc::now();
        let labels = Labels::from([
            (SERVICE_LABEL.to_string(), service.name.to_string()),
            (SERVICE_UID_LABEL.to_string(), service.uid.clone()),
        ]);
        let meta = Meta::new(tenant, labels, now);
        let mut record = SandboxRecord {
            status: pending_sandbox_status(
                meta.generation,
                now,
                "Scheduled",
                "launched by the service manager for its service",
            ),
            id: id.clone(),
            profile: Profile::Worker,
            meta,
            spec: spec.clone(),
        };
        let audit = server_event(
            &service.meta.tenant_id,
            &id,
            "sandboxes.create",
            format!("service/{} is started", service.name),
        );
        let created = self
            .store
            .create_sandbox(&mut record, self.max_live, &audit)
            .await;
        let _ = commit_tx.send(Some(created.is_ok()));
        created?;
        tracing::info!(tenant = %service.meta.tenant_id, service = %service.name, sandbox = %id, "launching a service's sandbox");
        Ok(id)
    }

    /// Records `sandbox` as stopping and has the sandbox controller stop it.
    async fn stop(&self, sandbox: &SandboxRecord, why: &str) {
        let tenant = &sandbox.meta.tenant_id;
        let audit = sandbox_event(sandbox, "sandboxes.stop", why);
        let result = self
            .store
            .update_sandbox(
                tenant,
                sandbox.id.as_str(),
                |r| request_sandbox_stop(r, Utc::now()).map(|_| ()),
                Some(&audit),
            )
            .await;
        match result {
            Ok(r) if r.status.lifecycle_state == SandboxState::Stopping => {
                ControlHandle(self.sandboxes.clone()).stop(tenant.clone(), sandbox.id.clone())
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(sandbox = %sandbox.id, error = %e, "could not stop a service's sandbox")
            }
        }
    }

    /// Tears `sandbox` down on the host and deletes its record, in a task of its own (once at
    /// a time per sandbox).
    fn remove(self: &Arc<Self>, sandbox: &SandboxRecord, why: &str) {
        let id = sandbox.id.to_string();
        let claimed = self
            .removing
            .lock()
            .map(|mut removing| removing.insert(id.clone()))
            .unwrap_or(false);
        if !claimed {
            return;
        }
        let this = self.clone();
        let sandbox = sandbox.clone();
        let why = why.to_string();
        tokio::spawn(async move {
            this.remove_now(&sandbox, &why).await;
            if let Ok(mut removing) = this.removing.lock() {
                removing.remove(&id);
            }
            this.wake.notify_one();
        });
    }

    async fn remove_now(&self, sandbox: &SandboxRecord, why: &str) {
        let handle = ControlHandle(self.sandboxes.clone());
        if let Err(e) = handle.teardown(&sandbox.id).await {
            // The teardown logged its cause.
            tracing::debug!(sandbox = %sandbox.id, error = %e, "could not tear down a service's sandbox; retrying on the next pass");
            return;
        }
        let audit = sandbox_event(sandbox, "sandboxes.delete", why);
        if let Err(e) = self
            .store
            .delete_sandbox(
                &sandbox.meta.tenant_id,
                sandbox.id.as_str(),
                |_| Ok(()),
                &audit,
            )
            .await
        {
            if e.code != nimbus_core::ErrorCode::NotFound {
                tracing::warn!(sandbox = %sandbox.id, error = %e, "could not delete a service's sandbox record");
            }
        }
    }

    /// Writes `observed` into the service's status, unless it says that already, or the
    /// service changed since it was read (the next pass looks again).
    async fn write_status(&self, service: &ServiceRecord, observed: Observed) -> Result<(), Error> {
        let s = &service.status;
        let ready_says = s
            .conditions
            .iter()
            .find(|c| c.kind == "Ready")
            .map(|c| (c.status, c.reason.as_str(), c.message.as_str()));
        let condition_status = if observed.readiness == Readiness::Ready {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        if s.lifecycle_state == observed.state
            && s.readiness == observed.readiness
            && s.health == observed.health
            && s.observed_generation == service.meta.generation
            && ready_says == Some((condition_status, observed.reason, observed.message.as_str()))
        {
            return Ok(());
        }
        let result = self
            .store
            .update_service(
                &service.meta.tenant_id,
                &service.name,
                None,
                |r| {
                    if r.uid != service.uid
                        || r.meta.resource_version != service.meta.resource_version
                    {
                        return Err(Error::conflict(
                            "service",
                            service.name.as_str(),
                            "changed since this pass read it",
                        ));
                    }
                    let now = Utc::now();
                    r.status.lifecycle_state = observed.state;
                    r.status.readiness = observed.readiness;
                    r.status.health = observed.health;
                    r.status.observed_generation = r.meta.generation;
                    set_condition(
                        &mut r.status.conditions,
                        "Ready",
                        condition_status,
                        observed.reason,
                        observed.message,
                        now,
                        r.meta.generation,
                    );
                    Ok(())
                },
                None,
            )
            .await;
        match result {
            Err(e)
                if matches!(
                    e.code,
                    nimbus_core::ErrorCode::NotFound | nimbus_core::ErrorCode::Conflict
                ) =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }
}

/// What a service's status should say.
struct Observed {
    state: ServiceState,
    readiness: Readiness,
    health: Health,
    /// The `Ready` condition's reason and message.
    reason: &'static str,
    message: String,
}

impl Observed {
    fn not_ready() -> Observed {
        Observed {
            state: ServiceState::Starting,
            readiness: Readiness::NotReady,
            health: Health::Unknown,
            reason: "",
            message: String::new(),
        }
    }
}

/// The status of a service whose current sandbox is `s` (pending, creating or ready).
fn running(s: &SandboxRecord) -> Observed {
    match s.status.lifecycle_state {
        // A sandbox is ready once its process runs: for a service without a probe of its
        // own, a running process is as healthy as it can be told to be.
        SandboxState::Ready => Observed {
            state: ServiceState::Running,
            readiness: Readiness::Ready,
            health: Health::Healthy,
            reason: "Running",
            message: format!("sandbox {} is running", s.id),
        },
        state => Observed {
            state: ServiceState::Starting,
            reason: LAUNCHING,
            message: format!(
                "sandbox {} is {}: {}",
                s.id,
                state.as_str(),
                ready_message(s)
            ),
            ..Observed::not_ready()
        },
    }
}

/// The reason of the sandbox's `Ready` condition.
fn ready_reason(s: &SandboxRecord) -> Option<&str> {
    s.status
        .conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .map(|c| c.reason.as_str())
}

/// The sandbox's `Ready` condition, as `Reason: message`.
fn ready_message(s: &SandboxRecord) -> String {
    match s.status.conditions.iter().find(|c| c.kind == "Ready") {
        Some(c) => format!("{}: {}", c.reason, c.message),
        None => s.status.lifecycle_state.as_str().to_string(),
    }
}

/// Whether `s` ended because someone stopped it (a restart, `sandboxes.stop`), rather than on
/// its own: no backoff then.
fn ended_on_request(s: &SandboxRecord) -> bool {
    ready_reason(s) == Some("Stopped")
}

/// The wait after `failures` failures in a row: 1 s, 2 s, 4 s, … up to a minute.
fn delay(failures: u32) -> chrono::Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    let d = BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX);
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn failures_phrase(n: u32) -> String {
    if n == 1 {
        "1 failure".into()
    } else {
        format!("{n} failures")
    }
}

/// An audit event of the manager's (actor `server`) on sandbox `id`.
fn server_event(tenant: &Name, id: &SandboxId, action: &str, reason: String) -> AuditEvent {
    AuditEvent {
        tenant_id: tenant.to_string(),
        time: Utc::now(),
        actor: "server".into(),
        action: action.into(),
        target: format!("sandbox/{id}"),
        decision: "allow".into(),
        reason,
    }
}

/// The same for a service's existing sandbox, the reason naming the service.
fn sandbox_event(sandbox: &SandboxRecord, action: &str, why: &str) -> AuditEvent {
    let service = sandbox
        .meta
        .labels
        .get(SERVICE_LABEL)
        .map_or("?", String::as_str);
    let reason = format!("service/{service}: {why}");
    server_event(&sandbox.meta.tenant_id, &sandbox.id, action, reason)
}

/// The manager as the API sees it.
pub struct ServiceHandle(pub Arc<ServiceManager>);

impl ServiceControl for ServiceHandle {
    fn changed(&self) {
        self.0.wake.notify_one();
    }

    fn restart<'a>(&'a self, tenant: &'a Name, uid: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if let Ok(mut all) = self.0.backoff.lock() {
                if let Some(b) = all.get_mut(uid) {
                    b.failures = 0;
                    b.not_before = None;
                    b.refused = None;
                }
            }
            let filter = nimbus_store::SandboxFilter {
                label_key: Some(SERVICE_UID_LABEL.into()),
                label_value: Some(uid.to_string()),
                state: None,
            };
            let mine = self
                .0
                .store
                .list_sandboxes(tenant, &filter, None, 1000)
                .await?;
            for s in mine.items.iter().filter(|s| {
                !s.status.lifecycle_state.is_terminal()
                    && s.status.lifecycle_state != SandboxState::Stopping
            }) {
                self.0.stop(s, "its service was restarted").await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_one_second_up_to_a_minute() {
        let secs: Vec<i64> = (1..=9).map(|n| delay(n).num_seconds()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(u32::MAX).num_seconds(), 60);
        assert_eq!(delay(0).num_seconds(), 1);
    }
}
