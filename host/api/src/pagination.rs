//! Opaque page tokens. A token names the listing it was issued for (collection, tenant and
//! filters), so a token replayed elsewhere, or with other filters, is a clear 400 rather than a
//! silently wrong page, and carries a MAC by a key the server keeps in its store, so an edited or
//! made-up token is refused too. Only `limit` may change from page to page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use nimbus_core::names::Name;
use nimbus_core::Error;
use nimbus_store::Store;
use sha2::Sha256;

use crate::auth::keyed_mac;

use crate::extract::QueryParams;

const VERSION: &str = "p3";
/// Bytes of the HMAC-SHA256 tag kept in a token: forging one is a 2^-128 guess.
const TAG_BYTES: usize = 16;
/// What the key's MACs for page tokens start with (the same store key type signs other things).
const DOMAIN: &[u8] = b"nimbus page token\n";

/// Issues and checks page tokens with the server's page-token key.
#[derive(Clone)]
pub struct PageTokens {
    key: Vec<u8>,
}

pub const PAGE_TOKEN_KEY_NAME: &str = "page-token-hmac";

impl PageTokens {
    /// Loads the key from the store, creating it on first use (tokens stay valid across
    /// restarts).
    pub async fn load(store: &Store) -> Result<PageTokens, Error> {
        Ok(PageTokens {
            key: crate::auth::server_key(store, PAGE_TOKEN_KEY_NAME).await?,
        })
    }

    /// With a given key (tests).
    pub fn with_key(key: Vec<u8>) -> PageTokens {
        PageTokens { key }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = keyed_mac(&self.key, DOMAIN);
        mac.update(payload);
        mac
    }

    /// A token for the page after `after` of a listing; `filters` is [`filters_of`] its query.
    pub fn encode(&self, collection: &str, tenant: &Name, filters: &str, after: &str) -> String {
        let payload = format!("{VERSION}\n{collection}\n{tenant}\n{filters}\n{after}");
        let mut bytes = payload.into_bytes();
        let tag = self.mac(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Returns the key to continue after, or `request.invalid_argument` naming `pageToken`.
    pub fn decode(
        &self,
        token: Option<&str>,
        collection: &str,
        tenant: &Name,
        filters: &str,
    ) -> Result<Option<String>, Error> {
        let Some(token) = token else { return Ok(None) };
        let bad = || {
            Error::invalid_argument("pageToken", "is not a page token from this listing; pass metadata.nextPageToken from the previous page unchanged, with the same filters, or omit it to start over")
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let split = bytes.len().checked_sub(TAG_BYTES).ok_or_else(bad)?;
        let (payload, tag) = bytes.split_at(split);
        // Compared in constant time, so that the tag cannot be guessed byte by byte.
        self.mac(payload)
            .verify_truncated_left(tag)
            .map_err(|_| bad())?;
        let text = std::str::from_utf8(payload).map_err(|_| bad())?;
        let mut parts = text.splitn(5, '\n');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(VERSION), Some(c), Some(t), Some(f), Some(after))
                if c == collection && t == tenant.as_str() && f == filters && !after.is_empty() =>
            {
                Ok(Some(after.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

/// What a listing's query asks for besides paging (`pageToken`, `limit`): a digest of its
/// parameters, which a page token must have been issued with.
pub fn filters_of(q: &QueryParams) -> String {
    use sha2::Digest;
    let mut pairs: Vec<(&str, &str)> = q
        .pairs()
        .filter(|(k, _)| !matches!(*k, "pageToken" | "limit"))
        .collect();
    pairs.sort_unstable();
    let mut h = Sha256::new();
    for (k, v) in pairs {
        // Lengths first, so that no two different queries hash the same bytes.
        h.update((k.len() as u64).to_le_bytes());
        h.update(k);
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The paging part of a list request: where to continue and how many to return, from
/// `pageToken` and `limit` (1–1000, default 50).
pub struct Paging<'a> {
    tokens: &'a PageTokens,
    collection: &'static str,
    tenant: &'a Name,
    filters: String,
    pub after: Option<String>,
    pub limit: i64,
}

impl<'a> Paging<'a> {
    pub fn from_query(
        q: &QueryParams,
        tokens: &'a PageTokens,
        collection: &'static str,
        tenant: &'a Name,
    ) -> Result<Paging<'a>, Error> {
        let filters = filters_of(q);
        Ok(Paging {
            tokens,
            collection,
            tenant,
            after: tokens.decode(q.get("pageToken"), collection, tenant, &filters)?,
            filters,
            limit: nimbus_store::page_size(q.u32("limit", 1, 1000)?),
        })
    }

    /// The token for the page after the one the store returned.
    pub fn next_token(&self, next_after: Option<String>) -> Option<String> {
        next_after.map(|a| {
            self.tokens
                .encode(self.collection, self.tenant, &self.filters, &a)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_listing() {
        let tokens = PageTokens::with_key(b"key".to_vec());
        let demo = Name::parse("t", "demo").unwrap();
        let other = Name::parse("t", "other").unwrap();
        let t = tokens.encode("services", &demo, "f", "worker");
        assert_eq!(
            tokens
                .decode(Some(&t), "services", &demo, "f")
                .unwrap()
                .as_deref(),
            Some("worker")
        );
        assert!(tokens.decode(Some(&t), "sandboxes", &demo, "f").is_err());
        assert!(tokens.decode(Some(&t), "services", &other, "f").is_err());
        assert!(
            tokens.decode(Some(&t), "services", &demo, "g").is_err(),
            "other filters"
        );
        assert!(tokens
            .decode(Some("garbage!"), "services", &demo, "f")
            .is_err());
        assert_eq!(tokens.decode(None, "services", &demo, "f").unwrap(), None);
    }

    #[test]
    fn edited_or_made_up_tokens_are_refused() {
        let tokens = PageTokens::with_key(b"key".to_vec());
        let demo = Name::parse("t", "demo").unwrap();
        let t = tokens.encode("services", &demo, "f", "worker");
        // Every single-character edit of a real token is refused.
        for i in 0..t.len() {
            let mut edited = t.clone().into_bytes();
            edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
            let edited = String::from_utf8(edited).unwrap();
            if edited != t {
                assert!(
                    tokens
                        .decode(Some(&edited), "services", &demo, "f")
                        .is_err(),
                    "{edited}"
                );
            }
        }
        // A well-formed payload without the server's tag, and a token from another key.
        let forged = URL_SAFE_NO_PAD.encode(format!("{VERSION}\nservices\ndemo\nf\nzzz"));
        assert!(tokens
            .decode(Some(&forged), "services", &demo, "f")
            .is_err());
        let foreign = PageTokens::with_key(b"other".to_vec()).encode("services", &demo, "f", "zzz");
        assert!(tokens
            .decode(Some(&foreign), "services", &demo, "f")
            .is_err());
        // The previous, unsigned format.
        let old = URL_SAFE_NO_PAD.encode("p1\nservices\ndemo\nworker");
        assert!(tokens.decode(Some(&old), "services", &demo, "f").is_err());
    }

    #[test]
    fn filters_name_every_parameter_but_paging_in_any_order() {
        let q = |raw: &str| {
            QueryParams::parse(
                Some(raw),
                &["state", "labelKey", "labelValue", "pageToken", "limit"],
            )
            .unwrap()
        };
        let open = filters_of(&q("state=open"));
        assert_eq!(open, filters_of(&q("state=open&limit=5&pageToken=x")));
        assert_ne!(open, filters_of(&q("state=closed")));
        assert_ne!(open, filters_of(&q("")));
        assert_eq!(
            filters_of(&q("labelKey=a&labelValue=b")),
            filters_of(&q("labelValue=b&labelKey=a"))
        );
        assert_ne!(
            filters_of(&q("labelKey=a&labelValue=b")),
            filters_of(&q("labelKey=b&labelValue=a"))
        );
    }
}
