-- Nimbus control-plane schema. Migrations are append-only: never edit a landed file.
-- Each resource is stored whole as JSON in `doc`; the other columns exist for lookups,
-- ordering, filtering and optimistic concurrency.

CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    doc         TEXT NOT NULL
);

CREATE TABLE credentials (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(name),
    secret_hash TEXT NOT NULL UNIQUE,
    doc         TEXT NOT NULL
);
CREATE INDEX credentials_by_tenant ON credentials(tenant_id, id);

CREATE TABLE services (
    tenant_id   TEXT NOT NULL REFERENCES tenants(name),
    name        TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    backend_kind TEXT NOT NULL,
    doc         TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE sandboxes (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(name),
    state       TEXT NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX sandboxes_by_tenant ON sandboxes(tenant_id, id);

CREATE TABLE sandbox_labels (
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, key)
);
CREATE INDEX sandbox_labels_by_pair ON sandbox_labels(key, value);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(name),
    state       TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX sessions_by_tenant ON sessions(tenant_id, id);
CREATE INDEX sessions_open_by_expiry ON sessions(state, expires_at);

-- No foreign key: denied requests against tenants that do not exist are audited too.
CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX audit_by_tenant ON audit_events(tenant_id, seq);

-- `resource_version` is one counter for the whole store, bumped by every write.
CREATE TABLE counters (
    name        TEXT PRIMARY KEY,
    value       INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('resource_version', 0);

-- Server secrets (the workload identity signing key).
CREATE TABLE server_keys (
    name        TEXT PRIMARY KEY,
    value       BLOB NOT NULL
);
