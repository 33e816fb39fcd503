//! The Nimbus store: SQLite through sqlx, the only place in the project with SQL.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a write is on disk (in the WAL, fsynced)
//! before the API acknowledges it and survives `kill -9` or power loss; `NORMAL` would only be
//! safe against process crashes. All writes go through one writer connection (SQLite allows one
//! writer anyway; queuing in the pool is cheaper than `SQLITE_BUSY` retries) and every write is
//! one transaction that also bumps the store-wide resource version and, for API writes, inserts
//! the audit event. Reads use a separate pool of read-only connections.
//!
//! Optimistic concurrency: a guarded write reads the row, checks the caller's generation, and
//! writes within the same immediate transaction on the single writer, so of two concurrent
//! writers holding the same generation exactly one wins.

mod audit;
mod credentials;
mod sandboxes;
mod services;
mod sessions;
mod tenants;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use nimbus_core::resource::AuditEvent;
use nimbus_core::Error;
use serde::{de::DeserializeOwned, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqlitePool, Transaction};

pub use sandboxes::SandboxFilter;
pub use sessions::TargetGuard;

/// One page of a keyset-paginated listing. `next_after` is the key to continue after.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<String>,
}

#[derive(Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
}

type Tx = Transaction<'static, Sqlite>;

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Store, Error> {
        let url = format!("sqlite://{}", path.display());
        let base = SqliteConnectOptions::from_str(&url)
            .map_err(Error::internal)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // No ping before each use of a pooled connection (sqlx's default for network
        // databases): an embedded SQLite connection cannot have lost its server, and each ping
        // is another round trip to the connection's worker thread on every query.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .after_release(|conn, _| Box::pin(outside_transaction(conn)))
            .connect_with(base.clone())
            .await
            .map_err(|e| Error::internal(format!("opening {}: {e}", path.display())))?;
        sqlx::migrate!("./migrations")
            .run(&writer)
            .await
            .map_err(|e| Error::internal(format!("migrating {}: {e}", path.display())))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(base.read_only(true))
            .await
            .map_err(|e| Error::internal(format!("opening {} for reading: {e}", path.display())))?;
        Ok(Store { writer, reader })
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Starts a write transaction that takes the write lock at once (`BEGIN IMMEDIATE`
    /// semantics come from the single writer connection).
    async fn begin(&self) -> Result<Tx, Error> {
        self.writer.begin().await.map_err(db_error)
    }
}

/// Whether the writer connection may go back to the pool: only outside any transaction.
///
/// A commit that fails (`SQLITE_FULL` when the disk is full) may already have rolled the
/// transaction back; the rollback sqlx then issues fails in turn, and sqlx still counts the
/// connection as inside a transaction. Its next `begin` would open a savepoint inside a
/// transaction that no commit ever ends: writes acknowledged, seen by no reader, lost at exit.
/// Such a connection is closed instead (the pool opens a fresh one), which ends whatever
/// SQLite still holds open.
async fn outside_transaction(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // The rollback of a transaction dropped without a commit is queued on the connection's
    // worker thread; a ping runs after it.
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!(
            "the database's writer connection was left inside a transaction (a commit or \
             rollback failed, e.g. for want of disk space); reopening it"
        );
        return Ok(false);
    }
    Ok(true)
}

/// Maps a database error: the caller gets a generic message, the log gets the cause.
fn db_error(e: sqlx::Error) -> Error {
    Error::internal(format!("database: {e}"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

fn to_doc<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("encoding a record: {e}")))
}

fn from_doc<T: DeserializeOwned>(doc: &str) -> Result<T, Error> {
    serde_json::from_str(doc).map_err(|e| Error::internal(format!("decoding a stored record: {e}")))
}

/// Bumps and returns the store-wide resource version within `tx`.
async fn next_resource_version(tx: &mut Tx) -> Result<i64, Error> {
    sqlx::query_scalar::<_, i64>(
        "UPDATE counters SET value = value + 1 WHERE name = 'resource_version' RETURNING value",
    )
    .fetch_one(&mut **tx)
    .await
    .map_err(db_error)
}

/// Reads the record `id` of `tenant` from `table` inside `tx`, or `resource.not_found` naming
/// `kind`. `table` is one of this crate's own table names, never caller input.
async fn load_by_id<T: DeserializeOwned>(
    tx: &mut Tx,
    table: &'static str,
    kind: &str,
    tenant: &nimbus_core::names::Name,
    id: &str,
) -> Result<T, Error> {
    let sql = format!("SELECT doc FROM {table} WHERE tenant_id = ? AND id = ?");
    let doc: Option<String> = sqlx::query_scalar(&sql)
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
    match doc {
        Some(d) => from_doc(&d),
        None => Err(Error::not_found(kind, id)),
    }
}

async fn insert_audit(tx: &mut Tx, event: &AuditEvent) -> Result<(), Error> {
    use audit::{clip_to, MAX_AUDIT_FIELD_BYTES as MAX};
    let long = |t: &str| t.len() > MAX;
    let mut event = if long(&event.action) || long(&event.target) || long(&event.reason) {
        AuditEvent {
            action: clip_to(&event.action, MAX),
            target: clip_to(&event.target, MAX),
            reason: clip_to(&event.reason, MAX),
            ..event.clone()
        }
    } else {
        event.clone()
    };
    // Events are listed in the order they are appended. Their time is when they are appended
    // (the single writer connection runs one transaction at a time), so that the two orders
    // agree: an event made first but appended second (a restart's stop, recorded by the
    // service manager before the restart's own event) would otherwise list out of time order.
    event.time = chrono::Utc::now();
    sqlx::query("INSERT INTO audit_events (tenant_id, doc) VALUES (?, ?)")
        .bind(&event.tenant_id)
        .bind(to_doc(&event)?)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

async fn commit(tx: Tx) -> Result<(), Error> {
    tx.commit().await.map_err(db_error)
}

/// Clamps a caller's page size to 1..=1000 (default 50).
pub fn page_size(limit: Option<u32>) -> i64 {
    i64::from(limit.unwrap_or(50).clamp(1, 1000))
}

/// Splits `limit + 1` fetched rows into a page, using `key` of the last kept item as the
/// continuation.
fn paginate<T>(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_after = if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    };
    Page { items, next_after }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use nimbus_core::names::Name;

    pub async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nimbus.db")).await.unwrap();
        store
            .ensure_tenant(&Name::parse("t", "demo").unwrap())
            .await
            .unwrap();
        (store, dir)
    }

    pub fn audit(action: &str) -> AuditEvent {
        AuditEvent {
            tenant_id: "demo".into(),
            time: chrono::Utc::now(),
            actor: "test".into(),
            action: action.into(),
            target: "x".into(),
            decision: "allow".into(),
            reason: String::new(),
        }
    }
}

#[cfg(test)]
mod tests;
