//! The gRPC service: parses requests at the edge, authorizes, writes SQLite,
//! then updates the in-memory index.
//!
//! A Join or Publish is applied entry by entry: an entry that cannot be
//! taken (a malformed id or name, or a size that contradicts the peer's own
//! claim for the same id) is listed in the answer's `refused` with the
//! reason, and the rest of the inventory is applied. Only what concerns the
//! whole call (authentication, the peer id or URL, the entry-count limits)
//! fails it.
//!
//! All mutations run on the blocking pool and are serialized by the store
//! mutex: under it the service checks the request against the index, commits
//! the transaction, then applies the same change to the index. Memory and
//! disk therefore change in the same order, and an RPC is acknowledged only
//! after its commit. Reads (Locate, Search, Heartbeat) take only the index
//! mutex, for a short critical section.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use peerdex_proto::convert::SharedFile;
use peerdex_proto::v1::{self, directory_server::Directory};
use peerdex_proto::{AUTHORIZATION, FileId, FileName, PeerId, PeerUrl};
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::config::{Config, Limits};
use crate::error::{Error, Result};
use crate::index::{Cursor, Index, Lease, Load, SizeConflict, TokenHash, words};
use crate::store::{Store, Withdrawal};

/// Longest accepted search query, in bytes.
pub const MAX_QUERY_BYTES: usize = 1024;
/// Most words accepted in a search query.
pub const MAX_QUERY_WORDS: usize = 16;
/// Results per search page when the request says 0.
pub const DEFAULT_PAGE: usize = 50;

struct Shared {
    index: Mutex<Index>,
    /// `None` once closed at shutdown.
    store: Mutex<Option<Store>>,
    lease_ttl: Duration,
    heartbeat_interval: Duration,
    limits: Limits,
}

/// Implements `peerdex.v1.Directory`. Cheap to clone.
#[derive(Clone)]
pub struct DirectoryService {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl DirectoryService {
    pub(crate) fn new(store: Store, index: Index, config: &Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                index: Mutex::new(index),
                store: Mutex::new(Some(store)),
                lease_ttl: config.lease_ttl,
                heartbeat_interval: config.heartbeat_interval,
                limits: config.limits.clone(),
            }),
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.shared.index)
    }

    /// Run a mutation on the blocking pool under the store lock.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&IndexGate<'_>, &mut Store) -> Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = lock(&shared.store);
            let store = store.as_mut().ok_or(Error::Closed)?;
            // `f` takes the index lock in short pieces (check, then apply),
            // never across the commit.
            f(&IndexGate(&shared.index), store)
        })
        .await?
    }

    /// Close the database (after the server stopped).
    pub(crate) async fn close(&self) -> Result<()> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || match lock(&shared.store).take() {
            Some(s) => s.close(),
            None => Ok(()),
        })
        .await?
    }

    /// Remove every peer whose lease has ended (memory and disk).
    pub(crate) async fn sweep(&self, now: Instant) -> Result<usize> {
        if self.index().expired(now).is_empty() {
            return Ok(0);
        }
        self.write(move |gate, store| {
            let expired = gate.lock().expired(now);
            if !expired.is_empty() {
                store.remove_peers(&expired)?;
                let mut ix = gate.lock();
                for p in &expired {
                    ix.remove_peer(p);
                }
            }
            Ok(expired.len())
        })
        .await
    }

    /// Sweep expired leases until `cancel` fires.
    pub(crate) async fn sweep_loop(self, cancel: CancellationToken) {
        let period =
            (self.shared.lease_ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sweep(Instant::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(peers = n, "expired leases removed"),
                Err(e) => tracing::warn!(error = %e, "lease sweep failed; will retry"),
            }
        }
    }

    pub(crate) fn stats(&self) -> crate::index::Stats {
        self.index().stats()
    }

    /// Parse a Join/Publish inventory; malformed entries are refused one by
    /// one. Only too many entries fails the call.
    fn parse_files(&self, files: Vec<v1::SharedFile>) -> Result<Inventory> {
        let max = self.shared.limits.max_inventory;
        if files.len() > max {
            return Err(Error::LimitExceeded(format!(
                "files: {} entries exceed the limit of {max} per request (max_inventory)",
                files.len()
            )));
        }
        let mut inv = Inventory {
            total: files.len(),
            ..Inventory::default()
        };
        for (i, f) in files.into_iter().enumerate() {
            let parsed = self
                .check_name_len(&f.name, &format!("files[{i}].name"))
                .and_then(|()| {
                    SharedFile::try_from(&f)
                        .map_err(|e| Error::InvalidArgument(format!("files[{i}].{e}")))
                });
            match parsed {
                Ok(sf) => {
                    inv.positions.push(i);
                    inv.files.push(sf);
                }
                Err(e) => inv.refused.push((
                    i,
                    v1::Refused {
                        file_id: f.file_id,
                        name: f.name,
                        reason: e.to_string(),
                    },
                )),
            }
        }
        Ok(inv)
    }

    fn check_name_len(&self, name: &str, field: &str) -> Result<()> {
        let max = self.shared.limits.max_name_bytes;
        if name.len() > max {
            return Err(Error::InvalidArgument(format!(
                "{field}: {} bytes exceed the limit of {max} bytes (max_name_bytes)",
                name.len()
            )));
        }
        Ok(())
    }

    fn expires(&self, now: Instant) -> Instant {
        now + self.shared.lease_ttl
    }
}

/// A Join/Publish inventory on its way in: the well-formed entries (with
/// their positions in the request) and the refused ones.
#[derive(Default)]
struct Inventory {
    /// Entries in the request.
    total: usize,
    files: Vec<SharedFile>,
    /// `positions[k]` is the request position of `files[k]`.
    positions: Vec<usize>,
    refused: Vec<(usize, v1::Refused)>,
}

impl Inventory {
    /// Move the entries that contradict the peer's own size claims (see
    /// [`Index::size_conflicts`]) to `refused`; return what is left to
    /// apply and the refusals in request order. A list of refusals too big
    /// to answer (over `budget` bytes encoded) fails the call instead,
    /// before anything is applied.
    fn screen(
        mut self,
        ix: &Index,
        peer: &PeerId,
        replace: bool,
        budget: usize,
    ) -> Result<(Vec<SharedFile>, Vec<v1::Refused>)> {
        let conflicts = ix.size_conflicts(peer, &self.files, replace);
        let mut refused_at = vec![false; self.files.len()];
        for SizeConflict {
            index,
            claimed,
            size,
        } in conflicts
        {
            refused_at[index] = true;
            let f = &self.files[index];
            let i = self.positions[index];
            self.refused.push((
                i,
                v1::Refused {
                    file_id: f.id.to_hex(),
                    name: f.name.to_string(),
                    reason: format!(
                        "files[{i}]: this peer already lists file id {} with size {claimed}; size {size} refused (one size per file per peer)",
                        f.id
                    ),
                },
            ));
        }
        self.refused.sort_by_key(|&(i, _)| i);
        let encoded: usize = self.refused.iter().map(|(_, r)| r.encoded_len() + 4).sum();
        if encoded > budget {
            return Err(Error::InvalidArgument(format!(
                "files: {} of {} entries are refused, too many to list in one answer ({encoded} bytes, over half of max_message_bytes); the first: {}",
                self.refused.len(),
                self.total,
                self.refused[0].1.reason
            )));
        }
        let accepted = self
            .files
            .into_iter()
            .zip(refused_at)
            .filter(|(_, refused)| !refused)
            .map(|(f, _)| f)
            .collect();
        Ok((accepted, self.refused.into_iter().map(|(_, r)| r).collect()))
    }
}

fn log_refused(peer: &PeerId, refused: &[v1::Refused]) {
    if let Some(first) = refused.first() {
        tracing::info!(%peer, refused = refused.len(), first = %first.reason, "inventory entries refused");
    }
}

/// Access to the index mutex inside a mutation, which already holds the
/// store mutex: the lock order is always store → index.
pub(crate) struct IndexGate<'a>(&'a Mutex<Index>);
impl IndexGate<'_> {
    fn lock(&self) -> MutexGuard<'_, Index> {
        lock(self.0)
    }
}

fn parse_peer(s: &str) -> Result<PeerId> {
    s.parse()
        .map_err(|e| Error::InvalidArgument(format!("peer_id: {e}")))
}

/// The BLAKE3 hash of the bearer token in the metadata.
fn bearer(meta: &MetadataMap) -> Result<TokenHash> {
    let missing = || {
        Error::Unauthenticated(format!(
            "missing or malformed `{AUTHORIZATION}` metadata: expected `Bearer <session token from Join>`"
        ))
    };
    let value = meta
        .get(AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let token = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)?;
    Ok(*blake3::hash(token.as_bytes()).as_bytes())
}

/// A live peer proving it is itself: unknown/expired → join again, wrong
/// token → UNAUTHENTICATED.
fn authorize(ix: &Index, peer: &PeerId, token: &TokenHash, now: Instant) -> Result<()> {
    match ix.lease(peer, now) {
        Lease::Unknown | Lease::Expired => Err(Error::NotJoined(*peer)),
        Lease::Live if ix.token_matches(peer, token) => Ok(()),
        Lease::Live => Err(Error::Unauthenticated(format!(
            "session token does not match peer {peer}"
        ))),
    }
}

#[tonic::async_trait]
impl Directory for DirectoryService {
    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let token = bearer(req.metadata()).ok();
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let url: PeerUrl = r
            .peer_url
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("peer_url: {e}")))?;
        let inventory = self.parse_files(r.files)?;
        let load = Load::from(r.load);
        let now = Instant::now();
        let expires = self.expires(now);
        let session_token = hex::encode(rand::random::<[u8; 32]>());
        let hash = *blake3::hash(session_token.as_bytes()).as_bytes();
        let budget = self.shared.limits.max_message_bytes / 2;
        let (count, refused) = self
            .write(move |gate, store| {
                let (files, refused) = {
                    let ix = gate.lock();
                    if ix.lease(&peer, now) == Lease::Live
                        && !token.is_some_and(|t| ix.token_matches(&peer, &t))
                    {
                        return Err(Error::Unauthenticated(format!(
                            "peer {peer} has a live lease: a re-join must carry its current session token"
                        )));
                    }
                    inventory.screen(&ix, &peer, true, budget)?
                };
                store.join(&peer, &url, &hash, &files)?;
                gate.lock().join(peer, url, hash, load, expires, &files);
                Ok((files.len(), refused))
            })
            .await?;
        tracing::info!(%peer, files = count, refused = refused.len(), "peer joined");
        log_refused(&peer, &refused);
        Ok(Response::new(v1::JoinResponse {
            session_token,
            lease_ttl_secs: secs(self.shared.lease_ttl),
            heartbeat_interval_secs: secs(self.shared.heartbeat_interval),
            refused,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let load = r.load.map(|l| Load::from(Some(l)));
        let now = Instant::now();
        let rejoin = {
            let mut ix = self.index();
            match authorize(&ix, &peer, &token, now) {
                Ok(()) => !ix.renew(&peer, load, self.expires(now), now),
                Err(Error::NotJoined(_)) => true,
                Err(e) => return Err(e.into()),
            }
        };
        if rejoin {
            tracing::debug!(%peer, "heartbeat from unknown or expired peer: asked to rejoin");
        }
        Ok(Response::new(v1::HeartbeatResponse {
            rejoin,
            lease_ttl_secs: secs(self.shared.lease_ttl),
            heartbeat_interval_secs: secs(self.shared.heartbeat_interval),
        }))
    }

    async fn publish(
        &self,
        req: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let inventory = self.parse_files(r.files)?;
        let now = Instant::now();
        let expires = self.expires(now);
        let max = self.shared.limits.max_inventory;
        let budget = self.shared.limits.max_message_bytes / 2;
        let refused = self
            .write(move |gate, store| {
                let (files, refused) = {
                    let ix = gate.lock();
                    authorize(&ix, &peer, &token, now)?;
                    let (files, refused) = inventory.screen(&ix, &peer, false, budget)?;
                    let total = ix.inventory_len(&peer) + files.len();
                    if total > max {
                        return Err(Error::LimitExceeded(format!(
                            "files: the inventory of peer {peer} would reach {total} entries, over the limit of {max} (max_inventory)"
                        )));
                    }
                    (files, refused)
                };
                store.publish(&peer, &files)?;
                let mut ix = gate.lock();
                ix.publish(&peer, &files);
                ix.renew(&peer, None, expires, now);
                Ok(refused)
            })
            .await?;
        log_refused(&peer, &refused);
        Ok(Response::new(v1::PublishResponse { refused }))
    }

    async fn unpublish(
        &self,
        req: Request<v1::UnpublishRequest>,
    ) -> Result<Response<v1::UnpublishResponse>, Status> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let max = self.shared.limits.max_inventory;
        if r.files.len() > max {
            return Err(Error::LimitExceeded(format!(
                "files: {} entries exceed the limit of {max} per request (max_inventory)",
                r.files.len()
            ))
            .into());
        }
        let refs: Vec<Withdrawal> = r
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let id: FileId = f
                    .file_id
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("files[{i}].file_id: {e}")))?;
                let name = if f.name.is_empty() {
                    None
                } else {
                    self.check_name_len(&f.name, &format!("files[{i}].name"))?;
                    let n: FileName = f
                        .name
                        .parse()
                        .map_err(|e| Error::InvalidArgument(format!("files[{i}].name: {e}")))?;
                    Some(n.into_string())
                };
                Ok((id, name))
            })
            .collect::<Result<_>>()?;
        let now = Instant::now();
        let expires = self.expires(now);
        self.write(move |gate, store| {
            authorize(&gate.lock(), &peer, &token, now)?;
            store.unpublish(&peer, &refs)?;
            let mut ix = gate.lock();
            ix.unpublish(&peer, &refs);
            ix.renew(&peer, None, expires, now);
            Ok(())
        })
        .await?;
        Ok(Response::new(v1::UnpublishResponse {}))
    }

    async fn locate(
        &self,
        req: Request<v1::LocateRequest>,
    ) -> Result<Response<v1::LocateResponse>, Status> {
        use v1::locate_request::Target;
        let r = req.into_inner();
        let limits = &self.shared.limits;
        let max_holders = match r.max_holders as usize {
            0 => limits.max_holders,
            n => n.min(limits.max_holders),
        };
        let now = Instant::now();
        let files = match r.target {
            Some(Target::FileId(s)) => {
                let id: FileId = s
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("file_id: {e}")))?;
                self.index()
                    .locate_id(&id, now, max_holders)
                    .into_iter()
                    .collect()
            }
            Some(Target::Name(s)) => {
                self.check_name_len(&s, "name")?;
                let name: FileName = s
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("name: {e}")))?;
                let mut found =
                    self.index()
                        .locate_name(name.as_str(), now, max_holders, limits.max_page);
                // Keep the answer under the message limit (a content can
                // carry many names).
                let budget = limits.max_message_bytes / 2;
                let mut used = 0;
                let keep = found
                    .iter()
                    .take_while(|f| {
                        used += f.encoded_len() + 8;
                        used <= budget
                    })
                    .count()
                    .max(1);
                found.truncate(keep);
                found
            }
            None => {
                return Err(Status::invalid_argument(
                    "target: file_id or name is required",
                ));
            }
        };
        Ok(Response::new(v1::LocateResponse { files }))
    }

    async fn search(
        &self,
        req: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        let r = req.into_inner();
        let limits = &self.shared.limits;
        if r.query.len() > MAX_QUERY_BYTES {
            return Err(Status::invalid_argument(format!(
                "query: {} bytes exceed the limit of {MAX_QUERY_BYTES} bytes",
                r.query.len()
            )));
        }
        let mut query: Vec<String> = words(&r.query).collect();
        query.sort_unstable();
        query.dedup();
        if query.is_empty() {
            return Err(Status::invalid_argument(
                "query: no words (letters or digits) to search for",
            ));
        }
        if query.len() > MAX_QUERY_WORDS {
            return Err(Status::invalid_argument(format!(
                "query: {} words exceed the limit of {MAX_QUERY_WORDS}",
                query.len()
            )));
        }
        let limit = match r.limit as usize {
            0 => DEFAULT_PAGE.min(limits.max_page),
            n => n.min(limits.max_page),
        };
        let cursor = if r.page_token.is_empty() {
            None
        } else {
            Some(Cursor::decode(&r.page_token).ok_or_else(|| {
                Status::invalid_argument("page_token: not a token from a previous search answer")
            })?)
        };
        let page = self.index().search(
            &query,
            cursor.as_ref(),
            limit,
            Instant::now(),
            limits.max_search_matches,
        );
        Ok(Response::new(v1::SearchResponse {
            hits: page.hits,
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn leave(
        &self,
        req: Request<v1::LeaveRequest>,
    ) -> Result<Response<v1::LeaveResponse>, Status> {
        let token = bearer(req.metadata())?;
        let peer = parse_peer(&req.into_inner().peer_id)?;
        let now = Instant::now();
        let left = self
            .write(move |gate, store| {
                {
                    let ix = gate.lock();
                    if ix.lease(&peer, now) == Lease::Unknown {
                        return Ok(false); // already gone: leaving is idempotent
                    }
                    if !ix.token_matches(&peer, &token) {
                        return Err(Error::Unauthenticated(format!(
                            "session token does not match peer {peer}"
                        )));
                    }
                }
                store.remove_peers(&[peer])?;
                gate.lock().remove_peer(&peer);
                Ok(true)
            })
            .await?;
        if left {
            tracing::info!(%peer, "peer left");
        }
        Ok(Response::new(v1::LeaveResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(dir: &std::path::Path) -> DirectoryService {
        let config = Config::new(dir);
        let store = Store::open(dir).unwrap();
        let index = store.load(Instant::now()).unwrap();
        DirectoryService::new(store, index, &config)
    }

    async fn join(s: &DirectoryService, peer: &PeerId, file: u32) -> String {
        let files = vec![v1::SharedFile {
            file_id: blake3::hash(&file.to_le_bytes()).to_hex().to_string(),
            size: 1,
            name: format!("file-{file}"),
        }];
        let req = v1::JoinRequest {
            peer_id: peer.to_string(),
            peer_url: "http://h:1".into(),
            files,
            load: None,
        };
        s.join(Request::new(req))
            .await
            .unwrap()
            .into_inner()
            .session_token
    }

    async fn heartbeat(s: &DirectoryService, peer: &PeerId, token: &str) -> bool {
        let mut req = Request::new(v1::HeartbeatRequest {
            peer_id: peer.to_string(),
            load: None,
        });
        req.metadata_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        s.heartbeat(req).await.unwrap().into_inner().rejoin
    }

    /// Let the sweeper run until `peers` remain (virtual time; bounded).
    async fn settle(s: &DirectoryService, peers: usize) {
        for _ in 0..1000 {
            if s.stats().peers == peers {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("sweeper left {} peers, expected {peers}", s.stats().peers);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peers_expire_after_the_ttl_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = svc(dir.path());
        let cancel = CancellationToken::new();
        let sweeper = tokio::spawn(s.clone().sweep_loop(cancel.clone()));
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        let _ta = join(&s, &a, 1).await;
        let tb = join(&s, &b, 2).await;

        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(
            !heartbeat(&s, &b, &tb).await,
            "b renews at t=20s until t=50s"
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            s.stats().peers,
            2,
            "a is still within its 30 s lease at t=29s"
        );

        tokio::time::advance(Duration::from_secs(2)).await; // t=31s: a expired
        settle(&s, 1).await;
        let id = FileId::from_bytes(*blake3::hash(&1u32.to_le_bytes()).as_bytes());
        let located = s.index().locate_id(&id, Instant::now(), 9);
        assert!(located.is_none());
        assert_eq!(
            Store::open(dir.path())
                .unwrap()
                .load(Instant::now())
                .unwrap()
                .stats()
                .peers,
            1
        );

        tokio::time::advance(Duration::from_secs(20)).await; // t≈51s: b expired too
        settle(&s, 0).await;
        assert!(
            heartbeat(&s, &b, &tb).await,
            "expired peer is asked to rejoin"
        );
        assert_eq!(
            Store::open(dir.path())
                .unwrap()
                .load(Instant::now())
                .unwrap()
                .stats()
                .files,
            0
        );

        cancel.cancel();
        sweeper.await.unwrap();
        s.close().await.unwrap();
    }
}
