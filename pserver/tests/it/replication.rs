//! Files that outlive their holders (issue 13): real `pserver` processes
//! offering replica space, a real directory (SQLite, and 3 centrals on
//! etcd), kill -9 of holders and of the leading central. Nothing is
//! mocked: copies are counted in the directory's Locate answers, bytes
//! are read back from the peers that hold them.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use peerdex_proto::rest::{JobState, PinRequest, PinStatus, Status};
use peerdex_proto::v1;
use peerdex_testkit::central::CentralProc;
use peerdex_testkit::etcd::EtcdCluster;

const MIB: usize = 1 << 20;
/// Deadline of each wait: two lease TTLs plus transfers, with room for a
/// loaded 2-core machine.
const T: Duration = Duration::from_secs(90);
/// Every volunteer's replica space.
const QUOTA: &str = "67108864";

/// Directory settings of these tests: 3 s leases, 1 s heartbeats, extras
/// dropped 2 s after a holder comes back, no rate limits (one address).
fn central_env(extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("CENTRAL_LEASE_TTL_SECS", "3"),
        ("CENTRAL_HEARTBEAT_SECS", "1"),
        ("CENTRAL_REPLICA_GRACE_SECS", "2"),
        ("CENTRAL_JOIN_RATE", "0"),
        ("CENTRAL_PUBLISH_RATE", "0"),
        ("CENTRAL_SEARCH_RATE", "0"),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    env
}

/// Live holders of `id` as `central` sees them (peer id → replica?), and
/// the replication state; `None` when it does not answer.
async fn copies(central: &CentralProc, id: &str) -> Option<(Vec<(String, bool)>, v1::Replication)> {
    let f = central.locate(id).await?;
    let holders = f
        .holders
        .iter()
        .map(|h| (h.peer_id.clone(), h.replica))
        .collect();
    Some((holders, f.replication.unwrap_or_default()))
}

/// Wait until `central` sees exactly `n` live copies of `id`, each on its
/// own peer; the holders.
async fn wait_copies(central: &CentralProc, id: &str, n: u32, what: &str) -> Vec<(String, bool)> {
    wait_for(what, T, || async {
        let (holders, r) = copies(central, id).await?;
        let distinct: BTreeSet<&String> = holders.iter().map(|(p, _)| p).collect();
        assert_eq!(
            distinct.len(),
            holders.len(),
            "a peer listed twice: {holders:?}"
        );
        (r.live == n && holders.len() == n as usize).then_some(holders)
    })
    .await
}

/// Wait until none of `dead` is listed as a holder of `id` (their leases
/// ended).
async fn wait_gone(central: &CentralProc, id: &str, dead: &[String]) {
    wait_for("the killed holders' leases to end", T, || async {
        let (holders, _) = copies(central, id).await?;
        (!holders.iter().any(|(h, _)| dead.contains(h))).then_some(())
    })
    .await;
}

async fn status(p: &ChildPeer) -> Status {
    p.status().await
}

async fn upload_to(p: &ChildPeer, name: &str, bytes: &[u8]) {
    upload_ok(p, name, bytes.to_vec()).await;
}

async fn pin(p: &ChildPeer, id: &str, replicas: u32) -> PinStatus {
    let req = PinRequest {
        file: id.into(),
        replicas,
    };
    p.api
        .pin(&req)
        .await
        .unwrap_or_else(|e| panic!("pin: {e:?}"))
}

/// The bytes `peer_url` serves for `id`, hashed.
async fn served_hash(peer_url: &str, id: &str) -> String {
    let bytes = reqwest::get(format!("{peer_url}/peer/v1/files/{id}"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    blake3_hex(&bytes)
}

fn by_peer_id<'a>(peers: &'a [ChildPeer], ids: &[String], id: &str) -> &'a ChildPeer {
    &peers[ids.iter().position(|p| p == id).expect("one of ours")]
}

/// Five volunteers; a file uploaded with 3 wanted copies on one of them.
/// kill -9 two of the three holders (the owner among them): the file still
/// downloads, and the directory brings it back to 3 copies on live peers.
/// The killed peers come back: 5 copies, settled back to 3 after the grace
/// period, and the owner's copy is never the one dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_holders_killed_and_the_file_keeps_three_copies() {
    peerdex_testkit::tls::install_provider();
    let root = tempfile::tempdir().unwrap();
    let central = CentralProc::start(&root.path().join("central"), "central", central_env(&[]));
    let vol = [("PSERVER_REPLICA_QUOTA_BYTES", QUOTA)];
    let roots: Vec<std::path::PathBuf> =
        (0..5).map(|i| root.path().join(format!("p{i}"))).collect();
    let mut peers: Vec<ChildPeer> = roots
        .iter()
        .map(|r| ChildPeer::spawn_in(r, &central.url, &vol))
        .collect();
    let mut ids = Vec::new();
    for p in &peers {
        ids.push(status(p).await.peer_id);
    }
    let bytes = test_bytes(3 * MIB, 13);
    let id = blake3_hex(&bytes);
    upload_to(&peers[0], "keep.bin", &bytes).await;
    wait_copies(&central, &id, 1, "the upload announced").await;
    let p = pin(&peers[0], &id, 3).await;
    assert_eq!((p.pinned, p.replication.wanted), (3, 3), "{p:?}");

    let holders = wait_copies(&central, &id, 3, "3 copies").await;
    assert!(
        holders.contains(&(ids[0].clone(), false)),
        "the owner holds it: {holders:?}"
    );
    for (h, replica) in &holders {
        let peer = by_peer_id(&peers, &ids, h);
        assert_eq!(
            served_hash(&peer.peer_url, &id).await,
            id,
            "{h} serves other bytes"
        );
        if h != &ids[0] {
            assert!(replica, "{h} holds a replica");
            let s = status(peer).await;
            assert!(s.replicas.iter().any(|r| r.file_id == id), "{s:?}");
            assert!(s.replica_used_bytes >= bytes.len() as u64, "{s:?}");
        }
    }

    // kill -9 the owner and one replica holder.
    let replica_holder = holders
        .iter()
        .find(|(h, _)| h != &ids[0])
        .unwrap()
        .0
        .clone();
    let killed = [0, ids.iter().position(|p| *p == replica_holder).unwrap()];
    for &k in &killed {
        peers[k].kill9();
    }
    let dead: Vec<String> = killed.iter().map(|&k| ids[k].clone()).collect();
    // The file still downloads (from the survivor), verified.
    let d = TestPeer::start(&central.url, &[], |_| {}).await;
    let job = start_job(&d, &id).await;
    let end = finish(&d, &job.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:?}");
    assert_eq!(
        blake3_hex(&std::fs::read(d.path_in_share("keep.bin")).unwrap()),
        id
    );
    d.stop().await;

    // The directory notices (their leases end), and brings it back to 3
    // live copies on peers that were not killed.
    wait_gone(&central, &id, &dead).await;
    let holders = wait_copies(&central, &id, 3, "3 copies again after the kills").await;
    for (h, _) in &holders {
        assert!(!dead.contains(h), "a dead peer listed: {holders:?}");
        assert_eq!(
            served_hash(&by_peer_id(&peers, &ids, h).peer_url, &id).await,
            id
        );
    }

    // The killed peers come back with what they had: 5 copies, then 3,
    // the owner's among them.
    for &k in &killed {
        peers[k] = ChildPeer::spawn_in(&roots[k], &central.url, &vol);
    }
    wait_for("the owner back", T, || async {
        let (h, _) = copies(&central, &id).await?;
        h.contains(&(ids[0].clone(), false)).then_some(())
    })
    .await;
    let settled = wait_copies(&central, &id, 3, "3 copies after the extras dropped").await;
    assert!(
        settled.contains(&(ids[0].clone(), false)),
        "the owner's copy was dropped: {settled:?}"
    );
    // Settled: it stays at 3 (no drop below the pin, no fetch above it).
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (h, r) = copies(&central, &id).await.unwrap();
        assert_eq!((r.live, r.state.as_str()), (3, "ok"), "{h:?}");
    }
    // What was dropped is gone from the dropper's replica space.
    for (i, p) in peers.iter().enumerate() {
        let s = status(p).await;
        let holds = settled.iter().any(|(h, _)| *h == ids[i]);
        if i != 0 {
            assert_eq!(s.replicas.iter().any(|r| r.file_id == id), holds, "{s:?}");
        }
    }
}

/// The same on a directory of 3 centrals on etcd, with the leading central
/// killed (-9) while it re-replicates: the next leader finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_leader_finishes_a_re_replication() {
    peerdex_testkit::tls::install_provider();
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cs: Vec<CentralProc> = (1..=3)
        .map(|i| {
            let name = format!("central-{i}");
            CentralProc::start(
                &root.path().join(&name),
                &name,
                central_env(&[
                    ("CENTRAL_ETCD_ENDPOINTS", etcd.endpoints()),
                    ("CENTRAL_NAME", name.clone()),
                ]),
            )
        })
        .collect();
    let list = cs
        .iter()
        .map(|c| c.url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    // Volunteers fetch at 1 MB/s: a 4 MiB fetch outlasts the leader.
    let vol = [
        ("PSERVER_REPLICA_QUOTA_BYTES", QUOTA),
        ("PSERVER_MAX_DOWNLOAD_BPS", "1000000"),
    ];
    let mut peers: Vec<ChildPeer> = (0..5).map(|_| ChildPeer::spawn(&list, &vol)).collect();
    let mut ids = Vec::new();
    for p in &peers {
        ids.push(status(p).await.peer_id);
    }
    let leader = wait_for("a leader", T, || async {
        let mut found = None;
        for (i, c) in cs.iter().enumerate() {
            if c.info().await.is_some_and(|i| i.is_leader) {
                found = Some(i);
            }
        }
        found
    })
    .await;
    let other = (leader + 1) % 3;

    let bytes = test_bytes(4 * MIB, 21);
    let id = blake3_hex(&bytes);
    upload_to(&peers[0], "ha.bin", &bytes).await;
    wait_copies(&cs[other], &id, 1, "the upload announced").await;
    pin(&peers[0], &id, 3).await;
    let holders = wait_copies(&cs[other], &id, 3, "3 copies").await;

    // Two holders die; once the leader has asked a volunteer to fetch
    // (the volunteer shows the fetch, or the copy it made, in its status),
    // the leader dies too.
    let was_holder: Vec<bool> = ids
        .iter()
        .map(|i| holders.iter().any(|(h, _)| h == i))
        .collect();
    let victims: Vec<usize> = holders
        .iter()
        .take(2)
        .map(|(h, _)| ids.iter().position(|p| p == h).unwrap())
        .collect();
    for &v in &victims {
        peers[v].kill9();
    }
    let dead: Vec<String> = victims.iter().map(|&v| ids[v].clone()).collect();
    wait_for("the leader to start re-replicating", T, || async {
        for (i, p) in peers.iter().enumerate() {
            if was_holder[i] {
                continue;
            }
            let s = status(p).await;
            let asked = s.replica_fetches.iter().any(|f| f.file_id == id)
                || s.replicas.iter().any(|f| f.file_id == id);
            if asked {
                return Some(());
            }
        }
        None
    })
    .await;
    cs[leader].proc.kill9();

    wait_gone(&cs[other], &id, &dead).await;
    let holders = wait_copies(&cs[other], &id, 3, "3 copies again under the next leader").await;
    for (h, _) in &holders {
        assert!(!dead.contains(h), "a dead peer listed: {holders:?}");
        assert_eq!(
            served_hash(&by_peer_id(&peers, &ids, h).peer_url, &id).await,
            id
        );
    }
    let info = cs[other].info().await.unwrap();
    assert!(
        !info.leader.is_empty() && info.leader != cs[leader].name,
        "{info:?}"
    );
    // The survivors agree.
    let third = 3 - leader - other;
    let (_, r) = copies(&cs[third], &id).await.unwrap();
    assert_eq!((r.wanted, r.live), (3, 3));
    cs[leader].restart();
}
