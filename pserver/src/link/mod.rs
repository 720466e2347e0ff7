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
//! whole inventory.
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
//! which the lease loop hands to the replica worker ([`ReplicaTasks`]).
//! Pin and Pins act for this peer like Publish (our session token).

pub(crate) mod lookup;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use crate::peer::network::Network;

/// Per-call deadline for RPCs to the central.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A central that failed this recently is passed over when we move, unless
/// every central did.
const FAILED_RECENTLY: Duration = Duration::from_secs(5);
/// Publishes and unpublishes kept while no central answers. Beyond it the
/// queue is dropped and we re-join with the whole inventory instead
/// (nothing is lost: the inventory holds every change).
const MAX_QUEUED: usize = 1024;

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

/// One central of the list: its lazy channel and when it last failed us.
struct Link {
    url: String,
    client: DirectoryClient<Channel>,
    failed_at: Mutex<Option<Instant>>,
}

impl Link {
    fn failed_recently(&self) -> bool {
        self.failed_at
            .lock()
            .unwrap()
            .is_some_and(|t| t.elapsed() < FAILED_RECENTLY)
    }
}

/// A change of our inventory on its way to the directory.
/// An inventory change, with its number in the session (`seq`): the
/// directory applies changes only in that order, so one that a paused
/// central delivers late cannot undo a later one.
enum Change {
    Publish(Vec<SharedFile>, u64),
    Unpublish(Vec<(FileId, FileName)>, u64),
}

impl Change {
    fn what(&self) -> &'static str {
        match self {
            Change::Publish(..) => "publish",
            Change::Unpublish(..) => "unpublish",
        }
    }
}

/// What the last Heartbeat answer said about the directory.
#[derive(Debug, Default)]
struct Heard {
    /// The name of the central we talk to (cleared when we move).
    central: Option<String>,
    leader: Option<String>,
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

/// Where the lease loop takes the declines each Heartbeat carries and
/// hands the replica tasks each answer brings (the replica worker, which
/// depends on this module, not the other way round).
pub(crate) trait ReplicaTasks {
    /// Declines for the next Heartbeat (taken: given back if no central
    /// took the call).
    fn take_declined(&self) -> Vec<v1::Declined>;
    fn give_back_declined(&self, declined: Vec<v1::Declined>);
    /// The tasks of a renewed Heartbeat's answer (all the open ones).
    fn tasks(&self, tasks: Vec<v1::ReplicaTask>);
}

/// Our connection to the directory's centrals and the state of our lease.
pub struct Central {
    links: Vec<Link>,
    /// Index in `links` of the central we use.
    current: AtomicUsize,
    /// The URL of the central whose answer was the last failure (for
    /// [`Central::explain`]).
    last_failed: Mutex<Option<String>>,
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
}

/// A failure that says nothing about our request: the central did not
/// answer (or a proxy in between said so).
fn unreachable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// A failure after which we try another central: it did not answer, or it
/// is overloaded.
fn worth_moving(s: &Status) -> bool {
    unreachable(s) || s.code() == Code::ResourceExhausted
}

/// A Heartbeat refused for coming too soon after the last one taken (the
/// directory takes one per half interval): how long it says to wait
/// (its `retry-after`, whole seconds, at most 30 s).
fn paced(s: &Status) -> Option<Duration> {
    if s.code() != Code::ResourceExhausted {
        return None;
    }
    let secs: u64 = s
        .metadata()
        .get("retry-after")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.clamp(1, 30)))
}

/// How long the Revocations stream waits before it is opened again, at
/// most.
const MAX_STREAM_BACKOFF: Duration = Duration::from_secs(2);

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
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!urls.is_empty(), "PSERVER_CENTRAL_URL lists no central");
        let links = urls
            .iter()
            .map(|url| {
                Ok(Link {
                    url: url.clone(),
                    client: DirectoryClient::new(channel(url, ca_roots)?),
                    failed_at: Mutex::new(None),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
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
            last_failed: Mutex::new(None),
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
        })
    }

    /// The URL of the central we use now.
    pub fn url(&self) -> &str {
        &self.links[self.current.load(Ordering::Acquire)].url
    }

    /// Every central of the list, in the configured order.
    pub fn urls(&self) -> Vec<String> {
        self.links.iter().map(|l| l.url.clone()).collect()
    }

    /// The name the central we use gave in its last Heartbeat answer.
    pub fn central_name(&self) -> Option<String> {
        self.heard.lock().unwrap().central.clone()
    }

    /// The directory's leader, as the last Heartbeat answer named it.
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

    /// Fetch the keys that sign this network's credentials.
    pub async fn refresh_keys(&self) -> Result<(), Status> {
        let (_, r) = self
            .call("network keys", |mut c| async move {
                c.network_keys(v1::NetworkKeysRequest {}).await
            })
            .await?;
        self.network.set_keys(&r.into_inner().keys);
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
            Err(s) => !unreachable(s),
        };
        self.reachable.store(up, Ordering::Relaxed);
    }

    /// A failed call's status in plain words: what went wrong with TLS
    /// (or plaintext meeting TLS) when that is the cause, else its message.
    pub fn explain(&self, s: &Status) -> String {
        let url = self
            .last_failed
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| self.url().to_owned());
        crate::tls::explain(s, "the central", &url).unwrap_or_else(|| s.message().to_owned())
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

    /// Run `f` against the central we use; when that one fails in a way
    /// worth moving for (see [`worth_moving`]), move to the next and run
    /// `f` there at once, until one answers or every central not failed
    /// lately was tried. Only for calls that are safe to repeat. Returns
    /// the index of the central that answered with its answer.
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<(usize, T), Status>
    where
        F: Fn(DirectoryClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tried = 0u64;
        let mut i = self.current.load(Ordering::Acquire);
        loop {
            tried |= 1 << i;
            let r = f(self.links[i].client.clone()).await;
            self.note(&r);
            let s = match r {
                Ok(v) => {
                    *self.links[i].failed_at.lock().unwrap() = None;
                    return Ok((i, v));
                }
                Err(s) => s,
            };
            if !worth_moving(&s) {
                return Err(s);
            }
            *self.last_failed.lock().unwrap() = Some(self.links[i].url.clone());
            let why = format!("{what}: {:?}: {}", s.code(), self.explain(&s));
            let next = self.move_from(i, &why);
            // Within one call, every central is tried once before the call
            // fails: one that failed lately (restarted since, in a rolling
            // restart) comes last, but it comes.
            let n = self.links.len();
            let untried = |j: &usize| tried & (1 << j) == 0;
            i = match Some(next).filter(untried).or_else(|| {
                let order = (1..n).map(|k| (i + k) % n);
                let fresh = order
                    .clone()
                    .filter(untried)
                    .find(|&j| !self.links[j].failed_recently());
                fresh.or_else(|| order.clone().find(untried))
            }) {
                Some(j) => j,
                None => return Err(s),
            };
        }
    }

    /// Central `i` failed us or is going away: mark it, and unless another
    /// call moved already, move to the next one in list order that did not
    /// fail lately (or simply the next, if all did). Returns the central
    /// to use now.
    fn move_from(&self, i: usize, why: &str) -> usize {
        *self.links[i].failed_at.lock().unwrap() = Some(Instant::now());
        let n = self.links.len();
        let next = (1..n)
            .map(|k| (i + k) % n)
            .find(|&j| !self.links[j].failed_recently())
            .unwrap_or((i + 1) % n);
        if next == i {
            return i;
        }
        match self
            .current
            .compare_exchange(i, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                tracing::info!(from = %self.links[i].url, to = %self.links[next].url, reason = %why,
                    "moving to another central");
                self.heard.lock().unwrap().central = None;
                next
            }
            Err(now) => now,
        }
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

    /// Join with the full inventory, proving our key over a fresh nonce
    /// from the same central.
    pub async fn join(&self, inventory: &[SharedFile], load: Load) -> Result<(), Status> {
        let files: Vec<v1::SharedFile> = inventory.iter().map(Into::into).collect();
        let (at, r) = self
            .call("join", |mut c| {
                let files = files.clone();
                async move {
                    let nonce = c
                        .challenge(v1::ChallengeRequest {
                            peer_id: self.peer_id.to_string(),
                        })
                        .await?
                        .into_inner()
                        .nonce;
                    let mut msg = v1::JoinRequest {
                        peer_id: self.peer_id.to_string(),
                        peer_url: self.public_url.to_string(),
                        files,
                        load: Some(load.into()),
                        replica_quota_bytes: self.replica_quota,
                        ..Default::default()
                    };
                    msg.secret_proof = self.network.secret_proof(&nonce, &msg.peer_id);
                    peerdex_proto::identity::prove(&mut msg, &self.key, nonce);
                    c.join(self.authed(msg)).await
                }
            })
            .await?;
        let answer = r.into_inner();
        log_refused("join", &answer.refused);
        self.network.set_credential(&answer.credential);
        self.network.note_revoked_list(&answer.revoked);
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
        s.seq = 0;
        s.last_renewal = Some(Instant::now());
        s.interval = Some(Duration::from_secs(
            answer.heartbeat_interval_secs.max(1) as u64
        ));
        drop(s);
        tracing::debug!(central = %self.links[at].url, "joined");
        Ok(())
    }

    /// Renew the lease (at the central we use, or the next that answers),
    /// telling the directory which replica FETCH tasks we `declined`.
    pub async fn heartbeat(&self, load: Load, declined: &[v1::Declined]) -> Result<Beat, Status> {
        let (at, r) = self
            .call("heartbeat", |mut c| async move {
                let req = self.authed(v1::HeartbeatRequest {
                    peer_id: self.peer_id.to_string(),
                    load: Some(load.into()),
                    declined: declined.to_vec(),
                });
                c.heartbeat(req).await
            })
            .await?;
        let answer = r.into_inner();
        self.network.set_credential(&answer.credential);
        self.network.note_revoked_list(&answer.revoked);
        {
            let mut h = self.heard.lock().unwrap();
            h.central = (!answer.central.is_empty()).then(|| answer.central.clone());
            h.leader = (!answer.leader.is_empty()).then(|| answer.leader.clone());
        }
        let mut s = self.session.lock().unwrap();
        if answer.rejoin {
            s.joined = false;
            return Ok(Beat::Rejoin);
        }
        s.last_renewal = Some(Instant::now());
        if answer.heartbeat_interval_secs > 0 {
            s.interval = Some(Duration::from_secs(answer.heartbeat_interval_secs as u64));
        }
        drop(s);
        let mut moved = false;
        if answer.moved {
            let now = self.move_from(at, "it is shutting down (its heartbeat answer says moved)");
            // Hurry only to a central that did not fail lately: when every
            // one is going away, keep the normal pace.
            moved = now != at && !self.links[now].failed_recently();
        }
        Ok(Beat::Renewed {
            moved,
            tasks: answer.replica_tasks,
        })
    }

    /// Ask the directory to keep `replicas` live copies of `id` (0 or 1:
    /// stop asking). Our pin: it counts against our limits.
    pub async fn pin(&self, id: FileId, replicas: u32) -> Result<v1::PinStatus, Status> {
        let (_, r) = self
            .call("pin", |mut c| async move {
                let req = self.authed(v1::PinRequest {
                    peer_id: self.peer_id.to_string(),
                    file_id: id.to_hex(),
                    replicas,
                });
                c.pin(req).await
            })
            .await?;
        r.into_inner()
            .pin
            .ok_or_else(|| Status::internal("the central answered a pin without its status"))
    }

    /// The pins this peer set, with their state.
    pub async fn pins(&self) -> Result<Vec<v1::PinStatus>, Status> {
        let (_, r) = self
            .call("pins", |mut c| async move {
                let req = self.authed(v1::PinsRequest {
                    peer_id: self.peer_id.to_string(),
                });
                c.pins(req).await
            })
            .await?;
        Ok(r.into_inner().pins)
    }

    /// Announce new files. Skipped while not joined: the next Join carries them.
    pub async fn publish(&self, files: &[SharedFile]) {
        if !files.is_empty() {
            let files = files.to_vec();
            self.change(|seq| Change::Publish(files, seq)).await;
        }
    }

    /// Withdraw files. Skipped while not joined.
    pub async fn unpublish(&self, files: &[(FileId, FileName)]) {
        if !files.is_empty() {
            let files = files.to_vec();
            self.change(|seq| Change::Unpublish(files, seq)).await;
        }
    }

    /// Put `change` in line behind the changes still waiting, then deliver
    /// them in order (see the module doc).
    async fn change(&self, change: impl FnOnce(u64) -> Change) {
        let mut queue = self.outbox.lock().await;
        if self.skipped_while_not_joined() {
            queue.clear();
            return;
        }
        let change = change({
            let mut s = self.session.lock().unwrap();
            s.seq += 1;
            s.seq
        });
        let waiting = !queue.is_empty();
        queue.push_back(change);
        if queue.len() > MAX_QUEUED {
            tracing::warn!(
                queued = queue.len(),
                "too many publishes and unpublishes are waiting for a central; \
                 the next Join will carry the whole inventory instead"
            );
            queue.clear();
            self.mark_not_joined();
            return;
        }
        if waiting && self.links.iter().all(Link::failed_recently) {
            // No central answered a moment ago: the lease loop delivers
            // the queue once one does.
            return;
        }
        let _ = self.deliver(&mut queue).await;
    }

    /// Send the queued changes in order. One that no central takes because
    /// none answers stays first in line (`Err`); any other refusal means
    /// re-join with the whole inventory, which supersedes the queue.
    async fn deliver(&self, queue: &mut VecDeque<Change>) -> Result<(), Status> {
        while let Some(change) = queue.front() {
            let r = self.send(change).await;
            match r {
                Ok(()) => {
                    queue.pop_front();
                }
                Err(s) if s.code() == Code::Aborted => {
                    // A later change of ours is applied already: this one
                    // reached the directory before (its answer was lost).
                    tracing::info!(call = change.what(), status = %s.message(),
                        "the directory has a later change of ours; this one is done");
                    queue.pop_front();
                }
                Err(s) if unreachable(&s) => {
                    tracing::warn!(call = change.what(), code = ?s.code(), status = %self.explain(&s), queued = queue.len(),
                        "no central takes our inventory changes; keeping them in order until one answers");
                    return Err(s);
                }
                Err(s) => {
                    self.after_inventory_call(change.what(), &s);
                    queue.clear();
                    return Err(s);
                }
            }
        }
        Ok(())
    }

    async fn send(&self, change: &Change) -> Result<(), Status> {
        match change {
            Change::Publish(files, seq) => {
                let files: Vec<v1::SharedFile> = files.iter().map(Into::into).collect();
                let (_, r) = self
                    .call("publish", |mut c| {
                        let req = self.authed(v1::PublishRequest {
                            peer_id: self.peer_id.to_string(),
                            files: files.clone(),
                            seq: *seq,
                        });
                        async move { c.publish(req).await }
                    })
                    .await?;
                log_refused("publish", &r.get_ref().refused);
            }
            Change::Unpublish(files, seq) => {
                let files: Vec<v1::FileRef> = files
                    .iter()
                    .map(|(id, name)| v1::FileRef {
                        file_id: id.to_hex(),
                        name: name.to_string(),
                    })
                    .collect();
                self.call("unpublish", |mut c| {
                    let req = self.authed(v1::UnpublishRequest {
                        peer_id: self.peer_id.to_string(),
                        files: files.clone(),
                        seq: *seq,
                    });
                    async move { c.unpublish(req).await }
                })
                .await?;
            }
        }
        Ok(())
    }

    /// The lease loop heard from a central: deliver what waits, first.
    /// If even that fails, fall back to a Join with the whole inventory.
    async fn deliver_waiting(&self) {
        // A caller holding the outbox is delivering it already.
        let Ok(mut queue) = self.outbox.try_lock() else {
            return;
        };
        if queue.is_empty() {
            return;
        }
        let n = queue.len();
        match self.deliver(&mut queue).await {
            Ok(()) => {
                tracing::info!(
                    changes = n,
                    central = %self.url(),
                    "delivered the inventory changes kept while no central answered"
                )
            }
            Err(s) if unreachable(&s) => {
                tracing::info!(
                    "the waiting inventory changes still find no central; joining again with the whole inventory"
                );
                queue.clear();
                self.mark_not_joined();
            }
            Err(_) => {}
        }
    }

    fn after_inventory_call(&self, what: &str, s: &Status) {
        if matches!(
            s.code(),
            Code::FailedPrecondition | Code::Unauthenticated | Code::NotFound
        ) {
            tracing::info!(call = what, status = %s.message(), "central does not know us; re-joining");
        } else {
            // Refused: re-join later with the full inventory.
            tracing::warn!(call = what, code = ?s.code(), status = %self.explain(s), "central call failed; will re-join");
        }
        self.mark_not_joined();
    }

    /// Tell the directory we are gone (at the central we use, or the next
    /// that answers).
    pub async fn leave(&self) {
        if !self.is_joined() {
            return;
        }
        let call = self.call("leave", |mut c| async move {
            let req = self.authed(v1::LeaveRequest {
                peer_id: self.peer_id.to_string(),
            });
            c.leave(req).await
        });
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
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
        let (_, r) = self
            .call("locate", |mut c| {
                let target = target.clone();
                async move {
                    c.locate(v1::LocateRequest {
                        target: Some(target),
                        max_holders: 0,
                    })
                    .await
                }
            })
            .await?;
        Ok(r.into_inner().files)
    }

    pub async fn search(
        &self,
        query: &str,
        limit: u32,
        page_token: &str,
    ) -> Result<v1::SearchResponse, Status> {
        let (_, r) = self
            .call("search", |mut c| async move {
                c.search(v1::SearchRequest {
                    query: query.to_owned(),
                    limit,
                    page_token: page_token.to_owned(),
                })
                .await
            })
            .await?;
        Ok(r.into_inner())
    }

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
                                    tracing::debug!(code = ?s.code(), status = %s.message(), "revocations: the stream failed; reopening");
                                    break;
                                }
                            }
                        }
                    }
                    Err(s) if s.code() == Code::Unimplemented => {
                        // An older directory: heartbeat answers carry the
                        // list (later, but they do).
                        tracing::info!(
                            "the central has no Revocations stream (older version); departures arrive with heartbeats"
                        );
                        backoff = MAX_BACKOFF;
                    }
                    Err(s) => {
                        tracing::debug!(code = ?s.code(), status = %s.message(), retry_in = ?backoff, "revocations: cannot open the stream");
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

    /// Keep the lease: join (with the full inventory from `inventory`), then
    /// heartbeat at the interval the central advises; re-join when asked;
    /// back off while no central answers. Returns when cancelled.
    ///
    /// Replica tasks: each Heartbeat carries what `replicas` declined since
    /// the last one (given back to it when no central took the call), and
    /// each answer's tasks go to `replicas`.
    pub(crate) async fn lease_loop(
        &self,
        inventory: impl Fn() -> Vec<SharedFile>,
        load: impl Fn() -> Load,
        replicas: impl ReplicaTasks,
        metrics: Metrics,
        cancel: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let wait = if self.is_joined() {
                let declined = replicas.take_declined();
                let answer = self.heartbeat(load(), &declined).await;
                self.set_lease_error(&answer);
                metrics.renewal(match &answer {
                    Ok(Beat::Renewed { .. }) => Renewal::Ok,
                    Ok(Beat::Rejoin) => Renewal::Rejoin,
                    Err(s) if s.code() == Code::Unauthenticated => Renewal::Rejoin,
                    Err(_) => Renewal::Error,
                });
                if !matches!(answer, Ok(Beat::Renewed { .. })) {
                    replicas.give_back_declined(declined);
                }
                match answer {
                    Ok(Beat::Renewed { moved, tasks }) => {
                        backoff = Duration::from_millis(250);
                        replicas.tasks(tasks);
                        self.deliver_waiting().await;
                        if moved {
                            // The next heartbeat goes to the new central now.
                            Duration::ZERO
                        } else {
                            self.session
                                .lock()
                                .unwrap()
                                .interval
                                .unwrap_or(Duration::from_secs(10))
                        }
                    }
                    Ok(Beat::Rejoin) => {
                        tracing::info!(central = %self.url(), "central asked us to join again");
                        Duration::ZERO
                    }
                    Err(s) if s.code() == Code::Unauthenticated => {
                        tracing::warn!(status = %s.message(), "heartbeat refused; re-joining");
                        self.mark_not_joined();
                        Duration::ZERO
                    }
                    Err(s) if paced(&s).is_some() => {
                        // Heard too soon (a retry after an answer we did
                        // not get): the lease is live; come back when told.
                        let wait = paced(&s).unwrap_or(Duration::from_secs(1));
                        tracing::debug!(status = %s.message(), retry_in = ?wait, "heartbeat paced by the central");
                        wait
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
                let inv = {
                    // The Join's snapshot of the inventory supersedes every
                    // change still waiting.
                    let mut queue = self.outbox.lock().await;
                    queue.clear();
                    self.session.lock().unwrap().inventory_changed = false;
                    inventory()
                };
                let joined = self.join(&inv, load()).await;
                self.set_lease_error(&joined);
                match joined {
                    Ok(()) => {
                        tracing::info!(files = inv.len(), central = %self.url(), "joined the central directory");
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

/// A lazy channel to one central, with the same roots as for peers (the
/// system's plus `PSERVER_CA_FILE`) when it is https://.
fn channel(
    url: &str,
    ca_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| anyhow::anyhow!("PSERVER_CENTRAL_URL {url:?} is not a valid URL: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(RPC_TIMEOUT)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config_with_verifier(
                tonic::transport::ClientTlsConfig::new(),
                crate::tls::verifier(ca_roots),
            )
            .map_err(|e| anyhow::anyhow!("PSERVER_CENTRAL_URL {url:?}: {e}"))?;
    }
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Central` over `n` centrals (lazy channels: nothing connects),
    /// using the first.
    fn centrals(n: usize, dir: &std::path::Path) -> Central {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect();
        let c = Central::new(
            &urls,
            PeerId::new_random(),
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
            Arc::new(Network::new(None)),
            "http://127.0.0.1:9".parse().unwrap(),
            dir,
            &[],
            0,
        )
        .unwrap();
        c.current.store(0, Ordering::Release);
        c
    }

    #[tokio::test]
    async fn moves_in_list_order_past_the_centrals_that_failed_lately() {
        let dir = tempfile::tempdir().unwrap();
        let c = centrals(4, dir.path());
        // 0 fails: the next in order.
        assert_eq!(c.move_from(0, "test"), 1);
        assert_eq!(c.url(), "http://127.0.0.1:2");
        // 1 fails: 2 is next (0 failed lately).
        assert_eq!(c.move_from(1, "test"), 2);
        // 3 failed a moment ago too: when 2 fails, every central failed
        // lately, so simply the next one, 3.
        *c.links[3].failed_at.lock().unwrap() = Some(Instant::now());
        assert_eq!(c.move_from(2, "test"), 3);
        // A call that saw 1 fail after another call moved on to 3 does
        // not move us again.
        assert_eq!(c.move_from(1, "test"), 3);
        assert_eq!(c.url(), "http://127.0.0.1:4");
        // Failures are forgotten after a while: from 3 to 0 again.
        for l in &c.links {
            *l.failed_at.lock().unwrap() = Some(Instant::now() - FAILED_RECENTLY);
        }
        assert_eq!(c.move_from(3, "test"), 0);
        // A single central has nowhere to go.
        let one = centrals(1, dir.path());
        assert_eq!(one.move_from(0, "test"), 0);
        assert_eq!(one.urls(), ["http://127.0.0.1:1"]);
    }

    #[test]
    fn what_is_worth_moving_for() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unknown,
            Code::ResourceExhausted,
        ] {
            assert!(worth_moving(&Status::new(code, "x")), "{code:?}");
        }
        // Only a central that did not answer keeps a change in the queue.
        assert!(!unreachable(&Status::resource_exhausted("x")));
        for code in [
            Code::FailedPrecondition,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::NotFound,
        ] {
            assert!(!worth_moving(&Status::new(code, "x")), "{code:?}");
        }
    }
}
