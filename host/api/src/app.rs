//! Shared state of the API and the steps every handler takes: authenticate (extractor),
//! authorize (before any existence check), audit.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::Utc;
use nimbus_core::authz::{Authorizer, AuthzRequest, Principal, ResourceKind, ResourceRef};
use nimbus_core::names::Name;
use nimbus_core::resource::AuditEvent;
use nimbus_core::Error;
use nimbus_store::Store;

use crate::auth::{authenticate, presented, WorkloadSigner};
use crate::error::ApiError;

pub struct App {
    pub store: Store,
    pub authorizer: Arc<dyn Authorizer>,
    pub signer: WorkloadSigner,
    /// Signs and checks the lists' page tokens.
    pub page_tokens: crate::pagination::PageTokens,
    /// Wakes the session reaper when a session is opened (its expiry may be the earliest).
    pub reaper_wake: tokio::sync::Notify,
    pub limits: Limits,
    /// Runs sandboxes; `None` when the server was started without a sandbox driver.
    pub control: Option<Arc<dyn crate::control::SandboxControl>>,
    /// Launches the sandboxes of started sandbox-backed services; `None` without a sandbox
    /// driver.
    pub services: Option<Arc<dyn crate::control::ServiceControl>>,
    /// Tenants whose creates check their sandbox quota before preparing a launch.
    pub quota_refusals: crate::quota_refusals::QuotaRefusals,
    /// Set once the server starts to stop: attached stdio channels close with a reason.
    pub stopping: Stopping,
}

/// Tells streams that never end on their own (attached stdio) that the server is stopping,
/// so that they close with a reason their client can act on, instead of being cut at the end
/// of the shutdown grace without a word.
pub struct Stopping(tokio::sync::watch::Sender<bool>);

impl Default for Stopping {
    fn default() -> Self {
        Stopping(tokio::sync::watch::channel(false).0)
    }
}

impl Stopping {
    /// The server has begun to stop.
    pub fn begin(&self) {
        self.0.send_replace(true);
    }

    /// Returns once the server has begun to stop (at once if it has).
    pub async fn begun(&self) {
        let mut seen = self.0.subscribe();
        // The sender lives as long as the app, so this only returns once it is set.
        let _ = seen.wait_for(|stopping| *stopping).await;
    }
}

/// Per-tenant capacity (`[limits]` in nimbus.toml).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sandboxes not yet stopped or failed.
    pub sandboxes_per_tenant: u32,
    /// Sessions in the `open` state.
    pub open_sessions_per_tenant: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sandboxes_per_tenant: 1000,
            open_sessions_per_tenant: 10_000,
        }
    }
}

pub type SharedApp = Arc<App>;

impl App {
    /// Tells the service manager, if there is one, that a service changed.
    pub fn service_changed(&self) {
        if let Some(s) = &self.services {
            s.changed();
        }
    }
}

impl App {
    /// Asks the authorizer; a denial is audited and becomes `auth.permission_denied`.
    /// This runs before the target is looked up, so a denial never reveals whether it exists.
    pub async fn authorize(
        &self,
        principal: &Principal,
        action: &str,
        tenant: &Name,
        kind: ResourceKind,
        name: Option<&str>,
        context: Vec<(String, String)>,
    ) -> Result<(), Error> {
        let target = target_of(kind, name);
        self.authorize_audited_as(principal, action, tenant, kind, name, context, &target)
            .await
    }

    /// [`App::authorize`] for a request whose denial is best audited under another target than
    /// the resource it asks about: opening a session names the service or sandbox to reach.
    #[allow(clippy::too_many_arguments)]
    pub async fn authorize_audited_as(
        &self,
        principal: &Principal,
        action: &str,
        tenant: &Name,
        kind: ResourceKind,
        name: Option<&str>,
        context: Vec<(String, String)>,
        audited_target: &str,
    ) -> Result<(), Error> {
        let request = AuthzRequest {
            principal: principal.clone(),
            action: action.to_string(),
            resource: ResourceRef {
                tenant_id: tenant.to_string(),
                kind,
                name: name.map(str::to_string),
            },
            context,
        };
        let decision = self.authorizer.authorize(&request);
        if decision.allow {
            return Ok(());
        }
        let reason = decision
            .reasons
            .first()
            .cloned()
            .unwrap_or_else(|| "the policy denied the request".into());
        tracing::info!(actor = %principal.id, action, tenant = %tenant, target = audited_target, reason, "denied");
        Err(self
            .refuse_audited_as(principal, action, tenant, audited_target, &reason)
            .await)
    }

    /// A 403 for `action` on the target, audited: how every denial, the policy's or a check
    /// that needs no policy, reaches the caller.
    pub async fn refuse(
        &self,
        principal: &Principal,
        action: &str,
        tenant: &Name,
        kind: ResourceKind,
        name: Option<&str>,
        reason: &str,
    ) -> Error {
        let target = target_of(kind, name);
        self.refuse_audited_as(principal, action, tenant, &target, reason)
            .await
    }

    async fn refuse_audited_as(
        &self,
        principal: &Principal,
        action: &str,
        tenant: &Name,
        target: &str,
        reason: &str,
    ) -> Error {
        self.audit_denial(
            self.event(principal, tenant, action, target, "deny", reason),
            Some(principal),
        )
        .await;
        Error::permission_denied(action, reason)
    }

    /// Tenant isolation that needs no policy: a credential of another tenant is refused before
    /// anything about the target is read. Used ahead of lookups whose full authorization needs
    /// facts from the target itself (e.g. a session's opener).
    pub async fn require_same_tenant(
        &self,
        principal: &Principal,
        action: &str,
        tenant: &Name,
        kind: ResourceKind,
        name: Option<&str>,
    ) -> Result<(), Error> {
        if principal.tenant_id == tenant.as_str()
            || principal.grants.iter().any(|g| g == "server:admin")
        {
            return Ok(());
        }
        let reason = format!(
            "credential belongs to tenant {}, not {}",
            nimbus_core::authz::quoted(&principal.tenant_id),
            nimbus_core::authz::quoted(tenant.as_str())
        );
        Err(self
            .refuse(principal, action, tenant, kind, name, &reason)
            .await)
    }

    /// After authorization: the tenant in the path must exist.
    pub async fn require_tenant(&self, tenant: &Name) -> Result<(), Error> {
        match self.store.get_tenant(tenant).await? {
            Some(_) => Ok(()),
            None => Err(Error::not_found("tenant", tenant.as_str())),
        }
    }

    pub fn event(
        &self,
        principal: &Principal,
        tenant: &Name,
        action: &str,
        target: &str,
        decision: &str,
        reason: &str,
    ) -> AuditEvent {
        AuditEvent {
            tenant_id: tenant.to_string(),
            time: Utc::now(),
            actor: principal.id.clone(),
            action: action.to_string(),
            target: target.to_string(),
            decision: decision.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Records a denied request's event (see `Store::record_denial`: in the targeted tenant if
    /// it exists, else in the caller's own, `principal`'s); a failure, or an event with no tenant
    /// to go to, is logged. The caller's outcome does not change.
    pub async fn audit_denial(&self, event: AuditEvent, principal: Option<&Principal>) {
        let actor_tenant = principal.map(|p| p.tenant_id.as_str());
        match self.store.record_denial(&event, actor_tenant).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::info!(
                actor = event.actor,
                tenant = event.tenant_id,
                "a denied request named no existing tenant; not recorded in any audit log"
            ),
            Err(e) => {
                tracing::error!(error = %e, action = event.action, "could not record an audit event")
            }
        }
    }

    /// Records an audit event outside a write (reads). A failure is logged: the caller's
    /// outcome does not change because the audit log could not be written.
    pub async fn audit_best_effort(&self, event: AuditEvent) {
        if let Err(e) = self.store.record_audit(&event).await {
            tracing::error!(error = %e, action = event.action, "could not record an audit event");
        }
    }
}

pub fn target_of(kind: ResourceKind, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{}/{n}", kind.as_str()),
        None => kind.as_str().to_string(),
    }
}

/// Parses the `{tenantId}` path segment.
pub fn tenant_name(raw: &str) -> Result<Name, Error> {
    Name::parse("tenantId", raw)
}

/// The authenticated caller. Failing to authenticate is audited against the tenant named in
/// the path (when it is a valid name) and answered with `auth.unauthenticated`.
pub struct Caller(pub Principal);

impl FromRequestParts<SharedApp> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &SharedApp,
    ) -> Result<Self, Self::Rejection> {
        let result = match presented(&parts.headers) {
            Ok(p) => authenticate(&app.store, &app.signer, p, Utc::now()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(principal) => Ok(Caller(principal)),
            Err(e) => {
                let path = parts.uri.path();
                let tenant = path
                    .strip_prefix("/v1/tenants/")
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|t| Name::parse("tenantId", t).ok());
                if let Some(tenant) = tenant {
                    app.audit_denial(
                        AuditEvent {
                            tenant_id: tenant.to_string(),
                            time: Utc::now(),
                            actor: "anonymous".into(),
                            action: format!("{} {}", parts.method, path),
                            target: path.to_string(),
                            decision: "deny".into(),
                            reason: e.message.clone(),
                        },
                        None,
                    )
                    .await;
                }
                Err(ApiError(e))
            }
        }
    }
}
