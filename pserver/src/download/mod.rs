//! Download jobs: locate → fetch chunks from the holders → verify → move
//! into the share folder → publish.
//!
//! Layout:
//! * this file — the [`Downloads`] handle: starting a job, the job's life
//!   (locating again when holders run out, storing, publishing) and resuming
//!   partial downloads at start; [`DownloadError`], why a job failed.
//! * `jobs` — the job list ([`Jobs`], [`JobHandle`]) and their live state.
//! * `scheduler` — the swarm: fetch the chunks of a file from up to
//!   `PSERVER_MAX_SOURCES` holders at once; strikes, back-off, end game.
//! * `holder` — one holder as the swarm sees it: strikes, back-off, rate.
//! * `chunk` — one request for one chunk, verified against the manifest
//!   before it is kept ([`chunk::ChunkRequest`]).
//! * `transport` — range requests over the peer API, under the rate cap.
//! * `manifest` — before a byte is fetched: the manifest from a holder,
//!   checked against the file id and confirmed by its last chunk.
//! * `partial` — the download on disk under `data/partial/`: a sparse file
//!   plus a bitmap of verified chunks, so a failed job, a restart or a crash
//!   resumes where it was.
//!
//! Every download goes through the swarm (one holder is a swarm of one),
//! whatever the file's size.
//!
//! Replica fetches (the directory's FETCH tasks, see `crate::download::replicas`)
//! are downloads too, through the same engine and with the same
//! guarantees, with another destination ([`Dest::Replica`]): their
//! partials live under `data/replicas/partial/` (never resumed as the
//! user's downloads), the verified file moves into the replica space, and
//! it is published with `replica = true`. They are jobs of a list of
//! their own, not the user's: `GET /api/v1/downloads` shows what the user
//! asked for, `GET /api/v1/status` the replica fetches in progress.
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
//! too and the next start resumes the job by itself. A job that ends with no
//! verified chunk on disk leaves nothing behind.
//!
//! Disk space: nothing is allocated before the size is known from a
//! manifest verified against the id, and that size (less what a kept
//! partial already holds) must fit in the data folder besides
//! `PSERVER_MIN_FREE_BYTES` and what other transfers were promised (see
//! `crate::store::space`); else the job fails at once, naming the figures. Kept
//! partials are capped together by `PSERVER_MAX_PARTIAL_BYTES`, oldest
//! dropped first (never one a job is running for), whenever a job ends and
//! at start. A disk that fills anyway fails the job with the folder and the
//! figures; the server keeps serving.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use peerdex_proto::rest::{Candidate, DownloadRequest, Job, JobState, LocatedFile};
use peerdex_proto::tree::Manifest;
use peerdex_proto::{FileId, FileName, PeerId, PeerUrl};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::link::Central;
use crate::link::lookup::{LocateTarget, Lookup};
use crate::metrics::Metrics;
use crate::rate::RateLimiter;
use crate::rt::MainRt;
use crate::store::Store;
use crate::store::space::{Bytes, Claim, NoSpace};

mod engine;
mod jobs;
pub(crate) mod replicas;

use engine::{manifest, partial, scheduler, transport};

pub(crate) use jobs::{JobHandle, Jobs};
use partial::Partial;
use scheduler::{Swarm, SwarmEnd};
use transport::Source;

/// Rounds of re-locating when every holder failed, before giving up.
const LOCATE_ROUNDS: u32 = 3;

/// The download engine, as a cheap handle: the job list plus what jobs
/// use (the store, the central, the lookup, the HTTP client and the rate
/// cap). Jobs run on the main runtime (see `crate::rt`).
#[derive(Clone)]
pub(crate) struct Downloads(Arc<Engine>);

/// What a job uses; shared by every job of one PServer.
pub(crate) struct Engine {
    jobs: Jobs,
    /// Replica fetches in progress (and the last ones finished).
    replica_jobs: Jobs,
    store: Arc<Store>,
    central: Arc<Central>,
    lookup: Arc<Lookup>,
    http: crate::peer::network::PeerHttp,
    download_limit: Arc<RateLimiter>,
    peer_id: PeerId,
    max_sources: usize,
    stall_timeout: Duration,
    rt: MainRt,
    metrics: Metrics,
}

/// Settings of the download engine (from `Config`).
pub(crate) struct Settings {
    pub max_sources: usize,
    pub stall_timeout: Duration,
    pub max_download_bps: u64,
    pub metrics: Metrics,
}

impl Downloads {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<Store>,
        central: Arc<Central>,
        lookup: Arc<Lookup>,
        http: crate::peer::network::PeerHttp,
        peer_id: PeerId,
        settings: Settings,
        rt: MainRt,
    ) -> Self {
        Self(Arc::new(Engine {
            jobs: Jobs::default(),
            replica_jobs: Jobs::default(),
            store,
            central,
            lookup,
            http,
            download_limit: Arc::new(RateLimiter::new(settings.max_download_bps)),
            peer_id,
            max_sources: settings.max_sources,
            stall_timeout: settings.stall_timeout,
            rt,
            metrics: settings.metrics,
        }))
    }

    /// Start a download (the `POST /api/v1/downloads` handler's logic), on
    /// the main runtime.
    pub(crate) async fn start(&self, req: DownloadRequest) -> Result<Job> {
        let engine = self.0.clone();
        self.0
            .rt
            .run(async move { start(&engine, req).await })
            .await
    }

    pub(crate) fn get(&self, id: &Uuid) -> Option<Arc<JobHandle>> {
        self.0.jobs.get(id)
    }

    /// Forget a finished job (see [`Jobs::forget`]).
    pub(crate) fn forget(&self, id: &Uuid) -> bool {
        self.0.jobs.forget(id)
    }

    pub(crate) fn list(&self) -> Vec<Job> {
        self.0.jobs.list()
    }

    /// Follow changes of the job list: the value moves on every change.
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.jobs.watch()
    }

    /// Is the PServer shutting down (live streams end)?
    pub(crate) fn stopping(&self) -> bool {
        self.0.jobs.stopping()
    }

    /// Jobs not final yet.
    pub(crate) fn active(&self) -> u32 {
        self.0.jobs.active()
    }

    /// Stop every job, keeping partials for the next start; wait at most `grace`.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        tokio::join!(
            self.0.jobs.shutdown(grace),
            self.0.replica_jobs.shutdown(grace)
        );
    }

    /// Replica fetches not finished yet.
    pub(crate) fn replica_fetches(&self) -> Vec<peerdex_proto::rest::ReplicaFetch> {
        self.0
            .replica_jobs
            .list()
            .into_iter()
            .filter(|j| !j.state.is_final())
            .map(|j| peerdex_proto::rest::ReplicaFetch {
                file_id: j.file_id.unwrap_or_default(),
                name: j.name.unwrap_or_default(),
                bytes_done: j.bytes_done,
                bytes_total: j.bytes_total.unwrap_or(0),
            })
            .collect()
    }

    /// Fetch `id` for the directory into the replica space under `name`,
    /// and publish it with `replica = true` (see [`Dest::Replica`]). At
    /// most `max_size` bytes: the space was promised for that much.
    /// Resolves when the fetch ends; `cancel` stops it (its partial is
    /// discarded, unless the PServer is shutting down: then it is kept for
    /// the task's return after a restart). A failed fetch keeps its
    /// verified chunks for the next attempt; see
    /// [`Downloads::discard_replica_partial`].
    pub(crate) async fn fetch_replica(
        &self,
        id: FileId,
        name: FileName,
        max_size: u64,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> std::result::Result<(), ReplicaEnd> {
        fetch_replica(&self.0, id, name, max_size, cancel).await
    }

    /// Delete what a replica fetch of `id` kept (after its last attempt).
    pub(crate) async fn discard_replica_partial(&self, id: FileId) {
        let dir = self.0.store.replica_partial_dir();
        let _ = tokio::task::spawn_blocking(move || partial::remove(&dir, &id)).await;
    }

    /// Delete the replica partials of fetches the directory no longer asks
    /// for (`wanted`), and that are not running.
    pub(crate) async fn sweep_replica_partials(&self, wanted: std::collections::HashSet<FileId>) {
        let dir = self.0.store.replica_partial_dir();
        let busy = self.0.replica_jobs.busy_files();
        let _ = tokio::task::spawn_blocking(move || {
            for u in partial::usage(&dir) {
                if !wanted.contains(&u.id) && !busy.contains(&u.id) {
                    tracing::info!(file = %u.id, bytes = u.bytes, "deleting a replica fetch the directory no longer asks for");
                    partial::remove(&dir, &u.id);
                }
            }
        })
        .await;
    }

    /// Resume every partial download found in the data folder (call once
    /// at start).
    pub(crate) fn resume_partials(&self) {
        resume_partials(&self.0);
    }
}

/// Why a job failed; the job's `error` field is this message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownloadError {
    #[error(
        "no live peer shares file {0}; the verified chunks are kept — download it again to resume"
    )]
    NoLivePeer(FileId),
    #[error(
        "no holder could send the file ({why}); {done} of {total} chunks are verified and kept — download it again to resume"
    )]
    NoHolder {
        why: String,
        done: usize,
        total: usize,
    },
    #[error("no holder could give a manifest of file {id} that verifies ({why})")]
    NoManifest { id: FileId, why: String },
    #[error("{0}")]
    NoSpace(NoSpace),
    #[error("local i/o error: {0}")]
    LocalIo(#[from] io::Error),
    #[error("cannot store the file: {0}")]
    Store(Error),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A replica the directory described wrongly (larger than it said).
    #[error("{0}")]
    Refused(String),
}

impl DownloadError {
    /// Would trying again (soon, from the same holders) be pointless?
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            DownloadError::NoSpace(_) | DownloadError::Store(_) | DownloadError::Refused(_)
        )
    }
}

/// How a replica fetch ended, if not done.
#[derive(Debug)]
pub(crate) enum ReplicaEnd {
    Cancelled,
    Failed(DownloadError),
}

/// Where a download goes.
#[derive(Debug, Clone)]
pub(crate) enum Dest {
    /// The user's download: into the share folder, under the best name.
    Share,
    /// A replica for the directory: into the replica space under `name`,
    /// at most `max_size` bytes.
    Replica { name: FileName, max_size: u64 },
}

/// Validated answer of a locate: what to fetch and from whom.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    id: FileId,
    size: u64,
    names: Vec<FileName>,
    holders: Vec<(String, PeerUrl)>,
}

impl Target {
    /// Store under `name` (the one asked for, or the partial's) first.
    fn prefer_name(&mut self, name: FileName) {
        self.names.retain(|x| x != &name);
        self.names.insert(0, name);
    }
}

fn validate(f: &LocatedFile, own_peer: &str) -> Option<Target> {
    let id: FileId = f.file_id.parse().ok()?;
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
        holders,
    })
}

/// Start a download (the `POST /api/v1/downloads` handler's logic). Name
/// lookups are resolved before a job exists, so an unknown or ambiguous name
/// is answered at once.
async fn start(shared: &Arc<Engine>, req: DownloadRequest) -> Result<Job> {
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
    // Held here as a replica: the user's copy is made from it, whatever
    // the directory says (this peer may hold the last live copy).
    if let LocateTarget::Id(id) = &target
        && let Some(r) = shared.store.replica(id)
    {
        let t = Target {
            id: r.id,
            size: r.size,
            names: vec![r.name.clone()],
            holders: Vec::new(),
        };
        return Ok(promote_job(shared, req, &t));
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
        if let Some(r) = shared
            .store
            .replicas()
            .into_iter()
            .find(|r| &r.name == name)
            && let Some(t) = targets.iter_mut().find(|t| t.id == r.id)
        {
            t.prefer_name(name.clone());
            let t = t.clone();
            return Ok(promote_job(shared, req, &t));
        }
        let live: Vec<&Target> = targets.iter().filter(|t| !t.holders.is_empty()).collect();
        if live.len() > 1 {
            return Err(Error::Ambiguous {
                message: format!(
                    "{} different files are named \"{name}\"; ask for one by id",
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
                format!("no live peer shares a file named \"{n}\"; try `search`")
            }
        }));
    };
    if let LocateTarget::Name(n) = &target {
        t.prefer_name(n.clone());
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
    // The name it will most likely be stored under (final once the
    // manifest is confirmed), so the job is recognisable from the start.
    let name = pick_name(shared, &t, &Dest::Share);
    handle.update(|j| {
        j.bytes_total = Some(t.size);
        j.name = Some(name.to_string());
    });
    let snapshot = handle.snapshot();
    spawn_job(shared, handle, Begin::Located(t));
    Ok(snapshot)
}

/// A job that makes the replica of `t.id` held here the user's copy
/// ([`crate::store::Store::promote_replica`]: verified again, no
/// transfer), announces it as the user's and withdraws the replica's name.
fn promote_job(shared: &Arc<Engine>, req: DownloadRequest, t: &Target) -> Job {
    let h = match shared.jobs.insert(req, Some(t.id), JobState::Downloading) {
        Ok(h) => h,
        Err(running) => return running.snapshot(),
    };
    let name = pick_name(shared, t, &Dest::Share);
    h.update(|j| {
        j.name = Some(name.to_string());
        j.bytes_total = Some(t.size);
    });
    let snapshot = h.snapshot();
    let (shared, id) = (shared.clone(), t.id);
    let announced = shared.store.replica(&id).map(|r| r.name);
    let rt = shared.rt.clone();
    rt.spawn(async move {
        let (s, n) = (shared.clone(), name.clone());
        let promoted = tokio::task::spawn_blocking(move || s.store.promote_replica(&id, &n))
            .await
            .unwrap_or_else(|e| Err(Error::Internal(e.to_string())));
        match promoted {
            Ok((entry, withdraw)) => {
                shared.central.publish(&[entry.to_shared()]).await;
                if let Some(old) = withdraw {
                    shared.central.unpublish(&[(id, old)]).await;
                }
                tracing::info!(job = %h.id, file = %id, name = %entry.name, bytes = entry.size, "download complete (from this peer's replica space)");
                shared.metrics.download_finished(0);
                h.update(|j| {
                    j.state = JobState::Done;
                    j.name = Some(entry.name.to_string());
                    j.bytes_done = entry.size;
                    j.bytes_total = Some(entry.size);
                });
            }
            Err(e) => {
                tracing::warn!(job = %h.id, file = %id, error = %e, "download failed");
                // A damaged replica was deleted: no longer announce it.
                if shared.store.replica(&id).is_none()
                    && shared.store.by_id(&id).is_none()
                    && let Some(old) = announced
                {
                    shared.central.unpublish(&[(id, old)]).await;
                }
                shared.metrics.download_finished(1);
                h.update(|j| {
                    j.state = JobState::Failed;
                    j.error = Some(e.to_string());
                });
            }
        }
    });
    snapshot
}

fn finished_job(shared: &Engine, req: DownloadRequest, id: FileId, name: FileName) -> Job {
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

fn partial_dir(shared: &Engine, dest: &Dest) -> PathBuf {
    match dest {
        Dest::Share => shared.store.data_dir().join("partial"),
        Dest::Replica { .. } => shared.store.replica_partial_dir(),
    }
}

/// Resume every partial download found in the data folder (call once at
/// start). Each becomes a job that locates the file's holders again.
fn resume_partials(shared: &Arc<Engine>) {
    let dir = partial_dir(shared, &Dest::Share);
    let found = partial::scan(&dir);
    let dropped = partial::enforce_cap(
        &dir,
        shared.store.space().max_partial(),
        &Default::default(),
    );
    for u in &dropped {
        tracing::info!(file = %u.id, bytes = u.bytes, "dropping the oldest partial download: partials exceed PSERVER_MAX_PARTIAL_BYTES");
    }
    for stored in found
        .into_iter()
        .filter(|s| !dropped.iter().any(|u| u.id == s.id))
    {
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
        let m = &stored.manifest;
        let kept = (stored.verified_chunks as u64 * m.chunk_size()).min(m.size());
        tracing::info!(job = %h.id, file = %id, name = %stored.meta.name,
            chunks_kept = stored.verified_chunks, chunks = m.chunks(), "resuming a partial download");
        h.update(|j| {
            j.name = Some(stored.meta.name.clone());
            j.bytes_total = Some(m.size());
            j.bytes_done = kept;
        });
        spawn_job(
            shared,
            h,
            Begin::Resume(stored.meta.name, Arc::new(stored.manifest)),
        );
    }
}

/// How a job starts: with the holders just located, or from a partial
/// download found at start (holders to be located).
enum Begin {
    Located(Target),
    /// The name to store under and the manifest verified before.
    Resume(String, Arc<Manifest>),
}

fn spawn_job(shared: &Arc<Engine>, h: Arc<JobHandle>, begin: Begin) {
    let shared = shared.clone();
    let rt = shared.rt.clone();
    rt.spawn(async move {
        let mut slot: Option<Partial> = None;
        let result = tokio::select! {
            r = drive(&shared, &h, begin, &mut slot, &Dest::Share) => r,
            _ = h.cancel.cancelled() => Err(JobEnd::Cancelled),
        };
        let stopping = shared.jobs.stopping();
        let mut kept = false;
        if let Some(p) = slot.take() {
            // A cancelled job leaves nothing behind; a failed or stopped one
            // keeps its verified chunks, if any made it to disk (the writer
            // drains its queue first).
            match &result {
                Err(JobEnd::Cancelled) if !stopping => p.discard().await,
                _ => kept = p.close_or_discard().await,
            }
        }
        match &result {
            Ok(()) => shared.metrics.download_finished(0),
            Err(JobEnd::Failed(_)) => shared.metrics.download_finished(1),
            Err(JobEnd::Cancelled) => shared.metrics.download_finished(2),
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
                    j.error = Some(reason.to_string());
                    j.source = None;
                });
            }
        }
        if kept {
            // Now final: this job's partial may go too if it is the oldest.
            let (dir, cap, busy) = (
                partial_dir(&shared, &Dest::Share),
                shared.store.space().max_partial(),
                shared.jobs.busy_files(),
            );
            let dropped =
                tokio::task::spawn_blocking(move || partial::enforce_cap(&dir, cap, &busy)).await;
            for u in dropped.iter().flatten() {
                tracing::info!(file = %u.id, bytes = u.bytes, "dropping the oldest partial download: partials exceed PSERVER_MAX_PARTIAL_BYTES");
            }
        }
    });
}

enum JobEnd {
    Cancelled,
    Failed(DownloadError),
}

impl<E: Into<DownloadError>> From<E> for JobEnd {
    fn from(e: E) -> Self {
        JobEnd::Failed(e.into())
    }
}

/// Locate `id` again: `Ok(None)` if nobody but us holds it, `Err(())` if
/// the lookup itself failed (then the holders known so far stay worth
/// asking).
async fn relocate(shared: &Engine, id: FileId) -> std::result::Result<Option<Target>, ()> {
    let files = shared
        .lookup
        .locate(&shared.central, &LocateTarget::Id(id))
        .await
        .map_err(|_| ())?;
    let own = shared.peer_id.to_string();
    Ok(files
        .iter()
        .filter_map(|f| validate(f, &own))
        .find(|f| f.id == id && !f.holders.is_empty()))
}

/// Pause before locating again in round `round` (1-based).
fn relocate_pause(round: u32) -> Duration {
    Duration::from_millis(500 << (round - 1).min(4))
}

async fn drive(
    shared: &Arc<Engine>,
    h: &JobHandle,
    begin: Begin,
    slot: &mut Option<Partial>,
    dest: &Dest,
) -> std::result::Result<(), JobEnd> {
    let fetcher = transport::http_fetcher(
        shared.http.clone(),
        shared.download_limit.clone(),
        id_of(&begin),
        shared.metrics.clone(),
    );
    let mut strikes = manifest::Strikes::new();
    let mut confirmed_last = None;
    let (mut t, manifest) = match begin {
        Begin::Located(t) => {
            let (dir, id) = (partial_dir(shared, dest), t.id);
            let stored =
                tokio::task::spawn_blocking(move || partial::stored_manifest(&dir, &id)).await?;
            match stored {
                // Verified (and confirmed) when that partial was created.
                Some(m) => (t, Arc::new(m)),
                None => {
                    let m = confirm_manifest(shared, h, &t, &fetcher, &mut strikes, dest).await?;
                    confirmed_last = m.last.map(|(i, b)| (m.from.peer_id.clone(), i, b));
                    (t, m.manifest)
                }
            }
        }
        Begin::Resume(name, manifest) => {
            let id = manifest.id();
            let mut round = 0;
            let mut t = loop {
                if let Ok(Some(t)) = relocate(shared, id).await {
                    break t;
                }
                round += 1;
                if round > LOCATE_ROUNDS {
                    return Err(DownloadError::NoLivePeer(id).into());
                }
                tokio::time::sleep(relocate_pause(round)).await;
            };
            if let Ok(n) = name.parse::<FileName>() {
                t.prefer_name(n);
            }
            (t, manifest)
        }
    };
    // The size that counts from here on is the verified one.
    t.size = manifest.size();
    if let Dest::Replica { max_size, .. } = dest
        && t.size > *max_size
    {
        return Err(DownloadError::Refused(format!(
            "file {} is {} bytes (its verified manifest says so), more than the {max_size} bytes the directory said",
            t.id, t.size
        ))
        .into());
    }
    let name = pick_name(shared, &t, dest);
    h.update(|j| {
        j.state = JobState::Downloading;
        j.file_id = Some(t.id.to_hex());
        j.name = Some(name.to_string());
        j.bytes_total = Some(t.size);
    });
    let dir = partial_dir(shared, dest);
    let claim = claim_space(shared, &dir, &manifest, dest).await?;
    let (d2, m2, n2) = (dir.clone(), manifest.clone(), name.to_string());
    let opened = tokio::task::spawn_blocking(move || Partial::open(&d2, &m2, &n2))
        .await?
        .map_err(|e| shared.store.space().explain(e, &dir))?;
    let partial = slot.insert(opened);
    let mut swarm = Swarm::new(
        manifest.clone(),
        partial.verified(),
        scheduler::Params {
            metrics: Some(shared.metrics.clone()),
            ..scheduler::Params::new(shared.max_sources, shared.stall_timeout)
        },
    );
    let (done, n) = swarm.chunks();
    if done > 0 {
        tracing::info!(job = %h.id, file = %t.id, chunks_kept = done, chunks = n, "resuming from verified chunks on disk");
    }
    swarm.add_holders(t.holders.iter().map(|(peer_id, url)| Source {
        peer_id: peer_id.clone(),
        url: url.clone(),
    }));
    for (peer, why) in strikes {
        swarm.strike(&peer, why);
    }
    if let Some((peer, i, bytes)) = confirmed_last
        && swarm.credit(&peer, i)
    {
        partial
            .write(i, bytes)
            .await
            .map_err(|e| shared.store.space().explain(e, &dir))?;
    }
    swarm_download(shared, h, &mut t, &mut swarm, partial, &fetcher, &claim)
        .await
        .map_err(|e| match e {
            JobEnd::Failed(DownloadError::LocalIo(e)) => JobEnd::Failed(DownloadError::LocalIo(
                shared.store.space().explain(e, &dir),
            )),
            e => e,
        })?;
    drop(claim);
    store_and_publish(shared, h, &t, &name, partial.part_path(), manifest, dest).await?;
    if let Some(p) = slot.take() {
        p.discard().await; // its state files; the .part became the shared file
    }
    // Done only now: nothing of the download is left in the data folder.
    h.update(|j| {
        j.state = JobState::Done;
        j.bytes_done = t.size;
        j.source = None;
        j.error = None;
    });
    Ok(())
}

/// Promise the space the download still needs (its size, less what a kept
/// partial already holds) in the data folder, and check the share folder
/// too if the file will be copied there from another file system.
async fn claim_space(
    shared: &Arc<Engine>,
    dir: &Path,
    manifest: &Arc<Manifest>,
    dest: &Dest,
) -> std::result::Result<Claim, DownloadError> {
    let (store, d, m) = (shared.store.clone(), dir.to_owned(), manifest.clone());
    // A replica moves within the replica space: no second copy anywhere.
    let to_share = matches!(dest, Dest::Share);
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&d).map_err(|e| store.space().explain(e, &d))?;
        let what = format!("file {} ({})", m.id(), Bytes(m.size()));
        let need = m.size() - partial::on_disk(&d, &m);
        let claim = store
            .space()
            .claim(&d, need, &what)
            .map_err(DownloadError::NoSpace)?;
        let share = store.share_dir();
        if to_share && !crate::store::space::same_fs(&d, share) {
            store
                .space()
                .check(share, m.size(), &what)
                .map_err(DownloadError::NoSpace)?;
        }
        Ok(claim)
    })
    .await?
}

/// Does a download of `m` fit in `dir` (before anything is fetched)?
fn fits(shared: &Engine, dir: &Path, m: &Manifest) -> std::result::Result<(), NoSpace> {
    let need = m.size() - partial::on_disk(dir, m);
    let what = format!("file {} ({})", m.id(), Bytes(m.size()));
    shared.store.space().check(dir, need, &what)
}

fn id_of(begin: &Begin) -> FileId {
    match begin {
        Begin::Located(t) => t.id,
        Begin::Resume(_, m) => m.id(),
    }
}

/// Get a manifest of `t` from its holders that verifies against the id and
/// is confirmed by its last chunk, locating again when no holder gives one.
async fn confirm_manifest(
    shared: &Arc<Engine>,
    h: &JobHandle,
    t: &Target,
    fetcher: &transport::Fetcher,
    strikes: &mut manifest::Strikes,
    dest: &Dest,
) -> std::result::Result<manifest::Confirmed, JobEnd> {
    let mut holders: Vec<Source> = t
        .holders
        .iter()
        .map(|(peer_id, url)| Source {
            peer_id: peer_id.clone(),
            url: url.clone(),
        })
        .collect();
    let mut round = 0;
    let mut first_why: Option<String> = None;
    let dir = partial_dir(shared, dest);
    let fit = |m: &Manifest| fits(shared, &dir, m);
    loop {
        // A holder that lied once is asked again only after the others.
        holders.sort_by_key(|s| strikes.iter().filter(|(p, _)| *p == s.peer_id).count());
        let tried = manifest::confirm(
            &shared.http,
            fetcher,
            t.id,
            &holders,
            shared.stall_timeout,
            strikes,
            &fit,
            &shared.metrics,
        )
        .await;
        match tried {
            Ok(c) => return Ok(c),
            Err(manifest::Unconfirmed::NoSpace(e)) => {
                return Err(DownloadError::NoSpace(e).into());
            }
            Err(manifest::Unconfirmed::Holders(why)) => {
                // What the holders said first explains more than a later "no holders".
                let why = first_why.get_or_insert(why).clone();
                round += 1;
                if round > LOCATE_ROUNDS {
                    return Err(DownloadError::NoManifest { id: t.id, why }.into());
                }
                h.update(|j| {
                    j.state = JobState::Locating;
                    j.source = None;
                });
                tokio::time::sleep(relocate_pause(round)).await;
                holders = relocate(shared, t.id)
                    .await
                    .ok()
                    .flatten()
                    .map(|fresh| {
                        fresh
                            .holders
                            .into_iter()
                            .map(|(peer_id, url)| Source { peer_id, url })
                            .collect()
                    })
                    .unwrap_or_default();
            }
        }
    }
}

/// Fetch every missing chunk into the partial download.
async fn swarm_download(
    shared: &Arc<Engine>,
    h: &JobHandle,
    t: &mut Target,
    swarm: &mut Swarm,
    partial: &mut Partial,
    fetcher: &transport::Fetcher,
    claim: &Claim,
) -> std::result::Result<(), JobEnd> {
    h.update(|j| j.bytes_done = partial.verified_bytes());
    let size = t.size;
    let mut round = 0;
    loop {
        let mut on_progress = |r: scheduler::Report| {
            claim.set_remaining(size.saturating_sub(r.verified_bytes));
            h.update(|j| {
                j.state = JobState::Downloading;
                j.bytes_done = r.verified_bytes;
                j.sources = r.sources;
                j.source = r.fastest;
            })
        };
        match swarm.run(partial, fetcher, &mut on_progress).await {
            Ok(()) => break,
            Err(SwarmEnd::Io(e)) => return Err(e.into()),
            Err(SwarmEnd::NoHolders(why)) => {
                round += 1;
                if round > LOCATE_ROUNDS {
                    let (done, n) = swarm.chunks();
                    return Err(DownloadError::NoHolder {
                        why,
                        done,
                        total: n,
                    }
                    .into());
                }
                h.update(|j| {
                    j.state = JobState::Locating;
                    j.source = None;
                });
                tokio::time::sleep(relocate_pause(round)).await;
                match relocate(shared, t.id).await {
                    Ok(Some(fresh)) => t.holders = fresh.holders,
                    // Nobody holds it any more: do not ask the old holders again.
                    Ok(None) => t.holders.clear(),
                    Err(()) => {}
                }
                swarm.add_holders(t.holders.iter().map(|(peer_id, url)| Source {
                    peer_id: peer_id.clone(),
                    url: url.clone(),
                }));
            }
        }
    }
    h.update(|j| {
        j.state = JobState::Verifying;
        j.source = None;
    });
    // Every chunk matched the manifest, which matched the id: the file is
    // the one asked for. Only the writes remain to be flushed.
    partial.finish().await?;
    Ok(())
}

/// A replica fetch (see [`Downloads::fetch_replica`]): locate the holders,
/// then the same job as a download, with its own job in `replica_jobs`.
async fn fetch_replica(
    shared: &Arc<Engine>,
    id: FileId,
    name: FileName,
    max_size: u64,
    cancel: &tokio_util::sync::CancellationToken,
) -> std::result::Result<(), ReplicaEnd> {
    let req = DownloadRequest {
        file_id: Some(id.to_hex()),
        name: None,
    };
    let h = match shared
        .replica_jobs
        .insert(req, Some(id), JobState::Locating)
    {
        Ok(h) => h,
        Err(_) => {
            return Err(ReplicaEnd::Failed(DownloadError::Refused(format!(
                "a fetch of file {id} is running already"
            ))));
        }
    };
    h.update(|j| {
        j.name = Some(name.to_string());
        j.bytes_total = Some(max_size);
    });
    let dest = Dest::Replica { name, max_size };
    let mut slot: Option<Partial> = None;
    let run = async {
        let mut t = match relocate(shared, id).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(JobEnd::Failed(DownloadError::NoLivePeer(id))),
            Err(()) => {
                return Err(JobEnd::Failed(DownloadError::NoHolder {
                    why: "neither the neighbours nor the central answered".into(),
                    done: 0,
                    total: 0,
                }));
            }
        };
        if let Dest::Replica { name, .. } = &dest {
            t.prefer_name(name.clone());
        }
        drive(shared, &h, Begin::Located(t), &mut slot, &dest).await
    };
    let result = tokio::select! {
        r = run => r,
        _ = cancel.cancelled() => Err(JobEnd::Cancelled),
        _ = h.cancel.cancelled() => Err(JobEnd::Cancelled),
    };
    let stopping = shared.replica_jobs.stopping();
    if let Some(p) = slot.take() {
        match &result {
            // Dropped by the directory: nothing stays.
            Err(JobEnd::Cancelled) if !stopping => p.discard().await,
            // Failed (kept for the next attempt) or shut down (kept for
            // the task's return after a restart).
            _ => {
                p.close_or_discard().await;
            }
        }
    }
    let (state, error) = match &result {
        Ok(()) => (JobState::Done, None),
        Err(JobEnd::Cancelled) => (JobState::Cancelled, None),
        Err(JobEnd::Failed(e)) => (JobState::Failed, Some(e.to_string())),
    };
    h.update(|j| {
        j.state = state;
        j.error = error;
        j.source = None;
    });
    result.map_err(|e| match e {
        JobEnd::Cancelled => ReplicaEnd::Cancelled,
        JobEnd::Failed(e) => ReplicaEnd::Failed(e),
    })
}

/// Move a verified file into the share folder (or the replica space) and
/// publish it (the caller then marks the job done).
async fn store_and_publish(
    shared: &Arc<Engine>,
    h: &JobHandle,
    t: &Target,
    name: &FileName,
    path: &Path,
    manifest: Arc<Manifest>,
    dest: &Dest,
) -> std::result::Result<(), JobEnd> {
    let (s, p, n, id) = (shared.clone(), path.to_owned(), name.clone(), t.id);
    let m = Manifest::clone(&manifest);
    if let Dest::Replica { .. } = dest {
        let entry = tokio::task::spawn_blocking(move || s.store.add_replica(&p, id, n, m))
            .await?
            .map_err(DownloadError::Store)?;
        shared.central.publish(&[entry.to_shared()]).await;
        tracing::info!(job = %h.id, file = %t.id, name = %name, bytes = t.size, "replica stored and announced");
        return Ok(());
    }
    tokio::task::spawn_blocking(move || s.store.add_from_temp(&p, &n, id, m))
        .await?
        .map_err(DownloadError::Store)?;
    if let Some(entry) = shared.store.by_name(name) {
        shared.central.publish(&[entry.to_shared()]).await;
    }
    tracing::info!(job = %h.id, file = %t.id, name = %name, bytes = t.size, "download complete");
    Ok(())
}

/// The name to store under: the first name offered, or, if that name is
/// taken here by a different content, `stem (id12).ext`.
fn pick_name(shared: &Engine, t: &Target, dest: &Dest) -> FileName {
    if let Dest::Replica { name, .. } = dest {
        return name.clone();
    }
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
