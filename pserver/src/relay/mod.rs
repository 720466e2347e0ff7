//! Peers behind NAT (issue 25): reachability, relays and callbacks, on
//! one mechanism, the reverse tunnel (`tunnel`): a peer nobody can dial
//! dials out with a WebSocket on the other side's peer API port and
//! serves HTTP/2 over it; the other side sends requests down the tunnel.
//! The unreachable side answers every request with its *own* peer API,
//! the same actix `App`, served in process over the tunnel (`serve`), so
//! Range, HEAD, ETag, a private network's credentials, verify-on-serve,
//! upload slots and rate caps work unchanged, and only `/peer/v1/...`
//! paths are ever answered (never the relay or callback endpoints, never
//! the control API).
//!
//! * `state` — what the directory said at our last Join (reachable or
//!   not, why, the relay assigned, the URL our files are listed under),
//!   what the next Join asks, and `peerdex status`'s line.
//! * `attach` — the firewalled side: keep one tunnel to the assigned relay
//!   (re-join for another when it dies, drains or refuses).
//! * `serve` — the thread that answers every tunnel we dialed (to our
//!   relay, or a callback) with our peer API.
//! * [`Relay`] (here) — the relay side (`PSERVER_RELAY=true`): accept the
//!   tunnels of the peers the directory assigned us (their attach token
//!   proves it, see `peerdex_proto::relay`), at most
//!   `PSERVER_RELAY_MAX_PEERS` (503 + Retry-After beyond), and carry
//!   `/peer/v1/relay/<peer>/<path>` down the peer's tunnel: at most
//!   `carry::MAX_REQUESTS` at once per peer, `PSERVER_RELAY_MAX_BPS` per peer,
//!   nothing stored. A tunnel that stops answering HTTP/2 pings is closed.
//! * `carry` — what both sides share: the open tunnels and their limits,
//!   the refusals, which paths may be carried and how (`forward`).
//! * `callback` — direct transfers when only the downloader is reachable:
//!   the downloader asks the holder, through its relay, to call back
//!   (`POST /peer/v1/callback` with our URL and a one-time token); the
//!   holder dials our `/peer/v1/callback/attach` and serves the same
//!   tunnel, and the download engine fetches that holder's manifest and
//!   chunks through it (a loopback gateway), so the bytes never touch the
//!   relay. A callback that fails within 3 s falls back to the relay.

mod attach;
pub(crate) mod callback;
mod carry;
mod serve;
pub(crate) mod state;
mod tunnel;

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use peerdex_proto::PeerId;
use peerdex_proto::relay::ATTACH_TOKEN_HEADER;

pub(crate) use attach::{Attach, attach_loop};
pub(crate) use callback::Callbacks;
use carry::{RelayError, Tunnels, forward, header, peer_header};
pub(crate) use serve::TunnelServer;
pub(crate) use state::Reach;

use crate::link::Central;
use crate::metrics::Metrics;

/// The relay side. Shared as `Arc<Relay>`.
pub(crate) struct Relay {
    /// `PSERVER_RELAY`.
    enabled: bool,
    max_peers: u32,
    max_bps: u64,
    tunnels: Tunnels,
    central: Arc<Central>,
    metrics: Metrics,
}

impl Relay {
    pub(crate) fn new(
        config: &crate::config::RelayConfig,
        central: Arc<Central>,
        metrics: Metrics,
    ) -> Self {
        Self {
            enabled: config.enabled,
            max_peers: config.max_peers,
            max_bps: config.max_bps,
            tunnels: Tunnels::default(),
            central,
            metrics,
        }
    }

    /// Peers attached now (`peerdex_pserver_relay_peers`).
    pub(crate) fn peers(&self) -> usize {
        self.tunnels.len()
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }
}

/// The relay and callback endpoints, inside the peer API's `/peer/v1`.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/relay/attach", web::get().to(relay_attach))
        .route("/relay/{peer}/{tail:.*}", web::route().to(relay_forward))
        .route("/callback", web::post().to(callback::asked))
        .route("/callback/attach", web::get().to(callback::attach));
}

/// `GET /peer/v1/relay/attach` (WebSocket): a peer the directory assigned
/// us opens its tunnel.
async fn relay_attach(
    relay: web::Data<Arc<Relay>>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, RelayError> {
    if !relay.enabled {
        return Err(RelayError::NotARelay);
    }
    let peer = peer_header(&req)?;
    let token = header(&req, ATTACH_TOKEN_HEADER)?;
    let key = relay.central.session_key().ok_or(RelayError::NotJoined)?;
    peerdex_proto::relay::check_attach_token(
        &key,
        &peer,
        token,
        peerdex_proto::network::unix_now(),
    )?;
    if relay.tunnels.len() >= relay.max_peers as usize && !relay.tunnels.contains(&peer) {
        tracing::info!(%peer, max = relay.max_peers, "relay full: attach refused");
        return Err(RelayError::Full {
            max: relay.max_peers,
        });
    }
    let (resp, io) =
        tunnel::accept(&req, body).map_err(|e| RelayError::WebSocket(e.to_string()))?;
    let r = relay.get_ref().clone();
    // On this worker: the accepted socket is not `Send` (see `tunnel`).
    actix_web::rt::spawn(async move {
        match tunnel::client(io).await {
            Ok((send, conn)) => {
                let generation = r.tunnels.insert(peer, send, r.max_bps);
                tracing::info!(%peer, relayed = r.tunnels.len(), "peer behind NAT attached");
                conn.await;
                r.tunnels.remove(&peer, generation);
                tracing::info!(%peer, relayed = r.tunnels.len(), "peer behind NAT detached");
            }
            Err(e) => tracing::warn!(%peer, error = %e, "tunnel handshake failed"),
        }
    });
    Ok(resp)
}

/// `/peer/v1/relay/<peer>/<path>`: carried down the peer's tunnel.
async fn relay_forward(
    relay: web::Data<Arc<Relay>>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, RelayError> {
    if !relay.enabled {
        return Err(RelayError::NotARelay);
    }
    let (peer, tail) = path.into_inner();
    let peer: PeerId = peer.parse().map_err(|_| RelayError::NotARelay)?;
    let tunnel = relay
        .tunnels
        .get(&peer)
        .ok_or(RelayError::NotAttached { peer })?;
    let metrics = relay.metrics.clone();
    forward(&tunnel, peer, &req, &tail, body, move |n| {
        metrics.relayed(n)
    })
    .await
}
