//! TLS on the gRPC port (`CENTRAL_TLS_CERT`, `CENTRAL_TLS_KEY`): the PEM
//! files are read and checked at start-up, so a missing, unreadable or
//! mismatched file stops the server with a message naming it, never the
//! first handshake.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// The certificate (chain) and private key the central serves.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Arc<Vec<u8>>,
}

/// Paths only: the key never reaches a log.
impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Read and check both files: PEM, at least one certificate, a private
    /// key, and a key that belongs to the (first) certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let bad = |m: String| Error::Config(m);
        let cert_pem = std::fs::read(cert).map_err(|e| {
            bad(format!(
                "cannot read CENTRAL_TLS_CERT {}: {e}",
                cert.display()
            ))
        })?;
        let key_pem = std::fs::read(key).map_err(|e| {
            bad(format!(
                "cannot read CENTRAL_TLS_KEY {}: {e}",
                key.display()
            ))
        })?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                bad(format!(
                    "CENTRAL_TLS_CERT {} is not valid PEM: {e}",
                    cert.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(bad(format!(
                "CENTRAL_TLS_CERT {} holds no certificate: expected PEM \"-----BEGIN CERTIFICATE-----\" blocks",
                cert.display()
            )));
        }
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            bad(format!(
                "CENTRAL_TLS_KEY {} holds no usable private key ({e}): expected a PEM \
                 \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block",
                key.display()
            ))
        })?;
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("rustls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            bad(format!(
                "CENTRAL_TLS_CERT {} and CENTRAL_TLS_KEY {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            cert_pem,
            key_pem: Arc::new(key_pem),
        })
    }

    /// Both or neither: the message names the one that is missing.
    pub fn from_settings(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Self>> {
        match (cert, key) {
            (Some(c), Some(k)) => Self::load(c, k).map(Some),
            (None, None) => Ok(None),
            (Some(_), None) => Err(Error::Config(
                "CENTRAL_TLS_CERT is set but CENTRAL_TLS_KEY is missing: set both or neither"
                    .into(),
            )),
            (None, Some(_)) => Err(Error::Config(
                "CENTRAL_TLS_KEY is set but CENTRAL_TLS_CERT is missing: set both or neither"
                    .into(),
            )),
        }
    }

    pub(crate) fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            self.key_pem.as_slice(),
        ))
    }
}

/// Read a PEM file of CA certificates (`CENTRAL_PEER_CA_FILE`): at least
/// one certificate, or a message that names the setting.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |m: String| Error::Config(m);
    let pem = std::fs::read(path).map_err(|e| {
        bad(format!(
            "CENTRAL_PEER_CA_FILE {}: cannot read it ({e})",
            path.display()
        ))
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            bad(format!(
                "CENTRAL_PEER_CA_FILE {}: not PEM certificates ({e})",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(bad(format!(
            "CENTRAL_PEER_CA_FILE {} holds no certificate: expected PEM \"-----BEGIN CERTIFICATE-----\" blocks",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn err(cert: Option<&Path>, key: Option<&Path>) -> String {
        TlsFiles::from_settings(cert, key).unwrap_err().to_string()
    }

    #[test]
    fn both_or_neither_and_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let t = TlsFiles::from_settings(Some(&cert), Some(&key))
            .unwrap()
            .unwrap();
        // The key's path may be shown, never its bytes.
        assert!(!format!("{t:?}").contains("PRIVATE KEY"));
        assert!(TlsFiles::from_settings(None, None).unwrap().is_none());
        let e = err(Some(&cert), None);
        assert!(e.contains("CENTRAL_TLS_KEY is missing"), "{e}");
        let e = err(None, Some(&key));
        assert!(e.contains("CENTRAL_TLS_CERT is missing"), "{e}");
        let missing = dir.path().join("nope.pem");
        let e = err(Some(&missing), Some(&key));
        assert!(
            e.contains(&format!(
                "cannot read CENTRAL_TLS_CERT {}",
                missing.display()
            )),
            "{e}"
        );
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "just text\n").unwrap();
        let e = err(Some(&bad), Some(&key));
        assert!(
            e.contains(&format!(
                "CENTRAL_TLS_CERT {} holds no certificate",
                bad.display()
            )),
            "{e}"
        );
        let e = err(Some(&cert), Some(&bad));
        assert!(
            e.contains(&format!(
                "CENTRAL_TLS_KEY {} holds no usable private key",
                bad.display()
            )),
            "{e}"
        );
        let (_, other_key) = pair(dir.path(), "b");
        let e = err(Some(&cert), Some(&other_key));
        assert!(e.contains("do not make a usable pair"), "{e}");
    }
}
