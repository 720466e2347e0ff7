//! Following the directory: the start-up read at one revision
//! ([`Etcd::snapshot`]), the watch from the next, decoding what they
//! deliver into [`Change`]s, the mirror of what a central keeps beside
//! the index (peers' leases and record revisions, key bindings), and the
//! applied revision that writes wait for ([`Etcd::wait_applied`]).

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use peerdex_common::sync::lock;
use peerdex_proto::{FileId, PeerId};
use tokio::time::Instant;

use super::Etcd;
use super::client::EtcdError;
use super::pages;
use super::schema::{
    Binding, Decline, FOLLOWED_AFTER_HOLDINGS, Key, PeerRecord, holdings_of, inventory_of, json,
    parse_holding_value, range_end,
};
use crate::error::Result;
use crate::replication::{Pin, Proof, Task};
use crate::snapshot::Kv;

/// Keys per page of the start-up range read.
const PAGE: i64 = 2000;

/// Inventory pages per range read: at most ~70 KiB each (see `pages`),
/// so an answer stays well below the client's 4 MiB message limit.
const PAGES_PER_READ: i64 = 16;

/// The largest watch answer taken. etcd sends up to 1000 revisions in one
/// answer while a watcher catches up (after a snapshot, a reconnect), and
/// a Join's revision carries up to [`super::writes::TXN_BYTES`] of
/// pages: the client's default of 4 MiB would refuse such an answer, and
/// the watch would fail on it again at every retry.
const WATCH_MESSAGE_BYTES: usize = 1 << 30;

/// Peers' holdings read at once at start-up.
const SNAPSHOT_READS: usize = 16;

/// Longest wait for our own watch to apply a write we made.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One change of the directory, decoded from etcd.
#[derive(Debug)]
pub(crate) enum Change {
    /// A peer's record; `new_session` when it replaces one of another
    /// lease (a re-Join: the old inventory is dropped, the new one follows).
    Peer {
        peer: PeerId,
        record: PeerRecord,
        new_session: bool,
    },
    PeerGone(PeerId),
    Holding {
        peer: PeerId,
        file: FileId,
        name: String,
        size: u64,
        replica: bool,
    },
    /// One name (`Some`) or every name of a file withdrawn.
    HoldingGone {
        peer: PeerId,
        file: FileId,
        name: Option<String>,
    },
    /// A pin set (`Some`) or removed.
    Pin {
        file: FileId,
        peer: PeerId,
        pin: Option<Pin>,
    },
    /// A volunteer's task given or withdrawn.
    Task {
        peer: PeerId,
        file: FileId,
        task: Option<Task>,
    },
    Declined {
        peer: PeerId,
        file: FileId,
        decline: Option<Decline>,
    },
    /// A copy proven (`Some`) or no longer.
    Proof {
        peer: PeerId,
        file: FileId,
        proof: Option<Proof>,
    },
}

/// What a central knows of a peer beyond the index: its etcd lease, and
/// the revision of its record (a Join compares it, so two Joins of one
/// peer at two centrals cannot interleave).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerMeta {
    pub lease: i64,
    pub mod_revision: i64,
    /// The central that keeps the session ([`PeerRecord::owner`]).
    pub owner: i64,
}

/// What the watch told this central beyond the index.
#[derive(Default)]
pub(super) struct Mirror {
    /// Each peer's lease and record revision, and its record exactly as
    /// stored (a snapshot keeps it).
    peers: HashMap<PeerId, (PeerMeta, Box<[u8]>)>,
    /// Key bindings, with the exact stored bytes (compared by a Join).
    keys: HashMap<PeerId, (Binding, Vec<u8>)>,
    /// The replication keys (pins, tasks, declines, proofs) as stored,
    /// by key without the prefix, with their revision: few, and kept for
    /// the snapshot only.
    replication: HashMap<String, (Vec<u8>, i64)>,
}

impl Etcd {
    /// The whole directory at one revision, in pages: peers first, then
    /// holdings (so that every holding finds its peer). Returns the
    /// changes and the revision; the mirror is rebuilt.
    pub(crate) async fn snapshot(&self) -> Result<(Vec<Change>, i64)> {
        // etcd counts the rest of the range on every limited read, so one
        // paginated read of the whole prefix costs O(n²). Read the peers
        // and the key bindings, then each peer's holdings under its own
        // prefix (a few in flight), all at the revision of the first read.
        let (mut kvs, revision) = self.read_prefix("peers/", 0, PAGE).await?;
        let (keys, _) = self.read_prefix("keys/", revision, PAGE).await?;
        *lock(&self.mirror) = Mirror::default();
        let mut changes = Vec::new();
        for kv in kvs.drain(..).chain(keys) {
            self.decode_put(&kv, &mut changes);
        }
        let ids: Vec<(PeerId, i64)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Peer { peer, record, .. } => Some((*peer, record.lease)),
                _ => None,
            })
            .collect();
        use futures_util::StreamExt;
        let mut reads = futures_util::stream::iter(ids)
            .map(|(p, lease)| async move {
                let (mut kvs, _) = self.read_prefix(&holdings_of(&p), revision, PAGE).await?;
                let (pages, _) = self
                    .read_prefix(&inventory_of(&p), revision, PAGES_PER_READ)
                    .await?;
                kvs.extend(pages);
                Ok::<_, crate::error::Error>((p, lease, kvs))
            })
            .buffer_unordered(SNAPSHOT_READS);
        while let Some(r) = reads.next().await {
            let (peer, lease, kvs) = r?;
            self.replay(peer, lease, kvs, &mut changes);
        }
        drop(reads);
        for rest in FOLLOWED_AFTER_HOLDINGS {
            let (kvs, _) = self.read_prefix(rest, revision, PAGE).await?;
            for kv in &kvs {
                self.decode_put(kv, &mut changes);
            }
        }
        Ok((changes, revision))
    }

    /// A peer's holdings at a full read: its keys of holdings, its pages
    /// and its tombstones replayed in the order etcd wrote them (mod
    /// revision), so that a tombstone withdraws only what was announced
    /// before it, and a holding announced twice counts once. Pages and
    /// tombstones of another lease than the peer's (an earlier session
    /// whose lease is not revoked yet) do not count. A page that does not
    /// decode is skipped whole (logged).
    fn replay(&self, peer: PeerId, lease: i64, mut kvs: Vec<KeyValue>, out: &mut Vec<Change>) {
        kvs.sort_by_key(KeyValue::mod_revision);
        let mut held: HashMap<FileId, Vec<(String, u64, bool)>> = HashMap::new();
        fn hold(
            held: &mut HashMap<FileId, Vec<(String, u64, bool)>>,
            file: FileId,
            name: String,
            size: u64,
            replica: bool,
        ) {
            let names = held.entry(file).or_default();
            match names.iter_mut().find(|(n, ..)| *n == name) {
                Some(h) => *h = (name, size, replica),
                None => names.push((name, size, replica)),
            }
        }
        for kv in &kvs {
            let Some(key) = kv.key_str().ok().and_then(|k| self.strip(k)) else {
                continue;
            };
            match Key::parse(key) {
                Some(Key::Holding { file, name, .. }) => {
                    if let Some((size, replica)) = parse_holding_value(kv.value()) {
                        hold(&mut held, file, name, size, replica);
                    }
                }
                Some(Key::Page { .. }) if kv.lease() == lease => {
                    for r in page_rows(key, kv.value()) {
                        hold(&mut held, r.file, r.name, r.size, r.replica);
                    }
                }
                Some(Key::Tombstone { file, name, .. }) if kv.lease() == lease => match name {
                    Some(n) => {
                        if let Some(names) = held.get_mut(&file) {
                            names.retain(|(h, ..)| *h != n);
                        }
                    }
                    None => {
                        held.remove(&file);
                    }
                },
                _ => {}
            }
        }
        for (file, names) in held {
            for (name, size, replica) in names {
                out.push(Change::Holding {
                    peer,
                    file,
                    name,
                    size,
                    replica,
                });
            }
        }
    }

    /// Every key under `prefix + rest`, `limit` keys a read, at
    /// `revision` (0: the current one, returned).
    async fn read_prefix(
        &self,
        rest: &str,
        revision: i64,
        limit: i64,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let start = self.key(rest).into_bytes();
        let end = range_end(&start);
        let mut from = start;
        let mut revision = revision;
        let mut kvs: Vec<KeyValue> = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let key = from.clone();
            let mut r = self
                .retry("range read", |mut c| {
                    let (key, opts) = (key.clone(), opts.clone());
                    async move { c.get(key, Some(opts)).await }
                })
                .await?;
            if revision == 0 {
                revision = r.header().map_or(0, |h| h.revision());
            }
            let more = r.more();
            let page = r.take_kvs();
            if let Some(last) = page.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            kvs.extend(page);
            if !more {
                return Ok((kvs, revision));
            }
        }
    }

    /// Decode a put into `out` (and note it in the mirror); nothing for
    /// keys that are not the index's (bindings are only mirrored). A page
    /// or tombstone counts only on its peer's current lease: one of an
    /// earlier session (written late, or read before its lease's
    /// revocation) would otherwise land in the new session.
    fn decode_put(&self, kv: &KeyValue, out: &mut Vec<Change>) {
        let Some(key) = kv.key_str().ok().and_then(|k| self.strip(k)) else {
            return;
        };
        let current = |peer: &PeerId| {
            let live = self.peer_meta(peer).is_some_and(|m| m.lease == kv.lease());
            if !live {
                tracing::debug!(key, "etcd: inventory of another session ignored");
            }
            live
        };
        match Key::parse(key) {
            Some(Key::Page { peer }) => {
                if current(&peer) {
                    out.extend(
                        page_rows(key, kv.value())
                            .into_iter()
                            .map(|r| Change::Holding {
                                peer,
                                file: r.file,
                                name: r.name,
                                size: r.size,
                                replica: r.replica,
                            }),
                    );
                }
            }
            Some(Key::Tombstone { peer, file, name }) => {
                if current(&peer) {
                    out.push(Change::HoldingGone { peer, file, name });
                }
            }
            _ => out.extend(self.decode_stored(key, kv.value(), kv.mod_revision())),
        }
    }

    /// [`Etcd::decode_put`] of a key (without the prefix) and value as
    /// stored, at `mod_revision` (from etcd, or from a snapshot).
    fn decode_stored(&self, key: &str, value: &[u8], mod_revision: i64) -> Option<Change> {
        let parsed = Key::parse(key)?;
        if matches!(
            parsed,
            Key::Pin { .. } | Key::Task { .. } | Key::Declined { .. } | Key::Proof { .. }
        ) {
            lock(&self.mirror)
                .replication
                .insert(key.to_owned(), (value.to_vec(), mod_revision));
        }
        match parsed {
            Key::Peer(peer) => match serde_json::from_slice::<PeerRecord>(value) {
                Ok(record) => {
                    let meta = PeerMeta {
                        lease: record.lease,
                        mod_revision,
                        owner: record.owner,
                    };
                    let old = lock(&self.mirror).peers.insert(peer, (meta, value.into()));
                    Some(Change::Peer {
                        peer,
                        new_session: old.is_some_and(|(o, _)| o.lease != record.lease),
                        record,
                    })
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "etcd: unreadable peer record ignored");
                    None
                }
            },
            Key::Binding(peer) => {
                match serde_json::from_slice::<Binding>(value) {
                    Ok(b) => {
                        lock(&self.mirror).keys.insert(peer, (b, value.to_vec()));
                    }
                    Err(e) => {
                        tracing::warn!(key, error = %e, "etcd: unreadable key binding ignored");
                    }
                }
                None
            }
            Key::Holding { peer, file, name } => {
                let (size, replica) = parse_holding_value(value)?;
                Some(Change::Holding {
                    peer,
                    file,
                    name,
                    size,
                    replica,
                })
            }
            Key::Pin { file, peer } => Some(Change::Pin {
                file,
                peer,
                pin: Some(json(key, value)?),
            }),
            Key::Task { peer, file } => Some(Change::Task {
                peer,
                file,
                task: Some(json(key, value)?),
            }),
            Key::Declined { peer, file } => Some(Change::Declined {
                peer,
                file,
                decline: Some(json(key, value)?),
            }),
            Key::Proof { peer, file } => Some(Change::Proof {
                peer,
                file,
                proof: Some(json(key, value)?),
            }),
            // Decoded with their lease (see `decode_put`); a snapshot's
            // keys never hold them.
            Key::Page { .. } | Key::Tombstone { .. } => None,
        }
    }

    fn decode_delete(&self, kv: &KeyValue) -> Option<Change> {
        let key = self.strip(kv.key_str().ok()?)?;
        let parsed = Key::parse(key)?;
        lock(&self.mirror).replication.remove(key);
        match parsed {
            Key::Peer(peer) => {
                lock(&self.mirror).peers.remove(&peer);
                self.forget_session(&peer);
                Some(Change::PeerGone(peer))
            }
            Key::Binding(peer) => {
                lock(&self.mirror).keys.remove(&peer);
                None
            }
            Key::Holding { peer, file, name } => Some(Change::HoldingGone {
                peer,
                file,
                name: Some(name),
            }),
            // A page or tombstone goes with its session: at a lease's end
            // (the peer's record goes too) or after a new Join (whose
            // record already dropped the old inventory).
            Key::Page { .. } | Key::Tombstone { .. } => None,
            Key::Pin { file, peer } => Some(Change::Pin {
                file,
                peer,
                pin: None,
            }),
            Key::Task { peer, file } => Some(Change::Task {
                peer,
                file,
                task: None,
            }),
            Key::Declined { peer, file } => Some(Change::Declined {
                peer,
                file,
                decline: None,
            }),
            Key::Proof { peer, file } => Some(Change::Proof {
                peer,
                file,
                proof: None,
            }),
        }
    }

    /// Decode one watch answer's events in order. Within one revision
    /// (one transaction, or one lease's end) peers' puts come first and
    /// peers' deletes last, as a transaction's events may come in any key
    /// order; peers' puts are also decoded first, so that the pages of a
    /// Join find the lease its record brings (see `decode_put`). Revisions
    /// stay in their order: an answer of a watch catching up holds many,
    /// say a lease's end and then the peer's new Join.
    pub(crate) fn decode(&self, events: &[etcd_client::Event]) -> Vec<Change> {
        let revision = |ev: &etcd_client::Event| ev.kv().map_or(0, KeyValue::mod_revision);
        let record_put = |ev: &etcd_client::Event| {
            ev.event_type() == EventType::Put
                && ev
                    .kv()
                    .and_then(|kv| kv.key_str().ok())
                    .and_then(|k| self.strip(k))
                    .is_some_and(|k| k.starts_with("peers/"))
        };
        let mut out = Vec::new();
        let mut decoded = Vec::new();
        for txn in events.chunk_by(|a, b| revision(a) == revision(b)) {
            let (mut middle, mut last) = (Vec::new(), Vec::new());
            let records = txn.iter().filter(|ev| record_put(ev));
            let others = txn.iter().filter(|ev| !record_put(ev));
            for ev in records.chain(others) {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => self.decode_put(kv, &mut decoded),
                    EventType::Delete => decoded.extend(self.decode_delete(kv)),
                }
                for c in decoded.drain(..) {
                    match c {
                        c @ Change::Peer { .. } => out.push(c),
                        c @ Change::PeerGone(_) => last.push(c),
                        c => middle.push(c),
                    }
                }
            }
            out.extend(middle);
            out.extend(last);
        }
        out
    }

    /// Start following changes from `revision`.
    pub(crate) async fn watch(&self, revision: i64) -> Result<etcd_client::WatchStream> {
        let prefix = self.prefix.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        Ok(self
            .retry("watch", |c| {
                let (prefix, opts) = (prefix.clone(), opts.clone());
                let mut w = c
                    .watch_client()
                    .max_decoding_message_size(WATCH_MESSAGE_BYTES);
                async move { w.watch(prefix, Some(opts)).await }
            })
            .await?)
    }

    pub(crate) fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    pub(crate) fn set_applied(&self, revision: i64) {
        self.applied.send_if_modified(|r| {
            if revision > *r {
                *r = revision;
                true
            } else {
                false
            }
        });
    }

    /// Wait until our watch has applied `revision` (so this central
    /// answers with the write). A write that changed nothing has no event
    /// to wait for: after a moment a `fence` write makes one, which the
    /// watch delivers after every event before it.
    pub(crate) async fn wait_applied(&self, revision: i64) -> Result<()> {
        let mut rx = self.applied.subscribe();
        let deadline = Instant::now() + APPLY_TIMEOUT;
        let mut nudge = Duration::from_millis(100);
        loop {
            if *rx.borrow_and_update() >= revision {
                return Ok(());
            }
            let wait = nudge.min(deadline.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                return Err(EtcdError::NotApplied {
                    revision,
                    waited: APPLY_TIMEOUT,
                }
                .into());
            }
            if tokio::time::timeout(wait, rx.changed()).await.is_err() {
                self.fence(revision).await;
                nudge = (nudge * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Write `fence` unless a fence at or after `revision` was written
    /// already (waiters share one); a failure is left to the caller's
    /// deadline.
    async fn fence(&self, revision: i64) {
        let mut fenced = self.fenced.lock().await;
        if *fenced >= revision {
            return;
        }
        let key = self.key("fence");
        match self
            .retry("write a fence", |mut c| {
                let key = key.clone();
                async move { c.put(key, Vec::new(), None).await }
            })
            .await
        {
            Ok(r) => *fenced = r.header().map_or(0, |h| h.revision()),
            Err(e) => tracing::debug!(error = %e, "etcd: fence write failed"),
        }
    }

    pub(crate) fn peer_meta(&self, peer: &PeerId) -> Option<PeerMeta> {
        lock(&self.mirror).peers.get(peer).map(|(m, _)| *m)
    }

    /// Every followed key but the holdings, as stored (for a snapshot:
    /// the index keeps the holdings).
    pub(crate) fn mirrored(&self) -> Vec<Kv> {
        let m = lock(&self.mirror);
        let peers = m.peers.iter().map(|(p, (meta, raw))| Kv {
            key: format!("peers/{p}"),
            value: raw.to_vec(),
            mod_revision: meta.mod_revision,
        });
        let keys = m.keys.iter().map(|(p, (_, raw))| Kv {
            key: format!("keys/{p}"),
            value: raw.clone(),
            mod_revision: 0,
        });
        let replication = m.replication.iter().map(|(k, (v, rev))| Kv {
            key: k.clone(),
            value: v.clone(),
            mod_revision: *rev,
        });
        peers.chain(keys).chain(replication).collect()
    }

    /// Rebuild the mirror from a snapshot's keys ([`Etcd::mirrored`]);
    /// the changes they make, peers first (as [`Etcd::snapshot`] orders
    /// them).
    pub(crate) fn restore(&self, kvs: &[Kv]) -> Vec<Change> {
        *lock(&self.mirror) = Mirror::default();
        let mut changes: Vec<Change> = kvs
            .iter()
            .filter_map(|kv| self.decode_stored(&kv.key, &kv.value, kv.mod_revision))
            .collect();
        changes.sort_by_key(|c| !matches!(c, Change::Peer { .. }));
        changes
    }

    pub(crate) fn binding(&self, peer: &PeerId) -> Option<Binding> {
        lock(&self.mirror).keys.get(peer).map(|(b, _)| b.clone())
    }

    /// `peer`'s record exactly as stored, with what it says of the
    /// session, read together.
    pub(super) fn peer_record(&self, peer: &PeerId) -> Option<(PeerMeta, Box<[u8]>)> {
        lock(&self.mirror).peers.get(peer).cloned()
    }

    /// The peers whose record names `own` as the central that keeps
    /// their session.
    pub(crate) fn sessions_kept_by(&self, own: i64) -> Vec<PeerId> {
        lock(&self.mirror)
            .peers
            .iter()
            .filter(|(_, (m, _))| m.owner != 0 && m.owner == own)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The sessions kept by another central than `own`, by that
    /// central's lease (records of a central from before, owner 0, are
    /// left out: etcd ends them).
    pub(crate) fn sessions_kept_by_others(
        &self,
        own: i64,
    ) -> HashMap<i64, Vec<(PeerId, PeerMeta)>> {
        let mut by: HashMap<i64, Vec<(PeerId, PeerMeta)>> = HashMap::new();
        for (p, (m, _)) in lock(&self.mirror).peers.iter() {
            if m.owner != 0 && m.owner != own {
                by.entry(m.owner).or_default().push((*p, *m));
            }
        }
        by
    }

    /// The binding of `peer` exactly as stored (a Join compares it).
    pub(super) fn binding_bytes(&self, peer: &PeerId) -> Option<Vec<u8>> {
        lock(&self.mirror)
            .keys
            .get(peer)
            .map(|(_, raw)| raw.clone())
    }

    pub(crate) fn bindings_held(&self) -> usize {
        lock(&self.mirror).keys.len()
    }

    /// Bindings of peers not in the directory whose last Join is before
    /// `before`, oldest first.
    pub(crate) fn idle_bindings(&self, before: i64) -> Vec<(PeerId, i64)> {
        let m = lock(&self.mirror);
        let mut idle: Vec<(PeerId, i64)> = m
            .keys
            .iter()
            .filter(|(p, (b, _))| b.last_join < before && !m.peers.contains_key(p))
            .map(|(p, (b, _))| (*p, b.last_join))
            .collect();
        idle.sort_by_key(|&(_, t)| t);
        idle
    }

    /// Bindings of absent peers, oldest Join first (to make room).
    pub(crate) fn absent_bindings(&self) -> Vec<PeerId> {
        self.idle_bindings(i64::MAX)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }
}

/// The rows of a stored page; none (logged) when it does not decode.
fn page_rows(key: &str, value: &[u8]) -> Vec<pages::PageRow> {
    pages::decode(value)
        .inspect_err(|e| tracing::warn!(key, error = %e, "etcd: inventory page refused"))
        .unwrap_or_default()
}
