//! The content-addressed image store under `<data>/runtime/`:
//! `blobs/sha256/<hex>` (verified by digest), `layers/<hex>/` (each layer unpacked once, OCI
//! whiteouts turned into overlayfs whiteouts) and `images/<key>.json` (what a reference resolved to).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::disk_reserve::DiskReserve;
use crate::reference::ImageRef;
use crate::registry::{pick_platform, ManifestDoc, RegistryClient, RegistryError};
use crate::ProgressEvent;

/// What a reference resolved to, persisted so a pulled image is reused without the registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Layer blob digests, bottom first.
    pub layers: Vec<String>,
}

/// The parts of an image configuration a launch uses (Docker and OCI configs share them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
}

/// A pulled image ready to be used as a lower layer stack.
#[derive(Debug, Clone)]
pub struct Image {
    pub record: ImageRecord,
    pub config: ContainerConfig,
    /// Unpacked layer directories, bottom first.
    pub layer_dirs: Vec<PathBuf>,
}

pub struct ImageStore {
    root: PathBuf,
    client: RegistryClient,
    /// One lock per reference / per layer so concurrent pulls of the same thing happen once.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Free space pulls and unpacks leave on the store's file system.
    reserve: DiskReserve,
    /// Bytes that pulls under way have declared and not yet downloaded: each pull's room check
    /// counts the others', so concurrent pulls cannot each pass against the same free space.
    downloading: std::sync::atomic::AtomicU64,
}

impl ImageStore {
    pub fn open(root: &Path, client: RegistryClient) -> std::io::Result<Self> {
        for d in ["blobs/sha256", "layers", "images"] {
            std::fs::create_dir_all(root.join(d))?;
            remove_stale_temporaries(&root.join(d));
        }
        Ok(Self {
            root: root.to_path_buf(),
            client,
            locks: Mutex::new(HashMap::new()),
            reserve: DiskReserve::default(),
            downloading: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The free space pulls keep on the store's file system (launches keep the same).
    pub fn disk_reserve(&self) -> DiskReserve {
        self.reserve
    }

    /// Keeps `reserve` free on the store's file system instead of the default 1 GiB.
    pub fn with_disk_reserve(mut self, reserve: DiskReserve) -> Self {
        self.reserve = reserve;
        self
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.to_string()).or_default().clone()
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn record_path(&self, key: &str) -> PathBuf {
        record_path_at(&self.root, key)
    }

    /// The image for `r`, pulled if this store has not resolved it before. A launch takes what
    /// the store has: a tag resolved once keeps its image until `pull_latest` resolves it again.
    pub async fn pull(
        &self,
        r: &ImageRef,
        progress: &(dyn Fn(ProgressEvent) + Send + Sync),
    ) -> Result<Image, RegistryError> {
        self.pull_from(r, progress, false).await
    }

    /// The image `r` names on its registry now: a tag is resolved again (and launches from then
    /// on get what it names now), while a digest, which cannot name anything else, is taken
    /// from the store if it is there. Blobs the store has are not downloaded again.
    pub async fn pull_latest(
        &self,
        r: &ImageRef,
        progress: &(dyn Fn(ProgressEvent) + Send + Sync),
    ) -> Result<Image, RegistryError> {
        self.pull_from(r, progress, r.digest.is_none()).await
    }

    async fn pull_from(
        &self,
        r: &ImageRef,
        progress: &(dyn Fn(ProgressEvent) + Send + Sync),
        resolve_again: bool,
    ) -> Result<Image, RegistryError> {
        let key = r.to_string();
        let lock = self.lock_for(&format!("ref:{key}"));
        let _guard = lock.lock().await;
        if !resolve_again {
            if let Some(img) = self.load_record(&key)? {
                return Ok(img);
            }
        }
        let proto = |cause: String| RegistryError::Protocol {
            reference: key.clone(),
            registry: r.registry.clone(),
            cause,
        };
        let mut raw = self.client.manifest(r, r.manifest_reference()).await?;
        let mut doc: ManifestDoc =
            serde_json::from_slice(&raw.bytes).map_err(|e| proto(format!("manifest: {e}")))?;
        if let Some(list) = &doc.manifests {
            let chosen = pick_platform(r, list)?;
            // A digest, so that `manifest` checks what arrives against it: an index entry that
            // names a tag (or a path) would let the registry serve anything under a pinned index.
            check_digest(&chosen.digest).map_err(|e| proto(format!("index entry: {e}")))?;
            let digest = chosen.digest.clone();
            raw = self.client.manifest(r, &digest).await?;
            doc = serde_json::from_slice(&raw.bytes)
                .map_err(|e| proto(format!("manifest {digest}: {e}")))?;
        }
        let (Some(config), Some(layers)) = (doc.config, doc.layers) else {
            return Err(proto(format!(
                "manifest of media type {:?} has no config or layers",
                doc.media_type.unwrap_or(raw.media_type)
            )));
        };
        for l in &layers {
            check_digest(&l.digest).map_err(proto)?;
        }
        check_digest(&config.digest).map_err(proto)?;
        // Read whole at every launch: a config is a few KiB, and one the manifest says is
        // larger than this is refused before anything is downloaded.
        let unsupported = |cause: String| RegistryError::Unsupported {
            reference: key.clone(),
            cause,
        };
        if config.size > MAX_CONFIG_BYTES {
            return Err(unsupported(format!(
                "its config is {} bytes (at most {MAX_CONFIG_BYTES})",
                config.size
            )));
        }
        if layers.len() > MAX_LAYERS {
            return Err(unsupported(format!(
                "it has {} layers, more than the {MAX_LAYERS} an overlay stacks; squash some (e.g. a multi-stage build)",
                layers.len()
            )));
        }
        write_blob_bytes(&self.blob_path(&raw.digest), &raw.bytes)?;
        // Sizes come from the registry: sums saturate rather than overflow.
        let total: u64 = std::iter::once(&config)
            .chain(layers.iter())
            .map(|d| d.size)
            .fold(0, u64::saturating_add);
        // Sizes come from the manifest: refuse up front what cannot fit, before downloading.
        let missing: u64 = std::iter::once(&config)
            .chain(layers.iter())
            .filter(|d| !self.blob_path(&d.digest).exists())
            .map(|d| d.size)
            .fold(0, u64::saturating_add);
        let _claim = self.claim_room(missing, &format!("pulling {key}"))?;
        let mut done_before = 0u64;
        for d in std::iter::once(&config).chain(layers.iter()) {
            let path = self.blob_path(&d.digest);
            if !path.exists() {
                let blob_lock = self.lock_for(&format!("blob:{}", d.digest));
                let _g = blob_lock.lock().await;
                if !path.exists() {
                    let base = done_before;
                    let reference = key.clone();
                    let cb = move |n: u64| {
                        progress(ProgressEvent::Pulling {
                            reference: reference.clone(),
                            bytes_done: base.saturating_add(n),
                            bytes_total: total,
                        })
                    };
                    self.client
                        .fetch_blob(r, &d.digest, d.size, &path, &cb)
                        .await?;
                }
            }
            done_before = done_before.saturating_add(d.size);
            progress(ProgressEvent::Pulling {
                reference: key.clone(),
                bytes_done: done_before,
                bytes_total: total,
            });
        }
        let record = ImageRecord {
            reference: key.clone(),
            manifest_digest: raw.digest,
            config_digest: config.digest,
            layers: layers.into_iter().map(|l| l.digest).collect(),
        };
        self.finish(&key, record, progress).await
    }

    /// Checks that `bytes` more fit beside what other pulls are downloading, and counts them
    /// among those until the returned claim is dropped.
    fn claim_room(&self, bytes: u64, what: &str) -> std::io::Result<RoomClaim<'_>> {
        use std::sync::atomic::Ordering;
        let others = self.downloading.fetch_add(bytes, Ordering::SeqCst);
        let claim = RoomClaim {
            counter: &self.downloading,
            bytes,
        };
        self.reserve
            .ensure_room(&self.root, others.saturating_add(bytes), what)
            .map_err(|e| match others {
                0 => e,
                n => std::io::Error::new(
                    e.kind(),
                    format!(
                        "{e} ({} MiB of what is needed is for other pulls under way)",
                        n >> 20
                    ),
                ),
            })?;
        Ok(claim)
    }

    /// Unpacks the record's layers, persists it under `key` and loads it.
    pub async fn finish(
        &self,
        key: &str,
        record: ImageRecord,
        progress: &(dyn Fn(ProgressEvent) + Send + Sync),
    ) -> Result<Image, RegistryError> {
        // The config is checked before anything is unpacked or recorded: a record is written
        // only for an image that loads.
        let image = self.load(record.clone())?;
        let count = record.layers.len();
        for (i, digest) in record.layers.iter().enumerate() {
            progress(ProgressEvent::Unpacking {
                layer: digest.clone(),
                index: i + 1,
                count,
            });
            self.unpack(&record.reference, digest).await?;
        }
        let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
        write_blob_bytes(&self.record_path(key), &json)?;
        Ok(image)
    }

    fn load_record(&self, key: &str) -> Result<Option<Image>, RegistryError> {
        let path = self.record_path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes) else {
            return Ok(None);
        };
        if record.layers.iter().any(|l| !self.layer_dir(l).is_dir())
            || !self.blob_path(&record.config_digest).exists()
        {
            return Ok(None);
        }
        // A record whose image does not load (written by an older version that recorded before
        // checking the config) is as good as absent: the reference is resolved again.
        Ok(self.load(record).ok())
    }

    fn load(&self, record: ImageRecord) -> Result<Image, RegistryError> {
        let mut cfg_bytes = Vec::new();
        std::fs::File::open(self.blob_path(&record.config_digest))?
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut cfg_bytes)?;
        if cfg_bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(RegistryError::Protocol {
                reference: record.reference.clone(),
                registry: "(the image store)".into(),
                cause: format!(
                    "image config {} is over {MAX_CONFIG_BYTES} bytes; remove the image and pull it again",
                    record.config_digest
                ),
            });
        }
        let cfg: ConfigFile =
            serde_json::from_slice(&cfg_bytes).map_err(|e| RegistryError::Protocol {
                reference: record.reference.clone(),
                // A built image's record (`build:<hex>`, see build.rs) has no registry to name.
                registry: match ImageRef::parse(&record.reference) {
                    Ok(r) if !record.reference.starts_with("build:") => r.registry,
                    _ => "(a local build)".into(),
                },
                cause: format!("image config {}: {e}", record.config_digest),
            })?;
        let layer_dirs = record.layers.iter().map(|l| self.layer_dir(l)).collect();
        Ok(Image {
            config: cfg.config.unwrap_or_default(),
            layer_dirs,
            record,
        })
    }

    /// Unpacks one layer blob into `layers/<hex>` unless that already happened. A layer that
    /// does not decode is told apart from a host fault: a blob that no longer matches its
    /// digest was damaged in the store (it is removed, so that the next pull fetches it again),
    /// one that still matches is the image's own fault.
    async fn unpack(&self, reference: &str, digest: &str) -> Result<(), RegistryError> {
        let dest = self.layer_dir(digest);
        if dest.is_dir() {
            return Ok(());
        }
        let lock = self.lock_for(&format!("layer:{digest}"));
        let _g = lock.lock().await;
        if dest.is_dir() {
            return Ok(());
        }
        let blob = self.blob_path(digest);
        let tmp = self
            .root
            .join("layers")
            // Per process: `nimbus image pull` may unpack beside a running server.
            .join(format!(
                ".tmp-{}-{}",
                digest.trim_start_matches("sha256:"),
                std::process::id()
            ));
        let reserve = self.reserve;
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp)?;
            }
            std::fs::create_dir_all(&tmp)?;
            if let Err(e) = unpack_layer(&blob, &tmp, reserve) {
                // What a refused or broken layer wrote so far is of no use, and may be large.
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            match std::fs::rename(&tmp, &dest) {
                // Another process finished the same layer first: theirs is as good.
                Err(_) if dest.is_dir() => std::fs::remove_dir_all(&tmp),
                other => other,
            }
        })
        .await
        .map_err(|e| std::io::Error::other(format!("layer unpack task failed: {e}")))?;
        let Err(e) = result else {
            return Ok(());
        };
        // Decoding errors (gzip, zstd, tar, and the unpacker's own refusals) have these kinds;
        // the file system's errors (a full disk, the disk reserve's refusal, EIO, EACCES) are
        // the host's, even as the tar crate wraps them.
        use std::io::ErrorKind as K;
        let decoding = matches!(
            e.kind(),
            K::Other | K::InvalidData | K::UnexpectedEof | K::InvalidInput
        ) && e.raw_os_error().is_none();
        if !decoding {
            return Err(
                std::io::Error::new(e.kind(), format!("unpacking layer {digest}: {e}")).into(),
            );
        }
        let blob = self.blob_path(digest);
        let matches = tokio::task::spawn_blocking({
            let (blob, digest) = (blob.clone(), digest.to_string());
            move || file_has_digest(&blob, &digest)
        })
        .await
        .unwrap_or(Ok(true))?;
        if !matches {
            std::fs::remove_file(&blob)?;
            return Err(std::io::Error::other(format!(
                "layer {digest} of {reference} was damaged in the image store (its bytes no \
                 longer match its digest, so the disk under the data dir may be failing); it \
                 was removed, and the next launch or `nimbus image pull` downloads it again"
            ))
            .into());
        }
        Err(RegistryError::Unsupported {
            reference: reference.to_string(),
            cause: format!("layer {digest} cannot be unpacked: {e}"),
        })
    }

    /// Adds a blob from a local file (image builds feed the store through this), verifying the digest.
    pub fn import_blob(&self, digest: &str, src: &Path) -> std::io::Result<()> {
        check_digest(digest).map_err(std::io::Error::other)?;
        let dest = self.blob_path(digest);
        if dest.exists() {
            return Ok(());
        }
        let mut f = std::fs::File::open(src)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if got != digest {
            return Err(std::io::Error::other(format!(
                "{} has digest {got}, expected {digest}",
                src.display()
            )));
        }
        let tmp = crate::registry::tmp_path(&dest);
        std::fs::copy(src, &tmp)?;
        std::fs::rename(tmp, dest)
    }

    /// Every image this store has resolved, sorted by reference.
    pub fn list(&self) -> std::io::Result<Vec<ImageRecord>> {
        list_records(&self.root)
    }

    pub fn lookup(&self, key: &str) -> Result<Option<Image>, RegistryError> {
        self.load_record(key)
    }

    /// Forgets the image `key` resolved to (see [`remove_record`]).
    pub fn remove(&self, key: &str) -> std::io::Result<Option<ImageRecord>> {
        remove_record(&self.root, key)
    }

    /// Frees what no record names and `in_use` does not hold (see [`prune_store`]).
    pub fn prune(&self, in_use: &HashSet<String>) -> std::io::Result<Pruned> {
        prune_store(&self.root, in_use)
    }
}

/// Where the record of `key` lives in the store at `root`.
fn record_path_at(root: &Path, key: &str) -> PathBuf {
    root.join("images").join(format!(
        "{}.json",
        hex::encode(Sha256::digest(key.as_bytes()))
    ))
}

/// Forgets the image `key` (a normalised reference) resolved to; its blobs and layers stay
/// until [`prune_store`]. `None` when the store has no such image.
pub fn remove_record(root: &Path, key: &str) -> std::io::Result<Option<ImageRecord>> {
    let path = record_path_at(root, key);
    let record = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<ImageRecord>(&bytes).ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    std::fs::remove_file(&path)?;
    Ok(record)
}

/// Removes the blobs and unpacked layers no image record names and no mounted root uses
/// (`in_use`: layer directory names, the digests' hex, as sandboxes' overlays show them),
/// and returns how many of each went and the bytes freed.
pub fn prune_store(root: &Path, in_use: &HashSet<String>) -> std::io::Result<Pruned> {
    let mut kept: HashSet<String> = in_use.clone();
    for r in list_records(root)? {
        let digests = [&r.manifest_digest, &r.config_digest]
            .into_iter()
            .chain(r.layers.iter());
        kept.extend(digests.map(|d| d.trim_start_matches("sha256:").to_string()));
    }
    let mut pruned = Pruned::default();
    for (dir, is_layer) in [
        (root.join("blobs/sha256"), false),
        (root.join("layers"), true),
    ] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Temporary files of pulls and unpacks under way are not this sweep's.
            let is_digest = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_digest || kept.contains(&name) {
                continue;
            }
            let path = entry.path();
            let bytes = disk_usage(&path);
            if is_layer {
                std::fs::remove_dir_all(&path)?;
                pruned.layers += 1;
            } else {
                std::fs::remove_file(&path)?;
                pruned.blobs += 1;
            }
            pruned.bytes = pruned.bytes.saturating_add(bytes);
        }
    }
    Ok(pruned)
}

/// The image records of the store at `root` (`<data dir>/runtime/images`), sorted by
/// reference, read without opening the store (nothing is created; a store never used has none).
pub fn list_records(root: &Path) -> std::io::Result<Vec<ImageRecord>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root.join("images")) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            // A record being written is a temp file; a malformed one is skipped, as `pull` does.
            if let Ok(rec) = serde_json::from_slice::<ImageRecord>(&std::fs::read(&path)?) {
                out.push(rec);
            }
        }
    }
    out.sort_by(|a, b| a.reference.cmp(&b.reference));
    Ok(out)
}

/// What [`ImageStore::prune`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub blobs: usize,
    pub layers: usize,
    pub bytes: u64,
}

/// Bytes the files under `path` take (not following links), for a report.
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| disk_usage(&e.path()))
        .fold(meta.len(), u64::saturating_add)
}

/// Removes the temporary files and directories (`.tmp-<name>-<pid>[-<n>]`) that a pull or an
/// unpack killed midway left in `dir`: those of processes that no longer run. A process that
/// still runs (a server beside `nimbus image pull`) keeps its own.
/// Bytes a pull counts as on their way to disk; given back when the pull ends, however it ends.
struct RoomClaim<'a> {
    counter: &'a std::sync::atomic::AtomicU64,
    bytes: u64,
}

impl Drop for RoomClaim<'_> {
    fn drop(&mut self) {
        self.counter
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::SeqCst);
    }
}

fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix(".tmp-")
            .and_then(|rest| rest.split('-').nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Whether the file's sha256 is `digest` (`sha256:<hex>`).
fn file_has_digest(path: &Path, digest: &str) -> std::io::Result<bool> {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut h)?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())) == digest)
}

fn check_digest(d: &str) -> Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) =>
        {
            Ok(())
        }
        _ => Err(format!("digest {d:?} is not sha256:<64 lowercase hex>")),
    }
}

/// Writes `bytes` to `dest` whole or not at all: through a file beside it, synced before the
/// rename, so that after a power loss `dest` is either absent or complete (a record naming an
/// empty manifest would be trusted at every launch).
fn write_blob_bytes(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = crate::registry::tmp_path(dest);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(tmp, dest)
}

/// The largest image config a pull accepts (they are a few KiB; each launch reads it whole).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The most layers an image may have: overlayfs stacks at most 500 lower directories (see
/// `overlay.rs` for kernels before 6.8, whose one options string holds far fewer).
const MAX_LAYERS: usize = 500;

/// Unpacks a layer tarball (plain, gzip or zstd, told apart by their magic bytes as the
/// media type may not say), translating OCI whiteouts: `.wh.<name>` becomes a 0/0 character
/// device and `.wh..wh..opq` the `trusted.overlay.opaque` attribute on its directory, which is
/// how overlayfs spells them in a lower layer. Stops once the file system holding `dest` nears
/// `reserve` (a small download may decompress to any size).
pub fn unpack_layer(blob: &Path, dest: &Path, reserve: DiskReserve) -> std::io::Result<()> {
    let mut f = std::fs::File::open(blob)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    drop(f);
    let f = std::io::BufReader::new(std::fs::File::open(blob)?);
    let reader: Box<dyn Read> = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        // Every gzip member, as Docker reads them (a layer may be several concatenated).
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if n == 4 && crate::zstd::is_zstd(magic) {
        Box::new(crate::zstd::FramesReader::new(f))
    } else {
        Box::new(f)
    };
    let what = format!(
        "unpacking layer sha256:{}",
        blob.file_name().unwrap_or_default().to_string_lossy()
    );
    let reader = crate::tar_guard::MetadataLimit::new(reader);
    let mut archive = tar::Archive::new(reserve.guard(reader, dest, what));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    // Extended attributes are applied by `unpack_entry`, which keeps only the namespaces an
    // image may set.
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            unpack_entry(&mut entry, &path, dest)?;
            continue;
        };
        if let Some(hidden) = name.strip_prefix(".wh.") {
            apply_whiteout(dest, &path, hidden)?;
            continue;
        }
        unpack_entry(&mut entry, &path, dest)?;
    }
    Ok(())
}

/// Whether an image layer may give a file the extended attribute `name`. Layers come from
/// registries: `trusted.*` holds overlayfs' own bookkeeping (`trusted.overlay.redirect`,
/// `…metacopy`, `…origin`), which a layer must not forge, and other `security.*` attributes are
/// host policy (SELinux labels, IMA). File capabilities and ACLs are part of what an image means.
fn image_may_set_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Unpacks one entry inside `dest` (the tar crate refuses paths that leave it), then applies the
/// entry's extended attributes that [`image_may_set_xattr`] allows; the others are dropped.
fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    dest: &Path,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for ext in extensions {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                if image_may_set_xattr(name) {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    // As the tar crate did: links carry no attributes of their own (Linux refuses user.* on a
    // symlink, which would refuse the whole layer).
    let is_link =
        entry.header().entry_type().is_symlink() || entry.header().entry_type().is_hard_link();
    if !entry.unpack_in(dest).map_err(with_cause)? || xattrs.is_empty() || is_link {
        return Ok(());
    }
    // The place `unpack_in` wrote to: `dest` joined with the path's plain components.
    let mut written = dest.to_path_buf();
    for c in path.components() {
        if let std::path::Component::Normal(part) = c {
            written.push(part);
        }
    }
    for (name, value) in xattrs {
        // `xattr::set` does not follow a symlink in the last component, and `unpack_in` checked
        // that the directories above it stay inside `dest`.
        xattr::set(&written, std::ffi::OsStr::from_bytes(&name), &value).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot set the extended attribute {} on {}: {e}",
                    String::from_utf8_lossy(&name),
                    path.display()
                ),
            )
        })?;
    }
    Ok(())
}

/// The tar crate's unpack errors say only "failed to unpack `<path>`" and keep why in their
/// sources (nested one per layer of its code); the message shown to the operator needs all of it.
fn with_cause(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), crate::registry::error_chain(&e))
}

/// Applies the whiteout entry `path` (file name `.wh.<hidden>`) inside `dest`. A layer comes from
/// a registry, so nothing here may reach outside `dest`: the entry's directories are walked one
/// by one without following symlinks (a symlink among them is refused, where following it would
/// delete or replace a file elsewhere on the host), and `hidden` must name one entry, not `.`,
/// `..` or nothing.
fn apply_whiteout(dest: &Path, path: &Path, hidden: &str) -> std::io::Result<()> {
    let refuse = |why: &str| {
        std::io::Error::other(format!(
            "whiteout {} {why}; the layer is refused",
            path.display()
        ))
    };
    let mut parent = dest.to_path_buf();
    for c in path.parent().unwrap_or(Path::new("")).components() {
        match c {
            std::path::Component::Normal(part) => parent.push(part),
            std::path::Component::CurDir => continue,
            _ => return Err(refuse("escapes the layer")),
        }
        match parent.symlink_metadata() {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => return Err(refuse("lies under a symlink")),
            Ok(_) => return Err(refuse("lies under a file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&parent)?,
            Err(e) => return Err(e),
        }
    }
    if hidden == ".wh..opq" {
        return xattr::set(&parent, "trusted.overlay.opaque", b"y");
    }
    if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.starts_with(".wh.") {
        return Err(refuse("names no single entry"));
    }
    let target = parent.join(hidden);
    match target.symlink_metadata() {
        // A directory is removed with its contents (std's remove_dir_all does not follow
        // symlinks inside it); a symlink is removed itself, never what it points to.
        Ok(m) if m.file_type().is_dir() => std::fs::remove_dir_all(&target)?,
        Ok(_) => std::fs::remove_file(&target)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    nix::sys::stat::mknod(
        &target,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        let tarball = layer(&[
            ("etc/", None),
            ("etc/keep", Some(b"k")),
            ("etc/.wh.gone", Some(b"")),
            ("var/", None),
            ("var/.wh..wh..opq", Some(b"")),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tarball).unwrap();
        std::fs::write(&blob, gz.finish().unwrap()).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack_layer(&blob, &out, DiskReserve::new(0)).unwrap();
        assert_eq!(std::fs::read(out.join("etc/keep")).unwrap(), b"k");
        use std::os::unix::fs::FileTypeExt;
        let md = std::fs::symlink_metadata(out.join("etc/gone")).unwrap();
        assert!(md.file_type().is_char_device());
        assert!(!out.join("etc/.wh.gone").exists());
        assert_eq!(
            xattr::get(out.join("var"), "trusted.overlay.opaque")
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
    }

    /// A layer holding one file whose PAX header carries the given extended attributes.
    fn layer_with_xattrs(path: &str, xattrs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut records = Vec::new();
        for (name, value) in xattrs {
            let body = [b" SCHILY.xattr.", name.as_bytes(), b"=", value, b"\n"].concat();
            // A PAX record starts with its own length in decimal, that length included.
            let mut len = body.len() + 1;
            while len.to_string().len() + body.len() != len {
                len += 1;
            }
            records.extend_from_slice(len.to_string().as_bytes());
            records.extend_from_slice(&body);
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut pax = tar::Header::new_ustar();
        pax.set_uid(0);
        pax.set_gid(0);
        pax.set_mtime(0);
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_size(records.len() as u64);
        pax.set_mode(0o644);
        pax.set_cksum();
        b.append_data(&mut pax, "PaxHeader", &records[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, path, &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn a_layer_sets_only_the_extended_attributes_an_image_may_carry() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        // cap_net_raw+ep, as `setcap` writes it for e.g. ping.
        let capability: &[u8] = &[
            0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        std::fs::write(
            &blob,
            layer_with_xattrs(
                "bin/tool",
                &[
                    ("user.origin", b"image"),
                    ("security.capability", capability),
                    ("trusted.overlay.redirect", b"/etc"),
                    ("trusted.overlay.metacopy", b""),
                    ("security.selinux", b"system_u:object_r:shadow_t:s0"),
                ],
            ),
        )
        .unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack_layer(&blob, &out, DiskReserve::new(0)).unwrap();
        let tool = out.join("bin/tool");
        assert_eq!(std::fs::read(&tool).unwrap(), b"x");
        let get = |name: &str| xattr::get(&tool, name).unwrap();
        assert_eq!(get("user.origin").as_deref(), Some(&b"image"[..]));
        assert_eq!(get("security.capability").as_deref(), Some(capability));
        assert_eq!(get("trusted.overlay.redirect"), None);
        assert_eq!(get("trusted.overlay.metacopy"), None);
        assert_ne!(
            get("security.selinux").as_deref(),
            Some(&b"system_u:object_r:shadow_t:s0"[..])
        );
    }

    #[test]
    fn entries_escaping_the_layer_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // tar::Builder refuses '..' in paths, so write the name field directly.
        h.as_gnu_mut().unwrap().name[..10].copy_from_slice(b"../escaped");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        std::fs::write(&blob, b.into_inner().unwrap()).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let _ = unpack_layer(&blob, &out, DiskReserve::new(0));
        assert!(!dir.path().join("escaped").exists());
    }

    #[tokio::test]
    async fn an_image_whose_config_does_not_load_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let client = RegistryClient::new(
            &crate::config::RuntimeConfig::default(),
            crate::registry::Credentials::default(),
        )
        .unwrap();
        let store = ImageStore::open(dir.path(), client).unwrap();
        let put = |bytes: &[u8]| {
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
            let src = dir.path().join("src");
            std::fs::write(&src, bytes).unwrap();
            store.import_blob(&digest, &src).unwrap();
            digest
        };
        let config = put(b"this is not json");
        let layer = put(&layer(&[("f", Some(b"x"))]));
        let record = ImageRecord {
            reference: "127.0.0.1:5000/t/x:v1".into(),
            manifest_digest: config.clone(),
            config_digest: config,
            layers: vec![layer],
        };
        let err = store
            .finish("127.0.0.1:5000/t/x:v1", record, &|_| {})
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("registry 127.0.0.1:5000 sent"),
            "{err}"
        );
        assert!(store.list().unwrap().is_empty(), "no record is written");
        assert!(store.lookup("127.0.0.1:5000/t/x:v1").unwrap().is_none());
    }

    /// A tmpfs of `mib` MiB mounted on `at` for the life of the value.
    struct Tmpfs(PathBuf);
    impl Tmpfs {
        fn mount(at: &Path, mib: u64) -> Self {
            std::fs::create_dir_all(at).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                at,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={mib}m").as_str()),
            )
            .unwrap();
            Tmpfs(at.to_path_buf())
        }
    }
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// A store in `dir` holding `bytes` as a layer blob; returns the store and the digest.
    fn store_with_blob(dir: &Path, bytes: &[u8]) -> (ImageStore, String) {
        let client = RegistryClient::new(
            &crate::config::RuntimeConfig::default(),
            crate::registry::Credentials::default(),
        )
        .unwrap();
        let store = ImageStore::open(&dir.join("store"), client).unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let src = dir.join("src");
        std::fs::write(&src, bytes).unwrap();
        store.import_blob(&digest, &src).unwrap();
        (store, digest)
    }

    #[tokio::test]
    async fn a_layer_that_does_not_decode_is_the_images_fault_and_says_which_layer() {
        let dir = tempfile::tempdir().unwrap();
        // gzip's magic, then bytes no gzip stream holds.
        let mut bytes = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        bytes.extend_from_slice(&[0xff; 64]);
        let (store, digest) = store_with_blob(dir.path(), &bytes);
        let err = store.unpack("lab/app:v1", &digest).await.unwrap_err();
        let told = err.to_string();
        assert!(matches!(err, RegistryError::Unsupported { .. }), "{told}");
        assert!(told.contains("lab/app:v1"), "{told}");
        assert!(
            told.contains(&format!("layer {digest} cannot be unpacked")),
            "{told}"
        );
        assert!(store.blob_path(&digest).exists(), "a sound blob is kept");
    }

    #[tokio::test]
    async fn a_layer_blob_damaged_in_the_store_is_removed_so_the_next_pull_fetches_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer(&[("hello", Some(b"hi"))])).unwrap();
        let (store, digest) = store_with_blob(dir.path(), &gz.finish().unwrap());
        // The disk flips the stream's bytes after the download was verified.
        let blob = store.blob_path(&digest);
        let mut bytes = std::fs::read(&blob).unwrap();
        for b in &mut bytes[10..] {
            *b = !*b;
        }
        std::fs::write(&blob, &bytes).unwrap();
        let err = store.unpack("lab/app:v1", &digest).await.unwrap_err();
        let told = err.to_string();
        assert!(matches!(err, RegistryError::Io(_)), "{told}");
        assert!(told.contains("damaged in the image store"), "{told}");
        assert!(told.contains("downloads it again"), "{told}");
        assert!(!blob.exists(), "the damaged blob is removed");
        assert!(!store.layer_dir(&digest).exists());
    }

    #[tokio::test]
    async fn a_layer_that_decompresses_past_the_disk_reserve_is_stopped_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Tmpfs::mount(&dir.path().join("store"), 48);
        let client = RegistryClient::new(
            &crate::config::RuntimeConfig::default(),
            crate::registry::Credentials::default(),
        )
        .unwrap();
        let store = ImageStore::open(&fs.0, client)
            .unwrap()
            .with_disk_reserve(DiskReserve::new(16 << 20));
        // 64 MiB of zeros: about 64 KiB gzipped, more than the 48 MiB file system unpacked.
        let zeros = vec![0u8; 64 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer(&[("bomb", Some(&zeros))])).unwrap();
        let bytes = gz.finish().unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let src = dir.path().join("src");
        std::fs::write(&src, &bytes).unwrap();
        store.import_blob(&digest, &src).unwrap();

        let err = store.unpack("x", &digest).await.unwrap_err().to_string();
        assert!(err.contains("unpacking layer sha256:"), "{err}");
        assert!(err.contains("Nimbus keeps 16 MiB free there"), "{err}");
        let left: Vec<_> = std::fs::read_dir(fs.0.join("layers")).unwrap().collect();
        assert!(left.is_empty(), "the partial layer is removed: {left:?}");
        let st = nix::sys::statvfs::statvfs(&fs.0).unwrap();
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        assert!(free > 40 << 20, "only {free} bytes free after the refusal");
    }

    #[test]
    fn concurrent_pulls_count_each_others_declared_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let client = RegistryClient::new(
            &crate::config::RuntimeConfig::default(),
            crate::registry::Credentials::default(),
        )
        .unwrap();
        let store = ImageStore::open(dir.path(), client)
            .unwrap()
            .with_disk_reserve(DiskReserve::new(0));
        let st = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        let first = store.claim_room(free / 2 + 1, "pulling a").unwrap();
        // Alone it would fit; beside the first, it does not.
        let err = store.claim_room(free / 2 + 1, "pulling b").err().unwrap();
        assert!(err.to_string().starts_with("pulling b needs"), "{err}");
        drop(first);
        store.claim_room(free / 2 + 1, "pulling b").unwrap();
    }

    /// A registry serving one manifest with `config_size` and `layer_sizes`; the pull's error,
    /// and how many requests the registry got.
    async fn pull_failure(config_size: u64, layer_sizes: &'static [u64]) -> (RegistryError, usize) {
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        let host = crate::registry::tests::fake_registry(move |mut out| {
            use std::io::Write;
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
            let layers: Vec<serde_json::Value> = layer_sizes
                .iter()
                .map(|size| {
                    serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": d('1'), "size": size})
                })
                .collect();
            let body = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": crate::registry::MT_OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": d('c'), "size": config_size},
                "layers": layers,
            })
            .to_string();
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                crate::registry::MT_OCI_MANIFEST,
                body.len()
            );
        });
        let dir = tempfile::tempdir().unwrap();
        let client = RegistryClient::new(
            &crate::config::RuntimeConfig::default(),
            crate::registry::Credentials::default(),
        )
        .unwrap();
        let store = ImageStore::open(dir.path(), client).unwrap();
        let r = ImageRef::parse(&format!("{host}/team/odd:v1")).unwrap();
        let err = store.pull(&r, &|_| {}).await.err().unwrap();
        (err, requests.load(std::sync::atomic::Ordering::SeqCst))
    }

    async fn pull_error_for(config_size: u64, layer_sizes: &'static [u64]) -> String {
        pull_failure(config_size, layer_sizes).await.0.to_string()
    }

    #[tokio::test]
    async fn a_manifest_with_a_huge_config_many_layers_or_overflowing_sizes_is_refused() {
        // Configs are read whole at every launch: 2 GiB of one would be 2 GiB of memory.
        let text = pull_error_for(2 << 30, &[10]).await;
        assert!(
            text.contains("its config is 2147483648 bytes (at most 4194304)"),
            "{text}"
        );
        static MANY: [u64; 501] = [1; 501];
        let text = pull_error_for(10, &MANY).await;
        assert!(
            text.contains("it has 501 layers, more than the 500"),
            "{text}"
        );
        // Sizes summing past 2^64 are refused as too large, not a panic.
        let text = pull_error_for(10, &[u64::MAX, 2]).await;
        assert!(text.contains("needs"), "{text}");
    }

    #[tokio::test]
    async fn a_pull_whose_manifest_declares_more_than_the_disk_holds_downloads_nothing() {
        let (err, requests) = pull_failure(100, &[1u64 << 50]).await;
        let text = err.to_string();
        assert!(
            text.contains("/team/odd:v1 needs 1073741824 MiB more"),
            "{text}"
        );
        // Said as it is (no "writing … failed"), and for a launch it is the host's to fix
        // (RuntimeUnavailable), not an internal error.
        assert!(text.starts_with("pulling "), "{text}");
        assert!(
            matches!(
                crate::LaunchError::from(err),
                crate::LaunchError::HostUnfit(_)
            ),
            "{text}"
        );
        assert_eq!(requests, 1, "only the manifest was requested");
    }

    #[test]
    fn temporaries_of_processes_that_are_gone_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        let layers = dir.path().join("layers");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(layers.join(".tmp-abc-999999999/etc")).unwrap();
        // pid 999999999 cannot exist (pid_max is at most 2^22); this process's own stays.
        let gone = blobs.join(".tmp-abc-999999999-2");
        let mine = blobs.join(format!(".tmp-abc-{}-0", std::process::id()));
        std::fs::write(&gone, b"x").unwrap();
        std::fs::write(&mine, b"x").unwrap();
        let client = RegistryClient::new(
            &crate::config::RuntimeConfig::default(),
            crate::registry::Credentials::default(),
        )
        .unwrap();
        ImageStore::open(dir.path(), client).unwrap();
        assert!(!gone.exists());
        assert!(!layers.join(".tmp-abc-999999999").exists());
        assert!(mine.exists());
    }

    /// A layer of `ln` (a symlink to `target`) followed by a regular entry named `then`,
    /// written raw (tar::Builder refuses some of these names).
    fn symlink_then(target: &Path, then: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let header = |kind, mode| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h
        };
        let mut h = header(tar::EntryType::Symlink, 0o777);
        b.append_link(&mut h, "ln", target).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644);
        let name = &mut h.as_gnu_mut().unwrap().name;
        name[..then.len()].copy_from_slice(then.as_bytes());
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_never_reach_outside_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        // What a hostile layer aims at: a file and a directory outside the store.
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("victim"), b"v").unwrap();
        std::fs::write(outside.join("sub/keep"), b"k").unwrap();
        let blob = dir.path().join("blob");
        for (i, (tarball, why)) in [
            (symlink_then(&outside, "ln/.wh.victim"), "under a symlink"),
            (
                symlink_then(&outside.join("sub"), "ln/.wh..."),
                "under a symlink",
            ),
            (symlink_then(&outside, ".wh..."), "names no single entry"),
            (symlink_then(&outside, "x/.wh."), "names no single entry"),
        ]
        .into_iter()
        .enumerate()
        {
            std::fs::write(&blob, tarball).unwrap();
            let out = dir.path().join(format!("store/layers/out{i}"));
            std::fs::create_dir_all(&out).unwrap();
            let err = unpack_layer(&blob, &out, DiskReserve::new(0)).unwrap_err();
            assert!(err.to_string().contains(why), "case {i}: {err}");
            assert_eq!(
                std::fs::read(outside.join("victim")).unwrap(),
                b"v",
                "case {i}"
            );
            assert_eq!(
                std::fs::read(outside.join("sub/keep")).unwrap(),
                b"k",
                "case {i}"
            );
            assert!(
                out.parent().unwrap().is_dir(),
                "case {i}: the store's layers dir"
            );
        }
    }
}
