//! Wanted files, at the directory: who waits for what (the Watch streams
//! open at this central), and the feed of holders as they appear.
//!
//! The directory's stores call [`Watches::appeared`] where a change is
//! applied to the index (SQLite: after the commit, under the store mutex;
//! etcd: in the follower, so a publish made through any central of the
//! directory reaches the watchers of every central). The call never
//! waits: it hands one batch to a bounded broadcast channel, and only
//! when some stream is open. Each stream's own task (`crate::rpc`'s
//! Watch) matches the batches against its [`Filter`] and builds its
//! events from the index; a stream that falls behind the feed loses it
//! with a status that says so (its PServer opens it again and checks with
//! Locate), so no watcher ever slows a write.
//!
//! Layout: this file the registry and the feed; `filter` the subscriptions
//! of one stream and how a published name is matched.

mod filter;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use peerdex_common::sync::lock;
use peerdex_proto::{FileId, FileName, PeerId};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub(crate) use filter::{Filter, Match};

/// Batches of appeared holdings a stream may lag behind before it loses
/// the feed (a batch is one Join, Publish or etcd watch response).
const FEED_BATCHES: usize = 1024;

/// One batch of holdings the index just took: `(file, name)` each.
pub(crate) type Batch = Arc<Vec<(FileId, FileName)>>;

/// Why a stream ended from the directory's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The peer opened another Watch (its new subscriptions).
    Replaced,
    /// The peer's lease ended (expiry or Leave).
    LeaseOver,
    /// The index was reloaded from the store (etcd, after falling behind
    /// a compaction): events may have been skipped.
    Reloaded,
    /// This central drains or shuts down.
    Closing,
}

/// The Watch streams open at this central. Shared as `Arc<Watches>`.
pub(crate) struct Watches {
    feed: broadcast::Sender<Batch>,
    open: Mutex<HashMap<PeerId, Open>>,
    next: AtomicU64,
    /// Subscriptions of the open streams, for `peerdex_central_watches`.
    subscriptions: AtomicUsize,
    /// Events pushed, for `peerdex_central_watch_events_total`.
    events: AtomicU64,
    closing: CancellationToken,
}

struct Open {
    id: u64,
    subscriptions: usize,
    end: Arc<End>,
}

/// How a stream is told to end, and why.
pub(crate) struct End {
    token: CancellationToken,
    why: OnceLock<Ended>,
}

impl End {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            token: CancellationToken::new(),
            why: OnceLock::new(),
        })
    }

    fn end(&self, why: Ended) {
        let _ = self.why.set(why);
        self.token.cancel();
    }

    /// Resolves when the stream must end; then [`End::why`] says why.
    pub(crate) async fn ended(&self) {
        self.token.cancelled().await;
    }

    pub(crate) fn why(&self) -> Ended {
        self.why.get().copied().unwrap_or(Ended::Closing)
    }
}

/// A stream's place in the registry; dropping it gives the place back.
pub(crate) struct Registration {
    watches: Arc<Watches>,
    peer: PeerId,
    id: u64,
    pub(crate) end: Arc<End>,
    pub(crate) feed: broadcast::Receiver<Batch>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = lock(&self.watches.open);
        if open.get(&self.peer).is_some_and(|o| o.id == self.id)
            && let Some(o) = open.remove(&self.peer)
        {
            self.watches
                .subscriptions
                .fetch_sub(o.subscriptions, Ordering::Relaxed);
        }
    }
}

impl Default for Watches {
    fn default() -> Self {
        Self {
            feed: broadcast::channel(FEED_BATCHES).0,
            open: Mutex::default(),
            next: AtomicU64::new(1),
            subscriptions: AtomicUsize::new(0),
            events: AtomicU64::new(0),
            closing: CancellationToken::new(),
        }
    }
}

impl Watches {
    /// Register `peer`'s stream of `subscriptions`, replacing (and
    /// ending) its previous one. `None` once this central is closing.
    pub(crate) fn register(
        self: &Arc<Self>,
        peer: PeerId,
        subscriptions: usize,
    ) -> Option<Registration> {
        if self.closing.is_cancelled() {
            return None;
        }
        let end = End::new();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        // Subscribed before the stream says `ready`: nothing applied after
        // that is missed.
        let feed = self.feed.subscribe();
        let old = lock(&self.open).insert(
            peer,
            Open {
                id,
                subscriptions,
                end: end.clone(),
            },
        );
        self.subscriptions
            .fetch_add(subscriptions, Ordering::Relaxed);
        if let Some(old) = old {
            self.subscriptions
                .fetch_sub(old.subscriptions, Ordering::Relaxed);
            old.end.end(Ended::Replaced);
        }
        Some(Registration {
            watches: self.clone(),
            peer,
            id,
            end,
            feed,
        })
    }

    /// The index took these holdings (a holder appeared for each): feed
    /// them to the open streams. Never waits; costs nothing while no
    /// stream is open.
    pub(crate) fn appeared<'a>(&self, files: impl IntoIterator<Item = (&'a FileId, &'a FileName)>) {
        if self.feed.receiver_count() == 0 {
            return;
        }
        let batch: Vec<(FileId, FileName)> =
            files.into_iter().map(|(f, n)| (*f, n.clone())).collect();
        if !batch.is_empty() {
            // Err only when the last receiver went meanwhile.
            let _ = self.feed.send(Arc::new(batch));
        }
    }

    /// These peers' leases ended: their streams end.
    pub(crate) fn departed(&self, peers: &[PeerId]) {
        let open = lock(&self.open);
        if open.is_empty() {
            return;
        }
        for p in peers {
            if let Some(o) = open.get(p) {
                o.end.end(Ended::LeaseOver);
            }
        }
    }

    /// The index was rebuilt from the store: every stream ends, so that
    /// its PServer checks its wants again with Locate.
    pub(crate) fn reloaded(&self) {
        for o in lock(&self.open).values() {
            o.end.end(Ended::Reloaded);
        }
    }

    /// This central drains or shuts down: every stream ends, and no new
    /// one opens.
    pub(crate) fn close(&self) {
        self.closing.cancel();
        for o in lock(&self.open).values() {
            o.end.end(Ended::Closing);
        }
    }

    /// One event pushed to a stream.
    pub(crate) fn pushed(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscriptions of the streams open now, and events pushed so far.
    pub(crate) fn figures(&self) -> (usize, u64) {
        (
            self.subscriptions.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8) -> (FileId, FileName) {
        (
            FileId::from_bytes([n; 32]),
            format!("file-{n}.bin").parse().unwrap(),
        )
    }

    #[tokio::test]
    async fn a_new_stream_replaces_the_peers_old_one_and_the_figures_follow() {
        let w = Arc::new(Watches::default());
        let peer = PeerId::new_random();
        let first = w.register(peer, 3).unwrap();
        assert_eq!(w.figures().0, 3);
        let mut second = w.register(peer, 2).unwrap();
        first.end.ended().await;
        assert_eq!(first.end.why(), Ended::Replaced);
        assert_eq!(w.figures().0, 2);
        // The old one going does not take the new one's place.
        drop(first);
        assert_eq!(w.figures().0, 2);
        let (id, name) = file(1);
        w.appeared([(&id, &name)]);
        let batch = second.feed.recv().await.unwrap();
        assert_eq!(batch.as_slice(), &[(id, name)]);
        w.departed(&[peer]);
        second.end.ended().await;
        assert_eq!(second.end.why(), Ended::LeaseOver);
        drop(second);
        assert_eq!(w.figures().0, 0);
        w.close();
        assert!(w.register(peer, 1).is_none(), "closing: no new stream");
    }
}
