//! The directory in one SQLite file (a single central).
//!
//! All mutations run on the blocking pool and are serialized by the store
//! mutex: under it a change is checked against the index, committed, then
//! applied to the index. Memory and disk therefore change in the same
//! order, and an RPC is acknowledged only after its commit. Changes by a
//! peer of its own inventory apply in order (the store mutex is held
//! across the index steps).
//!
//! **Group commit.** Joins, Publishes and Unpublishes queue up
//! ([`Sqlite::grouped`]); one committer on the blocking pool takes every
//! change waiting (in arrival order, up to [`GROUP_MAX`], never two of one
//! peer), checks and writes each in a savepoint of one transaction, commits
//! them together (one fsync instead of one per change), then applies them
//! to the index in order and answers each. A change that fails its checks
//! is rolled back alone; a failed commit fails the whole group and applies
//! none of it. Readers still never see a change before it is durable. As
//! on etcd, the directory-wide limits (holdings, peers per address) are
//! checked against the index as committed, so the changes of one group
//! can pass them together by at most one group.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use peerdex_common::sync::lock;
use peerdex_proto::{FileId, PeerId, v1};
use tokio::time::Instant;

use super::gate::{IndexGate, Steps};
use super::shared::{Admit, Join, Shared, authorize, check_leave, check_rejoin};
use crate::config::Config;
use crate::error::{Error, Limit, Result};
use crate::index::{Lease, TokenHash};
use crate::network::Network;
use crate::replication::Pin;
use crate::store::{Store, Withdrawal};

/// Most holdings removed from the database in one transaction by the
/// lease sweeper (the store mutex is released between them, so Joins and
/// Publishes interleave with a mass expiry).
pub const SWEEP_TX_HOLDINGS: usize = 20_000;

/// Most changes committed in one group.
pub const GROUP_MAX: usize = 256;

/// What a grouped change does to the index once its group is committed;
/// it returns the answer.
type Apply<T> = Box<dyn FnOnce(&Shared, &Sqlite, &IndexGate<'_>) -> T + Send>;

/// A grouped change, type-erased: checks and writes (in the group's
/// transaction); `None` when it failed (its caller has the error), else
/// what to do once the group's commit succeeded (`Ok`) or failed (`Err`).
type Job = Box<dyn FnOnce(&Shared, &Sqlite, &IndexGate<'_>, &mut Store) -> Option<Finish> + Send>;
type Finish = Box<dyn FnOnce(std::result::Result<Committed<'_>, Error>) + Send>;

/// What an applied change takes: the directory, the store, the index.
type Committed<'a> = (&'a Shared, &'a Sqlite, &'a IndexGate<'a>);

pub(super) struct Sqlite {
    /// `None` once closed at shutdown.
    store: Mutex<Option<Store>>,
    /// The last inventory change number applied per peer in this session
    /// (etcd keeps it in `seq/<peer>`).
    seqs: Mutex<HashMap<PeerId, u64>>,
    /// Grouped changes waiting for the committer, and whether it runs.
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<(PeerId, Job)>,
    running: bool,
}

/// Open the database in the data folder and load the index (every peer
/// gets one lease of grace, counted from the end of the load).
pub(super) async fn open(config: &Config) -> Result<(Arc<Sqlite>, Arc<Shared>)> {
    let dir = config.data_dir.clone();
    let ttl = config.lease_ttl;
    let (store, index, pins) = tokio::task::spawn_blocking(move || -> Result<_> {
        let store = Store::open(&dir)?;
        let mut index = store.load(Instant::now())?;
        index.renew_all(Instant::now() + ttl);
        let pins = store.pins()?;
        Ok((store, index, pins))
    })
    .await??;
    let network = match &config.join_secret {
        Some(secret) => Some(Network::open(secret, &config.data_dir, config.lease_ttl)?),
        None => None,
    };
    let db = Arc::new(Sqlite {
        store: Mutex::new(Some(store)),
        seqs: Mutex::default(),
        queue: Mutex::default(),
    });
    let shared = Shared::new(index, network, config);
    shared.replicas.load_pins(pins);
    Ok((db, shared))
}

impl Sqlite {
    /// Run a mutation on the blocking pool under the store lock.
    async fn write<T, F>(self: &Arc<Self>, shared: &Arc<Shared>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared, &Sqlite, &IndexGate<'_>, &mut Store) -> Result<T> + Send + 'static,
    {
        let (db, shared) = (self.clone(), shared.clone());
        tokio::task::spawn_blocking(move || {
            let mut store = lock(&db.store);
            let store = store.as_mut().ok_or(Error::Closed)?;
            // `f` takes the index lock in short pieces (check, then apply),
            // never across the commit.
            f(&shared, &db, &IndexGate(&shared.index), store)
        })
        .await?
    }

    /// Run a change of `peer` in the next group commit: `prepare` checks
    /// and writes under the store mutex, inside the group's transaction;
    /// what it returns is applied to the index once the group committed.
    async fn grouped<T, F>(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        peer: PeerId,
        prepare: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared, &Sqlite, &IndexGate<'_>, &mut Store) -> Result<Apply<T>>
            + Send
            + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T>>();
        let job: Job = Box::new(
            move |dir, db, gate, store| match prepare(dir, db, gate, store) {
                Err(e) => {
                    let _ = tx.send(Err(e));
                    None
                }
                Ok(apply) => Some(Box::new(move |committed| {
                    let _ = tx.send(committed.map(|(dir, db, gate)| apply(dir, db, gate)));
                })),
            },
        );
        let start = {
            let mut q = lock(&self.queue);
            q.jobs.push_back((peer, job));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let (db, shared) = (self.clone(), shared.clone());
            tokio::task::spawn_blocking(move || db.commit_groups(&shared));
        }
        // Dropped unanswered only when the store is closed (or the
        // committer panicked).
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The committer: one group after another until none waits.
    fn commit_groups(&self, shared: &Shared) {
        /// Whatever ends the committer (a panic too), the next change
        /// starts another; the changes still queued then are answered
        /// `Closed` (dropped) only if the store is gone.
        struct Running<'a>(&'a Mutex<Queue>);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                let mut q = lock(self.0);
                q.running = false;
                if std::thread::panicking() {
                    q.jobs.clear();
                }
            }
        }
        let _running = Running(&self.queue);
        let gate = IndexGate(&shared.index);
        loop {
            let mut store = lock(&self.store);
            let group = {
                let mut q = lock(&self.queue);
                if q.jobs.is_empty() {
                    q.running = false;
                    return;
                }
                take_group(&mut q.jobs)
            };
            let Some(store) = store.as_mut() else {
                continue; // closed: the group's callers get `Closed`
            };
            if let Err(e) = store.begin() {
                tracing::error!(error = %e, changes = group.len(), "cannot start a group commit");
                continue;
            }
            let done: Vec<Finish> = group
                .into_iter()
                .filter_map(|(_, job)| job(shared, self, &gate, store))
                .collect();
            match store.commit() {
                Ok(()) => {
                    for finish in done {
                        finish(Ok((shared, self, &gate)));
                    }
                }
                Err(e) => {
                    store.rollback();
                    let source = Arc::new(e);
                    let changes = done.len();
                    for finish in done {
                        finish(Err(Error::GroupCommit {
                            changes,
                            source: source.clone(),
                        }));
                    }
                }
            }
        }
    }

    /// Check that change `seq` of `peer` comes after the last one applied
    /// (under the store mutex, before the commit), and note it. A repeat
    /// of the last applies again (it changes nothing).
    fn in_order(&self, peer: PeerId, seq: u64) -> Result<()> {
        if seq == 0 {
            return Ok(());
        }
        let mut seqs = lock(&self.seqs);
        let last = seqs.entry(peer).or_insert(0);
        if seq < *last {
            return Err(Error::Superseded {
                peer,
                seq,
                last: *last,
            });
        }
        *last = seq;
        Ok(())
    }

    /// A new session, or none: the peer's changes count from 1 again.
    fn forget_seqs(&self, peers: &[PeerId]) {
        let mut seqs = lock(&self.seqs);
        for p in peers {
            seqs.remove(p);
        }
    }

    pub(super) async fn join(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        j: Join,
        admit: Admit,
    ) -> Result<(usize, Vec<v1::Refused>)> {
        let peer = j.peer;
        self.grouped(shared, peer, move |dir, _, gate, store| {
            let bound = store.key_of(&peer)?;
            if bound.is_some_and(|b| b != j.key) {
                return Err(Error::OtherKey(peer));
            }
            let max_keys = dir.max_keys as u64;
            if bound.is_none() && store.keys_held()? >= max_keys {
                let before = j.unix_now - dir.key_retention.as_secs() as i64;
                store.forget_idle_keys(before, max_keys - 1)?;
                if store.keys_held()? >= max_keys {
                    return Err(Limit::Keys { max: dir.max_keys }.into());
                }
            }
            let (files, refused) = {
                let ix = gate.read();
                check_rejoin(&ix, &j, bound.is_some(), Instant::now())?;
                admit(&ix)?
            };
            store.join(
                &peer,
                &j.url,
                &j.hash,
                &j.key,
                j.unix_now,
                j.replica_quota,
                j.reach,
                &files,
            )?;
            Ok(
                Box::new(move |dir: &Shared, db: &Sqlite, gate: &IndexGate<'_>| {
                    db.forget_seqs(&[peer]);
                    let now = Instant::now();
                    let mut steps = Steps::new(gate);
                    steps.ix().begin_join(
                        peer,
                        j.url,
                        j.hash,
                        j.load,
                        now + dir.lease_ttl,
                        Some(j.addr),
                    );
                    steps.ix().set_quota_of(&peer, j.replica_quota);
                    steps.ix().set_reach_of(&peer, j.reach);
                    steps.drop_inventory(&peer);
                    steps.publish(&peer, &files);
                    drop(steps);
                    dir.appeared(&files);
                    (files.len(), refused)
                }) as Apply<_>,
            )
        })
        .await
    }

    pub(super) async fn publish(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        peer: PeerId,
        token: TokenHash,
        seq: u64,
        admit: Admit,
    ) -> Result<Vec<v1::Refused>> {
        self.grouped(shared, peer, move |_, db, gate, store| {
            let (files, refused) = {
                let ix = gate.read();
                authorize(&ix, &peer, &token, Instant::now())?;
                admit(&ix)?
            };
            db.in_order(peer, seq)?;
            store.publish(&peer, &files)?;
            Ok(
                Box::new(move |dir: &Shared, _: &Sqlite, gate: &IndexGate<'_>| {
                    let now = Instant::now();
                    let mut steps = Steps::new(gate);
                    steps.publish(&peer, &files);
                    steps.ix().renew(&peer, None, now + dir.lease_ttl, now);
                    drop(steps);
                    dir.appeared(&files);
                    refused
                }) as Apply<_>,
            )
        })
        .await
    }

    pub(super) async fn unpublish(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        peer: PeerId,
        token: TokenHash,
        seq: u64,
        refs: Vec<Withdrawal>,
    ) -> Result<()> {
        self.grouped(shared, peer, move |_, db, gate, store| {
            authorize(&gate.read(), &peer, &token, Instant::now())?;
            db.in_order(peer, seq)?;
            store.unpublish(&peer, &refs)?;
            Ok(
                Box::new(move |dir: &Shared, _: &Sqlite, gate: &IndexGate<'_>| {
                    let now = Instant::now();
                    let mut steps = Steps::new(gate);
                    steps.unpublish(&peer, &refs);
                    steps.ix().renew(&peer, None, now + dir.lease_ttl, now);
                }) as Apply<_>,
            )
        })
        .await
    }

    pub(super) async fn leave(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        peer: PeerId,
        token: TokenHash,
    ) -> Result<bool> {
        let left = self
            .write(shared, move |_, db, gate, store| {
                if !check_leave(&gate.read(), &peer, &token)? {
                    return Ok(false);
                }
                store.remove_peers(&[peer])?;
                db.forget_seqs(&[peer]);
                let mut steps = Steps::new(gate);
                // Gone from every answer at once; the inventory goes in steps.
                steps.ix().retire(&peer);
                steps.remove_peer(&peer);
                Ok(true)
            })
            .await?;
        if left {
            shared.departed(&[peer]);
        }
        Ok(left)
    }

    /// Remove every peer whose lease has ended (memory and disk), in
    /// transactions of at most [`SWEEP_TX_HOLDINGS`] holdings (the store
    /// mutex is released between them, with a rest as long as the batch
    /// took) and index steps of [`super::gate::STEP`].
    pub(super) async fn expire(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        now: Instant,
    ) -> Result<usize> {
        let expired = shared.index().expired(now);
        let mut removed = 0;
        let mut batch: Vec<PeerId> = Vec::new();
        let mut held = 0;
        let mut last: Option<std::time::Duration> = None;
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
                removed += self
                    .write(shared, move |dir, db, gate, store| {
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
                            db.forget_seqs(&peers);
                            dir.departed(&peers);
                            let mut steps = Steps::new(gate);
                            for p in &peers {
                                steps.remove_peer(p);
                            }
                        }
                        Ok(peers.len())
                    })
                    .await?;
                last = Some(started.elapsed().min(std::time::Duration::from_secs(1)));
            }
        }
        Ok(removed)
    }

    pub(super) async fn forget_idle_keys(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        before: i64,
    ) -> Result<usize> {
        let max = shared.max_keys as u64;
        self.write(shared, move |_, _, _, store| {
            store.forget_idle_keys(before, max)
        })
        .await
    }

    pub(super) async fn set_pin(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        file: FileId,
        peer: PeerId,
        pin: Option<Pin>,
    ) -> Result<()> {
        let p = pin.clone();
        self.write(shared, move |_, _, _, store| {
            store.set_pin(&file, &peer, p.as_ref())
        })
        .await?;
        shared.replicas.set_pin(file, peer, pin);
        Ok(())
    }

    pub(super) async fn drop_claim(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        peer: PeerId,
        refs: Vec<Withdrawal>,
    ) -> Result<()> {
        self.write(shared, move |_, _, gate, store| {
            store.unpublish(&peer, &refs)?;
            let mut steps = Steps::new(gate);
            steps.unpublish(&peer, &refs);
            Ok(())
        })
        .await
    }

    /// Close the database (after the server stopped).
    pub(super) async fn close(self: &Arc<Self>) -> Result<()> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || match lock(&db.store).take() {
            Some(s) => s.close(),
            None => Ok(()),
        })
        .await?
    }
}

/// The next group: the changes at the front of the queue, in order, up to
/// [`GROUP_MAX`], and never two of one peer (the second waits for the
/// next group, so a peer's changes apply in order, each checked against
/// the index its predecessor left).
fn take_group(jobs: &mut VecDeque<(PeerId, Job)>) -> Vec<(PeerId, Job)> {
    let mut peers = HashSet::new();
    let mut group = Vec::new();
    while group.len() < GROUP_MAX
        && let Some((peer, _)) = jobs.front()
        && peers.insert(*peer)
    {
        group.extend(jobs.pop_front());
    }
    group
}
