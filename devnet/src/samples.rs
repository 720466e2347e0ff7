//! The files devnet seeds each peer's share folder with.

/// A few sample files per peer: text and binary, with searchable names.
pub(crate) fn sample_files() -> [Vec<(String, Vec<u8>)>; 3] {
    let noise = |len: usize, seed: u64| -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    [
        vec![
            ("welcome.txt".into(), b"Welcome to peerdex! This file lives on peer1.\n".to_vec()),
            ("alpha-report.bin".into(), noise(3 << 20, 11)),
        ],
        vec![
            ("beta-notes.md".into(), b"# Beta notes\n\nShared by peer2. Fetched directly from it, verified with BLAKE3.\n".to_vec()),
            ("quarterly-report.pdf".into(), noise(1 << 20, 22)),
        ],
        vec![
            ("gamma-dataset.csv".into(), (0..5000).map(|i| format!("{i},{}\n", i * i)).collect::<String>().into_bytes()),
            ("holiday-photo.jpg".into(), noise(5 << 20, 33)),
        ],
    ]
}
