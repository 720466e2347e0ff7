//! Info, draining at shutdown, and the figures of the metrics page.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use peerdex_common::sync::lock;
use peerdex_proto::{PeerId, v1};
use tokio::time::Instant;

use super::DirectoryService;

/// A stopping central tells its peers to move to another central of the
/// directory (on etcd) and waits until those that heartbeated lately
/// heard it.
pub(super) struct Drain {
    /// Shutting down: Heartbeat answers tell peers to move.
    pub draining: AtomicBool,
    /// When each peer last heartbeated here, and those told to move.
    pub heard: Mutex<HashMap<PeerId, Instant>>,
    pub told: Mutex<HashSet<PeerId>>,
}

impl DirectoryService {
    pub(crate) fn info(&self) -> v1::InfoResponse {
        let l = &self.inner.leadership;
        let dir = self.dir();
        let (peers, stats) = {
            let ix = dir.index();
            (ix.live_peers(Instant::now()), ix.stats())
        };
        v1::InfoResponse {
            central: l.name().to_owned(),
            leader: l.leader(),
            is_leader: l.is_leader(),
            store: dir.store_name().into(),
            draining: self.inner.drain.draining.load(Ordering::Relaxed),
            peers: peers as u64,
            files: stats.files as u64,
            names: stats.names as u64,
            revision: dir.revision(),
            terms: l
                .terms()
                .into_iter()
                .map(|t| v1::LeaderTerm {
                    began_ms: t.began_ms,
                    ended_ms: t.ended_ms.unwrap_or(0),
                })
                .collect(),
            island: self.inner.links.island().to_owned(),
            links: self.inner.links.infos(),
            index_source: dir.index_source().into(),
        }
    }

    /// This central's name (`CENTRAL_NAME`).
    pub(crate) fn central_name(&self) -> String {
        self.inner.leadership.name().to_owned()
    }

    /// Whether peers can move to another central when this one stops.
    pub(crate) fn can_drain(&self) -> bool {
        self.dir().shared()
    }

    /// Start draining: Heartbeat answers say `moved`, Info says draining,
    /// Revocations streams end (their PServers reopen them elsewhere).
    pub(crate) fn drain(&self) {
        self.inner.drain.draining.store(true, Ordering::Relaxed);
        self.end_streams();
    }

    /// Wait until every peer that heartbeated here lately was told to
    /// move, at most `most`.
    pub(crate) async fn drained(&self, most: Duration) {
        let interval = self.inner.heartbeat_interval;
        let drain = &self.inner.drain;
        let deadline = Instant::now() + most;
        loop {
            let now = Instant::now();
            let waiting = {
                let told = lock(&drain.told);
                lock(&drain.heard)
                    .iter()
                    .filter(|(p, at)| now.duration_since(**at) < interval * 2 && !told.contains(p))
                    .count()
            };
            if waiting == 0 || now >= deadline {
                tracing::info!(
                    told = lock(&drain.told).len(),
                    not_told = waiting,
                    "drained: peers were told to move"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Forget heartbeat times older than three intervals (they only matter
    /// to a drain).
    pub(crate) fn forget_old_heartbeats(&self) {
        let keep = self.inner.heartbeat_interval * 3;
        let now = Instant::now();
        lock(&self.inner.drain.heard).retain(|_, at| now.duration_since(*at) < keep);
    }

    pub(crate) fn stats(&self) -> crate::index::Stats {
        self.dir().index().stats()
    }

    /// The Prometheus text of this directory, if it has metrics.
    pub(crate) fn render_metrics(&self) -> Option<String> {
        let m = self.inner.metrics.as_ref()?;
        let dir = self.dir();
        let now = Instant::now();
        let (stats, holdings, mut replication) = {
            let ix = dir.index();
            let mut stats = ix.stats();
            // Live leases only: an expired peer is in no answer any more,
            // even before the sweeper removes it.
            stats.peers = ix.live_peers(now);
            (stats, ix.holdings(), dir.replicas().figures(&ix, now))
        };
        replication.unplaced = self.inner.replicator.unplaced_count();
        let role = crate::metrics::Role {
            leader: self.inner.leadership.is_leader(),
            draining: self.inner.drain.draining.load(Ordering::Relaxed),
            revision: dir.revision(),
        };
        let (subscriptions, events) = dir.watches().figures();
        let watching = crate::metrics::Watching {
            subscriptions,
            events,
        };
        Some(m.render(stats, holdings, role, replication, watching))
    }
}
