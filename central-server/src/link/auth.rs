//! Who may call the Link service: a central whose client certificate
//! chains to `CENTRAL_LINK_CA_FILE` and names the host of one of
//! `CENTRAL_LINKS` (so a link exists only when both ends list each
//! other). The TLS handshake proved the caller holds the certificate's
//! key (`crate::tls::rustls_config`); the chain and the name are checked
//! here, so that anyone else gets PERMISSION_DENIED with the reason, and
//! each linked island is held to its own rate (`CENTRAL_LINK_RATE`).

use std::sync::Arc;
use std::time::Instant;

use peerdex_common::limit::{Limiter, retry_secs};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use tonic::{Request, Status};

use crate::config::LinkUrl;

/// Why a link call is refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkAuthError {
    #[error("link calls need a client certificate (the calling central's CENTRAL_TLS_CERT)")]
    NoCertificate,
    #[error("the client certificate does not chain to CENTRAL_LINK_CA_FILE: {0}")]
    Untrusted(rustls::Error),
    #[error("the client certificate names no host of this central's CENTRAL_LINKS")]
    NotListed,
    #[error("this central has no CENTRAL_LINKS")]
    NoLinks,
    #[error("over CENTRAL_LINK_RATE ({rate}/s) for this linked island; retry in {retry_secs} s")]
    RateLimited { rate: u32, retry_secs: u64 },
}

impl From<LinkAuthError> for Status {
    fn from(e: LinkAuthError) -> Self {
        match e {
            LinkAuthError::RateLimited { retry_secs, .. } => {
                let mut s = Status::resource_exhausted(e.to_string());
                if let Ok(v) = retry_secs.to_string().parse() {
                    s.metadata_mut().insert("retry-after", v);
                }
                s
            }
            _ => Status::permission_denied(e.to_string()),
        }
    }
}

/// Checks link callers. Cheap to share.
pub struct Gate {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    hosts: Vec<ServerName<'static>>,
    rate: u32,
    limiter: Limiter<usize>,
}

impl Gate {
    /// A gate for `links`, trusting `ca`.
    pub fn new(links: &[LinkUrl], ca: &[CertificateDer<'static>], rate: u32) -> Self {
        let mut roots = RootCertStore::empty();
        for c in ca {
            if let Err(e) = roots.add(c.clone()) {
                tracing::warn!(error = %e, "CENTRAL_LINK_CA_FILE: a certificate is not a usable CA; skipped");
            }
        }
        let verifier = (!roots.is_empty())
            .then(|| {
                WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    peerdex_common::tls::provider(),
                )
                .build()
                .map_err(|e| tracing::warn!(error = %e, "CENTRAL_LINK_CA_FILE: no usable CA"))
                .ok()
            })
            .flatten();
        let hosts = links
            .iter()
            .map(|l| {
                ServerName::try_from(l.host.clone()).unwrap_or_else(|_| {
                    ServerName::try_from("invalid.invalid")
                        .expect("a valid name")
                        .to_owned()
                })
            })
            .collect();
        Self {
            verifier,
            hosts,
            rate,
            limiter: Limiter::new(rate),
        }
    }

    /// The links (indexes into `CENTRAL_LINKS`) the caller of `req` is,
    /// or why it may not call.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Vec<usize>, LinkAuthError> {
        let verifier = self.verifier.as_ref().ok_or(LinkAuthError::NoLinks)?;
        let certs = req.peer_certs().ok_or(LinkAuthError::NoCertificate)?;
        let (leaf, chain) = certs.split_first().ok_or(LinkAuthError::NoCertificate)?;
        verifier
            .verify_client_cert(leaf, chain, UnixTime::now())
            .map_err(LinkAuthError::Untrusted)?;
        let parsed = ParsedCertificate::try_from(leaf).map_err(LinkAuthError::Untrusted)?;
        let matched: Vec<usize> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| rustls::client::verify_server_name(&parsed, h).is_ok())
            .map(|(i, _)| i)
            .collect();
        let first = *matched.first().ok_or(LinkAuthError::NotListed)?;
        // One allowance per linked host (the first link naming it).
        self.limiter
            .check(&first, Instant::now())
            .map_err(|wait| LinkAuthError::RateLimited {
                rate: self.rate,
                retry_secs: retry_secs(wait),
            })?;
        Ok(matched)
    }

    /// Forget idle rate buckets.
    pub fn purge(&self) {
        self.limiter.purge(Instant::now());
    }
}
