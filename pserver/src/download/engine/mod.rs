//! The verified download engine: what a download job or a replica fetch
//! runs once it knows the file and its holders.
//!
//! * `transport` — one HTTP Range request to a holder, with the network's
//!   credential and the shared download rate cap.
//! * `manifest` — the file's manifest, fetched from a holder and checked
//!   against the id before any chunk is trusted.
//! * `chunk` — one chunk fetched and verified against the manifest.
//! * `holder` — a holder's pipeline depth and what it delivered.
//! * `scheduler` — the swarm: chunks spread over the holders, stalls and
//!   liars struck off.
//! * `partial` — the partial file on disk (`data/partial/`), resumed after
//!   a restart, and its cap.
//! * `prefix` — the partial's verified prefix, and a reader that follows
//!   it while the download runs (a private file opens as it arrives).

pub(super) mod chunk;
pub(super) mod holder;
pub(super) mod manifest;
pub(super) mod partial;
pub(super) mod prefix;
pub(super) mod scheduler;
pub(super) mod transport;
