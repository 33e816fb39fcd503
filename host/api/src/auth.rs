//! Authentication: turning a request's credential into a `Principal`.
//!
//! - Bearer tokens (`nmb_…`) and API keys (`nmk_…`) are random secrets; the store keeps their
//!   sha256 and looks them up by it. A secret has 256 bits of entropy, so a fast hash is
//!   enough (no password stretching needed).
//! - Workload identity tokens (`nwi.<claims>.<mac>`) are signed with HMAC-SHA256 by a key the
//!   server keeps in its store; they carry the tenant, the workload and its grants and expire.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use nimbus_core::authz::{Principal, PrincipalKind};
use nimbus_core::resource::{CredentialKind, CredentialRecord};
use nimbus_core::Error;
use nimbus_store::Store;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "nmb_";
pub const API_KEY_PREFIX: &str = "nmk_";
pub const WORKLOAD_PREFIX: &str = "nwi.";
pub const API_KEY_HEADER: &str = "x-nimbus-api-key";

/// A new random secret for a credential of `kind`.
pub fn new_secret(kind: CredentialKind) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let prefix = match kind {
        CredentialKind::Token => TOKEN_PREFIX,
        CredentialKind::ApiKey => API_KEY_PREFIX,
    };
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The claims of a workload identity token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadClaims {
    pub tenant_id: String,
    /// The workload it identifies, e.g. `sandbox:sbx_…`.
    pub workload: String,
    pub grants: Vec<String>,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Signs and verifies workload identity tokens with the server's key.
#[derive(Clone)]
pub struct WorkloadSigner {
    key: Vec<u8>,
}

pub const WORKLOAD_KEY_NAME: &str = "workload-identity-hmac";

/// The server's 32-byte secret key called `name`, from its store; made at random and stored on
/// first use, so that what it signs stays valid across restarts.
pub(crate) async fn server_key(store: &Store, name: &str) -> Result<Vec<u8>, Error> {
    store
        .server_key(name, || {
            let mut k = vec![0u8; 32];
            rand::thread_rng().fill_bytes(&mut k);
            k
        })
        .await
}

/// HMAC-SHA256 under `key`, started with `domain` so that one key's MACs for one purpose are
/// never valid for another.
pub(crate) fn keyed_mac(key: &[u8], domain: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(domain);
    mac
}

impl WorkloadSigner {
    /// Loads the signing key from the store, creating it on first use.
    pub async fn load(store: &Store) -> Result<WorkloadSigner, Error> {
        Ok(WorkloadSigner {
            key: server_key(store, WORKLOAD_KEY_NAME).await?,
        })
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = keyed_mac(&self.key, WORKLOAD_PREFIX.as_bytes());
        mac.update(payload.as_bytes());
        mac
    }

    pub fn mint(&self, claims: &WorkloadClaims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{WORKLOAD_PREFIX}{payload}.{tag}")
    }

    /// Checks the signature and expiry; returns the claims.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<WorkloadClaims, Error> {
        let bad = || {
            Error::unauthenticated("the workload identity token is malformed or its signature does not verify; ask for a new one")
        };
        let rest = token.strip_prefix(WORKLOAD_PREFIX).ok_or_else(bad)?;
        let (payload, tag) = rest.split_once('.').ok_or_else(bad)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
        self.mac(payload).verify_slice(&tag).map_err(|_| bad())?;
        let claims: WorkloadClaims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(bad)?;
        if claims.expires_at <= now.timestamp() {
            return Err(Error::unauthenticated(
                "the workload identity token has expired; ask for a new one",
            ));
        }
        Ok(claims)
    }
}

/// How the request presented its credential.
pub enum Presented<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
    None,
}

pub fn presented(headers: &axum::http::HeaderMap) -> Result<Presented<'_>, Error> {
    // Two credential headers of one kind are ambiguous (which one did a proxy add?): refused
    // rather than resolved by order.
    for name in [axum::http::header::AUTHORIZATION.as_str(), API_KEY_HEADER] {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(Error::unauthenticated(format!(
                "the {name} header is given more than once; send one credential"
            )));
        }
    }
    let auth = headers.get(axum::http::header::AUTHORIZATION);
    let key = headers.get(API_KEY_HEADER);
    match (auth, key) {
        (Some(_), Some(_)) => Err(Error::unauthenticated(
            "send either Authorization or X-Nimbus-Api-Key, not both",
        )),
        (Some(v), None) => {
            let v = v.to_str().map_err(|_| {
                Error::unauthenticated("the Authorization header is not valid text")
            })?;
            match v.split_once(' ') {
                Some((scheme, token))
                    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
                {
                    Ok(Presented::Bearer(token.trim()))
                }
                _ => Err(Error::unauthenticated(
                    "the Authorization header must be \"Bearer <token>\"",
                )),
            }
        }
        (None, Some(v)) => Ok(Presented::ApiKey(
            v.to_str()
                .map_err(|_| {
                    Error::unauthenticated("the X-Nimbus-Api-Key header is not valid text")
                })?
                .trim(),
        )),
        (None, None) => Ok(Presented::None),
    }
}

/// Resolves a presented credential to a principal, or `auth.unauthenticated`.
pub async fn authenticate(
    store: &Store,
    signer: &WorkloadSigner,
    presented: Presented<'_>,
    now: DateTime<Utc>,
) -> Result<Principal, Error> {
    let (secret, expected_kind) = match presented {
        Presented::None => {
            return Err(Error::unauthenticated(
                "no credential: send \"Authorization: Bearer <token>\" or \"X-Nimbus-Api-Key: <key>\" (the server wrote an admin token to ~/.config/nimbus/application_default_credentials.json at first start)",
            ))
        }
        Presented::Bearer(t) if t.starts_with(WORKLOAD_PREFIX) => {
            let claims = signer.verify(t, now)?;
            require_live_workload(store, &claims).await?;
            return Ok(Principal {
                id: claims.workload,
                kind: PrincipalKind::Workload,
                tenant_id: claims.tenant_id,
                grants: claims.grants,
            });
        }
        Presented::Bearer(t) => (t, CredentialKind::Token),
        Presented::ApiKey(k) if k.starts_with(WORKLOAD_PREFIX) => {
            return Err(Error::unauthenticated(
                "this is a workload identity token: send it as \"Authorization: Bearer <token>\", not as an API key",
            ))
        }
        Presented::ApiKey(k) => (k, CredentialKind::ApiKey),
    };
    let unknown = || {
        Error::unauthenticated("the credential is not recognised, revoked or expired; create a new one with `nimbus credential create`")
    };
    let record: CredentialRecord = store
        .find_credential_by_hash(&hash_secret(secret))
        .await?
        .ok_or_else(unknown)?;
    if record.kind != expected_kind {
        return Err(Error::unauthenticated(match record.kind {
            CredentialKind::ApiKey => "this is an API key: send it in the X-Nimbus-Api-Key header, not as a bearer token",
            CredentialKind::Token => "this is a bearer token: send it as \"Authorization: Bearer <token>\", not as an API key",
        }));
    }
    if record.unusable(now).is_some() {
        return Err(unknown());
    }
    Ok(Principal {
        id: record.id.to_string(),
        kind: match record.kind {
            CredentialKind::Token => PrincipalKind::Token,
            CredentialKind::ApiKey => PrincipalKind::ApiKey,
        },
        tenant_id: record.tenant_id.to_string(),
        grants: record.grants,
    })
}

/// A workload identity token lives only as long as its sandbox: such tokens are not listed
/// among the tenant's credentials, so deleting the sandbox is what revokes them (a token whose
/// sandbox is gone could otherwise act for up to its whole lifetime, and mint lasting
/// credentials if its grants allow).
async fn require_live_workload(store: &Store, claims: &WorkloadClaims) -> Result<(), Error> {
    let gone = || {
        Error::unauthenticated(format!(
            "this workload identity token belongs to {}, which no longer exists; a workload token lives only as long as its sandbox",
            claims.workload
        ))
    };
    let (Some(id), Ok(tenant)) = (
        claims.workload.strip_prefix("sandbox:"),
        nimbus_core::names::Name::parse("tenantId", &claims.tenant_id),
    ) else {
        return Err(gone());
    };
    match store.get_sandbox(&tenant, id).await? {
        Some(_) => Ok(()),
        None => Err(gone()),
    }
}

/// Checks a grant string against the documented grammar (see `nimbus_core::authz`).
pub fn validate_grant(field: &str, grant: &str) -> Result<(), Error> {
    let fixed = [
        "server:admin",
        "tenant:admin",
        "tenant:read",
        "services:create",
        "sandboxes:create",
    ];
    if fixed.contains(&grant) {
        return Ok(());
    }
    let parts: Vec<&str> = grant.split(':').collect();
    let ok = match parts.as_slice() {
        ["service", name, verb] => {
            nimbus_core::names::Name::parse(field, name).is_ok()
                && matches!(*verb, "session" | "read" | "manage")
        }
        ["sandbox", id, verb] => {
            nimbus_core::names::SandboxId::parse(field, id).is_ok()
                && matches!(*verb, "reach" | "manage")
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            field,
            format!("{grant:?} is not a grant; use one of server:admin, tenant:admin, tenant:read, services:create, sandboxes:create, service:<name>:session|read|manage, sandbox:<id>:reach|manage"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> WorkloadSigner {
        WorkloadSigner { key: vec![7; 32] }
    }

    fn claims(exp_in: i64) -> WorkloadClaims {
        let now = Utc::now().timestamp();
        WorkloadClaims {
            tenant_id: "demo".into(),
            workload: "sandbox:sbx_x".into(),
            grants: vec!["tenant:read".into()],
            issued_at: now,
            expires_at: now + exp_in,
        }
    }

    #[test]
    fn workload_tokens_verify_and_carry_their_claims() {
        let s = signer();
        let c = claims(60);
        assert_eq!(s.verify(&s.mint(&c), Utc::now()).unwrap(), c);
    }

    #[test]
    fn tampered_or_foreign_or_expired_workload_tokens_are_rejected() {
        let s = signer();
        let token = s.mint(&claims(60));
        let mut tampered = token.clone().into_bytes();
        let i = WORKLOAD_PREFIX.len() + 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(s
            .verify(std::str::from_utf8(&tampered).unwrap(), Utc::now())
            .is_err());
        let other = WorkloadSigner { key: vec![8; 32] };
        assert!(other.verify(&token, Utc::now()).is_err());
        assert!(s.verify(&s.mint(&claims(-1)), Utc::now()).is_err());
    }

    #[test]
    fn one_credential_header_at_most() {
        use axum::http::{header::AUTHORIZATION, HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert!(matches!(presented(&h), Ok(Presented::Bearer("a"))));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(presented(&h).is_err());
        let mut h = HeaderMap::new();
        h.append(API_KEY_HEADER, HeaderValue::from_static("k1"));
        h.append(API_KEY_HEADER, HeaderValue::from_static("k2"));
        assert!(presented(&h).is_err());
    }

    #[test]
    fn grants_follow_the_grammar() {
        for ok in [
            "tenant:admin",
            "service:worker:session",
            "sandbox:sbx_0000000000000000000000000a:reach",
        ] {
            validate_grant("g", ok).unwrap();
        }
        for bad in [
            "admin",
            "service:Worker:session",
            "service:w:delete",
            "sandbox:x:reach",
            "",
        ] {
            assert!(validate_grant("g", bad).is_err(), "{bad}");
        }
    }
}
