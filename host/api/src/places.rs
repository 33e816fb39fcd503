//! Counted places per key (a tenant, a sandbox), held while some work is in flight and given
//! back when dropped: how the channels cap what one tenant or one sandbox may hold of this
//! server at once (uploads in memory, connections to a monitor).

use std::collections::HashMap;
use std::sync::Mutex;

/// The places taken per key; declare one as a `static` per kind of work.
pub struct Places(Mutex<Option<HashMap<String, usize>>>);

impl Places {
    pub const fn new() -> Places {
        Places(Mutex::new(None))
    }

    /// One place under `key`, if fewer than `limit` are taken.
    pub fn take(&'static self, key: &str, limit: usize) -> Option<Place> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = all
            .get_or_insert_with(HashMap::new)
            .entry(key.to_string())
            .or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Place {
            places: self,
            key: key.to_string(),
        })
    }
}

/// A place taken from [`Places`]; dropping it gives it back.
pub struct Place {
    places: &'static Places,
    key: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut all = self.places.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = all.as_mut() {
            if let Some(n) = map.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_key_and_given_back_on_drop() {
        static PLACES: Places = Places::new();
        let a1 = PLACES.take("a", 2).unwrap();
        let _a2 = PLACES.take("a", 2).unwrap();
        assert!(PLACES.take("a", 2).is_none());
        let _b = PLACES.take("b", 2).unwrap();
        drop(a1);
        assert!(PLACES.take("a", 2).is_some());
    }
}
