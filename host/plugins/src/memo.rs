//! Decisions of a pure authorization policy, remembered by request.
//!
//! A policy component that does not import `nimbus:host/clock` can decide only from what the
//! host gives it: the request, and the slot's config (fixed while the server runs). It has no
//! network, no WASI, and a fresh instance per call keeps nothing from one call to the next. Its
//! decision is then a function of the request, and asking it twice about the same request gives
//! the same answer twice. The memo answers the second time without a call: a hash and a
//! comparison instead of a store, an instance, the request lowered into it and the answer lifted.
//!
//! It is exact, not a cache with a lifetime. Only decisions are remembered, never failures (a
//! trap, a deadline missed under load) nor the policy's own errors, which are retried. Every
//! field of the request is part of the key, compared in full on a hit, so a credential with other
//! grants, another action, resource or context is another entry. A memo belongs to one loaded
//! plugin version: a hot swap starts the new version with an empty one. What a hit skips is the
//! policy's log lines for that request, and its call in the call metrics (it is counted as
//! memoized instead).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use nimbus_core::authz::{AuthzRequest, Decision};

/// Shards, each behind its own lock, so that the API's workers rarely wait for each other.
const SHARDS: usize = 16;
/// Entries per shard. A shard that is full is emptied: requests vary by credential and resource,
/// and the ones asked often are back after one call each. Bounds the memo to 4096 requests.
const SHARD_CAPACITY: usize = 256;

pub(crate) struct DecisionMemo {
    hasher: std::collections::hash_map::RandomState,
    shards: [Mutex<HashMap<u64, (AuthzRequest, Decision)>>; SHARDS],
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

    pub fn key(&self, request: &AuthzRequest) -> MemoKey {
        MemoKey(self.hasher.hash_one(request))
    }

    fn shard(
        &self,
        key: &MemoKey,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (AuthzRequest, Decision)>> {
        let shard = &self.shards[(key.0 % SHARDS as u64) as usize];
        // A poisoned shard only means a panic elsewhere while holding it; the map is intact.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decision made for exactly this request, if one is remembered.
    pub fn get(&self, key: &MemoKey, request: &AuthzRequest) -> Option<Decision> {
        match self.shard(key).get(&key.0) {
            Some((asked, decision)) if asked == request => Some(decision.clone()),
            _ => None,
        }
    }

    /// Remembers the policy's decision for this request.
    pub fn put(&self, key: MemoKey, request: &AuthzRequest, decision: &Decision) {
        let mut shard = self.shard(&key);
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&key.0) {
            shard.clear();
        }
        shard.insert(key.0, (request.clone(), decision.clone()));
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
        memo.put(memo.key(&asked), &asked, &Decision::allow("p", "granted"));
        assert_eq!(
            memo.get(&memo.key(&asked), &asked),
            Some(Decision::allow("p", "granted"))
        );
        for other in [
            request(&["service:a:read", "service:b:read"], "a"),
            request(&["service:a:read"], "b"),
            request(&[], "a"),
        ] {
            assert_eq!(memo.get(&memo.key(&other), &other), None, "{other:?}");
        }
        let mut with_context = asked.clone();
        with_context.context.push(("targetName".into(), "a".into()));
        assert_eq!(memo.get(&memo.key(&with_context), &with_context), None);
    }

    #[test]
    fn a_colliding_key_never_answers_for_another_request() {
        let memo = DecisionMemo::new();
        let a = request(&[], "a");
        let b = request(&[], "b");
        // As if b hashed to a's key: the stored request is compared, so b misses.
        memo.put(memo.key(&a), &a, &Decision::allow("p", "a"));
        assert_eq!(memo.get(&memo.key(&a), &b), None);
    }

    #[test]
    fn the_memo_stays_within_its_bound() {
        let memo = DecisionMemo::new();
        for i in 0..(SHARDS * SHARD_CAPACITY * 3) {
            let r = request(&[], &format!("s{i}"));
            memo.put(memo.key(&r), &r, &Decision::deny("p", "no"));
        }
        assert!(memo.len() <= SHARDS * SHARD_CAPACITY, "{}", memo.len());
        let last = request(&[], &format!("s{}", SHARDS * SHARD_CAPACITY * 3 - 1));
        assert!(memo.get(&memo.key(&last), &last).is_some());
    }
}
