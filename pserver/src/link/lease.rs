//! The lease: Join (proving our key), Heartbeat, the lease loop that
//! keeps both going, and Leave.

use std::time::{Duration, Instant};

use peerdex_proto::convert::SharedFile;
use peerdex_proto::v1::{self};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::pages::Plan;
use super::{Beat, CallError, Central, Load, MAX_BACKOFF, RPC_TIMEOUT, TaskSender};
use crate::metrics::{Metrics, Renewal};

/// A Heartbeat refused for coming too soon after the last one taken (the
/// directory takes one per half interval): how long it says to wait
/// (its `retry-after`, whole seconds, at most 30 s).
fn paced(s: &CallError) -> Option<Duration> {
    if s.code != Code::ResourceExhausted {
        return None;
    }
    Some(Duration::from_secs(s.retry_after?.clamp(1, 30)))
}

/// Entries the central did not take (the rest of the call was applied).
pub(super) fn log_refused(call: &str, refused: &[v1::Refused]) {
    for r in refused {
        tracing::warn!(call, file = %r.file_id, name = %r.name, reason = %r.reason,
            "the central refused this entry of our inventory; the others are listed");
    }
}

impl Central {
    fn set_lease_error<T>(&self, r: &Result<T, CallError>) {
        *self.lease_error.lock().unwrap() = r
            .as_ref()
            .err()
            .map(|s| format!("{:?}: {}", s.code, s.message));
    }

    /// Join with the inventory, proving our key over a fresh nonce from
    /// the same central: a first page in the Join, then the rest in
    /// Publish pages that each fit the central's message limit (see
    /// `pages`). The caller holds the outbox, so no other change of ours
    /// goes between the pages.
    pub async fn join(&self, inventory: &[SharedFile], load: Load) -> Result<(), CallError> {
        let (at, (r, plan)) = self
            .call("join", |mut c| async move {
                let challenge = c
                    .challenge(v1::ChallengeRequest {
                        peer_id: self.peer_id.to_string(),
                    })
                    .await?
                    .into_inner();
                let plan = Plan::new(
                    inventory,
                    challenge.max_message_bytes,
                    challenge.max_inventory,
                );
                let nonce = challenge.nonce;
                let ask = self.reach.join_ask();
                let mut msg = v1::JoinRequest {
                    peer_id: self.peer_id.to_string(),
                    peer_url: self.public_url.to_string(),
                    files: inventory[plan.first.clone()]
                        .iter()
                        .map(Into::into)
                        .collect(),
                    load: Some(load.into()),
                    replica_quota_bytes: self.replica_quota,
                    reachability: ask.reachability,
                    relay_max_peers: ask.relay_max_peers,
                    avoid_relays: ask.avoid_relays,
                    ..Default::default()
                };
                msg.secret_proof = self.network.secret_proof(&nonce, &msg.peer_id);
                peerdex_proto::identity::prove(&mut msg, &self.key, nonce);
                Ok((c.join(self.authed(msg)).await?, plan))
            })
            .await?;
        let answer = r.into_inner();
        log_refused("join", &answer.refused);
        if answer.reachable {
            tracing::info!(url = %self.public_url, "the directory reached us: other peers download from us directly");
        } else {
            tracing::warn!(url = %self.public_url, why = %answer.reachability,
                relay = answer.relay.as_ref().map_or("none", |r| r.relay_url.as_str()),
                listed = %answer.listed_url, "the directory cannot reach us: shared through a relay");
        }
        self.reach.joined(&answer);
        self.network.set_credential(&answer.credential);
        self.network.note_revoked_list(&answer.revoked);
        {
            // Named from the Join on (a status read before the first
            // Heartbeat names the central too).
            let mut h = self.heard.lock().unwrap();
            if !answer.island.is_empty() {
                h.island = Some(answer.island.clone());
            }
            h.central = (!answer.central.is_empty()).then(|| answer.central.clone());
            h.leader = (!answer.leader.is_empty()).then(|| answer.leader.clone());
        }
        if self.network.is_private()
            && let Err(e) = self.refresh_keys().await
        {
            tracing::warn!(error = %e, "cannot fetch the network's keys; will ask again");
        }
        if let Err(e) =
            crate::identity::write_secret(&self.token_path, answer.session_token.as_bytes())
        {
            tracing::warn!(error = %e, "cannot save the session token; a restart will wait for the lease to expire");
        }
        {
            let mut s = self.session.lock().unwrap();
            s.token = Some(answer.session_token);
            s.joined = true;
            s.seq = 0;
            s.last_renewal = Some(Instant::now());
            s.interval = Some(Duration::from_secs(
                answer.heartbeat_interval_secs.max(1) as u64
            ));
        }
        self.message_limit
            .store(plan.max_message_bytes, std::sync::atomic::Ordering::Relaxed);
        let over = if plan.rest.is_empty() {
            answer.over_limit
        } else {
            tracing::info!(central = %self.links[at].url, files = inventory.len(),
                pages = plan.rest.len() + 1, "joining in pages");
            answer.over_limit + self.publish_pages(inventory, &plan).await?
        };
        self.set_not_listed(plan.beyond + over, plan.max_inventory);
        tracing::debug!(central = %self.links[at].url, "joined");
        Ok(())
    }

    /// Renew the lease (at the central we use, or the next that answers),
    /// telling the directory which replica FETCH tasks we `declined`.
    pub async fn heartbeat(
        &self,
        load: Load,
        declined: &[v1::Declined],
    ) -> Result<Beat, CallError> {
        let (at, r) = self
            .call("heartbeat", |mut c| async move {
                let req = self.authed(v1::HeartbeatRequest {
                    peer_id: self.peer_id.to_string(),
                    load: Some(load.into()),
                    declined: declined.to_vec(),
                });
                c.heartbeat(req).await
            })
            .await?;
        let answer = r.into_inner();
        self.network.set_credential(&answer.credential);
        self.network.note_revoked_list(&answer.revoked);
        {
            let mut h = self.heard.lock().unwrap();
            h.central = (!answer.central.is_empty()).then(|| answer.central.clone());
            h.leader = (!answer.leader.is_empty()).then(|| answer.leader.clone());
            if !answer.island.is_empty() {
                h.island = Some(answer.island.clone());
            }
        }
        let mut s = self.session.lock().unwrap();
        if answer.rejoin {
            s.joined = false;
            return Ok(Beat::Rejoin);
        }
        s.last_renewal = Some(Instant::now());
        if answer.heartbeat_interval_secs > 0 {
            s.interval = Some(Duration::from_secs(answer.heartbeat_interval_secs as u64));
        }
        drop(s);
        let mut moved = false;
        if answer.moved {
            let now = self.move_from(at, "it is shutting down (its heartbeat answer says moved)");
            // Hurry only to a central that did not fail lately: when every
            // one is going away, keep the normal pace.
            moved = now != at && !self.links[now].failed_recently();
        }
        Ok(Beat::Renewed {
            moved,
            tasks: answer.replica_tasks,
        })
    }

    /// Tell the directory we are gone (at the central we use, or the next
    /// that answers).
    pub async fn leave(&self) {
        if !self.is_joined() {
            return;
        }
        let call = self.call("leave", |mut c| async move {
            let req = self.authed(v1::LeaveRequest {
                peer_id: self.peer_id.to_string(),
            });
            c.leave(req).await
        });
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                tracing::info!("left the central directory");
                self.session.lock().unwrap().joined = false;
                let _ = std::fs::remove_file(&self.token_path);
            }
            Ok(Err(s)) => tracing::warn!(status = %s, "leave failed; the lease will expire"),
            Err(_) => tracing::warn!("leave timed out; the lease will expire"),
        }
    }

    /// Keep the lease: join (with the full inventory from `inventory`), then
    /// heartbeat at the interval the central advises; re-join when asked;
    /// back off while no central answers. Returns when cancelled.
    ///
    /// Replica tasks: each Heartbeat carries what the replica worker
    /// declined since the last one (given back to the queue when no
    /// central took the call), and each answer's tasks go to `tasks`.
    pub(crate) async fn lease_loop(
        &self,
        inventory: impl Fn() -> Vec<SharedFile>,
        load: impl Fn() -> Load,
        tasks: TaskSender,
        metrics: Metrics,
        cancel: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let wait = if self.is_joined() {
                let declined = self.declines.take();
                let answer = self.heartbeat(load(), &declined).await;
                self.set_lease_error(&answer);
                metrics.renewal(match &answer {
                    Ok(Beat::Renewed { .. }) => Renewal::Ok,
                    Ok(Beat::Rejoin) => Renewal::Rejoin,
                    Err(s) if s.code == Code::Unauthenticated => Renewal::Rejoin,
                    Err(_) => Renewal::Error,
                });
                if !matches!(answer, Ok(Beat::Renewed { .. })) {
                    self.declines.give_back(declined);
                }
                match answer {
                    Ok(Beat::Renewed { moved, tasks: open }) => {
                        backoff = Duration::from_millis(250);
                        // The worker gone (shutting down): nothing to hand.
                        let _ = tasks.send(open).await;
                        self.deliver_waiting().await;
                        if moved {
                            // The next heartbeat goes to the new central now.
                            Duration::ZERO
                        } else {
                            self.session
                                .lock()
                                .unwrap()
                                .interval
                                .unwrap_or(Duration::from_secs(10))
                        }
                    }
                    Ok(Beat::Rejoin) => {
                        tracing::info!(central = %self.url(), "central asked us to join again");
                        Duration::ZERO
                    }
                    Err(s) if s.code == Code::Unauthenticated => {
                        tracing::warn!(status = %s.message, "heartbeat refused; re-joining");
                        self.mark_not_joined();
                        Duration::ZERO
                    }
                    Err(s) if paced(&s).is_some() => {
                        // Heard too soon (a retry after an answer we did
                        // not get): the lease is live; come back when told.
                        let wait = paced(&s).unwrap_or(Duration::from_secs(1));
                        tracing::debug!(status = %s.message, retry_in = ?wait, "heartbeat paced by the central");
                        wait
                    }
                    Err(s) => {
                        tracing::warn!(code = ?s.code, status = %s.explained(), retry_in = ?backoff, "heartbeat failed");
                        let w = backoff;
                        // Never wait longer than the advised interval: after a
                        // central restart the grace period is one lease, and
                        // the heartbeat must land within it.
                        let cap = self
                            .session
                            .lock()
                            .unwrap()
                            .interval
                            .unwrap_or(MAX_BACKOFF)
                            .min(MAX_BACKOFF);
                        backoff = (backoff * 2).min(cap);
                        w
                    }
                }
            } else {
                // The Join's snapshot of the inventory supersedes every
                // change still waiting; the outbox stays ours until the
                // last page is in, so no change overtakes a page.
                let mut queue = self.outbox.lock().await;
                queue.clear();
                self.session.lock().unwrap().inventory_changed = false;
                let inv = inventory();
                let joined = self.join(&inv, load()).await;
                drop(queue);
                self.set_lease_error(&joined);
                match joined {
                    Ok(()) => {
                        tracing::info!(files = inv.len(), central = %self.url(), "joined the central directory");
                        backoff = Duration::from_millis(250);
                        if std::mem::take(&mut self.session.lock().unwrap().inventory_changed) {
                            // Files changed while the Join was on its way:
                            // send the whole inventory again.
                            tracing::debug!("inventory changed during the join; joining again");
                            self.mark_not_joined();
                        }
                        self.session
                            .lock()
                            .unwrap()
                            .interval
                            .unwrap_or(Duration::from_secs(10))
                    }
                    Err(s) => {
                        if s.code == Code::Unauthenticated {
                            // Our peer id is live under a token we no longer have
                            // (data dir restored from elsewhere?): wait for that
                            // lease to expire, then a plain join succeeds.
                            self.session.lock().unwrap().token = None;
                        }
                        if s.code == Code::PermissionDenied {
                            tracing::error!(status = %s.message, retry_in = ?backoff,
                                "the central refuses our peer id: it is bound to another key");
                        } else {
                            tracing::warn!(code = ?s.code, status = %s.explained(), retry_in = ?backoff, "cannot join the central");
                        }
                        let w = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        w
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
