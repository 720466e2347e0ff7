//! A PServer given several centrals (`PSERVER_CENTRAL_URL` as a list):
//! it joins through one that answers, moves to another when its own stops
//! and joins there, keeps publishes and unpublishes made while no central
//! answers and delivers them in order, and refuses a bad list at start.
//! Real centrals (SQLite, each its own folder) and real PServers on
//! loopback.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use peerdex_proto::rest::SearchQuery;
use peerdex_proto::v1::{self, directory_client::DirectoryClient, locate_request::Target};
use peerdex_testkit::DeadUrl;
use peerdex_testkit::central::lease;

const T: Duration = Duration::from_secs(30);
/// Short leases: heartbeats every second, so a move is seen quickly.
const TTL: Duration = Duration::from_secs(3);

/// What the directory at `url` lists for a search by `word`: (name,
/// holders), sorted; `None` while it does not answer.
async fn listed(url: &str, word: &str) -> Option<Vec<(String, u32)>> {
    let mut c = DirectoryClient::connect(url.to_owned()).await.ok()?;
    let r = c
        .search(v1::SearchRequest {
            query: word.into(),
            limit: 100,
            page_token: String::new(),
        })
        .await
        .ok()?
        .into_inner();
    let mut hits: Vec<_> = r.hits.into_iter().map(|h| (h.name, h.holders)).collect();
    hits.sort();
    Some(hits)
}

async fn wait_listed(url: &str, word: &str, want: &[(&str, u32)]) {
    let want: Vec<(String, u32)> = want.iter().map(|(n, h)| ((*n).into(), *h)).collect();
    wait_for(
        &format!("the directory at {url} to list {want:?} for {word:?}"),
        T,
        || async { (listed(url, word).await.as_ref() == Some(&want)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_through_the_central_that_answers() {
    let live = TestCentral::start(TTL).await;
    let dead = DeadUrl::new();
    let list = vec![dead.url.clone(), live.url.clone()];
    // Each peer picks its first central at random: with three, the dead
    // one is very likely picked first at least once.
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(TestPeer::start(&live.url, &[], |c| c.link.centrals = list.clone()).await);
    }
    for (i, p) in peers.iter().enumerate() {
        p.wait_joined().await;
        let s = p.status().await;
        assert_eq!(s.centrals, list, "peer {i}");
        assert_eq!(s.central_url, live.url, "peer {i}");
        assert!(s.central_reachable, "peer {i}");
        p.drop_file(&format!("answering-{i}.bin"), &test_bytes(1000, i as u64));
    }
    wait_listed(
        &live.url,
        "answering",
        &[
            ("answering-0.bin", 1),
            ("answering-1.bin", 1),
            ("answering-2.bin", 1),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_to_the_other_central_when_its_own_stops() {
    let a = TestCentral::start(TTL).await;
    let b = TestCentral::start(TTL).await;
    let list = vec![a.url.clone(), b.url.clone()];
    let p = TestPeer::start(&a.url, &[], |c| c.link.centrals = list.clone()).await;
    p.wait_joined().await;
    let bytes = test_bytes(50_000, 7);
    let info = upload_ok(&p, "failover-notes.bin", bytes.clone()).await;
    assert_eq!(info.file_id, blake3_hex(&bytes));
    let s = p.status().await;
    assert_eq!(s.centrals, list);
    let (used, other) = if s.central_url == a.url {
        (a, b)
    } else {
        assert_eq!(s.central_url, b.url);
        (b, a)
    };
    wait_listed(&used.url, "failover", &[("failover-notes.bin", 1)]).await;
    // The other central is a directory of its own (SQLite): it has never
    // heard of this peer.
    assert_eq!(listed(&other.url, "failover").await, Some(vec![]));
    // A peer whose only way to the directory is P's neighbour role.
    let nowhere = DeadUrl::new();
    let q = TestPeer::start(&nowhere.url, &[&p.peer_url], |_| {}).await;

    used.stop().await;
    // P moves to the other central, which does not know it and asks it to
    // join: it joins there with its whole inventory.
    wait_listed(&other.url, "failover", &[("failover-notes.bin", 1)]).await;
    let s = p.status().await;
    assert_eq!(s.central_url, other.url);
    assert_eq!(s.centrals, list);
    assert!(s.lease_age_secs.is_some(), "{s:?}");
    assert!(s.lease_renewals.rejoin >= 1, "{s:?}");
    let mut c = DirectoryClient::connect(other.url.clone()).await.unwrap();
    let located = c
        .locate(v1::LocateRequest {
            target: Some(Target::FileId(info.file_id.clone())),
            max_holders: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .files;
    assert_eq!(located.len(), 1, "{located:?}");
    let holders: Vec<_> = located[0].holders.iter().map(|h| &h.peer_url).collect();
    assert_eq!(holders, [&p.peer_url]);
    // Q searches through P, which asks the central it uses now.
    let hits = search(&q, "failover").await.hits;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(
        (hits[0].file_id.as_str(), hits[0].holders),
        (info.file_id.as_str(), 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_central_hands_the_search_to_the_other() {
    // Both allow 1 search a second from one address, with a burst of 10.
    let a = TestCentral::start_with(|c| c.limits.search_rate = 1).await;
    let b = TestCentral::start_with(|c| c.limits.search_rate = 1).await;
    let list = vec![a.url.clone(), b.url.clone()];
    let p = TestPeer::start(&a.url, &[], |c| c.link.centrals = list.clone()).await;
    p.wait_joined().await;
    let first = p.status().await.central_url;
    // More searches than one central allows: when the one in use answers
    // RESOURCE_EXHAUSTED, the same search is asked of the other at once.
    let q = SearchQuery {
        q: "anything".into(),
        ..Default::default()
    };
    for i in 0..18 {
        let r = p.api.search(&q).await;
        assert!(r.is_ok(), "search {i}: {r:?}");
    }
    let now = p.status().await.central_url;
    assert_ne!(now, first);
    assert!(list.contains(&now));
}

/// A central served over `data_dir` on `addr` (again, after a stop), with
/// its metrics on a port of their own; stops when dropped.
async fn central_at(addr: SocketAddr, data_dir: &Path) -> TestCentral {
    let listener = wait_for("the central's port to be free again", T, || async {
        tokio::net::TcpListener::bind(addr).await.ok()
    })
    .await;
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    TestCentral::serve(listener, data_dir, Some(metrics), |c| lease(c, TTL))
}

/// `peerdex_central_requests_total` of one RPC answered OK.
async fn ok_calls(metrics_url: &str, rpc: &str) -> u64 {
    let text = reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = format!("peerdex_central_requests_total{{rpc=\"{rpc}\",code=\"ok\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_no_central_answers_arrive_in_order() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("central");
    let c = TestCentral::start_at(dir.clone(), TTL).await;
    let (addr, url) = (c.addr, c.url.clone());
    let p = TestPeer::start(&url, &[], |_| {}).await;
    p.wait_joined().await;
    c.stop().await;

    // No central answers: publish two files, then unpublish the first.
    let one = upload_ok(&p, "queued-one.bin", test_bytes(10_000, 1)).await;
    upload_ok(&p, "queued-two.bin", test_bytes(10_000, 2)).await;
    p.api.remove_file(&one.file_id).await.unwrap();
    assert_eq!(
        files_under(&p.share_dir),
        [p.path_in_share("queued-two.bin")]
    );
    // Still joined: the changes wait in line, no re-join is planned.
    assert!(p.status().await.lease_age_secs.is_some());

    // The central comes back at the same address over the same folder
    // (the peer's lease is in its grace period there).
    let back = central_at(addr, &dir).await;
    let metrics = back.metrics_url.clone().unwrap();
    wait_listed(&url, "queued", &[("queued-two.bin", 1)]).await;
    // A change made now goes behind the queue: once it is listed, every
    // change before it was delivered.
    upload_ok(&p, "queued-three.bin", test_bytes(10_000, 3)).await;
    wait_listed(
        &url,
        "queued",
        &[("queued-three.bin", 1), ("queued-two.bin", 1)],
    )
    .await;
    // Delivered as the changes they were, in order, to the lease kept
    // alive by heartbeats: no Join with the whole inventory.
    assert_eq!(ok_calls(&metrics, "join").await, 0);
    assert_eq!(ok_calls(&metrics, "publish").await, 3);
    assert_eq!(ok_calls(&metrics, "unpublish").await, 1);
    assert!(ok_calls(&metrics, "heartbeat").await >= 1);
    assert_eq!(p.status().await.lease_renewals.rejoin, 0);
}

/// Run the `pserver` binary with `PSERVER_CENTRAL_URL=list`; it must stop
/// on its own with an error. Returns its stderr.
fn refused(list: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pserver"))
        .current_dir(dir.path())
        .env_clear()
        .env("PSERVER_API_ADDR", "127.0.0.1:0")
        .env("PSERVER_PEER_ADDR", "127.0.0.1:0")
        .env("PSERVER_SHARE_DIR", dir.path().join("share"))
        .env("PSERVER_DATA_DIR", dir.path().join("data"))
        .env("PSERVER_CENTRAL_URL", list)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "pserver started with {list:?}: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "pserver printed its addresses: {list:?}"
    );
    stderr
}

#[test]
fn refuses_a_bad_list_of_centrals_at_start() {
    let e = refused("http://a:1,,http://b:2");
    assert!(e.contains("item 2 is empty"), "{e}");
    let e = refused("http://a:1, b:2");
    assert!(
        e.contains("PSERVER_CENTRAL_URL \"b:2\" must start with http:// or https://"),
        "{e}"
    );
    let e = refused("http://a:1,http://b:2,http://a:1/");
    assert!(
        e.contains("PSERVER_CENTRAL_URL lists http://a:1 twice"),
        "{e}"
    );
    let many: Vec<String> = (1..=17).map(|i| format!("http://c{i}:50051")).collect();
    let e = refused(&many.join(","));
    assert!(
        e.contains("PSERVER_CENTRAL_URL lists 17 centrals; at most 16 are allowed"),
        "{e}"
    );
}
