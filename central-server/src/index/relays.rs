//! Reachability in the index (issue 25): which live peers offer to relay,
//! how many firewalled peers each carries, and which peers are not listed
//! (unreachable, no relay). Kept with the peer like its replica space, by
//! both stores.

use peerdex_proto::{PeerId, PeerUrl};
use tokio::time::Instant;

use super::{Index, TokenHash};

/// What a Join said and found about reaching a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    /// It relays for up to this many firewalled peers (0 = none).
    pub relay_max: u32,
    /// Its holdings are in no answer: unreachable and no relay had room.
    pub unlisted: bool,
}

/// A live relay as an assignment sees it.
#[derive(Debug, Clone)]
pub struct RelayCandidate {
    pub peer: PeerId,
    pub url: PeerUrl,
    pub max: u32,
    /// Live peers listed through it now.
    pub carried: u32,
    /// The hash of its session token: the key its attach tokens are
    /// made with (it can compute it; nobody else learns it).
    pub key: TokenHash,
}

impl Index {
    /// Set what a known peer's Join said about reaching it.
    pub fn set_reach_of(&mut self, peer: &PeerId, reach: Reach) {
        if let Some(&p) = self.peer_ix.get(peer) {
            self.peers.get_mut(p).reach = reach;
        }
    }

    /// Every live relay with the load it carries, least loaded first
    /// (ties by id, so the order is stable). One pass over the peers: a
    /// relayed peer counts for the relay whose URL its listing starts with.
    pub fn relay_candidates(&self, now: Instant) -> Vec<RelayCandidate> {
        let mut relays: Vec<RelayCandidate> = self
            .peers
            .iter()
            .filter(|(p, e)| e.reach.relay_max > 0 && self.live(*p, now))
            .filter(|(_, e)| e.url.is_base())
            .map(|(_, e)| RelayCandidate {
                peer: e.id,
                url: e.url.clone(),
                max: e.reach.relay_max,
                carried: 0,
                key: e.token_hash,
            })
            .collect();
        if relays.is_empty() {
            return relays;
        }
        for (p, e) in self.peers.iter() {
            if !self.live(p, now) {
                continue;
            }
            if let Some((base, _)) = e.url.relayed()
                && let Some(r) = relays.iter_mut().find(|r| r.url == base)
            {
                r.carried += 1;
            }
        }
        relays.sort_by_key(|r| (r.carried, r.peer));
        relays
    }
}
