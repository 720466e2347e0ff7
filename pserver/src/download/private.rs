//! A private file fetched by ticket: the ciphertext located by its id (and
//! asked of the ticket's holder hints too), fetched through the verified
//! engine into `data/private-blobs/` ([`Dest::Private`]: every chunk
//! checked against the manifest, the manifest against the id, before any
//! is kept), then opened with the ticket's key into the private folder.
//! Only once it opened is the ciphertext announced (this peer then serves
//! it like any holder); a ciphertext that does not open is deleted, and a
//! job that fails or is cancelled leaves nothing behind: no partial is
//! kept for a later resume (they would be ciphertexts nobody asked for).
//!
//! A ciphertext held here already (the owner's, an earlier fetch, a
//! replica kept for the directory) is opened without a transfer.
//!
//! Logs name the file id only, never the plaintext's name.

use std::sync::Arc;

use peerdex_proto::rest::{DownloadRequest, Job, JobState};
use peerdex_proto::ticket::Ticket;

use super::engine::partial::Partial;
use super::run::{Begin, JobEnd, drive};
use super::start::validate;
use super::{Dest, DownloadError, Engine, Target};
use crate::error::{Missing, Result};
use crate::link::lookup::LocateTarget;
use crate::private::Vault;
use crate::private::crypt::ciphertext_size;

/// Start the job (see [`super::Downloads::start_private`]). A ciphertext
/// nobody holds is answered at once.
pub(super) async fn start(shared: &Arc<Engine>, ticket: Ticket, vault: Arc<Vault>) -> Result<Job> {
    let id = ticket.file_id;
    let held = shared.store.shared(&id).is_ok();
    let target = if held {
        None
    } else {
        let own = shared.peer_id.to_string();
        // A lookup that fails leaves the hints to try.
        let located = shared
            .lookup
            .locate(&shared.central, &LocateTarget::Id(id))
            .await
            .unwrap_or_default();
        let mut t = located
            .iter()
            .filter_map(|f| validate(f, &own))
            .find(|t| t.id == id)
            .unwrap_or(Target {
                id,
                size: ciphertext_size(ticket.size),
                names: Vec::new(),
                holders: Vec::new(),
            });
        for hint in &ticket.hints {
            if hint != vault.public_url() && !t.holders.iter().any(|(_, u)| u == hint) {
                t.holders
                    .push((format!("hint {}", hint.as_str()), hint.clone()));
            }
        }
        if t.holders.is_empty() {
            return Err(Missing::NoPrivateHolder { id }.into());
        }
        Some(t)
    };
    let req = DownloadRequest {
        file_id: Some(id.to_hex()),
        name: None,
        folder: None,
    };
    let state = if held {
        JobState::Verifying
    } else {
        JobState::Downloading
    };
    let h = match shared.jobs.insert(req, Some(id), state) {
        Ok(h) => h,
        Err(running) => return Ok(running.snapshot()),
    };
    h.update(|j| {
        j.name = Some(ticket.name.to_string());
        j.bytes_total = Some(ciphertext_size(ticket.size));
    });
    let snapshot = h.snapshot();
    let shared = shared.clone();
    let rt = shared.rt.clone();
    rt.spawn(async move {
        let mut slot: Option<Partial> = None;
        let result = tokio::select! {
            r = fetch_and_open(&shared, &h, &ticket, &vault, target, &mut slot) => r,
            _ = h.cancel.cancelled() => Err(JobEnd::Cancelled),
        };
        if let Some(p) = slot.take() {
            p.discard().await;
        }
        let (state, error, code) = match &result {
            Ok(()) => (JobState::Done, None, 0),
            Err(JobEnd::Cancelled) => (JobState::Cancelled, None, 2),
            Err(JobEnd::Failed(e)) => (JobState::Failed, Some(e.to_string()), 1),
        };
        shared.metrics.download_finished(code);
        match &error {
            None => tracing::info!(job = %h.id, file = %id, ?state, "private file fetch ended"),
            Some(e) => {
                tracing::warn!(job = %h.id, file = %id, error = %e, "private file fetch failed")
            }
        }
        h.update(|j| {
            j.state = state;
            j.error = error;
            j.source = None;
            if state == JobState::Done {
                j.bytes_done = j.bytes_total.unwrap_or(j.bytes_done);
            }
        });
    });
    Ok(snapshot)
}

async fn fetch_and_open(
    shared: &Arc<Engine>,
    h: &super::JobHandle,
    ticket: &Ticket,
    vault: &Arc<Vault>,
    target: Option<Target>,
    slot: &mut Option<Partial>,
) -> std::result::Result<(), JobEnd> {
    let id = ticket.file_id;
    let fetched = target.is_some();
    if let Some(t) = target {
        drive(shared, h, Begin::Located(t), slot, &Dest::Private).await?;
    }
    h.update(|j| {
        j.state = JobState::Verifying;
        j.source = None;
    });
    let (store, v, t) = (shared.store.clone(), vault.clone(), ticket.clone());
    let temp = store.temp_path("private");
    let opened = tokio::task::spawn_blocking(move || {
        let (mut file, entry) = store
            .open_shared(&t.file_id)
            .map_err(DownloadError::Store)?;
        v.open_into_folder(&mut file, entry.size, &t, &temp)
            .map_err(DownloadError::Private)
    })
    .await?;
    match opened {
        Ok(_) => {
            if fetched && let Some(entry) = shared.store.blob(&id) {
                shared.central.publish(&[entry.to_shared()]).await;
            }
            Ok(())
        }
        Err(e) => {
            if fetched {
                let s = shared.store.clone();
                let _ = tokio::task::spawn_blocking(move || s.remove_blob(&id)).await;
            }
            Err(e.into())
        }
    }
}
