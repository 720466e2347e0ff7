//! Download jobs: locate → fetch from holders (HTTP Range) → verify → move
//! into the share folder → publish.
//!
//! Verification: with a chunk manifest every chunk is checked against its
//! BLAKE3 hash as soon as its last byte arrives; a holder that sent a bad
//! chunk is dropped for the job and the chunk is fetched again from the next
//! holder. The whole-file BLAKE3 is checked against the file id before the
//! file is moved into the share folder. Bytes live in a temp file under the
//! data folder until then, so a failed or interrupted job never leaves a
//! visible or published partial file.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use peerdex_proto::convert::Manifest;
use peerdex_proto::rest::{Candidate, DownloadRequest, Job, JobState, LocatedFile, SourceProgress};
use peerdex_proto::{FileId, FileName, PeerUrl};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Shared;
use crate::error::{Error, Result};
use crate::lookup::LocateTarget;

/// Rounds of re-locating when every holder failed, before giving up.
const LOCATE_ROUNDS: u32 = 3;
/// Finished jobs kept for listing.
const KEEP_FINISHED: usize = 256;
/// Progress is published at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A running or finished job.
pub struct JobHandle {
    pub id: Uuid,
    file_id: Mutex<Option<FileId>>,
    created: Instant,
    tx: watch::Sender<Job>,
    cancel: CancellationToken,
}

impl JobHandle {
    pub fn snapshot(&self) -> Job {
        let mut j = self.tx.borrow().clone();
        j.elapsed_secs = self.created.elapsed().as_secs_f64();
        j
    }
    pub fn subscribe(&self) -> watch::Receiver<Job> {
        self.tx.subscribe()
    }
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
    fn update(&self, f: impl FnOnce(&mut Job)) {
        let created = self.created;
        self.tx.send_modify(|j| {
            f(j);
            j.elapsed_secs = created.elapsed().as_secs_f64();
        });
    }
    fn is_final(&self) -> bool {
        self.tx.borrow().state.is_final()
    }
}

#[derive(Default)]
pub struct Jobs {
    map: Mutex<HashMap<Uuid, Arc<JobHandle>>>,
    order: Mutex<Vec<Uuid>>,
}

impl Jobs {
    pub fn get(&self, id: &Uuid) -> Option<Arc<JobHandle>> {
        self.map.lock().unwrap().get(id).cloned()
    }

    pub fn list(&self) -> Vec<Job> {
        let map = self.map.lock().unwrap();
        self.order
            .lock()
            .unwrap()
            .iter()
            .filter_map(|id| map.get(id))
            .map(|h| h.snapshot())
            .collect()
    }

    pub fn active(&self) -> u32 {
        self.map
            .lock()
            .unwrap()
            .values()
            .filter(|h| !h.is_final())
            .count() as u32
    }

    pub fn cancel_all(&self) {
        for h in self.map.lock().unwrap().values() {
            h.cancel();
        }
    }

    fn running_for(&self, id: &FileId) -> Option<Arc<JobHandle>> {
        self.map
            .lock()
            .unwrap()
            .values()
            .find(|h| !h.is_final() && h.file_id.lock().unwrap().as_ref() == Some(id))
            .cloned()
    }

    fn insert(
        &self,
        request: DownloadRequest,
        file_id: Option<FileId>,
        state: JobState,
    ) -> Arc<JobHandle> {
        let id = Uuid::new_v4();
        let job = Job {
            job_id: id.to_string(),
            state,
            request,
            file_id: file_id.map(|f| f.to_hex()),
            name: None,
            bytes_done: 0,
            bytes_total: None,
            source: None,
            sources: Vec::new(),
            error: None,
            elapsed_secs: 0.0,
        };
        let handle = Arc::new(JobHandle {
            id,
            file_id: Mutex::new(file_id),
            created: Instant::now(),
            tx: watch::Sender::new(job),
            cancel: CancellationToken::new(),
        });
        let mut map = self.map.lock().unwrap();
        let mut order = self.order.lock().unwrap();
        // Forget the oldest finished jobs beyond the retention limit.
        let finished = order
            .iter()
            .filter(|j| map.get(j).is_some_and(|h| h.is_final()))
            .count();
        if finished >= KEEP_FINISHED {
            let mut drop_n = finished + 1 - KEEP_FINISHED;
            order.retain(|j| {
                if drop_n > 0 && map.get(j).is_some_and(|h| h.is_final()) {
                    map.remove(j);
                    drop_n -= 1;
                    false
                } else {
                    true
                }
            });
        }
        map.insert(id, handle.clone());
        order.push(id);
        handle
    }
}

/// Validated answer of a locate: what to fetch and from whom.
#[derive(Debug, Clone)]
struct Target {
    id: FileId,
    size: u64,
    names: Vec<FileName>,
    manifest: Option<Manifest>,
    holders: Vec<(String, PeerUrl)>,
}

fn validate(f: &LocatedFile, own_peer: &str) -> Option<Target> {
    let id: FileId = f.file_id.parse().ok()?;
    let manifest = f
        .manifest
        .as_ref()
        .and_then(|m| Manifest::from_rest(m, f.size).ok());
    let holders = f
        .holders
        .iter()
        .filter(|h| h.peer_id != own_peer)
        .filter_map(|h| Some((h.peer_id.clone(), h.peer_url.parse::<PeerUrl>().ok()?)))
        .collect();
    let names = f.names.iter().filter_map(|n| n.parse().ok()).collect();
    Some(Target {
        id,
        size: f.size,
        names,
        manifest,
        holders,
    })
}

/// Start a download (the `POST /api/v1/downloads` handler's logic). Name
/// lookups are resolved before a job exists, so an unknown or ambiguous name
/// is answered at once.
pub async fn start(shared: &Arc<Shared>, req: DownloadRequest) -> Result<Job> {
    let target = match (&req.file_id, &req.name) {
        (Some(id), None) => LocateTarget::Id(id.parse()?),
        (None, Some(name)) => LocateTarget::Name(name.parse()?),
        _ => {
            return Err(Error::InvalidArgument(
                "give exactly one of file_id and name".into(),
            ));
        }
    };
    // Already here?
    let local = match &target {
        LocateTarget::Id(id) => shared.store.by_id(id),
        LocateTarget::Name(_) => None,
    };
    if let Some(entry) = local {
        return Ok(finished_job(shared, req, entry.id, entry.name));
    }
    let own = shared.peer_id.to_string();
    let located = shared.lookup.locate(&shared.central, &target).await?;
    let mut targets: Vec<Target> = located.iter().filter_map(|f| validate(f, &own)).collect();
    if let LocateTarget::Name(name) = &target {
        if let Some(entry) = shared.store.by_name(name)
            && targets.iter().any(|t| t.id == entry.id)
        {
            return Ok(finished_job(shared, req, entry.id, entry.name));
        }
        let live: Vec<&Target> = targets.iter().filter(|t| !t.holders.is_empty()).collect();
        if live.len() > 1 {
            return Err(Error::Ambiguous {
                message: format!(
                    "{} different files are named {name:?}; ask for one by id",
                    live.len()
                ),
                candidates: live
                    .iter()
                    .map(|t| Candidate {
                        file_id: t.id.to_hex(),
                        size: t.size,
                        holders: t.holders.len() as u32,
                    })
                    .collect(),
            });
        }
        targets.retain(|t| !t.holders.is_empty());
    }
    let Some(mut t) = targets.into_iter().next() else {
        return Err(Error::NotFound(match &target {
            LocateTarget::Id(id) => format!("no live peer shares file {id}"),
            LocateTarget::Name(n) => {
                format!("no live peer shares a file named {n:?}; try `search`")
            }
        }));
    };
    if let LocateTarget::Name(n) = &target {
        t.names.retain(|x| x != n);
        t.names.insert(0, n.clone());
    }
    if let Some(h) = shared.jobs.running_for(&t.id) {
        return Ok(h.snapshot());
    }
    if t.holders.is_empty() {
        return Err(Error::NotFound(format!(
            "no live peer other than this one shares file {}",
            t.id
        )));
    }
    let handle = shared.jobs.insert(req, Some(t.id), JobState::Downloading);
    handle.update(|j| j.bytes_total = Some(t.size));
    let snapshot = handle.snapshot();
    let shared2 = shared.clone();
    shared.rt.spawn(async move {
        let h = handle.clone();
        let temp = shared2.store.temp_path("download");
        let result = tokio::select! {
            r = run_job(&shared2, &h, t, &temp) => r,
            _ = h.cancel.cancelled() => Err(JobEnd::Cancelled),
        };
        let _ = tokio::fs::remove_file(&temp).await;
        match result {
            Ok(()) => {}
            Err(JobEnd::Cancelled) => {
                tracing::info!(job = %h.id, "download cancelled");
                h.update(|j| {
                    j.state = JobState::Cancelled;
                    j.source = None;
                });
            }
            Err(JobEnd::Failed(reason)) => {
                tracing::warn!(job = %h.id, %reason, "download failed");
                h.update(|j| {
                    j.state = JobState::Failed;
                    j.error = Some(reason);
                    j.source = None;
                });
            }
        }
    });
    Ok(snapshot)
}

fn finished_job(shared: &Shared, req: DownloadRequest, id: FileId, name: FileName) -> Job {
    let size = shared.store.by_id(&id).map_or(0, |e| e.size);
    let h = shared.jobs.insert(req, Some(id), JobState::Done);
    h.update(|j| {
        j.name = Some(name.to_string());
        j.bytes_done = size;
        j.bytes_total = Some(size);
    });
    h.snapshot()
}

enum JobEnd {
    Cancelled,
    Failed(String),
}

impl From<std::io::Error> for JobEnd {
    fn from(e: std::io::Error) -> Self {
        JobEnd::Failed(format!("local i/o error: {e}"))
    }
}

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

async fn run_job(
    shared: &Arc<Shared>,
    h: &JobHandle,
    mut t: Target,
    temp: &PathBuf,
) -> Result<(), JobEnd> {
    let name = pick_name(shared, &t);
    h.update(|j| {
        j.file_id = Some(t.id.to_hex());
        j.name = Some(name.to_string());
        j.bytes_total = Some(t.size);
    });
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
            match fetch_from(shared, h, &t, &peer_id, &url, &mut out, &mut p).await {
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
                return Err(JobEnd::Failed(format!("{why} ({})", summarize(&errors))));
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
        return Err(JobEnd::Failed(format!(
            "the downloaded bytes hash to {got}, not {}; nothing was kept (holders: {})",
            t.id,
            summarize(&errors)
        )));
    }
    file.sync_all().await?;
    drop(file);
    let manifest = match t.manifest.clone() {
        Some(m) => m,
        None => {
            let path = temp.clone();
            let (_, m, _) = tokio::task::spawn_blocking(move || crate::store::hash_path(&path))
                .await
                .map_err(|e| JobEnd::Failed(e.to_string()))??;
            m.ok_or_else(|| JobEnd::Failed("downloaded file changed while hashing".into()))?
        }
    };
    let (store_shared, temp2, name2, id) = (shared.clone(), temp.clone(), name.clone(), t.id);
    tokio::task::spawn_blocking(move || {
        store_shared
            .store
            .add_from_temp(&temp2, &name2, id, manifest)
    })
    .await
    .map_err(|e| JobEnd::Failed(e.to_string()))?
    .map_err(|e| JobEnd::Failed(format!("cannot store the file: {e}")))?;
    if let Some(entry) = shared.store.by_name(&name) {
        shared.central.publish(&[entry.to_shared()]).await;
    }
    tracing::info!(job = %h.id, file = %t.id, name = %name, bytes = t.size, "download complete");
    h.update(|j| {
        j.state = JobState::Done;
        j.bytes_done = t.size;
        j.source = None;
    });
    Ok(())
}

fn summarize(errors: &[String]) -> String {
    let mut uniq: Vec<&String> = Vec::new();
    for e in errors {
        if !uniq.contains(&e) {
            uniq.push(e);
        }
    }
    let shown: Vec<&str> = uniq.iter().take(4).map(|s| s.as_str()).collect();
    if shown.is_empty() {
        "no holders".to_owned()
    } else {
        shown.join("; ")
    }
}

/// The name to store under: the first name offered, or, if that name is
/// taken here by a different content, `stem (id12).ext`.
fn pick_name(shared: &Shared, t: &Target) -> FileName {
    let base = t.names.first().cloned().unwrap_or_else(|| {
        format!("{}.bin", t.id.short())
            .parse()
            .expect("hex name is valid")
    });
    match shared.store.by_name(&base) {
        Some(e) if e.id != t.id => {
            let s = base.as_str();
            let (stem, ext) = match s.rfind('.') {
                Some(i) if i > 0 => (&s[..i], &s[i..]),
                _ => (s, ""),
            };
            let mut stem = stem.to_owned();
            while stem.len() + ext.len() + 15 > peerdex_proto::types::MAX_NAME_BYTES {
                stem.pop();
            }
            format!("{stem} ({}){ext}", t.id.short())
                .parse()
                .unwrap_or(base)
        }
        _ => base,
    }
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
    shared: &Arc<Shared>,
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
    let stall = shared.config.stall_timeout;
    let resp = tokio::time::timeout(stall, req.send())
        .await
        .map_err(|_| Attempt::Failed("no answer".into()))?
        .map_err(|e| Attempt::Failed(format!("cannot connect: {}", root_cause(&e))))?;
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
                    root_cause(&e)
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
        })
        .collect();
    let written = p.written;
    h.update(|j| {
        j.bytes_done = written;
        j.sources = sources;
    });
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
