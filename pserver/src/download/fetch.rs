//! Fetching the verified bytes of one file: the space claimed, the
//! manifest confirmed, the swarm run, the file stored and published; and
//! the same for a replica fetch (another destination).

use std::path::Path;
use std::sync::Arc;

use peerdex_proto::rest::{DownloadRequest, JobState};
use peerdex_proto::tree::Manifest;
use peerdex_proto::{FileId, FileName};

use super::engine::manifest;
use super::engine::partial::{self, Partial};
use super::engine::scheduler::{self, Swarm, SwarmEnd};
use super::engine::transport::{self, Source};
use super::jobs::JobHandle;
use super::run::{Begin, JobEnd, LOCATE_ROUNDS, drive, partial_dir, relocate, relocate_pause};
use super::{Dest, DownloadError, Engine, ReplicaEnd, Target};

use crate::store::space::{Bytes, Claim, NoSpace};

/// Promise the space the download still needs (its size, less what a kept
/// partial already holds) in the data folder, and check the share folder
/// too if the file will be copied there from another file system.
pub(super) async fn claim_space(
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
pub(super) fn fits(shared: &Engine, dir: &Path, m: &Manifest) -> std::result::Result<(), NoSpace> {
    let need = m.size() - partial::on_disk(dir, m);
    let what = format!("file {} ({})", m.id(), Bytes(m.size()));
    shared.store.space().check(dir, need, &what)
}

pub(super) fn id_of(begin: &Begin) -> FileId {
    match begin {
        Begin::Located(t) => t.id,
        Begin::Resume(_, m) => m.id(),
    }
}

/// Get a manifest of `t` from its holders that verifies against the id and
/// is confirmed by its last chunk, locating again when no holder gives one.
pub(super) async fn confirm_manifest(
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
pub(super) async fn swarm_download(
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

/// A replica fetch (see [`super::Downloads::fetch_replica`]): locate the holders,
/// then the same job as a download, with its own job in `replica_jobs`.
pub(super) async fn fetch_replica(
    shared: &Arc<Engine>,
    id: FileId,
    name: FileName,
    max_size: u64,
    cancel: &tokio_util::sync::CancellationToken,
) -> std::result::Result<(), ReplicaEnd> {
    let req = DownloadRequest {
        file_id: Some(id.to_hex()),
        name: None,
        folder: None,
    };
    let h = match shared
        .replica_jobs
        .insert(req, Some(id), JobState::Locating)
    {
        Ok(h) => h,
        Err(_) => {
            return Err(ReplicaEnd::Failed(DownloadError::AlreadyFetching { id }));
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
pub(super) async fn store_and_publish(
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
    if let Dest::Private(_) = dest {
        // Announced by `private` once it opened with its ticket.
        tokio::task::spawn_blocking(move || s.store.add_blob(&p, id, m))
            .await?
            .map_err(DownloadError::Store)?;
        return Ok(());
    }
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

/// The name to store under: the first name offered (a path: the file lands
/// in the same folders of our share folder), or, if that name is taken
/// here by a different content, `stem (id12).ext` in the same folder.
pub(super) fn pick_name(shared: &Engine, t: &Target, dest: &Dest) -> FileName {
    match dest {
        Dest::Replica { name, .. } => return name.clone(),
        Dest::Private(_) => return peerdex_proto::ticket::private_name(&t.id),
        Dest::Share => {}
    }
    let base = t.names.first().cloned().unwrap_or_else(|| {
        format!("{}.bin", t.id.short())
            .parse()
            .expect("hex name is valid")
    });
    match shared.store.by_name(&base) {
        Some(e) if e.id != t.id => {
            // The file's own name changes; its folders stay.
            let s = base.file_name();
            let (stem, ext) = match s.rfind('.') {
                Some(i) if i > 0 => (&s[..i], &s[i..]),
                _ => (s, ""),
            };
            let mut stem = stem.to_owned();
            while stem.len() + ext.len() + 15 > peerdex_proto::types::MAX_NAME_BYTES {
                stem.pop();
            }
            let file = format!("{stem} ({}){ext}", t.id.short());
            match base.folder() {
                Some(dir) => format!("{dir}/{file}"),
                None => file,
            }
            .parse()
            .unwrap_or(base)
        }
        _ => base,
    }
}
