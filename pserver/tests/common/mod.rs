//! Shared helpers: a real central directory in-process on port 0.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use peerdex_proto::rest::{DownloadRequest, FileInfo, Job, SearchResults};
pub use pserver::testkit::{TestPeer, test_bytes, wait_for};
use tokio::sync::oneshot;

pub struct TestCentral {
    pub url: String,
    pub data_dir: PathBuf,
    _root: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestCentral {
    pub async fn start(lease_ttl: Duration) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut c = Self::start_at(root.path().join("central"), lease_ttl).await;
        c._root = Some(root);
        c
    }

    pub async fn start_at(data_dir: PathBuf, lease_ttl: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut config = central_server::Config::new(data_dir.clone());
        config.lease_ttl = lease_ttl;
        config.heartbeat_interval = (lease_ttl / 3).max(Duration::from_millis(300));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            central_server::run(listener, config, async move {
                let _ = rx.await;
            })
            .await
            .expect("central failed");
        });
        Self {
            url,
            data_dir,
            _root: None,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for TestCentral {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

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

pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A `pserver` binary running as a child process (for kill -9 tests).
pub struct ChildPeer {
    pub child: std::process::Child,
    pub api_url: String,
    pub peer_url: String,
    pub root: tempfile::TempDir,
}

impl ChildPeer {
    pub fn spawn(central_url: &str, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let root = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pserver"));
        cmd.current_dir(root.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("PSERVER_API_ADDR", "127.0.0.1:0")
            .env("PSERVER_PEER_ADDR", "127.0.0.1:0")
            .env("PSERVER_SHARE_DIR", root.path().join("share"))
            .env("PSERVER_DATA_DIR", root.path().join("data"))
            .env("PSERVER_CENTRAL_URL", central_url)
            .env("PSERVER_RESCAN_SECS", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        std::fs::create_dir_all(root.path().join("share")).unwrap();
        let mut child = cmd.spawn().expect("spawn pserver");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_owned()
        };
        let api_url = field("api=");
        let peer_url = field("peer=");
        Self {
            child,
            api_url,
            peer_url,
            root,
        }
    }

    pub fn share_dir(&self) -> PathBuf {
        self.root.path().join("share")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for ChildPeer {
    fn drop(&mut self) {
        self.kill9();
    }
}
