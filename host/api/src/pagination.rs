//! Opaque page tokens. A token names the collection and tenant it was issued for, so a token
//! replayed elsewhere is a clear 400 rather than a silently wrong page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nimbus_core::names::Name;
use nimbus_core::Error;

use crate::extract::QueryParams;

const VERSION: &str = "p1";

pub fn encode(collection: &str, tenant: &Name, after: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{VERSION}\n{collection}\n{tenant}\n{after}"))
}

/// Returns the key to continue after, or `request.invalid_argument` naming `pageToken`.
pub fn decode(
    token: Option<&str>,
    collection: &str,
    tenant: &Name,
) -> Result<Option<String>, Error> {
    let Some(token) = token else { return Ok(None) };
    let bad = || {
        Error::invalid_argument("pageToken", "is not a page token from this listing; pass metadata.nextPageToken from the previous page unchanged, or omit it to start over")
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.splitn(4, '\n');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(VERSION), Some(c), Some(t), Some(after))
            if c == collection && t == tenant.as_str() && !after.is_empty() =>
        {
            Ok(Some(after.to_string()))
        }
        _ => Err(bad()),
    }
}

/// The paging part of a list request: where to continue and how many to return, from
/// `pageToken` and `limit` (1–1000, default 50).
pub struct Paging<'a> {
    collection: &'static str,
    tenant: &'a Name,
    pub after: Option<String>,
    pub limit: i64,
}

impl<'a> Paging<'a> {
    pub fn from_query(
        q: &QueryParams,
        collection: &'static str,
        tenant: &'a Name,
    ) -> Result<Paging<'a>, Error> {
        Ok(Paging {
            collection,
            tenant,
            after: decode(q.get("pageToken"), collection, tenant)?,
            limit: nimbus_store::page_size(q.u32("limit", 1, 1000)?),
        })
    }

    /// The token for the page after the one the store returned.
    pub fn next_token(&self, next_after: Option<String>) -> Option<String> {
        next_after.map(|a| encode(self.collection, self.tenant, &a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_listing() {
        let demo = Name::parse("t", "demo").unwrap();
        let other = Name::parse("t", "other").unwrap();
        let t = encode("services", &demo, "worker");
        assert_eq!(
            decode(Some(&t), "services", &demo).unwrap().as_deref(),
            Some("worker")
        );
        assert!(decode(Some(&t), "sandboxes", &demo).is_err());
        assert!(decode(Some(&t), "services", &other).is_err());
        assert!(decode(Some("garbage!"), "services", &demo).is_err());
        assert_eq!(decode(None, "services", &demo).unwrap(), None);
    }
}
