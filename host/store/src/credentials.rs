//! Credentials. Only the sha256 of a secret is stored; lookups go by that hash.

use chrono::Utc;
use nimbus_core::names::Name;
use nimbus_core::resource::{AuditEvent, CredentialRecord};
use nimbus_core::Error;
use sqlx::Row;

use crate::{
    commit, db_error, from_doc, insert_audit, next_resource_version, paginate, to_doc, Page, Store,
};

impl Store {
    pub async fn create_credential(
        &self,
        record: &CredentialRecord,
        audit: &AuditEvent,
    ) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        next_resource_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO credentials (id, tenant_id, secret_hash, doc) VALUES (?, ?, ?, ?)",
        )
        .bind(record.id.as_str())
        .bind(record.tenant_id.as_str())
        .bind(&record.secret_hash)
        .bind(to_doc(record)?)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        insert_audit(&mut tx, audit).await?;
        commit(tx).await
    }

    pub async fn find_credential_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<CredentialRecord>, Error> {
        let row = sqlx::query("SELECT doc, secret_hash FROM credentials WHERE secret_hash = ?")
            .bind(secret_hash)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_error)?;
        row.map(|r| decode(&r)).transpose()
    }

    /// The credential `id` of `tenant`, revoked or not.
    pub async fn get_credential(
        &self,
        tenant: &Name,
        id: &str,
    ) -> Result<Option<CredentialRecord>, Error> {
        let row =
            sqlx::query("SELECT doc, secret_hash FROM credentials WHERE tenant_id = ? AND id = ?")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(&self.reader)
                .await
                .map_err(db_error)?;
        row.map(|r| decode(&r)).transpose()
    }

    pub async fn list_credentials(
        &self,
        tenant: &Name,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<CredentialRecord>, Error> {
        let rows = sqlx::query("SELECT doc, secret_hash FROM credentials WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?")
            .bind(tenant.as_str())
            .bind(after.unwrap_or(""))
            .bind(limit + 1)
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, |c| c.id.to_string()))
    }

    /// Marks the credential revoked (idempotent) and returns it. A credential granting
    /// `server:admin` is revoked only if `may_revoke_server_admin` (the caller is a server admin,
    /// or the operator's CLI): a tenant admin must not lock the server's admins out.
    pub async fn revoke_credential(
        &self,
        tenant: &Name,
        id: &str,
        audit: &AuditEvent,
        may_revoke_server_admin: bool,
    ) -> Result<CredentialRecord, Error> {
        let mut tx = self.begin().await?;
        let row =
            sqlx::query("SELECT doc, secret_hash FROM credentials WHERE tenant_id = ? AND id = ?")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let mut record = match row {
            Some(r) => decode(&r)?,
            None => return Err(Error::not_found("credential", id)),
        };
        if !may_revoke_server_admin && record.grants.iter().any(|g| g == "server:admin") {
            return Err(Error::permission_denied(
                &audit.action,
                "only a server admin may revoke a credential that grants server:admin",
            ));
        }
        if record.revoked_at.is_none() {
            record.revoked_at = Some(Utc::now());
            next_resource_version(&mut tx).await?;
            sqlx::query("UPDATE credentials SET doc = ? WHERE id = ?")
                .bind(to_doc(&record)?)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        insert_audit(&mut tx, audit).await?;
        commit(tx).await?;
        Ok(record)
    }
}

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<CredentialRecord, Error> {
    let doc: String = row.try_get("doc").map_err(db_error)?;
    let mut record: CredentialRecord = from_doc(&doc)?;
    record.secret_hash = row.try_get("secret_hash").map_err(db_error)?;
    Ok(record)
}
