//! Relays (issue 25): the token a firewalled peer shows its relay, and the
//! headers of the tunnel.
//!
//! The directory assigns a relay and mints an attach token for the peer:
//! 8 bytes of expiry (Unix seconds, big-endian) and a 16-byte keyed BLAKE3
//! MAC over the peer id and the expiry, under the relay's key. The relay's
//! key is the BLAKE3 hash of the relay's current session token: the
//! directory keeps exactly that hash (every central has it), the relay
//! computes it from its token, nobody else learns it. So the relay checks
//! a token without asking the directory, and a relay that joins again
//! (new session) refuses the tokens of the old one.

use crate::network::constant_time_eq;
use crate::types::{PeerId, PeerUrl};

/// Header of an attach request: the attaching peer's id.
pub const PEER_ID_HEADER: &str = "peerdex-peer-id";
/// Header of an attach request: the directory's token (hex).
pub const ATTACH_TOKEN_HEADER: &str = "peerdex-relay-token";
/// Header of a callback tunnel: the one-time token the downloader gave.
pub const CALLBACK_TOKEN_HEADER: &str = "peerdex-callback-token";
/// The path a relay serves a firewalled peer's peer API under: a relay
/// URL is a relay's base URL, then this, then the peer id.
pub const RELAY_PATH: &str = "/peer/v1/relay/";

/// Relay URLs (the parse of `PeerUrl` accepts them, see its docs).
impl PeerUrl {
    /// For a relay URL: the relay's own base URL and the relayed peer.
    pub fn relayed(&self) -> Option<(PeerUrl, PeerId)> {
        let scheme_end = self.0.find("://")? + 3;
        let slash = scheme_end + self.0[scheme_end..].find('/')?;
        let peer = self.0[slash..].strip_prefix(RELAY_PATH)?.parse().ok()?;
        Some((PeerUrl(self.0[..slash].to_owned()), peer))
    }

    /// The relay URL of `peer` through the relay at this (base) URL.
    pub fn relay_for(&self, peer: &PeerId) -> PeerUrl {
        PeerUrl(format!("{}{RELAY_PATH}{peer}", self.0))
    }

    /// `true` for a base URL (no relay path).
    pub fn is_base(&self) -> bool {
        self.relayed().is_none()
    }
}

/// The relay's attach endpoint, under its peer API.
pub const ATTACH_PATH: &str = "/peer/v1/relay/attach";
/// A downloader's endpoint where a called-back holder opens its tunnel.
pub const CALLBACK_ATTACH_PATH: &str = "/peer/v1/callback/attach";
/// A firewalled holder's endpoint (reached through its relay) that asks it
/// to call a downloader back.
pub const CALLBACK_PATH: &str = "/peer/v1/callback";

const EXPIRY: usize = 8;
const MAC: usize = 16;

fn mac(key: &[u8; 32], peer: &PeerId, expires: u64) -> [u8; MAC] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"peerdex relay attach v1");
    h.update(peer.as_uuid().as_bytes());
    h.update(&expires.to_be_bytes());
    let mut m = [0; MAC];
    m.copy_from_slice(&h.finalize().as_bytes()[..MAC]);
    m
}

/// The attach token of `peer` at the relay whose key is `key`, valid until
/// `expires` (Unix seconds).
pub fn attach_token(key: &[u8; 32], peer: &PeerId, expires: u64) -> String {
    let mut t = expires.to_be_bytes().to_vec();
    t.extend_from_slice(&mac(key, peer, expires));
    hex::encode(t)
}

/// Why a relay refuses an attach token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachTokenError {
    #[error("the relay token is not {} hex characters", 2 * (EXPIRY + MAC))]
    Malformed,
    #[error("the relay token expired at {0} (Unix seconds): join again for a fresh one")]
    Expired(u64),
    #[error(
        "the relay token was not issued for this peer at this relay (or the relay joined again since)"
    )]
    Forged,
}

/// Check `token` for `peer` under `key` at `now` (Unix seconds).
pub fn check_attach_token(
    key: &[u8; 32],
    peer: &PeerId,
    token: &str,
    now: u64,
) -> Result<(), AttachTokenError> {
    let mut raw = [0u8; EXPIRY + MAC];
    hex::decode_to_slice(token, &mut raw).map_err(|_| AttachTokenError::Malformed)?;
    let expires = u64::from_be_bytes(raw[..EXPIRY].try_into().unwrap_or_default());
    if !constant_time_eq(&raw[EXPIRY..], &mac(key, peer, expires)) {
        return Err(AttachTokenError::Forged);
    }
    if expires <= now {
        return Err(AttachTokenError::Expired(expires));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_peer_relay_and_time() {
        let (k, other) = ([7u8; 32], [8u8; 32]);
        let p = PeerId::new_random();
        let t = attach_token(&k, &p, 1000);
        assert_eq!(check_attach_token(&k, &p, &t, 999), Ok(()));
        assert_eq!(
            check_attach_token(&k, &p, &t, 1000),
            Err(AttachTokenError::Expired(1000))
        );
        assert_eq!(
            check_attach_token(&other, &p, &t, 1),
            Err(AttachTokenError::Forged)
        );
        let q = PeerId::new_random();
        assert_eq!(
            check_attach_token(&k, &q, &t, 1),
            Err(AttachTokenError::Forged)
        );
        // A later expiry under the same MAC is a forgery.
        let mut raw = hex::decode(&t).unwrap();
        raw[7] += 1;
        assert_eq!(
            check_attach_token(&k, &p, &hex::encode(raw), 1),
            Err(AttachTokenError::Forged)
        );
        assert_eq!(
            check_attach_token(&k, &p, "zz", 1),
            Err(AttachTokenError::Malformed)
        );
    }
}
