//! Private networks: what a PServer and the directory both derive from the
//! join secret, and the claims of a credential.
//!
//! * The Join proves the secret without sending it: keyed BLAKE3 of the
//!   Join's nonce and peer id, under a key derived from the secret.
//! * Credentials are JWTs (EdDSA) whose audience names the network: derived
//!   from the secret too, so a credential of one private network is refused
//!   by every other, with no setting to keep in step.
//! * A credential's `kid` is a short hash of the public key that signs it.

use serde::{Deserialize, Serialize};

/// The claims of a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The peer id it was issued to.
    pub sub: String,
    /// The network ([`audience`]).
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// Seconds since the Unix epoch (credential times, key bindings).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Compare two secrets (tokens, proofs, MACs) in time that does not depend
/// on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The audience of the credentials of the network with this secret.
pub fn audience(secret: &str) -> String {
    let k = blake3::derive_key("peerdex network audience v1", secret.as_bytes());
    format!("peerdex-net-{}", &hex::encode(k)[..32])
}

/// The proof of the join secret a Join carries.
pub fn secret_proof(secret: &str, nonce: &[u8], peer_id: &str) -> [u8; 32] {
    let key = blake3::derive_key("peerdex join secret v1", secret.as_bytes());
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(&(nonce.len() as u32).to_be_bytes());
    h.update(nonce);
    h.update(peer_id.as_bytes());
    *h.finalize().as_bytes()
}

/// The key id of credentials signed by `public_key`.
pub fn kid(public_key: &[u8; 32]) -> String {
    hex::encode(&blake3::hash(public_key).as_bytes()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_depends_on_the_secret_and_the_inputs() {
        assert_eq!(audience("s1"), audience("s1"));
        assert_ne!(audience("s1"), audience("s2"));
        assert!(audience("s1").starts_with("peerdex-net-"));
        let p = secret_proof("s1", b"n", "a");
        assert_eq!(p, secret_proof("s1", b"n", "a"));
        assert_ne!(p, secret_proof("s2", b"n", "a"));
        assert_ne!(p, secret_proof("s1", b"m", "a"));
        assert_ne!(p, secret_proof("s1", b"n", "b"));
        assert_eq!(kid(&[1; 32]).len(), 16);
        assert_ne!(kid(&[1; 32]), kid(&[2; 32]));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"abc", b"ab"));
    }
}
