//! Store tests against real SQLite files.

use chrono::Utc;
use nimbus_core::lifecycle::{DesiredRunState, ServiceState};
use nimbus_core::names::Name;
use nimbus_core::resource::{Health, Meta, Readiness, ServiceRecord, ServiceStatus};
use nimbus_core::spec::{BuiltInProvider, ServiceBackend};
use nimbus_core::ErrorCode;

use crate::test_support::{audit, store};

fn service(name: &str) -> ServiceRecord {
    let now = Utc::now();
    ServiceRecord {
        name: Name::parse("name", name).unwrap(),
        uid: "u".into(),
        meta: Meta::new(Name::parse("t", "demo").unwrap(), Default::default(), now),
        backend: ServiceBackend::BuiltIn {
            provider: BuiltInProvider::Browser,
        },
        status: ServiceStatus {
            lifecycle_state: ServiceState::Declared,
            readiness: Readiness::NotReady,
            health: Health::Unknown,
            observed_generation: 1,
            desired_state: DesiredRunState::Stopped,
            conditions: vec![],
        },
    }
}

/// Audit events recorded for the demo tenant.
async fn audit_count(store: &crate::Store) -> usize {
    store
        .list_audit("demo", None, 1000)
        .await
        .unwrap()
        .items
        .len()
}

fn demo() -> Name {
    Name::parse("t", "demo").unwrap()
}

#[tokio::test]
async fn concurrent_updates_with_the_same_generation_have_exactly_one_winner() {
    let (store, _dir) = store().await;
    store
        .create_service(&mut service("worker"), &audit("c"))
        .await
        .unwrap();
    let name = Name::parse("n", "worker").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, name) = (store.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            store
                .update_service(
                    &demo(),
                    &name,
                    Some(1),
                    |r| {
                        r.meta.generation += 1;
                        Ok(())
                    },
                    Some(&audit("u")),
                )
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => assert_eq!(e.code, ErrorCode::PreconditionFailed),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(
        store
            .get_service(&demo(), &name)
            .await
            .unwrap()
            .unwrap()
            .meta
            .generation,
        2
    );
}

#[tokio::test]
async fn every_write_bumps_the_resource_version_and_a_change_of_nothing_writes_nothing() {
    let (store, _dir) = store().await;
    let mut s = service("a");
    store.create_service(&mut s, &audit("c")).await.unwrap();
    let first = s.meta.resource_version;
    let audits = audit_count(&store).await;
    let unchanged = store
        .update_service(&demo(), &s.name, None, |_| Ok(()), Some(&audit("u")))
        .await
        .unwrap();
    assert_eq!(unchanged.meta.resource_version, first);
    assert_eq!(
        audit_count(&store).await,
        audits,
        "a change of nothing is not audited"
    );
    let updated = store
        .update_service(
            &demo(),
            &s.name,
            None,
            |r| {
                r.meta.labels.insert("k".into(), "v".into());
                Ok(())
            },
            None,
        )
        .await
        .unwrap();
    assert!(updated.meta.resource_version > first);
    let read = store.get_service(&demo(), &s.name).await.unwrap().unwrap();
    assert_eq!(read.meta.resource_version, updated.meta.resource_version);
}

#[tokio::test]
async fn listing_pages_through_every_item_once_in_order() {
    let (store, _dir) = store().await;
    for i in 0..7 {
        store
            .create_service(&mut service(&format!("s{i}")), &audit("c"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_services(&demo(), after.as_deref(), 3)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|s| s.name.to_string()));
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("s{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_failed_guard_writes_nothing_and_no_audit() {
    let (store, _dir) = store().await;
    store
        .create_service(&mut service("a"), &audit("c"))
        .await
        .unwrap();
    let before = audit_count(&store).await;
    let name = Name::parse("n", "a").unwrap();
    let err = store
        .update_service(
            &demo(),
            &name,
            Some(1),
            |_| Err(nimbus_core::Error::invalid_argument("x", "no")),
            Some(&audit("u")),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert_eq!(audit_count(&store).await, before);
}

#[tokio::test]
async fn duplicate_names_are_already_exists() {
    let (store, _dir) = store().await;
    store
        .create_service(&mut service("a"), &audit("c"))
        .await
        .unwrap();
    let err = store
        .create_service(&mut service("a"), &audit("c"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists);
}

#[tokio::test]
async fn opening_a_session_on_a_service_that_changed_since_it_was_read_is_a_conflict() {
    use nimbus_core::lifecycle::SessionState;
    use nimbus_core::names::SessionId;
    use nimbus_core::resource::{
        SessionRecord, SessionSpec, SessionStatus, SessionTarget, TargetSnapshot,
    };
    let (store, _dir) = store().await;
    let mut s = service("w");
    store.create_service(&mut s, &audit("c")).await.unwrap();
    // The opener read generation 1; the definition moves to generation 2 before the insert.
    store
        .update_service(
            &demo(),
            &s.name,
            Some(1),
            |r| {
                r.meta.generation += 1;
                Ok(())
            },
            None,
        )
        .await
        .unwrap();
    let now = Utc::now();
    let mut session = SessionRecord {
        id: SessionId::generate(),
        meta: Meta::new(demo(), Default::default(), now),
        created_by: "cred_x".into(),
        spec: SessionSpec {
            target: SessionTarget {
                service: None,
                sandbox: None,
            },
            channels: vec![],
            requested_ttl_ms: None,
            ttl_ms: 1000,
            ttl_clamped: false,
            expires_at: now,
            target_snapshot: TargetSnapshot {
                kind: "service".into(),
                name: Some("w".into()),
                id: None,
                generation: 1,
                backend: "builtIn".into(),
            },
        },
        status: SessionStatus {
            lifecycle_state: SessionState::Open,
            close_reason: None,
            ended_at: None,
        },
    };
    let guard = crate::TargetGuard::Service {
        name: s.name.clone(),
        generation: 1,
    };
    let err = store
        .open_session(&mut session, &guard, 100, &audit("o"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
    assert!(
        store
            .get_session(&demo(), session.id.as_str())
            .await
            .unwrap()
            .is_none(),
        "nothing half-written"
    );
}

fn sandbox_in(tenant: &str) -> nimbus_core::resource::SandboxRecord {
    use nimbus_core::lifecycle::SandboxState;
    use nimbus_core::resource::{SandboxRecord, SandboxStatus};
    let now = Utc::now();
    let spec = serde_json::from_value(serde_json::json!({
        "owner": { "kind": "standalone", "displayName": "t" },
        "backend": "container",
        "root": { "kind": "rootfs", "path": "/srv/root" },
        "process": { "argv": ["true"] }
    }))
    .unwrap();
    SandboxRecord {
        id: nimbus_core::names::SandboxId::generate(),
        profile: nimbus_core::spec::Profile::Worker,
        meta: Meta::new(Name::parse("t", tenant).unwrap(), Default::default(), now),
        spec,
        status: SandboxStatus {
            lifecycle_state: SandboxState::Pending,
            readiness: Readiness::NotReady,
            observed_generation: 1,
            conditions: vec![],
            endpoints: vec![],
            exit_code: None,
        },
    }
}

#[tokio::test]
async fn a_sandbox_create_refused_for_its_tenant_or_quota_writes_nothing() {
    let (store, _dir) = store().await;
    let mut first = sandbox_in("demo");
    store
        .create_sandbox(&mut first, 1, &audit("sandboxes.create"))
        .await
        .unwrap();
    let version = first.meta.resource_version;
    assert!(version > 0);
    let audited = audit_count(&store).await;

    let e = store
        .create_sandbox(&mut sandbox_in("nosuch"), 5, &audit("sandboxes.create"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    assert!(e.message.contains("nosuch"), "{}", e.message);
    let e = store
        .create_sandbox(&mut sandbox_in("demo"), 1, &audit("sandboxes.create"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExhausted, "{e:?}");

    // Neither refusal left a record, an audit event or a used resource version.
    let page = store
        .list_sandboxes(&demo(), &Default::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(audit_count(&store).await, audited);
    let mut next = service("after");
    store.create_service(&mut next, &audit("c")).await.unwrap();
    assert_eq!(next.meta.resource_version, version + 1);
}

fn open_session_on(
    target: nimbus_core::resource::SessionTarget,
) -> nimbus_core::resource::SessionRecord {
    use nimbus_core::lifecycle::SessionState;
    use nimbus_core::names::SessionId;
    use nimbus_core::resource::{SessionRecord, SessionSpec, SessionStatus, TargetSnapshot};
    let now = Utc::now();
    let snapshot = TargetSnapshot {
        kind: if target.service.is_some() {
            "service"
        } else {
            "sandbox"
        }
        .into(),
        name: target.service.as_ref().map(|s| s.name.to_string()),
        id: target.sandbox.as_ref().map(|s| s.id.to_string()),
        generation: 1,
        backend: "builtIn".into(),
    };
    SessionRecord {
        id: SessionId::generate(),
        meta: Meta::new(demo(), Default::default(), now),
        created_by: "cred_x".into(),
        spec: SessionSpec {
            target,
            channels: vec![],
            requested_ttl_ms: None,
            ttl_ms: 60_000,
            ttl_clamped: false,
            expires_at: now + chrono::Duration::minutes(1),
            target_snapshot: snapshot,
        },
        status: SessionStatus {
            lifecycle_state: SessionState::Open,
            close_reason: None,
            ended_at: None,
        },
    }
}

#[tokio::test]
async fn deleting_a_target_closes_its_open_sessions_in_the_same_write() {
    use nimbus_core::lifecycle::{SandboxState, SessionState};
    use nimbus_core::resource::{SandboxTarget, ServiceTarget, SessionTarget};
    let (store, _dir) = store().await;
    let mut kept = service("kept");
    let mut gone = service("gone");
    store.create_service(&mut kept, &audit("c")).await.unwrap();
    store.create_service(&mut gone, &audit("c")).await.unwrap();
    let mut sandbox = sandbox_in("demo");
    sandbox.status.lifecycle_state = SandboxState::Ready;
    store
        .create_sandbox(&mut sandbox, 10, &audit("c"))
        .await
        .unwrap();

    let on_service = |s: &ServiceRecord| SessionTarget {
        service: Some(ServiceTarget {
            name: s.name.clone(),
        }),
        sandbox: None,
    };
    let mut open = Vec::new();
    for (target, guard) in [
        (
            on_service(&kept),
            crate::TargetGuard::Service {
                name: kept.name.clone(),
                generation: 1,
            },
        ),
        (
            on_service(&gone),
            crate::TargetGuard::Service {
                name: gone.name.clone(),
                generation: 1,
            },
        ),
        (
            SessionTarget {
                service: None,
                sandbox: Some(SandboxTarget {
                    id: sandbox.id.clone(),
                }),
            },
            crate::TargetGuard::Sandbox {
                id: sandbox.id.to_string(),
            },
        ),
    ] {
        let mut session = open_session_on(target);
        store
            .open_session(&mut session, &guard, 100, &audit("sessions.open"))
            .await
            .unwrap();
        open.push(session.id.to_string());
    }

    let audited = audit_count(&store).await;
    store
        .delete_service(
            &demo(),
            &gone.name,
            1,
            |_| Ok(()),
            &audit("services.delete"),
        )
        .await
        .unwrap();
    store
        .delete_sandbox(
            &demo(),
            sandbox.id.as_str(),
            |_| Ok(()),
            &audit("sandboxes.delete"),
        )
        .await
        .unwrap();

    let state = |id: String| {
        let store = store.clone();
        async move { store.get_session(&demo(), &id).await.unwrap().unwrap() }
    };
    assert_eq!(
        state(open[0].clone()).await.status.lifecycle_state,
        SessionState::Open,
        "a session on another service stays open"
    );
    let closed = state(open[1].clone()).await;
    assert_eq!(closed.status.lifecycle_state, SessionState::Closed);
    assert_eq!(
        closed.status.close_reason.as_deref(),
        Some("the service gone was deleted")
    );
    assert!(closed.status.ended_at.is_some());
    let closed = state(open[2].clone()).await;
    assert_eq!(closed.status.lifecycle_state, SessionState::Closed);
    assert_eq!(
        closed.status.close_reason,
        Some(format!("the sandbox {} was deleted", sandbox.id))
    );
    // Two deletions and two closures, each audited.
    assert_eq!(audit_count(&store).await, audited + 4);
}

#[tokio::test]
async fn every_audit_field_is_clipped_however_long_the_callers_input() {
    // An allowed files-channel call put its whole path (60 000 bytes) in its event's reason;
    // every event is written and synced, so each field is clipped.
    let (store, _dir) = store().await;
    store.ensure_tenant(&demo()).await.unwrap();
    let mut event = audit("sessions.attach");
    event.reason = format!("files of sandbox/x: GET /tmp/{}", "a".repeat(60_000));
    store.record_audit(&event).await.unwrap();
    let events = store.list_audit("demo", None, 10).await.unwrap().items;
    let stored = events
        .iter()
        .find(|e| e.action == "sessions.attach")
        .expect("the event");
    assert!(stored.reason.len() < 4200, "{} bytes", stored.reason.len());
    assert!(stored
        .reason
        .starts_with("files of sandbox/x: GET /tmp/aaa"));
    assert!(
        stored.reason.ends_with("(60029 bytes in all)"),
        "{}",
        &stored.reason[4000..]
    );
}

#[tokio::test]
async fn audit_events_list_in_time_order_even_when_made_out_of_order() {
    // A restart's event is made when the request arrives but appended after the stop the
    // restart causes, which the service manager records meanwhile.
    let (store, _dir) = store().await;
    store.ensure_tenant(&demo()).await.unwrap();
    let mut made_first = audit("services.restart");
    let made_second = audit("sandboxes.stop");
    made_first.time = made_second.time - chrono::Duration::milliseconds(5);
    store.record_audit(&made_second).await.unwrap();
    store.record_audit(&made_first).await.unwrap();
    let events = store.list_audit("demo", None, 1000).await.unwrap().items;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    let at = |action: &str| actions.iter().position(|a| *a == action).unwrap();
    assert!(at("sandboxes.stop") < at("services.restart"), "{actions:?}");
    assert!(
        events.windows(2).all(|w| w[0].time <= w[1].time),
        "listed out of time order: {:?}",
        events
            .iter()
            .map(|e| (&e.action, e.time))
            .collect::<Vec<_>>()
    );
}

/// A tmpfs of a few MiB mounted on a fresh directory (needs root, as CI has), lazily unmounted
/// when dropped: a file system that really fills up, where SQLite's commits fail with
/// `SQLITE_FULL`.
struct SmallFileSystem {
    dir: tempfile::TempDir,
}

impl SmallFileSystem {
    fn mount(size: &str) -> SmallFileSystem {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        SmallFileSystem { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file until the file system has no space left.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("fill");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn after_the_disk_fills_up_every_acknowledged_write_is_durable() {
    // Once a commit failed for want of space, the writer connection must not be left inside a
    // transaction: later writes would then be acknowledged, visible to nobody else, and lost.
    let fs = SmallFileSystem::mount("4m");
    let db = fs.path().join("nimbus.db");
    let store = crate::Store::open(&db).await.unwrap();
    store.ensure_tenant(&demo()).await.unwrap();
    let fill = fs.fill();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..6 {
        let name = Name::parse("t", &format!("full{i}")).unwrap();
        match store.create_tenant(&name, &audit("tenants.create")).await {
            Ok(_) => acknowledged.push(name),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Internal, "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no write failed on a full file system");
    std::fs::remove_file(fill).unwrap();
    for i in 0..3 {
        let name = Name::parse("t", &format!("after{i}")).unwrap();
        store
            .create_tenant(&name, &audit("tenants.create"))
            .await
            .expect("writes succeed once there is space again");
        acknowledged.push(name);
    }
    for name in &acknowledged {
        assert!(
            store.get_tenant(name).await.unwrap().is_some(),
            "tenant {name} was acknowledged but readers do not see it"
        );
    }
    store.close().await;
    let store = crate::Store::open(&db).await.unwrap();
    for name in &acknowledged {
        assert!(
            store.get_tenant(name).await.unwrap().is_some(),
            "tenant {name} was acknowledged but lost"
        );
    }
    store.close().await;
}
