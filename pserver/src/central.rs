//! Talking to the central directory: Join, Heartbeat (the lease loop),
//! Publish/Unpublish, Leave, and Locate/Search for the neighbour role.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerdex_proto::convert::SharedFile;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::{self, locate_request::Target};
use peerdex_proto::{FileId, FileName, PeerId, PeerUrl};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::metrics::{Metrics, Renewal};
use crate::network::Network;

/// Per-call deadline for RPCs to the central.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Session {
    token: Option<String>,
    joined: bool,
    last_renewal: Option<Instant>,
    interval: Option<Duration>,
    /// A publish or unpublish was skipped while not joined. The next Join
    /// carries the whole inventory, but one already in flight may have
    /// taken its snapshot before the change: then join again.
    inventory_changed: bool,
}

/// Our connection to the central and the state of our lease.
pub struct Central {
    client: DirectoryClient<Channel>,
    url: String,
    peer_id: PeerId,
    /// Proves our id to the directory at every Join.
    key: ed25519_dalek::SigningKey,
    /// A private network's proof, credential, keys and departures.
    network: Arc<Network>,
    public_url: PeerUrl,
    token_path: PathBuf,
    session: Mutex<Session>,
    reachable: AtomicBool,
    /// Why the last Join or Heartbeat failed (cleared by the next success).
    lease_error: Mutex<Option<String>>,
    /// Wakes the lease loop early (a call found we are not joined).
    wake: Notify,
}

/// Entries the central did not take (the rest of the call was applied).
fn log_refused(call: &str, refused: &[v1::Refused]) {
    for r in refused {
        tracing::warn!(call, file = %r.file_id, name = %r.name, reason = %r.reason,
            "the central refused this entry of our inventory; the others are listed");
    }
}

/// Load figures reported with Join and Heartbeat.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub active_uploads: u32,
    pub free_upload_slots: u32,
}

impl From<Load> for v1::Load {
    fn from(l: Load) -> Self {
        v1::Load {
            active_uploads: l.active_uploads,
            free_upload_slots: l.free_upload_slots,
        }
    }
}

impl Central {
    pub fn new(
        url: &str,
        peer_id: PeerId,
        key: ed25519_dalek::SigningKey,
        network: Arc<Network>,
        public_url: PeerUrl,
        data_dir: &std::path::Path,
        ca_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("PSERVER_CENTRAL_URL {url:?} is not a valid URL: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(RPC_TIMEOUT)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            // The same roots as for peers: the system's plus PSERVER_CA_FILE.
            endpoint = endpoint
                .tls_config_with_verifier(
                    tonic::transport::ClientTlsConfig::new(),
                    crate::tls::verifier(ca_roots),
                )
                .map_err(|e| anyhow::anyhow!("PSERVER_CENTRAL_URL {url:?}: {e}"))?;
        }
        let token_path = data_dir.join("session.token");
        let token = std::fs::read_to_string(&token_path)
            .ok()
            .map(|t| t.trim().to_owned());
        Ok(Self {
            client: DirectoryClient::new(endpoint.connect_lazy()),
            url: url.to_owned(),
            peer_id,
            key,
            network,
            public_url,
            token_path,
            session: Mutex::new(Session {
                token,
                ..Session::default()
            }),
            reachable: AtomicBool::new(false),
            lease_error: Mutex::new(None),
            wake: Notify::new(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Time since Join or the last accepted Heartbeat.
    pub fn lease_age(&self) -> Option<Duration> {
        let s = self.session.lock().unwrap();
        if s.joined {
            s.last_renewal.map(|t| t.elapsed())
        } else {
            None
        }
    }

    /// Fetch the keys that sign this network's credentials.
    pub async fn refresh_keys(&self) -> Result<(), Status> {
        let r = self
            .client
            .clone()
            .network_keys(v1::NetworkKeysRequest {})
            .await;
        self.note(&r);
        self.network.set_keys(&r?.into_inner().keys);
        Ok(())
    }

    /// Why the last Join or Heartbeat failed, if it did.
    pub fn lease_error(&self) -> Option<String> {
        self.lease_error.lock().unwrap().clone()
    }

    fn set_lease_error<T>(&self, r: &Result<T, Status>) {
        *self.lease_error.lock().unwrap() = r
            .as_ref()
            .err()
            .map(|s| format!("{:?}: {}", s.code(), s.message()));
    }

    pub fn is_joined(&self) -> bool {
        self.session.lock().unwrap().joined
    }

    fn note<T>(&self, r: &Result<T, Status>) {
        let up = match r {
            Ok(_) => true,
            Err(s) => !matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
            ),
        };
        self.reachable.store(up, Ordering::Relaxed);
    }

    /// A failed call's status in plain words: what went wrong with TLS
    /// (or plaintext meeting TLS) when that is the cause, else its message.
    pub fn explain(&self, s: &Status) -> String {
        crate::tls::explain(s, "the central", &self.url).unwrap_or_else(|| s.message().to_owned())
    }

    fn authed<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(t) = &self.session.lock().unwrap().token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.metadata_mut().insert(peerdex_proto::AUTHORIZATION, v);
        }
        req
    }

    /// Not joined: note that the inventory changed (see
    /// `Session::inventory_changed`) and skip the call.
    fn skipped_while_not_joined(&self) -> bool {
        let mut s = self.session.lock().unwrap();
        if !s.joined {
            s.inventory_changed = true;
        }
        !s.joined
    }

    fn mark_not_joined(&self) {
        self.session.lock().unwrap().joined = false;
        self.wake.notify_one();
    }

    /// Join with the full inventory, proving our key over a fresh nonce.
    pub async fn join(&self, inventory: &[SharedFile], load: Load) -> Result<(), Status> {
        let challenge = self
            .client
            .clone()
            .challenge(v1::ChallengeRequest {
                peer_id: self.peer_id.to_string(),
            })
            .await;
        self.note(&challenge);
        let mut msg = v1::JoinRequest {
            peer_id: self.peer_id.to_string(),
            peer_url: self.public_url.to_string(),
            files: inventory.iter().map(Into::into).collect(),
            load: Some(load.into()),
            ..Default::default()
        };
        let nonce = challenge?.into_inner().nonce;
        msg.secret_proof = self.network.secret_proof(&nonce, &msg.peer_id);
        peerdex_proto::identity::prove(&mut msg, &self.key, nonce);
        let req = self.authed(msg);
        let r = self.client.clone().join(req).await;
        self.note(&r);
        let answer = r?.into_inner();
        log_refused("join", &answer.refused);
        self.network.set_credential(&answer.credential);
        if self.network.is_private()
            && let Err(e) = self.refresh_keys().await
        {
            tracing::warn!(error = %e, "cannot fetch the network's keys; will ask again");
        }
        if let Err(e) =
            crate::identity::write_secret(&self.token_path, answer.session_token.as_bytes())
        {
            tracing::warn!(error = %e, "cannot save the session token; a restart will wait for the lease to expire");
        }
        let mut s = self.session.lock().unwrap();
        s.token = Some(answer.session_token);
        s.joined = true;
        s.last_renewal = Some(Instant::now());
        s.interval = Some(Duration::from_secs(
            answer.heartbeat_interval_secs.max(1) as u64
        ));
        Ok(())
    }

    /// Renew the lease. `Ok(false)` means the central asks us to join again.
    pub async fn heartbeat(&self, load: Load) -> Result<bool, Status> {
        let req = self.authed(v1::HeartbeatRequest {
            peer_id: self.peer_id.to_string(),
            load: Some(load.into()),
        });
        let r = self.client.clone().heartbeat(req).await;
        self.note(&r);
        let answer = r?.into_inner();
        self.network.set_credential(&answer.credential);
        self.network.note_revoked(&answer.revoked);
        let mut s = self.session.lock().unwrap();
        if answer.rejoin {
            s.joined = false;
            return Ok(false);
        }
        s.last_renewal = Some(Instant::now());
        if answer.heartbeat_interval_secs > 0 {
            s.interval = Some(Duration::from_secs(answer.heartbeat_interval_secs as u64));
        }
        Ok(true)
    }

    /// Announce new files. Skipped while not joined: the next Join carries them.
    pub async fn publish(&self, files: &[SharedFile]) {
        if files.is_empty() || self.skipped_while_not_joined() {
            return;
        }
        let req = self.authed(v1::PublishRequest {
            peer_id: self.peer_id.to_string(),
            files: files.iter().map(Into::into).collect(),
        });
        let r = self.client.clone().publish(req).await;
        self.note(&r);
        if let Ok(answer) = &r {
            log_refused("publish", &answer.get_ref().refused);
        }
        self.after_inventory_call("publish", r);
    }

    /// Withdraw files. Skipped while not joined.
    pub async fn unpublish(&self, files: &[(FileId, FileName)]) {
        if files.is_empty() || self.skipped_while_not_joined() {
            return;
        }
        let req = self.authed(v1::UnpublishRequest {
            peer_id: self.peer_id.to_string(),
            files: files
                .iter()
                .map(|(id, name)| v1::FileRef {
                    file_id: id.to_hex(),
                    name: name.to_string(),
                })
                .collect(),
        });
        let r = self.client.clone().unpublish(req).await;
        self.note(&r);
        self.after_inventory_call("unpublish", r);
    }

    fn after_inventory_call<T>(&self, what: &str, r: Result<T, Status>) {
        match r {
            Ok(_) => {}
            Err(s)
                if matches!(
                    s.code(),
                    Code::FailedPrecondition | Code::Unauthenticated | Code::NotFound
                ) =>
            {
                tracing::info!(call = what, status = %s.message(), "central does not know us; re-joining");
                self.mark_not_joined();
            }
            Err(s) => {
                // Unreachable or refused: re-join later with the full inventory.
                tracing::warn!(call = what, code = ?s.code(), status = %self.explain(&s), "central call failed; will re-join");
                self.mark_not_joined();
            }
        }
    }

    /// Tell the central we are gone.
    pub async fn leave(&self) {
        if !self.is_joined() {
            return;
        }
        let req = self.authed(v1::LeaveRequest {
            peer_id: self.peer_id.to_string(),
        });
        match tokio::time::timeout(RPC_TIMEOUT, self.client.clone().leave(req)).await {
            Ok(Ok(_)) => {
                tracing::info!("left the central directory");
                self.session.lock().unwrap().joined = false;
                let _ = std::fs::remove_file(&self.token_path);
            }
            Ok(Err(s)) => tracing::warn!(status = %s, "leave failed; the lease will expire"),
            Err(_) => tracing::warn!("leave timed out; the lease will expire"),
        }
    }

    pub async fn locate(&self, target: Target) -> Result<Vec<v1::LocatedFile>, Status> {
        let r = self
            .client
            .clone()
            .locate(v1::LocateRequest {
                target: Some(target),
                max_holders: 0,
            })
            .await;
        self.note(&r);
        Ok(r?.into_inner().files)
    }

    pub async fn search(
        &self,
        query: &str,
        limit: u32,
        page_token: &str,
    ) -> Result<v1::SearchResponse, Status> {
        let r = self
            .client
            .clone()
            .search(v1::SearchRequest {
                query: query.to_owned(),
                limit,
                page_token: page_token.to_owned(),
            })
            .await;
        self.note(&r);
        Ok(r?.into_inner())
    }

    /// Keep the lease: join (with the full inventory from `inventory`), then
    /// heartbeat at the interval the central advises; re-join when asked;
    /// back off while the central is unreachable. Returns when cancelled.
    pub(crate) async fn lease_loop(
        &self,
        inventory: impl Fn() -> Vec<SharedFile>,
        load: impl Fn() -> Load,
        metrics: Metrics,
        cancel: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let wait = if self.is_joined() {
                let answer = self.heartbeat(load()).await;
                self.set_lease_error(&answer);
                metrics.renewal(match &answer {
                    Ok(true) => Renewal::Ok,
                    Ok(false) => Renewal::Rejoin,
                    Err(s) if s.code() == Code::Unauthenticated => Renewal::Rejoin,
                    Err(_) => Renewal::Error,
                });
                match answer {
                    Ok(true) => {
                        backoff = Duration::from_millis(250);
                        self.session
                            .lock()
                            .unwrap()
                            .interval
                            .unwrap_or(Duration::from_secs(10))
                    }
                    Ok(false) => {
                        tracing::info!("central asked us to join again");
                        Duration::ZERO
                    }
                    Err(s) if s.code() == Code::Unauthenticated => {
                        tracing::warn!(status = %s.message(), "heartbeat refused; re-joining");
                        self.mark_not_joined();
                        Duration::ZERO
                    }
                    Err(s) => {
                        tracing::warn!(code = ?s.code(), status = %self.explain(&s), retry_in = ?backoff, "heartbeat failed");
                        let w = backoff;
                        // Never wait longer than the advised interval: after a
                        // central restart the grace period is one lease, and
                        // the heartbeat must land within it.
                        let cap = self
                            .session
                            .lock()
                            .unwrap()
                            .interval
                            .unwrap_or(MAX_BACKOFF)
                            .min(MAX_BACKOFF);
                        backoff = (backoff * 2).min(cap);
                        w
                    }
                }
            } else {
                self.session.lock().unwrap().inventory_changed = false;
                let inv = inventory();
                let joined = self.join(&inv, load()).await;
                self.set_lease_error(&joined);
                match joined {
                    Ok(()) => {
                        tracing::info!(files = inv.len(), central = %self.url, "joined the central directory");
                        backoff = Duration::from_millis(250);
                        if std::mem::take(&mut self.session.lock().unwrap().inventory_changed) {
                            // Files changed while the Join was on its way:
                            // send the whole inventory again.
                            tracing::debug!("inventory changed during the join; joining again");
                            self.mark_not_joined();
                        }
                        self.session
                            .lock()
                            .unwrap()
                            .interval
                            .unwrap_or(Duration::from_secs(10))
                    }
                    Err(s) => {
                        if s.code() == Code::Unauthenticated {
                            // Our peer id is live under a token we no longer have
                            // (data dir restored from elsewhere?): wait for that
                            // lease to expire, then a plain join succeeds.
                            self.session.lock().unwrap().token = None;
                        }
                        if s.code() == Code::PermissionDenied {
                            tracing::error!(status = %s.message(), retry_in = ?backoff,
                                "the central refuses our peer id: it is bound to another key");
                        } else {
                            tracing::warn!(code = ?s.code(), status = %self.explain(&s), retry_in = ?backoff, "cannot join the central");
                        }
                        let w = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        w
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
