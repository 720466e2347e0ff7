//! The unreachable side answers what comes down a tunnel with its own
//! peer API, in process: hyper serves HTTP/2 over the tunnel and hands
//! each request to the peer API's actix `App` (the same routes, guards and
//! handlers as on the peer port: Range, HEAD, ETag, a private network's
//! credentials, verify-on-serve, upload slots and rate caps), with no
//! loopback hop between: a byte read from a file goes into the tunnel's
//! HTTP/2 stream, not through a second HTTP connection first.
//!
//! An actix `App` is not `Send`: every tunnel of this process is served
//! on one thread of its own ([`TunnelServer`]), with a single-threaded
//! runtime and a `LocalSet`, the way each actix worker runs. The tunnel's
//! socket is handed to that thread; whoever asked (the attach loop, a
//! callback) waits for the end, and dropping that wait ends the tunnel.
//!
//! Only `/peer/v1/...` is answered through a tunnel, never a relay or
//! callback-attach endpoint and never the control API (a relay we do not
//! trust could send anything): [`tunnel_only`]. A request's source, as
//! the peer API's per-source limits see it, is the tunnel's other end.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use actix_service::{IntoServiceFactory, Service, ServiceFactory};
use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, Uri};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, ResponseError};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

use super::carry::{MAX_REQUEST_BODY, RelayError, check_path, hop_by_hop};
use super::tunnel::{self, DialedIo};

/// Why serving a tunnel ended other than by the tunnel closing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("the peer API is not ready to answer through tunnels yet")]
    NotReady,
    #[error("the tunnel thread is gone (shutting down)")]
    Gone,
    #[error("HTTP/2 over the tunnel: {0}")]
    Dispatch(String),
}

/// Serves one tunnel on the tunnel thread until it closes.
type ServeFn = Arc<
    dyn Fn(DialedIo, Option<SocketAddr>) -> Pin<Box<dyn Future<Output = Result<(), ServeError>>>>
        + Send
        + Sync,
>;

/// Work for the tunnel thread: started there, on its `LocalSet`.
type Job = Box<dyn FnOnce() + Send>;

/// The thread that serves every tunnel of this process with the peer API.
pub(crate) struct TunnelServer {
    jobs: mpsc::UnboundedSender<Job>,
    /// Set once the peer API's parts exist (they need the relay and the
    /// callbacks, which need this).
    serve: OnceLock<ServeFn>,
}

impl TunnelServer {
    /// Start the tunnel thread. It ends when this is dropped.
    pub(crate) fn start() -> std::io::Result<Arc<Self>> {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("peerdex-tunnels".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    while let Some(job) = rx.recv().await {
                        job();
                    }
                });
            })?;
        Ok(Arc::new(Self {
            jobs,
            serve: OnceLock::new(),
        }))
    }

    /// Answer tunnels with the `App` that `app` makes (one per tunnel, as
    /// actix makes one per worker). Set once, before any tunnel opens.
    pub(crate) fn set_app<F, T, B>(&self, app: F)
    where
        F: Fn() -> App<T> + Send + Sync + 'static,
        T: ServiceFactory<
                ServiceRequest,
                Config = (),
                Response = ServiceResponse<B>,
                Error = actix_web::Error,
                InitError = (),
            > + 'static,
        B: MessageBody + 'static,
    {
        let serve: ServeFn = Arc::new(move |io, source| {
            let app = app().wrap(from_fn(tunnel_only));
            Box::pin(serve_app(app, io, source))
        });
        let _ = self.serve.set(serve);
    }

    /// Serve `io` (a tunnel we dialed; `source` the address at its other
    /// end) with our peer API until it closes. Dropping the returned
    /// future closes the tunnel.
    pub(crate) async fn serve(
        &self,
        io: DialedIo,
        source: Option<SocketAddr>,
    ) -> Result<(), ServeError> {
        let serve = self.serve.get().ok_or(ServeError::NotReady)?.clone();
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            tokio::task::spawn_local(async move {
                let mut tx = tx;
                let done = tokio::select! {
                    r = serve(io, source) => Some(r),
                    // Our caller stopped waiting: the tunnel ends here.
                    () = tx.closed() => None,
                };
                if let Some(r) = done {
                    let _ = tx.send(r);
                }
            });
        });
        self.jobs.send(job).map_err(|_| ServeError::Gone)?;
        rx.await.unwrap_or(Err(ServeError::Gone))
    }
}

/// hyper's HTTP/2 server over the tunnel (the tunnel's frame size,
/// windows and keep-alive pings: a tunnel whose other end stops answering
/// them is closed), each request answered by `app`.
async fn serve_app<T, B>(
    app: App<T>,
    io: DialedIo,
    source: Option<SocketAddr>,
) -> Result<(), ServeError>
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let service = app
        .into_factory()
        .new_service(AppConfig::default())
        .await
        .map_err(|()| ServeError::Dispatch("the peer API did not start".into()))?;
    let service = Rc::new(service);
    let svc = hyper::service::service_fn(move |req| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(answer(&*service, req, source).await) }
    });
    tunnel::server()
        .serve_connection(TokioIo::new(io), svc)
        .await
        .map_err(|e| ServeError::Dispatch(e.to_string()))
}

/// One tunnelled request, as actix would have read it off a socket.
async fn answer<S, B>(
    service: &S,
    req: http::Request<Incoming>,
    source: Option<SocketAddr>,
) -> http::Response<AppBody>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return refusal(RelayError::Body),
    };
    let mut areq = actix_http::Request::new();
    let head = areq.head_mut();
    head.version = actix_web::http::Version::HTTP_2;
    head.peer_addr = source;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = Method::from_bytes(parts.method.as_str().as_bytes());
    let (Ok(method), Ok(uri)) = (method, Uri::try_from(path)) else {
        return refusal(RelayError::Path {
            path: path.chars().take(80).collect(),
        });
    };
    head.method = method;
    head.uri = uri;
    for (k, v) in &parts.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_str().as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            head.headers.append(k, v);
        }
    }
    let (areq, _) = areq.replace_payload(actix_http::Payload::from(body));
    match service.call(areq).await {
        Ok(r) => to_hyper(r.map_into_boxed_body().into_parts().1),
        Err(e) => to_hyper(e.error_response()),
    }
}

/// An answer of ours rather than the peer API's.
fn refusal(e: RelayError) -> http::Response<AppBody> {
    to_hyper(e.error_response())
}

/// An actix response as hyper sends it: its status, its headers but those
/// of one hop, its body (an empty 502 if hyper refuses the head: never a
/// panic).
fn to_hyper(resp: actix_web::HttpResponse) -> http::Response<AppBody> {
    let mut out = http::Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if !hop_by_hop(k.as_str()) {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    out.body(AppBody::new(resp.into_body()))
        .unwrap_or_else(|_| {
            let mut bad = http::Response::default();
            *bad.status_mut() = http::StatusCode::BAD_GATEWAY;
            bad
        })
}

/// An actix response body as hyper sends it: its pieces as DATA frames,
/// its size (when known) as the content-length.
pub(crate) struct AppBody {
    body: Pin<Box<BoxBody>>,
    size: BodySize,
}

impl AppBody {
    fn new(body: BoxBody) -> Self {
        Self {
            size: body.size(),
            body: Box::pin(body),
        }
    }
}

impl Default for AppBody {
    fn default() -> Self {
        Self::new(BoxBody::new(()))
    }
}

impl hyper::body::Body for AppBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match ready!(self.body.as_mut().poll_next(cx)) {
            Some(Ok(piece)) => Poll::Ready(Some(Ok(Frame::data(piece)))),
            Some(Err(e)) => Poll::Ready(Some(Err(std::io::Error::other(e.to_string())))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.size, BodySize::None | BodySize::Sized(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.size {
            BodySize::Sized(n) => SizeHint::with_exact(n),
            BodySize::None => SizeHint::with_exact(0),
            BodySize::Stream => SizeHint::default(),
        }
    }
}

/// Through a tunnel, only the peer API answers.
async fn tunnel_only(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let path = req.path().trim_start_matches('/');
    if let Err(e) = check_path(path) {
        let resp = e.error_response();
        return Ok(req.into_response(resp).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}
