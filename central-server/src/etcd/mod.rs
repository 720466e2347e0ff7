//! The directory on etcd (`CENTRAL_ETCD_ENDPOINTS`): any number of
//! centrals serve one directory, all active.
//!
//! # Data model
//!
//! Under the prefix (`CENTRAL_ETCD_PREFIX`, default `/peerdex/`):
//!
//! * `peers/<peer id>` → [`PeerRecord`] (JSON: URL, BLAKE3 hash of the
//!   session token, etcd lease, the lease of the central that keeps the
//!   session, source address, load), attached to the peer's etcd lease;
//! * `inv/<peer id>/<change>.<part>` → a page of the peer's holdings
//!   (compact binary rows, deflated, up to about 64 KiB of rows: see
//!   `pages`), written by its Join (change 0) and by big Publishes
//!   (change = the Publish's number), attached to the same lease, so that
//!   when the peer stops
//!   heartbeating etcd itself drops everything it announced, in one
//!   revision (issue 27: a key per holding made a 268 MB database and a
//!   minutes-long Join per 1M holdings);
//! * `files/<peer id>/<file id>/<name>` → one holding published while
//!   live (a small Publish), or written by an older central: the size
//!   this peer claims (followed by ` r` for a replica), on the lease;
//! * `inv/<peer id>/gone/<file id>[/<name>]` → empty, on the lease: a
//!   withdrawal of one name (or all names) of a file, which may live in
//!   a page. A peer's inventory is its pages, holding keys and tombstones
//!   replayed in revision order; a new Join deletes the old holding keys
//!   and its pages replace the old ones (which go with the old lease);
//! * `seq/<peer id>` → the number of the last inventory change applied
//!   for the peer's session (zero-padded, see [`Ordered`]), on its lease;
//! * `pins/<file id>/<peer id>` → a [`Pin`](crate::replication::Pin)
//!   (JSON), no lease: pins are the directory's state and outlive the
//!   peer that set them;
//! * `tasks/<peer id>/<file id>` → a replica
//!   [`Task`](crate::replication::Task) (JSON) for that volunteer, written
//!   by the leader's planner, attached to the volunteer's lease (every
//!   central hands it out in Heartbeat answers);
//! * `declined/<peer id>/<file id>` → a [`Decline`] (JSON): a FETCH the
//!   volunteer would not do, attached to its lease, read by the planner;
//! * `proofs/<peer id>/<file id>` → a
//!   [`Proof`](crate::replication::Proof) (JSON): a copy the directory
//!   stands behind (fetched at its request, or audited), on the holder's
//!   lease, written by the leader;
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
//! A Heartbeat stays in the memory of the central that keeps the peer's
//! session (the record's `owner`, see `sessions`); a heartbeat at another
//! central adopts the session with one write of the record. Inventories
//! bigger than one transaction ([`TXN_OPS`](writes::TXN_OPS) operations, etcd's default
//! `--max-txn-ops`, or [`TXN_BYTES`](writes::TXN_BYTES) of pages) are
//! written in batches under the same lease.
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
//!
//! # Layout
//!
//! * `mod.rs` — [`Etcd`], the handle every part below adds methods to.
//! * `client` — connecting, retries with backoff under a deadline, what
//!   an etcd failure becomes ([`lease_gone`]); leases, shared secrets,
//!   revision and compaction.
//! * `schema` — every key layout and stored value, encoded and read back.
//! * `pages` — the binary format of an inventory page.
//! * `follow` — the snapshot read, the watch, decoding into [`Change`],
//!   the mirror (leases, bindings) and the applied revision.
//! * `sessions` — this central's lease, sessions kept in memory: adoption,
//!   renewal of a peer's lease, the end of a session.
//! * `writes` — Join, ordered inventory changes, Leave, pins, proofs,
//!   tasks, declines, forgotten bindings.

mod client;
mod follow;
mod pages;
mod schema;
mod sessions;
mod writes;

use std::sync::Mutex;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::time::Instant;

pub use client::EtcdError;
pub(crate) use client::lease_gone;
pub(crate) use follow::{Change, PeerMeta};
pub(crate) use schema::{Binding, Decline, PeerRecord};
pub(crate) use sessions::Adopted;
pub(crate) use writes::{JoinConflict, JoinWrite, Ordered};

/// The directory's handle on etcd: two clients (one with a deadline per
/// call, one for calls that wait), the key prefix, and what the watch
/// told this central (see `follow`).
pub(crate) struct Etcd {
    client: Client,
    /// For calls that wait without a deadline (a campaign).
    waiting: Client,
    prefix: String,
    /// Write inventories in pages (`CENTRAL_ETCD_PAGES`; a key per holding
    /// otherwise, which centrals from before pages read).
    pages: bool,
    endpoints: String,
    mirror: Mutex<follow::Mirror>,
    applied: watch::Sender<i64>,
    /// The revision of the last `fence` write (see [`Etcd::wait_applied`]).
    fenced: tokio::sync::Mutex<i64>,
    /// The shared lease of spent nonces, and when it was granted.
    nonce_lease: tokio::sync::Mutex<Option<(i64, Instant)>>,
    /// `CENTRAL_LEASE_TTL_SECS`: this central's own lease, and how long a
    /// session it keeps lasts without a heartbeat.
    lease_ttl: std::time::Duration,
    /// This central's own lease: the sessions it keeps name it (see
    /// `sessions`).
    own_lease: std::sync::atomic::AtomicI64,
    /// The sessions this central keeps: when each ends, when its peer's
    /// etcd lease is due a renewal. Not the index's clock: a central that
    /// was paused must not turn away, by its own stale clock, a peer
    /// another central adopted meanwhile.
    kept: Mutex<std::collections::HashMap<peerdex_proto::PeerId, sessions::Kept>>,
}
