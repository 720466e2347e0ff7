//! Admission: who may call how often, and how much the directory takes.
//!
//! Rate limits (`peerdex_common::limit`) are checked before any work: Join
//! and Search per source address, Publish/Unpublish and (when the call
//! names its peer) Search per peer, after the peer proved who it is, so
//! nobody can spend another peer's allowance; a heartbeat at most once per
//! half heartbeat interval. Quotas (peers per source address, holdings per
//! peer and in total) are checked against the index when the change is
//! made (see [`crate::directory::Admit`]). The holdings of one peer
//! (`CENTRAL_MAX_INVENTORY`) are counted on the running total of its Join
//! and Publishes (a big inventory joins in pages): entries past the limit
//! are not taken, the first ones are, and the answer says how many were
//! left (`over_limit`). A refusal is
//! RESOURCE_EXHAUSTED naming the setting, with `retry-after` for rates.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerdex_common::limit::{Limiter, retry_secs};
use peerdex_common::sync::lock;
use peerdex_proto::PeerId;
use peerdex_proto::convert::SharedFile;
use tokio::time::Instant;

use crate::config::Limits;
use crate::directory::{Admitted, Inventory};
use crate::error::{Limit, RateKey, RateLimited, Result};
use crate::index::Index;
use crate::metrics::{Metrics, Refusal};

/// The directory's limits and the state of its rate limits.
pub(crate) struct Admission {
    limits: Limits,
    joins: Limiter<IpAddr>,
    /// Challenges, at the rate of Joins (one comes before each Join).
    challenges: Limiter<IpAddr>,
    publishes: Limiter<PeerId>,
    searches: Limiter<IpAddr>,
    peer_searches: Limiter<PeerId>,
    /// When each live peer's last heartbeat was taken here (see
    /// [`Admission::heartbeat`]). Only peers that proved their token get
    /// an entry; purged with the rate limiters.
    beats: Mutex<HashMap<PeerId, Instant>>,
    /// Half the heartbeat interval: the shortest gap between two
    /// heartbeats of a peer that are taken.
    beat_gap: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl Admission {
    pub(crate) fn new(
        limits: &Limits,
        heartbeat_interval: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            limits: limits.clone(),
            joins: Limiter::new(limits.join_rate),
            challenges: Limiter::new(limits.join_rate),
            publishes: Limiter::new(limits.publish_rate),
            searches: Limiter::new(limits.search_rate),
            peer_searches: Limiter::new(limits.search_rate),
            beats: Mutex::default(),
            beat_gap: heartbeat_interval / 2,
            metrics,
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Count a refusal (when metrics are on).
    pub(crate) fn refused(&self, why: Refusal) {
        if let Some(m) = &self.metrics {
            m.refused(why);
        }
    }

    /// Take a token from `limiter` for `key`, or refuse with
    /// RESOURCE_EXHAUSTED naming `setting` and when to retry.
    fn rate<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Limiter<K>,
        key: &K,
        rate_key: RateKey,
        what: &'static str,
        setting: &'static str,
        refusal: Refusal,
    ) -> Result<()> {
        limiter
            .check(key, Instant::now().into_std())
            .inspect_err(|_| self.refused(refusal))
            .map_err(|wait| {
                RateLimited::Calls {
                    what,
                    key: rate_key,
                    setting,
                    retry_after_secs: retry_secs(wait),
                }
                .into()
            })
    }

    /// A Join from `addr`.
    pub(crate) fn join(&self, addr: &IpAddr) -> Result<()> {
        self.rate(
            &self.joins,
            addr,
            RateKey::Addr(*addr),
            "Joins",
            "CENTRAL_JOIN_RATE (Joins per second per source address)",
            Refusal::JoinRate,
        )
    }

    /// A Challenge from `addr` (at the rate of Joins).
    pub(crate) fn challenge(&self, addr: &IpAddr) -> Result<()> {
        self.rate(
            &self.challenges,
            addr,
            RateKey::Addr(*addr),
            "Challenges",
            "CENTRAL_JOIN_RATE (Joins per second per source address)",
            Refusal::JoinRate,
        )
    }

    /// A Publish, Unpublish or Pin of `peer`, which showed its token.
    pub(crate) fn publish(&self, peer: &PeerId) -> Result<()> {
        self.rate(
            &self.publishes,
            peer,
            RateKey::Peer(*peer),
            "Publish/Unpublish calls",
            "CENTRAL_PUBLISH_RATE (Publish and Unpublish calls per second per peer)",
            Refusal::PublishRate,
        )
    }

    /// A search from `addr`.
    pub(crate) fn search_from(&self, addr: &IpAddr) -> Result<()> {
        self.rate(
            &self.searches,
            addr,
            RateKey::Addr(*addr),
            "searches",
            "CENTRAL_SEARCH_RATE (searches per second per source address)",
            Refusal::SearchRate,
        )
    }

    /// A search that names `peer` (which proved its token).
    pub(crate) fn search_by(&self, peer: &PeerId) -> Result<()> {
        self.rate(
            &self.peer_searches,
            peer,
            RateKey::Peer(*peer),
            "searches",
            "CENTRAL_SEARCH_RATE (searches per second per peer)",
            Refusal::SearchRate,
        )
    }

    /// Take one heartbeat of `peer` (which proved its token), or refuse it
    /// with RESOURCE_EXHAUSTED and when to retry: at most one per half
    /// heartbeat interval is taken. An honest PServer heartbeats once per
    /// interval (and waits `retry-after` when refused), so only a flood
    /// is refused; the lease is not renewed by a refused heartbeat.
    pub(crate) fn heartbeat(&self, peer: &PeerId, now: Instant) -> Result<()> {
        let gap = self.beat_gap;
        let mut beats = lock(&self.beats);
        if let Some(last) = beats.get(peer) {
            let since = now.saturating_duration_since(*last);
            if since < gap {
                drop(beats);
                self.refused(Refusal::HeartbeatRate);
                return Err(RateLimited::Heartbeats {
                    peer: *peer,
                    gap_ms: gap.as_millis(),
                    retry_after_secs: retry_secs(gap - since),
                }
                .into());
            }
        }
        beats.insert(*peer, now);
        Ok(())
    }

    /// Drop idle rate-limit buckets and heartbeat times.
    pub(crate) fn purge(&self, now: Instant) {
        let std_now = now.into_std();
        self.joins.purge(std_now);
        self.challenges.purge(std_now);
        self.publishes.purge(std_now);
        self.searches.purge(std_now);
        self.peer_searches.purge(std_now);
        let gap = self.beat_gap;
        lock(&self.beats).retain(|_, at| now.saturating_duration_since(*at) < gap);
    }

    /// A Join's inventory against the index: the peers-per-address quota,
    /// the peer's own size claims, the peer's inventory limit (the first
    /// entries that fit are taken; how many did not is added to `over`)
    /// and the directory's size limit.
    pub(crate) fn join_inventory(
        &self,
        ix: &Index,
        peer: &PeerId,
        addr: IpAddr,
        inventory: Inventory,
        over: &AtomicU64,
    ) -> Result<Admitted> {
        let limits = &self.limits;
        if ix.addr_of(peer) != Some(addr) {
            let joined = ix.peers_from(addr);
            let max = limits.max_peers_per_addr;
            if joined >= max {
                self.refused(Refusal::MaxPeersPerAddr);
                return Err(Limit::PeersPerAddr { joined, addr, max }.into());
            }
        }
        let (mut files, refused) =
            inventory.screen(ix, peer, true, limits.max_message_bytes / 2)?;
        // A Join replaces the inventory: it starts from nothing.
        self.fit(peer, 0, &mut files, over);
        let total = ix.holdings() - ix.inventory_len(peer) + files.len();
        self.directory_room(total)?;
        Ok((files, refused))
    }

    /// A Publish against the index: the peer's own size claims, the
    /// per-peer limit on the running total of its inventory (the first
    /// entries that fit are taken; how many did not is added to `over`)
    /// and the directory's limit.
    pub(crate) fn publish_inventory(
        &self,
        ix: &Index,
        peer: &PeerId,
        inventory: Inventory,
        over: &AtomicU64,
    ) -> Result<Admitted> {
        let limits = &self.limits;
        let (mut files, refused) =
            inventory.screen(ix, peer, false, limits.max_message_bytes / 2)?;
        self.fit(peer, ix.inventory_len(peer), &mut files, over);
        self.directory_room(ix.holdings() + files.len())?;
        Ok((files, refused))
    }

    /// Keep the first of `files` that fit in a peer's inventory of `held`
    /// entries under CENTRAL_MAX_INVENTORY; count the rest in `over`.
    fn fit(&self, peer: &PeerId, held: usize, files: &mut Vec<SharedFile>, over: &AtomicU64) {
        let room = self.limits.max_inventory.saturating_sub(held);
        if files.len() > room {
            let left = files.len() - room;
            files.truncate(room);
            over.fetch_add(left as u64, Ordering::Relaxed);
            tracing::info!(%peer, held, taken = room, left, max = self.limits.max_inventory,
                "the peer's inventory reached CENTRAL_MAX_INVENTORY; the rest of this call is not listed");
        }
    }

    /// The directory would hold `total` entries: within CENTRAL_MAX_FILES?
    fn directory_room(&self, total: usize) -> Result<()> {
        let max = self.limits.max_files;
        if total > max {
            self.refused(Refusal::MaxFiles);
            return Err(Limit::DirectoryFull { total, max }.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn admission(rate: u32, interval: Duration) -> Admission {
        let limits = Limits {
            join_rate: rate,
            search_rate: rate,
            publish_rate: rate,
            ..Limits::default()
        };
        Admission::new(&limits, interval, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_is_taken_once_per_half_interval_and_the_refusal_says_when_to_retry() {
        let a = admission(10, Duration::from_secs(10));
        let peer = PeerId::new_random();
        a.heartbeat(&peer, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_millis(4_900)).await;
        match a.heartbeat(&peer, Instant::now()) {
            Err(Error::RateLimited(RateLimited::Heartbeats {
                peer: p,
                gap_ms,
                retry_after_secs,
            })) => {
                assert_eq!((p, gap_ms, retry_after_secs), (peer, 5_000, 1));
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        a.heartbeat(&peer, Instant::now()).unwrap();
        // Another peer has its own allowance.
        a.heartbeat(&PeerId::new_random(), Instant::now()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_joins_is_refused_then_allowed_again_as_the_bucket_refills() {
        let a = admission(2, Duration::from_secs(10));
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        // The burst: ten seconds' worth of the rate.
        for _ in 0..20 {
            a.join(&addr).unwrap();
        }
        let Err(Error::RateLimited(RateLimited::Calls {
            key,
            setting,
            retry_after_secs,
            ..
        })) = a.join(&addr)
        else {
            panic!("the 21st join within a second must be refused");
        };
        assert_eq!((key, retry_after_secs), (RateKey::Addr(addr), 1));
        assert!(setting.starts_with("CENTRAL_JOIN_RATE"), "{setting}");
        // Another address is not charged for it.
        a.join(&"192.0.2.8".parse().unwrap()).unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
        a.join(&addr).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn purging_forgets_heartbeat_times_older_than_the_gap() {
        let a = admission(10, Duration::from_secs(10));
        let peer = PeerId::new_random();
        a.heartbeat(&peer, Instant::now()).unwrap();
        a.purge(Instant::now());
        assert_eq!(lock(&a.beats).len(), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        a.purge(Instant::now());
        assert!(lock(&a.beats).is_empty());
    }
}
