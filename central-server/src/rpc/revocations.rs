//! The Revocations stream (private networks): every departure pushed to
//! the PServers as this central applies it, so a departed peer's
//! credential is refused by every member at once, not at the checking
//! PServer's next heartbeat.
//!
//! A stream starts with the whole list (`snapshot`), then carries each
//! batch [`crate::network::Network::revoke`] records: a Leave or a lease
//! that ended here, or (on etcd) a peer record that vanished from the
//! watch, whichever central the Leave went through. A subscriber that
//! falls behind gets the whole list again; one that does not read at all
//! loses its stream (it opens another). Bounded: only a live peer that
//! proved its token may subscribe, at most [`MAX_STREAMS_PER_PEER`]
//! streams each, and a stream ends with its peer's lease, at shutdown
//! and when this central drains (the PServer reopens it elsewhere).

use std::sync::atomic::Ordering;

use peerdex_proto::{PeerId, v1};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use std::collections::HashMap;
use std::sync::Mutex;

use peerdex_common::sync::lock;
use tokio_util::sync::CancellationToken;

use super::{DirectoryService, bearer, parse_peer};
use crate::error::{Error, Limit, Result};
use crate::index::TokenHash;

/// Streams one peer may hold open (a PServer keeps one; the second covers
/// a reconnect racing the old stream's end).
const MAX_STREAMS_PER_PEER: usize = 2;
/// Events waiting for a subscriber that does not read; beyond, its stream
/// ends.
const STREAM_BUFFER: usize = 16;

pub(crate) type RevocationStream = ReceiverStream<Result<v1::RevocationEvent, Status>>;

/// The Revocations streams open at this central.
#[derive(Default)]
pub(super) struct Streams {
    /// Streams open, per peer.
    open: Mutex<HashMap<PeerId, usize>>,
    /// Ends every stream (shutdown, drain).
    end: CancellationToken,
}

/// One open stream of a peer, given back when the stream ends.
struct Slot {
    service: DirectoryService,
    peer: PeerId,
}

impl Slot {
    fn take(service: &DirectoryService, peer: PeerId) -> Result<Self> {
        let mut open = lock(&service.inner.streams.open);
        let n = open.entry(peer).or_insert(0);
        if *n >= MAX_STREAMS_PER_PEER {
            return Err(Limit::Streams {
                peer,
                max: MAX_STREAMS_PER_PEER,
            }
            .into());
        }
        *n += 1;
        Ok(Self {
            service: service.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.service.inner.streams.open);
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

fn event(revoked: Vec<v1::Revoked>, snapshot: bool) -> Result<v1::RevocationEvent, Status> {
    Ok(v1::RevocationEvent { revoked, snapshot })
}

impl DirectoryService {
    /// End every Revocations and Watch stream (shutdown, drain): their
    /// PServers open them again at another central.
    pub(crate) fn end_streams(&self) {
        self.inner.streams.end.cancel();
        self.dir().watches().close();
    }

    pub(super) fn revocations(
        &self,
        req: Request<v1::RevocationsRequest>,
    ) -> Result<RevocationStream> {
        let token = bearer(req.metadata())?;
        let peer = parse_peer(&req.into_inner().peer_id)?;
        let Some(net) = self.dir().network() else {
            return Err(Error::OpenNetwork);
        };
        if self.inner.drain.draining.load(Ordering::Relaxed)
            || self.inner.streams.end.is_cancelled()
        {
            return Err(Error::Closed);
        }
        self.dir().authorize(&peer, &token, Instant::now())?;
        let slot = Slot::take(self, peer)?;
        let (pushed, list) = net.subscribe();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        // Room for it: the channel is new.
        let _ = tx.try_send(event(list, true));
        tokio::spawn(self.clone().push(slot, token, pushed, tx));
        Ok(ReceiverStream::new(rx))
    }

    /// Forward departures to one stream until it ends.
    async fn push(
        self,
        slot: Slot,
        token: TokenHash,
        mut pushed: tokio::sync::broadcast::Receiver<Vec<v1::Revoked>>,
        tx: mpsc::Sender<Result<v1::RevocationEvent, Status>>,
    ) {
        let peer = slot.peer;
        let Some(net) = self.dir().network() else {
            return;
        };
        let mut tick = tokio::time::interval(self.inner.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = self.inner.streams.end.clone();
        loop {
            let next = tokio::select! {
                () = end.cancelled() => return,
                () = tx.closed() => return,
                _ = tick.tick() => {
                    if self.dir().authorize(&peer, &token, Instant::now()).is_err() {
                        tracing::debug!(%peer, "revocations: the subscriber's lease ended; stream closed");
                        return;
                    }
                    continue;
                }
                m = pushed.recv() => match m {
                    Ok(batch) => event(batch, false),
                    // Fell behind: the whole list again.
                    Err(RecvError::Lagged(_)) => event(net.revoked(), true),
                    Err(RecvError::Closed) => return,
                },
            };
            if tx.try_send(next).is_err() {
                tracing::debug!(%peer, "revocations: the subscriber does not read; stream closed");
                return;
            }
        }
    }
}
