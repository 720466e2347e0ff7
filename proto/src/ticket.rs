//! Tickets of private files: one copy-pasteable string that holds all a
//! recipient needs to fetch and open a private file.
//!
//! A private file is encrypted by its owner's PServer with a fresh random
//! key (an AEAD in the STREAM construction, 64 KiB segments; see the
//! PServer's `private` module); the network only ever sees the
//! ciphertext, addressed by its BLAKE3 (the file id). The ticket carries the
//! rest: the key, the nonce prefix, the plaintext's name and size, and
//! optionally a few holders to ask besides the directory.
//!
//! # Text form
//!
//! `peerdex1` followed by the binary below in RFC 4648 base32, lowercase,
//! without padding (letters `a-z` and digits `2-7`: no `+`, `/` or `=`, so a
//! double click selects it whole and no shell or URL mangles it). Decoding
//! ignores ASCII whitespace (a ticket wrapped by a mail client still works)
//! and accepts upper case.
//!
//! # Binary layout (versions 1 and 2, integers big-endian)
//!
//! | bytes   | field                                                   |
//! |---------|---------------------------------------------------------|
//! | 1       | layout version: the file's cipher ([`Cipher`])          |
//! | 32      | file id: BLAKE3 of the ciphertext                       |
//! | 32      | key (of that cipher)                                    |
//! | 7       | STREAM nonce prefix (`EncryptorBE32`: 12 − 5 bytes)     |
//! | 8       | plaintext size in bytes                                 |
//! | 1       | name length *n* (1..=255)                               |
//! | *n*     | plaintext name, UTF-8, a valid file name (NFC)          |
//! | 1       | number of holder hints *h* (0..=4)                      |
//! | *h* ×   | 2-byte length *m* (1..=512), then *m* bytes: a peer URL |
//! | 4       | checksum: the first 4 bytes of BLAKE3 of all the above  |
//!
//! The version byte names the AEAD the file is sealed with; the layout is
//! the same in both, and so is the ciphertext's (segments, tags, nonces):
//!
//! * `1`: ChaCha20-Poly1305 (RFC 8439). Written until 2026-12; still read.
//! * `2`: AES-256-GCM (NIST SP 800-38D), written since: several times
//!   faster to open where the CPU has AES and carry-less multiply
//!   instructions (every x86-64 and ARMv8 server of the last decade).
//!
//! The checksum catches a truncated or mistyped ticket before anything is
//! fetched (one wrong character in 2³² passes); it is not a signature:
//! whoever holds a ticket can read the file, and could make another ticket.

use std::fmt;
use std::str::FromStr;

use crate::types::{FileId, FileName, ParseError, PeerUrl};

/// What every ticket starts with.
pub const PREFIX: &str = "peerdex1";
/// The newest layout version: what this code writes (it reads 1 too).
pub const VERSION: u8 = Cipher::Aes256Gcm.version();
/// Holder hints a ticket may carry at most.
pub const MAX_HINTS: usize = 4;
/// Bytes of the key.
pub const KEY_BYTES: usize = 32;
/// Bytes of the STREAM nonce prefix.
pub const NONCE_BYTES: usize = 7;
const CHECKSUM_BYTES: usize = 4;
/// Smallest binary ticket: every fixed field, a one-byte name, no hints.
const MIN_BYTES: usize = 1 + 32 + KEY_BYTES + NONCE_BYTES + 8 + 1 + 1 + 1 + CHECKSUM_BYTES;
/// Largest binary ticket: the longest name and every hint at its longest.
pub const MAX_BYTES: usize =
    MIN_BYTES - 1 + crate::types::MAX_NAME_BYTES + MAX_HINTS * (2 + crate::types::MAX_URL_BYTES);
/// Shortest text ticket (without whitespace).
pub const MIN_TEXT: usize = PREFIX.len() + (MIN_BYTES * 8).div_ceil(5);
/// Longest text ticket (without whitespace).
pub const MAX_TEXT: usize = PREFIX.len() + (MAX_BYTES * 8).div_ceil(5);

/// The directory name of a private file's ciphertext: `<file id>.peerdex-private`.
/// It says nothing of the plaintext; search never finds the plaintext name.
pub const PRIVATE_SUFFIX: &str = ".peerdex-private";

/// The name a private file's ciphertext is announced under.
pub fn private_name(id: &FileId) -> FileName {
    format!("{}{PRIVATE_SUFFIX}", id.to_hex())
        .parse()
        .expect("64 hex characters and a suffix make a valid name")
}

/// Is `name` the announced name of the private file `id`?
pub fn is_private_name(id: &FileId, name: &str) -> bool {
    name.strip_suffix(PRIVATE_SUFFIX)
        .is_some_and(|hex| hex == id.to_hex())
}

/// The AEAD a private file is sealed with, in the STREAM construction;
/// named by the ticket's version byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// Version 1: ChaCha20-Poly1305.
    ChaCha20Poly1305,
    /// Version 2: AES-256-GCM (what new uploads are sealed with).
    Aes256Gcm,
}

impl Cipher {
    /// The ticket's layout version that names this cipher.
    pub const fn version(self) -> u8 {
        match self {
            Self::ChaCha20Poly1305 => 1,
            Self::Aes256Gcm => 2,
        }
    }

    /// The cipher a layout version names, if it is known.
    pub const fn from_version(version: u8) -> Option<Self> {
        match version {
            1 => Some(Self::ChaCha20Poly1305),
            2 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }
}

/// The 32-byte key of a private file. Never printed: `Debug` shows
/// `Key(..)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; KEY_BYTES]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// A decoded ticket. Parse one with [`str::parse`]; write one with
/// [`Ticket::encode`] (no `Display`: a ticket is a secret, and is never
/// formatted into a log line by accident).
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// BLAKE3 of the ciphertext: what the network stores and serves.
    pub file_id: FileId,
    /// The AEAD the file is sealed with (the ticket's version).
    pub cipher: Cipher,
    pub key: Key,
    pub nonce: [u8; NONCE_BYTES],
    /// Size of the plaintext.
    pub size: u64,
    /// Name of the plaintext.
    pub name: FileName,
    /// Peers to ask besides the directory's holders (the owner's peer API).
    pub hints: Vec<PeerUrl>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the key nor the name: a Debug line may end up in a log.
        f.debug_struct("Ticket")
            .field("file_id", &self.file_id)
            .field("cipher", &self.cipher)
            .field("size", &self.size)
            .field("hints", &self.hints.len())
            .finish_non_exhaustive()
    }
}

/// Why a string is not a ticket; each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("not a ticket: a ticket starts with {PREFIX}")]
    NoPrefix,
    #[error(
        "ticket: character {at} ({found:?}) is not base32 (a-z, 2-7): it was mistyped; copy the ticket again"
    )]
    NotBase32 { at: usize, found: char },
    #[error(
        "ticket is too short ({len} characters): it was cut off; copy the whole ticket (it has at least {MIN_TEXT} characters)"
    )]
    TooShort { len: usize },
    #[error("ticket is too long ({len} characters, at most {MAX_TEXT})")]
    TooLong { len: usize },
    #[error(
        "ticket checksum does not match: the ticket is truncated or mistyped; copy it again in full"
    )]
    Checksum,
    #[error(
        "ticket version {found} is not known to this peerdex (it reads versions 1 to {VERSION}): upgrade peerdex"
    )]
    Version { found: u8 },
    #[error("ticket is malformed: {what}")]
    Layout { what: &'static str },
    #[error("ticket: {0}")]
    Name(ParseError),
    #[error("ticket: holder hint: {0}")]
    Hint(ParseError),
}

impl Ticket {
    /// The text form: `peerdex1` + lowercase base32.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(MIN_BYTES + self.name.as_str().len() + 64);
        b.push(self.cipher.version());
        b.extend_from_slice(self.file_id.as_bytes());
        b.extend_from_slice(&self.key.0);
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.size.to_be_bytes());
        let name = self.name.as_str().as_bytes();
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        let hints = &self.hints[..self.hints.len().min(MAX_HINTS)];
        b.push(hints.len() as u8);
        for h in hints {
            let h = h.as_str().as_bytes();
            b.extend_from_slice(&(h.len() as u16).to_be_bytes());
            b.extend_from_slice(h);
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(&sum.as_bytes()[..CHECKSUM_BYTES]);
        let mut out = String::with_capacity(PREFIX.len() + (b.len() * 8).div_ceil(5));
        out.push_str(PREFIX);
        out.push_str(&data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase());
        out
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, TicketError> {
        let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if compact.len() > MAX_TEXT {
            return Err(TicketError::TooLong { len: compact.len() });
        }
        let body = match compact.get(..PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(PREFIX) => &compact[PREFIX.len()..],
            _ => return Err(TicketError::NoPrefix),
        };
        if let Some((i, c)) = body
            .char_indices()
            .find(|(_, c)| !matches!(c, 'a'..='z' | 'A'..='Z' | '2'..='7'))
        {
            return Err(TicketError::NotBase32 {
                at: PREFIX.len() + i + 1,
                found: c,
            });
        }
        if compact.len() < MIN_TEXT {
            return Err(TicketError::TooShort { len: compact.len() });
        }
        let upper = body.to_ascii_uppercase();
        // A length no whole number of bytes makes, or non-zero trailing
        // bits: characters are missing or mistyped at the end.
        let bytes = data_encoding::BASE32_NOPAD
            .decode(upper.as_bytes())
            .map_err(|_| TicketError::Checksum)?;
        let (b, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if blake3::hash(b).as_bytes()[..CHECKSUM_BYTES] != *sum {
            return Err(TicketError::Checksum);
        }
        decode_fields(b)
    }
}

/// The fields of a binary ticket whose checksum matched.
fn decode_fields(b: &[u8]) -> Result<Ticket, TicketError> {
    let mut r = Reader(b);
    let version = r.take(1)?[0];
    let cipher = Cipher::from_version(version).ok_or(TicketError::Version { found: version })?;
    let file_id = FileId::from_bytes(r.array()?);
    let key = Key(r.array()?);
    let nonce = r.array()?;
    let size = u64::from_be_bytes(r.array()?);
    let n = r.take(1)?[0] as usize;
    let name = std::str::from_utf8(r.take(n)?)
        .map_err(|_| TicketError::Layout {
            what: "the name is not UTF-8",
        })?
        .parse::<FileName>()
        .map_err(TicketError::Name)?;
    let h = r.take(1)?[0] as usize;
    if h > MAX_HINTS {
        return Err(TicketError::Layout {
            what: "more than 4 holder hints",
        });
    }
    let mut hints = Vec::with_capacity(h);
    for _ in 0..h {
        let m = u16::from_be_bytes(r.array()?) as usize;
        let url = std::str::from_utf8(r.take(m)?)
            .map_err(|_| TicketError::Layout {
                what: "a holder hint is not UTF-8",
            })?
            .parse::<PeerUrl>()
            .map_err(TicketError::Hint)?;
        hints.push(url);
    }
    if !r.0.is_empty() {
        return Err(TicketError::Layout {
            what: "bytes after the last field",
        });
    }
    Ok(Ticket {
        file_id,
        cipher,
        key,
        nonce,
        size,
        name,
        hints,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Layout {
                what: "a field runs past the end",
            });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TicketError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ticket(name: &str, hints: &[&str]) -> Ticket {
        Ticket {
            file_id: FileId::from_bytes([7; 32]),
            cipher: Cipher::Aes256Gcm,
            key: Key([9; 32]),
            nonce: [3; 7],
            size: 123_456,
            name: name.parse().unwrap(),
            hints: hints.iter().map(|h| h.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_ticket_reads_back_and_hides_its_key() {
        let t = ticket("tax return 2026.pdf", &["http://127.0.0.1:7071"]);
        let s = t.encode();
        assert!(s.starts_with(PREFIX));
        assert!(
            s[PREFIX.len()..]
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'))
        );
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
        // Wrapped, upper case, with spaces around: the same ticket.
        let wrapped = format!("  {}\n{}  \n", &s[..40], s[40..].to_ascii_uppercase());
        assert_eq!(wrapped.parse::<Ticket>().unwrap(), t);
        let debug = format!("{t:?}");
        assert!(!debug.contains("tax") && !debug.contains("9, 9"), "{debug}");
        assert_eq!(format!("{:?}", t.key), "Key(..)");
    }

    #[test]
    fn broken_tickets_say_what_is_wrong() {
        let s = ticket("a.txt", &[]).encode();
        assert_eq!("hello".parse::<Ticket>(), Err(TicketError::NoPrefix));
        assert_eq!(
            "peerdex1abc".parse::<Ticket>(),
            Err(TicketError::TooShort { len: 11 })
        );
        assert!(matches!(
            s[..s.len() - 1].parse::<Ticket>(),
            Err(TicketError::Checksum)
        ));
        let mut typo = s.clone().into_bytes();
        typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            String::from_utf8(typo).unwrap().parse::<Ticket>(),
            Err(TicketError::Checksum)
        );
        let bad = format!("{}1{}", &s[..30], &s[31..]);
        assert_eq!(
            bad.parse::<Ticket>(),
            Err(TicketError::NotBase32 { at: 31, found: '1' })
        );
        assert!(matches!(
            "peerdex1".repeat(500).parse::<Ticket>(),
            Err(TicketError::TooLong { .. })
        ));
        // A valid checksum over a newer version.
        let mut b = vec![3u8];
        b.extend_from_slice(&[0; MIN_BYTES - 5]);
        let sum = blake3::hash(&b);
        b.extend_from_slice(&sum.as_bytes()[..4]);
        let t = format!(
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD.encode(&b).to_lowercase()
        );
        assert_eq!(t.parse::<Ticket>(), Err(TicketError::Version { found: 3 }));
    }

    #[test]
    fn the_version_byte_names_the_cipher_and_version_1_still_reads() {
        let t = ticket("a.txt", &[]);
        assert_eq!(VERSION, 2);
        let bytes = |s: &str| {
            data_encoding::BASE32_NOPAD
                .decode(s[PREFIX.len()..].to_ascii_uppercase().as_bytes())
                .unwrap()
        };
        assert_eq!(bytes(&t.encode())[0], 2);
        let v1 = Ticket {
            cipher: Cipher::ChaCha20Poly1305,
            ..t.clone()
        };
        let s1 = v1.encode();
        assert_eq!(bytes(&s1)[0], 1);
        assert_eq!(s1.parse::<Ticket>().unwrap(), v1);
        // A ticket of version 1 written by the code before version 2
        // (same layout, fixed bytes): it still reads, as ChaCha20-Poly1305.
        let old = "peerdex1aedqobyha4dqobyha4dqobyha4dqobyha4dqobyha4dqobyha4dqocijbeeqscijbeeqscijbeeqscijbeeqscijbeeqscijbeeqscijambqgaydambqaaaaaaaadysaavqs45dyoqafagizdq";
        let read: Ticket = old.parse().unwrap();
        assert_eq!(read.cipher, Cipher::ChaCha20Poly1305);
        assert_eq!(read.name.as_str(), "a.txt");
        assert_eq!(read.key, Key([9; 32]));
    }

    #[test]
    fn private_names_say_nothing_of_the_plaintext() {
        let id = FileId::from_bytes([0xab; 32]);
        let n = private_name(&id);
        assert_eq!(n.as_str(), format!("{}.peerdex-private", id.to_hex()));
        assert!(is_private_name(&id, n.as_str()));
        assert!(!is_private_name(&FileId::from_bytes([1; 32]), n.as_str()));
        assert!(!is_private_name(&id, "report.pdf"));
    }

    fn arb_ticket() -> impl Strategy<Value = Ticket> {
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<[u8; 7]>(),
            any::<u64>(),
            "[a-zA-Z0-9 _.()-]{0,60}[a-z0-9]|[\\p{L}]{1,40}",
            proptest::collection::vec((1u16..65535, "[a-z]{1,20}"), 0..=MAX_HINTS),
        )
            .prop_filter_map("a valid name", |(id, key, nonce, size, name, hints)| {
                Some(Ticket {
                    file_id: FileId::from_bytes(id),
                    cipher: if size % 2 == 0 {
                        Cipher::Aes256Gcm
                    } else {
                        Cipher::ChaCha20Poly1305
                    },
                    key: Key(key),
                    nonce,
                    size,
                    name: name.parse().ok()?,
                    hints: hints
                        .into_iter()
                        .map(|(port, host)| format!("http://{host}:{port}").parse().unwrap())
                        .collect(),
                })
            })
    }

    proptest! {
        #[test]
        fn tickets_round_trip(t in arb_ticket()) {
            let s = t.encode();
            prop_assert!(s.len() <= MAX_TEXT);
            prop_assert_eq!(s.parse::<Ticket>().unwrap(), t);
        }

        #[test]
        fn a_cut_ticket_is_refused(t in arb_ticket(), cut in 1usize..400) {
            let s = t.encode();
            let keep = s.len().saturating_sub(cut);
            prop_assert!(s[..keep].parse::<Ticket>().is_err());
        }

        #[test]
        fn a_mistyped_ticket_is_refused(t in arb_ticket(), at in any::<prop::sample::Index>(), c in "[a-z2-7]") {
            let s = t.encode();
            let i = PREFIX.len() + at.index(s.len() - PREFIX.len());
            prop_assume!(s.as_bytes()[i] != c.as_bytes()[0]);
            let typo = format!("{}{c}{}", &s[..i], &s[i + 1..]);
            prop_assert!(typo.parse::<Ticket>().is_err());
        }

        #[test]
        fn any_string_is_answered_without_panic(s in ".{0,300}", b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = s.parse::<Ticket>();
            let t = format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&b).to_lowercase());
            let _ = t.parse::<Ticket>();
        }
    }
}
