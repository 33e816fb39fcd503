//! The sandbox controller.
//!
//! `pending` → launch (pull/build, rootfs, network, crun through the monitor) → `ready`, with
//! launch progress in the `Ready` condition; exits are recorded with their code and reason;
//! `stopping` → SIGTERM, SIGKILL after the grace period → `stopped`. After a restart the
//! controller adopts what the runtime still runs: nothing is killed because the server
//! restarted, exits that happened meanwhile are recorded, interrupted launches are retried.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use nimbus_api::auth::{WorkloadClaims, WorkloadSigner};
use nimbus_api::control::{
    already_committed, committed, Attached, BoxFuture, Commit, FileEntry, OutputEnded,
    SandboxControl, SandboxFiles,
};
use nimbus_core::authz::actions;
use nimbus_core::lifecycle::{SandboxEvent, SandboxState};
use nimbus_core::names::{Name, SandboxId};
use nimbus_core::resource::{
    set_condition, AuditEvent, ConditionStatus, Endpoint, Readiness, SandboxRecord,
};
use nimbus_core::spec::SandboxSpec;
use nimbus_core::{Error, ErrorCode};
use nimbus_runtime::attach::{Attachment, OutputEnd};
use nimbus_runtime::{ExitReason, LaunchError, Observed, ProgressEvent, Runtime, RuntimeError};
use nimbus_store::Store;

/// How often running sandboxes are checked for exits.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Progress is written to the store at most this often (plus on every phase change).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// How long a launch runs before its sandbox is recorded `creating` (see `launch_inner`).
const CREATING_AFTER: Duration = Duration::from_millis(200);
/// Lifetime of the workload identity token a sandbox receives.
const WORKLOAD_TOKEN_TTL_SECONDS: i64 = 24 * 3600;

pub struct SandboxController {
    store: Store,
    runtime: Arc<Runtime>,
    signer: WorkloadSigner,
    /// Sandboxes with a launch or stop task in flight; the watcher leaves them alone.
    busy: Mutex<HashSet<String>>,
    /// Sandboxes torn down for a delete whose record may still exist: the watcher must not
    /// report the kill or the vanished state dir as an exit (a reader would see `failed` for
    /// a moment). Pruned once the record is gone.
    deleting: Mutex<HashSet<String>>,
    /// Woken when a launch has ended (ready or failed) or an exit was recorded: the service
    /// manager reacts at once instead of at its next pass.
    pub(crate) changed: tokio::sync::Notify,
    /// When this controller was made, before the API served anything: adoption reconciles
    /// what is older, and leaves sandboxes created since to their own launches (the API may
    /// serve a create while adoption runs).
    started: std::time::SystemTime,
}

impl SandboxController {
    pub fn new(
        store: Store,
        runtime: Arc<Runtime>,
        signer: WorkloadSigner,
    ) -> Arc<SandboxController> {
        Arc::new(SandboxController {
            store,
            runtime,
            signer,
            busy: Mutex::new(HashSet::new()),
            deleting: Mutex::new(HashSet::new()),
            changed: tokio::sync::Notify::new(),
            started: std::time::SystemTime::now(),
        })
    }

    /// Reconciles the store with the host after a (re)start (then says so on `adopted`), then
    /// watches for exits forever.
    pub async fn run(self: Arc<Self>, adopted: tokio::sync::oneshot::Sender<()>) {
        if let Err(e) = self.adopt().await {
            tracing::error!(error = %e, "adopting sandboxes after start failed; they will be reconciled by the watcher");
        }
        let _ = adopted.send(());
        // Networks for the first launches are prepared now rather than during them.
        if self.cached_preflight().is_none() {
            if let Err(e) = self.runtime.warm_up().await {
                tracing::warn!(error = %e, "could not prepare the sandbox network ahead of launches");
            }
        }
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            if let Err(e) = self.watch_once().await {
                tracing::warn!(error = %e, "sandbox watch pass failed");
            }
        }
    }

    async fn adopt(self: &Arc<Self>) -> Result<(), Error> {
        self.finish_cut_off_deletes().await?;
        let records = self.store.live_sandboxes().await?;
        let known: HashSet<String> = records.iter().map(|r| r.id.to_string()).collect();
        // Host state without a record: deleted while the server was down.
        for (id, observed) in self.runtime.adopt_all() {
            // A state dir made since this server started is a create's launch in progress,
            // its record perhaps not committed yet: not an orphan.
            if known.contains(id.as_str()) || self.runtime.made_since(&id, self.started) {
                continue;
            }
            match self.ended_record(&id).await {
                Some(None) => {
                    tracing::info!(sandbox = %id, "removing a sandbox whose record is gone");
                    if let Err(e) = self.runtime.delete(&id).await {
                        tracing::warn!(sandbox = %id, error = %e, "could not remove an orphaned sandbox");
                    }
                }
                // Recorded as ended without ever having run (stopped while pending): a launch
                // the restart cut off went on regardless, and may have started its process.
                // Nothing of it is worth keeping (no output, no exit), and it must not run.
                Some(Some(r)) if r.status.exit_code.is_none() => {
                    tracing::info!(sandbox = %id, "removing a launch that went on after its sandbox was stopped");
                    // The launch may still be under way (its monitor mounting, crun creating):
                    // a removal that meets it (a mount appearing meanwhile: EBUSY) is tried
                    // again once it has settled.
                    // The first attempts hold the start up a little; later ones go on in the
                    // background, a while longer, rather than leave it for good.
                    let mut attempts = 0;
                    while let Err(e) = self.runtime.delete(&id).await {
                        attempts += 1;
                        if attempts == STRAY_LAUNCH_REMOVAL_ATTEMPTS {
                            tracing::warn!(sandbox = %id, error = %e, "could not remove a launch of a stopped sandbox yet; trying again in the background");
                            let (me, id) = (self.clone(), id.clone());
                            tokio::spawn(async move {
                                for _ in 0..STRAY_LAUNCH_BACKGROUND_ATTEMPTS {
                                    tokio::time::sleep(STRAY_LAUNCH_REMOVAL_PAUSE * 4).await;
                                    match me.runtime.delete(&id).await {
                                        Ok(()) => return,
                                        Err(e) => {
                                            tracing::debug!(sandbox = %id, error = %e, "the stray launch is still busy")
                                        }
                                    }
                                }
                                tracing::warn!(sandbox = %id, "gave up removing a launch of a stopped sandbox; deleting the sandbox removes it");
                            });
                            break;
                        }
                        tokio::time::sleep(STRAY_LAUNCH_REMOVAL_PAUSE).await;
                    }
                }
                // Ended before this server gave up ended sandboxes' networks, or before its
                // release was done.
                Some(Some(_)) if matches!(observed, Observed::Exited { .. }) => {
                    self.release_network(&id)
                }
                _ => {}
            }
        }
        let started = chrono::DateTime::<Utc>::from(self.started);
        for r in records {
            if r.meta.created_at >= started
                && matches!(
                    r.status.lifecycle_state,
                    SandboxState::Pending | SandboxState::Creating
                )
            {
                // Created through this server: its own launch task is on it.
                continue;
            }
            let tenant = r.meta.tenant_id.clone();
            match (r.status.lifecycle_state, self.runtime.observe(&r.id)) {
                (SandboxState::Pending, observed) => {
                    // A launch starts its process once the record is committed and records
                    // `creating` only later (see `launch_inner`), so a restart can find a
                    // pending sandbox with host state, even a running process: it is cut off
                    // like a `creating` one below. So is a launch cut off before it wrote
                    // anything in the state dir it claimed (waiting on its pull): observed as
                    // missing, its dir would still stop the next launch's claim.
                    if observed != Observed::Missing || self.runtime.has_state_dir(&r.id) {
                        tracing::info!(sandbox = %r.id, "clearing a launch cut off before it recorded `creating`");
                        if let Err(e) = self.runtime.delete(&r.id).await {
                            tracing::warn!(sandbox = %r.id, error = %e, "could not clear an interrupted launch");
                        }
                    }
                    tokio::spawn(self.clone().launch_task(
                        tenant,
                        r.id.clone(),
                        None,
                        already_committed(),
                    ));
                }
                (SandboxState::Creating, _) => {
                    // The launch was cut off by the restart: clear what it left and start over.
                    if let Err(e) = self.runtime.delete(&r.id).await {
                        tracing::warn!(sandbox = %r.id, error = %e, "could not clear an interrupted launch");
                    }
                    let _ = self
                        .store
                        .update_sandbox(
                            &tenant,
                            r.id.as_str(),
                            |rec| {
                                rec.status.lifecycle_state = SandboxState::Pending;
                                Ok(())
                            },
                            None,
                        )
                        .await;
                    tokio::spawn(self.clone().launch_task(
                        tenant,
                        r.id.clone(),
                        None,
                        already_committed(),
                    ));
                }
                (SandboxState::Stopping, Observed::Running { .. }) => {
                    tokio::spawn(self.clone().stop_task(tenant, r.id.clone()));
                }
                (SandboxState::Ready, Observed::Running { .. }) => {
                    tracing::info!(sandbox = %r.id, "adopted a running sandbox");
                    // Opening its files undoes uploads the previous server left unfinished
                    // (see `SandboxFiles::with_upload_journal`), before the workload trips
                    // over their partial files.
                    if let Err(e) = self.runtime.files(&r.id) {
                        tracing::warn!(sandbox = %r.id, error = %e, "could not check for unfinished uploads");
                    }
                }
                (_, Observed::Exited { code, reason }) => {
                    self.record_exit(&tenant, &r.id, code, &reason).await
                }
                (_, Observed::Missing) => {
                    self.record_exit(&tenant, &r.id, -1, &ExitReason::Lost)
                        .await
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// At server shutdown: removes what only this process would use (the warm pool's
    /// namespaces). Sandboxes keep running.
    pub async fn shutdown(&self) {
        self.runtime.drain_pool().await;
    }

    /// The record of `id`, which is not live (it ended, or is gone: `Some(None)`); `None` when
    /// the store cannot say. Sandbox ids are unique across tenants.
    async fn ended_record(&self, id: &SandboxId) -> Option<Option<SandboxRecord>> {
        let tenant = match self.store.sandbox_tenant(id.as_str()).await.ok()? {
            Some(t) => Name::parse("tenant", &t).ok()?,
            None => return Some(None),
        };
        self.store.get_sandbox(&tenant, id.as_str()).await.ok()
    }

    async fn watch_once(self: &Arc<Self>) -> Result<(), Error> {
        self.prune_deleted().await;
        for r in self.store.live_sandboxes().await? {
            if !matches!(
                r.status.lifecycle_state,
                SandboxState::Ready | SandboxState::Stopping
            ) || self.is_busy(r.id.as_str())
                || self.is_deleting(r.id.as_str())
            {
                continue;
            }
            match self.runtime.observe(&r.id) {
                Observed::Running { .. } => {}
                Observed::Exited { code, reason } => {
                    self.record_exit(&r.meta.tenant_id, &r.id, code, &reason)
                        .await
                }
                Observed::Missing => {
                    self.record_exit(&r.meta.tenant_id, &r.id, -1, &ExitReason::Lost)
                        .await
                }
            }
        }
        Ok(())
    }

    /// Whether the sandbox is waiting for, or in the middle of, its launch.
    async fn launching(&self, tenant: &Name, id: &SandboxId) -> bool {
        matches!(
            self.store.get_sandbox(tenant, id.as_str()).await,
            Ok(Some(r)) if matches!(
                r.status.lifecycle_state,
                SandboxState::Pending | SandboxState::Creating
            )
        )
    }

    fn is_deleting(&self, id: &str) -> bool {
        self.deleting
            .lock()
            .map(|d| d.contains(id))
            .unwrap_or(false)
    }

    fn set_deleting(&self, id: &str, deleting: bool) {
        if let Ok(mut d) = self.deleting.lock() {
            if deleting {
                d.insert(id.to_string());
            } else {
                d.remove(id);
            }
        }
    }

    /// Forgets deletes whose record is gone (or was never there).
    async fn prune_deleted(&self) {
        let ids: Vec<String> = self
            .deleting
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            if matches!(self.store.sandbox_tenant(&id).await, Ok(None)) {
                self.set_deleting(&id, false);
            }
        }
    }

    fn is_busy(&self, id: &str) -> bool {
        self.busy.lock().map(|b| b.contains(id)).unwrap_or(false)
    }

    fn claim(&self, id: &str) -> bool {
        self.busy
            .lock()
            .map(|mut b| b.insert(id.to_string()))
            .unwrap_or(false)
    }

    fn release(&self, id: &str) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(id);
        }
    }

    /// Records an exit: exit code, the state it leads to, and a condition saying why.
    async fn record_exit(&self, tenant: &Name, id: &SandboxId, code: i32, reason: &ExitReason) {
        let result = self
            .store
            .update_sandbox(
                tenant,
                id.as_str(),
                |r| {
                    let stopping = r.status.lifecycle_state == SandboxState::Stopping;
                    let clean = stopping || (*reason == ExitReason::Exited && code == 0);
                    let next = r
                        .status
                        .lifecycle_state
                        .on(SandboxEvent::Exited { clean })
                        .map_err(|t| {
                            Error::invalid_transition(
                                "sandbox",
                                id.as_str(),
                                t.from,
                                "already ended",
                            )
                        })?;
                    let (why, message) = exit_condition(code, reason, stopping);
                    let now = Utc::now();
                    r.status.lifecycle_state = next;
                    r.status.readiness = Readiness::NotReady;
                    r.status.exit_code = Some(code);
                    // Its address is given up at exit (see `release_network`).
                    r.status.endpoints.clear();
                    r.meta.updated_at = now;
                    set_condition(
                        &mut r.status.conditions,
                        "Ready",
                        ConditionStatus::False,
                        why,
                        message,
                        now,
                        r.meta.generation,
                    );
                    Ok(())
                },
                None,
            )
            .await;
        match result {
            Ok(r) => {
                self.changed.notify_one();
                tracing::info!(sandbox = %id, code, state = r.status.lifecycle_state.as_str(), "sandbox ended");
                self.release_network(id);
            }
            Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::InvalidTransition) => {}
            Err(e) => tracing::warn!(sandbox = %id, error = %e, "could not record an exit"),
        }
    }

    /// Gives up the network of an ended sandbox in the background (see
    /// `Runtime::release_network`); a failure leaves it to the delete.
    fn release_network(&self, id: &SandboxId) {
        let runtime = self.runtime.clone();
        let id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.release_network(&id).await {
                tracing::warn!(sandbox = %id, error = %e, "could not release the network of an ended sandbox; it is freed when the sandbox is deleted");
            }
        });
    }

    fn cached_preflight(&self) -> Option<String> {
        self.runtime.recent_preflight().err().map(|e| e.to_string())
    }

    /// Finishes the deletes the previous server was cut off in (their records carry
    /// [`nimbus_core::resource::DELETING_CONDITION`]): the host state goes, then the record. One whose teardown fails
    /// again stays marked, for a retried delete or the next start.
    async fn finish_cut_off_deletes(&self) -> Result<(), Error> {
        for r in self.store.sandboxes_being_deleted().await? {
            let tenant = r.meta.tenant_id.clone();
            tracing::info!(sandbox = %r.id, "finishing a delete a restart cut off");
            if let Err(e) = self.runtime.delete(&r.id).await {
                tracing::warn!(sandbox = %r.id, error = %e, "could not finish the delete of a sandbox; deleting it again retries");
                continue;
            }
            let audit = AuditEvent {
                tenant_id: tenant.to_string(),
                time: Utc::now(),
                actor: "server".into(),
                action: actions::SANDBOXES_DELETE.into(),
                target: format!("sandbox/{}", r.id),
                decision: "allow".into(),
                reason: "finished a delete the server's restart cut off".into(),
            };
            match self
                .store
                .delete_sandbox(&tenant, r.id.as_str(), |_| Ok(()), &audit)
                .await
            {
                Ok(_)
                | Err(Error {
                    code: ErrorCode::NotFound,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Launches sandbox `id`: with `spec` when the create hands it over while its record is
    /// written (see [`SandboxControl::launch`]), else the `pending` record's (adoption after a
    /// restart, with `commit` already true).
    pub(crate) async fn launch_task(
        self: Arc<Self>,
        tenant: Name,
        id: SandboxId,
        spec: Option<SandboxSpec>,
        commit: Commit,
    ) {
        if !self.claim(id.as_str()) {
            return;
        }
        self.launch_inner(&tenant, &id, spec, commit).await;
        self.release(id.as_str());
        self.changed.notify_one();
    }

    async fn launch_inner(
        self: &Arc<Self>,
        tenant: &Name,
        id: &SandboxId,
        spec: Option<SandboxSpec>,
        commit: Commit,
    ) {
        let mut spec = match spec {
            Some(spec) => spec,
            None => match self.store.get_sandbox(tenant, id.as_str()).await {
                Ok(Some(r)) if r.status.lifecycle_state == SandboxState::Pending => r.spec,
                _ => return,
            },
        };
        if spec.workload_identity {
            let now = Utc::now().timestamp();
            let token = self.signer.mint(&WorkloadClaims {
                tenant_id: tenant.to_string(),
                workload: format!("sandbox:{id}"),
                grants: vec![format!("sandbox:{id}:reach")],
                issued_at: now,
                expires_at: now + WORKLOAD_TOKEN_TTL_SECONDS,
            });
            spec.process
                .environment
                .insert("NIMBUS_WORKLOAD_IDENTITY_TOKEN".into(), token);
        }
        // pending → creating is recorded once the launch has something to report (a pull's or
        // build's progress), once it has run for CREATING_AFTER, or once it is over (`ready`
        // follows at once), whichever comes first: a durable write while crun starts the
        // process slowed every start by 3–5% (bench/start_ab.sh), and nothing in the launch
        // needs it. Progress is written only once `creating` is, so a first "Pulling" cannot be
        // lost. A restart that finds a `pending` sandbox with host state clears it and
        // launches it again, as it does a `creating` one.
        let (began_tx, began_rx) = tokio::sync::watch::channel(false);
        let (wanted_tx, mut wanted_rx) = tokio::sync::watch::channel(false);
        let (over_tx, over_rx) = tokio::sync::oneshot::channel::<()>();
        let record_committed = committed(commit.clone());
        let began = async {
            if !record_committed.await {
                return Err(Error::not_found("sandbox", id.as_str()));
            }
            tokio::select! {
                _ = wanted_rx.wait_for(|w| *w) => {}
                _ = over_rx => {}
                _ = tokio::time::sleep(CREATING_AFTER) => {}
            }
            self.store
                .update_sandbox(
                    tenant,
                    id.as_str(),
                    |r| {
                        let next = r
                            .status
                            .lifecycle_state
                            .on(SandboxEvent::LaunchBegan)
                            .map_err(|t| {
                                Error::invalid_transition(
                                    "sandbox",
                                    id.as_str(),
                                    t.from,
                                    "not pending",
                                )
                            })?;
                        r.status.lifecycle_state = next;
                        set_condition(
                            &mut r.status.conditions,
                            "Ready",
                            ConditionStatus::False,
                            "Creating",
                            "preparing the root filesystem and network",
                            Utc::now(),
                            r.meta.generation,
                        );
                        Ok(())
                    },
                    None,
                )
                .await
        };
        let began = async {
            let result = began.await;
            let _ = began_tx.send(result.is_ok());
            result
        };
        let progress = ProgressWriter::new(
            self.store.clone(),
            tenant.clone(),
            id.clone(),
            began_rx,
            wanted_tx,
        );
        let launch = async {
            let outcome = self
                .runtime
                .launch_gated(
                    id,
                    tenant.as_str(),
                    &spec,
                    |e| progress.event(e),
                    committed(commit),
                )
                .await;
            let _ = over_tx.send(());
            outcome
        };
        let (began, outcome) = tokio::join!(began, launch);
        progress.flush().await;
        if let Err(e) = began {
            // Stopped or deleted while it was still pending (or the write failed): whatever
            // the launch made must not outlive the record's say-so.
            if !matches!(e.code, ErrorCode::NotFound | ErrorCode::InvalidTransition) {
                tracing::warn!(sandbox = %id, error = %e, "could not record a launch start; undoing the launch");
            }
            if outcome.is_ok() {
                if let Err(e) = self.runtime.delete(id).await {
                    tracing::warn!(sandbox = %id, error = %e, "could not undo a launch");
                }
            }
            return;
        }
        match outcome {
            Ok(launched) => {
                let endpoint = Endpoint {
                    address: launched.endpoint.address.to_string(),
                    ports: launched.endpoint.ports.clone(),
                };
                let updated = self
                    .store
                    .update_sandbox(
                        tenant,
                        id.as_str(),
                        |r| {
                            let now = Utc::now();
                            r.status.endpoints = vec![endpoint];
                            if r.status.lifecycle_state == SandboxState::Creating {
                                r.status.lifecycle_state = SandboxState::Ready;
                                r.status.readiness = Readiness::Ready;
                                set_condition(
                                    &mut r.status.conditions,
                                    "Ready",
                                    ConditionStatus::True,
                                    "Running",
                                    format!("process {} is running", launched.pid),
                                    now,
                                    r.meta.generation,
                                );
                            }
                            Ok(())
                        },
                        None,
                    )
                    .await;
                match updated {
                    // Stopped while launching: finish the stop now that there is a process.
                    Ok(r) if r.status.lifecycle_state == SandboxState::Stopping => {
                        self.stop_inner(tenant, id).await
                    }
                    Ok(_) => {}
                    // Deleted while launching: its teardown may have run before the container existed.
                    Err(e) if e.code == ErrorCode::NotFound => {
                        if let Err(e) = self.runtime.delete(id).await {
                            tracing::error!(sandbox = %id, error = %e, "a sandbox deleted while it launched could not be torn down; its process may run on");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = %e, "could not record a launch")
                    }
                }
            }
            Err(e) => {
                let (reason, message) = launch_failure(&e);
                tracing::info!(sandbox = %id, reason, %message, "launch failed");
                let _ = self
                    .store
                    .update_sandbox(
                        tenant,
                        id.as_str(),
                        |r| {
                            let now = Utc::now();
                            r.status.lifecycle_state = r
                                .status
                                .lifecycle_state
                                .on(SandboxEvent::LaunchFailed)
                                .unwrap_or(SandboxState::Failed);
                            r.status.readiness = Readiness::NotReady;
                            set_condition(
                                &mut r.status.conditions,
                                "Ready",
                                ConditionStatus::False,
                                reason,
                                message,
                                now,
                                r.meta.generation,
                            );
                            Ok(())
                        },
                        None,
                    )
                    .await;
            }
        }
    }

    async fn stop_task(self: Arc<Self>, tenant: Name, id: SandboxId) {
        if !self.claim(id.as_str()) {
            // A launch is in flight; it stops the sandbox when it sees `stopping`.
            return;
        }
        self.stop_inner(&tenant, &id).await;
        self.release(id.as_str());
    }

    async fn stop_inner(&self, tenant: &Name, id: &SandboxId) {
        match self.runtime.stop(id, None).await {
            Ok(Observed::Exited { code, reason }) => {
                self.record_exit(tenant, id, code, &reason).await
            }
            Ok(Observed::Running { .. }) => {
                tracing::warn!(sandbox = %id, "still running after SIGKILL; the watcher will record its exit")
            }
            Ok(Observed::Missing) | Err(RuntimeError::NotFound(_)) => {
                self.record_exit(tenant, id, -1, &ExitReason::Lost).await
            }
            Err(e) => tracing::warn!(sandbox = %id, error = %e, "stop failed"),
        }
    }
}

/// The `Ready` condition's reason and message for an exit.
fn exit_condition(code: i32, reason: &ExitReason, stopping: bool) -> (&'static str, String) {
    match reason {
        // The kernel's OOM killer may have taken a child, after which the main process ended
        // on its own: say what is known, not that the main process was killed.
        ExitReason::OomKilled if code == 137 => ("OOMKilled", "the process was killed at the sandbox's memory limit (exit code 137); raise spec.resources.memoryMb".to_string()),
        ExitReason::OomKilled => ("OOMKilled", format!("a process in the sandbox was killed at its memory limit, and the main process then exited with code {code}; raise spec.resources.memoryMb")),
        ExitReason::StartFailed(why) => ("StartFailed", format!("the process did not start: {why}")),
        ExitReason::Lost => ("Lost", "the sandbox's monitor is gone without recording an exit (for example the host rebooted)".to_string()),
        _ if stopping => ("Stopped", format!("stopped on request (exit code {code})")),
        ExitReason::Signaled(sig) => ("Signaled", format!("the process was killed by signal {sig}")),
        ExitReason::Exited if code == 0 => ("Completed", "the process exited with code 0".to_string()),
        ExitReason::Exited => ("Error", format!("the process exited with code {code}; see GET …/logs")),
        ExitReason::PidsLimit { refused } => ("PidsLimit", format!("the process exited with code {code} after the sandbox refused it a new process {refused} time(s) at its process limit; raise spec.resources.pids, or look for a fork loop in GET …/logs")),
    }
}

/// The `Ready` condition's reason and message for a failed launch.
fn launch_failure(e: &LaunchError) -> (&'static str, String) {
    let reason = match e {
        LaunchError::ImageNotFound(_) => "ImageNotFound",
        LaunchError::AuthFailed(_) => "RegistryAuthFailed",
        LaunchError::RegistryUnreachable(_) => "RegistryUnreachable",
        LaunchError::RegistryFailed(_) => "RegistryFailed",
        LaunchError::BuildFailed(_) => "BuildFailed",
        LaunchError::BadArgv(_) => "BadArgv",
        LaunchError::BadSpec { .. } => "BadSpec",
        LaunchError::HostUnfit(_) => "RuntimeUnavailable",
        LaunchError::NotSupported(_) => "NotSupported",
        LaunchError::AlreadyExists(_) | LaunchError::Withdrawn(_) | LaunchError::Internal(_) => {
            "LaunchFailed"
        }
    };
    (reason, readable(&e.to_string()))
}

/// Longest launch failure message a condition carries.
const MAX_FAILURE_MESSAGE: usize = 2048;

/// `message` fit for a condition: control characters (a corrupt layer's bytes quoted in an
/// unpacking error) escaped, and cut at [`MAX_FAILURE_MESSAGE`] bytes.
fn readable(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_FAILURE_MESSAGE));
    for c in message.chars() {
        if out.len() >= MAX_FAILURE_MESSAGE {
            out.push('…');
            break;
        }
        if c.is_control() || c == char::REPLACEMENT_CHARACTER {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes launch progress into the sandbox's `Ready` condition, at most every
/// `PROGRESS_INTERVAL` within a phase, so a large pull does not become a write storm.
struct ProgressWriter {
    state: Arc<Mutex<ProgressState>>,
    /// To the one task that writes the conditions, in the order they were reported.
    writes: tokio::sync::mpsc::UnboundedSender<(&'static str, String)>,
    /// Set when there is progress to write: `creating` must be recorded first.
    wanted: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct ProgressState {
    last_write: Option<Instant>,
    last_reason: &'static str,
    /// The layer the last `Unpacking` write named: each layer is a step of its own, written
    /// when it starts (a large layer's unpack would otherwise show the one before it).
    last_layer: Option<usize>,
    pending: Option<(&'static str, String)>,
}

impl ProgressWriter {
    fn new(
        store: Store,
        tenant: Name,
        id: SandboxId,
        began: tokio::sync::watch::Receiver<bool>,
        wanted: tokio::sync::watch::Sender<bool>,
    ) -> ProgressWriter {
        // One task writes every condition, in order: writes spawned one by one all waited for
        // `creating` and then raced, so an earlier `Pulling` could land after `Unpacking`.
        // `began` becomes true once the sandbox is recorded as `creating`, and is closed without
        // becoming true if that write failed; the task ends when the writer is dropped.
        let (writes, mut queued) = tokio::sync::mpsc::unbounded_channel::<(&'static str, String)>();
        let mut began = began;
        tokio::spawn(async move {
            if began.wait_for(|b| *b).await.is_err() {
                return;
            }
            while let Some((reason, message)) = queued.recv().await {
                let _ = store
                    .update_sandbox(
                        &tenant,
                        id.as_str(),
                        |r| {
                            if r.status.lifecycle_state == SandboxState::Creating {
                                set_condition(
                                    &mut r.status.conditions,
                                    "Ready",
                                    ConditionStatus::False,
                                    reason,
                                    message.clone(),
                                    Utc::now(),
                                    r.meta.generation,
                                );
                            }
                            Ok(())
                        },
                        None,
                    )
                    .await;
            }
        });
        ProgressWriter {
            state: Arc::new(Mutex::new(ProgressState::default())),
            writes,
            wanted,
        }
    }

    fn event(&self, e: ProgressEvent) {
        let (reason, message) = match &e {
            ProgressEvent::Pulling {
                reference,
                bytes_done,
                bytes_total,
            } => (
                "Pulling",
                format!(
                    "pulling {reference}: {} of {} MiB",
                    bytes_done / (1024 * 1024),
                    bytes_total.div_ceil(1024 * 1024)
                ),
            ),
            ProgressEvent::Unpacking {
                layer,
                index,
                count,
            } => (
                "Unpacking",
                format!("unpacking layer {index} of {count} ({layer})"),
            ),
            ProgressEvent::Building { context } => (
                "Building",
                format!("building the image from the Dockerfile in {context}"),
            ),
            // The launch's own state writes say these (`creating`, then `ready` with the pid);
            // a durable write each would only slow the launch down.
            ProgressEvent::Creating | ProgressEvent::Started { .. } => return,
        };
        let layer = match &e {
            ProgressEvent::Unpacking { index, .. } => Some(*index),
            _ => None,
        };
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let due = st.last_reason != reason
            || (layer.is_some() && layer != st.last_layer)
            || st
                .last_write
                .is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL);
        st.pending = Some((reason, message));
        if due {
            st.last_write = Some(Instant::now());
            st.last_reason = reason;
            st.last_layer = layer;
            if let Some((reason, message)) = st.pending.take() {
                self.write(reason, message);
            }
        }
    }

    fn write(&self, reason: &'static str, message: String) {
        self.wanted.send_replace(true);
        // Only fails once the writing task has ended (`creating` was never recorded).
        let _ = self.writes.send((reason, message));
    }

    async fn flush(&self) {
        let pending = self.state.lock().ok().and_then(|mut st| st.pending.take());
        if let Some((reason, message)) = pending {
            self.write(reason, message);
        }
    }
}

/// The controller as the API sees it.
pub struct ControlHandle(pub Arc<SandboxController>);

/// A delete whose teardown failed on the host: a 503, since the delete can be retried (the
/// record stays, marked `Deleting`, and the next start finishes it too), with the cause in the
/// server log rather than in the answer (it names host paths and commands).
fn teardown_failed(id: &SandboxId, cause: &RuntimeError) -> Error {
    tracing::error!(sandbox = %id, error = %cause, "tearing down the sandbox failed; its record is kept");
    Error::runtime_unavailable(format!(
        "the host could not tear down sandbox {id}; it is kept, marked Deleting: retry the \
         delete (the server log says what failed; `nimbus doctor` checks the host)"
    ))
}

impl SandboxControl for ControlHandle {
    fn unavailable(&self) -> Option<Vec<String>> {
        self.0.runtime.recent_preflight().err().map(|e| e.problems)
    }

    fn launch(&self, tenant: Name, id: SandboxId, spec: SandboxSpec, commit: Commit) {
        tokio::spawn(self.0.clone().launch_task(tenant, id, Some(spec), commit));
    }

    fn stop(&self, tenant: Name, id: SandboxId) {
        tokio::spawn(self.0.clone().stop_task(tenant, id));
    }

    fn teardown<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // The record is deleted after this returns; until then the watcher must not turn
            // the kill into a `failed` exit. If the teardown fails the record stays, and so
            // does the watcher's duty.
            self.0.set_deleting(id.as_str(), true);
            let result = self
                .0
                .runtime
                .delete(id)
                .await
                .map_err(|e| teardown_failed(id, &e));
            if result.is_err() {
                self.0.set_deleting(id.as_str(), false);
            }
            result
        })
    }

    fn attach<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<Attached, Error>> {
        Box::pin(async move {
            match self.0.runtime.attach(id).await {
                Ok(conn) => Ok(attached(conn, self.0.runtime.clone(), id.clone())),
                Err(e @ (RuntimeError::NotRunning(_) | RuntimeError::NotFound(_))) => {
                    Err(Error::invalid_transition(
                        "sandbox",
                        id.as_str(),
                        "stopped",
                        format!("{e}; a stdio session needs a running process"),
                    ))
                }
                Err(e) => Err(Error::internal(e)),
            }
        })
    }

    fn files(&self, id: &SandboxId) -> Result<Box<dyn SandboxFiles>, Error> {
        match self.0.runtime.files(id) {
            Ok(files) => Ok(Box::new(Files(files))),
            // A session needs a ready sandbox to open, so a missing root means the sandbox has
            // been deleted since.
            Err(RuntimeError::NotFound(_)) => Err(Error::not_found("sandbox", id.as_str())),
            Err(e) => Err(Error::internal(e)),
        }
    }

    fn logs<'a>(
        &'a self,
        tenant: &'a Name,
        id: &'a SandboxId,
        follow: bool,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<Vec<u8>>, Error>> {
        Box::pin(async move {
            // Following a sandbox that is still being launched waits for its output to exist,
            // so "create, then follow the logs" sees the first byte as soon as it is written.
            let mut wait = Duration::from_millis(1);
            loop {
                match self.0.runtime.logs(id, follow).await {
                    Ok(stream) => return Ok(stream.into_receiver()),
                    Err(RuntimeError::NotFound(_))
                        if follow && self.0.launching(tenant, id).await =>
                    {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_millis(100));
                    }
                    // Never launched (or the launch failed before it had a state dir): no output.
                    Err(RuntimeError::NotFound(_)) => return Ok(tokio::sync::mpsc::channel(1).1),
                    Err(e) => return Err(Error::internal(e)),
                }
            }
        })
    }
}

/// How often, and how far apart, adoption tries to remove a launch that went on after its
/// sandbox was stopped and the server died (see `adopt`): a launch settles within a second or two.
const STRAY_LAUNCH_REMOVAL_ATTEMPTS: u32 = 10;
const STRAY_LAUNCH_REMOVAL_PAUSE: Duration = Duration::from_millis(500);
/// Then, in the background, this many more, 2 s apart.
const STRAY_LAUNCH_BACKGROUND_ATTEMPTS: u32 = 30;

/// Wraps a connection to a monitor's attach socket: input messages become its frames (see
/// `nimbus_runtime::attach`), written by a task of their own so that a process that does not
/// read its stdin holds up only its input. The input queue is bounded in bytes
/// ([`STDIN_QUEUE_BYTES`]); the caller ends the writer task (see [`Attached::writer`]).
fn attached(conn: Attachment, runtime: Arc<Runtime>, id: SandboxId) -> Attached {
    use nimbus_api::control::{stdin_queue, StdinInput};
    use nimbus_runtime::attach::{close_stdin_frame, stdin_frame, MAX_FRAME};
    use tokio::io::AsyncWriteExt;
    let Attachment {
        output,
        input: mut to_monitor,
        end,
    } = conn;
    let (input, mut rx) = stdin_queue(STDIN_QUEUE_BYTES);
    let writer = tokio::spawn(async move {
        // The permit goes once the input is written: it is the queue's room.
        while let Some((msg, _room)) = rx.recv().await {
            let written = match msg {
                StdinInput::Bytes(bytes) => {
                    let mut result = Ok(());
                    for chunk in bytes.chunks(MAX_FRAME) {
                        result = to_monitor.write_all(&stdin_frame(chunk)).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                }
                StdinInput::Close => to_monitor.write_all(&close_stdin_frame()).await,
            };
            if written.is_err() {
                return;
            }
        }
    });
    let ended = Box::new(move || {
        let running = || match runtime.observe(&id) {
            Observed::Running { pid, .. } => std::path::Path::new(&format!("/proc/{pid}")).exists(),
            _ => false,
        };
        match end.get() {
            Some(OutputEnd::Complete) => OutputEnded::Exited,
            // A monitor of an older server sends no end record: it writes the exit record
            // before it closes its clients' connections, so output that ends while the
            // process runs means it let this client go.
            Some(OutputEnd::Unknown) => match running() {
                true => OutputEnded::Cut { running: true },
                false => OutputEnded::Exited,
            },
            Some(OutputEnd::Cut) | None => match runtime.observe(&id) {
                Observed::Exited {
                    reason: ExitReason::Lost,
                    ..
                } => OutputEnded::Lost,
                _ => OutputEnded::Cut { running: running() },
            },
        }
    });
    Attached {
        output,
        input,
        writer,
        ended,
    }
}

/// Stdin input the server holds for one attached client (the WebSocket's messages are at most
/// 1 MiB, so one always fits).
const STDIN_QUEUE_BYTES: usize = 1024 * 1024;

/// The runtime's view of a sandbox's files, with its errors as API errors.
struct Files(nimbus_runtime::files::SandboxFiles);

fn file_error(e: nimbus_runtime::files::FileError) -> Error {
    use nimbus_runtime::files::FileError;
    match e {
        FileError::NotFound(path) => Error::not_found("file", &path),
        FileError::Invalid { path, reason } => {
            Error::invalid_argument("path", format!("{path:?} {reason}"))
        }
        FileError::NoSpace(path) => Error::quota_exhausted(
            format!("no space left for {path:?} in the sandbox's root filesystem: its disk (runtime.disk_mb) is full, of data or of files (inodes); delete files in it first"),
            serde_json::json!({ "path": path }),
        ),
        FileError::Busy(path) => Error::conflict(
            "file",
            &path,
            format!("{path:?} kept changing while it was being resolved (renames racing the lookup); retry"),
        ),
        FileError::HostUnfit(m) => Error::runtime_unavailable(m),
        FileError::Io(m) => Error::internal(m),
    }
}

impl SandboxFiles for Files {
    fn read(&self, path: &str) -> Result<std::fs::File, Error> {
        self.0.read(path).map_err(file_error)
    }

    fn write(&self, path: &str, bytes: &[u8]) -> Result<u64, Error> {
        self.0.write(path, bytes).map_err(file_error)
    }

    fn delete(&self, path: &str) -> Result<(), Error> {
        self.0.delete(path).map_err(file_error)
    }

    fn list(&self, path: &str) -> Result<(Vec<FileEntry>, bool), Error> {
        let (entries, truncated) = self.0.list(path).map_err(file_error)?;
        let entries = entries
            .into_iter()
            .map(|e| FileEntry {
                name: e.name,
                kind: e.kind.to_string(),
                size: e.size,
                mode: e.mode,
                modified: e.modified,
            })
            .collect();
        Ok((entries, truncated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_teardown_is_a_503_that_says_to_retry_without_host_details() {
        let id = SandboxId::generate();
        let e = teardown_failed(
            &id,
            &RuntimeError::Internal("umount /run/nimbus/rootfs/x/root: EBUSY".into()),
        );
        assert_eq!(e.code.http_status(), 503);
        assert_eq!(e.body()["error"]["code"], "runtime.unavailable");
        let message = e.body()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("retry the delete"), "{message}");
        assert!(message.contains(id.as_str()), "{message}");
        assert!(!message.contains("/run/nimbus"), "{message}");
    }

    #[test]
    fn a_launch_failure_quoting_binary_bytes_reads_as_text_and_is_bounded() {
        let corrupt = LaunchError::Internal(format!(
            "unpacking layer 1: numeric field did not have utf-8 text: \u{fffd}\u{14}\u{1b}[2J{}",
            "x".repeat(10_000)
        ));
        let (reason, message) = launch_failure(&corrupt);
        assert_eq!(reason, "LaunchFailed");
        assert!(!message.chars().any(char::is_control), "{message}");
        assert!(message.contains("\\u{14}\\u{1b}[2J"), "{message}");
        assert!(
            message.len() <= MAX_FAILURE_MESSAGE + 4,
            "{}",
            message.len()
        );
        assert!(message.ends_with('…'));
    }
}
