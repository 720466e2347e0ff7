//! TLS on the gRPC port (`CENTRAL_TLS_CERT`, `CENTRAL_TLS_KEY`) and the CAs
//! an audit trusts (`CENTRAL_PEER_CA_FILE`): the PEM files are read and
//! checked at start-up by `peerdex_common::tls`, so a missing, unreadable
//! or mismatched file stops the server with a message naming it, never the
//! first handshake.

use std::path::Path;

use peerdex_common::tls::{CertKey, PairVars, read_certs};
use rustls::pki_types::CertificateDer;

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

/// tonic's configuration for the gRPC port.
pub(crate) fn server_config(files: &TlsFiles) -> tonic::transport::ServerTlsConfig {
    tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
        files.cert_pem(),
        files.key_pem(),
    ))
}

/// Read a PEM file of CA certificates (`CENTRAL_PEER_CA_FILE`): at least
/// one certificate, or a message that names the setting.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    Ok(read_certs("CENTRAL_PEER_CA_FILE", path)?)
}
