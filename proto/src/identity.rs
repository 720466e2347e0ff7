//! Peer identities: every PServer holds an Ed25519 key pair (kept in its
//! data folder); the directory binds a peer id to its public key at the
//! first Join and every later Join proves possession of the key by signing
//! a statement over a fresh nonce from `Challenge`.
//!
//! The statement names its purpose, the peer id, the URL it announces and
//! the nonce, each length-prefixed, so no signature made for anything else
//! (or for another peer, URL or nonce) verifies as a Join.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Bytes of a public key on the wire.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of a signature on the wire.
pub const SIGNATURE_LEN: usize = 64;

const JOIN_PURPOSE: &[u8] = b"peerdex join v1";

/// Why a Join's proof of possession is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("public_key: {0}")]
    Key(String),
    #[error("signature: {0}")]
    Signature(String),
}

/// The bytes a Join signs.
pub fn join_statement(peer_id: &str, peer_url: &str, nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + peer_id.len() + peer_url.len() + nonce.len());
    for part in [JOIN_PURPOSE, peer_id.as_bytes(), peer_url.as_bytes(), nonce] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// Sign a Join: the signature to send with `key`'s public key.
pub fn sign_join(key: &SigningKey, peer_id: &str, peer_url: &str, nonce: &[u8]) -> Vec<u8> {
    key.sign(&join_statement(peer_id, peer_url, nonce))
        .to_bytes()
        .to_vec()
}

/// Complete a Join with the proof of possession of `key`, over `nonce`
/// (from `Challenge`): sets `public_key`, `nonce` and `signature`. Call it
/// after every other field is final (the URL is signed).
pub fn prove(req: &mut crate::v1::JoinRequest, key: &SigningKey, nonce: Vec<u8>) {
    req.signature = sign_join(key, &req.peer_id, &req.peer_url, &nonce);
    req.public_key = key.verifying_key().to_bytes().to_vec();
    req.nonce = nonce;
}

/// Parse a public key from the wire (32 bytes, a valid curve point that is
/// not of small order).
pub fn public_key(bytes: &[u8]) -> Result<VerifyingKey, ProofError> {
    let raw: &[u8; PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| {
        ProofError::Key(format!(
            "{} bytes; an Ed25519 public key is {PUBLIC_KEY_LEN}",
            bytes.len()
        ))
    })?;
    let key = VerifyingKey::from_bytes(raw)
        .map_err(|_| ProofError::Key("not an Ed25519 public key".into()))?;
    if key.is_weak() {
        return Err(ProofError::Key("a weak (small-order) key".into()));
    }
    Ok(key)
}

/// Check a Join's signature (strict verification: no malleable signatures).
pub fn verify_join(
    key: &VerifyingKey,
    peer_id: &str,
    peer_url: &str,
    nonce: &[u8],
    signature: &[u8],
) -> Result<(), ProofError> {
    let sig: &[u8; SIGNATURE_LEN] = signature.try_into().map_err(|_| {
        ProofError::Signature(format!(
            "{} bytes; an Ed25519 signature is {SIGNATURE_LEN}",
            signature.len()
        ))
    })?;
    key.verify_strict(
        &join_statement(peer_id, peer_url, nonce),
        &Signature::from_bytes(sig),
    )
    .map_err(|_| {
        ProofError::Signature(
            "does not verify with public_key over this peer id, URL and nonce".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signed_join_verifies_and_nothing_else_does() {
        let k = key(1);
        let public = public_key(k.verifying_key().as_bytes()).unwrap();
        let (id, url, nonce) = ("a-peer", "http://127.0.0.1:1", b"nonce".as_slice());
        let sig = sign_join(&k, id, url, nonce);
        assert_eq!(verify_join(&public, id, url, nonce, &sig), Ok(()));
        // Another peer id, URL, nonce, key: refused.
        for (i, u, n) in [
            ("b-peer", url, nonce),
            (id, "http://127.0.0.1:2", nonce),
            (id, url, b"nonce2".as_slice()),
        ] {
            assert!(verify_join(&public, i, u, n, &sig).is_err());
        }
        let other = public_key(key(2).verifying_key().as_bytes()).unwrap();
        assert!(verify_join(&other, id, url, nonce, &sig).is_err());
        // Parts cannot slide between fields (length prefixes).
        assert_ne!(
            join_statement("ab", "c", b""),
            join_statement("a", "bc", b"")
        );
        // A flipped bit, a short signature: refused, with the field named.
        let mut bad = sig.clone();
        bad[10] ^= 1;
        assert!(verify_join(&public, id, url, nonce, &bad).is_err());
        let e = verify_join(&public, id, url, nonce, &sig[..63]).unwrap_err();
        assert!(e.to_string().starts_with("signature: 63 bytes"), "{e}");
    }

    #[test]
    fn malformed_and_weak_keys_are_refused() {
        assert!(
            public_key(&[0; 31])
                .unwrap_err()
                .to_string()
                .contains("31 bytes")
        );
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(public_key(&identity).is_err());
    }
}
