//! Sessions kept by centrals, not by etcd (issue 27: liveness that
//! scales).
//!
//! Each central holds one etcd lease of its own (the *central lease*,
//! `CENTRAL_LEASE_TTL_SECS`, kept alive here). A peer's record names the
//! central that keeps its session ([`PeerRecord::owner`]): the one its
//! heartbeats reach. That central keeps the heartbeats in memory, as a
//! SQLite central does, and sends etcd nothing for them; it ends the
//! session (deletes the record, revokes the peer's lease) when they stop.
//! A peer's own lease, which its inventory hangs on, is long
//! ([`Etcd::peer_lease_ttl`]) and renewed by its central once in a third of it.
//! So an island of N peers costs etcd N / (peer lease / 3) keep-alives a
//! second instead of one per heartbeat (10,000 a second at 100k peers).
//!
//! A heartbeat that reaches another central than the owner (its central
//! died, or the PServer moved on) *adopts* the session: one write of the
//! record naming the new central. Nothing else moves: the inventory stays
//! where it is, listed all along. The leading central ends the sessions
//! of a central whose lease is gone that nobody adopted within a lease
//! TTL (peers that died with their central).
//!
//! [`PeerRecord::owner`]: super::PeerRecord::owner

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use peerdex_common::sync::lock;
use peerdex_proto::PeerId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{lease_not_found, unavailable};
use super::follow::PeerMeta;
use super::{Etcd, PeerRecord};
use crate::error::Result;

/// A session this central keeps (see [`Etcd::heard`]).
pub(crate) struct Kept {
    /// When it ends unless a heartbeat comes.
    ends: Instant,
    /// When the peer's etcd lease is due a renewal.
    renew: Instant,
}

/// What became of an adoption.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Adopted {
    /// The record names this central now.
    Taken,
    /// The record changed meanwhile (a Join, another adoption): the next
    /// heartbeat tries again.
    Raced,
    /// The peer's lease is gone: it must join again.
    Gone,
}

impl Etcd {
    /// The etcd lease of a peer's session: long (60 lease TTLs, at least
    /// 30 minutes), since its central ends the session itself when the
    /// heartbeats stop; it matters only when no central is left to do
    /// so. Renewed once in a third of it.
    pub(crate) fn peer_lease_ttl(&self) -> Duration {
        (self.lease_ttl * 60).max(Duration::from_secs(1800))
    }

    /// How often a peer's lease is renewed.
    fn renew_every(&self) -> Duration {
        self.peer_lease_ttl() / 3
    }

    /// This central's lease (0 before [`Etcd::take_own_lease`]).
    pub(crate) fn own_lease(&self) -> i64 {
        self.own_lease.load(Relaxed)
    }

    /// Grant this central a new lease, written down in `file` when
    /// given (a first start; or the one before could not be taken back).
    async fn take_own_lease(&self, file: Option<&Path>) -> Result<i64> {
        let id = self.grant(self.lease_ttl).await?;
        self.own_lease.store(id, Relaxed);
        if let Some(file) = file {
            let tmp = file.with_extension("tmp");
            let written =
                std::fs::write(&tmp, format!("{id}\n")).and_then(|()| std::fs::rename(&tmp, file));
            if let Err(e) = written {
                tracing::warn!(file = %file.display(), error = %e,
                    "cannot write down this central's lease; a restart takes a new one (its peers then move with one write each)");
            }
        }
        Ok(id)
    }

    /// At start: the lease this central had before a restart, written
    /// down in `file`: kept if etcd still has it, granted again under the
    /// same id if etcd lost it (the central was down longer than its TTL);
    /// either way the sessions that name it stay this central's, and
    /// nothing is written for them. A new lease on a first start. Returns
    /// the lease and whether it is the one from before.
    pub(crate) async fn resume_own_lease(&self, file: Option<&Path>) -> Result<(i64, bool)> {
        let before = file
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|id| *id > 0);
        if let Some(id) = before {
            if !self.lease_alive(id).await? {
                self.grant_again(id).await?;
            }
            self.own_lease.store(id, Relaxed);
            return Ok((id, true));
        }
        Ok((self.take_own_lease(file).await?, false))
    }

    /// Keep this central's lease alive until `cancel`, a keep-alive every
    /// third of its TTL. When etcd lost it (this central was cut off, or
    /// starved of CPU, for longer than the TTL) it is granted again under
    /// the same id: the sessions that name it stay this central's, and
    /// nothing moves unless the leading central ended some meanwhile
    /// (which it does only a lease TTL after it found the lease gone).
    pub(crate) async fn keep_own_lease(self: Arc<Self>, cancel: CancellationToken) {
        let every = (self.lease_ttl / 3).max(Duration::from_millis(100));
        loop {
            let id = self.own_lease();
            let kept = tokio::select! {
                _ = cancel.cancelled() => return,
                kept = self.keep_alive_every(id, every) => kept,
            };
            match kept {
                Ok(()) => {
                    tracing::warn!(
                        lease = id,
                        "etcd lost this central's lease; granting it again under the same id (the sessions that name it stay here)"
                    );
                    loop {
                        let again = tokio::select! {
                            _ = cancel.cancelled() => return,
                            again = self.grant_again(id) => again,
                        };
                        match again {
                            Ok(()) => {
                                tracing::info!(lease = id, "this central's lease is back");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot grant this central's lease again; retrying");
                                tokio::select! {
                                    _ = cancel.cancelled() => return,
                                    _ = tokio::time::sleep(every / 4) => {}
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = id, "keeping this central's lease alive failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(every / 4) => {}
                    }
                }
            }
        }
    }

    /// Keep lease `id` alive on one stream, a keep-alive `every`; returns
    /// `Ok` when etcd no longer has it, an error when the stream broke.
    async fn keep_alive_every(&self, id: i64, every: Duration) -> Result<(), etcd_client::Error> {
        let (mut keeper, mut stream) = match self.client.clone().lease_keep_alive(id).await {
            Ok(s) => s,
            Err(e) if lease_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        loop {
            tokio::time::sleep(every).await;
            keeper.keep_alive().await?;
            match tokio::time::timeout(every.max(Duration::from_secs(1)), stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return Ok(()),
                Ok(Ok(None)) => {
                    return Err(etcd_client::Error::LeaseKeepAliveError(
                        "the keep-alive stream ended".into(),
                    ));
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(etcd_client::Error::LeaseKeepAliveError(
                        "no keep-alive answer in time".into(),
                    ));
                }
            }
        }
    }

    /// Whether etcd still has lease `id`.
    pub(crate) async fn lease_alive(&self, id: i64) -> Result<bool> {
        let r = self
            .retry("read a lease", |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await?;
        Ok(r.ttl() > 0)
    }

    /// A heartbeat of a session this central keeps came `now`: it ends a
    /// lease TTL later unless another comes. Returns whether the peer's
    /// etcd lease is due a renewal (once a third of
    /// [`Etcd::peer_lease_ttl`]; a session this central had no date for,
    /// kept before a restart or just adopted, gets one at random within
    /// that third, so that a restart does not renew every lease at once:
    /// a peer's lease then still has at least two thirds of its time).
    pub(crate) fn heard(&self, peer: PeerId, now: Instant) -> bool {
        let every = self.renew_every();
        let mut kept = lock(&self.kept);
        let k = kept.entry(peer).or_insert_with(|| Kept {
            ends: now,
            renew: now + every.mul_f64(rand::random::<f64>()),
        });
        k.ends = now + self.lease_ttl;
        k.renew <= now
    }

    /// `peer`'s etcd lease was renewed (or granted) `now`.
    pub(crate) fn renewed(&self, peer: PeerId, now: Instant) {
        let every = self.renew_every();
        if let Some(k) = lock(&self.kept).get_mut(&peer) {
            k.renew = now + every;
        }
    }

    /// Renew `peer`'s etcd lease (`meta.lease`) now; false when etcd no
    /// longer has it (the peer must join again).
    pub(crate) async fn renew_peer_lease(&self, peer: &PeerId, meta: &PeerMeta) -> Result<bool> {
        let alive = self.keep_alive(meta.lease).await?;
        if !alive {
            tracing::debug!(%peer, lease = meta.lease, "heartbeat: etcd no longer has the peer's lease");
        }
        Ok(alive)
    }

    /// The sessions this central keeps whose heartbeats stopped by
    /// `now` (they are forgotten here: ending them is the caller's).
    pub(crate) fn silent(&self, now: Instant) -> Vec<PeerId> {
        let mut out = Vec::new();
        lock(&self.kept).retain(|p, k| {
            let gone = k.ends <= now;
            if gone {
                out.push(*p);
            }
            !gone
        });
        out
    }

    pub(super) fn forget_session(&self, peer: &PeerId) {
        lock(&self.kept).remove(peer);
    }

    /// Make this central the owner of `peer`'s session: its record, as
    /// the mirror has it, rewritten naming this central's lease if it is
    /// unchanged in etcd, on the peer's lease (refused when etcd no longer
    /// has it: the peer is gone). One write; the inventory stays as it is.
    pub(crate) async fn adopt(&self, peer: &PeerId) -> Result<Adopted> {
        let own = self.own_lease();
        let Some((meta, raw)) = self.peer_record(peer) else {
            return Ok(Adopted::Raced);
        };
        let mut record: PeerRecord = match serde_json::from_slice(&raw) {
            Ok(r) => r,
            Err(_) => return Ok(Adopted::Raced),
        };
        if own == 0 || record.owner == own {
            return Ok(Adopted::Raced);
        }
        record.owner = own;
        let value = serde_json::to_vec(&record).map_err(|source| super::EtcdError::Encode {
            what: "a peer record",
            source,
        })?;
        let key = self.peer_key(peer);
        let put = TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(meta.lease)),
        );
        match self
            .txn("adopt a session", unchanged(key, &meta, put))
            .await
        {
            Ok(r) if r.succeeded() => Ok(Adopted::Taken),
            Ok(_) => Ok(Adopted::Raced),
            Err(e) if e.lease_gone() => {
                tracing::debug!(%peer, lease = meta.lease, "heartbeat: etcd no longer has the peer's lease");
                Ok(Adopted::Gone)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// End `peer`'s session, if its record is still the one of `meta`:
    /// the record goes (every central drops the peer), then its lease is
    /// revoked, which takes its inventory. Returns whether it ended.
    pub(crate) async fn end_session(&self, peer: &PeerId, meta: &PeerMeta) -> Result<bool> {
        let key = self.peer_key(peer);
        let delete = TxnOp::delete(key.clone(), None);
        if !self
            .txn("end a session", unchanged(key, meta, delete))
            .await?
            .succeeded()
        {
            return Ok(false);
        }
        self.forget_session(peer);
        match self.client.clone().lease_revoke(meta.lease).await {
            Ok(_) => {}
            Err(e) if lease_not_found(&e) => {}
            // The lease runs out by itself (see `Etcd::peer_lease_ttl`); the
            // record is gone, so nothing on it is listed meanwhile.
            Err(e) => {
                tracing::debug!(%peer, error = %unavailable("revoke a lease", e), "the ended session's lease stays until it runs out")
            }
        }
        Ok(true)
    }
}

/// `op` on a peer's record `key`, if the record is still the one of
/// `meta` (no Join, adoption or end since).
fn unchanged(key: String, meta: &PeerMeta, op: TxnOp) -> Txn {
    Txn::new()
        .when([Compare::mod_revision(
            key,
            CompareOp::Equal,
            meta.mod_revision,
        )])
        .and_then([op])
}
