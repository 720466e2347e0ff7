//! The encryption of private files: ChaCha20-Poly1305 in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) as RustCrypto's
//! `aead::stream` implements it (`EncryptorBE32`: a 7-byte nonce prefix, a
//! 32-bit big-endian segment counter and a last-segment flag), with a fresh
//! random key per file. No mode of our own.
//!
//! Ciphertext layout: the plaintext cut in segments of [`SEGMENT`] bytes
//! (the last one 0..=[`SEGMENT`] bytes; an empty file is one empty last
//! segment), each sealed on its own and followed by its 16-byte tag. The
//! last segment is sealed with the last-segment flag, so a ciphertext cut
//! at a segment boundary fails authentication instead of opening as a
//! shorter plaintext; segments cannot be reordered (the counter is in the
//! nonce). Its size is a function of the plaintext's ([`ciphertext_size`]).
//!
//! Opening authenticates each segment before a byte of it is written, and
//! the caller writes into a temp file that is moved into place only once
//! the last segment authenticated: no unauthenticated plaintext is ever
//! visible.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::generic_array::GenericArray;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use peerdex_proto::ticket::{KEY_BYTES, Key, NONCE_BYTES, Ticket};

/// Plaintext bytes per segment.
pub(crate) const SEGMENT: usize = 64 * 1024;
/// Poly1305 tag after each segment.
pub(crate) const TAG: usize = 16;

/// The size of the ciphertext of `plain` bytes of plaintext.
pub(crate) fn ciphertext_size(plain: u64) -> u64 {
    plain + TAG as u64 * segments(plain)
}

fn segments(plain: u64) -> u64 {
    plain.div_ceil(SEGMENT as u64).max(1)
}

/// A fresh key and nonce prefix from the operating system's generator.
pub(crate) fn fresh_key() -> io::Result<(Key, [u8; NONCE_BYTES])> {
    use rand::TryRngCore;
    let mut key = [0u8; KEY_BYTES];
    let mut nonce = [0u8; NONCE_BYTES];
    let mut os = rand::rngs::OsRng;
    os.try_fill_bytes(&mut key).map_err(io::Error::other)?;
    os.try_fill_bytes(&mut nonce).map_err(io::Error::other)?;
    Ok((Key(key), nonce))
}

/// Why a ciphertext does not open.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CryptError {
    /// The ciphertext's size is not the one the ticket's plaintext size makes.
    #[error(
        "the ticket does not fit file {id}: its ciphertext is {found} bytes, the ticket's size makes {expected}; the ticket is not for this file or was altered"
    )]
    Size {
        id: peerdex_proto::FileId,
        expected: u64,
        found: u64,
    },
    /// A segment did not authenticate: the key is not this file's, or the
    /// ciphertext was altered (it matched its id, so the ticket is wrong).
    #[error(
        "the ticket's key does not open file {id} (segment {segment} fails authentication): the ticket is not for this file or was altered; nothing was written"
    )]
    Auth {
        id: peerdex_proto::FileId,
        segment: u64,
    },
    #[error("encryption failed")]
    Seal,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Encrypts a plaintext given piece by piece, whatever the pieces' sizes.
pub(crate) struct Sealer {
    enc: EncryptorBE32<ChaCha20Poly1305>,
    /// The segment being filled (sealed in place, with room for its tag).
    seg: Vec<u8>,
    plain: u64,
}

impl Sealer {
    pub(crate) fn new(key: &Key, nonce: &[u8; NONCE_BYTES]) -> Self {
        let aead = ChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key.0));
        Self {
            enc: EncryptorBE32::from_aead(aead, GenericArray::from_slice(nonce)),
            seg: Vec::with_capacity(SEGMENT + TAG),
            plain: 0,
        }
    }

    /// Plaintext bytes taken so far.
    pub(crate) fn plain_bytes(&self) -> u64 {
        self.plain
    }

    /// Take `data`; append each segment known not to be the last, sealed,
    /// to `out`.
    pub(crate) fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptError> {
        self.plain += data.len() as u64;
        while !data.is_empty() {
            if self.seg.len() == SEGMENT {
                // More follows: this one is not the last.
                self.enc
                    .encrypt_next_in_place(b"", &mut self.seg)
                    .map_err(|_| CryptError::Seal)?;
                out.extend_from_slice(&self.seg);
                self.seg.clear();
            }
            let take = (SEGMENT - self.seg.len()).min(data.len());
            self.seg.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    /// Seal the last segment into `out`; the plaintext's size.
    pub(crate) fn finish(mut self, out: &mut Vec<u8>) -> Result<u64, CryptError> {
        self.enc
            .encrypt_last_in_place(b"", &mut self.seg)
            .map_err(|_| CryptError::Seal)?;
        out.extend_from_slice(&self.seg);
        Ok(self.plain)
    }
}

/// Open the `len` bytes of ciphertext of `src` with `ticket`'s key into
/// `out`, each segment authenticated before it is written. `out` holds a
/// partial plaintext when this fails: the caller writes into a temp file
/// and deletes it then.
pub(crate) fn open(
    src: &mut impl Read,
    len: u64,
    ticket: &Ticket,
    out: &mut impl Write,
) -> Result<(), CryptError> {
    let id = ticket.file_id;
    let expected = ciphertext_size(ticket.size);
    if len != expected {
        return Err(CryptError::Size {
            id,
            expected,
            found: len,
        });
    }
    let aead = ChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&ticket.key.0));
    let mut dec =
        DecryptorBE32::<ChaCha20Poly1305>::from_aead(aead, GenericArray::from_slice(&ticket.nonce));
    let n = segments(ticket.size);
    let mut buf = Vec::with_capacity(SEGMENT + TAG);
    for i in 0..n - 1 {
        buf.resize(SEGMENT + TAG, 0);
        src.read_exact(&mut buf)?;
        dec.decrypt_next_in_place(b"", &mut buf)
            .map_err(|_| CryptError::Auth { id, segment: i })?;
        out.write_all(&buf)?;
    }
    let last = (len - (n - 1) * (SEGMENT + TAG) as u64) as usize;
    buf.resize(last, 0);
    src.read_exact(&mut buf)?;
    dec.decrypt_last_in_place(b"", &mut buf)
        .map_err(|_| CryptError::Auth { id, segment: n - 1 })?;
    out.write_all(&buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdex_proto::FileId;

    fn seal(plain: &[u8], pieces: usize) -> (Ticket, Vec<u8>) {
        let (key, nonce) = fresh_key().unwrap();
        let mut s = Sealer::new(&key, &nonce);
        let mut out = Vec::new();
        for piece in plain.chunks(pieces.max(1)) {
            s.push(piece, &mut out).unwrap();
        }
        assert_eq!(s.plain_bytes(), plain.len() as u64);
        assert_eq!(s.finish(&mut out).unwrap(), plain.len() as u64);
        let t = Ticket {
            file_id: FileId::from_bytes(*blake3::hash(&out).as_bytes()),
            key,
            nonce,
            size: plain.len() as u64,
            name: "x".parse().unwrap(),
            hints: Vec::new(),
        };
        (t, out)
    }

    fn open_all(t: &Ticket, ct: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut out = Vec::new();
        open(&mut &ct[..], ct.len() as u64, t, &mut out)?;
        Ok(out)
    }

    #[test]
    fn what_is_sealed_opens_whatever_the_pieces() {
        for size in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            3 * SEGMENT,
            200_001,
        ] {
            let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            for pieces in [1000, SEGMENT, 7 * SEGMENT] {
                let (t, ct) = seal(&plain, pieces);
                assert_eq!(ct.len() as u64, ciphertext_size(size as u64), "{size}");
                if size > 0 {
                    assert_ne!(&ct[..size.min(64)], &plain[..size.min(64)]);
                }
                assert_eq!(open_all(&t, &ct).unwrap(), plain, "{size}/{pieces}");
            }
        }
    }

    #[test]
    fn a_wrong_key_an_altered_or_cut_ciphertext_never_opens() {
        let plain = vec![7u8; 2 * SEGMENT + 10];
        let (t, ct) = seal(&plain, 4096);
        let mut wrong = t.clone();
        wrong.key.0[0] ^= 1;
        assert!(matches!(
            open_all(&wrong, &ct),
            Err(CryptError::Auth { segment: 0, .. })
        ));
        let mut altered = ct.clone();
        altered[SEGMENT + TAG + 5] ^= 1;
        assert!(matches!(
            open_all(&t, &altered),
            Err(CryptError::Auth { segment: 1, .. })
        ));
        // Cut after two whole segments, the ticket's size adjusted: the
        // second segment is not sealed as the last one.
        let cut = &ct[..2 * (SEGMENT + TAG)];
        let mut shorter = t.clone();
        shorter.size = 2 * SEGMENT as u64;
        assert!(matches!(
            open_all(&shorter, cut),
            Err(CryptError::Auth { segment: 1, .. })
        ));
        assert!(matches!(open_all(&t, cut), Err(CryptError::Size { .. })));
        // Two sealings of one plaintext share nothing (fresh key and nonce).
        let (_, again) = seal(&plain, 4096);
        assert_ne!(again, ct);
    }
}
