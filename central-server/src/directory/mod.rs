//! The directory: the in-memory index and the replication state, kept
//! equal to the store they are persisted in, behind one interface that
//! speaks the domain (join, heartbeat, publish, unpublish, leave, expire,
//! pin, prove, …). The store is chosen once, at start ([`Directory::open`]):
//! one SQLite file, or etcd shared by several centrals. Nothing outside
//! this folder knows which.
//!
//! Every change is checked against the index, made durable, then applied
//! to the index; an RPC is acknowledged only once its change is in the
//! index it answers from:
//!
//! * [`sqlite`] — under one store mutex, on the blocking pool: check,
//!   commit, apply (memory and disk change in the same order).
//! * [`on_etcd`] — check, write to etcd, and wait for this central's watch
//!   to apply that revision: the index changes only through the follower,
//!   so every central applies every change in etcd's order.
//!
//! The stores depend on [`shared`] (the state they keep current, the
//! requests and checks they take), never on this module.
//!
//! Changes to the index are applied in steps ([`gate`]), so a big one never
//! makes a reader wait long; a Join or Publish arrives as an
//! [`Inventory`] whose bad entries are refused one by one.

mod follow;
mod gate;
mod inventory;
mod on_etcd;
mod shared;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLockReadGuard;
use peerdex_proto::{FileId, PeerId, v1};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use inventory::{Inventory, log_refused};
pub(crate) use shared::{Admit, Admitted, Join, Shared, TaskChanges};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::etcd::Decline;
use crate::identity::Nonces;
use crate::index::{Index, Load, TokenHash};
use crate::leader::Leadership;
use crate::network::Network;
use crate::replication::{Pin, Proof, Replicas};
use crate::store::Withdrawal;

/// How often the leader does its chores: forget idle key bindings and
/// (on etcd) compact the history.
const CHORES_EVERY: Duration = Duration::from_secs(60);

/// The directory. Shared as `Arc<Directory>`.
pub(crate) struct Directory {
    shared: Arc<Shared>,
    backend: Backend,
    /// Where the index came from at start (Info tells).
    source: v1::IndexSource,
}

/// Where the directory is persisted.
enum Backend {
    Sqlite(Arc<sqlite::Sqlite>),
    Etcd(on_etcd::OnEtcd),
}

/// A directory opened at start, with what serves beside it.
pub(crate) struct Opened {
    pub directory: Arc<Directory>,
    /// Join nonces (their key is shared by every central on etcd).
    pub nonces: Nonces,
    pub leadership: Leadership,
    /// The follower and the election (on etcd).
    pub tasks: Vec<JoinHandle<()>>,
}

impl Directory {
    /// Open the store `config` names (etcd when `CENTRAL_ETCD_ENDPOINTS` is
    /// set, else SQLite in the data folder), load the index from it, and
    /// start what keeps it current.
    pub(crate) async fn open(
        config: &Config,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<Opened> {
        match &config.etcd_endpoints {
            None => {
                let (db, shared) = sqlite::open(config).await?;
                Ok(Opened {
                    directory: Arc::new(Self {
                        shared,
                        backend: Backend::Sqlite(db),
                        source: v1::IndexSource::Database,
                    }),
                    nonces: Nonces::new(),
                    leadership: Leadership::alone(name),
                    tasks: Vec::new(),
                })
            }
            Some(endpoints) => {
                let o = on_etcd::open(config, endpoints, name, cancel).await?;
                Ok(Opened {
                    directory: Arc::new(Self {
                        shared: o.shared,
                        backend: Backend::Etcd(o.store),
                        source: o.source,
                    }),
                    nonces: o.nonces,
                    leadership: o.leadership,
                    tasks: o.tasks,
                })
            }
        }
    }

    /// The read side of the index lock.
    pub(crate) fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.shared.index()
    }

    /// Pins, tasks, declines and proofs.
    pub(crate) fn replicas(&self) -> &Replicas {
        &self.shared.replicas
    }

    /// The Watch streams open at this central (wanted files).
    pub(crate) fn watches(&self) -> &std::sync::Arc<crate::watch::Watches> {
        &self.shared.watches
    }

    pub(crate) fn network(&self) -> Option<&Network> {
        self.shared.network.as_ref()
    }

    /// Where the index came from at start: the database, the snapshot,
    /// or a full read of etcd (and why).
    pub(crate) fn index_source(&self) -> v1::IndexSource {
        self.source
    }

    /// `sqlite` or `etcd`, for Info and the log.
    pub(crate) fn store_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Etcd(_) => "etcd",
        }
    }

    /// The store revision the index reflects (etcd; 0 on SQLite).
    pub(crate) fn revision(&self) -> i64 {
        match &self.backend {
            Backend::Sqlite(_) => 0,
            Backend::Etcd(e) => e.etcd.applied(),
        }
    }

    /// Whether several centrals share this directory (peers of a
    /// stopping central can move to another).
    pub(crate) fn shared(&self) -> bool {
        matches!(self.backend, Backend::Etcd(_))
    }

    /// A live peer proving it is itself: unknown/expired → join again,
    /// wrong token → UNAUTHENTICATED.
    pub(crate) fn authorize(&self, peer: &PeerId, token: &TokenHash, now: Instant) -> Result<()> {
        self.shared.authorize(peer, token, now)
    }

    /// This peer's stripe of the serializing locks.
    pub(crate) async fn serial(&self, peer: &PeerId) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared.serial(peer).await
    }

    /// Admit a peer: bind its key (first Join) or check it, replace its
    /// inventory with what `admit` takes, start a session. Returns the
    /// entries taken and those refused.
    pub(crate) async fn join(
        self: &Arc<Self>,
        j: Join,
        admit: Admit,
    ) -> Result<(usize, Vec<v1::Refused>)> {
        match &self.backend {
            Backend::Sqlite(db) => db.join(&self.shared, j, admit).await,
            Backend::Etcd(e) => e.join(&self.shared, j, admit).await,
        }
    }

    /// Renew `peer`'s lease after `pace` allowed it. `Ok(false)`: the peer
    /// is not (or no longer) joined, it must join again.
    pub(crate) async fn heartbeat(
        &self,
        peer: &PeerId,
        token: &TokenHash,
        load: Option<Load>,
        pace: impl FnOnce() -> Result<()>,
    ) -> Result<bool> {
        let now = Instant::now();
        match self.authorize(peer, token, now) {
            Ok(()) => {}
            Err(Error::NotJoined(_)) => {
                tracing::debug!(%peer, "heartbeat: the peer is not in this central's index");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        // Paced before the store is asked: a flood costs it nothing.
        pace()?;
        match &self.backend {
            Backend::Sqlite(_) => {
                Ok(self
                    .index()
                    .renew(peer, load, now + self.shared.lease_ttl, now))
            }
            Backend::Etcd(e) => e.heartbeat(&self.shared, peer, load, now).await,
        }
    }

    /// Add to `peer`'s inventory what `admit` takes (change `seq` of its
    /// session, in order).
    pub(crate) async fn publish(
        self: &Arc<Self>,
        peer: PeerId,
        token: TokenHash,
        seq: u64,
        admit: Admit,
    ) -> Result<Vec<v1::Refused>> {
        match &self.backend {
            Backend::Sqlite(db) => db.publish(&self.shared, peer, token, seq, admit).await,
            Backend::Etcd(e) => e.publish(&self.shared, peer, token, seq, admit).await,
        }
    }

    /// Remove entries from `peer`'s inventory (change `seq`, in order).
    pub(crate) async fn unpublish(
        self: &Arc<Self>,
        peer: PeerId,
        token: TokenHash,
        seq: u64,
        refs: Vec<Withdrawal>,
    ) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(db) => db.unpublish(&self.shared, peer, token, seq, refs).await,
            Backend::Etcd(e) => e.unpublish(&self.shared, peer, token, seq, refs).await,
        }
    }

    /// End `peer`'s session and remove its inventory. Returns whether it
    /// was there (leaving twice is not an error).
    pub(crate) async fn leave(self: &Arc<Self>, peer: PeerId, token: TokenHash) -> Result<bool> {
        let left = match &self.backend {
            Backend::Sqlite(db) => db.leave(&self.shared, peer, token).await?,
            Backend::Etcd(e) => e.leave(&self.shared, peer, token).await?,
        };
        if left {
            tracing::info!(%peer, "peer left");
        }
        Ok(left)
    }

    /// Remove every peer whose lease ended by `now`; returns how many.
    /// On etcd: end the sessions this central keeps whose heartbeats
    /// stopped (the follower then removes them at every central) and,
    /// when `leader`, those of centrals gone that nobody adopted.
    pub(crate) async fn expire(self: &Arc<Self>, now: Instant, leader: bool) -> Result<usize> {
        match &self.backend {
            Backend::Sqlite(db) => db.expire(&self.shared, now).await,
            Backend::Etcd(e) => e.expire(&self.shared, now, leader).await,
        }
    }

    /// Forget key bindings idle longer than `CENTRAL_KEY_RETENTION_DAYS`
    /// (of peers no longer in the directory).
    pub(crate) async fn forget_idle_keys(self: &Arc<Self>) -> Result<usize> {
        let before = unix_secs() - self.shared.key_retention.as_secs() as i64;
        match &self.backend {
            Backend::Sqlite(db) => db.forget_idle_keys(&self.shared, before).await,
            Backend::Etcd(e) => e.forget_idle_keys(before).await,
        }
    }

    /// Drop the store's old history (etcd compaction; SQLite keeps none).
    async fn compact(&self) {
        if let Backend::Etcd(e) = &self.backend {
            e.compact().await;
        }
    }

    /// Write `peer`'s pin of `file` (`None` removes it).
    pub(crate) async fn set_pin(
        self: &Arc<Self>,
        file: FileId,
        peer: PeerId,
        pin: Option<Pin>,
    ) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(db) => db.set_pin(&self.shared, file, peer, pin).await,
            Backend::Etcd(e) => e.set_pin(file, peer, pin).await,
        }
    }

    /// Record (or forget) that the directory stands behind a copy.
    pub(crate) async fn set_proof(
        &self,
        peer: PeerId,
        file: FileId,
        proof: Option<Proof>,
    ) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => {
                self.shared.replicas.set_proof(peer, file, proof);
                Ok(())
            }
            Backend::Etcd(e) => e.set_proof(peer, file, proof).await,
        }
    }

    /// Remove `peer`'s claim to hold `file` (every name), as its own
    /// Unpublish would.
    pub(crate) async fn drop_claim(self: &Arc<Self>, peer: PeerId, file: FileId) -> Result<()> {
        let refs: Vec<Withdrawal> = vec![(file, None)];
        match &self.backend {
            Backend::Sqlite(db) => db.drop_claim(&self.shared, peer, refs).await,
            Backend::Etcd(e) => e.drop_claim(&self.shared, peer, refs).await,
        }
    }

    /// Keep the FETCHes `peer` declined (each one it was given).
    pub(crate) async fn record_declines(
        &self,
        peer: &PeerId,
        declines: Vec<(FileId, Decline)>,
    ) -> Result<()> {
        if declines.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Sqlite(_) => {
                self.shared.replicas.keep_declines(peer, declines);
                Ok(())
            }
            Backend::Etcd(e) => e.record_declines(peer, &declines).await,
        }
    }

    /// Write what a round of the planner changed.
    pub(crate) async fn set_tasks(&self, changes: TaskChanges) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => {
                self.shared.replicas.replace_tasks(
                    changes.tasks,
                    &changes.forget,
                    changes.timed_out,
                );
                Ok(())
            }
            Backend::Etcd(e) if !changes.is_empty() => e.set_tasks(changes).await,
            Backend::Etcd(_) => Ok(()),
        }
    }

    /// Close the store (after the server stopped).
    pub(crate) async fn close(self: &Arc<Self>) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(db) => db.close().await,
            // Its lease stays: restarted, it keeps its sessions; if not,
            // they move to other centrals or the leader ends them.
            Backend::Etcd(_) => Ok(()),
        }
    }

    /// Keep the directory tidy until `cancel`: remove expired leases
    /// (every quarter lease, at most every 5 s; `on_sweep` gets how many
    /// and how long it took) and, while this central leads, every minute
    /// forget idle key bindings and compact the store's history.
    pub(crate) async fn upkeep_loop(
        self: Arc<Self>,
        leadership: Leadership,
        on_sweep: impl Fn(usize, Duration) + Send,
        cancel: CancellationToken,
    ) {
        let period =
            (self.shared.lease_ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut chores_done: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if leadership.is_leader() && chores_done.is_none_or(|t| t.elapsed() >= CHORES_EVERY) {
                chores_done = Some(Instant::now());
                self.compact().await;
                match self.forget_idle_keys().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(keys = n, "idle peer-key bindings forgotten"),
                    Err(e) => {
                        tracing::warn!(error = %e, "forgetting idle peer keys failed; will retry")
                    }
                }
            }
            let started = std::time::Instant::now();
            match self.expire(Instant::now(), leadership.is_leader()).await {
                Ok(n) => {
                    on_sweep(n, started.elapsed());
                    if n == 0 {
                        continue;
                    }
                    tracing::info!(
                        peers = n,
                        ms = started.elapsed().as_millis() as u64,
                        "expired leases removed"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "lease sweep failed; will retry"),
            }
        }
    }
}

/// Seconds since the Unix epoch, as the stores keep them (key bindings'
/// last Join, pins).
pub(crate) fn unix_secs() -> i64 {
    peerdex_proto::network::unix_now() as i64
}
