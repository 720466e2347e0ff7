//! Challenge, Join and NetworkKeys: a peer proves its key and joins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use peerdex_proto::{PeerId, PeerUrl, v1};
use tokio::time::Instant;
use tonic::Request;

use super::{DirectoryService, bearer, parse_peer, secs, source};
use crate::directory::{Join, log_refused, unix_secs};
use crate::error::{Auth, Field, Invalid, NonceError, Result};
use crate::identity::NONCE_VALID;
use crate::index::Load;
use crate::network::Network;
use crate::store::PublicKey;

impl DirectoryService {
    pub(super) fn challenge(
        &self,
        req: Request<v1::ChallengeRequest>,
    ) -> Result<v1::ChallengeResponse> {
        self.admission().challenge(&source(&req))?;
        let peer = parse_peer(&req.into_inner().peer_id)?;
        let limits = self.admission().limits();
        Ok(v1::ChallengeResponse {
            nonce: self.inner.nonces.issue(&peer, Instant::now()),
            valid_secs: secs(NONCE_VALID),
            max_message_bytes: limits.max_message_bytes as u64,
            max_inventory: limits.max_inventory as u64,
        })
    }

    pub(super) async fn join(&self, req: Request<v1::JoinRequest>) -> Result<v1::JoinResponse> {
        let addr = source(&req);
        self.admission().join(&addr)?;
        let token = bearer(req.metadata()).ok();
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let url: PeerUrl = r.peer_url.parse().map_err(|source| Invalid::Parse {
            field: Field::PeerUrl,
            source,
        })?;
        let now = Instant::now();
        if let Some(net) = self.dir().network() {
            net.admit(&r)?;
        }
        if url.relayed().is_some() {
            return Err(Invalid::RelayUrl {
                url: url.to_string(),
            }
            .into());
        }
        let ask = crate::reach::Ask::from_request(&r)?;
        let key = self.prove_key(&peer, &r, now)?;
        let inventory = self.parse_files(r.files)?;
        let credential = self.dir().network().and_then(|n| n.own_credential().ok());
        let verdict = self
            .inner
            .reach
            .judge(&peer, &url, ask.mode, credential.as_deref())
            .await;
        let listing = crate::reach::listing(
            &self.dir().index(),
            &peer,
            url,
            &ask,
            &verdict,
            Instant::now(),
        );
        let session_token = hex::encode(rand::random::<[u8; 32]>());
        let join = Join {
            peer,
            url: listing.url.clone(),
            key,
            token,
            addr,
            load: Load::from(r.load),
            hash: *blake3::hash(session_token.as_bytes()).as_bytes(),
            nonce: r.nonce,
            unix_now: unix_secs(),
            replica_quota: r.replica_quota_bytes,
            reach: listing.reach,
        };
        let admission = self.inner.admission.clone();
        let over = Arc::new(AtomicU64::new(0));
        let admit = {
            let over = over.clone();
            Box::new(move |ix: &crate::index::Index| {
                admission.join_inventory(ix, &peer, addr, inventory, &over)
            })
        };
        let (count, refused) = self.dir().join(join, admit).await?;
        let over_limit = over.load(Ordering::Relaxed);
        tracing::info!(%peer, files = count, refused = refused.len(), over_limit,
            reachable = verdict.reachable, listed = %listing.url, unlisted = listing.reach.unlisted,
            "peer joined");
        log_refused(&peer, &refused);
        let (credential, credential_expires) = self.credential(&peer)?;
        Ok(v1::JoinResponse {
            session_token,
            lease_ttl_secs: secs(self.inner.lease_ttl),
            heartbeat_interval_secs: secs(self.inner.heartbeat_interval),
            refused,
            credential,
            credential_expires,
            revoked: self.revoked(),
            island: self.inner.links.island().to_owned(),
            over_limit,
            reachable: verdict.reachable,
            reachability: verdict.why,
            relay: listing.relay,
            listed_url: if listing.reach.unlisted {
                String::new()
            } else {
                listing.url.to_string()
            },
            central: self.inner.leadership.name().to_owned(),
            leader: self.inner.leadership.leader(),
        })
    }

    pub(super) fn network_keys(&self) -> v1::NetworkKeysResponse {
        v1::NetworkKeysResponse {
            keys: self.dir().network().map(Network::keys).unwrap_or_default(),
        }
    }

    /// The key a Join proves it holds: the public key, a nonce of ours for
    /// this peer, and its signature over them (spent here: a Join cannot
    /// be replayed).
    fn prove_key(&self, peer: &PeerId, r: &v1::JoinRequest, now: Instant) -> Result<PublicKey> {
        use peerdex_proto::identity::{public_key, verify_join};
        let key = public_key(&r.public_key).map_err(|source| Invalid::PublicKey { source })?;
        let nonces = &self.inner.nonces;
        nonces.check(peer, &r.nonce, now)?;
        verify_join(&key, &r.peer_id, &r.peer_url, &r.nonce, &r.signature)
            .map_err(Auth::Signature)?;
        if !nonces.spend(&r.nonce, now) {
            return Err(NonceError::Spent.into());
        }
        Ok(key.to_bytes())
    }

    /// A credential for `peer` in a private network (empty in an open one).
    pub(super) fn credential(&self, peer: &PeerId) -> Result<(String, u64)> {
        match self.dir().network() {
            Some(net) => net.credential(peer),
            None => Ok((String::new(), 0)),
        }
    }

    /// The departures to list in a Join or Heartbeat answer (none in an
    /// open network).
    pub(super) fn revoked(&self) -> Vec<v1::Revoked> {
        self.dir()
            .network()
            .map(Network::revoked)
            .unwrap_or_default()
    }
}
