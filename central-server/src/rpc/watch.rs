//! The Watch stream (wanted files): a peer subscribes to file ids, exact
//! names and queries, and hears the moment a holder appears for one, with
//! the fields of a Locate answer, whichever central of the directory the
//! publish went through.
//!
//! The subscriptions are parsed here, at the edge (ids and names as
//! Locate's, queries by Search's own parser and bounds), counted against
//! `CENTRAL_MAX_WATCHES_PER_PEER`, and registered with
//! [`crate::watch::Watches`] (one stream per peer: a new one replaces the
//! old). The stream's task then matches every batch of holdings the
//! index takes and pushes what matched, built from the index as it is
//! then. It never makes the directory wait: it reads a bounded broadcast
//! feed, and a subscriber that falls behind (the feed or its own buffer)
//! loses its stream with a status that says what to do. The stream also
//! ends with the peer's lease, when the index is reloaded, and when this
//! central drains or shuts down.
//!
//! Linked islands (`crate::link`): when a linked island's summary changes,
//! each stream asks the islands whose summary may hold one of its watched
//! ids or exact names (a one-hop Locate under the link deadline) and
//! pushes what they hold, once per target and island. Queries watch this
//! island only.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use peerdex_proto::{FileId, FileName, PeerId, v1};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use super::query::query_words;
use super::{DirectoryService, bearer, parse_peer};
use crate::error::{Error, Field, Invalid, Limit, Result};
use crate::index::TokenHash;
use crate::link::forward::merge_located;
use crate::watch::{Batch, Ended, Filter, Match, Registration};

/// Events waiting for a subscriber that does not read; beyond, its
/// stream ends (one place stays for the status that says so).
const STREAM_BUFFER: usize = 64;

pub(crate) type WatchStream = ReceiverStream<Result<v1::WatchEvent, Status>>;

type Sender = mpsc::Sender<Result<v1::WatchEvent, Status>>;

impl DirectoryService {
    pub(super) fn watch(&self, req: Request<v1::WatchRequest>) -> Result<WatchStream> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let filter = self.parse_watch(&peer, r)?;
        if self.inner.drain.draining.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        self.dir().authorize(&peer, &token, Instant::now())?;
        let registration = self
            .dir()
            .watches()
            .register(peer, filter.len())
            .ok_or(Error::Closed)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        // Room for it: the channel is new.
        let _ = tx.try_send(Ok(v1::WatchEvent {
            ready: true,
            ..Default::default()
        }));
        tracing::debug!(%peer, subscriptions = filter.len(), "watch: stream open");
        tokio::spawn(
            self.clone()
                .push_watch(peer, token, filter, registration, tx),
        );
        Ok(ReceiverStream::new(rx))
    }

    /// The subscriptions of a request, checked as Locate and Search check
    /// theirs, and counted against `CENTRAL_MAX_WATCHES_PER_PEER`.
    fn parse_watch(&self, peer: &PeerId, r: v1::WatchRequest) -> Result<Filter> {
        let max = self.admission().limits().max_watches_per_peer;
        let count = r.file_ids.len() + r.names.len() + r.queries.len();
        if count > max {
            return Err(Limit::Watches {
                peer: *peer,
                count,
                max,
            }
            .into());
        }
        let mut filter = Filter::default();
        for s in r.file_ids {
            let id: FileId = s.parse().map_err(|source| Invalid::Parse {
                field: Field::FileId,
                source,
            })?;
            filter.watch_id(id, s);
        }
        for s in r.names {
            self.check_name_len(&s, Field::Name)?;
            let name: FileName = s.parse().map_err(|source| Invalid::Parse {
                field: Field::Name,
                source,
            })?;
            filter.watch_name(name);
        }
        for q in r.queries {
            // A query of no word (only punctuation) is taken, as Search
            // takes it: it matches no name.
            let words = query_words(&q)?;
            filter.watch_query(q, words);
        }
        Ok(filter)
    }

    /// Push what matches to one stream until it ends.
    async fn push_watch(
        self,
        peer: PeerId,
        token: TokenHash,
        filter: Filter,
        mut reg: Registration,
        tx: Sender,
    ) {
        let mut tick = tokio::time::interval(self.inner.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = reg.end.clone();
        // Linked islands: asked for the watched ids and names when their
        // summary changes; each (target, island) told once.
        let mut islands = self.inner.links.summaries_changed();
        islands.mark_unchanged();
        let mut told = HashSet::new();
        let status = loop {
            // Biased: batches already fed go out before the stream ends,
            // so a replacing stream (which hears only what is applied
            // after it registered) misses nothing the old one was owed.
            tokio::select! {
                biased;
                () = tx.closed() => return,
                m = reg.feed.recv() => match m {
                    Ok(batch) => {
                        if let Err(s) = self.send_matches(&filter, &batch, &tx) {
                            break s;
                        }
                    }
                    Err(RecvError::Lagged(n)) => break Status::resource_exhausted(format!(
                        "watch: this stream fell {n} batches of publishes behind the directory and was closed; open Watch again and check each wanted file with Locate"
                    )),
                    Err(RecvError::Closed) => break ended(Ended::Closing),
                },
                () = end.ended() => break ended(end.why()),
                Ok(()) = islands.changed() => {
                    if let Err(s) = self.send_linked(&filter, &mut told, &tx).await {
                        break s;
                    }
                }
                _ = tick.tick() => {
                    if self.dir().authorize(&peer, &token, Instant::now()).is_err() {
                        break ended(Ended::LeaseOver);
                    }
                }
            }
        };
        tracing::debug!(%peer, code = ?status.code(), reason = status.message(), "watch: stream closed");
        // The last place of the buffer is kept for this.
        let _ = tx.try_send(Err(status));
    }

    /// Build and queue the events `batch` makes for `filter`; the status
    /// to end with when the subscriber does not keep up.
    fn send_matches(
        &self,
        filter: &Filter,
        batch: &Batch,
        tx: &Sender,
    ) -> std::result::Result<(), Status> {
        let mut found = Vec::new();
        for (file, name) in batch.iter() {
            filter.matches(file, name, &mut found);
        }
        for m in found {
            let Some(event) = self.event(m) else {
                continue;
            };
            self.queue(tx, event)?;
        }
        Ok(())
    }

    /// Queue `event` on a stream; the status to end it with when the
    /// subscriber does not keep up or went away.
    fn queue(&self, tx: &Sender, event: v1::WatchEvent) -> std::result::Result<(), Status> {
        if tx.capacity() <= 1 {
            return Err(Status::resource_exhausted(format!(
                "watch: the subscriber did not read {STREAM_BUFFER} events; stream closed: open Watch again and check each wanted file with Locate"
            )));
        }
        if tx.try_send(Ok(event)).is_err() {
            return Err(Status::cancelled("watch: the subscriber went away"));
        }
        self.dir().watches().pushed();
        Ok(())
    }

    /// Ask the linked islands whose summary may hold a watched id or name
    /// (one hop, under the link deadline) and queue an event for each
    /// island that has holders, once per (target, island). Queries are
    /// not asked of linked islands (a Search of every island at every
    /// change would cost them a search per watcher).
    async fn send_linked(
        &self,
        filter: &Filter,
        told: &mut HashSet<(String, String)>,
        tx: &Sender,
    ) -> std::result::Result<(), Status> {
        let limits = self.admission().limits();
        for (m, target) in filter.targets() {
            let forwarded = self
                .inner
                .links
                .locate(&target, limits.max_holders as u32)
                .await;
            for (island, answer) in forwarded.answers {
                let key = (format!("{target:?}"), island.clone());
                if told.contains(&key) {
                    continue;
                }
                let mut files = Vec::new();
                let mut event = v1::WatchEvent::default();
                let id = match &m {
                    Match::Id { file, spelled } => {
                        event.file_id.clone_from(spelled);
                        Some(*file)
                    }
                    Match::Name(name) => {
                        event.name = name.to_string();
                        None
                    }
                    Match::Query { .. } => continue,
                };
                merge_located(
                    &mut files,
                    &island,
                    answer,
                    id.as_ref(),
                    limits.max_holders,
                    limits.max_page,
                );
                if files.is_empty() {
                    continue;
                }
                told.insert(key);
                event.files = files;
                self.queue(tx, event)?;
            }
        }
        Ok(())
    }

    /// An event for `m`, with the index's answer as Locate would give it
    /// now; `None` when no live holder is left already.
    fn event(&self, m: Match) -> Option<v1::WatchEvent> {
        let limits = self.admission().limits();
        let now = Instant::now();
        let mut event = v1::WatchEvent::default();
        let mut files: Vec<v1::LocatedFile> = {
            let ix = self.dir().index();
            match m {
                Match::Id { file, spelled } => {
                    event.file_id = spelled;
                    ix.locate_id(&file, now, limits.max_holders)
                        .into_iter()
                        .collect()
                }
                Match::Name(name) => {
                    let found =
                        ix.locate_name(name.as_str(), now, limits.max_holders, limits.max_page);
                    event.name = name.to_string();
                    found
                }
                Match::Query { query, file, name } => {
                    event.query = query;
                    event.matched_name = name.to_string();
                    ix.locate_id(&file, now, limits.max_holders)
                        .into_iter()
                        .collect::<Vec<_>>()
                }
            }
        };
        if files.is_empty() {
            return None;
        }
        self.dir()
            .replicas()
            .with_replication(&self.dir().index(), &mut files, now);
        event.files = files;
        Some(event)
    }
}

/// The status a stream ends with when the directory ends it.
fn ended(why: Ended) -> Status {
    match why {
        Ended::Replaced => Status::aborted("watch: replaced by a newer Watch stream of this peer"),
        Ended::LeaseOver => Status::failed_precondition(
            "watch: the peer's lease ended; join again, then open Watch again",
        ),
        Ended::Reloaded => Status::unavailable(
            "watch: this central reloaded its index; open Watch again and check each wanted file with Locate",
        ),
        Ended::Closing => Status::unavailable(
            "watch: this central is shutting down; open Watch at another central of the directory and check each wanted file with Locate",
        ),
    }
}
