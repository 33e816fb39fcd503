//! The plugin store on disk, under `<data_dir>/plugins`:
//!
//! ```text
//! generation                          bumped on every install/remove; running servers poll it
//! lock                                serialises writers (CLI and server)
//! installed/<id>/active               the version a slot without a pinned version uses
//! installed/<id>/<version>/component.wasm
//! installed/<id>/<version>/manifest.json   id, version, world, sha256, size, source, time
//! cache/<engine-key>/<sha256>.cwasm   precompiled code (+ .sha256 of the .cwasm itself)
//! ```
//!
//! Every component is pinned by the sha256 of its bytes: loading checks it, `verify` rechecks it,
//! and a version, once installed, is never replaced by other bytes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::config::{is_plugin_id, version_key, version_problem};
use crate::wasm::{self, Prepared};

/// What `nimbus plugin list` shows for one installed version.
/// Largest component the store installs: compiling one takes time and memory in proportion,
/// and plugins are small (the bundled ones are 15–31 KiB).
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// Refuses a component of `size` bytes over [`MAX_COMPONENT_BYTES`]; the CLI asks before reading
/// a file, the store again before compiling what it is given.
pub fn check_component_size(size: u64) -> anyhow::Result<()> {
    if size > MAX_COMPONENT_BYTES {
        bail!(
            "the component is {} MiB, and a plugin component is at most {} MiB (the bundled ones are a few dozen KiB)",
            size >> 20,
            MAX_COMPONENT_BYTES >> 20
        );
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub id: String,
    pub version: String,
    /// The WIT world it implements, e.g. `nimbus:authz/authz-policy@0.1.0`.
    pub world: String,
    /// Hex sha256 of the component bytes.
    pub sha256: String,
    pub size: u64,
    /// `bundled` (shipped inside the server) or `file`.
    pub source: String,
    /// Unix seconds.
    pub installed_at: u64,
    /// Whether this is the version slots without a pinned version use.
    #[serde(skip)]
    pub active: bool,
}

impl PluginInfo {
    /// All that is known of a version whose manifest cannot be read: its directory's names.
    fn unreadable(id: String, version: String) -> PluginInfo {
        PluginInfo {
            id,
            version,
            world: String::new(),
            sha256: String::new(),
            size: 0,
            source: "unknown".to_string(),
            installed_at: 0,
            active: false,
        }
    }
}

/// Result of checking one installed version against its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub id: String,
    pub version: String,
    /// Empty if the manifest cannot be read.
    pub expected_sha256: String,
    /// `None` if the component file could not be read.
    pub actual_sha256: Option<String>,
    /// Corruption found besides the pin, and what to do about it: a manifest that cannot be
    /// read, or precompiled code that is not what the component compiles to.
    pub problem: Option<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
            && self.actual_sha256.as_deref() == Some(self.expected_sha256.as_str())
    }
}

/// An installed version as found on disk (a version directory with a manifest), with its
/// manifest or why that cannot be read.
struct Entry {
    id: String,
    version: String,
    manifest: anyhow::Result<PluginInfo>,
}

/// A component shipped inside the server binary.
pub(crate) struct Bundled {
    pub bytes: &'static [u8],
}

pub(crate) const BUNDLED: &[Bundled] = &[
    Bundled {
        bytes: include_bytes!(concat!(
            env!("NIMBUS_PLUGINS_WASM_DIR"),
            "/grants_policy.wasm"
        )),
    },
    Bundled {
        bytes: include_bytes!(concat!(
            env!("NIMBUS_PLUGINS_WASM_DIR"),
            "/http_health.wasm"
        )),
    },
    Bundled {
        bytes: include_bytes!(concat!(env!("NIMBUS_PLUGINS_WASM_DIR"), "/tcp_health.wasm")),
    },
];

pub(crate) struct Catalog {
    root: PathBuf,
}

/// Id and version a component names itself by (its `nimbus-plugin` custom section).
pub(crate) fn embedded_metadata(bytes: &[u8]) -> Option<(String, String)> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(wasmparser::Payload::CustomSection(section)) = payload else {
            continue;
        };
        if section.name() != "nimbus-plugin" {
            continue;
        }
        let text = std::str::from_utf8(section.data()).ok()?;
        let mut id = None;
        let mut version = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("id", v)) => id = Some(v.trim().to_string()),
                Some(("version", v)) => version = Some(v.trim().to_string()),
                _ => {}
            }
        }
        return Some((id?, version?));
    }
    None
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` via a temporary file and a rename, so readers never see half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| {
            format!(
                "cannot create the plugin store directory {}",
                path.display()
            )
        })
}

/// An exclusive lock on the store for the lifetime of the guard.
pub(crate) struct StoreLock {
    _file: fs::File,
}

impl Catalog {
    /// Opens (creating if needed) the store under `<data_dir>/plugins`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Catalog> {
        let root = data_dir.join("plugins");
        create_private_dir(&root.join("installed"))?;
        create_private_dir(&root.join("cache"))?;
        Ok(Catalog { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn lock(&self) -> anyhow::Result<StoreLock> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(StoreLock { _file: file })
    }

    /// The store's change counter; it changes whenever a plugin is installed or removed.
    pub fn generation(&self) -> u64 {
        fs::read_to_string(self.root.join("generation"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn bump_generation(&self) -> anyhow::Result<()> {
        let next = self.generation().wrapping_add(1);
        write_atomic(
            &self.root.join("generation"),
            format!("{next}\n").as_bytes(),
        )
    }

    fn plugin_dir(&self, id: &str) -> PathBuf {
        self.root.join("installed").join(id)
    }

    fn version_dir(&self, id: &str, version: &str) -> PathBuf {
        self.plugin_dir(id).join(version)
    }

    fn cache_path(&self, engine: &Engine, sha: &str) -> PathBuf {
        self.root
            .join("cache")
            .join(crate::engine::compatibility_key(engine))
            .join(format!("{sha}.cwasm"))
    }

    /// Installs the bundled components that are missing (first start, or a server with newer
    /// bundled versions). A bundled version becomes active if its plugin has no active version,
    /// or if the active one is an older bundled version (an upgraded server brings its policy);
    /// a version the operator installed stays active.
    ///
    /// Then repairs what an interrupted change leaves (see [`Catalog::repair_active`]).
    ///
    /// Versions whose manifest cannot be read are skipped by everything but `verify` and
    /// `remove`; they are reported here, once per opening (a server's start, each CLI command).
    pub fn ensure_bundled(&self, engine: &Engine) -> anyhow::Result<()> {
        self.install_missing_bundled(engine)?;
        self.repair_active()?;
        for e in self.scan()? {
            if let Err(err) = e.manifest {
                tracing::warn!(plugin = %e.id, version = %e.version, "skipping {} {}: {err:#}", e.id, e.version);
            }
        }
        let _lock = self.lock()?;
        self.prune_cache(Some(&crate::engine::compatibility_key(engine)));
        Ok(())
    }

    /// Deletes precompiled code nothing will load: the code of versions no longer installed
    /// and, given the key of this process's engine, other engines' caches (left by an earlier
    /// or later server build, which recompiles what it needs). The cache only saves compile
    /// time, so a file that cannot be removed is logged and left. Runs under the store's lock:
    /// an install meanwhile would otherwise lose its fresh code.
    fn prune_cache(&self, engine_key: Option<&str>) {
        let Ok(entries) = self.scan() else { return };
        let installed: std::collections::HashSet<String> = entries
            .into_iter()
            .filter_map(|e| e.manifest.ok().map(|p| p.sha256))
            .collect();
        let Ok(dirs) = fs::read_dir(self.root.join("cache")) else {
            return;
        };
        let remove = |path: &Path, is_dir: bool| {
            let removed = if is_dir {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            if let Err(e) = removed {
                tracing::warn!(
                    "cannot remove unused precompiled plugin code {}: {e}",
                    path.display()
                );
            }
        };
        for dir in dirs.flatten() {
            if engine_key.is_some_and(|key| dir.file_name().to_str() != Some(key)) {
                remove(&dir.path(), true);
                continue;
            }
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                // `<sha256>.cwasm`, `<sha256>.cwasm.sha256`, and a write's `.<name>.tmp-<pid>`.
                let sha = name.to_str().unwrap_or("").trim_start_matches('.');
                let sha = sha.split('.').next().unwrap_or("");
                if !installed.contains(sha) {
                    remove(&file.path(), false);
                }
            }
        }
    }

    fn install_missing_bundled(&self, engine: &Engine) -> anyhow::Result<()> {
        let missing: Vec<&Bundled> = BUNDLED
            .iter()
            .filter(|b| match embedded_metadata(b.bytes) {
                Some((id, version)) => !self
                    .version_dir(&id, &version)
                    .join("manifest.json")
                    .exists(),
                None => false,
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let _lock = self.lock()?;
        for b in missing {
            let Some((id, version)) = embedded_metadata(b.bytes) else {
                continue;
            };
            if self
                .version_dir(&id, &version)
                .join("manifest.json")
                .exists()
            {
                continue;
            }
            let make_active = match self.active_version(&id) {
                None => true,
                Some(active) => self.manifest(&id, &active).is_ok_and(|m| {
                    m.source == "bundled" && version_key(&active) < version_key(&version)
                }),
            };
            self.install_locked(engine, b.bytes, &id, &version, "bundled", make_active)
                .with_context(|| format!("cannot install the bundled plugin {id} {version}"))?;
        }
        Ok(())
    }

    /// A plugin with installed versions but no active one is what a crash leaves between writing
    /// a version and pointing `active` at it, or between removing the active version and falling
    /// back: its newest version becomes active, as a removal would have made it. Leftover
    /// temporary files of interrupted writes are deleted. Changes nothing in a sound store.
    fn repair_active(&self) -> anyhow::Result<()> {
        let broken = |c: &Catalog| -> anyhow::Result<Vec<PluginInfo>> {
            let mut newest: Vec<PluginInfo> = Vec::new();
            for p in c.list()? {
                if c.active_version(&p.id).is_some() {
                    continue;
                }
                // `list` is sorted by id, then version: the last of an id is its newest.
                match newest.last_mut() {
                    Some(last) if last.id == p.id => *last = p,
                    _ => newest.push(p),
                }
            }
            Ok(newest)
        };
        let stale_temp_files = |c: &Catalog| -> Vec<PathBuf> {
            let installed = c.root.join("installed");
            let dirs = fs::read_dir(&installed).into_iter().flatten().flatten();
            dirs.flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
                })
                .collect()
        };
        if broken(self)?.is_empty() && stale_temp_files(self).is_empty() {
            return Ok(());
        }
        let _lock = self.lock()?;
        // Under the lock no other process is between a temporary file and its rename.
        for tmp in stale_temp_files(self) {
            let _ = fs::remove_file(tmp);
        }
        let repairs = broken(self)?;
        for p in &repairs {
            write_atomic(&self.plugin_dir(&p.id).join("active"), p.version.as_bytes())?;
            tracing::warn!(
                plugin = %p.id,
                version = %p.version,
                "plugin {} had no active version (an install or removal was interrupted); made {} active",
                p.id,
                p.version
            );
        }
        if !repairs.is_empty() {
            self.bump_generation()?;
        }
        Ok(())
    }

    /// Installs a component and makes it the plugin's active version. `id`/`version` default to
    /// the component's embedded metadata.
    pub fn install(
        &self,
        engine: &Engine,
        bytes: &[u8],
        id: Option<&str>,
        version: Option<&str>,
    ) -> anyhow::Result<PluginInfo> {
        check_component_size(bytes.len() as u64)?;
        if !wasmparser::Parser::is_component(bytes) {
            let what = if wasmparser::Parser::is_core_wasm(bytes) {
                "a core WebAssembly module, not a component (wrap it with `wasm-tools component new`, or build for wasm32-wasip2)"
            } else {
                "not WebAssembly"
            };
            bail!("the file is not a WebAssembly component: it is {what}");
        }
        // A damaged file is said to be damaged, before anything it would have named (its id
        // and version) is asked for.
        if let Some(Err(e)) = wasmparser::Parser::new(0)
            .parse_all(bytes)
            .find(Result::is_err)
        {
            bail!(
                "the file is not a whole WebAssembly component ({e}); it may be truncated or \
                 corrupted: build or copy it again"
            );
        }
        let embedded = embedded_metadata(bytes);
        let id = id
            .map(str::to_string)
            .or_else(|| embedded.as_ref().map(|(i, _)| i.clone()))
            .ok_or_else(|| {
                anyhow!("the component does not name itself (no nimbus-plugin section); pass --id and --version")
            })?;
        let version = version
            .map(str::to_string)
            .or_else(|| embedded.as_ref().map(|(_, v)| v.clone()))
            .ok_or_else(|| anyhow!("the component does not carry a version; pass --version"))?;
        let _lock = self.lock()?;
        self.install_locked(engine, bytes, &id, &version, "file", true)
    }

    fn install_locked(
        &self,
        engine: &Engine,
        bytes: &[u8],
        id: &str,
        version: &str,
        source: &str,
        make_active: bool,
    ) -> anyhow::Result<PluginInfo> {
        if !is_plugin_id(id) {
            bail!("{id:?} is not a plugin id: use 1-64 lowercase letters, digits and '-', starting with a letter");
        }
        if let Some(problem) = version_problem(version) {
            bail!("{version:?} is {problem}");
        }
        let sha = sha256_hex(bytes);
        let component = wasm::compile(engine, bytes)
            .context("the file is not a WebAssembly component this server can compile")?;
        let prepared = wasm::prepare(engine, &component)?;
        let dir = self.version_dir(id, version);
        // A version whose manifest is corrupt is not written over either: its pin is unknown.
        let existing = match dir.join("manifest.json").exists() {
            true => Some(self.manifest(id, version)?),
            false => None,
        };
        if let Some(existing) = existing {
            if existing.sha256 != sha {
                bail!(
                    "{id} {version} is already installed with sha256 {}, and an installed version is never replaced; \
                     install these bytes as a new version, or remove {id}@{version} first",
                    existing.sha256
                );
            }
            // The same bytes again: the manifest stays (a bundled version stays bundled). What
            // changed on disk is repaired, as `verify` advises: a component file that no longer
            // has these bytes, and its precompiled code. Running servers reload only if
            // something was written or the active version changes.
            let file = dir.join("component.wasm");
            let mut changed = false;
            if fs::read(&file).map(|b| sha256_hex(&b)).ok().as_deref() != Some(sha.as_str()) {
                write_atomic(&file, bytes)?;
                self.write_cache(engine, &sha, &component)?;
                changed = true;
            }
            if make_active && !existing.active {
                write_atomic(&self.plugin_dir(id).join("active"), version.as_bytes())?;
                changed = true;
            }
            if changed {
                self.bump_generation()?;
            }
            return self.manifest(id, version);
        }
        // The slot that names an id expects one world: a version implementing another would
        // stop servers whose config names it from starting.
        let world = prepared.world().name();
        if let Some(other) = self
            .list()?
            .into_iter()
            .find(|p| p.id == id && p.world != world)
        {
            bail!(
                "{id} {} implements {}, and this component implements {world}; every version of a plugin \
                 implements one world (the slot that names it needs that world): install it under another --id",
                other.version, other.world
            );
        }
        // The manifest is written last: it is what makes the version installed, so a crash
        // before it leaves a directory that counts as absent (and is written again), and a crash
        // after it leaves a version whose file and precompiled code are there.
        create_private_dir(&dir)?;
        write_atomic(&dir.join("component.wasm"), bytes)?;
        self.write_cache(engine, &sha, &component)?;
        let info = PluginInfo {
            id: id.to_string(),
            version: version.to_string(),
            world: prepared.world().name().to_string(),
            sha256: sha.clone(),
            size: bytes.len() as u64,
            source: source.to_string(),
            installed_at: now_secs(),
            active: make_active,
        };
        let manifest = serde_json::to_vec_pretty(&info)?;
        write_atomic(&dir.join("manifest.json"), &manifest)?;
        if make_active {
            write_atomic(&self.plugin_dir(id).join("active"), version.as_bytes())?;
        }
        self.bump_generation()?;
        Ok(info)
    }

    fn write_cache(&self, engine: &Engine, sha: &str, component: &Component) -> anyhow::Result<()> {
        let path = self.cache_path(engine, sha);
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let cwasm = wasm::serialize(component)?;
        write_atomic(
            &path.with_extension("cwasm.sha256"),
            sha256_hex(&cwasm).as_bytes(),
        )?;
        write_atomic(&path, &cwasm)
    }

    /// The manifest of an installed version. One that cannot be parsed, or that names another
    /// version than its directory's, is corrupt: the error says how to get rid of it.
    pub fn manifest(&self, id: &str, version: &str) -> anyhow::Result<PluginInfo> {
        let path = self.version_dir(id, version).join("manifest.json");
        let text = fs::read(&path).with_context(|| format!("{id} {version} is not installed"))?;
        let parsed = serde_json::from_slice::<PluginInfo>(&text)
            .map_err(anyhow::Error::from)
            .and_then(|info| match info.id == id && info.version == version {
                true => Ok(info),
                false => Err(anyhow!("it names {} {}", info.id, info.version)),
            });
        let mut info = parsed.map_err(|e| {
            anyhow!(
                "{} is corrupt ({e}); run `nimbus plugin remove {id}@{version}` and install it again \
                 (a bundled version is installed again when the store is next opened)",
                path.display()
            )
        })?;
        info.active = self.active_version(id).as_deref() == Some(version);
        Ok(info)
    }

    pub fn active_version(&self, id: &str) -> Option<String> {
        fs::read_to_string(self.plugin_dir(id).join("active"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|v| self.version_dir(id, v).join("manifest.json").exists())
    }

    /// Every installed version that can be read, by id then version.
    pub fn list(&self) -> anyhow::Result<Vec<PluginInfo>> {
        Ok(self
            .scan()?
            .into_iter()
            .filter_map(|e| e.manifest.ok())
            .collect())
    }

    /// Every installed version, by id then version. A corrupt manifest is an entry of its own,
    /// so that it hides nothing else.
    fn scan(&self) -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let dir = self.root.join("installed");
        let mut ids: Vec<String> = fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_plugin_id(n))
            .collect();
        ids.sort();
        for id in ids {
            let mut versions: Vec<String> = fs::read_dir(self.plugin_dir(&id))?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("manifest.json").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            versions.sort_by_key(|v| version_key(v));
            for version in versions {
                let manifest = self.manifest(&id, &version);
                out.push(Entry {
                    id: id.clone(),
                    version,
                    manifest,
                });
            }
        }
        Ok(out)
    }

    /// The installed versions `id` or `id@version` names, readable or not.
    fn matching(&self, spec: &str) -> anyhow::Result<Vec<Entry>> {
        let (id, version) = match spec.split_once('@') {
            Some((i, v)) => (i, Some(v)),
            None => (spec, None),
        };
        let found: Vec<Entry> = self
            .scan()?
            .into_iter()
            .filter(|e| e.id == id && version.is_none_or(|v| e.version == v))
            .collect();
        // A misspelt version is not "not installed": say how to write it. (Only when nothing
        // has that spelling: a version installed by a server that allowed it stays nameable.)
        if let Some(problem) = version
            .and_then(version_problem)
            .filter(|_| found.is_empty())
        {
            bail!("{spec:?}: the version after '@' is {problem}");
        }
        Ok(found)
    }

    /// Resolves `id` or `id@version` to installed versions.
    pub fn resolve(&self, spec: &str) -> anyhow::Result<Vec<PluginInfo>> {
        let (readable, corrupt): (Vec<_>, Vec<_>) = self
            .matching(spec)?
            .into_iter()
            .map(|e| e.manifest)
            .partition(|m| m.is_ok());
        if readable.is_empty() {
            // Only corrupt versions match: say that, and what to do, rather than "not installed".
            if let Some(Err(e)) = corrupt.into_iter().next() {
                return Err(e);
            }
            bail!("no installed plugin matches {spec:?}; `nimbus plugin list` shows what is installed");
        }
        Ok(readable.into_iter().flatten().collect())
    }

    /// Removes `id` (every version) or `id@version`. The bundled versions stay: the server
    /// would reinstall them at its next start. A version with a corrupt manifest goes whatever
    /// it was (a bundled one is installed again at the next opening).
    pub fn remove(&self, spec: &str) -> anyhow::Result<Vec<PluginInfo>> {
        let _lock = self.lock()?;
        let targets = self.matching(spec)?;
        let Some(id) = targets.first().map(|e| e.id.clone()) else {
            bail!("no installed plugin matches {spec:?}; `nimbus plugin list` shows what is installed");
        };
        let removable: Vec<Entry> = targets
            .into_iter()
            .filter(|e| !e.manifest.as_ref().is_ok_and(|p| p.source == "bundled"))
            .collect();
        if removable.is_empty() {
            bail!(
                "{spec} is bundled with the server and cannot be removed; configure another plugin for its slot instead"
            );
        }
        let mut removed = Vec::new();
        for e in removable {
            fs::remove_dir_all(self.version_dir(&e.id, &e.version))
                .with_context(|| format!("cannot remove {} {}", e.id, e.version))?;
            removed.push(
                e.manifest
                    .unwrap_or_else(|_| PluginInfo::unreadable(e.id, e.version)),
            );
        }
        if self.active_version(&id).is_none() {
            // Fall back to the newest remaining version (bundled ones included; `list` is
            // sorted by version), if any.
            let left: Vec<PluginInfo> = self.list()?.into_iter().filter(|p| p.id == id).collect();
            match left.last() {
                Some(p) => {
                    write_atomic(&self.plugin_dir(&id).join("active"), p.version.as_bytes())?
                }
                // A corrupt version left behind keeps the directory, for its own removal.
                None if self.matching(&id)?.is_empty() => {
                    let _ = fs::remove_dir_all(self.plugin_dir(&id));
                }
                None => {}
            }
        }
        self.bump_generation()?;
        self.prune_cache(None);
        Ok(removed)
    }

    /// Rechecks every installed version: that its manifest can be read, its component against
    /// the sha256 recorded at install, and this engine's precompiled code of it, which a server
    /// runs without looking at the component again.
    pub fn verify(&self) -> anyhow::Result<Vec<VerifyReport>> {
        // The process's one engine, the one `PluginStore` and servers use: its cache is checked.
        let engine = crate::engine::engine()?;
        let mut reports = Vec::new();
        for e in self.scan()? {
            let p = match e.manifest {
                Ok(p) => p,
                Err(err) => {
                    reports.push(VerifyReport {
                        id: e.id,
                        version: e.version,
                        expected_sha256: String::new(),
                        actual_sha256: None,
                        problem: Some(format!("{err:#}")),
                    });
                    continue;
                }
            };
            let bytes = fs::read(self.version_dir(&p.id, &p.version).join("component.wasm")).ok();
            let actual = bytes.as_deref().map(sha256_hex);
            let problem = match &bytes {
                Some(b) if actual.as_deref() == Some(p.sha256.as_str()) => self
                    .check_contents(engine, &p, b)
                    .err()
                    .map(|e| format!("{e:#}")),
                _ => None,
            };
            reports.push(VerifyReport {
                id: p.id,
                version: p.version,
                expected_sha256: p.sha256,
                actual_sha256: actual,
                problem,
            });
        }
        Ok(reports)
    }

    /// Checks what `p`'s manifest says against its verified `bytes`: the world the component
    /// implements (what `list` and `inspect` show, and what install checked), and this engine's
    /// precompiled code of it, if any.
    fn check_contents(&self, engine: &Engine, p: &PluginInfo, bytes: &[u8]) -> anyhow::Result<()> {
        let component = wasm::compile(engine, bytes)?;
        let world = wasm::detect_world(engine, &component)?.name();
        if world != p.world {
            bail!(
                "its manifest says it implements {}, but the component implements {world}; \
                 reinstall it (`nimbus plugin remove {}@{}`, then `nimbus plugin install`)",
                p.world,
                p.id,
                p.version
            );
        }
        self.check_cache(engine, p, &component)
    }

    /// Compares this engine's precompiled code of `p`, if any, with a fresh compilation of its
    /// verified bytes: wasmtime's output is deterministic, so any difference is tampering or
    /// damage (the side file's checksum proves nothing, it is written beside the code).
    fn check_cache(
        &self,
        engine: &Engine,
        p: &PluginInfo,
        component: &wasmtime::component::Component,
    ) -> anyhow::Result<()> {
        let path = self.cache_path(engine, &p.sha256);
        let Ok(cached) = fs::read(&path) else {
            return Ok(()); // none yet: loading compiles and writes it
        };
        let fresh = wasm::serialize(component)?;
        if cached != fresh {
            bail!(
                "the precompiled code {} is not what {} {} compiles to, and a server would run it; \
                 run `nimbus plugin precompile` to rewrite it",
                path.display(),
                p.id,
                p.version
            );
        }
        Ok(())
    }

    /// Compiles every installed version for this engine into the cache, rewriting what is
    /// there. A version that fails does not stop the others: the error lists every failure.
    pub fn precompile_all(&self, engine: &Engine) -> anyhow::Result<Vec<PluginInfo>> {
        let _lock = self.lock()?;
        let entries = self.scan()?;
        let total = entries.len();
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for e in entries {
            let compiled = e.manifest.and_then(|p| {
                let bytes = self.read_verified(&p)?;
                let component = wasm::compile(engine, &bytes).with_context(|| {
                    format!(
                        "this server cannot compile {} {}; remove it (`nimbus plugin remove {}@{}`)",
                        p.id, p.version, p.id, p.version
                    )
                })?;
                self.write_cache(engine, &p.sha256, &component)
                    .with_context(|| format!("cannot precompile {} {}", p.id, p.version))?;
                Ok(p)
            });
            match compiled {
                Ok(p) => done.push(p),
                // Every error names the version.
                Err(err) => failed.push(format!("{err:#}")),
            }
        }
        if !failed.is_empty() {
            bail!(
                "cannot precompile {} of {total} plugins (the others are precompiled):\n  {}",
                failed.len(),
                failed.join("\n  ")
            );
        }
        Ok(done)
    }

    pub fn component_bytes(&self, id: &str, version: &str) -> anyhow::Result<Vec<u8>> {
        let info = self.manifest(id, version)?;
        self.read_verified(&info)
    }

    fn read_verified(&self, p: &PluginInfo) -> anyhow::Result<Vec<u8>> {
        let path = self.version_dir(&p.id, &p.version).join("component.wasm");
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let actual = sha256_hex(&bytes);
        if actual != p.sha256 {
            bail!(
                "{} {} fails its pin: {} has sha256 {actual}, installed as {}; reinstall it or run `nimbus plugin verify`",
                p.id,
                p.version,
                path.display(),
                p.sha256
            );
        }
        Ok(bytes)
    }

    /// Loads an installed version: bytes checked against the pin, code from the cache when it is
    /// intact and compatible, compiled (and cached) otherwise.
    pub fn load(
        &self,
        engine: &Engine,
        id: &str,
        version: &str,
    ) -> anyhow::Result<(PluginInfo, Prepared)> {
        let info = self.manifest(id, version)?;
        let bytes = self.read_verified(&info)?;
        let component = self
            .cached_component(engine, &info.sha256)
            .map(Ok)
            .unwrap_or_else(|| {
                let c = wasm::compile(engine, &bytes)?;
                if let Err(e) = self.write_cache(engine, &info.sha256, &c) {
                    tracing::warn!(
                        plugin = id,
                        "cannot write the precompiled plugin cache: {e:#}"
                    );
                }
                Ok::<_, anyhow::Error>(c)
            })?;
        let prepared = wasm::prepare(engine, &component)
            .with_context(|| format!("{id} {version} cannot be loaded"))?;
        Ok((info, prepared))
    }

    fn cached_component(&self, engine: &Engine, sha: &str) -> Option<Component> {
        let path = self.cache_path(engine, sha);
        let cwasm = fs::read(&path).ok()?;
        let recorded = fs::read_to_string(path.with_extension("cwasm.sha256")).ok()?;
        if recorded.trim() != sha256_hex(&cwasm) {
            tracing::warn!(path = %path.display(), "precompiled plugin does not match its checksum; recompiling");
            return None;
        }
        match wasm::load_precompiled(engine, &cwasm) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot use precompiled plugin, recompiling: {e:#}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The authorization policy runs on every request in a fresh instance whose memory and
    /// tables are reset afterwards: it must stay without a function table and within one page of
    /// memory (see plugins/.cargo/config.toml and docs/plugins.md, "Writing a plugin").
    #[test]
    fn the_bundled_policy_instantiates_without_a_table_and_within_one_page_of_memory() {
        let engine = crate::engine::engine().unwrap();
        let policy = bundled("grants-policy");
        let component = crate::wasm::compile(engine, policy).unwrap();
        let needs = component
            .resources_required()
            .expect("a policy imports no resources");
        assert_eq!(needs.num_tables, 0, "the policy has a function table");
        assert_eq!(needs.num_memories, 1);
        let memory = needs.max_initial_memory_size.unwrap_or(0);
        // One 4 KiB host page: the host resets memory by the page after every call.
        assert!(memory <= 4 << 10, "initial memory of {memory} bytes");
    }

    /// The bytes of bundled plugin `id`.
    fn bundled(id: &str) -> &'static [u8] {
        BUNDLED
            .iter()
            .find(|b| embedded_metadata(b.bytes).is_some_and(|(i, _)| i == id))
            .unwrap_or_else(|| panic!("{id} is bundled"))
            .bytes
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nimbus-catalog-{tag}-{}-{}",
            std::process::id(),
            now_secs()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn deny_all() -> Vec<u8> {
        fs::read(concat!(
            env!("NIMBUS_PLUGINS_WASM_DIR"),
            "/deny_all_policy.wasm"
        ))
        .unwrap()
    }

    #[test]
    fn a_newer_bundled_version_replaces_an_older_bundled_active_one() {
        let dir = temp_dir("upgrade");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        // As if an older server had bundled grants-policy 0.0.9.
        catalog
            .install_locked(
                engine,
                &deny_all(),
                "grants-policy",
                "0.0.9",
                "bundled",
                true,
            )
            .unwrap();
        catalog.ensure_bundled(engine).unwrap();
        assert_eq!(
            catalog.active_version("grants-policy").as_deref(),
            Some("0.1.5")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_left_without_an_active_version_by_a_crash_is_repaired_at_open() {
        let dir = temp_dir("crash");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        let plugin_dir = catalog.plugin_dir("grants-policy");
        // A crash after the version was written and before `active` was renamed into place.
        fs::remove_file(plugin_dir.join("active")).unwrap();
        fs::write(plugin_dir.join(".active.tmp-4242"), "0.1.5").unwrap();
        // A crash after a removal and before its fallback: `active` names a version that is gone.
        fs::write(catalog.plugin_dir("tcp-health").join("active"), "9.9.9").unwrap();
        assert_eq!(catalog.active_version("grants-policy"), None);
        let before = catalog.generation();

        catalog.ensure_bundled(engine).unwrap();
        assert_eq!(
            catalog.active_version("grants-policy").as_deref(),
            Some("0.1.5")
        );
        assert!(catalog.active_version("tcp-health").is_some());
        assert!(!plugin_dir.join(".active.tmp-4242").exists());
        assert!(catalog.generation() > before, "running servers reload");
        // A sound store is left alone.
        let sound = catalog.generation();
        catalog.ensure_bundled(engine).unwrap();
        assert_eq!(catalog.generation(), sound);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reinstalling_the_same_bytes_changes_nothing_and_a_bundled_version_stays_bundled() {
        let dir = temp_dir("same");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        let policy = bundled("grants-policy");
        let before = catalog.manifest("grants-policy", "0.1.5").unwrap();
        let generation = catalog.generation();
        let again = catalog.install(engine, policy, None, None).unwrap();
        assert_eq!(again, before);
        assert_eq!(again.source, "bundled");
        assert_eq!(
            catalog.generation(),
            generation,
            "running servers would reload"
        );
        assert!(
            catalog.remove("grants-policy").is_err(),
            "bundled stays unremovable"
        );

        // A component file changed on disk (what `verify` reports) is repaired by reinstalling
        // the trusted bytes, and stays bundled.
        let file = catalog
            .version_dir("grants-policy", "0.1.5")
            .join("component.wasm");
        fs::write(&file, b"tampered").unwrap();
        let repaired = catalog.install(engine, policy, None, None).unwrap();
        assert_eq!(repaired.source, "bundled");
        assert_eq!(fs::read(&file).unwrap(), policy);
        assert!(catalog.load(engine, "grants-policy", "0.1.5").is_ok());
        assert!(
            catalog.generation() > generation,
            "running servers reload the repaired file"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_component_over_the_size_limit_is_refused_before_it_is_parsed() {
        let dir = temp_dir("size");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        let mut big = deny_all();
        big.resize(MAX_COMPONENT_BYTES as usize + 1, 0);
        let e = catalog
            .install(engine, &big, Some("big"), Some("1.0.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 64 MiB"), "{e}");
        assert!(catalog.list().unwrap().iter().all(|p| p.id != "big"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_version_of_a_plugin_implements_one_world() {
        let dir = temp_dir("world");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        let health = bundled("http-health");
        let e = catalog
            .install(engine, health, Some("grants-policy"), Some("0.3.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("one world"), "{e}");
        assert!(catalog.manifest("grants-policy", "0.3.0").is_err());
        assert_eq!(
            catalog.active_version("grants-policy").as_deref(),
            Some("0.1.5")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// What `verify` finds wrong.
    fn problems(catalog: &Catalog) -> Vec<VerifyReport> {
        catalog
            .verify()
            .unwrap()
            .into_iter()
            .filter(|r| !r.ok())
            .collect()
    }

    fn corrupt_manifest(catalog: &Catalog, id: &str, version: &str) {
        let path = catalog.version_dir(id, version).join("manifest.json");
        fs::write(path, "{garbage\n").unwrap();
    }

    fn load_error(catalog: &Catalog, id: &str, version: &str) -> String {
        let engine = crate::engine::engine().unwrap();
        match catalog.load(engine, id, version) {
            Ok(_) => panic!("{id} {version} loaded"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_corrupt_manifest_disables_its_own_version_and_nothing_else() {
        let dir = temp_dir("corrupt");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        corrupt_manifest(&catalog, "tcp-health", "0.1.1");
        catalog.ensure_bundled(engine).unwrap();
        let listed: Vec<String> = catalog
            .list()
            .unwrap()
            .iter()
            .map(|p| format!("{}@{}", p.id, p.version))
            .collect();
        assert_eq!(listed, ["grants-policy@0.1.5", "http-health@0.1.1"]);
        assert!(catalog.load(engine, "http-health", "0.1.1").is_ok());
        let e = load_error(&catalog, "tcp-health", "0.1.1");
        assert!(
            e.contains("tcp-health/0.1.1/manifest.json is corrupt"),
            "{e}"
        );
        assert!(e.contains("`nimbus plugin remove tcp-health@0.1.1`"), "{e}");

        // A server whose slots do not need that version starts; one whose slot does says why.
        let config = |toml: &str| -> crate::config::PluginsConfig {
            toml::from_str(&format!("watch_interval_ms = 0\n{toml}")).unwrap()
        };
        let other = config("[health.tcp]\nplugin = \"http-health\"\n");
        assert!(crate::host::PluginHost::open(&dir, &other).is_ok());
        // The health.tcp slot needs tcp-health 0.1.1.
        let e = crate::host::PluginHost::open(&dir, &config("")).unwrap_err();
        assert!(
            format!("{e:#}").contains("manifest.json is corrupt"),
            "{e:#}"
        );

        let bad = problems(&catalog);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(
            (bad[0].id.as_str(), bad[0].version.as_str()),
            ("tcp-health", "0.1.1")
        );
        assert!(bad[0].problem.as_deref().unwrap().contains("is corrupt"));

        // Another version installs; the corrupt one is not written over (its pin is unknown).
        catalog
            .install(
                engine,
                bundled("http-health"),
                Some("tcp-health"),
                Some("0.2.0"),
            )
            .unwrap();
        let e = catalog
            .install(engine, bundled("tcp-health"), None, None)
            .unwrap_err();
        assert!(format!("{e:#}").contains("is corrupt"), "{e:#}");

        // Removing it works, and the bundled version comes back at the next opening, without
        // taking over from the operator's.
        let removed = catalog.remove("tcp-health@0.1.1").unwrap();
        assert_eq!(removed.len(), 1);
        catalog.ensure_bundled(engine).unwrap();
        assert_eq!(
            catalog.manifest("tcp-health", "0.1.1").unwrap().source,
            "bundled"
        );
        assert_eq!(
            catalog.active_version("tcp-health").as_deref(),
            Some("0.2.0")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crash_repair_makes_the_newest_readable_version_active() {
        let dir = temp_dir("corrupt-crash");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        catalog
            .install(engine, &deny_all(), Some("grants-policy"), Some("0.2.0"))
            .unwrap();
        corrupt_manifest(&catalog, "grants-policy", "0.2.0");
        fs::remove_file(catalog.plugin_dir("grants-policy").join("active")).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        assert_eq!(
            catalog.active_version("grants-policy").as_deref(),
            Some("0.1.5")
        );
        // Removing the last version of an id leaves a corrupt one in place.
        catalog
            .install(engine, &deny_all(), Some("deny-all"), Some("0.1.0"))
            .unwrap();
        catalog
            .install(engine, &deny_all(), Some("deny-all"), Some("0.2.0"))
            .unwrap();
        corrupt_manifest(&catalog, "deny-all", "0.1.0");
        catalog.remove("deny-all@0.2.0").unwrap();
        assert!(catalog.version_dir("deny-all", "0.1.0").exists());
        assert_eq!(catalog.remove("deny-all").unwrap().len(), 1);
        assert!(!catalog.plugin_dir("deny-all").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions_with_leading_zeros_are_refused() {
        let dir = temp_dir("zeros");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        for (version, plain) in [
            ("01.2.3", "1.2.3"),
            ("1.00.3", "1.0.3"),
            ("1.2.03-rc.1", "1.2.3-rc.1"),
            ("1.2.3-rc.01", "1.2.3-rc.1"),
            ("1.2.3-rc.00.x-0", "1.2.3-rc.0.x-0"),
        ] {
            let e = catalog
                .install(engine, &deny_all(), Some("deny-all"), Some(version))
                .unwrap_err()
                .to_string();
            assert!(e.contains("leading zeros"), "{e}");
            assert!(e.contains(&format!("(write {plain})")), "{e}");
        }
        catalog
            .install(engine, &deny_all(), Some("deny-all"), Some("0.10.0"))
            .unwrap();
        let versions: Vec<String> = catalog
            .list()
            .unwrap()
            .into_iter()
            .map(|p| p.version)
            .collect();
        assert_eq!(versions, ["0.10.0"]);
        // Naming a version that way is refused the same way, not answered "not installed".
        let e = catalog.resolve("deny-all@00.10.0").unwrap_err().to_string();
        assert!(e.contains("(write 0.10.0)"), "{e}");
        let e = catalog.remove("deny-all@0.10").unwrap_err().to_string();
        assert!(e.contains("not a version like 0.1.0"), "{e}");
        assert_eq!(catalog.resolve("deny-all@0.10.0").unwrap().len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_component_is_called_damaged_before_its_id_is_asked_for() {
        let dir = temp_dir("truncated");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        let whole = deny_all();
        let e = catalog
            .install(engine, &whole[..whole.len() / 2], None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated or corrupted"), "{e}");
        assert!(!e.contains("--id"), "{e}");
        assert!(catalog.list().unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn verify_finds_precompiled_code_of_another_component_and_precompile_rewrites_it() {
        let dir = temp_dir("cache");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        let tcp = catalog.manifest("tcp-health", "0.1.1").unwrap();
        let http = catalog.manifest("http-health", "0.1.1").unwrap();
        // Another plugin's code with a matching side file: what a server loads without a word.
        let swapped = fs::read(catalog.cache_path(engine, &http.sha256)).unwrap();
        let target = catalog.cache_path(engine, &tcp.sha256);
        fs::write(&target, &swapped).unwrap();
        fs::write(target.with_extension("cwasm.sha256"), sha256_hex(&swapped)).unwrap();
        assert!(catalog.cached_component(engine, &tcp.sha256).is_some());

        let bad = problems(&catalog);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].id, "tcp-health");
        let problem = bad[0].problem.as_deref().unwrap();
        assert!(problem.contains("nimbus plugin precompile"), "{problem}");

        catalog.precompile_all(engine).unwrap();
        assert!(catalog.verify().unwrap().iter().all(VerifyReport::ok));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn verify_finds_a_manifest_that_misstates_the_world() {
        let dir = temp_dir("world");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        let path = catalog
            .version_dir("tcp-health", "0.1.1")
            .join("manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        manifest["world"] = serde_json::json!(crate::wasm::AUTHZ_WORLD);
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let bad = problems(&catalog);
        assert_eq!(bad.len(), 1, "{bad:?}");
        let problem = bad[0].problem.as_deref().unwrap();
        assert!(
            problem.contains("manifest says it implements nimbus:authz")
                && problem.contains("the component implements nimbus:health"),
            "{problem}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unused_precompiled_code_is_deleted() {
        let dir = temp_dir("prune");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        let http = catalog.manifest("http-health", "0.1.1").unwrap();
        let kept = catalog.cache_path(engine, &http.sha256);
        let ours = kept.parent().unwrap().to_path_buf();
        // An older server build's cache, and this engine's code of a version since removed.
        let stale_engine = catalog.root().join("cache/0123456789abcdef");
        fs::create_dir_all(&stale_engine).unwrap();
        fs::write(stale_engine.join(format!("{}.cwasm", http.sha256)), b"old").unwrap();
        let orphan = ours.join(format!("{}.cwasm", "ab".repeat(32)));
        fs::write(&orphan, b"orphan").unwrap();
        fs::write(orphan.with_extension("cwasm.sha256"), b"x").unwrap();

        catalog.ensure_bundled(engine).unwrap();
        assert!(!stale_engine.exists(), "another engine's cache is left");
        assert!(!orphan.exists(), "code of an uninstalled version is left");
        assert!(!orphan.with_extension("cwasm.sha256").exists());
        assert!(kept.exists() && kept.with_extension("cwasm.sha256").exists());

        // Removing a version deletes its code (other engines' caches included).
        let info = catalog
            .install(engine, &deny_all(), Some("deny-all"), Some("0.1.0"))
            .unwrap();
        let code = catalog.cache_path(engine, &info.sha256);
        assert!(code.exists());
        catalog.remove("deny-all").unwrap();
        assert!(!code.exists(), "a removed version's code is left");
        assert!(kept.exists(), "the remaining version's code went too");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn precompile_does_every_plugin_and_reports_each_failure() {
        let dir = temp_dir("precompile");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog.ensure_bundled(engine).unwrap();
        let component = catalog
            .version_dir("grants-policy", "0.1.5")
            .join("component.wasm");
        fs::write(component, b"tampered").unwrap();
        corrupt_manifest(&catalog, "tcp-health", "0.1.1");
        let http = catalog.manifest("http-health", "0.1.1").unwrap();
        let http_cache = catalog.cache_path(engine, &http.sha256);
        fs::remove_file(&http_cache).unwrap();

        let e = format!("{:#}", catalog.precompile_all(engine).unwrap_err());
        assert!(e.contains("cannot precompile 2 of 3 plugins"), "{e}");
        assert!(e.contains("grants-policy 0.1.5 fails its pin"), "{e}");
        assert!(
            e.contains("tcp-health/0.1.1/manifest.json is corrupt"),
            "{e}"
        );
        assert!(
            http_cache.exists(),
            "the plugin after a failure is precompiled"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_operator_installed_active_version_survives_new_bundled_versions() {
        let dir = temp_dir("operator");
        let engine = crate::engine::engine().unwrap();
        let catalog = Catalog::open(&dir).unwrap();
        catalog
            .install(engine, &deny_all(), Some("grants-policy"), Some("0.0.5"))
            .unwrap();
        catalog.ensure_bundled(engine).unwrap();
        assert_eq!(
            catalog.active_version("grants-policy").as_deref(),
            Some("0.0.5")
        );
        assert!(catalog.manifest("grants-policy", "0.1.5").is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
