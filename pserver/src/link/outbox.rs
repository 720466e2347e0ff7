//! The outbox of inventory changes: Publish and Unpublish, numbered in
//! the session and delivered in order (see the module doc of `link`).

use std::collections::VecDeque;

use peerdex_proto::convert::SharedFile;
use peerdex_proto::v1::{self};
use peerdex_proto::{FileId, FileName};
use tonic::Code;

use super::failover::Link;
use super::lease::log_refused;
use super::{CallError, Central};

/// Publishes and unpublishes kept while no central answers. Beyond it the
/// queue is dropped and we re-join with the whole inventory instead
/// (nothing is lost: the inventory holds every change).
const MAX_QUEUED: usize = 1024;

/// A change of our inventory on its way to the directory.
/// An inventory change, with its number in the session (`seq`): the
/// directory applies changes only in that order, so one that a paused
/// central delivers late cannot undo a later one.
pub(super) enum Change {
    Publish(Vec<SharedFile>, u64),
    Unpublish(Vec<(FileId, FileName)>, u64),
}

impl Change {
    fn what(&self) -> &'static str {
        match self {
            Change::Publish(..) => "publish",
            Change::Unpublish(..) => "unpublish",
        }
    }
}

impl Central {
    /// Announce new files, in pages that each fit the central's message
    /// limit (many new files at once: a copy into the share folder).
    /// Skipped while not joined: the next Join carries them.
    pub async fn publish(&self, files: &[SharedFile]) {
        for page in self.publish_pages_of(files) {
            self.change(|seq| Change::Publish(page, seq)).await;
        }
    }

    /// Withdraw files, in pages like [`Central::publish`]. Skipped while
    /// not joined.
    pub async fn unpublish(&self, files: &[(FileId, FileName)]) {
        let limit = self
            .message_limit
            .load(std::sync::atomic::Ordering::Relaxed);
        let budget = super::pages::page_budget(limit);
        let mut page = Vec::new();
        let mut bytes = 0;
        for f in files {
            // The id, the name and the framing of one entry.
            let n = 64 + f.1.as_str().len() + 8;
            if !page.is_empty() && bytes + n > budget {
                let full = std::mem::take(&mut page);
                self.change(|seq| Change::Unpublish(full, seq)).await;
                bytes = 0;
            }
            page.push(f.clone());
            bytes += n;
        }
        if !page.is_empty() {
            self.change(|seq| Change::Unpublish(page, seq)).await;
        }
    }

    /// Put `change` in line behind the changes still waiting, then deliver
    /// them in order (see the module doc).
    async fn change(&self, change: impl FnOnce(u64) -> Change) {
        let mut queue = self.outbox.lock().await;
        if self.skipped_while_not_joined() {
            queue.clear();
            return;
        }
        let change = change({
            let mut s = self.session.lock().unwrap();
            s.seq += 1;
            s.seq
        });
        let waiting = !queue.is_empty();
        queue.push_back(change);
        if queue.len() > MAX_QUEUED {
            tracing::warn!(
                queued = queue.len(),
                "too many publishes and unpublishes are waiting for a central; \
                 the next Join will carry the whole inventory instead"
            );
            queue.clear();
            self.mark_not_joined();
            return;
        }
        if waiting && self.links.iter().all(Link::failed_recently) {
            // No central answered a moment ago: the lease loop delivers
            // the queue once one does.
            return;
        }
        let _ = self.deliver(&mut queue).await;
    }

    /// Send the queued changes in order. One that no central takes because
    /// none answers stays first in line (`Err`); any other refusal means
    /// re-join with the whole inventory, which supersedes the queue.
    async fn deliver(&self, queue: &mut VecDeque<Change>) -> Result<(), CallError> {
        while let Some(change) = queue.front() {
            let r = self.send(change).await;
            match r {
                Ok(over) => {
                    self.add_not_listed(over);
                    queue.pop_front();
                }
                Err(s) if s.code == Code::Aborted => {
                    // A later change of ours is applied already: this one
                    // reached the directory before (its answer was lost).
                    tracing::info!(call = change.what(), status = %s.message,
                        "the directory has a later change of ours; this one is done");
                    queue.pop_front();
                }
                Err(s) if s.unreachable() => {
                    tracing::warn!(call = change.what(), code = ?s.code, status = %s.explained(), queued = queue.len(),
                        "no central takes our inventory changes; keeping them in order until one answers");
                    return Err(s);
                }
                Err(s) => {
                    self.after_inventory_call(change.what(), &s);
                    queue.clear();
                    return Err(s);
                }
            }
        }
        Ok(())
    }

    /// Send one change; for a Publish, how many of its files the central
    /// did not take for its inventory limit.
    pub(super) async fn send(&self, change: &Change) -> Result<u64, CallError> {
        let mut over = 0;
        match change {
            Change::Publish(files, seq) => {
                let files: Vec<v1::SharedFile> = files.iter().map(Into::into).collect();
                let (_, r) = self
                    .call("publish", |mut c| {
                        let req = self.authed(v1::PublishRequest {
                            peer_id: self.peer_id.to_string(),
                            files: files.clone(),
                            seq: *seq,
                        });
                        async move { c.publish(req).await }
                    })
                    .await?;
                log_refused("publish", &r.get_ref().refused);
                over = r.get_ref().over_limit;
            }
            Change::Unpublish(files, seq) => {
                let files: Vec<v1::FileRef> = files
                    .iter()
                    .map(|(id, name)| v1::FileRef {
                        file_id: id.to_hex(),
                        name: name.to_string(),
                    })
                    .collect();
                self.call("unpublish", |mut c| {
                    let req = self.authed(v1::UnpublishRequest {
                        peer_id: self.peer_id.to_string(),
                        files: files.clone(),
                        seq: *seq,
                    });
                    async move { c.unpublish(req).await }
                })
                .await?;
            }
        }
        Ok(over)
    }

    /// The lease loop heard from a central: deliver what waits, first.
    /// If even that fails, fall back to a Join with the whole inventory.
    pub(super) async fn deliver_waiting(&self) {
        // A caller holding the outbox is delivering it already.
        let Ok(mut queue) = self.outbox.try_lock() else {
            return;
        };
        if queue.is_empty() {
            return;
        }
        let n = queue.len();
        match self.deliver(&mut queue).await {
            Ok(()) => {
                tracing::info!(
                    changes = n,
                    central = %self.url(),
                    "delivered the inventory changes kept while no central answered"
                )
            }
            Err(s) if s.unreachable() => {
                tracing::info!(
                    "the waiting inventory changes still find no central; joining again with the whole inventory"
                );
                queue.clear();
                self.mark_not_joined();
            }
            Err(_) => {}
        }
    }

    fn after_inventory_call(&self, what: &str, s: &CallError) {
        if matches!(
            s.code,
            Code::FailedPrecondition | Code::Unauthenticated | Code::NotFound
        ) {
            tracing::info!(call = what, status = %s.message, "central does not know us; re-joining");
        } else {
            // Refused: re-join later with the full inventory.
            tracing::warn!(call = what, code = ?s.code, status = %s.explained(), "central call failed; will re-join");
        }
        self.mark_not_joined();
    }
}
