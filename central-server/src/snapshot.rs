//! The local snapshot of a directory on etcd: what one central's index and
//! mirror held at one etcd revision, in a file of its data folder
//! (`index.snapshot`), so that a restart loads it and follows etcd's watch
//! from the next revision instead of reading the whole directory again
//! (issue 27: 1M holdings in seconds, not a minute).
//!
//! Written by the follower (`crate::directory`) between two watch
//! answers, so the index, the mirror and the revision agree; every
//! `CENTRAL_SNAPSHOT_SECS` when something changed, and at a clean
//! shutdown. Atomically (`write_atomic`: temp file, fsync, rename): a
//! reader sees the old snapshot or the new one, never a part.
//!
//! # Format (version 1)
//!
//! ```text
//! "PDXSNAP\n"  u32 version
//! u64 etcd cluster id   i64 revision   bytes prefix
//! u64 n × (bytes key, bytes value, i64 mod revision)   followed keys, as stored
//! u64 n × 16-byte peer id                              holders
//! u64 n × 32-byte file id
//! bytes names (UTF-8, one after another)   u64 n × u64 end of each name
//! u64 n × (u32 peer, u32 file, u32 name, u64 size, u8 replica)  holdings
//! 32-byte BLAKE3 of everything before
//! ```
//!
//! Integers are little-endian; `bytes` is a u64 length and the bytes. The
//! keys are the followed keys except holdings (peers, key bindings, pins,
//! tasks, declines, proofs) with the directory prefix cut; holdings come
//! from the index's tables ([`Holdings`]), a name written once however
//! many hold it.
//!
//! A snapshot is used only when its checksum, version, prefix and cluster
//! match and etcd still has the history after its revision; anything else
//! is a full read. A damaged one is logged and deleted, never served.

use std::path::{Path, PathBuf};

use peerdex_proto::{FileId, PeerId};

use crate::index::{Holdings, Row};

/// The snapshot's file name in the data folder.
pub(crate) const FILE_NAME: &str = "index.snapshot";

const MAGIC: &[u8; 8] = b"PDXSNAP\n";

/// The format written; older or newer ones are read as unusable.
pub(crate) const VERSION: u32 = 1;

const CHECKSUM: usize = 32;

/// Bytes of one holding row.
const ROW: usize = 4 + 4 + 4 + 8 + 1;

/// Why a snapshot could not be used or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error("snapshot {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path}: cannot write it: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path}: not a peerdex snapshot")]
    NotASnapshot { path: PathBuf },
    #[error("snapshot {path}: format version {found}; this central reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("snapshot {path}: the checksum does not match (damaged or cut short)")]
    Checksum { path: PathBuf },
    #[error("snapshot {path}: malformed at byte {at}: {what}")]
    Malformed {
        path: PathBuf,
        at: usize,
        what: &'static str,
    },
}

/// One followed key as etcd stored it (without the directory prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// What a central's index and mirror held at `revision`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The etcd cluster it was taken from (a snapshot of another cluster
    /// is not used).
    pub cluster: u64,
    pub prefix: String,
    pub revision: i64,
    pub kvs: Vec<Kv>,
    pub holdings: Holdings,
}

/// The snapshot's path in `data_dir`.
pub(crate) fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Write `s` to `path` atomically; returns its size in bytes.
pub(crate) fn save(path: &Path, s: &Snapshot) -> Result<usize, SnapshotError> {
    let bytes = encode(s);
    peerdex_common::fs::write_atomic(path, &bytes).map_err(|source| SnapshotError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(bytes.len())
}

/// The snapshot at `path`: `Ok(None)` when there is none.
pub(crate) fn load(path: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    decode(&bytes).map(Some).map_err(|p| p.at(path))
}

/// Delete an unusable snapshot (a failure is only logged: the next
/// snapshot replaces it anyway).
pub(crate) fn discard(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot delete an unusable snapshot");
    }
}

/// A decoding problem, before the path is known.
#[derive(Debug, PartialEq, Eq)]
enum Problem {
    NotASnapshot,
    Version(u32),
    Checksum,
    Malformed(usize, &'static str),
}

impl Problem {
    fn at(self, path: &Path) -> SnapshotError {
        let path = path.to_owned();
        match self {
            Problem::NotASnapshot => SnapshotError::NotASnapshot { path },
            Problem::Version(found) => SnapshotError::Version { path, found },
            Problem::Checksum => SnapshotError::Checksum { path },
            Problem::Malformed(at, what) => SnapshotError::Malformed { path, at, what },
        }
    }
}

fn encode(s: &Snapshot) -> Vec<u8> {
    let h = &s.holdings;
    let kv_bytes: usize = s
        .kvs
        .iter()
        .map(|kv| kv.key.len() + kv.value.len() + 24)
        .sum();
    let mut out = Vec::with_capacity(
        64 + s.prefix.len()
            + kv_bytes
            + h.peers.len() * 16
            + h.files.len() * 32
            + h.names.len()
            + h.name_ends.len() * 8
            + h.rows.len() * ROW
            + 40
            + CHECKSUM,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&s.cluster.to_le_bytes());
    out.extend_from_slice(&s.revision.to_le_bytes());
    put_bytes(&mut out, s.prefix.as_bytes());
    put_len(&mut out, s.kvs.len());
    for kv in &s.kvs {
        put_bytes(&mut out, kv.key.as_bytes());
        put_bytes(&mut out, &kv.value);
        out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    }
    put_len(&mut out, h.peers.len());
    for p in &h.peers {
        out.extend_from_slice(p.as_uuid().as_bytes());
    }
    put_len(&mut out, h.files.len());
    for f in &h.files {
        out.extend_from_slice(f.as_bytes());
    }
    put_bytes(&mut out, h.names.as_bytes());
    put_len(&mut out, h.name_ends.len());
    for e in &h.name_ends {
        out.extend_from_slice(&e.to_le_bytes());
    }
    put_len(&mut out, h.rows.len());
    for r in &h.rows {
        out.extend_from_slice(&r.peer.to_le_bytes());
        out.extend_from_slice(&r.file.to_le_bytes());
        out.extend_from_slice(&r.name.to_le_bytes());
        out.extend_from_slice(&r.size.to_le_bytes());
        out.push(u8::from(r.replica));
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

/// Reads the body, every length checked against what is left.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Problem> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(Problem::Malformed(self.at, what))?;
        let b = &self.buf[self.at..end];
        self.at = end;
        Ok(b)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Problem> {
        let b = self.take(N, what)?;
        Ok(b.try_into().expect("N bytes"))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, Problem> {
        self.array(what).map(u64::from_le_bytes)
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, Problem> {
        self.array(what).map(i64::from_le_bytes)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, Problem> {
        self.array(what).map(u32::from_le_bytes)
    }
    /// A count of entries of `unit` bytes at least, that fit in what is left.
    fn count(&mut self, unit: usize, what: &'static str) -> Result<usize, Problem> {
        let at = self.at;
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.at) as u64;
        if n.saturating_mul(unit as u64) > left {
            return Err(Problem::Malformed(at, what));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], Problem> {
        let n = self.count(1, what)?;
        self.take(n, what)
    }
    fn text(&mut self, what: &'static str) -> Result<&'a str, Problem> {
        let at = self.at;
        std::str::from_utf8(self.bytes(what)?).map_err(|_| Problem::Malformed(at, what))
    }
}

fn decode(bytes: &[u8]) -> Result<Snapshot, Problem> {
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Problem::NotASnapshot);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(Problem::Version(version));
    }
    let Some(body_len) = bytes.len().checked_sub(CHECKSUM) else {
        return Err(Problem::Checksum);
    };
    let (body, sum) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum {
        return Err(Problem::Checksum);
    }
    let mut r = Reader { buf: body, at: 12 };
    let cluster = r.u64("cluster id")?;
    let revision = r.i64("revision")?;
    let prefix = r.text("prefix")?.to_owned();
    let n = r.count(24, "keys")?;
    let mut kvs = Vec::with_capacity(n);
    for _ in 0..n {
        let key = r.text("key")?.to_owned();
        let value = r.bytes("value")?.to_vec();
        let mod_revision = r.i64("mod revision")?;
        kvs.push(Kv {
            key,
            value,
            mod_revision,
        });
    }
    let n = r.count(16, "peers")?;
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        let id = uuid::Uuid::from_bytes(r.array("peer id")?);
        peers.push(PeerId::from_uuid(id));
    }
    let n = r.count(32, "files")?;
    let mut files = Vec::with_capacity(n);
    for _ in 0..n {
        files.push(FileId::from_bytes(r.array("file id")?));
    }
    let names_at = r.at;
    let names = r.text("names")?.to_owned();
    let n = r.count(8, "name ends")?;
    let mut name_ends = Vec::with_capacity(n);
    let mut last = 0;
    for _ in 0..n {
        let end = r.u64("name end")?;
        let ok = end >= last
            && usize::try_from(end).is_ok_and(|e| e <= names.len() && names.is_char_boundary(e));
        if !ok {
            return Err(Problem::Malformed(names_at, "name ends"));
        }
        last = end;
        name_ends.push(end);
    }
    let n = r.count(ROW, "holdings")?;
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        let row = Row {
            peer: r.u32("holding")?,
            file: r.u32("holding")?,
            name: r.u32("holding")?,
            size: r.u64("holding")?,
            replica: r.take(1, "holding")?[0] != 0,
        };
        rows.push(row);
    }
    if r.at != body.len() {
        return Err(Problem::Malformed(r.at, "bytes after the holdings"));
    }
    Ok(Snapshot {
        cluster,
        prefix,
        revision,
        kvs,
        holdings: Holdings {
            peers,
            files,
            names,
            name_ends,
            rows,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let first = "Artist - Album/01 Ünïcode.flac";
        Snapshot {
            cluster: 0xC0FFEE,
            prefix: "/peerdex/".into(),
            revision: 4242,
            kvs: vec![
                Kv {
                    key: format!("peers/{}", PeerId::new_random()),
                    value: br#"{"url":"http://a:1"}"#.to_vec(),
                    mod_revision: 17,
                },
                Kv {
                    key: "pins/x/y".into(),
                    value: Vec::new(),
                    mod_revision: 3,
                },
            ],
            holdings: Holdings {
                peers: vec![PeerId::new_random(), PeerId::new_random()],
                files: vec![FileId::from_bytes([1; 32]), FileId::from_bytes([2; 32])],
                names: format!("{first}b.txt"),
                name_ends: vec![first.len() as u64, first.len() as u64 + 5],
                rows: vec![
                    Row {
                        peer: 0,
                        file: 0,
                        name: 0,
                        size: 10,
                        replica: false,
                    },
                    Row {
                        peer: 1,
                        file: 1,
                        name: 1,
                        size: u64::MAX,
                        replica: true,
                    },
                ],
            },
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let s = sample();
        assert_eq!(s.holdings.name(0), Some("Artist - Album/01 Ünïcode.flac"));
        assert_eq!(decode(&encode(&s)), Ok(s));
        let empty = Snapshot {
            cluster: 1,
            prefix: "/p/".into(),
            revision: 1,
            kvs: Vec::new(),
            holdings: Holdings::default(),
        };
        assert_eq!(decode(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn damage_anywhere_is_refused_never_read() {
        let bytes = encode(&sample());
        // Every single flipped byte, and every cut.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let e = decode(&b).expect_err("a flipped byte is noticed");
            if i >= 12 {
                assert_eq!(e, Problem::Checksum, "byte {i}");
            }
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert_eq!(decode(&v2), Err(Problem::Version(2)));
        assert_eq!(decode(b"hello"), Err(Problem::NotASnapshot));
    }

    #[test]
    fn well_summed_nonsense_is_malformed_not_a_panic() {
        // A body whose checksum matches but whose counts lie.
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&VERSION.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1i64.to_le_bytes());
        body.extend_from_slice(&u64::MAX.to_le_bytes()); // prefix length
        let sum = blake3::hash(&body);
        body.extend_from_slice(sum.as_bytes());
        assert!(matches!(
            decode(&body),
            Err(Problem::Malformed(28, "prefix"))
        ));
    }

    #[test]
    fn files_are_written_whole_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert!(matches!(load(&path), Ok(None)));
        let s = sample();
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), Some(s));
        std::fs::write(&path, b"PDXSNAP\n\x01\0\0\0garbage").unwrap();
        assert!(matches!(load(&path), Err(SnapshotError::Checksum { .. })));
        discard(&path);
        assert!(!path.exists());
    }
}
