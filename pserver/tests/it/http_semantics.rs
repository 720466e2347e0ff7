//! HTTP done right on both APIs of a real PServer: conditional requests
//! (304, 412, If-Range), HEAD like GET, and the cache policy of every
//! response kind (immutable content-addressed bytes, private copies, live
//! state never stored).
//!
//! The subject here is the HTTP itself (headers, validators, methods), so
//! most requests are raw reqwest on purpose; the typed control-API client
//! makes the calls that are only setup.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::time::Duration;

use common::*;
use reqwest::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderMap,
    IF_MATCH, IF_NONE_MATCH, IF_RANGE, RANGE,
};
use reqwest::{Method, StatusCode};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const PRIVATE: &str = "private, max-age=31536000, immutable";

fn h<'a>(headers: &'a HeaderMap, name: &reqwest::header::HeaderName) -> &'a str {
    headers
        .get(name)
        .map_or("", |v| v.to_str().unwrap_or("(not text)"))
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    headers: &[(reqwest::header::HeaderName, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut r = http.get(url);
    for (k, v) in headers {
        r = r.header(k, *v);
    }
    let resp = r.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

/// A HEAD of `url` answers 200 with the headers a GET got (`get`), and no body.
async fn same_head_as_get(http: &reqwest::Client, url: &str, get: &HeaderMap) {
    let head = http.head(url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK, "HEAD {url}");
    for name in [
        &ETAG,
        &CACHE_CONTROL,
        &ACCEPT_RANGES,
        &CONTENT_TYPE,
        &CONTENT_LENGTH,
    ] {
        assert_eq!(h(head.headers(), name), h(get, name), "HEAD {url}: {name}");
    }
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests_and_cache_headers() {
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let p = TestPeer::start(&central.url, &[], |_| {}).await;
    let bytes = test_bytes(300_000, 5);
    let info = upload_ok(&p, "cond.bin", bytes.clone()).await;
    let id = info.file_id.clone();
    let etag = format!("\"{id}\"");
    let http = reqwest::Client::new();
    let file = format!("{}/peer/v1/files/{id}", p.peer_url);

    // Plain GET: strong ETag from the content id, immutable for any cache.
    let (s, hd, body) = get(&http, &file, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, bytes);
    assert_eq!(h(&hd, &ETAG), etag);
    assert_eq!(h(&hd, &CACHE_CONTROL), IMMUTABLE);
    assert_eq!(h(&hd, &ACCEPT_RANGES), "bytes");

    // HEAD carries the same headers, no body.
    same_head_as_get(&http, &file, &hd).await;
    assert_eq!(h(&hd, &CONTENT_LENGTH), bytes.len().to_string());

    // If-None-Match that matches: 304 with validator and policy, no body.
    for inm in [etag.as_str(), "\"x\", W/\"other\", \"{id}\"", "*"] {
        let inm = inm.replace("{id}", &id);
        let (s, hd, body) = get(&http, &file, &[(IF_NONE_MATCH, &inm)]).await;
        assert_eq!(s, StatusCode::NOT_MODIFIED, "If-None-Match: {inm}");
        assert!(body.is_empty());
        assert_eq!(h(&hd, &ETAG), etag);
        assert_eq!(h(&hd, &CACHE_CONTROL), IMMUTABLE);
    }
    let head = http
        .head(&file)
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_MODIFIED);
    // ... one that does not: the full body.
    let (s, _, body) = get(&http, &file, &[(IF_NONE_MATCH, "\"nope\"")]).await;
    assert_eq!((s, body.len()), (StatusCode::OK, bytes.len()));

    // If-Range: a matching validator gets the part, any other the whole.
    let (s, hd, body) = get(&http, &file, &[(RANGE, "bytes=10-19"), (IF_RANGE, &etag)]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &bytes[10..20]);
    assert_eq!(
        h(&hd, &CONTENT_RANGE),
        format!("bytes 10-19/{}", bytes.len())
    );
    assert_eq!(h(&hd, &CACHE_CONTROL), IMMUTABLE);
    for other in ["\"nope\"", "W/\"{id}\"", "Sat, 01 Jan 2000 00:00:00 GMT"] {
        let other = other.replace("{id}", &id);
        let (s, hd, body) = get(&http, &file, &[(RANGE, "bytes=10-19"), (IF_RANGE, &other)]).await;
        assert_eq!(s, StatusCode::OK, "If-Range: {other}");
        assert_eq!(body, bytes, "If-Range: {other}");
        assert_eq!(h(&hd, &CONTENT_RANGE), "");
    }

    // If-Match: 412 unless it matches (strong comparison).
    for bad in ["\"nope\"", "W/\"{id}\""] {
        let bad = bad.replace("{id}", &id);
        let (s, hd, body) = get(&http, &file, &[(IF_MATCH, &bad)]).await;
        assert_eq!(s, StatusCode::PRECONDITION_FAILED, "If-Match: {bad}");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("If-Match") && text.contains(&id), "{text}");
        assert_eq!(h(&hd, &CACHE_CONTROL), "no-store");
    }
    let (s, _, body) = get(&http, &file, &[(IF_MATCH, &etag)]).await;
    assert_eq!((s, body.len()), (StatusCode::OK, bytes.len()));

    // The manifest: its own strong validator, immutable, 304 on a match.
    let manifest = format!("{file}/manifest");
    let (s, hd, _) = get(&http, &manifest, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let mtag = h(&hd, &ETAG).to_owned();
    assert_eq!(mtag, format!("\"{id}.manifest\""));
    assert_eq!(h(&hd, &CACHE_CONTROL), IMMUTABLE);
    let (s, hd, body) = get(&http, &manifest, &[(IF_NONE_MATCH, &mtag)]).await;
    assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0));
    assert_eq!(h(&hd, &ETAG), mtag);
    let (_, hd, _) = get(&http, &manifest, &[]).await;
    same_head_as_get(&http, &manifest, &hd).await;
    let (s, _, _) = get(&http, &manifest, &[(IF_MATCH, "\"nope\"")]).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);

    // The control API's copy of the bytes: same validator, private.
    let content = format!("{}/api/v1/files/{id}/content", p.api_url);
    let (s, hd, body) = get(&http, &content, &[]).await;
    assert_eq!((s, body.len()), (StatusCode::OK, bytes.len()));
    assert_eq!(h(&hd, &ETAG), etag);
    assert_eq!(h(&hd, &CACHE_CONTROL), PRIVATE);
    same_head_as_get(&http, &content, &hd).await;
    let (s, hd, body) = get(&http, &content, &[(IF_NONE_MATCH, &etag)]).await;
    assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0));
    assert_eq!(h(&hd, &CACHE_CONTROL), PRIVATE);
    let (s, _, _) = get(&http, &content, &[(IF_MATCH, "\"nope\"")]).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);

    // Live state and errors: never stored.
    for url in [
        format!("{}/api/v1/status", p.api_url),
        format!("{}/api/v1/files", p.api_url),
        format!("{}/api/v1/downloads", p.api_url),
        format!("{}/api/v1/search?q=cond", p.api_url),
        format!("{}/api/v1/openapi.json", p.api_url),
        format!("{}/api/v1/files/nothex/content", p.api_url),
        format!("{}/api/v1/no/such/endpoint", p.api_url),
        format!("{}/peer/v1/health", p.peer_url),
        format!("{}/peer/v1/search?q=cond", p.peer_url),
        format!("{}/peer/v1/locate?file_id={id}", p.peer_url),
        format!("{}/peer/v1/files/{}", p.peer_url, blake3_hex(b"absent")),
    ] {
        let r = http.request(Method::GET, &url).send().await.unwrap();
        assert_eq!(
            h(r.headers(), &CACHE_CONTROL),
            "no-store",
            "{url}: {}",
            r.status()
        );
    }
}

/// The web UI's assets: served without the token (nothing secret in them),
/// under a policy that allows only themselves, revalidated by ETag; every
/// API call still needs the token, and a page of another site cannot
/// change anything even with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_assets_and_the_guard() {
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let p = TestPeer::start(&central.url, &[], |c| {
        c.control.api_token = Some("s3cret".into())
    })
    .await;
    let http = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret");

    for (path, kind) in [
        ("/", "text/html"),
        ("/index.html", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let url = format!("{}{path}", p.api_url);
        let (s, hd, body) = get(&http, &url, &[]).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert!(h(&hd, &CONTENT_TYPE).starts_with(kind), "{path}");
        assert!(!body.is_empty(), "{path}");
        let csp = h(&hd, &reqwest::header::CONTENT_SECURITY_POLICY);
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(h(&hd, &reqwest::header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(h(&hd, &CACHE_CONTROL), "no-cache");
        let tag = h(&hd, &ETAG).to_owned();
        assert!(tag.starts_with('"') && tag.len() > 10, "{path}: {tag}");
        let (s, hd, body) = get(&http, &url, &[(IF_NONE_MATCH, &tag)]).await;
        assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0), "{path}");
        assert_eq!(h(&hd, &ETAG), tag);
        // Other methods are API calls like any other: token first.
        let r = http.post(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = auth(http.post(&url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(h(r.headers(), &reqwest::header::ALLOW), "GET, HEAD");
    }
    // The page is no way around the token: the API still wants it.
    let no_token = peerdex_testkit::api::Client::new(p.api_url.parse().unwrap(), None);
    assert_eq!(refused(no_token.list_files().await).0, 401);
    // ... nor around the Host check.
    let r = http
        .get(format!("{}/", p.api_url))
        .header(reqwest::header::HOST, "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A browser request from a page of another site, even with the token
    // (say, taken from a careless script), changes nothing.
    let kept = upload(&p, "keep.txt", b"keep me".to_vec()).await.unwrap();
    assert!(kept.created, "201");
    let id = kept.file.file_id;
    // Raw: the headers a browser adds, which the typed client never sends.
    let file = format!("{}/api/v1/files/{id}", p.api_url);
    for site in ["cross-site", "same-site"] {
        let r = auth(http.delete(&file))
            .header("Sec-Fetch-Site", site)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "Sec-Fetch-Site: {site}");
        let text = r.text().await.unwrap();
        assert!(text.contains("another site"), "{text}");
    }
    for origin in ["http://evil.example", "null", "https://127.0.0.1:1"] {
        let r = auth(http.delete(&file))
            .header(reqwest::header::ORIGIN, origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "Origin: {origin}");
    }
    assert!(p.share_dir.join("keep.txt").exists());
    // The UI's own origin may.
    let own = p.api_url.clone();
    let r = auth(http.delete(&file))
        .header(reqwest::header::ORIGIN, own)
        .header("Sec-Fetch-Site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!p.share_dir.join("keep.txt").exists());
}

/// `GET /api/v1/events` sends the job list at once and again on every
/// change, so the UI follows transfers without polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_list_is_followed_live() {
    use futures_util::StreamExt;
    use peerdex_proto::rest::{JobList, JobState};

    let central = TestCentral::start(Duration::from_secs(10)).await;
    let holder = TestPeer::start(&central.url, &[], |_| {}).await;
    let p = TestPeer::start(&central.url, &[holder.peer_url.as_str()], |_| {}).await;
    let info = upload_ok(&holder, "followed.bin", test_bytes(2_000_000, 9)).await;

    let resp = p
        .http
        .get(format!("{}/api/v1/events", p.api_url))
        .header(reqwest::header::ACCEPT, "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(h(resp.headers(), &CONTENT_TYPE).starts_with("application/x-ndjson"));
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut next = async || -> JobList {
        loop {
            if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                return serde_json::from_slice(&line).expect("a JobList per line");
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
                .await
                .expect("a line within 30 s (changes or the keep-alive)")
                .expect("the stream goes on")
                .unwrap();
            buf.extend_from_slice(&chunk);
        }
    };
    assert!(
        next().await.jobs.is_empty(),
        "first line: the list as it is"
    );
    let job = start_job(&p, &info.file_id).await;
    let done = loop {
        let list = next().await;
        if let Some(j) = list.jobs.iter().find(|j| j.job_id == job.job_id)
            && j.state.is_final()
        {
            break j.clone();
        }
    };
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(done.bytes_done, 2_000_000);
}
