//! The dial-back: one `GET <peer url>/peer/v1/health` from the central, to
//! the host the peer advertised and nowhere else (no redirects followed, no
//! proxy), answered within [`TIMEOUT`] with at most [`MAX_BODY`] bytes that
//! name the joining peer's id. Whatever else happens is "unreachable", with
//! the reason in plain words for the peer's status.

use std::time::Duration;

use futures_util::StreamExt;
use peerdex_proto::{PeerId, PeerUrl};
use rustls::pki_types::CertificateDer;

/// The whole dial-back, connection included.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest health answer read (it is a few dozen bytes of JSON).
const MAX_BODY: usize = 1024;

/// The HTTP client of dial-backs (HTTP/1.1, the peers' CA for https).
#[derive(Clone)]
pub(crate) struct DialBack {
    http: reqwest::Client,
}

/// Why a dial-back did not reach the peer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unreached {
    #[error("no answer within {} s from {url}", TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("cannot connect to {url}: {why}")]
    Connect { url: String, why: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} did not answer as a PServer's health endpoint")]
    NotHealth { url: String },
    #[error("{url} is another peer ({other})")]
    OtherPeer { url: String, other: String },
}

impl DialBack {
    pub(crate) fn new(extra_roots: &[CertificateDer<'static>]) -> crate::error::Result<Self> {
        let tls = crate::tls::peer_client_config(extra_roots)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .pool_max_idle_per_host(0)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "peerdex-central-dialback/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(crate::error::Error::AuditClient)?;
        Ok(Self { http })
    }

    /// Reach `peer` at `url` (a base URL), showing `credential` (this
    /// directory's own, in a private network) if any.
    pub(crate) async fn reach(
        &self,
        peer: &PeerId,
        url: &PeerUrl,
        credential: Option<&str>,
    ) -> Result<(), Unreached> {
        let target = format!("{url}/peer/v1/health");
        match tokio::time::timeout(TIMEOUT, self.health(&target, credential)).await {
            Err(_) => Err(Unreached::Timeout { url: target }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(id)) if id == peer.to_string() => Ok(()),
            Ok(Ok(other)) => Err(Unreached::OtherPeer { url: target, other }),
        }
    }

    /// The peer id the health endpoint at `target` names.
    async fn health(&self, target: &str, credential: Option<&str>) -> Result<String, Unreached> {
        let mut rb = self.http.get(target);
        if let Some(c) = credential {
            rb = rb.bearer_auth(c);
        }
        let resp = rb.send().await.map_err(|e| {
            if e.is_timeout() {
                Unreached::Timeout {
                    url: target.to_owned(),
                }
            } else {
                Unreached::Connect {
                    url: target.to_owned(),
                    why: root_cause(&e),
                }
            }
        })?;
        if !resp.status().is_success() {
            return Err(Unreached::Status {
                url: target.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        let not_health = || Unreached::NotHealth {
            url: target.to_owned(),
        };
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| not_health())?;
            if body.len() + chunk.len() > MAX_BODY {
                return Err(not_health());
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(serde::Deserialize)]
        struct Health {
            peer_id: String,
        }
        serde_json::from_slice::<Health>(&body)
            .map(|h| h.peer_id)
            .map_err(|_| not_health())
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
