//! A small client for the OCI distribution protocol: manifests (Docker v2 and OCI, lists and
//! indexes), blobs streamed to disk while their sha256 is checked, and the two auth schemes
//! registries use (bearer tokens from a realm, and basic), with credentials from the Docker
//! client config file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::RuntimeConfig;
use crate::reference::{is_loopback_host, ImageRef, DOCKER_HUB};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or index read from a registry; more is refused before it is all in memory.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest answer read from a token endpoint (a token is a few KiB).
const MAX_TOKEN_ANSWER_BYTES: usize = 64 << 10;
/// How long a registry may send nothing while a request or an answer is under way. A registry
/// that stalls is given up on, naming it, rather than waited for forever.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a whole manifest or token answer may take. The idle timeout alone lets a registry
/// that sends a byte every 29 s hold a pull (and every launch waiting on the same image)
/// forever.
const ANSWER_DEADLINE: std::time::Duration = if cfg!(test) {
    std::time::Duration::from_secs(2)
} else {
    std::time::Duration::from_secs(60)
};

/// The slowest a blob may arrive, on average, once [`SLOW_BLOB_GRACE`] has passed.
const MIN_BLOB_BYTES_PER_SEC: u64 = 8 << 10;
const SLOW_BLOB_GRACE: std::time::Duration = if cfg!(test) {
    std::time::Duration::from_secs(2)
} else {
    std::time::Duration::from_secs(60)
};

/// Reads a whole answer of at most `cap` bytes within [`ANSWER_DEADLINE`]; a longer one is
/// refused as soon as it passes `cap`, so a registry cannot fill memory with an endless answer.
async fn read_capped(resp: &mut reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(format!("the answer is larger than {} KiB", cap >> 10));
    }
    let read = async {
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
            if out.len() + chunk.len() > cap {
                return Err(format!("the answer is larger than {} KiB", cap >> 10));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    };
    tokio::time::timeout(ANSWER_DEADLINE, read)
        .await
        .map_err(|_| {
            format!(
                "the answer did not arrive within {} s",
                ANSWER_DEADLINE.as_secs()
            )
        })?
}

/// Why talking to a registry failed; the launch error mapping keeps these apart.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image {reference} was not found on {registry} (check the repository name and tag)")]
    NotFound { reference: String, registry: String },
    #[error("{}", auth_failed_message(reference, registry, *configured, unreadable.as_deref()))]
    AuthFailed {
        reference: String,
        registry: String,
        /// Whether credentials for this registry were configured (and so refused).
        configured: bool,
        /// Why the Docker config file, changed since it was last read, cannot be read now: the
        /// credentials the user just added may be in it.
        unreadable: Option<String>,
    },
    #[error("registry {registry} is unreachable: {cause} (check the address, network and runtime.mirrors / runtime.insecure_registries)")]
    Unreachable { registry: String, cause: String },
    /// Reached, but not serving now (429, 5xx): a retry, not a fix, is what it takes.
    #[error("registry {registry} is not serving now: {cause}")]
    Unavailable { registry: String, cause: String },
    #[error("registry {registry} sent something unusable for {reference}: {cause}")]
    Protocol {
        reference: String,
        registry: String,
        cause: String,
    },
    /// The image is served fine but is beyond what Nimbus runs (too many layers, a huge
    /// config): the image is to change, not the registry.
    #[error("image {reference} cannot run here: {cause}")]
    Unsupported { reference: String, cause: String },
    #[error("image {reference} has no linux/amd64 variant (platforms offered: {offered})")]
    NoPlatform { reference: String, offered: String },
    #[error("{}", io_message(.0))]
    Io(#[from] std::io::Error),
}

/// A registry's (or its token endpoint's) answer that says it is not serving now: 429 or 5xx.
fn not_serving(registry: &str, url: &str, status: reqwest::StatusCode) -> Option<RegistryError> {
    let hint = if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        "it limits how often it may be pulled from; try again later, or pull through a mirror (runtime.mirrors)"
    } else if status.is_server_error() {
        "try again later"
    } else {
        return None;
    };
    Some(RegistryError::Unavailable {
        registry: registry.to_string(),
        cause: format!("GET {url} answered {status}; {hint}"),
    })
}

fn auth_failed_message(
    reference: &str,
    registry: &str,
    configured: bool,
    unreadable: Option<&str>,
) -> String {
    if let Some(problem) = unreadable {
        let held = if configured {
            "refused the credentials read before that"
        } else {
            "asks for credentials, and none were configured for it before that"
        };
        return format!(
            "registry {registry} {held} when pulling {reference}, and the Docker config file \
             changed since and cannot be read: {problem} (fix the file; it is read again at the \
             next pull, no restart needed)"
        );
    }
    let fix = format!(
        "`docker login {registry}` as the user the server runs as, or the Docker config file \
         runtime.docker_config names; it is read again at the next pull, no restart needed"
    );
    if configured {
        format!("registry {registry} refused the credentials configured for it when pulling {reference} ({fix})")
    } else {
        format!("registry {registry} asks for credentials to pull {reference}, and none are configured for it ({fix})")
    }
}

/// A refusal to fill the disk (the store's free-space reserve) says so itself; anything else
/// is a failed write.
fn io_message(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::StorageFull => e.to_string(),
        _ => format!("writing to the image store failed: {e}"),
    }
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, DockerAuthEntry>,
}

#[derive(Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// user/password pairs keyed by registry host.
#[derive(Default, Clone)]
pub struct Credentials(HashMap<String, (String, String)>);

/// Where a client's registry credentials come from: a Docker config file, read again whenever
/// it changes (a `docker login` takes effect at the next pull, without a restart), or a fixed
/// set.
pub struct CredentialSource {
    path: Option<PathBuf>,
    read: Mutex<CredentialsRead>,
}

impl CredentialSource {
    /// Reads `path` now, so that a broken file stops the server's start with its reason.
    pub fn file(path: PathBuf) -> Result<CredentialSource, String> {
        let modified = modified(&path);
        let creds = Credentials::load(&path)?;
        Ok(CredentialSource {
            path: Some(path),
            read: Mutex::new(CredentialsRead {
                modified,
                creds,
                unreadable: None,
            }),
        })
    }

    fn get(&self, registry: &str) -> Option<(String, String)> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.path {
            let now = modified(path);
            if now != read.modified {
                match Credentials::load(path) {
                    Ok(creds) => {
                        *read = CredentialsRead {
                            modified: now,
                            creds,
                            unreadable: None,
                        }
                    }
                    Err(e) => {
                        // Read again at the next pull, by which the editor may be done.
                        tracing::warn!(error = %e, "the registry credentials file changed and cannot be read; pulls keep the credentials read before");
                        read.unreadable = Some(e);
                    }
                }
            }
        }
        read.creds.get(registry).cloned()
    }

    /// Why the file, changed since it was last read, cannot be read now (as of the last
    /// [`get`](Self::get)); `None` when it reads fine.
    fn unreadable(&self) -> Option<String> {
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.unreadable.clone()
    }
}

/// What a [`CredentialSource`] file held when last read, and why its newest version cannot be
/// read, if it cannot.
struct CredentialsRead {
    modified: Option<std::time::SystemTime>,
    creds: Credentials,
    unreadable: Option<String>,
}

impl From<Credentials> for CredentialSource {
    fn from(creds: Credentials) -> Self {
        CredentialSource {
            path: None,
            read: Mutex::new(CredentialsRead {
                modified: None,
                creds,
                unreadable: None,
            }),
        }
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Credentials {
    /// Reads `config.json` in the Docker client config format. A missing file means anonymous.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file: DockerConfigFile = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a Docker config file: {e}", path.display()))?;
        let mut out = HashMap::new();
        for (key, entry) in file.auths {
            let host = normalise_auth_key(&key);
            let pair = match (entry.username, entry.password, entry.auth) {
                (Some(u), Some(p), _) => Some((u, p)),
                (_, _, Some(a)) => base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .ok()
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .and_then(|s| {
                        s.split_once(':')
                            .map(|(u, p)| (u.to_string(), p.to_string()))
                    }),
                _ => None,
            };
            if let Some(pair) = pair {
                out.insert(host, pair);
            }
        }
        Ok(Self(out))
    }

    fn get(&self, registry: &str) -> Option<&(String, String)> {
        self.0.get(registry)
    }
}

/// A `runtime.mirrors` entry's host, and whether it says plain HTTP itself (`http://`); one
/// without a scheme is plain HTTP only where its host is (loopback, `insecure_registries`).
pub(crate) fn mirror_host(mirror: &str) -> (&str, bool) {
    let host = mirror
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    (host, mirror.starts_with("http://"))
}

/// `https://index.docker.io/v1/` → `docker.io`; `https://host:5000` → `host:5000`.
fn normalise_auth_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

/// A fetched manifest: raw bytes (their digest is what identifies the image), media type, digest.
pub struct RawManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDoc {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

/// One place a repository can be fetched from: a base URL plus the repository path there.
#[derive(Clone, Debug)]
struct Endpoint {
    host: String,
    base: String,
}

pub struct RegistryClient {
    http: reqwest::Client,
    creds: CredentialSource,
    mirrors: HashMap<String, Vec<String>>,
    insecure: Vec<String>,
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl RegistryClient {
    pub fn new(config: &RuntimeConfig, creds: impl Into<CredentialSource>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("nimbus/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(IDLE_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            creds: creds.into(),
            mirrors: config.mirrors.clone().into_iter().collect(),
            insecure: config.insecure_registries.clone(),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn scheme_for(&self, host: &str) -> &'static str {
        if is_loopback_host(host) || self.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        }
    }

    /// Mirrors configured for the registry first, then the registry itself.
    fn endpoints(&self, r: &ImageRef) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for m in self.mirrors.get(&r.registry).into_iter().flatten() {
            let (host, plain) = mirror_host(m);
            let scheme = if plain { "http" } else { self.scheme_for(host) };
            out.push(Endpoint {
                host: host.to_string(),
                base: format!("{scheme}://{host}"),
            });
        }
        let host = r.api_host().to_string();
        let scheme = self.scheme_for(&r.registry);
        out.push(Endpoint {
            base: format!("{scheme}://{host}"),
            host: r.registry.clone(),
        });
        out
    }

    /// GET with the auth dance: on 401, obtain a bearer token (or use basic) and retry once.
    async fn get(
        &self,
        ep: &Endpoint,
        r: &ImageRef,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let unreachable = |e: reqwest::Error| RegistryError::Unreachable {
            registry: ep.host.clone(),
            cause: error_chain(&e),
        };
        let key = (ep.base.clone(), r.repository.clone());
        let cached = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        let build = |auth: Option<&str>| {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(a) = auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            req
        };
        let resp = build(cached.as_deref()).send().await.map_err(unreachable)?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // Each host gets its own credentials only: a mirror is another server, and the
        // upstream registry's password is not its to see (it logs in with its own, configured
        // under its host).
        let creds = self.creds.get(&ep.host);
        let auth = if challenge.to_ascii_lowercase().starts_with("bearer") {
            let params = parse_challenge(&challenge);
            let realm = params.get("realm").ok_or_else(|| RegistryError::Protocol {
                reference: r.to_string(),
                registry: ep.host.clone(),
                cause: "bearer challenge without a realm".into(),
            })?;
            let mut treq = self.http.get(realm.as_str());
            let mut q: Vec<(&str, String)> = Vec::new();
            if let Some(s) = params.get("service") {
                q.push(("service", s.clone()));
            }
            q.push((
                "scope",
                params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", r.repository)),
            ));
            treq = treq.query(&q);
            if let Some((u, p)) = &creds {
                treq = treq.basic_auth(u, Some(p));
            }
            let mut tresp = treq.send().await.map_err(unreachable)?;
            if tresp.status() == reqwest::StatusCode::UNAUTHORIZED
                || tresp.status() == reqwest::StatusCode::FORBIDDEN
            {
                return Err(RegistryError::AuthFailed {
                    reference: r.to_string(),
                    registry: ep.host.clone(),
                    configured: creds.is_some(),
                    unreadable: self.creds.unreadable(),
                });
            }
            if let Some(e) = not_serving(&ep.host, realm, tresp.status()) {
                return Err(e);
            }
            if !tresp.status().is_success() {
                return Err(RegistryError::Protocol {
                    reference: r.to_string(),
                    registry: ep.host.clone(),
                    cause: format!("token endpoint {realm} answered {}", tresp.status()),
                });
            }
            #[derive(Deserialize)]
            struct Tok {
                token: Option<String>,
                access_token: Option<String>,
            }
            let token_error = |cause: String| RegistryError::Protocol {
                reference: r.to_string(),
                registry: ep.host.clone(),
                cause: format!("token endpoint {realm} answered: {cause}"),
            };
            let body = read_capped(&mut tresp, MAX_TOKEN_ANSWER_BYTES)
                .await
                .map_err(token_error)?;
            let tok: Tok = serde_json::from_slice(&body).map_err(|e| token_error(e.to_string()))?;
            let t = tok
                .token
                .or(tok.access_token)
                .ok_or_else(|| RegistryError::Protocol {
                    reference: r.to_string(),
                    registry: ep.host.clone(),
                    cause: "token endpoint returned no token".into(),
                })?;
            format!("Bearer {t}")
        } else {
            let Some((u, p)) = &creds else {
                return Err(RegistryError::AuthFailed {
                    reference: r.to_string(),
                    registry: ep.host.clone(),
                    configured: false,
                    unreadable: self.creds.unreadable(),
                });
            };
            let raw = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Basic {raw}")
        };
        let resp = build(Some(&auth)).send().await.map_err(unreachable)?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED
            || resp.status() == reqwest::StatusCode::FORBIDDEN
        {
            return Err(RegistryError::AuthFailed {
                reference: r.to_string(),
                registry: ep.host.clone(),
                configured: creds.is_some(),
                unreadable: self.creds.unreadable(),
            });
        }
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(key, auth);
        }
        Ok(resp)
    }

    /// Tries each endpoint in turn (mirrors first); any failure falls through to the next one,
    /// as Docker and containerd do, so a mirror that wants credentials it was not given does
    /// not stop a pull the registry itself would serve. If every endpoint fails, an auth
    /// failure is what is reported (it names the mirror and is what to fix), else the last
    /// failure.
    async fn get_any(
        &self,
        r: &ImageRef,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut last = None;
        let mut auth_failed = None;
        for ep in self.endpoints(r) {
            let url = format!("{}/v2/{}/{}", ep.base, r.repository, path);
            match self.get(&ep, r, &url, accept).await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                    last = Some(RegistryError::NotFound {
                        reference: r.to_string(),
                        registry: ep.host.clone(),
                    });
                }
                // Straight to 403 without a challenge: refused as it stands.
                Ok(resp) if resp.status() == reqwest::StatusCode::FORBIDDEN => {
                    auth_failed.get_or_insert(RegistryError::AuthFailed {
                        reference: r.to_string(),
                        registry: ep.host.clone(),
                        configured: self.creds.get(&ep.host).is_some(),
                        unreadable: self.creds.unreadable(),
                    });
                }
                // Not serving now: the registry's to recover, a retry's to succeed.
                Ok(resp) if not_serving(&ep.host, &url, resp.status()).is_some() => {
                    last = not_serving(&ep.host, &url, resp.status());
                }
                Ok(resp) => {
                    last = Some(RegistryError::Protocol {
                        reference: r.to_string(),
                        registry: ep.host.clone(),
                        cause: format!("GET {url} answered {}", resp.status()),
                    });
                }
                Err(e @ RegistryError::AuthFailed { .. }) => {
                    tracing::warn!(endpoint = %ep.host, image = %r, error = %e, "the registry endpoint refused the pull's credentials; trying the next one, if any");
                    auth_failed.get_or_insert(e);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(auth_failed
            .or(last)
            .unwrap_or_else(|| RegistryError::Unreachable {
                registry: r.registry.clone(),
                cause: "no endpoint configured".into(),
            }))
    }

    pub async fn manifest(
        &self,
        r: &ImageRef,
        reference: &str,
    ) -> Result<RawManifest, RegistryError> {
        let accept = [
            MT_OCI_INDEX,
            MT_OCI_MANIFEST,
            MT_DOCKER_LIST,
            MT_DOCKER_MANIFEST,
        ]
        .join(", ");
        let mut resp = self
            .get_any(r, &format!("manifests/{reference}"), Some(&accept))
            .await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let proto = |cause: String| RegistryError::Protocol {
            reference: r.to_string(),
            registry: r.registry.clone(),
            cause,
        };
        let bytes = read_capped(&mut resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| proto(format!("manifest {reference}: {e}")))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(proto(format!(
                "manifest digest {digest} does not match the requested {reference}"
            )));
        }
        Ok(RawManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Streams a blob into `dest` (via a temp file in the same dir), checking its digest and
    /// that it is no longer than the `size` its manifest declares (a registry cannot fill the
    /// disk with an endless blob); `progress` gets the number of bytes written so far.
    pub async fn fetch_blob(
        &self,
        r: &ImageRef,
        digest: &str,
        size: u64,
        dest: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let mut resp = match self.get_any(r, &format!("blobs/{digest}"), None).await {
            Ok(resp) => resp,
            // The manifest was found, so "check the repository name and tag" would mislead.
            Err(RegistryError::NotFound { registry, .. }) => {
                return Err(RegistryError::Protocol {
                    reference: r.to_string(),
                    registry,
                    cause: format!(
                        "its manifest lists blob {digest}, which the registry does not have"
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        let tmp = tmp_path(dest);
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let started = std::time::Instant::now();
        let result: Result<(), RegistryError> = async {
            while let Some(chunk) = resp.chunk().await.map_err(|e| RegistryError::Unreachable {
                registry: r.registry.clone(),
                cause: format!("download of {digest} broke off: {}", error_chain(&e)),
            })? {
                // A registry trickling bytes just under the idle timeout would hold the pull
                // (and every launch of the image) for as long as the blob's declared size
                // allows.
                let elapsed = started.elapsed();
                if elapsed > SLOW_BLOB_GRACE
                    && done < MIN_BLOB_BYTES_PER_SEC.saturating_mul(elapsed.as_secs())
                {
                    return Err(RegistryError::Unreachable {
                        registry: r.registry.clone(),
                        cause: format!(
                            "download of {digest} gave {done} bytes in {} s; Nimbus gives up \
                             below {} KiB/s",
                            elapsed.as_secs(),
                            MIN_BLOB_BYTES_PER_SEC >> 10
                        ),
                    });
                }
                if done + chunk.len() as u64 > size {
                    return Err(RegistryError::Protocol {
                        reference: r.to_string(),
                        registry: r.registry.clone(),
                        cause: format!(
                            "blob {digest} is longer than the {size} bytes its manifest declares"
                        ),
                    });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
                done += chunk.len() as u64;
                progress(done);
            }
            file.flush().await?;
            file.sync_all().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(RegistryError::Protocol {
                reference: r.to_string(),
                registry: r.registry.clone(),
                cause: format!("blob {digest} arrived with digest {got}"),
            });
        }
        tokio::fs::rename(&tmp, dest).await?;
        Ok(())
    }
}

pub fn tmp_path(dest: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("blob");
    dest.with_file_name(format!(".tmp-{name}-{}-{n}", std::process::id()))
}

/// An error's message followed by each of its causes' (`a: b: c`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `Bearer realm="https://auth",service="reg",scope="repository:x:pull"` → map.
fn parse_challenge(h: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let rest = h.split_once(' ').map(|(_, r)| r).unwrap_or("");
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                val.push(c);
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), val);
    }
    out
}

/// Picks linux/amd64 from an index or manifest list.
pub fn pick_platform<'a>(
    r: &ImageRef,
    manifests: &'a [Descriptor],
) -> Result<&'a Descriptor, RegistryError> {
    manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .ok_or_else(|| RegistryError::NoPlatform {
            reference: r.to_string(),
            offered: manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_into_parameters() {
        let p = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/alpine:pull");
    }

    #[test]
    fn docker_config_keys_normalise_to_registry_hosts() {
        assert_eq!(
            normalise_auth_key("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(normalise_auth_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(
            normalise_auth_key("http://reg.local:5000/"),
            "reg.local:5000"
        );
    }

    #[test]
    fn docker_config_auth_field_is_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &p,
            format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let c = Credentials::load(&p).unwrap();
        assert_eq!(
            c.get("127.0.0.1:5000"),
            Some(&("alice".to_string(), "s3cret".to_string()))
        );
        assert!(Credentials::load(&dir.path().join("missing.json"))
            .unwrap()
            .0
            .is_empty());
    }

    /// A fake registry speaking just enough HTTP/1.1: manifests need a bearer token that its
    /// token endpoint hands out only for the right basic credentials.
    fn fake_bearer_registry(
        manifest: &'static str,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let token_requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = token_requests.clone();
        let realm = format!("http://{host}/token");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut auth = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if line.to_ascii_lowercase().starts_with("authorization:") {
                        auth = line["authorization:".len()..].trim().to_string();
                    }
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let good_basic = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("bob:pw")
                );
                let (status, headers, body) = if path.starts_with("/token") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert!(
                        path.contains("scope=repository%3Ateam%2Fapp%3Apull")
                            || path.contains("scope=repository:team/app:pull"),
                        "{path}"
                    );
                    if auth == good_basic {
                        (
                            "200 OK",
                            "Content-Type: application/json\r\n".to_string(),
                            r#"{"token":"tok-123"}"#.to_string(),
                        )
                    } else {
                        ("401 Unauthorized", String::new(), String::new())
                    }
                } else if auth == "Bearer tok-123" {
                    (
                        "200 OK",
                        format!("Content-Type: {MT_OCI_MANIFEST}\r\n"),
                        manifest.to_string(),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:team/app:pull\"\r\n"),
                        String::new(),
                    )
                };
                let mut out = stream;
                let _ = write!(out, "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
        });
        (host, token_requests)
    }

    /// A registry on a loopback port that reads each request's head and hands the connection to
    /// `answer`, on a thread of its own. Returns its `host:port`.
    pub(crate) fn fake_registry(
        answer: impl Fn(std::net::TcpStream) + Send + Clone + 'static,
    ) -> String {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    answer(stream);
                });
            }
        });
        host
    }

    /// A registry that answers every request with 200 and a body that never ends (until the
    /// client hangs up), as a hostile one could.
    fn endless_registry() -> String {
        fake_registry(|mut out| {
            use std::io::Write;
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {MT_OCI_MANIFEST}\r\nConnection: close\r\n\r\n"
            );
            let chunk = [b' '; 64 << 10];
            while out.write_all(&chunk).is_ok() {}
        })
    }

    #[tokio::test]
    async fn a_blob_the_registry_does_not_have_is_named_as_such() {
        let host = fake_registry(|mut out| {
            use std::io::Write;
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        });
        let r = ImageRef::parse(&format!("{host}/team/app:v1")).unwrap();
        let client =
            RegistryClient::new(&RuntimeConfig::default(), Credentials::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let digest = format!("sha256:{}", "1".repeat(64));
        let err = client
            .fetch_blob(&r, &digest, 10, &dir.path().join("blob"), &|_| {})
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains(&format!(
                "lists blob {digest}, which the registry does not have"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_registry_trickling_bytes_is_given_up_on() {
        // A byte every 300 ms: never idle for long, never done (the deadlines are 2 s in tests).
        let host = fake_registry(|mut out| {
            use std::io::Write;
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {MT_OCI_MANIFEST}\r\nConnection: close\r\n\r\n"
            );
            while out.write_all(b" ").and_then(|()| out.flush()).is_ok() {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        });
        let r = ImageRef::parse(&format!("{host}/team/app:v1")).unwrap();
        let client =
            RegistryClient::new(&RuntimeConfig::default(), Credentials::default()).unwrap();
        let err = client.manifest(&r, "v1").await.err().unwrap();
        assert!(
            err.to_string().contains("did not arrive within 2 s"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let digest = format!("sha256:{}", "0".repeat(64));
        let err = client
            .fetch_blob(&r, &digest, 1 << 30, &dir.path().join("blob"), &|_| {})
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("gives up below 8 KiB/s"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn endless_answers_are_cut_off_at_their_limits() {
        let host = endless_registry();
        let r = ImageRef::parse(&format!("{host}/team/app:v1")).unwrap();
        let client =
            RegistryClient::new(&RuntimeConfig::default(), Credentials::default()).unwrap();
        let err = client.manifest(&r, "v1").await.err().unwrap();
        assert!(err.to_string().contains("larger than 4096 KiB"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob");
        let digest = format!("sha256:{}", "0".repeat(64));
        let err = client
            .fetch_blob(&r, &digest, 100_000, &dest, &|_| {})
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("longer than the 100000 bytes its manifest declares"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the partial download is removed"
        );
    }

    #[tokio::test]
    async fn a_mirror_never_sees_the_upstream_registrys_credentials() {
        static SAW_AUTH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        // A mirror that asks for Basic credentials and notes any it is sent.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mirror = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if line.to_ascii_lowercase().starts_with("authorization:") {
                        SAW_AUTH.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"m\"\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        let mut config = RuntimeConfig::default();
        config
            .mirrors
            .insert("upstream.test".into(), vec![format!("http://{mirror}")]);
        let mut creds = Credentials::default();
        creds
            .0
            .insert("upstream.test".into(), ("bob".into(), "secret".into()));
        let client = RegistryClient::new(&config, creds).unwrap();
        let r = ImageRef::parse("upstream.test/team/app:v1").unwrap();
        let _ = client.manifest(&r, "v1").await;
        assert!(
            !SAW_AUTH.load(std::sync::atomic::Ordering::SeqCst),
            "the mirror was sent upstream.test's credentials"
        );
    }

    #[tokio::test]
    async fn bearer_challenges_are_answered_with_a_token_from_the_realm() {
        let manifest = r#"{"schemaVersion":2,"config":{"digest":"sha256:0","size":1},"layers":[]}"#;
        let (host, token_requests) = fake_bearer_registry(manifest);
        let r = ImageRef::parse(&format!("{host}/team/app:v1")).unwrap();
        let mut creds = Credentials::default();
        creds.0.insert(host.clone(), ("bob".into(), "pw".into()));
        let client = RegistryClient::new(&RuntimeConfig::default(), creds).unwrap();
        let m = client.manifest(&r, "v1").await.unwrap();
        assert_eq!(m.bytes, manifest.as_bytes());
        assert_eq!(m.media_type, MT_OCI_MANIFEST);
        // The token is reused for the next request.
        client.manifest(&r, "v1").await.unwrap();
        assert_eq!(token_requests.load(std::sync::atomic::Ordering::SeqCst), 1);

        let mut wrong = Credentials::default();
        wrong.0.insert(host.clone(), ("bob".into(), "nope".into()));
        let client = RegistryClient::new(&RuntimeConfig::default(), wrong).unwrap();
        let err = client.manifest(&r, "v1").await.err().unwrap();
        assert!(matches!(err, RegistryError::AuthFailed { .. }), "{err}");
    }

    /// A registry that answers every request with `status` (and, for 401, a basic challenge).
    fn fake_status_registry(status: &'static str) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let challenge = if status.starts_with("401") {
                    "WWW-Authenticate: Basic realm=\"r\"\r\n"
                } else {
                    ""
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\n{challenge}Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        host
    }

    async fn pull_error(host: &str, creds: impl Into<CredentialSource>) -> RegistryError {
        let client = RegistryClient::new(&RuntimeConfig::default(), creds).unwrap();
        let r = ImageRef::parse(&format!("{host}/team/app:v1")).unwrap();
        client.manifest(&r, "v1").await.err().unwrap()
    }

    #[tokio::test]
    async fn registry_refusals_and_outages_are_told_apart_and_say_what_to_do() {
        let forbidden = pull_error(
            &fake_status_registry("403 Forbidden"),
            Credentials::default(),
        )
        .await;
        assert!(
            matches!(
                forbidden,
                RegistryError::AuthFailed {
                    configured: false,
                    ..
                }
            ),
            "{forbidden}"
        );
        assert!(
            forbidden.to_string().contains("none are configured"),
            "{forbidden}"
        );
        let host = fake_status_registry("401 Unauthorized");
        let mut creds = Credentials::default();
        creds.0.insert(host.clone(), ("bob".into(), "wrong".into()));
        let refused = pull_error(&host, creds).await;
        assert!(
            refused
                .to_string()
                .contains("refused the credentials configured"),
            "{refused}"
        );
        let busy = pull_error(
            &fake_status_registry("503 Service Unavailable"),
            Credentials::default(),
        )
        .await;
        assert!(matches!(busy, RegistryError::Unavailable { .. }), "{busy}");
        assert!(!busy.to_string().contains("check the address"), "{busy}");
        assert!(busy.to_string().contains("try again later"), "{busy}");
        let limited = pull_error(
            &fake_status_registry("429 Too Many Requests"),
            Credentials::default(),
        )
        .await;
        assert!(limited.to_string().contains("runtime.mirrors"), "{limited}");
        let odd = pull_error(
            &fake_status_registry("418 I'm a teapot"),
            Credentials::default(),
        )
        .await;
        assert!(matches!(odd, RegistryError::Protocol { .. }), "{odd}");
        let launch = crate::LaunchError::from(odd);
        assert!(
            matches!(launch, crate::LaunchError::RegistryFailed(_)),
            "{launch}"
        );
    }

    #[tokio::test]
    async fn a_token_endpoint_that_is_not_serving_is_an_outage_not_a_broken_registry() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let realm = format!("http://{host}/token");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let answer = if request.contains("/token") {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".to_string()
                } else {
                    format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"r\"\r\nContent-Length: 0\r\n\r\n")
                };
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        let err = pull_error(&host, Credentials::default()).await;
        assert!(matches!(err, RegistryError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("try again later"), "{err}");
    }

    #[tokio::test]
    async fn credentials_written_after_the_start_are_used_at_the_next_pull() {
        let (host, _) = fake_bearer_registry(
            r#"{"schemaVersion":2,"config":{"digest":"sha256:0","size":1},"layers":[]}"#,
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        let client = RegistryClient::new(
            &RuntimeConfig::default(),
            CredentialSource::file(file.clone()).unwrap(),
        )
        .unwrap();
        let r = ImageRef::parse(&format!("{host}/team/app:v1")).unwrap();
        let err = client.manifest(&r, "v1").await.err().unwrap();
        assert!(err.to_string().contains("none are configured"), "{err}");
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw");
        std::fs::write(
            &file,
            format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        client
            .manifest(&r, "v1")
            .await
            .expect("the new credentials are read");
    }

    #[tokio::test]
    async fn a_credentials_file_broken_after_the_start_is_named_when_a_pull_needs_it() {
        let (host, _) = fake_bearer_registry(
            r#"{"schemaVersion":2,"config":{"digest":"sha256:0","size":1},"layers":[]}"#,
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, r#"{"auths":{}}"#).unwrap();
        let client = RegistryClient::new(
            &RuntimeConfig::default(),
            CredentialSource::file(file.clone()).unwrap(),
        )
        .unwrap();
        let r = ImageRef::parse(&format!("{host}/team/app:v1")).unwrap();
        // A half-written login: the credentials it was to add cannot be read.
        std::fs::write(&file, r#"{"auths":{"#).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let err = client.manifest(&r, "v1").await.err().unwrap();
        let told = err.to_string();
        assert!(
            matches!(
                err,
                RegistryError::AuthFailed {
                    configured: false,
                    unreadable: Some(_),
                    ..
                }
            ),
            "{told}"
        );
        assert!(told.contains("cannot be read"), "{told}");
        assert!(told.contains("config.json"), "{told}");
        assert!(!told.contains("none are configured"), "{told}");
    }
}
