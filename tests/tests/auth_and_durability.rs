//! Credentials, tenant isolation on every route, audit, the credential file, OpenAPI,
//! quotas, and durability across `kill -9`.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nimbus_e2e::{
    assert_error, assert_error_says, batch_sandbox, json, worker_service, Auth, Server,
};

const T: &str = "/v1/tenants/demo";
/// These tests are about the control plane; launching sandboxes is tested with the runtime.
const NO_DRIVER: &str = "[server]\nsandbox_driver = \"none\"\n";

async fn credential(s: &Server, tenant: &str, kind: &str, grants: &[&str]) -> (String, String) {
    let (st, c) = s
        .call(
            "POST",
            &format!("/v1/tenants/{tenant}/credentials"),
            Some(json!({"kind": kind, "grants": grants})),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    (
        c["metadata"]["id"].as_str().unwrap().to_string(),
        c["secret"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn the_credential_file_is_written_0600_with_endpoint_token_and_tenant() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let path = s.credential_file();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["endpoint"], s.base_url());
    assert_eq!(v["tenantId"], "demo");
    let (st, _) = s.call("GET", &format!("{T}/services"), None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn credentials_authenticate_by_kind_and_revocation_is_immediate() {
    let s = Server::start_with_config(NO_DRIVER).await;
    assert_error(
        &s.call_as(Auth::None, "GET", &format!("{T}/services"), None)
            .await,
        401,
        "auth.unauthenticated",
    );
    assert_error(
        &s.call_as(
            Auth::Bearer("nmb_nope"),
            "GET",
            &format!("{T}/services"),
            None,
        )
        .await,
        401,
        "auth.unauthenticated",
    );
    let (id, key) = credential(&s, "demo", "apiKey", &["tenant:read"]).await;
    assert_eq!(
        s.call_as(Auth::ApiKey(&key), "GET", &format!("{T}/services"), None)
            .await
            .0,
        200
    );
    // An API key is not a bearer token.
    assert_error(
        &s.call_as(Auth::Bearer(&key), "GET", &format!("{T}/services"), None)
            .await,
        401,
        "auth.unauthenticated",
    );
    // Reading is not writing.
    assert_error(
        &s.call_as(
            Auth::ApiKey(&key),
            "POST",
            &format!("{T}/services"),
            Some(worker_service("w")),
        )
        .await,
        403,
        "auth.permission_denied",
    );
    // Secrets are never listed.
    let (_, list) = s.call("GET", &format!("{T}/credentials"), None).await;
    assert!(!list.to_string().contains(&key));
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c.get("secret").is_none()));
    let (st, _) = s
        .call("DELETE", &format!("{T}/credentials/{id}"), None)
        .await;
    assert_eq!(st, 200);
    assert_error(
        &s.call_as(Auth::ApiKey(&key), "GET", &format!("{T}/services"), None)
            .await,
        401,
        "auth.unauthenticated",
    );
    // Only server admins grant server:admin.
    let (_, tadmin) = credential(&s, "demo", "token", &["tenant:admin"]).await;
    let r = s
        .call_as(
            Auth::Bearer(&tadmin),
            "POST",
            &format!("{T}/credentials"),
            Some(json!({"kind": "token", "grants": ["server:admin"]})),
        )
        .await;
    assert_error(&r, 403, "auth.permission_denied");
    assert_error(
        &s.call(
            "POST",
            &format!("{T}/credentials"),
            Some(json!({"kind": "token", "grants": ["root"]})),
        )
        .await,
        400,
        "request.invalid_argument",
    );
}

#[tokio::test]
async fn exact_grants_decide_session_opens() {
    let s = Server::start_with_config(NO_DRIVER).await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker2")),
    )
    .await;
    let (_, tok) = credential(&s, "demo", "token", &["service:worker:session"]).await;
    let open = |name: &str| json!({"target": {"service": {"name": name}}, "channels": ["stdio"]});
    let (st, ses) = s
        .call_as(
            Auth::Bearer(&tok),
            "POST",
            &format!("{T}/sessions"),
            Some(open("worker")),
        )
        .await;
    assert_eq!(st, 201, "{ses}");
    assert_error(
        &s.call_as(
            Auth::Bearer(&tok),
            "POST",
            &format!("{T}/sessions"),
            Some(open("worker2")),
        )
        .await,
        403,
        "auth.permission_denied",
    );
    // The refusal is audited under what the session was to reach.
    let (_, audit) = s.call("GET", &format!("{T}/audit?limit=1000"), None).await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "sessions.open"
                && e["decision"] == "deny"
                && e["target"] == "service/worker2"),
        "{audit}"
    );
    // Denied before existence: an unknown name is also 403, not 404.
    assert_error(
        &s.call_as(
            Auth::Bearer(&tok),
            "POST",
            &format!("{T}/sessions"),
            Some(open("ghost")),
        )
        .await,
        403,
        "auth.permission_denied",
    );
    // Session ids cannot be probed: for a caller who could not read it, a missing id is the
    // same 403 as another's session; for one who could (the admin), 404.
    let ghost = "ses_00000000000000000000000000";
    for (method, path, body) in [
        ("GET", format!("{T}/sessions/{ghost}"), None),
        (
            "POST",
            format!("{T}/sessions/{ghost}/close"),
            Some(json!({"reason": "probe"})),
        ),
    ] {
        assert_error(
            &s.call_as(Auth::Bearer(&tok), method, &path, body.clone())
                .await,
            403,
            "auth.permission_denied",
        );
        assert_error(
            &s.call(method, &path, body).await,
            404,
            "resource.not_found",
        );
    }
    // The opener can read and close its own session.
    let id = ses["metadata"]["id"].as_str().unwrap();
    assert_eq!(
        s.call_as(
            Auth::Bearer(&tok),
            "GET",
            &format!("{T}/sessions/{id}"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call_as(
            Auth::Bearer(&tok),
            "POST",
            &format!("{T}/sessions/{id}/close"),
            Some(json!({"reason": "done"}))
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn workload_identity_tokens_are_verified_and_bound_to_their_tenant() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (st, sbx) = s
        .call("POST", &format!("{T}/sandboxes"), Some(batch_sandbox()))
        .await;
    assert_eq!(st, 201, "{sbx}");
    let workload = format!("sandbox:{}", sbx["metadata"]["id"].as_str().unwrap());
    let mint = |workload: &str| {
        s.cli(&[
            "credential",
            "create",
            "--kind",
            "workload-identity",
            "--workload",
            workload,
            "--grant",
            "tenant:read",
            "--ttl-seconds",
            "600",
        ])
    };
    // Only a sandbox of the tenant can be named: a free-form workload would be a principal
    // that names nothing (or poses as another, e.g. a credential id).
    for bad in ["bogus", "cred_01abc", "sandbox:sbx_nosuch"] {
        let (st, out, err) = mint(bad);
        assert!(!st.success(), "minted for {bad}: {out}");
        assert!(err.contains("--workload"), "{err}");
    }
    let (ok, token, err) = mint(&workload);
    assert!(ok.success(), "{err}");
    let token = token.trim();
    assert_eq!(
        s.call_as(Auth::Bearer(token), "GET", &format!("{T}/services"), None)
            .await
            .0,
        200
    );
    assert_error(
        &s.call_as(
            Auth::Bearer(token),
            "POST",
            &format!("{T}/services"),
            Some(worker_service("w")),
        )
        .await,
        403,
        "auth.permission_denied",
    );
    // Sent as an API key, it is refused saying how to send it.
    let misplaced = s
        .call_as(Auth::ApiKey(token), "GET", &format!("{T}/services"), None)
        .await;
    assert_error_says(
        &misplaced,
        401,
        "auth.unauthenticated",
        "send it as \"Authorization: Bearer",
    );
    let mut forged = token.to_string();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_error(
        &s.call_as(Auth::Bearer(&forged), "GET", &format!("{T}/services"), None)
            .await,
        401,
        "auth.unauthenticated",
    );
    let (_, audit) = s.call("GET", &format!("{T}/audit?limit=1000"), None).await;
    let items = audit["items"].as_array().unwrap();
    assert!(items
        .iter()
        .any(|e| e["actor"] == workload.as_str() && e["decision"] == "deny"));
    // Minting by hand leaves a trace: such tokens are not listed among the credentials.
    assert!(
        items.iter().any(|e| e["actor"] == "cli"
            && e["action"] == "credentials.create"
            && e["target"] == format!("workload/{workload}")
            && e["reason"].as_str().unwrap().contains("tenant:read")),
        "{audit}"
    );
    // A workload token lives only as long as its sandbox: deleting the sandbox revokes it.
    let (st, gone) = s
        .call(
            "DELETE",
            &format!("{T}/sandboxes/{}", sbx["metadata"]["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, 200, "{gone}");
    let refused = s
        .call_as(Auth::Bearer(token), "GET", &format!("{T}/services"), None)
        .await;
    assert_error_says(
        &refused,
        401,
        "auth.unauthenticated",
        "which no longer exists",
    );
}

#[tokio::test]
async fn a_tenant_admin_cannot_revoke_a_server_admin_credential() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (_, tenant_admin) = credential(&s, "demo", "token", &["tenant:admin"]).await;
    let (_, list) = s
        .call("GET", &format!("{T}/credentials?limit=1000"), None)
        .await;
    let server_admin = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["grants"] == json!(["server:admin"]))
        .unwrap_or_else(|| panic!("no server admin in {list}"))["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = s
        .call_as(
            Auth::Bearer(&tenant_admin),
            "DELETE",
            &format!("{T}/credentials/{server_admin}"),
            None,
        )
        .await;
    assert_error_says(
        &refused,
        403,
        "auth.permission_denied",
        "only a server admin may revoke",
    );
    // The server admin still works, and the attempt is in the audit log.
    let (st, audit) = s.call("GET", &format!("{T}/audit?limit=1000"), None).await;
    assert_eq!(st, 200, "the server admin was locked out: {audit}");
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "credentials.revoke"
                && e["decision"] == "deny"
                && e["target"] == format!("credential/{server_admin}")),
        "{audit}"
    );
}

#[tokio::test]
async fn denials_are_clipped_and_recorded_only_in_tenants_that_exist() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let long = "x".repeat(20_000);
    // Unauthenticated: a 20 KB path is kept to a clipped line in an existing tenant, and
    // nowhere for a tenant that does not exist (yet).
    for tenant in ["demo", "futureco"] {
        let (st, _) = s
            .call_as(
                Auth::None,
                "GET",
                &format!("/v1/tenants/{tenant}/services/{long}"),
                None,
            )
            .await;
        assert_eq!(st, 401);
    }
    let (_, audit) = s.call("GET", &format!("{T}/audit?limit=1000"), None).await;
    let anonymous: Vec<_> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "anonymous")
        .collect();
    assert_eq!(anonymous.len(), 1, "{audit}");
    for field in ["action", "target"] {
        let text = anonymous[0][field].as_str().unwrap();
        assert!(text.len() < 600, "{field} is {} bytes", text.len());
        assert!(text.ends_with("bytes in all)"), "{text}");
    }
    // A tenant admin of demo trying to create a tenant: the denial names a tenant that does not
    // exist, so it is recorded in demo, the credential's own tenant.
    let (_, tenant_admin) = credential(&s, "demo", "token", &["tenant:admin"]).await;
    let refused = s
        .call_as(
            Auth::Bearer(&tenant_admin),
            "POST",
            "/v1/tenants",
            Some(json!({"name": "evil"})),
        )
        .await;
    assert_error_says(
        &refused,
        403,
        "auth.permission_denied",
        "only a server admin may create tenants",
    );
    let (_, audit) = s.call("GET", &format!("{T}/audit?limit=1000"), None).await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "tenants.create" && e["decision"] == "deny"),
        "{audit}"
    );
    // The tenant created later starts with an audit log of its own, not the earlier denials.
    let (st, _) = s
        .call("POST", "/v1/tenants", Some(json!({"name": "futureco"})))
        .await;
    assert_eq!(st, 201);
    let (_, fresh) = s
        .call("GET", "/v1/tenants/futureco/audit?limit=1000", None)
        .await;
    assert!(
        fresh["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] != "anonymous"),
        "{fresh}"
    );
}

#[tokio::test]
async fn a_credential_of_another_tenant_is_refused_on_every_route_before_existence() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (st, _) = s
        .call("POST", "/v1/tenants", Some(json!({"name": "other"})))
        .await;
    assert_eq!(st, 201);
    assert_error(
        &s.call("POST", "/v1/tenants", Some(json!({"name": "other"})))
            .await,
        409,
        "resource.already_exists",
    );
    let (_, other) = credential(&s, "other", "token", &["tenant:admin"]).await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let (_, sbx) = s
        .call("POST", &format!("{T}/sandboxes"), Some(batch_sandbox()))
        .await;
    let sbx = sbx["metadata"]["id"].as_str().unwrap().to_string();
    let (_, ses) = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "worker"}}, "channels": ["stdio"]})),
        )
        .await;
    let ses = ses["metadata"]["id"].as_str().unwrap().to_string();
    let (_, creds) = s.call("GET", &format!("{T}/credentials"), None).await;
    let cred = creds["items"][0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ghost_sbx = "sbx_00000000000000000000000000";
    let ghost_ses = "ses_00000000000000000000000000";
    let mut checked = 0;
    for route in nimbus_api::ROUTES.iter().filter(|r| r.authenticated) {
        for (existing, name, id) in [(true, "worker", ""), (false, "ghost", "")] {
            let path = route
                .path
                .replace("{tenantId}", "demo")
                .replace("{name}", name)
                .replace(
                    "{id}",
                    if id.is_empty() {
                        match (
                            route.path.contains("sandboxes"),
                            route.path.contains("sessions"),
                            existing,
                        ) {
                            (true, _, true) => &sbx,
                            (true, _, false) => ghost_sbx,
                            (_, true, true) => &ses,
                            (_, true, false) => ghost_ses,
                            (_, _, true) => &cred,
                            _ => "cred_00000000000000000000000000",
                        }
                    } else {
                        id
                    },
                );
            let body = match route.operation_id {
                "tenants.create" => Some(json!({"name": "third"})),
                "credentials.create" => Some(json!({"kind": "token", "grants": []})),
                "services.create" => Some(worker_service("x")),
                "services.update" => Some(json!({"labels": {}, "ifMatchGeneration": 1})),
                "sandboxes.create" => Some(batch_sandbox()),
                "sessions.open" => {
                    Some(json!({"target": {"service": {"name": name}}, "channels": ["stdio"]}))
                }
                "sessions.close" => Some(json!({"reason": "x"})),
                _ => None,
            };
            let path = if route.operation_id == "services.delete" {
                format!("{path}?ifMatchGeneration=1")
            } else {
                path
            };
            let r = s
                .call_as(Auth::Bearer(&other), route.method, &path, body)
                .await;
            assert_error(&r, 403, "auth.permission_denied");
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked}");
    // Nothing changed in demo.
    let (_, svc) = s.call("GET", &format!("{T}/services/worker"), None).await;
    assert_eq!(svc["metadata"]["generation"], 1);
    assert_eq!(
        s.call("GET", &format!("{T}/sandboxes/{sbx}"), None).await.0,
        200
    );
    // Denials are audited in the tenant that was targeted.
    let (_, audit) = s.call("GET", &format!("{T}/audit?limit=1000"), None).await;
    let denials = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["decision"] == "deny")
        .count();
    assert!(denials >= 40, "{denials}");
}

#[tokio::test]
async fn writes_session_lookups_and_denials_are_audited() {
    let s = Server::start_with_config(NO_DRIVER).await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let (_, ses) = s
        .call(
            "POST",
            &format!("{T}/sessions"),
            Some(json!({"target": {"service": {"name": "worker"}}, "channels": ["stdio"]})),
        )
        .await;
    let id = ses["metadata"]["id"].as_str().unwrap();
    s.call("GET", &format!("{T}/sessions/{id}"), None).await;
    s.call(
        "POST",
        &format!("{T}/sessions/{id}/close"),
        Some(json!({"reason": "done"})),
    )
    .await;
    s.call_as(Auth::None, "GET", &format!("{T}/services"), None)
        .await;
    let (st, audit) = s.call("GET", &format!("{T}/audit?limit=1000"), None).await;
    assert_eq!(st, 200);
    let items = audit["items"].as_array().unwrap();
    for action in [
        "services.create",
        "sessions.open",
        "sessions.get",
        "sessions.close",
    ] {
        let e = items
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {audit}"));
        assert_eq!(e["decision"], "allow");
        assert!(e["actor"].as_str().unwrap().starts_with("cred_"));
        assert!(e["time"].as_str().is_some() && e["target"].as_str().is_some());
    }
    assert!(items
        .iter()
        .any(|e| e["actor"] == "anonymous" && e["decision"] == "deny"));
    // Paging the audit log.
    let (_, page) = s.call("GET", &format!("{T}/audit?limit=2"), None).await;
    let tok = page["metadata"]["nextPageToken"].as_str().unwrap();
    let (_, page2) = s
        .call("GET", &format!("{T}/audit?limit=2&pageToken={tok}"), None)
        .await;
    assert_ne!(page["items"][0], page2["items"][0]);
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_in_the_middle_of_a_burst() {
    let mut s = Server::start_with_config(NO_DRIVER).await;
    let base = s.base_url();
    let token = s.token.clone();
    let client = s.client.clone();
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acks_seen = acks.clone();
    let burst = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..400 {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            let acks = acks.clone();
            tasks.spawn(async move {
                let name = format!("svc-{i}");
                let r = client
                    .post(format!("{base}/v1/tenants/demo/services"))
                    .bearer_auth(token)
                    .json(&json!({"name": name, "backend": {"kind": "builtIn", "provider": "browser"}}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Some(name)
                    }
                    _ => None,
                }
            });
            if i % 8 == 7 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(name)) = r {
                acked.push(name);
            }
        }
        acked
    });
    // Killed once some writes are acknowledged and (the burst being 400 long) more are in
    // flight; a fixed delay was too short on a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acks_seen.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "no write acknowledged in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.kill9();
    let acked = burst.await.unwrap();
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the kill"
    );
    assert!(
        acked.len() < 400,
        "every write finished before the kill; the test proves nothing"
    );
    s.restart().await;
    let mut stored = std::collections::HashSet::new();
    let mut token = String::new();
    loop {
        let q = if token.is_empty() {
            "limit=1000".to_string()
        } else {
            format!("limit=1000&pageToken={token}")
        };
        let (_, page) = s.call("GET", &format!("{T}/services?{q}"), None).await;
        for i in page["items"].as_array().unwrap() {
            stored.insert(i["metadata"]["name"].as_str().unwrap().to_string());
        }
        token = page["metadata"]["nextPageToken"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if token.is_empty() {
            break;
        }
    }
    let lost: Vec<_> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost after kill -9: {lost:?}",
        lost.len()
    );
    eprintln!("{} acknowledged, {} stored", acked.len(), stored.len());
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_a_restart_keeps_the_credential_file_working() {
    let mut s = Server::start_with_config(NO_DRIVER).await;
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let token = s.token.clone();
    let status = s.terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", s.log());
    s.restart().await;
    assert_eq!(
        s.token, token,
        "a working credential file is kept across restarts"
    );
    assert_eq!(
        s.call("GET", &format!("{T}/services/worker"), None).await.0,
        200
    );
}

#[tokio::test]
async fn tenant_capacity_is_enforced_with_quota_exhausted() {
    let s = Server::start_with_config(
        "[server]\nsandbox_driver = \"none\"\n[limits]\nsandboxes_per_tenant = 2\nopen_sessions_per_tenant = 1\n",
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            s.call("POST", &format!("{T}/sandboxes"), Some(batch_sandbox()))
                .await
                .0,
            201
        );
    }
    let r = s
        .call("POST", &format!("{T}/sandboxes"), Some(batch_sandbox()))
        .await;
    assert_error(&r, 429, "quota.exhausted");
    assert_eq!(r.1["error"]["details"]["limit"], 2);
    s.call(
        "POST",
        &format!("{T}/services"),
        Some(worker_service("worker")),
    )
    .await;
    let open = json!({"target": {"service": {"name": "worker"}}, "channels": ["stdio"]});
    assert_eq!(
        s.call("POST", &format!("{T}/sessions"), Some(open.clone()))
            .await
            .0,
        201
    );
    assert_error(
        &s.call("POST", &format!("{T}/sessions"), Some(open)).await,
        429,
        "quota.exhausted",
    );
}

#[tokio::test]
async fn a_bad_config_file_fails_at_start_naming_the_key() {
    for (config, listen, says) in [
        (
            "[limits]\nsandboxes_per_tenant = \"many\"\n",
            "127.0.0.1:0",
            "limits.sandboxes_per_tenant",
        ),
        (
            "limits = [5, 6]\n",
            "127.0.0.1:0",
            "key `limits`: expected a table",
        ),
        (
            "[server]\n\nlisten = \"127.0.0.1:1\" 2\n",
            "127.0.0.1:0",
            "line 3",
        ),
        (
            "[runtime]\ndisk_mb = 20000000\n",
            "127.0.0.1:0",
            "runtime.disk_mb = 20000000: a sandbox's disk is 16 to 1048576 MiB",
        ),
        (
            "[server]\nmetrics_listen = \"127.0.0.1:1\"\n",
            "127.0.0.1:1",
            "server.metrics_listen = \"127.0.0.1:1\" is the API's own address",
        ),
    ] {
        let refusal = nimbus_e2e::serve_refused(config, listen);
        let err = &refusal.stderr;
        assert!(err.contains(says), "{config}: {err}");
        assert!(
            !refusal.data_dir_created,
            "{config}: the data dir was created"
        );
    }
}

#[test]
fn a_start_that_fails_late_leaves_the_credential_file_alone() {
    // The credential file may hold the token of a server that runs (the same HOME): a start
    // that then fails must not replace it. These fail after the store opens and the API's port
    // is bound, at the last steps of a start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_in_use = format!(
        "[server]\nsandbox_driver = \"none\"\nmetrics_listen = \"{}\"\n",
        taken.local_addr().unwrap()
    );
    for (config, says) in [
        (metrics_in_use.as_str(), "metrics"),
        ("[runtime]\nsubnet = \"banana\"\n", "subnet"),
    ] {
        let refusal = nimbus_e2e::serve_refused(config, "127.0.0.1:0");
        assert!(
            refusal.stderr.contains(says),
            "{config}: {}",
            refusal.stderr
        );
        assert!(
            !refusal.credential_written,
            "{config}: the credential file was written by a start that failed"
        );
    }
}

#[tokio::test]
async fn openapi_lists_every_route_and_every_listed_route_is_served() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (st, doc) = s.call_as(Auth::None, "GET", "/v1/openapi.json", None).await;
    assert_eq!(st, 200);
    assert_eq!(s.call_as(Auth::None, "GET", "/healthz", None).await.0, 200);
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let concrete = path
                .replace("{tenantId}", "demo")
                .replace("{name}", "x")
                .replace("{id}", "sbx_00000000000000000000000000");
            let r = s.call(&method.to_uppercase(), &concrete, None).await;
            assert!(
                !nimbus_api::is_routing_miss(r.0, &r.1),
                "{method} {path} ({}) is in the document but not routed: {}",
                op["operationId"],
                r.1
            );
            assert!(r.0.as_u16() < 500, "{method} {path}: {}", r.1);
        }
    }
    assert_eq!(operations, nimbus_api::ROUTES.len());
    let r = s.call("GET", "/v1/tenants/demo/nothing-here", None).await;
    assert!(nimbus_api::is_routing_miss(r.0, &r.1));
    assert_error(
        &s.call("PATCH", &format!("{T}/services"), None).await,
        405,
        "request.method_not_allowed",
    );
}

#[tokio::test]
async fn the_credential_command_refuses_unknown_tenants_and_names_its_own_flags() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (st, _, err) = s.cli(&["credential", "list", "--tenant", "nosuch"]);
    assert!(!st.success());
    assert!(err.contains("tenant nosuch does not exist"), "{err}");
    let (st, _, err) = s.cli(&[
        "credential",
        "create",
        "--grant",
        "tenant:read",
        "--ttl-seconds",
        "0",
    ]);
    assert!(!st.success());
    assert!(err.contains("--ttl-seconds"), "{err}");
    let (st, _, err) = s.cli(&["credential", "create", "--grant", "bogus"]);
    assert!(!st.success());
    assert!(err.contains("--grant"), "{err}");
    // Flags the credential would silently go without are refused, naming them.
    for (args, names) in [
        (&["credential", "create"][..], "--grant"),
        (
            &[
                "credential",
                "create",
                "--grant",
                "tenant:read",
                "--workload",
                "sandbox:sbx_x",
            ][..],
            "--workload is for --kind workload-identity",
        ),
        (
            &[
                "credential",
                "create",
                "--kind",
                "workload-identity",
                "--workload",
                "sandbox:sbx_x",
                "--grant",
                "tenant:read",
                "--description",
                "ci",
            ][..],
            "--description",
        ),
    ] {
        let (st, out, err) = s.cli(args);
        assert!(!st.success(), "{args:?}: {out}");
        assert!(err.contains(names), "{args:?}: {err}");
    }
    let (st, out, err) = s.cli(&["credential", "list"]);
    assert!(st.success(), "{err}");
    assert!(!out.trim().is_empty());
    // A tenant without credentials says so (on stderr: the list itself stays empty).
    let (st, _, err) = s.cli(&["tenant", "create", "team-empty"]);
    assert!(st.success(), "{err}");
    let (st, out, err) = s.cli(&["credential", "list", "--tenant", "team-empty"]);
    assert!(st.success(), "{err}");
    assert!(out.trim().is_empty(), "{out}");
    assert!(
        err.contains("tenant team-empty has no credentials"),
        "{err}"
    );
}

#[tokio::test]
async fn the_admin_commands_take_their_defaults_from_the_server_config() {
    let s = Server::start_with_config(NO_DRIVER).await;
    let (st, _, err) = s.cli(&["tenant", "create", "team-x"]);
    assert!(st.success(), "{err}");
    let (st, _, err) = s.cli(&[
        "credential",
        "create",
        "--tenant",
        "team-x",
        "--grant",
        "tenant:read",
        "--description",
        "for team x",
    ]);
    assert!(st.success(), "{err}");
    // No --data-dir and no --tenant: the server's config says both.
    let config = s.home().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsandbox_driver = \"none\"\ndata_dir = {:?}\ndefault_tenant = \"team-x\"\n",
            s.data_dir().display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(nimbus_e2e::nimbus_bin())
        .args(["credential", "list", "--config"])
        .arg(&config)
        .env("HOME", s.home())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("tenant:read"), "{stdout}");
    assert!(!stdout.contains("server:admin"), "listed demo's: {stdout}");
    let out = std::process::Command::new(nimbus_e2e::nimbus_bin())
        .args(["plugin", "list", "--config"])
        .arg(&config)
        .env("HOME", s.home())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("grants-policy"));
}

#[test]
fn tenant_and_credential_commands_refuse_a_data_dir_no_server_has_used() {
    // A mistyped --data-dir must not quietly become a new, empty data dir that no server reads.
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("typo");
    for args in [
        &["credential", "list"][..],
        &["credential", "create", "--grant", "tenant:read"],
        &["tenant", "create", "team-a"],
    ] {
        let out = std::process::Command::new(nimbus_e2e::nimbus_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&missing)
            .env("HOME", root.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains("holds no Nimbus database"), "{args:?}: {err}");
        assert!(err.contains("nimbus serve --data-dir"), "{args:?}: {err}");
        assert!(err.contains("your server uses, or run"), "{args:?}: {err}");
        assert!(!missing.exists(), "{args:?} created the data dir");
    }
}

#[test]
fn the_image_commands_make_a_new_data_dir_private() {
    // Unpacked layers keep their setuid files; no other local user may reach them.
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let image = |args: &[&str]| {
        std::process::Command::new(nimbus_e2e::nimbus_bin())
            .arg("image")
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env("HOME", root.path())
            .output()
            .unwrap()
    };
    // Listing reads a data dir: a mistyped one is refused, not made.
    let out = image(&["list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!data.exists(), "image list made the data dir");
    // ...and an existing one is only read: nothing is made in it.
    let elsewhere = root.path().join("someone-elses");
    std::fs::create_dir(&elsewhere).unwrap();
    let out = std::process::Command::new(nimbus_e2e::nimbus_bin())
        .args(["image", "list", "--data-dir"])
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "image list wrote there"
    );
    // A pull may come before the server's first start: it makes the data dir, private (here
    // it then fails: nothing listens on port 1).
    let out = image(&["pull", "127.0.0.1:1/nothing/here:v1"]);
    assert!(!out.status.success());
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data dir mode {mode:o}");
}

#[test]
fn image_prune_removes_nothing_through_what_another_user_controls() {
    let root = tempfile::tempdir().unwrap();
    let prune = |data: &std::path::Path| {
        let out = std::process::Command::new(nimbus_e2e::nimbus_bin())
            .args(["image", "prune", "--data-dir"])
            .arg(data)
            .output()
            .unwrap();
        assert!(!out.status.success(), "pruned {}", data.display());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A store whose layers directory is a link to somewhere else.
    let victim = root.path().join("victim");
    let precious = victim.join("a".repeat(64));
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("f"), "precious").unwrap();
    let data = root.path().join("data");
    std::fs::create_dir_all(data.join("runtime/images/blobs/sha256")).unwrap();
    std::fs::create_dir_all(data.join("runtime/images/images")).unwrap();
    std::os::unix::fs::symlink(&victim, data.join("runtime/images/layers")).unwrap();
    let err = prune(&data);
    assert!(err.contains("is not a directory (a link?)"), "{err}");
    assert!(precious.join("f").exists(), "the link was followed");
    // A data dir another user owns.
    let theirs = root.path().join("theirs");
    std::fs::create_dir_all(theirs.join("runtime/images")).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let err = prune(&theirs);
    assert!(err.contains("belongs to user 65534"), "{err}");
    // A directory that holds no image store is left as it was.
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let err = prune(&elsewhere);
    assert!(err.contains("holds no image store"), "{err}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[tokio::test]
async fn only_a_server_admin_may_root_a_sandbox_in_a_host_directory() {
    // A `rootfs` root (or a build's context) shows its creator what that host directory holds;
    // `//` was the host's whole filesystem, the server's credentials included.
    let s = Server::start_with_config(NO_DRIVER).await;
    let (_, tenant_admin) = credential(&s, "demo", "token", &["tenant:admin"]).await;
    let sandbox = |root: serde_json::Value| {
        json!({"profile": "worker", "spec": {
            "owner": {"kind": "standalone"}, "backend": "container", "root": root,
            "process": {"argv": ["/bin/sleep", "60"]}}})
    };
    let host_roots = [
        json!({"kind": "rootfs", "path": "//"}),
        json!({"kind": "rootfs", "path": "/etc"}),
        json!({"kind": "oci_image", "source": {"kind": "build", "dockerfile": "FROM scratch\nCOPY shadow /\n", "context": "/etc"}}),
    ];
    for root in &host_roots {
        let r = s
            .call_as(
                Auth::Bearer(&tenant_admin),
                "POST",
                &format!("{T}/sandboxes"),
                Some(sandbox(root.clone())),
            )
            .await;
        assert_error_says(&r, 403, "auth.permission_denied", "only a server admin");
    }
    let (_, audit) = s.call("GET", &format!("{T}/audit"), None).await;
    assert!(
        audit
            .to_string()
            .contains("names a directory on the server's host"),
        "{audit}"
    );
    // The host's root, however it is spelled, is refused even to a server admin.
    for path in ["/", "//", "/./", "/.//."] {
        let r = s
            .call(
                "POST",
                &format!("{T}/sandboxes"),
                Some(sandbox(json!({"kind": "rootfs", "path": path}))),
            )
            .await;
        assert_error_says(&r, 400, "request.invalid_argument", "the host's own root");
    }
    // ...and reached through a symlink, at the request too, for a sandbox or a service.
    let links = tempfile::tempdir().unwrap();
    let to_root = links.path().join("to-root");
    std::os::unix::fs::symlink("/", &to_root).unwrap();
    let to_root = to_root.to_str().unwrap();
    let service = json!({"name": "rooted", "backend": {"kind": "sandbox", "sandbox": {
        "owner": {"kind": "service", "serviceName": "rooted"}, "backend": "container",
        "root": {"kind": "rootfs", "path": to_root},
        "process": {"argv": ["sh"]}}}});
    for (path, body) in [
        (
            format!("{T}/sandboxes"),
            sandbox(json!({"kind": "rootfs", "path": to_root})),
        ),
        (format!("{T}/services"), service),
    ] {
        let r = s.call("POST", &path, Some(body)).await;
        assert_error_says(
            &r,
            400,
            "request.invalid_argument",
            "leads to the host's own root",
        );
    }
    // Images stay open to tenant admins.
    let r = s
        .call_as(
            Auth::Bearer(&tenant_admin),
            "POST",
            &format!("{T}/sandboxes"),
            Some(sandbox(json!({"kind": "oci_image", "source": {"kind": "reference", "reference": "127.0.0.1:5000/app:v1"}}))),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
    // A service's sandbox is launched by the server on the service's behalf: the same rule
    // holds for its definition, at create and at update.
    let service = |root: serde_json::Value| {
        json!({"name": "svc", "backend": {"kind": "sandbox", "sandbox": {
            "owner": {"kind": "service", "serviceName": "svc"}, "backend": "container",
            "root": root, "process": {"argv": ["/bin/sleep", "60"]}}}})
    };
    for root in &host_roots {
        let r = s
            .call_as(
                Auth::Bearer(&tenant_admin),
                "POST",
                &format!("{T}/services"),
                Some(service(root.clone())),
            )
            .await;
        assert_error_says(&r, 403, "auth.permission_denied", "backend.sandbox.root");
    }
    let image = json!({"kind": "oci_image", "source": {"kind": "reference", "reference": "127.0.0.1:5000/app:v1"}});
    let r = s
        .call_as(
            Auth::Bearer(&tenant_admin),
            "POST",
            &format!("{T}/services"),
            Some(service(image)),
        )
        .await;
    assert_eq!(r.0, 201, "{}", r.1);
    let mut update = service(json!({"kind": "rootfs", "path": "/etc"}));
    update.as_object_mut().unwrap().remove("name");
    update["ifMatchGeneration"] = json!(1);
    let r = s
        .call_as(
            Auth::Bearer(&tenant_admin),
            "PUT",
            &format!("{T}/services/svc"),
            Some(update),
        )
        .await;
    assert_error_says(&r, 403, "auth.permission_denied", "only a server admin");
}

/// One server per data dir: a second `serve` on a data dir in use stops at start, naming the
/// server that holds it, and changes nothing; the data dir is free again once that server is
/// gone, even killed.
#[tokio::test]
async fn a_second_server_on_a_data_dir_in_use_is_refused_and_a_killed_one_frees_it() {
    let mut s = Server::start().await;
    let (st, _) = s
        .call(
            "POST",
            "/v1/tenants/demo/services",
            Some(nimbus_e2e::worker_service("kept")),
        )
        .await;
    assert_eq!(st, 201);
    let home = tempfile::tempdir().unwrap();
    let mut second = std::process::Command::new(nimbus_e2e::nimbus_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(s.data_dir())
        .env("HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second server is serving the same data dir");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second server started: {err}");
    assert!(
        err.contains(&format!(
            "data dir {} is in use by another nimbus server (pid ",
            s.data_dir().display()
        )),
        "{err}"
    );
    assert!(
        !home
            .path()
            .join(".config/nimbus/application_default_credentials.json")
            .exists(),
        "the refused server wrote a credential"
    );
    // The first one serves on, its data intact.
    let (st, kept) = s.call("GET", "/v1/tenants/demo/services/kept", None).await;
    assert_eq!(st, 200, "{kept}");
    // Killed, it holds nothing: a new server starts on the data dir.
    s.kill9();
    s.restart().await;
    let (st, _) = s.call("GET", "/v1/tenants/demo/services/kept", None).await;
    assert_eq!(st, 200);
}
