//! The search page token: where the next page resumes.
//!
//! A cursor is the sort key of the last hit served, so a page never repeats
//! or skips a hit even when the index changed between pages (hits that moved
//! ahead of the cursor are simply not seen again).

use std::cmp::Reverse;

use peerdex_proto::FileId;

/// Resume point of a search: the last hit of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub holders: u32,
    pub name: String,
    pub file: FileId,
}

impl Cursor {
    /// Opaque page token: hex of holders (4 bytes BE), file id, name bytes.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(36 + self.name.len());
        b.extend_from_slice(&self.holders.to_be_bytes());
        b.extend_from_slice(self.file.as_bytes());
        b.extend_from_slice(self.name.as_bytes());
        hex::encode(b)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let b = hex::decode(s).ok()?;
        if b.len() < 36 || b.len() > 36 + peerdex_proto::types::MAX_PATH_BYTES {
            return None;
        }
        let holders = u32::from_be_bytes(b[..4].try_into().ok()?);
        let file = FileId::from_bytes(b[4..36].try_into().ok()?);
        // Any bytes are a position in the hit order: a token that was not
        // ours resumes somewhere harmless rather than failing.
        let name = String::from_utf8_lossy(&b[36..]).into_owned();
        Some(Self {
            holders,
            name,
            file,
        })
    }

    /// The hit order of [`super::Index::search_within`]: holders (desc), name,
    /// file id.
    pub(super) fn key(&self) -> (Reverse<u32>, &str, FileId) {
        (Reverse(self.holders), &self.name, self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            holders: 7,
            name: "a b.txt".into(),
            file: FileId::from_bytes([1; 32]),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode("00"), None);
    }
}
