//! Download jobs: locate → fetch chunks from the holders → verify → move
//! into the share folder → publish.
//!
//! Layout:
//! * this file — the [`Downloads`] handle and what a job uses (`Engine`);
//!   [`DownloadError`], why a job failed; where a download goes ([`Dest`]).
//! * `start` — starting a job: candidates checked, a job already running or
//!   a file already held answered at once, a held replica promoted.
//! * `run` — a job's life: spawned or resumed from its partial at start,
//!   driven to its end, located again when its holders run out.
//! * `fetch` — the verified bytes of one file: space claimed, manifest
//!   confirmed, swarm run, file stored and published; replica fetches too.
//! * `jobs` — the job list ([`Jobs`], [`JobHandle`]) and their live state.
//! * `folder` — a folder of one holder's share as one job: its files, each
//!   a download of its own under the same relative path, one progress.
//! * `replicas` — the replica worker: the directory's FETCH and DROP tasks.
//! * `private` — a private file fetched by ticket: its ciphertext through
//!   the same engine into `data/private-blobs/`, then opened into the
//!   private folder (see `crate::private`).
//! * `engine/` — the verified engine: `scheduler` (the swarm over up to
//!   `PSERVER_MAX_SOURCES` holders; strikes, back-off, end game), `holder`,
//!   `chunk` (one request for one chunk, verified against the manifest
//!   before it is kept), `transport` (range requests over the peer API,
//!   under the rate cap), `manifest` (from a holder, checked against the
//!   file id and confirmed by its last chunk), `partial` (the download on
//!   disk under `data/partial/`: a sparse file plus a bitmap of verified
//!   chunks, so a failed job, a restart or a crash resumes where it was).
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
use std::sync::Arc;
use std::time::Duration;

use peerdex_proto::rest::{DownloadRequest, Job};
use peerdex_proto::{FileId, FileName, PeerId, PeerUrl};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::link::Central;
use crate::link::lookup::Lookup;
use crate::metrics::Metrics;
use crate::rate::RateLimiter;
use crate::rt::MainRt;
use crate::store::Store;
use crate::store::space::NoSpace;

mod engine;
mod fetch;
mod folder;
mod jobs;
mod private;
pub(crate) mod replicas;
mod run;
mod start;

use engine::partial;

pub(crate) use jobs::{JobHandle, Jobs};

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
        self.start_located(req, None).await
    }

    /// Start a download of a file already located (`known`: what a Watch
    /// event brought, as Locate would answer), or located now (`None`).
    pub(crate) async fn start_located(
        &self,
        req: DownloadRequest,
        known: Option<Vec<peerdex_proto::rest::LocatedFile>>,
    ) -> Result<Job> {
        let engine = self.0.clone();
        self.0
            .rt
            .run(async move { start::start(&engine, req, known).await })
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
        fetch::fetch_replica(&self.0, id, name, max_size, cancel).await
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

    /// Fetch the ciphertext of the private file of `ticket` (unless held
    /// here) and open it into the private folder, as a job of the user's
    /// list (the `POST /api/v1/private/fetch` handler's logic).
    pub(crate) async fn start_private(
        &self,
        ticket: peerdex_proto::ticket::Ticket,
        vault: Arc<crate::private::Vault>,
    ) -> Result<Job> {
        let engine = self.0.clone();
        self.0
            .rt
            .run(async move { private::start(&engine, ticket, vault).await })
            .await
    }

    /// Resume every partial download found in the data folder (call once
    /// at start).
    pub(crate) fn resume_partials(&self) {
        run::resume_partials(&self.0);
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
    #[error(
        "file {id} is {size} bytes (its verified manifest says so), more than the {max_size} bytes the directory said"
    )]
    LargerThanSaid {
        id: FileId,
        size: u64,
        max_size: u64,
    },
    /// A replica fetch of this file is running already.
    #[error("a fetch of file {id} is running already")]
    AlreadyFetching { id: FileId },
    /// A private file's ciphertext arrived verified but does not open
    /// with the ticket, or the private folder cannot take it.
    #[error("{0}")]
    Private(crate::private::OpenError),
}

impl DownloadError {
    /// Would trying again (soon, from the same holders) be pointless?
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            DownloadError::NoSpace(_)
                | DownloadError::Store(_)
                | DownloadError::LargerThanSaid { .. }
                | DownloadError::AlreadyFetching { .. }
                | DownloadError::Private(_)
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
pub(crate) enum Dest {
    /// The user's download: into the share folder, under the best name.
    Share,
    /// A replica for the directory: into the replica space under `name`,
    /// at most `max_size` bytes.
    Replica { name: FileName, max_size: u64 },
    /// A private file's ciphertext: into `data/private-blobs/`, not
    /// announced until it opened (see `private`); the partial's reader is
    /// handed to the opening as soon as the partial is open, so the file
    /// is opened while it downloads.
    Private(private::Follow),
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
