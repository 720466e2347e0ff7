//! Ed25519 key files (PKCS#8 PEM, mode 0600) and other secrets on disk:
//! the one place that reads and writes them, for the PServer's keys
//! (`peer.key`, `api.key`) and the directory's (`network.key`).

use std::fs;
use std::io;
use std::path::Path;

use crate::fs::write_secret;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};

/// What [`load_or_create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Read an existing key.
    Read,
    /// Read an existing key that others could read; it is 0600 now.
    Tightened,
    /// Created a new key.
    Created,
}

/// Load an Ed25519 key from `path`, or create one there (0600).
/// `else_what` tells the user what to do with a file that is not a key.
pub fn load_or_create(path: &Path, else_what: &str) -> io::Result<(SigningKey, Loaded)> {
    match fs::read_to_string(path) {
        Ok(pem) => {
            let tightened = tighten(path)?;
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: not an Ed25519 private key in PKCS#8 PEM ({e}); restore it from a backup, or {else_what}",
                        path.display()
                    ),
                )
            })?;
            Ok((
                key,
                if tightened {
                    Loaded::Tightened
                } else {
                    Loaded::Read
                },
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| io::Error::other(format!("cannot encode a new key: {e}")))?;
            write_secret(path, pem.as_bytes())?;
            Ok((key, Loaded::Created))
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// Make an existing secret file readable by its owner only; true if it
/// was not.
#[cfg(unix)]
fn tighten(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(true)
}

#[cfg(not(unix))]
fn tighten(_: &Path) -> io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_private_read_back_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let (k, how) = load_or_create(&path, "remove it").unwrap();
        assert_eq!(how, Loaded::Created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let (again, how) = load_or_create(&path, "remove it").unwrap();
            assert_eq!((again.to_bytes(), how), (k.to_bytes(), Loaded::Tightened));
            assert_eq!(mode(&path), 0o600);
        }
        let (again, how) = load_or_create(&path, "remove it").unwrap();
        assert_eq!((again.to_bytes(), how), (k.to_bytes(), Loaded::Read));
        fs::write(&path, "not a key").unwrap();
        let e = load_or_create(&path, "remove it").unwrap_err().to_string();
        assert!(e.contains("PKCS#8") && e.contains("remove it"), "{e}");
    }
}
