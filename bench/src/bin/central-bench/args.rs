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
    /// Simulate an island (issue 27): a 3-member etcd and 3 centrals on it
    /// (or one SQLite central with `--store sqlite`), `--peers` peers
    /// holding `--files` files in total under realistic names, all
    /// heartbeating at the default interval from a few connections; prints
    /// Join time, memory per holding, etcd size, heartbeat rate, Locate p99
    /// quiet and heartbeating, start-up and restart times.
    #[arg(long, conflicts_with_all = ["addr", "restarts_only", "metrics_ab", "etcd_ab"])]
    pub(crate) island: bool,
    /// The store of `--island`.
    #[arg(long, value_enum, default_value_t = Store::Etcd, requires = "island")]
    pub(crate) store: Store,
    /// Connections per central that carry every peer's heartbeats in
    /// `--island` (each with up to 256 heartbeats in flight).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(crate) heartbeat_connections: u64,
    /// Print one JSON object instead of tables (`--island`).
    #[arg(long, requires = "island")]
    pub(crate) json: bool,
}

/// The directory store an island runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Store {
    Etcd,
    Sqlite,
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

/// Syllables of the synthetic words of [`track_name`] (32 of them: about
/// 33,000 distinct words of two or three syllables).
const SYLLABLES: [&str; 32] = [
    "ka", "lo", "ve", "num", "ri", "sa", "to", "mi", "dan", "el", "or", "ba", "li", "zu", "ne",
    "fa", "go", "ra", "tin", "po", "se", "mar", "ku", "de", "an", "vi", "ho", "ly", "ste", "ca",
    "ber", "mo",
];

/// A capitalised word of two or three syllables chosen by `h`.
fn word(h: u64) -> String {
    let n = 2 + (h & 1) as usize;
    let mut w = String::new();
    for k in 0..n {
        w.push_str(SYLLABLES[((h >> (1 + 5 * k)) & 31) as usize]);
    }
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A music library's file name, `Artist - Album/NN Title.ext` (about 40
/// bytes): 12 tracks an album, 4 albums an artist, each track of file `i`
/// its own content. Words repeat across names as in a real library (an
/// artist's name in all its files, common title words everywhere).
pub(crate) fn track_name(i: u64) -> String {
    let album = i / 12;
    let artist = album / 4;
    let (ha, hb, ht) = (mix(artist), mix(album ^ 0xA1B2), mix(i ^ 0x5EED));
    let title = if ht & 3 == 0 {
        word(ht >> 8)
    } else {
        format!("{} {}", word(ht >> 8), word(ht >> 24))
    };
    format!(
        "{} {} - {}/{:02} {title}.{}",
        word(ha),
        word(ha >> 16),
        word(hb),
        i % 12 + 1,
        ["flac", "mp3", "ogg", "m4a"][(hb >> 40) as usize % 4]
    )
}

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
