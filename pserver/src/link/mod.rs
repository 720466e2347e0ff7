//! Talking to the central directory: Join, Heartbeat (the lease loop),
//! Publish/Unpublish, Leave, and Locate/Search for the neighbour role.
//!
//! Several centrals can serve one directory (`PSERVER_CENTRAL_URL` lists
//! them). A PServer picks one at random at start and stays with it while
//! it answers. A call that meets a transport error, `UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED` or `DEADLINE_EXCEEDED` moves us to the next central
//! in list order (passing over the ones that failed in the last few
//! seconds, unless all did), and calls that are safe to repeat (Heartbeat,
//! Locate, Search, NetworkKeys, Challenge + Join) are tried there at once.
//! A Heartbeat answer that says `moved` (that central is shutting down)
//! moves us too, and the next heartbeat goes to the new central at once.
//! The lease is kept across a move: centrals on etcd share the session;
//! one that does not know us answers `rejoin`, and we join there with the
//! whole inventory. An inventory of any size joins in pages (`pages`): a
//! Join with a first page, then Publish pages in order, each within the
//! central's message limit; every (re-)Join does.
//!
//! Publish and Unpublish go through one ordered outbox: while we are
//! joined, a change that no central takes (none answers) waits there, in
//! order, and is delivered first once one answers, before any newer change.
//! While not joined, changes are not queued: the next Join carries the
//! whole inventory, which supersedes the queue.
//!
//! Replication: the Join offers our replica space
//! (`PSERVER_REPLICA_QUOTA_BYTES`); each Heartbeat carries the FETCH tasks
//! we declined since the last one, and its answer the open replica tasks,
//! which the lease loop sends to the replica worker over a channel (the
//! worker adds its declines to [`Central::decline`]).
//! Pin and Pins act for this peer like Publish (our session token).

//!
//! Layout: `failover` (the list of centrals and the call that moves between
//! them), `lease` (Join, Heartbeat, the lease loop, Leave), `outbox`
//! (Publish/Unpublish in order), `pages` (a big inventory's Join in
//! pages), `declines` (replica declines on their way),
//! `queries` (Locate, Search, pins, keys), `revocations` (a private
//! network's departures), `watch` (the Watch stream of wanted files),
//! `lookup` (neighbours first, then the central).

mod declines;
mod error;
mod failover;
mod lease;
pub(crate) mod lookup;
mod outbox;
mod pages;
mod queries;
mod revocations;
mod watch;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::{self};
use peerdex_proto::{FileId, PeerId, PeerUrl};
use tokio::sync::Notify;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

pub use error::CallError;
pub use pages::NotListed;

use crate::peer::network::Network;
use declines::Declines;
use failover::Link;
use outbox::Change;

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
    /// The number of the last inventory change of this session (each
    /// Publish/Unpublish carries the next; a retry the same).
    seq: u64,
}

/// What the last Heartbeat answer said about the directory.
#[derive(Debug, Default)]
struct Heard {
    /// The name of the central we talk to (cleared when we move).
    central: Option<String>,
    leader: Option<String>,
    /// The directory's island, as Join or Heartbeat answers name it.
    island: Option<String>,
}

/// The answer to a Heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub enum Beat {
    /// The lease is renewed. `moved`: that central is shutting down and we
    /// moved to another one, which should hear from us at once. `tasks`:
    /// the replica tasks open for us (all of them, every time).
    Renewed {
        moved: bool,
        tasks: Vec<v1::ReplicaTask>,
    },
    /// The central does not know us: join again.
    Rejoin,
}

/// Our connection to the directory's centrals and the state of our lease.
pub struct Central {
    links: Vec<Link>,
    /// Index in `links` of the central we use.
    current: AtomicUsize,
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
    heard: Mutex<Heard>,
    /// Changes no central took yet, in order; its lock also puts every
    /// Publish and Unpublish in one line, so none overtakes another.
    outbox: tokio::sync::Mutex<VecDeque<Change>>,
    /// Wakes the lease loop early (a call found we are not joined).
    wake: Notify,
    /// Space offered for replicas (`PSERVER_REPLICA_QUOTA_BYTES`), told
    /// at every Join.
    replica_quota: u64,
    /// Replica FETCH tasks declined, for the next Heartbeats.
    declines: Declines,
    /// Files of ours the directory does not list (its inventory limit).
    not_listed: Mutex<pages::NotListed>,
    /// The central's message limit, as its last Challenge said (0 =
    /// unknown): what our Publish pages fit in.
    message_limit: std::sync::atomic::AtomicU64,
    /// Our reachability: what each Join asks and what its answer said.
    reach: Arc<crate::relay::Reach>,
}

/// Why the link to the centrals cannot be set up (at start).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("PSERVER_CENTRAL_URL lists no central")]
    NoCentral,
    #[error("PSERVER_CENTRAL_URL {url:?} is not a valid URL: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("PSERVER_CENTRAL_URL {url:?}: {source}")]
    Tls {
        url: String,
        source: tonic::transport::Error,
    },
}

/// Where the lease loop sends the replica tasks of each renewed
/// Heartbeat's answer (all the open ones, every time): the replica worker
/// owns the receiving end. Every answer counts (the worker stops a fetch
/// that several answers in a row left out), so this is a queue, not a
/// `watch` of the latest.
pub(crate) type TaskSender = tokio::sync::mpsc::Sender<Vec<v1::ReplicaTask>>;

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
    /// One lazy channel per URL of `urls` (validated by the config: at
    /// least one, no duplicates); the first central used is picked at random.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        urls: &[String],
        peer_id: PeerId,
        key: ed25519_dalek::SigningKey,
        network: Arc<Network>,
        public_url: PeerUrl,
        data_dir: &std::path::Path,
        ca_roots: &[rustls::pki_types::CertificateDer<'static>],
        replica_quota: u64,
        reach: Arc<crate::relay::Reach>,
    ) -> Result<Self, SetupError> {
        if urls.is_empty() {
            return Err(SetupError::NoCentral);
        }
        let links = urls
            .iter()
            .map(|url| {
                Ok(Link {
                    url: url.clone(),
                    client: DirectoryClient::new(channel(url, ca_roots)?),
                    failed_at: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, SetupError>>()?;
        let token_path = data_dir.join("session.token");
        let token = std::fs::read_to_string(&token_path)
            .ok()
            .map(|t| t.trim().to_owned());
        let first = rand::random_range(0..links.len());
        if links.len() > 1 {
            tracing::info!(central = %links[first].url, of = links.len(), "picked a central at random");
        }
        Ok(Self {
            links,
            current: AtomicUsize::new(first),
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
            heard: Mutex::new(Heard::default()),
            outbox: tokio::sync::Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            replica_quota,
            declines: Declines::default(),
            not_listed: Mutex::default(),
            message_limit: Default::default(),
            reach,
        })
    }

    /// Decline a replica FETCH of `file` for `reason`: the next Heartbeat
    /// says so (a newer reason replaces one still waiting).
    pub(crate) fn decline(&self, file: FileId, reason: String) {
        self.declines.push(v1::Declined {
            file_id: file.to_hex(),
            reason,
        });
    }

    /// Decline again a FETCH that came back, unless its decline is still
    /// waiting to be sent.
    pub(crate) fn decline_again(&self, file: FileId, reason: String) {
        self.declines.repeat(v1::Declined {
            file_id: file.to_hex(),
            reason,
        });
    }

    /// The URL of the central we use now.
    pub fn url(&self) -> &str {
        &self.links[self.current.load(Ordering::Acquire)].url
    }

    /// Every central of the list, in the configured order.
    pub fn urls(&self) -> Vec<String> {
        self.links.iter().map(|l| l.url.clone()).collect()
    }

    /// The name the central we use gave in its Join or last Heartbeat
    /// answer.
    pub fn central_name(&self) -> Option<String> {
        self.heard.lock().unwrap().central.clone()
    }

    /// The directory's island (CENTRAL_ISLAND_NAME), as it last said.
    pub fn island(&self) -> Option<String> {
        self.heard.lock().unwrap().island.clone()
    }

    /// The directory's leader, as the Join or last Heartbeat answer named
    /// it.
    pub fn leader(&self) -> Option<String> {
        self.heard.lock().unwrap().leader.clone()
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

    /// Why the last Join or Heartbeat failed, if it did.
    pub fn lease_error(&self) -> Option<String> {
        self.lease_error.lock().unwrap().clone()
    }

    pub fn is_joined(&self) -> bool {
        self.session.lock().unwrap().joined
    }

    /// Whether the last call found a central that answers.
    fn note(&self, up: bool) {
        self.reachable.store(up, Ordering::Relaxed);
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

    /// Join again soon (the lease loop wakes): a peer behind NAT asks
    /// for another relay this way.
    pub(crate) fn rejoin_soon(&self) {
        self.mark_not_joined();
    }

    /// The key a relay checks attach tokens with: the BLAKE3 hash of our
    /// session token, which the directory keeps (see
    /// `peerdex_proto::relay`). `None` while not joined.
    pub(crate) fn session_key(&self) -> Option<[u8; 32]> {
        let s = self.session.lock().unwrap();
        let t = s.token.as_ref().filter(|_| s.joined)?;
        Some(*blake3::hash(t.as_bytes()).as_bytes())
    }

    fn mark_not_joined(&self) {
        self.session.lock().unwrap().joined = false;
        self.wake.notify_one();
    }
}

/// A lazy channel to one central, with the same roots as for peers (the
/// system's plus `PSERVER_CA_FILE`) when it is https://.
fn channel(
    url: &str,
    ca_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Channel, SetupError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| SetupError::Url {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(3))
        .timeout(RPC_TIMEOUT)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config_with_verifier(
                tonic::transport::ClientTlsConfig::new(),
                crate::tls::verifier(ca_roots),
            )
            .map_err(|source| SetupError::Tls {
                url: url.to_owned(),
                source,
            })?;
    }
    Ok(endpoint.connect_lazy())
}
