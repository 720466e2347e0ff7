//! TLS for the PServer (issue 14): the certificate of its own listeners
//! (`PSERVER_TLS_CERT`, `PSERVER_TLS_KEY`), the roots it trusts for the
//! central and other peers (the system's plus `PSERVER_CA_FILE`), and the
//! plain words a failed handshake is explained with.
//!
//! One crypto provider, rustls' ring, everywhere: configurations are built
//! with it explicitly, so nothing depends on which provider a process
//! installed (mains install ring too, for the clients that read the
//! process default).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use peerdex_common::tls::{CertKey, PairVars};
pub use peerdex_common::tls::{PemFileError, install_provider, provider, read_certs};

/// The certificate and key a listener serves, loaded and checked at start.
pub type ServerTls = CertKey;

/// The settings the PServer's certificate and key come from.
pub const VARS: PairVars = PairVars {
    cert: "PSERVER_TLS_CERT",
    key: "PSERVER_TLS_KEY",
};

/// Read `PSERVER_TLS_CERT` and `PSERVER_TLS_KEY` and check they make a pair.
pub fn load_server_tls(cert: &Path, key: &Path) -> Result<ServerTls, PemFileError> {
    CertKey::load(VARS, cert, key)
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
