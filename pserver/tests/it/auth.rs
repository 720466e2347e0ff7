//! Who may do what: client tokens with scopes on the control API (made by
//! the real `pserver token create`), and the keys of a PServer (private
//! files; a peer id that another key cannot take).

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use peerdex_proto::rest::SearchQuery;
use peerdex_testkit::api::{self, Client};
use peerdex_testkit::bin;
use reqwest::StatusCode;
use serde_json::Value;

/// `pserver token create …` for the PServer whose data folder is `data`.
fn create_token(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("pserver"))
        .args(["token", "create"])
        .args(args)
        .env_clear()
        .env("PSERVER_DATA_DIR", data)
        .output()
        .expect("run pserver token create")
}

fn token(data: &Path, scope: &str) -> String {
    let out = create_token(data, &["--scope", scope, "--ttl", "1h", "--name", "t"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A token signed with the PServer's own API key but expired a while ago
/// (beyond the 30 s leeway): only the holder of `api.key` can make one.
fn expired_token(data: &Path, peer_id: &str) -> String {
    let pem = std::fs::read_to_string(data.join("api.key")).unwrap();
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": peer_id, "aud": "peerdex-control-api", "sub": "old", "scope": "write",
        "iat": now - 7200, "exp": now - 3600, "jti": "x",
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes()),
    )
    .unwrap()
}

/// `p`'s control API as a client presenting `token` (none: no
/// `Authorization` header at all).
fn client(p: &TestPeer, token: Option<&str>) -> Client {
    Client::new(p.api_url.parse().unwrap(), token.map(str::to_owned))
}

/// The status and message of a call that must be refused.
#[track_caller]
fn refusal<T: std::fmt::Debug>(r: api::Result<T>) -> (u16, String) {
    let (status, e) = refused(r);
    (status, e.message)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tokens_are_checked_and_limited_to_their_scope() {
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let holder = TestPeer::start(&central.url, &[], |_| {}).await;
    let p = TestPeer::start(&central.url, &[holder.peer_url.as_str()], |_| {}).await;
    p.wait_joined().await;
    let theirs = upload_ok(&holder, "theirs.bin", test_bytes(50_000, 1)).await;
    let mine = upload_ok(&p, "mine.txt", b"mine".to_vec()).await;
    let peer_id = p.status().await.peer_id;

    // Every secret in the data folder is private.
    #[cfg(unix)]
    for f in ["peer.key", "api.key", "session.token"] {
        assert_eq!(mode(&p.data_dir.join(f)), 0o600, "{f}");
    }

    let read = token(&p.data_dir, "read");
    let write = token(&p.data_dir, "write");
    let download = by_id(&theirs.file_id);

    // Read: search, list, status, jobs, contents; nothing that changes.
    let reader = client(&p, Some(&read));
    reader.list_files().await.expect("GET files");
    reader.status().await.expect("GET status");
    let q = SearchQuery {
        q: "theirs".into(),
        ..Default::default()
    };
    reader.search(&q).await.expect("GET search");
    reader.list_downloads().await.expect("GET downloads");
    reader
        .file_content(&mine.file_id)
        .await
        .expect("GET content");
    // Raw: /metrics is beside the control API, not part of it.
    let r = p
        .http
        .get(format!("{}/metrics", p.api_url))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "GET /metrics");
    for (what, r) in [
        (
            "PUT files/new.txt",
            upload(&reader, "new.txt", Vec::new()).await.map(drop),
        ),
        (
            "POST downloads",
            reader.start_download(&download).await.map(drop),
        ),
        (
            "DELETE files/{id}",
            reader.remove_file(&mine.file_id).await.map(drop),
        ),
    ] {
        let (s, text) = refusal(r);
        assert_eq!(s, 403, "{what}: {text}");
        assert!(text.contains("needs scope write"), "{text}");
    }
    let files = client(&p, None).list_files().await.unwrap();
    assert_eq!(files.files.len(), 1, "nothing changed: {files:?}");
    assert!(p.status().await.active_downloads == 0);

    // Refused tokens, each with its reason; on loopback too (a token that
    // is presented is always checked).
    let mut tampered = read.clone().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let other = TestPeer::start(&central.url, &[], |_| {}).await;
    let foreign = token(&other.data_dir, "write");
    for (t, why) in [
        (expired_token(&p.data_dir, &peer_id), "expired"),
        (tampered, "signature"),
        (foreign, "signature"),
        ("not-a-token".to_owned(), "wrong bearer token"),
        (
            format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                read.split('.').nth(1).unwrap()
            ),
            "alg: none",
        ),
    ] {
        let (s, text) = refusal(client(&p, Some(&t)).list_files().await);
        assert_eq!(s, 401, "{why}: {text}");
        assert!(text.contains(why), "{why} not in {text}");
    }

    // Write: everything.
    let writer = client(&p, Some(&write));
    let job = writer
        .start_download(&download)
        .await
        .expect("POST downloads");
    assert_eq!(job.request, download, "a job for what was asked: {job:?}");
    writer
        .remove_file(&mine.file_id)
        .await
        .expect("DELETE files/{id}");
    // No token on loopback without PSERVER_API_TOKEN: full access, as before.
    client(&p, None).list_files().await.expect("GET files");

    // Bad requests for a token are answered by the command, and make none.
    for args in [
        &["--scope", "admin"][..],
        &["--scope", "read", "--ttl", "0s"],
        &["--scope", "read", "--ttl", "400d"],
        &["--scope", "read", "--ttl", "1w"],
        &["--scope", "read", "--name", ""],
    ] {
        let out = create_token(&p.data_dir, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = create_token(&p.data_dir, &["--scope", "read", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scope"], "read");
    assert!(v["expires_at"].as_u64().unwrap() > 0);
}

/// With PSERVER_API_TOKEN set, it keeps full access, a client token is
/// limited to its scope, and nothing else gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_token_and_client_tokens_together() {
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let secret = "a-static-token-0123456789";
    let p = TestPeer::start(&central.url, &[], |c| {
        c.control.api_token = Some(secret.into())
    })
    .await;
    let read = client(&p, Some(&token(&p.data_dir, "read")));
    assert_eq!(refusal(client(&p, None).list_files().await).0, 401);
    read.list_files()
        .await
        .expect("GET files with a read token");
    assert_eq!(refusal(upload(&read, "x.txt", Vec::new()).await).0, 403);
    let put = upload(&client(&p, Some(secret)), "x.txt", Vec::new()).await;
    assert!(put.unwrap().created, "201");
}

/// A PServer's id is bound to its key: a copy of its id without its key
/// cannot join, while the PServer itself comes back as the same peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_peer_id_without_its_key_cannot_join() {
    let central = TestCentral::start(Duration::from_secs(3)).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    a.wait_joined().await;
    let id = a.status().await.peer_id;
    let root = a.stop().await; // leaves
    // Someone copies the id (not the key) into a PServer of their own.
    let thief_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(thief_root.path().join("data")).unwrap();
    std::fs::copy(
        root.path().join("data/peer-id"),
        thief_root.path().join("data/peer-id"),
    )
    .unwrap();
    let thief =
        TestPeer::start_in(std::sync::Arc::new(thief_root), &central.url, &[], |_| {}).await;
    assert_eq!(thief.status().await.peer_id, id);
    // Its Joins are refused, and its status says why.
    let why = wait_for(
        "the thief's join to be refused",
        Duration::from_secs(20),
        || async { thief.status().await.lease_error },
    )
    .await;
    assert!(
        why.contains("PermissionDenied") && why.contains("bound to another key"),
        "{why}"
    );
    let s = thief.status().await;
    assert_eq!(s.lease_age_secs, None, "the thief joined: {s:?}");
    assert!(s.central_reachable);
    thief.stop().await;
    // The real one comes back as itself.
    let a = TestPeer::start_in(root, &central.url, &[], |_| {}).await;
    a.wait_joined().await;
    assert_eq!(a.status().await.peer_id, id);
}
