//! An island's summary: a binary fuse filter (`xorf::BinaryFuse8`) of the
//! file ids it holds and of their exact names, so that a linked island
//! forwards a lookup only where it may be answered.
//!
//! Keys are 64-bit: a file id's first 8 bytes (little-endian; ids are
//! BLAKE3 hashes, so already uniform), and for a name the first 8 bytes of
//! BLAKE3(`name:` + the name). The filter has no false negatives and about
//! 0.4 % false positives, at about 1.13 bytes a key. A summary that comes
//! over a link is checked before use: its shape must be one the builder
//! makes, so a hostile one can only make us ask that island in vain.

use peerdex_proto::{FileId, v1};
use xorf::{BinaryFuse8, Filter};

/// Largest filter accepted from a link: 64 MiB, about 59M keys.
pub const MAX_FILTER_BYTES: usize = 64 << 20;
/// Longest version string accepted from a link.
const MAX_VERSION: usize = 64;

/// A summary that cannot be used: what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    #[error("summary filter is {bytes} bytes; at most {MAX_FILTER_BYTES}")]
    TooBig { bytes: usize },
    #[error("summary filter is malformed: {0}")]
    Malformed(&'static str),
    #[error("summary version is over {MAX_VERSION} bytes or not printable")]
    Version,
}

/// The key of a file id.
pub fn id_key(id: &FileId) -> u64 {
    let b = id.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The key of an exact name.
pub fn name_key(name: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"name:");
    h.update(name.as_bytes());
    let b = h.finalize();
    let b = b.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// What an island holds, in short.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Changes when the keys do (a hash of them).
    pub version: String,
    /// File ids it was built from.
    pub ids: u64,
    filter: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    /// Holds nothing.
    Empty,
    Filter(BinaryFuse8),
    /// The filter could not be built (it never fails on distinct keys):
    /// anything may be held.
    Everything,
}

impl Summary {
    /// The summary of `keys` (ids and names; repeats are fine) built from
    /// `ids` file ids.
    pub fn build(ids: u64, mut keys: Vec<u64>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        let mut h = blake3::Hasher::new();
        for k in &keys {
            h.update(&k.to_le_bytes());
        }
        let version = hex::encode(&h.finalize().as_bytes()[..16]);
        let filter = if keys.is_empty() {
            Shape::Empty
        } else {
            match BinaryFuse8::try_from(&keys) {
                Ok(f) => Shape::Filter(f),
                Err(e) => {
                    tracing::warn!(
                        error = e,
                        keys = keys.len(),
                        "summary filter not built; linked islands will ask for every id"
                    );
                    Shape::Everything
                }
            }
        };
        Self {
            version,
            ids,
            filter,
        }
    }

    /// The island may hold the file `id` (false: it surely does not).
    pub fn may_hold_id(&self, id: &FileId) -> bool {
        self.may_hold(id_key(id))
    }

    /// The island may hold a file named exactly `name`.
    pub fn may_hold_name(&self, name: &str) -> bool {
        self.may_hold(name_key(name))
    }

    fn may_hold(&self, key: u64) -> bool {
        match &self.filter {
            Shape::Empty => false,
            Shape::Filter(f) => f.contains(&key),
            Shape::Everything => true,
        }
    }

    /// Bytes of the filter.
    pub fn filter_bytes(&self) -> usize {
        match &self.filter {
            Shape::Filter(f) => f.fingerprints.len(),
            _ => 0,
        }
    }

    /// The filter on the wire (`None`: holds nothing, or everything when
    /// `ids` > 0).
    pub fn to_proto(&self) -> Option<v1::IdFilter> {
        match &self.filter {
            Shape::Filter(f) => Some(v1::IdFilter {
                seed: f.descriptor.seed,
                segment_length: f.descriptor.segment_length,
                segment_length_mask: f.descriptor.segment_length_mask,
                segment_count_length: f.descriptor.segment_count_length,
                fingerprints: f.fingerprints.to_vec(),
            }),
            _ => None,
        }
    }

    /// A summary from a link, checked: every index the filter can compute
    /// is inside its fingerprints.
    pub fn from_proto(
        version: String,
        ids: u64,
        filter: Option<v1::IdFilter>,
    ) -> Result<Self, SummaryError> {
        if version.len() > MAX_VERSION || !version.chars().all(|c| c.is_ascii_graphic()) {
            return Err(SummaryError::Version);
        }
        let filter = match filter {
            None if ids == 0 => Shape::Empty,
            None => Shape::Everything,
            Some(f) => Shape::Filter(checked(f)?),
        };
        Ok(Self {
            version,
            ids,
            filter,
        })
    }
}

/// A filter whose lookups stay in bounds: a power-of-two segment length
/// with its mask, a whole number of segments, and exactly two segments
/// more of fingerprints (as `xorf` builds them).
fn checked(f: v1::IdFilter) -> Result<BinaryFuse8, SummaryError> {
    use SummaryError::Malformed;
    let len = f.fingerprints.len();
    if len > MAX_FILTER_BYTES {
        return Err(SummaryError::TooBig { bytes: len });
    }
    let seg = f.segment_length;
    if seg == 0 || !seg.is_power_of_two() || seg > 1 << 18 {
        return Err(Malformed("segment length is not a power of two up to 2^18"));
    }
    if f.segment_length_mask != seg - 1 {
        return Err(Malformed(
            "segment length mask does not match the segment length",
        ));
    }
    let count = f.segment_count_length;
    if count == 0 || !count.is_multiple_of(seg) {
        return Err(Malformed(
            "segment count length is not a positive multiple of the segment length",
        ));
    }
    if u64::from(count) + 2 * u64::from(seg) != len as u64 {
        return Err(Malformed(
            "fingerprints are not two segments longer than the segment count length",
        ));
    }
    Ok(BinaryFuse8 {
        descriptor: xorf::Descriptor {
            seed: f.seed,
            segment_length: seg,
            segment_length_mask: f.segment_length_mask,
            segment_count_length: count,
        },
        fingerprints: f.fingerprints.into_boxed_slice(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u64) -> FileId {
        let h = blake3::hash(&n.to_le_bytes());
        h.to_hex().parse().unwrap()
    }

    #[test]
    fn a_summary_holds_its_ids_and_names_and_almost_nothing_else() {
        let ids: Vec<FileId> = (0..10_000).map(id).collect();
        let mut keys: Vec<u64> = ids.iter().map(id_key).collect();
        keys.push(name_key("report.pdf"));
        let s = Summary::build(ids.len() as u64, keys);
        let wire = Summary::from_proto(s.version.clone(), s.ids, s.to_proto()).unwrap();
        assert!(ids.iter().all(|i| wire.may_hold_id(i)));
        assert!(wire.may_hold_name("report.pdf"));
        let false_hits = (10_000..20_000)
            .filter(|&n| wire.may_hold_id(&id(n)))
            .count();
        assert!(false_hits < 100, "{false_hits} false positives in 10,000");
        assert!(s.filter_bytes() < 15_000, "{} bytes", s.filter_bytes());
        // The same keys give the same version, in any order.
        let again = Summary::build(
            ids.len() as u64,
            ids.iter()
                .rev()
                .map(id_key)
                .chain([name_key("report.pdf")])
                .collect(),
        );
        assert_eq!(again.version, s.version);
        let empty = Summary::build(0, vec![]);
        assert!(empty.to_proto().is_none() && !empty.may_hold_id(&ids[0]));
    }

    #[test]
    fn malformed_filters_are_refused() {
        let s = Summary::build(3, vec![1, 2, 3]);
        let good = s.to_proto().unwrap();
        let bad = |f: &dyn Fn(&mut v1::IdFilter)| {
            let mut g = good.clone();
            f(&mut g);
            Summary::from_proto("v".into(), 3, Some(g)).unwrap_err()
        };
        bad(&|g| g.segment_length = 3);
        bad(&|g| g.segment_length = 0);
        bad(&|g| g.segment_length_mask += 1);
        bad(&|g| g.segment_count_length = 0);
        bad(&|g| {
            g.fingerprints.pop();
        });
        bad(&|g| g.segment_count_length += g.segment_length);
        assert_eq!(
            Summary::from_proto("bad version".into(), 0, None).unwrap_err(),
            SummaryError::Version
        );
    }

    proptest! {
        /// Whatever a link sends, a summary either is refused or answers
        /// every lookup without panicking.
        #[test]
        fn any_accepted_filter_answers_in_bounds(
            seed: u64,
            seg_pow in 0u32..6,
            segs in 0u32..5,
            extra in 0usize..3,
            mask_off in 0u32..2,
            keys in proptest::collection::vec(any::<u64>(), 1..50),
        ) {
            let seg = 1u32 << seg_pow;
            let f = v1::IdFilter {
                seed,
                segment_length: seg,
                segment_length_mask: (seg - 1) + mask_off,
                segment_count_length: segs * seg,
                fingerprints: vec![0u8; (segs as usize + 2) * seg as usize + extra],
            };
            if let Ok(s) = Summary::from_proto("v".into(), 1, Some(f)) {
                for k in keys {
                    let _ = s.may_hold(k);
                }
            }
        }
    }
}
