//! Conversions between the gRPC messages, the validated domain values and the
//! REST DTOs. Conversions *from* the wire are fallible and name the field.

use crate::types::{FileId, FileName, ParseError};
use crate::{rest, v1};

/// A validated inventory entry (what a peer publishes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    pub id: FileId,
    pub size: u64,
    pub name: FileName,
    /// Held as a replica for the directory, not shared by the peer's user.
    pub replica: bool,
}

/// A wire value was refused; says which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{field}: {source}")]
    Parse {
        field: &'static str,
        source: ParseError,
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
        Ok(Self {
            id,
            size: f.size,
            name,
            replica: f.replica,
        })
    }
}

impl From<&SharedFile> for v1::SharedFile {
    fn from(f: &SharedFile) -> Self {
        v1::SharedFile {
            file_id: f.id.to_hex(),
            size: f.size,
            name: f.name.to_string(),
            replica: f.replica,
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
            replica: h.replica,
            island: h.island,
        }
    }
}

impl From<v1::LocatedFile> for rest::LocatedFile {
    fn from(f: v1::LocatedFile) -> Self {
        rest::LocatedFile {
            file_id: f.file_id,
            size: f.size,
            names: f.names,
            holders: f.holders.into_iter().map(Into::into).collect(),
            replication: f.replication.map(Into::into).unwrap_or_default(),
        }
    }
}

impl From<v1::Replication> for rest::Replication {
    fn from(r: v1::Replication) -> Self {
        rest::Replication {
            wanted: r.wanted,
            live: r.live,
            replicas: r.replicas,
            state: r.state,
            proven: r.proven,
        }
    }
}

impl From<v1::PinStatus> for rest::PinStatus {
    fn from(p: v1::PinStatus) -> Self {
        rest::PinStatus {
            file_id: p.file_id,
            name: p.name,
            size: p.size,
            pinned: p.pinned,
            replication: p.replication.map(Into::into).unwrap_or_default(),
            waiting: p.waiting,
        }
    }
}

impl From<v1::SearchHit> for rest::SearchHit {
    fn from(h: v1::SearchHit) -> Self {
        rest::SearchHit {
            lookalike: crate::types::mixes_scripts(&h.name),
            name: h.name,
            file_id: h.file_id,
            size: h.size,
            holders: h.holders,
            replicas_wanted: h.replicas_wanted,
            island: h.island,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9 _.-]{0,40}[A-Za-z0-9]"
    }

    proptest! {
        #[test]
        fn shared_file_round_trips(
            id in any::<[u8; 32]>(),
            size in 0u64..(1 << 34),
            name in name_strategy(),
        ) {
            let domain = SharedFile { id: FileId::from_bytes(id), size, name: name.parse().unwrap(), replica: size % 2 == 0 };
            let wire = v1::SharedFile::from(&domain);
            prop_assert_eq!(SharedFile::try_from(&wire).unwrap(), domain.clone());
        }
    }

    #[test]
    fn bad_wire_entries_name_the_field() {
        let wire = v1::SharedFile {
            file_id: "nope".into(),
            size: 1,
            name: "a".into(),
            ..Default::default()
        };
        let e = SharedFile::try_from(&wire).unwrap_err();
        assert!(e.to_string().starts_with("file_id:"), "{e}");
        let wire = v1::SharedFile {
            file_id: "ab".repeat(32),
            size: 1,
            name: "../x".into(),
            ..Default::default()
        };
        let e = SharedFile::try_from(&wire).unwrap_err();
        assert!(e.to_string().starts_with("name:"), "{e}");
    }
}
