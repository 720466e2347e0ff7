//! The directory's Prometheus metrics, served at `/metrics` on their own
//! listener (`CENTRAL_METRICS_ADDR`; none by default, and then no recorder
//! exists and the RPCs skip every measurement).
//!
//! The recorder is owned by the server instance, not installed globally:
//! tests run centrals in-process, and each must report its own figures.
//! [`Metrics`] holds `metrics` handles registered on that recorder.
//!
//! The RPC path is the one hot path, so it touches no shared cache line:
//! a call costs two clock reads and three relaxed adds to counters of the
//! calling thread's own shard (`(rpc, code)` count, latency bucket, latency
//! sum). A scrape folds the shards: counts into the recorder's counters
//! (`Counter::absolute`), latencies rendered as a Prometheus histogram next
//! to the recorder's text. Feeding the exporter's own histogram per call
//! cost 5-9 % of the central's CPU per Locate in `central-bench
//! --metrics-ab` (shared atomics bounced between cores); see
//! `bench/README.md`. Gauges (peers, files, holdings) are read from the
//! index at each scrape, so the RPCs never touch them.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tonic::Code;

use crate::index::Stats;

/// The metrics of links between islands, and their help.
const LINK_METRICS: [(&str, &str); 4] = [
    (
        "peerdex_central_link_up",
        "1 while a linked island answers (its summary is current), by island",
    ),
    (
        "peerdex_central_link_queries_total",
        "Lookups this central sent to a linked island, by island, RPC and result (ok, error, timeout, invalid)",
    ),
    (
        "peerdex_central_link_served_total",
        "Calls this central answered for a linked island, by island and RPC",
    ),
    (
        "peerdex_central_link_summary_ids",
        "File ids in a linked island's latest summary, by island",
    ),
];

/// The RPCs of `peerdex.v1.Directory`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rpc {
    Join,
    Heartbeat,
    Publish,
    Unpublish,
    Locate,
    Search,
    Leave,
    Challenge,
    NetworkKeys,
    Info,
    Pin,
    Pins,
    /// Opening a Revocations stream (not its life).
    Revocations,
    /// Opening a Watch stream (not its life).
    Watch,
}

const RPCS: [&str; 14] = [
    "join",
    "heartbeat",
    "publish",
    "unpublish",
    "locate",
    "search",
    "leave",
    "challenge",
    "network_keys",
    "info",
    "pin",
    "pins",
    "revocations",
    "watch",
];

/// gRPC status codes as Prometheus label values (0..=16).
const CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// A refusal by a limit, labelled with the setting that caused it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    JoinRate,
    PublishRate,
    SearchRate,
    MaxPeersPerAddr,
    MaxFiles,
    /// More than one heartbeat of a peer per half heartbeat interval.
    HeartbeatRate,
}

const REFUSALS: [&[Label]; 6] = [
    &[Label::from_static_parts("setting", "CENTRAL_JOIN_RATE")],
    &[Label::from_static_parts("setting", "CENTRAL_PUBLISH_RATE")],
    &[Label::from_static_parts("setting", "CENTRAL_SEARCH_RATE")],
    &[Label::from_static_parts(
        "setting",
        "CENTRAL_MAX_PEERS_PER_ADDR",
    )],
    &[Label::from_static_parts("setting", "CENTRAL_MAX_FILES")],
    &[Label::from_static_parts(
        "setting",
        "CENTRAL_HEARTBEAT_SECS",
    )],
];

const REQUESTS: &str = "peerdex_central_requests_total";
const DURATION: &str = "peerdex_central_request_duration_seconds";
const SWEEP: &str = "peerdex_central_sweep_duration_seconds";
/// Upper bounds of the latency buckets, in seconds (100 µs to 10 s).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

/// Latency bucket bounds in nanoseconds (as [`BUCKETS`]).
const BUCKETS_NS: [u64; 16] = {
    let mut ns = [0; 16];
    let mut i = 0;
    while i < 16 {
        ns[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// One thread's share of the per-call figures, on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    requests: [[AtomicU64; 17]; RPCS.len()],
    /// Per RPC: calls with latency <= `BUCKETS_NS[i]` counted in `[i]`
    /// (not cumulative), slower ones in `[16]`.
    buckets: [[AtomicU64; 17]; RPCS.len()],
    sum_ns: [AtomicU64; RPCS.len()],
}

/// The shard of the calling thread (threads are spread round-robin).
fn shard_index(n: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    MINE.with(|m| *m % n)
}

/// The metrics of one central.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The link metrics were described (once, at their first use).
    described_links: std::sync::atomic::AtomicBool,
    shards: Box<[Shard]>,
    requests: [[OnceLock<Counter>; 17]; RPCS.len()],
    refusals: [Counter; 6],
    leases_expired: Counter,
    search_truncated: Counter,
    sweep_duration: Histogram,
    peers: Gauge,
    files: Gauge,
    names: Gauge,
    holdings: Gauge,
    leader: Gauge,
    draining: Gauge,
    revision: Gauge,
    pins: Gauge,
    /// Pinned files by state: ok, under, lost.
    pinned: [Gauge; 3],
    tasks_open: Gauge,
    declines: Gauge,
    /// Replica tasks given by this central's planner: fetch, drop.
    tasks_given: [Counter; 2],
    /// Pinned files short of copies that no volunteer has room for.
    unplaced: Gauge,
    /// Copies the directory stands behind (fetched at its request, or
    /// audited).
    proofs: Gauge,
    /// Audits by this central (while it leads): pass, fail.
    audits: [Counter; 2],
    /// Claims dropped after failed audits.
    claims_dropped: Counter,
    /// Pins ended because their owner was gone for CENTRAL_PIN_ORPHAN_DAYS.
    orphan_pins_ended: Counter,
    /// Subscriptions of the Watch streams open here.
    watches: Gauge,
    /// Events pushed on Watch streams (read from the registry at scrape).
    watch_events: Counter,
}

/// Wanted files at this central, read at each scrape.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Watching {
    /// Subscriptions (file ids, names, queries) of the open streams.
    pub subscriptions: usize,
    /// Events pushed since start.
    pub events: u64,
}

/// Replication figures, read at each scrape.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Replication {
    pub pins: usize,
    /// Pinned files with at least the copies wanted, with fewer, with none.
    pub ok: usize,
    pub under: usize,
    pub lost: usize,
    pub tasks_open: usize,
    pub unplaced: usize,
    pub proofs: usize,
    /// Declined FETCHes kept (each keeps that volunteer out of that file
    /// for a while).
    pub declines: usize,
}

const PINNED_STATES: [&[Label]; 3] = [
    &[Label::from_static_parts("state", "ok")],
    &[Label::from_static_parts("state", "under")],
    &[Label::from_static_parts("state", "lost")],
];
const AUDIT_RESULTS: [&[Label]; 2] = [
    &[Label::from_static_parts("result", "pass")],
    &[Label::from_static_parts("result", "fail")],
];
const TASK_ACTIONS: [&[Label]; 2] = [
    &[Label::from_static_parts("action", "fetch")],
    &[Label::from_static_parts("action", "drop")],
];

/// This central's part in the directory, as the metrics show it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Role {
    pub leader: bool,
    pub draining: bool,
    /// The etcd revision the index reflects (0 on SQLite).
    pub revision: i64,
}

fn describe(r: &PrometheusRecorder, name: &'static str, unit: Option<Unit>, help: &'static str) {
    let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
    // One description per name whatever its kind: the exporter keeps them
    // in one table.
    r.describe_counter(name, unit, help);
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let r = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(SWEEP.into()), BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            // Only fails on an empty bucket list, which BUCKETS is not.
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        describe(
            &r,
            REQUESTS,
            None,
            "Directory RPCs answered, by RPC and gRPC status code",
        );
        describe(
            &r,
            SWEEP,
            Some(Unit::Seconds),
            "Time one lease sweep took (removing expired peers)",
        );
        let counter = |name: &'static str, labels: &'static [Label], help: &'static str| {
            describe(&r, name, None, help);
            r.register_counter(&Key::from_static_parts(name, labels), &META)
        };
        let gauge = |name: &'static str, help: &'static str| {
            describe(&r, name, None, help);
            r.register_gauge(&Key::from_static_name(name), &META)
        };
        let refusal = |i: usize| {
            counter(
                "peerdex_central_refusals_total",
                REFUSALS[i],
                "Calls refused by a rate limit or quota (RESOURCE_EXHAUSTED), by the setting that refused them",
            )
        };
        let shards = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16));
        Self {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            requests: Default::default(),
            refusals: std::array::from_fn(refusal),
            leases_expired: counter(
                "peerdex_central_leases_expired_total",
                &[],
                "Peers removed because their lease ended without a heartbeat",
            ),
            search_truncated: counter(
                "peerdex_central_search_truncated_total",
                &[],
                "Searches answered partially: the query spent CENTRAL_SEARCH_BUDGET",
            ),
            sweep_duration: r.register_histogram(&Key::from_static_name(SWEEP), &META),
            peers: gauge(
                "peerdex_central_peers",
                "Peers with a live lease in the directory",
            ),
            files: gauge(
                "peerdex_central_files",
                "Distinct file ids in the directory",
            ),
            names: gauge(
                "peerdex_central_names",
                "Distinct file names in the directory",
            ),
            holdings: gauge(
                "peerdex_central_holdings",
                "Holdings: (peer, file, name) entries, bounded by CENTRAL_MAX_FILES",
            ),
            leader: gauge(
                "peerdex_central_leader",
                "1 while this central leads the directory (a single central on SQLite always does)",
            ),
            draining: gauge(
                "peerdex_central_draining",
                "1 while this central shuts down, telling its peers to move",
            ),
            revision: gauge(
                "peerdex_central_etcd_revision",
                "The etcd revision this central's index reflects (0 on SQLite)",
            ),
            pins: gauge(
                "peerdex_central_pins",
                "Pins: (file, peer) requests for a number of live copies",
            ),
            pinned: std::array::from_fn(|i| {
                describe(
                    &r,
                    "peerdex_central_pinned_files",
                    None,
                    "Pinned files by state: ok (live copies >= wanted), under (fewer: being restored), lost (no live copy)",
                );
                r.register_gauge(
                    &Key::from_static_parts("peerdex_central_pinned_files", PINNED_STATES[i]),
                    &META,
                )
            }),
            tasks_open: gauge(
                "peerdex_central_replica_tasks_open",
                "Replica tasks open (volunteers asked to fetch or drop a copy, not done yet)",
            ),
            declines: gauge(
                "peerdex_central_replica_declines",
                "Declined replica fetches kept: one per (volunteer, file) the directory asked it to fetch; bounded",
            ),
            tasks_given: std::array::from_fn(|i| {
                counter(
                    "peerdex_central_replica_tasks_total",
                    TASK_ACTIONS[i],
                    "Replica tasks given by this central's planner (while it leads), by action",
                )
            }),
            unplaced: gauge(
                "peerdex_central_pinned_files_unplaced",
                "Pinned files short of copies that no volunteer has room for (the leader's planner)",
            ),
            proofs: gauge(
                "peerdex_central_proven_copies",
                "Copies the directory stands behind: fetched at its request, or passed an audit",
            ),
            audits: std::array::from_fn(|i| {
                counter(
                    "peerdex_central_audits_total",
                    AUDIT_RESULTS[i],
                    "Audits of claimed copies (a random chunk checked against the file id) by this central while it leads, by result",
                )
            }),
            claims_dropped: counter(
                "peerdex_central_claims_dropped_total",
                &[],
                "Claims to hold a file dropped from the directory after repeated failed audits",
            ),
            orphan_pins_ended: counter(
                "peerdex_central_orphan_pins_ended_total",
                &[],
                "Pins ended because their owner had no lease for CENTRAL_PIN_ORPHAN_DAYS",
            ),
            watches: gauge(
                "peerdex_central_watches",
                "Subscriptions (file ids, exact names, queries) of the Watch streams open at this central",
            ),
            watch_events: counter(
                "peerdex_central_watch_events_total",
                &[],
                "Events pushed on Watch streams: a holder appeared for a watched id, name or query",
            ),
            handle: r.handle(),
            described_links: Default::default(),
            recorder: r,
        }
    }

    fn request(&self, rpc: usize, code: usize) -> &Counter {
        self.requests[rpc][code].get_or_init(|| {
            let labels = vec![
                Label::from_static_parts("rpc", RPCS[rpc]),
                Label::from_static_parts("code", CODES[code]),
            ];
            self.recorder
                .register_counter(&Key::from_parts(REQUESTS, labels), &META)
        })
    }

    /// One RPC answered with `code` after `took`.
    pub(crate) fn observe(&self, rpc: Rpc, code: Code, took: Duration) {
        let (rpc, code) = (rpc as usize, (code as usize).min(CODES.len() - 1));
        let s = &self.shards[shard_index(self.shards.len())];
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_NS.iter().position(|b| ns <= *b).unwrap_or(16);
        s.requests[rpc][code].fetch_add(1, Ordering::Relaxed);
        s.buckets[rpc][bucket].fetch_add(1, Ordering::Relaxed);
        s.sum_ns[rpc].fetch_add(ns, Ordering::Relaxed);
    }

    /// Fold the shards: request counts into the recorder's counters, and
    /// the latency histograms as Prometheus text.
    fn fold(&self) -> String {
        let total = |f: &dyn Fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum()
        };
        for rpc in 0..RPCS.len() {
            for code in 0..CODES.len() {
                let n = total(&|s| &s.requests[rpc][code]);
                if n > 0 || code == 0 {
                    self.request(rpc, code).absolute(n);
                }
            }
        }
        let mut out = format!(
            "# HELP {DURATION} Time to answer a directory RPC, by RPC\n# TYPE {DURATION} histogram\n"
        );
        for (rpc, name) in RPCS.iter().enumerate() {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += total(&|s| &s.buckets[rpc][i]);
                let _ = writeln!(
                    out,
                    "{DURATION}_bucket{{rpc=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += total(&|s| &s.buckets[rpc][16]);
            let sum = total(&|s| &s.sum_ns[rpc]) as f64 / 1e9;
            let _ = writeln!(
                out,
                "{DURATION}_bucket{{rpc=\"{name}\",le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(out, "{DURATION}_sum{{rpc=\"{name}\"}} {sum}");
            let _ = writeln!(out, "{DURATION}_count{{rpc=\"{name}\"}} {cumulative}");
        }
        out
    }

    pub(crate) fn refused(&self, why: Refusal) {
        self.refusals[why as usize].increment(1);
    }

    pub(crate) fn search_truncated(&self) {
        self.search_truncated.increment(1);
    }

    /// A sweep removed `expired` peers in `took`.
    pub(crate) fn swept(&self, expired: usize, took: Duration) {
        self.leases_expired.increment(expired as u64);
        self.sweep_duration.record(took.as_secs_f64());
    }

    /// Fold recorded histogram samples into their buckets (bounds memory
    /// between scrapes).
    pub(crate) fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The planner gave a task (`fetch`: true, `drop`: false).
    pub(crate) fn task_given(&self, fetch: bool) {
        self.tasks_given[usize::from(!fetch)].increment(1);
    }

    /// An audit answered: passed or failed.
    pub(crate) fn audit(&self, pass: bool) {
        self.audits[usize::from(!pass)].increment(1);
    }

    pub(crate) fn claim_dropped(&self) {
        self.claims_dropped.increment(1);
    }

    pub(crate) fn pin_orphaned(&self) {
        self.orphan_pins_ended.increment(1);
    }

    fn labelled(&self, name: &'static str, labels: Vec<Label>) -> Key {
        if !self.described_links.swap(true, Ordering::Relaxed) {
            for (n, h) in LINK_METRICS {
                describe(&self.recorder, n, None, h);
            }
        }
        Key::from_parts(name, labels)
    }

    /// A gauge of one linked island (its name is one of a few: the
    /// islands of `CENTRAL_LINKS`).
    pub(crate) fn link_gauge(&self, name: &'static str, island: &str, value: f64) {
        let key = self.labelled(name, vec![Label::new("island", island.to_owned())]);
        self.recorder.register_gauge(&key, &META).set(value);
    }

    /// A query this central sent to `island`, by result (`ok`, `error`,
    /// `timeout`, `invalid`).
    pub(crate) fn link_query(&self, island: &str, rpc: &'static str, result: &'static str) {
        let key = self.labelled(
            "peerdex_central_link_queries_total",
            vec![
                Label::new("island", island.to_owned()),
                Label::from_static_parts("rpc", rpc),
                Label::from_static_parts("result", result),
            ],
        );
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// A call this central answered for a linked island.
    pub(crate) fn link_served(&self, island: &str, rpc: &'static str) {
        let key = self.labelled(
            "peerdex_central_link_served_total",
            vec![
                Label::new("island", island.to_owned()),
                Label::from_static_parts("rpc", rpc),
            ],
        );
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// The Prometheus text exposition, gauges set from `stats`.
    pub(crate) fn render(
        &self,
        stats: Stats,
        holdings: usize,
        role: Role,
        rep: Replication,
        watching: Watching,
    ) -> String {
        self.watches.set(watching.subscriptions as f64);
        self.watch_events.absolute(watching.events);
        self.pins.set(rep.pins as f64);
        for (g, n) in self.pinned.iter().zip([rep.ok, rep.under, rep.lost]) {
            g.set(n as f64);
        }
        self.tasks_open.set(rep.tasks_open as f64);
        self.unplaced.set(rep.unplaced as f64);
        self.proofs.set(rep.proofs as f64);
        self.declines.set(rep.declines as f64);
        self.leader.set(f64::from(u8::from(role.leader)));
        self.draining.set(f64::from(u8::from(role.draining)));
        self.revision.set(role.revision as f64);
        self.peers.set(stats.peers as f64);
        self.files.set(stats.files as f64);
        self.names.set(stats.names as f64);
        self.holdings.set(holdings as f64);
        let histograms = self.fold();
        let mut text = self.handle.render();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&histograms);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_in_tonic_order() {
        assert_eq!(CODES[Code::InvalidArgument as usize], "invalid_argument");
        assert_eq!(
            CODES[Code::ResourceExhausted as usize],
            "resource_exhausted"
        );
        assert_eq!(CODES[Code::Unauthenticated as usize], "unauthenticated");
        assert_eq!(CODES[Code::DataLoss as usize], "data_loss");
    }

    #[test]
    fn two_instances_keep_their_own_figures() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.observe(Rpc::Locate, Code::Ok, Duration::from_millis(1));
        a.observe(Rpc::Locate, Code::InvalidArgument, Duration::from_millis(1));
        let s = Stats {
            peers: 1,
            files: 2,
            names: 3,
        };
        let (ta, tb) = (
            a.render(
                s,
                4,
                Role::default(),
                Replication::default(),
                Watching {
                    subscriptions: 5,
                    events: 6,
                },
            ),
            b.render(
                Stats {
                    peers: 0,
                    files: 0,
                    names: 0,
                },
                0,
                Role::default(),
                Replication::default(),
                Watching::default(),
            ),
        );
        assert!(ta.contains("peerdex_central_watches 5\n"), "{ta}");
        assert!(
            ta.contains("peerdex_central_watch_events_total 6\n"),
            "{ta}"
        );
        assert!(
            ta.contains(
                "peerdex_central_requests_total{rpc=\"locate\",code=\"invalid_argument\"} 1\n"
            ),
            "{ta}"
        );
        assert!(ta.contains("peerdex_central_holdings 4\n"), "{ta}");
        assert!(
            tb.contains("peerdex_central_requests_total{rpc=\"locate\",code=\"ok\"} 0\n"),
            "{tb}"
        );
        assert!(!tb.contains("invalid_argument"), "{tb}");
    }
}
