//! Sandboxes, keyed by id, with a label index for filtering.

use nimbus_core::lifecycle::SandboxState;
use nimbus_core::names::Name;
use nimbus_core::resource::{AuditEvent, SandboxRecord};
use nimbus_core::Error;

use crate::{
    commit, db_error, from_doc, insert_audit, load_by_id, next_resource_version, paginate, to_doc,
    Page, Store,
};

/// Filters of a sandbox listing; all given ones must match.
#[derive(Debug, Default, Clone)]
pub struct SandboxFilter {
    pub label_key: Option<String>,
    /// Only with `label_key`.
    pub label_value: Option<String>,
    pub state: Option<SandboxState>,
}

fn sandbox_quota_exhausted(tenant: &str, live: i64, max_live: u32) -> Error {
    // The count and the limit apart: a limit lowered below the count is met all the same.
    let (sandboxes, some) = match live {
        1 => ("sandbox", "it"),
        _ => ("sandboxes", "some"),
    };
    Error::quota_exhausted(
        format!("tenant {tenant:?} has {live} {sandboxes} running or pending and its limit is {max_live}; stop or delete {some} first"),
        serde_json::json!({ "kind": "sandbox", "limit": max_live, "current": live }),
    )
}

impl Store {
    /// Refuses a create, as `create_sandbox` would, when the tenant already has `max_live`
    /// sandboxes running or pending; a read only, so a create may still be refused by its
    /// write (which alone decides).
    pub async fn check_sandbox_quota(&self, tenant: &str, max_live: u32) -> Result<(), Error> {
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sandboxes WHERE tenant_id = ? AND state NOT IN ('stopped', 'failed')",
        )
        .bind(tenant)
        .fetch_one(&self.reader)
        .await
        .map_err(db_error)?;
        if live >= i64::from(max_live) {
            return Err(sandbox_quota_exhausted(tenant, live, max_live));
        }
        Ok(())
    }

    /// Writes a new sandbox record with its audit event, or refuses it: `resource.not_found`
    /// when its tenant does not exist, `quota.exhausted` when the tenant has `max_live`
    /// sandboxes running or pending.
    pub async fn create_sandbox(
        &self,
        record: &mut SandboxRecord,
        max_live: u32,
        audit: &AuditEvent,
    ) -> Result<(), Error> {
        let tenant = record.meta.tenant_id.as_str();
        let mut tx = self.begin().await?;
        // One statement takes the next resource version and reads the tenant's existence and
        // live count: each statement is a round trip to the connection's thread, and this
        // transaction stands between a create and its process's start. A refusal rolls the
        // version back with the transaction.
        let (version, tenant_exists, live): (i64, bool, i64) = sqlx::query_as(
            "UPDATE counters SET value = value + 1 WHERE name = 'resource_version' \
             RETURNING value, \
             EXISTS (SELECT 1 FROM tenants WHERE name = ?1), \
             (SELECT COUNT(*) FROM sandboxes WHERE tenant_id = ?1 AND state NOT IN ('stopped', 'failed'))",
        )
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        if !tenant_exists {
            return Err(Error::not_found("tenant", tenant));
        }
        if live >= i64::from(max_live) {
            return Err(sandbox_quota_exhausted(tenant, live, max_live));
        }
        record.meta.resource_version = version;
        sqlx::query("INSERT INTO sandboxes (id, tenant_id, state, doc) VALUES (?, ?, ?, ?)")
            .bind(record.id.as_str())
            .bind(record.meta.tenant_id.as_str())
            .bind(record.status.lifecycle_state.as_str())
            .bind(to_doc(&*record)?)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        for (k, v) in &record.meta.labels {
            sqlx::query("INSERT INTO sandbox_labels (sandbox_id, key, value) VALUES (?, ?, ?)")
                .bind(record.id.as_str())
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        insert_audit(&mut tx, audit).await?;
        commit(tx).await
    }

    pub async fn get_sandbox(
        &self,
        tenant: &Name,
        id: &str,
    ) -> Result<Option<SandboxRecord>, Error> {
        let doc: Option<String> =
            sqlx::query_scalar("SELECT doc FROM sandboxes WHERE tenant_id = ? AND id = ?")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(&self.reader)
                .await
                .map_err(db_error)?;
        doc.as_deref().map(from_doc).transpose()
    }

    /// Ordered by id (creation order); `after` is the last id already seen.
    pub async fn list_sandboxes(
        &self,
        tenant: &Name,
        filter: &SandboxFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<SandboxRecord>, Error> {
        let mut sql =
            String::from("SELECT s.doc FROM sandboxes s WHERE s.tenant_id = ? AND s.id > ?");
        if filter.state.is_some() {
            sql.push_str(" AND s.state = ?");
        }
        if filter.label_key.is_some() {
            sql.push_str(" AND EXISTS (SELECT 1 FROM sandbox_labels l WHERE l.sandbox_id = s.id AND l.key = ?");
            if filter.label_value.is_some() {
                sql.push_str(" AND l.value = ?");
            }
            sql.push(')');
        }
        sql.push_str(" ORDER BY s.id LIMIT ?");
        let mut query = sqlx::query_scalar::<_, String>(&sql)
            .bind(tenant.as_str())
            .bind(after.unwrap_or(""));
        if let Some(state) = filter.state {
            query = query.bind(state.as_str());
        }
        if let Some(key) = &filter.label_key {
            query = query.bind(key);
            if let Some(value) = &filter.label_value {
                query = query.bind(value);
            }
        }
        let docs = query
            .bind(limit + 1)
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        let items = docs
            .iter()
            .map(|d| from_doc(d))
            .collect::<Result<Vec<SandboxRecord>, _>>()?;
        Ok(paginate(items, limit, |s| s.id.to_string()))
    }

    /// Every sandbox whose delete was asked for and not finished (its condition
    /// [`nimbus_core::resource::DELETING_CONDITION`] is there), in any state and tenant: a
    /// delete the server's end cut off, for the next start to finish.
    pub async fn sandboxes_being_deleted(&self) -> Result<Vec<SandboxRecord>, Error> {
        let docs: Vec<String> = sqlx::query_scalar(
            "SELECT doc FROM sandboxes WHERE EXISTS (SELECT 1 FROM \
             json_each(doc, '$.status.conditions') WHERE json_extract(value, '$.type') = ?) \
             ORDER BY id",
        )
        .bind(nimbus_core::resource::DELETING_CONDITION)
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        docs.iter().map(|d| from_doc(d)).collect()
    }

    /// Every sandbox not yet in a terminal state, in every tenant (for controllers).
    pub async fn live_sandboxes(&self) -> Result<Vec<SandboxRecord>, Error> {
        let docs: Vec<String> = sqlx::query_scalar(
            "SELECT doc FROM sandboxes WHERE state NOT IN ('stopped', 'failed') ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        docs.iter().map(|d| from_doc(d)).collect()
    }

    /// Every sandbox the service manager launched (those labelled
    /// [`nimbus_core::spec::SERVICE_UID_LABEL`]), in every tenant, oldest first, ended ones
    /// included.
    pub async fn service_sandboxes(&self) -> Result<Vec<SandboxRecord>, Error> {
        let docs: Vec<String> = sqlx::query_scalar(
            "SELECT s.doc FROM sandboxes s JOIN sandbox_labels l ON l.sandbox_id = s.id \
             WHERE l.key = ? ORDER BY s.id",
        )
        .bind(nimbus_core::spec::SERVICE_UID_LABEL)
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        docs.iter().map(|d| from_doc(d)).collect()
    }

    /// Guarded write of one sandbox (see `update_service`).
    pub async fn update_sandbox(
        &self,
        tenant: &Name,
        id: &str,
        change: impl FnOnce(&mut SandboxRecord) -> Result<(), Error>,
        audit: Option<&AuditEvent>,
    ) -> Result<SandboxRecord, Error> {
        let mut tx = self.begin().await?;
        let mut record: SandboxRecord =
            load_by_id(&mut tx, "sandboxes", "sandbox", tenant, id).await?;
        change(&mut record)?;
        record.meta.resource_version = next_resource_version(&mut tx).await?;
        sqlx::query("UPDATE sandboxes SET state = ?, doc = ? WHERE id = ?")
            .bind(record.status.lifecycle_state.as_str())
            .bind(to_doc(&record)?)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        if let Some(a) = audit {
            insert_audit(&mut tx, a).await?;
        }
        commit(tx).await?;
        Ok(record)
    }

    pub async fn delete_sandbox(
        &self,
        tenant: &Name,
        id: &str,
        check: impl FnOnce(&SandboxRecord) -> Result<(), Error>,
        audit: &AuditEvent,
    ) -> Result<SandboxRecord, Error> {
        let mut tx = self.begin().await?;
        let mut record: SandboxRecord =
            load_by_id(&mut tx, "sandboxes", "sandbox", tenant, id).await?;
        check(&record)?;
        record.meta.resource_version = next_resource_version(&mut tx).await?;
        sqlx::query("DELETE FROM sandboxes WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        insert_audit(&mut tx, audit).await?;
        crate::sessions::close_sessions_of_deleted_target(
            &mut tx,
            tenant,
            crate::sessions::DeletedTarget::Sandbox(id),
            audit,
        )
        .await?;
        commit(tx).await?;
        Ok(record)
    }
}

impl Store {
    /// The tenant of sandbox `id`, whatever its state (ids are unique across tenants).
    pub async fn sandbox_tenant(&self, id: &str) -> Result<Option<String>, Error> {
        sqlx::query_scalar("SELECT tenant_id FROM sandboxes WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_error)
    }
}
