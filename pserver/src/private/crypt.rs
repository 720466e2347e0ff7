//! The encryption of private files: an AEAD in the STREAM construction
//! (Hoang, Reyhanitabar, Rogaway, Vizár 2015) as RustCrypto's
//! `aead::stream` implements it (`EncryptorBE32`: a 7-byte nonce prefix, a
//! 32-bit big-endian segment counter and a last-segment flag), with a fresh
//! random key per file. No mode of our own.
//!
//! The AEAD is the ticket's [`Cipher`]: AES-256-GCM for new uploads
//! (ticket version 2), ChaCha20-Poly1305 for files sealed before (version
//! 1, still opened). Both are *ring*'s (BoringSSL's assembly, the
//! implementation rustls uses here for every TLS byte), reached through
//! [`RingAead`], a thin adapter to RustCrypto's `AeadInPlace` so that
//! `aead::stream` drives it unchanged. Measured on this project's 2-core
//! x86-64 VM (release, 64 KiB segments): ring's AES-256-GCM opens at about
//! 6.5 GiB/s (AES-NI, VAES, carry-less multiply), its ChaCha20-Poly1305 at
//! 2.1 GiB/s, RustCrypto's `aes-gcm` 0.10 and `chacha20poly1305` 0.10 at
//! about 0.9 GiB/s each. The ciphertexts are the standard ones, byte for
//! byte (known-answer tests below, from RustCrypto's `chacha20poly1305`
//! and `aes-gcm`).
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

use aead::consts::{U0, U12, U16};
use aead::generic_array::GenericArray;
use aead::stream::{DecryptorBE32, EncryptorBE32, NewStream, StreamBE32};
use aead::{AeadCore, AeadInPlace};
use peerdex_proto::ticket::{Cipher, KEY_BYTES, Key, NONCE_BYTES, Ticket};
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, UnboundKey};

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

/// The cipher new private files are sealed with.
pub(crate) const CIPHER: Cipher = Cipher::Aes256Gcm;

/// One of *ring*'s AEADs (IETF: 96-bit nonce, 128-bit tag) as a RustCrypto
/// [`AeadInPlace`], the one trait `aead::stream` needs. It passes nonce,
/// associated data, buffer and tag through, nothing more.
pub(crate) struct RingAead(LessSafeKey);

impl RingAead {
    pub(crate) fn new(cipher: Cipher, key: &Key) -> Self {
        let algorithm = match cipher {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        };
        let key = UnboundKey::new(algorithm, &key.0).expect("both ciphers take a 32-byte key");
        Self(LessSafeKey::new(key))
    }

    fn nonce(nonce: &aead::Nonce<Self>) -> ring::aead::Nonce {
        let bytes: [u8; ring::aead::NONCE_LEN] = nonce
            .as_slice()
            .try_into()
            .expect("NonceSize is ring's NONCE_LEN");
        ring::aead::Nonce::assume_unique_for_key(bytes)
    }
}

impl AeadCore for RingAead {
    type NonceSize = U12;
    type TagSize = U16;
    type CiphertextOverhead = U0;
}

impl AeadInPlace for RingAead {
    fn encrypt_in_place_detached(
        &self,
        nonce: &aead::Nonce<Self>,
        associated_data: &[u8],
        buffer: &mut [u8],
    ) -> aead::Result<aead::Tag<Self>> {
        let tag = self
            .0
            .seal_in_place_separate_tag(Self::nonce(nonce), Aad::from(associated_data), buffer)
            .map_err(|_| aead::Error)?;
        Ok(GenericArray::clone_from_slice(tag.as_ref()))
    }

    fn decrypt_in_place_detached(
        &self,
        nonce: &aead::Nonce<Self>,
        associated_data: &[u8],
        buffer: &mut [u8],
        tag: &aead::Tag<Self>,
    ) -> aead::Result<()> {
        let tag: [u8; TAG] = tag.as_slice().try_into().expect("TagSize is 16");
        self.0
            .open_in_place_separate_tag(
                Self::nonce(nonce),
                Aad::from(associated_data),
                ring::aead::Tag::from(tag),
                buffer,
                0..,
            )
            .map(|_| ())
            .map_err(|_| aead::Error)
    }
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
    enc: EncryptorBE32<RingAead>,
    /// The segment being filled (sealed in place, with room for its tag).
    seg: Vec<u8>,
    plain: u64,
}

impl Sealer {
    pub(crate) fn new(cipher: Cipher, key: &Key, nonce: &[u8; NONCE_BYTES]) -> Self {
        Self {
            enc: EncryptorBE32::from_stream_primitive(StreamBE32::from_aead(
                RingAead::new(cipher, key),
                GenericArray::from_slice(nonce),
            )),
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
    let aead = RingAead::new(ticket.cipher, &ticket.key);
    let mut dec = DecryptorBE32::from_stream_primitive(StreamBE32::from_aead(
        aead,
        GenericArray::from_slice(&ticket.nonce),
    ));
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
        seal_with(CIPHER, key, nonce, plain, pieces)
    }

    fn seal_with(
        cipher: Cipher,
        key: Key,
        nonce: [u8; NONCE_BYTES],
        plain: &[u8],
        pieces: usize,
    ) -> (Ticket, Vec<u8>) {
        let mut s = Sealer::new(cipher, &key, &nonce);
        let mut out = Vec::new();
        for piece in plain.chunks(pieces.max(1)) {
            s.push(piece, &mut out).unwrap();
        }
        assert_eq!(s.plain_bytes(), plain.len() as u64);
        assert_eq!(s.finish(&mut out).unwrap(), plain.len() as u64);
        let t = Ticket {
            file_id: FileId::from_bytes(*blake3::hash(&out).as_bytes()),
            cipher,
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

    /// Ciphertexts of RustCrypto's `chacha20poly1305` 0.10 (what version 1
    /// sealed with before) and `aes-gcm` 0.10 in `aead::stream`'s
    /// `EncryptorBE32`, key `[7; 32]`, nonce prefix `1..=7`, plaintext byte
    /// `i` = `i % 251`: BLAKE3 of each. Ours are the same bytes, and open.
    #[test]
    fn known_answers_of_both_ciphers() {
        let answers = [
            (
                Cipher::ChaCha20Poly1305,
                0,
                "332d238b7b9ab12a920ea0da423c52af0c140bd497703c0e53789ad4d7e0d0b4",
            ),
            (
                Cipher::ChaCha20Poly1305,
                13,
                "ba6c32c290e83d15446579e1e14c2de4cfdb4c8ca49326bf4ba94a7e8745a3a1",
            ),
            (
                Cipher::ChaCha20Poly1305,
                2 * SEGMENT + 100,
                "46dc2798d88fb11d51e5573e951c0bb6ef8c066c0689ccb20ee53c53ed77deff",
            ),
            (
                Cipher::Aes256Gcm,
                0,
                "76a34eb05b3690bfd690c5cf2afbca6044aac1861d484115962b6363d928bbee",
            ),
            (
                Cipher::Aes256Gcm,
                13,
                "a26dbc06d6b92ebf4ebc3e28199fad6301e909443f5abbf211152b9dd6ac80da",
            ),
            (
                Cipher::Aes256Gcm,
                2 * SEGMENT + 100,
                "d6289a3e7240abb0a2175f3611ff1d741aa227b71bd1ccd01dd5889fea9732b1",
            ),
        ];
        for (cipher, size, hash) in answers {
            let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let (t, ct) = seal_with(cipher, Key([7; 32]), [1, 2, 3, 4, 5, 6, 7], &plain, 5000);
            assert_eq!(t.file_id.to_hex(), hash, "{cipher:?} {size}");
            assert_eq!(open_all(&t, &ct).unwrap(), plain, "{cipher:?} {size}");
            // The other cipher's ticket does not open it.
            let other = Ticket {
                cipher: match cipher {
                    Cipher::Aes256Gcm => Cipher::ChaCha20Poly1305,
                    Cipher::ChaCha20Poly1305 => Cipher::Aes256Gcm,
                },
                ..t
            };
            assert!(matches!(
                open_all(&other, &ct),
                Err(CryptError::Auth { segment: 0, .. })
            ));
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
