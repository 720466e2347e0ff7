//! The directory on etcd (several centrals): the writes.
//!
//! A write is checked against the index (as with SQLite), written to
//! etcd, and acknowledged once this central's watch has applied its
//! revision (see [`super::follow`]). The index changes only through the
//! follower, so every central applies every change in etcd's order. Writes
//! of one peer are serialized by its stripe of the directory's locks, so
//! its calls apply in order.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use peerdex_common::sync::lock;

use peerdex_proto::{FileId, PeerId, v1};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::follow::{self, never};
use super::shared::{Admit, Join, Shared, TaskChanges, authorize, check_leave, check_rejoin};
use crate::config::Config;
use crate::error::{Corrupt, Error, Limit, NonceError, Result};
use crate::etcd::{Adopted, Binding, Decline, Etcd, JoinConflict, JoinWrite, Ordered, PeerRecord};
use crate::identity::{NONCE_VALID, Nonces};
use crate::index::{Index, Load, TokenHash};
use crate::leader::{self, Leadership};
use crate::network::Network;
use crate::replication::{Pin, Proof};
use crate::store::Withdrawal;

/// The file in the data folder that names this central's lease (see
/// `etcd::sessions`).
const LEASE_FILE: &str = "central.lease";

/// How many revisions of history the leader keeps when it compacts.
const COMPACT_KEEP: i64 = 10_000;

pub(super) struct OnEtcd {
    pub(super) etcd: Arc<Etcd>,
    /// Centrals whose lease the leader found gone, and since when: their
    /// sessions not adopted a lease TTL later are ended.
    dead_owners: std::sync::Mutex<HashMap<i64, Instant>>,
}

/// A directory on etcd, opened.
pub(super) struct Opened {
    pub store: OnEtcd,
    pub shared: Arc<Shared>,
    pub nonces: Nonces,
    pub leadership: Leadership,
    /// The follower and the election.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where the index came from at start.
    pub source: v1::IndexSource,
}

/// Connect to etcd, take the directory's shared secrets, load the index
/// and start following etcd and the leader election.
pub(super) async fn open(
    config: &Config,
    endpoints: &str,
    name: &str,
    cancel: &CancellationToken,
) -> Result<Opened> {
    let etcd = Arc::new(
        Etcd::connect(
            endpoints,
            &config.etcd_prefix,
            config.etcd_pages,
            config.lease_ttl,
        )
        .await?,
    );
    let (nonces, network) = shared_secrets(&etcd, config).await?;
    let leadership = Leadership::new(name);
    let shared = Shared::new(Index::new(), network, config);
    // Before the index is read: the sessions this central keeps are
    // told by its lease. After a restart it keeps its old one, if etcd
    // still has it (a rolling restart moves no session).
    let lease_file = std::fs::create_dir_all(&config.data_dir)
        .is_ok()
        .then(|| config.data_dir.join(LEASE_FILE));
    let (own, resumed) = etcd.resume_own_lease(lease_file.as_deref()).await?;
    tracing::info!(
        lease = own,
        resumed,
        "this central's lease (the sessions it keeps name it)"
    );
    // Kept alive from now on, through the index's load too: a full read
    // can outlast the lease's TTL.
    let keeper = tokio::spawn(etcd.clone().keep_own_lease(cancel.clone()));
    let (_, cluster) = etcd.position().await?;
    let snaps = follow::Snapshots {
        path: crate::snapshot::path_in(&config.data_dir),
        every: config.snapshot_every,
        cluster,
    };
    if !snaps.every.is_zero() {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    }
    let (revision, source) = follow::start(&shared, &etcd, &snaps).await?;
    // The sessions this central kept before a restart (its lease taken
    // back) end a lease TTL from now unless their heartbeats come.
    let now = Instant::now();
    let kept = etcd.sessions_kept_by(own);
    for p in &kept {
        etcd.heard(*p, now);
    }
    if resumed {
        tracing::info!(
            sessions = kept.len(),
            "keeping the sessions this central kept before its restart"
        );
    }
    tracing::info!(endpoints = %etcd.endpoints(), prefix = %config.etcd_prefix, revision,
        source = source.as_str_name(), "the directory is on etcd; following its changes");
    let follower = tokio::spawn(follow::follow_loop(
        shared.clone(),
        etcd.clone(),
        cancel.clone(),
        snaps,
        source,
    ));
    if source == v1::IndexSource::Snapshot {
        follow::catch_up(&etcd).await?;
        tracing::info!(
            revision = etcd.applied(),
            "caught up with etcd after the snapshot"
        );
    }
    let tasks = vec![
        follower,
        keeper,
        tokio::spawn(leadership.clone().run(
            etcd.waiting_client(),
            etcd.key("election"),
            leader::election_ttl(config.lease_ttl),
            cancel.clone(),
        )),
    ];
    Ok(Opened {
        store: OnEtcd {
            etcd,
            dead_owners: Default::default(),
        },
        shared,
        nonces,
        leadership,
        tasks,
        source,
    })
}

/// The nonce key and (in a private network) the network key, shared by
/// every central of a directory on etcd: the first to start makes them.
async fn shared_secrets(etcd: &Etcd, config: &Config) -> Result<(Nonces, Option<Network>)> {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    let nonce_key = etcd
        .get_or_create("secrets/nonce", rand::random::<[u8; 32]>().to_vec())
        .await?;
    let nonce_key: [u8; 32] = nonce_key.try_into().map_err(|_| Corrupt::Secret {
        key: "secrets/nonce",
        problem: "not 32 bytes",
    })?;
    let network = match &config.join_secret {
        Some(secret) => {
            let fresh = ed25519_dalek::SigningKey::from_bytes(&rand::random()).to_pkcs8_der()?;
            let der = etcd
                .get_or_create("secrets/network", fresh.as_bytes().to_vec())
                .await?;
            let key =
                ed25519_dalek::SigningKey::from_pkcs8_der(&der).map_err(|_| Corrupt::Secret {
                    key: "secrets/network",
                    problem: "not a PKCS#8 Ed25519 key",
                })?;
            Some(Network::with_key(secret, key, config.lease_ttl))
        }
        None => None,
    };
    Ok((Nonces::with_key(nonce_key), network))
}

fn not_joined_if_lease_gone(e: Error, peer: PeerId) -> Error {
    if crate::etcd::lease_gone(&e) {
        Error::NotJoined(peer)
    } else {
        e
    }
}

impl OnEtcd {
    pub(super) async fn join(
        &self,
        dir: &Shared,
        j: Join,
        admit: Admit,
    ) -> Result<(usize, Vec<v1::Refused>)> {
        let etcd = &self.etcd;
        let _serial = dir.serial(&j.peer).await;
        let peer = j.peer;
        let bound = etcd.binding(&peer);
        let bound_key = bound.as_ref().and_then(Binding::public_key);
        if bound_key.is_some_and(|b| b != j.key) {
            return Err(Error::OtherKey(peer));
        }
        let max_keys = dir.max_keys;
        if bound.is_none() && etcd.bindings_held() >= max_keys {
            let before = j.unix_now - dir.key_retention.as_secs() as i64;
            let mut victims: Vec<PeerId> = etcd
                .idle_bindings(before)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            if victims.is_empty() {
                victims = etcd.absent_bindings();
            }
            victims.truncate(etcd.bindings_held() + 1 - max_keys);
            etcd.forget_bindings(&victims).await?;
            if etcd.bindings_held() >= max_keys {
                return Err(Limit::Keys { max: max_keys }.into());
            }
        }
        let now = Instant::now();
        let (files, refused) = {
            let ix = dir.index();
            check_rejoin(&ix, &j, bound.is_some(), now)?;
            admit(&ix)?
        };
        let lease = etcd.grant(etcd.peer_lease_ttl()).await?;
        let record = PeerRecord {
            url: j.url.to_string(),
            token: hex::encode(j.hash),
            lease,
            owner: etcd.own_lease(),
            addr: Some(j.addr),
            active_uploads: j.load.active_uploads,
            free_upload_slots: j.load.free_upload_slots,
            replica_quota: j.replica_quota,
            relay_max: j.reach.relay_max,
            unlisted: j.reach.unlisted,
        };
        let write = JoinWrite {
            peer,
            record,
            binding: Binding {
                key: hex::encode(j.key),
                last_join: j.unix_now,
            },
            nonce: &j.nonce,
            files: &files,
        };
        let revision = match etcd.join(write, NONCE_VALID).await {
            Ok(Ok(r)) => r,
            Ok(Err(conflict)) => {
                let _ = etcd.leave(lease).await;
                return Err(match conflict {
                    JoinConflict::OtherKey => Error::OtherKey(peer),
                    JoinConflict::NonceSpent => NonceError::Spent.into(),
                    JoinConflict::Raced => Error::Raced(peer),
                });
            }
            Err(e) => {
                let _ = etcd.leave(lease).await;
                return Err(e);
            }
        };
        let now = Instant::now();
        etcd.heard(peer, now);
        etcd.renewed(peer, now);
        etcd.wait_applied(revision).await?;
        Ok((files.len(), refused))
    }

    /// A heartbeat of `peer` (authorized and paced): renewed in this
    /// central's memory when it keeps the session, adopted when another
    /// central did; etcd hears of it only for an adoption and once in a
    /// third of the peer's lease (see `etcd::sessions`).
    pub(super) async fn heartbeat(
        &self,
        dir: &Shared,
        peer: &PeerId,
        load: Option<Load>,
        now: Instant,
    ) -> Result<bool> {
        let etcd = &self.etcd;
        let Some(meta) = etcd.peer_meta(peer) else {
            tracing::debug!(%peer, "heartbeat: the peer has no record in the mirror");
            return Ok(false);
        };
        if meta.owner == 0 {
            // A session of a central from before: its short lease is
            // kept alive by every heartbeat, as it was.
            if !etcd.renew_peer_lease(peer, &meta).await? {
                return Ok(false);
            }
            dir.index().renew(peer, load, never(now), now);
            return Ok(true);
        }
        if meta.owner != etcd.own_lease() {
            let _serial = dir.serial(peer).await;
            match etcd.adopt(peer).await? {
                Adopted::Taken => {
                    tracing::debug!(%peer, from = meta.owner, "heartbeat: session adopted from another central");
                    etcd.heard(*peer, now);
                }
                // Changed meanwhile: the next heartbeat looks again.
                Adopted::Raced => return Ok(true),
                Adopted::Gone => return Ok(false),
            }
        } else if etcd.heard(*peer, now) {
            if !etcd.renew_peer_lease(peer, &meta).await? {
                return Ok(false);
            }
            etcd.renewed(*peer, now);
        }
        // The index's clock never ends a session on etcd (see
        // `follow::never`); this stores the load.
        Ok(dir.index().renew(peer, load, never(now), now))
    }

    /// End the sessions this central keeps whose heartbeats stopped and,
    /// when it leads, those of centrals gone that nobody adopted within a
    /// lease TTL. Returns how many ended.
    pub(super) async fn expire(&self, dir: &Shared, now: Instant, leader: bool) -> Result<usize> {
        let etcd = &self.etcd;
        let own = etcd.own_lease();
        let mut ends: Vec<(PeerId, crate::etcd::PeerMeta)> = etcd
            .silent(now)
            .into_iter()
            .filter_map(|p| etcd.peer_meta(&p).map(|m| (p, m)))
            .filter(|(_, m)| own != 0 && m.owner == own)
            .collect();
        let silent = ends.len();
        if leader {
            ends.extend(self.orphans(dir, now).await?);
        } else {
            lock(&self.dead_owners).clear();
        }
        let ends_len = ends.len();
        let ended: Vec<Result<bool>> = futures_util::stream::iter(ends)
            .map(|(p, m)| async move { etcd.end_session(&p, &m).await })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut n = 0;
        for r in ended {
            n += usize::from(r?);
        }
        if n > 0 {
            tracing::info!(
                ended = n,
                silent,
                orphaned = ends_len - silent,
                "sessions ended: heartbeats stopped for a lease TTL here, or their central is gone and nobody adopted them"
            );
        }
        Ok(n)
    }

    /// Sessions kept by centrals whose lease is gone for longer than a
    /// lease TTL (nobody adopted them: their peers are gone too).
    async fn orphans(
        &self,
        dir: &Shared,
        now: Instant,
    ) -> Result<Vec<(PeerId, crate::etcd::PeerMeta)>> {
        let by_owner = self.etcd.sessions_kept_by_others(self.etcd.own_lease());
        let mut out = Vec::new();
        let mut seen = Vec::with_capacity(by_owner.len());
        for (owner, sessions) in by_owner {
            // Looked at every sweep: a central cut off for longer than its
            // lease grants it again under the same id when it is back.
            if self.etcd.lease_alive(owner).await? {
                continue;
            }
            seen.push(owner);
            let since = lock(&self.dead_owners).get(&owner).copied();
            let since = match since {
                Some(t) => t,
                None => {
                    tracing::info!(
                        central_lease = owner,
                        sessions = sessions.len(),
                        "a central's lease is gone; its peers not adopted within a lease TTL will be removed"
                    );
                    lock(&self.dead_owners).insert(owner, now);
                    now
                }
            };
            if now.saturating_duration_since(since) >= dir.lease_ttl {
                out.extend(sessions);
            }
        }
        lock(&self.dead_owners).retain(|o, _| seen.contains(o));
        Ok(out)
    }

    pub(super) async fn publish(
        &self,
        dir: &Shared,
        peer: PeerId,
        token: TokenHash,
        seq: u64,
        admit: Admit,
    ) -> Result<Vec<v1::Refused>> {
        let _serial = dir.serial(&peer).await;
        let (files, refused) = {
            let ix = dir.index();
            authorize(&ix, &peer, &token, Instant::now())?;
            admit(&ix)?
        };
        let meta = self.etcd.peer_meta(&peer).ok_or(Error::NotJoined(peer))?;
        let done = self
            .etcd
            .publish(&peer, meta.lease, seq, &files)
            .await
            .map_err(|e| not_joined_if_lease_gone(e, peer))?;
        self.landed(peer, seq, done).await?;
        Ok(refused)
    }

    pub(super) async fn unpublish(
        &self,
        dir: &Shared,
        peer: PeerId,
        token: TokenHash,
        seq: u64,
        refs: Vec<Withdrawal>,
    ) -> Result<()> {
        let _serial = dir.serial(&peer).await;
        dir.authorize(&peer, &token, Instant::now())?;
        let meta = self.etcd.peer_meta(&peer).ok_or(Error::NotJoined(peer))?;
        let done = self
            .etcd
            .unpublish(&peer, meta.lease, seq, &refs)
            .await
            .map_err(|e| not_joined_if_lease_gone(e, peer))?;
        self.landed(peer, seq, done).await
    }

    /// Wait for an applied change to be in our index; refuse one that
    /// came too late.
    async fn landed(&self, peer: PeerId, seq: u64, done: Ordered) -> Result<()> {
        match done {
            Ordered::Applied(revision) => self.etcd.wait_applied(revision).await,
            Ordered::Superseded(last) => Err(Error::Superseded { peer, seq, last }),
            Ordered::Gone => Err(Error::NotJoined(peer)),
        }
    }

    /// Returns whether the peer was there. The follower revokes its
    /// credential (at every central).
    pub(super) async fn leave(&self, dir: &Shared, peer: PeerId, token: TokenHash) -> Result<bool> {
        let _serial = dir.serial(&peer).await;
        if !check_leave(&dir.index(), &peer, &token)? {
            return Ok(false);
        }
        let Some(meta) = self.etcd.peer_meta(&peer) else {
            return Ok(false);
        };
        match self.etcd.leave(meta.lease).await? {
            Some(revision) => {
                self.etcd.wait_applied(revision).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(super) async fn forget_idle_keys(&self, before: i64) -> Result<usize> {
        let idle: Vec<PeerId> = self
            .etcd
            .idle_bindings(before)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        if idle.is_empty() {
            return Ok(0);
        }
        self.etcd.forget_bindings(&idle).await
    }

    /// Compact etcd's history, keeping [`COMPACT_KEEP`] revisions.
    pub(super) async fn compact(&self) {
        match self.etcd.revision().await {
            Ok(rev) if rev > COMPACT_KEEP => match self.etcd.compact(rev - COMPACT_KEEP).await {
                Ok(()) => tracing::debug!(revision = rev - COMPACT_KEEP, "etcd: compacted"),
                Err(e) => tracing::warn!(error = %e, "etcd: compaction failed"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "etcd: cannot read the revision"),
        }
    }

    pub(super) async fn set_pin(&self, file: FileId, peer: PeerId, pin: Option<Pin>) -> Result<()> {
        let revision = self.etcd.set_pin(&file, &peer, pin.as_ref()).await?;
        self.etcd.wait_applied(revision).await
    }

    pub(super) async fn set_proof(
        &self,
        peer: PeerId,
        file: FileId,
        proof: Option<Proof>,
    ) -> Result<()> {
        let revision = self.etcd.set_proof(&peer, &file, proof.as_ref()).await?;
        if revision > 0 {
            self.etcd.wait_applied(revision).await?;
        }
        Ok(())
    }

    pub(super) async fn drop_claim(
        &self,
        dir: &Shared,
        peer: PeerId,
        refs: Vec<Withdrawal>,
    ) -> Result<()> {
        let _serial = dir.serial(&peer).await;
        let Some(meta) = self.etcd.peer_meta(&peer) else {
            return Ok(());
        };
        match self.etcd.unpublish(&peer, meta.lease, 0, &refs).await {
            Ok(Ordered::Applied(revision)) => self.etcd.wait_applied(revision).await,
            Ok(_) => Ok(()),
            Err(e) if crate::etcd::lease_gone(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn record_declines(
        &self,
        peer: &PeerId,
        declines: &[(FileId, Decline)],
    ) -> Result<()> {
        if let Some(meta) = self.etcd.peer_meta(peer) {
            let revision = self.etcd.decline(peer, meta.lease, declines).await?;
            self.etcd.wait_applied(revision).await?;
        }
        Ok(())
    }

    pub(super) async fn set_tasks(&self, changes: TaskChanges) -> Result<()> {
        let etcd = &self.etcd;
        let mut revision = etcd.set_tasks(&changes.give, &changes.withdraw).await?;
        for (p, f, d) in changes.timed_out {
            if let Some(meta) = etcd.peer_meta(&p) {
                revision = revision.max(etcd.decline(&p, meta.lease, &[(f, d)]).await?);
            }
        }
        if !changes.forget.is_empty() {
            revision = revision.max(etcd.forget_declines(&changes.forget).await?);
        }
        etcd.wait_applied(revision).await
    }
}
