//! Runtime pieces shared by the peerdex servers (`central-server`,
//! `pserver`) and their tools (`peerdex`, `devnet`): one copy of each.
//!
//! * [`fs`] — atomic writes of small files, and of secrets (0600).
//! * [`keyfile`] — Ed25519 key files in the data folders.
//! * [`settings`] — the `.env` loader of every binary: a bad line is fatal,
//!   an unknown setting is reported with the closest known one.
//! * [`limit`] — token buckets per source address or peer (rate limits).
//! * [`tls`] — the one crypto provider (ring), and PEM certificate and key
//!   files read and checked at start with messages that name the setting.
//! * [`sync`] — a mutex lock that survives a poisoned mutex.
//! * [`signal`] — the shutdown signal (Ctrl+C or SIGTERM).
//!
//! The wire contract (gRPC, REST types, id parsers) is `peerdex-proto`'s.

pub mod fs;
pub mod keyfile;
pub mod limit;
pub mod settings;
pub mod signal;
pub mod sync;
pub mod tls;
