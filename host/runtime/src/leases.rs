//! Leases on numbered host resources (sandbox addresses, user-namespace id ranges): one file
//! per key in a directory, holding its owner (a sandbox id, or `warm-pool:<token>`). Taking a
//! key is an exclusive file creation, so it survives a server restart and two processes never
//! get the same key; the files are the record a restart and the leak checks read.

use std::path::PathBuf;
use std::sync::Mutex;

pub struct Leases {
    dir: PathBuf,
    /// Serialises this process's scans, so concurrent launches do not race for the same free key.
    alloc: Mutex<()>,
}

impl Leases {
    pub fn open(dir: PathBuf) -> Result<Leases, String> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Leases {
            dir,
            alloc: Mutex::new(()),
        })
    }

    /// Takes the first key of `keys` nobody holds, for `owner`; `None` when all are held.
    pub fn take_first_free(
        &self,
        keys: impl Iterator<Item = String>,
        owner: &str,
    ) -> Result<Option<String>, String> {
        let _g = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            let path = self.dir.join(&key);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(owner.as_bytes())
                        .map_err(|e| format!("cannot write lease {}: {e}", path.display()))?;
                    return Ok(Some(key));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create lease {}: {e}", path.display())),
            }
        }
        Ok(None)
    }

    /// Gives `key` up if `owner` holds it (a lease that changed hands is left alone).
    pub fn release(&self, key: &str, owner: &str) {
        let path = self.dir.join(key);
        if std::fs::read_to_string(&path).is_ok_and(|o| o == owner) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Every lease, as (key, owner).
    pub fn all(&self) -> Vec<(String, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let key = e.file_name().to_str()?.to_string();
                if key.starts_with(".tmp-") {
                    return None;
                }
                Some((key, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect()
    }

    /// The keys `owner` holds.
    pub fn held_by(&self, owner: &str) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|(_, o)| o == owner)
            .map(|(k, _)| k)
            .collect()
    }

    /// Hands `key` from `from` to `to`; refused if `from` does not hold it.
    pub fn transfer(&self, key: &str, from: &str, to: &str) -> Result<(), String> {
        let path = self.dir.join(key);
        let owner = std::fs::read_to_string(&path).unwrap_or_default();
        if owner != from {
            return Err(format!(
                "the lease {} is held by {owner:?}, not {from:?}",
                path.display()
            ));
        }
        // Not `monitor::write_atomic`: its temp name drops what follows a '.' in the key.
        let tmp = crate::registry::tmp_path(&path);
        std::fs::write(&tmp, to.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write lease {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_leased_once_and_change_hands_only_from_their_holder() {
        let d = tempfile::tempdir().unwrap();
        let l = Leases::open(d.path().join("l")).unwrap();
        let keys = || (1..=2).map(|n| n.to_string());
        assert_eq!(
            l.take_first_free(keys(), "a").unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(
            l.take_first_free(keys(), "b").unwrap().as_deref(),
            Some("2")
        );
        assert_eq!(l.take_first_free(keys(), "c").unwrap(), None);
        assert!(l.transfer("1", "b", "c").is_err());
        l.transfer("1", "a", "c").unwrap();
        assert_eq!(l.held_by("c"), vec!["1".to_string()]);
        l.release("2", "a");
        assert_eq!(l.all().len(), 2, "a release by a non-holder is ignored");
        l.release("2", "b");
        assert_eq!(
            l.take_first_free(keys(), "d").unwrap().as_deref(),
            Some("2")
        );
    }
}
