//! The reverse tunnel: HTTP/2 over a WebSocket that the unreachable side
//! opened. The side that dialed is the HTTP/2 *server* (it answers the
//! requests); the side that accepted is the HTTP/2 *client* (a relay, or a
//! downloader that asked for a callback). A WebSocket binary message is the
//! only framing: the bytes of each side are pumped between the socket and
//! an in-memory pipe that hyper reads and writes.
//!
//! The accepting side runs on an actix worker (its socket is not `Send`),
//! the HTTP/2 connection on the main runtime; the pipe joins them. HTTP/2
//! keep-alive pings (every [`KEEPALIVE`], answered within
//! [`KEEPALIVE_TIMEOUT`]) find a dead tunnel even when no TCP reset comes.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use peerdex_proto::PeerUrl;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Bytes in flight in the pipe between the socket and hyper.
const PIPE: usize = 512 * 1024;
/// Largest WebSocket message sent (actix-ws reads up to 64 KiB by default;
/// we allow it [`MAX_FRAME`]).
const CHUNK: usize = 60 * 1024;
const MAX_FRAME: usize = 1 << 20;
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(10);
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control windows: enough for a fast transfer to keep the
/// pipe full (the defaults, 64 KiB, would cap a stream at one window per
/// round trip).
const STREAM_WINDOW: u32 = 4 << 20;
const CONN_WINDOW: u32 = 16 << 20;
/// The dial, TCP and TLS and the WebSocket handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The authority of every request sent through a tunnel (HTTP/2 wants
/// one; the answering side only reads the path).
pub(crate) const TUNNEL_ORIGIN: &str = "http://peerdex-tunnel";

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("cannot connect to {url}: {why}")]
    Connect { url: String, why: String },
    #[error("{url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
}

impl DialError {
    /// The HTTP status of a refusal (503 full, 401/403 refused, 404 not a
    /// relay).
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            DialError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Accept a tunnel on an actix worker: the WebSocket answer to send, and
/// the pipe end to run HTTP/2 over (on the main runtime).
pub(crate) fn accept(
    req: &HttpRequest,
    body: web::Payload,
) -> Result<(HttpResponse, DuplexStream), actix_web::Error> {
    let (resp, session, stream) = actix_ws::handle(req, body)?;
    let mut stream = stream.max_frame_size(MAX_FRAME);
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let mut pong = session.clone();
    actix_web::rt::spawn(async move {
        while let Some(Ok(msg)) = stream.recv().await {
            match msg {
                actix_ws::Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                actix_ws::Message::Ping(p) => {
                    let _ = pong.pong(&p).await;
                }
                actix_ws::Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut session = session;
    actix_web::rt::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if session
                        .binary(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = session.close(None).await;
    });
    Ok((resp, theirs))
}

/// Dial `url` + `path` with a WebSocket (TLS for https, trusting `tls`'s
/// roots), sending `headers`; the pipe end to serve HTTP/2 on.
pub(crate) async fn dial(
    url: &PeerUrl,
    path: &str,
    headers: &[(&'static str, String)],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<DuplexStream, DialError> {
    let base = url.as_str();
    let (secure, authority) = match base.strip_prefix("https://") {
        Some(a) => (true, a),
        None => (false, base.strip_prefix("http://").unwrap_or(base)),
    };
    let (host, port) = split_authority(authority, if secure { 443 } else { 80 });
    let connect = |why: String| DialError::Connect {
        url: base.to_owned(),
        why,
    };
    let ws_url = format!("{}://{authority}{path}", if secure { "wss" } else { "ws" });
    let mut req = ws_url
        .into_client_request()
        .map_err(|e| connect(e.to_string()))?;
    for (k, v) in headers {
        let v = v.parse().map_err(|_| connect(format!("bad header {k}")))?;
        req.headers_mut().insert(*k, v);
    }
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if secure {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| connect(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| connect(e.to_string()))?;
            handshake(base, req, tls).await
        } else {
            handshake(base, req, tcp).await
        }
    };
    tokio::time::timeout(DIAL_TIMEOUT, work)
        .await
        .map_err(|_| connect(format!("no answer within {} s", DIAL_TIMEOUT.as_secs())))?
}

/// `host:port` (or `[v6]:port`, or no port) into a host to connect to and
/// a port.
fn split_authority(authority: &str, default_port: u16) -> (String, u16) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').unwrap_or((rest, ""));
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (h.to_owned(), port.unwrap_or(default_port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(default_port)),
        None => (authority.to_owned(), default_port),
    }
}

async fn handshake<S>(
    base: &str,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
) -> Result<DuplexStream, DialError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio_tungstenite::tungstenite::Error as WsError;
    let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    config.max_frame_size = Some(MAX_FRAME);
    config.max_message_size = Some(MAX_FRAME);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| match e {
            WsError::Http(resp) => {
                let status = resp.status().as_u16();
                let message = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<peerdex_proto::rest::ApiError>(b).ok())
                    .map_or_else(String::new, |e| e.message);
                DialError::Refused {
                    url: base.to_owned(),
                    status,
                    message,
                }
            }
            e => DialError::Connect {
                url: base.to_owned(),
                why: e.to_string(),
            },
        })?;
    let (mut sink, mut stream) = ws.split();
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (mut rd, mut wr) = tokio::io::split(ours);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    Ok(theirs)
}

/// The HTTP/2 client end of a tunnel (the accepting side). The returned
/// future drives the connection: it ends when the tunnel closes.
pub(crate) async fn client(
    io: DuplexStream,
) -> Result<
    (
        SendRequest<Full<Bytes>>,
        impl std::future::Future<Output = ()> + Send,
    ),
    hyper::Error,
> {
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .handshake(TokioIo::new(io))
        .await?;
    Ok((send, async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "tunnel closed");
        }
    }))
}

/// Serve HTTP/2 on the dialing side of a tunnel with `service` until the
/// tunnel closes.
pub(crate) async fn serve<S, B>(io: DuplexStream, service: S) -> Result<(), hyper::Error>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .serve_connection(TokioIo::new(io), service)
        .await
}

#[cfg(test)]
mod tests {
    use super::split_authority;

    #[test]
    fn authorities() {
        assert_eq!(split_authority("h:1", 80), ("h".into(), 1));
        assert_eq!(split_authority("h", 443), ("h".into(), 443));
        assert_eq!(split_authority("[::1]:7", 80), ("::1".into(), 7));
        assert_eq!(split_authority("[::1]", 80), ("::1".into(), 80));
    }
}
