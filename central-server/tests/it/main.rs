//! The central's integration tests, in one test binary (one link instead
//! of four; their tests share the test threads instead of running binary
//! after binary):
//! * [`directory`] — the gRPC service in-process on 127.0.0.1:0, on SQLite
//!   and on etcd: the contract every store keeps.
//! * [`abuse`] — floods and quotas against the real binary.
//! * [`ha`] — the directory on etcd under faults (members and centrals
//!   killed, paused, restarted).
//! * [`metrics`] — `/metrics` read with the reference Prometheus parser.
//! * [`pages`] — inventories in pages on etcd (issue 27), read by the
//!   watch, a full read and a snapshot.
//! * [`sessions`] — liveness kept by the centrals on etcd (issue 27):
//!   heartbeats in memory, adoption, a killed central's peers.

mod abuse;
mod directory;
mod ha;
mod metrics;
mod pages;
mod sessions;
