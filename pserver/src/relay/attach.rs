//! The firewalled side: keep one tunnel to the relay the directory
//! assigned, and answer every request that comes down a tunnel (from the
//! relay, or from a downloader we called back) with our own peer API.
//!
//! The attach loop dials `<relay>/peer/v1/relay/attach` with our peer id
//! and the directory's token, then serves HTTP/2 until the tunnel closes.
//! When the tunnel closes or the relay refuses (full: 503, a stale token:
//! 403, gone: no answer), that relay is avoided for a minute and we join
//! again at once (skipping the dial-back): the directory assigns another
//! relay and lists our files under it. So a relay that dies costs about a
//! round trip to the directory and a dial, not a heartbeat interval.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use peerdex_proto::relay::{ATTACH_PATH, ATTACH_TOKEN_HEADER, PEER_ID_HEADER};
use peerdex_proto::{PeerId, PeerUrl};
use tokio_util::sync::CancellationToken;

use super::state::Reach;
use super::{MAX_REQUEST_BODY, hop_by_hop, tunnel};
use crate::link::Central;
use crate::peer::network::Network;

/// Longest wait between two tries to get a relay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

type ProxyBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Answers tunnelled requests with our own peer API, over loopback.
#[derive(Clone)]
pub(crate) struct LocalProxy {
    http: reqwest::Client,
    /// Our peer API as this process reaches it.
    base: String,
}

impl LocalProxy {
    /// A proxy to our peer API, listening at `local` (its unspecified IP
    /// means loopback) and known to others as `public` (TLS: its name is
    /// resolved to `local`, so the certificate still matches).
    pub(crate) fn new(
        public: &PeerUrl,
        local: SocketAddr,
        ca_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, reqwest::Error> {
        let mut local = local;
        if local.ip().is_unspecified() {
            local.set_ip(match local {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .http1_only();
        let base = if public.as_str().starts_with("https://") {
            b = b.tls_backend_preconfigured(crate::tls::http_client_config(ca_roots));
            let host = public
                .as_str()
                .trim_start_matches("https://")
                .rsplit_once(':')
                .map_or(public.as_str(), |(h, _)| h)
                .to_owned();
            if host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[') {
                b = b.resolve(&host, local);
                format!("https://{host}:{}", local.port())
            } else {
                format!("https://{local}")
            }
        } else {
            format!("http://{local}")
        };
        Ok(Self {
            http: b.build()?,
            base,
        })
    }

    /// One tunnelled request, answered by our peer API.
    pub(crate) async fn answer(
        self,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<ProxyBody>, Infallible> {
        Ok(match self.pass(req).await {
            Ok(r) => r,
            Err((status, message)) => {
                let body = serde_json::to_vec(&peerdex_proto::rest::ApiError {
                    code: if status == 404 {
                        "not_found"
                    } else {
                        "bad_gateway"
                    }
                    .into(),
                    message,
                    candidates: Vec::new(),
                })
                .unwrap_or_default();
                http::Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(
                        Full::new(Bytes::from(body))
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    )
                    .unwrap_or_default()
            }
        })
    }

    async fn pass(
        self,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<ProxyBody>, (u16, String)> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        // The relay checked this too; we answer nothing else either way.
        if super::check_path(path.trim_start_matches('/')).is_err() {
            return Err((
                404,
                format!("only the peer API (/peer/v1/...) answers through a tunnel, not {path}"),
            ));
        }
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, MAX_REQUEST_BODY)
            .collect()
            .await
            .map_err(|e| (413, format!("request body: {e}")))?
            .to_bytes();
        let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
            .map_err(|e| (400, e.to_string()))?;
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in &parts.headers {
            // The body is whole: its length is the client's to write.
            if !hop_by_hop(k.as_str()) && k != http::header::CONTENT_LENGTH {
                rb = rb.header(k.as_str(), v.as_bytes());
            }
        }
        let resp = rb
            .body(body)
            .send()
            .await
            .map_err(|e| (502, format!("our own peer API: {e}")))?;
        let mut out = http::Response::builder().status(resp.status().as_u16());
        for (k, v) in resp.headers() {
            if !hop_by_hop(k.as_str()) {
                out = out.header(k.as_str(), v.as_bytes());
            }
        }
        let stream = resp
            .bytes_stream()
            .map_ok(Frame::data)
            .map_err(std::io::Error::other);
        out.body(StreamBody::new(stream).boxed_unsync())
            .map_err(|e| (502, e.to_string()))
    }

    /// Serve the tunnel `io` with our peer API until it closes.
    pub(crate) async fn serve(&self, io: tunnel::DialedIo) -> Result<(), hyper::Error> {
        let me = self.clone();
        tunnel::serve(
            io,
            hyper::service::service_fn(move |req| me.clone().answer(req)),
        )
        .await
    }
}

/// What the attach loop needs.
pub(crate) struct Attach {
    pub peer_id: PeerId,
    pub reach: Arc<Reach>,
    pub central: Arc<Central>,
    pub network: Arc<Network>,
    pub proxy: LocalProxy,
    pub tls: Arc<rustls::ClientConfig>,
}

/// Keep a tunnel to our relay while the directory says we need one.
pub(crate) async fn attach_loop(a: Attach, cancel: CancellationToken) {
    let mut changes = a.reach.subscribe();
    let mut backoff = Duration::from_millis(250);
    loop {
        let wait = match (a.reach.needs_relay(), a.reach.assignment()) {
            (true, Some(relay)) => {
                let mut headers = vec![
                    (PEER_ID_HEADER, a.peer_id.to_string()),
                    (ATTACH_TOKEN_HEADER, relay.token.clone()),
                ];
                if let Some(c) = a.network.credential() {
                    headers.push(("authorization", format!("Bearer {c}")));
                }
                let dialed = tokio::select! {
                    _ = cancel.cancelled() => return,
                    d = tunnel::dial(&relay.url, ATTACH_PATH, &headers, &a.tls) => d,
                };
                match dialed {
                    Ok(io) => {
                        a.reach.set_attached(true);
                        backoff = Duration::from_millis(250);
                        tracing::info!(relay = %relay.url, "behind NAT: attached to our relay; shared through it");
                        let served = tokio::select! {
                            _ = cancel.cancelled() => return,
                            s = a.proxy.serve(io) => s,
                        };
                        a.reach.set_attached(false);
                        tracing::warn!(relay = %relay.url, result = ?served.err().map(|e| e.to_string()),
                            "the tunnel to our relay closed; asking the directory for another");
                    }
                    Err(e) => {
                        tracing::warn!(relay = %relay.url, error = %e, status = ?e.status(),
                            "cannot attach to our relay; asking the directory for another");
                    }
                }
                a.reach.failed(relay.relay);
                changes.borrow_and_update();
                a.central.rejoin_soon();
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
            (true, None) => {
                // No relay had room at our Join: ask again in a while.
                let w = MAX_BACKOFF;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(w) => {}
                    _ = changes.changed() => continue,
                }
                if a.reach.needs_relay() && a.reach.assignment().is_none() {
                    a.reach.want_relay();
                    a.central.rejoin_soon();
                }
                continue;
            }
            (false, _) => Duration::from_secs(3600),
        };
        // Wait for the next Join answer (or the back-off, or the end).
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
