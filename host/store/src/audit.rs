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

    /// Records the event of a denied request (401 or 403). Its text is clipped (the path and
    /// ids come from the request, so an unauthenticated caller could otherwise store ~100 KB
    /// per request). It goes to the tenant it targeted if that tenant exists; otherwise to
    /// `actor_tenant`, the denied credential's own tenant, so that its admins see the attempt
    /// (and a tenant created later does not inherit events from before it existed); with
    /// neither, nowhere (the caller logs it). Returns the tenant it went to.
    pub async fn record_denial(
        &self,
        event: &AuditEvent,
        actor_tenant: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let mut event = AuditEvent {
            action: clip(&event.action),
            target: clip(&event.target),
            reason: clip(&event.reason),
            ..event.clone()
        };
        let mut tx = self.begin().await?;
        let exists = |name: String| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM tenants WHERE name = ?").bind(name)
        };
        if exists(event.tenant_id.clone())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?
            == 0
        {
            let fallback = match actor_tenant {
                Some(t) => {
                    exists(t.to_string())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_error)?
                        > 0
                }
                None => false,
            };
            match actor_tenant {
                Some(t) if fallback => event.tenant_id = t.to_string(),
                _ => return Ok(None),
            }
        }
        insert_audit(&mut tx, &event).await?;
        commit(tx).await?;
        Ok(Some(event.tenant_id))
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

/// The longest text an audit field of a denied request keeps, in bytes.
const MAX_DENIAL_FIELD_BYTES: usize = 512;

/// The longest text any audit field keeps, in bytes: an allowed request's fields can carry the
/// caller's input too (a files-channel path of 60 000 bytes, say), and each event is written
/// and synced to disk.
pub(crate) const MAX_AUDIT_FIELD_BYTES: usize = 4096;

/// `text` cut to [`MAX_DENIAL_FIELD_BYTES`] at a character boundary, saying how long it was.
fn clip(text: &str) -> String {
    clip_to(text, MAX_DENIAL_FIELD_BYTES)
}

/// `text` cut to `max` bytes at a character boundary, saying how long it was.
pub(crate) fn clip_to(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let end = text.floor_char_boundary(max);
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}
