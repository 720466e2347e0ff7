//! Conversions between the gRPC messages, the validated domain values and the
//! REST DTOs. Conversions *from* the wire are fallible and name the field.

use crate::types::{FileId, FileName, ParseError};
use crate::{rest, v1};

/// Smallest chunk size of a manifest (1 MiB).
pub const MIN_CHUNK_SIZE: u64 = 1 << 20;
/// A manifest has at most this many chunks; the chunk size grows to keep it so.
pub const MAX_CHUNKS: u64 = 8192;

/// The chunk size for a file of `size` bytes: the smallest power of two, at
/// least [`MIN_CHUNK_SIZE`], that keeps the count at or under [`MAX_CHUNKS`].
pub fn chunk_size_for(size: u64) -> u64 {
    let mut cs = MIN_CHUNK_SIZE;
    while size.div_ceil(cs) > MAX_CHUNKS {
        cs *= 2;
    }
    cs
}

/// Number of chunks of a file of `size` bytes cut at `chunk_size`.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}

/// A validated chunk manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub chunk_size: u64,
    pub hashes: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("chunk_size {0} must be a power of two of at least 1048576")]
    ChunkSize(u64),
    #[error("chunk_hashes has {got} entries, expected {expected} for size {size}")]
    Count {
        got: usize,
        expected: u64,
        size: u64,
    },
    #[error("chunk hash #{0} is not 32 bytes")]
    HashLen(usize),
}

impl Manifest {
    /// Validate a wire manifest against the file size it claims to describe.
    pub fn from_wire(m: &v1::ChunkManifest, size: u64) -> Result<Self, ManifestError> {
        if m.chunk_size < MIN_CHUNK_SIZE || !m.chunk_size.is_power_of_two() {
            return Err(ManifestError::ChunkSize(m.chunk_size));
        }
        let expected = chunk_count(size, m.chunk_size);
        if m.chunk_hashes.len() as u64 != expected {
            return Err(ManifestError::Count {
                got: m.chunk_hashes.len(),
                expected,
                size,
            });
        }
        let hashes = m
            .chunk_hashes
            .iter()
            .enumerate()
            .map(|(i, h)| <[u8; 32]>::try_from(h.as_slice()).map_err(|_| ManifestError::HashLen(i)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            chunk_size: m.chunk_size,
            hashes,
        })
    }

    pub fn to_wire(&self) -> v1::ChunkManifest {
        v1::ChunkManifest {
            chunk_size: self.chunk_size,
            chunk_hashes: self.hashes.iter().map(|h| h.to_vec()).collect(),
        }
    }

    pub fn to_rest(&self) -> rest::ChunkManifest {
        rest::ChunkManifest {
            chunk_size: self.chunk_size,
            chunk_hashes: self.hashes.iter().map(hex::encode).collect(),
        }
    }

    /// Validate a REST manifest (as relayed by a neighbour).
    pub fn from_rest(m: &rest::ChunkManifest, size: u64) -> Result<Self, ManifestError> {
        let mut hashes = Vec::with_capacity(m.chunk_hashes.len());
        for (i, h) in m.chunk_hashes.iter().enumerate() {
            let mut b = [0u8; 32];
            hex::decode_to_slice(h, &mut b).map_err(|_| ManifestError::HashLen(i))?;
            hashes.push(b.to_vec());
        }
        Self::from_wire(
            &v1::ChunkManifest {
                chunk_size: m.chunk_size,
                chunk_hashes: hashes,
            },
            size,
        )
    }
}

/// A validated inventory entry (what a peer publishes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    pub id: FileId,
    pub size: u64,
    pub name: FileName,
    pub manifest: Option<Manifest>,
}

/// A wire value was refused; says which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{field}: {source}")]
    Parse {
        field: &'static str,
        source: ParseError,
    },
    #[error("{field}: {source}")]
    Manifest {
        field: &'static str,
        source: ManifestError,
    },
    #[error("{0} is required")]
    Missing(&'static str),
}

impl TryFrom<&v1::SharedFile> for SharedFile {
    type Error = WireError;
    fn try_from(f: &v1::SharedFile) -> Result<Self, WireError> {
        let id = f.file_id.parse().map_err(|source| WireError::Parse {
            field: "file_id",
            source,
        })?;
        let name = f.name.parse().map_err(|source| WireError::Parse {
            field: "name",
            source,
        })?;
        let manifest = f
            .manifest
            .as_ref()
            .map(|m| Manifest::from_wire(m, f.size))
            .transpose()
            .map_err(|source| WireError::Manifest {
                field: "manifest",
                source,
            })?;
        Ok(Self {
            id,
            size: f.size,
            name,
            manifest,
        })
    }
}

impl From<&SharedFile> for v1::SharedFile {
    fn from(f: &SharedFile) -> Self {
        v1::SharedFile {
            file_id: f.id.to_hex(),
            size: f.size,
            name: f.name.to_string(),
            manifest: f.manifest.as_ref().map(Manifest::to_wire),
        }
    }
}

impl From<v1::Holder> for rest::Holder {
    fn from(h: v1::Holder) -> Self {
        let load = h.load.unwrap_or_default();
        rest::Holder {
            peer_id: h.peer_id,
            peer_url: h.peer_url,
            active_uploads: load.active_uploads,
            free_upload_slots: load.free_upload_slots,
        }
    }
}

impl From<v1::LocatedFile> for rest::LocatedFile {
    fn from(f: v1::LocatedFile) -> Self {
        rest::LocatedFile {
            manifest: f.manifest.map(|m| rest::ChunkManifest {
                chunk_size: m.chunk_size,
                chunk_hashes: m.chunk_hashes.iter().map(hex::encode).collect(),
            }),
            file_id: f.file_id,
            size: f.size,
            names: f.names,
            holders: f.holders.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<v1::SearchHit> for rest::SearchHit {
    fn from(h: v1::SearchHit) -> Self {
        rest::SearchHit {
            name: h.name,
            file_id: h.file_id,
            size: h.size,
            holders: h.holders,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size_for(0), MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(8192 * MIN_CHUNK_SIZE), MIN_CHUNK_SIZE);
        assert_eq!(
            chunk_size_for(8192 * MIN_CHUNK_SIZE + 1),
            2 * MIN_CHUNK_SIZE
        );
        assert!(chunk_count(1 << 40, chunk_size_for(1 << 40)) <= MAX_CHUNKS);
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9 _.-]{0,40}[A-Za-z0-9]"
    }

    proptest! {
        #[test]
        fn shared_file_round_trips(
            id in any::<[u8; 32]>(),
            size in 0u64..(1 << 34),
            name in name_strategy(),
            with_manifest in any::<bool>(),
            seed in any::<u8>(),
        ) {
            let manifest = with_manifest.then(|| {
                let cs = chunk_size_for(size);
                Manifest { chunk_size: cs, hashes: (0..chunk_count(size, cs)).map(|i| [seed ^ i as u8; 32]).collect() }
            });
            let domain = SharedFile { id: FileId::from_bytes(id), size, name: name.parse().unwrap(), manifest };
            let wire = v1::SharedFile::from(&domain);
            prop_assert_eq!(SharedFile::try_from(&wire).unwrap(), domain.clone());
            if let Some(m) = &domain.manifest {
                prop_assert_eq!(&Manifest::from_rest(&m.to_rest(), size).unwrap(), m);
            }
        }

        #[test]
        fn bad_manifest_counts_are_refused(size in 1u64..(1 << 30), extra in 1usize..4) {
            let cs = chunk_size_for(size);
            let n = chunk_count(size, cs) as usize + extra;
            let wire = v1::ChunkManifest { chunk_size: cs, chunk_hashes: vec![vec![0; 32]; n] };
            let is_count_error = matches!(Manifest::from_wire(&wire, size), Err(ManifestError::Count { .. }));
            prop_assert!(is_count_error);
        }
    }
}
