//! A private network's departures, pushed by the directory on a
//! `Revocations` stream.

use std::time::Duration;

use peerdex_proto::v1::{self};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{CallError, Central, MAX_BACKOFF};

/// How long the Revocations stream waits before it is opened again, at
/// most.
const MAX_STREAM_BACKOFF: Duration = Duration::from_secs(2);

impl Central {
    /// In a private network: keep a `Revocations` stream open at the
    /// central we use (moving to the next one of the list when it does not
    /// answer, as every call does), so that a departed peer's credential
    /// is refused here the moment the directory applies its departure.
    /// Reopened after a failure with a short backoff (the first event of
    /// each stream is the whole list, so nothing is missed in between);
    /// idle while we are not joined (the Join's answer brings the list).
    /// Returns when cancelled.
    pub(crate) async fn revocations_loop(&self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.is_joined() {
                let opened = self
                    .call("revocations", |mut c| async move {
                        let req = self.authed(v1::RevocationsRequest {
                            peer_id: self.peer_id.to_string(),
                        });
                        c.revocations(req).await
                    })
                    .await;
                match opened {
                    Ok((at, r)) => {
                        tracing::debug!(central = %self.links[at].url, "revocations: stream open");
                        let mut stream = r.into_inner();
                        loop {
                            let m = tokio::select! {
                                () = cancel.cancelled() => return,
                                m = stream.message() => m,
                            };
                            match m {
                                Ok(Some(e)) => {
                                    backoff = Duration::from_millis(100);
                                    if e.snapshot {
                                        self.network.note_revoked_list(&e.revoked);
                                    } else {
                                        for r in &e.revoked {
                                            tracing::info!(peer = %r.peer_id, "a peer left the network: its credentials are refused");
                                        }
                                        self.network.note_revoked(&e.revoked);
                                    }
                                }
                                Ok(None) => {
                                    tracing::debug!(
                                        "revocations: the central ended the stream; reopening"
                                    );
                                    break;
                                }
                                Err(s) => {
                                    let s = CallError::from(s);
                                    tracing::debug!(code = ?s.code, status = %s.message, "revocations: the stream failed; reopening");
                                    break;
                                }
                            }
                        }
                    }
                    Err(s) if s.code == Code::Unimplemented => {
                        // An older directory: heartbeat answers carry the
                        // list (later, but they do).
                        tracing::info!(
                            "the central has no Revocations stream (older version); departures arrive with heartbeats"
                        );
                        backoff = MAX_BACKOFF;
                    }
                    Err(s) => {
                        tracing::debug!(code = ?s.code, status = %s.message, retry_in = ?backoff, "revocations: cannot open the stream");
                    }
                }
            }
            let wait = backoff;
            if backoff < MAX_STREAM_BACKOFF {
                backoff = (backoff * 2).min(MAX_STREAM_BACKOFF);
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
