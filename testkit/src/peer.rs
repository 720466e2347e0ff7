//! A real PServer, in-process on `127.0.0.1:0`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use peerdex_client::api::Client;
use peerdex_proto::PeerUrl;
use peerdex_proto::rest::Status;
use pserver::Config;
use tokio::sync::oneshot;

use crate::process::{ChildProc, bin};
use crate::wait::wait_for;

/// A PServer running in this process, with its own share and data folders.
pub struct TestPeer {
    pub api_url: String,
    pub peer_url: String,
    pub share_dir: PathBuf,
    pub data_dir: PathBuf,
    /// A plain HTTP client trusting the tweak's `ca_roots`, for what the
    /// control API's typed client cannot send (malformed requests, the
    /// peer API, metrics).
    pub http: reqwest::Client,
    /// The control API's typed client (the CLI's), with the peer's
    /// `api_token` when it has one.
    pub api: Client,
    root: Arc<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), pserver::StartError>>>,
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
    /// A tweak that sets `tls` makes the peer API (and with `api_tls` the
    /// control API) speak TLS: the URLs turn `https://`, and [`TestPeer::http`]
    /// and [`TestPeer::api`] trust the tweak's `ca_roots`.
    pub async fn start_in(
        root: Arc<tempfile::TempDir>,
        central_url: &str,
        neighbours: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        crate::tls::install_provider();
        let api_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (api_addr, peer_addr) = (
            api_listener.local_addr().unwrap(),
            peer.local_addr().unwrap(),
        );
        let peer_url = format!("http://{peer_addr}");
        let share_dir = root.path().join("share");
        let data_dir = root.path().join("data");
        let mut config = Config::new(
            peer_url.parse::<PeerUrl>().unwrap(),
            share_dir.clone(),
            data_dir.clone(),
            central_url.to_owned(),
        );
        // `central_url` may list several centrals, comma-separated.
        config.link.centrals = central_url.split(',').map(str::to_owned).collect();
        config.link.neighbours = neighbours.iter().map(|n| n.parse().unwrap()).collect();
        config.store.rescan_interval = Duration::from_millis(300);
        config.peer_api.drain = Duration::from_secs(5);
        config.downloads.stall_timeout = Duration::from_secs(5);
        // Every test peer is 127.0.0.1, one source for the per-source limits
        // of the peer API; a test of those limits sets its own.
        config.peer_api.max_conns_per_addr = 1024;
        config.peer_api.neighbour_rate = 100_000;
        tweak(&mut config);
        let scheme = |tls: bool| if tls { "https" } else { "http" };
        let api_url = format!("{}://{api_addr}", scheme(config.api_tls));
        let peer_url = format!("{}://{peer_addr}", scheme(config.tls.is_some()));
        if config.tls.is_some() && config.public_url.as_str().starts_with("http://") {
            config.public_url = peer_url.parse::<PeerUrl>().unwrap();
        }
        let roots: Vec<reqwest::Certificate> = config
            .ca_roots
            .iter()
            .map(|c| reqwest::Certificate::from_der(c).unwrap())
            .collect();
        let http = reqwest::Client::builder()
            .tls_certs_merge(roots.clone())
            .build()
            .unwrap();
        let api = Client::with_roots(
            api_url.parse().unwrap(),
            config.control.api_token.clone(),
            roots,
        );
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(pserver::run(api_listener, peer, config, async move {
            let _ = rx.await;
        }));
        let p = Self {
            api_url,
            peer_url,
            share_dir,
            data_dir,
            http,
            api,
            root,
            stop: Some(tx),
            task: Some(task),
        };
        wait_for(
            "the control API to answer",
            Duration::from_secs(30),
            || async { p.api.status().await.ok() },
        )
        .await;
        p
    }

    pub fn root(&self) -> Arc<tempfile::TempDir> {
        self.root.clone()
    }

    pub async fn status(&self) -> Status {
        self.api.status().await.expect("GET /api/v1/status")
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

    /// Put a file into the share folder by hand (picked up by notification
    /// or the rescan); a name in folders makes them.
    pub fn drop_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.share_dir.join(name);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
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

/// A `pserver` binary running as a child process (for faults a process
/// must take: kill -9, signals), its addresses read from its first line of
/// output.
pub struct ChildPeer {
    pub proc: ChildProc,
    pub api_url: String,
    pub peer_url: String,
    pub root: PathBuf,
    /// The control API's typed client (no token).
    pub api: Client,
    _own: Option<tempfile::TempDir>,
}

impl ChildPeer {
    /// A child PServer in fresh folders, with `env` on top of the defaults
    /// below.
    pub fn spawn(central_url: &str, env: &[(&str, &str)]) -> Self {
        let own = tempfile::tempdir().unwrap();
        let mut p = Self::spawn_in(own.path(), central_url, env);
        p._own = Some(own);
        p
    }

    /// A child PServer over `root/share` and `root/data` (again after a
    /// kill): loopback port 0 for both APIs, a rescan every second, warnings
    /// only in its log; `env` may override any of these.
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
        let proc = ChildProc::spawn(&bin("pserver"), root, &vars);
        let (api_url, peer_url) = (proc.field("api"), proc.field("peer"));
        let api = Client::new(api_url.parse().expect("api= is a URL"), None);
        Self {
            proc,
            api_url,
            peer_url,
            root: root.to_owned(),
            api,
            _own: None,
        }
    }

    pub fn share_dir(&self) -> PathBuf {
        self.root.join("share")
    }

    /// Its status, which it must answer.
    pub async fn status(&self) -> Status {
        self.api.status().await.expect("GET /api/v1/status")
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }
}
