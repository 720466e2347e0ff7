//! Starting a download job: the file located and its candidates checked,
//! a job already running or a file already held answered at once, a
//! replica held promoted to a shared file.

use std::sync::Arc;

use peerdex_proto::rest::{Candidate, DownloadRequest, Job, JobState, LocatedFile};
use peerdex_proto::{FileId, FileName, PeerUrl};

use super::fetch::pick_name;
use super::run::{Begin, spawn_job};
use super::{Dest, Engine, Target};
use crate::error::{Error, Invalid, Missing, Result};
use crate::link::lookup::LocateTarget;
use peerdex_proto::ticket::{PRIVATE_SUFFIX, is_private_name};

pub(super) fn validate(f: &LocatedFile, own_peer: &str) -> Option<Target> {
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
/// is answered at once. `known`: the target already located (a Watch
/// event of the directory brought it): no lookup.
pub(super) async fn start(
    shared: &Arc<Engine>,
    req: DownloadRequest,
    known: Option<Vec<LocatedFile>>,
) -> Result<Job> {
    let target = match (&req.file_id, &req.name, &req.folder) {
        (Some(id), None, None) => LocateTarget::Id(id.parse()?),
        (None, Some(name), None) => LocateTarget::Name(name.parse()?),
        (None, None, Some(folder)) => {
            let folder = folder.parse()?;
            return super::folder::start(shared, req, folder).await;
        }
        _ => {
            return Err(Invalid::OneDownloadTarget.into());
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
    // A private file's ciphertext (held here, or as the directory names
    // it) opens only with its ticket: never copied into the share folder.
    if let LocateTarget::Name(n) = &target
        && let Some(id) = n
            .as_str()
            .strip_suffix(PRIVATE_SUFFIX)
            .and_then(|hex| hex.parse::<FileId>().ok())
    {
        return Err(Error::NeedsTicket { id });
    }
    if let LocateTarget::Id(id) = &target
        && (shared.store.blob(id).is_some()
            || shared
                .store
                .replica(id)
                .is_some_and(|r| is_private_name(id, r.name.as_str())))
    {
        return Err(Error::NeedsTicket { id: *id });
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
    let located = match known {
        Some(files) => files,
        None => shared.lookup.locate(&shared.central, &target).await?,
    };
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
                name: name.clone(),
                count: live.len(),
                what: "ask for",
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
        return Err(match &target {
            LocateTarget::Id(id) => Missing::NoHolder { id: *id },
            LocateTarget::Name(n) => Missing::NoHolderNamed { name: n.clone() },
        }
        .into());
    };
    if !t.names.is_empty() && t.names.iter().all(|n| is_private_name(&t.id, n.as_str())) {
        return Err(Error::NeedsTicket { id: t.id });
    }
    if let LocateTarget::Name(n) = &target {
        t.prefer_name(n.clone());
    }
    if t.holders.is_empty() {
        return Err(Missing::NoOtherHolder { id: t.id }.into());
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
pub(super) fn promote_job(shared: &Arc<Engine>, req: DownloadRequest, t: &Target) -> Job {
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
            .unwrap_or_else(|e| Err(Error::from(e)));
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

pub(super) fn finished_job(
    shared: &Engine,
    req: DownloadRequest,
    id: FileId,
    name: FileName,
) -> Job {
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
