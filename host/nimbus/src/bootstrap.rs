//! First-start setup: the default tenant, a server-admin credential, and the credential file
//! the SDKs discover (`~/.config/nimbus/application_default_credentials.json`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nimbus_api::auth::hash_secret;
use nimbus_core::names::Name;
use nimbus_core::resource::{AuditEvent, CredentialKind};
use nimbus_store::Store;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialFile {
    pub endpoint: String,
    pub token: String,
    pub tenant_id: String,
}

/// `$NIMBUS_APPLICATION_CREDENTIALS`, else `$HOME/.config/nimbus/application_default_credentials.json`.
pub fn credential_file_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NIMBUS_APPLICATION_CREDENTIALS").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).context("HOME is not set, so the credential file has no place; set HOME or NIMBUS_APPLICATION_CREDENTIALS")?;
    Ok(PathBuf::from(home).join(".config/nimbus/application_default_credentials.json"))
}

/// Ensures the default tenant exists and the credential file holds a working server-admin
/// token for `endpoint`. A file whose token still works here is kept; otherwise a new admin
/// credential is created and the file rewritten (atomically, mode 0600).
pub async fn ensure(store: &Store, tenant: &Name, endpoint: &str) -> anyhow::Result<PathBuf> {
    if store.ensure_tenant(tenant).await? {
        tracing::info!(tenant = %tenant, "created the default tenant");
    }
    let path = credential_file_path()?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(existing) = serde_json::from_str::<CredentialFile>(&text) {
            let valid = store
                .find_credential_by_hash(&hash_secret(&existing.token))
                .await?
                .is_some_and(|c| {
                    c.revoked_at.is_none()
                        && c.expires_at.is_none()
                        && c.grants.iter().any(|g| g == "server:admin")
                });
            if valid && existing.endpoint == endpoint && existing.tenant_id == tenant.as_str() {
                return Ok(path);
            }
            if valid {
                write_file(
                    &path,
                    &CredentialFile {
                        endpoint: endpoint.into(),
                        token: existing.token,
                        tenant_id: tenant.to_string(),
                    },
                )?;
                return Ok(path);
            }
        }
    }
    let (record, secret) = nimbus_api::routes::admin::new_credential(
        tenant,
        CredentialKind::Token,
        vec!["server:admin".into()],
        None,
        Some("server admin written at first start".into()),
        true,
    )?;
    let audit = AuditEvent {
        tenant_id: tenant.to_string(),
        time: chrono::Utc::now(),
        actor: "server".into(),
        action: "credentials.create".into(),
        target: format!("credential/{}", record.id),
        decision: "allow".into(),
        reason: "server admin for the local credential file".into(),
    };
    // The file is written beside its place before the credential is recorded, so that a file
    // that cannot be written (HOME read-only, disk full) leaves no admin credential whose
    // secret nobody has; the rename that then puts it in place is all that is left to fail.
    let staged = stage_file(
        &path,
        &CredentialFile {
            endpoint: endpoint.into(),
            token: secret,
            tenant_id: tenant.to_string(),
        },
    )?;
    if let Err(e) = store.create_credential(&record, &audit).await {
        let _ = std::fs::remove_file(&staged);
        return Err(e.into());
    }
    std::fs::rename(&staged, &path).with_context(|| format!("replacing {}", path.display()))?;
    tracing::info!(path = %path.display(), credential = %record.id, "wrote the server-admin credential file");
    Ok(path)
}

fn write_file(path: &Path, content: &CredentialFile) -> anyhow::Result<()> {
    let staged = stage_file(path, content)?;
    std::fs::rename(&staged, path).with_context(|| format!("replacing {}", path.display()))
}

/// Writes `content` (mode 0600, synced) beside `path`, for a rename to put in place.
fn stage_file(path: &Path, content: &CredentialFile) -> anyhow::Result<PathBuf> {
    let dir = path
        .parent()
        .context("the credential file path has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(serde_json::to_string_pretty(content)?.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    Ok(tmp)
}
