//! The Watch stream's loop: one stream open at the directory with every
//! want still waiting, opened again when the wants change (the new
//! stream replaces the old one at the central) or when it ends (a
//! central that failed or drains: the next one of the list), each time
//! followed by one check per want it did not cover yet.
//!
//! Each stream is read by a task of its own that forwards its events
//! here, so an old stream's last events (those applied before its
//! replacement registered) are still handled while the new one opens.
//! An old stream at another central (we moved) is not replaced there:
//! it is dropped a little after the new one is ready, and every want is
//! checked again.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use peerdex_proto::v1;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use peerdex_common::sync::lock;

use super::book::Wanted;
use super::handle::Wants;

/// Longest wait before a stream that ended is opened again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long an old stream at another central is still read.
const OLD_STREAM_GRACE: Duration = Duration::from_secs(2);

/// How a want's error starts when the directory refused to watch it.
const NOT_WATCHED: &str = "not watched: ";

/// What a stream's reader forwards.
enum Msg {
    Ready,
    Event(v1::WatchEvent),
    Ended(String),
}

struct Open {
    generation: u64,
    central: usize,
    reader: JoinHandle<()>,
}

impl Wants {
    /// The subscriptions of every want still waiting (deduplicated).
    fn subscriptions(&self) -> v1::WatchRequest {
        let mut req = v1::WatchRequest::default();
        let (mut ids, mut names, mut queries) = (HashSet::new(), HashSet::new(), HashSet::new());
        for e in lock(&self.0.book).entries.iter().filter(|e| e.watched()) {
            match &e.wanted {
                Wanted::Id(id) => ids.insert(id.to_hex()),
                Wanted::Name(n) => names.insert(n.to_string()),
                Wanted::Query(q) => queries.insert(q.clone()),
            };
        }
        req.file_ids = ids.into_iter().collect();
        req.names = names.into_iter().collect();
        req.queries = queries.into_iter().collect();
        req
    }

    /// Keep the Watch stream open until `cancel` (see the module doc).
    pub(crate) async fn watch_loop(self, cancel: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<(u64, Msg)>(256);
        let mut current: Option<Open> = None;
        let mut old: Vec<(Instant, JoinHandle<()>)> = Vec::new();
        let mut generation = 0u64;
        let mut open_at: Option<Instant> = Some(Instant::now());
        let mut backoff = Duration::from_millis(100);
        loop {
            if open_at.is_some_and(|t| t <= Instant::now()) {
                open_at = None;
                let req = self.subscriptions();
                let empty =
                    req.file_ids.is_empty() && req.names.is_empty() && req.queries.is_empty();
                if empty {
                    // Nothing to wait for: no stream.
                    if let Some(o) = current.take() {
                        o.reader.abort();
                    }
                    *lock(&self.0.watch_error) = None;
                    self.0.watching.store(true, Ordering::Relaxed);
                    self.touch();
                } else if !self.0.central.is_joined() {
                    open_at = Some(Instant::now() + backoff);
                } else {
                    match self.0.central.open_watch(req).await {
                        Ok((at, stream)) => {
                            generation += 1;
                            let reader = tokio::spawn(read(generation, stream, tx.clone()));
                            if let Some(prev) = current.take() {
                                if prev.central != at {
                                    // Moved: what the old central owed us
                                    // may never come; check every want.
                                    self.uncheck_all();
                                }
                                old.push((Instant::now() + OLD_STREAM_GRACE, prev.reader));
                            }
                            current = Some(Open {
                                generation,
                                central: at,
                                reader,
                            });
                            // Watched now: a refusal of before is over.
                            if lock(&self.0.watch_error).take().is_some() {
                                for w in &mut lock(&self.0.book).entries {
                                    if w.want
                                        .error
                                        .as_deref()
                                        .is_some_and(|e| e.starts_with(NOT_WATCHED))
                                    {
                                        w.want.error = None;
                                    }
                                }
                                self.touch();
                            }
                        }
                        Err(e)
                            if matches!(
                                e.code,
                                Code::ResourceExhausted | Code::InvalidArgument
                            ) =>
                        {
                            // The wants themselves are refused (a limit):
                            // nothing changes until they do.
                            tracing::warn!(error = %e.message, "the directory refused to watch our wants");
                            let mut book = lock(&self.0.book);
                            for w in book.entries.iter_mut().filter(|w| w.watched()) {
                                w.want.error = Some(format!("{NOT_WATCHED}{}", e.message));
                            }
                            drop(book);
                            *lock(&self.0.watch_error) = Some(e.message);
                            self.touch();
                        }
                        Err(e) => {
                            tracing::debug!(code = ?e.code, error = %e.message, retry_in = ?backoff, "watch: cannot open the stream");
                            open_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
            let next_old = old.iter().map(|(t, _)| *t).min();
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.0.resubscribe.notified() => {
                    open_at.get_or_insert_with(Instant::now);
                }
                () = sleep_until(open_at) => {}
                () = sleep_until(next_old) => {
                    let now = Instant::now();
                    old.retain(|(t, h)| {
                        if *t <= now {
                            h.abort();
                        }
                        *t > now
                    });
                }
                m = rx.recv() => {
                    let Some((g, msg)) = m else { break };
                    let is_current = current.as_ref().is_some_and(|o| o.generation == g);
                    match msg {
                        Msg::Ready if is_current => {
                            backoff = Duration::from_millis(100);
                            self.check_unchecked(&cancel).await;
                        }
                        Msg::Ready => {}
                        Msg::Event(ev) => self.on_event(ev).await,
                        Msg::Ended(why) if is_current => {
                            tracing::info!(reason = %why, "watch: the stream ended; opening it again");
                            current = None;
                            self.uncheck_all();
                            open_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        Msg::Ended(_) => {}
                    }
                }
            }
        }
        if let Some(o) = current {
            o.reader.abort();
        }
        for (_, h) in old {
            h.abort();
        }
    }

    /// Every want must be checked again (the stream that covered them
    /// ended).
    fn uncheck_all(&self) {
        for e in &mut lock(&self.0.book).entries {
            e.checked = false;
        }
        self.0.watching.store(false, Ordering::Relaxed);
        self.touch();
    }

    /// One check per want the stream covers that was not checked yet;
    /// then the stream covers them all.
    async fn check_unchecked(&self, cancel: &CancellationToken) {
        let todo: Vec<_> = lock(&self.0.book)
            .entries
            .iter()
            .filter(|e| e.watched() && !e.checked)
            .cloned()
            .collect();
        for e in todo {
            if cancel.is_cancelled() {
                return;
            }
            if let Err(err) = self.check(&e).await {
                tracing::debug!(want = %e.want.want_id, error = %err, "watch: a want could not be checked; it will be at the next stream");
            }
        }
        self.0.watching.store(true, Ordering::Relaxed);
        self.touch();
    }
}

/// Forward one stream's messages until it ends.
async fn read(
    g: u64,
    mut stream: tonic::codec::Streaming<v1::WatchEvent>,
    tx: mpsc::Sender<(u64, Msg)>,
) {
    loop {
        let msg = match stream.message().await {
            Ok(Some(ev)) if ev.ready => Msg::Ready,
            Ok(Some(ev)) => Msg::Event(ev),
            Ok(None) => Msg::Ended("the central ended the stream".into()),
            Err(s) => Msg::Ended(format!("{:?}: {}", s.code(), s.message())),
        };
        let end = matches!(msg, Msg::Ended(_));
        if tx.send((g, msg)).await.is_err() || end {
            return;
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
