//! The firewalled side: keep one tunnel to the relay the directory
//! assigned.
//!
//! The attach loop dials `<relay>/peer/v1/relay/attach` with our peer id
//! and the directory's token, then serves our peer API over it (`serve`)
//! until the tunnel closes.
//! When the tunnel closes or the relay refuses (full: 503, a stale token:
//! 403, gone: no answer), that relay is avoided for a minute and we join
//! again at once (skipping the dial-back): the directory assigns another
//! relay and lists our files under it. So a relay that dies costs about a
//! round trip to the directory and a dial, not a heartbeat interval.

use std::sync::Arc;
use std::time::Duration;

use peerdex_proto::PeerId;
use peerdex_proto::relay::{ATTACH_PATH, ATTACH_TOKEN_HEADER, PEER_ID_HEADER};
use tokio_util::sync::CancellationToken;

use super::serve::TunnelServer;
use super::state::Reach;
use super::tunnel;
use crate::link::Central;
use crate::peer::network::Network;

/// Longest wait between two tries to get a relay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the attach loop needs.
pub(crate) struct Attach {
    pub peer_id: PeerId,
    pub reach: Arc<Reach>,
    pub central: Arc<Central>,
    pub network: Arc<Network>,
    pub server: Arc<TunnelServer>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// Keep a tunnel to our relay while the directory says we need one.
pub(crate) async fn attach_loop(a: Attach, cancel: CancellationToken) {
    let mut changes = a.reach.subscribe();
    let mut backoff = Duration::from_millis(250);
    loop {
        let wait = match (a.reach.needs_relay(), a.reach.assignment()) {
            (true, Some(relay)) => {
                let mut headers = vec![
                    (PEER_ID_HEADER, a.peer_id.to_string()),
                    (ATTACH_TOKEN_HEADER, relay.token.clone()),
                ];
                if let Some(c) = a.network.credential() {
                    headers.push(("authorization", format!("Bearer {c}")));
                }
                let dialed = tokio::select! {
                    _ = cancel.cancelled() => return,
                    d = tunnel::dial(&relay.url, ATTACH_PATH, &headers, &a.tls) => d,
                };
                match dialed {
                    Ok(io) => {
                        let source = io.peer_addr();
                        a.reach.set_attached(true);
                        backoff = Duration::from_millis(250);
                        tracing::info!(relay = %relay.url, "behind NAT: attached to our relay; shared through it");
                        let served = tokio::select! {
                            _ = cancel.cancelled() => return,
                            s = a.server.serve(io, source) => s,
                        };
                        a.reach.set_attached(false);
                        tracing::warn!(relay = %relay.url, result = ?served.err().map(|e| e.to_string()),
                            "the tunnel to our relay closed; asking the directory for another");
                    }
                    Err(e) => {
                        tracing::warn!(relay = %relay.url, error = %e, status = ?e.status(),
                            "cannot attach to our relay; asking the directory for another");
                    }
                }
                a.reach.failed(relay.relay);
                changes.borrow_and_update();
                a.central.rejoin_soon();
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
            (true, None) => {
                // No relay had room at our Join: ask again in a while.
                let w = MAX_BACKOFF;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(w) => {}
                    _ = changes.changed() => continue,
                }
                if a.reach.needs_relay() && a.reach.assignment().is_none() {
                    a.reach.want_relay();
                    a.central.rejoin_soon();
                }
                continue;
            }
            (false, _) => Duration::from_secs(3600),
        };
        // Wait for the next Join answer (or the back-off, or the end).
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
