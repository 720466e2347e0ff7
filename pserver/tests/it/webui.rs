//! The web UI (issue 15) in a real browser against a real network: Debian's
//! headless Chromium, driven by Playwright (`webui/browser.py`, run with a
//! cached venv's Python), opens the UI of a PServer that wants a token,
//! searches, downloads, uploads, cancels and reads the Network page; then
//! this side checks what really happened on disk and in the API.
//!
//! Nothing is skipped: without Chromium the test fails and names the Debian
//! package; the first run needs PyPI for Playwright (its driver comes in the
//! wheel; it never downloads a browser). Screenshots of every page land in
//! `target/test-artifacts/webui/`.
//!
//! Plain-HTTP tests beside it: a page of another site cannot start a
//! download or delete a file, a form-encoded POST starts nothing, and the
//! page is served without the token under its security headers.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use peerdex_proto::rest::{FileList, JobList, JobState, SearchQuery};
use peerdex_testkit::pyvenv;
use reqwest::StatusCode;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
const LONG_TTL: Duration = Duration::from_secs(30);
const TOKEN: &str = "webui-test-token-5d1e9";
const MIB: usize = 1 << 20;

/// Playwright for Python, pinned: its driver must speak to this Chromium.
const PLAYWRIGHT: &str = "playwright==1.65.2";

/// The whole browser run (install excluded), killed after this.
const BROWSER_DEADLINE: Duration = Duration::from_secs(600);

/// A's control API: the typed client with the token, and raw requests
/// (with the token) for what a browser sends and the client never does.
struct Api<'a> {
    peer: &'a TestPeer,
}

impl Api<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.peer.api_url)
    }

    /// `status` as the JSON the page reads.
    async fn status(&self) -> Value {
        serde_json::to_value(self.peer.status().await).unwrap()
    }

    async fn sees(&self, word: &str, id: &str) -> bool {
        let q = SearchQuery {
            q: word.into(),
            limit: Some(100),
            page: None,
        };
        let hits = self.peer.api.search(&q).await.unwrap();
        hits.hits.iter().any(|h| h.file_id == id && h.holders >= 1)
    }

    async fn jobs(&self) -> JobList {
        self.peer.api.list_downloads().await.unwrap()
    }

    async fn files(&self) -> FileList {
        self.peer.api.list_files().await.unwrap()
    }
}

/// Debian's Chromium, or `$CHROMIUM_BIN`; a missing one fails the test.
fn chromium() -> PathBuf {
    let bin = std::env::var_os("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        bin.is_file(),
        "the web UI test drives a real Chromium and there is none at {}: install the \
         Debian package (`apt-get install chromium`; .ci/run does) or set CHROMIUM_BIN",
        bin.display()
    );
    bin
}

fn artifacts() -> PathBuf {
    let dir = pyvenv::target_dir().join("test-artifacts/webui");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the artifacts folder");
    dir.canonicalize().unwrap_or(dir)
}

fn partials(p: &TestPeer) -> Vec<PathBuf> {
    files_under(&p.data_path().join("partial"))
}

fn same_bytes(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(got.len(), want.len(), "{}", path.display());
    assert_eq!(blake3_hex(&got), blake3_hex(want), "{}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_in_a_real_browser() {
    let chromium = chromium();
    let venv = pyvenv::venv("webui-test-venv", &[PLAYWRIGHT]);
    let art = artifacts();
    eprintln!("web UI screenshots and logs: {}", art.display());

    // B holds a few MiB; C a bigger file that it serves slowly (to cancel).
    let central = TestCentral::start(LONG_TTL).await;
    let b = TestPeer::start(&central.url, &[], |_| {}).await;
    let c = TestPeer::start(&central.url, &[], |cfg| {
        cfg.peer_api.max_upload_bps = 300_000
    })
    .await;
    let a = TestPeer::start(&central.url, &[b.peer_url.as_str()], |cfg| {
        cfg.control.api_token = Some(TOKEN.into());
    })
    .await;
    let api = Api { peer: &a };
    let (b_name, b_bytes) = ("harbour-survey.bin", test_bytes(3 * MIB + 12_345, 151));
    let (c_name, c_bytes) = ("glacier-archive.bin", test_bytes(24 * MIB, 152));
    let b_id = upload_ok(&b, b_name, b_bytes.clone()).await.file_id;
    let c_id = upload_ok(&c, c_name, c_bytes.clone()).await.file_id;
    wait_for("A to find both files", T, || async {
        (api.sees("harbour", &b_id).await && api.sees("glacier", &c_id).await).then_some(())
    })
    .await;

    let pick_dir = tempfile::tempdir().unwrap();
    let pick = pick_dir.path().join("picked-notes.txt");
    let pick_bytes = test_bytes(700_000, 153);
    std::fs::write(&pick, &pick_bytes).unwrap();
    let drop_name = "dropped-memo.txt";

    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(venv.join("bin/python"));
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webui/browser.py"))
        .env("WEBUI_URL", &a.api_url)
        .env("WEBUI_TOKEN", TOKEN)
        .env("WEBUI_ARTIFACTS", &art)
        .env("WEBUI_B_NAME", b_name)
        .env("WEBUI_B_ID", &b_id)
        .env("WEBUI_C_NAME", c_name)
        .env("WEBUI_C_ID", &c_id)
        .env("WEBUI_PICK", &pick)
        .env("WEBUI_DROP_NAME", drop_name)
        .env("CHROMIUM_BIN", &chromium)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(BROWSER_DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the browser run took over {BROWSER_DEADLINE:?}; see {}",
                art.display()
            )
        })
        .expect("run browser.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser run failed ({}); artifacts in {}\n--- stderr ---\n{stderr}",
        out.status,
        art.display()
    );
    eprintln!("browser run: {:.1?}\n{stderr}", started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("the script's last line is not JSON ({e}):\n{stdout}"));

    // A wrong token: the page showed the server's own refusal.
    let wrong =
        peerdex_testkit::api::Client::new(a.api_url.parse().unwrap(), Some("not-the-token".into()));
    let (_, refusal) = refused(wrong.status().await);
    assert_eq!(
        result["wrong_token_message"],
        format!("This token was refused: {}", refusal.message).as_str()
    );

    // The download from B: A's share folder holds B's bytes.
    same_bytes(&a.path_in_share(b_name), &b_bytes);
    // ... and the copy the page saved through fetch → blob is the same.
    same_bytes(Path::new(result["saved"].as_str().unwrap()), &b_bytes);
    // The uploads through the picker and the drop zone, byte for byte.
    same_bytes(&a.path_in_share("picked-notes.txt"), &pick_bytes);
    assert_eq!(result["picked_id"], blake3_hex(&pick_bytes));
    // The dropped file was shared (as these bytes), then removed through
    // the page.
    assert_eq!(
        result["dropped_id"],
        blake3_hex(b"dropped on the zone by the browser test\n")
    );
    assert!(!a.path_in_share(drop_name).exists());
    // The copied URL is the file's address on A's peer API.
    let peer_url = format!("{}/peer/v1/files/{}", a.peer_url, blake3_hex(&pick_bytes));
    assert_eq!(result["copied_url"], peer_url.as_str());

    // The cancelled job: cancelled for the API too, nothing left behind.
    let jobs = api.jobs().await.jobs;
    let cancelled = jobs
        .iter()
        .find(|j| Some(j.job_id.as_str()) == result["cancel_job"].as_str())
        .expect("the cancelled job in the list");
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:?}");
    assert!(
        cancelled.bytes_done < c_bytes.len() as u64,
        "the slow download was cancelled before its end: {cancelled:?}"
    );
    let done = jobs
        .iter()
        .find(|j| Some(j.job_id.as_str()) == result["download_job"].as_str())
        .expect("the finished job in the list");
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert!(!a.path_in_share(c_name).exists());
    // The Wanted page: one want left, C's words, notify only, matched; its
    // match downloaded nothing (C's only job is the cancelled one).
    assert_eq!(result["wanted"], 1);
    let for_c = jobs
        .iter()
        .filter(|j| j.file_id.as_deref() == Some(c_id.as_str()));
    assert_eq!(for_c.count(), 1, "{jobs:?}");
    let wants = a.api.wants().await.unwrap().wants;
    assert_eq!(wants.len(), 1, "{wants:?}");
    assert_eq!(wants[0].query.as_deref(), Some(c_name));
    assert!(!wants[0].download);
    assert_eq!(wants[0].state, peerdex_proto::rest::WantState::Matched);
    wait_for("the cancelled partial to be discarded", T, || async {
        partials(&a).is_empty().then_some(())
    })
    .await;
    let mut names: Vec<String> = api
        .files()
        .await
        .files
        .into_iter()
        .map(|f| f.name)
        .collect();
    names.sort();
    assert_eq!(names, [b_name, "picked-notes.txt"]);

    // The Network page shows what the API says, field by field.
    let status = api.status().await;
    let facts = result["facts"].as_object().expect("facts");
    let fields = status.as_object().unwrap();
    for (field, want) in fields {
        let shown = facts
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("the Network page does not show {field}: {facts:?}"));
        let shown: Value = match want {
            Value::String(_) => Value::String(shown.to_owned()),
            _ => serde_json::from_str(shown)
                .unwrap_or_else(|e| panic!("{field}: {shown:?} is not JSON: {e}")),
        };
        match field.as_str() {
            // Move with time: read by the page before this read.
            "lease_age_secs" => assert!(
                shown.as_u64().is_some() && want.as_u64().is_some(),
                "{field}: page {shown}, API {want}"
            ),
            "lease_renewals" => {
                for k in ["ok", "rejoin", "error"] {
                    assert!(
                        shown[k].as_u64().unwrap() <= want[k].as_u64().unwrap(),
                        "{field}.{k}: page {shown}, API {want}"
                    );
                }
            }
            _ => assert_eq!(&shown, want, "{field} on the Network page"),
        }
    }
    assert_eq!(status["shared_files"], 2);
    assert_eq!(status["neighbours"][0]["url"], b.peer_url.as_str());
    // The copied URL serves the file to anyone (after the comparison above:
    // it moves A's bytes_sent).
    let r = reqwest::get(&peer_url).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), pick_bytes.as_slice());
    eprintln!("screenshots: {}", result["screenshots"]);
    drop((a, b, c));
    central.stop().await;
}

/// A page of another site, a cross-site HTML form, or any foreign `Origin`
/// cannot start a download or remove a file, even with the token; the
/// same requests without it (as the CLI sends them) are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_site_cannot_start_a_download_or_delete_a_file() {
    let central = TestCentral::start(LONG_TTL).await;
    let b = TestPeer::start(&central.url, &[], |_| {}).await;
    let a = TestPeer::start(&central.url, &[b.peer_url.as_str()], |cfg| {
        cfg.control.api_token = Some(TOKEN.into());
    })
    .await;
    let api = Api { peer: &a };
    let wanted = upload_ok(&b, "wanted-file.bin", test_bytes(200_000, 161))
        .await
        .file_id;
    wait_for("A to find B's file", T, || async {
        api.sees("wanted", &wanted).await.then_some(())
    })
    .await;
    let mine = upload(&a, "mine.txt", b"kept".to_vec()).await.unwrap();
    assert!(mine.created, "201");
    let mine = mine.file.file_id;
    let body = serde_json::json!({ "file_id": wanted });

    // Raw: the Origin headers and form bodies of a browser, which the
    // typed client never sends.
    for origin in ["http://evil.example", "null"] {
        let r = a
            .http
            .post(api.url("/api/v1/downloads"))
            .bearer_auth(TOKEN)
            .header(reqwest::header::ORIGIN, origin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "POST, Origin: {origin}");
        let e: peerdex_proto::rest::ApiError = r.json().await.unwrap();
        assert_eq!(e.code, "forbidden", "{e:?}");
        let r = a
            .http
            .delete(api.url(&format!("/api/v1/files/{mine}")))
            .bearer_auth(TOKEN)
            .header(reqwest::header::ORIGIN, origin)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "DELETE, Origin: {origin}"
        );
    }
    // What a cross-site HTML form sends: a urlencoded body (here without an
    // Origin, as some old browsers did). Refused, starts nothing.
    let r = a
        .http
        .post(api.url("/api/v1/downloads"))
        .bearer_auth(TOKEN)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("file_id={wanted}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "form POST: {}", r.status());
    assert!(api.jobs().await.jobs.is_empty(), "no job was started");
    assert!(!a.path_in_share("wanted-file.bin").exists());
    assert!(a.path_in_share("mine.txt").exists());
    assert_eq!(api.files().await.files.len(), 1);

    // Proof that the refusals were about the origin: the same requests as
    // the CLI sends them (its client, no Origin) go through.
    a.api.start_download(&by_id(&wanted)).await.unwrap();
    a.api.remove_file(&mine).await.unwrap();
    assert!(!a.path_in_share("mine.txt").exists());
}

/// The page itself needs no token (it holds nothing secret) and comes with
/// its policy; it has no inline script or style that the policy would
/// block, and it links only to this PServer's own assets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_without_a_token_under_its_policy() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |cfg| {
        cfg.control.api_token = Some(TOKEN.into());
    })
    .await;
    let r = reqwest::get(format!("{}/", a.api_url)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let hd = r.headers().clone();
    let header = |name: &str| hd.get(name).map_or("", |v| v.to_str().unwrap_or(""));
    assert_eq!(
        header("content-security-policy"),
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(header("content-type").starts_with("text/html"), "{hd:?}");
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<script src="/ui/app.js" defer></script>"#));
    assert_eq!(
        html.matches("<script").count(),
        1,
        "one script, from a file"
    );
    for inline in ["<style", " style=", " onclick=", " onload=", "javascript:"] {
        assert!(!html.contains(inline), "{inline:?} in the page");
    }
    for href in ["http://", "https://"] {
        assert!(!html.contains(href), "an outside URL in the page");
    }
    // Its assets: no token either; the API behind them still wants one.
    for path in ["/index.html", "/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
        let r = reqwest::get(format!("{}{path}", a.api_url)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    let no_token = peerdex_testkit::api::Client::new(a.api_url.parse().unwrap(), None);
    assert_eq!(refused(no_token.status().await).0, 401);
}
