//! Audits: the directory checks that a peer really holds the bytes it
//! claims, before a copy counts toward a pin.
//!
//! One audit asks the holder's peer API for the file's manifest (checked
//! against the file id: the verified tree), picks a chunk at random, asks
//! for exactly that range, and checks it against the manifest. A holder
//! that has the file passes for the cost of one chunk (1 MiB for files up
//! to 8 GiB); one that does not cannot answer, since every chunk is bound
//! to the id. The leader runs audits (see `service::replicas`); this
//! module is the check itself and the HTTP client it uses.

use std::time::Duration;

use futures_util::StreamExt;
use peerdex_proto::FileId;
use peerdex_proto::tree::{MAX_ENCODED, Manifest};
use rand::Rng;
use rustls::pki_types::CertificateDer;

/// How long one audit may take, all requests included.
pub const AUDIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an audit failed (the holder gets a strike).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("no answer: {0}")]
    Unreachable(String),
    #[error("manifest refused: {0}")]
    Manifest(String),
    #[error("chunk {chunk} refused: {why}")]
    Chunk { chunk: usize, why: String },
    #[error("no answer within {}s", AUDIT_TIMEOUT.as_secs())]
    Timeout,
}

/// The audit client: HTTP/1.1 to peers' APIs, over TLS with the system's
/// roots plus `CENTRAL_PEER_CA_FILE`.
#[derive(Clone)]
pub struct Auditor {
    http: reqwest::Client,
}

impl Auditor {
    pub fn new(extra_roots: &[CertificateDer<'static>]) -> crate::error::Result<Self> {
        let tls = crate::tls::peer_client_config(extra_roots)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("peerdex-central-audit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(crate::error::Error::AuditClient)?;
        Ok(Self { http })
    }

    /// Audit `peer_url`'s copy of `file`: Ok when a random chunk checks
    /// out. `credential`: this directory's own credential in a private
    /// network (peers ask one on every request).
    pub async fn audit(
        &self,
        peer_url: &str,
        file: &FileId,
        credential: Option<&str>,
    ) -> Result<usize, AuditError> {
        tokio::time::timeout(AUDIT_TIMEOUT, self.audit_inner(peer_url, file, credential))
            .await
            .map_err(|_| AuditError::Timeout)?
    }

    async fn audit_inner(
        &self,
        peer_url: &str,
        file: &FileId,
        credential: Option<&str>,
    ) -> Result<usize, AuditError> {
        self.audit_chunk(peer_url, file, credential, None).await
    }

    /// Audit chunk `which` (`None`: one picked at random).
    async fn audit_chunk(
        &self,
        peer_url: &str,
        file: &FileId,
        credential: Option<&str>,
        which: Option<usize>,
    ) -> Result<usize, AuditError> {
        let base = peer_url.trim_end_matches('/');
        let get = |url: String| {
            let rb = self.http.get(url);
            match credential {
                Some(c) => rb.bearer_auth(c),
                None => rb,
            }
        };
        let r = get(format!("{base}/peer/v1/files/{}/manifest", file.to_hex()))
            .send()
            .await
            .map_err(|e| AuditError::Unreachable(e.without_url().to_string()))?;
        if !r.status().is_success() {
            return Err(AuditError::Manifest(format!("HTTP {}", r.status())));
        }
        let bytes = read_at_most(r, MAX_ENCODED)
            .await
            .map_err(AuditError::Manifest)?;
        let m = Manifest::decode(*file, &bytes).map_err(|e| AuditError::Manifest(e.to_string()))?;
        let chunk = which
            .unwrap_or_else(|| rand::rng().random_range(0..m.chunks().max(1)))
            .min(m.chunks().saturating_sub(1));
        let (from, len) = m.chunk_range(chunk);
        let to = from + len;
        let bad = |why: String| AuditError::Chunk { chunk, why };
        let r = get(format!("{base}/peer/v1/files/{}", file.to_hex()))
            .header(
                reqwest::header::RANGE,
                format!("bytes={from}-{}", to.saturating_sub(1)),
            )
            .send()
            .await
            .map_err(|e| AuditError::Unreachable(e.without_url().to_string()))?;
        let whole = from == 0 && to == m.size();
        let status = r.status();
        if !(status == reqwest::StatusCode::PARTIAL_CONTENT
            || (whole && status == reqwest::StatusCode::OK))
        {
            return Err(bad(format!("HTTP {status}")));
        }
        let want = len as usize;
        let body = read_at_most(r, want).await.map_err(&bad)?;
        if body.len() != want {
            return Err(bad(format!("{} bytes, not {want}", body.len())));
        }
        if !m.check_chunk(chunk, &body) {
            return Err(bad("bytes do not match the file id".into()));
        }
        Ok(chunk)
    }
}

/// The body of `r`, refused past `max` bytes.
async fn read_at_most(r: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| e.without_url().to_string())?;
        if out.len() + b.len() > max {
            return Err(format!("answer longer than {max} bytes"));
        }
        out.extend_from_slice(&b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdex_testkit::{DeadUrl, StaticHolder, test_bytes};

    #[tokio::test]
    async fn every_chunk_of_a_held_file_passes_and_a_missing_file_fails() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bytes = test_bytes(3 * (1 << 20) + 17, 3);
        let h = StaticHolder::start(vec![bytes]).await;
        let url = format!("http://{}", h.addr);
        let id: FileId = h.ids[0].parse().unwrap();
        let a = Auditor::new(&[]).unwrap();
        for i in 0..4 {
            assert_eq!(a.audit_chunk(&url, &id, None, Some(i)).await, Ok(i));
        }
        let other: FileId = peerdex_testkit::blake3_hex(b"not held").parse().unwrap();
        assert!(matches!(
            a.audit(&url, &other, None).await,
            Err(AuditError::Manifest(_))
        ));
        let dead = DeadUrl::new();
        assert!(matches!(
            a.audit(&dead.url, &id, None).await,
            Err(AuditError::Unreachable(_))
        ));
    }
}
