//! `nimbus tenant …` and `nimbus credential …`: administration straight on the store (works
//! with the server running or not; SQLite serialises the writers).

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use nimbus_api::auth::{WorkloadClaims, WorkloadSigner};
use nimbus_api::routes::admin::new_credential;
use nimbus_core::names::Name;
use nimbus_core::resource::{AuditEvent, CredentialKind};
use nimbus_store::Store;

use crate::config::default_data_dir;
use crate::serve_cmd::open_store;

#[derive(clap::Args)]
pub struct DataDirArg {
    /// The server's data dir (default: server.data_dir from --config, else
    /// $HOME/.local/share/nimbus).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The operator configuration the server runs with (nimbus.toml): its server.data_dir and
    /// server.default_tenant are the defaults of --data-dir and --tenant.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

impl DataDirArg {
    fn config(&self) -> anyhow::Result<crate::config::Config> {
        match &self.config {
            Some(p) => crate::config::Config::load(p),
            None => Ok(crate::config::Config::default()),
        }
    }

    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match self.data_dir.clone().or(self.config()?.server.data_dir) {
            Some(d) => Ok(d),
            None => default_data_dir(),
        }
    }

    /// The tenant a command acts on without `--tenant`: the server's default tenant.
    fn default_tenant(&self) -> anyhow::Result<String> {
        Ok(self
            .config()?
            .server
            .default_tenant
            .unwrap_or_else(|| "demo".to_string()))
    }

    /// Opens the store of a server that has run at least once. Tenants and credentials written
    /// anywhere else would never be seen by a server (a mistyped `--data-dir` would quietly
    /// make a new, empty one), so a data dir without a database is refused, and not created.
    async fn open_existing(&self) -> anyhow::Result<nimbus_store::Store> {
        let dir = self.resolve()?;
        if !dir.join("nimbus.db").is_file() {
            anyhow::bail!(
                "{} holds no Nimbus database (nimbus.db): pass the --data-dir your server uses, \
                 or run `nimbus serve --data-dir {}` once to create it",
                dir.display(),
                dir.display()
            );
        }
        open_store(&dir).await
    }
}

#[derive(clap::Args)]
pub struct TenantArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(clap::Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create { name: String },
}

#[derive(clap::Args)]
pub struct CredentialArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    #[command(subcommand)]
    command: CredentialCommand,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Token,
    ApiKey,
    WorkloadIdentity,
}

#[derive(clap::Subcommand)]
enum CredentialCommand {
    /// Create a credential and print its secret (shown once).
    Create {
        /// The tenant (default: server.default_tenant from --config, else demo).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value = "token")]
        kind: KindArg,
        /// A grant, e.g. tenant:admin or service:worker:session (repeatable).
        #[arg(long = "grant")]
        grants: Vec<String>,
        #[arg(long)]
        ttl_seconds: Option<u64>,
        #[arg(long)]
        description: Option<String>,
        /// For workload identity tokens: the workload, e.g. sandbox:sbx_….
        #[arg(long)]
        workload: Option<String>,
    },
    /// List a tenant's credentials (never their secrets).
    List {
        /// The tenant (default: server.default_tenant from --config, else demo).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a credential at once.
    Revoke {
        /// The tenant (default: server.default_tenant from --config, else demo).
        #[arg(long)]
        tenant: Option<String>,
        id: String,
    },
}

/// An error as the command's user reads it: its message, and for an internal fault its cause,
/// which a server would only log (a command has no server log to point at).
fn told(e: nimbus_core::Error) -> anyhow::Error {
    match (&e.code, &e.cause) {
        (nimbus_core::ErrorCode::Internal, Some(cause)) => anyhow!("internal error: {cause}"),
        _ => anyhow!(e.message),
    }
}

/// A credential request's error in the command's terms: the API's field names become the
/// flags that set them (`ttlSeconds` → `--ttl-seconds`).
fn as_flags(e: nimbus_core::Error) -> anyhow::Error {
    let field = e
        .details
        .get("field")
        .and_then(|f| f.as_str())
        .unwrap_or("");
    let flag = match field {
        "ttlSeconds" => "--ttl-seconds",
        "description" => "--description",
        f if f.starts_with("grants") => "--grant",
        _ => return told(e),
    };
    let why = e
        .message
        .strip_prefix(&format!("{field}: "))
        .unwrap_or(&e.message);
    anyhow!("{flag}: {why}")
}

/// Fails unless `tenant` exists, saying how to create it.
async fn require_tenant(store: &Store, tenant: &Name) -> anyhow::Result<()> {
    if store.get_tenant(tenant).await.map_err(told)?.is_none() {
        bail!("tenant {tenant} does not exist; create it with `nimbus tenant create {tenant}`");
    }
    Ok(())
}

/// A workload identity token names its workload as the principal (audit actor, a session's
/// opener), so it must name a sandbox of the tenant: a free-form name could pose as another
/// principal (e.g. a credential id) or as nothing that exists.
async fn require_sandbox_workload(
    store: &Store,
    tenant: &Name,
    workload: &str,
) -> anyhow::Result<()> {
    let Some(id) = workload.strip_prefix("sandbox:") else {
        bail!("--workload {workload:?}: name the sandbox as sandbox:<id>, e.g. --workload sandbox:sbx_…");
    };
    let exists = store.get_sandbox(tenant, id).await.map_err(told)?.is_some();
    if !exists {
        bail!("--workload {workload}: tenant {tenant} has no sandbox {id:?} (GET /v1/tenants/{tenant}/sandboxes lists them)");
    }
    Ok(())
}

fn cli_audit(tenant: &Name, action: &str, target: String) -> AuditEvent {
    AuditEvent {
        tenant_id: tenant.to_string(),
        time: chrono::Utc::now(),
        actor: "cli".into(),
        action: action.into(),
        target,
        decision: "allow".into(),
        reason: "nimbus command line".into(),
    }
}

fn name(field: &str, v: &str) -> anyhow::Result<Name> {
    Name::parse(field, v).map_err(told)
}

pub async fn run_tenant(args: TenantArgs) -> anyhow::Result<()> {
    let store = args.data_dir.open_existing().await?;
    match args.command {
        TenantCommand::Create { name: n } => {
            let tenant = name("name", &n)?;
            store
                .create_tenant(
                    &tenant,
                    &cli_audit(&tenant, "tenants.create", format!("tenant/{tenant}")),
                )
                .await
                .map_err(told)?;
            println!("created tenant {tenant}");
        }
    }
    store.close().await;
    Ok(())
}

pub async fn run_credential(args: CredentialArgs) -> anyhow::Result<()> {
    let default_tenant = args.data_dir.default_tenant()?;
    let store = args.data_dir.open_existing().await?;
    let result = credential(&store, args.command, &default_tenant).await;
    store.close().await;
    result
}

async fn credential(
    store: &nimbus_store::Store,
    command: CredentialCommand,
    default_tenant: &str,
) -> anyhow::Result<()> {
    let tenant_or_default = |t: Option<String>| t.unwrap_or_else(|| default_tenant.to_string());
    match command {
        CredentialCommand::Create {
            tenant,
            kind,
            grants,
            ttl_seconds,
            description,
            workload,
        } => {
            // Flags that would be dropped without a word are refused: a --workload given to
            // a token (which then acts as the tenant's, not the workload's), a description a
            // workload identity token (never stored) has nowhere to keep.
            let workload_identity = matches!(kind, KindArg::WorkloadIdentity);
            if workload.is_some() && !workload_identity {
                bail!("--workload is for --kind workload-identity; a token or API key acts for no workload");
            }
            if description.is_some() && workload_identity {
                bail!("--description: a workload identity token is not stored, so it has nowhere to keep one (its grants and workload are in the audit log)");
            }
            if grants.is_empty() {
                bail!("--grant: give at least one (e.g. --grant tenant:admin); a credential without grants can do nothing, and its grants cannot be changed later");
            }
            let tenant = name("--tenant", &tenant_or_default(tenant))?;
            require_tenant(store, &tenant).await?;
            let kind = match kind {
                KindArg::Token => CredentialKind::Token,
                KindArg::ApiKey => CredentialKind::ApiKey,
                KindArg::WorkloadIdentity => {
                    let workload = workload.ok_or_else(|| anyhow!("--workload is required for a workload identity token, e.g. --workload sandbox:sbx_…"))?;
                    require_sandbox_workload(store, &tenant, &workload).await?;
                    for (i, g) in grants.iter().enumerate() {
                        nimbus_api::auth::validate_grant(&format!("--grant[{i}]"), g)
                            .map_err(told)?;
                    }
                    let now = chrono::Utc::now().timestamp();
                    let ttl = i64::try_from(ttl_seconds.unwrap_or(3600)).unwrap_or(3600);
                    let signer = WorkloadSigner::load(store).await.map_err(told)?;
                    // Recorded before the token is shown: a token nobody can list must at
                    // least leave a trace of who minted it, for what, with which grants.
                    let mut audit = cli_audit(
                        &tenant,
                        "credentials.create",
                        format!("workload/{workload}"),
                    );
                    audit.reason = format!(
                        "nimbus command line: workload identity token, grants [{}], valid {ttl} s",
                        grants.join(" ")
                    );
                    store.record_audit(&audit).await.map_err(told)?;
                    let token = signer.mint(&WorkloadClaims {
                        tenant_id: tenant.to_string(),
                        workload,
                        grants,
                        issued_at: now,
                        expires_at: now + ttl,
                    });
                    println!("{token}");
                    return Ok(());
                }
            };
            let (record, secret) =
                new_credential(&tenant, kind, grants, ttl_seconds, description, true)
                    .map_err(as_flags)?;
            store
                .create_credential(
                    &record,
                    &cli_audit(
                        &tenant,
                        "credentials.create",
                        format!("credential/{}", record.id),
                    ),
                )
                .await
                .map_err(told)?;
            eprintln!(
                "created {} {} (the secret below is shown once)",
                record.kind.as_str(),
                record.id
            );
            println!("{secret}");
        }
        CredentialCommand::List { tenant } => {
            let tenant = name("--tenant", &tenant_or_default(tenant))?;
            require_tenant(store, &tenant).await?;
            let mut after: Option<String> = None;
            let mut listed = 0usize;
            loop {
                let page = store
                    .list_credentials(&tenant, after.as_deref(), 500)
                    .await
                    .map_err(told)?;
                listed += page.items.len();
                for c in &page.items {
                    let state = if c.revoked_at.is_some() {
                        "revoked"
                    } else if c.expires_at.is_some_and(|e| e <= chrono::Utc::now()) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{}\t{}\t{}\t{}",
                        c.id,
                        c.kind.as_str(),
                        state,
                        c.grants.join(",")
                    );
                }
                match page.next_after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
            if listed == 0 {
                // On stderr, so that scripts reading the list still see an empty one.
                eprintln!(
                    "tenant {tenant} has no credentials (--tenant names another tenant; \
                     `nimbus credential create --tenant {tenant} --grant tenant:admin` makes one)"
                );
            }
        }
        CredentialCommand::Revoke { tenant, id } => {
            let tenant = name("--tenant", &tenant_or_default(tenant))?;
            let record = store
                .revoke_credential(
                    &tenant,
                    &id,
                    &cli_audit(&tenant, "credentials.revoke", format!("credential/{id}")),
                    true,
                )
                .await
                .map_err(told)?;
            println!("revoked {}", record.id);
        }
    }
    Ok(())
}
