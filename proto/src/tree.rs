//! BLAKE3 tree manifests: a file's chunks checked against its id alone.
//!
//! BLAKE3 hashes a file as a binary tree over 1 KiB pieces. Cut the file
//! into aligned chunks whose size is a power of two (at least 1 MiB on the
//! wire), and every chunk is a subtree of that tree: its *chaining value*
//! (CV) is a 32-byte hash of the chunk that also commits to its place in
//! the file. Merging the CVs up the tree gives the root, which is the file
//! id. So a manifest — the size, the chunk size and one CV per chunk, what
//! Bao and iroh call an outboard — is checked against the id by anyone,
//! before a single content byte is fetched, and then each chunk is checked
//! against its CV as it arrives. No byte is hashed twice: the whole-file
//! hash is the root of the verified CVs.
//!
//! A file of one chunk (at most the chunk size) has no CVs: its one chunk
//! is checked against the id itself. An empty file has no chunk.
//!
//! On the wire (`GET /peer/v1/files/{id}/manifest`) a manifest is
//! [`Manifest::encode`]: size and chunk size as little-endian `u64`, then
//! the CVs, 32 bytes each.
//!
//! Built on the `blake3` crate's `hazmat` API; this module only chooses the
//! tree shape (aligned power-of-two subtrees, merged left-balanced as
//! BLAKE3 itself does) and never implements a hash.

use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

use crate::FileId;

/// Smallest chunk size of a manifest on the wire (1 MiB).
pub const MIN_CHUNK_SIZE: u64 = 1 << 20;
/// A manifest has at most this many chunks; the chunk size grows to keep it so.
pub const MAX_CHUNKS: u64 = 8192;
/// Largest encoded manifest.
pub const MAX_ENCODED: usize = 16 + 32 * MAX_CHUNKS as usize;

/// A BLAKE3 chaining value.
pub type Cv = [u8; 32];

/// The chunk size for a file of `size` bytes: the smallest power of two, at
/// least [`MIN_CHUNK_SIZE`], that keeps the count at or under [`MAX_CHUNKS`].
pub fn chunk_size_for(size: u64) -> u64 {
    let mut cs = MIN_CHUNK_SIZE;
    while size.div_ceil(cs) > MAX_CHUNKS {
        cs *= 2;
    }
    cs
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("chunk size {0} must be a power of two of at least {min}", min = MIN_CHUNK_SIZE)]
    ChunkSize(u64),
    #[error("a file of {size} bytes in chunks of {chunk_size} has {chunks} chunks, more than {max}", max = MAX_CHUNKS)]
    TooManyChunks {
        size: u64,
        chunk_size: u64,
        chunks: u64,
    },
    #[error("manifest has {got} chaining values, expected {expected} for size {size}")]
    Count {
        got: usize,
        expected: u64,
        size: u64,
    },
    #[error("a file of {size} bytes is cut in chunks of {want} on the wire, not {chunk_size}")]
    NotCanonical {
        size: u64,
        chunk_size: u64,
        want: u64,
    },
    #[error("manifest is {0} bytes; it must be 16 bytes plus 32 per chaining value")]
    Encoding(usize),
    #[error("the chaining values merge to {got}, not the file id {want}")]
    Root { got: FileId, want: FileId },
    #[error("a file of 0 bytes has the id of empty content, not {0}")]
    NotEmpty(FileId),
}

/// A manifest verified against a file id: what to fetch and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    id: FileId,
    size: u64,
    chunk_size: u64,
    /// One per chunk when there are two chunks or more; empty otherwise.
    cvs: Vec<Cv>,
}

impl Manifest {
    /// Check `cvs` against `id` for a file of `size` bytes in chunks of
    /// `chunk_size` (any power of two of at least 1 KiB: tests use small
    /// ones; the wire demands [`MIN_CHUNK_SIZE`], see [`Manifest::decode`]).
    pub fn new(
        id: FileId,
        size: u64,
        chunk_size: u64,
        cvs: Vec<Cv>,
    ) -> Result<Self, ManifestError> {
        if !chunk_size.is_power_of_two() || chunk_size < blake3::CHUNK_LEN as u64 {
            return Err(ManifestError::ChunkSize(chunk_size));
        }
        let chunks = size.div_ceil(chunk_size);
        if chunks > MAX_CHUNKS {
            return Err(ManifestError::TooManyChunks {
                size,
                chunk_size,
                chunks,
            });
        }
        let expected = if chunks >= 2 { chunks } else { 0 };
        if cvs.len() as u64 != expected {
            return Err(ManifestError::Count {
                got: cvs.len(),
                expected,
                size,
            });
        }
        if size == 0 && id.as_bytes() != blake3::hash(b"").as_bytes() {
            return Err(ManifestError::NotEmpty(id));
        }
        if chunks >= 2 {
            let got = FileId::from_bytes(*root(&cvs).as_bytes());
            if got != id {
                return Err(ManifestError::Root { got, want: id });
            }
        }
        Ok(Self {
            id,
            size,
            chunk_size,
            cvs,
        })
    }

    /// Parse and verify a manifest received for `id` from another peer.
    ///
    /// On the wire the chunk size must be [`chunk_size_for`] the size, the
    /// one a [`TreeHasher`] picks. That is what binds the size to the id:
    /// a file of two chunks or more has its chunk count (so its size, to
    /// within one chunk) fixed by CVs that must merge to the id, but a
    /// one-chunk manifest has no CV, so with a free chunk size a holder
    /// could claim any size (a 1 TiB "file" of one 1 TiB chunk) for any id.
    /// With the canonical chunk size a one-chunk file is at most
    /// [`MIN_CHUNK_SIZE`] bytes, and a size that lies by more than one
    /// chunk fails the root check.
    pub fn decode(id: FileId, bytes: &[u8]) -> Result<Self, ManifestError> {
        let m = Self::decode_local(id, bytes)?;
        if m.chunk_size < MIN_CHUNK_SIZE {
            return Err(ManifestError::ChunkSize(m.chunk_size));
        }
        let want = chunk_size_for(m.size);
        if m.chunk_size != want {
            return Err(ManifestError::NotCanonical {
                size: m.size,
                chunk_size: m.chunk_size,
                want,
            });
        }
        Ok(m)
    }

    /// Parse and verify a manifest this peer wrote itself (a cache, a
    /// partial download), whatever its chunk size.
    pub fn decode_local(id: FileId, bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() < 16 || bytes.len() > MAX_ENCODED || !(bytes.len() - 16).is_multiple_of(32) {
            return Err(ManifestError::Encoding(bytes.len()));
        }
        let size = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let chunk_size = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let cvs = bytes[16..]
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        Self::new(id, size, chunk_size, cvs)
    }

    /// The wire form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 32 * self.cvs.len());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        for cv in &self.cvs {
            out.extend_from_slice(cv);
        }
        out
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The chaining values (empty for a file of at most one chunk).
    pub fn cvs(&self) -> &[Cv] {
        &self.cvs
    }

    /// Number of chunks (0 for an empty file).
    pub fn chunks(&self) -> usize {
        self.size.div_ceil(self.chunk_size) as usize
    }

    /// Offset and length of chunk `i`.
    pub fn chunk_range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.chunk_size;
        (start, self.chunk_size.min(self.size.saturating_sub(start)))
    }

    /// A hasher that checks chunk `i` as its bytes stream in.
    pub fn chunk_hasher(&self, i: usize) -> ChunkHasher {
        let (start, _) = self.chunk_range(i);
        let mut hasher = blake3::Hasher::new();
        let expect = if self.cvs.is_empty() {
            Expect::Root(self.id)
        } else {
            hasher.set_input_offset(start);
            Expect::Cv(self.cvs[i])
        };
        ChunkHasher {
            hasher,
            expect,
            len: 0,
        }
    }

    /// Is `bytes` chunk `i` of this file?
    pub fn check_chunk(&self, i: usize, bytes: &[u8]) -> bool {
        let mut h = self.chunk_hasher(i);
        h.update(bytes);
        h.matches()
    }
}

enum Expect {
    Cv(Cv),
    Root(FileId),
}

/// Checks one chunk against its manifest as its bytes stream in.
pub struct ChunkHasher {
    hasher: blake3::Hasher,
    expect: Expect,
    len: u64,
}

impl ChunkHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Did the bytes so far make exactly the expected chunk?
    pub fn matches(&self) -> bool {
        match &self.expect {
            // Chunks with a CV are never empty (and BLAKE3 has no CV for nothing).
            Expect::Cv(cv) => self.len > 0 && &self.hasher.finalize_non_root() == cv,
            Expect::Root(id) => self.hasher.finalize().as_bytes() == id.as_bytes(),
        }
    }
}

/// The root hash of two or more chunk CVs, merged as BLAKE3 does: the left
/// subtree holds the largest power of two of chunks that leaves at least
/// one for the right.
fn root(cvs: &[Cv]) -> blake3::Hash {
    debug_assert!(cvs.len() >= 2);
    let split = left_len(cvs.len());
    merge_subtrees_root(&subtree(&cvs[..split]), &subtree(&cvs[split..]), Mode::Hash)
}

fn subtree(cvs: &[Cv]) -> Cv {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let split = left_len(cvs.len());
    merge_subtrees_non_root(&subtree(&cvs[..split]), &subtree(&cvs[split..]), Mode::Hash)
}

/// Largest power of two below `n` (n >= 2).
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// Hashes a whole file in one pass into its id and its manifest (uploads,
/// scans of the share folder). Starts at the smallest chunk size and
/// doubles it (merging pairs of CVs) whenever the count would pass
/// [`MAX_CHUNKS`], so the result uses [`chunk_size_for`] of the final size
/// without knowing it in advance.
pub struct TreeHasher {
    chunk_size: u64,
    current: blake3::Hasher,
    in_chunk: u64,
    total: u64,
    cvs: Vec<Cv>,
}

impl Default for TreeHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeHasher {
    pub fn new() -> Self {
        Self::with_chunk_size(MIN_CHUNK_SIZE)
    }

    /// Start at another chunk size (a power of two of at least 1 KiB; small
    /// ones make small test files span many chunks).
    pub fn with_chunk_size(chunk_size: u64) -> Self {
        assert!(chunk_size.is_power_of_two() && chunk_size >= blake3::CHUNK_LEN as u64);
        Self {
            chunk_size,
            current: blake3::Hasher::new(),
            in_chunk: 0,
            total: 0,
            cvs: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.in_chunk == self.chunk_size {
                self.cvs.push(self.current.finalize_non_root());
                if self.cvs.len() as u64 == MAX_CHUNKS {
                    self.coarsen();
                }
                self.current = blake3::Hasher::new();
                self.current.set_input_offset(self.total);
                self.in_chunk = 0;
            }
            let room = (self.chunk_size - self.in_chunk).min(data.len() as u64) as usize;
            self.current.update(&data[..room]);
            self.in_chunk += room as u64;
            self.total += room as u64;
            data = &data[room..];
        }
    }

    /// Bytes hashed so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Merge pairs of CVs: twice the chunk size, half the count. The count
    /// is even here and the next chunk starts on the new boundary.
    fn coarsen(&mut self) {
        self.cvs = self
            .cvs
            .chunks_exact(2)
            .map(|p| merge_subtrees_non_root(&p[0], &p[1], Mode::Hash))
            .collect();
        self.chunk_size *= 2;
    }

    pub fn finish(mut self) -> (FileId, Manifest) {
        let id = if self.cvs.is_empty() {
            FileId::from_bytes(*self.current.finalize().as_bytes())
        } else {
            self.cvs.push(self.current.finalize_non_root());
            FileId::from_bytes(*root(&self.cvs).as_bytes())
        };
        let manifest = Manifest {
            id,
            size: self.total,
            chunk_size: self.chunk_size,
            cvs: self.cvs,
        };
        (id, manifest)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
            .collect()
    }

    fn id_of(data: &[u8]) -> FileId {
        FileId::from_bytes(*blake3::hash(data).as_bytes())
    }

    /// CVs of `data` in chunks of `cs`, each hashed on its own.
    fn cvs_of(data: &[u8], cs: usize) -> Vec<Cv> {
        if data.len() <= cs {
            return Vec::new();
        }
        data.chunks(cs)
            .enumerate()
            .map(|(i, c)| {
                let mut h = blake3::Hasher::new();
                h.set_input_offset((i * cs) as u64);
                h.update(c);
                h.finalize_non_root()
            })
            .collect()
    }

    #[test]
    fn a_one_chunk_manifest_cannot_claim_a_huge_size() {
        let data = bytes(1000, 7);
        let id = id_of(&data);
        // One chunk of 1 TiB, no CVs: it would verify for any id if the
        // chunk size were free.
        let mut lie = Vec::new();
        lie.extend_from_slice(&(1u64 << 40).to_le_bytes());
        lie.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(
            Manifest::decode_local(id, &lie).is_ok(),
            "the shape allows it"
        );
        assert_eq!(
            Manifest::decode(id, &lie),
            Err(ManifestError::NotCanonical {
                size: 1 << 40,
                chunk_size: 1 << 40,
                want: 1 << 27,
            })
        );
        // The genuine manifest is the canonical one.
        let mut h = TreeHasher::new();
        h.update(&data);
        let (got, m) = h.finish();
        assert_eq!(got, id);
        assert_eq!(m.chunk_size(), chunk_size_for(m.size()));
        assert_eq!(Manifest::decode(id, &m.encode()), Ok(m));
    }

    /// Sizes around the interesting edges for chunk size `cs`.
    fn size_for(kind: u8, cs: usize, extra: usize) -> usize {
        match kind % 6 {
            0 => 0,
            1 => 1,
            2 => cs,
            3 => cs + 1,
            4 => cs * (2 + extra % 9),
            _ => cs * (1 + extra % 9) + 1 + extra % cs,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn merged_root_is_the_blake3_hash(kind in any::<u8>(), shift in 0u32..4, extra in any::<usize>(), seed in any::<u8>()) {
            let cs = 1024usize << shift;
            let data = bytes(size_for(kind, cs, extra), seed);
            let id = id_of(&data);
            let m = Manifest::new(id, data.len() as u64, cs as u64, cvs_of(&data, cs)).unwrap();
            // Every chunk checks against its CV (or the id), and only its own bytes do.
            for i in 0..m.chunks() {
                let (start, len) = m.chunk_range(i);
                let chunk = &data[start as usize..(start + len) as usize];
                prop_assert!(m.check_chunk(i, chunk));
                let mut bad = chunk.to_vec();
                bad[extra % chunk.len()] ^= 1;
                prop_assert!(!m.check_chunk(i, &bad));
                prop_assert!(!m.check_chunk(i, &chunk[..chunk.len() - 1]));
            }
            // The one-pass hasher agrees, fed in uneven pieces.
            let mut t = TreeHasher::with_chunk_size(cs as u64);
            for piece in data.chunks(1 + extra % 5000) {
                t.update(piece);
            }
            let (tid, tm) = t.finish();
            prop_assert_eq!(tid, id);
            prop_assert_eq!(&tm, &m);
            // The wire form round-trips (chunk sizes on the wire are >= 1 MiB).
            if cs as u64 >= MIN_CHUNK_SIZE {
                prop_assert_eq!(Manifest::decode(id, &m.encode()).unwrap(), m.clone());
            }
        }

        #[test]
        fn altered_dropped_or_resized_manifests_are_refused(kind in any::<u8>(), shift in 0u32..3, extra in any::<usize>(), seed in any::<u8>()) {
            let cs = 1024usize << shift;
            let data = bytes(size_for(kind % 2 + 4, cs, extra), seed); // always >= 2 chunks
            let id = id_of(&data);
            let size = data.len() as u64;
            let cvs = cvs_of(&data, cs);
            prop_assert!(cvs.len() >= 2);
            // One altered bit anywhere.
            let mut altered = cvs.clone();
            let i = extra % altered.len();
            altered[i][extra % 32] ^= 1 << (extra % 8);
            let altered_refused = matches!(
                Manifest::new(id, size, cs as u64, altered),
                Err(ManifestError::Root { .. })
            );
            prop_assert!(altered_refused);
            // A dropped chunk.
            let mut dropped = cvs.clone();
            dropped.remove(i);
            prop_assert!(Manifest::new(id, size, cs as u64, dropped).is_err());
            // Two chunks swapped.
            let mut swapped = cvs.clone();
            swapped.swap(0, 1);
            prop_assert!(Manifest::new(id, size, cs as u64, swapped).is_err());
            // A size that needs another number of chunks.
            prop_assert!(Manifest::new(id, size + cs as u64, cs as u64, cvs.clone()).is_err());
            // Another chunk size.
            prop_assert!(Manifest::new(id, size, 2 * cs as u64, cvs.clone()).is_err());
            // Another file's id.
            prop_assert!(Manifest::new(id_of(b"other"), size, cs as u64, cvs.clone()).is_err());
            // A size inside the same last chunk passes the root check, but the
            // last chunk cut at that size never matches its CV: the size is
            // checked through the manifest once that chunk is fetched.
            let short = size - 1;
            if short.div_ceil(cs as u64) == size.div_ceil(cs as u64) {
                let m = Manifest::new(id, short, cs as u64, cvs.clone()).unwrap();
                let last = m.chunks() - 1;
                let (start, len) = m.chunk_range(last);
                prop_assert!(!m.check_chunk(last, &data[start as usize..(start + len) as usize]));
            }
        }
    }

    #[test]
    fn one_chunk_and_empty_files_need_no_cvs() {
        let data = bytes(1000, 3);
        let m = Manifest::new(id_of(&data), 1000, 1024, vec![]).unwrap();
        assert_eq!(m.chunks(), 1);
        assert!(m.check_chunk(0, &data));
        assert!(!m.check_chunk(0, &data[..999]));
        let empty = Manifest::new(id_of(b""), 0, MIN_CHUNK_SIZE, vec![]).unwrap();
        assert_eq!(empty.chunks(), 0);
        assert_eq!(
            Manifest::new(id_of(b"x"), 0, MIN_CHUNK_SIZE, vec![]),
            Err(ManifestError::NotEmpty(id_of(b"x")))
        );
        let (id, m) = TreeHasher::new().finish();
        assert_eq!(id, id_of(b""));
        assert_eq!(m.chunks(), 0);
    }

    #[test]
    fn hasher_doubles_the_chunk_size_past_the_chunk_limit() {
        // 1 KiB chunks: MAX_CHUNKS KiB fit; one byte more doubles the size.
        for (len, want_cs) in [
            (MAX_CHUNKS as usize * 1024, 1024),
            (MAX_CHUNKS as usize * 1024 + 1, 2048),
        ] {
            let data = bytes(len, 9);
            let mut t = TreeHasher::with_chunk_size(1024);
            t.update(&data);
            let (id, m) = t.finish();
            assert_eq!(id, id_of(&data));
            assert_eq!(m.chunk_size(), want_cs);
            assert_eq!(m.cvs(), cvs_of(&data, want_cs as usize).as_slice());
        }
        assert_eq!(chunk_size_for(0), MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(MAX_CHUNKS * MIN_CHUNK_SIZE), MIN_CHUNK_SIZE);
        assert_eq!(
            chunk_size_for(MAX_CHUNKS * MIN_CHUNK_SIZE + 1),
            2 * MIN_CHUNK_SIZE
        );
    }

    #[test]
    fn decode_refuses_bad_encodings() {
        let id = id_of(b"x");
        assert_eq!(
            Manifest::decode(id, &[0; 15]),
            Err(ManifestError::Encoding(15))
        );
        assert_eq!(
            Manifest::decode(id, &[0; 17]),
            Err(ManifestError::Encoding(17))
        );
        let mut small = vec![0u8; 16];
        small[..8].copy_from_slice(&1u64.to_le_bytes());
        small[8..].copy_from_slice(&1024u64.to_le_bytes());
        assert_eq!(
            Manifest::decode(id, &small),
            Err(ManifestError::ChunkSize(1024))
        );
        assert!(Manifest::decode(id, &vec![0; MAX_ENCODED + 32]).is_err());
    }
}
