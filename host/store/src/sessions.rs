//! Sessions, keyed by id, with the expiry index the reaper scans.

use chrono::{DateTime, SecondsFormat, Utc};
use nimbus_core::lifecycle::{SessionEvent, SessionState};
use nimbus_core::names::Name;
use nimbus_core::resource::{AuditEvent, SessionRecord};
use nimbus_core::Error;

use crate::{
    commit, db_error, from_doc, insert_audit, load_by_id, next_resource_version, paginate, to_doc,
    Page, Store, Tx,
};

/// Timestamps are stored as fixed-width RFC 3339 UTC so text order is time order.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// What the target of a session must still look like when the open commits.
#[derive(Debug, Clone)]
pub enum TargetGuard {
    /// The service must still exist at this generation.
    Service { name: Name, generation: i64 },
    /// The sandbox must still exist in the `ready` state.
    Sandbox { id: String },
}

/// A session target that is being deleted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DeletedTarget<'a> {
    Service(&'a Name),
    Sandbox(&'a str),
}

impl DeletedTarget<'_> {
    fn is_target_of(&self, session: &SessionRecord) -> bool {
        let target = &session.spec.target;
        match self {
            DeletedTarget::Service(name) => {
                target.service.as_ref().is_some_and(|t| t.name == **name)
            }
            DeletedTarget::Sandbox(id) => target
                .sandbox
                .as_ref()
                .is_some_and(|t| t.id.as_str() == *id),
        }
    }

    fn close_reason(&self) -> String {
        match self {
            DeletedTarget::Service(name) => format!("the service {name} was deleted"),
            DeletedTarget::Sandbox(id) => format!("the sandbox {id} was deleted"),
        }
    }
}

/// Closes the open sessions of `target`, in the transaction that deletes it: a session is a
/// lease on its target and ends with it, so none stays `open` on something gone (or on a
/// service of the same name created later). Each closure is an audit event of the deleting
/// actor, like a close.
pub(crate) async fn close_sessions_of_deleted_target(
    tx: &mut Tx,
    tenant: &Name,
    target: DeletedTarget<'_>,
    deletion: &AuditEvent,
) -> Result<(), Error> {
    // Narrowed in SQL (JSON1) so a tenant's other open sessions are not read; the match is
    // checked again on the decoded record.
    let (path, key) = match target {
        DeletedTarget::Service(name) => ("$.spec.target.service.name", name.as_str()),
        DeletedTarget::Sandbox(id) => ("$.spec.target.sandbox.id", id),
    };
    let docs: Vec<String> = sqlx::query_scalar(
        "SELECT doc FROM sessions WHERE tenant_id = ? AND state = 'open' AND json_extract(doc, ?) = ?",
    )
    .bind(tenant.as_str())
    .bind(path)
    .bind(key)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    let reason = target.close_reason();
    for doc in docs {
        let mut record: SessionRecord = from_doc(&doc)?;
        if !target.is_target_of(&record) {
            continue;
        }
        let Ok(next) = record.status.lifecycle_state.on(SessionEvent::Close) else {
            continue;
        };
        record.status.lifecycle_state = next;
        record.status.close_reason = Some(reason.clone());
        record.status.ended_at = Some(deletion.time);
        record.meta.updated_at = deletion.time;
        record.meta.resource_version = next_resource_version(tx).await?;
        sqlx::query("UPDATE sessions SET state = ?, doc = ? WHERE id = ?")
            .bind(next.as_str())
            .bind(to_doc(&record)?)
            .bind(record.id.as_str())
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        let closed = AuditEvent {
            action: "sessions.close".into(),
            target: format!("session/{}", record.id),
            reason: reason.clone(),
            ..deletion.clone()
        };
        insert_audit(tx, &closed).await?;
    }
    Ok(())
}

impl Store {
    /// Inserts the session if its target is unchanged since the caller read it: a concurrent
    /// change of the service definition is a `resource.conflict`.
    pub async fn open_session(
        &self,
        record: &mut SessionRecord,
        guard: &TargetGuard,
        max_open: u32,
        audit: &AuditEvent,
    ) -> Result<(), Error> {
        let tenant = record.meta.tenant_id.as_str();
        let mut tx = self.begin().await?;
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE tenant_id = ? AND state = 'open'",
        )
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        if open >= i64::from(max_open) {
            // The count and the limit apart: a limit lowered below the count is met all the same.
            let (sessions, some) = match open {
                1 => ("session", "it"),
                _ => ("sessions", "some"),
            };
            return Err(Error::quota_exhausted(
                format!("tenant {tenant:?} has {open} open {sessions} and its limit is {max_open}; close {some} first"),
                serde_json::json!({ "kind": "session", "limit": max_open, "current": open }),
            ));
        }
        match guard {
            TargetGuard::Service { name, generation } => {
                let current: Option<i64> = sqlx::query_scalar(
                    "SELECT generation FROM services WHERE tenant_id = ? AND name = ?",
                )
                .bind(tenant)
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
                if current != Some(*generation) {
                    return Err(Error::conflict(
                        "service",
                        name.as_str(),
                        format!("service {:?} changed while the session was opening (read at generation {generation}); open it again", name.as_str()),
                    ));
                }
            }
            TargetGuard::Sandbox { id } => {
                let state: Option<String> = sqlx::query_scalar(
                    "SELECT state FROM sandboxes WHERE tenant_id = ? AND id = ?",
                )
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
                if state.as_deref() != Some("ready") {
                    return Err(Error::conflict("sandbox", id, format!("sandbox {id:?} changed state while the session was opening; open it again")));
                }
            }
        }
        record.meta.resource_version = next_resource_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO sessions (id, tenant_id, state, expires_at, doc) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(record.id.as_str())
        .bind(tenant)
        .bind(record.status.lifecycle_state.as_str())
        .bind(ts(record.spec.expires_at))
        .bind(to_doc(&*record)?)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        insert_audit(&mut tx, audit).await?;
        commit(tx).await
    }

    pub async fn get_session(
        &self,
        tenant: &Name,
        id: &str,
    ) -> Result<Option<SessionRecord>, Error> {
        let doc: Option<String> =
            sqlx::query_scalar("SELECT doc FROM sessions WHERE tenant_id = ? AND id = ?")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(&self.reader)
                .await
                .map_err(db_error)?;
        doc.as_deref().map(from_doc).transpose()
    }

    pub async fn list_sessions(
        &self,
        tenant: &Name,
        state: Option<SessionState>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<SessionRecord>, Error> {
        let docs: Vec<String> = match state {
            Some(s) => sqlx::query_scalar("SELECT doc FROM sessions WHERE tenant_id = ? AND state = ? AND id > ? ORDER BY id LIMIT ?")
                .bind(tenant.as_str())
                .bind(s.as_str())
                .bind(after.unwrap_or(""))
                .bind(limit + 1)
                .fetch_all(&self.reader)
                .await,
            None => sqlx::query_scalar("SELECT doc FROM sessions WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?")
                .bind(tenant.as_str())
                .bind(after.unwrap_or(""))
                .bind(limit + 1)
                .fetch_all(&self.reader)
                .await,
        }
        .map_err(db_error)?;
        let items = docs
            .iter()
            .map(|d| from_doc(d))
            .collect::<Result<Vec<SessionRecord>, _>>()?;
        Ok(paginate(items, limit, |s| s.id.to_string()))
    }

    /// Moves an open session to `event`'s state. Closing a session that already ended is a
    /// `state.invalid_transition`.
    pub async fn end_session(
        &self,
        tenant: &Name,
        id: &str,
        event: SessionEvent,
        reason: Option<String>,
        now: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<SessionRecord, Error> {
        let mut tx = self.begin().await?;
        let mut record: SessionRecord =
            load_by_id(&mut tx, "sessions", "session", tenant, id).await?;
        let next = record.status.lifecycle_state.on(event).map_err(|t| {
            Error::invalid_transition(
                "session",
                id,
                t.from,
                format!(
                    "session {id:?} is already {}; only open sessions can be closed",
                    t.from
                ),
            )
        })?;
        record.status.lifecycle_state = next;
        record.status.close_reason = reason;
        record.status.ended_at = Some(now);
        record.meta.updated_at = now;
        record.meta.resource_version = next_resource_version(&mut tx).await?;
        sqlx::query("UPDATE sessions SET state = ?, doc = ? WHERE id = ?")
            .bind(next.as_str())
            .bind(to_doc(&record)?)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        insert_audit(&mut tx, audit).await?;
        commit(tx).await?;
        Ok(record)
    }

    /// Open sessions whose expiry is at or before `now`, oldest first, at most `limit`.
    pub async fn sessions_due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, Error> {
        let docs: Vec<String> = sqlx::query_scalar("SELECT doc FROM sessions WHERE state = 'open' AND expires_at <= ? ORDER BY expires_at LIMIT ?")
            .bind(ts(now))
            .bind(limit)
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        docs.iter().map(|d| from_doc(d)).collect()
    }

    /// The earliest expiry among open sessions, so the reaper can sleep until then.
    pub async fn next_session_expiry(&self) -> Result<Option<DateTime<Utc>>, Error> {
        let t: Option<String> =
            sqlx::query_scalar("SELECT MIN(expires_at) FROM sessions WHERE state = 'open'")
                .fetch_one(&self.reader)
                .await
                .map_err(db_error)?;
        Ok(t.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc)))
    }
}
