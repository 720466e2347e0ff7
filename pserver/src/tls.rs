//! TLS for the PServer (issue 14): the certificate of its own listeners
//! (`PSERVER_TLS_CERT`, `PSERVER_TLS_KEY`), the roots it trusts for the
//! central and other peers (the system's plus `PSERVER_CA_FILE`), and the
//! plain words a failed handshake is explained with.
//!
//! One crypto provider, rustls' ring, everywhere: configurations are built
//! with it explicitly, so nothing depends on which provider a process
//! installed (mains install ring too, for the clients that read the
//! process default).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The process-wide provider: ring. Idempotent; a main calls it first.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate and key a listener serves, loaded and checked at start.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    certs: Vec<CertificateDer<'static>>,
    key_der: Arc<PrivateKeyDer<'static>>,
}

/// Paths only: the key never reaches a log.
impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Read a PEM certificate chain and its private key; errors name the
    /// variable, the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let certs = read_certs("PSERVER_TLS_CERT", cert)?;
        let pem = std::fs::read(key)
            .with_context(|| format!("cannot read PSERVER_TLS_KEY {}", key.display()))?;
        let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            anyhow::anyhow!(
                "PSERVER_TLS_KEY {} holds no usable private key ({}): expected a PEM \
                 \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block",
                key.display(),
                pem_problem(&e)
            )
        })?;
        let tls = Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            certs,
            key_der: Arc::new(key_der),
        };
        // Builds the configuration once: a key that does not match the
        // certificate is refused here, at start, not at the first handshake.
        tls.server_config()?;
        Ok(tls)
    }

    /// A rustls server configuration for this certificate (HTTP/1.1 and
    /// HTTP/2 offered by ALPN; actix-web adds its protocols itself).
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("rustls protocol versions")?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key_der.clone_key())
            .map_err(|e| {
                anyhow::anyhow!(
                    "PSERVER_TLS_CERT {} and PSERVER_TLS_KEY {} do not make a usable pair: {e}",
                    self.cert.display(),
                    self.key.display()
                )
            })
    }
}

/// The certificates of a PEM file (a chain or a bundle of roots).
pub fn read_certs(var: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read {var} {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "{var} {} is not valid PEM ({})",
                path.display(),
                pem_problem(&e)
            )
        })?;
    if certs.is_empty() {
        bail!(
            "{var} {} holds no certificate: expected PEM \"-----BEGIN CERTIFICATE-----\" blocks",
            path.display()
        );
    }
    Ok(certs)
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "no PEM block of the expected kind".into(),
        E::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        E::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        E::Base64Decode(_) => "a PEM block is not valid base64".into(),
        other => other.to_string(),
    }
}

/// The verifier for every outgoing TLS connection (central and peers): the
/// system's roots plus `extra` (PSERVER_CA_FILE). Without any root at all
/// (no system store, no CA file) a handshake fails with that explanation;
/// plaintext connections are unaffected.
pub fn verifier(extra: &[CertificateDer<'static>]) -> Arc<dyn ServerCertVerifier> {
    match rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra.iter().cloned(),
        provider(),
    ) {
        Ok(v) => Arc::new(v),
        Err(e) => {
            tracing::warn!(error = %e, "no trusted CA certificates: https:// URLs will fail until PSERVER_CA_FILE is set");
            Arc::new(NoRoots)
        }
    }
}

/// A client configuration for reqwest (peers): HTTP/1.1 only, as over
/// plaintext, so a transfer is one request on one connection either way.
pub fn http_client_config(extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier(extra))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

#[derive(Debug)]
struct NoRoots;

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What went wrong with a connection to `url`, in plain words, when the
/// cause is TLS (or plaintext meeting TLS); `None` for anything else.
/// `who` names the other side ("the central", "the peer").
pub fn explain(err: &(dyn std::error::Error + 'static), who: &str, url: &str) -> Option<String> {
    let https = url.starts_with("https://");
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut text = String::new();
    while let Some(e) = cur {
        if let Some(r) = rustls_error(e) {
            return Some(explain_rustls(r, who, url));
        }
        text.push_str(&e.to_string().to_lowercase());
        text.push(' ');
        cur = e.source();
    }
    if !https {
        // What a TLS server sends to a plaintext client (an alert record)
        // is no HTTP: hyper and h2 fail to parse it...
        if [
            "frame with invalid size",
            "invalid http version",
            "received corrupt message",
        ]
        .iter()
        .any(|m| text.contains(m))
        {
            return Some(format!(
                "{who} at {url} did not answer in plaintext HTTP; if it uses TLS, use an https:// URL"
            ));
        }
        // ...or it just hangs up.
        if [
            "broken pipe",
            "connection reset",
            "connection closed before message completed",
        ]
        .iter()
        .any(|m| text.contains(m))
        {
            return Some(format!(
                "{who} at {url} closed the connection without a plaintext answer; \
                 if it uses TLS, use an https:// URL"
            ));
        }
    }
    None
}

/// The rustls error in `e`, also when io errors wrap it (reqwest nests two,
/// and an io error's `source` skips what it wraps: look inside).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

fn explain_rustls(e: &rustls::Error, who: &str, url: &str) -> String {
    use rustls::{AlertDescription as A, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "{who} at {url} presented a certificate not signed by a trusted CA; \
                 set PSERVER_CA_FILE to your network's CA certificate (PEM)"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("{who} at {url} presented an expired certificate; renew it")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!(
                    "{who} at {url} presented a certificate that is not valid yet; check the clocks"
                )
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "{who} at {url} presented a certificate for another name or address; \
                 its certificate must cover the host in the URL"
                )
            }
            CertificateError::Revoked => {
                format!("{who} at {url} presented a revoked certificate")
            }
            other => format!("{who} at {url} presented an unusable certificate: {other}"),
        },
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => format!(
            "{who} at {url} did not answer with TLS; if it speaks plaintext, use an http:// URL"
        ),
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown) => {
            format!("{who} at {url} refused our certificate")
        }
        E::AlertReceived(a) => format!("{who} at {url} ended the TLS handshake ({a:?})"),
        other => format!("TLS with {who} at {url} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_in_plain_words() {
        let url = "https://h:1";
        let e = std::io::Error::other(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        let m = explain(&e, "the central", url).unwrap();
        assert!(m.contains("not signed by a trusted CA"), "{m}");
        assert!(m.contains("PSERVER_CA_FILE"), "{m}");
        let e = std::io::Error::other(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert!(explain(&e, "the peer", url).unwrap().contains("expired"));
        let e = std::io::Error::other(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        assert!(
            explain(&e, "the peer", url)
                .unwrap()
                .contains("another name")
        );
        // reqwest wraps the rustls error in two io errors.
        let nested = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        assert!(
            explain(&nested, "the peer", url)
                .unwrap()
                .contains("not signed by a trusted CA")
        );
        let e = std::io::Error::other("connection refused");
        assert_eq!(explain(&e, "the peer", url), None);
    }
}
