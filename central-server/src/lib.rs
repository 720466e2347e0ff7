//! The peerdex central directory: who holds which content, right now.
//!
//! A tonic gRPC server implementing `peerdex.v1.Directory` (Join, Heartbeat,
//! Publish, Unpublish, Locate, Search, Leave), plus the standard
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha), so stock
//! tools such as `grpcurl` and `grpc-health-probe` work against it.
//!
//! # Design
//!
//! * **The live index is in memory** (`index`): peers, contents and names
//!   are interned into slabs addressed by `u32`, with a sorted token map
//!   (lowercased words → names) so a word-prefix search is one range scan.
//!   Locate and Search never touch the disk. About 250 MiB at a million
//!   files (`bench/README.md`).
//! * **SQLite is the durable store** (`store`; rusqlite `bundled`, WAL,
//!   schema versioned with `PRAGMA user_version` and migrated on open,
//!   `synchronous=FULL`). Every Join/Publish/Unpublish/Leave and every lease
//!   expiry is one transaction, committed on the blocking pool *before* the
//!   RPC is acknowledged and before the index changes, so an acknowledged
//!   change survives `kill -9`. Heartbeats touch only memory. SQLite was
//!   chosen over redb because the durable part is relational (peers, files,
//!   holdings) and needs no full-text engine: search runs on the in-memory
//!   token map, so FTS5 is not used.
//! * **Restart**: everything is bulk-loaded with prepared statements (the
//!   file read through a memory map, the token map and the file id table
//!   built on other threads meanwhile) and every known peer gets one fresh
//!   lease (grace) to heartbeat again.
//! * **Leases**: Join returns a session token (only its BLAKE3 hash is kept);
//!   Heartbeat/Publish/Unpublish/Leave must carry it as
//!   `authorization: Bearer <token>`, and so must a re-Join of a peer whose
//!   lease is still live — nobody can act for, or hijack, a live peer. After
//!   expiry anyone may join with that id. A sweeper task removes expired
//!   peers; until it runs, expired peers are already filtered from answers.
//! * **Bounds** ([`Limits`]): decoded message size (RESOURCE_EXHAUSTED),
//!   name length (INVALID_ARGUMENT), entries per Join/Publish/Unpublish and
//!   per peer (RESOURCE_EXHAUSTED), results per search page and holders per
//!   located file (silently clamped to the maximum).
//! * **Under abuse** (issue 16): rate limits per source address (Join,
//!   Search) and per peer (Publish/Unpublish, and Search when the call
//!   names its peer), token buckets with a burst of 10 seconds' worth
//!   (`peerdex_common::limit`; RESOURCE_EXHAUSTED naming the setting, `retry-after`
//!   metadata); quotas on live peers per source address and holdings in
//!   total. A search costs at most `CENTRAL_SEARCH_BUDGET` units of work
//!   and runs off the async workers; the index is behind a fair read-write
//!   lock, heartbeats take its read side, and bulk changes apply in steps
//!   that hand the lock over (see `directory`). Measured in
//!   `bench/README.md` (issue 16).
//!
//! # Answers worth knowing
//!
//! * Locate of an unknown id or name is OK with an empty `files` list, as is
//!   Locate of a content whose holders all expired.
//! * Locate by name is case-sensitive and exact; it answers every content
//!   carrying that name, most-held first, at most [`Limits::max_page`] of
//!   them and at most half of `max_message_bytes` of encoded answer.
//! * Search is case-insensitive; every query word must be a prefix of a word
//!   of the name. Hits are `(name, file id)` pairs ranked by live holders of
//!   the content, then name. A limit above [`Limits::max_page`] is clamped.
//!   The rarest word drives the search; at most
//!   [`Limits::max_search_matches`] matches are ranked and at most
//!   [`Limits::search_budget`] units of work are spent, so a one-letter
//!   query answers quickly but partially, with `truncated = true`.
//! * Heartbeat of an unknown or expired peer is OK with `rejoin = true`;
//!   Publish/Unpublish of one is FAILED_PRECONDITION ("join again").
//! * Join and Publish apply what they can: an entry with a malformed id or
//!   name, or with a size that contradicts the same peer's claim for that
//!   id (earlier in the request, or already held), is listed in `refused`
//!   with the reason, and every other entry is applied. The call fails only
//!   for what concerns all of it (peer id, URL, token, entry counts, or more
//!   refusals than fit in an answer).
//! * The directory keeps no manifest, and sizes are claims: each holder's
//!   claim is kept, every claimant is a holder, and Locate and Search answer
//!   the size claimed by the most live holders (ties: the smaller). A peer
//!   lying about a size can mislabel a file until honest holders outnumber
//!   it; it cannot keep them out, and downloaders check sizes against the
//!   manifests holders serve.
//!
//! # Layout
//!
//! * `server` — [`run`]: open the directory, serve gRPC and metrics,
//!   drain, shut down.
//! * `rpc/` — the gRPC service, one file per group of RPCs (join and
//!   identity, leases, inventory, queries, pins, revocations, info): parse
//!   at the edge, admit, call the directory.
//! * `admission` — rate limits and quotas, with their own state.
//! * `directory/` — the one directory interface: the index and the
//!   replication state kept equal to their store, SQLite (`sqlite`) or etcd
//!   (`on_etcd`, `follow`), chosen once at start; changes in steps (`gate`).
//! * `reach/` — reachability at Join (the dial-back of the advertised
//!   URL) and the relay a peer nobody can reach is listed through.
//! * `replication/` — the planner, the replication state, the leader's
//!   rounds and audits.
//! * `link/` — links to other islands (`CENTRAL_LINKS`): their state and
//!   summaries, lookups forwarded to them under one deadline, and the
//!   `peerdex.v1.Link` service that answers them (mutual TLS, one hop).
//! * `index/` — the in-memory index (peers and leases, holdings, names and
//!   postings, queries, slabs, the bulk load used at restart).
//! * `store` — SQLite. `etcd/` — the etcd client, key schema, follower and
//!   writes. `snapshot` — the local snapshot of a directory on etcd (a
//!   restart loads it and follows the watch from its revision).
//! * `config/` — [`Config`], [`Limits`], their defaults, bounds and
//!   validation, and [`Args`]: the flags in sections that fill them.
//! * `tls` — [`TlsFiles`]: the certificate and key of the gRPC port.
//! * `identity`, `network` — Join nonces; private networks' credentials.
//! * `error` — [`Error`], typed, mapped to a gRPC status at the edge.
//! * `metrics`, `metering` — the Prometheus metrics on
//!   `CENTRAL_METRICS_ADDR`, and the layer that counts every call.
//! * `oversize` — maps tonic's oversized-message error to RESOURCE_EXHAUSTED.
//! * `main.rs` — flags/env/`.env`, signals, then [`run`].

mod admission;
pub mod config;
mod directory;
mod error;
mod etcd;
mod identity;
mod index;
mod leader;
pub mod link;
mod metering;
mod metrics;
mod network;
mod oversize;
mod reach;
mod replication;
mod rpc;
mod server;
mod snapshot;
mod store;
mod tls;
mod watch;

pub use config::{Args, Config, ConfigError, Limits};
pub use error::{Error, RETRY_AFTER, Result};
/// File name of the database inside [`Config::data_dir`] (tests open it to
/// check that an acknowledged change is already committed).
pub use store::DB_FILE;
pub use tls::{TlsFiles, read_ca_file};
/// Read TLS files the way the central does (`CENTRAL_TLS_*`).
pub mod tls_files {
    pub use crate::tls::{from_settings, load};
}

pub use server::{DRAIN_TIMEOUT, run, run_with_metrics};
