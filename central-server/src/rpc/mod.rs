//! The gRPC service `peerdex.v1.Directory`, one file per group of RPCs:
//!
//! * [`join`] — Challenge, Join, NetworkKeys: identity and admission.
//! * [`lease`] — Heartbeat and Leave: the lease, and the replica tasks
//!   handed out with each heartbeat.
//! * [`inventory`] — Publish and Unpublish.
//! * [`query`] — Locate and Search.
//! * [`pins`] — Pin and Pins.
//! * [`revocations`] — the Revocations stream (private networks).
//! * [`watch`] — the Watch stream (wanted files).
//! * [`info`] — Info, draining at shutdown, the metrics page.
//!
//! A handler parses its request at the edge into typed values, asks
//! [`crate::admission`] whether the caller may, and calls the
//! [`Directory`]; it never knows which store the directory is on. Calls
//! are counted and timed by [`crate::metering`], a layer around the
//! service.

mod info;
mod inventory;
mod join;
mod lease;
mod pins;
mod query;
mod revocations;
mod watch;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use peerdex_common::limit::addr_key;
use peerdex_proto::convert::SharedFile;
use peerdex_proto::v1::{self, directory_server};
use peerdex_proto::{AUTHORIZATION, PeerId};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::admission::Admission;
use crate::directory::{Directory, Inventory};
use crate::error::{Auth, Error, Field, Invalid, Limit, Result};
use crate::identity::Nonces;
use crate::index::TokenHash;
use crate::leader::Leadership;
use crate::link::Links;
use crate::metrics::Metrics;
use crate::replication::Replicator;

/// Metadata naming the peer that searches (optional; with its token).
pub const PEER_ID_META: &str = "peerdex-peer-id";
/// Results per search page when the request says 0.
pub const DEFAULT_PAGE: usize = 50;

/// Implements `peerdex.v1.Directory`. Cheap to clone.
#[derive(Clone)]
pub struct DirectoryService {
    inner: Arc<Inner>,
}

struct Inner {
    dir: Arc<Directory>,
    admission: Arc<Admission>,
    replicator: Arc<Replicator>,
    /// Join nonces: issued by Challenge, spent by Join.
    nonces: Nonces,
    /// Who leads the directory (a single central leads itself).
    leadership: Leadership,
    /// `None` without `CENTRAL_METRICS_ADDR`: nothing is measured.
    metrics: Option<Arc<Metrics>>,
    lease_ttl: Duration,
    heartbeat_interval: Duration,
    /// Searches running at once: they run on the blocking pool, at most
    /// one fewer than the cores (at least one), so that a flood of them
    /// never takes every core from Locate, heartbeats and writes.
    searching: tokio::sync::Semaphore,
    drain: info::Drain,
    streams: revocations::Streams,
    /// Links to other islands: lookups go there when this one falls short.
    links: Links,
    /// Dial-backs and relay assignment at Join (issue 25).
    reach: Arc<crate::reach::Reachability>,
}

/// What the service is made of (see `crate::server`).
pub(crate) struct Parts {
    pub dir: Arc<Directory>,
    pub admission: Arc<Admission>,
    pub replicator: Arc<Replicator>,
    pub nonces: Nonces,
    pub leadership: Leadership,
    pub metrics: Option<Arc<Metrics>>,
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    pub links: Links,
    pub reach: Arc<crate::reach::Reachability>,
}

/// Searches that may run at once: one fewer than the cores, at least one.
fn search_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

impl DirectoryService {
    pub(crate) fn new(p: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: p.dir,
                admission: p.admission,
                replicator: p.replicator,
                nonces: p.nonces,
                leadership: p.leadership,
                metrics: p.metrics,
                lease_ttl: p.lease_ttl,
                heartbeat_interval: p.heartbeat_interval,
                searching: tokio::sync::Semaphore::new(search_slots()),
                drain: info::Drain {
                    draining: AtomicBool::new(false),
                    heard: Default::default(),
                    told: Default::default(),
                },
                streams: revocations::Streams::default(),
                links: p.links,
                reach: p.reach,
            }),
        }
    }

    fn dir(&self) -> &Arc<Directory> {
        &self.inner.dir
    }

    fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// Parse a Join/Publish inventory; malformed entries are refused one by
    /// one. How many entries a peer may list is checked on its running
    /// total by the admission (the message size bounds one call).
    fn parse_files(&self, files: Vec<v1::SharedFile>) -> Result<Inventory> {
        let mut inv = Inventory {
            total: files.len(),
            ..Inventory::default()
        };
        for (i, f) in files.into_iter().enumerate() {
            let parsed = self
                .check_name_len(&f.name, Field::FileName(i))
                .and_then(|()| {
                    SharedFile::try_from(&f)
                        .map_err(|source| Invalid::Entry { index: i, source }.into())
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

    /// At most `CENTRAL_MAX_INVENTORY` entries in one Unpublish.
    fn check_entries(&self, n: usize) -> Result<()> {
        let max = self.admission().limits().max_inventory;
        if n > max {
            return Err(Limit::Entries { count: n, max }.into());
        }
        Ok(())
    }

    /// Each component of a share name (a folder or the file's name) within
    /// `CENTRAL_MAX_NAME_BYTES`; the whole path's bound is the protocol's
    /// ([`peerdex_proto::types::MAX_PATH_BYTES`], checked by parsing).
    fn check_name_len(&self, name: &str, field: Field) -> Result<()> {
        let max = self.admission().limits().max_name_bytes;
        let longest = name.split('/').map(str::len).max().unwrap_or(0);
        if longest > max {
            return Err(Invalid::NameTooLong {
                field,
                bytes: longest,
                max,
            }
            .into());
        }
        Ok(())
    }

    /// Charge a Publish/Unpublish/Pin to the peer's own bucket, once it
    /// has shown its token (a stranger cannot spend it; an unknown or
    /// wrong token is answered by the call itself).
    fn peer_rate(&self, peer: &PeerId, token: &TokenHash) -> Result<()> {
        if self
            .dir()
            .authorize(peer, token, tokio::time::Instant::now())
            .is_ok()
        {
            self.admission().publish(peer)?;
        }
        Ok(())
    }
}

/// The key of the caller's source address (unknown: one shared key).
fn source<T>(req: &Request<T>) -> IpAddr {
    req.remote_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| addr_key(a.ip()))
}

fn parse_peer(s: &str) -> Result<PeerId> {
    s.parse().map_err(|source| {
        Invalid::Parse {
            field: Field::PeerId,
            source,
        }
        .into()
    })
}

/// The BLAKE3 hash of the bearer token in the metadata.
fn bearer(meta: &MetadataMap) -> Result<TokenHash> {
    let missing = || Error::from(Auth::MissingToken);
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

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl directory_server::Directory for DirectoryService {
    async fn info(&self, _req: Request<v1::InfoRequest>) -> Answer<v1::InfoResponse> {
        Ok(Response::new(self.info()))
    }

    async fn network_keys(
        &self,
        _req: Request<v1::NetworkKeysRequest>,
    ) -> Answer<v1::NetworkKeysResponse> {
        Ok(Response::new(self.network_keys()))
    }

    async fn challenge(&self, req: Request<v1::ChallengeRequest>) -> Answer<v1::ChallengeResponse> {
        Ok(Response::new(self.challenge(req)?))
    }

    async fn join(&self, req: Request<v1::JoinRequest>) -> Answer<v1::JoinResponse> {
        Ok(Response::new(self.join(req).await?))
    }

    async fn heartbeat(&self, req: Request<v1::HeartbeatRequest>) -> Answer<v1::HeartbeatResponse> {
        Ok(Response::new(self.heartbeat(req).await?))
    }

    async fn publish(&self, req: Request<v1::PublishRequest>) -> Answer<v1::PublishResponse> {
        Ok(Response::new(self.publish(req).await?))
    }

    async fn unpublish(&self, req: Request<v1::UnpublishRequest>) -> Answer<v1::UnpublishResponse> {
        Ok(Response::new(self.unpublish(req).await?))
    }

    async fn locate(&self, req: Request<v1::LocateRequest>) -> Answer<v1::LocateResponse> {
        Ok(Response::new(self.locate(req).await?))
    }

    async fn search(&self, req: Request<v1::SearchRequest>) -> Answer<v1::SearchResponse> {
        Ok(Response::new(self.search(req).await?))
    }

    async fn leave(&self, req: Request<v1::LeaveRequest>) -> Answer<v1::LeaveResponse> {
        Ok(Response::new(self.leave(req).await?))
    }

    type RevocationsStream = revocations::RevocationStream;

    async fn revocations(
        &self,
        req: Request<v1::RevocationsRequest>,
    ) -> Answer<Self::RevocationsStream> {
        Ok(Response::new(self.revocations(req)?))
    }

    type WatchStream = watch::WatchStream;

    async fn watch(&self, req: Request<v1::WatchRequest>) -> Answer<Self::WatchStream> {
        Ok(Response::new(self.watch(req)?))
    }

    async fn pin(&self, req: Request<v1::PinRequest>) -> Answer<v1::PinResponse> {
        Ok(Response::new(self.pin(req).await?))
    }

    async fn pins(&self, req: Request<v1::PinsRequest>) -> Answer<v1::PinsResponse> {
        Ok(Response::new(self.pins(req)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::Store;
    use peerdex_proto::FileId;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    struct Central {
        service: DirectoryService,
        dir: Arc<Directory>,
        cancel: CancellationToken,
        upkeep: tokio::task::JoinHandle<()>,
    }

    /// A central on SQLite in `data`, its sweeper running (on tokio's
    /// clock: paused in these tests).
    async fn central(data: &std::path::Path) -> Central {
        let config = Config::new(data);
        let cancel = CancellationToken::new();
        let opened = Directory::open(&config, "test", &cancel).await.unwrap();
        let dir = opened.directory;
        let replicator = Replicator::new(dir.clone(), opened.leadership.clone(), &config, None);
        let service = DirectoryService::new(Parts {
            dir: dir.clone(),
            admission: Arc::new(Admission::new(
                &config.limits,
                config.heartbeat_interval,
                None,
            )),
            replicator: Arc::new(replicator.unwrap()),
            nonces: opened.nonces,
            leadership: opened.leadership.clone(),
            metrics: None,
            lease_ttl: config.lease_ttl,
            heartbeat_interval: config.heartbeat_interval,
            links: Links::new(&config.links, None, "test", false, dir.clone(), None),
            reach: Arc::new(crate::reach::Reachability::new(false, &[]).unwrap()),
        });
        let upkeep = tokio::spawn(dir.clone().upkeep_loop(
            opened.leadership,
            |_, _| {},
            cancel.clone(),
        ));
        Central {
            service,
            dir,
            cancel,
            upkeep,
        }
    }

    async fn join(s: &DirectoryService, peer: &PeerId, file: u32) -> String {
        let files = vec![v1::SharedFile {
            replica: false,
            file_id: blake3::hash(&file.to_le_bytes()).to_hex().to_string(),
            size: 1,
            name: format!("file-{file}"),
        }];
        let mut req = v1::JoinRequest {
            peer_id: peer.to_string(),
            peer_url: "http://h:1".into(),
            files,
            ..Default::default()
        };
        let nonce = s.inner.nonces.issue(peer, Instant::now());
        let key = ed25519_dalek::SigningKey::from_bytes(
            peer.as_uuid()
                .as_u128()
                .to_le_bytes()
                .repeat(2)
                .as_slice()
                .try_into()
                .unwrap(),
        );
        peerdex_proto::identity::prove(&mut req, &key, nonce);
        s.join(Request::new(req)).await.unwrap().session_token
    }

    async fn heartbeat(s: &DirectoryService, peer: &PeerId, token: &str) -> bool {
        let mut req = Request::new(v1::HeartbeatRequest {
            declined: Vec::new(),
            peer_id: peer.to_string(),
            load: None,
        });
        req.metadata_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        s.heartbeat(req).await.unwrap().rejoin
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

    fn on_disk(data: &std::path::Path) -> crate::index::Stats {
        Store::open(data)
            .unwrap()
            .load(Instant::now())
            .unwrap()
            .stats()
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peers_expire_after_the_ttl_in_memory_and_on_disk() {
        let data = tempfile::tempdir().unwrap();
        let c = central(data.path()).await;
        let s = &c.service;
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        let _ta = join(s, &a, 1).await;
        let tb = join(s, &b, 2).await;

        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(
            !heartbeat(s, &b, &tb).await,
            "b renews at t=20s until t=50s"
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            s.stats().peers,
            2,
            "a is still within its 30 s lease at t=29s"
        );

        tokio::time::advance(Duration::from_secs(2)).await; // t=31s: a expired
        settle(s, 1).await;
        let id = FileId::from_bytes(*blake3::hash(&1u32.to_le_bytes()).as_bytes());
        assert!(c.dir.index().locate_id(&id, Instant::now(), 9).is_none());
        assert_eq!(on_disk(data.path()).peers, 1);

        tokio::time::advance(Duration::from_secs(20)).await; // t≈51s: b expired too
        settle(s, 0).await;
        assert!(
            heartbeat(s, &b, &tb).await,
            "expired peer is asked to rejoin"
        );
        assert_eq!(on_disk(data.path()).files, 0);

        c.cancel.cancel();
        c.upkeep.await.unwrap();
        c.dir.close().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_flood_is_refused_without_renewing_and_the_lease_still_ends() {
        let data = tempfile::tempdir().unwrap();
        let c = central(data.path()).await;
        let s = &c.service;
        let peer = PeerId::new_random();
        let token = join(s, &peer, 7).await;
        assert!(!heartbeat(s, &peer, &token).await);
        // Within half an interval (5 s): refused, and the lease is not
        // renewed (it would end at t=34s).
        tokio::time::advance(Duration::from_secs(4)).await;
        let mut req = Request::new(v1::HeartbeatRequest {
            declined: Vec::new(),
            peer_id: peer.to_string(),
            load: None,
        });
        req.metadata_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        let refused = s.heartbeat(req).await.unwrap_err();
        assert!(matches!(refused, Error::RateLimited { .. }), "{refused}");
        // The first heartbeat (t=0) renewed until t=30s; nothing since.
        tokio::time::advance(Duration::from_secs(27)).await; // t=31s
        assert_eq!(
            c.dir.index().lease(&peer, Instant::now()),
            crate::index::Lease::Expired
        );
        settle(s, 0).await;
        c.cancel.cancel();
        c.upkeep.await.unwrap();
        c.dir.close().await.unwrap();
    }
}
