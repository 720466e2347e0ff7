//! A real central directory, in-process on `127.0.0.1:0`, or the
//! `central-server` binary as a child process.
//!
//! Tests change a central's settings with a tweak of its config
//! ([`Settings`], `central_server::Config`).

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

/// The settings a test tweaks: the central's own config (its defaults
/// until a tweak changes them, except `dial_back`, off unless a tweak
/// turns it on; the data folder is the test's).
pub use central_server::{Config as Settings, Limits};

/// Set the lease TTL `ttl`, with heartbeats advised at a third of it (at
/// least every 300 ms).
pub fn lease(c: &mut Settings, ttl: Duration) {
    c.lease_ttl = ttl;
    c.heartbeat_interval = (ttl / 3).max(Duration::from_millis(300));
}

/// Run a central over a fresh folder with the settings `tweak` makes, and
/// return why it refused to start (it must refuse before serving).
pub async fn refused_settings(tweak: impl FnOnce(&mut Settings)) -> central_server::Error {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let mut settings = Settings::new(dir.path());
    tweak(&mut settings);
    let run = central_server::run(listener, settings, std::future::pending());
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("a bad setting is refused at start, not served")
        .expect_err("the central must refuse these settings")
}

impl TestCentral {
    /// A central over a fresh folder with the given lease TTL (heartbeats
    /// advised at a third of it, at least every 300 ms).
    pub async fn start(lease_ttl: Duration) -> Self {
        Self::start_with(|c| lease(c, lease_ttl)).await
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
        Self::start_in(&data_dir, |c| lease(c, lease_ttl)).await
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
        let mut settings = Settings::new(data_dir);
        // Most tests simulate peers at URLs nobody serves: the dial-back
        // (CENTRAL_DIAL_BACK) is on only where a test turns it on.
        settings.dial_back = false;
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
            settings,
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
        // Simulated peers advertise URLs nobody serves: no dial-back
        // unless the test's own settings ask for it (they come later, and
        // the last of a name wins).
        let mut all: Vec<(&str, String)> = vec![("CENTRAL_DIAL_BACK", "false".to_owned())];
        all.extend(env.iter().map(|(k, v)| (k.as_str(), v.clone())));
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
