//! The sequential fallback: a holder at a time, for a file located without
//! a chunk manifest (an old or odd neighbour). Bytes go to a temp file under
//! `data/tmp/` (so there is nothing to resume); a holder that fails hands
//! over to the next at the byte where it stopped, and the whole-file BLAKE3
//! decides at the end.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use peerdex_proto::rest::{JobState, SourceProgress};
use peerdex_proto::{FileId, PeerUrl};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{
    DownloadError, JobEnd, JobHandle, LOCATE_ROUNDS, PROGRESS_EVERY, Target, summarize, validate,
};
use super::Engine;
use crate::lookup::LocateTarget;

/// Why one attempt at one holder ended.
enum Attempt {
    /// The holder could not be used; try the next one.
    Failed(String),
    /// The holder is busy (503): retry it after this long.
    Busy(Duration),
    /// The holder sent bytes that failed verification: never ask it again.
    Lied(String),
}

struct Progress {
    written: u64,
    /// Bytes up to here are verified (a chunk boundary, or 0 without manifest).
    verified: u64,
    whole: blake3::Hasher,
    whole_at_verified: blake3::Hasher,
    chunk: blake3::Hasher,
    per_source: HashMap<String, (String, u64, Instant)>,
    last_report: Instant,
}

/// Fetch the whole file into `temp`, one holder at a time, and check its
/// BLAKE3 against the file id. With a manifest (not the usual path: those go
/// to the swarm) every chunk is verified as it completes.
pub(super) async fn run(
    shared: &Arc<Engine>,
    h: &JobHandle,
    t: &mut Target,
    temp: &PathBuf,
) -> Result<(), JobEnd> {
    let file = tokio::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(temp)
        .await?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut p = Progress {
        written: 0,
        verified: 0,
        whole: blake3::Hasher::new(),
        whole_at_verified: blake3::Hasher::new(),
        chunk: blake3::Hasher::new(),
        per_source: HashMap::new(),
        last_report: Instant::now(),
    };
    let mut liars: HashSet<String> = HashSet::new();
    let mut errors: Vec<String> = Vec::new();
    let mut round = 0;
    while p.written < t.size || t.size == 0 {
        let mut progressed = false;
        let mut busy_wait: Option<Duration> = None;
        for (peer_id, url) in t.holders.clone() {
            if liars.contains(&peer_id) {
                continue;
            }
            if p.written >= t.size && t.size > 0 {
                break;
            }
            let before = p.written;
            h.update(|j| {
                j.state = JobState::Downloading;
                j.source = Some(url.to_string());
            });
            match fetch_from(shared, h, t, &peer_id, &url, &mut out, &mut p).await {
                Ok(()) => {}
                Err(Attempt::Failed(why)) => {
                    tracing::info!(job = %h.id, peer = %peer_id, %why, "holder failed; trying the next one");
                    errors.push(format!("{url}: {why}"));
                    rollback(&mut out, &mut p, t.manifest.is_some()).await?;
                }
                Err(Attempt::Busy(d)) => {
                    busy_wait = Some(busy_wait.map_or(d, |b| b.min(d)));
                    errors.push(format!("{url}: busy"));
                }
                Err(Attempt::Lied(why)) => {
                    tracing::warn!(job = %h.id, peer = %peer_id, %why, "holder sent bytes that failed verification; dropping it for this job");
                    errors.push(format!("{url}: {why}"));
                    liars.insert(peer_id.clone());
                    rollback(&mut out, &mut p, true).await?;
                }
            }
            progressed |= p.written > before;
            if t.size == 0 {
                break;
            }
        }
        if p.written >= t.size {
            break;
        }
        if let Some(d) = busy_wait {
            tokio::time::sleep(d.min(Duration::from_secs(10))).await;
            continue;
        }
        if !progressed {
            round += 1;
            if round > LOCATE_ROUNDS {
                let why = if !liars.is_empty() && liars.len() >= t.holders.len() {
                    "every holder sent data that failed BLAKE3 verification".to_owned()
                } else {
                    "no holder could send the file".to_owned()
                };
                return Err(DownloadError::Sequential {
                    why,
                    holders: summarize(&errors),
                }
                .into());
            }
            // Ask again for fresh holders, after a short pause.
            h.update(|j| {
                j.state = JobState::Locating;
                j.source = None;
            });
            tokio::time::sleep(Duration::from_millis(500 * (1 << round))).await;
            if let Ok(files) = shared
                .lookup
                .locate(&shared.central, &LocateTarget::Id(t.id))
                .await
            {
                let own = shared.peer_id.to_string();
                if let Some(fresh) = files
                    .iter()
                    .filter_map(|f| validate(f, &own))
                    .find(|f| f.id == t.id)
                {
                    t.holders = fresh.holders;
                }
            }
        } else {
            round = 0;
        }
    }
    out.flush().await?;
    let file = out.into_inner();
    h.update(|j| {
        j.state = JobState::Verifying;
        j.source = None;
        j.bytes_done = p.written;
    });
    let got = FileId::from_bytes(*p.whole.finalize().as_bytes());
    if got != t.id {
        return Err(DownloadError::Sequential {
            why: format!("the downloaded bytes hash to {got}, not {}; nothing was kept", t.id),
            holders: format!("holders: {}", summarize(&errors)),
        }
        .into());
    }
    file.sync_all().await?;
    Ok(())
}

/// Drop unverified bytes: back to the last verified chunk boundary when a
/// manifest is in use. Without a manifest the bytes received so far are kept
/// and the next holder continues from there (the whole-file hash decides).
async fn rollback(
    out: &mut tokio::io::BufWriter<tokio::fs::File>,
    p: &mut Progress,
    to_verified: bool,
) -> std::io::Result<()> {
    if !to_verified || p.written == p.verified {
        return Ok(());
    }
    out.flush().await?;
    let f = out.get_mut();
    f.set_len(p.verified).await?;
    f.seek(std::io::SeekFrom::Start(p.verified)).await?;
    p.written = p.verified;
    p.whole = p.whole_at_verified.clone();
    p.chunk.reset();
    Ok(())
}

async fn fetch_from(
    shared: &Arc<Engine>,
    h: &JobHandle,
    t: &Target,
    peer_id: &str,
    url: &PeerUrl,
    out: &mut tokio::io::BufWriter<tokio::fs::File>,
    p: &mut Progress,
) -> Result<(), Attempt> {
    let start = p.written;
    let mut req = shared.http.get(format!("{url}/peer/v1/files/{}", t.id));
    if start > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={start}-"));
    }
    let stall = shared.stall_timeout;
    let resp = tokio::time::timeout(stall, req.send())
        .await
        .map_err(|_| Attempt::Failed("no answer".into()))?
        .map_err(|e| Attempt::Failed(format!("cannot connect: {}", super::transport::root_cause(&e))))?;
    match resp.status().as_u16() {
        200 if start == 0 => {}
        206 if start > 0 => {
            let expected = format!("bytes {start}-{}/{}", t.size - 1, t.size);
            let got = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok());
            if got != Some(expected.as_str()) {
                return Err(Attempt::Failed(format!(
                    "wrong Content-Range {got:?}, expected {expected:?}"
                )));
            }
        }
        503 => {
            let secs = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 60);
            return Err(Attempt::Busy(Duration::from_secs(secs)));
        }
        s => return Err(Attempt::Failed(format!("answered HTTP {s}"))),
    }
    let chunk_size = t.manifest.as_ref().map_or(u64::MAX, |m| m.chunk_size);
    let src = p
        .per_source
        .entry(peer_id.to_owned())
        .or_insert_with(|| (url.to_string(), 0, Instant::now()));
    src.2 = Instant::now();
    let mut stream = resp.bytes_stream();
    loop {
        let next = match tokio::time::timeout(stall, stream.next()).await {
            Err(_) => {
                return Err(Attempt::Failed(format!(
                    "stalled: no bytes for {} s",
                    stall.as_secs()
                )));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Attempt::Failed(format!(
                    "transfer broke: {}",
                    super::transport::root_cause(&e)
                )));
            }
            Ok(Some(Ok(b))) => b,
        };
        shared.download_limit.take(next.len()).await;
        let mut data = &next[..];
        if p.written + data.len() as u64 > t.size {
            return Err(Attempt::Lied(format!(
                "sent more than the {} bytes announced",
                t.size
            )));
        }
        while !data.is_empty() {
            // Cut at chunk boundaries so each chunk is verified on its own.
            let into_chunk = p.written % chunk_size;
            let room = (chunk_size - into_chunk) as usize;
            let take = room.min(data.len());
            let piece = &data[..take];
            out.write_all(piece)
                .await
                .map_err(|e| Attempt::Failed(format!("local write failed: {e}")))?;
            p.whole.update(piece);
            p.chunk.update(piece);
            p.written += take as u64;
            data = &data[take..];
            if let Some(m) = &t.manifest {
                let end_of_chunk = p.written.is_multiple_of(chunk_size) || p.written == t.size;
                if end_of_chunk {
                    let idx = ((p.written - 1) / chunk_size) as usize;
                    let got = p.chunk.finalize();
                    p.chunk.reset();
                    if got.as_bytes() != &m.hashes[idx] {
                        return Err(Attempt::Lied(format!(
                            "chunk {idx} failed BLAKE3 verification"
                        )));
                    }
                    p.verified = p.written;
                    p.whole_at_verified = p.whole.clone();
                }
            }
        }
        if let Some(s) = p.per_source.get_mut(peer_id) {
            s.1 += next.len() as u64;
        }
        if p.last_report.elapsed() >= PROGRESS_EVERY {
            p.last_report = Instant::now();
            report(h, p, peer_id);
        }
    }
    report(h, p, peer_id);
    if p.written < t.size {
        return Err(Attempt::Failed(format!(
            "closed the connection at byte {}",
            p.written
        )));
    }
    Ok(())
}

fn report(h: &JobHandle, p: &Progress, current: &str) {
    let sources = p
        .per_source
        .iter()
        .map(|(peer, (url, bytes, since))| SourceProgress {
            peer_id: peer.clone(),
            peer_url: url.clone(),
            bytes: *bytes,
            rate_bps: if peer == current {
                (*bytes as f64 / since.elapsed().as_secs_f64().max(0.001)) as u64
            } else {
                0
            },
            chunks: 0,
            strikes: 0,
            in_flight: u32::from(peer == current),
            dropped: None,
        })
        .collect();
    let written = p.written;
    h.update(|j| {
        j.bytes_done = written;
        j.sources = sources;
    });
}
