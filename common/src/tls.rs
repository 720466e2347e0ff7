//! TLS files and the one crypto provider.
//!
//! Every configuration is built with rustls' ring provider explicitly, so
//! nothing depends on which provider a process installed (mains install
//! ring too, for the clients that read the process default). Certificate
//! and key files are read and checked at start-up, so a missing,
//! unreadable or mismatched file stops the server with a message that
//! names the setting and the file, never the first handshake.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The process-wide provider: ring. Idempotent; a main calls it first.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider every configuration is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate or key file that cannot be used. Each names its setting
/// (`var`, say `CENTRAL_TLS_CERT`) and its file.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error("cannot read {var} {}: {source}", path.display())]
    Read {
        var: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{var} {} is not valid PEM ({})", path.display(), pem_problem(source))]
    NotPem {
        var: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    #[error("{var} {} holds no certificate: expected PEM \"-----BEGIN CERTIFICATE-----\" blocks", path.display())]
    NoCertificate { var: &'static str, path: PathBuf },
    #[error(
        "{var} {} holds no usable private key ({}): expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block",
        path.display(),
        pem_problem(source)
    )]
    NoKey {
        var: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    #[error("{cert_var} {} and {key_var} {} do not make a usable pair: {source}", cert.display(), key.display())]
    Mismatch {
        cert_var: &'static str,
        cert: PathBuf,
        key_var: &'static str,
        key: PathBuf,
        source: Box<rustls::Error>,
    },
    #[error("{cert_var} is set but {missing} is missing: set both or neither")]
    HalfPair {
        cert_var: &'static str,
        missing: &'static str,
    },
}

fn pem_problem(e: &pem::Error) -> String {
    use pem::Error as E;
    match e {
        E::NoItemsFound => "no PEM block of the expected kind".into(),
        E::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        E::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        E::Base64Decode(_) => "a PEM block is not valid base64".into(),
        other => other.to_string(),
    }
}

fn read(var: &'static str, path: &Path) -> Result<Vec<u8>, PemFileError> {
    std::fs::read(path).map_err(|source| PemFileError::Read {
        var,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file (a chain, or a bundle of roots): at
/// least one.
pub fn read_certs(
    var: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    parse_certs(var, path, &read(var, path)?)
}

/// [`read_certs`], and the file as read (PEM), for clients that take PEM
/// (tonic).
pub fn read_certs_pem(
    var: &'static str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), PemFileError> {
    let pem = read(var, path)?;
    let certs = parse_certs(var, path, &pem)?;
    Ok((pem, certs))
}

fn parse_certs(
    var: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemFileError::NotPem {
            var,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemFileError::NoCertificate {
            var,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The settings a certificate and its key are read from, for messages.
#[derive(Debug, Clone, Copy)]
pub struct PairVars {
    pub cert: &'static str,
    pub key: &'static str,
}

/// A certificate chain and the private key that goes with it, read and
/// checked (they make a usable server configuration).
#[derive(Clone)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
    key_der: Arc<PrivateKeyDer<'static>>,
    /// The files as read (PEM), for servers that take PEM (tonic).
    cert_pem: Vec<u8>,
    key_pem: Arc<Vec<u8>>,
    vars: PairVars,
}

/// Paths only: the key never reaches a log.
impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertKey {
    /// Read both files and check that they make a pair.
    pub fn load(vars: PairVars, cert: &Path, key: &Path) -> Result<Self, PemFileError> {
        let cert_pem = read(vars.cert, cert)?;
        let certs = parse_certs(vars.cert, cert, &cert_pem)?;
        let key_pem = read(vars.key, key)?;
        let key_der =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| PemFileError::NoKey {
                var: vars.key,
                path: key.to_owned(),
                source,
            })?;
        let pair = Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            certs,
            key_der: Arc::new(key_der),
            cert_pem,
            key_pem: Arc::new(key_pem),
            vars,
        };
        // A key that does not match the certificate is refused here, at
        // start, not at the first handshake.
        pair.server_config()?;
        Ok(pair)
    }

    /// Both settings or neither: the message names the one that is missing.
    pub fn from_settings(
        vars: PairVars,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>, PemFileError> {
        match (cert, key) {
            (Some(c), Some(k)) => Self::load(vars, c, k).map(Some),
            (None, None) => Ok(None),
            (Some(_), None) => Err(PemFileError::HalfPair {
                cert_var: vars.cert,
                missing: vars.key,
            }),
            (None, Some(_)) => Err(PemFileError::HalfPair {
                cert_var: vars.key,
                missing: vars.cert,
            }),
        }
    }

    /// A rustls server configuration for this pair, without client
    /// authentication (callers add ALPN).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PemFileError> {
        self.server_config_with(None)
    }

    /// [`CertKey::server_config`], with `clients` verifying the client
    /// certificates it asks for (`None`: it asks for none).
    pub fn server_config_with(
        &self,
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<rustls::ServerConfig, PemFileError> {
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                let b = match clients {
                    Some(v) => b.with_client_cert_verifier(v),
                    None => b.with_no_client_auth(),
                };
                b.with_single_cert(self.certs.clone(), self.key_der.clone_key())
            })
            .map_err(|source| PemFileError::Mismatch {
                cert_var: self.vars.cert,
                cert: self.cert.clone(),
                key_var: self.vars.key,
                key: self.key.clone(),
                source: Box::new(source),
            })
    }

    /// The certificate file as read (PEM).
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The key file as read (PEM).
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: PairVars = PairVars {
        cert: "X_TLS_CERT",
        key: "X_TLS_KEY",
    };

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

    fn err(cert: Option<&Path>, key: Option<&Path>) -> PemFileError {
        CertKey::from_settings(VARS, cert, key).unwrap_err()
    }

    #[test]
    fn both_or_neither_and_every_problem_names_its_setting_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let t = CertKey::from_settings(VARS, Some(&cert), Some(&key))
            .unwrap()
            .unwrap();
        // The key's path may be shown, never its bytes.
        assert!(!format!("{t:?}").contains("PRIVATE KEY"));
        assert_eq!(t.cert_pem(), std::fs::read(&cert).unwrap());
        assert!(CertKey::from_settings(VARS, None, None).unwrap().is_none());
        let e = err(Some(&cert), None);
        assert!(
            matches!(
                e,
                PemFileError::HalfPair {
                    missing: "X_TLS_KEY",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("X_TLS_KEY is missing"), "{e}");
        let e = err(None, Some(&key));
        assert!(
            matches!(
                e,
                PemFileError::HalfPair {
                    missing: "X_TLS_CERT",
                    ..
                }
            ),
            "{e}"
        );
        let missing = dir.path().join("nope.pem");
        let e = err(Some(&missing), Some(&key));
        assert!(
            matches!(&e, PemFileError::Read { var: "X_TLS_CERT", path, .. } if *path == missing),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read X_TLS_CERT {}", missing.display())),
            "{e}"
        );
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "just text\n").unwrap();
        let e = err(Some(&bad), Some(&key));
        assert!(
            matches!(
                &e,
                PemFileError::NoCertificate {
                    var: "X_TLS_CERT",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(Some(&cert), Some(&bad));
        assert!(
            matches!(
                &e,
                PemFileError::NoKey {
                    var: "X_TLS_KEY",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("holds no usable private key"), "{e}");
        let (_, other_key) = pair(dir.path(), "b");
        let e = err(Some(&cert), Some(&other_key));
        assert!(matches!(&e, PemFileError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("do not make a usable pair"), "{e}");
    }

    #[test]
    fn a_bundle_of_roots_is_read_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = pair(dir.path(), "a");
        let (b, _) = pair(dir.path(), "b");
        let bundle = dir.path().join("bundle.pem");
        let mut both = std::fs::read(&a).unwrap();
        both.extend(std::fs::read(&b).unwrap());
        std::fs::write(&bundle, both).unwrap();
        assert_eq!(read_certs("X_CA_FILE", &bundle).unwrap().len(), 2);
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = read_certs("X_CA_FILE", &empty).unwrap_err();
        assert!(
            matches!(
                e,
                PemFileError::NoCertificate {
                    var: "X_CA_FILE",
                    ..
                }
            ),
            "{e}"
        );
    }
}
