//! Helpers for tests that run real PServers in-process on `127.0.0.1:0`.
//! Used by this crate's integration tests and by the CLI's tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerdex_proto::PeerUrl;
use peerdex_proto::rest::Status;
use tokio::sync::oneshot;

use crate::Config;

/// Poll `f` until it returns `Some`, or panic with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A PServer running in this process, with its own share and data folders.
pub struct TestPeer {
    pub api_url: String,
    pub peer_url: String,
    pub share_dir: PathBuf,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
    root: Arc<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestPeer {
    /// Start a peer in fresh folders. `tweak` may change any setting.
    pub async fn start(
        central_url: &str,
        neighbours: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let root = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_in(root, central_url, neighbours, tweak).await
    }

    /// Start a peer over the folders of `root` (e.g. after [`TestPeer::stop`]).
    pub async fn start_in(
        root: Arc<tempfile::TempDir>,
        central_url: &str,
        neighbours: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api_url = format!("http://{}", api.local_addr().unwrap());
        let peer_url = format!("http://{}", peer.local_addr().unwrap());
        let share_dir = root.path().join("share");
        let data_dir = root.path().join("data");
        let mut config = Config::new(
            peer_url.parse::<PeerUrl>().unwrap(),
            share_dir.clone(),
            data_dir.clone(),
            central_url.to_owned(),
        );
        config.neighbours = neighbours.iter().map(|n| n.parse().unwrap()).collect();
        config.rescan_interval = Duration::from_millis(300);
        config.drain = Duration::from_secs(5);
        config.stall_timeout = Duration::from_secs(5);
        tweak(&mut config);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(api, peer, config, async move {
            let _ = rx.await;
        }));
        let p = Self {
            api_url,
            peer_url,
            share_dir,
            data_dir,
            http: reqwest::Client::new(),
            root,
            stop: Some(tx),
            task: Some(task),
        };
        wait_for(
            "the control API to answer",
            Duration::from_secs(30),
            || async {
                p.http
                    .get(format!("{}/api/v1/status", p.api_url))
                    .send()
                    .await
                    .ok()
            },
        )
        .await;
        p
    }

    pub fn root(&self) -> Arc<tempfile::TempDir> {
        self.root.clone()
    }

    pub async fn status(&self) -> Status {
        self.http
            .get(format!("{}/api/v1/status", self.api_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Wait until the peer holds a lease at the central.
    pub async fn wait_joined(&self) {
        wait_for(
            "the peer to join the central",
            Duration::from_secs(30),
            || async { self.status().await.lease_age_secs },
        )
        .await;
    }

    /// Put a file into the share folder by hand (picked up by the rescan).
    pub fn drop_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.share_dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Graceful stop (as on Ctrl+C); returns the folders for a restart.
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        self.shutdown().await;
        self.root.clone()
    }

    async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("pserver task panicked")
                .expect("pserver failed");
        }
    }

    pub fn path_in_share(&self, name: &str) -> PathBuf {
        self.share_dir.join(name)
    }

    pub fn data_path(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for TestPeer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), for test files.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
