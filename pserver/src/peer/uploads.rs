//! Serving files to other peers: the upload slots (`PSERVER_MAX_UPLOADS`),
//! the upload rate cap (`PSERVER_MAX_UPLOAD_BPS`), and the watchdog that
//! takes a slot back from a reader too slow to deserve it
//! (`PSERVER_UPLOAD_IDLE_SECS`, `PSERVER_UPLOAD_MIN_BPS`); one cheap handle.
//!
//! Why a watchdog: when a client stops reading, actix stops polling the
//! response body once its write buffer is full, so no check inside the body
//! would ever run again. Each response body ([`Watched`]) therefore records
//! its progress (bytes handed to actix, and how long actix made it wait for
//! the next poll: the time the *client* held the transfer up) and a small
//! task beside it judges that progress every [`TICK`]. Time spent waiting
//! on our own rate cap or disk is the body's own `Pending`, never counted
//! against the client, so our throttling cannot make an honest peer look
//! slow. A reader judged too slow loses its slot at once, and its socket is
//! shut down (see `limits::Closer`), which fails actix's pending write and
//! closes the connection.
//!
//! A slot is an owned semaphore permit, held by the response body and
//! released on every exit: sent, client gone, handler error (dropped before
//! the body exists), or taken back by the watchdog.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::peer::limits::Closer;
use crate::rate::RateLimiter;

/// How often a watchdog judges its response.
const TICK: Duration = Duration::from_millis(250);
/// The minimum rate is averaged over this much time.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(20);
/// Bodies are handed to actix in pieces of at most this size, so progress
/// is seen at a fine grain even when a reader is slow.
const SLICE: usize = 64 << 10;

/// Concurrent uploads, their shared rate cap and the slow-reader rules. A
/// response body holds a [`Slot`] until it is dropped (sent, or the client
/// went away) or its watchdog takes it back.
#[derive(Clone)]
pub(crate) struct Uploads {
    slots: Arc<Semaphore>,
    max: u32,
    limit: Arc<RateLimiter>,
    rules: Rules,
    metrics: Metrics,
}

/// When a reader is too slow.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    /// `PSERVER_UPLOAD_MIN_BPS` (0 = no minimum).
    pub min_bps: u64,
    /// `PSERVER_UPLOAD_IDLE_SECS`.
    pub idle: Duration,
}

/// One upload slot, released when dropped.
pub(crate) type Slot = OwnedSemaphorePermit;

impl Uploads {
    pub(crate) fn new(max: u32, max_bps: u64, rules: Rules, metrics: Metrics) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
            limit: Arc::new(RateLimiter::new(max_bps)),
            rules,
            metrics,
        }
    }

    /// A free slot now, or `Busy` (answered 503 with `Retry-After`).
    pub(crate) fn try_acquire(&self) -> Result<Slot> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            self.metrics.upload_refused();
            Error::Busy {
                slots: self.max,
                retry_after: 1,
            }
        })
    }

    pub(crate) fn active(&self) -> u32 {
        self.max - self.free()
    }

    pub(crate) fn free(&self) -> u32 {
        self.slots.available_permits() as u32
    }

    pub(crate) fn limit(&self) -> &Arc<RateLimiter> {
        &self.limit
    }

    /// `body` as a response body that holds `slot`, under a watchdog that
    /// takes the slot back and closes the connection (through `closer`)
    /// when `peer` reads too slowly. Call on an actix worker: the watchdog
    /// is a task on the worker's own runtime, beside the connection.
    pub(crate) fn watched<S>(
        &self,
        body: S,
        slot: Slot,
        closer: Option<Closer>,
        peer: String,
    ) -> Watched<S>
    where
        S: Stream<Item = io::Result<Bytes>> + 'static,
    {
        let progress = Rc::new(RefCell::new(Progress {
            bytes: 0,
            blocked: Duration::ZERO,
            handed_at: None,
            slot: Some(slot),
            cut: None,
        }));
        let (stop, stopped) = oneshot::channel();
        actix_web::rt::spawn(watchdog(
            progress.clone(),
            Judge::new(self.rules),
            closer,
            peer,
            stopped,
            self.metrics.clone(),
        ));
        Watched {
            inner: Box::pin(body),
            rest: Bytes::new(),
            progress,
            metrics: self.metrics.clone(),
            _stop: stop,
        }
    }
}

/// What a response body shares with its watchdog.
struct Progress {
    /// Bytes handed to actix.
    bytes: u64,
    /// Time actix took to poll again after a piece was handed over, summed
    /// (closed intervals): the client holding the transfer up.
    blocked: Duration,
    /// When the last piece was handed over, if actix has not polled since.
    handed_at: Option<Instant>,
    slot: Option<Slot>,
    /// Set when the watchdog cut the response: why.
    cut: Option<String>,
}

/// A response body under a watchdog (see the module docs).
pub(crate) struct Watched<S> {
    inner: Pin<Box<S>>,
    /// The part of the last piece not handed over yet.
    rest: Bytes,
    progress: Rc<RefCell<Progress>>,
    /// Counts the bytes handed to actix (`peerdex_pserver_bytes_sent_total`).
    metrics: Metrics,
    /// Dropped with the body: stops the watchdog.
    _stop: oneshot::Sender<()>,
}

impl<S: Stream<Item = io::Result<Bytes>>> Stream for Watched<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        {
            let mut p = this.progress.borrow_mut();
            if let Some(at) = p.handed_at.take() {
                p.blocked += at.elapsed();
            }
            if let Some(why) = &p.cut {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    why.clone(),
                ))));
            }
        }
        if this.rest.is_empty() {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(b))) => this.rest = b,
                other => return other,
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(SLICE));
        this.metrics.sent(piece.len() as u64);
        let mut p = this.progress.borrow_mut();
        p.bytes += piece.len() as u64;
        p.handed_at = Some(Instant::now());
        Poll::Ready(Some(Ok(piece)))
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        // Sent, failed or the client went away: the slot is free again.
        self.progress.borrow_mut().slot.take();
    }
}

async fn watchdog(
    progress: Rc<RefCell<Progress>>,
    mut judge: Judge,
    closer: Option<Closer>,
    peer: String,
    mut stopped: oneshot::Receiver<()>,
    metrics: Metrics,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let verdict = {
            let p = progress.borrow();
            judge.judge(Instant::now(), p.bytes, p.blocked, p.handed_at)
        };
        if let Some(why) = verdict {
            let (slot, sent) = {
                let mut p = progress.borrow_mut();
                p.cut = Some(why.clone());
                (p.slot.take(), p.bytes)
            };
            drop(slot);
            metrics.slow_reader_cut();
            if let Some(c) = &closer {
                c.close();
            }
            tracing::warn!(%peer, bytes = sent, reason = %why,
                "a slow reader lost its upload slot; connection closed");
            return;
        }
    }
}

/// Judges one response's progress against the [`Rules`].
struct Judge {
    rules: Rules,
    window: Duration,
    /// (when, bytes handed over, client-held time) of recent ticks; the
    /// front is the newest one at least a window old.
    samples: VecDeque<(Instant, u64, Duration)>,
}

impl Judge {
    fn new(rules: Rules) -> Self {
        Self {
            rules,
            window: RATE_WINDOW,
            samples: VecDeque::new(),
        }
    }

    /// `Some(why)` if the reader is too slow: it took nothing for the idle
    /// time, or over the last window, during which it held the transfer up
    /// at least half the time, it took less than the minimum rate.
    fn judge(
        &mut self,
        now: Instant,
        bytes: u64,
        blocked: Duration,
        handed_at: Option<Instant>,
    ) -> Option<String> {
        let waiting = handed_at.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        if waiting >= self.rules.idle {
            return Some(format!(
                "took nothing for {} s (PSERVER_UPLOAD_IDLE_SECS is {})",
                waiting.as_secs(),
                self.rules.idle.as_secs()
            ));
        }
        let held = blocked + waiting;
        self.samples.push_back((now, bytes, held));
        while self
            .samples
            .get(1)
            .is_some_and(|s| now.saturating_duration_since(s.0) >= self.window)
        {
            self.samples.pop_front();
        }
        let &(t0, b0, h0) = self.samples.front()?;
        if self.rules.min_bps == 0 || now.saturating_duration_since(t0) < self.window {
            return None;
        }
        let held = held.saturating_sub(h0);
        if held < self.window / 2 {
            return None; // mostly waiting on us, not on the reader
        }
        let rate = bytes.saturating_sub(b0) as f64 / held.as_secs_f64();
        (rate < self.rules.min_bps as f64).then(|| {
            format!(
                "took {rate:.0} B/s over the last {} s, below PSERVER_UPLOAD_MIN_BPS ({})",
                now.saturating_duration_since(t0).as_secs(),
                self.rules.min_bps
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        min_bps: 4096,
        idle: Duration::from_secs(30),
    };

    #[test]
    fn slots_are_counted_and_released_on_drop() {
        let u = Uploads::new(2, 0, RULES, Metrics::new());
        assert_eq!((u.active(), u.free()), (0, 2));
        let a = u.try_acquire().unwrap();
        let b = u.clone().try_acquire().unwrap();
        assert_eq!((u.active(), u.free()), (2, 0));
        assert!(matches!(
            u.try_acquire(),
            Err(Error::Busy {
                slots: 2,
                retry_after: 1
            })
        ));
        drop(a);
        assert_eq!((u.active(), u.free()), (1, 1));
        drop(b);
        assert_eq!((u.active(), u.free()), (0, 2));
    }

    /// Ticks every 250 ms for `secs`, the reader taking `bps` and holding
    /// the transfer up `held` of every second; the first verdict, if any.
    fn run(
        judge: &mut Judge,
        t0: Instant,
        secs: u64,
        bps: u64,
        held: f64,
    ) -> Option<(u64, String)> {
        for ms in (250..=secs * 1000).step_by(250) {
            let now = t0 + Duration::from_millis(ms);
            let bytes = bps * ms / 1000;
            let blocked = Duration::from_secs_f64(held * ms as f64 / 1000.0);
            if let Some(why) = judge.judge(now, bytes, blocked, None) {
                return Some((ms, why));
            }
        }
        None
    }

    #[test]
    fn a_reader_below_the_minimum_is_cut_after_one_window() {
        let t0 = Instant::now();
        let (at, why) = run(&mut Judge::new(RULES), t0, 60, 3000, 1.0).expect("cut");
        // The first sample is taken at the first tick (250 ms): a full
        // window behind it is complete at 20.25 s.
        assert_eq!(at, 20_250, "{why}");
        assert!(why.contains("PSERVER_UPLOAD_MIN_BPS"), "{why}");
        // Just above the minimum: never cut.
        assert_eq!(run(&mut Judge::new(RULES), t0, 60, 5000, 1.0), None);
        // Below the minimum but mostly waiting on our own rate cap or disk
        // (the reader held it up a third of the time): not the reader's fault.
        assert_eq!(run(&mut Judge::new(RULES), t0, 60, 3000, 0.33), None);
        // No minimum set.
        let rules = Rules {
            min_bps: 0,
            ..RULES
        };
        assert_eq!(run(&mut Judge::new(rules), t0, 60, 10, 1.0), None);
    }

    #[test]
    fn a_reader_that_takes_nothing_is_cut_after_the_idle_time() {
        let mut j = Judge::new(Rules {
            min_bps: 0,
            idle: Duration::from_secs(5),
        });
        let t0 = Instant::now();
        let handed = t0 + Duration::from_secs(1);
        assert_eq!(
            j.judge(
                t0 + Duration::from_millis(5900),
                10,
                Duration::ZERO,
                Some(handed)
            ),
            None
        );
        let why = j
            .judge(
                t0 + Duration::from_secs(6),
                10,
                Duration::ZERO,
                Some(handed),
            )
            .expect("cut");
        assert!(why.contains("PSERVER_UPLOAD_IDLE_SECS"), "{why}");
        // Waiting on ourselves (nothing handed over) is never idle.
        assert_eq!(
            j.judge(t0 + Duration::from_secs(600), 10, Duration::ZERO, None),
            None
        );
    }
}
