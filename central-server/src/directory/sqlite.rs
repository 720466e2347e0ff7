//! The directory in one SQLite file (a single central).
//!
//! All mutations run on the blocking pool and are serialized by the store
//! mutex: under it a change is checked against the index, committed, then
//! applied to the index. Memory and disk therefore change in the same
//! order, and an RPC is acknowledged only after its commit. Changes by a
//! peer of its own inventory apply in order (the store mutex is held
//! across the index steps).

use std::collections::HashMap;
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

pub(super) struct Sqlite {
    /// `None` once closed at shutdown.
    store: Mutex<Option<Store>>,
    /// The last inventory change number applied per peer in this session
    /// (etcd keeps it in `seq/<peer>`).
    seqs: Mutex<HashMap<PeerId, u64>>,
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
        self.write(shared, move |dir, db, gate, store| {
            let peer = j.peer;
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
            let now = Instant::now();
            let (files, refused) = {
                let ix = gate.read();
                check_rejoin(&ix, &j, bound.is_some(), now)?;
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
            db.forget_seqs(&[peer]);
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
            Ok((files.len(), refused))
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
        self.write(shared, move |dir, db, gate, store| {
            let now = Instant::now();
            let (files, refused) = {
                let ix = gate.read();
                authorize(&ix, &peer, &token, now)?;
                admit(&ix)?
            };
            db.in_order(peer, seq)?;
            store.publish(&peer, &files)?;
            let mut steps = Steps::new(gate);
            steps.publish(&peer, &files);
            steps.ix().renew(&peer, None, now + dir.lease_ttl, now);
            drop(steps);
            dir.appeared(&files);
            Ok(refused)
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
        self.write(shared, move |dir, db, gate, store| {
            let now = Instant::now();
            authorize(&gate.read(), &peer, &token, now)?;
            db.in_order(peer, seq)?;
            store.unpublish(&peer, &refs)?;
            let mut steps = Steps::new(gate);
            steps.unpublish(&peer, &refs);
            steps.ix().renew(&peer, None, now + dir.lease_ttl, now);
            Ok(())
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
