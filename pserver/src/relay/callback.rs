//! Direct transfers when only the downloader is reachable (eMule's
//! callback): relays carry only the pairs where neither side is.
//!
//! Downloader side ([`Callbacks::route`]): before fetching from a holder
//! listed through a relay (`<relay>/peer/v1/relay/<holder>`), a reachable
//! downloader asks the holder, through that relay, to call it back:
//! `POST /peer/v1/callback` with our URL and a one-time token. The holder
//! dials our `/peer/v1/callback/attach` showing the token and serves the
//! tunnel; from then on that holder's manifest and chunks come through the
//! tunnel (via a loopback gateway that speaks plain HTTP to the engine),
//! not through the relay. No tunnel within [`CALLBACK_WAIT`]: the holder is
//! fetched through its relay, and not asked again for a minute. A tunnel
//! idle for [`IDLE`] is closed.
//!
//! Holder side ([`asked`]): only a peer behind NAT calls back; it dials
//! only the `/peer/v1/callback/attach` path of the URL it was given, at
//! most [`MAX_CALLBACKS`] tunnels at once, and answers through them
//! exactly as through its relay (its own peer API, nothing else).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use peerdex_proto::relay::{
    CALLBACK_ATTACH_PATH, CALLBACK_PATH, CALLBACK_TOKEN_HEADER, PEER_ID_HEADER,
};
use peerdex_proto::{PeerId, PeerUrl};
use tokio::sync::{Semaphore, oneshot};

use super::carry::{RelayError, Tunnels, check_path, header, hop_by_hop, peer_header};
use super::serve::TunnelServer;
use super::state::Reach;
use super::tunnel;
use crate::metrics::Metrics;
use crate::peer::network::{Network, PeerHttp};
use crate::rt::MainRt;

/// How long a downloader waits for a holder to call back.
pub(crate) const CALLBACK_WAIT: Duration = Duration::from_secs(3);
/// A holder that did not call back is fetched through its relay this long.
const NO_CALLBACK_FOR: Duration = Duration::from_secs(60);
/// A callback tunnel without a request for this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// Callback tunnels a holder serves at once.
pub(crate) const MAX_CALLBACKS: usize = 16;

/// `POST /peer/v1/callback`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CallbackRequest {
    /// The downloader's peer API (a base URL).
    pub url: String,
    /// One-time token (32 hex characters) to show when dialing back.
    pub token: String,
}

/// Both sides of callbacks. Shared as `Arc<Callbacks>`.
pub(crate) struct Callbacks {
    peer_id: PeerId,
    public_url: PeerUrl,
    reach: Arc<Reach>,
    /// Downloader side: tokens given, by the holder they were given to.
    pending: Mutex<HashMap<String, (PeerId, oneshot::Sender<()>)>>,
    /// Downloader side: the tunnels of holders that called us back.
    tunnels: Tunnels,
    /// Downloader side: holders that did not call back lately.
    failed: Mutex<HashMap<PeerId, Instant>>,
    /// One callback set up at a time.
    asking: tokio::sync::Mutex<()>,
    /// The loopback gateway the engine fetches tunnelled holders through.
    gateway: SocketAddr,
    http: PeerHttp,
    /// Holder side: callback tunnels served now.
    serving: Arc<Semaphore>,
    server: Arc<TunnelServer>,
    network: Arc<Network>,
    tls: Arc<rustls::ClientConfig>,
    metrics: Metrics,
    rt: MainRt,
}

/// What [`Callbacks::start`] needs.
pub(crate) struct Parts {
    pub peer_id: PeerId,
    pub public_url: PeerUrl,
    pub reach: Arc<Reach>,
    pub http: PeerHttp,
    pub server: Arc<TunnelServer>,
    pub network: Arc<Network>,
    pub tls: Arc<rustls::ClientConfig>,
    pub metrics: Metrics,
    pub rt: MainRt,
}

impl Callbacks {
    /// Bind the loopback gateway and start serving it (on the main
    /// runtime) until `cancel`.
    pub(crate) async fn start(
        p: Parts,
        cancel: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let me = Arc::new(Self {
            peer_id: p.peer_id,
            public_url: p.public_url,
            reach: p.reach,
            pending: Mutex::default(),
            tunnels: Tunnels::default(),
            failed: Mutex::default(),
            asking: tokio::sync::Mutex::new(()),
            gateway: listener.local_addr()?,
            http: p.http,
            serving: Arc::new(Semaphore::new(MAX_CALLBACKS)),
            server: p.server,
            network: p.network,
            tls: p.tls,
            metrics: p.metrics,
            rt: p.rt,
        });
        tokio::spawn(gateway(me.clone(), listener, cancel.clone()));
        let reaper = me.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        let n = reaper.tunnels.reap(IDLE);
                        if n > 0 {
                            tracing::debug!(closed = n, "idle callback tunnels closed");
                        }
                    }
                }
            }
        });
        Ok(me)
    }

    /// Where to fetch from the holder at `url`: through its callback
    /// tunnel (the gateway's URL for it) when it is behind a relay, we
    /// are reachable, and it calls us back; else `None` (as listed).
    pub(crate) async fn route(&self, url: &PeerUrl) -> Option<PeerUrl> {
        let (_, holder) = url.relayed()?;
        if !self.reach.reachable() {
            return None;
        }
        let via = || self.gateway_url(&holder);
        if self.tunnels.get(&holder).is_some() {
            return Some(via());
        }
        if self.recently_failed(&holder) {
            return None;
        }
        let _one = self.asking.lock().await;
        if self.tunnels.get(&holder).is_some() {
            return Some(via());
        }
        if self.recently_failed(&holder) {
            return None;
        }
        match self.ask(url, holder).await {
            Ok(()) => {
                self.metrics.callback_transfer();
                tracing::info!(%holder, "holder behind NAT called us back: fetching from it directly");
                Some(via())
            }
            Err(why) => {
                tracing::info!(%holder, %why, "no callback from the holder behind NAT: fetching through its relay");
                self.failed.lock().unwrap().insert(holder, Instant::now());
                None
            }
        }
    }

    fn gateway_url(&self, holder: &PeerId) -> PeerUrl {
        let base: PeerUrl = format!("http://{}", self.gateway)
            .parse()
            .expect("a socket address makes a peer URL");
        base.relay_for(holder)
    }

    fn recently_failed(&self, holder: &PeerId) -> bool {
        let mut f = self.failed.lock().unwrap();
        f.retain(|_, at| at.elapsed() < NO_CALLBACK_FOR);
        f.contains_key(holder)
    }

    /// Ask `holder` (at `url`, through its relay) to call us back; wait
    /// for its tunnel.
    async fn ask(&self, url: &PeerUrl, holder: PeerId) -> Result<(), String> {
        let token = hex::encode(rand::random::<[u8; 16]>());
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap()
            .insert(token.clone(), (holder, tx));
        let asked = self
            .http
            .post(format!("{url}{CALLBACK_PATH}"))
            .json(&CallbackRequest {
                url: self.public_url.to_string(),
                token: token.clone(),
            })
            .timeout(CALLBACK_WAIT)
            .send()
            .await;
        let r = match asked {
            Err(e) => Err(e.to_string()),
            Ok(resp) if !resp.status().is_success() => {
                Err(format!("it answered {}", resp.status()))
            }
            Ok(_) => match tokio::time::timeout(CALLBACK_WAIT, rx).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(format!("no tunnel within {} s", CALLBACK_WAIT.as_secs())),
            },
        };
        self.pending.lock().unwrap().remove(&token);
        r
    }
}

/// `POST /peer/v1/callback` (holder side, reached through our relay):
/// dial the downloader back and serve it our peer API.
pub(super) async fn asked(
    callbacks: web::Data<Arc<Callbacks>>,
    req: web::Json<CallbackRequest>,
) -> Result<HttpResponse, RelayError> {
    let c = callbacks.get_ref().clone();
    if !c.reach.needs_relay() {
        return Err(RelayError::Reachable);
    }
    let url: PeerUrl = req
        .url
        .parse()
        .map_err(|e: peerdex_proto::ParseError| RelayError::Callback(e.to_string()))?;
    if !url.is_base() {
        return Err(RelayError::Callback(
            "url: a peer's own URL, not a relay URL".into(),
        ));
    }
    if req.token.len() != 32 || !req.token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RelayError::Callback("token: 32 hex characters".into()));
    }
    let permit =
        c.serving.clone().try_acquire_owned().map_err(|_| {
            RelayError::Callback(format!("already serving {MAX_CALLBACKS} callbacks"))
        })?;
    let token = req.token.clone();
    let rt = c.rt.clone();
    rt.spawn(async move {
        let _held = permit;
        let mut headers = vec![
            (PEER_ID_HEADER, c.peer_id.to_string()),
            (CALLBACK_TOKEN_HEADER, token),
        ];
        if let Some(cred) = c.network.credential() {
            headers.push(("authorization", format!("Bearer {cred}")));
        }
        match tunnel::dial(&url, CALLBACK_ATTACH_PATH, &headers, &c.tls).await {
            Ok(io) => {
                tracing::info!(downloader = %url, "calling a downloader back: serving it directly");
                let source = io.peer_addr();
                let served = c.server.serve(io, source).await;
                tracing::debug!(downloader = %url, result = ?served.err().map(|e| e.to_string()),
                    "callback tunnel closed");
            }
            Err(e) => {
                tracing::info!(downloader = %url, error = %e, "cannot call the downloader back")
            }
        }
    });
    Ok(HttpResponse::Accepted().finish())
}

/// `GET /peer/v1/callback/attach` (downloader side, WebSocket): a holder
/// we asked calls back with our token.
pub(super) async fn attach(
    callbacks: web::Data<Arc<Callbacks>>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, RelayError> {
    let holder = peer_header(&req)?;
    let token = header(&req, CALLBACK_TOKEN_HEADER)?;
    let c = callbacks.get_ref().clone();
    let tx = {
        let mut p = c.pending.lock().unwrap();
        match p.get(token) {
            Some((h, _)) if *h == holder => p.remove(token).map(|(_, tx)| tx),
            _ => None,
        }
    }
    .ok_or(RelayError::CallbackToken)?;
    let (resp, io) =
        tunnel::accept(&req, body).map_err(|e| RelayError::WebSocket(e.to_string()))?;
    // On this worker: the accepted socket is not `Send` (see `tunnel`).
    actix_web::rt::spawn(async move {
        match tunnel::client(io).await {
            Ok((send, conn)) => {
                let generation = c.tunnels.insert(holder, send, 0);
                let _ = tx.send(());
                conn.await;
                c.tunnels.remove(&holder, generation);
            }
            Err(e) => tracing::info!(%holder, error = %e, "callback tunnel handshake failed"),
        }
    });
    Ok(resp)
}

/// The loopback gateway: `/peer/v1/relay/<holder>/<path>` down that
/// holder's callback tunnel, for the download engine (plain HTTP/1.1 on
/// 127.0.0.1; the tunnel itself rides the peer API's TLS).
async fn gateway(
    c: Arc<Callbacks>,
    listener: tokio::net::TcpListener,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        // No Nagle delay on answers written piece by piece (see
        // `peer::limits::Conn::accept`).
        let _ = stream.set_nodelay(true);
        let c = c.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let c = c.clone();
                async move { Ok::<_, std::convert::Infallible>(c.through(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

type GatewayBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

impl Callbacks {
    async fn through(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<GatewayBody> {
        let fail = |status: u16, msg: String| {
            http::Response::builder()
                .status(status)
                .body(
                    Full::new(Bytes::from(msg))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap_or_default()
        };
        let path = req.uri().path().to_owned();
        let Some((holder, tail)) = path
            .strip_prefix(peerdex_proto::relay::RELAY_PATH)
            .and_then(|r| r.split_once('/'))
        else {
            return fail(404, "not a tunnelled path".into());
        };
        let Ok(holder) = holder.parse::<PeerId>() else {
            return fail(404, "not a peer id".into());
        };
        let Some(t) = self.tunnels.get(&holder) else {
            return fail(503, format!("no callback tunnel from {holder}"));
        };
        if check_path(tail).is_err() {
            return fail(404, "only the peer API is carried".into());
        }
        t.last_used.store(
            peerdex_proto::network::unix_now(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let Ok(permit) = t.slots.clone().try_acquire_owned() else {
            return fail(503, "too many requests at once".into());
        };
        let mut uri = format!("{}/{tail}", tunnel::TUNNEL_ORIGIN);
        if let Some(q) = req.uri().query() {
            uri.push('?');
            uri.push_str(q);
        }
        let (parts, _) = req.into_parts();
        let mut out = http::Request::builder().method(parts.method).uri(uri);
        for (k, v) in &parts.headers {
            if !hop_by_hop(k.as_str()) {
                out = out.header(k, v);
            }
        }
        let Ok(out) = out.body(Full::new(Bytes::new())) else {
            return fail(400, "bad request".into());
        };
        let mut send = t.send.clone();
        if let Err(e) = send.ready().await {
            return fail(502, e.to_string());
        }
        match send.send_request(out).await {
            // The slot is held until the answer's body is done.
            Ok(resp) => resp.map(|b| {
                b.map_frame(move |f| {
                    let _held = &permit;
                    f
                })
                .boxed_unsync()
            }),
            Err(e) => fail(502, e.to_string()),
        }
    }
}
