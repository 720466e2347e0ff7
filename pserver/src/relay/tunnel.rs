//! The reverse tunnel: HTTP/2 over a WebSocket that the unreachable side
//! opened. The side that dialed is the HTTP/2 *server* (it answers the
//! requests with its peer API, see `serve`); the side that accepted is the
//! HTTP/2 *client* (hyper; a relay, or a downloader that asked for a
//! callback). A WebSocket binary message is the only framing: each side
//! reads each message's bytes as they came, the accepting side writes each
//! of its writes as one message ([`AcceptedIo`]), the dialing side gathers
//! its writes into messages of up to [`CHUNK`] ([`DialedIo`]), in the
//! HTTP/2 connection's own task, with no pipe or pump between.
//!
//! The accepting side's socket belongs to an actix worker (it is not
//! `Send`), so that side's HTTP/2 connection runs on that worker; its
//! request handle is used from any thread. Large messages and frames keep
//! the wake-ups per byte few. HTTP/2 keep-alive pings (every
//! [`KEEPALIVE`], answered within [`KEEPALIVE_TIMEOUT`]) find a dead
//! tunnel even when no TCP reset comes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use peerdex_proto::PeerUrl;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Largest WebSocket message sent: large messages mean few wake-ups per
/// byte carried (actix-ws reads up to 64 KiB by default; we allow it
/// [`MAX_FRAME`]).
const CHUNK: usize = 256 * 1024;
const MAX_FRAME: usize = 1 << 20;
/// Largest HTTP/2 frame either side accepts (the default, 16 KiB, means
/// one frame, and one wake-up of the side reading it, per 16 KiB).
const H2_FRAME: u32 = 256 * 1024;
/// Bytes of a response the answering side buffers ahead per stream.
const H2_SEND_BUF: usize = 1 << 20;
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
/// the tunnel's bytes to run HTTP/2 over (on this same worker: the
/// socket is not `Send`, see [`client`]).
pub(crate) fn accept(
    req: &HttpRequest,
    body: web::Payload,
) -> Result<(HttpResponse, AcceptedIo), actix_web::Error> {
    let (resp, session, stream) = actix_ws::handle(req, body)?;
    Ok((
        resp,
        AcceptedIo {
            stream: stream.max_frame_size(MAX_FRAME),
            session,
            rd: Bytes::new(),
            sending: None,
            closing: None,
        },
    ))
}

type Sending = Pin<Box<dyn Future<Output = Result<(), actix_ws::Closed>>>>;

/// The accepting side's WebSocket as a byte stream for hyper: each binary
/// message read is handed over as it is, each write is one message. No
/// pipe, no pump task: HTTP/2 reads and writes the socket's messages in
/// its own task.
pub(crate) struct AcceptedIo {
    stream: actix_ws::MessageStream,
    session: actix_ws::Session,
    /// What is left of the last message read.
    rd: Bytes,
    /// The message being handed to the socket's writer.
    sending: Option<Sending>,
    closing: Option<Sending>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel's WebSocket closed")
}

impl AcceptedIo {
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(f) = self.sending.as_mut() {
            let r = ready!(f.as_mut().poll(cx));
            self.sending = None;
            r.map_err(|_| closed())?;
        }
        Poll::Ready(Ok(()))
    }

    fn send(&mut self, msg: Bytes) {
        let mut session = self.session.clone();
        self.sending = Some(Box::pin(async move { session.binary(msg).await }));
    }
}

impl AsyncRead for AcceptedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        read_messages(&mut me.rd, buf, || {
            me.stream.poll_next_unpin(cx).map(|m| match m {
                Some(Ok(actix_ws::Message::Binary(b))) => Ok(Piece::Data(b)),
                Some(Ok(actix_ws::Message::Close(_))) | None => Ok(Piece::End),
                Some(Ok(_)) => Ok(Piece::Other),
                Some(Err(e)) => Err(io::Error::other(e)),
            })
        })
    }
}

impl AsyncWrite for AcceptedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_sent(cx))?;
        let msg = gather(bufs);
        let n = msg.len();
        if n > 0 {
            self.send(msg);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_sent(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_sent(cx))?;
        if self.closing.is_none() {
            let session = self.session.clone();
            self.closing = Some(Box::pin(async move { session.close(None).await }));
        }
        if let Some(f) = self.closing.as_mut() {
            let _ = ready!(f.as_mut().poll(cx));
        }
        Poll::Ready(Ok(()))
    }
}

/// What one WebSocket message is to the byte stream over it.
enum Piece {
    Data(Bytes),
    /// A close, or the socket's end: EOF.
    End,
    /// Ping, pong, text: not tunnel bytes.
    Other,
}

/// Both sides' `poll_read`: serve `buf` from what is left of the last
/// message (`rd`), taking the next one from `next` when it is used up.
fn read_messages(
    rd: &mut Bytes,
    buf: &mut ReadBuf<'_>,
    mut next: impl FnMut() -> Poll<io::Result<Piece>>,
) -> Poll<io::Result<()>> {
    loop {
        if !rd.is_empty() {
            let n = rd.len().min(buf.remaining());
            buf.put_slice(&rd.split_to(n));
            return Poll::Ready(Ok(()));
        }
        match ready!(next())? {
            Piece::Data(b) => *rd = b,
            Piece::End => return Poll::Ready(Ok(())),
            Piece::Other => {}
        }
    }
}

/// Up to [`CHUNK`] bytes of `bufs` as one message (HTTP/2 writes a frame's
/// header and its payload as two slices: one message, not two).
fn gather(bufs: &[io::IoSlice<'_>]) -> Bytes {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut msg = BytesMut::with_capacity(total.min(CHUNK));
    for b in bufs {
        let room = CHUNK - msg.len();
        if room == 0 {
            break;
        }
        msg.extend_from_slice(&b[..b.len().min(room)]);
    }
    msg.freeze()
}

/// Dial `url` + `path` with a WebSocket (TLS for https, trusting `tls`'s
/// roots), sending `headers`: the tunnel to serve HTTP/2 on.
pub(crate) async fn dial(
    url: &PeerUrl,
    path: &str,
    headers: &[(&'static str, String)],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<DialedIo, DialError> {
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
            handshake(base, req, Stream::Right(tls)).await
        } else {
            handshake(base, req, Stream::Left(tcp)).await
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

async fn handshake(
    base: &str,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: Stream,
) -> Result<DialedIo, DialError> {
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
    Ok(DialedIo {
        ws,
        rd: Bytes::new(),
        wr: BytesMut::new(),
    })
}

/// The dialing side's WebSocket as a byte stream for HTTP/2 (as
/// [`AcceptedIo`]: messages read are handed over as they are, no pipe or
/// pump task). Writes are gathered until a flush or [`CHUNK`] bytes:
/// HTTP/2 writes each frame on its own (and a window update or a small
/// last piece is a frame), and a message per write would mean a wake-up
/// of the relay per frame.
pub(crate) struct DialedIo {
    ws: tokio_tungstenite::WebSocketStream<Stream>,
    rd: Bytes,
    wr: BytesMut,
}

impl DialedIo {
    /// The address at the tunnel's other end (a relay, or the downloader
    /// that asked for a callback).
    pub(crate) fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match self.ws.get_ref() {
            Stream::Left(tcp) => tcp.peer_addr().ok(),
            Stream::Right(tls) => tls.get_ref().0.peer_addr().ok(),
        }
    }

    /// Hand what was gathered to the WebSocket as one message.
    fn poll_send_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.wr.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.ws.poll_ready_unpin(cx)).map_err(io::Error::other)?;
        let msg = std::mem::replace(&mut self.wr, BytesMut::with_capacity(CHUNK)).freeze();
        self.ws
            .start_send_unpin(Message::binary(msg))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(()))
    }
}

/// A dialed socket, with or without TLS.
type Stream = tokio_util::either::Either<
    tokio::net::TcpStream,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
>;

impl AsyncRead for DialedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        read_messages(&mut me.rd, buf, || {
            me.ws.poll_next_unpin(cx).map(|m| match m {
                Some(Ok(Message::Binary(b))) => Ok(Piece::Data(b)),
                Some(Ok(Message::Close(_))) | None => Ok(Piece::End),
                Some(Ok(_)) => Ok(Piece::Other),
                Some(Err(e)) => Err(io::Error::other(e)),
            })
        })
    }
}

impl AsyncWrite for DialedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        if me.wr.len() >= CHUNK {
            ready!(me.poll_send_gathered(cx))?;
        }
        let room = CHUNK - me.wr.len();
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room - n);
            me.wr.extend_from_slice(&b[..take]);
            n += take;
            if n == room {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_gathered(cx))?;
        self.ws.poll_flush_unpin(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_gathered(cx))?;
        self.ws.poll_close_unpin(cx).map_err(io::Error::other)
    }
}

/// Runs hyper's tasks of a tunnel on the current thread: an actix worker
/// (the accepted socket is not `Send`), or the tunnel thread (the peer
/// API's `App` is not).
#[derive(Clone, Copy)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// The HTTP/2 client end of a tunnel (the accepting side). The returned
/// future drives the connection: it ends when the tunnel closes.
/// Runs on the actix worker that accepted it (spawn it there with
/// `actix_web::rt::spawn`); its `SendRequest` is used from any thread.
pub(crate) async fn client(
    io: AcceptedIo,
) -> Result<(SendRequest<Full<Bytes>>, impl Future<Output = ()>), hyper::Error> {
    let (send, conn) = hyper::client::conn::http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(H2_FRAME)
        .handshake(TokioIo::new(io))
        .await?;
    Ok((send, async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "tunnel closed");
        }
    }))
}

/// The HTTP/2 server end of a tunnel (the dialing side), for the thread
/// that serves tunnels (`serve`: its tasks are not `Send`).
pub(crate) fn server() -> hyper::server::conn::http2::Builder<LocalExec> {
    let mut b = hyper::server::conn::http2::Builder::new(LocalExec);
    b.timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(H2_FRAME)
        .max_send_buf_size(H2_SEND_BUF);
    b
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
