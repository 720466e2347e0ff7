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
//!   [`MAX_REQUESTS`] at once per peer, `PSERVER_RELAY_MAX_BPS` per peer,
//!   nothing stored. A tunnel that stops answering HTTP/2 pings is closed.
//! * `callback` — direct transfers when only the downloader is reachable:
//!   the downloader asks the holder, through its relay, to call back
//!   (`POST /peer/v1/callback` with our URL and a one-time token); the
//!   holder dials our `/peer/v1/callback/attach` and serves the same
//!   tunnel, and the download engine fetches that holder's manifest and
//!   chunks through it (a loopback gateway), so the bytes never touch the
//!   relay. A callback that fails within 3 s falls back to the relay.

mod attach;
pub(crate) mod callback;
mod serve;
pub(crate) mod state;
mod tunnel;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, Full};
use hyper::client::conn::http2::SendRequest;
use peerdex_proto::PeerId;
use peerdex_proto::relay::{ATTACH_TOKEN_HEADER, AttachTokenError, PEER_ID_HEADER};
use peerdex_proto::rest::ApiError;
use tokio::sync::Semaphore;

pub(crate) use attach::{Attach, attach_loop};
pub(crate) use callback::Callbacks;
pub(crate) use serve::TunnelServer;
pub(crate) use state::Reach;

use crate::link::Central;
use crate::metrics::Metrics;
use crate::rate::RateLimiter;

/// Requests carried at once for one relayed peer (beyond: 503 +
/// Retry-After).
pub(crate) const MAX_REQUESTS: usize = 12;
/// Largest request body carried (peer-API requests are GET, HEAD and a
/// small callback POST).
const MAX_REQUEST_BODY: usize = 64 * 1024;

/// One open tunnel, as the side that sends requests sees it.
#[derive(Clone)]
pub(crate) struct Tunnel {
    send: SendRequest<Full<Bytes>>,
    slots: Arc<Semaphore>,
    rate: Arc<RateLimiter>,
    generation: u64,
    /// Unix seconds of its last request (callback tunnels close when idle).
    last_used: Arc<AtomicU64>,
}

/// Open tunnels by the peer at their other end.
#[derive(Default)]
pub(crate) struct Tunnels {
    map: Mutex<HashMap<PeerId, Tunnel>>,
    generation: AtomicU64,
}

impl Tunnels {
    fn insert(&self, peer: PeerId, send: SendRequest<Full<Bytes>>, max_bps: u64) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let t = Tunnel {
            send,
            slots: Arc::new(Semaphore::new(MAX_REQUESTS)),
            rate: Arc::new(RateLimiter::new(max_bps)),
            generation,
            last_used: Arc::new(AtomicU64::new(peerdex_proto::network::unix_now())),
        };
        self.map.lock().unwrap().insert(peer, t);
        generation
    }

    /// Forget `peer`'s tunnel if it is still the one of `generation`.
    fn remove(&self, peer: &PeerId, generation: u64) {
        let mut m = self.map.lock().unwrap();
        if m.get(peer).is_some_and(|t| t.generation == generation) {
            m.remove(peer);
        }
    }

    fn get(&self, peer: &PeerId) -> Option<Tunnel> {
        self.map.lock().unwrap().get(peer).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    fn contains(&self, peer: &PeerId) -> bool {
        self.map.lock().unwrap().contains_key(peer)
    }

    /// Drop the tunnels idle for `idle` or more (closing them).
    fn reap(&self, idle: Duration) -> usize {
        let now = peerdex_proto::network::unix_now();
        let mut m = self.map.lock().unwrap();
        let before = m.len();
        m.retain(|_, t| now.saturating_sub(t.last_used.load(Ordering::Relaxed)) < idle.as_secs());
        before - m.len()
    }
}

/// Why a relay (or a callback endpoint) refuses a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("this PServer is not a relay (PSERVER_RELAY is off, or the directory cannot reach it)")]
    NotARelay,
    #[error("missing or malformed {header} header")]
    Header { header: &'static str },
    #[error("{0}")]
    Token(#[from] AttachTokenError),
    #[error("this relay is not joined to the directory yet; retry in a moment")]
    NotJoined,
    #[error(
        "this relay carries its maximum of {max} peers (PSERVER_RELAY_MAX_PEERS); join again for another relay"
    )]
    Full { max: u32 },
    #[error(
        "peer {peer} is not attached to this relay (gone, or attaching); retry or locate it again"
    )]
    NotAttached { peer: PeerId },
    #[error("{MAX_REQUESTS} requests for peer {peer} are already on their way; retry in a moment")]
    Busy { peer: PeerId },
    #[error("only the peer API (/peer/v1/...) is carried through a tunnel, not /{path}")]
    Path { path: String },
    #[error("request body over {MAX_REQUEST_BODY} bytes")]
    Body,
    #[error("the tunnel to peer {peer} broke: {why}")]
    Broken { peer: PeerId, why: String },
    #[error("this PServer is reachable directly: fetch from it, no callback needed")]
    Reachable,
    #[error("callback: {0}")]
    Callback(String),
    #[error(
        "callback token unknown or already used (each is good for one tunnel from the peer it was given to)"
    )]
    CallbackToken,
    #[error("websocket: {0}")]
    WebSocket(String),
}

impl RelayError {
    fn retry_after(&self) -> Option<u64> {
        match self {
            RelayError::Full { .. } => Some(5),
            RelayError::NotJoined | RelayError::NotAttached { .. } | RelayError::Busy { .. } => {
                Some(1)
            }
            _ => None,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            RelayError::NotARelay | RelayError::Path { .. } => "not_found",
            RelayError::Header { .. } | RelayError::Body | RelayError::Callback(_) => {
                "invalid_argument"
            }
            RelayError::Token(_) | RelayError::CallbackToken => "forbidden",
            RelayError::Reachable => "conflict",
            RelayError::Broken { .. } => "bad_gateway",
            _ => "unavailable",
        }
    }
}

impl ResponseError for RelayError {
    fn status_code(&self) -> StatusCode {
        match self {
            RelayError::NotARelay | RelayError::Path { .. } => StatusCode::NOT_FOUND,
            RelayError::Header { .. } | RelayError::Callback(_) | RelayError::WebSocket(_) => {
                StatusCode::BAD_REQUEST
            }
            RelayError::Body => StatusCode::PAYLOAD_TOO_LARGE,
            RelayError::Token(_) | RelayError::CallbackToken => StatusCode::FORBIDDEN,
            RelayError::Reachable => StatusCode::CONFLICT,
            RelayError::Broken { .. } => StatusCode::BAD_GATEWAY,
            RelayError::NotJoined
            | RelayError::Full { .. }
            | RelayError::NotAttached { .. }
            | RelayError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if let Some(s) = self.retry_after() {
            resp.insert_header(("Retry-After", s.to_string()));
        }
        resp.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
        resp.json(ApiError {
            code: self.code().to_owned(),
            message: self.to_string(),
            candidates: Vec::new(),
        })
    }
}

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

fn header<'a>(req: &'a HttpRequest, name: &'static str) -> Result<&'a str, RelayError> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or(RelayError::Header { header: name })
}

fn peer_header(req: &HttpRequest) -> Result<PeerId, RelayError> {
    header(req, PEER_ID_HEADER)?
        .parse()
        .map_err(|_| RelayError::Header {
            header: PEER_ID_HEADER,
        })
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

/// Send `req` (for `/<tail>`) down `tunnel` to `peer`; the answer streams
/// back, each body piece counted by `count` and paced by the tunnel's rate.
pub(crate) async fn forward(
    tunnel: &Tunnel,
    peer: PeerId,
    req: &HttpRequest,
    tail: &str,
    body: Bytes,
    count: impl Fn(u64) + 'static,
) -> Result<HttpResponse, RelayError> {
    check_path(tail)?;
    if body.len() > MAX_REQUEST_BODY {
        return Err(RelayError::Body);
    }
    let permit = tunnel
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| RelayError::Busy { peer })?;
    tunnel
        .last_used
        .store(peerdex_proto::network::unix_now(), Ordering::Relaxed);
    let mut uri = format!("{}/{tail}", tunnel::TUNNEL_ORIGIN);
    if !req.query_string().is_empty() {
        uri.push('?');
        uri.push_str(req.query_string());
    }
    let mut out = http::Request::builder()
        .method(req.method().as_str())
        .uri(uri);
    for (k, v) in req.headers() {
        if !hop_by_hop(k.as_str()) && k != actix_web::http::header::CONTENT_LENGTH {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    count(body.len() as u64);
    let out = out.body(Full::new(body)).map_err(|e| RelayError::Broken {
        peer,
        why: e.to_string(),
    })?;
    let mut send = tunnel.send.clone();
    let broken = |e: hyper::Error| RelayError::Broken {
        peer,
        why: e.to_string(),
    };
    send.ready().await.map_err(broken)?;
    let resp = send.send_request(out).await.map_err(broken)?;
    let (parts, incoming) = resp.into_parts();
    let mut answer = HttpResponse::build(
        StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
    );
    let mut length = None;
    for (k, v) in &parts.headers {
        if k == http::header::CONTENT_LENGTH {
            length = v.to_str().ok().and_then(|s| s.parse::<u64>().ok());
        } else if !hop_by_hop(k.as_str()) {
            answer.append_header((k.as_str(), v.as_bytes()));
        }
    }
    if let Some(n) = length {
        answer.no_chunking(n);
    }
    let rate = tunnel.rate.clone();
    let limited = rate.is_limited();
    let stream = BodyDataStream::new(incoming).then(move |piece| {
        let _held = &permit;
        let rate = rate.clone();
        let n = piece.as_ref().map_or(0, Bytes::len);
        count(n as u64);
        async move {
            if limited {
                rate.take(n).await;
            }
            piece.map_err(std::io::Error::other)
        }
    });
    Ok(answer.streaming(stream))
}

/// Only the peer API, never a relay or callback endpoint again.
fn check_path(tail: &str) -> Result<(), RelayError> {
    let ok = tail.starts_with("peer/v1/")
        && !tail.starts_with("peer/v1/relay/")
        && !tail.starts_with("peer/v1/callback/attach")
        && !tail.split('/').any(|s| s == ".." || s == ".");
    if ok {
        Ok(())
    } else {
        Err(RelayError::Path {
            path: tail.chars().take(80).collect(),
        })
    }
}

/// Headers of one hop only, never carried.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_peer_api_is_carried() {
        assert!(check_path("peer/v1/files/ab").is_ok());
        assert!(check_path("peer/v1/health").is_ok());
        for bad in [
            "api/v1/files",
            "metrics",
            "peer/v1/relay/x/peer/v1/health",
            "peer/v1/callback/attach",
            "peer/v1/../api/v1/files",
            "",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
