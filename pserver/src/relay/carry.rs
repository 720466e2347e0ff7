//! What both sides of a tunnel share: the open tunnels and their limits,
//! why a request is refused ([`RelayError`]), which requests may be
//! carried ([`check_path`]) and how one is carried ([`forward`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, Full};
use hyper::client::conn::http2::SendRequest;
use peerdex_proto::PeerId;
use peerdex_proto::relay::{AttachTokenError, PEER_ID_HEADER};
use peerdex_proto::rest::ApiError;
use tokio::sync::Semaphore;

use super::tunnel;
use crate::rate::RateLimiter;

/// Requests carried at once for one relayed peer (beyond: 503 +
/// Retry-After).
pub(super) const MAX_REQUESTS: usize = 12;
/// Largest request body carried (peer-API requests are GET, HEAD and a
/// small callback POST).
pub(super) const MAX_REQUEST_BODY: usize = 64 * 1024;

/// One open tunnel, as the side that sends requests sees it.
#[derive(Clone)]
pub(crate) struct Tunnel {
    pub(super) send: SendRequest<Full<Bytes>>,
    pub(super) slots: Arc<Semaphore>,
    rate: Arc<RateLimiter>,
    generation: u64,
    /// Unix seconds of its last request (callback tunnels close when idle).
    pub(super) last_used: Arc<AtomicU64>,
}

/// Open tunnels by the peer at their other end.
#[derive(Default)]
pub(crate) struct Tunnels {
    map: Mutex<HashMap<PeerId, Tunnel>>,
    generation: AtomicU64,
}

impl Tunnels {
    pub(super) fn insert(&self, peer: PeerId, send: SendRequest<Full<Bytes>>, max_bps: u64) -> u64 {
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
    pub(super) fn remove(&self, peer: &PeerId, generation: u64) {
        let mut m = self.map.lock().unwrap();
        if m.get(peer).is_some_and(|t| t.generation == generation) {
            m.remove(peer);
        }
    }

    pub(super) fn get(&self, peer: &PeerId) -> Option<Tunnel> {
        self.map.lock().unwrap().get(peer).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub(super) fn contains(&self, peer: &PeerId) -> bool {
        self.map.lock().unwrap().contains_key(peer)
    }

    /// Drop the tunnels idle for `idle` or more (closing them).
    pub(super) fn reap(&self, idle: Duration) -> usize {
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

pub(super) fn header<'a>(req: &'a HttpRequest, name: &'static str) -> Result<&'a str, RelayError> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or(RelayError::Header { header: name })
}

pub(super) fn peer_header(req: &HttpRequest) -> Result<PeerId, RelayError> {
    header(req, PEER_ID_HEADER)?
        .parse()
        .map_err(|_| RelayError::Header {
            header: PEER_ID_HEADER,
        })
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
pub(super) fn check_path(tail: &str) -> Result<(), RelayError> {
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
pub(super) fn hop_by_hop(name: &str) -> bool {
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
