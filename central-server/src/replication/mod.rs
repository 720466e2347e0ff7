//! Replication: pins (a wanted number of live copies per file), the
//! planner that keeps them, the state the directory mirrors, and the
//! leader's rounds (audits, tasks).
//!
//! * [`planner`] — the pure planner ([`plan`]): state in, the whole set of
//!   open tasks out; the pin, proof and task types.
//! * [`mod@state`] — pins, tasks, declines and proofs as this central holds
//!   them in memory (mirrored from etcd, or kept beside SQLite), and the
//!   replication figures of answers.
//! * [`rounds`] — the leader's rounds: orphaned pins, audits, planning, the
//!   tasks written back through the directory.
//! * [`audit`] — one audit: a random chunk checked against the file id.

pub mod audit;
pub mod planner;
pub mod rounds;
pub mod state;

pub use planner::*;
pub(crate) use rounds::Replicator;
pub(crate) use state::Replicas;
