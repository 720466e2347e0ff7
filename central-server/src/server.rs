//! The central's process: open the directory, serve gRPC (and metrics),
//! drain and shut down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use peerdex_proto::v1::{self, directory_server::DirectoryServer, link_server::LinkServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::admission::Admission;
use crate::config::Config;
use crate::directory::{Directory, Opened};
use crate::error::{Error, Result};
use crate::link::Links;
use crate::link::service::LinkService;
use crate::link::summary::MAX_FILTER_BYTES;
use crate::metering::MeteringLayer;
use crate::oversize::OversizeLayer;
use crate::replication::Replicator;
use crate::rpc::{DirectoryService, Parts};
use crate::tls;

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
        .map(|_| Arc::new(crate::metrics::Metrics::new()));
    let cancel = CancellationToken::new();
    let Opened {
        directory: dir,
        nonces,
        leadership,
        tasks: mut background,
    } = Directory::open(&config, &name, &cancel).await?;
    let admission = Arc::new(Admission::new(
        &config.limits,
        config.heartbeat_interval,
        recorder.clone(),
    ));
    let replicator = Arc::new(Replicator::new(
        dir.clone(),
        leadership.clone(),
        &config,
        recorder.clone(),
    )?);
    let links = Links::new(
        &config.links,
        config.tls.as_ref(),
        &name,
        config.join_secret.is_some(),
        dir.clone(),
        recorder.clone(),
    );
    let directory = DirectoryService::new(Parts {
        dir: dir.clone(),
        admission: admission.clone(),
        replicator: replicator.clone(),
        nonces,
        leadership: leadership.clone(),
        metrics: recorder.clone(),
        lease_ttl: config.lease_ttl,
        heartbeat_interval: config.heartbeat_interval,
        links: links.clone(),
        reach: Arc::new(crate::reach::Reachability::new(
            config.dial_back,
            &config.peer_ca,
        )?),
    });
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

    let on_sweep = {
        let recorder = recorder.clone();
        move |n: usize, took: Duration| {
            if let Some(m) = &recorder {
                m.swept(n, took);
            }
        }
    };
    let sweeper = tokio::spawn(dir.clone().upkeep_loop(
        leadership.clone(),
        on_sweep,
        cancel.clone(),
    ));
    background.push(tokio::spawn(replicator.clone().plan_loop(cancel.clone())));
    background.push(tokio::spawn(links.clone().refresh_loop(cancel.clone())));
    background.push(tokio::spawn(purge_loop(
        admission.clone(),
        directory.clone(),
        (config.lease_ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5)),
        cancel.clone(),
    )));
    let metrics_task = match metrics {
        Some(l) => {
            let maddr = l.local_addr()?;
            tracing::info!(addr = %maddr, "metrics at http://{maddr}/metrics");
            Some(tokio::spawn(serve_metrics(
                l,
                directory.clone(),
                recorder.clone(),
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
        store = dir.store_name(),
        "central-server listening on {addr}"
    );

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let draining = directory.clone();
    let reporter = health_reporter.clone();
    let can_drain = directory.can_drain();
    let drain = config
        .drain
        .unwrap_or(config.heartbeat_interval + Duration::from_secs(1))
        .min(DRAIN_TIMEOUT);
    let leaving = links.clone();
    let signal = async move {
        shutdown.await;
        // Linked islands stop asking this central at once (at most a
        // second).
        leaving.leave().await;
        // Streams never finish by themselves: end them, or the server
        // would wait for them.
        draining.end_streams();
        if can_drain {
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
    let router = Server::builder()
        .layer(MeteringLayer(recorder.clone()))
        .layer(OversizeLayer)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            DirectoryServer::new(directory.clone())
                .max_decoding_message_size(config.limits.max_message_bytes)
                .max_encoding_message_size(config.limits.max_message_bytes),
        )
        .add_service(
            LinkServer::new(LinkService::new(links.clone(), directory.clone()))
                .max_decoding_message_size(config.limits.max_message_bytes)
                .max_encoding_message_size(MAX_FILTER_BYTES + (1 << 20)),
        );
    // With TLS, our own acceptor: it asks linked centrals for their
    // certificate (see `tls::rustls_config`).
    use futures_util::future::Either;
    let serve = match &config.tls {
        Some(tls) => {
            let incoming = tls::incoming(
                listener,
                tls::rustls_config(tls, links.any())?,
                cancel.clone(),
            );
            Either::Left(router.serve_with_incoming_shutdown(incoming, signal))
        }
        None => Either::Right(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )),
    };
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
    dir.close().await?;
    tracing::info!("database closed; central-server stopped");
    served
}

/// `<host>:<port>`: a central's name when `CENTRAL_NAME` is not set.
fn default_name(addr: std::net::SocketAddr) -> String {
    let host = crate::config::host()
        .filter(|h| {
            h.len() <= crate::config::MAX_NAME_LEN - 6
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        })
        .unwrap_or_else(|| "central".into());
    format!("{host}:{}", addr.port())
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
    metrics: Option<Arc<crate::metrics::Metrics>>,
    cancel: CancellationToken,
) {
    let upkeep = {
        let cancel = cancel.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Some(m) = &metrics {
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

/// Drop idle rate-limit buckets and old heartbeat times every `period`
/// until `cancel`.
async fn purge_loop(
    admission: Arc<Admission>,
    service: DirectoryService,
    period: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        admission.purge(tokio::time::Instant::now());
        service.forget_old_heartbeats();
    }
}
