//! Download jobs: locate → fetch chunks from the holders → verify → move
//! into the share folder → publish.
//!
//! Layout:
//! * this file — the job list ([`Jobs`], [`JobHandle`]), [`start`], the job's
//!   life (locating again when holders run out, storing, publishing) and
//!   resuming partial downloads at start ([`resume_partials`]).
//! * `swarm` — fetch the chunks of a file from up to `PSERVER_MAX_SOURCES`
//!   holders at once, each chunk verified against the manifest before it is
//!   kept; strikes, back-off and the end game live there.
//! * `partial` — the download on disk under `data/partial/`: a sparse file
//!   plus a bitmap of verified chunks, so a failed job, a restart or a crash
//!   resumes where it was.
//! * `sequential` — the fallback for a file located without a manifest: one
//!   holder at a time into a temp file, judged by the whole-file hash.
//!
//! Guarantee: no byte that failed verification reaches the share folder or
//! is served. Every chunk is verified against the manifest before it counts
//! (in memory, before it is even written, for chunks up to 8 MiB); the
//! partial lives in the data folder, never listed or served; and the
//! whole-file BLAKE3 of the assembled file is checked against the file id
//! before the file is moved into the share folder and published.
//!
//! Cancelling a job (`DELETE`) discards its partial; a failed job keeps its
//! verified chunks (asking for the file again resumes); a shutdown keeps them
//! too and the next start resumes the job by itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerdex_proto::convert::Manifest;
use peerdex_proto::rest::{Candidate, DownloadRequest, Job, JobState, LocatedFile};
use peerdex_proto::{FileId, FileName, PeerUrl};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Shared;
use crate::error::{Error, Result};
use crate::lookup::LocateTarget;

mod partial;
mod sequential;
pub mod swarm;

use partial::{Partial, PartialMeta};
use swarm::{Source, Swarm, SwarmEnd};

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
    /// Cancel the job; its partial download is discarded.
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
    /// Set on shutdown: stopped jobs keep their partials to resume later.
    stopping: AtomicBool,
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

    /// Stop every job because the PServer is shutting down. Unlike
    /// [`JobHandle::cancel`], partial downloads are kept, and the next start
    /// resumes them. See [`Jobs::shutdown`] to also wait for that.
    pub fn cancel_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for h in self.map.lock().unwrap().values() {
            h.cancel();
        }
    }

    /// [`Jobs::cancel_all`], then wait (at most `grace`) until every job has
    /// saved its partial download.
    pub async fn shutdown(&self, grace: Duration) {
        self.cancel_all();
        let running: Vec<Arc<JobHandle>> = self
            .map
            .lock()
            .unwrap()
            .values()
            .filter(|h| !h.is_final())
            .cloned()
            .collect();
        let all = futures_util::future::join_all(running.iter().map(|h| {
            let mut rx = h.subscribe();
            async move {
                let _ = rx.wait_for(|j| j.state.is_final()).await;
            }
        }));
        let _ = tokio::time::timeout(grace, all).await;
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Add a job. A job that is not final yet for a file that already has a
    /// running job is refused with that job (checked under the lock, so two
    /// requests for the same file never start two jobs).
    fn insert(
        &self,
        request: DownloadRequest,
        file_id: Option<FileId>,
        state: JobState,
    ) -> std::result::Result<Arc<JobHandle>, Arc<JobHandle>> {
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
        if let Some(fid) = file_id.filter(|_| !state.is_final())
            && let Some(running) = map
                .values()
                .find(|h| !h.is_final() && h.file_id.lock().unwrap().as_ref() == Some(&fid))
        {
            return Err(running.clone());
        }
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
        Ok(handle)
    }
}

/// Validated answer of a locate: what to fetch and from whom.
#[derive(Debug, Clone)]
pub(crate) struct Target {
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
    if t.holders.is_empty() {
        return Err(Error::NotFound(format!(
            "no live peer other than this one shares file {}",
            t.id
        )));
    }
    let handle = match shared.jobs.insert(req, Some(t.id), JobState::Downloading) {
        Ok(h) => h,
        Err(running) => return Ok(running.snapshot()),
    };
    handle.update(|j| j.bytes_total = Some(t.size));
    let snapshot = handle.snapshot();
    spawn_job(shared, handle, Begin::Located(t));
    Ok(snapshot)
}

fn finished_job(shared: &Shared, req: DownloadRequest, id: FileId, name: FileName) -> Job {
    let size = shared.store.by_id(&id).map_or(0, |e| e.size);
    let h = match shared.jobs.insert(req, Some(id), JobState::Done) {
        Ok(h) | Err(h) => h,
    };
    h.update(|j| {
        j.name = Some(name.to_string());
        j.bytes_done = size;
        j.bytes_total = Some(size);
    });
    h.snapshot()
}

fn partial_dir(shared: &Shared) -> PathBuf {
    shared.store.data_dir().join("partial")
}

/// Resume every partial download found in the data folder (call once at
/// start). Each becomes a job that locates the file's holders again.
pub fn resume_partials(shared: &Arc<Shared>) {
    let dir = partial_dir(shared);
    for stored in partial::scan(&dir) {
        let id = stored.id;
        if shared.store.by_id(&id).is_some() {
            partial::remove(&dir, &id);
            continue;
        }
        let req = DownloadRequest {
            file_id: Some(id.to_hex()),
            name: None,
        };
        let Ok(h) = shared.jobs.insert(req, Some(id), JobState::Locating) else {
            continue;
        };
        let n = stored.meta.manifest.chunk_hashes.len();
        let cs = stored.meta.manifest.chunk_size;
        let kept = (stored.verified_chunks as u64 * cs).min(stored.meta.size);
        tracing::info!(job = %h.id, file = %id, name = %stored.meta.name,
            chunks_kept = stored.verified_chunks, chunks = n, "resuming a partial download");
        h.update(|j| {
            j.name = Some(stored.meta.name.clone());
            j.bytes_total = Some(stored.meta.size);
            j.bytes_done = kept;
        });
        spawn_job(shared, h, Begin::Resume(stored.meta));
    }
}

/// How a job starts: with the holders just located, or from a partial
/// download found at start (holders to be located).
enum Begin {
    Located(Target),
    Resume(PartialMeta),
}

fn spawn_job(shared: &Arc<Shared>, h: Arc<JobHandle>, begin: Begin) {
    let shared = shared.clone();
    let rt = shared.rt.clone();
    rt.spawn(async move {
        let mut slot: Option<Partial> = None;
        let mut temp: Option<PathBuf> = None;
        let result = tokio::select! {
            r = drive(&shared, &h, begin, &mut slot, &mut temp) => r,
            _ = h.cancel.cancelled() => Err(JobEnd::Cancelled),
        };
        if let Some(t) = temp {
            let _ = tokio::fs::remove_file(&t).await;
        }
        let stopping = shared.jobs.stopping();
        if let Some(p) = slot.take() {
            match &result {
                Err(JobEnd::Cancelled) if !stopping => p.discard().await,
                _ => p.close().await,
            }
        }
        match result {
            Ok(()) => {}
            Err(JobEnd::Cancelled) if stopping => {
                tracing::info!(job = %h.id, "download interrupted by shutdown; it resumes at the next start");
                h.update(|j| {
                    j.state = JobState::Cancelled;
                    j.error = Some("interrupted by shutdown; resumes at the next start".into());
                    j.source = None;
                });
            }
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

/// Locate `id` again; `None` if nobody (but us) has it or the lookup failed.
async fn relocate(shared: &Shared, id: FileId) -> Option<Target> {
    let files = shared
        .lookup
        .locate(&shared.central, &LocateTarget::Id(id))
        .await
        .ok()?;
    let own = shared.peer_id.to_string();
    files
        .iter()
        .filter_map(|f| validate(f, &own))
        .find(|f| f.id == id && !f.holders.is_empty())
}

/// Pause before locating again in round `round` (1-based).
fn relocate_pause(round: u32) -> Duration {
    Duration::from_millis(500 << (round - 1).min(4))
}

async fn drive(
    shared: &Arc<Shared>,
    h: &JobHandle,
    begin: Begin,
    slot: &mut Option<Partial>,
    temp: &mut Option<PathBuf>,
) -> std::result::Result<(), JobEnd> {
    let mut t = match begin {
        Begin::Located(t) => t,
        Begin::Resume(meta) => {
            let id: FileId = meta
                .file_id
                .parse()
                .map_err(|_| JobEnd::Failed("bad partial-download state".into()))?;
            let mut round = 0;
            let mut t = loop {
                if let Some(t) = relocate(shared, id).await {
                    break t;
                }
                round += 1;
                if round > LOCATE_ROUNDS {
                    return Err(JobEnd::Failed(format!(
                        "no live peer shares file {id}; the verified chunks are kept — download it again to resume"
                    )));
                }
                tokio::time::sleep(relocate_pause(round)).await;
            };
            if let Ok(n) = meta.name.parse::<FileName>() {
                t.names.retain(|x| x != &n);
                t.names.insert(0, n);
            }
            if t.manifest.is_none() {
                t.manifest = Manifest::from_rest(&meta.manifest, t.size).ok();
            }
            t
        }
    };
    let name = pick_name(shared, &t);
    h.update(|j| {
        j.state = JobState::Downloading;
        j.file_id = Some(t.id.to_hex());
        j.name = Some(name.to_string());
        j.bytes_total = Some(t.size);
    });
    let manifest = match t.manifest.clone() {
        Some(m) => {
            swarm_download(shared, h, &mut t, m.clone(), &name, slot).await?;
            let part = slot
                .as_ref()
                .map(|p| p.part_path().to_owned())
                .ok_or_else(|| JobEnd::Failed("partial download vanished".into()))?;
            store_and_publish(shared, h, &t, &name, &part, m).await?;
            if let Some(p) = slot.take() {
                p.discard().await; // its state files; the .part became the shared file
            }
            return Ok(());
        }
        None => {
            let path = temp.insert(shared.store.temp_path("download")).clone();
            sequential::run(shared, h, &mut t, &path).await?;
            let p2 = path.clone();
            let (_, m, _) = tokio::task::spawn_blocking(move || crate::store::hash_path(&p2))
                .await
                .map_err(|e| JobEnd::Failed(e.to_string()))??;
            m.ok_or_else(|| JobEnd::Failed("downloaded file changed while hashing".into()))?
        }
    };
    let path = temp.take().expect("temp path set above");
    store_and_publish(shared, h, &t, &name, &path, manifest).await
}

/// Fetch every chunk into the partial download (opened into `slot`) and
/// check the whole-file hash.
async fn swarm_download(
    shared: &Arc<Shared>,
    h: &JobHandle,
    t: &mut Target,
    manifest: Manifest,
    name: &FileName,
    slot: &mut Option<Partial>,
) -> std::result::Result<(), JobEnd> {
    let dir = partial_dir(shared);
    let (id, size, m2, n2) = (t.id, t.size, manifest.clone(), name.to_string());
    let opened = tokio::task::spawn_blocking(move || Partial::open(&dir, &id, size, &m2, &n2))
        .await
        .map_err(|e| JobEnd::Failed(e.to_string()))??;
    let partial = slot.insert(opened);
    let kept = partial.verified_bytes();
    let mut swarm = Swarm::new(
        manifest,
        t.size,
        partial.verified(),
        swarm::Params::new(shared.config.max_sources, shared.config.stall_timeout),
    );
    let (done, n) = swarm.chunks();
    if done > 0 {
        tracing::info!(job = %h.id, file = %t.id, chunks_kept = done, chunks = n, "resuming from verified chunks on disk");
    }
    h.update(|j| j.bytes_done = kept);
    let fetcher = swarm::http_fetcher(shared.clone(), t.id);
    let mut round = 0;
    loop {
        swarm.add_holders(t.holders.iter().map(|(peer_id, url)| Source {
            peer_id: peer_id.clone(),
            url: url.clone(),
        }));
        let mut on_progress = |r: swarm::Report| {
            h.update(|j| {
                j.state = JobState::Downloading;
                j.bytes_done = r.verified_bytes;
                j.sources = r.sources;
                j.source = r.fastest;
            })
        };
        match swarm.run(partial, &fetcher, &mut on_progress).await {
            Ok(()) => break,
            Err(SwarmEnd::Io(e)) => return Err(e.into()),
            Err(SwarmEnd::NoHolders(why)) => {
                round += 1;
                if round > LOCATE_ROUNDS {
                    let (done, n) = swarm.chunks();
                    return Err(JobEnd::Failed(format!(
                        "no holder could send the file ({why}); {done} of {n} chunks are verified and kept — download it again to resume"
                    )));
                }
                h.update(|j| {
                    j.state = JobState::Locating;
                    j.source = None;
                });
                tokio::time::sleep(relocate_pause(round)).await;
                if let Some(fresh) = relocate(shared, t.id).await {
                    t.holders = fresh.holders;
                }
            }
        }
    }
    h.update(|j| {
        j.state = JobState::Verifying;
        j.source = None;
    });
    let got = partial.finish().await?;
    if got != t.id {
        // Every chunk matched the manifest, yet the file is not the one asked
        // for: the manifest itself was wrong. Nothing of it can be trusted.
        if let Some(p) = slot.take() {
            p.discard().await;
        }
        return Err(JobEnd::Failed(format!(
            "every chunk matched the manifest but the file hashes to {got}, not {}: the manifest was wrong; nothing was kept",
            t.id
        )));
    }
    Ok(())
}

/// Move a verified file into the share folder and publish it.
async fn store_and_publish(
    shared: &Arc<Shared>,
    h: &JobHandle,
    t: &Target,
    name: &FileName,
    path: &Path,
    manifest: Manifest,
) -> std::result::Result<(), JobEnd> {
    let (s, p, n, id) = (shared.clone(), path.to_owned(), name.clone(), t.id);
    tokio::task::spawn_blocking(move || s.store.add_from_temp(&p, &n, id, manifest))
        .await
        .map_err(|e| JobEnd::Failed(e.to_string()))?
        .map_err(|e| JobEnd::Failed(format!("cannot store the file: {e}")))?;
    if let Some(entry) = shared.store.by_name(name) {
        shared.central.publish(&[entry.to_shared()]).await;
    }
    tracing::info!(job = %h.id, file = %t.id, name = %name, bytes = t.size, "download complete");
    h.update(|j| {
        j.state = JobState::Done;
        j.bytes_done = t.size;
        j.source = None;
        j.error = None;
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

pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
