//! A real central directory, in-process on `127.0.0.1:0`, or the
//! `central-server` binary as a child process.
//!
//! Tests change a central's settings through [`Settings`], never through
//! `central_server::Config` itself: this file is the one place that knows
//! how the settings map onto the central's config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A central directory served by [`central_server::run`] in this process.
/// Dropping it stops the server; [`TestCentral::stop`] also waits for the
/// bounded shutdown and checks that it ended cleanly.
pub struct TestCentral {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (`https://` when the tweak set `tls`)
    pub url: String,
    pub data_dir: PathBuf,
    /// `http://127.0.0.1:PORT/metrics` when started with metrics.
    pub metrics_url: Option<String>,
    _root: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<central_server::Result<()>>>,
}

/// The settings of a test central, named as the central's config names
/// them (defaults: the central's own). The one place that reads and writes
/// `central_server::Config`'s fields is here (`Settings::of` and
/// [`Settings::config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    pub key_retention: Duration,
    pub join_secret: Option<String>,
    pub limits: Limits,
    pub tls: Option<central_server::TlsFiles>,
    pub etcd_endpoints: Option<String>,
    pub etcd_prefix: String,
    pub name: Option<String>,
    pub drain: Option<Duration>,
    pub replica_grace: Duration,
    pub pin_orphan: Duration,
    pub audit_every: Duration,
    pub audit_retry: Duration,
    pub peer_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// The central's limits, as [`Settings`] names them (defaults: the
/// central's own; see `central_server::Limits` for what each bounds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_name_bytes: usize,
    pub max_inventory: usize,
    pub max_page: usize,
    pub max_holders: usize,
    pub max_search_matches: usize,
    pub search_budget: usize,
    pub join_rate: u32,
    pub publish_rate: u32,
    pub search_rate: u32,
    pub max_peers_per_addr: usize,
    pub max_files: usize,
    pub max_keys: usize,
    pub max_replicas: u32,
    pub max_pins_per_peer: usize,
    pub max_pinned_bytes_per_peer: u64,
    pub max_pins_per_addr: usize,
    pub max_pinned_bytes_per_addr: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Settings::default().limits
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::of(&central_server::Config::new(PathBuf::new()))
    }
}

impl Settings {
    /// These settings with the lease TTL `ttl` and heartbeats advised at a
    /// third of it (at least every 300 ms).
    pub fn lease(&mut self, ttl: Duration) {
        self.lease_ttl = ttl;
        self.heartbeat_interval = (ttl / 3).max(Duration::from_millis(300));
    }

    /// What `config` says.
    fn of(config: &central_server::Config) -> Self {
        let l = &config.limits;
        Self {
            lease_ttl: config.lease_ttl,
            heartbeat_interval: config.heartbeat_interval,
            key_retention: config.key_retention,
            join_secret: config.join_secret.clone(),
            limits: Limits {
                max_message_bytes: l.max_message_bytes,
                max_name_bytes: l.max_name_bytes,
                max_inventory: l.max_inventory,
                max_page: l.max_page,
                max_holders: l.max_holders,
                max_search_matches: l.max_search_matches,
                search_budget: l.search_budget,
                join_rate: l.join_rate,
                publish_rate: l.publish_rate,
                search_rate: l.search_rate,
                max_peers_per_addr: l.max_peers_per_addr,
                max_files: l.max_files,
                max_keys: l.max_keys,
                max_replicas: l.max_replicas,
                max_pins_per_peer: l.max_pins_per_peer,
                max_pinned_bytes_per_peer: l.max_pinned_bytes_per_peer,
                max_pins_per_addr: l.max_pins_per_addr,
                max_pinned_bytes_per_addr: l.max_pinned_bytes_per_addr,
            },
            tls: config.tls.clone(),
            etcd_endpoints: config.etcd_endpoints.clone(),
            etcd_prefix: config.etcd_prefix.clone(),
            name: config.name.clone(),
            drain: config.drain,
            replica_grace: config.replica_grace,
            pin_orphan: config.pin_orphan,
            audit_every: config.audit_every,
            audit_retry: config.audit_retry,
            peer_ca: config.peer_ca.clone(),
        }
    }

    /// The central's config over `data_dir` with these settings.
    pub fn config(self, data_dir: &Path) -> central_server::Config {
        let mut c = central_server::Config::new(data_dir);
        let l = self.limits;
        c.limits = central_server::Limits {
            max_message_bytes: l.max_message_bytes,
            max_name_bytes: l.max_name_bytes,
            max_inventory: l.max_inventory,
            max_page: l.max_page,
            max_holders: l.max_holders,
            max_search_matches: l.max_search_matches,
            search_budget: l.search_budget,
            join_rate: l.join_rate,
            publish_rate: l.publish_rate,
            search_rate: l.search_rate,
            max_peers_per_addr: l.max_peers_per_addr,
            max_files: l.max_files,
            max_keys: l.max_keys,
            max_replicas: l.max_replicas,
            max_pins_per_peer: l.max_pins_per_peer,
            max_pinned_bytes_per_peer: l.max_pinned_bytes_per_peer,
            max_pins_per_addr: l.max_pins_per_addr,
            max_pinned_bytes_per_addr: l.max_pinned_bytes_per_addr,
        };
        c.lease_ttl = self.lease_ttl;
        c.heartbeat_interval = self.heartbeat_interval;
        c.key_retention = self.key_retention;
        c.join_secret = self.join_secret;
        c.tls = self.tls;
        c.etcd_endpoints = self.etcd_endpoints;
        c.etcd_prefix = self.etcd_prefix;
        c.name = self.name;
        c.drain = self.drain;
        c.replica_grace = self.replica_grace;
        c.pin_orphan = self.pin_orphan;
        c.audit_every = self.audit_every;
        c.audit_retry = self.audit_retry;
        c.peer_ca = self.peer_ca;
        c
    }
}

/// Run a central over a fresh folder with the settings `tweak` makes, and
/// return why it refused to start (it must refuse before serving).
pub async fn refused_settings(tweak: impl FnOnce(&mut Settings)) -> central_server::Error {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let mut settings = Settings::default();
    tweak(&mut settings);
    let run = central_server::run(
        listener,
        settings.config(dir.path()),
        std::future::pending(),
    );
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("a bad setting is refused at start, not served")
        .expect_err("the central must refuse these settings")
}

impl TestCentral {
    /// A central over a fresh folder with the given lease TTL (heartbeats
    /// advised at a third of it, at least every 300 ms).
    pub async fn start(lease_ttl: Duration) -> Self {
        Self::start_with(|c| c.lease(lease_ttl)).await
    }

    /// A central over a fresh folder; `tweak` may change any setting.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let mut c = Self::start_in(&root.path().join("central"), tweak).await;
        c._root = Some(root);
        c
    }

    /// A central over `data_dir` (e.g. again after [`TestCentral::stop`]),
    /// with the given lease TTL.
    pub async fn start_at(data_dir: PathBuf, lease_ttl: Duration) -> Self {
        Self::start_in(&data_dir, |c| c.lease(lease_ttl)).await
    }

    /// A central over `data_dir`; `tweak` may change any setting.
    pub async fn start_in(data_dir: &Path, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::start_full(data_dir, false, tweak).await
    }

    /// A central over a fresh folder that also serves Prometheus metrics
    /// (as with `CENTRAL_METRICS_ADDR`) at [`TestCentral::metrics_url`].
    pub async fn start_with_metrics(tweak: impl FnOnce(&mut Settings)) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let mut c = Self::start_full(&root.path().join("central"), true, tweak).await;
        c._root = Some(root);
        c
    }

    async fn start_full(data_dir: &Path, metrics: bool, tweak: impl FnOnce(&mut Settings)) -> Self {
        let metrics = match metrics {
            true => Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0"),
            ),
            false => None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::serve(listener, data_dir, metrics, tweak)
    }

    /// A central on `listener` (e.g. bound again on the address of one
    /// stopped before) over `data_dir`, serving metrics (at
    /// [`TestCentral::metrics_url`]) when `metrics` is given.
    pub fn serve(
        listener: tokio::net::TcpListener,
        data_dir: &Path,
        metrics: Option<tokio::net::TcpListener>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        crate::tls::install_provider();
        let metrics_url = metrics
            .as_ref()
            .map(|l| format!("http://{}/metrics", l.local_addr().unwrap()));
        let addr = listener.local_addr().unwrap();
        let mut settings = Settings::default();
        tweak(&mut settings);
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(central_server::run_with_metrics(
            listener,
            metrics,
            settings.config(data_dir),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            url: format!("{scheme}://{addr}"),
            data_dir: data_dir.to_owned(),
            metrics_url,
            _root: None,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stop as on Ctrl+C and wait (at most 15 s) for a clean end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("central shutdown is bounded")
                .expect("central task panicked")
                .expect("central failed");
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

/// A real `central-server` process (for faults a process must take:
/// `kill -9`, SIGSTOP, SIGTERM), in `dir`, with `CENTRAL_*` settings.
/// Restarts keep its address (as a PServer's list of centrals keeps it)
/// and the logs of earlier lives (`<name>-<n>.log` in `dir`).
pub struct CentralProc {
    pub proc: crate::process::ChildProc,
    /// `http://ADDR`
    pub url: String,
    pub addr: String,
    pub name: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    lives: u32,
}

impl CentralProc {
    /// A central on the etcd cluster at `endpoints`, named `name`, with
    /// lease TTL `ttl` (whole seconds) and heartbeats every second; rate
    /// limits off (tests call from one address).
    pub fn on_etcd(dir: &Path, endpoints: &str, name: &str, ttl: Duration) -> Self {
        let env = [
            ("CENTRAL_ETCD_ENDPOINTS", endpoints.to_owned()),
            ("CENTRAL_NAME", name.to_owned()),
            ("CENTRAL_LEASE_TTL_SECS", ttl.as_secs().max(2).to_string()),
            ("CENTRAL_HEARTBEAT_SECS", "1".into()),
            ("CENTRAL_JOIN_RATE", "0".into()),
            ("CENTRAL_PUBLISH_RATE", "0".into()),
            ("CENTRAL_SEARCH_RATE", "0".into()),
            ("RUST_LOG", "info,central_server=debug".into()),
        ];
        Self::start(
            dir,
            name,
            env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        )
    }

    /// A central with exactly these settings (and `CENTRAL_DATA_DIR` =
    /// `dir`), on a free loopback port.
    pub fn start(dir: &Path, name: &str, env: Vec<(String, String)>) -> Self {
        let mut c = Self {
            proc: Self::spawn(dir, "127.0.0.1:0", &env),
            url: String::new(),
            addr: String::new(),
            name: name.to_owned(),
            dir: dir.to_owned(),
            env,
            lives: 1,
        };
        c.addr = c.proc.last_word();
        c.url = format!("http://{}", c.addr);
        c
    }

    fn spawn(dir: &Path, addr: &str, env: &[(String, String)]) -> crate::process::ChildProc {
        let mut all: Vec<(&str, String)> =
            env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        all.push(("CENTRAL_LISTEN_ADDR", addr.to_owned()));
        all.push(("CENTRAL_DATA_DIR", dir.display().to_string()));
        crate::process::ChildProc::spawn(&crate::process::bin("central-server"), dir, &all)
    }

    /// Start again on the same address (after a kill, a SIGTERM, or now:
    /// a running one is killed first).
    /// The log of every life of this central so far (earlier ones first).
    pub fn all_logs(&self) -> String {
        let mut text = String::new();
        for life in 1..self.lives {
            let path = self.dir.join(format!("{}-{life}.log", self.name));
            text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        text.push_str(&self.proc.log());
        text
    }

    pub fn restart(&mut self) {
        self.proc.kill9();
        let _ = std::fs::write(
            self.dir.join(format!("{}-{}.log", self.name, self.lives)),
            self.proc.log(),
        );
        self.lives += 1;
        self.proc = Self::spawn(&self.dir, &self.addr, &self.env);
    }

    /// SIGTERM, then wait (at most `deadline`) for a clean exit.
    pub fn terminate(&mut self, deadline: Duration) {
        self.proc.signal(libc::SIGTERM);
        self.wait_exit(deadline);
    }

    /// Wait (at most `deadline`) for a clean exit (after a signal).
    pub fn wait_exit(&mut self, deadline: Duration) {
        let start = std::time::Instant::now();
        loop {
            match self.proc.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "{} exited with {status}", self.name);
                    return;
                }
                Ok(None) if start.elapsed() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => panic!("{} did not stop within {deadline:?} of SIGTERM", self.name),
            }
        }
    }

    /// A client with short deadlines (a dead central fails fast).
    pub fn client(
        &self,
    ) -> peerdex_proto::v1::directory_client::DirectoryClient<tonic::transport::Channel> {
        let ch = tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("a URL")
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .connect_lazy();
        peerdex_proto::v1::directory_client::DirectoryClient::new(ch)
    }

    /// Its `Info` answer, or `None` when it does not answer within 700 ms.
    pub async fn info(&self) -> Option<peerdex_proto::v1::InfoResponse> {
        let mut c = self.client();
        tokio::time::timeout(
            Duration::from_millis(700),
            c.info(peerdex_proto::v1::InfoRequest {}),
        )
        .await
        .ok()?
        .ok()
        .map(tonic::Response::into_inner)
    }

    /// Its Locate answer for one file id (every holder), or `None` when it
    /// does not answer or no live peer holds the file (and nobody pinned it).
    pub async fn locate(&self, file_id: &str) -> Option<peerdex_proto::v1::LocatedFile> {
        use peerdex_proto::v1;
        let r = self
            .client()
            .locate(v1::LocateRequest {
                target: Some(v1::locate_request::Target::FileId(file_id.into())),
                max_holders: 0,
            })
            .await
            .ok()?
            .into_inner();
        r.files.into_iter().next()
    }

    /// The folder of its logs (this life's `central-server.log` and the
    /// earlier lives').
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
