//! The gRPC service: parses requests at the edge, authorizes, writes SQLite,
//! then updates the in-memory index.
//!
//! A Join or Publish is applied entry by entry: an entry that cannot be
//! taken (a malformed id or name, or a size that contradicts the peer's own
//! claim for the same id) is listed in the answer's `refused` with the
//! reason, and the rest of the inventory is applied. Only what concerns the
//! whole call (authentication, the peer id or URL, the entry-count limits)
//! fails it.
//!
//! All mutations run on the blocking pool and are serialized by the store
//! mutex: under it the service checks the request against the index, commits
//! the transaction, then applies the same change to the index. Memory and
//! disk therefore change in the same order, and an RPC is acknowledged only
//! after its commit.
//!
//! The index sits behind one read-write lock (parking_lot's, which is fair
//! and lets a writer hand over to waiting threads). Locate, Search and
//! Heartbeat take the read side (a heartbeat renews an atomic lease), so
//! they never wait for one another; a search costs at most
//! `CENTRAL_SEARCH_BUDGET` units of work. Changes take the write side in
//! steps of at most [`STEP`] holdings and hand the lock over between steps
//! ([`Steps`]), so a big Join, Publish, Unpublish, Leave or lease sweep
//! never makes a reader wait for more than one step (about a millisecond
//! at a million names). Changes by a peer of its own inventory apply in
//! order (the store mutex is held across the steps); a reader may see a
//! big change half applied, never a change that is not committed.
//!
//! Rate limits (`peerdex_common::limit`) are checked before any work: Join and Search
//! per source address, Publish/Unpublish and (when the call names its
//! peer) Search per peer, after the peer proved who it is, so nobody can
//! spend another peer's allowance. Quotas (peers per source address,
//! holdings per peer and in total) are checked under the store mutex
//! with the rest of the request.

mod on_etcd;
mod replicas;
mod revocations;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use peerdex_common::sync::lock;
use std::time::Duration;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use peerdex_proto::convert::SharedFile;
use peerdex_proto::v1::{self, directory_server::Directory};
use peerdex_proto::{AUTHORIZATION, FileId, FileName, PeerId, PeerUrl};
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use crate::config::{Config, Limits};
use crate::error::{Error, Result};
use crate::etcd::Etcd;
use crate::identity::{NONCE_VALID, Nonces};
use crate::index::{Cursor, Index, Lease, Load, SizeConflict, TokenHash, words};
use crate::leader::Leadership;
use crate::metrics::{Metrics, Refusal, Rpc};
use crate::network::Network;
use crate::store::{PublicKey, Store, Withdrawal};
use peerdex_common::limit::{Limiter, addr_key, retry_secs};

/// Most holdings one step of a bulk change adds or removes under the
/// write lock (see [`Steps`]).
pub const STEP: usize = 2048;

/// Most holdings removed from the database in one transaction by the
/// lease sweeper (the store mutex is released between them, so Joins and
/// Publishes interleave with a mass expiry).
pub const SWEEP_TX_HOLDINGS: usize = 20_000;

/// Longest accepted search query, in bytes, and most words in one: the
/// wire contract's, which the PServer's OpenAPI document declares.
pub use peerdex_proto::types::{MAX_QUERY_BYTES, MAX_QUERY_WORDS};
/// Metadata naming the peer that searches (optional; with its token).
pub const PEER_ID_META: &str = "peerdex-peer-id";
/// Results per search page when the request says 0.
pub const DEFAULT_PAGE: usize = 50;

struct Shared {
    index: RwLock<Index>,
    /// `None` once closed at shutdown.
    store: Mutex<Option<Store>>,
    lease_ttl: Duration,
    heartbeat_interval: Duration,
    limits: Limits,
    /// Searches running at once: they run on the blocking pool, at most
    /// one fewer than the cores (at least one), so that a flood of them
    /// never takes every core from Locate, heartbeats and writes.
    searching: tokio::sync::Semaphore,
    joins: Limiter<IpAddr>,
    /// Challenges, at the rate of Joins (one comes before each Join).
    challenges: Limiter<IpAddr>,
    publishes: Limiter<PeerId>,
    searches: Limiter<IpAddr>,
    peer_searches: Limiter<PeerId>,
    /// `None` without `CENTRAL_METRICS_ADDR`: nothing is measured.
    metrics: Option<Arc<Metrics>>,
    /// Join nonces: issued by Challenge, spent by Join.
    nonces: Nonces,
    /// Forget a key binding after this long without a Join (and the peer gone).
    key_retention: Duration,
    /// A private network (`CENTRAL_JOIN_SECRET`); `None` = open.
    network: Option<Network>,
    /// The directory on etcd (`CENTRAL_ETCD_ENDPOINTS`); `None` = SQLite
    /// (`store`).
    etcd: Option<Arc<Etcd>>,
    /// Writes of one peer apply in order (on etcd; SQLite has `store`).
    peer_locks: Vec<tokio::sync::Mutex<()>>,
    /// Who leads the directory (a single central leads itself).
    leadership: Leadership,
    /// Shutting down: Heartbeat answers tell peers to move.
    draining: AtomicBool,
    /// On etcd: when each peer last heartbeated here, and those told to
    /// move (a draining central waits until its peers heard it).
    heard: Mutex<std::collections::HashMap<PeerId, Instant>>,
    told: Mutex<std::collections::HashSet<PeerId>>,
    /// On SQLite: the last inventory change number applied per peer in
    /// this session (etcd keeps it in `seq/<peer>`).
    seqs: Mutex<std::collections::HashMap<PeerId, u64>>,
    /// Pins, replica tasks and declines (see `replicas`).
    replicas: replicas::Replicas,
    /// CENTRAL_REPLICA_GRACE_SECS.
    replica_grace: Duration,
    /// CENTRAL_PIN_ORPHAN_DAYS.
    pin_orphan: Duration,
    /// CENTRAL_AUDIT_SECS, and the wait after a failed audit.
    audit_every: Duration,
    audit_retry: Duration,
    /// Checks claimed copies (the leader; see `crate::audit`).
    auditor: crate::audit::Auditor,
    /// When each live peer's last heartbeat was taken here: at most one
    /// per half heartbeat interval is (see [`DirectoryService::pace`]).
    /// Only peers that proved their token get an entry; purged with the
    /// rate limiters.
    beats: Mutex<std::collections::HashMap<PeerId, Instant>>,
    /// Revocations streams open, per peer (see `revocations`).
    streams: Mutex<std::collections::HashMap<PeerId, usize>>,
    /// Ends every Revocations stream (shutdown, drain).
    streams_end: CancellationToken,
}

/// Where the directory's state lives.
pub(crate) enum Backend {
    Sqlite(Store),
    Etcd(Arc<Etcd>),
}

/// Per-process or shared secrets, made by the caller (shared through
/// etcd when there are several centrals).
pub(crate) struct Secrets {
    pub nonces: Nonces,
    pub network: Option<Network>,
}

/// Implements `peerdex.v1.Directory`. Cheap to clone.
#[derive(Clone)]
pub struct DirectoryService {
    shared: Arc<Shared>,
}

/// Searches that may run at once: one fewer than the cores, at least one.
fn search_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

/// Seconds since the Unix epoch, as the store keeps them (key bindings'
/// last Join).
fn unix_secs() -> i64 {
    peerdex_proto::network::unix_now() as i64
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl DirectoryService {
    pub(crate) fn new(
        backend: Backend,
        index: Index,
        config: &Config,
        metrics: Option<Arc<Metrics>>,
        secrets: Secrets,
        leadership: Leadership,
    ) -> Result<Self> {
        let (store, etcd) = match backend {
            Backend::Sqlite(s) => (Some(s), None),
            Backend::Etcd(e) => (None, Some(e)),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                index: RwLock::new(index),
                store: Mutex::new(store),
                lease_ttl: config.lease_ttl,
                heartbeat_interval: config.heartbeat_interval,
                limits: config.limits.clone(),
                searching: tokio::sync::Semaphore::new(search_slots()),
                joins: Limiter::new(config.limits.join_rate),
                challenges: Limiter::new(config.limits.join_rate),
                publishes: Limiter::new(config.limits.publish_rate),
                searches: Limiter::new(config.limits.search_rate),
                peer_searches: Limiter::new(config.limits.search_rate),
                metrics,
                nonces: secrets.nonces,
                key_retention: config.key_retention,
                network: secrets.network,
                etcd,
                peer_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
                leadership,
                draining: AtomicBool::new(false),
                heard: Mutex::default(),
                told: Mutex::default(),
                seqs: Mutex::default(),
                replicas: replicas::Replicas::default(),
                replica_grace: config.replica_grace,
                pin_orphan: config.pin_orphan,
                audit_every: config.audit_every,
                audit_retry: config.audit_retry,
                auditor: crate::audit::Auditor::new(&config.peer_ca)?,
                beats: Mutex::default(),
                streams: Mutex::default(),
                streams_end: CancellationToken::new(),
            }),
        })
    }

    /// The read side of the index lock.
    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.shared.index.read()
    }

    /// Take a token from `limiter` for `key`, or refuse with
    /// RESOURCE_EXHAUSTED naming `setting` and when to retry.
    fn rate<K: std::hash::Hash + Eq + Clone + std::fmt::Display>(
        &self,
        limiter: &Limiter<K>,
        key: &K,
        what: &str,
        setting: &str,
        refusal: Refusal,
    ) -> Result<()> {
        limiter
            .check(key, Instant::now().into_std())
            .inspect_err(|_| self.refused(refusal))
            .map_err(|wait| Error::RateLimited {
                message: format!(
                    "too many {what} from {key}: the limit is {setting}; retry in {} s",
                    retry_secs(wait)
                ),
                retry_after_secs: retry_secs(wait),
            })
    }

    /// Drop idle rate-limit buckets.
    fn purge_limiters(&self, now: Instant) {
        let (s, now) = (&self.shared, now.into_std());
        s.joins.purge(now);
        s.challenges.purge(now);
        s.publishes.purge(now);
        s.searches.purge(now);
        s.peer_searches.purge(now);
        let gap = s.heartbeat_interval / 2;
        lock(&s.beats).retain(|_, at| now.saturating_duration_since(at.into_std()) < gap);
    }

    /// Take one heartbeat of `peer` (which proved its token), or refuse it
    /// with RESOURCE_EXHAUSTED and when to retry: at most one per half
    /// heartbeat interval is taken. An honest PServer heartbeats once per
    /// interval (and waits `retry-after` when refused), so only a flood
    /// is refused; the lease is not renewed by a refused heartbeat.
    fn pace(&self, peer: &PeerId, now: Instant) -> Result<()> {
        let gap = self.shared.heartbeat_interval / 2;
        let mut beats = lock(&self.shared.beats);
        if let Some(last) = beats.get(peer) {
            let since = now.saturating_duration_since(*last);
            if since < gap {
                drop(beats);
                self.refused(Refusal::HeartbeatRate);
                let wait = retry_secs(gap - since);
                return Err(Error::RateLimited {
                    message: format!(
                        "too many heartbeats from peer {peer}: at most one per half heartbeat interval ({} ms, CENTRAL_HEARTBEAT_SECS / 2) is taken; retry in {wait} s",
                        gap.as_millis()
                    ),
                    retry_after_secs: wait,
                });
            }
        }
        beats.insert(*peer, now);
        Ok(())
    }

    /// Run a mutation on the blocking pool under the store lock.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&IndexGate<'_>, &mut Store) -> Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = lock(&shared.store);
            let store = store.as_mut().ok_or(Error::Closed)?;
            // `f` takes the index lock in short pieces (check, then apply),
            // never across the commit.
            f(&IndexGate(&shared.index), store)
        })
        .await?
    }

    /// Close the database (after the server stopped).
    pub(crate) async fn close(&self) -> Result<()> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || match lock(&shared.store).take() {
            Some(s) => s.close(),
            None => Ok(()),
        })
        .await?
    }

    /// Remove every peer whose lease has ended (memory and disk), in
    /// transactions of at most [`SWEEP_TX_HOLDINGS`] holdings (the store
    /// mutex is released between them, with a rest as long as the batch
    /// took) and index steps of [`STEP`].
    pub(crate) async fn sweep(&self, now: Instant) -> Result<usize> {
        let expired = self.index().expired(now);
        let mut removed = 0;
        let mut batch: Vec<PeerId> = Vec::new();
        let mut held = 0;
        let mut last: Option<Duration> = None;
        for (i, (peer, holdings)) in expired.iter().enumerate() {
            batch.push(*peer);
            held += holdings;
            if held >= SWEEP_TX_HOLDINGS || i + 1 == expired.len() {
                let peers = std::mem::take(&mut batch);
                held = 0;
                // Paced: after a batch, rest as long as it took, so that a
                // mass expiry takes at most half a core from the readers
                // (expired peers are already gone from every answer).
                if let Some(took) = last.take() {
                    tokio::time::sleep(took).await;
                }
                let started = std::time::Instant::now();
                let shared = self.shared.clone();
                removed += self
                    .write(move |gate, store| {
                        let network = &shared.network;
                        // Only those still expired: one may have joined again.
                        let peers: Vec<PeerId> = {
                            let ix = gate.read();
                            peers
                                .into_iter()
                                .filter(|p| ix.lease(p, now) == Lease::Expired)
                                .collect()
                        };
                        if !peers.is_empty() {
                            store.remove_peers(&peers)?;
                            let mut seqs = lock(&shared.seqs);
                            for p in &peers {
                                seqs.remove(p);
                            }
                            drop(seqs);
                            if let Some(net) = &network {
                                net.revoke(&peers);
                            }
                            let mut steps = Steps::new(gate);
                            for p in &peers {
                                steps.remove_peer(p);
                            }
                        }
                        Ok(peers.len())
                    })
                    .await?;
                last = Some(started.elapsed().min(Duration::from_secs(1)));
            }
        }
        Ok(removed)
    }

    /// Sweep expired leases until `cancel` fires.
    pub(crate) async fn sweep_loop(self, cancel: CancellationToken) {
        let period =
            (self.shared.lease_ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut keys_checked: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.shared.etcd.is_some() {
                // etcd ends leases itself; the leader forgets idle keys.
                let now = Instant::now();
                self.purge_limiters(now);
                let keep = self.shared.heartbeat_interval * 3;
                lock(&self.shared.heard).retain(|_, at| now.duration_since(*at) < keep);
                continue;
            }
            // Idle key bindings: once a minute is plenty (retention is days).
            if keys_checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                keys_checked = Some(Instant::now());
                match self.forget_idle_keys().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(keys = n, "idle peer-key bindings forgotten"),
                    Err(e) => {
                        tracing::warn!(error = %e, "forgetting idle peer keys failed; will retry")
                    }
                }
            }
            let started = std::time::Instant::now();
            let swept = self.sweep(Instant::now()).await;
            if let (Ok(n), Some(m)) = (&swept, &self.shared.metrics) {
                m.swept(*n, started.elapsed());
            }
            match swept {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    peers = n,
                    ms = started.elapsed().as_millis() as u64,
                    "expired leases removed"
                ),
                Err(e) => tracing::warn!(error = %e, "lease sweep failed; will retry"),
            }
            self.purge_limiters(Instant::now());
        }
    }

    pub(crate) fn stats(&self) -> crate::index::Stats {
        self.index().stats()
    }

    pub(crate) fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.shared.metrics.as_ref()
    }

    /// The Prometheus text of this directory, if it has metrics.
    pub(crate) fn render_metrics(&self) -> Option<String> {
        let m = self.metrics()?;
        let (stats, holdings) = {
            let ix = self.index();
            let mut stats = ix.stats();
            // Live leases only: an expired peer is in no answer any more,
            // even before the sweeper removes it.
            stats.peers = ix.live_peers(Instant::now());
            (stats, ix.holdings())
        };
        let role = crate::metrics::Role {
            leader: self.shared.leadership.is_leader(),
            draining: self.shared.draining.load(Ordering::Relaxed),
            revision: self.etcd().map_or(0, |e| e.applied()),
        };
        Some(m.render(stats, holdings, role, self.replication_figures()))
    }

    fn refused(&self, why: Refusal) {
        if let Some(m) = &self.shared.metrics {
            m.refused(why);
        }
    }

    /// Run one RPC's handler, counting its answer by status code and
    /// timing it (when metrics are on).
    async fn metered<T>(
        &self,
        rpc: Rpc,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let Some(m) = &self.shared.metrics else {
            return call.await;
        };
        let started = std::time::Instant::now();
        let r = call.await;
        let code = match &r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        m.observe(rpc, code, started.elapsed());
        r
    }

    /// Parse a Join/Publish inventory; malformed entries are refused one by
    /// one. Only too many entries fails the call.
    fn parse_files(&self, files: Vec<v1::SharedFile>) -> Result<Inventory> {
        let max = self.shared.limits.max_inventory;
        if files.len() > max {
            return Err(Error::LimitExceeded(format!(
                "files: {} entries exceed the limit of {max} per request (max_inventory, CENTRAL_MAX_INVENTORY)",
                files.len()
            )));
        }
        let mut inv = Inventory {
            total: files.len(),
            ..Inventory::default()
        };
        for (i, f) in files.into_iter().enumerate() {
            let parsed = self
                .check_name_len(&f.name, &format!("files[{i}].name"))
                .and_then(|()| {
                    SharedFile::try_from(&f)
                        .map_err(|e| Error::InvalidArgument(format!("files[{i}].{e}")))
                });
            match parsed {
                Ok(sf) => {
                    inv.positions.push(i);
                    inv.files.push(sf);
                }
                Err(e) => inv.refused.push((
                    i,
                    v1::Refused {
                        file_id: f.file_id,
                        name: f.name,
                        reason: e.to_string(),
                    },
                )),
            }
        }
        Ok(inv)
    }

    fn check_name_len(&self, name: &str, field: &str) -> Result<()> {
        let max = self.shared.limits.max_name_bytes;
        if name.len() > max {
            return Err(Error::InvalidArgument(format!(
                "{field}: {} bytes exceed the limit of {max} bytes (max_name_bytes)",
                name.len()
            )));
        }
        Ok(())
    }

    /// Charge a Publish/Unpublish to the peer's own bucket, once it has
    /// shown its token (a stranger cannot spend it; an unknown or wrong
    /// token is answered by the call itself).
    fn peer_rate(&self, peer: &PeerId, token: &TokenHash) -> Result<()> {
        if authorize(&self.index(), peer, token, Instant::now()).is_ok() {
            self.rate(
                &self.shared.publishes,
                peer,
                "Publish/Unpublish calls",
                "CENTRAL_PUBLISH_RATE (Publish and Unpublish calls per second per peer)",
                Refusal::PublishRate,
            )?;
        }
        Ok(())
    }

    /// A Join's inventory against the index: the peers-per-address quota,
    /// the peer's own size claims, and the directory's size limit.
    fn admit_join(
        &self,
        ix: &Index,
        peer: &PeerId,
        addr: IpAddr,
        inventory: Inventory,
        budget: usize,
    ) -> Result<(Vec<SharedFile>, Vec<v1::Refused>)> {
        let limits = &self.shared.limits;
        if ix.addr_of(peer) != Some(addr) {
            let joined = ix.peers_from(addr);
            let max = limits.max_peers_per_addr;
            if joined >= max {
                self.refused(Refusal::MaxPeersPerAddr);
                return Err(Error::LimitExceeded(format!(
                    "{joined} peers are already joined from address {addr}, the limit (CENTRAL_MAX_PEERS_PER_ADDR) is {max}: leave with one, or wait for a lease to end"
                )));
            }
        }
        let (files, refused) = inventory.screen(ix, peer, true, budget)?;
        let total = ix.holdings() - ix.inventory_len(peer) + files.len();
        let max = limits.max_files;
        if total > max {
            self.refused(Refusal::MaxFiles);
            return Err(Error::LimitExceeded(format!(
                "files: the directory would hold {total} entries, over its limit of {max} (CENTRAL_MAX_FILES); nothing was changed"
            )));
        }
        Ok((files, refused))
    }

    /// A Publish against the index: the caller's token, its own size
    /// claims, and the per-peer and directory limits.
    fn admit_publish(
        &self,
        ix: &Index,
        peer: &PeerId,
        token: &TokenHash,
        inventory: Inventory,
        now: Instant,
    ) -> Result<(Vec<SharedFile>, Vec<v1::Refused>)> {
        let limits = &self.shared.limits;
        authorize(ix, peer, token, now)?;
        let (files, refused) = inventory.screen(ix, peer, false, limits.max_message_bytes / 2)?;
        let total = ix.inventory_len(peer) + files.len();
        let max = limits.max_inventory;
        if total > max {
            return Err(Error::LimitExceeded(format!(
                "files: the inventory of peer {peer} would reach {total} entries, over the limit of {max} (max_inventory, CENTRAL_MAX_INVENTORY); nothing was changed"
            )));
        }
        let total = ix.holdings() + files.len();
        let max_files = limits.max_files;
        if total > max_files {
            self.refused(Refusal::MaxFiles);
            return Err(Error::LimitExceeded(format!(
                "files: the directory would hold {total} entries, over its limit of {max_files} (CENTRAL_MAX_FILES); nothing was changed"
            )));
        }
        Ok((files, refused))
    }

    /// Check that change `seq` of `peer` comes after the last one applied
    /// (SQLite; under the store mutex, before the commit), and note it. A
    /// repeat of the last applies again (it changes nothing).
    fn in_order(&self, peer: PeerId, seq: u64) -> Result<()> {
        if seq == 0 {
            return Ok(());
        }
        let mut seqs = lock(&self.shared.seqs);
        let last = seqs.entry(peer).or_insert(0);
        if seq < *last {
            return Err(on_etcd::superseded(peer, seq, *last));
        }
        *last = seq;
        Ok(())
    }

    fn expires(&self, now: Instant) -> Instant {
        now + self.shared.lease_ttl
    }
}

/// A Join/Publish inventory on its way in: the well-formed entries (with
/// their positions in the request) and the refused ones.
#[derive(Default)]
struct Inventory {
    /// Entries in the request.
    total: usize,
    files: Vec<SharedFile>,
    /// `positions[k]` is the request position of `files[k]`.
    positions: Vec<usize>,
    refused: Vec<(usize, v1::Refused)>,
}

impl Inventory {
    /// Move the entries that contradict the peer's own size claims (see
    /// [`Index::size_conflicts`]) to `refused`; return what is left to
    /// apply and the refusals in request order. A list of refusals too big
    /// to answer (over `budget` bytes encoded) fails the call instead,
    /// before anything is applied.
    fn screen(
        mut self,
        ix: &Index,
        peer: &PeerId,
        replace: bool,
        budget: usize,
    ) -> Result<(Vec<SharedFile>, Vec<v1::Refused>)> {
        let conflicts = ix.size_conflicts(peer, &self.files, replace);
        let mut refused_at = vec![false; self.files.len()];
        for SizeConflict {
            index,
            claimed,
            size,
        } in conflicts
        {
            refused_at[index] = true;
            let f = &self.files[index];
            let i = self.positions[index];
            self.refused.push((
                i,
                v1::Refused {
                    file_id: f.id.to_hex(),
                    name: f.name.to_string(),
                    reason: format!(
                        "files[{i}]: this peer already lists file id {} with size {claimed}; size {size} refused (one size per file per peer)",
                        f.id
                    ),
                },
            ));
        }
        self.refused.sort_by_key(|&(i, _)| i);
        let encoded: usize = self.refused.iter().map(|(_, r)| r.encoded_len() + 4).sum();
        if encoded > budget {
            return Err(Error::InvalidArgument(format!(
                "files: {} of {} entries are refused, too many to list in one answer ({encoded} bytes, over half of max_message_bytes); the first: {}",
                self.refused.len(),
                self.total,
                self.refused[0].1.reason
            )));
        }
        let accepted = self
            .files
            .into_iter()
            .zip(refused_at)
            .filter(|(_, refused)| !refused)
            .map(|(f, _)| f)
            .collect();
        Ok((accepted, self.refused.into_iter().map(|(_, r)| r).collect()))
    }
}

fn log_refused(peer: &PeerId, refused: &[v1::Refused]) {
    if let Some(first) = refused.first() {
        tracing::info!(%peer, refused = refused.len(), first = %first.reason, "inventory entries refused");
    }
}

/// Access to the index lock inside a mutation, which already holds the
/// store mutex: the lock order is always store → index.
pub(crate) struct IndexGate<'a>(&'a RwLock<Index>);
impl IndexGate<'_> {
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.0.read()
    }
    fn lock(&self) -> RwLockWriteGuard<'_, Index> {
        self.0.write()
    }
}

/// A change applied to the index in steps: at most [`STEP`] holdings per
/// hold of the write lock, which is handed over fairly to any waiting
/// reader between steps (`bump`).
struct Steps<'a> {
    guard: RwLockWriteGuard<'a, Index>,
    used: usize,
}

impl<'a> Steps<'a> {
    fn new(gate: &'a IndexGate<'a>) -> Self {
        let mut guard = gate.lock();
        guard.defer_postings(true);
        Self { guard, used: 0 }
    }

    /// Room left in this step; ends the step (the token map made whole,
    /// the lock handed over) first when none is.
    fn room(&mut self) -> usize {
        if self.used >= STEP {
            self.guard.flush_postings();
            RwLockWriteGuard::bump(&mut self.guard);
            self.used = 0;
        }
        STEP - self.used
    }

    fn ix(&mut self) -> &mut Index {
        &mut self.guard
    }

    /// Remove `peer`'s whole inventory, then the peer.
    fn drop_inventory(&mut self, peer: &PeerId) {
        loop {
            let room = self.room();
            let before = self.ix().inventory_len(peer);
            let left = self.ix().drop_some(peer, room);
            self.used += before - left + 1;
            if left == 0 {
                return;
            }
        }
    }

    fn remove_peer(&mut self, peer: &PeerId) {
        self.drop_inventory(peer);
        self.ix().remove_peer(peer);
    }

    fn publish(&mut self, peer: &PeerId, mut files: &[SharedFile]) {
        while !files.is_empty() {
            let room = self.room();
            let (now, later) = files.split_at(room.min(files.len()));
            self.ix().publish(peer, now);
            self.used += now.len();
            files = later;
        }
    }

    fn unpublish(&mut self, peer: &PeerId, mut refs: &[Withdrawal]) {
        while !refs.is_empty() {
            let room = self.room();
            let (now, later) = refs.split_at(room.min(refs.len()));
            self.ix().unpublish(peer, now);
            self.used += now.len();
            refs = later;
        }
    }
}

impl Drop for Steps<'_> {
    fn drop(&mut self) {
        self.guard.defer_postings(false);
    }
}

/// The key of the caller's source address (unknown: one shared key).
fn source<T>(req: &Request<T>) -> IpAddr {
    req.remote_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| addr_key(a.ip()))
}

fn parse_peer(s: &str) -> Result<PeerId> {
    s.parse()
        .map_err(|e| Error::InvalidArgument(format!("peer_id: {e}")))
}

/// The BLAKE3 hash of the bearer token in the metadata.
fn bearer(meta: &MetadataMap) -> Result<TokenHash> {
    let missing = || {
        Error::Unauthenticated(format!(
            "missing or malformed `{AUTHORIZATION}` metadata: expected `Bearer <session token from Join>`"
        ))
    };
    let value = meta
        .get(AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let token = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)?;
    Ok(*blake3::hash(token.as_bytes()).as_bytes())
}

/// A live peer proving it is itself: unknown/expired → join again, wrong
/// token → UNAUTHENTICATED.
fn authorize(ix: &Index, peer: &PeerId, token: &TokenHash, now: Instant) -> Result<()> {
    match ix.lease(peer, now) {
        Lease::Unknown | Lease::Expired => Err(Error::NotJoined(*peer)),
        Lease::Live if ix.token_matches(peer, token) => Ok(()),
        Lease::Live => Err(Error::Unauthenticated(format!(
            "session token does not match peer {peer}"
        ))),
    }
}

/// The RPCs' handlers, measured by the `Directory` implementation below.
impl DirectoryService {
    async fn join_rpc(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let addr = source(&req);
        self.rate(
            &self.shared.joins,
            &addr,
            "Joins",
            "CENTRAL_JOIN_RATE (Joins per second per source address)",
            Refusal::JoinRate,
        )?;
        let token = bearer(req.metadata()).ok();
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let url: PeerUrl = r
            .peer_url
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("peer_url: {e}")))?;
        let now = Instant::now();
        if let Some(net) = &self.shared.network {
            net.admit(&r)?;
        }
        let key = self.prove_key(&peer, &r, now)?;
        let inventory = self.parse_files(r.files)?;
        let load = Load::from(r.load);
        let expires = self.expires(now);
        let session_token = hex::encode(rand::random::<[u8; 32]>());
        let hash = *blake3::hash(session_token.as_bytes()).as_bytes();
        let budget = self.shared.limits.max_message_bytes / 2;
        let limits = self.shared.limits.clone();
        let this = self.clone();
        let unix_now = unix_secs();
        let replica_quota = r.replica_quota_bytes;
        let (count, refused) = if let Some(etcd) = self.etcd() {
            let args = on_etcd::JoinArgs {
                peer,
                url,
                key,
                token,
                addr,
                inventory,
                load,
                hash,
                nonce: r.nonce,
                unix_now,
                replica_quota: r.replica_quota_bytes,
            };
            self.join_on_etcd(etcd, args).await?
        } else {
            self.write(move |gate, store| {
                let bound = store.key_of(&peer)?;
                if bound.is_some_and(|b| b != key) {
                    return Err(Error::PermissionDenied(format!(
                        "peer id {peer} is bound to another key (since its first Join): a PServer keeps its key in its data folder (peer.key) beside its id (peer-id); restore both, or start with a fresh data folder to get a new id"
                    )));
                }
                if bound.is_none() && store.keys_held()? >= limits.max_keys as u64 {
                    let before = unix_now - this.shared.key_retention.as_secs() as i64;
                    store.forget_idle_keys(before, limits.max_keys as u64 - 1)?;
                    if store.keys_held()? >= limits.max_keys as u64 {
                        return Err(Error::LimitExceeded(format!(
                            "the directory holds {} peer keys, its limit (CENTRAL_MAX_KEYS); none is idle enough to forget",
                            limits.max_keys
                        )));
                    }
                }
                let (files, refused) = {
                    let ix = gate.read();
                    // A peer without a key binding yet (from before keys)
                    // re-joins a live lease with its session token only.
                    if bound.is_none()
                        && ix.lease(&peer, now) == Lease::Live
                        && !token.is_some_and(|t| ix.token_matches(&peer, &t))
                    {
                        return Err(Error::Unauthenticated(format!(
                            "peer {peer} has a live lease: a re-join must carry its current session token"
                        )));
                    }
                    this.admit_join(&ix, &peer, addr, inventory, budget)?
                };
                store.join(&peer, &url, &hash, &key, unix_now, replica_quota, &files)?;
                // A new session: its changes count from 1 again.
                lock(&this.shared.seqs).remove(&peer);
                let mut steps = Steps::new(gate);
                steps
                    .ix()
                    .begin_join(peer, url, hash, load, expires, Some(addr));
                steps.ix().set_quota_of(&peer, replica_quota);
                steps.drop_inventory(&peer);
                steps.publish(&peer, &files);
                Ok((files.len(), refused))
            })
            .await?
        };
        tracing::info!(%peer, files = count, refused = refused.len(), "peer joined");
        log_refused(&peer, &refused);
        let (credential, credential_expires) = self.credential(&peer)?;
        Ok(Response::new(v1::JoinResponse {
            session_token,
            lease_ttl_secs: secs(self.shared.lease_ttl),
            heartbeat_interval_secs: secs(self.shared.heartbeat_interval),
            refused,
            credential,
            credential_expires,
            revoked: self.revoked(),
        }))
    }

    /// The departures to list in a Join or Heartbeat answer (none in an
    /// open network).
    fn revoked(&self) -> Vec<v1::Revoked> {
        self.shared
            .network
            .as_ref()
            .map(Network::revoked)
            .unwrap_or_default()
    }

    async fn heartbeat_rpc(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let load = r.load.map(|l| Load::from(Some(l)));
        let now = Instant::now();
        let rejoin = if let Some(etcd) = self.etcd() {
            lock(&self.shared.heard).insert(peer, now);
            if self.shared.draining.load(Ordering::Relaxed) {
                lock(&self.shared.told).insert(peer);
            }
            !self.heartbeat_on_etcd(etcd, &peer, &token, load).await?
        } else {
            let ix = self.index();
            match authorize(&ix, &peer, &token, now) {
                Ok(()) => {
                    self.pace(&peer, now)?;
                    !ix.renew(&peer, load, self.expires(now), now)
                }
                Err(Error::NotJoined(_)) => true,
                Err(e) => return Err(e.into()),
            }
        };
        if rejoin {
            tracing::debug!(%peer, "heartbeat from unknown or expired peer: asked to rejoin");
        }
        // A live lease renews the credential; an expired one cannot.
        let (credential, credential_expires) = if rejoin {
            (String::new(), 0)
        } else {
            self.credential(&peer)?
        };
        let replica_tasks = if rejoin {
            Vec::new()
        } else {
            self.heartbeat_replicas(&peer, r.declined).await?
        };
        Ok(Response::new(v1::HeartbeatResponse {
            rejoin,
            lease_ttl_secs: secs(self.shared.lease_ttl),
            heartbeat_interval_secs: secs(self.shared.heartbeat_interval),
            credential,
            credential_expires,
            replica_tasks,
            revoked: self.revoked(),
            moved: self.shared.draining.load(Ordering::Relaxed),
            central: self.shared.leadership.name().to_owned(),
            leader: self.shared.leadership.leader(),
        }))
    }

    async fn publish_rpc(
        &self,
        req: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        self.peer_rate(&peer, &token)?;
        let seq = r.seq;
        let inventory = self.parse_files(r.files)?;
        let now = Instant::now();
        let expires = self.expires(now);
        if let Some(etcd) = self.etcd() {
            let refused = self
                .publish_on_etcd(etcd, peer, token, seq, inventory)
                .await?;
            log_refused(&peer, &refused);
            return Ok(Response::new(v1::PublishResponse { refused }));
        }
        let this = self.clone();
        let refused = self
            .write(move |gate, store| {
                let (files, refused) =
                    this.admit_publish(&gate.read(), &peer, &token, inventory, now)?;
                this.in_order(peer, seq)?;
                store.publish(&peer, &files)?;
                let mut steps = Steps::new(gate);
                steps.publish(&peer, &files);
                steps.ix().renew(&peer, None, expires, now);
                Ok(refused)
            })
            .await?;
        log_refused(&peer, &refused);
        Ok(Response::new(v1::PublishResponse { refused }))
    }

    async fn unpublish_rpc(
        &self,
        req: Request<v1::UnpublishRequest>,
    ) -> Result<Response<v1::UnpublishResponse>, Status> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        self.peer_rate(&peer, &token)?;
        let max = self.shared.limits.max_inventory;
        if r.files.len() > max {
            return Err(Error::LimitExceeded(format!(
                "files: {} entries exceed the limit of {max} per request (max_inventory, CENTRAL_MAX_INVENTORY)",
                r.files.len()
            ))
            .into());
        }
        let refs: Vec<Withdrawal> = r
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let id: FileId = f
                    .file_id
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("files[{i}].file_id: {e}")))?;
                let name = if f.name.is_empty() {
                    None
                } else {
                    self.check_name_len(&f.name, &format!("files[{i}].name"))?;
                    let n: FileName = f
                        .name
                        .parse()
                        .map_err(|e| Error::InvalidArgument(format!("files[{i}].name: {e}")))?;
                    Some(n.into_string())
                };
                Ok((id, name))
            })
            .collect::<Result<_>>()?;
        let seq = r.seq;
        if let Some(etcd) = self.etcd() {
            self.unpublish_on_etcd(etcd, peer, token, seq, refs).await?;
            return Ok(Response::new(v1::UnpublishResponse {}));
        }
        let now = Instant::now();
        let expires = self.expires(now);
        let this = self.clone();
        self.write(move |gate, store| {
            authorize(&gate.read(), &peer, &token, now)?;
            this.in_order(peer, seq)?;
            store.unpublish(&peer, &refs)?;
            let mut steps = Steps::new(gate);
            steps.unpublish(&peer, &refs);
            steps.ix().renew(&peer, None, expires, now);
            Ok(())
        })
        .await?;
        Ok(Response::new(v1::UnpublishResponse {}))
    }

    async fn locate_rpc(
        &self,
        req: Request<v1::LocateRequest>,
    ) -> Result<Response<v1::LocateResponse>, Status> {
        use v1::locate_request::Target;
        let r = req.into_inner();
        let limits = &self.shared.limits;
        let max_holders = match r.max_holders as usize {
            0 => limits.max_holders,
            n => n.min(limits.max_holders),
        };
        let now = Instant::now();
        let files = match r.target {
            Some(Target::FileId(s)) => {
                let id: FileId = s
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("file_id: {e}")))?;
                let found = self.index().locate_id(&id, now, max_holders);
                found
                    .or_else(|| self.located_lost(&id))
                    .into_iter()
                    .collect()
            }
            Some(Target::Name(s)) => {
                self.check_name_len(&s, "name")?;
                let name: FileName = s
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("name: {e}")))?;
                let mut found =
                    self.index()
                        .locate_name(name.as_str(), now, max_holders, limits.max_page);
                // Keep the answer under the message limit (a content can
                // carry many names).
                let budget = limits.max_message_bytes / 2;
                let mut used = 0;
                let keep = found
                    .iter()
                    .take_while(|f| {
                        used += f.encoded_len() + 8;
                        used <= budget
                    })
                    .count()
                    .max(1);
                found.truncate(keep);
                found
            }
            None => {
                return Err(Status::invalid_argument(
                    "target: file_id or name is required",
                ));
            }
        };
        let mut files: Vec<v1::LocatedFile> = files;
        self.with_replication(&mut files, now);
        Ok(Response::new(v1::LocateResponse { files }))
    }

    async fn search_rpc(
        &self,
        req: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        let addr = source(&req);
        self.rate(
            &self.shared.searches,
            &addr,
            "searches",
            "CENTRAL_SEARCH_RATE (searches per second per source address)",
            Refusal::SearchRate,
        )?;
        let token = bearer(req.metadata()).ok();
        let named = match req.metadata().get(PEER_ID_META) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .unwrap_or_default()
                    .parse::<PeerId>()
                    .map_err(|e| Error::InvalidArgument(format!("{PEER_ID_META} metadata: {e}")))?,
            ),
        };
        let r = req.into_inner();
        if let Some(peer) = named {
            let token = token.ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "{PEER_ID_META}: a search that names peer {peer} must carry its session token"
                ))
            })?;
            match authorize(&self.index(), &peer, &token, Instant::now()) {
                Ok(()) => self.rate(
                    &self.shared.peer_searches,
                    &peer,
                    "searches",
                    "CENTRAL_SEARCH_RATE (searches per second per peer)",
                    Refusal::SearchRate,
                )?,
                // A peer whose lease just ended may still search, within
                // its address's allowance.
                Err(Error::NotJoined(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let limits = &self.shared.limits;
        if r.query.len() > MAX_QUERY_BYTES {
            return Err(Status::invalid_argument(format!(
                "query: {} bytes exceed the limit of {MAX_QUERY_BYTES} bytes",
                r.query.len()
            )));
        }
        if r.query.trim().is_empty() {
            return Err(Status::invalid_argument(
                "query is empty: give one or more words",
            ));
        }
        // Names are kept in NFC (`FileName`): so is the query, so `café`
        // typed with a combining accent finds `café`.
        let mut query: Vec<String> = words(&peerdex_proto::types::to_nfc(&r.query)).collect();
        query.sort_unstable();
        query.dedup();
        if query.is_empty() {
            // Names are found by their words; a query of none (only
            // punctuation, say) matches no name.
            return Ok(Response::new(v1::SearchResponse::default()));
        }
        if query.len() > MAX_QUERY_WORDS {
            return Err(Status::invalid_argument(format!(
                "query: {} words exceed the limit of {MAX_QUERY_WORDS}",
                query.len()
            )));
        }
        let limit = match r.limit as usize {
            0 => DEFAULT_PAGE.min(limits.max_page),
            n => n.min(limits.max_page),
        };
        let cursor = if r.page_token.is_empty() {
            None
        } else {
            Some(Cursor::decode(&r.page_token).ok_or_else(|| {
                Status::invalid_argument("page_token: not a token from a previous search answer")
            })?)
        };
        let (max_matches, budget) = (limits.max_search_matches, limits.search_budget);
        let _slot = self
            .shared
            .searching
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        let shared = self.shared.clone();
        let page = tokio::task::spawn_blocking(move || {
            shared.index.read().search_within(
                &query,
                cursor.as_ref(),
                limit,
                Instant::now(),
                max_matches,
                budget,
            )
        })
        .await
        .map_err(Error::from)?;
        if page.truncated
            && let Some(m) = &self.shared.metrics
        {
            m.search_truncated();
        }
        let mut hits = page.hits;
        self.hits_with_pins(&mut hits);
        Ok(Response::new(v1::SearchResponse {
            hits,
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
            truncated: page.truncated,
        }))
    }

    /// A credential for `peer` in a private network (empty in an open one).
    fn credential(&self, peer: &PeerId) -> Result<(String, u64)> {
        match &self.shared.network {
            Some(net) => net.credential(peer),
            None => Ok((String::new(), 0)),
        }
    }

    async fn network_keys_rpc(
        &self,
        _req: Request<v1::NetworkKeysRequest>,
    ) -> Result<Response<v1::NetworkKeysResponse>, Status> {
        Ok(Response::new(v1::NetworkKeysResponse {
            keys: self
                .shared
                .network
                .as_ref()
                .map(Network::keys)
                .unwrap_or_default(),
        }))
    }

    async fn challenge_rpc(
        &self,
        req: Request<v1::ChallengeRequest>,
    ) -> Result<Response<v1::ChallengeResponse>, Status> {
        let addr = source(&req);
        self.rate(
            &self.shared.challenges,
            &addr,
            "Challenges",
            "CENTRAL_JOIN_RATE (Joins per second per source address)",
            Refusal::JoinRate,
        )?;
        let peer = parse_peer(&req.into_inner().peer_id)?;
        Ok(Response::new(v1::ChallengeResponse {
            nonce: self.shared.nonces.issue(&peer, Instant::now()),
            valid_secs: secs(NONCE_VALID),
        }))
    }

    /// The key a Join proves it holds: the public key, a nonce of ours for
    /// this peer, and its signature over them (spent here: a Join cannot
    /// be replayed).
    fn prove_key(&self, peer: &PeerId, r: &v1::JoinRequest, now: Instant) -> Result<PublicKey> {
        use peerdex_proto::identity::{public_key, verify_join};
        let key = public_key(&r.public_key).map_err(|e| {
            Error::InvalidArgument(format!(
                "{e} (every Join proves the peer's key: see Challenge)"
            ))
        })?;
        let nonces = &self.shared.nonces;
        nonces
            .check(peer, &r.nonce, now)
            .map_err(Error::Unauthenticated)?;
        verify_join(&key, &r.peer_id, &r.peer_url, &r.nonce, &r.signature)
            .map_err(|e| Error::Unauthenticated(e.to_string()))?;
        if !nonces.spend(&r.nonce, now) {
            return Err(Error::Unauthenticated(
                "nonce: already used by a Join; ask Challenge for a fresh one".into(),
            ));
        }
        Ok(key.to_bytes())
    }

    /// Forget key bindings idle longer than `CENTRAL_KEY_RETENTION_DAYS`
    /// (of peers no longer in the directory).
    pub(crate) async fn forget_idle_keys(&self) -> Result<usize> {
        let before = unix_secs() - self.shared.key_retention.as_secs() as i64;
        let max = self.shared.limits.max_keys as u64;
        self.write(move |_, store| store.forget_idle_keys(before, max))
            .await
    }

    async fn leave_rpc(
        &self,
        req: Request<v1::LeaveRequest>,
    ) -> Result<Response<v1::LeaveResponse>, Status> {
        let token = bearer(req.metadata())?;
        let peer = parse_peer(&req.into_inner().peer_id)?;
        let now = Instant::now();
        let this = self.clone();
        let left = if let Some(etcd) = self.etcd() {
            self.leave_on_etcd(etcd, peer, token).await?
        } else {
            self.write(move |gate, store| {
                {
                    let ix = gate.read();
                    if ix.lease(&peer, now) == Lease::Unknown {
                        return Ok(false); // already gone: leaving is idempotent
                    }
                    if !ix.token_matches(&peer, &token) {
                        return Err(Error::Unauthenticated(format!(
                            "session token does not match peer {peer}"
                        )));
                    }
                }
                store.remove_peers(&[peer])?;
                lock(&this.shared.seqs).remove(&peer);
                let mut steps = Steps::new(gate);
                // Gone from every answer at once; the inventory goes in steps.
                steps.ix().retire(&peer);
                steps.remove_peer(&peer);
                Ok(true)
            })
            .await?
        };
        if left {
            tracing::info!(%peer, "peer left");
            // On etcd, the follower revokes (at every central).
            if let (Some(net), None) = (&self.shared.network, self.etcd()) {
                net.revoke(&[peer]);
            }
        }
        Ok(Response::new(v1::LeaveResponse {}))
    }
}

impl DirectoryService {
    /// Start draining: Heartbeat answers say `moved`, Info says draining,
    /// Revocations streams end (their PServers reopen them elsewhere).
    pub(crate) fn drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.end_streams();
    }

    /// Wait until every peer that heartbeated here lately was told to
    /// move, at most one heartbeat interval and 2 s.
    pub(crate) async fn drained(&self, most: Duration) {
        let interval = self.shared.heartbeat_interval;
        let deadline = Instant::now() + most;
        loop {
            let now = Instant::now();
            let waiting = {
                let told = lock(&self.shared.told);
                lock(&self.shared.heard)
                    .iter()
                    .filter(|(p, at)| now.duration_since(**at) < interval * 2 && !told.contains(p))
                    .count()
            };
            if waiting == 0 || now >= deadline {
                tracing::info!(
                    told = lock(&self.shared.told).len(),
                    not_told = waiting,
                    "drained: peers were told to move"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn info(&self) -> v1::InfoResponse {
        let l = &self.shared.leadership;
        let (peers, stats) = {
            let ix = self.index();
            (ix.live_peers(Instant::now()), ix.stats())
        };
        v1::InfoResponse {
            central: l.name().to_owned(),
            leader: l.leader(),
            is_leader: l.is_leader(),
            store: if self.etcd().is_some() {
                "etcd"
            } else {
                "sqlite"
            }
            .into(),
            draining: self.shared.draining.load(Ordering::Relaxed),
            peers: peers as u64,
            files: stats.files as u64,
            names: stats.names as u64,
            revision: self.etcd().map_or(0, |e| e.applied()),
        }
    }
}

#[tonic::async_trait]
impl Directory for DirectoryService {
    async fn info(
        &self,
        _req: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        self.metered(Rpc::Info, async { Ok(Response::new(self.info())) })
            .await
    }

    async fn network_keys(
        &self,
        req: Request<v1::NetworkKeysRequest>,
    ) -> Result<Response<v1::NetworkKeysResponse>, Status> {
        self.metered(Rpc::NetworkKeys, self.network_keys_rpc(req))
            .await
    }

    async fn challenge(
        &self,
        req: Request<v1::ChallengeRequest>,
    ) -> Result<Response<v1::ChallengeResponse>, Status> {
        self.metered(Rpc::Challenge, self.challenge_rpc(req)).await
    }

    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        self.metered(Rpc::Join, self.join_rpc(req)).await
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.metered(Rpc::Heartbeat, self.heartbeat_rpc(req)).await
    }

    async fn publish(
        &self,
        req: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        self.metered(Rpc::Publish, self.publish_rpc(req)).await
    }

    async fn unpublish(
        &self,
        req: Request<v1::UnpublishRequest>,
    ) -> Result<Response<v1::UnpublishResponse>, Status> {
        self.metered(Rpc::Unpublish, self.unpublish_rpc(req)).await
    }

    async fn locate(
        &self,
        req: Request<v1::LocateRequest>,
    ) -> Result<Response<v1::LocateResponse>, Status> {
        self.metered(Rpc::Locate, self.locate_rpc(req)).await
    }

    async fn search(
        &self,
        req: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        self.metered(Rpc::Search, self.search_rpc(req)).await
    }

    async fn leave(
        &self,
        req: Request<v1::LeaveRequest>,
    ) -> Result<Response<v1::LeaveResponse>, Status> {
        self.metered(Rpc::Leave, self.leave_rpc(req)).await
    }

    type RevocationsStream = revocations::RevocationStream;

    async fn revocations(
        &self,
        req: Request<v1::RevocationsRequest>,
    ) -> Result<Response<Self::RevocationsStream>, Status> {
        self.metered(Rpc::Revocations, self.revocations_rpc(req))
            .await
    }

    async fn pin(&self, req: Request<v1::PinRequest>) -> Result<Response<v1::PinResponse>, Status> {
        self.metered(Rpc::Pin, self.pin_rpc(req)).await
    }

    async fn pins(
        &self,
        req: Request<v1::PinsRequest>,
    ) -> Result<Response<v1::PinsResponse>, Status> {
        self.metered(Rpc::Pins, self.pins_rpc(req)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(dir: &std::path::Path) -> DirectoryService {
        let config = Config::new(dir);
        let store = Store::open(dir).unwrap();
        let index = store.load(Instant::now()).unwrap();
        let secrets = Secrets {
            nonces: Nonces::new(),
            network: None,
        };
        DirectoryService::new(
            Backend::Sqlite(store),
            index,
            &config,
            None,
            secrets,
            Leadership::alone("test"),
        )
        .unwrap()
    }

    async fn join(s: &DirectoryService, peer: &PeerId, file: u32) -> String {
        let files = vec![v1::SharedFile {
            replica: false,
            file_id: blake3::hash(&file.to_le_bytes()).to_hex().to_string(),
            size: 1,
            name: format!("file-{file}"),
        }];
        let mut req = v1::JoinRequest {
            peer_id: peer.to_string(),
            peer_url: "http://h:1".into(),
            files,
            ..Default::default()
        };
        let nonce = s.shared.nonces.issue(peer, Instant::now());
        let key = ed25519_dalek::SigningKey::from_bytes(
            peer.as_uuid()
                .as_u128()
                .to_le_bytes()
                .repeat(2)
                .as_slice()
                .try_into()
                .unwrap(),
        );
        peerdex_proto::identity::prove(&mut req, &key, nonce);
        s.join(Request::new(req))
            .await
            .unwrap()
            .into_inner()
            .session_token
    }

    async fn heartbeat(s: &DirectoryService, peer: &PeerId, token: &str) -> bool {
        let mut req = Request::new(v1::HeartbeatRequest {
            declined: Vec::new(),
            peer_id: peer.to_string(),
            load: None,
        });
        req.metadata_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        s.heartbeat(req).await.unwrap().into_inner().rejoin
    }

    /// Let the sweeper run until `peers` remain (virtual time; bounded).
    async fn settle(s: &DirectoryService, peers: usize) {
        for _ in 0..1000 {
            if s.stats().peers == peers {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("sweeper left {} peers, expected {peers}", s.stats().peers);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peers_expire_after_the_ttl_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = svc(dir.path());
        let cancel = CancellationToken::new();
        let sweeper = tokio::spawn(s.clone().sweep_loop(cancel.clone()));
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        let _ta = join(&s, &a, 1).await;
        let tb = join(&s, &b, 2).await;

        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(
            !heartbeat(&s, &b, &tb).await,
            "b renews at t=20s until t=50s"
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            s.stats().peers,
            2,
            "a is still within its 30 s lease at t=29s"
        );

        tokio::time::advance(Duration::from_secs(2)).await; // t=31s: a expired
        settle(&s, 1).await;
        let id = FileId::from_bytes(*blake3::hash(&1u32.to_le_bytes()).as_bytes());
        let located = s.index().locate_id(&id, Instant::now(), 9);
        assert!(located.is_none());
        assert_eq!(
            Store::open(dir.path())
                .unwrap()
                .load(Instant::now())
                .unwrap()
                .stats()
                .peers,
            1
        );

        tokio::time::advance(Duration::from_secs(20)).await; // t≈51s: b expired too
        settle(&s, 0).await;
        assert!(
            heartbeat(&s, &b, &tb).await,
            "expired peer is asked to rejoin"
        );
        assert_eq!(
            Store::open(dir.path())
                .unwrap()
                .load(Instant::now())
                .unwrap()
                .stats()
                .files,
            0
        );

        cancel.cancel();
        sweeper.await.unwrap();
        s.close().await.unwrap();
    }
}
