//! The uploads in progress in a sandbox, recorded beside its state on the host (never inside
//! the sandbox). An upload cut off with its server (a temporary file in the target directory,
//! the directories it made) is undone the next time another server process opens the
//! sandbox's files: a failed upload leaves nothing, also when it failed by a crash.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// One upload: where its temporary file is and which of its parent directories it made.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Upload {
    /// The server process that runs it (see [`process_token`]).
    process: String,
    /// The target's parent directories, from the sandbox's root.
    pub parents: Vec<String>,
    /// Depths in `parents` of the directories the upload created.
    pub made: Vec<usize>,
    /// The temporary file's name in the last of `parents`.
    pub tmp: String,
}

/// A token unique to this server process: entries with another one belong to uploads no
/// process runs any more.
fn process_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

pub(crate) struct UploadJournal {
    dir: PathBuf,
}

impl UploadJournal {
    pub(crate) fn new(dir: PathBuf) -> UploadJournal {
        UploadJournal { dir }
    }

    /// Records an upload before its bytes are written; the entry to pass to [`Self::end`]. An
    /// upload whose entry cannot be written does not run: a crash during it could not be
    /// undone, and what stops the entry (the data dir's file system full) would stop the
    /// upload's own bytes too.
    pub(crate) fn begin(
        &self,
        parents: &[&str],
        made: &[usize],
        tmp: &str,
    ) -> std::io::Result<PathBuf> {
        let entry = Upload {
            process: process_token().to_string(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            made: made.to_vec(),
            tmp: tmp.to_string(),
        };
        let path = self.dir.join(format!("{tmp}.json"));
        let written = serde_json::to_vec(&entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                std::fs::create_dir_all(&self.dir)?;
                std::fs::write(&path, bytes)
            });
        match written {
            Ok(()) => Ok(path),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot record the upload in {}: {e}", self.dir.display()),
                ))
            }
        }
    }

    /// The upload recorded at `entry` is over (done, or undone).
    pub(crate) fn end(&self, entry: Option<PathBuf>) {
        if let Some(path) = entry {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Uploads recorded by server processes that are gone, each with its entry's path.
    pub(crate) fn interrupted(&self) -> Vec<(PathBuf, Upload)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter_map(|path| {
                let upload = std::fs::read(&path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Upload>(&bytes).ok())
                    .filter(|u| {
                        u.tmp.starts_with(".nimbus-upload-")
                            && !u.tmp.contains('/')
                            && u.made.iter().all(|d| *d < u.parents.len())
                    });
                let Some(upload) = upload else {
                    // Unreadable (cut off while written) or not one of ours: nothing in the
                    // sandbox is touched for it, and it is not read again.
                    tracing::warn!(entry = %path.display(), "dropping an upload record that cannot be read");
                    let _ = std::fs::remove_file(&path);
                    return None;
                };
                (upload.process != process_token()).then_some((path, upload))
            })
            .collect()
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}
