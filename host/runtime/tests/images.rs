//! Pulling images over the OCI distribution protocol from a real registry on loopback.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use nimbus_runtime::reference::ImageRef;
use nimbus_runtime::{LaunchError, ProgressEvent};

#[tokio::test]
async fn pull_by_reference_stores_verified_blobs_and_unpacks_layers_with_whiteouts() {
    require_host();
    let reg = Registry::start(None);
    reg.push_image(
        "tools/layered",
        "v1",
        &[busybox_layer(), whiteout_layer()],
        busybox_config(),
        "amd64",
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(1, data.path(), |_| {});
    let r = ImageRef::parse(&format!("{}/tools/layered:v1", reg.host)).unwrap();
    let max_done = Arc::new(AtomicU64::new(0));
    let seen = max_done.clone();
    let img = rt
        .images()
        .pull(&r, &move |e| {
            if let ProgressEvent::Pulling {
                bytes_done,
                bytes_total,
                ..
            } = e
            {
                assert!(bytes_done <= bytes_total);
                seen.fetch_max(bytes_done, Ordering::Relaxed);
            }
        })
        .await
        .unwrap();
    assert_eq!(img.layer_dirs.len(), 2);
    assert!(
        max_done.load(Ordering::Relaxed) > 1_000_000,
        "progress reported the busybox layer bytes"
    );
    for l in &img.record.layers {
        let blob = std::fs::read(rt.images().blob_path(l)).unwrap();
        assert_eq!(
            format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&blob))
            ),
            *l
        );
    }
    assert_eq!(img.config.env.as_ref().unwrap()[1], "IMAGE_VAR=from-image");
    // Layer two's whiteout and opaque dir are in overlay form; run through a sandbox too.
    assert_layer_two_applied(&rt, &r.to_string()).await;
}

/// Runs `reference` (busybox plus `whiteout_layer`) and checks layer two's whiteout, opaque
/// dir and new file are what the sandbox sees.
async fn assert_layer_two_applied(rt: &nimbus_runtime::Runtime, reference: &str) {
    let (_, logs) = run_to_end(
        rt,
        &spec(
            reference,
            &[
                "sh",
                "-c",
                "ls /etc/gone.txt 2>&1; cat /etc/layer2.txt; ls /var/cache",
            ],
        ),
    )
    .await;
    assert!(logs.contains("No such file or directory"), "{logs}");
    assert!(logs.contains("from layer two"), "{logs}");
    assert!(
        logs.contains("new.txt") && !logs.contains("old.txt"),
        "{logs}"
    );
}

#[tokio::test]
async fn zstd_layers_in_several_frames_unpack_with_their_whiteouts() {
    require_host();
    let reg = Registry::start(None);
    reg.push_image_compressed(
        "tools/zstd",
        "v1",
        &[busybox_layer(), whiteout_layer()],
        busybox_config(),
        "amd64",
        Compression::ZstdFrames,
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(7, data.path(), |_| {});
    assert_layer_two_applied(&rt, &format!("{}/tools/zstd:v1", reg.host)).await;
}

#[tokio::test]
async fn multi_arch_index_resolves_to_linux_amd64() {
    require_host();
    let reg = Registry::start(None);
    let (amd, amd_digest) = reg
        .push_image(
            "multi/app",
            "amd64-only",
            &[busybox_layer()],
            busybox_config(),
            "amd64",
        )
        .await;
    let mut arm_layer = tar::Builder::new(Vec::new());
    tar_file(&mut arm_layer, "ARM", 0o644, b"wrong platform\n");
    let (arm, arm_digest) = reg
        .push_image(
            "multi/app",
            "arm64-only",
            &[arm_layer.into_inner().unwrap()],
            serde_json::json!({}),
            "arm64",
        )
        .await;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_digest, "size": arm.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd_digest, "size": amd.len(), "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    reg.push_manifest(
        "multi/app",
        "latest",
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).unwrap(),
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(2, data.path(), |_| {});
    let img = rt
        .images()
        .pull(
            &ImageRef::parse(&format!("{}/multi/app", reg.host)).unwrap(),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(img.record.manifest_digest, amd_digest);
    assert!(img.layer_dirs[0].join("bin/busybox").exists());
}

#[tokio::test]
async fn auth_protected_repository_needs_the_docker_config_credentials() {
    require_host();
    let reg = Registry::start(Some(("alice", "wonderland")));
    reg.push_busybox("private/app", "v1").await;
    let reference = format!("{}/private/app:v1", reg.host);

    // No credentials: AuthFailed, and nothing is left behind.
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(3, data.path(), |_| {});
    let id = new_id();
    let err = rt
        .launch(&id, "demo", &spec(&reference, &["true"]), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::AuthFailed(_)), "{err:?}");
    assert!(rt.leftovers(id.as_str()).await.is_empty());

    // Wrong password: AuthFailed.
    let data2 = tempfile::tempdir().unwrap();
    let cfg = data2.path().join("docker.json");
    basic_auth_config(&cfg, &reg.host, "alice", "wrong");
    let rt = runtime(3, data2.path(), |c| c.docker_config = Some(cfg.clone()));
    let err = rt
        .images()
        .pull(&ImageRef::parse(&reference).unwrap(), &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");

    // Right password from ~/.docker/config.json format: pulls and runs.
    let data3 = tempfile::tempdir().unwrap();
    let cfg = data3.path().join("docker.json");
    basic_auth_config(&cfg, &reg.host, "alice", "wonderland");
    let rt = runtime(3, data3.path(), |c| c.docker_config = Some(cfg.clone()));
    let (_, logs) = run_to_end(&rt, &spec(&reference, &["echo", "private ok"])).await;
    assert_eq!(logs, "private ok\n");
}

#[tokio::test]
async fn missing_images_and_unreachable_registries_fail_with_distinct_errors() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(4, data.path(), |_| {});
    let err = rt
        .launch(
            &new_id(),
            "demo",
            &spec(&format!("{}/tools/busybox:nope", reg.host), &["true"]),
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::ImageNotFound(_)), "{err:?}");
    let err = rt
        .launch(
            &new_id(),
            "demo",
            &spec(&format!("{}/tools/absent:v1", reg.host), &["true"]),
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::ImageNotFound(_)), "{err:?}");
    // A loopback port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = rt
        .launch(
            &new_id(),
            "demo",
            &spec(&format!("127.0.0.1:{port}/x/y:v1"), &["true"]),
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, LaunchError::RegistryUnreachable(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn configured_mirror_serves_docker_hub_references_without_the_internet() {
    require_host();
    let mirror = Registry::start(None);
    mirror.push_busybox("library/busybox", "latest").await;
    let data = tempfile::tempdir().unwrap();
    let host = mirror.host.clone();
    let rt = runtime(5, data.path(), |c| {
        c.mirrors
            .insert("docker.io".into(), vec![format!("http://{host}")]);
    });
    // `busybox` normalises to docker.io/library/busybox:latest, served by the mirror.
    let (_, logs) = run_to_end(&rt, &spec("busybox", &["echo", "from mirror"])).await;
    assert_eq!(logs, "from mirror\n");
}

/// A mirror that wants credentials it was not given does not stop a pull the registry itself
/// serves (as with Docker); when the registry cannot serve it either, the mirror's refusal is
/// what is reported, since that is what to fix.
#[tokio::test]
async fn a_mirror_refusing_the_login_falls_through_to_the_registry() {
    require_host();
    let mirror = Registry::start(Some(("alice", "wonderland")));
    mirror.push_busybox("tools/busybox", "v1").await;
    let upstream = Registry::start(None);
    upstream.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let (mirror_host, upstream_host) = (mirror.host.clone(), upstream.host.clone());
    let rt = runtime(30, data.path(), |c| {
        c.mirrors
            .insert(upstream_host.clone(), vec![format!("http://{mirror_host}")]);
    });
    let reference = format!("{upstream_host}/tools/busybox:v1");
    let (_, logs) = run_to_end(&rt, &spec(&reference, &["echo", "from upstream"])).await;
    assert_eq!(logs, "from upstream\n");

    // The registry gone too: the mirror's refusal names the mirror.
    drop(upstream);
    let data2 = tempfile::tempdir().unwrap();
    let rt = runtime(30, data2.path(), |c| {
        c.mirrors
            .insert(upstream_host.clone(), vec![format!("http://{mirror_host}")]);
    });
    let err = rt
        .images()
        .pull(&ImageRef::parse(&reference).unwrap(), &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&mirror_host), "{err}");
    assert!(
        matches!(
            err,
            nimbus_runtime::registry::RegistryError::AuthFailed { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_download_it_once() {
    require_host();
    let reg = Registry::start(None);
    reg.push_busybox("tools/busybox", "v1").await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(6, data.path(), |_| {});
    let r = ImageRef::parse(&format!("{}/tools/busybox:v1", reg.host)).unwrap();
    let downloads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let rt = rt.clone();
        let r = r.clone();
        let d = downloads.clone();
        tasks.push(tokio::spawn(async move {
            rt.images()
                .pull(&r, &move |e| {
                    if matches!(e, ProgressEvent::Pulling { .. }) {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .await
                .unwrap()
                .record
                .manifest_digest
        }));
    }
    let mut digests = Vec::new();
    for t in tasks {
        digests.push(t.await.unwrap());
    }
    digests.dedup();
    assert_eq!(digests.len(), 1);
    let first_pull_events = downloads.load(Ordering::Relaxed);
    // Only the first pull transfers anything; a second round reports no transfer at all.
    let again = Arc::new(AtomicU64::new(0));
    let a2 = again.clone();
    rt.images()
        .pull(&r, &move |e| {
            if matches!(e, ProgressEvent::Pulling { .. }) {
                a2.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await
        .unwrap();
    assert!(first_pull_events > 0);
    assert_eq!(again.load(Ordering::Relaxed), 0);
    let blobs = std::fs::read_dir(rt.images().blob_path("sha256:0").parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(
        blobs, 3,
        "manifest, config and one layer, each stored once (no temp files left)"
    );
}

#[tokio::test]
async fn a_moved_tag_is_resolved_again_by_pull_latest_and_only_by_it() {
    require_host();
    let reg = Registry::start(None);
    let first = |n: u8| {
        let mut layer = tar::Builder::new(Vec::new());
        tar_file(&mut layer, "version", 0o644, format!("{n}\n").as_bytes());
        layer.into_inner().unwrap()
    };
    let (_, one) = reg
        .push_image("p/moving", "latest", &[first(1)], busybox_config(), "amd64")
        .await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(8, data.path(), |_| {});
    let r = ImageRef::parse(&format!("{}/p/moving:latest", reg.host)).unwrap();
    let got = |img: &nimbus_runtime::images::Image| img.record.manifest_digest.clone();
    assert_eq!(got(&rt.images().pull(&r, &|_| {}).await.unwrap()), one);
    let (_, two) = reg
        .push_image("p/moving", "latest", &[first(2)], busybox_config(), "amd64")
        .await;
    assert_ne!(one, two);
    // A launch takes what the store resolved; pulling again asks the registry.
    assert_eq!(got(&rt.images().pull(&r, &|_| {}).await.unwrap()), one);
    assert_eq!(
        got(&rt.images().pull_latest(&r, &|_| {}).await.unwrap()),
        two
    );
    assert_eq!(got(&rt.images().pull(&r, &|_| {}).await.unwrap()), two);
    // A digest names one image for good: no registry needed once it is stored.
    let pinned = ImageRef::parse(&format!("{}/p/moving@{one}", reg.host)).unwrap();
    rt.images().pull(&pinned, &|_| {}).await.unwrap();
    drop(reg);
    assert_eq!(
        got(&rt.images().pull_latest(&pinned, &|_| {}).await.unwrap()),
        one
    );
}

#[tokio::test]
async fn prune_frees_what_no_image_names_and_no_sandbox_uses() {
    require_host();
    let reg = Registry::start(None);
    let extra = |text: &str| {
        let mut layer = tar::Builder::new(Vec::new());
        tar_file(&mut layer, "extra", 0o644, text.as_bytes());
        layer.into_inner().unwrap()
    };
    for (repo, text) in [("p/running", "a"), ("p/unused", "b")] {
        reg.push_image(
            repo,
            "v1",
            &[busybox_layer(), extra(text)],
            busybox_config(),
            "amd64",
        )
        .await;
    }
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(9, data.path(), |_| {});
    let running = format!("{}/p/running:v1", reg.host);
    let unused = ImageRef::parse(&format!("{}/p/unused:v1", reg.host)).unwrap();
    rt.images().pull(&unused, &|_| {}).await.unwrap();
    let id = new_id();
    rt.launch(&id, "demo", &spec(&running, &["sleep", "60"]), |_| {})
        .await
        .unwrap();
    let layers_dir = data.path().join("runtime/images/layers");
    let layer_count = || {
        std::fs::read_dir(&layers_dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().len() == 64)
            .count()
    };
    assert_eq!(layer_count(), 3, "busybox, and each image's own layer");
    // Each image's own layer is this test's alone; busybox's may be in use by other tests'
    // sandboxes on this host, which a prune keeps too.
    let own_layer = |r: &str| {
        let key = ImageRef::parse(r).unwrap().to_string();
        let digest = rt.images().lookup(&key).unwrap().unwrap().record.layers[1].clone();
        layers_dir.join(digest.trim_start_matches("sha256:"))
    };
    let (running_own, unused_own) = (own_layer(&running), own_layer(&unused.to_string()));
    // The sandbox says which layers its root uses (mounts do not always show their names: a
    // one-layer image's layer is mapped itself).
    let recorded =
        std::fs::read_to_string(data.path().join(format!("runtime/sandboxes/{id}/layers")))
            .unwrap();
    let own_name = running_own
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(recorded.lines().any(|l| l == own_name), "{recorded}");
    assert_eq!(recorded.lines().count(), 2, "{recorded}");
    // Nothing to free while both images are recorded.
    assert_eq!(rt.prune_images().unwrap().layers, 0);
    for r in [running.as_str(), &unused.to_string()] {
        let key = ImageRef::parse(r).unwrap().to_string();
        assert!(rt.images().remove(&key).unwrap().is_some());
    }
    // The running sandbox's root holds busybox and its own layer: only the other one goes.
    let pruned = rt.prune_images().unwrap();
    assert_eq!(pruned.layers, 1, "{pruned:?}");
    assert!(pruned.blobs >= 2, "{pruned:?}");
    assert_eq!(layer_count(), 2);
    assert!(!unused_own.exists() && running_own.exists());
    assert!(all_running(&rt, &id), "the sandbox runs on");
    delete_leaving_nothing(&rt, &id).await;
    assert!(rt.prune_images().unwrap().layers >= 1);
    assert!(
        !running_own.exists(),
        "the deleted sandbox's layer was kept"
    );
    // Pulled again from scratch when next needed.
    rt.images().pull(&unused, &|_| {}).await.unwrap();
}

fn all_running(rt: &nimbus_runtime::Runtime, id: &nimbus_core::names::SandboxId) -> bool {
    matches!(rt.observe(id), nimbus_runtime::Observed::Running { .. })
}
