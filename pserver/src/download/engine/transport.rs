//! How the swarm talks to holders: one HTTP `Range` request per chunk over
//! the peer API, under the download rate cap. The scheduler sees only the
//! [`Fetcher`] function type, so its property tests swap in in-memory
//! holders with scripted faults.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use peerdex_proto::{FileId, PeerUrl};

use crate::metrics::Metrics;
use crate::rate::RateLimiter;

/// A holder to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub peer_id: String,
    pub url: PeerUrl,
}

/// What went wrong on the wire (never the holder's content: that is judged
/// by verification).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TransportError {
    /// No answer from the holder at `url` (TLS trouble in plain words).
    #[error("cannot connect: {}", connect_error(source.as_ref(), url))]
    Connect {
        url: String,
        source: Arc<reqwest::Error>,
    },
    /// The answer's body broke off.
    #[error("{}", root_cause(.0.as_ref()))]
    Body(Arc<reqwest::Error>),
    /// The property tests' holders: a refused connection.
    #[cfg(test)]
    #[error("cannot connect: refused")]
    Refused,
    /// The property tests' holders: a connection cut mid-body.
    #[cfg(test)]
    #[error("connection reset")]
    Reset,
}

/// A holder's answer to a range request.
pub(crate) struct Reply {
    pub status: u16,
    pub content_range: Option<String>,
    pub retry_after: Option<Duration>,
    pub body: BoxStream<'static, Result<Bytes, TransportError>>,
}

/// Sends one range request (inclusive bounds). Over HTTP in the daemon, an
/// in-memory model in the property tests.
pub(crate) type Fetcher = Arc<
    dyn Fn(&Source, u64, u64) -> BoxFuture<'static, Result<Reply, TransportError>> + Send + Sync,
>;

/// Range requests for file `id` over the peer API, under `limit`.
/// Every body byte received counts in `metrics` (verified or not).
pub(crate) fn http_fetcher(
    http: crate::peer::network::PeerHttp,
    limit: Arc<RateLimiter>,
    id: FileId,
    metrics: Metrics,
) -> Fetcher {
    Arc::new(move |src: &Source, start: u64, end: u64| {
        let (http, limit, metrics) = (http.clone(), limit.clone(), metrics.clone());
        let listed = src.url.clone();
        let base = src.url.to_string();
        Box::pin(async move {
            let url = format!("{}/peer/v1/files/{id}", http.base(&listed).await);
            let resp = http
                .get(url)
                .header(reqwest::header::RANGE, format!("bytes={start}-{end}"))
                .send()
                .await
                .map_err(|e| TransportError::Connect {
                    url: base,
                    source: Arc::new(e),
                })?;
            let header = |name| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let content_range = header(reqwest::header::CONTENT_RANGE);
            let retry_after = header(reqwest::header::RETRY_AFTER)
                .map(|s| Duration::from_secs(s.trim().parse::<u64>().unwrap_or(1).clamp(1, 60)));
            let status = resp.status().as_u16();
            let limited = limit.is_limited();
            let body = resp
                .bytes_stream()
                .map(move |r| match r {
                    Ok(b) => {
                        metrics.received(b.len() as u64);
                        Ok(b)
                    }
                    Err(e) => Err(TransportError::Body(Arc::new(e))),
                })
                .then(move |r| {
                    let limit = limit.clone();
                    async move {
                        if limited && let Ok(b) = &r {
                            limit.take(b.len()).await;
                        }
                        r
                    }
                })
                .boxed();
            Ok(Reply {
                status,
                content_range,
                retry_after,
                body,
            })
        })
    })
}

/// Why a connection to the peer at `url` failed: TLS trouble in plain
/// words (see `crate::tls::explain`), else the innermost cause.
pub(crate) fn connect_error(e: &(dyn std::error::Error + 'static), url: &str) -> String {
    crate::tls::explain(e, "the peer", url).unwrap_or_else(|| root_cause(e))
}

/// The innermost cause of an error chain (reqwest's outer messages only say
/// "error sending request").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
