//! Inventories in pages on etcd (issue 27): a Join's holdings (and a big
//! Publish's) are stored as a few `inv/<peer>/…` pages instead of a key
//! each. Real etcd, real `central-server` processes: every central must
//! answer the same whether it learnt the inventory by its watch, by a
//! full read at start, or from its snapshot; withdrawals of paged
//! holdings, a re-Join and a lease's end must leave nothing stale.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use peerdex_proto::PeerId;
use peerdex_proto::v1::{self, SharedFile};
use peerdex_testkit::central::CentralProc as Central;
use peerdex_testkit::grpc::{authed, peer_key, signed_join};
use peerdex_testkit::wait_for;

use super::ha::{HISTORY_TTL, ONE_AT_A_TIME, TTL, central, etcd, info, restarted};

/// Files of the big inventories: at ~120 bytes a row, four pages or so.
const N: usize = 2000;

fn id(k: usize) -> String {
    blake3::hash(format!("pages/{k}").as_bytes())
        .to_hex()
        .to_string()
}

fn name(k: usize) -> String {
    format!("a folder with a long name to fill pages/file number {k:05} of the big inventory.bin")
}

fn file(k: usize, name: &str) -> SharedFile {
    SharedFile {
        replica: false,
        file_id: id(k),
        size: 10 + k as u64,
        name: name.to_owned(),
    }
}

/// The names the peer holds, by file number.
type Model = BTreeMap<usize, BTreeSet<String>>;

/// What a central should answer for files `0..ids`: the names and the
/// one holder of each file in the model, nothing for the others.
fn want(model: &Model, ids: usize, peer: &PeerId) -> Vec<Option<(Vec<String>, Vec<String>)>> {
    (0..ids)
        .map(|k| {
            model
                .get(&k)
                .filter(|names| !names.is_empty())
                .map(|names| (names.iter().cloned().collect(), vec![peer.to_string()]))
        })
        .collect()
}

/// What `c` answers for files `0..ids` (names and holders, sorted), or
/// `None` when it does not answer.
async fn held(c: &Central, ids: usize) -> Option<Vec<Option<(Vec<String>, Vec<String>)>>> {
    let mut client = c.client();
    let mut out = Vec::with_capacity(ids);
    for k in 0..ids {
        let r = client
            .locate(v1::LocateRequest {
                target: Some(v1::locate_request::Target::FileId(id(k))),
                max_holders: 0,
            })
            .await;
        let found = match r {
            Ok(r) => r.into_inner().files.into_iter().next(),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(_) => return None,
        };
        out.push(found.map(|l| {
            let mut names = l.names.clone();
            names.sort();
            let mut holders: Vec<String> = l.holders.iter().map(|h| h.peer_id.clone()).collect();
            holders.sort();
            (names, holders)
        }));
    }
    Some(out)
}

/// Wait until `c` answers exactly `want` for files `0..want.len()`.
async fn converges(what: &str, c: &Central, want: &[Option<(Vec<String>, Vec<String>)>]) {
    let ids = want.len();
    wait_for(what, Duration::from_secs(30), || async {
        (held(c, ids).await? == want).then_some(())
    })
    .await;
}

async fn join(c: &Central, peer: &PeerId, files: Vec<SharedFile>) -> String {
    let req = v1::JoinRequest {
        peer_id: peer.to_string(),
        peer_url: "http://127.0.0.1:9300".into(),
        files,
        ..Default::default()
    };
    signed_join(&mut c.client(), &peer_key(peer, 0), req)
        .await
        .unwrap()
        .into_inner()
        .session_token
}

/// Keep the peer's lease alive through `c` until aborted.
fn heartbeats(c: &Central, peer: PeerId, token: String) -> tokio::task::JoinHandle<()> {
    super::ha::heartbeats(c, peer, token, Duration::from_millis(500))
}

async fn publish(c: &Central, peer: &PeerId, token: &str, seq: u64, files: Vec<SharedFile>) {
    let req = v1::PublishRequest {
        peer_id: peer.to_string(),
        files,
        seq,
    };
    c.client().publish(authed(req, token)).await.unwrap();
}

async fn unpublish(c: &Central, peer: &PeerId, token: &str, seq: u64, refs: Vec<(usize, &str)>) {
    let req = v1::UnpublishRequest {
        peer_id: peer.to_string(),
        files: refs
            .into_iter()
            .map(|(k, name)| v1::FileRef {
                file_id: id(k),
                name: name.to_owned(),
            })
            .collect(),
        seq,
    };
    c.client().unpublish(authed(req, token)).await.unwrap();
}

/// A big inventory joins as pages (no key per holding); a second central
/// learns it by its watch, a new one by a full read, a restarted one from
/// its snapshot. Withdrawals of paged holdings (one name, every name)
/// and holdings published again after their withdrawal read the same
/// everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_inventory_in_pages_reads_the_same_by_watch_full_read_and_snapshot() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let etcd = etcd(1).await;
    let root = tempfile::tempdir().unwrap();
    let eps = etcd.endpoints();
    let mut a = central(root.path(), 1, &eps, HISTORY_TTL);
    let b = central(root.path(), 2, &eps, HISTORY_TTL);
    for c in [&a, &b] {
        wait_for("a central to answer", Duration::from_secs(30), || info(c)).await;
    }
    let peer = PeerId::new_random();
    let mut files: Vec<SharedFile> = (0..N).map(|k| file(k, &name(k))).collect();
    files.push(file(1, "a second name of file one.bin"));
    let mut model: Model = (0..N).map(|k| (k, BTreeSet::from([name(k)]))).collect();
    model.entry(1).or_default().insert(files[N].name.clone());
    let token = join(&a, &peer, files).await;
    let beats = heartbeats(&b, peer, token.clone());
    let pages = etcd.count(0, &format!("/peerdex/inv/{peer}/")).unwrap();
    assert!((3..=8).contains(&pages), "{pages} pages for {N} holdings");
    let keys = etcd.count(0, &format!("/peerdex/files/{peer}/")).unwrap();
    assert_eq!(keys, 0, "no key per holding");
    let ids = N + 80;
    converges("A to answer the Join", &a, &want(&model, ids, &peer)).await;
    converges(
        "B to learn the Join by its watch",
        &b,
        &want(&model, ids, &peer),
    )
    .await;

    // Live changes through both centrals: a big Publish (pages), a small
    // one (a key), withdrawals of paged holdings, of every name of a
    // file, of a key; then holdings withdrawn from a page published again.
    publish(
        &b,
        &peer,
        &token,
        1,
        (N..N + 40).map(|k| file(k, &name(k))).collect(),
    )
    .await;
    publish(&b, &peer, &token, 2, vec![file(N + 40, &name(N + 40))]).await;
    for k in N..N + 41 {
        model.entry(k).or_default().insert(name(k));
    }
    unpublish(
        &a,
        &peer,
        &token,
        3,
        vec![
            (0, name(0).as_str()),
            (1, ""),
            (N + 5, name(N + 5).as_str()),
            (N + 40, ""),
            (7, name(7).as_str()),
        ],
    )
    .await;
    for k in [0, 1, N + 5, N + 40, 7] {
        model.remove(&k);
    }
    let mut again: Vec<SharedFile> = (N + 41..N + 72).map(|k| file(k, &name(k))).collect();
    again.push(file(1, &name(1)));
    again.push(file(7, &name(7)));
    publish(&b, &peer, &token, 4, again).await;
    for k in (N + 41..N + 72).chain([1, 7]) {
        model.entry(k).or_default().insert(name(k));
    }
    publish(&a, &peer, &token, 5, vec![file(0, &name(0))]).await;
    model.entry(0).or_default().insert(name(0));
    let want = want(&model, ids, &peer);
    assert!(want[0].is_some() && want[N + 5].is_none() && want[N + 40].is_none());
    assert_eq!(
        want[1].as_ref().map(|w| w.0.len()),
        Some(1),
        "one name of file 1 back"
    );
    converges("A to answer the changes", &a, &want).await;
    converges("B to learn the changes by its watch", &b, &want).await;

    // A new central reads it all from etcd.
    let mut c = central(root.path(), 3, &eps, HISTORY_TTL);
    let started = wait_for("C to answer", Duration::from_secs(30), || info(&c)).await;
    assert_eq!(started.index_source(), v1::IndexSource::FullRead);
    assert_eq!(
        held(&c, ids).await.as_deref(),
        Some(&want[..]),
        "C by a full read"
    );

    // Restarted, A starts from its snapshot; C, stopped at once after its
    // full read, from its own.
    a.terminate(Duration::from_secs(20));
    assert_eq!(restarted(&mut a).await, v1::IndexSource::Snapshot);
    assert_eq!(
        held(&a, ids).await.as_deref(),
        Some(&want[..]),
        "A by its snapshot"
    );
    c.terminate(Duration::from_secs(20));
    assert_eq!(restarted(&mut c).await, v1::IndexSource::Snapshot);
    assert_eq!(
        held(&c, ids).await.as_deref(),
        Some(&want[..]),
        "C by its snapshot"
    );
    beats.abort();
}

/// A re-Join replaces the old pages: no holding of the old inventory
/// survives (not at the central that took it, not at one that learns it
/// by its watch or by a full read), and an old withdrawal does not hide
/// a holding the new inventory brings. When the peer's lease ends, every
/// page's holdings go, everywhere, and etcd drops the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_replaces_the_pages_and_a_lease_end_drops_them_everywhere() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let etcd = etcd(1).await;
    let root = tempfile::tempdir().unwrap();
    let eps = etcd.endpoints();
    let a = central(root.path(), 1, &eps, TTL);
    let b = central(root.path(), 2, &eps, TTL);
    for c in [&a, &b] {
        wait_for("a central to answer", Duration::from_secs(30), || info(c)).await;
    }
    let peer = PeerId::new_random();
    let token = join(&a, &peer, (0..N).map(|k| file(k, &name(k))).collect()).await;
    let beats = heartbeats(&a, peer, token.clone());
    // A key (a small Publish) and a tombstone (a withdrawal from a page).
    publish(&a, &peer, &token, 1, vec![file(N, &name(N))]).await;
    unpublish(&a, &peer, &token, 2, vec![(7, "")]).await;
    let ids = N + 1;
    let mut old: Model = (0..=N).map(|k| (k, BTreeSet::from([name(k)]))).collect();
    old.remove(&7);
    converges("B to learn the first session", &b, &want(&old, ids, &peer)).await;

    // The new inventory: a part of the old, the file withdrawn before and
    // the one published as a key.
    beats.abort();
    let mut files: Vec<SharedFile> = (0..300).map(|k| file(k, &name(k))).collect();
    files.push(file(N, &name(N)));
    let token = join(&b, &peer, files).await;
    let beats = heartbeats(&b, peer, token.clone());
    let new: Model = (0..300)
        .chain([N])
        .map(|k| (k, BTreeSet::from([name(k)])))
        .collect();
    let want_new = want(&new, ids, &peer);
    assert!(want_new[7].is_some() && want_new[N].is_some() && want_new[300].is_none());
    converges("B to answer the re-Join", &b, &want_new).await;
    converges("A to learn the re-Join by its watch", &a, &want_new).await;
    // The old lease was revoked: only the new session's page is left.
    assert_eq!(etcd.count(0, &format!("/peerdex/inv/{peer}/")).unwrap(), 1);
    assert_eq!(
        etcd.count(0, &format!("/peerdex/files/{peer}/")).unwrap(),
        0
    );
    let c = central(root.path(), 3, &eps, TTL);
    wait_for("C to answer", Duration::from_secs(30), || info(&c)).await;
    assert_eq!(
        held(&c, ids).await.as_deref(),
        Some(&want_new[..]),
        "C by a full read"
    );

    // The lease ends: everything goes, at every central and in etcd.
    beats.abort();
    let none = vec![None; ids];
    for (what, c) in [("A", &a), ("B", &b), ("C", &c)] {
        converges(&format!("{what} to drop the expired peer"), c, &none).await;
    }
    assert_eq!(etcd.count(0, &format!("/peerdex/inv/{peer}/")).unwrap(), 0);
}

/// The first step of a rolling upgrade: a central with
/// `CENTRAL_ETCD_PAGES=false` writes a key per holding (what centrals from
/// before pages read), Join and big Publish alike; a paged central beside
/// it reads them, and a Join through the paged one is read back by the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_told_not_to_write_pages_writes_a_key_per_holding() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let etcd = etcd(1).await;
    let root = tempfile::tempdir().unwrap();
    let eps = etcd.endpoints();
    let mut env: Vec<(String, String)> = [
        ("CENTRAL_ETCD_ENDPOINTS", eps.clone()),
        ("CENTRAL_NAME", "central-keys".to_owned()),
        ("CENTRAL_LEASE_TTL_SECS", HISTORY_TTL.as_secs().to_string()),
        ("CENTRAL_HEARTBEAT_SECS", "1".to_owned()),
        ("CENTRAL_JOIN_RATE", "0".to_owned()),
        ("CENTRAL_PUBLISH_RATE", "0".to_owned()),
        ("CENTRAL_ETCD_PAGES", "false".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.push(("RUST_LOG".into(), "info".into()));
    let keys = Central::start(&root.path().join("keys"), "central-keys", env);
    let paged = central(root.path(), 2, &eps, HISTORY_TTL);
    for c in [&keys, &paged] {
        wait_for("a central to answer", Duration::from_secs(30), || info(c)).await;
    }
    let peer = PeerId::new_random();
    let n = 300;
    let token = join(&keys, &peer, (0..n).map(|k| file(k, &name(k))).collect()).await;
    let beats = heartbeats(&paged, peer, token.clone());
    publish(
        &keys,
        &peer,
        &token,
        1,
        (n..n + 40).map(|k| file(k, &name(k))).collect(),
    )
    .await;
    let count = |prefix: &str| {
        etcd.count(0, &format!("/peerdex/{prefix}/{peer}/"))
            .unwrap()
    };
    assert_eq!(count("inv"), 0, "no page");
    assert_eq!(count("files"), (n + 40) as u64, "a key per holding");
    let model: Model = (0..n + 40)
        .map(|k| (k, BTreeSet::from([name(k)])))
        .collect();
    let ids = n + 50;
    converges(
        "the paged central to read the keys",
        &paged,
        &want(&model, ids, &peer),
    )
    .await;
    beats.abort();

    // The other way: a Join through the paged central, read by this one.
    let other = PeerId::new_random();
    let token = join(&paged, &other, (0..n).map(|k| file(k, &name(k))).collect()).await;
    let beats = heartbeats(&keys, other, token);
    assert!(etcd.count(0, &format!("/peerdex/inv/{other}/")).unwrap() > 0);
    let model: Model = (0..n).map(|k| (k, BTreeSet::from([name(k)]))).collect();
    let want_other = want(&model, n, &other);
    wait_for(
        "the keys central to read the pages",
        Duration::from_secs(30),
        || async {
            let got = held(&keys, n).await?;
            // Both peers hold files 0..n now: compare the other's holders only.
            let mine = got
                .into_iter()
                .map(|f| {
                    f.map(|(names, holders)| {
                        let h: Vec<String> = holders
                            .into_iter()
                            .filter(|h| *h == other.to_string())
                            .collect();
                        (names, h)
                    })
                })
                .collect::<Vec<_>>();
            (mine == want_other).then_some(())
        },
    )
    .await;
    beats.abort();
}
