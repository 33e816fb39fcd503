//! Images by build: a Dockerfile's text and a context directory, built with buildah (vfs
//! storage under the runtime's data dir, so no host storage configuration is touched), pushed
//! to an OCI layout directory and imported into the same content-addressed store as pulled
//! images. Builds are cached by the Dockerfile text and the context's file list (names, sizes,
//! modification times).
//!
//! `RUN` steps get no network (`--network none`): a build is not covered by the sandbox egress
//! policy yet, so it fails closed. Base images in `FROM` are pulled by buildah itself, told of
//! the registries pulls treat specially (loopback and `runtime.insecure_registries` over plain
//! HTTP, `runtime.mirrors`) through a registries.conf of the build's own.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::config::RuntimeConfig;
use crate::images::{Image, ImageRecord, ImageStore};
use crate::reference::{is_loopback_host, ImageRef};
use crate::{LaunchError, ProgressEvent};

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Desc>,
}
#[derive(Deserialize)]
struct Desc {
    digest: String,
}
#[derive(Deserialize)]
struct Manifest {
    config: Desc,
    layers: Vec<Desc>,
}

fn context_fingerprint(dir: &Path, h: &mut Sha256) -> std::io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            seen += 1;
            if seen > 100_000 {
                return Err(std::io::Error::other(
                    "the build context has more than 100000 files",
                ));
            }
            let md = e.path().symlink_metadata()?;
            let rel = e
                .path()
                .strip_prefix(dir)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            use std::os::unix::fs::MetadataExt;
            h.update(
                format!(
                    "{}\0{}\0{}\0{}\n",
                    rel.display(),
                    md.len(),
                    md.mtime(),
                    md.mtime_nsec()
                )
                .as_bytes(),
            );
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

pub async fn build(
    store: &ImageStore,
    work: &Path,
    dockerfile: &str,
    context: &Path,
    config: &RuntimeConfig,
    progress: &(dyn Fn(ProgressEvent) + Send + Sync),
) -> Result<Image, LaunchError> {
    let bad_ctx = |reason: String| LaunchError::BadSpec {
        field: "root.source.context".into(),
        reason,
    };
    if !context.is_absolute() || !context.is_dir() {
        return Err(bad_ctx(format!(
            "{} is not a directory on the host",
            context.display()
        )));
    }
    let mut h = Sha256::new();
    h.update(dockerfile.as_bytes());
    h.update(b"\0");
    h.update(context.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    let ctx = context.to_path_buf();
    let fp = tokio::task::spawn_blocking(move || {
        let mut h2 = Sha256::new();
        context_fingerprint(&ctx, &mut h2).map(|_| h2.finalize())
    })
    .await
    .map_err(|e| LaunchError::Internal(e.to_string()))?
    .map_err(|e| bad_ctx(format!("cannot read the build context: {e}")))?;
    h.update(fp);
    let key_hex = hex::encode(h.finalize());
    let key = format!("build:{key_hex}");
    if let Some(img) = store.lookup(&key)? {
        return Ok(img);
    }

    let internal = |e: String| LaunchError::Internal(e);
    let storage = work.join("storage");
    let runroot = work.join("run");
    let tmp = work.join(format!("tmp-{}", &key_hex[..16]));
    std::fs::create_dir_all(&tmp).map_err(|e| internal(e.to_string()))?;
    let result = async {
        let df = tmp.join("Dockerfile");
        std::fs::write(&df, dockerfile).map_err(|e| internal(e.to_string()))?;
        let conf = tmp.join("registries.conf");
        let mut env: Vec<(&str, &std::ffi::OsStr)> = Vec::new();
        if let Some(text) = registries_conf(dockerfile, config) {
            std::fs::write(&conf, text).map_err(|e| internal(e.to_string()))?;
            env.push(("CONTAINERS_REGISTRIES_CONF", conf.as_os_str()));
        }
        let tag = format!("localhost/nimbus-build:{}", &key_hex[..32]);
        let base = |sub: &str| -> Vec<String> {
            vec![
                "--storage-driver".into(),
                "vfs".into(),
                "--root".into(),
                storage.display().to_string(),
                "--runroot".into(),
                runroot.display().to_string(),
                sub.into(),
            ]
        };
        let mut args = base("build");
        args.extend([
            "--network".into(),
            "none".into(),
            "-f".into(),
            df.display().to_string(),
            "-t".into(),
            tag.clone(),
            context.display().to_string(),
        ]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::cmd::run_cmd_env("buildah", &argv, None, &env)
            .await
            .map_err(|e| {
                let tail: String = e
                    .chars()
                    .rev()
                    .take(4000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                LaunchError::BuildFailed(tail)
            })?;
        let layout = tmp.join("layout");
        let mut args = base("push");
        args.extend([tag.clone(), format!("oci:{}:latest", layout.display())]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::cmd::run_cmd("buildah", &argv, None)
            .await
            .map_err(internal)?;
        let mut args = base("rmi");
        args.push(tag.clone());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = crate::cmd::run_cmd("buildah", &argv, None).await;
        import_layout(store, &layout, &key).map_err(internal)
    }
    .await;
    let _ = std::fs::remove_dir_all(&tmp);
    let record = result?;
    Ok(store.finish(&key, record, progress).await?)
}

/// The registries.conf a build's base-image pulls need to reach what pulls reach: the
/// registries of `FROM` lines on loopback and `runtime.insecure_registries` over plain HTTP,
/// and `runtime.mirrors`. `None` when nothing is special, so buildah keeps the host's own
/// configuration. Hosts are validated by the config and the reference parser, so they need no
/// quoting beyond TOML's strings.
fn registries_conf(dockerfile: &str, config: &RuntimeConfig) -> Option<String> {
    use std::collections::BTreeMap;
    let plain_http =
        |host: &str| is_loopback_host(host) || config.insecure_registries.iter().any(|h| h == host);
    // location → (plain HTTP, mirrors as (location, plain HTTP))
    let mut registries: BTreeMap<String, (bool, Vec<(String, bool)>)> = BTreeMap::new();
    for host in base_image_registries(dockerfile)
        .into_iter()
        .filter(|h| is_loopback_host(h))
        .chain(config.insecure_registries.iter().cloned())
    {
        registries.insert(host, (true, Vec::new()));
    }
    for (registry, mirrors) in &config.mirrors {
        let entry = registries
            .entry(registry.clone())
            .or_insert_with(|| (plain_http(registry), Vec::new()));
        for m in mirrors {
            // Plain HTTP where pulls use it (see `RegistryClient::endpoints`).
            let (host, says_http) = crate::registry::mirror_host(m);
            entry
                .1
                .push((host.to_string(), says_http || plain_http(host)));
        }
    }
    if registries.is_empty() {
        return None;
    }
    // Unqualified names keep meaning Docker Hub, as they do for pulls.
    let mut out = String::from("unqualified-search-registries = [\"docker.io\"]\n");
    for (location, (insecure, mirrors)) in registries {
        out.push_str(&format!(
            "\n[[registry]]\nlocation = {location:?}\ninsecure = {insecure}\n"
        ));
        for (mirror, insecure) in mirrors {
            out.push_str(&format!(
                "[[registry.mirror]]\nlocation = {mirror:?}\ninsecure = {insecure}\n"
            ));
        }
    }
    Some(out)
}

/// The registries the `FROM` lines of a Dockerfile pull from (not `scratch`, earlier stages or
/// references built from `ARG`s, which buildah resolves itself).
fn base_image_registries(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
        let Some(image) = rest.first() else { continue };
        let lower = image.to_ascii_lowercase();
        let earlier_stage = stages.contains(&lower);
        if let [_, as_word, name] = rest.as_slice() {
            if as_word.eq_ignore_ascii_case("AS") {
                stages.push(name.to_ascii_lowercase());
            }
        }
        if lower == "scratch" || image.contains('$') || earlier_stage {
            continue;
        }
        if let Ok(r) = ImageRef::parse(image) {
            out.push(r.registry);
        }
    }
    out
}

/// Imports the single image of an OCI layout directory into the store's blobs.
pub fn import_layout(store: &ImageStore, layout: &Path, key: &str) -> Result<ImageRecord, String> {
    let blob = |d: &str| -> PathBuf {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index: Index = serde_json::from_slice(
        &std::fs::read(layout.join("index.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("index.json: {e}"))?;
    let m = index
        .manifests
        .first()
        .ok_or("the built image layout has no manifest")?;
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(blob(&m.digest)).map_err(|e| e.to_string())?)
            .map_err(|e| format!("manifest: {e}"))?;
    for d in std::iter::once(&m.digest)
        .chain(std::iter::once(&manifest.config.digest))
        .chain(manifest.layers.iter().map(|l| &l.digest))
    {
        store
            .import_blob(d, &blob(d))
            .map_err(|e| format!("importing {d}: {e}"))?;
    }
    Ok(ImageRecord {
        reference: key.to_string(),
        manifest_digest: m.digest.clone(),
        config_digest: manifest.config.digest,
        layers: manifest.layers.into_iter().map(|l| l.digest).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_name_their_registries_but_not_scratch_stages_or_args() {
        let dockerfile = "FROM 127.0.0.1:5000/base:v1 AS deps\n\
                          from --platform=linux/amd64 registry.lab/tools\n\
                          FROM deps\n\
                          FROM ${BASE}\n\
                          FROM scratch\n\
                          FROM busybox\n\
                          RUN echo FROM nowhere\n";
        assert_eq!(
            base_image_registries(dockerfile),
            ["127.0.0.1:5000", "registry.lab", "docker.io"]
        );
    }

    #[test]
    fn a_build_gets_a_registries_conf_only_for_registries_pulls_treat_specially() {
        let plain = RuntimeConfig::default();
        assert_eq!(registries_conf("FROM busybox\n", &plain), None);
        let conf = registries_conf("FROM localhost:5000/base:v1\nFROM busybox\n", &plain).unwrap();
        assert!(
            conf.starts_with("unqualified-search-registries = [\"docker.io\"]"),
            "{conf}"
        );
        assert!(
            conf.contains("[[registry]]\nlocation = \"localhost:5000\"\ninsecure = true\n"),
            "{conf}"
        );
        assert!(!conf.contains("\"docker.io\"\ninsecure"), "{conf}");

        let mut config = RuntimeConfig {
            insecure_registries: vec!["registry.lab:5000".into()],
            ..Default::default()
        };
        config
            .mirrors
            .insert("docker.io".into(), vec!["http://mirror.lab:5000".into()]);
        let conf = registries_conf("FROM busybox\n", &config).unwrap();
        assert!(
            conf.contains("location = \"registry.lab:5000\"\ninsecure = true\n"),
            "{conf}"
        );
        assert!(
            conf.contains(
                "location = \"docker.io\"\ninsecure = false\n\
                 [[registry.mirror]]\nlocation = \"mirror.lab:5000\"\ninsecure = true\n"
            ),
            "{conf}"
        );
    }
}
