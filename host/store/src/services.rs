//! Services, keyed by (tenant, name).

use nimbus_core::names::Name;
use nimbus_core::resource::{AuditEvent, ServiceRecord};
use nimbus_core::Error;

use crate::{
    commit, db_error, from_doc, insert_audit, is_unique_violation, next_resource_version, paginate,
    to_doc, Page, Store, Tx,
};

impl Store {
    /// Inserts a new service; its resource version is set here.
    pub async fn create_service(
        &self,
        record: &mut ServiceRecord,
        audit: &AuditEvent,
    ) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        record.meta.resource_version = next_resource_version(&mut tx).await?;
        let inserted = sqlx::query("INSERT INTO services (tenant_id, name, generation, backend_kind, doc) VALUES (?, ?, ?, ?, ?)")
            .bind(record.meta.tenant_id.as_str())
            .bind(record.name.as_str())
            .bind(record.meta.generation)
            .bind(record.backend.kind())
            .bind(to_doc(&*record)?)
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::already_exists("service", record.name.as_str()))
            }
            other => other.map_err(db_error)?,
        };
        insert_audit(&mut tx, audit).await?;
        commit(tx).await
    }

    pub async fn get_service(
        &self,
        tenant: &Name,
        name: &Name,
    ) -> Result<Option<ServiceRecord>, Error> {
        let doc: Option<String> =
            sqlx::query_scalar("SELECT doc FROM services WHERE tenant_id = ? AND name = ?")
                .bind(tenant.as_str())
                .bind(name.as_str())
                .fetch_optional(&self.reader)
                .await
                .map_err(db_error)?;
        doc.as_deref().map(from_doc).transpose()
    }

    /// Ordered by name; `after` is the last name already seen.
    pub async fn list_services(
        &self,
        tenant: &Name,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Page<ServiceRecord>, Error> {
        let docs: Vec<String> = sqlx::query_scalar(
            "SELECT doc FROM services WHERE tenant_id = ? AND name > ? ORDER BY name LIMIT ?",
        )
        .bind(tenant.as_str())
        .bind(after.unwrap_or(""))
        .bind(limit + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        let items = docs
            .iter()
            .map(|d| from_doc(d))
            .collect::<Result<Vec<ServiceRecord>, _>>()?;
        Ok(paginate(items, limit, |s| s.name.to_string()))
    }

    /// Every service of one backend kind in every tenant (for controllers).
    pub async fn services_by_backend_kind(&self, kind: &str) -> Result<Vec<ServiceRecord>, Error> {
        let docs: Vec<String> = sqlx::query_scalar(
            "SELECT doc FROM services WHERE backend_kind = ? ORDER BY tenant_id, name",
        )
        .bind(kind)
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        docs.iter().map(|d| from_doc(d)).collect()
    }

    /// Guarded write: within one transaction, reads the service, lets `change` check and
    /// modify it (`change` sees the current record and returns an error to abort), then
    /// stores it, unless `change` left it as it was. `expected_generation`, when given, must equal the stored generation.
    /// `audit` is computed from the result and stored in the same transaction.
    pub async fn update_service(
        &self,
        tenant: &Name,
        name: &Name,
        expected_generation: Option<i64>,
        change: impl FnOnce(&mut ServiceRecord) -> Result<(), Error>,
        audit: Option<&AuditEvent>,
    ) -> Result<ServiceRecord, Error> {
        let mut tx = self.begin().await?;
        let mut record = load_for_write(&mut tx, tenant, name, expected_generation).await?;
        let before = to_doc(&record)?;
        change(&mut record)?;
        if to_doc(&record)? == before {
            // Nothing changed: nothing is written (the resource version stays, so a reader's
            // `ifMatchResourceVersion` still holds) and there is no change to audit.
            return Ok(record);
        }
        record.meta.resource_version = next_resource_version(&mut tx).await?;
        sqlx::query("UPDATE services SET generation = ?, backend_kind = ?, doc = ? WHERE tenant_id = ? AND name = ?")
            .bind(record.meta.generation)
            .bind(record.backend.kind())
            .bind(to_doc(&record)?)
            .bind(tenant.as_str())
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        if let Some(a) = audit {
            insert_audit(&mut tx, a).await?;
        }
        commit(tx).await?;
        Ok(record)
    }

    /// Guarded delete; `check` may refuse (e.g. a running service without `force`). Returns the
    /// final record.
    pub async fn delete_service(
        &self,
        tenant: &Name,
        name: &Name,
        expected_generation: i64,
        check: impl FnOnce(&ServiceRecord) -> Result<(), Error>,
        audit: &AuditEvent,
    ) -> Result<ServiceRecord, Error> {
        let mut tx = self.begin().await?;
        let mut record = load_for_write(&mut tx, tenant, name, Some(expected_generation)).await?;
        check(&record)?;
        record.meta.resource_version = next_resource_version(&mut tx).await?;
        sqlx::query("DELETE FROM services WHERE tenant_id = ? AND name = ?")
            .bind(tenant.as_str())
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        insert_audit(&mut tx, audit).await?;
        crate::sessions::close_sessions_of_deleted_target(
            &mut tx,
            tenant,
            crate::sessions::DeletedTarget::Service(name),
            audit,
        )
        .await?;
        commit(tx).await?;
        Ok(record)
    }
}

async fn load_for_write(
    tx: &mut Tx,
    tenant: &Name,
    name: &Name,
    expected_generation: Option<i64>,
) -> Result<ServiceRecord, Error> {
    let doc: Option<String> =
        sqlx::query_scalar("SELECT doc FROM services WHERE tenant_id = ? AND name = ?")
            .bind(tenant.as_str())
            .bind(name.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?;
    let record: ServiceRecord = match doc {
        Some(d) => from_doc(&d)?,
        None => return Err(Error::not_found("service", name.as_str())),
    };
    if let Some(expected) = expected_generation {
        if record.meta.generation != expected {
            return Err(Error::precondition_failed(
                "service",
                name.as_str(),
                record.meta.generation,
                expected,
            ));
        }
    }
    Ok(record)
}
