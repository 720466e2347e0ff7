//! The swarm scheduler: fetch the chunks of one file from several holders at
//! once.
//!
//! Every request (see `chunk`) asks one holder for one chunk (HTTP `Range`,
//! see `transport`), collects it in memory while hashing it, and hands it to
//! the [`Partial`] only if its BLAKE3 matches the manifest. Chunks above 8 MiB (files over 64 GiB) are
//! instead written at their place in the partial as they stream in, so
//! memory stays flat whatever the file size; such a chunk counts as verified
//! (and is recorded in the bitmap) only once its hash matched, and exactly
//! one request at a time may write it. Memory: at most 64 MiB of chunks in
//! flight, plus the writer's queue and reorder window (see `partial`).
//!
//! Scheduling is pull-based: each holder keeps a few requests in flight
//! (more when its measured throughput is high), and whenever one finishes
//! it takes the lowest missing chunk, so fast holders take more chunks. When
//! nothing is left to hand out, an idle holder *races* an in-flight chunk if
//! it would finish it sooner than the holder that has it (end game); the
//! first verified copy wins and the other request is dropped.
//!
//! Faults: a chunk that fails verification (or a holder that breaks the
//! protocol) earns the holder a strike and the chunk goes back to the queue,
//! avoiding that holder; three strikes drop the holder for the job. A holder
//! that cannot be reached, answers an error or sends no bytes for the stall
//! timeout loses the chunk, backs off, and is dropped after a few failures
//! in a row. A 503 backs it off for its `Retry-After`. A holder killed
//! mid-transfer costs only its in-flight chunks.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peerdex_proto::rest::SourceProgress;
use peerdex_proto::tree::Manifest;
use tokio::task::JoinSet;

use super::chunk::{Bad, ChunkRequest, Failed, Outcome};
use super::holder::Holder;
use super::partial::Partial;
use super::transport::{Fetcher, Source};

/// Strikes (chunks that failed verification) that drop a holder.
pub(crate) const MAX_STRIKES: u32 = 3;
/// At most this many chunks raced at once in the end game.
const MAX_RACES: usize = 4;
/// Progress is reported this often.
const TICK: Duration = Duration::from_millis(100);

/// Tuning of one swarm.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub max_sources: usize,
    /// A request that gets no bytes for this long loses its chunk.
    pub stall: Duration,
    /// First back-off after a failure; doubles with each failure in a row.
    pub backoff: Duration,
    /// Failures in a row (no answer, error, stall) that drop a holder.
    pub max_failures: u32,
    /// Bytes of chunks held in memory by requests in flight.
    pub mem_budget: u64,
    /// A request must have run this long before the end game may race it.
    pub race_grace: Duration,
    /// Chunks larger than this are written into the partial as they stream
    /// in (memory stays flat whatever the chunk size) instead of being held
    /// in memory until verified; the end game does not race them.
    pub stream_above: u64,
    /// Counts chunks that failed verification (none in the model tests).
    pub metrics: Option<crate::metrics::Metrics>,
}

impl Params {
    pub(crate) fn new(max_sources: usize, stall: Duration) -> Self {
        Self {
            max_sources: max_sources.max(1),
            stall,
            backoff: Duration::from_millis(250),
            max_failures: 3,
            mem_budget: 64 << 20,
            race_grace: Duration::from_millis(300),
            stream_above: 8 << 20,
            metrics: None,
        }
    }
}

/// Why a swarm stopped before every chunk was in.
#[derive(Debug)]
pub(crate) enum SwarmEnd {
    /// No usable holder is left; says what happened to each.
    NoHolders(String),
    /// Writing to the partial failed.
    Io(io::Error),
}

/// A snapshot for the job's progress.
pub(crate) struct Report {
    pub verified_bytes: u64,
    pub sources: Vec<SourceProgress>,
    /// URL of the fastest source right now.
    pub fastest: Option<String>,
}

struct Req {
    holder: usize,
    chunk: usize,
    started: Instant,
    got: Arc<AtomicU64>,
    abort: tokio::task::AbortHandle,
    /// Aborted; kept until its task has ended, so a chunk written in place
    /// is never handed to a second writer while the first may still write.
    aborted: bool,
}

/// The chunk bookkeeping of one file, kept across rounds of locating.
pub(crate) struct Swarm {
    manifest: Arc<Manifest>,
    params: Params,
    done: Vec<bool>,
    done_count: usize,
    verified_bytes: u64,
    missing: BTreeSet<usize>,
    /// Holders that sent a bad copy of a chunk; asked again only if no one else can.
    avoid: HashMap<usize, Vec<usize>>,
    holders: Vec<Holder>,
    reqs: HashMap<tokio::task::Id, Req>,
}

impl Swarm {
    /// `manifest`: verified against the file id. `verified`: chunks already
    /// on disk (a resumed partial).
    pub(crate) fn new(manifest: Arc<Manifest>, verified: &[bool], params: Params) -> Self {
        let n = manifest.chunks();
        let done: Vec<bool> = (0..n).map(|i| verified.get(i) == Some(&true)).collect();
        let missing = (0..n).filter(|i| !done[*i]).collect();
        let verified_bytes = (0..n)
            .filter(|i| done[*i])
            .map(|i| manifest.chunk_range(i).1)
            .sum();
        Self {
            params,
            done_count: done.iter().filter(|d| **d).count(),
            done,
            verified_bytes,
            missing,
            avoid: HashMap::new(),
            holders: Vec::new(),
            reqs: HashMap::new(),
            manifest,
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.done_count == self.done.len()
    }

    pub(crate) fn chunks(&self) -> (usize, usize) {
        (self.done_count, self.done.len())
    }

    /// Merge a fresh list of holders (from a new locate). Holders dropped for
    /// being unreachable get another chance; holders with three strikes do not.
    pub(crate) fn add_holders(&mut self, fresh: impl IntoIterator<Item = Source>) {
        for src in fresh {
            match self
                .holders
                .iter_mut()
                .find(|h| h.src.peer_id == src.peer_id)
            {
                Some(h) if h.banned => {}
                Some(h) => {
                    if h.src.url != src.url {
                        h.src = Arc::new(src);
                    }
                    h.dropped = None;
                    h.failures = 0;
                    h.backoff_until = None;
                }
                None => self.holders.push(Holder::new(src)),
            }
        }
    }

    /// A holder failed before the swarm began (its manifest did not verify,
    /// or the chunk that confirmed it did not): a strike, as for a bad chunk.
    pub(crate) fn strike(&mut self, peer_id: &str, why: String) {
        let Some(h) = self.holders.iter_mut().find(|h| h.src.peer_id == peer_id) else {
            return;
        };
        h.used = true;
        h.strikes += 1;
        if h.strikes >= MAX_STRIKES {
            h.dropped = Some(format!(
                "dropped after {} failed verifications (last: {why})",
                h.strikes
            ));
            h.banned = true;
        }
        h.last_error = Some(why);
    }

    /// Chunk `c` (`bytes` long) came verified from `peer_id` before the swarm
    /// began (the chunk that confirmed the manifest). `true` if it was missing.
    pub(crate) fn credit(&mut self, peer_id: &str, c: usize) -> bool {
        let len = self.manifest.chunk_range(c).1;
        if let Some(h) = self.holders.iter_mut().find(|h| h.src.peer_id == peer_id) {
            h.used = true;
            h.chunks += 1;
            h.recv.fetch_add(len, Ordering::Relaxed);
        }
        if self.done[c] {
            return false;
        }
        self.done[c] = true;
        self.done_count += 1;
        self.verified_bytes += len;
        self.missing.remove(&c);
        true
    }

    /// What happened to every holder, for an error message.
    pub(crate) fn holder_summary(&self) -> String {
        let parts: Vec<String> = self
            .holders
            .iter()
            .map(|h| {
                let what = h
                    .dropped
                    .clone()
                    .or_else(|| h.last_error.clone())
                    .unwrap_or_else(|| "unused".into());
                format!("{}: {what}", h.label())
            })
            .take(6)
            .collect();
        if parts.is_empty() {
            "no holders".into()
        } else {
            parts.join("; ")
        }
    }

    /// Fetch until every chunk is verified and queued on `partial`, or no
    /// usable holder remains.
    pub(crate) async fn run(
        &mut self,
        partial: &Partial,
        fetch: &Fetcher,
        report: &mut (dyn FnMut(Report) + Send),
    ) -> Result<(), SwarmEnd> {
        let mut set: JoinSet<Outcome> = JoinSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            if self.is_complete() {
                break Ok(());
            }
            let now = Instant::now();
            self.schedule(&mut set, fetch, partial, now);
            if self.live() == 0 && !self.any_waiting(now) {
                break Err(SwarmEnd::NoHolders(self.holder_summary()));
            }
            // Wake up for the first holder whose back-off ends, if sooner than the tick.
            let wake = self
                .holders
                .iter()
                .filter_map(|h| h.backoff_until)
                .filter(|t| *t > now)
                .min()
                .unwrap_or(now + TICK);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                Some(joined) = set.join_next_with_id(), if !set.is_empty() => {
                    let (id, outcome) = match joined {
                        Ok((id, o)) => (id, o),
                        Err(e) if e.is_cancelled() => {
                            self.ended(e.id());
                            continue;
                        }
                        Err(e) => (e.id(), Outcome::Failed(Failed::Task(e))),
                    };
                    if let Err(e) = self.handle(id, outcome, partial).await {
                        break Err(SwarmEnd::Io(e));
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    for h in &mut self.holders {
                        h.sample(now);
                    }
                    report(self.report());
                }
            }
        };
        // Wait for every request task to end (none may still write in place).
        set.shutdown().await;
        for (_, r) in self.reqs.drain() {
            if !self.done[r.chunk] {
                self.missing.insert(r.chunk);
            }
        }
        for h in &mut self.holders {
            h.in_flight = 0;
            h.sample(Instant::now());
        }
        report(self.report());
        result
    }

    /// Holders this job may use now: not dropped, within the first `max_sources`.
    fn eligible(&self) -> Vec<usize> {
        self.holders
            .iter()
            .enumerate()
            .filter(|(_, h)| h.dropped.is_none())
            .map(|(i, _)| i)
            .take(self.params.max_sources)
            .collect()
    }

    /// Is some eligible holder only backing off (so waiting makes sense)?
    fn any_waiting(&self, now: Instant) -> bool {
        self.eligible()
            .iter()
            .any(|&i| self.holders[i].backoff_until.is_some_and(|t| t > now))
    }

    fn max_in_flight(&self) -> usize {
        (self.params.mem_budget / self.manifest.chunk_size()).clamp(1, 64) as usize
    }

    /// Requests in flight that were not aborted.
    fn live(&self) -> usize {
        self.reqs.values().filter(|r| !r.aborted).count()
    }

    fn streaming(&self) -> bool {
        self.manifest.chunk_size() > self.params.stream_above
    }

    fn schedule(
        &mut self,
        set: &mut JoinSet<Outcome>,
        fetch: &Fetcher,
        partial: &Partial,
        now: Instant,
    ) {
        let eligible = self.eligible();
        let mut ready: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| self.holders[i].backoff_until.is_none_or(|t| t <= now))
            .collect();
        ready.sort_by(|a, b| self.holders[*b].rate.total_cmp(&self.holders[*a].rate));
        let cs = self.manifest.chunk_size();
        loop {
            let mut progressed = false;
            for &h in &ready {
                if self.live() >= self.max_in_flight() {
                    return;
                }
                if self.holders[h].in_flight >= self.holders[h].depth(cs) {
                    continue;
                }
                let chunk = self
                    .pick_missing(h, &eligible)
                    .or_else(|| self.pick_race(h, now));
                if let Some(c) = chunk {
                    self.spawn(set, fetch, partial, h, c);
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// The lowest missing chunk this holder should fetch.
    fn pick_missing(&mut self, h: usize, eligible: &[usize]) -> Option<usize> {
        let c = self
            .missing
            .iter()
            .copied()
            .find(|c| match self.avoid.get(c) {
                None => true,
                Some(bad) if !bad.contains(&h) => true,
                // Failed here before: only if every usable holder failed it too.
                Some(bad) => eligible.iter().all(|e| bad.contains(e)),
            })?;
        self.missing.remove(&c);
        Some(c)
    }

    /// End game: an in-flight chunk this holder would finish sooner than the
    /// holder that has it.
    fn pick_race(&self, h: usize, now: Instant) -> Option<usize> {
        if !self.missing.is_empty() || self.streaming() {
            return None;
        }
        let mut per_chunk: HashMap<usize, Vec<&Req>> = HashMap::new();
        for r in self.reqs.values().filter(|r| !r.aborted) {
            per_chunk.entry(r.chunk).or_default().push(r);
        }
        if per_chunk.values().filter(|v| v.len() > 1).count() >= MAX_RACES {
            return None;
        }
        let me = &self.holders[h];
        let cs = self.manifest.chunk_size();
        // Time this holder needs for a whole chunk, sharing its throughput.
        let my_eta = (me.rate > 0.0).then(|| cs as f64 * f64::from(me.in_flight + 1) / me.rate);
        let mut best: Option<(f64, usize)> = None;
        for (&c, rs) in &per_chunk {
            if rs.len() > 1 || rs.iter().any(|r| r.holder == h) {
                continue;
            }
            if self.avoid.get(&c).is_some_and(|bad| bad.contains(&h)) {
                continue;
            }
            let r = rs[0];
            let elapsed = now.duration_since(r.started);
            if elapsed < self.params.race_grace {
                continue;
            }
            let len = self.manifest.chunk_range(c).1 as f64;
            let got = r.got.load(Ordering::Relaxed) as f64;
            let their_eta = if got > 0.0 {
                (len - got) * elapsed.as_secs_f64() / got
            } else {
                f64::INFINITY
            };
            let race = match my_eta {
                Some(mine) => mine * 1.5 < their_eta,
                // Unknown speed: only take over chunks that got nothing at all.
                None => their_eta.is_infinite(),
            };
            if race && best.is_none_or(|(eta, _)| their_eta > eta) {
                best = Some((their_eta, c));
            }
        }
        best.map(|(_, c)| c)
    }

    fn spawn(
        &mut self,
        set: &mut JoinSet<Outcome>,
        fetch: &Fetcher,
        partial: &Partial,
        h: usize,
        c: usize,
    ) {
        let sink = self.streaming().then(|| partial.file());
        let holder = &mut self.holders[h];
        holder.used = true;
        holder.in_flight += 1;
        let got = Arc::new(AtomicU64::new(0));
        let task = ChunkRequest {
            fetch: fetch.clone(),
            src: holder.src.clone(),
            manifest: self.manifest.clone(),
            idx: c,
            stall: self.params.stall,
            recv: holder.recv.clone(),
            got: got.clone(),
            sink,
        }
        .run();
        let abort = set.spawn(task);
        self.reqs.insert(
            abort.id(),
            Req {
                holder: h,
                chunk: c,
                started: Instant::now(),
                got,
                abort,
                aborted: false,
            },
        );
    }

    async fn handle(
        &mut self,
        id: tokio::task::Id,
        outcome: Outcome,
        partial: &Partial,
    ) -> io::Result<()> {
        let Some(req) = self.reqs.get(&id) else {
            return Ok(());
        };
        if req.aborted {
            // Ended after we gave up on it: whatever it did is not used.
            self.ended(id);
            return Ok(());
        }
        let Some(req) = self.reqs.remove(&id) else {
            return Ok(());
        };
        let (h, c) = (req.holder, req.chunk);
        let holder = &mut self.holders[h];
        holder.in_flight = holder.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Verified(bytes) => {
                holder.chunks += 1;
                holder.failures = 0;
                // Drop the other copy of a raced chunk.
                self.abort_where(|r| r.chunk == c);
                if !self.done[c] {
                    self.done[c] = true;
                    self.done_count += 1;
                    let len = self.manifest.chunk_range(c).1;
                    self.verified_bytes += len;
                    match bytes {
                        Some(b) => partial.write(c, b).await?,
                        None => partial.mark(c).await?,
                    }
                }
            }
            Outcome::Bad(why) => {
                if let (Bad::Hash(_), Some(m)) = (&why, &self.params.metrics) {
                    m.chunk_failed();
                }
                let why = why.to_string();
                holder.strikes += 1;
                holder.last_error = Some(why.clone());
                let entry = self.avoid.entry(c).or_default();
                if !entry.contains(&h) {
                    entry.push(h);
                }
                if holder.strikes >= MAX_STRIKES {
                    tracing::warn!(peer = %holder.src.peer_id, url = %holder.src.url, strikes = holder.strikes, %why,
                        "holder sent chunks that failed verification; dropping it for this download");
                    holder.dropped = Some(format!(
                        "dropped after {} chunks failed BLAKE3 verification (last: {why})",
                        holder.strikes
                    ));
                    holder.banned = true;
                    self.abort_holder(h);
                } else {
                    tracing::info!(peer = %holder.src.peer_id, chunk = c, strikes = holder.strikes, %why,
                        "chunk failed verification; fetching it from another holder");
                }
                self.requeue(c);
            }
            Outcome::Failed(why) => {
                let why = why.to_string();
                holder.failures += 1;
                holder.last_error = Some(why.clone());
                if holder.failures >= self.params.max_failures {
                    tracing::info!(peer = %holder.src.peer_id, %why, "holder keeps failing; dropping it");
                    holder.dropped = Some(format!(
                        "failed {} times in a row (last: {why})",
                        holder.failures
                    ));
                } else {
                    let pause = self.params.backoff * (1 << (holder.failures - 1).min(5));
                    tracing::debug!(peer = %holder.src.peer_id, chunk = c, %why, ?pause, "request failed; backing off");
                    holder.backoff_until = Some(Instant::now() + pause);
                }
                self.requeue(c);
            }
            Outcome::Gone(why) => {
                // Other requests in flight may say it again, less clearly
                // ("not shared here" after a withdrawal): keep the first.
                if holder.dropped.is_none() {
                    tracing::info!(peer = %holder.src.peer_id, %why, "holder no longer has the file");
                    holder.dropped = Some(why.clone());
                    holder.last_error = Some(why);
                }
                self.requeue(c);
            }
            Outcome::Busy(pause) => {
                holder.last_error = Some("busy (503)".into());
                holder.backoff_until = Some(Instant::now() + pause);
                self.requeue(c);
            }
            Outcome::LocalIo(e) => {
                self.requeue(c);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot write chunk {c}: {e}"),
                ));
            }
        }
        Ok(())
    }

    /// Put a chunk back in the queue unless another request still has it
    /// (or, for chunks written in place, may still be writing it).
    fn requeue(&mut self, c: usize) {
        let streaming = self.streaming();
        let taken = self
            .reqs
            .values()
            .any(|r| r.chunk == c && (!r.aborted || streaming));
        if !self.done[c] && !taken {
            self.missing.insert(c);
        }
    }

    /// Give up on a request; its chunk is requeued once its task has ended.
    fn abort(&mut self, id: tokio::task::Id) {
        if let Some(r) = self.reqs.get_mut(&id)
            && !r.aborted
        {
            r.aborted = true;
            r.abort.abort();
            let holder = &mut self.holders[r.holder];
            holder.in_flight = holder.in_flight.saturating_sub(1);
        }
    }

    /// The task of an aborted request has ended.
    fn ended(&mut self, id: tokio::task::Id) {
        if let Some(r) = self.reqs.remove(&id) {
            if !r.aborted {
                let holder = &mut self.holders[r.holder];
                holder.in_flight = holder.in_flight.saturating_sub(1);
            }
            self.requeue(r.chunk);
        }
    }

    fn abort_holder(&mut self, h: usize) {
        self.abort_where(|r| r.holder == h);
    }

    /// Give up on every live request that `which` picks.
    fn abort_where(&mut self, which: impl Fn(&Req) -> bool) {
        let ids: Vec<tokio::task::Id> = self
            .reqs
            .iter()
            .filter(|(_, r)| !r.aborted && which(r))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.abort(id);
        }
    }

    pub(crate) fn report(&self) -> Report {
        let sources = self
            .holders
            .iter()
            .filter(|h| h.used)
            .map(|h| SourceProgress {
                peer_id: h.src.peer_id.clone(),
                peer_url: h.src.url.to_string(),
                bytes: h.recv.load(Ordering::Relaxed),
                rate_bps: h.rate as u64,
                chunks: h.chunks,
                strikes: h.strikes,
                in_flight: h.in_flight,
                dropped: h.dropped.clone(),
            })
            .collect();
        let fastest = self
            .holders
            .iter()
            .filter(|h| h.dropped.is_none() && (h.in_flight > 0 || h.rate > 0.0))
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
            .map(|h| h.src.url.to_string());
        Report {
            verified_bytes: self.verified_bytes,
            sources,
            fastest,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The swarm against in-memory holders with random chunk sizes and
    //! random faults: the assembled file is the source or the job fails,
    //! and one well-behaved holder is enough to finish.

    use std::sync::atomic::AtomicU32;

    use proptest::prelude::*;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use futures_util::stream::BoxStream;
    use peerdex_proto::FileId;
    use peerdex_proto::tree::TreeHasher;

    use super::super::holder::MAX_DEPTH;
    use super::super::transport::{Reply, TransportError};
    use super::*;

    #[derive(Debug, Clone)]
    enum Behaviour {
        Normal,
        /// The first n requests answer 503.
        Busy(u32),
        /// Every k-th request cannot connect.
        Flaky(u32),
        /// Headers, then no bytes ever.
        Stall,
        /// Half the bytes, then no more.
        StallHalfway,
        /// Closes the body early.
        Truncate,
        /// One byte more than asked.
        Extra,
        /// A Content-Range for other bytes.
        WrongRange,
        Refuse,
        Gone,
        ServerError,
        /// The body breaks after half.
        BreakHalfway,
    }

    #[derive(Debug, Clone)]
    struct ModelHolder {
        behaviour: Behaviour,
        /// Byte offsets flipped in its copy.
        corrupt: Vec<usize>,
        /// Serves other content of the same size.
        other_content: bool,
    }

    impl ModelHolder {
        fn good(&self) -> bool {
            self.corrupt.is_empty()
                && !self.other_content
                && match self.behaviour {
                    Behaviour::Normal | Behaviour::Busy(_) => true,
                    // Failures in a row stay below the limit when at least
                    // MAX_DEPTH requests succeed between two failures.
                    Behaviour::Flaky(k) => k > MAX_DEPTH,
                    _ => false,
                }
        }
    }

    fn behaviour() -> impl Strategy<Value = Behaviour> {
        prop_oneof![
            6 => Just(Behaviour::Normal),
            1 => (1u32..4).prop_map(Behaviour::Busy),
            2 => (2u32..8).prop_map(Behaviour::Flaky),
            1 => Just(Behaviour::Stall),
            1 => Just(Behaviour::StallHalfway),
            1 => Just(Behaviour::Truncate),
            1 => Just(Behaviour::Extra),
            1 => Just(Behaviour::WrongRange),
            1 => Just(Behaviour::Refuse),
            1 => Just(Behaviour::Gone),
            1 => Just(Behaviour::ServerError),
            1 => Just(Behaviour::BreakHalfway),
        ]
    }

    fn holder() -> impl Strategy<Value = ModelHolder> {
        (
            behaviour(),
            prop::collection::vec(any::<usize>(), 0..3),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.5),
        )
            .prop_map(
                |(behaviour, corrupt, other_content, honest_copy)| ModelHolder {
                    behaviour,
                    corrupt: if honest_copy { Vec::new() } else { corrupt },
                    other_content,
                },
            )
    }

    #[derive(Debug, Clone)]
    struct Case {
        size: usize,
        /// A power of two of at least 1 KiB (tree manifests).
        chunk_size: u64,
        holders: Vec<ModelHolder>,
        max_sources: usize,
        /// Write chunks in place as they stream in (the large-chunk path).
        stream: bool,
        seed: u64,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            0usize..40_000,
            (0u32..4).prop_map(|s| 1024u64 << s),
            prop::collection::vec(holder(), 1..5),
            1usize..5,
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(
                |(size, chunk_size, holders, max_sources, stream, seed)| Case {
                    size,
                    chunk_size,
                    holders,
                    max_sources,
                    stream,
                    seed,
                },
            )
    }

    fn model_fetcher(source: Arc<Vec<u8>>, case: &Case) -> Fetcher {
        let copies: Vec<(ModelHolder, Arc<Vec<u8>>, AtomicU32)> = case
            .holders
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let mut data = if h.other_content {
                    peerdex_testkit::test_bytes(source.len(), case.seed ^ (i as u64 + 1))
                } else {
                    source.to_vec()
                };
                if !data.is_empty() {
                    let n = data.len();
                    for off in &h.corrupt {
                        data[off % n] ^= 0x5a;
                    }
                }
                (h.clone(), Arc::new(data), AtomicU32::new(0))
            })
            .collect();
        let copies = Arc::new(copies);
        Arc::new(move |src: &Source, start: u64, end: u64| {
            let copies = copies.clone();
            let i: usize = src.peer_id.parse().unwrap();
            Box::pin(async move {
                let (h, data, calls) = &copies[i];
                let call = calls.fetch_add(1, Ordering::Relaxed) + 1;
                let size = data.len() as u64;
                let (s, e) = (start as usize, (end as usize + 1).min(data.len()));
                let piece = |bytes: Vec<u8>| -> BoxStream<'static, Result<Bytes, TransportError>> {
                    let parts: Vec<Result<Bytes, TransportError>> = bytes
                        .chunks(777)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    futures_util::stream::iter(parts).boxed()
                };
                let ok = |body| Reply {
                    status: 206,
                    content_range: Some(format!("bytes {start}-{end}/{size}")),
                    retry_after: None,
                    body,
                };
                if start >= size {
                    return Ok(Reply {
                        status: 416,
                        content_range: None,
                        retry_after: None,
                        body: futures_util::stream::empty().boxed(),
                    });
                }
                let bytes = data[s..e].to_vec();
                let half = bytes.len() / 2;
                Ok(match h.behaviour {
                    Behaviour::Normal => ok(piece(bytes)),
                    Behaviour::Busy(n) if call <= n => Reply {
                        status: 503,
                        content_range: None,
                        retry_after: Some(Duration::from_millis(2)),
                        body: futures_util::stream::empty().boxed(),
                    },
                    Behaviour::Busy(_) => ok(piece(bytes)),
                    Behaviour::Flaky(k) if call % k == 0 => {
                        return Err(TransportError::Refused);
                    }
                    Behaviour::Flaky(_) => ok(piece(bytes)),
                    Behaviour::Stall => ok(futures_util::stream::pending().boxed()),
                    Behaviour::StallHalfway => ok(piece(bytes[..half].to_vec())
                        .chain(futures_util::stream::pending())
                        .boxed()),
                    Behaviour::Truncate => ok(piece(bytes[..half].to_vec())),
                    Behaviour::Extra => {
                        let mut b = bytes;
                        b.push(0);
                        ok(piece(b))
                    }
                    Behaviour::WrongRange => Reply {
                        content_range: Some(format!("bytes 0-{}/{size}", e - s)),
                        ..ok(piece(bytes))
                    },
                    Behaviour::Refuse => return Err(TransportError::Refused),
                    Behaviour::Gone => Reply {
                        status: 404,
                        ..ok(futures_util::stream::empty().boxed())
                    },
                    Behaviour::ServerError => Reply {
                        status: 500,
                        ..ok(futures_util::stream::empty().boxed())
                    },
                    Behaviour::BreakHalfway => ok(piece(bytes[..half].to_vec())
                        .chain(futures_util::stream::iter([Err(TransportError::Reset)]))
                        .boxed()),
                })
            })
        })
    }

    /// Run the case like a job: swarm, locate again (same holders) up to
    /// three times. `Some(bytes)` (the assembled file) if it finished. The
    /// manifest is the true one: a lying manifest never reaches the swarm
    /// (it fails the check against the id, see `peerdex_proto::tree`).
    fn run_case(case: &Case) -> (Option<Vec<u8>>, Report) {
        let source = Arc::new(peerdex_testkit::test_bytes(case.size, case.seed));
        let mut hasher = TreeHasher::with_chunk_size(case.chunk_size);
        hasher.update(&source);
        let (id, manifest) = hasher.finish();
        assert_eq!(id, FileId::from_bytes(*blake3::hash(&source).as_bytes()));
        let manifest = Arc::new(manifest);
        let fetch = model_fetcher(source.clone(), case);
        let sources: Vec<Source> = (0..case.holders.len())
            .map(|i| Source {
                peer_id: i.to_string(),
                url: format!("http://127.0.0.1:{}", 1000 + i).parse().unwrap(),
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let result = rt.block_on(async {
            let mut partial = Partial::open(dir.path(), &manifest, "x").unwrap();
            let mut params = Params::new(case.max_sources, Duration::from_millis(30));
            params.backoff = Duration::from_millis(1);
            params.race_grace = Duration::from_millis(5);
            params.mem_budget = 6 * case.chunk_size;
            params.stream_above = if case.stream { 0 } else { u64::MAX };
            let mut swarm = Swarm::new(manifest.clone(), partial.verified(), params);
            let mut finished = false;
            for _round in 0..=3 {
                swarm.add_holders(sources.clone());
                match swarm.run(&partial, &fetch, &mut |_| {}).await {
                    Ok(()) => {
                        finished = true;
                        break;
                    }
                    Err(SwarmEnd::NoHolders(_)) => continue,
                    Err(SwarmEnd::Io(e)) => panic!("local i/o error: {e}"),
                }
            }
            if !finished {
                partial.close().await;
                return (None, swarm.report());
            }
            partial.finish().await.unwrap();
            let bytes = std::fs::read(partial.part_path()).unwrap();
            partial.close().await;
            (Some(bytes), swarm.report())
        });
        (result.0, result.1)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn final_file_is_the_source_or_the_job_fails(case in case()) {
            let (result, _) = run_case(&case);
            if let Some(bytes) = &result {
                prop_assert_eq!(bytes, &peerdex_testkit::test_bytes(case.size, case.seed));
            }
            if case.holders.iter().any(ModelHolder::good) {
                prop_assert!(result.is_some(), "a good holder was there, yet the job failed");
            }
        }
    }

    #[test]
    fn bad_chunk_is_refetched_elsewhere_with_one_strike() {
        for stream in [false, true] {
            bad_chunk_case(stream);
        }
    }

    fn bad_chunk_case(stream: bool) {
        let case = Case {
            size: 10_000,
            chunk_size: 1024,
            holders: vec![
                ModelHolder {
                    behaviour: Behaviour::Normal,
                    corrupt: vec![500],
                    other_content: false,
                },
                ModelHolder {
                    behaviour: Behaviour::Normal,
                    corrupt: vec![],
                    other_content: false,
                },
            ],
            max_sources: 8,
            stream,
            seed: 7,
        };
        let (result, report) = run_case(&case);
        assert!(result.is_some());
        // Holder 0 gets chunk 0 first (holders start in order), fails it once,
        // and holder 1 fetches it again; every chunk is kept exactly once.
        let s = &report.sources;
        assert_eq!(s[0].strikes, 1, "{s:#?}");
        assert_eq!(s[1].strikes, 0, "{s:#?}");
        assert!(s[0].dropped.is_none());
        assert_eq!(s.iter().map(|s| s.chunks).sum::<u64>(), 10, "{s:#?}");
        assert_eq!(report.verified_bytes, 10_000);
    }
}
