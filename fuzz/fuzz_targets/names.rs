//! Validation of every string that names something on the wire: a value
//! that is accepted prints back as itself and parses again to the same
//! value; a file name never carries a path, a control character or a
//! reserved form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerdex_proto::{FileId, FileName, PeerId, PeerUrl};

fuzz_target!(|s: &str| {
    if let Ok(name) = s.parse::<FileName>() {
        assert_eq!(name.as_str(), s);
        assert_eq!(name.to_string().parse::<FileName>().as_ref(), Ok(&name));
        assert!(!s.is_empty() && s.len() <= 255);
        assert!(!s.contains(['/', '\\', ':']) && !s.starts_with('.'));
        assert!(!s.chars().any(char::is_control));
    }
    if let Ok(url) = s.parse::<PeerUrl>() {
        assert_eq!(url.as_str().parse::<PeerUrl>().as_ref(), Ok(&url));
        assert!(url.as_str().starts_with("http://") || url.as_str().starts_with("https://"));
        assert!(!url.as_str().contains(['?', '#', '@']));
    }
    if let Ok(id) = s.parse::<FileId>() {
        assert_eq!(id.to_hex().parse::<FileId>().as_ref(), Ok(&id));
        assert_eq!(id.to_hex(), s.to_ascii_lowercase());
    }
    if let Ok(peer) = s.parse::<PeerId>() {
        assert_eq!(peer.to_string().parse::<PeerId>().as_ref(), Ok(&peer));
    }
});
