//! Shared helpers: REST calls to a PServer's control API, and a `pserver`
//! binary as a child process. Servers come from `peerdex-testkit`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use peerdex_proto::rest::{DownloadRequest, FileInfo, Job, SearchResults};
pub use peerdex_testkit::{
    ChildProc, TestCentral, TestPeer, blake3_hex, files_under, test_bytes, wait_for,
};

pub async fn upload(p: &TestPeer, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    p.http
        .put(format!("{}/api/v1/files/{name}", p.api_url))
        .body(bytes)
        .send()
        .await
        .unwrap()
}

pub async fn upload_ok(p: &TestPeer, name: &str, bytes: Vec<u8>) -> FileInfo {
    let r = upload(p, name, bytes).await;
    assert!(r.status().is_success(), "upload failed: {}", r.status());
    r.json().await.unwrap()
}

pub async fn search(p: &TestPeer, q: &str) -> SearchResults {
    let r = p
        .http
        .get(format!("{}/api/v1/search", p.api_url))
        .query(&[("q", q)])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "search failed: {}", r.status());
    r.json().await.unwrap()
}

/// Holders of `file_id` in a search for `q` as seen by `p` (0 if absent).
pub async fn holders(p: &TestPeer, q: &str, file_id: &str) -> u32 {
    search(p, q)
        .await
        .hits
        .iter()
        .filter(|h| h.file_id == file_id)
        .map(|h| h.holders)
        .max()
        .unwrap_or(0)
}

/// Wait until `p` sees exactly `n` holders of `id` (searching by `q`).
pub async fn wait_holders_exactly(p: &TestPeer, q: &str, id: &str, n: u32) {
    wait_for(
        &format!("{n} holders of {id}"),
        Duration::from_secs(40),
        || async { (holders(p, q, id).await == n).then_some(()) },
    )
    .await;
}

/// A download request by file id.
pub fn by_id(id: &str) -> DownloadRequest {
    DownloadRequest {
        file_id: Some(id.into()),
        name: None,
    }
}

/// Start downloading `id`; the request must be accepted (202).
pub async fn start_job(p: &TestPeer, id: &str) -> Job {
    let r = start_download(p, &by_id(id)).await;
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

pub async fn start_download(p: &TestPeer, req: &DownloadRequest) -> reqwest::Response {
    p.http
        .post(format!("{}/api/v1/downloads", p.api_url))
        .json(req)
        .send()
        .await
        .unwrap()
}

pub async fn job(p: &TestPeer, id: &str) -> Job {
    p.http
        .get(format!("{}/api/v1/downloads/{id}", p.api_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Poll a job until it reaches a final state.
pub async fn finish(p: &TestPeer, id: &str, deadline: Duration) -> Job {
    wait_for("the download job to finish", deadline, || async {
        let j = job(p, id).await;
        j.state.is_final().then_some(j)
    })
    .await
}

/// A `pserver` binary running as a child process (for kill -9 tests), its
/// addresses read from its first line of output.
pub struct ChildPeer {
    pub proc: ChildProc,
    pub api_url: String,
    pub peer_url: String,
    pub root: PathBuf,
    _own: Option<tempfile::TempDir>,
}

impl ChildPeer {
    /// A child PServer in fresh folders.
    pub fn spawn(central_url: &str, env: &[(&str, &str)]) -> Self {
        let own = tempfile::tempdir().unwrap();
        let mut p = Self::spawn_in(own.path(), central_url, env);
        p._own = Some(own);
        p
    }

    /// A child PServer over `root/share` and `root/data` (again after a kill).
    pub fn spawn_in(root: &Path, central_url: &str, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(root.join("share")).unwrap();
        let mut vars: Vec<(&str, String)> = vec![
            ("RUST_LOG", "warn".into()),
            ("PSERVER_API_ADDR", "127.0.0.1:0".into()),
            ("PSERVER_PEER_ADDR", "127.0.0.1:0".into()),
            (
                "PSERVER_SHARE_DIR",
                root.join("share").display().to_string(),
            ),
            ("PSERVER_DATA_DIR", root.join("data").display().to_string()),
            ("PSERVER_CENTRAL_URL", central_url.into()),
            ("PSERVER_RESCAN_SECS", "1".into()),
        ];
        vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let proc = ChildProc::spawn(Path::new(env!("CARGO_BIN_EXE_pserver")), root, &vars);
        let (api_url, peer_url) = (proc.field("api"), proc.field("peer"));
        Self {
            proc,
            api_url,
            peer_url,
            root: root.to_owned(),
            _own: None,
        }
    }

    pub fn share_dir(&self) -> PathBuf {
        self.root.join("share")
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        reqwest::get(format!("{}{path}", self.api_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }
}

/// Flip the bytes at `offsets` of `path` in place through one handle, then
/// put its mtime back to the nanosecond, so no rescan notices the change
/// (what a silently rotting disk does).
pub fn flip_in_place(path: &Path, offsets: &[u64]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    for &at in offsets {
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    }
    f.set_modified(mtime).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

/// What a fake holder (a hand-written HTTP/1.1 server in a test) was asked:
/// the path and, if any, the single `Range: bytes=a-b`.
pub struct FakeRequest {
    pub path: String,
    pub range: Option<(u64, u64)>,
}

/// Read one request head from `s` (at most 8 KiB); `None` if the client
/// went away first.
pub async fn read_fake_request(s: &mut tokio::net::TcpStream) -> Option<FakeRequest> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let range = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .map(str::to_owned)
        })
        .and_then(|r| {
            let (a, b) = r.trim().split_once('-')?;
            Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
        });
    Some(FakeRequest { path, range })
}

/// Answer a fake request and close: `status` ("206 Partial Content"),
/// `extra` header lines (each ending in CRLF), `body`.
pub async fn send_fake_answer(
    mut s: tokio::net::TcpStream,
    status: &str,
    extra: &str,
    body: &[u8],
) {
    use tokio::io::AsyncWriteExt;
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.write_all(body).await;
    let _ = s.shutdown().await;
}
