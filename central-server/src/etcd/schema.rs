//! The key schema: every key the directory writes under its prefix, how
//! a key is built and read back ([`Key`]), and the stored values
//! ([`PeerRecord`], [`Binding`], [`Decline`], the holding and change
//! number encodings). Nothing else in `etcd/` formats a key.

use std::net::IpAddr;

use peerdex_proto::{FileId, PeerId};
use serde::{Deserialize, Serialize};

use super::Etcd;
use crate::store::PublicKey;

/// A peer as stored in `peers/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PeerRecord {
    pub url: String,
    /// Hex BLAKE3 hash of the session token.
    pub token: String,
    pub lease: i64,
    /// The lease of the central that keeps this peer's session: the one
    /// its heartbeats reach (issue 27). Heartbeats are kept in that
    /// central's memory, not sent to etcd; it ends the session when they
    /// stop. 0 (a record of a central from before) means none: the
    /// peer's own short lease is kept alive by every heartbeat.
    #[serde(default, skip_serializing_if = "is_zero_lease")]
    pub owner: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    #[serde(default)]
    pub active_uploads: u32,
    #[serde(default)]
    pub free_upload_slots: u32,
    /// Space offered for replicas.
    #[serde(default)]
    pub replica_quota: u64,
    /// Relays for up to this many firewalled peers (issue 25).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub relay_max: u32,
    /// Unreachable and no relay: its holdings are in no answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlisted: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_lease(n: &i64) -> bool {
    *n == 0
}

/// A FETCH a volunteer would not do, as stored in `declined/<peer>/<file>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Decline {
    pub reason: String,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// A peer id's key binding, as stored in `keys/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Binding {
    /// Hex Ed25519 public key.
    pub key: String,
    /// Unix seconds of the last Join.
    pub last_join: i64,
}

impl Binding {
    pub(crate) fn public_key(&self) -> Option<PublicKey> {
        let mut k = [0; 32];
        hex::decode_to_slice(&self.key, &mut k).ok()?;
        Some(k)
    }
}

/// A key of the directory, read back from its text (after the prefix).
/// Pages and tombstones read back their peer only: their value (and
/// lease) says the rest.
/// Keys the index does not follow (`nonces/`, `secrets/`, `seq/`,
/// `election`, `fence`) read as `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Key {
    /// `peers/<peer>`
    Peer(PeerId),
    /// `keys/<peer>`
    Binding(PeerId),
    /// `files/<peer>/<file>/<name>` (the name may hold slashes)
    Holding {
        peer: PeerId,
        file: FileId,
        name: String,
    },
    /// `pins/<file>/<peer>`
    Pin { file: FileId, peer: PeerId },
    /// `tasks/<peer>/<file>`
    Task { peer: PeerId, file: FileId },
    /// `declined/<peer>/<file>`
    Declined { peer: PeerId, file: FileId },
    /// `proofs/<peer>/<file>`
    Proof { peer: PeerId, file: FileId },
    /// `inv/<peer>/<change>.<part>`: holdings in a page (see `pages`),
    /// written by the Join (change 0) or a Publish of the session.
    Page { peer: PeerId },
    /// `inv/<peer>/gone/<file>` (every name) or
    /// `inv/<peer>/gone/<file>/<name>`: a withdrawal of holdings that may
    /// live in a page, which is not rewritten (see `writes`).
    Tombstone {
        peer: PeerId,
        file: FileId,
        name: Option<String>,
    },
}

impl Key {
    /// Read a key without the prefix; `None` for keys that are not
    /// followed, or that do not parse.
    pub(super) fn parse(rest: &str) -> Option<Self> {
        if let Some(id) = rest.strip_prefix("peers/") {
            Some(Key::Peer(id.parse().ok()?))
        } else if let Some(id) = rest.strip_prefix("keys/") {
            Some(Key::Binding(id.parse().ok()?))
        } else if let Some(path) = rest.strip_prefix("files/") {
            let (peer, file, name) = split_holding(path)?;
            Some(Key::Holding { peer, file, name })
        } else if let Some(path) = rest.strip_prefix("inv/") {
            split_inventory(path)
        } else if let Some(path) = rest.strip_prefix("pins/") {
            let (file, peer) = split_pair(path)?;
            Some(Key::Pin {
                file: file.parse().ok()?,
                peer: peer.parse().ok()?,
            })
        } else if let Some(path) = rest.strip_prefix("tasks/") {
            let (peer, file) = split_pair(path)?;
            Some(Key::Task {
                peer: peer.parse().ok()?,
                file: file.parse().ok()?,
            })
        } else if let Some(path) = rest.strip_prefix("declined/") {
            let (peer, file) = split_pair(path)?;
            Some(Key::Declined {
                peer: peer.parse().ok()?,
                file: file.parse().ok()?,
            })
        } else if let Some(path) = rest.strip_prefix("proofs/") {
            let (peer, file) = split_pair(path)?;
            Some(Key::Proof {
                peer: peer.parse().ok()?,
                file: file.parse().ok()?,
            })
        } else {
            None
        }
    }
}

/// The prefixes read at start-up after the peers and their holdings
/// (see [`Etcd::snapshot`]).
pub(super) const FOLLOWED_AFTER_HOLDINGS: [&str; 4] = ["pins/", "tasks/", "declined/", "proofs/"];

impl Etcd {
    /// `rest` under the directory's prefix.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The key without the prefix, or `None` when it is not ours.
    pub(super) fn strip<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.prefix)
    }

    pub(super) fn peer_key(&self, peer: &PeerId) -> String {
        self.key(&format!("peers/{peer}"))
    }

    pub(super) fn binding_key(&self, peer: &PeerId) -> String {
        self.key(&format!("keys/{peer}"))
    }

    /// The last inventory change applied for a peer (see
    /// [`super::Ordered`]).
    pub(super) fn seq_key(&self, peer: &PeerId) -> String {
        self.key(&format!("seq/{peer}"))
    }

    pub(super) fn holding_key(&self, peer: &PeerId, file: &FileId, name: &str) -> String {
        self.key(&format!("files/{peer}/{}/{name}", file.to_hex()))
    }

    /// The prefix of every name under which `peer` holds `file`.
    pub(super) fn names_key(&self, peer: &PeerId, file: &FileId) -> String {
        self.key(&format!("files/{peer}/{}/", file.to_hex()))
    }

    pub(super) fn pin_key(&self, file: &FileId, peer: &PeerId) -> String {
        self.key(&format!("pins/{}/{peer}", file.to_hex()))
    }

    pub(super) fn task_key(&self, peer: &PeerId, file: &FileId) -> String {
        self.key(&format!("tasks/{peer}/{}", file.to_hex()))
    }

    pub(super) fn declined_key(&self, peer: &PeerId, file: &FileId) -> String {
        self.key(&format!("declined/{peer}/{}", file.to_hex()))
    }

    pub(super) fn proof_key(&self, peer: &PeerId, file: &FileId) -> String {
        self.key(&format!("proofs/{peer}/{}", file.to_hex()))
    }

    /// Page `part` of change `seq` (0: the Join) of `peer`'s inventory:
    /// zero-padded, so a peer's pages list in the order written.
    pub(super) fn page_key(&self, peer: &PeerId, seq: u64, part: usize) -> String {
        self.key(&format!("inv/{peer}/{seq:020}.{part:06}"))
    }

    /// The withdrawal of one name of `file` (`Some`) or of all of them.
    pub(super) fn tombstone_key(&self, peer: &PeerId, file: &FileId, name: Option<&str>) -> String {
        match name {
            Some(n) => self.key(&format!("inv/{peer}/gone/{}/{n}", file.to_hex())),
            None => self.key(&format!("inv/{peer}/gone/{}", file.to_hex())),
        }
    }

    /// A spent Join nonce.
    pub(super) fn nonce_key(&self, nonce: &[u8]) -> String {
        self.key(&format!("nonces/{}", hex::encode(nonce)))
    }
}

/// The prefix of a peer's holdings (every file), without the directory's.
pub(super) fn holdings_of(peer: &PeerId) -> String {
    format!("files/{peer}/")
}

/// The prefix of a peer's pages and tombstones, without the directory's.
pub(super) fn inventory_of(peer: &PeerId) -> String {
    format!("inv/{peer}/")
}

/// A holding's value: the size claimed, followed by ` r` for a replica.
pub(super) fn holding_value(size: u64, replica: bool) -> String {
    if replica {
        format!("{size} r")
    } else {
        size.to_string()
    }
}

/// The size and replica flag of a holding's value.
pub(super) fn parse_holding_value(value: &[u8]) -> Option<(u64, bool)> {
    let value = std::str::from_utf8(value).ok()?;
    let (size, replica) = match value.strip_suffix(" r") {
        Some(v) => (v, true),
        None => (value, false),
    };
    Some((size.parse().ok()?, replica))
}

/// A change number as stored: zero-padded, so etcd's byte order is the
/// numbers' order.
pub(super) fn seq_value(seq: u64) -> String {
    format!("{seq:020}")
}

/// A stored change number.
pub(super) fn parse_seq(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The end of the key range of every key starting with `prefix`.
pub(super) fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `<a>/<b>` of a pin, task or decline key.
fn split_pair(path: &str) -> Option<(&str, &str)> {
    let (a, b) = path.split_once('/')?;
    (!b.contains('/')).then_some((a, b))
}

/// `<peer>/<file>/<name>` of a holding key.
fn split_holding(path: &str) -> Option<(PeerId, FileId, String)> {
    let (peer, rest) = path.split_once('/')?;
    let (file, name) = rest.split_once('/')?;
    Some((peer.parse().ok()?, file.parse().ok()?, name.to_owned()))
}

/// `<peer>/<change>.<part>` of a page key, or
/// `<peer>/gone/<file>[/<name>]` of a tombstone.
fn split_inventory(path: &str) -> Option<Key> {
    let (peer, rest) = path.split_once('/')?;
    let peer = peer.parse().ok()?;
    if let Some(gone) = rest.strip_prefix("gone/") {
        let (file, name) = match gone.split_once('/') {
            Some((f, n)) if !n.is_empty() => (f, Some(n.to_owned())),
            Some(_) => return None,
            None => (gone, None),
        };
        return Some(Key::Tombstone {
            peer,
            file: file.parse().ok()?,
            name,
        });
    }
    let (seq, part) = rest.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(seq) && digits(part)).then_some(Key::Page { peer })
}

/// A JSON value, or `None` (logged) when it does not read.
pub(super) fn json<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    serde_json::from_slice(value)
        .inspect_err(|e| tracing::warn!(key, error = %e, "etcd: unreadable value ignored"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_keys_split_with_slashes_in_names_kept() {
        let p = PeerId::new_random();
        let f = FileId::from_bytes([7; 32]);
        let (peer, file, name) = split_holding(&format!("{p}/{}/a b/c", f.to_hex())).unwrap();
        assert_eq!((peer, file, name.as_str()), (p, f, "a b/c"));
        assert!(split_holding("nope").is_none());
        assert!(split_holding(&format!("{p}/zz/x")).is_none());
    }

    #[test]
    fn range_end_is_the_next_prefix() {
        assert_eq!(range_end(b"/peerdex/"), b"/peerdex0".to_vec());
        assert_eq!(range_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(range_end(&[0xff]), vec![0]);
    }

    #[test]
    fn keys_read_back_as_written() {
        let p = PeerId::new_random();
        let f = FileId::from_bytes([9; 32]);
        let h = f.to_hex();
        for (text, key) in [
            (format!("peers/{p}"), Some(Key::Peer(p))),
            (format!("keys/{p}"), Some(Key::Binding(p))),
            (
                format!("files/{p}/{h}/dir/a.txt"),
                Some(Key::Holding {
                    peer: p,
                    file: f,
                    name: "dir/a.txt".into(),
                }),
            ),
            (format!("pins/{h}/{p}"), Some(Key::Pin { file: f, peer: p })),
            (
                format!("tasks/{p}/{h}"),
                Some(Key::Task { peer: p, file: f }),
            ),
            (
                format!("declined/{p}/{h}"),
                Some(Key::Declined { peer: p, file: f }),
            ),
            (
                format!("proofs/{p}/{h}"),
                Some(Key::Proof { peer: p, file: f }),
            ),
            (
                format!("inv/{p}/{:020}.{:06}", 0, 3),
                Some(Key::Page { peer: p }),
            ),
            (
                format!("inv/{p}/gone/{h}"),
                Some(Key::Tombstone {
                    peer: p,
                    file: f,
                    name: None,
                }),
            ),
            (
                format!("inv/{p}/gone/{h}/dir/a.txt"),
                Some(Key::Tombstone {
                    peer: p,
                    file: f,
                    name: Some("dir/a.txt".into()),
                }),
            ),
            (format!("inv/{p}/gone/{h}/"), None),
            (format!("inv/{p}/gone/zz"), None),
            (format!("inv/{p}/7"), None),
            (format!("inv/{p}/x.1"), None),
            (format!("inv/nope/{:020}.{:06}", 0, 0), None),
            // A pair key never holds a third part; ids must parse.
            (format!("pins/{h}/{p}/x"), None),
            (format!("tasks/{h}/{p}"), None),
            (format!("seq/{p}"), None),
            ("fence".into(), None),
            ("secrets/nonce".into(), None),
        ] {
            assert_eq!(Key::parse(&text), key, "{text}");
        }
    }

    #[test]
    fn values_read_back_as_written() {
        for (size, replica) in [(0, false), (7, true), (u64::MAX, false)] {
            let v = holding_value(size, replica);
            assert_eq!(parse_holding_value(v.as_bytes()), Some((size, replica)));
        }
        assert_eq!(parse_holding_value(b"x r"), None);
        assert_eq!(parse_holding_value(b"-1"), None);
        // Change numbers sort as bytes in the order of the numbers.
        assert!(seq_value(9) < seq_value(10));
        assert_eq!(parse_seq(seq_value(42).as_bytes()), Some(42));
    }
}
