//! PServers on a directory of several centrals on etcd (real etcd, real
//! `central-server` processes, real PServers): a central killed under a
//! PServer, a rolling restart of every central under load, a central that
//! drains. Nothing is mocked.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use peerdex_proto::rest::{JobState, SearchQuery, Status};
use peerdex_proto::v1;
use peerdex_testkit::central::CentralProc;
use peerdex_testkit::etcd::EtcdCluster;

/// Lease TTL of the centrals (heartbeats every second).
const TTL: Duration = Duration::from_secs(4);
const T: Duration = Duration::from_secs(60);

async fn etcd() -> EtcdCluster {
    tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .unwrap()
}

fn centrals(root: &std::path::Path, etcd: &EtcdCluster, n: usize) -> Vec<CentralProc> {
    (1..=n)
        .map(|i| {
            CentralProc::on_etcd(
                &root.join(format!("central-{i}")),
                &etcd.endpoints(),
                &format!("central-{i}"),
                TTL,
            )
        })
        .collect()
}

fn list(cs: &[CentralProc]) -> String {
    cs.iter()
        .map(|c| c.url.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `central` lists `peer` as a holder of `file_id`.
async fn holds(central: &CentralProc, file_id: &str, peer: &str) -> bool {
    let Ok(r) = central
        .client()
        .locate(v1::LocateRequest {
            target: Some(v1::locate_request::Target::FileId(file_id.into())),
            max_holders: 0,
        })
        .await
    else {
        return false;
    };
    r.into_inner()
        .files
        .iter()
        .any(|f| f.holders.iter().any(|h| h.peer_id == peer))
}

fn index_of(cs: &[CentralProc], status: &Status) -> usize {
    cs.iter()
        .position(|c| c.url == status.central_url)
        .unwrap_or_else(|| panic!("{} is not one of ours", status.central_url))
}

/// kill -9 the central a PServer uses: its lease survives (it never joins
/// again), its next publish lands on another central, and a download
/// started from it before the kill completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_central_costs_a_peer_nothing() {
    let etcd = etcd().await;
    let root = tempfile::tempdir().unwrap();
    let mut cs = centrals(root.path(), &etcd, 2);
    let urls = list(&cs);
    // The holder sends slowly, so the download is under way at the kill.
    let a = TestPeer::start(&urls, &[], |c| c.peer_api.max_upload_bps = 1 << 20).await;
    let b = TestPeer::start(&urls, &[&a.peer_url], |_| {}).await;
    a.wait_joined().await;
    b.wait_joined().await;
    let bytes = test_bytes(3 << 20, 7);
    let big = upload_ok(&a, "big-ha.bin", bytes.clone()).await;
    wait_for("b to find the file", T, || async {
        (holders(&b, "big-ha", &big.file_id).await == 1).then_some(())
    })
    .await;
    let job = start_job(&b, &big.file_id).await;
    wait_for("the download to be under way", T, || async {
        let j = common::job(&b, &job.job_id).await;
        (j.bytes_done > 0).then_some(())
    })
    .await;

    let before = a.status().await;
    let dead = index_of(&cs, &before);
    let alive = 1 - dead;
    cs[dead].proc.kill9();

    // The next publish lands on the other central.
    let small = upload_ok(&a, "after-the-kill.bin", test_bytes(10_000, 8)).await;
    wait_for("the new file at the surviving central", T, || async {
        holds(&cs[alive], &small.file_id, &before.peer_id)
            .await
            .then_some(())
    })
    .await;
    // The download finishes, bytes verified.
    let done = finish(&b, &job.job_id, T).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(std::fs::read(b.path_in_share("big-ha.bin")).unwrap(), bytes);
    // The lease survived the move: a heartbeat at the other central, and
    // never a Join again.
    let after = wait_for("a heartbeat at the surviving central", T, || async {
        let s = a.status().await;
        (s.central_url == cs[alive].url && s.lease_renewals.ok > before.lease_renewals.ok)
            .then_some(s)
    })
    .await;
    assert_eq!(after.lease_renewals.rejoin, 0, "{after:?}");
    assert!(holds(&cs[alive], &big.file_id, &before.peer_id).await);
}

/// Restart every central in turn with SIGTERM while a PServer searches
/// and downloads without pause: no user operation fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_user_operation() {
    let etcd = etcd().await;
    let root = tempfile::tempdir().unwrap();
    let mut cs = centrals(root.path(), &etcd, 3);
    let urls = list(&cs);
    let a = TestPeer::start(&urls, &[], |_| {}).await;
    let b = TestPeer::start(&urls, &[&a.peer_url], |_| {}).await;
    a.wait_joined().await;
    b.wait_joined().await;
    let mut ids = Vec::new();
    for i in 0..4u8 {
        let f = upload_ok(
            &a,
            &format!("rolling-{i}.bin"),
            test_bytes(50_000, u64::from(i)),
        )
        .await;
        ids.push(f.file_id);
    }
    wait_for("b to find every file", T, || async {
        (search(&b, "rolling").await.hits.len() == ids.len()).then_some(())
    })
    .await;

    let stop = Arc::new(tokio::sync::Notify::new());
    let (ops, failures) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let workload = {
        let (stop, ops, failures, ids) = (stop.clone(), ops.clone(), failures.clone(), ids.clone());
        let api = b.api.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let round = async {
                    // Search through the neighbour (whose central may be
                    // the one restarting).
                    let q = SearchQuery {
                        q: "rolling".into(),
                        ..Default::default()
                    };
                    let hits = api.search(&q).await.map_err(|e| format!("search: {e:?}"))?;
                    if hits.hits.len() != ids.len() {
                        return Err(format!(
                            "search: {} hits, not {}",
                            hits.hits.len(),
                            ids.len()
                        ));
                    }
                    // Get one, then drop it again so the next round
                    // downloads for real.
                    let id = &ids[n % ids.len()];
                    let job = api
                        .start_download(&by_id(id))
                        .await
                        .map_err(|e| format!("get: {e:?}"))?;
                    let done = loop {
                        let j = api
                            .job(&job.job_id)
                            .await
                            .map_err(|e| format!("job: {e:?}"))?;
                        if j.state.is_final() {
                            break j;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    };
                    if done.state != JobState::Done {
                        return Err(format!("get: {done:?}"));
                    }
                    api.remove_file(id)
                        .await
                        .map_err(|e| format!("rm: {e:?}"))?;
                    Ok::<(), String>(())
                };
                tokio::select! {
                    () = stop.notified() => return,
                    r = round => {
                        ops.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = r {
                            failures.lock().unwrap().push(e);
                        }
                    }
                }
                n += 1;
            }
        })
    };

    for c in cs.iter_mut() {
        let before = ops.load(Ordering::Relaxed);
        wait_for("some rounds before the next restart", T, || async {
            (ops.load(Ordering::Relaxed) >= before + 2).then_some(())
        })
        .await;
        tokio::task::block_in_place(|| c.terminate(Duration::from_secs(20)));
        c.restart();
        let c = &*c;
        wait_for("the restarted central to answer", T, || c.info()).await;
    }
    let before = ops.load(Ordering::Relaxed);
    wait_for("some rounds after the last restart", T, || async {
        (ops.load(Ordering::Relaxed) >= before + 2).then_some(())
    })
    .await;
    stop.notify_one();
    workload.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} user operations failed during the rolling restart: {failures:?}",
        failures.len(),
        ops.load(Ordering::Relaxed)
    );
    eprintln!(
        "{} search-get-rm rounds, none failed, across 3 restarts",
        ops.load(Ordering::Relaxed)
    );
    // Nobody had to join again.
    for p in [&a, &b] {
        assert_eq!(p.status().await.lease_renewals.rejoin, 0);
    }
}

/// SIGTERM a central: it tells its peers to move (the `moved` hint in
/// Heartbeat answers) and they do, before it stops serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_central_moves_its_peers_before_it_exits() {
    let etcd = etcd().await;
    let root = tempfile::tempdir().unwrap();
    let mut cs = centrals(root.path(), &etcd, 2);
    let urls = list(&cs);
    let p = TestPeer::start(&urls, &[], |_| {}).await;
    p.wait_joined().await;
    let before = p.status().await;
    let used = index_of(&cs, &before);
    let other = cs[1 - used].url.clone();
    cs[used].proc.signal(libc::SIGTERM);
    // The peer moves while the draining central still answers.
    wait_for("the peer to move to the other central", T, || async {
        let s = p.status().await;
        (s.central_url == other).then_some(())
    })
    .await;
    tokio::task::block_in_place(|| cs[used].wait_exit(Duration::from_secs(20)));
    // It moved on the hint, not on a failure: no heartbeat went unanswered
    // and nothing had to join again (the central's log is for people).
    let s = p.status().await;
    assert_eq!(s.lease_renewals.rejoin, 0, "{s:?}");
    assert_eq!(
        s.lease_renewals.error, before.lease_renewals.error,
        "a heartbeat failed: the peer was not told: {s:?}"
    );
    assert_eq!(s.central_name.as_deref(), Some(cs[1 - used].name.as_str()));
}
