//! A private network (`CENTRAL_JOIN_SECRET`): who may join, the
//! credentials given to those who did, and the list of those who left.
//!
//! * A Join proves the secret (`peerdex_proto::network::secret_proof`,
//!   compared in constant time); the secret itself never travels.
//! * A joined peer gets a credential: a JWT signed with EdDSA by the
//!   network key (`network.key` in the data folder, 0600), subject = the
//!   peer id, audience = the network, valid two lease TTLs, renewed with
//!   every Heartbeat answer. An expired or departed peer cannot renew.
//! * Peers that leave (or whose lease ends) are revoked: pushed at once to
//!   every `Revocations` stream ([`Network::subscribe`]), and listed in
//!   Join and Heartbeat answers for one credential lifetime, so every
//!   PServer refuses their credentials at once instead of at expiry.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use peerdex_common::keyfile::{self, Loaded};
use peerdex_proto::network::{Credential, audience, constant_time_eq, kid, secret_proof, unix_now};
use peerdex_proto::{PeerId, v1};

use crate::error::{Auth, Result};

/// File name of the network key in the data folder.
pub const KEY_FILE: &str = "network.key";

/// Most departures listed in one Heartbeat answer (the newest).
const MAX_REVOKED_LISTED: usize = 10_000;
/// Batches of departures a Revocations subscriber may fall behind by;
/// one further behind gets the whole list again.
const PUSH_BACKLOG: usize = 256;

pub(crate) struct Network {
    secret: String,
    audience: String,
    kid: String,
    public_key: [u8; 32],
    encoding: EncodingKey,
    lifetime: Duration,
    /// Departures (peer, Unix seconds), oldest first, kept one lifetime.
    revoked: Mutex<VecDeque<(PeerId, u64)>>,
    /// Each batch of departures, as it happens, to the Revocations streams.
    pushed: tokio::sync::broadcast::Sender<Vec<v1::Revoked>>,
}

impl Network {
    /// The network of `secret`, signing with the key in `data_dir`
    /// (created on first start).
    pub(crate) fn open(secret: &str, data_dir: &Path, lease_ttl: Duration) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(KEY_FILE);
        let (key, how) = keyfile::load_or_create(
            &path,
            "remove it (peers fetch the new public key by themselves)",
        )?;
        match how {
            Loaded::Read => {}
            Loaded::Tightened => tracing::warn!(path = %path.display(),
                "the network key was readable by others; made it 0600"),
            Loaded::Created => tracing::info!(path = %path.display(), "created the network key"),
        }
        Ok(Self::with_key(secret, key, lease_ttl))
    }

    pub(crate) fn with_key(secret: &str, key: SigningKey, lease_ttl: Duration) -> Self {
        let public_key = key.verifying_key().to_bytes();
        let der = key
            .to_pkcs8_der()
            .expect("an Ed25519 key always encodes as PKCS#8");
        Self {
            secret: secret.to_owned(),
            audience: audience(secret),
            kid: kid(&public_key),
            public_key,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            lifetime: lease_ttl * 2,
            revoked: Mutex::default(),
            pushed: tokio::sync::broadcast::channel(PUSH_BACKLOG).0,
        }
    }

    /// Check a Join's proof of the secret.
    pub(crate) fn admit(&self, r: &v1::JoinRequest) -> Result<()> {
        if r.secret_proof.is_empty() {
            return Err(Auth::NoSecretProof.into());
        }
        let expected = secret_proof(&self.secret, &r.nonce, &r.peer_id);
        if !constant_time_eq(&r.secret_proof, &expected) {
            return Err(Auth::WrongSecret.into());
        }
        Ok(())
    }

    /// A fresh credential for `peer`: the JWT and its expiry.
    pub(crate) fn credential(&self, peer: &PeerId) -> Result<(String, u64)> {
        self.sign(peer.to_string())
    }

    /// The directory's own credential, for its audits of peers' copies
    /// (subject `directory`, never a peer id, so never revoked).
    pub(crate) fn own_credential(&self) -> Result<String> {
        self.sign("directory".into()).map(|(jwt, _)| jwt)
    }

    fn sign(&self, sub: String) -> Result<(String, u64)> {
        let iat = unix_now();
        let claims = Credential {
            sub,
            aud: self.audience.clone(),
            iat,
            exp: iat + self.lifetime.as_secs().max(1),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let jwt = jsonwebtoken::encode(&header, &claims, &self.encoding)?;
        Ok((jwt, claims.exp))
    }

    /// `peer` left or its lease ended: list it for one lifetime.
    pub(crate) fn revoke(&self, peers: &[PeerId]) {
        let now = unix_now();
        let mut r = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        let cutoff = now.saturating_sub(self.lifetime.as_secs() + 1);
        while r.front().is_some_and(|(_, at)| *at < cutoff) {
            r.pop_front();
        }
        r.extend(peers.iter().map(|p| (*p, now)));
        // Sent under the lock, so a subscriber that takes the list (under
        // it too) right after subscribing misses nothing between the two.
        let batch = peers
            .iter()
            .map(|p| v1::Revoked {
                peer_id: p.to_string(),
                at: now,
            })
            .collect();
        // No subscriber: nothing to tell.
        let _ = self.pushed.send(batch);
    }

    /// Follow departures: the receiver gets each batch from now on; the
    /// list returned is every departure of the last lifetime until now.
    pub(crate) fn subscribe(
        &self,
    ) -> (
        tokio::sync::broadcast::Receiver<Vec<v1::Revoked>>,
        Vec<v1::Revoked>,
    ) {
        let r = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.pushed.subscribe();
        drop(r);
        (rx, self.revoked())
    }

    /// The departures of the last lifetime, newest last (at most
    /// [`MAX_REVOKED_LISTED`]).
    pub(crate) fn revoked(&self) -> Vec<v1::Revoked> {
        let cutoff = unix_now().saturating_sub(self.lifetime.as_secs() + 1);
        let r = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        let skip = r.len().saturating_sub(MAX_REVOKED_LISTED);
        r.iter()
            .skip(skip)
            .filter(|(_, at)| *at >= cutoff)
            .map(|(p, at)| v1::Revoked {
                peer_id: p.to_string(),
                at: *at,
            })
            .collect()
    }

    pub(crate) fn keys(&self) -> Vec<v1::NetworkKey> {
        vec![v1::NetworkKey {
            kid: self.kid.clone(),
            public_key: self.public_key.to_vec(),
        }]
    }
}
