//! The peerdex peer daemon (PServer).
//!
//! A PServer shares the files of one folder with the network, finds other
//! files through a neighbour PServer and the central directory, and downloads
//! them directly from the peers that hold them, verified with BLAKE3.
//!
//! Layout:
//! * [`config`] — flags / env / `.env` into one typed [`Config`].
//! * [`store`] — the share folder and the data folder (peer id, hash cache, temp files;
//!   partial downloads live in `data/partial/`, see [`download`]).
//! * [`central`] — gRPC to the central: Join, the lease loop, Publish/Unpublish, Leave.
//! * [`lookup`] — finding files through neighbours, falling back to the central.
//! * [`download`] — download jobs: swarm chunks from several holders (HTTP Range),
//!   verify each, resume partials, store, publish.
//! * [`control_api`] — `/api/v1` for the local `peerdex` client (loopback, optional token).
//! * [`peer_api`] — `/peer/v1` for other peers: file bytes and the neighbour role.
//!
//! Two actix-web listeners share one [`Shared`] state. Outbound work (gRPC,
//! peer HTTP, download jobs) runs on the main tokio runtime via
//! [`Shared::on_main`], so its connection pools outlive the HTTP workers.

pub mod central;
pub mod config;
pub mod control_api;
pub mod download;
pub mod error;
pub mod lookup;
pub mod peer_api;
pub mod rate;
pub mod store;
pub mod testkit;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use peerdex_proto::PeerId;
use tokio_util::sync::CancellationToken;

pub use config::{Args, Config};
use error::Error;

/// State shared by both listeners and the background tasks.
pub struct Shared {
    pub config: Config,
    pub peer_id: PeerId,
    pub api_addr: SocketAddr,
    pub store: store::Store,
    pub central: central::Central,
    pub lookup: lookup::Lookup,
    pub uploads: peer_api::UploadSlots,
    pub jobs: download::Jobs,
    pub http: reqwest::Client,
    pub upload_limit: rate::RateLimiter,
    pub download_limit: rate::RateLimiter,
    rt: tokio::runtime::Handle,
}

impl Shared {
    /// Run `f` on the main runtime and wait for it (see the crate docs).
    pub async fn on_main<T, F, Fut>(self: &Arc<Self>, f: F) -> error::Result<T>
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.rt
            .spawn(f(self.clone()))
            .await
            .map_err(|e| Error::Internal(format!("background task failed: {e}")))?
    }

    fn load(&self) -> central::Load {
        central::Load {
            active_uploads: self.uploads.active(),
            free_upload_slots: self.uploads.free(),
        }
    }
}

/// Run a PServer on already-bound listeners until `shutdown` completes, then
/// stop accepting, let in-flight uploads finish (at most `config.drain`),
/// leave the central and remove temp files.
pub async fn run(
    api: std::net::TcpListener,
    peer: std::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let api_addr = api.local_addr()?;
    let peer_addr = peer.local_addr()?;
    let store = store::Store::open(&config.share_dir, &config.data_dir).with_context(|| {
        format!(
            "cannot open PSERVER_SHARE_DIR {} / PSERVER_DATA_DIR {}",
            config.share_dir.display(),
            config.data_dir.display()
        )
    })?;
    let peer_id = store
        .peer_id()
        .context("cannot read or create the peer id in PSERVER_DATA_DIR")?;
    let store = tokio::task::spawn_blocking(move || store.rescan().map(|_| store))
        .await?
        .context("cannot read PSERVER_SHARE_DIR")?;
    let central = central::Central::new(
        &config.central_url,
        peer_id,
        config.public_url.clone(),
        store.data_dir(),
    )?;
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("peerdex-pserver/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let (files, bytes) = store.totals();
    let shared = Arc::new(Shared {
        lookup: lookup::Lookup::new(&config.neighbours, http.clone(), config.neighbour_timeout),
        uploads: peer_api::UploadSlots::new(config.max_uploads),
        jobs: download::Jobs::default(),
        upload_limit: rate::RateLimiter::new(config.max_upload_bps),
        download_limit: rate::RateLimiter::new(config.max_download_bps),
        peer_id,
        api_addr,
        store,
        central,
        http,
        rt: tokio::runtime::Handle::current(),
        config,
    });
    tracing::info!(%peer_id, files, bytes, api = %api_addr, peer = %peer_addr, public_url = %shared.config.public_url, "pserver started");

    let cancel = CancellationToken::new();
    let lease = tokio::spawn({
        let (s, c) = (shared.clone(), cancel.clone());
        async move {
            s.central
                .lease_loop(|| s.store.inventory(), || s.load(), c)
                .await
        }
    });
    let rescan = tokio::spawn(rescan_loop(shared.clone(), cancel.clone()));
    download::resume_partials(&shared);

    let data = web::Data::from(shared.clone());
    let api_data = data.clone();
    let api_srv = HttpServer::new(move || {
        App::new()
            .app_data(api_data.clone())
            .app_data(json_config())
            .app_data(query_config())
            .wrap(middleware::from_fn(control_api::guard))
            .configure(control_api::routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(api)?
    .run();
    let drain = shared.config.drain.as_secs();
    let peer_srv = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(query_config())
            .configure(peer_api::routes)
    })
    .workers(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4)))
    .disable_signals()
    .shutdown_timeout(drain)
    .listen(peer)?
    .run();
    let (api_handle, peer_handle) = (api_srv.handle(), peer_srv.handle());
    let api_task = tokio::spawn(api_srv);
    let peer_task = tokio::spawn(peer_srv);

    shutdown.await;
    tracing::info!(
        drain_secs = drain,
        "shutting down: no new requests; letting uploads finish"
    );
    // Jobs stop but keep their partial downloads, which resume at the next start.
    shared.jobs.shutdown(Duration::from_secs(5)).await;
    // Stop the control API and the peer API; the peer API drains in-flight uploads.
    tokio::join!(api_handle.stop(true), peer_handle.stop(true));
    let _ = tokio::join!(api_task, peer_task);
    cancel.cancel();
    let _ = tokio::join!(lease, rescan);
    shared.central.leave().await;
    let tmp = shared.store.data_dir().join("tmp");
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    let _ = tokio::fs::create_dir_all(&tmp).await;
    tracing::info!("pserver stopped");
    Ok(())
}

/// Publish files dropped into the share folder and withdraw removed ones.
async fn rescan_loop(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.rescan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = shared.clone();
        let changes = match tokio::task::spawn_blocking(move || s.store.rescan()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot rescan the share folder");
                continue;
            }
            Err(_) => continue,
        };
        if changes.is_empty() {
            continue;
        }
        tracing::info!(
            added = changes.added.len(),
            removed = changes.removed.len(),
            "share folder changed"
        );
        shared.central.unpublish(&changes.removed).await;
        shared.central.publish(&changes.added).await;
    }
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(64 * 1024)
        .error_handler(|e, _| Error::InvalidArgument(format!("bad JSON body: {e}")).into())
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _| Error::InvalidArgument(format!("bad query string: {e}")).into())
}

/// Resolves on Ctrl+C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
