//! This PServer's Ed25519 key pair, kept in its data folder as `peer.key`
//! (PKCS#8 PEM, mode 0600), created at first start.
//!
//! The directory binds our peer id to its public key at our first Join and
//! every Join proves we hold it, so nobody can take our id, even after we
//! left (see `peerdex_proto::identity`). Losing `peer.key` while keeping
//! `peer-id` locks that id out until the directory forgets the binding: the
//! two travel together.

use std::io;
use std::path::Path;

use ed25519_dalek::SigningKey;
use peerdex_common::keyfile::{self, Loaded};

pub use peerdex_common::fs::write_secret;

/// File name of the key in the data folder.
pub const KEY_FILE: &str = "peer.key";

/// Load the key from `data_dir`, or create it there (0600).
pub fn load_or_create(data_dir: &Path) -> io::Result<SigningKey> {
    load_or_create_at(
        &data_dir.join(KEY_FILE),
        "remove it together with peer-id to start as a new peer",
    )
}

/// Load an Ed25519 key from `path`, or create one there (0600), saying so
/// in the log; a key file readable by others is made private again.
pub fn load_or_create_at(path: &Path, else_what: &str) -> io::Result<SigningKey> {
    let (key, how) = keyfile::load_or_create(path, else_what)?;
    match how {
        Loaded::Read => {}
        Loaded::Tightened => tracing::warn!(path = %path.display(),
            "a private key was readable by others; made it 0600"),
        Loaded::Created => tracing::info!(path = %path.display(), "created a new key"),
    }
    Ok(key)
}
