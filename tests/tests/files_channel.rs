//! The files channel against a hostile workload and hostile clients: what a black-box probe
//! found, each as a test. Needs root and crun, like `sandboxes_api.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use nimbus_e2e::{json, Server};
use tokio::io::AsyncWriteExt;

const T: &str = "/v1/tenants/demo";

/// A root filesystem with busybox-static in it, built from the host's busybox.
fn busybox_rootfs(dir: &Path) -> String {
    nimbus_e2e::busybox_rootfs(dir, &["sh", "mkdir", "ln", "touch", "sleep"])
}

/// A ready sandbox of tenant demo running `script` in `root`, and a files session on it.
async fn sandbox_with_files_session(s: &Server, root: &str, script: &str) -> (String, String) {
    sandbox_with_files_session_in(s, T, root, script).await
}

/// The same in the tenant at `t` (`/v1/tenants/<name>`).
async fn sandbox_with_files_session_in(
    s: &Server,
    t: &str,
    root: &str,
    script: &str,
) -> (String, String) {
    let body = json!({"profile": "worker", "spec": {
        "owner": {"kind": "standalone"}, "backend": "container",
        "root": {"kind": "rootfs", "path": root},
        "process": {"argv": ["sh", "-c", script]}}});
    let (st, created) = s.call("POST", &format!("{t}/sandboxes"), Some(body)).await;
    assert_eq!(st, 201, "{created}");
    let id = created["metadata"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, sbx) = s.call("GET", &format!("{t}/sandboxes/{id}"), None).await;
        if sbx["status"]["lifecycleState"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {sbx}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({"target": {"sandbox": {"id": id}}, "channels": ["files"]});
    let (st, ses) = s.call("POST", &format!("{t}/sessions"), Some(body)).await;
    assert_eq!(st, 201, "{ses}");
    (id, ses["metadata"]["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn the_files_channel_holds_against_big_directories_host_renames_and_stalled_uploads() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let script = "mkdir -p /tmp/many /tmp/d && cd /tmp/many && i=0; \
                  while [ $i -le 10000 ]; do touch f$i; i=$((i+1)); done; \
                  touch /tmp/d/f && ln -s ../../tmp/d /tmp/l && touch /tmp/ready; sleep 600";
    let (_, session) = sandbox_with_files_session(&s, &root, script).await;
    let url = |path: &str| format!("{}{T}/sessions/{session}/files{path}", s.base_url());
    let get = |path: &str| {
        let req = s.client.get(url(path)).bearer_auth(&s.token);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.bytes().await.unwrap().to_vec())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while get("/tmp/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "the workload never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A listing stops at 10 000 entries and says there were more.
    let (st, body) = get("/tmp/many/?list").await;
    assert_eq!(st, 200);
    let listing: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listing["items"].as_array().unwrap().len(), 10_000);
    assert_eq!(listing["truncated"], true);
    let (_, body) = get("/tmp/d/?list").await;
    let small: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(small["truncated"], false, "{small}");

    // A trailing slash names a directory: it does not read the file.
    let (st, body) = get("/tmp/d/f/").await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("ends with /"));
    assert_eq!(get("/tmp/d/f").await.0, 200);

    // Renames anywhere on the host make a lookup through `..` fail with EAGAIN now and then;
    // such lookups are retried, never answered with a 500.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = {
        let stop = stop.clone();
        let spot = tempfile::tempdir().unwrap();
        std::thread::spawn(move || {
            let (a, b) = (spot.path().join("a"), spot.path().join("b"));
            std::fs::write(&a, b"x").unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::rename(&a, &b).unwrap();
                std::fs::rename(&b, &a).unwrap();
            }
        })
    };
    let mut failures = Vec::new();
    for _ in 0..300 {
        let (st, body) = get("/tmp/l/f").await;
        if st != 200 {
            failures.push((st, String::from_utf8_lossy(&body).into_owned()));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    renamer.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of 300 failed: {:?}",
        failures.len(),
        &failures[..1]
    );

    // Stalled uploads (a body that stops short) hold bounded places: 4 per tenant and 16 in
    // the server, instead of 32 MiB each for as long as their connections stay open.
    let addr = s.base_url().trim_start_matches("http://").to_string();
    let stall = |t: String, session: String, i: usize| {
        let (addr, token) = (addr.clone(), s.token.clone());
        async move {
            let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "PUT {t}/sessions/{session}/files/tmp/stalled{i} HTTP/1.1\r\nHost: {addr}\r\n\
                 Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\npartial"
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            conn
        }
    };
    // A body declared larger than any file can be is refused at once: it waits for nothing
    // and holds no place.
    {
        use tokio::io::AsyncReadExt;
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "PUT {T}/sessions/{session}/files/tmp/huge HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {}\r\nContent-Length: 40000000\r\n\r\nx",
            s.token
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("an oversized upload was waited for")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("files up to 32 MiB"), "{answer}");
    }
    let put = |t: &str, session: &str, path: &str| {
        let req = s
            .client
            .put(format!(
                "{}{t}/sessions/{session}/files{path}",
                s.base_url()
            ))
            .bearer_auth(&s.token)
            .body("whole");
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // Opens stalled uploads in tenant `t` until one is answered within `wait`: the refusal.
    // Each stalled upload either holds a place or is refused, so this does not race them.
    let refused = |t: String, session: String, wait: Duration, start: usize| {
        let stall = &stall;
        async move {
            use tokio::io::AsyncReadExt;
            let mut held = Vec::new();
            for i in start..start + 40 {
                let mut conn = stall(t.clone(), session.clone(), i).await;
                let mut buf = vec![0u8; 4096];
                match tokio::time::timeout(wait, conn.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        return (held, String::from_utf8_lossy(&buf[..n]).into_owned())
                    }
                    Ok(_) => panic!("upload {i} in {t}: the connection closed without an answer"),
                    Err(_) => held.push(conn), // it holds a place
                }
            }
            panic!("40 uploads in {t} and none refused")
        }
    };
    let (mut stalled, refusal) =
        refused(T.to_string(), session.clone(), Duration::from_secs(5), 0).await;
    assert!(stalled.len() >= 4, "{refusal}");
    assert!(refusal.starts_with("HTTP/1.1 429"), "{refusal}");
    assert!(refusal.contains("quota.exhausted"), "{refusal}");
    assert!(
        refusal.contains("tenant demo has 4 uploads in flight"),
        "{refusal}"
    );

    // Three more tenants with 4 stalled uploads each: 16 in all. A fifth tenant's upload
    // waits for a place (10 s), then is told to retry.
    let mut others = Vec::new();
    for name in ["fair-a", "fair-b", "fair-c", "fair-d"] {
        let (st, v) = s
            .call("POST", "/v1/tenants", Some(json!({"name": name})))
            .await;
        assert_eq!(st, 201, "{v}");
        let t = format!("/v1/tenants/{name}");
        let (_, ses) = sandbox_with_files_session_in(&s, &t, &root, "sleep 600").await;
        others.push((t, ses));
    }
    for (t, ses) in &others[..3] {
        for i in 0..4 {
            stalled.push(stall(t.clone(), ses.clone(), i).await);
        }
    }
    let (t, ses) = others[3].clone();
    let (held, refusal) = refused(t.clone(), ses.clone(), Duration::from_secs(15), 0).await;
    stalled.extend(held);
    assert!(refusal.starts_with("HTTP/1.1 429"), "{refusal}");
    assert!(
        refusal.contains("16 uploads are in flight on this server"),
        "{refusal}"
    );
    assert!(refusal.contains("retry shortly"), "{refusal}");
    // Closing the stalled connections gives their places back.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, body) = put(&t, &ses, "/tmp/after").await;
        if st == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uploads stay refused: {st} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An upload cut off by a server crash leaves nothing once the server is back: the restarted
/// server removes its partial file and the directories it made when it adopts the sandbox.
/// (The body is received whole before the file is written, so the crash must fall within the
/// write itself; the test lays out what such a crash leaves, as the upload records it, rather
/// than racing a kill against a write of a few milliseconds.)
#[tokio::test]
async fn an_upload_cut_off_by_a_server_crash_leaves_nothing_after_the_restart() {
    let mut s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let (id, session) = sandbox_with_files_session(&s, &root, "sleep 600").await;
    // An upload through the channel is recorded while it runs, and forgotten once done.
    let url = format!("{}{T}/sessions/{session}/files/done/f.txt", s.base_url());
    let r = s
        .client
        .put(url)
        .bearer_auth(&s.token)
        .body("whole")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let journal = s
        .data_dir()
        .join("runtime/sandboxes")
        .join(&id)
        .join("uploads");
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
    // What a crash in the middle of writing `/up/deep/big.bin` leaves.
    let sandbox_root = Path::new("/run/nimbus/rootfs").join(&id).join("root");
    assert!(
        sandbox_root.join("done/f.txt").is_file(),
        "the sandbox's root is not at {}",
        sandbox_root.display()
    );
    let tmp = ".nimbus-upload-00112233445566778899aabbccddeeff";
    std::fs::create_dir_all(sandbox_root.join("up/deep")).unwrap();
    std::fs::write(sandbox_root.join("up/deep").join(tmp), vec![b'x'; 1 << 20]).unwrap();
    std::fs::write(
        journal.join(format!("{tmp}.json")),
        json!({"process": "a server that is gone", "parents": ["up", "deep"], "made": [0, 1], "tmp": tmp}).to_string(),
    )
    .unwrap();
    s.kill9();
    s.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while sandbox_root.join("up").exists() {
        assert!(
            Instant::now() < deadline,
            "the cut-off upload stayed\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
    assert!(sandbox_root.join("done/f.txt").is_file());
    let (_, sbx) = s.call("GET", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(sbx["status"]["lifecycleState"], "ready", "{sbx}");
}

/// An upload whose body is still arriving when its session is closed writes nothing: the
/// session is checked again once the body is in (409, as for any use of a closed session).
#[tokio::test]
async fn an_upload_finishing_after_its_session_closed_writes_nothing() {
    use tokio::io::AsyncReadExt;
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let (_, session) = sandbox_with_files_session(&s, &root, "sleep 600").await;
    let addr = s.base_url().trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT {T}/sessions/{session}/files/late/dir/file HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {}\r\nContent-Length: 10\r\n\r\nfirst",
        s.token
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, closed) = s
        .call(
            "POST",
            &format!("{T}/sessions/{session}/close"),
            Some(json!({"reason": "done"})),
        )
        .await;
    assert_eq!(st, 200, "{closed}");
    conn.write_all(b"final").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert!(answer.contains("state.invalid_transition"), "{answer}");
    // Nothing was written: a new session finds neither the file nor its directories.
    let body = json!({"target": {"sandbox": {"id": closed["spec"]["target"]["sandbox"]["id"]}}, "channels": ["files"]});
    let (st, ses) = s.call("POST", &format!("{T}/sessions"), Some(body)).await;
    assert_eq!(st, 201, "{ses}");
    let again = ses["metadata"]["id"].as_str().unwrap();
    let (st, body) = s
        .call(
            "GET",
            &format!("{T}/sessions/{again}/files/late/?list"),
            None,
        )
        .await;
    assert_eq!(st, 404, "{body}");
    // What the router's decoding would hide is refused as sent: an empty first component,
    // and a / encoded inside a name.
    for raw in ["/etc/passwd", "etc%2Fpasswd"] {
        let (st, body) = s
            .call("GET", &format!("{T}/sessions/{again}/files/{raw}"), None)
            .await;
        assert_eq!(st, 400, "{raw}: {body}");
    }
}

/// A credential of tenant demo that may reach sandbox `id` (and so use its sessions' channels):
/// its secret and its id.
async fn reach_credential(s: &Server, id: &str) -> (String, String) {
    let (st, cred) = s
        .call(
            "POST",
            &format!("{T}/credentials"),
            Some(json!({"kind": "token", "grants": [format!("sandbox:{id}:reach")]})),
        )
        .await;
    assert_eq!(st, 201, "{cred}");
    let cred_id = cred["metadata"]["id"]
        .as_str()
        .or(cred["id"].as_str())
        .unwrap()
        .to_string();
    (cred["secret"].as_str().unwrap().to_string(), cred_id)
}

/// Reads `resp`'s body until it ends or fails; whether it failed, and the bytes read.
async fn read_to_end_or_cut(mut resp: reqwest::Response, within: Duration) -> (bool, u64) {
    let mut read = 0u64;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
            Ok(Ok(Some(c))) => read += c.len() as u64,
            Ok(Ok(None)) => return (false, read),
            Ok(Err(_)) => return (true, read),
            Err(_) => panic!("the read stalled after {read} bytes"),
        }
    }
    panic!("the read went on for {within:?} ({read} bytes)")
}

/// A file being read is as bound to the session and the credential as an attached stdio is:
/// revoking the credential, or closing the session (as deleting the sandbox does), cuts the
/// read within about a second, instead of letting it stream for as long as the file lasts.
#[tokio::test]
async fn a_file_being_read_stops_when_its_credential_is_revoked_or_its_session_closes() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = nimbus_e2e::busybox_rootfs(dir.path(), &["sh", "truncate", "sleep"]);
    let (id, session) =
        sandbox_with_files_session(&s, &root, "truncate -s 64G /big; sleep 600").await;
    let (secret, cred) = reach_credential(&s, &id).await;
    let url = format!("{}{T}/sessions/{session}/files/big", s.base_url());
    let client = reqwest::Client::new();
    let mut resp = client.get(&url).bearer_auth(&secret).send().await.unwrap();
    for _ in 0..50 {
        if resp.status() == 200 {
            break;
        }
        // The sandbox may not have made the file yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
        resp = client.get(&url).bearer_auth(&secret).send().await.unwrap();
    }
    assert_eq!(resp.status(), 200);
    let (st, body) = s
        .call("DELETE", &format!("{T}/credentials/{cred}"), None)
        .await;
    assert_eq!(st, 200, "{body}");
    let revoked = Instant::now();
    let (cut, read) = read_to_end_or_cut(resp, Duration::from_secs(30)).await;
    assert!(cut, "the read ended as if whole after {read} bytes");
    assert!(
        revoked.elapsed() < Duration::from_secs(5),
        "{:?}",
        revoked.elapsed()
    );

    let resp = client.get(&url).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (st, body) = s
        .call(
            "POST",
            &format!("{T}/sessions/{session}/close"),
            Some(json!({"reason": "done"})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let closed = Instant::now();
    let (cut, read) = read_to_end_or_cut(resp, Duration::from_secs(30)).await;
    assert!(cut, "the read ended as if whole after {read} bytes");
    assert!(
        closed.elapsed() < Duration::from_secs(5),
        "{:?}",
        closed.elapsed()
    );
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// An upload whose credential is revoked while its body arrives writes nothing: the
/// credential is checked again once the body is in, as the session is.
#[tokio::test]
async fn an_upload_whose_credential_was_revoked_meanwhile_writes_nothing() {
    use tokio::io::AsyncReadExt;
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let (id, session) = sandbox_with_files_session(&s, &root, "sleep 600").await;
    let (secret, cred) = reach_credential(&s, &id).await;
    let addr = s.base_url().trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT {T}/sessions/{session}/files/after-revoke HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {secret}\r\nContent-Length: 10\r\n\r\nabc"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, body) = s
        .call("DELETE", &format!("{T}/credentials/{cred}"), None)
        .await;
    assert_eq!(st, 200, "{body}");
    conn.write_all(b"REVOKED").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("not written"), "{answer}");
    let (st, body) = s
        .call(
            "GET",
            &format!("{T}/sessions/{session}/files/after-revoke"),
            None,
        )
        .await;
    assert_eq!(st, 404, "{body}");
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}

/// HEAD tells a file's size (and whether it exists) without reading it.
#[tokio::test]
async fn head_gives_a_files_size_without_its_bytes() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let (id, session) =
        sandbox_with_files_session(&s, &root, "echo hello > /hello.txt; sleep 600").await;
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{}{T}/sessions/{session}/files/{p}", s.base_url());
    let mut resp = client
        .head(url("hello.txt"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    for _ in 0..50 {
        if resp.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        resp = client
            .head(url("hello.txt"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_LENGTH]
            .to_str()
            .unwrap(),
        "6"
    );
    assert!(resp.bytes().await.unwrap().is_empty());
    let missing = client
        .head(url("nothing.txt"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let (st, _) = s.call("DELETE", &format!("{T}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
}
