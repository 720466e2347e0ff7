//! Private networks, this PServer's side (`PSERVER_JOIN_SECRET`):
//!
//! * our Join proves the secret (`peerdex_proto::network::secret_proof`);
//! * the directory answers with our credential (a JWT, renewed with every
//!   Heartbeat), which [`PeerHttp`] sends on every request to another
//!   peer's API;
//! * our peer API asks every request for a credential of this network:
//!   EdDSA, signed by a key the directory publishes (`NetworkKeys`, fetched
//!   at Join and again on an unknown key id), for this network's audience,
//!   not expired, and not of a peer that left since it was issued. The
//!   directory pushes each departure on a `Revocations` stream we keep
//!   open ([`crate::link::Central::revocations_loop`]), and lists them
//!   all in Join and Heartbeat answers (a safety net). Until we have the
//!   list once (after a start or restart: a peer that left while we were
//!   down would otherwise get in), every credential is answered 503 with
//!   `Retry-After` ([`Refused::NotReady`]): downloaders treat that as busy
//!   and come back, and the list comes with our Join.
//!
//! In an open network all of this is off: no proof, no credential, no check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use peerdex_proto::network::{Credential, audience, secret_proof, unix_now};
use peerdex_proto::{PeerUrl, v1};

/// How often, at most, an unknown key id makes us ask the directory for
/// its keys again.
const KEYS_REFRESH: Duration = Duration::from_secs(5);

/// Why a request's credential is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Signed by a key we do not know (yet): ask the directory, then check
    /// again.
    UnknownKey(String),
    /// Anything else: what is wrong with it.
    Invalid(BadCredential),
    /// We do not have the directory's list of departed peers yet (we just
    /// started and have not joined): ask again shortly.
    NotReady,
}

/// What is wrong with a credential (a 401 says it in these words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadCredential {
    #[error("not a credential of this network (malformed, or `alg: none`)")]
    Malformed,
    #[error("credential signed with {0:?}; this network's credentials are EdDSA")]
    Algorithm(Algorithm),
    #[error("credential without a key id (kid)")]
    NoKeyId,
    #[error("credential expired: the peer's lease ended (it renews its credential with its lease)")]
    Expired,
    #[error(
        "credential signature does not verify (altered, or not signed by this network's directory)"
    )]
    Signature,
    #[error("credential of another network (wrong audience)")]
    Audience,
    #[error("credential refused: {0}")]
    Other(jsonwebtoken::errors::Error),
    #[error("credential of peer {peer} which left the network since it was issued")]
    Departed { peer: String },
}

pub(crate) struct Network {
    /// `None`: an open network.
    secret: Option<String>,
    audience: String,
    /// Our own credential, as last given by the directory.
    own: RwLock<Option<String>>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// Peers that left, and when (Unix seconds).
    revoked: Mutex<HashMap<String, u64>>,
    /// The directory's whole list of departures arrived at least once.
    listed: AtomicBool,
    refreshed: Mutex<Option<Instant>>,
}

impl Network {
    pub(crate) fn new(secret: Option<String>) -> Self {
        Self {
            audience: secret.as_deref().map(audience).unwrap_or_default(),
            secret,
            own: RwLock::default(),
            keys: RwLock::default(),
            revoked: Mutex::default(),
            listed: AtomicBool::new(false),
            refreshed: Mutex::default(),
        }
    }

    pub(crate) fn is_private(&self) -> bool {
        self.secret.is_some()
    }

    /// The proof of the secret for a Join (empty in an open network).
    pub(crate) fn secret_proof(&self, nonce: &[u8], peer_id: &str) -> Vec<u8> {
        self.secret
            .as_deref()
            .map(|s| secret_proof(s, nonce, peer_id).to_vec())
            .unwrap_or_default()
    }

    /// Our credential, from a Join or Heartbeat answer (empty: none).
    pub(crate) fn set_credential(&self, jwt: &str) {
        if self.is_private() && !jwt.is_empty() {
            *self.own.write().unwrap() = Some(jwt.to_owned());
        }
    }

    pub(crate) fn credential(&self) -> Option<String> {
        self.own.read().unwrap().clone()
    }

    /// The directory's whole list of departures (a Join or Heartbeat
    /// answer, the first event of a Revocations stream): from now on
    /// credentials are checked against what we know.
    pub(crate) fn note_revoked_list(&self, list: &[v1::Revoked]) {
        self.note_revoked(list);
        if !self.listed.swap(true, Ordering::AcqRel) && self.is_private() {
            tracing::info!(
                departed = list.len(),
                "received the directory's list of departed peers: their credentials are refused, others accepted"
            );
        }
    }

    /// Departures (pushed as they happen, or a whole list).
    pub(crate) fn note_revoked(&self, list: &[v1::Revoked]) {
        if list.is_empty() {
            return;
        }
        let mut r = self.revoked.lock().unwrap();
        for x in list {
            let at = r.entry(x.peer_id.clone()).or_insert(0);
            *at = (*at).max(x.at);
        }
        // Credentials live minutes: an hour-old departure matters no more.
        let cutoff = unix_now().saturating_sub(3600);
        r.retain(|_, at| *at >= cutoff);
    }

    /// The directory's keys (`NetworkKeys`).
    pub(crate) fn set_keys(&self, keys: &[v1::NetworkKey]) {
        let map = keys
            .iter()
            .filter(|k| k.public_key.len() == 32)
            .map(|k| (k.kid.clone(), DecodingKey::from_ed_der(&k.public_key)))
            .collect();
        *self.keys.write().unwrap() = map;
    }

    /// May we ask the directory for its keys now (at most every 5 s)?
    pub(crate) fn may_refresh_keys(&self) -> bool {
        let mut last = self.refreshed.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < KEYS_REFRESH) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Check a credential presented to our peer API.
    pub(crate) fn check(&self, jwt: &str) -> Result<Credential, Refused> {
        if !self.listed.load(Ordering::Acquire) {
            return Err(Refused::NotReady);
        }
        let bad = Refused::Invalid;
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| bad(BadCredential::Malformed))?;
        if header.alg != Algorithm::EdDSA {
            return Err(bad(BadCredential::Algorithm(header.alg)));
        }
        let kid = header.kid.ok_or(bad(BadCredential::NoKeyId))?;
        let claims = {
            let keys = self.keys.read().unwrap();
            let Some(key) = keys.get(&kid) else {
                return Err(Refused::UnknownKey(kid));
            };
            let mut v = Validation::new(Algorithm::EdDSA);
            v.set_audience(&[&self.audience]);
            v.set_required_spec_claims(&["exp", "aud", "sub"]);
            v.leeway = 30;
            jsonwebtoken::decode::<Credential>(jwt, key, &v)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => bad(BadCredential::Expired),
                    ErrorKind::InvalidSignature => bad(BadCredential::Signature),
                    ErrorKind::InvalidAudience => bad(BadCredential::Audience),
                    _ => bad(BadCredential::Other(e.clone())),
                })?
                .claims
        };
        if let Some(at) = self.revoked.lock().unwrap().get(&claims.sub)
            && claims.iat <= *at
        {
            return Err(bad(BadCredential::Departed { peer: claims.sub }));
        }
        Ok(claims)
    }
}

/// HTTP to other peers' APIs: every request carries our credential in a
/// private network.
#[derive(Clone)]
pub(crate) struct PeerHttp {
    client: reqwest::Client,
    network: Arc<Network>,
    /// Holders behind NAT that call us back are fetched through their
    /// callback tunnel (`crate::relay::callback`).
    callbacks: Option<Arc<crate::relay::Callbacks>>,
}

impl PeerHttp {
    pub(crate) fn new(client: reqwest::Client, network: Arc<Network>) -> Self {
        Self {
            client,
            network,
            callbacks: None,
        }
    }

    /// The same client, fetching from holders behind NAT through their
    /// callback tunnels when they call us back.
    pub(crate) fn with_callbacks(&self, callbacks: Arc<crate::relay::Callbacks>) -> Self {
        Self {
            callbacks: Some(callbacks),
            ..self.clone()
        }
    }

    /// Where to reach the holder listed at `url`: its callback tunnel when
    /// it has one for us, else `url` itself.
    pub(crate) async fn base(&self, url: &PeerUrl) -> PeerUrl {
        match &self.callbacks {
            Some(c) => c.route(url).await.unwrap_or_else(|| url.clone()),
            None => url.clone(),
        }
    }

    pub(crate) fn get(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.authed(self.client.get(url))
    }

    pub(crate) fn post(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.authed(self.client.post(url))
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.network.credential() {
            Some(c) => rb.bearer_auth(c),
            None => rb,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_network_proves_and_sends_nothing() {
        let n = Network::new(None);
        assert!(!n.is_private());
        assert!(n.secret_proof(b"x", "p").is_empty());
        n.set_credential("a.b.c");
        assert_eq!(n.credential(), None);
    }

    #[test]
    fn unknown_keys_and_garbage_are_told_apart() {
        let n = Network::new(Some("a-secret-of-16-chars".into()));
        // Nothing is accepted before the directory's list of departures.
        assert_eq!(n.check("garbage"), Err(Refused::NotReady));
        n.note_revoked_list(&[]);
        assert!(matches!(n.check("garbage"), Err(Refused::Invalid(_))));
        // {"alg":"EdDSA","kid":"k1"} . {} . (no signature)
        let jwt = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.e30.AA";
        assert_eq!(n.check(jwt), Err(Refused::UnknownKey("k1".into())));
        assert!(n.may_refresh_keys());
        assert!(!n.may_refresh_keys(), "at most every 5 s");
    }
}
