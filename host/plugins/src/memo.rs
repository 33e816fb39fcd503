//! Decisions of a pure authorization policy, remembered by request.
//!
//! A policy component that does not import `nimbus:host/clock` can decide only from what the
//! host gives it: the request, and the slot's config (fixed while the server runs). It has no
//! network, no WASI, and a fresh instance per call keeps nothing from one call to the next. Its
//! decision is then a function of the request, and asking it twice about the same request gives
//! the same answer twice. The memo answers the second time without a call: a hash and a
//! comparison instead of a store, an instance, the request lowered into it and the answer lifted.
//!
//! It is exact, not a cache with a lifetime: it gives the decision the policy gives whenever its
//! call completes. Only decisions are remembered, never failures (a trap, a deadline missed
//! under load) nor the policy's own errors, which are retried. Every
//! field of the request is part of the key, compared in full on a hit, so a credential with other
//! grants, another action, resource or context is another entry. A memo belongs to one loaded
//! plugin version: a hot swap starts the new version with an empty one. What a hit skips is the
//! policy's log lines for that request, and its call in the call metrics (it is counted as
//! memoized instead).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use nimbus_core::authz::{AuthzRequest, Decision};

/// Shards, each behind its own lock, so that the API's workers rarely wait for each other.
const SHARDS: usize = 16;
/// Entries per shard. A shard that is full is emptied: requests vary by credential and resource,
/// and the ones asked often are back after one call each. Bounds the memo to 4096 requests.
const SHARD_CAPACITY: usize = 256;
/// A request whose strings take more than this is not memoized (a credential with hundreds of
/// grants): with the entry bound, the memo stays within 16 MiB however large requests are.
const MAX_REQUEST_BYTES: usize = 4096;

type Shard = HashMap<u64, (AuthzRequest, Arc<Decision>), BuildHasherDefault<KeyHasher>>;

pub(crate) struct DecisionMemo {
    hasher: std::collections::hash_map::RandomState,
    shards: [Mutex<Shard>; SHARDS],
}

/// The map's keys are already hashes (of the request, seeded): used as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are u64); anything else folds in byte by byte.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Bytes of text a request carries, for [`MAX_REQUEST_BYTES`].
fn request_bytes(r: &AuthzRequest) -> usize {
    r.principal.id.len()
        + r.principal.tenant_id.len()
        + r.principal.grants.iter().map(String::len).sum::<usize>()
        + r.action.len()
        + r.resource.tenant_id.len()
        + r.resource.name.as_ref().map_or(0, String::len)
        + r.context
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// A request's place in the memo, computed once per request.
pub(crate) struct MemoKey(u64);

impl DecisionMemo {
    pub fn new() -> DecisionMemo {
        DecisionMemo {
            // Seeded per process: a caller cannot choose requests that collide (a collision
            // would only cost a call, never give another request's answer).
            hasher: std::collections::hash_map::RandomState::new(),
            shards: Default::default(),
        }
    }

    /// The request's place in the memo; `None` for a request too large to be memoized.
    pub fn key(&self, request: &AuthzRequest) -> Option<MemoKey> {
        (request_bytes(request) <= MAX_REQUEST_BYTES)
            .then(|| MemoKey(self.hasher.hash_one(request)))
    }

    fn shard(&self, key: &MemoKey) -> std::sync::MutexGuard<'_, Shard> {
        let shard = &self.shards[(key.0 % SHARDS as u64) as usize];
        // A poisoned shard only means a panic elsewhere while holding it; the map is intact.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decision made for exactly this request, if one is remembered.
    pub fn get(&self, key: &MemoKey, request: &AuthzRequest) -> Option<Decision> {
        let found = match self.shard(key).get(&key.0) {
            Some((asked, decision)) if asked == request => Some(decision.clone()),
            _ => None,
        };
        // Copied out of the lock.
        found.map(|d| Decision::clone(&d))
    }

    /// Remembers the policy's decision for this request.
    pub fn put(&self, key: MemoKey, request: &AuthzRequest, decision: &Decision) {
        let entry = (request.clone(), Arc::new(decision.clone()));
        let mut shard = self.shard(&key);
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&key.0) {
            shard.clear();
        }
        shard.insert(key.0, entry);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::authz::{Principal, PrincipalKind, ResourceKind, ResourceRef};

    fn request(grants: &[&str], name: &str) -> AuthzRequest {
        AuthzRequest {
            principal: Principal {
                id: "cred_1".into(),
                kind: PrincipalKind::Token,
                tenant_id: "demo".into(),
                grants: grants.iter().map(|g| g.to_string()).collect(),
            },
            action: "services.get".into(),
            resource: ResourceRef {
                tenant_id: "demo".into(),
                kind: ResourceKind::Service,
                name: Some(name.into()),
            },
            context: vec![],
        }
    }

    #[test]
    fn a_decision_is_given_back_for_exactly_the_same_request_only() {
        let memo = DecisionMemo::new();
        let asked = request(&["service:a:read"], "a");
        memo.put(
            memo.key(&asked).unwrap(),
            &asked,
            &Decision::allow("p", "granted"),
        );
        assert_eq!(
            memo.get(&memo.key(&asked).unwrap(), &asked),
            Some(Decision::allow("p", "granted"))
        );
        for other in [
            request(&["service:a:read", "service:b:read"], "a"),
            request(&["service:a:read"], "b"),
            request(&[], "a"),
        ] {
            assert_eq!(
                memo.get(&memo.key(&other).unwrap(), &other),
                None,
                "{other:?}"
            );
        }
        let mut with_context = asked.clone();
        with_context.context.push(("targetName".into(), "a".into()));
        // Every other field on its own makes another request too.
        let mut others = vec![with_context];
        let mut o = asked.clone();
        o.principal.id = "cred_2".into();
        others.push(o);
        let mut o = asked.clone();
        o.principal.kind = PrincipalKind::ApiKey;
        others.push(o);
        let mut o = asked.clone();
        o.principal.tenant_id = "other".into();
        others.push(o);
        let mut o = asked.clone();
        o.action = "services.delete".into();
        others.push(o);
        let mut o = asked.clone();
        o.resource.tenant_id = "other".into();
        others.push(o);
        let mut o = asked.clone();
        o.resource.kind = ResourceKind::Sandbox;
        others.push(o);
        let mut o = asked.clone();
        o.resource.name = None;
        others.push(o);
        for other in others {
            assert_eq!(
                memo.get(&memo.key(&other).unwrap(), &other),
                None,
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_request_with_hundreds_of_grants_is_not_memoized() {
        let memo = DecisionMemo::new();
        let grants: Vec<String> = (0..300).map(|i| format!("service:s{i}:read")).collect();
        let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
        assert!(memo.key(&request(&grants, "a")).is_none());
        assert!(memo.key(&request(&grants[..10], "a")).is_some());
    }

    #[test]
    fn a_colliding_key_never_answers_for_another_request() {
        let memo = DecisionMemo::new();
        let a = request(&[], "a");
        let b = request(&[], "b");
        // As if b hashed to a's key: the stored request is compared, so b misses.
        memo.put(memo.key(&a).unwrap(), &a, &Decision::allow("p", "a"));
        assert_eq!(memo.get(&memo.key(&a).unwrap(), &b), None);
    }

    #[test]
    fn the_memo_stays_within_its_bound() {
        let memo = DecisionMemo::new();
        for i in 0..(SHARDS * SHARD_CAPACITY * 3) {
            let r = request(&[], &format!("s{i}"));
            memo.put(memo.key(&r).unwrap(), &r, &Decision::deny("p", "no"));
        }
        assert!(memo.len() <= SHARDS * SHARD_CAPACITY, "{}", memo.len());
        let last = request(&[], &format!("s{}", SHARDS * SHARD_CAPACITY * 3 - 1));
        assert!(memo.get(&memo.key(&last).unwrap(), &last).is_some());
    }
}
