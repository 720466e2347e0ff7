//! This PServer's Prometheus metrics (`GET /metrics` on the control API).
//!
//! Each PServer owns its recorder: tests run several PServers in one
//! process, so the global recorder of the `metrics` facade would mix their
//! figures. [`Metrics`] holds `metrics` handles registered on an
//! instance-owned [`PrometheusRecorder`] (never the global macros), and
//! renders that recorder's handle. The figures `peerdex status` also shows
//! (bytes sent/received, lease renewals) are plain atomics, copied into
//! their counters at each scrape; gauges (shared files, active transfers)
//! are read from their owners at each scrape. A hot path pays one relaxed
//! atomic add per 64 KiB slice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Key, KeyName, Label, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Lease renewals by result: the central renewed the lease (`ok`), asked
/// us to join again (`rejoin`), or could not be reached (`error`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Renewal {
    Ok,
    Rejoin,
    Error,
}

/// How a replica FETCH task ended: `done` (fetched, verified,
/// announced), `refused` (declined before fetching: quota, disk, the
/// user's own file), `failed` (the download failed every attempt, then
/// declined), `cancelled` (a DROP or shutdown stopped it).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReplicaResult {
    Done,
    Refused,
    Failed,
    Cancelled,
}

/// Who answered one of the user's lookups (locate, search).
#[derive(Debug, Clone, Copy)]
pub(crate) enum AnsweredBy {
    Neighbour,
    Central,
    None,
}

/// What a scrape reads from the rest of the daemon.
pub(crate) struct Live {
    pub shared_files: usize,
    pub shared_bytes: u64,
    pub uploads_active: u32,
    pub downloads_active: u32,
    pub replicas: usize,
    pub replica_bytes: u64,
    pub replica_quota_bytes: u64,
    pub replica_fetches_active: usize,
    /// Wants by state: waiting, matched, ambiguous, downloading, done.
    pub wants: [usize; 5],
    /// Peers behind NAT relayed through us now.
    pub relay_peers: usize,
    /// Whether the directory's last dial-back reached us.
    pub reachable: bool,
}

const WANT_STATE: [&[Label]; 5] = [
    &[Label::from_static_parts("state", "waiting")],
    &[Label::from_static_parts("state", "matched")],
    &[Label::from_static_parts("state", "ambiguous")],
    &[Label::from_static_parts("state", "downloading")],
    &[Label::from_static_parts("state", "done")],
];
const POST_RESULT: [&[Label]; 2] = [
    &[Label::from_static_parts("result", "ok")],
    &[Label::from_static_parts("result", "failed")],
];

/// The metrics of one PServer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

struct Inner {
    handle: PrometheusHandle,
    // Read by `peerdex status` too.
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    renewals: [AtomicU64; 3],
    bytes_sent_c: Counter,
    bytes_received_c: Counter,
    renewals_c: [Counter; 3],
    // Only in /metrics.
    chunks_failed: Counter,
    uploads_refused: Counter,
    slow_readers_cut: Counter,
    neighbour_refused: Counter,
    lookups: [Counter; 3],
    downloads_finished: [Counter; 3],
    replica_fetches: [Counter; 4],
    replica_drops: Counter,
    replicas: Gauge,
    replica_bytes: Gauge,
    replica_quota_bytes: Gauge,
    replica_fetches_active: Gauge,
    shared_files: Gauge,
    shared_bytes: Gauge,
    uploads_active: Gauge,
    downloads_active: Gauge,
    wants: [Gauge; 5],
    want_events: Counter,
    notify_posts: [Counter; 2],
    relay_bytes: Counter,
    callback_transfers: Counter,
    relay_peers: Gauge,
    reachable: Gauge,
}

static META: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);

const RENEWAL: [&[Label]; 3] = [
    &[Label::from_static_parts("result", "ok")],
    &[Label::from_static_parts("result", "rejoin")],
    &[Label::from_static_parts("result", "error")],
];
const REPLICA_RESULT: [&[Label]; 4] = [
    &[Label::from_static_parts("result", "done")],
    &[Label::from_static_parts("result", "refused")],
    &[Label::from_static_parts("result", "failed")],
    &[Label::from_static_parts("result", "cancelled")],
];
const ANSWERED_BY: [&[Label]; 3] = [
    &[Label::from_static_parts("answered_by", "neighbour")],
    &[Label::from_static_parts("answered_by", "central")],
    &[Label::from_static_parts("answered_by", "none")],
];
const FINISHED: [&[Label]; 3] = [
    &[Label::from_static_parts("state", "done")],
    &[Label::from_static_parts("state", "failed")],
    &[Label::from_static_parts("state", "cancelled")],
];

fn describe(r: &PrometheusRecorder, name: &'static str, unit: Option<Unit>, help: &'static str) {
    r.describe_counter(
        KeyName::from_const_str(name),
        unit,
        SharedString::const_str(help),
    );
}

fn counter(
    r: &PrometheusRecorder,
    name: &'static str,
    labels: &'static [Label],
    unit: Option<Unit>,
    help: &'static str,
) -> Counter {
    describe(r, name, unit, help);
    r.register_counter(&Key::from_static_parts(name, labels), &META)
}

fn gauge(
    r: &PrometheusRecorder,
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
) -> Gauge {
    r.describe_gauge(
        KeyName::from_const_str(name),
        unit,
        SharedString::const_str(help),
    );
    r.register_gauge(&Key::from_static_name(name), &META)
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let r = PrometheusBuilder::new().build_recorder();
        let renewal = |i: usize| {
            counter(
                &r,
                "peerdex_pserver_lease_renewals_total",
                RENEWAL[i],
                None,
                "Lease renewals (heartbeats) by result: ok, rejoin (the central asked us to join again), error (no answer)",
            )
        };
        let finished = |i: usize| {
            counter(
                &r,
                "peerdex_pserver_downloads_finished_total",
                FINISHED[i],
                None,
                "Download jobs finished, by state (done, failed, cancelled)",
            )
        };
        let replica = |i: usize| {
            counter(
                &r,
                "peerdex_pserver_replica_fetches_total",
                REPLICA_RESULT[i],
                None,
                "Replica FETCH tasks of the directory by outcome: done (fetched, verified, announced), refused (declined at once: quota, disk, the user's own file), failed (the download failed every attempt; declined), cancelled (a DROP or shutdown)",
            )
        };
        let lookup = |i: usize| {
            counter(
                &r,
                "peerdex_pserver_lookups_total",
                ANSWERED_BY[i],
                None,
                "Locates and searches of this peer's user, by who answered: neighbour, central (no neighbour answered, or every one refused: 429), none (the lookup failed: every source refused, or an error)",
            )
        };
        let inner = Inner {
            lookups: [lookup(0), lookup(1), lookup(2)],
            replica_fetches: [replica(0), replica(1), replica(2), replica(3)],
            replica_drops: counter(
                &r,
                "peerdex_pserver_replica_drops_total",
                &[],
                None,
                "Replicas deleted at the directory's request (DROP tasks)",
            ),
            replicas: gauge(
                &r,
                "peerdex_pserver_replicas",
                None,
                "Replicas held for the directory",
            ),
            replica_bytes: gauge(
                &r,
                "peerdex_pserver_replica_bytes",
                Some(Unit::Bytes),
                "Bytes of the replicas held (counted against PSERVER_REPLICA_QUOTA_BYTES)",
            ),
            replica_quota_bytes: gauge(
                &r,
                "peerdex_pserver_replica_quota_bytes",
                Some(Unit::Bytes),
                "Space offered for replicas (PSERVER_REPLICA_QUOTA_BYTES)",
            ),
            replica_fetches_active: gauge(
                &r,
                "peerdex_pserver_replica_fetches_active",
                None,
                "Replica fetches in progress",
            ),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            renewals: Default::default(),
            bytes_sent_c: counter(
                &r,
                "peerdex_pserver_bytes_sent_total",
                &[],
                Some(Unit::Bytes),
                "File bytes handed to the peer API's connections (uploads to other peers)",
            ),
            bytes_received_c: counter(
                &r,
                "peerdex_pserver_bytes_received_total",
                &[],
                Some(Unit::Bytes),
                "File bytes received by downloads from holders, verified or not",
            ),
            renewals_c: [renewal(0), renewal(1), renewal(2)],
            chunks_failed: counter(
                &r,
                "peerdex_pserver_chunks_failed_verification_total",
                &[],
                None,
                "Downloaded chunks whose BLAKE3 hash did not match the manifest",
            ),
            uploads_refused: counter(
                &r,
                "peerdex_pserver_upload_slots_refused_total",
                &[],
                None,
                "Peer-API file requests answered 503: every upload slot busy (PSERVER_MAX_UPLOADS)",
            ),
            slow_readers_cut: counter(
                &r,
                "peerdex_pserver_slow_readers_cut_total",
                &[],
                None,
                "Uploads cut because the reader was too slow (PSERVER_UPLOAD_MIN_BPS, PSERVER_UPLOAD_IDLE_SECS)",
            ),
            neighbour_refused: counter(
                &r,
                "peerdex_pserver_neighbour_requests_refused_total",
                &[],
                None,
                "Neighbour requests (locate/search) answered 429 (PSERVER_NEIGHBOUR_RATE)",
            ),
            downloads_finished: [finished(0), finished(1), finished(2)],
            shared_files: gauge(
                &r,
                "peerdex_pserver_shared_files",
                None,
                "Files this PServer shares",
            ),
            shared_bytes: gauge(
                &r,
                "peerdex_pserver_shared_bytes",
                Some(Unit::Bytes),
                "Bytes of the files this PServer shares",
            ),
            uploads_active: gauge(
                &r,
                "peerdex_pserver_uploads_active",
                None,
                "Uploads in progress (upload slots in use)",
            ),
            downloads_active: gauge(
                &r,
                "peerdex_pserver_downloads_active",
                None,
                "Download jobs queued or running",
            ),
            wants: std::array::from_fn(|i| {
                r.describe_gauge(
                    KeyName::from_const_str("peerdex_pserver_wants"),
                    None,
                    SharedString::const_str(
                        "Wanted files kept by this PServer, by state (waiting, matched, ambiguous, downloading, done)",
                    ),
                );
                r.register_gauge(
                    &Key::from_static_parts("peerdex_pserver_wants", WANT_STATE[i]),
                    &META,
                )
            }),
            relay_bytes: counter(
                &r,
                "peerdex_pserver_relay_bytes_total",
                &[],
                Some(Unit::Bytes),
                "Bytes this relay carried for peers behind NAT (both directions)",
            ),
            callback_transfers: counter(
                &r,
                "peerdex_pserver_callback_transfers_total",
                &[],
                None,
                "Holders behind NAT that called this PServer back and served it directly (no relay)",
            ),
            relay_peers: gauge(
                &r,
                "peerdex_pserver_relay_peers",
                None,
                "Peers behind NAT attached to this relay",
            ),
            reachable: gauge(
                &r,
                "peerdex_pserver_reachable",
                None,
                "1 when the directory's dial-back reached this PServer at its public URL, else 0",
            ),
            want_events: counter(
                &r,
                "peerdex_pserver_want_events_total",
                &[],
                None,
                "Events of the directory's Watch stream that matched a want (a holder appeared)",
            ),
            notify_posts: std::array::from_fn(|i| {
                counter(
                    &r,
                    "peerdex_pserver_notify_posts_total",
                    POST_RESULT[i],
                    None,
                    "Want notices POSTed to PSERVER_NOTIFY_URL, by result: ok (2xx), failed (no answer in 5 s, not 2xx, or dropped: too many waiting)",
                )
            }),
            handle: r.handle(),
        };
        Self(Arc::new(inner))
    }

    pub(crate) fn sent(&self, n: u64) {
        self.0.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, n: u64) {
        self.0.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn renewal(&self, r: Renewal) {
        self.0.renewals[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn chunk_failed(&self) {
        self.0.chunks_failed.increment(1);
    }

    pub(crate) fn upload_refused(&self) {
        self.0.uploads_refused.increment(1);
    }

    pub(crate) fn slow_reader_cut(&self) {
        self.0.slow_readers_cut.increment(1);
    }

    pub(crate) fn neighbour_refused(&self) {
        self.0.neighbour_refused.increment(1);
    }

    /// One of the user's lookups ended, answered by `by`.
    pub(crate) fn lookup(&self, by: AnsweredBy) {
        self.0.lookups[by as usize].increment(1);
    }

    /// A job ended: `state` 0 done, 1 failed, 2 cancelled.
    pub(crate) fn download_finished(&self, state: usize) {
        self.0.downloads_finished[state.min(2)].increment(1);
    }

    pub(crate) fn replica_fetch(&self, result: ReplicaResult) {
        self.0.replica_fetches[result as usize].increment(1);
    }

    /// A Watch event matched a want.
    pub(crate) fn want_event(&self) {
        self.0.want_events.increment(1);
    }

    /// A notice POSTed to `PSERVER_NOTIFY_URL` (or not).
    pub(crate) fn notify_post(&self, ok: bool) {
        self.0.notify_posts[usize::from(!ok)].increment(1);
    }

    pub(crate) fn relayed(&self, n: u64) {
        self.0.relay_bytes.increment(n);
    }

    pub(crate) fn callback_transfer(&self) {
        self.0.callback_transfers.increment(1);
    }

    pub(crate) fn replica_dropped(&self) {
        self.0.replica_drops.increment(1);
    }

    /// (bytes sent, bytes received) so far.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (
            self.0.bytes_sent.load(Ordering::Relaxed),
            self.0.bytes_received.load(Ordering::Relaxed),
        )
    }

    /// Lease renewals so far: (ok, rejoin, error).
    pub(crate) fn renewals(&self) -> (u64, u64, u64) {
        let r = &self.0.renewals;
        (
            r[0].load(Ordering::Relaxed),
            r[1].load(Ordering::Relaxed),
            r[2].load(Ordering::Relaxed),
        )
    }

    /// The Prometheus text exposition, with `live` figures.
    pub(crate) fn render(&self, live: Live) -> String {
        let i = &self.0;
        let (sent, received) = self.bytes();
        i.bytes_sent_c.absolute(sent);
        i.bytes_received_c.absolute(received);
        let (ok, rejoin, error) = self.renewals();
        for (c, v) in i.renewals_c.iter().zip([ok, rejoin, error]) {
            c.absolute(v);
        }
        i.shared_files.set(live.shared_files as f64);
        i.shared_bytes.set(live.shared_bytes as f64);
        i.uploads_active.set(f64::from(live.uploads_active));
        i.downloads_active.set(f64::from(live.downloads_active));
        i.replicas.set(live.replicas as f64);
        i.replica_bytes.set(live.replica_bytes as f64);
        i.replica_quota_bytes.set(live.replica_quota_bytes as f64);
        i.replica_fetches_active
            .set(live.replica_fetches_active as f64);
        for (g, n) in i.wants.iter().zip(live.wants) {
            g.set(n as f64);
        }
        i.relay_peers.set(live.relay_peers as f64);
        i.reachable.set(f64::from(u8::from(live.reachable)));
        i.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_instances_keep_their_own_figures() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.sent(10);
        b.sent(3);
        a.renewal(Renewal::Rejoin);
        let live = || Live {
            shared_files: 1,
            shared_bytes: 2,
            uploads_active: 0,
            downloads_active: 0,
            replicas: 1,
            replica_bytes: 5,
            replica_quota_bytes: 9,
            replica_fetches_active: 0,
            wants: [1, 0, 0, 0, 2],
            relay_peers: 3,
            reachable: true,
        };
        let (ta, tb) = (a.render(live()), b.render(live()));
        assert!(ta.contains("peerdex_pserver_bytes_sent_total 10\n"), "{ta}");
        assert!(tb.contains("peerdex_pserver_bytes_sent_total 3\n"), "{tb}");
        assert!(
            ta.contains("peerdex_pserver_lease_renewals_total{result=\"rejoin\"} 1\n"),
            "{ta}"
        );
        assert!(
            tb.contains("peerdex_pserver_lease_renewals_total{result=\"rejoin\"} 0\n"),
            "{tb}"
        );
        a.replica_fetch(ReplicaResult::Refused);
        let ta = a.render(live());
        assert!(
            ta.contains("peerdex_pserver_replica_fetches_total{result=\"refused\"} 1\n"),
            "{ta}"
        );
        assert!(
            ta.contains("peerdex_pserver_replica_fetches_total{result=\"done\"} 0\n"),
            "{ta}"
        );
        assert!(ta.contains("peerdex_pserver_replica_bytes 5\n"), "{ta}");
        a.relayed(7);
        let ta = a.render(live());
        assert!(ta.contains("peerdex_pserver_relay_bytes_total 7\n"), "{ta}");
        assert!(ta.contains("peerdex_pserver_relay_peers 3\n"), "{ta}");
        assert!(ta.contains("peerdex_pserver_reachable 1\n"), "{ta}");
        assert!(
            ta.contains("peerdex_pserver_callback_transfers_total 0\n"),
            "{ta}"
        );
        assert!(
            ta.contains("peerdex_pserver_wants{state=\"done\"} 2\n"),
            "{ta}"
        );
    }
}
