//! Reachability and relays (issue 25): is a joining peer reachable at the
//! URL it advertises, and if not, through which relay is it listed.
//!
//! * At Join the directory dials the advertised URL back (`dialback`: one
//!   `GET /peer/v1/health`, 2 s at most, to that host only, no redirects,
//!   a small answer that must name the joining peer). At most
//!   [`MAX_DIALS`] dial-backs run at once; a Join that finds none free
//!   within the same 2 s is judged unreachable ("too many joins at once"),
//!   so a flood of Joins never holds the directory up for long.
//! * `PSERVER_REACHABILITY`: AUTO believes the dial-back; PUBLIC dials
//!   back too but never relays (an unreachable PUBLIC peer is joined but
//!   not listed: its status says why); FIREWALLED is believed without a
//!   dial-back (a peer may only ever claim to be *less* reachable).
//! * An unreachable peer is never listed with its own URL: it is assigned
//!   the live relay with the fewest relayed peers (under its
//!   `PSERVER_RELAY_MAX_PEERS`, not in the Join's `avoid_relays`), and is
//!   listed as `<relay url>/peer/v1/relay/<peer id>`. With no relay free it
//!   is joined but unlisted ([`Reach::unlisted`]) until it joins again.
//! * Only reachable peers may relay: an offer from one the dial-back did
//!   not reach is dropped.
//! * The relay checks the attach token the Join answer carries on its own
//!   (see `peerdex_proto::relay`): the directory keeps no assignment
//!   state beyond the listed URL, which both stores carry.
//!
//! `CENTRAL_DIAL_BACK=false` turns the dial-back off (every AUTO and
//! PUBLIC peer is believed): for closed LANs, and for tests and benchmarks
//! that simulate peers at URLs nobody serves.

pub(crate) mod dialback;

use std::time::Duration;

use peerdex_proto::{PeerId, PeerUrl, v1};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::index::{Index, Reach, RelayCandidate};
use dialback::{DialBack, TIMEOUT};

/// Dial-backs running at once, at most.
pub(crate) const MAX_DIALS: usize = 128;
/// Most relays a Join may ask to avoid (the rest are ignored).
pub(crate) const MAX_AVOID: usize = 16;
/// Highest relay offer taken (`PSERVER_RELAY_MAX_PEERS` above is capped).
pub(crate) const MAX_RELAY_PEERS: u32 = 4096;
/// How long an attach token is valid: a peer whose tunnel drops after
/// that joins again for a fresh one (it does anyway, to re-announce).
pub(crate) const TOKEN_VALID: Duration = Duration::from_secs(3600);

/// The directory's reachability checks. Shared by every Join.
pub(crate) struct Reachability {
    /// `None`: `CENTRAL_DIAL_BACK=false`, every AUTO/PUBLIC peer believed.
    dial: Option<DialBack>,
    slots: Semaphore,
}

/// What a Join found about reaching the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub reachable: bool,
    /// Why not (empty when reachable).
    pub why: String,
}

/// What a Join lists and answers.
pub(crate) struct Listing {
    /// The URL the peer's holdings are listed under (its own when
    /// reachable; the relay URL; its own but unlisted without a relay).
    pub url: PeerUrl,
    pub reach: Reach,
    pub relay: Option<v1::RelayAssignment>,
}

impl Reachability {
    pub(crate) fn new(
        dial_back: bool,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> crate::error::Result<Self> {
        Ok(Self {
            dial: dial_back.then(|| DialBack::new(extra_roots)).transpose()?,
            slots: Semaphore::new(MAX_DIALS),
        })
    }

    /// Judge whether other peers can reach `peer` at `url`.
    pub(crate) async fn judge(
        &self,
        peer: &PeerId,
        url: &PeerUrl,
        mode: v1::Reachability,
        credential: Option<&str>,
    ) -> Verdict {
        if mode == v1::Reachability::Firewalled {
            return Verdict {
                reachable: false,
                why:
                    "the peer says it is behind a NAT or firewall (PSERVER_REACHABILITY=firewalled)"
                        .into(),
            };
        }
        let Some(dial) = &self.dial else {
            return Verdict {
                reachable: true,
                why: String::new(),
            };
        };
        let started = Instant::now();
        let Ok(Ok(_slot)) = tokio::time::timeout(TIMEOUT, self.slots.acquire()).await else {
            return Verdict {
                reachable: false,
                why: "not checked: too many joins at once; join again later".into(),
            };
        };
        let left = TIMEOUT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, dial.reach(peer, url, credential)).await {
            Ok(Ok(())) => Verdict {
                reachable: true,
                why: String::new(),
            },
            Ok(Err(e)) => Verdict {
                reachable: false,
                why: e.to_string(),
            },
            Err(_) => Verdict {
                reachable: false,
                why: format!("no answer within {} s from {url}", TIMEOUT.as_secs()),
            },
        }
    }
}

/// What a Join asks about its reachability.
pub(crate) struct Ask {
    pub mode: v1::Reachability,
    /// Its relay offer (`PSERVER_RELAY_MAX_PEERS`; 0 = none).
    pub relay_max: u32,
    /// Relays it could not use lately.
    pub avoid: Vec<PeerId>,
}

impl Ask {
    /// From a Join request; a bad `reachability` is INVALID_ARGUMENT,
    /// unparsable `avoid_relays` entries are left out.
    pub(crate) fn from_request(r: &v1::JoinRequest) -> crate::error::Result<Self> {
        let mode = v1::Reachability::try_from(r.reachability).map_err(|_| {
            crate::error::Invalid::Reachability {
                value: r.reachability,
            }
        })?;
        Ok(Self {
            mode,
            relay_max: r.relay_max_peers,
            avoid: r
                .avoid_relays
                .iter()
                .take(MAX_AVOID)
                .filter_map(|s| s.parse().ok())
                .collect(),
        })
    }
}

/// What to list for `peer` (advertising `url`, asking `ask`) after
/// `verdict`, with the relays in `ix` as they are at `now`.
pub(crate) fn listing(
    ix: &Index,
    peer: &PeerId,
    url: PeerUrl,
    ask: &Ask,
    verdict: &Verdict,
    now: Instant,
) -> Listing {
    let (mode, relay_max, avoid) = (ask.mode, ask.relay_max, &ask.avoid[..]);
    let unix_now = peerdex_proto::network::unix_now();
    if verdict.reachable {
        return Listing {
            url,
            reach: Reach {
                relay_max: relay_max.min(MAX_RELAY_PEERS),
                unlisted: false,
            },
            relay: None,
        };
    }
    let relay = (mode != v1::Reachability::Public)
        .then(|| pick(ix.relay_candidates(now), peer, avoid))
        .flatten();
    match relay {
        Some(r) => Listing {
            url: r.url.relay_for(peer),
            reach: Reach::default(),
            relay: Some(assignment(&r, peer, unix_now)),
        },
        None => Listing {
            url,
            reach: Reach {
                relay_max: 0,
                unlisted: true,
            },
            relay: None,
        },
    }
}

/// The least-loaded relay with room that is not `peer` itself nor one it
/// asked to avoid.
fn pick(relays: Vec<RelayCandidate>, peer: &PeerId, avoid: &[PeerId]) -> Option<RelayCandidate> {
    relays
        .into_iter()
        .find(|r| r.peer != *peer && r.carried < r.max && !avoid.contains(&r.peer))
}

fn assignment(r: &RelayCandidate, peer: &PeerId, unix_now: u64) -> v1::RelayAssignment {
    let expires = unix_now + TOKEN_VALID.as_secs();
    v1::RelayAssignment {
        relay_peer_id: r.peer.to_string(),
        relay_url: r.url.to_string(),
        attach_token: peerdex_proto::relay::attach_token(&r.key, peer, expires),
        token_expires: expires,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(peer: PeerId, carried: u32, max: u32) -> RelayCandidate {
        RelayCandidate {
            peer,
            url: "http://10.0.0.1:7071".parse().unwrap(),
            max,
            carried,
            key: [1; 32],
        }
    }

    #[test]
    fn the_least_loaded_relay_with_room_not_avoided() {
        let (me, a, b, c) = (
            PeerId::new_random(),
            PeerId::new_random(),
            PeerId::new_random(),
            PeerId::new_random(),
        );
        let relays = vec![cand(a, 0, 1), cand(b, 1, 1), cand(c, 1, 4)];
        assert_eq!(pick(relays.clone(), &me, &[]).unwrap().peer, a);
        assert_eq!(
            pick(relays.clone(), &me, &[a]).unwrap().peer,
            c,
            "b is full"
        );
        assert!(pick(relays.clone(), &me, &[a, c]).is_none());
        assert!(
            pick(vec![cand(me, 0, 9)], &me, &[]).is_none(),
            "never itself"
        );
    }
}
