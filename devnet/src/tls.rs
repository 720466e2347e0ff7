//! The devnet's throwaway CA (`--tls`, `--islands`): one certificate per
//! process for the loopback names, private keys written 0600.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The devnet's throwaway CA (`--tls`), which signs one certificate per
/// process for the loopback names.
pub(crate) struct Tls {
    dir: PathBuf,
    pub(crate) ca_file: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Tls {
    pub(crate) fn generate(dir: &Path) -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        std::fs::create_dir_all(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "peerdex devnet CA (throwaway)");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, cert.pem())?;
        // The CA's key is never written: the devnet signs everything now.
        Ok(Self {
            dir: dir.to_owned(),
            ca_file,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A certificate for `name` on the loopback names; returns the paths of
    /// the certificate and of its key (written 0600).
    pub(crate) fn leaf(&self, name: &str) -> Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(
            ["127.0.0.1", "localhost", "::1"].map(String::from).to_vec(),
        )?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("peerdex devnet {name}"));
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem())?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        Ok((
            cert_path.display().to_string(),
            key_path.display().to_string(),
        ))
    }
}

/// Write a private key readable by its owner only (0600 from creation on).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}
