//! The service's writes when the directory lives on etcd, and the
//! follower that keeps the in-memory index equal to etcd.
//!
//! A write is checked against the index (as with SQLite), written to
//! etcd, and acknowledged once this central's watch has applied its
//! revision. The index changes only through the follower, so every
//! central applies every change in etcd's order. Writes of one peer are
//! serialized by a per-peer lock, so its calls apply in order.

use std::sync::Arc;
use std::time::Duration;

use peerdex_proto::convert::SharedFile;
use peerdex_proto::{FileName, PeerId, PeerUrl, v1};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DirectoryService, IndexGate, Inventory, Steps, authorize};
use crate::error::{Error, Result};
use crate::etcd::{Binding, Change, Etcd, JoinConflict, JoinWrite, Ordered, PeerRecord};
use crate::identity::NONCE_VALID;
use crate::index::{Index, Lease, Load, TokenHash};
use crate::store::{PublicKey, Withdrawal};

/// A lease that never ends by our clock: etcd ends it.
pub(super) fn never(now: Instant) -> Instant {
    now + Duration::from_secs(100 * 365 * 86_400)
}

/// How often the leader compacts etcd's history, keeping this many
/// revisions behind the current one.
const COMPACT_EVERY: Duration = Duration::from_secs(60);
const COMPACT_KEEP: i64 = 10_000;

/// What a Join brings, checked.
pub(super) struct JoinArgs {
    pub peer: PeerId,
    pub url: PeerUrl,
    pub key: PublicKey,
    pub token: Option<TokenHash>,
    pub addr: std::net::IpAddr,
    pub inventory: Inventory,
    pub load: Load,
    pub hash: TokenHash,
    pub nonce: Vec<u8>,
    pub unix_now: i64,
    pub replica_quota: u64,
}

impl DirectoryService {
    pub(super) fn etcd(&self) -> Option<&Arc<Etcd>> {
        self.shared.etcd.as_ref()
    }

    /// This peer's write lock (a stripe of a fixed set).
    pub(super) async fn peer_lock(&self, peer: &PeerId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripes = &self.shared.peer_locks;
        let i = (peer.as_uuid().as_u128() % stripes.len() as u128) as usize;
        stripes[i].lock().await
    }

    pub(super) async fn join_on_etcd(
        &self,
        etcd: &Etcd,
        a: JoinArgs,
    ) -> Result<(usize, Vec<v1::Refused>)> {
        let _serial = self.peer_lock(&a.peer).await;
        let peer = a.peer;
        let bound = etcd.binding(&peer);
        let bound_key = bound.as_ref().and_then(Binding::public_key);
        if bound_key.is_some_and(|b| b != a.key) {
            return Err(other_key(&peer));
        }
        let limits = &self.shared.limits;
        if bound.is_none() && etcd.bindings_held() >= limits.max_keys {
            let before = a.unix_now - self.shared.key_retention.as_secs() as i64;
            let mut victims: Vec<PeerId> = etcd
                .idle_bindings(before)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            if victims.is_empty() {
                victims = etcd.absent_bindings();
            }
            victims.truncate(etcd.bindings_held() + 1 - limits.max_keys);
            etcd.forget_bindings(&victims).await?;
            if etcd.bindings_held() >= limits.max_keys {
                return Err(Error::LimitExceeded(format!(
                    "the directory holds {} peer keys, its limit (CENTRAL_MAX_KEYS); none is idle enough to forget",
                    limits.max_keys
                )));
            }
        }
        let now = Instant::now();
        let budget = limits.max_message_bytes / 2;
        let (files, refused) = {
            let ix = self.index();
            if bound.is_none()
                && ix.lease(&peer, now) == Lease::Live
                && !a.token.is_some_and(|t| ix.token_matches(&peer, &t))
            {
                return Err(Error::Unauthenticated(format!(
                    "peer {peer} has a live lease: a re-join must carry its current session token"
                )));
            }
            self.admit_join(&ix, &peer, a.addr, a.inventory, budget)?
        };
        let lease = etcd.grant(self.shared.lease_ttl).await?;
        let record = PeerRecord {
            url: a.url.to_string(),
            token: hex::encode(a.hash),
            lease,
            addr: Some(a.addr),
            active_uploads: a.load.active_uploads,
            free_upload_slots: a.load.free_upload_slots,
            replica_quota: a.replica_quota,
        };
        let write = JoinWrite {
            peer,
            record,
            binding: Binding {
                key: hex::encode(a.key),
                last_join: a.unix_now,
            },
            nonce: &a.nonce,
            files: &files,
        };
        let revision = match etcd.join(write, NONCE_VALID).await {
            Ok(Ok(r)) => r,
            Ok(Err(conflict)) => {
                let _ = etcd.leave(lease).await;
                return Err(match conflict {
                    JoinConflict::OtherKey => other_key(&peer),
                    JoinConflict::NonceSpent => Error::Unauthenticated(
                        "nonce: already used by a Join; ask Challenge for a fresh one".into(),
                    ),
                    JoinConflict::Raced => Error::Unavailable(format!(
                        "peer {peer} changed at another central while this Join was checked; join again"
                    )),
                });
            }
            Err(e) => {
                let _ = etcd.leave(lease).await;
                return Err(e);
            }
        };
        etcd.wait_applied(revision).await?;
        Ok((files.len(), refused))
    }

    pub(super) async fn heartbeat_on_etcd(
        &self,
        etcd: &Etcd,
        peer: &PeerId,
        token: &TokenHash,
        load: Option<Load>,
    ) -> Result<bool> {
        let now = Instant::now();
        match authorize(&self.index(), peer, token, now) {
            Ok(()) => {}
            Err(Error::NotJoined(_)) => {
                tracing::debug!(%peer, "heartbeat: the peer is not in this central's index");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        // Paced before the keep-alive: a flood costs etcd nothing.
        self.pace(peer, now)?;
        let Some(meta) = etcd.peer_meta(peer) else {
            tracing::debug!(%peer, "heartbeat: the peer has no lease record in the mirror");
            return Ok(false);
        };
        if !etcd.keep_alive(meta.lease).await? {
            tracing::debug!(%peer, lease = meta.lease, "heartbeat: etcd no longer has the peer's lease");
            return Ok(false);
        }
        self.index().renew(peer, load, never(now), now);
        Ok(true)
    }

    pub(super) async fn publish_on_etcd(
        &self,
        etcd: &Etcd,
        peer: PeerId,
        token: TokenHash,
        seq: u64,
        inventory: Inventory,
    ) -> Result<Vec<v1::Refused>> {
        let _serial = self.peer_lock(&peer).await;
        let now = Instant::now();
        let (files, refused) = self.admit_publish(&self.index(), &peer, &token, inventory, now)?;
        let meta = etcd.peer_meta(&peer).ok_or(Error::NotJoined(peer))?;
        let done = etcd
            .publish(&peer, meta.lease, seq, &files)
            .await
            .map_err(|e| not_joined_if_lease_gone(e, peer))?;
        self.landed(etcd, peer, seq, done).await?;
        Ok(refused)
    }

    pub(super) async fn unpublish_on_etcd(
        &self,
        etcd: &Etcd,
        peer: PeerId,
        token: TokenHash,
        seq: u64,
        refs: Vec<Withdrawal>,
    ) -> Result<()> {
        let _serial = self.peer_lock(&peer).await;
        authorize(&self.index(), &peer, &token, Instant::now())?;
        let meta = etcd.peer_meta(&peer).ok_or(Error::NotJoined(peer))?;
        let done = etcd
            .unpublish(&peer, meta.lease, seq, &refs)
            .await
            .map_err(|e| not_joined_if_lease_gone(e, peer))?;
        self.landed(etcd, peer, seq, done).await
    }

    /// Wait for an applied change to be in our index; refuse one that
    /// came too late.
    async fn landed(&self, etcd: &Etcd, peer: PeerId, seq: u64, done: Ordered) -> Result<()> {
        match done {
            Ordered::Applied(revision) => etcd.wait_applied(revision).await,
            Ordered::Superseded(last) => Err(superseded(peer, seq, last)),
            Ordered::Gone => Err(Error::NotJoined(peer)),
        }
    }

    /// Returns whether the peer was there.
    pub(super) async fn leave_on_etcd(
        &self,
        etcd: &Etcd,
        peer: PeerId,
        token: TokenHash,
    ) -> Result<bool> {
        let _serial = self.peer_lock(&peer).await;
        {
            let ix = self.index();
            if ix.lease(&peer, Instant::now()) == Lease::Unknown {
                return Ok(false);
            }
            if !ix.token_matches(&peer, &token) {
                return Err(Error::Unauthenticated(format!(
                    "session token does not match peer {peer}"
                )));
            }
        }
        let Some(meta) = etcd.peer_meta(&peer) else {
            return Ok(false);
        };
        match etcd.leave(meta.lease).await? {
            Some(revision) => {
                etcd.wait_applied(revision).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Build the index from etcd (at start, and after falling behind a
    /// compaction); returns the revision it reflects.
    pub(crate) async fn load_from_etcd(&self) -> Result<i64> {
        let etcd = self.etcd().ok_or(Error::Closed)?.clone();
        let (changes, revision) = etcd.snapshot().await?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut fresh = Index::new();
            fresh.defer_postings(true);
            let now = Instant::now();
            let mut gone = Vec::new();
            shared.replicas.clear();
            for c in changes {
                if let Some(c) = shared.replicas.apply(c) {
                    apply_one(&mut fresh, c, now, &mut gone);
                }
            }
            fresh.defer_postings(false);
            *shared.index.write() = fresh;
        })
        .await?;
        etcd.set_applied(revision);
        Ok(revision)
    }

    /// Apply decoded changes to the index, in steps.
    async fn apply_changes(&self, changes: Vec<Change>) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let gone = tokio::task::spawn_blocking(move || {
            let gate = IndexGate(&shared.index);
            let mut steps = Steps::new(&gate);
            let now = Instant::now();
            let mut gone = Vec::new();
            for c in changes {
                let Some(c) = shared.replicas.apply(c) else {
                    continue;
                };
                if let Change::PeerGone(p) = &c {
                    steps.ix().retire(p);
                    steps.drop_inventory(p);
                }
                steps.room();
                apply_one(steps.ix(), c, now, &mut gone);
                steps.used += 1;
            }
            gone
        })
        .await?;
        if !gone.is_empty() {
            for p in &gone {
                tracing::info!(peer = %p, "peer gone (left, or its etcd lease ended)");
            }
            if let Some(net) = &self.shared.network {
                net.revoke(&gone);
            }
        }
        Ok(())
    }

    /// Follow etcd's changes into the index until `cancel`: reconnects
    /// after a failure from the next revision, reloads after falling
    /// behind a compaction.
    pub(crate) async fn follow_loop(self, cancel: CancellationToken) {
        let Some(etcd) = self.etcd().cloned() else {
            return;
        };
        let mut pause = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            let from = etcd.applied() + 1;
            let stream = tokio::select! {
                () = cancel.cancelled() => return,
                s = etcd.watch(from) => s,
            };
            let (_watcher, mut stream) = match stream {
                Ok(s) => s.split(),
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: cannot watch the directory; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            loop {
                let msg = tokio::select! {
                    () = cancel.cancelled() => return,
                    m = stream.message() => m,
                };
                match msg {
                    Ok(Some(resp)) => {
                        pause = Duration::from_millis(100);
                        if resp.compact_revision() > 0 || resp.canceled() {
                            tracing::warn!(
                                compacted = resp.compact_revision(),
                                reason = resp.cancel_reason(),
                                "etcd: the watch fell behind a compaction (or was cancelled); reloading the directory"
                            );
                            if let Err(e) = self.load_from_etcd().await {
                                tracing::warn!(error = %e, "etcd: reload failed; retrying");
                                tokio::time::sleep(pause).await;
                            }
                            break;
                        }
                        // The last event's revision, never the header's
                        // (see the crate's etcd module).
                        let Some(revision) = resp
                            .events()
                            .iter()
                            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
                            .max()
                        else {
                            continue;
                        };
                        let changes = etcd.decode(resp.events());
                        if let Err(e) = self.apply_changes(changes).await {
                            tracing::error!(error = %e, "applying etcd changes failed; reloading");
                            let _ = self.load_from_etcd().await;
                            break;
                        }
                        etcd.set_applied(revision);
                    }
                    Ok(None) => {
                        tracing::warn!("etcd: the watch ended; watching again");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd: the watch failed; watching again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                        break;
                    }
                }
            }
        }
    }

    /// The leader's chores: compact etcd's history and forget idle key
    /// bindings, while this central leads.
    pub(crate) async fn leader_chores(self, cancel: CancellationToken) {
        let Some(etcd) = self.etcd().cloned() else {
            return;
        };
        let mut tick = tokio::time::interval(COMPACT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.shared.leadership.is_leader() {
                continue;
            }
            match etcd.revision().await {
                Ok(rev) if rev > COMPACT_KEEP => match etcd.compact(rev - COMPACT_KEEP).await {
                    Ok(()) => tracing::debug!(revision = rev - COMPACT_KEEP, "etcd: compacted"),
                    Err(e) => tracing::warn!(error = %e, "etcd: compaction failed"),
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "etcd: cannot read the revision"),
            }
            let before = super::unix_secs() - self.shared.key_retention.as_secs() as i64;
            let idle: Vec<PeerId> = etcd
                .idle_bindings(before)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            if !idle.is_empty() {
                match etcd.forget_bindings(&idle).await {
                    Ok(n) => tracing::info!(keys = n, "idle peer-key bindings forgotten"),
                    Err(e) => tracing::warn!(error = %e, "forgetting idle peer keys failed"),
                }
            }
        }
    }
}

/// An inventory change delivered after a later one.
pub(super) fn superseded(peer: PeerId, seq: u64, last: u64) -> Error {
    Error::Aborted(format!(
        "seq: change {seq} of peer {peer} arrived after change {last} was applied; refused (it was delivered late), nothing changed"
    ))
}

fn other_key(peer: &PeerId) -> Error {
    Error::PermissionDenied(format!(
        "peer id {peer} is bound to another key (since its first Join): a PServer keeps its key in its data folder (peer.key) beside its id (peer-id); restore both, or start with a fresh data folder to get a new id"
    ))
}

fn not_joined_if_lease_gone(e: Error, peer: PeerId) -> Error {
    if crate::etcd::lease_gone(&e) {
        Error::NotJoined(peer)
    } else {
        e
    }
}

/// One change into `ix`; peers that went are added to `gone`.
fn apply_one(ix: &mut Index, c: Change, now: Instant, gone: &mut Vec<PeerId>) {
    match c {
        Change::Peer {
            peer,
            record,
            new_session,
        } => {
            let (Ok(url), Some(hash)) = (record.url.parse::<PeerUrl>(), token_hash(&record.token))
            else {
                tracing::warn!(%peer, "etcd: peer record with a bad URL or token hash ignored");
                return;
            };
            if new_session {
                ix.drop_some(&peer, usize::MAX);
            }
            let load = Load {
                active_uploads: record.active_uploads,
                free_upload_slots: record.free_upload_slots,
            };
            ix.begin_join(peer, url, hash, load, never(now), record.addr);
            ix.set_quota_of(&peer, record.replica_quota);
        }
        Change::PeerGone(peer) => {
            if ix.remove_peer(&peer) {
                gone.push(peer);
            }
        }
        Change::Holding {
            peer,
            file,
            name,
            size,
            replica,
        } => {
            let Ok(name) = name.parse::<FileName>() else {
                tracing::warn!(%peer, "etcd: holding with a bad name ignored");
                return;
            };
            ix.publish(
                &peer,
                &[SharedFile {
                    id: file,
                    size,
                    name,
                    replica,
                }],
            );
        }
        Change::HoldingGone { peer, file, name } => {
            ix.unpublish(&peer, &[(file, Some(name))]);
        }
        Change::Pin { .. }
        | Change::Task { .. }
        | Change::Declined { .. }
        | Change::Proof { .. } => {
            tracing::error!("a replication change reached the index; ignored");
        }
    }
}

fn token_hash(hex_hash: &str) -> Option<TokenHash> {
    let mut h = [0; 32];
    hex::decode_to_slice(hex_hash, &mut h).ok()?;
    Some(h)
}
