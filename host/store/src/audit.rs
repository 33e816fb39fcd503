//! Audit events: appended in the same transaction as the write they describe, or on their own
//! for reads and denials.

use nimbus_core::resource::AuditEvent;
use nimbus_core::Error;
use sqlx::Row;

use crate::{commit, db_error, from_doc, insert_audit, paginate, Page, Store};

impl Store {
    pub async fn record_audit(&self, event: &AuditEvent) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        insert_audit(&mut tx, event).await?;
        commit(tx).await
    }

    /// Oldest first; `after` is the sequence number of the last event already seen.
    pub async fn list_audit(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Page<AuditEvent>, Error> {
        let rows = sqlx::query("SELECT seq, doc FROM audit_events WHERE tenant_id = ? AND seq > ? ORDER BY seq LIMIT ?")
            .bind(tenant)
            .bind(after.unwrap_or(0))
            .bind(limit + 1)
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.try_get("seq").map_err(db_error)?;
            let doc: String = row.try_get("doc").map_err(db_error)?;
            items.push((seq, from_doc::<AuditEvent>(&doc)?));
        }
        let page = paginate(items, limit, |(seq, _)| seq.to_string());
        Ok(Page {
            items: page.items.into_iter().map(|(_, e)| e).collect(),
            next_after: page.next_after,
        })
    }
}
