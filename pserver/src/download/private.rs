//! A private file fetched by ticket: the ciphertext located by its id (and
//! asked of the ticket's holder hints too), fetched through the verified
//! engine into `data/private-blobs/` ([`Dest::Private`]: every chunk
//! checked against the manifest, the manifest against the id, before any
//! is kept), and opened with the ticket's key *while it downloads*: a
//! thread follows the partial's verified prefix (`engine::prefix`),
//! reading each verified segment back from the page cache, authenticating
//! and decrypting it into a temp file in the data folder, flushed as it
//! grows. The plaintext is moved into the private folder only once the
//! whole ciphertext is verified and stored and its last segment
//! authenticated; a segment that fails stops the download at once. So the
//! opening costs the download little wall time (it runs on another core
//! meanwhile) and the ciphertext is never read from disk again.
//! Only once it opened is the ciphertext announced (this peer then serves
//! it like any holder); a ciphertext that does not open is deleted, and a
//! job that fails or is cancelled leaves nothing behind (no ciphertext, no
//! temp plaintext): no partial is kept for a later resume (they would be
//! ciphertexts nobody asked for).
//!
//! A ciphertext held here already (the owner's, an earlier fetch, a
//! replica kept for the directory) is opened without a transfer.
//!
//! Logs name the file id only, never the plaintext's name.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use peerdex_common::sync::lock;
use peerdex_proto::rest::{DownloadRequest, Job, JobState};
use peerdex_proto::ticket::Ticket;
use tokio::sync::oneshot;

use super::engine::partial::Partial;
use super::engine::prefix::{Prefix, PrefixReader};
use super::run::{Begin, JobEnd, drive};
use super::start::validate;
use super::{Dest, DownloadError, Engine, Target};
use crate::error::{Missing, Result};
use crate::link::lookup::LocateTarget;
use crate::private::crypt::ciphertext_size;
use crate::private::{Vault, open_to_temp};

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
    // Whatever happens to the job (cancelled too), the plaintext's temp
    // file goes with this guard once the opened file is placed or not.
    let temp = TempGuard::new(shared.store.temp_path("private"));
    let Some(t) = target else {
        // Held here already: open it from the blob space.
        h.update(|j| {
            j.state = JobState::Verifying;
            j.source = None;
        });
        let (store, v, t, path) = (
            shared.store.clone(),
            vault.clone(),
            ticket.clone(),
            temp.path.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let (mut file, entry) = store
                .open_shared(&t.file_id)
                .map_err(DownloadError::Store)?;
            v.open_into_folder(&mut file, entry.size, &t, &path)
                .map_err(DownloadError::Private)
        })
        .await??;
        return Ok(());
    };
    let fetched = fetch_while_opening(shared, h, ticket, vault, t, slot, &temp).await;
    let placed = match fetched {
        Ok(true) => {
            let (v, t, path) = (vault.clone(), ticket.clone(), temp.path.clone());
            tokio::task::spawn_blocking(move || v.place(&path, &t))
                .await?
                .map(|_| ())
                .map_err(|e| DownloadError::Private(e).into())
        }
        // Saved here before from the same ticket: the plaintext stays.
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    match placed {
        Ok(()) => {
            if let Some(entry) = shared.store.blob(&id) {
                shared.central.publish(&[entry.to_shared()]).await;
            }
            Ok(())
        }
        Err(e) => {
            let s = shared.store.clone();
            let _ = tokio::task::spawn_blocking(move || s.remove_blob(&id)).await;
            Err(e)
        }
    }
}

/// Fetch the ciphertext through the verified engine and, at the same
/// time, open it into `temp` segment by segment as its verified prefix
/// grows (see `engine::prefix`): by the time the last chunk is verified,
/// most of the plaintext is decrypted, authenticated and flushed. `true`
/// if `temp` then holds the whole plaintext; `false` if the plaintext of
/// this ticket was saved here before (only the ciphertext is fetched).
/// A segment that fails authentication stops the download at once; a
/// download that fails stops the opening.
async fn fetch_while_opening(
    shared: &Arc<Engine>,
    h: &super::JobHandle,
    ticket: &Ticket,
    vault: &Arc<Vault>,
    t: Target,
    slot: &mut Option<Partial>,
    temp: &TempGuard,
) -> std::result::Result<bool, JobEnd> {
    let (tx, rx) = oneshot::channel();
    let open = vault.saved_whole(ticket).is_none();
    let dest = Dest::Private(Follow::new(open.then_some(tx)));
    let opening = async {
        // No reader: the download ended before its partial opened.
        let Ok(mut reader) = rx.await else {
            return Ok::<(), DownloadError>(());
        };
        let (t, path, abandoned) = (ticket.clone(), temp.path.clone(), temp.abandoned.clone());
        tokio::task::spawn_blocking(move || {
            let len = ciphertext_size(t.size);
            open_to_temp(&mut reader, len, &t, &path).map_err(DownloadError::Private)?;
            if *lock(&abandoned) {
                // The job ended meanwhile: its guard is gone.
                let _ = std::fs::remove_file(&path);
            }
            Ok(())
        })
        .await?
    };
    let download = drive(shared, h, Begin::Located(t), slot, &dest);
    tokio::pin!(opening, download);
    let mut opened = None;
    let fetched = loop {
        tokio::select! {
            r = &mut download => break r,
            r = &mut opening, if opened.is_none() => {
                if let Err(e) = r {
                    // Not this ticket's file, or altered: fetch no more.
                    // The download stops at its next chunk and ends on its
                    // own (never dropped while it stores the file).
                    if let Dest::Private(follow) = &dest {
                        follow.refuse();
                    }
                    let _ = download.await;
                    return Err(e.into());
                }
                opened = Some(Ok(()));
            }
        }
    };
    if let Err(e) = fetched {
        if let Dest::Private(follow) = &dest {
            follow.stop(); // ends a read waiting for bytes that will not come
        }
        let _ = opening.await;
        return Err(e);
    }
    let opened = match opened {
        Some(r) => r,
        None => {
            h.update(|j| {
                j.state = JobState::Verifying;
                j.source = None;
            });
            opening.await
        }
    };
    opened.map(|()| open).map_err(Into::into)
}

/// The plaintext's temp file of one job: deleted when the job is done
/// with it (placed, failed or cancelled, even while the opening thread
/// still writes it: that thread then deletes what it finishes).
struct TempGuard {
    path: PathBuf,
    abandoned: Arc<Mutex<bool>>,
}

impl TempGuard {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            abandoned: Arc::new(Mutex::new(false)),
        }
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        let mut abandoned = lock(&self.abandoned);
        *abandoned = true;
        // Placed already (moved away), or never made: nothing to delete.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Hands the partial's reader of the ciphertext to the opening as soon as
/// the download opened its partial (see [`Dest::Private`]).
pub(crate) struct Follow {
    tx: Mutex<Option<oneshot::Sender<PrefixReader>>>,
    prefix: Mutex<Option<Arc<Prefix>>>,
}

impl Follow {
    fn new(tx: Option<oneshot::Sender<PrefixReader>>) -> Self {
        Self {
            tx: Mutex::new(tx),
            prefix: Mutex::new(None),
        }
    }

    /// The download opened `partial`: the opening may start.
    pub(super) fn hand(&self, partial: &Partial) {
        if let Some(tx) = lock(&self.tx).take() {
            let reader = partial.follow();
            *lock(&self.prefix) = Some(reader.prefix());
            let _ = tx.send(reader);
        }
    }

    /// What was read does not open: the download takes no more chunks.
    fn refuse(&self) {
        if let Some(p) = lock(&self.prefix).as_ref() {
            p.refuse();
        }
    }

    /// The download ended: the opening waits for no more bytes.
    fn stop(&self) {
        lock(&self.tx).take();
        if let Some(p) = lock(&self.prefix).take() {
            p.close();
        }
    }
}
