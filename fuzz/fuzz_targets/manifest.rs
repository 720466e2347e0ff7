//! The manifest verifier. Two properties:
//! * any bytes offered as the manifest of any id decode or are refused,
//!   never panic, and what decodes re-encodes to the same bytes;
//! * a manifest accepted from the wire has the canonical chunk size, so a
//!   one-chunk manifest (no CVs to check) is at most 1 MiB;
//! * for real content, changing any CV byte of the genuine manifest makes
//!   it fail against the id; a changed size or chunk size that still
//!   verifies keeps the same CVs and, past one chunk, the same chunk count
//!   (a lie within the last chunk, which that chunk's own check catches).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerdex_proto::FileId;
use peerdex_proto::tree::{MIN_CHUNK_SIZE, Manifest, TreeHasher, chunk_size_for};

fuzz_target!(|input: ([u8; 32], &[u8], u16, u8, bool)| {
    let (id, bytes, flip_at, flip, local) = input;
    let id = FileId::from_bytes(id);
    let decoded = if local {
        Manifest::decode_local(id, bytes)
    } else {
        Manifest::decode(id, bytes)
    };
    if let Ok(m) = decoded {
        assert_eq!(m.encode(), bytes);
        assert_eq!(m.id(), id);
        if !local {
            assert_eq!(m.chunk_size(), chunk_size_for(m.size()));
            if m.chunks() <= 1 {
                assert!(m.size() <= MIN_CHUNK_SIZE, "one chunk of {}", m.size());
            }
        }
    }

    // Real content in 1 KiB chunks (the smallest the tree allows).
    let mut hasher = TreeHasher::with_chunk_size(1024);
    hasher.update(bytes);
    let (real_id, manifest) = hasher.finish();
    assert_eq!(real_id, FileId::from_bytes(*blake3::hash(bytes).as_bytes()));
    let good = manifest.encode();
    assert_eq!(
        Manifest::decode_local(real_id, &good).as_ref(),
        Ok(&manifest)
    );
    for i in 0..manifest.chunks() {
        let (start, len) = manifest.chunk_range(i);
        let chunk = &bytes[start as usize..(start + len) as usize];
        assert!(manifest.check_chunk(i, chunk));
    }
    if flip != 0 && !good.is_empty() {
        let mut bad = good.clone();
        let at = usize::from(flip_at) % bad.len();
        bad[at] ^= flip;
        if let Ok(m) = Manifest::decode_local(real_id, &bad) {
            assert!(
                at < 16,
                "a manifest with CV byte {at} changed verified against the id"
            );
            assert_eq!(m.cvs(), manifest.cvs());
            if manifest.chunks() >= 2 {
                assert_eq!(m.chunks(), manifest.chunks());
            } else {
                // No CV binds a file of one chunk (or none): its size is
                // checked by hashing that one chunk against the id.
                assert!(m.chunks() <= 1);
            }
        }
    }
});
