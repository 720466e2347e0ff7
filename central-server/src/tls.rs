//! TLS on the gRPC port (`CENTRAL_TLS_CERT`, `CENTRAL_TLS_KEY`) and the CAs
//! an audit trusts (`CENTRAL_PEER_CA_FILE`): the PEM files are read and
//! checked at start-up by `peerdex_common::tls`, so a missing, unreadable
//! or mismatched file stops the server with a message naming it, never the
//! first handshake.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use peerdex_common::tls::{CertKey, PairVars, read_certs};
use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// The certificate (chain) and private key the central serves.
pub type TlsFiles = CertKey;

/// The settings the central's certificate and key come from.
pub const VARS: PairVars = PairVars {
    cert: "CENTRAL_TLS_CERT",
    key: "CENTRAL_TLS_KEY",
};

/// Read and check `CENTRAL_TLS_CERT` and `CENTRAL_TLS_KEY`: both or neither.
pub fn from_settings(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<TlsFiles>> {
    Ok(CertKey::from_settings(VARS, cert, key)?)
}

/// Read and check a certificate and key pair (tests and tools).
pub fn load(cert: &Path, key: &Path) -> Result<TlsFiles> {
    Ok(CertKey::load(VARS, cert, key)?)
}

/// Read a PEM file of CA certificates (`CENTRAL_PEER_CA_FILE`): at least
/// one certificate, or a message that names the setting.
/// The TLS client of the central's calls to peers (audits, dial-backs):
/// HTTP/1.1, the system's roots plus `CENTRAL_PEER_CA_FILE`.
pub(crate) fn peer_client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        match rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots.iter().cloned(),
            provider.clone(),
        ) {
            Ok(v) => Arc::new(v),
            Err(e) => return Err(crate::error::Error::PeerRoots(e)),
        };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(crate::error::Error::PeerRoots)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    Ok(read_certs("CENTRAL_PEER_CA_FILE", path)?)
}

/// Read `CENTRAL_LINK_CA_FILE`: the file (PEM, for tonic's client) and its
/// certificates (at least one).
pub fn read_link_ca_file(path: &Path) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>)> {
    Ok(peerdex_common::tls::read_certs_pem(
        "CENTRAL_LINK_CA_FILE",
        path,
    )?)
}

/// The rustls configuration of the gRPC port: HTTP/2, and with `links`
/// a request for a client certificate that every client may decline
/// (peers never show one). What a linked central shows is checked by the
/// Link service itself ([`crate::link::auth`]), so that a wrong
/// certificate is answered PERMISSION_DENIED with a reason instead of a
/// failed handshake, and so that a peer's calls never depend on it.
pub(crate) fn rustls_config(files: &TlsFiles, links: bool) -> Result<Arc<rustls::ServerConfig>> {
    let clients = links.then(|| {
        Arc::new(OfferClientAuth {
            algs: peerdex_common::tls::provider().signature_verification_algorithms,
        }) as Arc<dyn ClientCertVerifier>
    });
    let mut config = files.server_config_with(clients)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Asks for a client certificate, takes any (or none) at the handshake,
/// and checks the handshake's signature with it, so that a certificate
/// seen by the Link service is surely held by the caller. The chain and
/// the names are checked by the Link service ([`crate::link::auth`]).
#[derive(Debug)]
struct OfferClientAuth {
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for OfferClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS connections of `listener`, handshaken off the accept loop (a
/// slow client never holds up others), until `cancel`.
pub(crate) fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    cancel: CancellationToken,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, from) = tokio::select! {
                () = cancel.cancelled() => return,
                () = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, say: wait a little rather
                        // than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
