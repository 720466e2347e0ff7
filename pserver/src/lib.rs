//! The peerdex peer daemon (PServer).
//!
//! A PServer shares the files of one folder with the network, finds other
//! files through a neighbour PServer and the central directory, and downloads
//! them directly from the peers that hold them, verified with BLAKE3.
//!
//! Layout (one folder a concern; `lib.rs` wires the parts together and
//! `main.rs` only parses and starts):
//! * `config/` — flags / env / `.env` into one typed [`Config`] in sections
//!   (`args` the command line, `centrals` the list of centrals); every
//!   default once, in [`config::defaults`].
//! * `control/` — `/api/v1` for the local `peerdex` client and the web UI,
//!   one file per resource (`files`, `downloads`, `pins`, `search`,
//!   `status`, `wants`), `guard` (`Host`, `Origin`, bearer token and scope),
//!   `openapi`, `webui` (the page, script and style, compiled in, at `/`)
//!   and [`tokens`] (client tokens: EdDSA JWTs with a scope, signed with
//!   `api.key`).
//! * `peer/` — `/peer/v1` for other peers: `serve` (bytes verified chunk by
//!   chunk before any is sent; a rotten copy is withdrawn), `conditional`
//!   (ETag, 304/412, If-Range, cache policy), `uploads` (slots, rate cap,
//!   the slow-reader cut), `limits` (per-source connections and
//!   neighbour-role requests), `network` (a private network's credentials:
//!   ours on every request to other peers, the check of theirs).
//! * `link/` — the directory link: `failover` between the centrals of
//!   `PSERVER_CENTRAL_URL`, `lease` (Join, Heartbeat, the lease loop,
//!   Leave), `outbox` (Publish/Unpublish in order while no central
//!   answers), `declines` (replica declines on their way), `queries`
//!   (Locate, Search, pins, keys), `revocations` (a private network's
//!   departures), `lookup` (neighbours first, then the central).
//! * `store/` — the share folder tree (`scan`: what is shared; `cache`:
//!   the hash cache, streamed to and from disk; `watch`: changes by
//!   notification; `hashing`: new files hashed on a few threads, with
//!   progress),
//!   the data folder (peer id, temp files), `replicas` (the replica space,
//!   `data/replicas/`), `space` (the reserve `PSERVER_MIN_FREE_BYTES`,
//!   clear errors on a full disk).
//! * `private/` — private files: the STREAM encryption (`crypt`: AES-256-GCM
//!   for ticket version 2, ChaCha20-Poly1305 for version 1), the
//!   keys at rest and the private folder (`vault`); their ciphertexts are
//!   the store's (`store/blobs`), fetched by `download/private`, reached
//!   through `control/private`.
//! * `download/` — download jobs (`start`, `run`, `fetch`, `jobs`), the
//!   replica worker (`replicas`: the directory's FETCH and DROP tasks, which
//!   the lease loop sends it over a channel) and the verified engine
//!   (`engine/`: swarm, chunks, manifests, partial files).
//! * `wants/` — wanted files: the list in the data folder (`book`), the
//!   directory's Watch stream kept open across failover (`watch`), what
//!   an event does (`react`: notify, or start the normal download), the
//!   `PSERVER_NOTIFY_URL` webhook (`notify`).
//! * [`tls`] — certificates of our listeners, roots trusted for the central
//!   and peers (system + `PSERVER_CA_FILE`), handshake failures in plain words.
//! * `error` — the one HTTP error type, with a typed reason per class.
//! * `identity` — this peer's Ed25519 key (`peer.key`), which the directory
//!   binds to its id; secrets are written 0600.
//! * `rate` — the token bucket of the upload and download rate caps.
//! * `rt` — the main runtime as a handle: actix-web serves from worker
//!   threads with runtimes of their own, so outbound work (gRPC, peer HTTP,
//!   download jobs) runs on the main runtime and its connection pools
//!   outlive the HTTP workers (see `rt` for why actix cannot use it).
//! * `metrics` — this PServer's Prometheus metrics (`GET /metrics` on the
//!   control API, same guard), on a recorder of its own: several PServers
//!   in one test process keep their own figures.
//!
//! Each part is a small cheap-to-clone handle (`Arc<Store>`,
//! `Arc<Central>`, `Arc<Lookup>`, `Downloads`, `Uploads`, `MainRt`); the
//! two actix-web apps get the handles their handlers take as app data, and
//! background tasks own the handles they use. No module reaches back into
//! this file.

pub mod config;
mod control;
mod download;
mod error;
mod identity;
mod link;
mod metrics;
mod peer;
mod private;
mod rate;
mod relay;
mod rt;
mod store;
pub mod tls;
mod wants;

pub use control::tokens;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, middleware, web};
use tokio_util::sync::CancellationToken;

pub use config::{Args, Command, Config, ConfigError, TokenCommand};
use error::Error;

/// Run a PServer on already-bound listeners until `shutdown` completes, then
/// stop accepting, let in-flight uploads finish (at most `config.peer_api.drain`),
/// leave the central and remove temp files.
pub async fn run(
    api: std::net::TcpListener,
    peer: std::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let api_addr = api.local_addr().map_err(StartError::Listener)?;
    config.check_network()?;
    let peer_addr = peer.local_addr().map_err(StartError::Listener)?;
    let store = store::Store::open(&config.share_dir, &config.data_dir).map_err(|source| {
        StartError::OpenStore {
            share_dir: config.share_dir.clone(),
            data_dir: config.data_dir.clone(),
            source,
        }
    })?;
    let store = store.with_space(store::space::Space::new(
        config.store.min_free_bytes,
        config.store.max_partial_bytes,
    ));
    let peer_id = store.peer_id().map_err(StartError::PeerId)?;
    let key = identity::load_or_create(store.data_dir()).map_err(StartError::PeerKey)?;
    let api_key = control::tokens::load_key(store.data_dir()).map_err(StartError::ApiKey)?;
    let quota = config.replicas.quota_bytes;
    // Watching before the first scan: nothing changed meanwhile is missed.
    let watch = store::watch::ShareWatch::start(store.share_dir());
    let store = tokio::task::spawn_blocking(move || {
        let held = store.load_replicas().map_err(StartError::ReplicaSpace)?;
        store.load_blobs().map_err(StartError::PrivateBlobs)?;
        if held > 0 || quota > 0 {
            tracing::info!(
                replicas = held,
                bytes = store.replica_bytes(),
                quota,
                "replica space"
            );
        }
        store.rescan().map_err(StartError::ShareDir)?;
        Ok::<_, StartError>(store)
    })
    .await
    .map_err(StartError::Task)??;
    let vault = Arc::new(private::Vault::open(
        store.data_dir(),
        &config.private_dir,
        store.share_dir(),
        config.public_url.clone(),
    )?);
    let network = Arc::new(peer::network::Network::new(config.link.join_secret.clone()));
    let relay_offer = if config.relay.enabled {
        config.relay.max_peers
    } else {
        0
    };
    let reach = Arc::new(relay::Reach::new(config.relay.reachability, relay_offer));
    let central = link::Central::new(
        &config.link.centrals,
        peer_id,
        key.clone(),
        network.clone(),
        config.public_url.clone(),
        store.data_dir(),
        &config.ca_roots,
        config.replicas.quota_bytes,
        reach.clone(),
    )?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls::http_client_config(&config.ca_roots))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("peerdex-pserver/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(StartError::HttpClient)?;
    let notify_http = http.clone();
    let http = peer::network::PeerHttp::new(http, network.clone());
    let (files, bytes) = store.totals();
    let rt = rt::MainRt::current();
    let store = Arc::new(store);
    let central = Arc::new(central);
    let metrics = metrics::Metrics::new();
    let cancel = CancellationToken::new();
    // Peers behind NAT: the thread that answers tunnelled requests with
    // our peer API, callbacks (both sides), and the relay side.
    let tunnels = relay::TunnelServer::start().map_err(StartError::Listener)?;
    let tunnel_tls = Arc::new(tls::http_client_config(&config.ca_roots));
    let callbacks = relay::Callbacks::start(
        relay::callback::Parts {
            peer_id,
            public_url: config.public_url.clone(),
            reach: reach.clone(),
            http: http.clone(),
            server: tunnels.clone(),
            network: network.clone(),
            tls: tunnel_tls.clone(),
            metrics: metrics.clone(),
            rt: rt.clone(),
        },
        cancel.clone(),
    )
    .await
    .map_err(StartError::Listener)?;
    let http = http.with_callbacks(callbacks.clone());
    let relay = Arc::new(relay::Relay::new(
        &config.relay,
        central.clone(),
        metrics.clone(),
    ));
    let lookup = Arc::new(link::lookup::Lookup::new(
        &config.link.neighbours,
        http.clone(),
        config.link.neighbour_timeout,
        metrics.clone(),
    ));
    let uploads = peer::uploads::Uploads::new(
        config.peer_api.max_uploads,
        config.peer_api.max_upload_bps,
        peer::uploads::Rules {
            min_bps: config.peer_api.upload_min_bps,
            idle: config.peer_api.upload_idle,
        },
        metrics.clone(),
    );
    let downloads = download::Downloads::new(
        store.clone(),
        central.clone(),
        lookup.clone(),
        http,
        peer_id,
        download::Settings {
            max_sources: config.downloads.max_sources,
            stall_timeout: config.downloads.stall_timeout,
            max_download_bps: config.downloads.max_download_bps,
            metrics: metrics.clone(),
        },
        rt.clone(),
    );
    let wants = wants::Wants::open(
        &config.wants,
        store.data_dir().to_owned(),
        downloads.clone(),
        store.clone(),
        central.clone(),
        metrics.clone(),
        notify_http,
    )
    .map_err(StartError::Wants)?;
    let replicas = download::replicas::Replicas::new(
        config.replicas.quota_bytes,
        store.clone(),
        central.clone(),
        downloads.clone(),
        metrics.clone(),
    );
    tracing::info!(%peer_id, files, bytes, api = %api_addr, peer = %peer_addr, public_url = %config.public_url,
        tls = config.tls.is_some(), api_tls = config.api_tls, "pserver started");
    if !api_addr.ip().is_loopback() && !config.api_tls {
        tracing::warn!(api = %api_addr, "the control API is served off loopback over plaintext \
            (PSERVER_TRUSTED_LAN): its token and every file it sends cross the network unencrypted");
    }
    let tls_config = |on: bool| -> Result<Option<rustls::ServerConfig>, tls::PemFileError> {
        match (&config.tls, on) {
            (Some(t), true) => Ok(Some(t.server_config()?)),
            _ => Ok(None),
        }
    };
    let (api_tls, peer_tls) = (tls_config(config.api_tls)?, tls_config(true)?);

    // Replica tasks go from the lease loop to the replica worker, which
    // stops when the lease loop has ended.
    let (task_tx, task_rx) = tokio::sync::mpsc::channel(8);
    let replica_worker = tokio::spawn(replicas.clone().run(task_rx));
    let lease = tokio::spawn({
        let (central, store, uploads, metrics, c) = (
            central.clone(),
            store.clone(),
            uploads.clone(),
            metrics.clone(),
            cancel.clone(),
        );
        async move {
            let load = || link::Load {
                active_uploads: uploads.active(),
                free_upload_slots: uploads.free(),
            };
            central
                .lease_loop(|| store.inventory(), load, task_tx, metrics, c)
                .await
        }
    });
    // A private network: departures pushed by the directory.
    let revocations = network.is_private().then(|| {
        let (central, c) = (central.clone(), cancel.clone());
        tokio::spawn(async move { central.revocations_loop(c).await })
    });
    // Wanted files: the directory's Watch stream.
    let wants_watch = tokio::spawn(wants.clone().watch_loop(cancel.clone()));
    let rescan_now = Arc::new(tokio::sync::Notify::new());
    let rescan = tokio::spawn(rescan_loop(
        store.clone(),
        central.clone(),
        watch,
        config.store.rescan_interval,
        rescan_now.clone(),
        cancel.clone(),
    ));
    let withdraw = peer::serve::Withdraw {
        store: store.clone(),
        central: central.clone(),
        rt: rt.clone(),
        rescan_now,
    };
    downloads.resume_partials();

    let control = control::Control {
        api_addr,
        api_token: config.control.api_token.clone(),
        max_upload_bytes: config.control.max_upload_bytes,
        peer_id,
        public_url: config.public_url.clone(),
        tokens: Arc::new(control::tokens::ClientTokens::new(
            &api_key,
            &peer_id.to_string(),
        )),
    };
    let api_srv = HttpServer::new({
        let (
            store,
            central,
            lookup,
            uploads,
            downloads,
            rt,
            withdraw,
            metrics,
            replicas,
            wants,
            vault,
            relay,
            reach,
        ) = (
            store.clone(),
            central.clone(),
            lookup.clone(),
            uploads.clone(),
            downloads.clone(),
            rt.clone(),
            withdraw.clone(),
            metrics.clone(),
            replicas.clone(),
            wants.clone(),
            vault.clone(),
            relay.clone(),
            reach.clone(),
        );
        move || {
            App::new()
                .app_data(web::Data::new(control.clone()))
                .app_data(web::Data::new(withdraw.clone()))
                .app_data(web::Data::from(store.clone()))
                .app_data(web::Data::from(central.clone()))
                .app_data(web::Data::from(lookup.clone()))
                .app_data(web::Data::new(uploads.clone()))
                .app_data(web::Data::new(downloads.clone()))
                .app_data(web::Data::new(rt.clone()))
                .app_data(web::Data::new(metrics.clone()))
                .app_data(web::Data::new(replicas.clone()))
                .app_data(web::Data::new(wants.clone()))
                .app_data(web::Data::from(vault.clone()))
                .app_data(web::Data::new(relay.clone()))
                .app_data(web::Data::from(reach.clone()))
                .app_data(json_config())
                .app_data(query_config())
                .wrap(middleware::from_fn(control::guard))
                .wrap(no_store())
                .configure(control::routes)
        }
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2);
    let api_srv = match api_tls {
        Some(tls) => api_srv.listen_rustls_0_23(api, tls),
        None => api_srv.listen(api),
    }
    .map_err(StartError::Listener)?
    .run();
    let drain = config.peer_api.drain.as_secs();
    let conns = peer::limits::ConnLimit::new(config.peer_api.max_conns_per_addr);
    let neighbour_rate =
        peer::limits::NeighbourRate::new(config.peer_api.neighbour_rate, metrics.clone());
    // The peer API, on the peer port and through every tunnel we dial
    // (behind NAT: to our relay, and callbacks).
    let peer_app = {
        let (store, central, uploads, rt, relay, callbacks, network) = (
            store.clone(),
            central.clone(),
            uploads.clone(),
            rt.clone(),
            relay.clone(),
            callbacks.clone(),
            network.clone(),
        );
        move || {
            App::new()
                .app_data(web::Data::new(peer_id))
                .app_data(web::Data::new(withdraw.clone()))
                .app_data(web::Data::from(store.clone()))
                .app_data(web::Data::from(central.clone()))
                .app_data(web::Data::new(uploads.clone()))
                .app_data(web::Data::new(neighbour_rate.clone()))
                .app_data(web::Data::from(network.clone()))
                .app_data(web::Data::new(rt.clone()))
                .app_data(web::Data::new(relay.clone()))
                .app_data(web::Data::new(callbacks.clone()))
                .app_data(query_config())
                .wrap(middleware::from_fn(peer::guard))
                .wrap(no_store())
                .configure(peer::routes)
        }
    };
    // Before any tunnel can open: the attach loop starts only now.
    tunnels.set_app(peer_app.clone());
    // Behind NAT: keep a tunnel to the relay the directory assigns.
    let attach = tokio::spawn(relay::attach_loop(
        relay::Attach {
            peer_id,
            reach: reach.clone(),
            central: central.clone(),
            network: network.clone(),
            server: tunnels.clone(),
            tls: tunnel_tls,
        },
        cancel.clone(),
    ));
    let peer_srv = HttpServer::new(peer_app)
        .workers(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4)))
        .on_connect(move |io, ext| peer::limits::Conn::accept(&conns, io, ext))
        // A request head must arrive within 5 s, an idle keep-alive connection
        // is closed after 15 s, and a closing one gets 1 s to say goodbye: no
        // socket is held open by a silent client (responses: see `uploads`).
        .client_request_timeout(Duration::from_secs(5))
        .keep_alive(Duration::from_secs(15))
        .client_disconnect_timeout(Duration::from_secs(1))
        .disable_signals()
        .shutdown_timeout(drain);
    let peer_srv = match peer_tls {
        Some(tls) => peer_srv.listen_rustls_0_23(peer, tls),
        None => peer_srv.listen(peer),
    }
    .map_err(StartError::Listener)?
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
    downloads.shutdown(Duration::from_secs(5)).await;
    // Stop the control API and the peer API; the peer API drains in-flight uploads.
    tokio::join!(api_handle.stop(true), peer_handle.stop(true));
    let _ = tokio::join!(api_task, peer_task);
    cancel.cancel();
    let _ = tokio::join!(lease, rescan, replica_worker, wants_watch, attach);
    if let Some(r) = revocations {
        let _ = r.await;
    }
    central.leave().await;
    let tmp = store.data_dir().join("tmp");
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    let _ = tokio::fs::create_dir_all(&tmp).await;
    tracing::info!("pserver stopped");
    Ok(())
}

/// Why a PServer cannot start: the message names the setting or the
/// folder to look at.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A listener's socket (its address, or serving on it).
    #[error(transparent)]
    Listener(std::io::Error),
    #[error(
        "cannot open PSERVER_SHARE_DIR {} / PSERVER_DATA_DIR {}: {source}",
        share_dir.display(),
        data_dir.display()
    )]
    OpenStore {
        share_dir: std::path::PathBuf,
        data_dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read or create the peer id in PSERVER_DATA_DIR: {0}")]
    PeerId(#[source] std::io::Error),
    #[error("cannot read or create this peer's key in PSERVER_DATA_DIR: {0}")]
    PeerKey(#[source] std::io::Error),
    #[error("cannot read or create the control API's key in PSERVER_DATA_DIR: {0}")]
    ApiKey(#[source] std::io::Error),
    #[error("cannot read the replica space in PSERVER_DATA_DIR: {0}")]
    ReplicaSpace(#[source] std::io::Error),
    #[error("cannot read the ciphertexts of private files in PSERVER_DATA_DIR/private-blobs: {0}")]
    PrivateBlobs(#[source] std::io::Error),
    #[error("cannot read PSERVER_SHARE_DIR: {0}")]
    ShareDir(#[source] std::io::Error),
    #[error("cannot read the wanted files (wants.json) in PSERVER_DATA_DIR: {0}")]
    Wants(#[source] std::io::Error),
    #[error(transparent)]
    Task(tokio::task::JoinError),
    #[error(transparent)]
    Link(#[from] link::SetupError),
    /// The HTTP client for other peers cannot be built.
    #[error(transparent)]
    HttpClient(reqwest::Error),
    #[error(transparent)]
    Tls(#[from] tls::PemFileError),
    /// `PSERVER_PRIVATE_DIR` or the keys of private files.
    #[error(transparent)]
    Private(#[from] private::VaultError),
}

/// Publish files dropped into the share folder and withdraw removed ones:
/// the paths notifications name, once quiet (see `store::watch`), and
/// everything at a full rescan every `every` (the safety net), when
/// notifications overflow, or when a served file failed verification
/// (`now`, see `serve`).
async fn rescan_loop(
    store: Arc<store::Store>,
    central: Arc<link::Central>,
    watch: store::watch::ShareWatch,
    every: Duration,
    now: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    tracing::info!(notifications = watch.is_watching(), full_rescan_every = ?every,
        "watching the share folder for changes");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => None,
            _ = now.notified() => None,
            b = watch.next() => Some(b),
        };
        let s = store.clone();
        let work = move || match batch {
            Some(store::watch::Batch::Paths(paths)) => Ok(s.rescan_paths(&paths)),
            Some(store::watch::Batch::Rescan(why)) => {
                tracing::info!(why, "rescanning the whole share folder");
                s.rescan()
            }
            None => s.rescan(),
        };
        let changes = match tokio::task::spawn_blocking(work).await {
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
        central.unpublish(&changes.removed).await;
        central.publish(&changes.added).await;
    }
}

/// `Cache-Control: no-store` on every response that sets no policy of its
/// own: live state and errors are never kept by a cache.
fn no_store() -> middleware::DefaultHeaders {
    middleware::DefaultHeaders::new().add((
        actix_web::http::header::CACHE_CONTROL,
        peer::conditional::NO_STORE,
    ))
}

/// JSON bodies: at most 64 KiB (413 above), `application/json` (415
/// otherwise), and of the endpoint's schema (400 otherwise).
fn json_config() -> web::JsonConfig {
    use actix_web::error::JsonPayloadError;
    web::JsonConfig::default()
        .limit(JSON_BODY_LIMIT)
        .error_handler(|e, _| {
            match e {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    Error::TooLarge(error::TooLarge::JsonBody {
                        limit: JSON_BODY_LIMIT,
                    })
                }
                JsonPayloadError::ContentType => Error::UnsupportedMediaType,
                e => Error::InvalidArgument(error::Invalid::JsonBody(e)),
            }
            .into()
        })
}

/// Largest JSON request body of the control API (a download or pin request
/// is a few hundred bytes).
const JSON_BODY_LIMIT: usize = 64 * 1024;

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _| Error::InvalidArgument(error::Invalid::QueryString(e)).into())
}

/// Resolves on Ctrl+C or SIGTERM.
pub use peerdex_common::signal::shutdown as shutdown_signal;
