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
//! Changes to the index are applied in steps ([`gate`]), so a big one never
//! makes a reader wait long; a Join or Publish arrives as an
//! [`Inventory`] whose bad entries are refused one by one.

mod follow;
mod gate;
mod inventory;
mod on_etcd;
mod sqlite;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{RwLock, RwLockReadGuard};
use peerdex_proto::convert::SharedFile;
use peerdex_proto::{FileId, PeerId, PeerUrl, v1};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use gate::{IndexGate, Steps};
pub(crate) use inventory::{Inventory, log_refused};

use crate::config::Config;
use crate::error::{Auth, Error, Result};
use crate::etcd::Decline;
use crate::identity::Nonces;
use crate::index::{Index, Lease, Load, TokenHash};
use crate::leader::Leadership;
use crate::network::Network;
use crate::replication::{Pin, Proof, Replicas, Task, Tasks};
use crate::store::{PublicKey, Withdrawal};

/// Most holdings removed from the database in one transaction by the
/// lease sweeper (the store mutex is released between them, so Joins and
/// Publishes interleave with a mass expiry).
pub const SWEEP_TX_HOLDINGS: usize = 20_000;

/// How often the leader does its chores: forget idle key bindings and
/// (on etcd) compact the history.
const CHORES_EVERY: Duration = Duration::from_secs(60);

/// The directory. Shared as `Arc<Directory>`.
pub(crate) struct Directory {
    index: RwLock<Index>,
    backend: Backend,
    replicas: Replicas,
    /// A private network (`CENTRAL_JOIN_SECRET`): departures revoke
    /// credentials. `None` = open.
    network: Option<Network>,
    lease_ttl: Duration,
    /// Forget a key binding after this long without a Join (and the peer gone).
    key_retention: Duration,
    /// CENTRAL_MAX_KEYS.
    max_keys: usize,
    /// Calls of one peer that must not interleave (its inventory changes
    /// on etcd, its pin changes) take its stripe of these.
    stripes: Vec<tokio::sync::Mutex<()>>,
}

/// Where the directory is persisted.
enum Backend {
    Sqlite(sqlite::Sqlite),
    Etcd(on_etcd::OnEtcd),
}

/// A Join, checked at the edge (the peer proved its key).
pub(crate) struct Join {
    pub peer: PeerId,
    pub url: PeerUrl,
    pub key: PublicKey,
    /// The session token the call carried, if any (a re-join of a peer
    /// without a key binding must show it).
    pub token: Option<TokenHash>,
    pub addr: IpAddr,
    pub load: Load,
    /// The new session token's hash.
    pub hash: TokenHash,
    pub nonce: Vec<u8>,
    pub unix_now: i64,
    pub replica_quota: u64,
}

/// The entries of an inventory that are taken, and the refusals.
pub(crate) type Admitted = (Vec<SharedFile>, Vec<v1::Refused>);

/// The admission of an inventory against the index as it is when the
/// change is made (quotas, the peer's own size claims): see
/// `crate::admission`.
pub(crate) type Admit = Box<dyn FnOnce(&Index) -> Result<Admitted> + Send>;

/// What one round of the replication planner changes.
#[derive(Default)]
pub(crate) struct TaskChanges {
    /// The whole set of open tasks after the round.
    pub tasks: Tasks,
    /// Tasks new or changed.
    pub give: Vec<(PeerId, FileId, Task)>,
    /// Tasks no longer open.
    pub withdraw: Vec<(PeerId, FileId)>,
    /// FETCHes that took too long, recorded as declined.
    pub timed_out: Vec<(PeerId, FileId, Decline)>,
    /// Declines old enough to forget.
    pub forget: Vec<(PeerId, FileId)>,
}

impl TaskChanges {
    fn is_empty(&self) -> bool {
        self.give.is_empty()
            && self.withdraw.is_empty()
            && self.timed_out.is_empty()
            && self.forget.is_empty()
    }
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
            None => sqlite::open(config, name).await,
            Some(endpoints) => on_etcd::open(config, endpoints, name, cancel).await,
        }
    }

    fn new(backend: Backend, index: Index, network: Option<Network>, config: &Config) -> Self {
        Self {
            index: RwLock::new(index),
            backend,
            replicas: Replicas::default(),
            network,
            lease_ttl: config.lease_ttl,
            key_retention: config.key_retention,
            max_keys: config.limits.max_keys,
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The read side of the index lock.
    pub(crate) fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read()
    }

    /// Pins, tasks, declines and proofs.
    pub(crate) fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    pub(crate) fn network(&self) -> Option<&Network> {
        self.network.as_ref()
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
        authorize(&self.index(), peer, token, now)
    }

    /// This peer's stripe of the serializing locks.
    pub(crate) async fn serial(&self, peer: &PeerId) -> tokio::sync::MutexGuard<'_, ()> {
        let i = (peer.as_uuid().as_u128() % self.stripes.len() as u128) as usize;
        self.stripes[i].lock().await
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
            Backend::Sqlite(_) => sqlite::join(self, j, admit).await,
            Backend::Etcd(e) => e.join(self, j, admit).await,
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
            Backend::Sqlite(_) => Ok(self.index().renew(peer, load, now + self.lease_ttl, now)),
            Backend::Etcd(e) => e.heartbeat(self, peer, load, now).await,
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
            Backend::Sqlite(_) => sqlite::publish(self, peer, token, seq, admit).await,
            Backend::Etcd(e) => e.publish(self, peer, token, seq, admit).await,
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
            Backend::Sqlite(_) => sqlite::unpublish(self, peer, token, seq, refs).await,
            Backend::Etcd(e) => e.unpublish(self, peer, token, seq, refs).await,
        }
    }

    /// End `peer`'s session and remove its inventory. Returns whether it
    /// was there (leaving twice is not an error).
    pub(crate) async fn leave(self: &Arc<Self>, peer: PeerId, token: TokenHash) -> Result<bool> {
        let left = match &self.backend {
            Backend::Sqlite(_) => sqlite::leave(self, peer, token).await?,
            Backend::Etcd(e) => e.leave(self, peer, token).await?,
        };
        if left {
            tracing::info!(%peer, "peer left");
        }
        Ok(left)
    }

    /// Remove every peer whose lease ended by `now`; returns how many.
    /// `None`: etcd ends leases itself (the follower applies it).
    pub(crate) async fn expire(self: &Arc<Self>, now: Instant) -> Result<Option<usize>> {
        match &self.backend {
            Backend::Sqlite(_) => sqlite::expire(self, now).await.map(Some),
            Backend::Etcd(_) => Ok(None),
        }
    }

    /// Forget key bindings idle longer than `CENTRAL_KEY_RETENTION_DAYS`
    /// (of peers no longer in the directory).
    pub(crate) async fn forget_idle_keys(self: &Arc<Self>) -> Result<usize> {
        let before = unix_secs() - self.key_retention.as_secs() as i64;
        match &self.backend {
            Backend::Sqlite(_) => sqlite::forget_idle_keys(self, before).await,
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
            Backend::Sqlite(_) => sqlite::set_pin(self, file, peer, pin).await,
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
                self.replicas.set_proof(peer, file, proof);
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
            Backend::Sqlite(_) => sqlite::drop_claim(self, peer, refs).await,
            Backend::Etcd(e) => e.drop_claim(self, peer, refs).await,
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
                self.replicas.keep_declines(peer, declines);
                Ok(())
            }
            Backend::Etcd(e) => e.record_declines(peer, &declines).await,
        }
    }

    /// Write what a round of the planner changed.
    pub(crate) async fn set_tasks(&self, changes: TaskChanges) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => {
                self.replicas
                    .replace_tasks(changes.tasks, &changes.forget, changes.timed_out);
                Ok(())
            }
            Backend::Etcd(e) if !changes.is_empty() => e.set_tasks(changes).await,
            Backend::Etcd(_) => Ok(()),
        }
    }

    /// Close the store (after the server stopped).
    pub(crate) async fn close(self: &Arc<Self>) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => sqlite::close(self).await,
            Backend::Etcd(_) => Ok(()),
        }
    }

    /// Departed peers: their credentials are revoked (private network).
    fn departed(&self, peers: &[PeerId]) {
        if let Some(net) = &self.network
            && !peers.is_empty()
        {
            net.revoke(peers);
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
        let period = (self.lease_ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
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
            match self.expire(Instant::now()).await {
                Ok(None) => {}
                Ok(Some(n)) => {
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

/// A live peer proving it is itself: unknown/expired → join again, wrong
/// token → UNAUTHENTICATED.
pub(crate) fn authorize(ix: &Index, peer: &PeerId, token: &TokenHash, now: Instant) -> Result<()> {
    match ix.lease(peer, now) {
        Lease::Unknown | Lease::Expired => Err(Error::NotJoined(*peer)),
        Lease::Live if ix.token_matches(peer, token) => Ok(()),
        Lease::Live => Err(Auth::WrongToken(*peer).into()),
    }
}

/// A Join of a peer without a key binding yet (from before keys) that
/// has a live lease must carry its session token.
fn check_rejoin(ix: &Index, j: &Join, bound: bool, now: Instant) -> Result<()> {
    if !bound
        && ix.lease(&j.peer, now) == Lease::Live
        && !j.token.is_some_and(|t| ix.token_matches(&j.peer, &t))
    {
        return Err(Auth::LiveLease(j.peer).into());
    }
    Ok(())
}

/// The check of a Leave: `Ok(false)` when the peer is already gone
/// (leaving is idempotent), UNAUTHENTICATED with a wrong token.
fn check_leave(ix: &Index, peer: &PeerId, token: &TokenHash) -> Result<bool> {
    if ix.lease(peer, Instant::now()) == Lease::Unknown {
        return Ok(false);
    }
    if !ix.token_matches(peer, token) {
        return Err(Auth::WrongToken(*peer).into());
    }
    Ok(true)
}

/// Seconds since the Unix epoch, as the stores keep them (key bindings'
/// last Join, pins).
pub(crate) fn unix_secs() -> i64 {
    peerdex_proto::network::unix_now() as i64
}
