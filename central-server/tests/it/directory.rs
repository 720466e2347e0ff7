//! The real gRPC server, started in-process through `run` on 127.0.0.1:0
//! (`peerdex_testkit::TestCentral`), driven with the generated client.

use std::time::{Duration, Instant};

use peerdex_proto::PeerId;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::locate_request::Target;
use peerdex_proto::v1::{self, SharedFile};
use peerdex_testkit::central::{Limits, Settings, lease, refused_settings};
use peerdex_testkit::etcd::EtcdCluster;
use peerdex_testkit::grpc::{authed, fid, peer_key, signed_join};
use peerdex_testkit::{StaticHolder, TestCentral, wait_for};
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Where the directory under test keeps its state: every contract test
/// below runs against both stores (`on_sqlite::*`, `on_etcd::*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Sqlite,
    Etcd,
}

/// A test's world: on etcd, a one-member etcd cluster of its own that
/// every central of the test uses (a restart over the same folder finds
/// the same directory there).
struct Env {
    etcd: Option<EtcdCluster>,
}

impl Env {
    async fn new(store: Store) -> Self {
        let etcd = match store {
            Store::Sqlite => None,
            Store::Etcd => Some(
                tokio::task::spawn_blocking(|| EtcdCluster::start(1))
                    .await
                    .unwrap(),
            ),
        };
        Self { etcd }
    }

    fn store(&self, c: &mut Settings) {
        if let Some(etcd) = &self.etcd {
            c.etcd_endpoints = Some(etcd.endpoints());
            // Stop at once: these tests have no PServer to tell to move.
            c.drain = Some(Duration::ZERO);
        }
    }

    async fn start(&self, lease_ttl: Duration) -> TestCentral {
        self.start_with(|c| lease(c, lease_ttl)).await
    }

    async fn start_with(&self, tweak: impl FnOnce(&mut Settings)) -> TestCentral {
        TestCentral::start_with(|c| {
            self.store(c);
            tweak(c);
        })
        .await
    }

    async fn start_in(
        &self,
        dir: &std::path::Path,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestCentral {
        TestCentral::start_in(dir, |c| {
            self.store(c);
            tweak(c);
        })
        .await
    }

    fn is_sqlite(&self) -> bool {
        self.etcd.is_none()
    }
}

async fn client(central: &TestCentral) -> DirectoryClient<Channel> {
    DirectoryClient::connect(central.url.clone()).await.unwrap()
}

async fn channel(central: &TestCentral) -> Channel {
    Channel::from_shared(central.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn file(i: u32, name: &str) -> SharedFile {
    SharedFile {
        replica: false,
        file_id: fid(i.into()),
        size: 1000 + u64::from(i),
        name: name.into(),
    }
}

/// File `i` under `name`, claiming a size that is not its own.
fn lie(i: u32, size: u64, name: &str) -> SharedFile {
    SharedFile {
        size,
        ..file(i, name)
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

async fn join(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    port: u16,
    files: Vec<SharedFile>,
) -> String {
    join_with(c, peer, port, files, None).await.unwrap()
}

async fn join_with(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    port: u16,
    files: Vec<SharedFile>,
    token: Option<&str>,
) -> Result<String, tonic::Status> {
    let r = join_answer(c, peer, port, files, token).await?;
    assert_eq!(r.refused, [], "nothing refused");
    Ok(r.session_token)
}

async fn join_answer(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    port: u16,
    files: Vec<SharedFile>,
    token: Option<&str>,
) -> Result<v1::JoinResponse, tonic::Status> {
    join_keyed(c, &peer_key(peer, 0), peer, port, files, token).await
}

/// A Join proving `key` (the peer's own is `peer_key(peer, 0)`).
async fn join_keyed(
    c: &mut DirectoryClient<Channel>,
    key: &ed25519_dalek::SigningKey,
    peer: &PeerId,
    port: u16,
    files: Vec<SharedFile>,
    token: Option<&str>,
) -> Result<v1::JoinResponse, tonic::Status> {
    let msg = v1::JoinRequest {
        peer_id: peer.to_string(),
        peer_url: url(port),
        files,
        ..Default::default()
    };
    let req = match token {
        Some(t) => authed(msg, t),
        None => Request::new(msg),
    };
    Ok(signed_join(c, key, req).await?.into_inner())
}

/// A Join with `peer`'s id from another key than its own.
async fn squat(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    token: Option<&str>,
) -> Result<v1::JoinResponse, tonic::Status> {
    join_keyed(c, &peer_key(peer, 1), peer, 6666, vec![], token).await
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>) {
    let e = r.expect_err("must be refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("bound to another key"), "{e:?}");
}

async fn publish(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    token: &str,
    files: Vec<SharedFile>,
) -> Result<Vec<v1::Refused>, tonic::Status> {
    let req = v1::PublishRequest {
        peer_id: peer.to_string(),
        files,
        seq: 0,
    };
    Ok(c.publish(authed(req, token)).await?.into_inner().refused)
}

async fn leave(c: &mut DirectoryClient<Channel>, peer: &PeerId, token: &str) {
    let req = v1::LeaveRequest {
        peer_id: peer.to_string(),
    };
    c.leave(authed(req, token)).await.unwrap();
}

/// Holders of a located file, as a sorted list of peer ids.
fn holder_ids(l: &v1::LocatedFile) -> Vec<String> {
    let mut ids: Vec<String> = l.holders.iter().map(|h| h.peer_id.clone()).collect();
    ids.sort();
    ids
}

fn ids(peers: &[&PeerId]) -> Vec<String> {
    let mut ids: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    ids.sort();
    ids
}

async fn locate_id(c: &mut DirectoryClient<Channel>, i: u32) -> Vec<v1::LocatedFile> {
    let req = v1::LocateRequest {
        target: Some(Target::FileId(fid(i.into()))),
        max_holders: 0,
    };
    c.locate(req).await.unwrap().into_inner().files
}

/// A Heartbeat as an honest PServer sends it: one refused for coming too
/// soon after the last one taken (the directory takes one per half
/// heartbeat interval) is sent again until it is taken.
async fn beat(
    c: &mut DirectoryClient<Channel>,
    req: v1::HeartbeatRequest,
    token: &str,
) -> Result<v1::HeartbeatResponse, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.heartbeat(authed(req.clone(), token)).await {
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                assert!(e.metadata().get("retry-after").is_some(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r.map(tonic::Response::into_inner),
        }
    }
}

async fn heartbeat(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    token: &str,
    load: (u32, u32),
) -> Result<bool, tonic::Status> {
    let load = Some(v1::Load {
        active_uploads: load.0,
        free_upload_slots: load.1,
    });
    let req = v1::HeartbeatRequest {
        declined: Vec::new(),
        peer_id: peer.to_string(),
        load,
    };
    Ok(beat(c, req, token).await?.rejoin)
}

async fn search(
    c: &mut DirectoryClient<Channel>,
    q: &str,
    limit: u32,
    page: &str,
) -> Result<v1::SearchResponse, tonic::Status> {
    let req = v1::SearchRequest {
        query: q.into(),
        limit,
        page_token: page.into(),
    };
    Ok(c.search(req).await?.into_inner())
}

async fn join_publish_locate_search_heartbeat_leave(store: Store) {
    let env = Env::new(store).await;
    // Heartbeats come quickly here (one per half interval is taken).
    let central = env
        .start_with(|c| c.heartbeat_interval = Duration::from_millis(300))
        .await;
    let mut c = client(&central).await;
    let (a, b) = (PeerId::new_random(), PeerId::new_random());

    let ta = join(
        &mut c,
        &a,
        7001,
        vec![file(1, "alpha-report.bin"), file(2, "beta.txt")],
    )
    .await;
    let tb = join(&mut c, &b, 7002, vec![]).await;
    assert_eq!(ta.len(), 64);
    assert_ne!(ta, tb);

    // b publishes a copy of file 1 under another name.
    let refused = publish(&mut c, &b, &tb, vec![file(1, "Alpha Report (copy).bin")])
        .await
        .unwrap();
    assert_eq!(refused, []);

    // b is busier than a → a first.
    assert!(!heartbeat(&mut c, &a, &ta, (0, 4)).await.unwrap());
    assert!(!heartbeat(&mut c, &b, &tb, (3, 1)).await.unwrap());
    let l = locate_id(&mut c, 1).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].size, 1001);
    assert_eq!(l[0].names, ["Alpha Report (copy).bin", "alpha-report.bin"]);
    let holders: Vec<_> = l[0].holders.iter().map(|h| h.peer_url.as_str()).collect();
    assert_eq!(holders, [url(7001), url(7002)]);
    // Load flips → order flips.
    heartbeat(&mut c, &a, &ta, (5, 0)).await.unwrap();
    assert_eq!(
        locate_id(&mut c, 1).await[0].holders[0].peer_id,
        b.to_string()
    );

    // Exact name, case-sensitive.
    let by_name = |n: &str| v1::LocateRequest {
        target: Some(Target::Name(n.into())),
        max_holders: 1,
    };
    let l = c
        .locate(by_name("beta.txt"))
        .await
        .unwrap()
        .into_inner()
        .files;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].file_id, fid(2));
    assert!(
        c.locate(by_name("Beta.txt"))
            .await
            .unwrap()
            .into_inner()
            .files
            .is_empty()
    );
    // Unknown → OK, empty.
    assert!(locate_id(&mut c, 99).await.is_empty());

    // Search: case-insensitive word prefixes, ranked by holders.
    let r = search(&mut c, "ALPHA rep", 0, "").await.unwrap();
    let hits: Vec<_> = r
        .hits
        .iter()
        .map(|h| (h.name.as_str(), h.holders))
        .collect();
    assert_eq!(
        hits,
        [("Alpha Report (copy).bin", 2), ("alpha-report.bin", 2)]
    );
    assert!(r.next_page_token.is_empty());
    let r = search(&mut c, "be", 0, "").await.unwrap();
    assert_eq!(r.hits.len(), 1);
    assert_eq!(r.hits[0].holders, 1);
    assert!(search(&mut c, "eta", 0, "").await.unwrap().hits.is_empty());

    // Pagination: one hit per page, opaque token.
    let p1 = search(&mut c, "alpha", 1, "").await.unwrap();
    assert_eq!(p1.hits.len(), 1);
    assert!(!p1.next_page_token.is_empty());
    let p2 = search(&mut c, "alpha", 1, &p1.next_page_token)
        .await
        .unwrap();
    assert_eq!(p2.hits.len(), 1);
    assert_ne!(p1.hits[0].name, p2.hits[0].name);
    assert!(p2.next_page_token.is_empty());

    // Unpublish every name of file 1 from a.
    let refs = vec![v1::FileRef {
        file_id: fid(1),
        name: String::new(),
    }];
    c.unpublish(authed(
        v1::UnpublishRequest {
            peer_id: a.to_string(),
            files: refs,
            seq: 0,
        },
        &ta,
    ))
    .await
    .unwrap();
    assert_eq!(
        locate_id(&mut c, 1).await[0].names,
        ["Alpha Report (copy).bin"]
    );

    // A write that changes nothing, after another tenant of the etcd
    // cluster wrote outside the directory's keys: there is no event of its
    // own to wait for, and it is still answered (a fence write makes one),
    // never UNAVAILABLE for a watch that "has not caught up" (what the
    // apply deadline answers when no event comes). The answer decides,
    // not the clock.
    if let Some(etcd) = &env.etcd {
        etcd.put(0, "/another-app/key", "1").unwrap();
    }
    let r = c
        .unpublish(authed(
            v1::UnpublishRequest {
                peer_id: a.to_string(),
                files: vec![v1::FileRef {
                    file_id: fid(9),
                    name: String::new(),
                }],
                seq: 0,
            },
            &ta,
        ))
        .await;
    assert!(r.is_ok(), "a write that changed nothing: {r:?}");
    assert_eq!(
        locate_id(&mut c, 1).await[0].names,
        ["Alpha Report (copy).bin"],
        "and it changed nothing"
    );

    // Leave: gone at once, heartbeat says rejoin, publish says join again.
    c.leave(authed(
        v1::LeaveRequest {
            peer_id: a.to_string(),
        },
        &ta,
    ))
    .await
    .unwrap();
    assert!(locate_id(&mut c, 2).await.is_empty());
    assert!(heartbeat(&mut c, &a, &ta, (0, 0)).await.unwrap());
    let e = c
        .publish(authed(
            v1::PublishRequest {
                peer_id: a.to_string(),
                files: vec![file(3, "c")],
                seq: 0,
            },
            &ta,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("join again"));
    // Leaving twice is fine.
    c.leave(authed(
        v1::LeaveRequest {
            peer_id: a.to_string(),
        },
        &ta,
    ))
    .await
    .unwrap();

    central.stop().await;
}

async fn leases_expire_without_heartbeats(store: Store) {
    let env = Env::new(store).await;
    let central = env
        .start_with(|c| {
            c.lease_ttl = Duration::from_millis(800);
            c.heartbeat_interval = Duration::from_millis(200);
        })
        .await;
    let mut c = client(&central).await;
    let (a, b) = (PeerId::new_random(), PeerId::new_random());
    let ta = join(&mut c, &a, 7001, vec![file(1, "shared.bin")]).await;
    let tb = join(&mut c, &b, 7002, vec![file(1, "shared.bin")]).await;

    // b keeps heartbeating, a goes silent: a vanishes, b stays.
    let l = wait_for("a's lease to expire", Duration::from_secs(10), || {
        let (mut c, tb) = (c.clone(), tb.clone());
        async move {
            assert!(
                !heartbeat(&mut c, &b, &tb, (0, 1)).await.unwrap(),
                "b must stay live"
            );
            let l = locate_id(&mut c, 1).await;
            (l[0].holders.len() == 1).then_some(l)
        }
    })
    .await;
    assert_eq!(l[0].holders[0].peer_id, b.to_string());
    assert!(
        heartbeat(&mut c, &a, &ta, (0, 0)).await.unwrap(),
        "expired peer is told to rejoin"
    );
    assert_eq!(
        search(&mut c, "shared", 0, "").await.unwrap().hits[0].holders,
        1
    );

    // After expiry anyone may take the id (no token needed).
    join(&mut c, &a, 7003, vec![file(2, "new.bin")]).await;
    assert_eq!(locate_id(&mut c, 2).await[0].holders[0].peer_url, url(7003));
    central.stop().await;
}

async fn tokens_cannot_be_spoofed_and_change_nothing(store: Store) {
    let env = Env::new(store).await;
    let central = env.start_with(|_| {}).await;
    let mut c = client(&central).await;
    let (a, b) = (PeerId::new_random(), PeerId::new_random());
    let ta = join(&mut c, &a, 7001, vec![file(1, "victim.bin")]).await;
    let tb = join(&mut c, &b, 7002, vec![]).await;
    let before = locate_id(&mut c, 1).await;

    let unauth = |r: Result<_, tonic::Status>| {
        let e = r.expect_err("must be refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    };
    let pid = a.to_string();
    // b's token, a garbage token, and no token at all.
    for token in [tb.as_str(), "not-a-token"] {
        unauth(heartbeat(&mut c, &a, token, (0, 0)).await.map(|_| ()));
        let files = vec![file(9, "evil.bin")];
        unauth(
            c.publish(authed(
                v1::PublishRequest {
                    peer_id: pid.clone(),
                    files,
                    seq: 0,
                },
                token,
            ))
            .await
            .map(|_| ()),
        );
        let refs = vec![v1::FileRef {
            file_id: fid(1),
            name: String::new(),
        }];
        unauth(
            c.unpublish(authed(
                v1::UnpublishRequest {
                    peer_id: pid.clone(),
                    files: refs,
                    seq: 0,
                },
                token,
            ))
            .await
            .map(|_| ()),
        );
        unauth(
            c.leave(authed(
                v1::LeaveRequest {
                    peer_id: pid.clone(),
                },
                token,
            ))
            .await
            .map(|_| ()),
        );
        // Hijacking a live peer by re-joining with another token and key.
        denied(squat(&mut c, &a, Some(token)).await);
    }
    unauth(
        c.leave(v1::LeaveRequest {
            peer_id: pid.clone(),
        })
        .await
        .map(|_| ()),
    );
    unauth(
        c.heartbeat(v1::HeartbeatRequest {
            declined: Vec::new(),
            peer_id: pid.clone(),
            load: None,
        })
        .await
        .map(|_| ()),
    );
    denied(squat(&mut c, &a, None).await);

    assert_eq!(locate_id(&mut c, 1).await, before, "nothing changed");
    assert!(locate_id(&mut c, 9).await.is_empty());

    // The owner may re-join with its token; it gets a new one, the old dies.
    let ta2 = join_with(&mut c, &a, 7001, vec![file(1, "victim.bin")], Some(&ta))
        .await
        .unwrap();
    assert_ne!(ta2, ta);
    unauth(heartbeat(&mut c, &a, &ta, (0, 0)).await.map(|_| ()));
    assert!(!heartbeat(&mut c, &a, &ta2, (0, 0)).await.unwrap());
    central.stop().await;
}

async fn restart_keeps_the_index_and_grants_grace(store: Store) {
    let env = Env::new(store).await;
    let dir = tempfile::tempdir().unwrap();
    // On etcd leases live in etcd, untouched by a restart of the central:
    // long enough to outlast the restart on a slow machine.
    let ttl = match store {
        Store::Sqlite => Duration::from_millis(1500),
        Store::Etcd => Duration::from_secs(3),
    };
    let short = |c: &mut Settings| {
        c.lease_ttl = ttl;
        c.heartbeat_interval = ttl / 3;
    };
    let (a, b) = (PeerId::new_random(), PeerId::new_random());
    let central = env.start_in(dir.path(), short).await;
    let mut c = client(&central).await;
    let ta = join(
        &mut c,
        &a,
        7001,
        vec![file(1, "kept.bin"), file(2, "dropped.bin")],
    )
    .await;
    let tb = join(&mut c, &b, 7002, vec![file(1, "kept too.bin")]).await;
    let refs = vec![v1::FileRef {
        file_id: fid(2),
        name: "dropped.bin".into(),
    }];
    c.unpublish(authed(
        v1::UnpublishRequest {
            peer_id: a.to_string(),
            files: refs,
            seq: 0,
        },
        &ta,
    ))
    .await
    .unwrap();

    // Acknowledged means committed: another connection already sees it.
    if env.is_sqlite() {
        let db =
            rusqlite::Connection::open(central.data_dir.join(central_server::DB_FILE)).unwrap();
        let holdings: i64 = db
            .query_row("SELECT count(*) FROM holdings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(holdings, 2);
    }
    central.stop().await;

    let central = env.start_in(dir.path(), short).await;
    let mut c = client(&central).await;
    let l = locate_id(&mut c, 1).await;
    assert_eq!(l[0].names, ["kept too.bin", "kept.bin"]);
    assert_eq!(l[0].holders.len(), 2, "both peers are in their grace lease");
    assert!(locate_id(&mut c, 2).await.is_empty());
    assert_eq!(search(&mut c, "kept", 0, "").await.unwrap().hits.len(), 2);

    // a's old token still works; b stays silent and expires after its grace.
    wait_for("b's grace lease to end", Duration::from_secs(10), || {
        let (mut c, ta) = (c.clone(), ta.clone());
        async move {
            assert!(
                !heartbeat(&mut c, &a, &ta, (0, 1)).await.unwrap(),
                "a is known after restart"
            );
            (locate_id(&mut c, 1).await[0].holders.len() == 1).then_some(())
        }
    })
    .await;
    assert!(heartbeat(&mut c, &b, &tb, (0, 0)).await.unwrap());
    central.stop().await;

    // The expiry was written too.
    let central = env.start_in(dir.path(), |_| {}).await;
    let mut c = client(&central).await;
    assert_eq!(locate_id(&mut c, 1).await[0].holders.len(), 1);
    central.stop().await;
}

async fn every_limit_answers_with_the_right_code(store: Store) {
    let env = Env::new(store).await;
    let central = env
        .start_with(|c| {
            c.limits = Limits {
                max_message_bytes: 16 * 1024,
                max_name_bytes: 40,
                max_inventory: 10,
                max_page: 3,
                max_holders: 2,
                ..Limits::default()
            };
        })
        .await;
    let mut c = client(&central).await;
    let a = PeerId::new_random();
    let expect = |r: Result<String, tonic::Status>, code: Code, needle: &str| {
        let e = r.expect_err("must be refused");
        assert_eq!(e.code(), code, "{e:?}");
        assert!(
            e.message().contains(needle),
            "{needle:?} not in {:?}",
            e.message()
        );
    };

    let many = |n: u32| {
        (0..n)
            .map(|i| file(i, &format!("f{i}.bin")))
            .collect::<Vec<_>>()
    };
    // Oversized message: refused before decoding.
    let big: Vec<_> = (0..400).map(|i| file(i, &format!("{i:0>39}"))).collect();
    expect(
        join_with(&mut c, &a, 7001, big, None).await,
        Code::ResourceExhausted,
        "max_message_bytes",
    );
    // Malformed entries are refused one by one; the rest is applied.
    let m = PeerId::new_random();
    let mut bad_id = file(1, "x");
    bad_id.file_id = "ABC".into();
    let long = "n".repeat(41);
    let r = join_answer(
        &mut c,
        &m,
        7009,
        vec![
            file(1, &long),
            file(1, "../etc/passwd"),
            file(50, "fine.bin"),
            bad_id,
        ],
        None,
    )
    .await
    .unwrap();
    let refused: Vec<_> = r
        .refused
        .iter()
        .map(|x| (x.file_id.as_str(), x.name.as_str()))
        .collect();
    let f1 = fid(1);
    assert_eq!(
        refused,
        [
            (f1.as_str(), long.as_str()),
            (f1.as_str(), "../etc/passwd"),
            ("ABC", "x")
        ]
    );
    let reasons: Vec<_> = r.refused.iter().map(|x| x.reason.as_str()).collect();
    assert!(
        reasons[0]
            .starts_with("files[0].name: a file or folder name of 41 bytes exceeds the limit of 40 bytes (max_name_bytes"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("files[1].name: "), "{reasons:?}");
    assert!(reasons[2].starts_with("files[3].file_id: "), "{reasons:?}");
    assert_eq!(locate_id(&mut c, 50).await[0].names, ["fine.bin"]);
    leave(&mut c, &m, &r.session_token).await;
    let bad_url = v1::JoinRequest {
        peer_id: a.to_string(),
        peer_url: "ftp://x".into(),
        ..Default::default()
    };
    expect(
        c.join(bad_url).await.map(|_| String::new()),
        Code::InvalidArgument,
        "peer_url",
    );
    let bad_peer = v1::JoinRequest {
        peer_id: "nope".into(),
        peer_url: url(1),
        ..Default::default()
    };
    expect(
        c.join(bad_peer).await.map(|_| String::new()),
        Code::InvalidArgument,
        "peer_id",
    );
    assert!(locate_id(&mut c, 1).await.is_empty(), "nothing was stored");

    // Inventory per peer: 6 + 5 > 10: the first four are taken.
    let ta = join(&mut c, &a, 7001, many(6)).await;
    let more: Vec<_> = (100..105).map(|i| file(i, "more.bin")).collect();
    let r = c
        .publish(authed(
            v1::PublishRequest {
                peer_id: a.to_string(),
                files: more,
                seq: 0,
            },
            &ta,
        ))
        .await
        .expect("a publish past the limit takes what fits")
        .into_inner();
    assert_eq!(r.over_limit, 1);
    assert_eq!(locate_id(&mut c, 103).await.len(), 1);
    assert!(locate_id(&mut c, 104).await.is_empty());

    // Another peer may claim another size for a content: it is listed.
    join(
        &mut c,
        &PeerId::new_random(),
        7002,
        vec![lie(0, 1, "f0.bin")],
    )
    .await;

    // Pages are clamped to max_page; holders to max_holders.
    for port in 0..3 {
        join(
            &mut c,
            &PeerId::new_random(),
            7100 + port,
            vec![file(0, "f0.bin")],
        )
        .await;
    }
    let r = search(&mut c, "f", 1000, "").await.unwrap();
    assert_eq!(r.hits.len(), 3);
    assert!(!r.next_page_token.is_empty());
    let req = v1::LocateRequest {
        target: Some(Target::FileId(fid(0))),
        max_holders: 50,
    };
    assert_eq!(
        c.locate(req).await.unwrap().into_inner().files[0]
            .holders
            .len(),
        2
    );

    // Search/locate argument errors. A query of no words (only
    // punctuation) is not an error: it matches no name.
    let none = search(&mut c, " -- ", 0, "").await.unwrap();
    assert!(none.hits.is_empty() && !none.truncated, "{none:?}");
    expect(
        search(&mut c, "", 0, "").await.map(|_| String::new()),
        Code::InvalidArgument,
        "query",
    );
    expect(
        search(&mut c, "f", 0, "xyz").await.map(|_| String::new()),
        Code::InvalidArgument,
        "page_token",
    );
    expect(
        search(&mut c, &"a ".repeat(600), 0, "")
            .await
            .map(|_| String::new()),
        Code::InvalidArgument,
        "query",
    );
    let r = c
        .locate(v1::LocateRequest {
            target: None,
            max_holders: 0,
        })
        .await;
    expect(r.map(|_| String::new()), Code::InvalidArgument, "target");
    let r = c
        .locate(v1::LocateRequest {
            target: Some(Target::FileId("x".into())),
            max_holders: 0,
        })
        .await;
    expect(r.map(|_| String::new()), Code::InvalidArgument, "file_id");
    let r = c
        .locate(v1::LocateRequest {
            // A share name is a path, but never with an empty folder.
            target: Some(Target::Name("a//b".into())),
            max_holders: 0,
        })
        .await;
    expect(r.map(|_| String::new()), Code::InvalidArgument, "name");

    // The server is still fine.
    assert_eq!(locate_id(&mut c, 0).await.len(), 1);
    central.stop().await;
}

async fn health_and_reflection_answer(store: Store) {
    let env = Env::new(store).await;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let central = env.start_with(|_| {}).await;
    let channel = channel(&central).await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "peerdex.v1.Directory"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"peerdex.v1.Directory"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    central.stop().await;
}

#[tokio::test]
async fn bad_config_is_refused_before_serving() {
    let e = refused_settings(|c| c.heartbeat_interval = c.lease_ttl).await;
    assert!(e.to_string().contains("CENTRAL_HEARTBEAT_SECS"), "{e}");
}

/// Concurrent changes (on SQLite: committed in groups, one fsync for
/// many) all land, the refused ones among them change nothing and fail no
/// other, and every acknowledged one survives a restart.
async fn concurrent_joins_all_land(store: Store) {
    let env = Env::new(store).await;
    let dir = tempfile::tempdir().unwrap();
    let central = env.start_in(dir.path(), |_| {}).await;
    let c = client(&central).await;
    // Ten peers joined first: each squatted (refused) and publishing, while
    // twenty new ones join, all at once.
    let mut first = Vec::new();
    for k in 0..10u16 {
        let p = PeerId::new_random();
        let t = join(&mut c.clone(), &p, 7000 + k, vec![file(100, "old.dat")]).await;
        first.push((p, t));
    }
    let joins = (0..20u32).map(|k| {
        let mut c = c.clone();
        tokio::spawn(async move {
            let files = (0..10)
                .map(|i| file(i, &format!("common-{i}.dat")))
                .collect();
            join(&mut c, &PeerId::new_random(), 8000 + k as u16, files).await;
        })
    });
    let others = first.iter().cloned().map(|(p, t)| {
        let mut c = c.clone();
        tokio::spawn(async move {
            denied(squat(&mut c, &p, None).await);
            let files = vec![file(3, "common-3.dat"), file(101, "new.dat")];
            assert_eq!(publish(&mut c, &p, &t, files).await.unwrap(), vec![]);
        })
    });
    let tasks: Vec<_> = joins.chain(others).collect();
    for t in tasks {
        t.await.unwrap();
    }
    let check = |c: DirectoryClient<Channel>| async move {
        let mut c = c;
        assert_eq!(
            locate_id(&mut c, 3).await[0].holders.len(),
            30,
            "every acknowledged join and publish is visible"
        );
        for i in [100, 101] {
            assert_eq!(locate_id(&mut c, i).await[0].holders.len(), 10, "file {i}");
        }
        let hits = search(&mut c, "common", 0, "").await.unwrap().hits;
        let hit = hits
            .iter()
            .find(|h| h.file_id == fid(3))
            .expect("file 3 found");
        assert_eq!(hit.holders, 30);
    };
    check(c.clone()).await;
    central.stop().await;
    let central = env.start_in(dir.path(), |_| {}).await;
    check(client(&central).await).await;
    central.stop().await;
}

/// The poisoning of issue 11, first way round: a peer announces an honest
/// file's id with a wrong size before any honest holder joins.
async fn a_liar_first_cannot_keep_honest_holders_out(store: Store) {
    let env = Env::new(store).await;
    let central = env.start_with(|_| {}).await;
    let mut c = client(&central).await;
    let [liar, h1, h2] = [(); 3].map(|_| PeerId::new_random());

    let tl = join(&mut c, &liar, 6666, vec![lie(1, 5, "report.pdf")]).await;
    // The honest holder's whole inventory is taken, the contested file too.
    join(
        &mut c,
        &h1,
        7001,
        vec![
            file(1, "report.pdf"),
            file(2, "notes.txt"),
            file(3, "photo.jpg"),
        ],
    )
    .await;
    for i in [2, 3] {
        assert_eq!(locate_id(&mut c, i).await[0].holders.len(), 1, "file {i}");
    }
    let l = locate_id(&mut c, 1).await;
    assert_eq!(holder_ids(&l[0]), ids(&[&liar, &h1]));
    assert_eq!(
        l[0].size, 5,
        "one claim each: the smaller size wins the tie"
    );

    // A second honest holder outvotes the liar, in Locate and in Search.
    join(&mut c, &h2, 7002, vec![file(1, "report (1).pdf")]).await;
    let l = locate_id(&mut c, 1).await;
    assert_eq!(holder_ids(&l[0]), ids(&[&liar, &h1, &h2]));
    assert_eq!(l[0].size, 1001);
    let hits = search(&mut c, "report", 0, "").await.unwrap().hits;
    assert_eq!(hits.len(), 2);
    assert!(
        hits.iter().all(|h| h.size == 1001 && h.holders == 3),
        "{hits:?}"
    );

    // The liar leaves: the honest holders remain, with their size.
    leave(&mut c, &liar, &tl).await;
    let l = locate_id(&mut c, 1).await;
    assert_eq!(holder_ids(&l[0]), ids(&[&h1, &h2]));
    assert_eq!(l[0].size, 1001);
    central.stop().await;
}

/// The poisoning of issue 11, second way round: the liar announces once the
/// honest holder's lease has run out, then the honest holder comes back.
async fn a_liar_after_the_honest_lease_expired_cannot_keep_it_out(store: Store) {
    let env = Env::new(store).await;
    let central = env
        .start_with(|c| {
            c.lease_ttl = Duration::from_millis(2000);
            c.heartbeat_interval = Duration::from_millis(500);
        })
        .await;
    let mut c = client(&central).await;
    let [liar, h1, h2] = [(); 3].map(|_| PeerId::new_random());

    let t1 = join(&mut c, &h1, 7001, vec![file(1, "report.pdf")]).await;
    wait_for("h1's lease to end", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { locate_id(&mut c, 1).await.is_empty().then_some(()) }
    })
    .await;
    let tl = join(&mut c, &liar, 6666, vec![lie(1, 5, "report.pdf")]).await;
    assert_eq!(locate_id(&mut c, 1).await[0].size, 5, "the liar alone");

    // h1 comes back (asked to rejoin) with its inventory: all of it is taken.
    assert!(heartbeat(&mut c, &h1, &t1, (0, 1)).await.unwrap());
    join(
        &mut c,
        &h1,
        7001,
        vec![file(1, "report.pdf"), file(2, "notes.txt")],
    )
    .await;
    assert_eq!(locate_id(&mut c, 2).await[0].holders.len(), 1);
    let l = locate_id(&mut c, 1).await;
    assert_eq!(holder_ids(&l[0]), ids(&[&liar, &h1]));

    join(&mut c, &h2, 7002, vec![file(1, "report.pdf")]).await;
    let l = locate_id(&mut c, 1).await;
    assert_eq!(holder_ids(&l[0]), ids(&[&liar, &h1, &h2]));
    assert_eq!(l[0].size, 1001, "two honest holders against one liar");

    leave(&mut c, &liar, &tl).await;
    let l = locate_id(&mut c, 1).await;
    assert_eq!(holder_ids(&l[0]), ids(&[&h1, &h2]));
    assert_eq!(l[0].size, 1001);
    central.stop().await;
}

async fn a_peers_own_contradiction_is_refused_and_the_rest_applied(store: Store) {
    let env = Env::new(store).await;
    let dir = tempfile::tempdir().unwrap();
    let central = env.start_in(dir.path(), |_| {}).await;
    let mut c = client(&central).await;
    let (a, b) = (PeerId::new_random(), PeerId::new_random());

    // Join: the later of two sizes for one id is refused, named with both.
    let r = join_answer(
        &mut c,
        &a,
        7001,
        vec![
            file(1, "a.bin"),
            file(2, "b.bin"),
            lie(1, 7, "a copy.bin"),
            file(3, "c.bin"),
            file(1, "a again.bin"),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        r.refused,
        [v1::Refused {
            file_id: fid(1),
            name: "a copy.bin".into(),
            reason: format!(
                "files[2]: this peer already lists file id {} with size 1001; size 7 refused (one size per file per peer)",
                fid(1)
            ),
        }]
    );
    let ta = r.session_token;
    let l = locate_id(&mut c, 1).await;
    assert_eq!(
        (l[0].size, &l[0].names[..]),
        (1001, &["a again.bin".to_owned(), "a.bin".to_owned()][..])
    );
    for i in [2, 3] {
        assert_eq!(locate_id(&mut c, i).await.len(), 1, "file {i}");
    }

    // Publish: an entry contradicting what the peer already holds is refused.
    let refused = publish(
        &mut c,
        &a,
        &ta,
        vec![lie(2, 99, "b2.bin"), file(4, "d.bin")],
    )
    .await
    .unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].file_id.as_str(), refused[0].name.as_str()),
        (fid(2).as_str(), "b2.bin")
    );
    assert!(
        refused[0]
            .reason
            .contains("with size 1002; size 99 refused"),
        "{refused:?}"
    );
    assert_eq!(locate_id(&mut c, 2).await[0].names, ["b.bin"]);
    assert_eq!(locate_id(&mut c, 4).await[0].names, ["d.bin"]);

    // Nothing refused is stored: a restart answers the same.
    central.stop().await;
    let central = env.start_in(dir.path(), |_| {}).await;
    let mut c = client(&central).await;
    let l = locate_id(&mut c, 1).await;
    assert_eq!((l[0].size, l[0].names.len()), (1001, 2));
    assert_eq!(locate_id(&mut c, 2).await[0].names, ["b.bin"]);

    // Another peer's different claim is not a contradiction.
    let r = join_answer(&mut c, &b, 7002, vec![lie(1, 7, "a copy.bin")], None)
        .await
        .unwrap();
    assert_eq!(r.refused, []);
    assert_eq!(holder_ids(&locate_id(&mut c, 1).await[0]), ids(&[&a, &b]));
    central.stop().await;
}

async fn more_refusals_than_an_answer_holds_fail_the_call_and_change_nothing(store: Store) {
    let env = Env::new(store).await;
    let central = env
        .start_with(|c| {
            c.limits.max_message_bytes = 1024;
        })
        .await;
    let mut c = client(&central).await;
    let a = PeerId::new_random();
    // Each refusal (id, name, reason naming the id and both sizes) takes
    // about 240 bytes encoded: two fit in half of 1 KiB, five do not.
    let contradictions = |n: u32| {
        let mut files = vec![file(1, "a")];
        files.extend((0..n).map(|k| lie(1, u64::from(k), "a")));
        files
    };
    let r = join_answer(&mut c, &a, 7001, contradictions(2), None)
        .await
        .unwrap();
    assert_eq!(r.refused.len(), 2);
    leave(&mut c, &a, &r.session_token).await;

    let e = join_answer(&mut c, &a, 7001, contradictions(5), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .starts_with("files: 5 of 6 entries are refused, too many to list in one answer"),
        "{e:?}"
    );
    assert!(locate_id(&mut c, 1).await.is_empty());
    assert!(
        heartbeat(&mut c, &a, "any", (0, 0)).await.unwrap(),
        "the peer was not joined"
    );
    central.stop().await;
}

/// A peer id is bound to the key of its first Join: after the peer leaves,
/// after its lease expires, and across a restart of the directory, a Join
/// with that id from another key is refused and changes nothing, while the
/// real peer joins again. Every Join proves its key over a fresh nonce that
/// works once, for that peer only.
async fn ids_cannot_be_squatted(store: Store) {
    let env = Env::new(store).await;
    let dir = tempfile::tempdir().unwrap();
    let short = |c: &mut Settings| {
        c.lease_ttl = Duration::from_millis(1500);
        c.heartbeat_interval = Duration::from_millis(500);
    };
    let central = env.start_in(dir.path(), short).await;
    let mut c = client(&central).await;
    let (a, b) = (PeerId::new_random(), PeerId::new_random());

    // After a Leave.
    let ta = join(&mut c, &a, 7001, vec![file(1, "mine.bin")]).await;
    leave(&mut c, &a, &ta).await;
    denied(squat(&mut c, &a, None).await);
    denied(squat(&mut c, &a, Some(&ta)).await);
    assert!(locate_id(&mut c, 1).await.is_empty(), "nothing changed");
    let ta = join(&mut c, &a, 7001, vec![file(1, "mine.bin")]).await;
    assert_eq!(locate_id(&mut c, 1).await[0].holders.len(), 1);

    // After the lease expired (and the sweeper dropped the peer).
    wait_for("a's lease to expire", Duration::from_secs(20), || async {
        locate_id(&mut c.clone(), 1).await.is_empty().then_some(())
    })
    .await;
    denied(squat(&mut c, &a, Some(&ta)).await);
    assert!(locate_id(&mut c, 1).await.is_empty());

    // Across a restart of the directory.
    central.stop().await;
    let central = env.start_in(dir.path(), short).await;
    let mut c = client(&central).await;
    denied(squat(&mut c, &a, None).await);
    join(&mut c, &a, 7001, vec![file(1, "mine.bin")]).await;
    assert_eq!(locate_id(&mut c, 1).await[0].holders.len(), 1);

    // The proof itself: each way of getting it wrong is refused.
    let key = peer_key(&b, 0);
    let challenge = |c: &mut DirectoryClient<Channel>, peer: PeerId| {
        let mut c = c.clone();
        async move {
            c.challenge(v1::ChallengeRequest {
                peer_id: peer.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let fresh = challenge(&mut c, b).await;
    assert_eq!(fresh.valid_secs, 60);
    let request = |nonce: Vec<u8>| {
        let mut r = v1::JoinRequest {
            peer_id: b.to_string(),
            peer_url: url(7002),
            files: vec![file(2, "b.bin")],
            ..Default::default()
        };
        peerdex_proto::identity::prove(&mut r, &key, nonce);
        r
    };
    let refused =
        |r: Result<tonic::Response<v1::JoinResponse>, tonic::Status>, code: Code, needle: &str| {
            let e = r.expect_err("must be refused");
            assert_eq!(e.code(), code, "{e:?}");
            assert!(e.message().contains(needle), "{needle:?} not in {e:?}");
        };
    // No key at all (an old PServer).
    let mut none = request(fresh.nonce.clone());
    none.public_key.clear();
    refused(
        c.join(none).await,
        Code::InvalidArgument,
        "public_key: 0 bytes",
    );
    // A signature over other bytes (here: another URL than the one sent).
    let mut moved = request(fresh.nonce.clone());
    moved.peer_url = url(7003);
    refused(c.join(moved).await, Code::Unauthenticated, "signature");
    // A nonce issued for another peer id, or made up.
    let other = challenge(&mut c, a).await.nonce;
    refused(
        c.join(request(other)).await,
        Code::Unauthenticated,
        "not issued",
    );
    refused(
        c.join(request(vec![7; 40])).await,
        Code::Unauthenticated,
        "not issued",
    );
    assert!(locate_id(&mut c, 2).await.is_empty(), "nothing changed");
    // The good one works once; a replay of the very same request does not.
    let good = request(fresh.nonce);
    c.join(good.clone()).await.unwrap();
    refused(c.join(good).await, Code::Unauthenticated, "already used");
    assert_eq!(locate_id(&mut c, 2).await[0].holders.len(), 1);
    // A challenge for something that is not a peer id.
    let e = c
        .challenge(v1::ChallengeRequest {
            peer_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    central.stop().await;
}

const SECRET: &str = "the-private-network-secret";

/// A Join to a private network, proving `secret` (or nothing).
async fn join_private(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    secret: Option<&str>,
) -> Result<v1::JoinResponse, tonic::Status> {
    let nonce = c
        .challenge(v1::ChallengeRequest {
            peer_id: peer.to_string(),
        })
        .await?
        .into_inner()
        .nonce;
    let mut r = v1::JoinRequest {
        peer_id: peer.to_string(),
        peer_url: url(7001),
        files: vec![file(5, "private.bin")],
        ..Default::default()
    };
    if let Some(s) = secret {
        r.secret_proof = peerdex_proto::network::secret_proof(s, &nonce, &r.peer_id).to_vec();
    }
    peerdex_proto::identity::prove(&mut r, &peer_key(peer, 0), nonce);
    Ok(c.join(r).await?.into_inner())
}

/// A Heartbeat's whole answer (it must be accepted).
async fn heartbeat_answer(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    token: &str,
) -> v1::HeartbeatResponse {
    let req = v1::HeartbeatRequest {
        declined: Vec::new(),
        peer_id: peer.to_string(),
        load: None,
    };
    beat(c, req, token).await.unwrap()
}

/// The claims of a credential, checked with the directory's published key.
fn verify_credential(
    jwt: &str,
    keys: &[v1::NetworkKey],
    audience: &str,
) -> peerdex_proto::network::Credential {
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let key = keys
        .iter()
        .find(|k| Some(&k.kid) == header.kid.as_ref())
        .expect("the credential's kid is published");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&[audience]);
    jsonwebtoken::decode(
        jwt,
        &jsonwebtoken::DecodingKey::from_ed_der(&key.public_key),
        &v,
    )
    .unwrap()
    .claims
}

/// A private network admits only peers that prove the join secret, gives
/// them credentials that the published key verifies, renews them with the
/// lease, and lists the peers that left.
async fn a_private_network_admits_with_the_secret_and_issues_credentials(store: Store) {
    let env = Env::new(store).await;
    let ca = peerdex_testkit::tls::TestCa::new("directory");
    let tls = ca.central_tls(&ca.leaf("central"));
    let central = env
        .start_with(move |c| {
            c.tls = Some(tls);
            c.join_secret = Some(SECRET.into());
            // Short: the test waits for a's lease to end.
            c.lease_ttl = Duration::from_secs(2);
            c.heartbeat_interval = Duration::from_millis(500);
        })
        .await;
    assert!(central.url.starts_with("https://"));
    let pem = std::fs::read(&ca.ca_file).unwrap();
    let channel = Channel::from_shared(central.url.clone())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = DirectoryClient::new(channel);
    let (a, b) = (PeerId::new_random(), PeerId::new_random());
    for (secret, why) in [
        (None, "private network"),
        (Some("not-the-secret-at-all"), "wrong join secret"),
    ] {
        let e = join_private(&mut c, &a, secret).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains(why), "{why:?} not in {e:?}");
    }
    assert!(locate_id(&mut c, 5).await.is_empty(), "nothing changed");

    let keys = c
        .network_keys(v1::NetworkKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    let aud = peerdex_proto::network::audience(SECRET);
    let ja = join_private(&mut c, &a, Some(SECRET)).await.unwrap();
    let claims = verify_credential(&ja.credential, &keys, &aud);
    assert_eq!(claims.sub, a.to_string());
    assert_eq!(claims.exp, ja.credential_expires);
    assert_eq!(claims.exp - claims.iat, 4, "two lease TTLs");
    assert_eq!(locate_id(&mut c, 5).await[0].holders.len(), 1);

    // Heartbeats renew it; b leaving is listed to the others.
    let jb = join_private(&mut c, &b, Some(SECRET)).await.unwrap();
    let renewed = heartbeat_answer(&mut c, &a, &ja.session_token).await;
    assert_eq!(
        verify_credential(&renewed.credential, &keys, &aud).sub,
        a.to_string()
    );
    assert!(renewed.revoked.is_empty());
    leave(&mut c, &b, &jb.session_token).await;
    let hb = heartbeat_answer(&mut c, &a, &ja.session_token).await;
    assert_eq!(hb.revoked.len(), 1);
    assert_eq!(hb.revoked[0].peer_id, b.to_string());

    // An expired peer gets no credential: it must join again (with the secret).
    wait_for("a's lease to end", Duration::from_secs(20), || async {
        locate_id(&mut c.clone(), 5).await.is_empty().then_some(())
    })
    .await;
    let hb = heartbeat_answer(&mut c, &a, &ja.session_token).await;
    assert!(hb.rejoin && hb.credential.is_empty(), "{hb:?}");
    central.stop().await;

    // An open network: no credentials, no keys.
    let open = env.start(Duration::from_secs(10)).await;
    let mut c = client(&open).await;
    let j = join_private(&mut c, &a, None).await.unwrap();
    assert!(j.credential.is_empty());
    let keys = c.network_keys(v1::NetworkKeysRequest {}).await.unwrap();
    assert!(keys.into_inner().keys.is_empty());
    open.stop().await;
}

// ------------------------------------------------------------ replication

/// A Join of a volunteer offering `quota` bytes of replica space.
async fn join_volunteer(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    port: u16,
    quota: u64,
) -> String {
    let msg = v1::JoinRequest {
        peer_id: peer.to_string(),
        peer_url: url(port),
        replica_quota_bytes: quota,
        ..Default::default()
    };
    signed_join(c, &peer_key(peer, 0), Request::new(msg))
        .await
        .unwrap()
        .into_inner()
        .session_token
}

async fn pin(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    token: &str,
    i: u32,
    replicas: u32,
) -> Result<v1::PinStatus, tonic::Status> {
    let req = v1::PinRequest {
        peer_id: peer.to_string(),
        file_id: fid(i.into()),
        replicas,
    };
    Ok(c.pin(authed(req, token)).await?.into_inner().pin.unwrap())
}

/// The replica tasks of a heartbeat answer: (action, file id).
async fn tasks(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    token: &str,
    declined: Vec<v1::Declined>,
) -> Vec<(v1::replica_task::Action, String)> {
    let req = v1::HeartbeatRequest {
        declined,
        peer_id: peer.to_string(),
        load: None,
    };
    let r = beat(c, req, token).await.unwrap();
    assert!(!r.rejoin, "{peer} lost its lease");
    r.replica_tasks
        .into_iter()
        .map(|t| (t.action(), t.file_id))
        .collect()
}

fn replica_of(i: u32, name: &str) -> SharedFile {
    SharedFile {
        replica: true,
        ..file(i, name)
    }
}

fn replication(l: &[v1::LocatedFile]) -> (u32, u32, u32, String) {
    let r = l[0].replication.clone().unwrap_or_default();
    (r.wanted, r.live, r.replicas, r.state)
}

async fn pins_replicate_through_volunteers_and_persist(store: Store) {
    use v1::replica_task::Action;
    let env = Env::new(store).await;
    let dir = tempfile::tempdir().unwrap();
    let tweak = |c: &mut Settings| {
        c.lease_ttl = Duration::from_secs(20);
        c.heartbeat_interval = Duration::from_millis(300);
        c.replica_grace = Duration::from_secs(1);
        c.limits.max_pins_per_peer = 2;
    };
    let central = env.start_in(dir.path(), tweak).await;
    let mut c = client(&central).await;
    // Copies count once the directory audits them: the honest peers'
    // URL serves file 1's bytes (its id is the BLAKE3 of them).
    let holder = StaticHolder::start(vec![1u64.to_le_bytes().to_vec()]).await;
    assert_eq!(holder.ids[0], fid(1));
    let hp = holder.port();
    let owner = PeerId::new_random();
    let to = join(
        &mut c,
        &owner,
        hp,
        vec![
            file(1, "precious.bin"),
            file(2, "second.bin"),
            file(3, "third.bin"),
        ],
    )
    .await;
    let vols: Vec<PeerId> = (0..3).map(|_| PeerId::new_random()).collect();
    let mut vt = Vec::new();
    for v in &vols {
        vt.push(join_volunteer(&mut c, v, hp, 1 << 20).await);
    }
    let small = PeerId::new_random();
    let ts = join_volunteer(&mut c, &small, 7200, 500).await;

    // Bad pins are answered and change nothing.
    let e = pin(&mut c, &owner, &to, 1, 6).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("CENTRAL_MAX_REPLICAS"), "{e:?}");
    let e = pin(&mut c, &owner, &to, 99, 3).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = pin(&mut c, &owner, "0".repeat(64).as_str(), 1, 3)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(
        replication(&locate_id(&mut c, 1).await),
        (0, 1, 0, String::new())
    );

    // A pin of 3: two volunteers with room are asked to fetch, never the
    // owner, never the one whose quota is too small.
    let p = pin(&mut c, &owner, &to, 1, 3).await.unwrap();
    assert_eq!(p.pinned, 3);
    let r = p.replication.unwrap();
    assert_eq!((r.wanted, r.live, r.state.as_str()), (3, 1, "under"));
    let asked: Vec<usize> = wait_for("two fetches", Duration::from_secs(20), || {
        let (mut c, vols, vt) = (c.clone(), vols.clone(), vt.clone());
        async move {
            let mut asked = Vec::new();
            for i in 0..3 {
                let t = tasks(&mut c, &vols[i], &vt[i], vec![]).await;
                if t == [(Action::Fetch, fid(1))] {
                    asked.push(i);
                }
            }
            (asked.len() == 2).then_some(asked)
        }
    })
    .await;
    assert!(tasks(&mut c, &owner, &to, vec![]).await.is_empty());
    assert!(tasks(&mut c, &small, &ts, vec![]).await.is_empty());

    // The first declines (its disk is full): the third is asked instead.
    let (first, second) = (asked[0], asked[1]);
    let third = (0..3).find(|i| !asked.contains(i)).unwrap();
    let declined = vec![v1::Declined {
        file_id: fid(1),
        reason: "disk full".into(),
    }];
    assert!(
        tasks(&mut c, &vols[first], &vt[first], declined)
            .await
            .is_empty()
    );
    publish(
        &mut c,
        &vols[second],
        &vt[second],
        vec![replica_of(1, "precious.bin")],
    )
    .await
    .unwrap();
    wait_for("the third volunteer asked", Duration::from_secs(20), || {
        let (mut c, v, t) = (c.clone(), vols[third], vt[third].clone());
        async move { (tasks(&mut c, &v, &t, vec![]).await == [(Action::Fetch, fid(1))]).then_some(()) }
    })
    .await;
    publish(
        &mut c,
        &vols[third],
        &vt[third],
        vec![replica_of(1, "precious.bin")],
    )
    .await
    .unwrap();
    let l = wait_for("three proven copies", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let l = locate_id(&mut c, 1).await;
            (replication(&l) == (3, 3, 2, "ok".into())).then_some(l)
        }
    })
    .await;
    let replicas: Vec<&str> = l[0]
        .holders
        .iter()
        .filter(|h| h.replica)
        .map(|h| h.peer_id.as_str())
        .collect();
    assert_eq!(replicas.len(), 2);
    assert!(!replicas.contains(&owner.to_string().as_str()));
    wait_for(
        "the done fetch to leave the answers",
        Duration::from_secs(20),
        || {
            let (mut c, v, t) = (c.clone(), vols[second], vt[second].clone());
            async move { tasks(&mut c, &v, &t, vec![]).await.is_empty().then_some(()) }
        },
    )
    .await;
    let hits = search(&mut c, "precious", 0, "").await.unwrap().hits;
    assert_eq!((hits[0].holders, hits[0].replicas_wanted), (3, 3));

    // Per-peer limits.
    pin(&mut c, &owner, &to, 2, 2).await.unwrap();
    let e = pin(&mut c, &owner, &to, 3, 2).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("CENTRAL_MAX_PINS_PER_PEER"), "{e:?}");
    let mine = c
        .pins(authed(
            v1::PinsRequest {
                peer_id: owner.to_string(),
            },
            &to,
        ))
        .await
        .unwrap()
        .into_inner()
        .pins;
    assert_eq!(mine.len(), 2);
    pin(&mut c, &owner, &to, 2, 0).await.unwrap();

    // An owner comes back: 4 copies; after the grace period one replica
    // holder (never an owner) is asked to drop.
    let other = PeerId::new_random();
    let tother = join(&mut c, &other, hp, vec![file(1, "precious.bin")]).await;
    let dropper = wait_for("a drop", Duration::from_secs(20), || {
        let (mut c, vols, vt) = (c.clone(), vols.clone(), vt.clone());
        let (asked_two, owner, to, other, tother) =
            ([second, third], owner, to.clone(), other, tother.clone());
        async move {
            assert!(
                tasks(&mut c, &owner, &to, vec![]).await.is_empty(),
                "an owner asked"
            );
            assert!(
                tasks(&mut c, &other, &tother, vec![]).await.is_empty(),
                "an owner asked"
            );
            for i in asked_two {
                if tasks(&mut c, &vols[i], &vt[i], vec![]).await == [(Action::Drop, fid(1))] {
                    return Some(i);
                }
            }
            None
        }
    })
    .await;
    c.unpublish(authed(
        v1::UnpublishRequest {
            peer_id: vols[dropper].to_string(),
            files: vec![v1::FileRef {
                file_id: fid(1),
                name: String::new(),
            }],
            seq: 0,
        },
        &vt[dropper],
    ))
    .await
    .unwrap();
    assert_eq!(
        replication(&locate_id(&mut c, 1).await),
        (3, 3, 1, "ok".into())
    );

    // Every holder leaves: the pin stays, and says lost.
    leave(&mut c, &owner, &to).await;
    leave(&mut c, &other, &tother).await;
    let keeper = if dropper == second { third } else { second };
    leave(&mut c, &vols[keeper], &vt[keeper]).await;
    let l = locate_id(&mut c, 1).await;
    assert_eq!(replication(&l), (3, 0, 0, "lost".into()));
    assert_eq!(l[0].names, ["precious.bin"]);
    assert!(l[0].holders.is_empty());

    // Pins are durable: a restarted directory still has it.
    central.stop().await;
    let central = env.start_in(dir.path(), tweak).await;
    let mut c = client(&central).await;
    assert_eq!(
        replication(&locate_id(&mut c, 1).await),
        (3, 0, 0, "lost".into())
    );
}

/// One name whatever its Unicode spelling (issue 29): a name published in
/// NFD and one in NFC are the same name to Locate and Search, typed either
/// way, and come back in NFC; names with bidi controls or zero-width
/// characters are refused entry by entry, naming the character; `:` is a
/// name character like any other.
async fn names_are_one_spelling_and_invisible_ones_are_refused(store: Store) {
    let env = Env::new(store).await;
    let central = env.start_with(|_| {}).await;
    let mut c = client(&central).await;
    let (a, b) = (PeerId::new_random(), PeerId::new_random());
    let (nfd, nfc) = ("cafe\u{301}.txt", "caf\u{e9}.txt");
    let ta = join(&mut c, &a, 7001, vec![file(1, nfd)]).await;
    let _tb = join(&mut c, &b, 7002, vec![file(2, nfc)]).await;

    let mut want = vec![fid(1), fid(2)];
    want.sort();
    for typed in [nfc, nfd] {
        let r = c
            .locate(v1::LocateRequest {
                target: Some(Target::Name(typed.into())),
                max_holders: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got: Vec<String> = r.files.iter().map(|f| f.file_id.clone()).collect();
        got.sort();
        assert_eq!(got, want, "locate {typed:?}");
        for f in &r.files {
            assert_eq!(f.names, [nfc], "names come back in NFC");
        }
    }
    for typed in ["caf\u{e9}", "cafe\u{301}", "CAFE\u{301}"] {
        let r = search(&mut c, typed, 10, "").await.unwrap();
        let mut got: Vec<(String, String)> = r
            .hits
            .iter()
            .map(|h| (h.file_id.clone(), h.name.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [(fid(1), nfc.to_owned()), (fid(2), nfc.to_owned())],
            "search {typed:?}"
        );
    }

    // Invisible characters: refused one by one, the rest applied.
    let refused = publish(
        &mut c,
        &a,
        &ta,
        vec![
            file(3, "invoice \u{202e}fdp.exe"),
            file(4, "pay\u{200b}pal.pdf"),
            file(5, "meeting 12:30.txt"),
        ],
    )
    .await
    .unwrap();
    let got: Vec<(String, bool)> = refused
        .iter()
        .map(|r| (r.file_id.clone(), r.reason.contains("at character")))
        .collect();
    assert_eq!(got, [(fid(3), true), (fid(4), true)], "{refused:?}");
    assert!(refused[0].reason.contains("U+202E"), "{refused:?}");
    assert!(refused[1].reason.contains("U+200B"), "{refused:?}");
    assert!(locate_id(&mut c, 3).await.is_empty());
    assert!(locate_id(&mut c, 4).await.is_empty());
    let meeting = c
        .locate(v1::LocateRequest {
            target: Some(Target::Name("meeting 12:30.txt".into())),
            max_holders: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .files;
    assert_eq!(meeting.len(), 1);
    assert_eq!(meeting[0].file_id, fid(5));
    // At Join too.
    let r = join_answer(
        &mut c,
        &PeerId::new_random(),
        7003,
        vec![file(6, "x\u{2066}y.txt"), file(7, "ok.txt")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.refused[0].file_id, fid(6));
    assert!(r.refused[0].reason.contains("U+2066"), "{:?}", r.refused);
}

/// Each contract test, once per store.
macro_rules! on_both_stores {
    ($($name:ident,)*) => {
        mod on_sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Store::Sqlite).await
            })*
        }
        mod on_etcd {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Store::Etcd).await
            })*
        }
    };
}

on_both_stores! {
        join_publish_locate_search_heartbeat_leave,
        leases_expire_without_heartbeats,
        tokens_cannot_be_spoofed_and_change_nothing,
        restart_keeps_the_index_and_grants_grace,
        every_limit_answers_with_the_right_code,
        health_and_reflection_answer,
        concurrent_joins_all_land,
        a_liar_first_cannot_keep_honest_holders_out,
        a_liar_after_the_honest_lease_expired_cannot_keep_it_out,
        a_peers_own_contradiction_is_refused_and_the_rest_applied,
        more_refusals_than_an_answer_holds_fail_the_call_and_change_nothing,
        ids_cannot_be_squatted,
        a_private_network_admits_with_the_secret_and_issues_credentials,
        pins_replicate_through_volunteers_and_persist,
        names_are_one_spelling_and_invisible_ones_are_refused,
}
