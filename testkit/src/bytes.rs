//! Test content and what to check it with.

use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes (xorshift), for test files.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The file id of `bytes`: BLAKE3, lowercase hex (what `b3sum` prints).
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bytes_are_deterministic_and_seeded() {
        assert_eq!(test_bytes(1000, 1), test_bytes(1000, 1));
        assert_ne!(test_bytes(1000, 1), test_bytes(1000, 2));
        assert_eq!(test_bytes(13, 5).len(), 13);
        assert!(test_bytes(0, 5).is_empty());
    }
}
