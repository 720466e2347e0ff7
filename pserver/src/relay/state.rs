//! What the directory said about reaching us at our last Join, and what
//! our tunnel to the assigned relay is doing: read by the lease (what the
//! next Join asks), the attach loop (where to dial), the download engine
//! (call a holder back only when we are reachable) and `peerdex status`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use peerdex_proto::{PeerId, PeerUrl, v1};
use tokio::sync::watch;

use crate::config::Reachability;

/// A relay that failed us is not asked for again for this long.
const AVOID_FOR: Duration = Duration::from_secs(60);

/// The relay the directory assigned us, with the token it checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub relay: PeerId,
    pub url: PeerUrl,
    pub token: String,
}

#[derive(Debug, Default)]
struct State {
    /// A Join answer arrived at least once.
    answered: bool,
    reachable: bool,
    reason: String,
    listed_url: Option<String>,
    relay: Option<Assignment>,
    attached: bool,
    /// Relays that failed us lately, and when.
    avoid: Vec<(PeerId, Instant)>,
    /// The next Join is for a new relay: skip the dial-back (we know we
    /// are unreachable; claiming less reach is always believed).
    known_firewalled: bool,
}

/// Our reachability as the directory judged it. Shared as `Arc<Reach>`.
#[derive(Debug)]
pub(crate) struct Reach {
    mode: Reachability,
    /// `PSERVER_RELAY_MAX_PEERS` when `PSERVER_RELAY` is on, else 0.
    relay_offer: u32,
    state: Mutex<State>,
    /// Bumped at every Join answer and tunnel change.
    changed: watch::Sender<u64>,
}

/// What a Join asks (the fields 90-92 of `JoinRequest`).
pub(crate) struct JoinAsk {
    pub reachability: i32,
    pub relay_max_peers: u32,
    pub avoid_relays: Vec<String>,
}

impl Reach {
    pub(crate) fn new(mode: Reachability, relay_offer: u32) -> Self {
        Self {
            mode,
            relay_offer,
            state: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Wakes at every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What the next Join asks.
    pub(crate) fn join_ask(&self) -> JoinAsk {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        s.avoid
            .retain(|(_, at)| now.duration_since(*at) < AVOID_FOR);
        let mode = match self.mode {
            Reachability::Auto if s.known_firewalled => v1::Reachability::Firewalled,
            Reachability::Auto => v1::Reachability::Auto,
            Reachability::Public => v1::Reachability::Public,
            Reachability::Firewalled => v1::Reachability::Firewalled,
        };
        JoinAsk {
            reachability: mode as i32,
            relay_max_peers: self.relay_offer,
            avoid_relays: s.avoid.iter().map(|(p, _)| p.to_string()).collect(),
        }
    }

    /// A Join answer arrived.
    pub(crate) fn joined(&self, a: &v1::JoinResponse) {
        let relay = a.relay.as_ref().and_then(|r| {
            Some(Assignment {
                relay: r.relay_peer_id.parse().ok()?,
                url: r.relay_url.parse().ok()?,
                token: r.attach_token.clone(),
            })
        });
        {
            let mut s = self.state.lock().unwrap();
            s.answered = true;
            // A central from before reachability says nothing at all:
            // then we are listed with our URL, as before.
            let judged =
                !a.reachability.is_empty() || a.relay.is_some() || !a.listed_url.is_empty();
            s.reachable = a.reachable || !judged;
            // A Join that carried the FIREWALLED hint of an auto peer (its
            // tunnel dropped: no dial-back needed to re-join) is answered
            // "the peer says it is firewalled"; the dial-back's own reason
            // (which URL nobody could reach) stays what the user is told.
            let hinted = self.mode == Reachability::Auto && s.known_firewalled;
            if !hinted || s.reason.is_empty() {
                s.reason = a.reachability.clone();
            }
            s.listed_url = (!a.listed_url.is_empty()).then(|| a.listed_url.clone());
            if s.relay != relay {
                s.attached = false;
            }
            s.relay = relay;
            s.known_firewalled = false;
        }
        self.bump();
    }

    /// The relay to keep a tunnel to, if any.
    pub(crate) fn assignment(&self) -> Option<Assignment> {
        self.state.lock().unwrap().relay.clone()
    }

    /// Whether the directory can reach us directly (so holders behind NAT
    /// may call us back).
    pub(crate) fn reachable(&self) -> bool {
        self.state.lock().unwrap().reachable
    }

    /// Joined, unreachable, and not PUBLIC: we need a relay.
    pub(crate) fn needs_relay(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.answered && !s.reachable && self.mode != Reachability::Public
    }

    pub(crate) fn set_attached(&self, up: bool) {
        self.state.lock().unwrap().attached = up;
        self.bump();
    }

    /// `relay` failed us (gone, full, refused): the next Join asks for
    /// another and skips the dial-back.
    pub(crate) fn failed(&self, relay: PeerId) {
        let mut s = self.state.lock().unwrap();
        s.avoid.retain(|(p, _)| *p != relay);
        s.avoid.push((relay, Instant::now()));
        s.known_firewalled = true;
        s.attached = false;
        s.relay = None;
    }

    /// The next Join is only to ask for a relay again: skip the dial-back.
    pub(crate) fn want_relay(&self) {
        self.state.lock().unwrap().known_firewalled = true;
    }

    /// For `peerdex status`; `relaying_for` when we relay.
    pub(crate) fn status(
        &self,
        relaying_for: Option<u32>,
    ) -> Option<peerdex_proto::rest::Reachability> {
        let s = self.state.lock().unwrap();
        if !s.answered {
            return None;
        }
        let relay_url = s.relay.as_ref().map(|r| r.url.to_string());
        let summary = match (&s.listed_url, &relay_url) {
            _ if s.reachable => "reachable".to_owned(),
            (Some(_), Some(r)) if s.attached => format!("behind NAT, shared through relay {r}"),
            (Some(_), Some(r)) => format!("behind NAT, connecting to relay {r}"),
            _ if self.mode == Reachability::Public => format!(
                "not reachable ({}) and PSERVER_REACHABILITY=public: files not listed; open the port or use auto",
                s.reason
            ),
            _ => "behind NAT, no relay has room: files not listed until one does (start a reachable PServer with PSERVER_RELAY=true)".to_owned(),
        };
        Some(peerdex_proto::rest::Reachability {
            summary,
            reachable: s.reachable,
            mode: format!("{:?}", self.mode).to_lowercase(),
            reason: (!s.reason.is_empty()).then(|| s.reason.clone()),
            listed_url: s.listed_url.clone(),
            relay_url,
            relay_attached: s.attached,
            relaying_for,
        })
    }
}
