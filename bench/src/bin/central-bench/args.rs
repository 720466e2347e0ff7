//! The command line, the central's lease settings and the synthetic
//! index every measurement uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use peerdex_proto::PeerId;

#[derive(Debug, Parser)]
#[command(about = "Load generator for the peerdex central directory")]
pub(crate) struct Args {
    /// Use a running central at this address instead of starting one
    /// (RSS and restart are then not measured).
    #[arg(long)]
    pub(crate) addr: Option<SocketAddr>,
    /// Files to publish in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) files: u64,
    /// Peers to spread them over (files / peers per Join).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) peers: u64,
    /// Joins in flight while populating.
    #[arg(long, default_value_t = 16)]
    pub(crate) join_concurrency: usize,
    /// Requests in flight during the measurement.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Data dir for the started central (default: a fresh temp dir, deleted
    /// after; a given one is kept).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Only measure restarts (RSS after loading, restart-to-serving after
    /// SIGTERM and after kill -9) on the already populated `--data-dir` of
    /// an earlier run with the same `--files`.
    #[arg(long, requires = "data_dir", conflicts_with = "addr")]
    pub(crate) restarts_only: bool,
    /// Internal: run the trivial health server used as the baseline.
    #[arg(long, hide = true)]
    pub(crate) health_server: bool,
    /// Run this central-server binary instead of the one next to this
    /// bench (e.g. a build from before a change).
    #[arg(long)]
    pub(crate) central_bin: Option<PathBuf>,
    /// Concurrent Search callers during the flood measurement.
    #[arg(long, default_value_t = 8)]
    pub(crate) flood_clients: usize,
    /// Peers that expire together during the expiry measurement (0: skip).
    #[arg(long, default_value_t = 500)]
    pub(crate) expire_peers: u64,
    /// Files of each expiring peer.
    #[arg(long, default_value_t = 1000)]
    pub(crate) expire_files: u64,
    /// Only measure the cost of metrics (issue 15): two centrals, one with
    /// `CENTRAL_METRICS_ADDR` set and one without, populated alike; Locate
    /// on each in turn, this many rounds (order alternating), medians.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["addr", "restarts_only"])]
    pub(crate) metrics_ab: u32,
    /// Only compare the two stores (issue 12): one central on SQLite and
    /// one on etcd, populated alike (the Joins timed, etcd's database size
    /// read); Locate on each in turn, with the peers heartbeating and
    /// with their heartbeats paused, this many rounds (order alternating),
    /// medians; then the start-up of another etcd-backed central (its range
    /// read) at that size.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["addr", "restarts_only", "metrics_ab"])]
    pub(crate) etcd_ab: u32,
    /// The etcd cluster of `--etcd-ab` (comma-separated client URLs);
    /// default: a 3-member cluster on loopback started by the bench (etcd
    /// found like the tests find it: PATH, ETCD_BIN or the pinned wheel).
    #[arg(long)]
    pub(crate) etcd_endpoints: Option<String>,
}

/// Lease settings of the started central (the defaults).
pub(crate) const LEASE_TTL_SECS: u64 = 30;

pub(crate) const HEARTBEAT_SECS: u64 = 10;

/// Joined peers and their session tokens.
pub(crate) type Joined = Arc<std::sync::Mutex<Vec<(PeerId, String)>>>;

/// The Search shapes of the flood: the (a broad word and one that
/// matches nothing) and the costliest for a rarest-word-first search (two
/// broad words, an eighth of the names each, that never meet in a name).
pub(crate) const FLOOD_QUERIES: [&str; 2] = ["report aaaaa", "alpha blue"];

const ADJ: [&str; 8] = [
    "alpha", "blue", "quiet", "rapid", "golden", "misty", "north", "silver",
];

const NOUN: [&str; 8] = [
    "report", "river", "album", "backup", "lecture", "photo", "dataset", "movie",
];

const EXT: [&str; 4] = ["bin", "pdf", "mp3", "tar.gz"];

pub(crate) fn file_name(i: u64) -> String {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{}-{} {} {i}.{}",
        ADJ[(h >> 8) as usize % 8],
        NOUN[(h >> 16) as usize % 8],
        1990 + (h >> 24) % 35,
        EXT[(h >> 32) as usize % 4]
    )
}
