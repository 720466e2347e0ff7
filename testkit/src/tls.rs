//! Throwaway TLS material for tests: a CA and leaf certificates for
//! `127.0.0.1`, `localhost` and `::1`, as PEM files in a temp folder
//! (keys mode 0600), generated with rcgen.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The names every test certificate covers.
pub const LOOPBACK_NAMES: [&str; 3] = ["127.0.0.1", "localhost", "::1"];

/// Install rustls' ring provider for this process (idempotent). Every
/// server and client of the suite uses ring; reqwest needs a process
/// default to build a client at all.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate and its key as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA of its own in a temp folder, which signs leaf certificates.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM): what `PSERVER_CA_FILE` / `PEERDEX_CA_FILE` name.
    pub ca_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh CA named `name` (its certificate lands in `<name>-ca.pem`).
    pub fn new(name: &str) -> Self {
        install_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let ca_file = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem()).expect("write the CA certificate");
        Self {
            dir,
            ca_file,
            issuer: Issuer::new(params, key),
        }
    }

    /// The folder the files are written to (lives as long as this value).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A leaf certificate for the loopback names, valid now.
    pub fn leaf(&self, name: &str) -> CertFiles {
        self.leaf_with(name, &LOOPBACK_NAMES, |_| {})
    }

    /// A leaf certificate for `names` (IP addresses or DNS names); `tweak`
    /// may change any parameter (validity, for an expired certificate).
    pub fn leaf_with(
        &self,
        name: &str,
        names: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> CertFiles {
        let key = KeyPair::generate().expect("generate a leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write the certificate");
        write_private(&files.key, key.serialize_pem().as_bytes());
        files
    }

    /// `PSERVER_TLS_CERT`/`PSERVER_TLS_KEY` settings of a peer with
    /// `leaf`, trusting this CA: a tweak for [`crate::TestPeer::start`].
    pub fn peer_tweak(&self, leaf: &CertFiles) -> impl FnOnce(&mut pserver::Config) + use<> {
        let tls = pserver::tls::load_server_tls(&leaf.cert, &leaf.key)
            .expect("load the peer's certificate");
        let roots =
            pserver::tls::read_certs("PSERVER_CA_FILE", &self.ca_file).expect("read the CA file");
        move |c: &mut pserver::Config| {
            c.tls = Some(tls);
            c.ca_roots = roots;
        }
    }

    /// `CENTRAL_TLS_CERT`/`CENTRAL_TLS_KEY` of a central with `leaf`.
    pub fn central_tls(&self, leaf: &CertFiles) -> central_server::TlsFiles {
        central_server::tls_files::load(&leaf.cert, &leaf.key)
            .expect("load the central's certificate")
    }
}

/// Write a private key readable by its owner only (0600 from the start).
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).expect("create a private key file");
    f.write_all(bytes).expect("write a private key");
}
