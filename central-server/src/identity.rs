//! Join nonces: what a peer signs with its key to prove it holds the key
//! bound to its id (see `peerdex_proto::identity`).
//!
//! A nonce is stateless until it is spent: its expiry, 16 random bytes and
//! a MAC (keyed BLAKE3, under a key drawn at start) over them and the peer
//! id, so only this process issued it, for that peer, and lately. A spent
//! nonce is remembered until it expires, so a Join cannot be replayed.
//! A restart forgets the key: peers ask for a new nonce, as they do before
//! every Join.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use peerdex_common::sync::lock;

use crate::error::NonceError;
use peerdex_proto::PeerId;
use peerdex_proto::network::constant_time_eq;
use tokio::time::Instant;

/// How long a nonce may be used.
pub const NONCE_VALID: Duration = Duration::from_secs(60);

const EXPIRY: usize = 8;
const RANDOM: usize = 16;
const MAC: usize = 16;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = EXPIRY + RANDOM + MAC;

pub(crate) struct Nonces {
    key: [u8; 32],
    epoch: Instant,
    /// Spent nonces (their random part) until their expiry (ms since `epoch`).
    spent: Mutex<HashMap<[u8; RANDOM], u64>>,
}

impl Nonces {
    pub(crate) fn new() -> Self {
        Self::with_key(rand::random())
    }

    /// Nonces under `key`: centrals sharing it accept each other's.
    pub(crate) fn with_key(key: [u8; 32]) -> Self {
        Self {
            key,
            epoch: Instant::now(),
            spent: Mutex::default(),
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn mac(&self, peer: &PeerId, head: &[u8]) -> [u8; MAC] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(b"peerdex join nonce");
        h.update(peer.as_uuid().as_bytes());
        h.update(head);
        let mut mac = [0; MAC];
        mac.copy_from_slice(&h.finalize().as_bytes()[..MAC]);
        mac
    }

    /// A fresh nonce for `peer`.
    pub(crate) fn issue(&self, peer: &PeerId, now: Instant) -> Vec<u8> {
        let mut n = Vec::with_capacity(NONCE_LEN);
        n.extend_from_slice(&self.ms(now + NONCE_VALID).to_be_bytes());
        n.extend_from_slice(&rand::random::<[u8; RANDOM]>());
        let mac = self.mac(peer, &n);
        n.extend_from_slice(&mac);
        n
    }

    /// Is `nonce` one we issued for `peer`, still valid and not spent?
    /// (Does not spend it: see [`Nonces::spend`], once the signature is
    /// checked.)
    pub(crate) fn check(
        &self,
        peer: &PeerId,
        nonce: &[u8],
        now: Instant,
    ) -> Result<(), NonceError> {
        if nonce.len() != NONCE_LEN {
            return Err(NonceError::Length(nonce.len()));
        }
        let (head, mac) = nonce.split_at(EXPIRY + RANDOM);
        let expected = self.mac(peer, head);
        if !constant_time_eq(mac, &expected) {
            return Err(NonceError::Foreign);
        }
        let expiry = u64::from_be_bytes(head[..EXPIRY].try_into().unwrap_or_default());
        if expiry <= self.ms(now) {
            return Err(NonceError::Expired {
                valid_secs: NONCE_VALID.as_secs(),
            });
        }
        if lock(&self.spent).contains_key(random_part(nonce)) {
            return Err(NonceError::Spent);
        }
        Ok(())
    }

    /// Spend a checked nonce; false if it was spent meanwhile.
    pub(crate) fn spend(&self, nonce: &[u8], now: Instant) -> bool {
        let expiry = u64::from_be_bytes(nonce[..EXPIRY].try_into().unwrap_or_default());
        let now = self.ms(now);
        let mut spent = lock(&self.spent);
        if spent.len() >= 1024 && spent.len().is_power_of_two() {
            spent.retain(|_, e| *e > now);
        }
        spent.insert(*random_part(nonce), expiry).is_none()
    }
}

fn random_part(nonce: &[u8]) -> &[u8; RANDOM] {
    nonce[EXPIRY..EXPIRY + RANDOM]
        .try_into()
        .unwrap_or(&[0; RANDOM])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_nonce_is_for_one_peer_once_and_for_a_minute() {
        let n = Nonces::new();
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        let now = Instant::now();
        let x = n.issue(&a, now);
        assert_eq!(x.len(), NONCE_LEN);
        assert_eq!(n.check(&a, &x, now), Ok(()));
        assert_eq!(n.check(&b, &x, now), Err(NonceError::Foreign));
        let mut forged = x.clone();
        forged[0] ^= 1; // a later expiry
        assert_eq!(n.check(&a, &forged, now), Err(NonceError::Foreign));
        assert!(Nonces::new().check(&a, &x, now).is_err(), "another process");
        assert_eq!(n.check(&a, &x[..10], now), Err(NonceError::Length(10)));
        let late = now + NONCE_VALID;
        assert!(matches!(
            n.check(&a, &x, late),
            Err(NonceError::Expired { .. })
        ));
        assert!(n.spend(&x, now));
        assert!(!n.spend(&x, now));
        assert_eq!(n.check(&a, &x, now), Err(NonceError::Spent));
        let y = n.issue(&a, now);
        assert_eq!(n.check(&a, &y, now), Ok(()));
    }
}
