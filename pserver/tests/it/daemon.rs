//! PServer integration tests: a real central and real PServers on port 0.

use crate::common;

use std::time::Duration;

use common::*;
use peerdex_proto::rest::{ApiError, DownloadRequest, JobState, Status};
use peerdex_testkit::api::Client;

const LONG_TTL: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_then_download_through_neighbour() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    a.wait_joined().await;
    b.wait_joined().await;

    let bytes = test_bytes(3_500_000, 1);
    let info = upload_ok(&a, "alpha-report.bin", bytes.clone()).await;
    assert_eq!(info.file_id, blake3_hex(&bytes));
    assert_eq!(info.size, bytes.len() as u64);
    // Idempotent re-upload: 200 with the same id.
    let again = upload(&a, "alpha-report.bin", bytes.clone()).await.unwrap();
    assert!(!again.created, "200, not 201");
    assert_eq!(again.file.file_id, info.file_id);
    // Same name, different content: 409.
    let (status, e) = refused(upload(&a, "alpha-report.bin", b"other".to_vec()).await);
    assert_eq!(status, 409);
    assert_eq!(e.code, "name_conflict");

    // Found through the neighbour by a multi-word prefix query.
    let hits = search(&b, "ALPHA rep").await.hits;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].file_id, info.file_id);

    let job = b
        .api
        .start_download(&by_name("alpha-report.bin"))
        .await
        .unwrap();
    let done = finish(&b, &job.job_id, T).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let got = std::fs::read(b.path_in_share("alpha-report.bin")).unwrap();
    assert_eq!(blake3_hex(&got), info.file_id);
    assert_eq!(got, bytes);
    // B is now a holder too.
    wait_for("b to be published as a holder", T, || async {
        (holders(&b, "alpha", &info.file_id).await == 2).then_some(())
    })
    .await;
    // Content endpoint streams the stored bytes back.
    let content = b
        .api
        .file_content(&info.file_id)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&content[..], &bytes[..]);
    // Nothing left in the temp folder.
    assert!(files_under(&b.data_path().join("tmp")).is_empty());
    // A second download of the same id is done at once.
    let j = b.api.start_download(&by_id(&info.file_id)).await.unwrap();
    assert_eq!(j.state, JobState::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_and_bad_ids() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let bytes = test_bytes(100_000, 2);
    let info = upload_ok(&a, "r.bin", bytes.clone()).await;
    let url = format!("{}/peer/v1/files/{}", a.peer_url, info.file_id);
    let get = |range: Option<&'static str>| {
        let mut req = a.http.get(&url);
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        req.send()
    };
    let full = get(None).await.unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(
        full.headers()["etag"],
        format!("\"{}\"", info.file_id).as_str()
    );
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(full.headers()["content-length"], "100000");
    assert_eq!(&full.bytes().await.unwrap()[..], &bytes[..]);

    for (range, start, end) in [
        ("bytes=0-0", 0usize, 0usize),
        ("bytes=99999-99999", 99_999, 99_999),
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=-500", 99_500, 99_999),
        ("bytes=99000-", 99_000, 99_999),
    ] {
        let r = get(Some(range)).await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/100000").as_str()
        );
        assert_eq!(
            &r.bytes().await.unwrap()[..],
            &bytes[start..=end],
            "{range}"
        );
    }
    for range in [
        "bytes=100000-",
        "bytes=0-1,5-9",
        "bytes=5-1",
        "bytes=0-99999999999999999999999",
        "bytes=-0",
    ] {
        let r = get(Some(range)).await.unwrap();
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(r.headers()["content-range"], "bytes */100000");
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let head = a.http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "100000");
    // Malformed and unknown ids.
    let r = a
        .http
        .get(format!("{}/peer/v1/files/not-an-id", a.peer_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = a
        .http
        .get(format!("{}/peer/v1/files/{}", a.peer_url, "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_are_rejected() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let root = a.root();
    let outside = root.path().join("secret.txt");
    std::fs::write(&outside, b"do not serve").unwrap();
    std::os::unix::fs::symlink(&outside, a.path_in_share("link.txt")).unwrap();
    // Everything outside the data folder (which the peer writes by itself).
    let outside_data = || {
        files_under(root.path())
            .into_iter()
            .filter(|p| !p.starts_with(root.path().join("data")))
            .collect::<Vec<_>>()
    };
    let before = outside_data();

    for name in [
        "..%2fx",
        "%2e%2e%2fx",
        "%5c..%5cx",
        "..%5cx",
        "%2fetc%2fpasswd",
        "a%00b",
        "..",
        "C:evil",
        ".hidden",
    ] {
        // Raw: the name is sent already percent-encoded, as an attacker
        // would (the typed client encodes every segment itself).
        let r = a
            .http
            .put(format!("{}/api/v1/files/{name}", a.api_url))
            .body("x")
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 400 || r.status() == 404,
            "{name}: {}",
            r.status()
        );
    }
    // reqwest normalises a literal `../x`; send it raw over TCP.
    let raw = raw_http(
        &a.api_url,
        "PUT /api/v1/files/../x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    assert!(!raw.starts_with("HTTP/1.1 2"), "{raw}");
    let raw = raw_http(
        &a.peer_url,
        "GET /peer/v1/files/../../secret.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(!raw.starts_with("HTTP/1.1 2"), "{raw}");

    // The symlink that leaves the share folder is neither listed nor served.
    let list = a.api.list_files().await.unwrap();
    assert!(list.files.iter().all(|f| f.name != "link.txt"), "{list:?}");
    let id = blake3_hex(b"do not serve");
    let r = a
        .http
        .get(format!("{}/peer/v1/files/{id}", a.peer_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(outside_data(), before, "a file was written");
    assert!(files_under(&a.data_path().join("tmp")).is_empty());
    assert_eq!(std::fs::read(&outside).unwrap(), b"do not serve");
}

async fn raw_http(base: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holder_serving_corrupt_bytes_fails_the_job() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    b.wait_joined().await;
    let bytes = test_bytes(2_500_000, 3);
    let info = upload_ok(&a, "c.bin", bytes.clone()).await;
    // Alter one byte on A's disk, keeping size and mtime so A does not notice.
    flip_in_place(&a.path_in_share("c.bin"), &[1_500_000]);

    let job = start_job(&b, &info.file_id).await;
    let end = finish(&b, &job.job_id, Duration::from_secs(60)).await;
    assert_eq!(end.state, JobState::Failed, "{end:?}");
    let why = end.error.unwrap();
    assert!(why.contains("verification"), "{why}");
    assert!(!b.path_in_share("c.bin").exists());
    assert!(files_under(&b.share_dir).is_empty());
    assert!(files_under(&b.data_path().join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_peer_id_and_skips_rehash() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    a.drop_file("one.txt", b"one");
    a.drop_file("two.txt", b"two");
    wait_for("files to be scanned", T, || async {
        (a.status().await.shared_files == 2).then_some(())
    })
    .await;
    let first: Status = a.status().await;
    let root = a.stop().await;
    let a = TestPeer::start_in(root, &central.url, &[], |_| {}).await;
    let second = a.status().await;
    assert_eq!(second.peer_id, first.peer_id);
    assert_eq!(second.shared_files, 2);
    assert_eq!(second.files_hashed, 0, "unchanged files were hashed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_files_are_published_and_ctrl_c_leaves_at_once() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[], |_| {}).await;
    a.wait_joined().await;
    a.drop_file("dropped-by-hand.txt", b"hello by hand");
    let id = blake3_hex(b"hello by hand");
    wait_for(
        "dropped file to be published",
        Duration::from_secs(5),
        || async { (holders(&b, "dropped hand", &id).await == 1).then_some(()) },
    )
    .await;
    std::fs::remove_file(a.path_in_share("dropped-by-hand.txt")).unwrap();
    wait_for(
        "removed file to be withdrawn",
        Duration::from_secs(5),
        || async { (holders(&b, "dropped", &id).await == 0).then_some(()) },
    )
    .await;
    a.drop_file("leaving.txt", b"bye");
    let id = blake3_hex(b"bye");
    wait_for("file published", T, || async {
        (holders(&b, "leaving", &id).await == 1).then_some(())
    })
    .await;
    // Graceful stop sends Leave: gone at once, far before the 30 s lease.
    a.stop().await;
    assert_eq!(holders(&b, "leaving", &id).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_upload_is_refused_and_cleaned_up() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |c| c.control.max_upload_bytes = 1000).await;
    let (status, e) = refused(upload(&a, "big.bin", vec![7u8; 5000]).await);
    assert_eq!(status, 413);
    assert_eq!(e.code, "too_large");
    // Without a Content-Length (chunked), the limit is enforced while
    // streaming. A raw request, sent in one write so the server has read it
    // all when it answers: the 413 always arrives (no reset races).
    let mut req = format!(
        "PUT /api/v1/files/big2.bin HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        a.api_url.trim_start_matches("http://")
    )
    .into_bytes();
    for _ in 0..10 {
        req.extend_from_slice(b"1f4\r\n");
        req.extend_from_slice(&[1u8; 500]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(a.api_url.trim_start_matches("http://"), &req).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "chunked oversize upload: {answer:?}"
    );
    wait_for("temp files to be removed", T, || async {
        files_under(&a.data_path().join("tmp"))
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(files_under(&a.share_dir).is_empty());
    // Exactly at the limit is fine.
    assert!(upload(&a, "ok.bin", vec![1u8; 1000]).await.unwrap().created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_peer_answers_503_with_retry_after() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |c| {
        c.peer_api.max_uploads = 1;
        c.peer_api.max_upload_bps = 20_000;
    })
    .await;
    let info = upload_ok(&a, "slow.bin", test_bytes(200_000, 4)).await;
    let url = format!("{}/peer/v1/files/{}", a.peer_url, info.file_id);
    let first = a.http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = a.http.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert!(second.headers().get("retry-after").is_some());
    drop(first);
    wait_for("the slot to be released", T, || async {
        (a.http.head(&url).send().await.unwrap().status() == 200
            && a.status().await.active_uploads == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_names_and_bad_requests() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[], |_| {}).await;
    let c = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    c.wait_joined().await;
    upload_ok(&a, "same.txt", b"version a".to_vec()).await;
    upload_ok(&b, "same.txt", b"version b".to_vec()).await;
    wait_for("both published", T, || async {
        (search(&c, "same").await.hits.len() == 2).then_some(())
    })
    .await;
    let (status, e) = refused(c.api.start_download(&by_name("same.txt")).await);
    assert_eq!(status, 409);
    assert_eq!(e.code, "ambiguous_name");
    assert_eq!(e.candidates.len(), 2);
    // Unknown name / id → 404; both or neither → 400; bad id → 400.
    let api = &c.api;
    let start = |req: DownloadRequest| async move { refused(api.start_download(&req).await).0 };
    assert_eq!(start(by_name("nope.txt")).await, 404);
    assert_eq!(start(by_id(&"a".repeat(64))).await, 404);
    assert_eq!(start(by_id("xyz")).await, 400);
    assert_eq!(start(DownloadRequest::default()).await, 400);
    // Raw: a body that is not JSON (the typed client only sends JSON).
    let r = c
        .http
        .post(format!("{}/api/v1/downloads", c.api_url))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let empty = peerdex_proto::rest::SearchQuery::default();
    assert_eq!(refused(c.api.search(&empty).await).0, 400);
    assert_eq!(refused(c.api.job("nope").await).0, 400);
    // Neighbour loop guard.
    let r = a
        .http
        .get(format!("{}/peer/v1/search?q=same", a.peer_url))
        .header("x-peerdex-hops", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 508);
    // The server is still fine.
    assert_eq!(search(&c, "same").await.hits.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_token_and_host_checks() {
    let central = TestCentral::start(LONG_TTL).await;
    let token = "0123456789abcdef-secret";
    let a = TestPeer::start(&central.url, &[], |c| {
        c.control.api_token = Some(token.into())
    })
    .await;
    let url = format!("{}/api/v1/status", a.api_url);
    let base: reqwest::Url = a.api_url.parse().unwrap();
    let with = |t: Option<&str>| Client::new(base.clone(), t.map(str::to_owned));
    // testkit's readiness probe got 401s; check explicitly.
    assert_eq!(refused(with(None).status().await).0, 401);
    assert_eq!(
        refused(with(Some("wrong-token-wrong")).status().await).0,
        401
    );
    a.api.status().await.expect("the peer's token is taken");
    // Raw: a forged Host header (the typed client sends the URL's).
    let r = a
        .http
        .get(&url)
        .bearer_auth(token)
        .header("Host", "evil.example:7070")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let doc = a.api.openapi().await.unwrap();
    assert!(doc["paths"]["/api/v1/downloads"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_killed_mid_transfer_second_holder_finishes() {
    let central = TestCentral::start(LONG_TTL).await;
    let bytes = test_bytes(6_000_000, 5);
    let id = blake3_hex(&bytes);
    // Two holders as real processes, capped so the transfer takes seconds.
    let mut h1 = ChildPeer::spawn(&central.url, &[("PSERVER_MAX_UPLOAD_BPS", "1500000")]);
    let mut h2 = ChildPeer::spawn(&central.url, &[("PSERVER_MAX_UPLOAD_BPS", "1500000")]);
    std::fs::write(h1.share_dir().join("k.bin"), &bytes).unwrap();
    std::fs::write(h2.share_dir().join("k.bin"), &bytes).unwrap();
    let b = TestPeer::start(&central.url, &[], |_| {}).await;
    wait_for("both holders published", T, || async {
        (holders(&b, "k", &id).await == 2).then_some(())
    })
    .await;

    let job = start_job(&b, &id).await;
    let source = wait_for("bytes to flow", T, || async {
        let j = common::job(&b, &job.job_id).await;
        (j.bytes_done > 500_000).then_some(j.source).flatten()
    })
    .await;
    let victim = if source == h1.peer_url {
        &mut h1
    } else {
        &mut h2
    };
    victim.kill9();
    let end = finish(&b, &job.job_id, Duration::from_secs(60)).await;
    assert_eq!(end.state, JobState::Done, "{end:?}");
    assert_eq!(
        blake3_hex(&std::fs::read(b.path_in_share("k.bin")).unwrap()),
        id
    );
}

/// Send `request` as is over one TCP connection and read the answer to EOF.
async fn raw_exchange(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .expect("the answer came")
        .expect("read the answer");
    String::from_utf8_lossy(&out).into_owned()
}

/// A known path asked with a method it lacks says so (405 + `Allow`), an
/// unknown one is 404, and a PUT with no body at all (no Content-Length:
/// what HTTP/1.1 clients send for empty content) shares an empty file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_get_405_and_a_bodyless_put_is_an_empty_file() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    // Raw: methods the typed client never sends.
    let http = reqwest::Client::new();
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/api/v1/status", "GET"),
        (reqwest::Method::POST, "/api/v1/files", "GET"),
        (reqwest::Method::PATCH, "/api/v1/downloads", "GET, POST"),
        (
            reqwest::Method::from_bytes(b"TRACE").unwrap(),
            "/api/v1/search",
            "GET",
        ),
    ] {
        let r = http
            .request(method.clone(), format!("{}{path}", a.api_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
        let e: ApiError = r.json().await.unwrap();
        assert_eq!(e.code, "method_not_allowed", "{e:?}");
        assert!(e.message.contains(allow), "{e:?}");
    }
    let r = http
        .get(format!("{}/api/v1/nothing-here", a.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let host = a.api_url.trim_start_matches("http://");
    let answer = raw_exchange(
        host,
        format!(
            "PUT /api/v1/files/empty.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(std::fs::read(a.path_in_share("empty.txt")).unwrap(), b"");
    assert!(
        !upload(&a, "empty.txt", Vec::new()).await.unwrap().created,
        "200: the same empty content again"
    );
}
