//! What the directory's stores share: the index and the replication
//! state they keep current, the settings they apply, and the checks and
//! requests they take. The stores (`sqlite`, `on_etcd`, `follow`) depend
//! on this module, never on their parent.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{RwLock, RwLockReadGuard};
use peerdex_proto::convert::SharedFile;
use peerdex_proto::{FileId, PeerId, PeerUrl, v1};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{Auth, Error, Result};
use crate::etcd::Decline;
use crate::index::{Index, Lease, Load, Reach, TokenHash};
use crate::network::Network;
use crate::replication::{Replicas, Task, Tasks};
use crate::store::PublicKey;
use crate::watch::Watches;

/// The state every store keeps current. Shared as `Arc<Shared>`.
pub(crate) struct Shared {
    pub(crate) index: RwLock<Index>,
    pub(crate) replicas: Replicas,
    /// A private network (`CENTRAL_JOIN_SECRET`): departures revoke
    /// credentials. `None` = open.
    pub(crate) network: Option<Network>,
    /// The Watch streams open at this central: told of every holding the
    /// index takes, and of every departure.
    pub(crate) watches: Arc<Watches>,
    pub(crate) lease_ttl: Duration,
    /// Forget a key binding after this long without a Join (and the peer gone).
    pub(crate) key_retention: Duration,
    /// CENTRAL_MAX_KEYS.
    pub(crate) max_keys: usize,
    /// Calls of one peer that must not interleave (its inventory changes
    /// on etcd, its pin changes) take its stripe of these.
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Shared {
    pub(crate) fn new(index: Index, network: Option<Network>, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            index: RwLock::new(index),
            replicas: Replicas::default(),
            network,
            watches: Arc::default(),
            lease_ttl: config.lease_ttl,
            key_retention: config.key_retention,
            max_keys: config.limits.max_keys,
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        })
    }

    /// The index took these holdings (Join, Publish, or etcd's watch):
    /// a holder appeared for each; the Watch streams hear of it.
    pub(crate) fn appeared(&self, files: &[SharedFile]) {
        self.watches
            .appeared(files.iter().map(|f| (&f.id, &f.name)));
    }

    /// The read side of the index lock.
    pub(crate) fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read()
    }

    /// A live peer proving it is itself (see [`authorize`]).
    pub(crate) fn authorize(&self, peer: &PeerId, token: &TokenHash, now: Instant) -> Result<()> {
        authorize(&self.index(), peer, token, now)
    }

    /// This peer's stripe of the serializing locks.
    pub(crate) async fn serial(&self, peer: &PeerId) -> tokio::sync::MutexGuard<'_, ()> {
        let i = (peer.as_uuid().as_u128() % self.stripes.len() as u128) as usize;
        self.stripes[i].lock().await
    }

    /// Departed peers: their Watch streams end, their credentials are
    /// revoked (private network).
    pub(crate) fn departed(&self, peers: &[PeerId]) {
        self.watches.departed(peers);
        if let Some(net) = &self.network
            && !peers.is_empty()
        {
            net.revoke(peers);
        }
    }
}

/// A Join, checked at the edge (the peer proved its key).
pub(crate) struct Join {
    pub peer: PeerId,
    pub url: PeerUrl,
    pub key: PublicKey,
    /// The session token the call carried, if any (a re-join of a peer
    /// without a key binding must show it).
    pub token: Option<TokenHash>,
    pub addr: IpAddr,
    pub load: Load,
    /// The new session token's hash.
    pub hash: TokenHash,
    pub nonce: Vec<u8>,
    pub unix_now: i64,
    pub replica_quota: u64,
    /// Relay offer and listing, as the Join's reachability check decided.
    pub reach: Reach,
}

/// The entries of an inventory that are taken, and the refusals.
pub(crate) type Admitted = (Vec<SharedFile>, Vec<v1::Refused>);

/// The admission of an inventory against the index as it is when the
/// change is made (quotas, the peer's own size claims): see
/// `crate::admission`.
pub(crate) type Admit = Box<dyn FnOnce(&Index) -> Result<Admitted> + Send>;

/// What one round of the replication planner changes.
#[derive(Default)]
pub(crate) struct TaskChanges {
    /// The whole set of open tasks after the round.
    pub tasks: Tasks,
    /// Tasks new or changed.
    pub give: Vec<(PeerId, FileId, Task)>,
    /// Tasks no longer open.
    pub withdraw: Vec<(PeerId, FileId)>,
    /// FETCHes that took too long, recorded as declined.
    pub timed_out: Vec<(PeerId, FileId, Decline)>,
    /// Declines old enough to forget.
    pub forget: Vec<(PeerId, FileId)>,
}

impl TaskChanges {
    pub(crate) fn is_empty(&self) -> bool {
        self.give.is_empty()
            && self.withdraw.is_empty()
            && self.timed_out.is_empty()
            && self.forget.is_empty()
    }
}

/// A live peer proving it is itself: unknown/expired → join again, wrong
/// token → UNAUTHENTICATED.
pub(crate) fn authorize(ix: &Index, peer: &PeerId, token: &TokenHash, now: Instant) -> Result<()> {
    match ix.lease(peer, now) {
        Lease::Unknown | Lease::Expired => Err(Error::NotJoined(*peer)),
        Lease::Live if ix.token_matches(peer, token) => Ok(()),
        Lease::Live => Err(Auth::WrongToken(*peer).into()),
    }
}

/// A Join of a peer without a key binding yet (from before keys) that
/// has a live lease must carry its session token.
pub(crate) fn check_rejoin(ix: &Index, j: &Join, bound: bool, now: Instant) -> Result<()> {
    if !bound
        && ix.lease(&j.peer, now) == Lease::Live
        && !j.token.is_some_and(|t| ix.token_matches(&j.peer, &t))
    {
        return Err(Auth::LiveLease(j.peer).into());
    }
    Ok(())
}

/// The check of a Leave: `Ok(false)` when the peer is already gone
/// (leaving is idempotent), UNAUTHENTICATED with a wrong token.
pub(crate) fn check_leave(ix: &Index, peer: &PeerId, token: &TokenHash) -> Result<bool> {
    if ix.lease(peer, Instant::now()) == Lease::Unknown {
        return Ok(false);
    }
    if !ix.token_matches(peer, token) {
        return Err(Auth::WrongToken(*peer).into());
    }
    Ok(true)
}
