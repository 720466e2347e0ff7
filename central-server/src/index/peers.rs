//! Peers and their leases: join in steps, renew, retire, expire, remove;
//! the source address count (`CENTRAL_MAX_PEERS_PER_ADDR`) and the
//! replica space each peer offers. A lease end is an atomic tick, so a
//! heartbeat needs only the read side of the index lock.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[cfg(test)]
use peerdex_proto::convert::SharedFile;
use peerdex_proto::{PeerId, PeerUrl};
use tokio::time::Instant;

use super::{Index, Lease, Load, Peer, Reach, TokenHash};

impl Index {
    /// `t` as nanoseconds since the epoch: a lease end as the atomic
    /// `Peer::expires` keeps it.
    fn tick(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn lease(&self, peer: &PeerId, now: Instant) -> Lease {
        match self.peer_ix.get(peer) {
            None => Lease::Unknown,
            Some(&p) if self.live(p, now) => Lease::Live,
            Some(_) => Lease::Expired,
        }
    }

    /// Whether `hash` is the hash of the peer's current session token.
    /// (`blake3::Hash` compares in constant time.)
    pub fn token_matches(&self, peer: &PeerId, hash: &TokenHash) -> bool {
        self.peer_ix.get(peer).is_some_and(|&p| {
            blake3::Hash::from_bytes(self.peers.get(p).token_hash)
                == blake3::Hash::from_bytes(*hash)
        })
    }

    pub fn inventory_len(&self, peer: &PeerId) -> usize {
        self.peer_ix
            .get(peer)
            .map_or(0, |&p| self.peers.get(p).holdings.len())
    }

    /// Renew a live lease. Returns false (and changes nothing) when the peer
    /// is unknown or its lease has already expired. Needs only `&self`
    /// (the lease and load are atomics): a heartbeat takes the read lock.
    pub fn renew(&self, peer: &PeerId, load: Option<Load>, expires: Instant, now: Instant) -> bool {
        let Some(&p) = self.peer_ix.get(peer) else {
            return false;
        };
        let entry = self.peers.get(p);
        let now = self.tick(now);
        // Never revive a lease that ended meanwhile (the sweeper may be
        // removing it).
        let renewed = entry
            .expires
            .fetch_update(Relaxed, Relaxed, |e| {
                (e > now).then_some(self.tick(expires))
            })
            .is_ok();
        if renewed && let Some(load) = load {
            entry.load.store(load.pack(), Relaxed);
        }
        renewed
    }

    /// End a peer's lease now: it vanishes from every answer at once, and
    /// its inventory can then be removed in steps.
    pub fn retire(&self, peer: &PeerId) {
        if let Some(&p) = self.peer_ix.get(peer) {
            self.peers.get(p).expires.store(0, Relaxed);
        }
    }

    /// Give every peer a lease ending at `expires` (grace after a restart).
    pub fn renew_all(&mut self, expires: Instant) {
        let t = self.tick(expires);
        for p in self.peers.values_mut() {
            *p.expires.get_mut() = t;
        }
    }

    /// Peers whose lease is live at `now` (expired ones wait for the
    /// sweeper but are in no answer already).
    pub fn live_peers(&self, now: Instant) -> usize {
        let now = self.tick(now);
        self.peers.iter().filter(|(_, p)| p.expires() > now).count()
    }

    /// Peers whose lease ended at or before `now`, with their inventory
    /// sizes.
    pub fn expired(&self, now: Instant) -> Vec<(PeerId, usize)> {
        let now = self.tick(now);
        self.peers
            .iter()
            .filter(|(_, p)| p.expires() <= now)
            .map(|(_, p)| (p.id, p.holdings.len()))
            .collect()
    }

    pub(super) fn live(&self, p: u32, now: Instant) -> bool {
        self.peers.get(p).expires() > self.tick(now)
    }

    /// Create or replace a peer: new URL, token and lease, and `files` as its
    /// whole inventory. `files` must be free of [`Index::size_conflicts`]
    /// (with `replace`); a conflicting entry would be skipped.
    #[cfg(test)]
    pub fn join(
        &mut self,
        id: PeerId,
        url: PeerUrl,
        token_hash: TokenHash,
        load: Load,
        expires: Instant,
        files: &[SharedFile],
    ) {
        self.begin_join(id, url, token_hash, load, expires, None);
        self.drop_some(&id, usize::MAX);
        self.publish(&id, files);
    }

    /// The first step of a Join in steps: create the peer, or give it its
    /// new URL, token, lease, load and (when known) source address. Its
    /// old inventory stays until [`Index::drop_some`] removes it, and the
    /// new one is added with [`Index::publish`].
    pub fn begin_join(
        &mut self,
        id: PeerId,
        url: PeerUrl,
        token_hash: TokenHash,
        load: Load,
        expires: Instant,
        addr: Option<IpAddr>,
    ) {
        let t = self.tick(expires);
        let p = match self.peer_ix.get(&id) {
            Some(&p) => {
                let e = self.peers.get_mut(p);
                e.url = url;
                e.token_hash = token_hash;
                *e.expires.get_mut() = t;
                p
            }
            None => self.insert_peer(id, url, token_hash, expires),
        };
        *self.peers.get_mut(p).load.get_mut() = load.pack();
        if addr.is_some() {
            self.set_addr(p, addr);
        }
    }

    fn set_addr(&mut self, p: u32, addr: Option<IpAddr>) {
        let old = std::mem::replace(&mut self.peers.get_mut(p).addr, addr);
        if old == addr {
            return;
        }
        if let Some(a) = old
            && let Some(n) = self.per_addr.get_mut(&a)
        {
            *n -= 1;
            if *n == 0 {
                self.per_addr.remove(&a);
            }
        }
        if let Some(a) = addr {
            *self.per_addr.entry(a).or_default() += 1;
        }
    }

    /// Insert a peer with an empty inventory; returns its handle.
    pub fn insert_peer(
        &mut self,
        id: PeerId,
        url: PeerUrl,
        token_hash: TokenHash,
        expires: Instant,
    ) -> u32 {
        let p = self.peers.insert(Peer {
            id,
            url,
            token_hash,
            expires: AtomicU64::new(self.tick(expires)),
            load: AtomicU64::new(Load::default().pack()),
            addr: None,
            holdings: HashSet::new(),
            replicas: HashSet::new(),
            replica_quota: 0,
            reach: Reach::default(),
        });
        self.peer_ix.insert(id, p);
        p
    }

    /// Remove up to `budget` holdings of `peer`; returns how many it still
    /// has (0 for an unknown peer). Bulk removals run in such steps so that
    /// no reader waits for a whole inventory.
    pub fn drop_some(&mut self, peer: &PeerId, budget: usize) -> usize {
        let Some(&p) = self.peer_ix.get(peer) else {
            return 0;
        };
        let holdings = &mut self.peers.get_mut(p).holdings;
        let victims: Vec<(u32, u32)> = if budget >= holdings.len() {
            holdings.drain().collect()
        } else {
            let v: Vec<(u32, u32)> = holdings.iter().take(budget).copied().collect();
            for h in &v {
                holdings.remove(h);
            }
            v
        };
        self.holdings -= victims.len();
        for (f, n) in victims {
            self.unlink(p, f, n);
        }
        self.flush_unless_deferred();
        self.peers.get(p).holdings.len()
    }

    /// Drop a peer and its whole inventory.
    pub fn remove_peer(&mut self, peer: &PeerId) -> bool {
        let Some(&p) = self.peer_ix.get(peer) else {
            return false;
        };
        self.drop_some(peer, usize::MAX);
        self.set_addr(p, None);
        self.peer_ix.remove(peer);
        self.peers.remove(p);
        true
    }

    /// Set the replica space a known peer offers (at its Join).
    pub fn set_quota_of(&mut self, peer: &PeerId, quota: u64) {
        if let Some(&p) = self.peer_ix.get(peer) {
            self.set_replica_quota(p, quota);
        }
    }

    /// Set the replica space peer `p` offers.
    pub fn set_replica_quota(&mut self, p: u32, quota: u64) {
        self.peers.get_mut(p).replica_quota = quota;
    }
}
