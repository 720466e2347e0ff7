//! Before a download: get the file's manifest from a holder and confirm it.
//!
//! The directory keeps no manifest, so a downloader asks the holders
//! (`GET /peer/v1/files/{id}/manifest`, least-loaded first) and checks what
//! it gets against the file id: the chaining values must merge to the id.
//! That proves the chunks but not the size (a size inside the same last
//! chunk merges to the same root), so the manifest is *confirmed* by
//! fetching its last chunk from the same holder and checking it: a wrong
//! size can never match. Only then is a partial created and are the other
//! holders asked, so a holder that lies about the size or the manifest costs
//! one strike and nothing else, and an honest holder is never blamed for
//! not matching a lie. For a file of one chunk the confirming chunk is the
//! whole file.
//!
//! A manifest verified against an id still proves nothing about whether the
//! id names real content: whoever makes up the id makes up a manifest that
//! merges to it, of any size. So before its last chunk is even asked for
//! (a chunk is held in memory until verified), the size must fit on disk
//! besides `PSERVER_MIN_FREE_BYTES` (see `crate::store::space`); the chunk size is
//! the one every peer uses for that size ([`Manifest::decode`] refuses any
//! other), so the last chunk is at most 1/8192 of a size that fits.

use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use peerdex_proto::FileId;
use peerdex_proto::tree::{MAX_ENCODED, Manifest};

use super::chunk::{Bad, ChunkRequest, Outcome};
use super::transport::{Fetcher, Source, root_cause};
use crate::store::space::NoSpace;

/// Chunks above this are confirmed, then fetched again by the swarm rather
/// than kept in memory.
const KEEP_MAX: u64 = 8 << 20;

/// How long busy holders (503/429) are asked again before the job fails.
const BUSY_PATIENCE: Duration = Duration::from_secs(60);

/// A manifest checked against the id and confirmed by its last chunk.
pub(crate) struct Confirmed {
    pub manifest: Arc<Manifest>,
    /// The holder it came from.
    pub from: Source,
    /// The last chunk's verified bytes, when small enough to keep.
    pub last: Option<(usize, Bytes)>,
}

/// What the holders did wrong on the way (strikes for the swarm).
pub(crate) type Strikes = Vec<(String, String)>;

/// Why no manifest was confirmed.
pub(crate) enum Unconfirmed {
    /// The file (as every holder that answered describes it) does not fit
    /// on disk: asking again will not help.
    NoSpace(NoSpace),
    /// What each holder did.
    Holders(String),
}

/// Ask `holders` in turn until one gives a manifest of `id` that verifies,
/// whose size `fits` on disk, and whose last chunk confirms it. A last
/// chunk that fails verification counts in `metrics`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn confirm(
    http: &crate::peer::network::PeerHttp,
    fetch: &Fetcher,
    id: FileId,
    holders: &[Source],
    stall: Duration,
    strikes: &mut Strikes,
    fits: &(dyn Fn(&Manifest) -> Result<(), NoSpace> + Sync),
    metrics: &Metrics,
) -> Result<Confirmed, Unconfirmed> {
    let mut notes = Vec::new();
    // The smallest size claimed that did not fit (a liar may inflate its
    // size; an honest holder after it still gets asked).
    let mut too_big: Option<NoSpace> = None;
    // Holders that answered 503/429 (every upload slot taken, or a rate
    // limit) are asked again after their Retry-After, for a while: a busy
    // network is no reason to fail a download.
    let give_up = tokio::time::Instant::now() + BUSY_PATIENCE;
    let mut ask: Vec<&Source> = holders.iter().collect();
    loop {
        let mut busy: Vec<&Source> = Vec::new();
        let mut pause = Duration::MAX;
        for src in ask {
            match confirm_one(
                http,
                fetch,
                id,
                src,
                stall,
                strikes,
                fits,
                metrics,
                &mut notes,
                &mut too_big,
            )
            .await
            {
                Ok(Some(c)) => return Ok(c),
                Ok(None) => {}
                Err(wait) => {
                    busy.push(src);
                    pause = pause.min(wait);
                }
            }
        }
        let now = tokio::time::Instant::now();
        if busy.is_empty() || now + pause > give_up {
            for src in &busy {
                notes.push(format!(
                    "peer {}: busy (503/429) for {BUSY_PATIENCE:?}",
                    src.peer_id
                ));
            }
            break;
        }
        tracing::debug!(busy = busy.len(), ?pause, file = %id, "every holder left is busy; asking again");
        tokio::time::sleep(pause).await;
        ask = busy;
    }
    if let Some(e) = too_big {
        return Err(Unconfirmed::NoSpace(e));
    }
    Err(Unconfirmed::Holders(if notes.is_empty() {
        "no holders".into()
    } else {
        notes.join("; ")
    }))
}

/// Ask one holder: `Ok(Some)` confirmed, `Ok(None)` not usable (noted, or a
/// strike), `Err(pause)` busy: ask again after `pause`.
#[allow(clippy::too_many_arguments)]
async fn confirm_one(
    http: &crate::peer::network::PeerHttp,
    fetch: &Fetcher,
    id: FileId,
    src: &Source,
    stall: Duration,
    strikes: &mut Strikes,
    fits: &(dyn Fn(&Manifest) -> Result<(), NoSpace> + Sync),
    metrics: &Metrics,
    notes: &mut Vec<String>,
    too_big: &mut Option<NoSpace>,
) -> Result<Option<Confirmed>, Duration> {
    let manifest = match get(http, src, id, stall).await {
        Ok(m) => Arc::new(m),
        Err(Fault::Busy(pause)) => return Err(pause),
        Err(fault) if fault.is_strike() => {
            let why = fault.to_string();
            tracing::warn!(peer = %src.peer_id, url = %src.url, %why, file = %id, "holder sent a manifest that fails verification");
            notes.push(format!("peer {}: {why}", src.peer_id));
            strikes.push((src.peer_id.clone(), why));
            return Ok(None);
        }
        Err(fault) => {
            notes.push(format!("peer {}: {fault}", src.peer_id));
            return Ok(None);
        }
    };
    if let Err(e) = fits(&manifest) {
        tracing::warn!(peer = %src.peer_id, file = %id, size = manifest.size(), error = %e, "refusing a download that does not fit on disk");
        if too_big.as_ref().is_none_or(|t| e.need < t.need) {
            *too_big = Some(e);
        }
        return Ok(None);
    }
    if manifest.chunks() == 0 {
        return Ok(Some(Confirmed {
            manifest,
            from: src.clone(),
            last: None,
        }));
    }
    let last = manifest.chunks() - 1;
    let outcome = ChunkRequest {
        fetch: fetch.clone(),
        src: Arc::new(src.clone()),
        manifest: manifest.clone(),
        idx: last,
        stall,
        recv: Arc::new(AtomicU64::new(0)),
        got: Arc::new(AtomicU64::new(0)),
        sink: None,
    }
    .run()
    .await;
    match outcome {
        Outcome::Verified(bytes) => {
            let keep = manifest.chunk_range(last).1 <= KEEP_MAX;
            return Ok(Some(Confirmed {
                manifest,
                from: src.clone(),
                last: bytes.filter(|_| keep).map(|b| (last, b)),
            }));
        }
        Outcome::Bad(bad) => {
            if let Bad::Hash(_) = bad {
                metrics.chunk_failed();
            }
            let why = match bad {
                Bad::Hash(_) => format!(
                    "its last chunk does not match its manifest (size {} claimed)",
                    manifest.size()
                ),
                other => other.to_string(),
            };
            tracing::warn!(peer = %src.peer_id, url = %src.url, %why, file = %id, "manifest not confirmed");
            notes.push(format!("peer {}: {why}", src.peer_id));
            strikes.push((src.peer_id.clone(), why));
        }
        Outcome::Failed(f) => notes.push(format!("peer {}: {f}", src.peer_id)),
        Outcome::Gone(why) => notes.push(format!("peer {}: {why}", src.peer_id)),
        Outcome::Busy(pause) => return Err(pause),
        Outcome::LocalIo(e) => notes.push(format!("local i/o error: {e}")),
    }
    Ok(None)
}

/// Why a holder gave no usable manifest.
#[derive(Debug, thiserror::Error)]
enum Fault {
    /// The holder broke the protocol or lied: a strike.
    #[error("sent a manifest of more than {MAX_ENCODED} bytes")]
    TooLong,
    /// A strike too: it does not verify against the file id.
    #[error("manifest: {0}")]
    Decode(#[from] peerdex_proto::tree::ManifestError),
    /// Could not get an answer: no blame.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("cannot connect: {}", super::transport::connect_error(.source, .url.as_str()))]
    Connect {
        url: peerdex_proto::PeerUrl,
        source: reqwest::Error,
    },
    #[error("manifest answered HTTP {0}")]
    Status(u16),
    #[error("manifest stalled for {0:?}")]
    Stalled(Duration),
    #[error("manifest transfer broke: {}", root_cause(.0))]
    Broke(reqwest::Error),
    /// 503 (no upload slot free) or 429 (rate limited): ask again later.
    #[error("busy: ask again in {0:?}")]
    Busy(Duration),
}

impl Fault {
    /// The holder is to blame (its manifest is a lie or breaks the
    /// protocol), not the network.
    fn is_strike(&self) -> bool {
        matches!(self, Fault::TooLong | Fault::Decode(_))
    }
}

async fn get(
    http: &crate::peer::network::PeerHttp,
    src: &Source,
    id: FileId,
    stall: Duration,
) -> Result<Manifest, Fault> {
    let url = format!("{}/peer/v1/files/{id}/manifest", http.base(&src.url).await);
    let resp = tokio::time::timeout(stall, http.get(url).send())
        .await
        .map_err(|_| Fault::NoAnswer(stall))?
        .map_err(|source| Fault::Connect {
            url: src.url.clone(),
            source,
        })?;
    match resp.status().as_u16() {
        200 => {}
        503 | 429 => {
            let pause = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 60);
            return Err(Fault::Busy(Duration::from_secs(pause)));
        }
        s => return Err(Fault::Status(s)),
    }
    // Bounded: never more than the largest manifest, whatever the holder sends.
    let mut body = resp.bytes_stream();
    let mut bytes = Vec::new();
    loop {
        let piece = tokio::time::timeout(stall, body.next())
            .await
            .map_err(|_| Fault::Stalled(stall))?;
        match piece {
            None => break,
            Some(Err(e)) => return Err(Fault::Broke(e)),
            Some(Ok(p)) => {
                if bytes.len() + p.len() > MAX_ENCODED {
                    return Err(Fault::TooLong);
                }
                bytes.extend_from_slice(&p);
            }
        }
    }
    Ok(Manifest::decode(id, &bytes)?)
}
