//! One holder as the swarm sees it: what it sent, its strikes and failures,
//! its back-off, and its measured rate (which sets how many requests it
//! keeps in flight).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::transport::Source;

/// Requests in flight per holder: at least / at most.
const MIN_DEPTH: u32 = 2;
pub(super) const MAX_DEPTH: u32 = 4;
/// Window of the per-source rate.
const RATE_WINDOW: Duration = Duration::from_secs(1);

pub(super) struct Holder {
    pub(super) src: Arc<Source>,
    /// Bytes received from it (kept or not).
    pub(super) recv: Arc<AtomicU64>,
    pub(super) used: bool,
    pub(super) chunks: u64,
    pub(super) strikes: u32,
    pub(super) failures: u32,
    pub(super) in_flight: u32,
    pub(super) backoff_until: Option<Instant>,
    /// Why it was dropped; `banned` ones (strikes) stay dropped for the job.
    pub(super) dropped: Option<String>,
    pub(super) banned: bool,
    pub(super) last_error: Option<String>,
    pub(super) samples: VecDeque<(Instant, u64)>,
    pub(super) rate: f64,
}

impl Holder {
    pub(super) fn new(src: Source) -> Self {
        Self {
            src: Arc::new(src),
            recv: Arc::new(AtomicU64::new(0)),
            used: false,
            chunks: 0,
            strikes: 0,
            failures: 0,
            in_flight: 0,
            backoff_until: None,
            dropped: None,
            banned: false,
            last_error: None,
            samples: VecDeque::new(),
            rate: 0.0,
        }
    }

    pub(super) fn sample(&mut self, now: Instant) {
        self.samples
            .push_back((now, self.recv.load(Ordering::Relaxed)));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        self.rate = match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
    }

    /// Requests to keep in flight: enough to cover ~50 ms of its throughput.
    pub(super) fn depth(&self, chunk_size: u64) -> u32 {
        let ahead = (self.rate * 0.05 / chunk_size as f64).ceil() as u32;
        (1 + ahead).clamp(MIN_DEPTH, MAX_DEPTH)
    }

    pub(super) fn label(&self) -> String {
        format!("peer {} ({})", self.src.peer_id, self.src.url)
    }
}
