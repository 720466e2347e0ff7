//! Pin and Pins: a peer asks for a number of live copies of a file, and
//! reads how its pins are kept.

use std::collections::{BTreeMap, HashSet};

use peerdex_proto::{FileId, PeerId, v1};
use tokio::time::Instant;
use tonic::Request;

use super::{DirectoryService, bearer, parse_peer, source};
use crate::directory::unix_secs;
use crate::error::{Error, Field, Invalid, Limit, Result};
use crate::index::Index;
use crate::replication::{Pin, Unplaced, Volunteer};

impl DirectoryService {
    pub(super) async fn pin(&self, req: Request<v1::PinRequest>) -> Result<v1::PinResponse> {
        let token = bearer(req.metadata())?;
        let addr = source(&req);
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        self.peer_rate(&peer, &token)?;
        let now = Instant::now();
        self.dir().authorize(&peer, &token, now)?;
        let file: FileId = r.file_id.parse().map_err(|source| Invalid::Parse {
            field: Field::FileId,
            source,
        })?;
        let limits = self.admission().limits();
        let max = limits.max_replicas;
        if r.replicas > max {
            return Err(Invalid::Replicas {
                asked: r.replicas,
                max,
            }
            .into());
        }
        // One pin change of a peer at a time (its limits are checked
        // against its other pins).
        let _serial = self.dir().serial(&peer).await;
        let known = self.dir().index().locate_id(&file, now, 1);
        let replicas = self.dir().replicas();
        let pin = if r.replicas <= 1 {
            if known.is_none() && replicas.pins().any(&file).is_none() {
                return Err(Error::NoSuchFile(file));
            }
            None
        } else {
            let (size, name) = match (&known, replicas.pins().any(&file)) {
                (Some(k), _) => (k.size, k.names.first().cloned().unwrap_or_default()),
                (None, Some(p)) => (p.size, p.name.clone()),
                (None, None) => return Err(Error::NoSuchFile(file)),
            };
            let (count, bytes) = replicas.pins().usage(&peer, &file);
            if count + 1 > limits.max_pins_per_peer {
                return Err(Limit::PinsPerPeer { peer, count }.into());
            }
            let more = size.saturating_mul(u64::from(r.replicas));
            if bytes.saturating_add(more) > limits.max_pinned_bytes_per_peer {
                return Err(Limit::PinnedBytesPerPeer {
                    pinned: bytes,
                    more,
                    size,
                    copies: r.replicas,
                    max: limits.max_pinned_bytes_per_peer,
                }
                .into());
            }
            // The same limits per source address: a key costs one
            // Challenge, an address does not come that cheap.
            let (count, bytes) = replicas.pins().usage_of_addr(addr, &peer, &file);
            if count + 1 > limits.max_pins_per_addr {
                return Err(Limit::PinsPerAddr { addr, count }.into());
            }
            if bytes.saturating_add(more) > limits.max_pinned_bytes_per_addr {
                return Err(Limit::PinnedBytesPerAddr {
                    addr,
                    pinned: bytes,
                    more,
                    size,
                    copies: r.replicas,
                    max: limits.max_pinned_bytes_per_addr,
                }
                .into());
            }
            Some(Pin {
                replicas: r.replicas,
                size,
                name,
                at: unix_secs(),
                addr: Some(addr),
                orphaned_at: None,
            })
        };
        self.dir().set_pin(file, peer, pin.clone()).await?;
        match &pin {
            Some(p) => {
                tracing::info!(%peer, %file, name = p.name, replicas = p.replicas, "pin set")
            }
            None => tracing::info!(%peer, %file, "pin removed"),
        }
        Ok(v1::PinResponse {
            pin: Some(self.pin_status(&file, &peer, now)),
        })
    }

    pub(super) fn pins(&self, req: Request<v1::PinsRequest>) -> Result<v1::PinsResponse> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let now = Instant::now();
        self.dir().authorize(&peer, &token, now)?;
        let mine = self.dir().replicas().pins().of(&peer);
        let pins = mine
            .into_iter()
            .map(|(f, _)| self.pin_status(&f, &peer, now))
            .collect();
        Ok(v1::PinsResponse { pins })
    }

    fn pin_status(&self, file: &FileId, peer: &PeerId, now: Instant) -> v1::PinStatus {
        let ix = self.dir().index();
        let replicas = self.dir().replicas();
        let located = ix.locate_id(file, now, 1);
        let book = replicas.pins();
        let mine = book.get(file, peer);
        let (size, name) = match (&located, mine.or_else(|| book.any(file))) {
            (Some(l), _) => (l.size, l.names.first().cloned().unwrap_or_default()),
            (None, Some(p)) => (p.size, p.name.clone()),
            (None, None) => (0, String::new()),
        };
        let pinned = mine.map_or(0, |p| p.replicas);
        drop(book);
        let replication = replicas.replication(&ix, file, now);
        let waiting = (replication.state == "under")
            .then(|| self.waiting_for_room(&ix, file, &replication, size, now))
            .flatten()
            .map(|u| u.message())
            .unwrap_or_default();
        v1::PinStatus {
            file_id: file.to_hex(),
            name,
            size,
            pinned,
            replication: Some(replication),
            waiting,
        }
    }

    /// A pin short of copies that no volunteer can take now: what the
    /// planner found (on the leader), or else what this central sees (no
    /// fetch open for it and no volunteer with room for it).
    fn waiting_for_room(
        &self,
        ix: &Index,
        file: &FileId,
        r: &v1::Replication,
        size: u64,
        now: Instant,
    ) -> Option<Unplaced> {
        if let Some(u) = self.inner.replicator.unplaced(file) {
            return Some(u);
        }
        if self.dir().replicas().fetching(file) || r.live == 0 {
            return None;
        }
        let mut pinned = BTreeMap::new();
        pinned.insert(*file, (r.wanted, size, String::new()));
        let (files, volunteers) = ix.replication_view(now, &pinned);
        let holders: HashSet<PeerId> = files
            .iter()
            .filter(|f| f.id == *file)
            .flat_map(|f| f.holders.iter().map(|h| h.peer))
            .collect();
        let room = |v: &Volunteer| v.quota.saturating_sub(v.used);
        if volunteers
            .iter()
            .any(|v| !holders.contains(&v.peer) && room(v) >= size)
        {
            return None;
        }
        Some(Unplaced {
            wanted_bytes: size.saturating_mul(u64::from(r.wanted.saturating_sub(r.proven))),
            free_bytes: volunteers.iter().map(room).fold(0, u64::saturating_add),
        })
    }
}
