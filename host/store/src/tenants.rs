//! Tenants and server keys.

use chrono::Utc;
use nimbus_core::names::Name;
use nimbus_core::resource::{AuditEvent, TenantRecord};
use nimbus_core::Error;

use crate::{
    commit, db_error, from_doc, insert_audit, is_unique_violation, next_resource_version, to_doc,
    Store,
};

impl Store {
    pub async fn create_tenant(
        &self,
        name: &Name,
        audit: &AuditEvent,
    ) -> Result<TenantRecord, Error> {
        let mut tx = self.begin().await?;
        let record = TenantRecord {
            name: name.clone(),
            created_at: Utc::now(),
            resource_version: next_resource_version(&mut tx).await?,
        };
        let inserted = sqlx::query("INSERT INTO tenants (name, doc) VALUES (?, ?)")
            .bind(name.as_str())
            .bind(to_doc(&record)?)
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::already_exists("tenant", name.as_str()))
            }
            other => other.map_err(db_error)?,
        };
        insert_audit(&mut tx, audit).await?;
        commit(tx).await?;
        Ok(record)
    }

    /// Creates the tenant unless it exists; returns whether it was created.
    pub async fn ensure_tenant(&self, name: &Name) -> Result<bool, Error> {
        if self.get_tenant(name).await?.is_some() {
            return Ok(false);
        }
        let audit = AuditEvent {
            tenant_id: name.to_string(),
            time: Utc::now(),
            actor: "server".into(),
            action: "tenants.create".into(),
            target: format!("tenant/{name}"),
            decision: "allow".into(),
            reason: "created at first start".into(),
        };
        match self.create_tenant(name, &audit).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == nimbus_core::ErrorCode::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn get_tenant(&self, name: &Name) -> Result<Option<TenantRecord>, Error> {
        let doc: Option<String> = sqlx::query_scalar("SELECT doc FROM tenants WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(db_error)?;
        doc.as_deref().map(from_doc).transpose()
    }

    /// Returns the server key `name`, creating it with `make` if absent.
    pub async fn server_key(
        &self,
        name: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let mut tx = self.begin().await?;
        let existing: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM server_keys WHERE name = ?")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        if let Some(v) = existing {
            return Ok(v);
        }
        let value = make();
        sqlx::query("INSERT INTO server_keys (name, value) VALUES (?, ?)")
            .bind(name)
            .bind(&value)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        commit(tx).await?;
        Ok(value)
    }
}
