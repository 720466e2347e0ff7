//! A job's life: spawned (or resumed from its partial at start), driven
//! through locate → fetch → store → publish, located again when its
//! holders run out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peerdex_proto::rest::{DownloadRequest, JobState};
use peerdex_proto::tree::Manifest;
use peerdex_proto::{FileId, FileName};

use super::engine::manifest;
use super::engine::partial::{self, Partial};
use super::engine::scheduler::{self, Swarm};
use super::engine::transport::{self, Source};
use super::fetch::{
    claim_space, confirm_manifest, id_of, pick_name, store_and_publish, swarm_download,
};
use super::jobs::JobHandle;
use super::start::validate;
use super::{Dest, DownloadError, Engine, Target};
use crate::link::lookup::LocateTarget;

/// Rounds of re-locating when every holder failed, before giving up.
pub(super) const LOCATE_ROUNDS: u32 = 3;

pub(super) fn partial_dir(shared: &Engine, dest: &Dest) -> PathBuf {
    match dest {
        Dest::Share => shared.store.data_dir().join("partial"),
        Dest::Replica { .. } => shared.store.replica_partial_dir(),
        Dest::Private(_) => shared.store.blob_partial_dir(),
    }
}

/// Resume every partial download found in the data folder (call once at
/// start). Each becomes a job that locates the file's holders again.
pub(super) fn resume_partials(shared: &Arc<Engine>) {
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
            folder: None,
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
pub(super) enum Begin {
    Located(Target),
    /// The name to store under and the manifest verified before.
    Resume(String, Arc<Manifest>),
}

pub(super) fn spawn_job(shared: &Arc<Engine>, h: Arc<JobHandle>, begin: Begin) {
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

pub(super) enum JobEnd {
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
pub(super) async fn relocate(
    shared: &Engine,
    id: FileId,
) -> std::result::Result<Option<Target>, ()> {
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
pub(super) fn relocate_pause(round: u32) -> Duration {
    Duration::from_millis(500 << (round - 1).min(4))
}

pub(super) async fn drive(
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
        return Err(DownloadError::LargerThanSaid {
            id: t.id,
            size: t.size,
            max_size: *max_size,
        }
        .into());
    }
    let name = pick_name(shared, &t, dest);
    h.update(|j| {
        j.state = JobState::Downloading;
        j.file_id = Some(t.id.to_hex());
        // A private job shows the plaintext's name, set when it started.
        if !matches!(dest, Dest::Private(_)) {
            j.name = Some(name.to_string());
        }
        j.bytes_total = Some(t.size);
    });
    let dir = partial_dir(shared, dest);
    let claim = claim_space(shared, &dir, &manifest, dest).await?;
    let (d2, m2, n2) = (dir.clone(), manifest.clone(), name.to_string());
    let opened = tokio::task::spawn_blocking(move || Partial::open(&d2, &m2, &n2))
        .await?
        .map_err(|e| shared.store.space().explain(e, &dir))?;
    let partial = slot.insert(opened);
    if let Dest::Private(follow) = dest {
        follow.hand(partial); // opened while it downloads
    }
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
    if matches!(dest, Dest::Private(_)) {
        return Ok(()); // done once opened (see `private`)
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
