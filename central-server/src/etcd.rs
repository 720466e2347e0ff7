//! The directory on etcd (`CENTRAL_ETCD_ENDPOINTS`): any number of
//! centrals serve one directory, all active.
//!
//! # Data model
//!
//! Under the prefix (`CENTRAL_ETCD_PREFIX`, default `/peerdex/`):
//!
//! * `peers/<peer id>` → [`PeerRecord`] (JSON: URL, BLAKE3 hash of the
//!   session token, etcd lease, source address, load), attached to the
//!   peer's etcd lease;
//! * `files/<peer id>/<file id>/<name>` → the size this peer claims
//!   (followed by ` r` when it holds the file as a replica), attached to
//!   the same lease, so that when the peer stops heartbeating etcd itself
//!   drops everything it announced, in one revision;
//! * `pins/<file id>/<peer id>` → a [`Pin`] (JSON), no lease: pins are the
//!   directory's state and outlive the peer that set them;
//! * `tasks/<peer id>/<file id>` → a replica [`Task`] (JSON) for that
//!   volunteer, written by the leader's planner, attached to the
//!   volunteer's lease (every central hands it out in Heartbeat answers);
//! * `declined/<peer id>/<file id>` → a [`Decline`] (JSON): a FETCH the
//!   volunteer would not do, attached to its lease, read by the planner;
//! * `proofs/<peer id>/<file id>` → a [`Proof`] (JSON): a copy the
//!   directory stands behind (fetched at its request, or audited), on the
//!   holder's lease, written by the leader;
//! * `keys/<peer id>` → [`Binding`] (the peer's public key and last Join),
//!   no lease: a binding outlives the peer (`CENTRAL_KEY_RETENTION_DAYS`);
//! * `nonces/<nonce>` → spent Join nonces, on a short shared lease, so a
//!   Join cannot be replayed at another central;
//! * `secrets/network`, `secrets/nonce` → the private network's signing
//!   key and the nonce MAC key, made once by whichever central starts
//!   first, so that every central issues and checks the same credentials
//!   and nonces;
//! * `election` → etcd's election API (see `crate::leader`);
//! * `fence` → empty, rewritten when a central waits for a write that
//!   made no event of its own (see "Reads from memory" below).
//!
//! A Heartbeat is a keep-alive of the peer's etcd lease, whichever central
//! receives it. Inventories bigger than one transaction ([`TXN_OPS`]
//! operations, etcd's default `--max-txn-ops`) are written in batches
//! under the same lease.
//!
//! # Reads from memory
//!
//! Each central builds its index from a paginated range read at one
//! revision ([`Etcd::snapshot`]), then follows a watch from the next
//! revision; the service applies what it decodes ([`Change`]) to the
//! in-memory index and marks the revision applied. A write is
//! acknowledged only once the watch has applied its revision
//! ([`Etcd::wait_applied`]), so a peer reads its own writes from the
//! central it talks to. Locate and Search never wait for etcd.
//!
//! The applied revision is that of the last event applied, never a
//! response header's: etcd releases without the fix of etcd PR 15237
//! (3.5.1 among them) answer a requested progress notification with
//! their current revision, ahead of events still queued for the stream
//! (etcd issue 15220), and a catch-up batch's header can be ahead of its
//! events. Trusting those acknowledged writes the index
//! did not have yet, and a watch resumed from such a revision skipped
//! events for good. A write that changed nothing has no event of its own
//! to wait for: a write to `fence` then makes one, and the events of the
//! stream arrive in revision order.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use peerdex_common::sync::lock;
use peerdex_proto::{FileId, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::replication::{Pin, Proof, Task};
use crate::store::PublicKey;

/// Most operations in one etcd transaction (etcd's default
/// `--max-txn-ops`).
pub const TXN_OPS: usize = 128;

/// Keys per page of the start-up range read.
const PAGE: i64 = 2000;

/// Peers' holdings read at once at start-up.
const SNAPSHOT_READS: usize = 16;

/// Longest wait for our own watch to apply a write we made.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-request deadline towards etcd (a member that does not answer is
/// left for another).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer as stored in `peers/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PeerRecord {
    pub url: String,
    /// Hex BLAKE3 hash of the session token.
    pub token: String,
    pub lease: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    #[serde(default)]
    pub active_uploads: u32,
    #[serde(default)]
    pub free_upload_slots: u32,
    /// Space offered for replicas.
    #[serde(default)]
    pub replica_quota: u64,
}

/// A FETCH a volunteer would not do, as stored in `declined/<peer>/<file>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Decline {
    pub reason: String,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// A peer id's key binding, as stored in `keys/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Binding {
    /// Hex Ed25519 public key.
    pub key: String,
    /// Unix seconds of the last Join.
    pub last_join: i64,
}

impl Binding {
    pub(crate) fn public_key(&self) -> Option<PublicKey> {
        let mut k = [0; 32];
        hex::decode_to_slice(&self.key, &mut k).ok()?;
        Some(k)
    }
}

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
    HoldingGone {
        peer: PeerId,
        file: FileId,
        name: String,
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
}

#[derive(Default)]
struct Mirror {
    peers: HashMap<PeerId, PeerMeta>,
    /// Key bindings, with the exact stored bytes (compared by a Join).
    keys: HashMap<PeerId, (Binding, Vec<u8>)>,
}

/// A Join's write: the first transaction checks the key binding, the
/// nonce and the peer's record revision, and puts the binding, the spent
/// nonce, the record and the first holdings; the rest follow in batches.
pub(crate) struct JoinWrite<'a> {
    pub peer: PeerId,
    pub record: PeerRecord,
    pub binding: Binding,
    pub nonce: &'a [u8],
    pub files: &'a [peerdex_proto::convert::SharedFile],
}

/// Why a Join's first transaction did not apply.
#[derive(Debug)]
pub(crate) enum JoinConflict {
    /// The id is bound to another key.
    OtherKey,
    /// The nonce was spent (at another central, say).
    NonceSpent,
    /// The record changed meanwhile (another Join or a lease end).
    Raced,
}

pub(crate) struct Etcd {
    client: Client,
    /// For calls that wait without a deadline (a campaign).
    waiting: Client,
    prefix: String,
    endpoints: String,
    mirror: Mutex<Mirror>,
    applied: watch::Sender<i64>,
    /// The revision of the last `fence` write (see [`Etcd::wait_applied`]).
    fenced: tokio::sync::Mutex<i64>,
    /// The shared lease of spent nonces, and when it was granted.
    nonce_lease: tokio::sync::Mutex<Option<(i64, Instant)>>,
}

/// `e` as the directory's error: etcd did not answer or refused.
fn unavailable(what: &str, e: etcd_client::Error) -> Error {
    Error::Unavailable(format!("etcd: {what}: {e}"))
}

/// The end of the key range of every key starting with `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether an etcd error says the lease is gone.
pub(crate) fn lease_gone(e: &Error) -> bool {
    matches!(e, Error::Unavailable(m) if m.contains("lease not found"))
}

impl Etcd {
    /// Connect to `endpoints` (comma-separated URLs).
    pub(crate) async fn connect(endpoints: &str, prefix: &str) -> Result<Self> {
        let list: Vec<&str> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            // etcd closes connections that ping more often than its
            // --grpc-keepalive-min-time (5 s by default: "too many pings"),
            // which broke idle watches every few seconds.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let connect = |options| async {
            Client::connect(&list, Some(options)).await.map_err(|e| {
                Error::Config(format!(
                    "CENTRAL_ETCD_ENDPOINTS {endpoints:?}: cannot connect: {e}"
                ))
            })
        };
        let client = connect(options.clone().with_timeout(REQUEST_TIMEOUT)).await?;
        // Campaigns wait as long as another central leads: no deadline.
        let waiting = connect(options).await?;
        Ok(Self {
            client,
            waiting,
            prefix: prefix.to_owned(),
            endpoints: endpoints.to_owned(),
            mirror: Mutex::default(),
            applied: watch::Sender::new(0),
            fenced: tokio::sync::Mutex::new(0),
            nonce_lease: tokio::sync::Mutex::new(None),
        })
    }

    pub(crate) fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// A client whose calls may wait as long as they need.
    pub(crate) fn waiting_client(&self) -> Client {
        self.waiting.clone()
    }

    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn peer_key(&self, peer: &PeerId) -> String {
        self.key(&format!("peers/{peer}"))
    }

    fn binding_key(&self, peer: &PeerId) -> String {
        self.key(&format!("keys/{peer}"))
    }

    /// The last inventory change applied for a peer (see [`Ordered`]).
    fn seq_key(&self, peer: &PeerId) -> String {
        self.key(&format!("seq/{peer}"))
    }

    fn holding_key(&self, peer: &PeerId, file: &FileId, name: &str) -> String {
        self.key(&format!("files/{peer}/{}/{name}", file.to_hex()))
    }

    /// Call `f` on a client, again after a short pause when etcd did not
    /// answer (a member died: the next call goes to another). Only for
    /// calls that may be repeated.
    async fn retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut pause = Duration::from_millis(50);
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            match f(self.client.clone()).await {
                Ok(t) => return Ok(t),
                Err(e) if transient(&e) && Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, what, "etcd call failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(800));
                }
                Err(e) => return Err(unavailable(what, e)),
            }
        }
    }

    /// The value at `rest`, created as `make()` when absent (whoever
    /// creates it first wins; every central then reads the same).
    pub(crate) async fn get_or_create(&self, rest: &str, make: Vec<u8>) -> Result<Vec<u8>> {
        let key = self.key(rest);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), make.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = self
            .retry("create shared secret", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if r.succeeded() {
            return Ok(make);
        }
        for op in r.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
            {
                return Ok(kv.value().to_vec());
            }
        }
        Err(Error::Internal(format!("etcd: {key} vanished while read")))
    }

    /// The whole directory at one revision, in pages: peers first, then
    /// holdings (so that every holding finds its peer). Returns the
    /// changes and the revision; the mirror is rebuilt.
    pub(crate) async fn snapshot(&self) -> Result<(Vec<Change>, i64)> {
        // etcd counts the rest of the range on every limited read, so one
        // paginated read of the whole prefix costs O(n²). Read the peers
        // and the key bindings, then each peer's holdings under its own
        // prefix (a few in flight), all at the revision of the first read.
        let (mut kvs, revision) = self.read_prefix("peers/", 0).await?;
        let (keys, _) = self.read_prefix("keys/", revision).await?;
        *lock(&self.mirror) = Mirror::default();
        let mut changes = Vec::new();
        let mut ids = Vec::new();
        for kv in kvs.drain(..).chain(keys) {
            if let Some(c) = self.decode_put(&kv) {
                if let Change::Peer { peer, .. } = &c {
                    ids.push(*peer);
                }
                changes.push(c);
            }
        }
        use futures_util::StreamExt;
        let mut reads = futures_util::stream::iter(ids)
            .map(|p| async move { self.read_prefix(&format!("files/{p}/"), revision).await })
            .buffer_unordered(SNAPSHOT_READS);
        while let Some(r) = reads.next().await {
            let (kvs, _) = r?;
            changes.extend(kvs.iter().filter_map(|kv| self.decode_put(kv)));
        }
        drop(reads);
        for rest in ["pins/", "tasks/", "declined/", "proofs/"] {
            let (kvs, _) = self.read_prefix(rest, revision).await?;
            changes.extend(kvs.iter().filter_map(|kv| self.decode_put(kv)));
        }
        Ok((changes, revision))
    }

    /// Every key under `prefix + rest`, in pages, at `revision` (0: the
    /// current one, returned).
    async fn read_prefix(&self, rest: &str, revision: i64) -> Result<(Vec<KeyValue>, i64)> {
        let start = self.key(rest).into_bytes();
        let end = range_end(&start);
        let mut from = start;
        let mut revision = revision;
        let mut kvs: Vec<KeyValue> = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
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

    /// Decode a put (and note it in the mirror); `None` for keys that are
    /// not the index's (bindings are only mirrored).
    fn decode_put(&self, kv: &KeyValue) -> Option<Change> {
        let key = kv.key_str().ok()?;
        let rest = key.strip_prefix(&self.prefix)?;
        if let Some(id) = rest.strip_prefix("peers/") {
            let peer: PeerId = id.parse().ok()?;
            match serde_json::from_slice::<PeerRecord>(kv.value()) {
                Ok(record) => {
                    let old = lock(&self.mirror).peers.insert(
                        peer,
                        PeerMeta {
                            lease: record.lease,
                            mod_revision: kv.mod_revision(),
                        },
                    );
                    Some(Change::Peer {
                        peer,
                        new_session: old.is_some_and(|o| o.lease != record.lease),
                        record,
                    })
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "etcd: unreadable peer record ignored");
                    None
                }
            }
        } else if let Some(id) = rest.strip_prefix("keys/") {
            let peer: PeerId = id.parse().ok()?;
            match serde_json::from_slice::<Binding>(kv.value()) {
                Ok(b) => {
                    lock(&self.mirror)
                        .keys
                        .insert(peer, (b, kv.value().to_vec()));
                }
                Err(e) => tracing::warn!(key, error = %e, "etcd: unreadable key binding ignored"),
            }
            None
        } else if let Some(path) = rest.strip_prefix("files/") {
            let (peer, file, name) = split_holding(path)?;
            let value = std::str::from_utf8(kv.value()).ok()?;
            let (size, replica) = match value.strip_suffix(" r") {
                Some(v) => (v, true),
                None => (value, false),
            };
            Some(Change::Holding {
                peer,
                file,
                name,
                size: size.parse().ok()?,
                replica,
            })
        } else if let Some(path) = rest.strip_prefix("pins/") {
            let (file, peer) = split_pair(path)?;
            let pin = json(key, kv.value())?;
            Some(Change::Pin {
                file: file.parse().ok()?,
                peer: peer.parse().ok()?,
                pin: Some(pin),
            })
        } else if let Some(path) = rest.strip_prefix("tasks/") {
            let (peer, file) = split_pair(path)?;
            let task = json(key, kv.value())?;
            Some(Change::Task {
                peer: peer.parse().ok()?,
                file: file.parse().ok()?,
                task: Some(task),
            })
        } else if let Some(path) = rest.strip_prefix("declined/") {
            let (peer, file) = split_pair(path)?;
            let decline = json(key, kv.value())?;
            Some(Change::Declined {
                peer: peer.parse().ok()?,
                file: file.parse().ok()?,
                decline: Some(decline),
            })
        } else if let Some(path) = rest.strip_prefix("proofs/") {
            let (peer, file) = split_pair(path)?;
            let proof = json(key, kv.value())?;
            Some(Change::Proof {
                peer: peer.parse().ok()?,
                file: file.parse().ok()?,
                proof: Some(proof),
            })
        } else {
            None
        }
    }

    fn decode_delete(&self, kv: &KeyValue) -> Option<Change> {
        let key = kv.key_str().ok()?;
        let rest = key.strip_prefix(&self.prefix)?;
        if let Some(id) = rest.strip_prefix("peers/") {
            let peer: PeerId = id.parse().ok()?;
            lock(&self.mirror).peers.remove(&peer);
            Some(Change::PeerGone(peer))
        } else if let Some(id) = rest.strip_prefix("keys/") {
            let peer: PeerId = id.parse().ok()?;
            lock(&self.mirror).keys.remove(&peer);
            None
        } else if let Some(path) = rest.strip_prefix("files/") {
            let (peer, file, name) = split_holding(path)?;
            Some(Change::HoldingGone { peer, file, name })
        } else if let Some(path) = rest.strip_prefix("pins/") {
            let (file, peer) = split_pair(path)?;
            Some(Change::Pin {
                file: file.parse().ok()?,
                peer: peer.parse().ok()?,
                pin: None,
            })
        } else if let Some(path) = rest.strip_prefix("tasks/") {
            let (peer, file) = split_pair(path)?;
            Some(Change::Task {
                peer: peer.parse().ok()?,
                file: file.parse().ok()?,
                task: None,
            })
        } else if let Some(path) = rest.strip_prefix("declined/") {
            let (peer, file) = split_pair(path)?;
            Some(Change::Declined {
                peer: peer.parse().ok()?,
                file: file.parse().ok()?,
                decline: None,
            })
        } else if let Some(path) = rest.strip_prefix("proofs/") {
            let (peer, file) = split_pair(path)?;
            Some(Change::Proof {
                peer: peer.parse().ok()?,
                file: file.parse().ok()?,
                proof: None,
            })
        } else {
            None
        }
    }

    /// Decode one watch answer's events in order, peers' puts first and
    /// peers' deletes last (a transaction's events may come in any key
    /// order).
    pub(crate) fn decode(&self, events: &[etcd_client::Event]) -> Vec<Change> {
        let (mut first, mut middle, mut last) = (Vec::new(), Vec::new(), Vec::new());
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let change = match ev.event_type() {
                EventType::Put => self.decode_put(kv),
                EventType::Delete => self.decode_delete(kv),
            };
            match change {
                Some(c @ Change::Peer { .. }) => first.push(c),
                Some(c @ Change::PeerGone(_)) => last.push(c),
                Some(c) => middle.push(c),
                None => {}
            }
        }
        first.extend(middle);
        first.extend(last);
        first
    }

    /// Start following changes from `revision`.
    pub(crate) async fn watch(&self, revision: i64) -> Result<etcd_client::WatchStream> {
        let prefix = self.prefix.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        self.retry("watch", |mut c| {
            let (prefix, opts) = (prefix.clone(), opts.clone());
            async move { c.watch(prefix, Some(opts)).await }
        })
        .await
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
                return Err(Error::Unavailable(format!(
                    "etcd: the write is committed (revision {revision}) but this central's watch has not caught up within {} s; retry the call here or at another central",
                    APPLY_TIMEOUT.as_secs()
                )));
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
        lock(&self.mirror).peers.get(peer).copied()
    }

    pub(crate) fn binding(&self, peer: &PeerId) -> Option<Binding> {
        lock(&self.mirror).keys.get(peer).map(|(b, _)| b.clone())
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

    /// Forget these bindings (each only if its peer is still absent).
    pub(crate) async fn forget_bindings(&self, peers: &[PeerId]) -> Result<usize> {
        let mut forgotten = 0;
        for p in peers {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.peer_key(p),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::delete(self.binding_key(p), None)]);
            let r = self
                .retry("forget key binding", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if r.succeeded() {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// A lease for a new session of `ttl`.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64> {
        let secs = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let r = self
            .retry("grant a lease", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(r.id())
    }

    /// The lease that spent nonces live on: valid at least as long as any
    /// nonce issued now.
    async fn nonce_lease(&self, valid: Duration) -> Result<i64> {
        let mut l = self.nonce_lease.lock().await;
        if let Some((id, at)) = *l
            && at.elapsed() < valid
        {
            return Ok(id);
        }
        let id = self.grant(valid * 2 + Duration::from_secs(5)).await?;
        *l = Some((id, Instant::now()));
        Ok(id)
    }

    /// Put `ops` in transactions of at most [`TXN_OPS`]; the revision of
    /// the last.
    async fn batches(&self, what: &str, ops: Vec<TxnOp>) -> Result<i64> {
        let mut revision = 0;
        for chunk in ops.chunks(TXN_OPS) {
            let txn = Txn::new().and_then(chunk.to_vec());
            let r = self
                .retry(what, |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            revision = r.header().map_or(revision, |h| h.revision());
        }
        Ok(revision)
    }

    fn put_holdings(
        &self,
        peer: &PeerId,
        lease: i64,
        files: &[peerdex_proto::convert::SharedFile],
    ) -> Vec<TxnOp> {
        files
            .iter()
            .map(|f| {
                TxnOp::put(
                    self.holding_key(peer, &f.id, f.name.as_str()),
                    if f.replica {
                        format!("{} r", f.size)
                    } else {
                        f.size.to_string()
                    },
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect()
    }

    /// A Join: see [`JoinWrite`]. On success, the revision to wait for and
    /// the lease the peer had before (revoked here, after the new
    /// inventory is written).
    pub(crate) async fn join(
        &self,
        w: JoinWrite<'_>,
        nonce_valid: Duration,
    ) -> Result<std::result::Result<i64, JoinConflict>> {
        let peer = w.peer;
        let lease = w.record.lease;
        let before = self.peer_meta(&peer);
        let known_binding = lock(&self.mirror)
            .keys
            .get(&peer)
            .map(|(_, raw)| raw.clone());
        let nonce_key = self.key(&format!("nonces/{}", hex::encode(w.nonce)));
        let nonce_lease = self.nonce_lease(nonce_valid).await?;
        let bkey = self.binding_key(&peer);
        let pkey = self.peer_key(&peer);
        let mut when = vec![
            Compare::create_revision(nonce_key.clone(), CompareOp::Equal, 0),
            match &known_binding {
                Some(raw) => Compare::value(bkey.clone(), CompareOp::Equal, raw.clone()),
                None => Compare::create_revision(bkey.clone(), CompareOp::Equal, 0),
            },
        ];
        when.push(match before {
            Some(m) => Compare::mod_revision(pkey.clone(), CompareOp::Equal, m.mod_revision),
            None => Compare::create_revision(pkey.clone(), CompareOp::Equal, 0),
        });
        let record = serde_json::to_vec(&w.record)
            .map_err(|e| Error::Internal(format!("encoding a peer record: {e}")))?;
        let binding = serde_json::to_vec(&w.binding)
            .map_err(|e| Error::Internal(format!("encoding a key binding: {e}")))?;
        let mut ops = vec![
            // A new session: its inventory changes count from 1 again.
            TxnOp::put(
                self.seq_key(&peer),
                seq_value(0),
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(
                nonce_key.clone(),
                "",
                Some(PutOptions::new().with_lease(nonce_lease)),
            ),
            TxnOp::put(bkey.clone(), binding, None),
            TxnOp::put(
                pkey.clone(),
                record,
                Some(PutOptions::new().with_lease(lease)),
            ),
        ];
        let mut rest = self.put_holdings(&peer, lease, w.files);
        let first = rest.len().min(TXN_OPS - ops.len());
        ops.extend(rest.drain(..first));
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else([TxnOp::get(nonce_key, None), TxnOp::get(bkey, None)]);
        // Not repeated on failure: a lost answer leaves the Join unknown,
        // and the peer joins again with a fresh nonce.
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("join", e))?;
        if !r.succeeded() {
            let mut found = r.op_responses().into_iter().map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            let (nonce, bound) = (found.next().flatten(), found.next().flatten());
            if nonce.is_some() {
                return Ok(Err(JoinConflict::NonceSpent));
            }
            if let Some(kv) = bound
                && let Ok(b) = serde_json::from_slice::<Binding>(kv.value())
                && b.key != w.binding.key
            {
                return Ok(Err(JoinConflict::OtherKey));
            }
            return Ok(Err(JoinConflict::Raced));
        }
        let mut revision = r.header().map_or(0, |h| h.revision());
        if !rest.is_empty() {
            revision = revision.max(self.batches("join", rest).await?);
        }
        if let Some(old) = before
            && old.lease != lease
        {
            match self.client.clone().lease_revoke(old.lease).await {
                Ok(r) => revision = revision.max(r.header().map_or(0, |h| h.revision())),
                Err(e) if e.to_string().contains("lease not found") => {}
                Err(e) => tracing::warn!(%peer, error = %e,
                    "etcd: revoking the previous lease failed; it ends at its TTL"),
            }
        }
        Ok(Ok(revision))
    }

    /// Renew a lease; false when etcd no longer has it.
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<bool> {
        // Opening the stream sends a keep-alive and reads its answer (an
        // error saying "lease not found" when etcd no longer has it).
        let r = self
            .retry("keep a lease alive", |mut c| async move {
                c.lease_keep_alive(lease).await.map(|_| ())
            })
            .await;
        match r {
            Ok(()) => Ok(true),
            Err(e) if lease_gone(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Apply a peer's inventory change `ops` as change number `seq` of its
    /// session (0: unordered). The first transaction applies only if the
    /// stored number is below `seq`, and stores `seq`; the rest follow in
    /// batches. A repeat of the last change (a retry whose answer was lost)
    /// writes its operations again, which changes nothing if they landed.
    async fn ordered(
        &self,
        what: &str,
        peer: &PeerId,
        lease: i64,
        seq: u64,
        ops: Vec<TxnOp>,
    ) -> Result<Ordered> {
        if seq == 0 {
            return Ok(Ordered::Applied(self.batches(what, ops).await?));
        }
        let key = self.seq_key(peer);
        let mut first = vec![TxnOp::put(
            key.clone(),
            seq_value(seq),
            Some(PutOptions::new().with_lease(lease)),
        )];
        let split = ops.len().min(TXN_OPS - 1);
        first.extend_from_slice(&ops[..split]);
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Less, seq_value(seq))])
            .and_then(first)
            .or_else([TxnOp::get(key, None)]);
        let r = self
            .retry(what, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if r.succeeded() {
            let mut revision = r.header().map_or(0, |h| h.revision());
            if split < ops.len() {
                revision = revision.max(self.batches(what, ops[split..].to_vec()).await?);
            }
            return Ok(Ordered::Applied(revision));
        }
        let stored = r.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse::<u64>().ok()),
            _ => None,
        });
        Ok(match stored {
            None => Ordered::Gone,
            Some(n) if n == seq => Ordered::Applied(self.batches(what, ops).await?),
            Some(n) => Ordered::Superseded(n),
        })
    }

    /// Add holdings under the peer's lease, as change `seq`.
    pub(crate) async fn publish(
        &self,
        peer: &PeerId,
        lease: i64,
        seq: u64,
        files: &[peerdex_proto::convert::SharedFile],
    ) -> Result<Ordered> {
        let ops = self.put_holdings(peer, lease, files);
        self.ordered("publish", peer, lease, seq, ops).await
    }

    /// Withdraw holdings (one name, or every name of a file), as change
    /// `seq`.
    pub(crate) async fn unpublish(
        &self,
        peer: &PeerId,
        lease: i64,
        seq: u64,
        refs: &[(FileId, Option<String>)],
    ) -> Result<Ordered> {
        let ops = refs
            .iter()
            .map(|(file, name)| match name {
                Some(n) => TxnOp::delete(self.holding_key(peer, file, n), None),
                None => TxnOp::delete(
                    self.key(&format!("files/{peer}/{}/", file.to_hex())),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            })
            .collect();
        self.ordered("unpublish", peer, lease, seq, ops).await
    }

    /// Set (`Some`) or remove `peer`'s pin of `file`; the revision.
    pub(crate) async fn set_pin(
        &self,
        file: &FileId,
        peer: &PeerId,
        pin: Option<&Pin>,
    ) -> Result<i64> {
        let key = self.key(&format!("pins/{}/{peer}", file.to_hex()));
        let op = match pin {
            Some(p) => TxnOp::put(
                key,
                serde_json::to_vec(p).map_err(|e| Error::Internal(e.to_string()))?,
                None,
            ),
            None => TxnOp::delete(key, None),
        };
        self.batches("pin", vec![op]).await
    }

    /// Write the planner's changes: tasks to give (each on its volunteer's
    /// lease) and to withdraw. A volunteer whose lease ended meanwhile is
    /// skipped (etcd dropped its tasks with it). The revision of the last
    /// write.
    pub(crate) async fn set_tasks(
        &self,
        give: &[(PeerId, FileId, Task)],
        withdraw: &[(PeerId, FileId)],
    ) -> Result<i64> {
        let mut revision = 0;
        let deletes: Vec<TxnOp> = withdraw
            .iter()
            .map(|(p, f)| TxnOp::delete(self.key(&format!("tasks/{p}/{}", f.to_hex())), None))
            .collect();
        if !deletes.is_empty() {
            revision = self.batches("withdraw tasks", deletes).await?;
        }
        for (p, f, t) in give {
            let Some(meta) = self.peer_meta(p) else {
                continue;
            };
            let op = TxnOp::put(
                self.key(&format!("tasks/{p}/{}", f.to_hex())),
                serde_json::to_vec(t).map_err(|e| Error::Internal(e.to_string()))?,
                Some(PutOptions::new().with_lease(meta.lease)),
            );
            match self.batches("give a task", vec![op]).await {
                Ok(r) => revision = revision.max(r),
                Err(e) if lease_gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(revision)
    }

    /// Record FETCHes `peer` declined, on its lease.
    pub(crate) async fn decline(
        &self,
        peer: &PeerId,
        lease: i64,
        declined: &[(FileId, Decline)],
    ) -> Result<i64> {
        let mut ops = Vec::with_capacity(declined.len());
        for (f, d) in declined {
            ops.push(TxnOp::put(
                self.key(&format!("declined/{peer}/{}", f.to_hex())),
                serde_json::to_vec(d).map_err(|e| Error::Internal(e.to_string()))?,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        self.batches("decline", ops).await
    }

    /// Record that the directory stands behind `peer`'s copy of `file`
    /// (`Some`, on the peer's lease), or no longer. A peer whose lease
    /// ended meanwhile is skipped. The revision of the write (0: none).
    pub(crate) async fn set_proof(
        &self,
        peer: &PeerId,
        file: &FileId,
        proof: Option<&Proof>,
    ) -> Result<i64> {
        let key = self.key(&format!("proofs/{peer}/{}", file.to_hex()));
        let op = match proof {
            Some(p) => {
                let Some(meta) = self.peer_meta(peer) else {
                    return Ok(0);
                };
                TxnOp::put(
                    key,
                    serde_json::to_vec(p).map_err(|e| Error::Internal(e.to_string()))?,
                    Some(PutOptions::new().with_lease(meta.lease)),
                )
            }
            None => TxnOp::delete(key, None),
        };
        match self.batches("proof", vec![op]).await {
            Err(e) if lease_gone(&e) => Ok(0),
            r => r,
        }
    }

    /// Forget old declines (they expire: a volunteer may have room again).
    pub(crate) async fn forget_declines(&self, gone: &[(PeerId, FileId)]) -> Result<i64> {
        let ops = gone
            .iter()
            .map(|(p, f)| TxnOp::delete(self.key(&format!("declined/{p}/{}", f.to_hex())), None))
            .collect();
        self.batches("forget declines", ops).await
    }

    /// End a peer's session: etcd deletes all it announced, at once.
    pub(crate) async fn leave(&self, lease: i64) -> Result<Option<i64>> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(r) => Ok(Some(r.header().map_or(0, |h| h.revision()))),
            Err(e) if e.to_string().contains("lease not found") => Ok(None),
            Err(e) => Err(unavailable("leave", e)),
        }
    }

    /// Compact etcd's history up to `revision` (the leader does this).
    pub(crate) async fn compact(&self, revision: i64) -> Result<()> {
        self.client
            .clone()
            .compact(revision, None)
            .await
            .map(|_| ())
            .or_else(|e| {
                if e.to_string().contains("compacted") {
                    Ok(())
                } else {
                    Err(unavailable("compact", e))
                }
            })
    }

    /// The current revision of the cluster.
    pub(crate) async fn revision(&self) -> Result<i64> {
        let key = self.key("secrets/nonce");
        let r = self
            .retry("read the revision", |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_keys_only())).await }
            })
            .await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }
}

/// What became of an ordered inventory change.
#[derive(Debug)]
pub(crate) enum Ordered {
    /// Applied (or applied again): the revision to wait for.
    Applied(i64),
    /// A later change (this number) was applied already: refused.
    Superseded(u64),
    /// The peer's session is gone.
    Gone,
}

/// A change number as stored: zero-padded, so etcd's byte order is the
/// numbers' order.
fn seq_value(seq: u64) -> String {
    format!("{seq:020}")
}

/// A call worth repeating at another member: no answer, or no leader.
fn transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// `<a>/<b>` of a pin, task or decline key.
fn split_pair(path: &str) -> Option<(&str, &str)> {
    let (a, b) = path.split_once('/')?;
    (!b.contains('/')).then_some((a, b))
}

/// A JSON value, or `None` (logged) when it does not read.
fn json<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    serde_json::from_slice(value)
        .inspect_err(|e| tracing::warn!(key, error = %e, "etcd: unreadable value ignored"))
        .ok()
}

/// `<peer>/<file>/<name>` of a holding key.
fn split_holding(path: &str) -> Option<(PeerId, FileId, String)> {
    let (peer, rest) = path.split_once('/')?;
    let (file, name) = rest.split_once('/')?;
    Some((peer.parse().ok()?, file.parse().ok()?, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_keys_split_with_slashes_in_names_kept() {
        let p = PeerId::new_random();
        let f = FileId::from_bytes([7; 32]);
        let (peer, file, name) = split_holding(&format!("{p}/{}/a b/c", f.to_hex())).unwrap();
        assert_eq!((peer, file, name.as_str()), (p, f, "a b/c"));
        assert!(split_holding("nope").is_none());
        assert!(split_holding(&format!("{p}/zz/x")).is_none());
    }

    #[test]
    fn range_end_is_the_next_prefix() {
        assert_eq!(range_end(b"/peerdex/"), b"/peerdex0".to_vec());
        assert_eq!(range_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(range_end(&[0xff]), vec![0]);
    }
}
