//! This PServer's Ed25519 key pair, kept in its data folder as `peer.key`
//! (PKCS#8 PEM, mode 0600), created at first start.
//!
//! The directory binds our peer id to its public key at our first Join and
//! every Join proves we hold it, so nobody can take our id, even after we
//! left (see `peerdex_proto::identity`). Losing `peer.key` while keeping
//! `peer-id` locks that id out until the directory forgets the binding: the
//! two travel together.

use std::fs;
use std::io;
use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};

/// File name of the key in the data folder.
pub const KEY_FILE: &str = "peer.key";

/// Load the key from `data_dir`, or create it there (0600). A key file
/// readable by others is made private again, with a warning.
pub fn load_or_create(data_dir: &Path) -> io::Result<SigningKey> {
    load_or_create_at(
        &data_dir.join(KEY_FILE),
        "remove it together with peer-id to start as a new peer",
    )
}

/// Load an Ed25519 key from `path` (PKCS#8 PEM), or create one there
/// (0600); `else_what` tells the user what to do with a broken file.
pub fn load_or_create_at(path: &Path, else_what: &str) -> io::Result<SigningKey> {
    let path = path.to_owned();
    match fs::read_to_string(&path) {
        Ok(pem) => {
            tighten(&path)?;
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: not an Ed25519 private key in PKCS#8 PEM ({e}); restore it from a backup, \
                         or {else_what}",
                        path.display()
                    ),
                )
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| io::Error::other(format!("cannot encode the new key: {e}")))?;
            write_secret(&path, pem.as_bytes())?;
            tracing::info!(path = %path.display(), "created a new key");
            Ok(key)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// Make an existing secret file readable by its owner only.
#[cfg(unix)]
fn tighten(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
            "a private key was readable by others; made it 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_: &Path) -> io::Result<()> {
    Ok(())
}

/// Write a secret (a key, a token) atomically, readable by its owner only
/// from the first byte on.
pub fn write_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut f| {
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()
    });
    let result = written.and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let k = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(k.to_bytes(), again.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "tightened");
        }
        fs::write(&path, "not a key").unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("PKCS#8") && e.contains("peer-id"), "{e}");
    }
}
