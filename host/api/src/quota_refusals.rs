//! Tenants recently refused a sandbox for their quota.
//!
//! A create prepares its launch (root filesystem, network, disk) while its record is written,
//! and the quota is checked in that write: the fast path for the usual create. A refused
//! create therefore costs a whole sandbox's setup and teardown on the host, and a client that
//! retries on 429, as clients do, would keep the host busy for nothing. So once a tenant has
//! been refused, its creates read the count first, before anything is prepared, until one is
//! accepted or a minute passes without a refusal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after its last refusal a tenant's creates keep checking first.
const CHECK_FIRST_FOR: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct QuotaRefusals(Mutex<HashMap<String, Instant>>);

impl QuotaRefusals {
    pub fn refused(&self, tenant: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, at| at.elapsed() < CHECK_FIRST_FOR);
        map.insert(tenant.to_string(), Instant::now());
    }

    pub fn accepted(&self, tenant: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(tenant);
    }

    /// Whether `tenant`'s next create should check its quota before preparing a launch.
    pub fn check_first(&self, tenant: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(tenant)
            .is_some_and(|at| at.elapsed() < CHECK_FIRST_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_tenant_checks_first_until_accepted() {
        let r = QuotaRefusals::default();
        assert!(!r.check_first("demo"));
        r.refused("demo");
        assert!(r.check_first("demo"));
        assert!(!r.check_first("other"));
        r.accepted("demo");
        assert!(!r.check_first("demo"));
    }
}
