//! Islands (issue 24): independent directories linked over mutual TLS.
//! Real centrals (in this process, or a `central-server` process for
//! `kill -9` and SIGTERM) and real PServers in different islands.

use crate::common;

use std::time::{Duration, Instant};

use central_server::config::{LinkConfig, parse_links};
use common::*;
use peerdex_proto::v1;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::link_client::LinkClient;
use peerdex_testkit::central::{CentralProc, Settings};
use peerdex_testkit::prom;
use peerdex_testkit::tls::{CertFiles, TestCa};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const T: Duration = Duration::from_secs(30);

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    (l, url)
}

/// The settings of a central of island `island` linked to `links`.
fn linked(
    ca: &TestCa,
    leaf: &CertFiles,
    island: &str,
    links: &[&str],
) -> impl FnOnce(&mut Settings) + use<> {
    let tls = ca.central_tls(leaf);
    let ca_pem = std::fs::read(&ca.ca_file).unwrap();
    let roots = central_server::read_ca_file(&ca.ca_file).unwrap();
    let links = parse_links(&links.join(",")).unwrap();
    let island = island.to_owned();
    move |c: &mut Settings| {
        c.tls = Some(tls);
        c.links = LinkConfig {
            island: Some(island),
            links,
            ca_pem,
            ca: roots,
            refresh: Duration::from_millis(600),
            timeout: Duration::from_millis(500),
            rate: 0,
        };
    }
}

/// An in-process central of `island` on `listener`, with metrics.
async fn central(
    listener: TcpListener,
    tweak: impl FnOnce(&mut Settings),
) -> (TestCentral, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TestCentral::serve(listener, &dir.path().join("central"), Some(metrics), tweak);
    (c, dir)
}

fn channel(url: &str, ca: &TestCa, identity: Option<&CertFiles>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca.ca_file).unwrap()))
        .domain_name("127.0.0.1");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&id.cert).unwrap(),
            std::fs::read(&id.key).unwrap(),
        ));
    }
    Channel::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

async fn info(url: &str, ca: &TestCa) -> v1::InfoResponse {
    DirectoryClient::new(channel(url, ca, None))
        .info(v1::InfoRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Wait until `url`'s link to `island` is in `state`.
async fn wait_link(url: &str, ca: &TestCa, island: &str, state: &str) -> v1::LinkInfo {
    wait_for(&format!("link to {island} {state}"), T, || async {
        info(url, ca)
            .await
            .links
            .into_iter()
            .find(|l| l.island == island && l.state == state)
    })
    .await
}

async fn locate(url: &str, ca: &TestCa, id: &str) -> v1::LocateResponse {
    DirectoryClient::new(channel(url, ca, None))
        .locate(v1::LocateRequest {
            target: Some(v1::locate_request::Target::FileId(id.into())),
            max_holders: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn metric(c: &TestCentral, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(c.metrics_url.as_ref().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    prom::parse(&text).value(name, labels).unwrap_or(0.0)
}

fn trusts(ca: &TestCa) -> impl FnOnce(&mut pserver::Config) + use<> {
    let roots = pserver::tls::read_certs("PSERVER_CA_FILE", &ca.ca_file).unwrap();
    move |c: &mut pserver::Config| c.ca_roots = roots
}

/// A peer of island A finds and downloads, byte-exact, a file held only in
/// island B; with A–B and B–C linked but not A–C, A never finds C's file
/// (one hop) and says which islands it asked. Ids held nowhere are not
/// sent to B (its summary filters them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_a_linked_island_is_found_and_fetched_one_hop_only() {
    let ca = TestCa::new("islands");
    let leaf = ca.leaf("central");
    let ((la, ua), (lb, ub), (lc, uc)) = (bind().await, bind().await, bind().await);
    let (a, _da) = central(la, linked(&ca, &leaf, "a", &[&ub])).await;
    let (b, _db) = central(lb, linked(&ca, &leaf, "b", &[&ua, &uc])).await;
    let (c, _dc) = central(lc, linked(&ca, &leaf, "c", &[&ub])).await;
    let pa = TestPeer::start(&a.url, &[], trusts(&ca)).await;
    let pb = TestPeer::start(&b.url, &[], trusts(&ca)).await;
    let pc = TestPeer::start(&c.url, &[], trusts(&ca)).await;
    for p in [&pa, &pb, &pc] {
        p.wait_joined().await;
    }
    let b_bytes = test_bytes(700_000, 24);
    let b_file = upload_ok(&pb, "bravo-island-report.bin", b_bytes.clone()).await;
    let c_file = upload_ok(&pc, "charlie-island-report.bin", test_bytes(5_000, 25)).await;
    wait_for("A to have B's summary with its file", T, || async {
        let l = wait_link(&ua, &ca, "b", "up").await;
        (l.summary_ids >= 1).then_some(())
    })
    .await;
    wait_link(&ub, &ca, "c", "up").await;

    // Search on A finds B's file, marked with its island.
    let found = search(&pa, "bravo island").await;
    let hit = found
        .hits
        .iter()
        .find(|h| h.file_id == b_file.file_id)
        .unwrap_or_else(|| panic!("{found:?}"));
    assert_eq!(hit.island, "b");
    assert_eq!(found.islands, vec!["b".to_string()]);
    // Downloaded directly from B's peer, verified, byte-exact.
    let job = start_job(&pa, &b_file.file_id).await;
    let done = finish(&pa, &job.job_id, T).await;
    assert_eq!(done.state, peerdex_proto::rest::JobState::Done, "{done:?}");
    let got = pa
        .api
        .file_content(&b_file.file_id)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(blake3_hex(&got), blake3_hex(&b_bytes));

    // One hop: A asks B, B answers from its own island only.
    let c_served = metric(
        &c,
        "peerdex_central_link_served_total",
        &[("island", "b"), ("rpc", "search")],
    )
    .await;
    let found = search(&pa, "charlie island").await;
    assert!(found.hits.is_empty(), "{found:?}");
    assert_eq!(found.islands, vec!["b".to_string()]);
    let r = locate(&ua, &ca, &c_file.file_id).await;
    assert!(r.files.is_empty(), "{r:?}");
    assert_eq!(
        metric(
            &c,
            "peerdex_central_link_served_total",
            &[("island", "b"), ("rpc", "search")]
        )
        .await,
        c_served,
        "B forwarded A's search to C"
    );
    assert!(
        metric(
            &c,
            "peerdex_central_link_served_total",
            &[("island", "a"), ("rpc", "search")]
        )
        .await
            == 0.0
    );

    // 1,000 ids held nowhere: (almost) none is sent to B.
    let before = metric(
        &b,
        "peerdex_central_link_served_total",
        &[("island", "a"), ("rpc", "locate")],
    )
    .await;
    for n in 0..1000u32 {
        let id = blake3_hex(&n.to_le_bytes());
        assert!(locate(&ua, &ca, &id).await.files.is_empty());
    }
    let sent = metric(
        &b,
        "peerdex_central_link_served_total",
        &[("island", "a"), ("rpc", "locate")],
    )
    .await
        - before;
    assert!(
        sent <= 20.0,
        "{sent} of 1000 Locates of unknown ids went to B"
    );
    // A Locate of B's id does go there, and comes back with B's holder.
    // (A's own peer holds it too now: it downloaded it.)
    let r = locate(&ua, &ca, &b_file.file_id).await;
    assert_eq!(r.files.len(), 1, "{r:?}");
    let islands: Vec<(&str, &str)> = r.files[0]
        .holders
        .iter()
        .map(|h| (h.island.as_str(), h.peer_url.as_str()))
        .collect();
    assert_eq!(
        islands,
        [("a", pa.peer_url.as_str()), ("b", pb.peer_url.as_str())]
    );
    assert_eq!(r.islands, ["b"]);
    assert!(
        metric(
            &a,
            "peerdex_central_link_queries_total",
            &[("island", "b"), ("rpc", "locate"), ("result", "ok")]
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(&a, "peerdex_central_link_up", &[("island", "b")]).await,
        1.0
    );
    assert_eq!(pa.status().await.island.as_deref(), Some("a"));
}

/// Only a certificate from the link CA that names a linked host may call
/// the Link service: another CA's, the right CA's for an unlisted host,
/// and none at all are PERMISSION_DENIED and change nothing. A private
/// island exports nothing, yet its own lookups reach open islands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_a_private_island_exports_nothing() {
    let ca = TestCa::new("links");
    let leaf = ca.leaf("central");
    let ((la, ua), (lp, up)) = (bind().await, bind().await);
    let (a, _da) = central(la, linked(&ca, &leaf, "open", &[&up])).await;
    let private = linked(&ca, &leaf, "private", &[&ua]);
    let (p, _dp) = central(lp, |c| {
        private(c);
        c.join_secret = Some("a-long-enough-join-secret".into());
    })
    .await;
    let pa = TestPeer::start(&a.url, &[], trusts(&ca)).await;
    pa.wait_joined().await;
    let f = upload_ok(&pa, "open-island-file.bin", test_bytes(3_000, 26)).await;
    wait_link(&ua, &ca, "private", "private").await;
    wait_for(
        "the private island to have the open one's summary",
        T,
        || async {
            let l = wait_link(&up, &ca, "open", "up").await;
            (l.summary_ids >= 1).then_some(())
        },
    )
    .await;

    let other = TestCa::new("stranger");
    let strangers = [
        ("another CA", Some(other.leaf("central"))),
        (
            "an unlisted host",
            Some(ca.leaf_with("rogue", &["rogue.test"], |_| {})),
        ),
        ("no certificate", None),
    ];
    let before = info(&ua, &ca).await.links;
    for (what, cert) in strangers {
        // The stranger trusts A's CA to reach it; what it shows is `cert`.
        let mut link = LinkClient::new(channel(&ua, &ca, cert.as_ref()));
        let e = link
            .locate(v1::LinkLocateRequest {
                island: "private".into(),
                locate: Some(v1::LocateRequest {
                    target: Some(v1::locate_request::Target::FileId(f.file_id.clone())),
                    max_holders: 0,
                }),
            })
            .await
            .expect_err(what);
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{what}: {e:?}");
        let e = link
            .leaving(v1::LinkLeavingRequest {
                island: "private".into(),
                central: "x".into(),
                last: true,
            })
            .await
            .expect_err(what);
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{what}: {e:?}");
    }
    let after = info(&ua, &ca).await.links;
    assert_eq!(
        after.iter().map(|l| &l.state).collect::<Vec<_>>(),
        before.iter().map(|l| &l.state).collect::<Vec<_>>(),
        "a refused Leaving changed a link"
    );

    // The private island answers no lookup over its link…
    let mut as_a = LinkClient::new(channel(&up, &ca, Some(&leaf)));
    let e = as_a
        .search(v1::LinkSearchRequest {
            island: "open".into(),
            search: Some(v1::SearchRequest {
                query: "file".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let s = as_a
        .summary(v1::LinkSummaryRequest {
            island: "open".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(s.private && s.filter.is_none() && s.ids == 0, "{s:?}");
    // …but finds the open island's files for its own members.
    let r = locate(&up, &ca, &f.file_id).await;
    assert_eq!(r.files.len(), 1, "{r:?}");
    assert_eq!(r.files[0].holders[0].island, "open");
    drop((a, p));
}

/// `kill -9` of island B: A's answers never wait beyond the deadline, and
/// B's files are found again within a refresh of B's restart; SIGTERM of
/// B shows the link down at A within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_island_costs_one_deadline_and_comes_back() {
    let ca = TestCa::new("dead");
    let leaf = ca.leaf("central");
    let (la, ua) = bind().await;
    let dir = tempfile::tempdir().unwrap();
    let env = |links: &str| {
        vec![
            (
                "CENTRAL_TLS_CERT".to_owned(),
                leaf.cert.display().to_string(),
            ),
            ("CENTRAL_TLS_KEY".to_owned(), leaf.key.display().to_string()),
            (
                "CENTRAL_LINK_CA_FILE".to_owned(),
                ca.ca_file.display().to_string(),
            ),
            ("CENTRAL_LINKS".to_owned(), links.to_owned()),
            ("CENTRAL_ISLAND_NAME".to_owned(), "b".to_owned()),
            ("CENTRAL_LINK_REFRESH_SECS".to_owned(), "1".to_owned()),
            ("CENTRAL_LEASE_TTL_SECS".to_owned(), "30".to_owned()),
            ("CENTRAL_HEARTBEAT_SECS".to_owned(), "1".to_owned()),
        ]
    };
    let mut b = CentralProc::start(dir.path(), "b", env(&ua));
    let ub = format!("https://{}", b.addr);
    let (a, _da) = central(la, linked(&ca, &leaf, "a", &[&ub])).await;
    let pa = TestPeer::start(&a.url, &[], trusts(&ca)).await;
    let pb = TestPeer::start(&ub, &[], trusts(&ca)).await;
    pa.wait_joined().await;
    pb.wait_joined().await;
    let local = upload_ok(&pa, "alpha-local.bin", test_bytes(2_000, 27)).await;
    let remote = upload_ok(&pb, "bravo-remote.bin", test_bytes(2_000, 28)).await;
    wait_for("A to find B's file", T, || async {
        (!locate(&ua, &ca, &remote.file_id).await.files.is_empty()).then_some(())
    })
    .await;

    b.proc.kill9();
    // At most one lookup waits out the deadline (500 ms); then B is down
    // and skipped.
    for _ in 0..3 {
        let t = Instant::now();
        let found = search(&pa, "alpha local").await;
        assert_eq!(found.hits.len(), 1);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        assert_eq!(locate(&ua, &ca, &local.file_id).await.files.len(), 1);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
    }
    let l = wait_link(&ua, &ca, "b", "down").await;
    assert!(!l.error.is_empty());
    let found = search(&pa, "alpha local").await;
    assert_eq!(found.islands_skipped, vec!["b".to_string()]);

    b.restart();
    wait_for("B's file to be found from A again", T, || async {
        (!locate(&ua, &ca, &remote.file_id).await.files.is_empty()).then_some(())
    })
    .await;

    b.proc.signal(libc::SIGTERM);
    let t = Instant::now();
    wait_for("A to see B leave", Duration::from_secs(5), || async {
        info(&ua, &ca)
            .await
            .links
            .into_iter()
            .find(|l| l.island == "b" && l.state == "left")
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(locate(&ua, &ca, &remote.file_id).await.files.is_empty());
    b.wait_exit(Duration::from_secs(15));
}

/// An island on etcd (two centrals on one etcd) links as a single central
/// does: both ends find each other's files, through either of its
/// centrals, whichever central the holder joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_island_on_etcd_links_like_a_single_central() {
    let etcd = tokio::task::spawn_blocking(|| peerdex_testkit::EtcdCluster::start(1))
        .await
        .unwrap();
    let ca = TestCa::new("etcd-islands");
    let leaf = ca.leaf("central");
    let ((l1, u1), (l2, u2), (lb, ub)) = (bind().await, bind().await, bind().await);
    let on_etcd = |name: &'static str| {
        let link = linked(&ca, &leaf, "e", &[&ub]);
        let endpoints = etcd.endpoints();
        move |c: &mut Settings| {
            link(c);
            c.etcd_endpoints = Some(endpoints);
            c.name = Some(name.into());
        }
    };
    let (e1, _d1) = central(l1, on_etcd("e-1")).await;
    let (e2, _d2) = central(l2, on_etcd("e-2")).await;
    let (b, _db) = central(lb, linked(&ca, &leaf, "b", &[&u1, &u2])).await;
    let pe = TestPeer::start(&e1.url, &[], trusts(&ca)).await;
    let pb = TestPeer::start(&b.url, &[], trusts(&ca)).await;
    pe.wait_joined().await;
    pb.wait_joined().await;
    let fe = upload_ok(&pe, "echo-on-etcd.bin", test_bytes(4_000, 29)).await;
    let fb = upload_ok(&pb, "bravo-on-sqlite.bin", test_bytes(4_000, 30)).await;
    // e-2 never saw the peer: it knows B's file through its own link.
    for (url, id, island) in [(&u2, &fb.file_id, "b"), (&ub, &fe.file_id, "e")] {
        let r = wait_for(&format!("{url} to find {island}'s file"), T, || async {
            let r = locate(url, &ca, id).await;
            (!r.files.is_empty()).then_some(r)
        })
        .await;
        assert_eq!(r.files[0].holders[0].island, island, "{r:?}");
    }
    let links = info(&ub, &ca).await.links;
    assert_eq!(links.len(), 2);
    assert!(
        links.iter().all(|l| l.island == "e" && l.state == "up"),
        "{links:?}"
    );
    drop((e1, e2, b));
}

/// A hostile island, as a raw Link server: its summary is malformed until
/// `good` is set, then it holds `id`, and it answers every Locate with
/// `id` at a wrong size.
#[derive(Clone)]
struct Rogue {
    id: String,
    good: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[tonic::async_trait]
impl v1::link_server::Link for Rogue {
    async fn summary(
        &self,
        _: tonic::Request<v1::LinkSummaryRequest>,
    ) -> Result<tonic::Response<v1::LinkSummaryResponse>, tonic::Status> {
        use central_server::link::summary::{Summary, id_key};
        let s = Summary::build(1, vec![id_key(&self.id.parse().unwrap())]);
        let mut filter = s.to_proto().unwrap();
        if !self.good.load(std::sync::atomic::Ordering::SeqCst) {
            filter.fingerprints.truncate(3);
        }
        Ok(tonic::Response::new(v1::LinkSummaryResponse {
            island: "rogue".into(),
            version: s.version,
            ids: 1,
            filter: Some(filter),
            ..Default::default()
        }))
    }
    async fn locate(
        &self,
        _: tonic::Request<v1::LinkLocateRequest>,
    ) -> Result<tonic::Response<v1::LocateResponse>, tonic::Status> {
        Ok(tonic::Response::new(v1::LocateResponse {
            files: vec![v1::LocatedFile {
                file_id: self.id.clone(),
                size: 1,
                names: vec!["lie.bin".into()],
                holders: vec![v1::Holder {
                    peer_id: uuid::Uuid::new_v4().to_string(),
                    peer_url: "http://10.9.9.9:7071".into(),
                    ..Default::default()
                }],
                replication: None,
            }],
            ..Default::default()
        }))
    }
    async fn search(
        &self,
        _: tonic::Request<v1::LinkSearchRequest>,
    ) -> Result<tonic::Response<v1::SearchResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("no"))
    }
    async fn leaving(
        &self,
        _: tonic::Request<v1::LinkLeavingRequest>,
    ) -> Result<tonic::Response<v1::LinkLeavingResponse>, tonic::Status> {
        Ok(tonic::Response::new(v1::LinkLeavingResponse {}))
    }
}

/// A malformed summary is refused (the link stays down, counted); a
/// well-formed one is used, but an answer with a wrong size for a file
/// this island knows is left out (counted), and the local answer stands.
/// A linked island over CENTRAL_LINK_RATE is refused RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_summaries_and_answers_are_contained() {
    let ca = TestCa::new("rogue");
    let leaf = ca.leaf("central");
    let ((la, ua), (lr, ur)) = (bind().await, bind().await);
    let (a, _da) = central(la, linked(&ca, &leaf, "a", &[&ur])).await;
    let pa = TestPeer::start(&a.url, &[], trusts(&ca)).await;
    pa.wait_joined().await;
    let f = upload_ok(&pa, "honest.bin", test_bytes(9_000, 31)).await;
    let rogue = Rogue {
        id: f.file_id.clone(),
        good: Default::default(),
    };
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(&leaf.cert).unwrap(),
        std::fs::read(&leaf.key).unwrap(),
    );
    let server = tonic::transport::Server::builder()
        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
        .unwrap()
        .add_service(v1::link_server::LinkServer::new(rogue.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(lr));
    let server = tokio::spawn(server);

    let invalid = |rpc: &'static str| {
        let a = &a;
        async move {
            metric(
                a,
                "peerdex_central_link_queries_total",
                &[("island", "127.0.0.1"), ("rpc", rpc), ("result", "invalid")],
            )
            .await
                + metric(
                    a,
                    "peerdex_central_link_queries_total",
                    &[("island", "rogue"), ("rpc", rpc), ("result", "invalid")],
                )
                .await
        }
    };
    wait_for("the malformed summary to be refused", T, || async {
        (invalid("summary").await >= 1.0).then_some(())
    })
    .await;
    let l = info(&ua, &ca).await.links.remove(0);
    assert_ne!(l.state, "up", "{l:?}");
    assert!(l.error.contains("malformed"), "{l:?}");

    rogue.good.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_link(&ua, &ca, "rogue", "up").await;
    let r = locate(&ua, &ca, &f.file_id).await;
    assert_eq!(r.files.len(), 1, "{r:?}");
    assert_eq!(r.files[0].size, 9_000);
    assert_eq!(
        r.files[0].holders.len(),
        1,
        "the rogue's holder is left out: {r:?}"
    );
    assert_eq!(r.files[0].holders[0].peer_url, pa.peer_url);
    assert_eq!(r.islands, ["rogue"]);
    assert!(invalid("locate").await >= 1.0);
    server.abort();

    // CENTRAL_LINK_RATE: a linked island's calls beyond the rate (and its
    // burst of 10 s) are refused with a retry time.
    let (lc, uc) = bind().await;
    let (c, _dc) = central(lc, |s: &mut Settings| {
        linked(&ca, &leaf, "c", &[&ua])(s);
        s.links.rate = 1;
    })
    .await;
    let mut as_a = LinkClient::new(channel(&uc, &ca, Some(&leaf)));
    let mut refused = None;
    for _ in 0..30 {
        if let Err(e) = as_a
            .summary(v1::LinkSummaryRequest {
                island: "a".into(),
                ..Default::default()
            })
            .await
        {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("30 calls at once are over 1/s with a 10 s burst");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("CENTRAL_LINK_RATE"), "{e:?}");
    assert!(e.metadata().get("retry-after").is_some());
    drop(c);
}

/// A want covers linked islands: a peer of island A wants a file by id
/// before anyone has it; a peer of island B shares it; A's peer has it,
/// byte-exact, pushed by its Watch stream when B's summary changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_is_met_by_a_file_shared_in_a_linked_island() {
    use peerdex_proto::rest::{WantRequest, WantState};
    let ca = TestCa::new("want-islands");
    let leaf = ca.leaf("central");
    let ((la, ua), (lb, ub)) = (bind().await, bind().await);
    let (_a, _da) = central(la, linked(&ca, &leaf, "a", &[&ub])).await;
    let (_b, _db) = central(lb, linked(&ca, &leaf, "b", &[&ua])).await;
    let pa = TestPeer::start(&ua, &[], trusts(&ca)).await;
    let pb = TestPeer::start(&ub, &[], trusts(&ca)).await;
    pa.wait_joined().await;
    pb.wait_joined().await;
    wait_link(&ua, &ca, "b", "up").await;
    let bytes = test_bytes(60_000, 32);
    let id = blake3_hex(&bytes);
    let want = pa
        .api
        .want(&WantRequest {
            file: Some(id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for("the want to be watched", T, || async {
        let w = pa.api.wants().await.ok()?;
        w.wants
            .iter()
            .any(|w| w.want_id == want.want_id && w.state == WantState::Waiting)
            .then_some(())
    })
    .await;
    upload_ok(&pb, "wanted-over-there.bin", bytes.clone()).await;
    wait_for("the want to be met from island b", T, || async {
        let w = pa.api.wants().await.ok()?;
        w.wants
            .iter()
            .any(|w| w.want_id == want.want_id && w.state == WantState::Done)
            .then_some(())
    })
    .await;
    let got = pa
        .api
        .file_content(&id)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(blake3_hex(&got), id);
}
