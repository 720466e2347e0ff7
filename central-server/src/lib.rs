//! The peerdex central directory: who holds which content, right now.
//!
//! A tonic gRPC server implementing `peerdex.v1.Directory` (Join, Heartbeat,
//! Publish, Unpublish, Locate, Search, Leave), plus the standard
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha), so stock
//! tools such as `grpcurl` and `grpc-health-probe` work against it.
//!
//! # Design
//!
//! * **The live index is in memory** (`index`): peers, contents and names
//!   are interned into slabs addressed by `u32`, with a sorted token map
//!   (lowercased words → names) so a word-prefix search is one range scan.
//!   Locate and Search never touch the disk. About 250 MiB at a million
//!   files (`bench/README.md`).
//! * **SQLite is the durable store** (`store`; rusqlite `bundled`, WAL,
//!   schema versioned with `PRAGMA user_version` and migrated on open,
//!   `synchronous=FULL`). Every Join/Publish/Unpublish/Leave and every lease
//!   expiry is one transaction, committed on the blocking pool *before* the
//!   RPC is acknowledged and before the index changes, so an acknowledged
//!   change survives `kill -9`. Heartbeats touch only memory. SQLite was
//!   chosen over redb because the durable part is relational (peers, files,
//!   holdings) and needs no full-text engine: search runs on the in-memory
//!   token map, so FTS5 is not used.
//! * **Restart**: everything is bulk-loaded with prepared statements (the
//!   file read through a memory map, the token map and the file id table
//!   built on other threads meanwhile) and every known peer gets one fresh
//!   lease (grace) to heartbeat again.
//! * **Leases**: Join returns a session token (only its BLAKE3 hash is kept);
//!   Heartbeat/Publish/Unpublish/Leave must carry it as
//!   `authorization: Bearer <token>`, and so must a re-Join of a peer whose
//!   lease is still live — nobody can act for, or hijack, a live peer. After
//!   expiry anyone may join with that id. A sweeper task removes expired
//!   peers; until it runs, expired peers are already filtered from answers.
//! * **Bounds** ([`Limits`]): decoded message size (RESOURCE_EXHAUSTED),
//!   name length (INVALID_ARGUMENT), entries per Join/Publish/Unpublish and
//!   per peer (RESOURCE_EXHAUSTED), results per search page and holders per
//!   located file (silently clamped to the maximum).
//! * **Under abuse** (issue 16): rate limits per source address (Join,
//!   Search) and per peer (Publish/Unpublish, and Search when the call
//!   names its peer), token buckets with a burst of 10 seconds' worth
//!   (`peerdex_common::limit`; RESOURCE_EXHAUSTED naming the setting, `retry-after`
//!   metadata); quotas on live peers per source address and holdings in
//!   total. A search costs at most `CENTRAL_SEARCH_BUDGET` units of work
//!   and runs off the async workers; the index is behind a fair read-write
//!   lock, heartbeats take its read side, and bulk changes apply in steps
//!   that hand the lock over (see `service`). Measured in
//!   `bench/README.md` (issue 16).
//!
//! # Answers worth knowing
//!
//! * Locate of an unknown id or name is OK with an empty `files` list, as is
//!   Locate of a content whose holders all expired.
//! * Locate by name is case-sensitive and exact; it answers every content
//!   carrying that name, most-held first, at most [`Limits::max_page`] of
//!   them and at most half of `max_message_bytes` of encoded answer.
//! * Search is case-insensitive; every query word must be a prefix of a word
//!   of the name. Hits are `(name, file id)` pairs ranked by live holders of
//!   the content, then name. A limit above [`Limits::max_page`] is clamped.
//!   The rarest word drives the search; at most
//!   [`Limits::max_search_matches`] matches are ranked and at most
//!   [`Limits::search_budget`] units of work are spent, so a one-letter
//!   query answers quickly but partially, with `truncated = true`.
//! * Heartbeat of an unknown or expired peer is OK with `rejoin = true`;
//!   Publish/Unpublish of one is FAILED_PRECONDITION ("join again").
//! * Join and Publish apply what they can: an entry with a malformed id or
//!   name, or with a size that contradicts the same peer's claim for that
//!   id (earlier in the request, or already held), is listed in `refused`
//!   with the reason, and every other entry is applied. The call fails only
//!   for what concerns all of it (peer id, URL, token, entry counts, or more
//!   refusals than fit in an answer).
//! * The directory keeps no manifest, and sizes are claims: each holder's
//!   claim is kept, every claimant is a holder, and Locate and Search answer
//!   the size claimed by the most live holders (ties: the smaller). A peer
//!   lying about a size can mislabel a file until honest holders outnumber
//!   it; it cannot keep them out, and downloaders check sizes against the
//!   manifests holders serve.
//!
//! # Layout
//!
//! * `lib.rs` — [`run`]: load the index, serve, shut down.
//! * `config/` — [`Config`], [`Limits`], their defaults, bounds and
//!   validation, and [`Args`]: the flags in sections that fill them.
//! * `tls` — [`TlsFiles`]: the certificate and key of the gRPC port.
//! * `service` — the gRPC service: parsing, auth, write ordering.
//! * `index/` — the in-memory index (tokenizer, slabs and key → handle
//!   tables, compact lists and words, page cursor, the bulk load used at
//!   restart).
//! * `store` — SQLite.
//! * `error` — [`Error`], mapped to a gRPC status at the edge.
//! * `metrics` — the Prometheus metrics on `CENTRAL_METRICS_ADDR`.
//! * `oversize` — maps tonic's oversized-message error to RESOURCE_EXHAUSTED.
//! * `main.rs` — flags/env/`.env`, signals, then [`run`].

mod audit;
pub mod config;
mod error;
mod etcd;
mod identity;
mod index;
mod leader;
mod metrics;
mod network;
mod oversize;
mod replication;
mod service;
mod store;
mod tls;

use std::future::Future;
use std::time::Duration;

use peerdex_proto::v1::{self, directory_server::DirectoryServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use config::{Args, Config, ConfigError, Limits};
pub use error::{Error, RETRY_AFTER, Result};
/// File name of the database inside [`Config::data_dir`] (tests open it to
/// check that an acknowledged change is already committed).
pub use store::DB_FILE;
pub use tls::{TlsFiles, read_ca_file};
/// Read TLS files the way the central does (`CENTRAL_TLS_*`).
pub mod tls_files {
    pub use crate::tls::{from_settings, load};
}

use service::{Backend, DirectoryService, Secrets};

/// How long in-flight calls may take to finish after shutdown is requested.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve the directory on `listener` until `shutdown` completes.
///
/// Loads the index from `config.data_dir` first (peers get one lease of
/// grace), then serves Directory, health and reflection. On shutdown it
/// stops accepting, lets in-flight calls finish (at most
/// [`DRAIN_TIMEOUT`]), stops the sweeper and closes the database.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    run_with_metrics(listener, None, config, shutdown).await
}

/// [`run`], and with `metrics` also serve Prometheus metrics at `/metrics`
/// on that listener (plain HTTP; `CENTRAL_METRICS_ADDR`). Without it no
/// recorder exists and nothing is measured.
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let started = std::time::Instant::now();
    let name = config.name.clone().unwrap_or_else(|| default_name(addr));
    let recorder = metrics
        .as_ref()
        .map(|_| std::sync::Arc::new(metrics::Metrics::new()));
    let cancel = CancellationToken::new();
    let mut background = Vec::new();
    let directory = match &config.etcd_endpoints {
        None => {
            let dir = config.data_dir.clone();
            let ttl = config.lease_ttl;
            let (store, index, pins) = tokio::task::spawn_blocking(move || -> Result<_> {
                let store = store::Store::open(&dir)?;
                // Grace is counted from the end of the load.
                let mut index = store.load(tokio::time::Instant::now())?;
                index.renew_all(tokio::time::Instant::now() + ttl);
                let pins = store.pins()?;
                Ok((store, index, pins))
            })
            .await??;
            let network = match &config.join_secret {
                Some(secret) => Some(network::Network::open(
                    secret,
                    &config.data_dir,
                    config.lease_ttl,
                )?),
                None => None,
            };
            let secrets = Secrets {
                nonces: identity::Nonces::new(),
                network,
            };
            let d = DirectoryService::new(
                Backend::Sqlite(store),
                index,
                &config,
                recorder,
                secrets,
                leader::Leadership::alone(&name),
            )?;
            d.load_pins(pins);
            d
        }
        Some(endpoints) => {
            let etcd =
                std::sync::Arc::new(etcd::Etcd::connect(endpoints, &config.etcd_prefix).await?);
            let secrets = shared_secrets(&etcd, &config).await?;
            let leadership = leader::Leadership::new(&name);
            let d = DirectoryService::new(
                Backend::Etcd(etcd.clone()),
                index::Index::new(),
                &config,
                recorder,
                secrets,
                leadership.clone(),
            )?;
            let revision = d.load_from_etcd().await?;
            tracing::info!(endpoints = %etcd.endpoints(), prefix = %config.etcd_prefix, revision,
                "the directory is on etcd; following its changes");
            background.push(tokio::spawn(d.clone().follow_loop(cancel.clone())));
            background.push(tokio::spawn(leadership.run(
                etcd.waiting_client(),
                etcd.key("election"),
                leader::election_ttl(config.lease_ttl),
                cancel.clone(),
            )));
            background.push(tokio::spawn(d.clone().leader_chores(cancel.clone())));
            d
        }
    };
    let stats = directory.stats();

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<DirectoryServer<DirectoryService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let sweeper = tokio::spawn(directory.clone().sweep_loop(cancel.clone()));
    background.push(tokio::spawn(directory.clone().plan_loop(cancel.clone())));
    let metrics_task = match metrics {
        Some(l) => {
            let maddr = l.local_addr()?;
            tracing::info!(addr = %maddr, "metrics at http://{maddr}/metrics");
            Some(tokio::spawn(serve_metrics(
                l,
                directory.clone(),
                cancel.clone(),
            )))
        }
        None => None,
    };

    tracing::info!(
        %addr,
        peers = stats.peers,
        files = stats.files,
        names = stats.names,
        load_ms = started.elapsed().as_millis() as u64,
        tls = config.tls.is_some(),
        central = %name,
        store = if config.etcd_endpoints.is_some() { "etcd" } else { "sqlite" },
        "central-server listening on {addr}"
    );

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let draining = directory.clone();
    let reporter = health_reporter.clone();
    let on_etcd = config.etcd_endpoints.is_some();
    let drain = config
        .drain
        .unwrap_or(config.heartbeat_interval + Duration::from_secs(1))
        .min(DRAIN_TIMEOUT);
    let signal = async move {
        shutdown.await;
        // Streams never finish by themselves: end them, or the server
        // would wait for them.
        draining.end_streams();
        if on_etcd {
            // Other centrals serve the same directory: tell our peers to
            // move there, and give them a heartbeat to hear it.
            tracing::info!("shutting down: telling peers to move to another central");
            draining.drain();
            reporter
                .set_not_serving::<DirectoryServer<DirectoryService>>()
                .await;
            draining.drained(drain).await;
        }
        tracing::info!("shutting down: no new connections, draining in-flight calls");
        let _ = stopping_tx.send(());
    };
    let mut server = Server::builder();
    if let Some(tls) = &config.tls {
        server = server.tls_config(tls::server_config(tls))?;
    }
    let serve = server
        .layer(oversize::OversizeLayer)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            DirectoryServer::new(directory.clone())
                .max_decoding_message_size(config.limits.max_message_bytes)
                .max_encoding_message_size(config.limits.max_message_bytes),
        )
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
    let drain_deadline = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        r = serve => r.map_err(Error::from),
        () = drain_deadline => {
            tracing::warn!("in-flight calls did not finish within {DRAIN_TIMEOUT:?}; closing anyway");
            Ok(())
        }
    };

    cancel.cancel();
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    for t in background {
        let _ = t.await;
    }
    if let Err(e) = sweeper.await {
        tracing::warn!(error = %e, "sweeper task failed");
    }
    directory.close().await?;
    tracing::info!("database closed; central-server stopped");
    served
}

/// `<host>:<port>`: a central's name when `CENTRAL_NAME` is not set.
fn default_name(addr: std::net::SocketAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= config::MAX_NAME_LEN - 6
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        })
        .unwrap_or_else(|| "central".into());
    format!("{host}:{}", addr.port())
}

/// The nonce key and (in a private network) the network key, shared by
/// every central of a directory on etcd: the first to start makes them.
async fn shared_secrets(etcd: &etcd::Etcd, config: &Config) -> Result<Secrets> {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    let nonce_key = etcd
        .get_or_create("secrets/nonce", rand::random::<[u8; 32]>().to_vec())
        .await?;
    let nonce_key: [u8; 32] = nonce_key
        .try_into()
        .map_err(|_| Error::Corrupt("etcd: secrets/nonce is not 32 bytes".into()))?;
    let network = match &config.join_secret {
        Some(secret) => {
            let fresh = ed25519_dalek::SigningKey::from_bytes(&rand::random())
                .to_pkcs8_der()
                .map_err(|e| Error::Internal(format!("cannot encode a key: {e}")))?;
            let der = etcd
                .get_or_create("secrets/network", fresh.as_bytes().to_vec())
                .await?;
            let key = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
                .map_err(|e| Error::Corrupt(format!("etcd: secrets/network: {e}")))?;
            Some(network::Network::with_key(secret, key, config.lease_ttl))
        }
        None => None,
    };
    Ok(Secrets {
        nonces: identity::Nonces::with_key(nonce_key),
        network,
    })
}

/// `GET /metrics`: the directory's figures in the Prometheus text format.
async fn metrics_page(
    axum::extract::State(dir): axum::extract::State<DirectoryService>,
) -> impl axum::response::IntoResponse {
    use axum::http::header;
    let text = dir.render_metrics().unwrap_or_default();
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
}

/// Serve `/metrics` on `listener` until `cancel`, folding histogram samples
/// into buckets every few seconds meanwhile.
async fn serve_metrics(
    listener: TcpListener,
    directory: DirectoryService,
    cancel: CancellationToken,
) {
    let upkeep = {
        let (directory, cancel) = (directory.clone(), cancel.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Some(m) = directory.metrics() {
                    m.upkeep();
                }
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_page))
        .with_state(directory);
    let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.clone().cancelled_owned());
    let (served, ()) = tokio::join!(serve.into_future(), upkeep);
    if let Err(e) = served {
        tracing::warn!(error = %e, "metrics listener failed");
    }
}
