//! One request for one chunk: ask a holder for its byte range, take the
//! bytes as they stream in (in memory, or for large chunks straight into
//! the partial at the chunk's offset), hash them on the way, and judge the
//! result against the manifest.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use peerdex_proto::tree::Manifest;

use super::transport::{Fetcher, Source, TransportError};

/// Bytes received between two hashing steps of a chunk.
const HASH_RUN: usize = 256 << 10;

/// Everything one chunk request needs.
pub(crate) struct ChunkRequest {
    pub fetch: Fetcher,
    pub src: Arc<Source>,
    /// The verified manifest: where chunk `idx` is and what it hashes to.
    pub manifest: Arc<Manifest>,
    pub idx: usize,
    /// A request that gets no bytes for this long gives up.
    pub stall: Duration,
    /// Bytes received from this holder (all its requests) and by this request.
    pub recv: Arc<AtomicU64>,
    pub got: Arc<AtomicU64>,
    /// Write in place into this file (large chunks) instead of holding the
    /// chunk in memory until verified.
    pub sink: Option<Arc<std::fs::File>>,
}

/// The holder broke the protocol or sent bytes that fail verification: it
/// earns a strike.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Bad {
    #[error("chunk {0} failed BLAKE3 verification")]
    Hash(usize),
    #[error("answered Content-Range {got:?} for {want:?}")]
    WrongRange { got: Option<String>, want: String },
    #[error("sent more than the {0} bytes asked for")]
    TooLong(u64),
}

/// The request did not complete: the holder backs off.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failed {
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("stalled: no bytes for {stall:?} ({got} of {len} received)")]
    Stalled { stall: Duration, got: u64, len: u64 },
    #[error("transfer broke: {0}")]
    Broke(TransportError),
    #[error("closed the connection after {got} of {len} bytes")]
    Short { got: u64, len: u64 },
    #[error("request task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// How a chunk request ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The chunk, or `None` if it was written in place.
    Verified(Option<Bytes>),
    /// Failed verification or broke the protocol: a strike.
    Bad(Bad),
    /// Unreachable, error answer, broken or stalled transfer: back off.
    Failed(Failed),
    /// The holder no longer has the file: drop it. Says what it answered.
    Gone(String),
    /// 503 (no upload slot) or 429 (rate limited): come back after this long.
    Busy(Duration),
    /// Writing the chunk in place failed: our disk, not the holder.
    LocalIo(io::Error),
}

impl ChunkRequest {
    /// Fetch the chunk and verify it.
    pub(crate) async fn run(self) -> Outcome {
        let Self {
            fetch,
            src,
            manifest,
            idx,
            stall,
            recv,
            got,
            sink,
        } = self;
        let (start, len) = manifest.chunk_range(idx);
        let size = manifest.size();
        let end = start + len - 1;
        let reply = match tokio::time::timeout(stall, fetch(&src, start, end)).await {
            Err(_) => return Outcome::Failed(Failed::NoAnswer(stall)),
            Ok(Err(e)) => return Outcome::Failed(e.into()),
            Ok(Ok(r)) => r,
        };
        match reply.status {
            206 => {
                let want = format!("bytes {start}-{end}/{size}");
                if reply.content_range.as_deref() != Some(want.as_str()) {
                    return Outcome::Bad(Bad::WrongRange {
                        got: reply.content_range,
                        want,
                    });
                }
            }
            200 if start == 0 && len == size => {}
            503 | 429 => {
                return Outcome::Busy(reply.retry_after.unwrap_or(Duration::from_secs(1)));
            }
            s @ (404 | 410) => {
                return Outcome::Gone(match why_gone(reply.body, stall).await {
                    Some(m) => format!("answered HTTP {s}: {m}"),
                    None => format!("answered HTTP {s}"),
                });
            }
            s => return Outcome::Failed(Failed::Status(s)),
        }
        let mut body = reply.body;
        // In memory until verified, or (large chunks) straight into the
        // partial at the chunk's offset, staged in runs for hash and write.
        let mut buf = BytesMut::with_capacity(match sink {
            None => len as usize,
            Some(_) => HASH_RUN * 2,
        });
        let mut received: u64 = 0;
        let mut hasher = manifest.chunk_hasher(idx);
        let mut hashed = 0;
        loop {
            let piece = match tokio::time::timeout(stall, body.next()).await {
                Err(_) => {
                    return Outcome::Failed(Failed::Stalled {
                        stall,
                        got: received,
                        len,
                    });
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Outcome::Failed(Failed::Broke(e)),
                Ok(Some(Ok(b))) => b,
            };
            recv.fetch_add(piece.len() as u64, Ordering::Relaxed);
            if received + piece.len() as u64 > len {
                return Outcome::Bad(Bad::TooLong(len));
            }
            received += piece.len() as u64;
            got.fetch_add(piece.len() as u64, Ordering::Relaxed);
            buf.extend_from_slice(&piece);
            // Hash in runs of a few hundred KiB: wide enough for BLAKE3's
            // SIMD, and spread over the transfer rather than all at the end.
            if buf.len() - hashed >= HASH_RUN {
                hasher.update(&buf[hashed..]);
                hashed = buf.len();
                if let Some(file) = &sink {
                    let at = start + received - buf.len() as u64;
                    if let Err(e) = write_in_place(file, &buf, at) {
                        return Outcome::LocalIo(e);
                    }
                    buf.clear();
                    hashed = 0;
                }
            }
        }
        hasher.update(&buf[hashed..]);
        if let Some(file) = &sink {
            let at = start + received - buf.len() as u64;
            if let Err(e) = write_in_place(file, &buf, at) {
                return Outcome::LocalIo(e);
            }
        }
        if received < len {
            return Outcome::Failed(Failed::Short { got: received, len });
        }
        if !hasher.matches() {
            return Outcome::Bad(Bad::Hash(idx));
        }
        Outcome::Verified(sink.is_none().then(|| buf.freeze()))
    }
}

/// The message of an error answer (an `ApiError`), read within `stall` and
/// at most 2 KiB.
async fn why_gone(
    mut body: futures_util::stream::BoxStream<'static, Result<Bytes, TransportError>>,
    stall: Duration,
) -> Option<String> {
    let mut buf = Vec::new();
    while buf.len() < 2048 {
        match tokio::time::timeout(stall, body.next()).await {
            Ok(Some(Ok(b))) => buf.extend_from_slice(&b),
            _ => break,
        }
    }
    let e: peerdex_proto::rest::ApiError = serde_json::from_slice(&buf).ok()?;
    Some(e.message.chars().take(300).collect())
}

fn write_in_place(file: &std::fs::File, data: &[u8], at: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    // A short positional write into the page cache; not worth a thread hop.
    file.write_all_at(data, at)
}
