//! The directory on etcd under faults: real etcd members, real
//! `central-server` processes, killed (`kill -9`), paused (SIGSTOP) and
//! restarted, driven over gRPC. Nothing is mocked.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use peerdex_proto::PeerId;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::{self, SharedFile};
use peerdex_testkit::central::CentralProc as Central;
use peerdex_testkit::etcd::EtcdCluster;
use peerdex_testkit::grpc::{authed, peer_key, signed_join};
use peerdex_testkit::wait_for;
use tonic::transport::Channel;

/// Lease TTL of the centrals here (whole seconds, as the setting takes).
pub(super) const TTL: Duration = Duration::from_secs(4);
/// The history test's: peers' heartbeats must outlive a killed etcd
/// leader and a paused central on a busy 2-core machine (the test suite
/// runs beside it). At 6 s, two runs of 2026-11-23 under a parallel build
/// lost a lease: the surviving etcd members, starved of CPU, timed out
/// requests for 10 s after the kill, and keep-alives with them.
pub(super) const HISTORY_TTL: Duration = Duration::from_secs(10);

/// Each test here runs 3 etcd members and 3 centrals and times faults
/// among them; side by side on a 2-core machine they starve each other's
/// etcd members of CPU (elections, timed-out requests), so they take turns.
pub(super) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(super) fn central(root: &Path, i: usize, endpoints: &str, ttl: Duration) -> Central {
    Central::on_etcd(
        &root.join(format!("c{i}")),
        endpoints,
        &format!("central-{i}"),
        ttl,
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Keep `peer`'s lease alive through `c`, a heartbeat every `every`,
/// until aborted.
pub(super) fn heartbeats(
    c: &Central,
    peer: PeerId,
    token: String,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut c = c.client();
    tokio::spawn(async move {
        loop {
            let req = v1::HeartbeatRequest {
                declined: Vec::new(),
                peer_id: peer.to_string(),
                load: None,
            };
            let _ = c.heartbeat(authed(req, &token)).await;
            tokio::time::sleep(every).await;
        }
    })
}

pub(super) async fn etcd(members: usize) -> EtcdCluster {
    tokio::task::spawn_blocking(move || EtcdCluster::start(members))
        .await
        .unwrap()
}

pub(super) async fn info(c: &Central) -> Option<v1::InfoResponse> {
    let mut client = c.client();
    tokio::time::timeout(Duration::from_millis(700), client.info(v1::InfoRequest {}))
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
}

async fn leader_of(cs: &[Central]) -> Option<usize> {
    for (i, c) in cs.iter().enumerate() {
        if info(c).await.is_some_and(|i| i.is_leader) {
            return Some(i);
        }
    }
    None
}

/// The terms `(central, began, ended)` (Unix ms) a central reports in
/// Info; a term still going on ends at `end`.
fn terms(info: &v1::InfoResponse, end: u64) -> Vec<(String, u64, u64)> {
    info.terms
        .iter()
        .map(|t| {
            let ended = if t.ended_ms == 0 { end } else { t.ended_ms };
            (info.central.clone(), t.began_ms, ended)
        })
        .collect()
}

fn assert_one_leader_at_a_time(spans: &[(String, u64, u64)]) {
    for w in spans.windows(2) {
        assert!(
            w[0].2 <= w[1].1,
            "two leaders at once: {} led until {} ms, {} from {} ms; the log: {spans:?}",
            w[0].0,
            w[0].2,
            w[1].0,
            w[1].1
        );
    }
}

/// Kill the leading central: another leads within one lease TTL. Pause
/// the next one (SIGSTOP) for longer than a TTL: another leads, and the
/// paused one, resumed, no longer claims to. Never two at once.
#[tokio::test]
async fn the_leader_moves_within_one_ttl_and_never_two_lead() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let etcd = etcd(3).await;
    let root = tempfile::tempdir().unwrap();
    let eps = etcd.endpoints();
    let mut cs: Vec<Central> = (1..=3)
        .map(|i| central(root.path(), i, &eps, TTL))
        .collect();
    let first = wait_for("a leader", Duration::from_secs(15), || leader_of(&cs)).await;
    // Every central names it.
    for c in &cs {
        let name = cs[first].name.clone();
        wait_for("every central to name the leader", TTL, || async {
            info(c).await.filter(|i| i.leader == name).map(|_| ())
        })
        .await;
    }

    // The first leader's terms, read before it dies: its last ends when
    // it is killed.
    let before = info(&cs[first]).await.expect("the first leader answers");
    cs[first].proc.kill9();
    let mut all = terms(&before, now_ms());
    // The property under test is the election's: a new leader within one
    // lease TTL (a deadline on the condition, not a speed).
    let second = wait_for("a new leader within one TTL", TTL, || async {
        leader_of(&cs).await.filter(|&l| l != first)
    })
    .await;

    cs[second].proc.signal(libc::SIGSTOP);
    let third = wait_for("a leader while the second is paused", TTL * 2, || async {
        leader_of(&cs).await.filter(|&l| l != first && l != second)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cs[second].proc.signal(libc::SIGCONT);
    let resumed = wait_for("the resumed central to answer", TTL, || info(&cs[second])).await;
    assert!(
        !resumed.is_leader,
        "a paused leader must not lead on: {resumed:?}"
    );
    assert!(info(&cs[third]).await.unwrap().is_leader);

    // The paused one reports its term ended; then every live central's
    // terms (a term still going on runs to the end of the test).
    wait_for("the resumed central to end its term", TTL, || async {
        info(&cs[second])
            .await
            .filter(|i| i.terms.last().is_some_and(|t| t.ended_ms != 0))
            .map(|_| ())
    })
    .await;
    let end = now_ms();
    for c in [&cs[second], &cs[third]] {
        all.extend(terms(&info(c).await.unwrap(), end));
    }
    all.sort_by_key(|s| s.1);
    assert!(all.len() >= 3, "three terms reported: {all:?}");
    assert_one_leader_at_a_time(&all);
}

/// One peer of the history test: its id, key, token and the centrals.
struct Client {
    peer: PeerId,
    token: String,
}

fn file(peer: usize, k: usize) -> SharedFile {
    let id = blake3::hash(format!("{peer}/{k}").as_bytes());
    SharedFile {
        replica: false,
        file_id: id.to_hex().to_string(),
        size: 1 + k as u64,
        name: format!("p{peer}-f{k}.bin"),
    }
}

/// An operation of the history and what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    /// Failed or timed out: it may or may not have been applied.
    Unknown,
}

type History = Arc<Mutex<BTreeMap<(usize, usize), Vec<(bool, Outcome)>>>>;

/// Several clients publish and unpublish concurrently while centrals and
/// etcd members are killed, paused and restarted: each acknowledged write
/// is visible at once from the central that took it, and afterwards from
/// every central, and nothing that was
/// never asked for (or only asked for without an acknowledgement and
/// then undone with one) appears. Leases survive it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killed_centrals_and_etcd_members() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const CLIENTS: usize = 4;
    const FILES: usize = 6;
    let mut etcd = etcd(3).await;
    let root = tempfile::tempdir().unwrap();
    let eps = etcd.endpoints();
    let mut cs: Vec<Central> = (1..=3)
        .map(|i| central(root.path(), i, &eps, HISTORY_TTL))
        .collect();
    // One client per central, with the short deadlines of CentralProc.
    let clients_for =
        || -> Vec<DirectoryClient<Channel>> { cs.iter().map(Central::client).collect() };

    // Join every client (each through another central).
    let mut peers = Vec::new();
    for k in 0..CLIENTS {
        let peer = PeerId::new_random();
        let mut c = clients_for()[k % 3].clone();
        let req = v1::JoinRequest {
            peer_id: peer.to_string(),
            peer_url: format!("http://127.0.0.1:{}", 9000 + k),
            ..Default::default()
        };
        let j = signed_join(&mut c, &peer_key(&peer, k as u8), req)
            .await
            .expect("join")
            .into_inner();
        peers.push(Client {
            peer,
            token: j.session_token,
        });
    }
    let peers = Arc::new(peers);
    let history: History = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let lost_lease = Arc::new(Mutex::new(Vec::<String>::new()));
    let stale_reads = Arc::new(Mutex::new(Vec::<(usize, usize, bool)>::new()));

    let mut tasks = Vec::new();
    for (k, p) in peers.iter().enumerate() {
        let (peer, token) = (p.peer, p.token.clone());
        // Heartbeats, at any central that answers.
        let (cl, stop2, lost) = (clients_for(), stop.clone(), lost_lease.clone());
        let tok = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut at = k;
            while !stop2.is_cancelled() {
                let c = &mut cl[at % 3].clone();
                let r = c
                    .heartbeat(authed(
                        v1::HeartbeatRequest {
                            declined: Vec::new(),
                            peer_id: peer.to_string(),
                            load: None,
                        },
                        &tok,
                    ))
                    .await;
                match r {
                    Ok(a) if a.get_ref().rejoin => {
                        lost.lock().unwrap().push(format!("{peer} told to rejoin"));
                        at += 1;
                    }
                    Ok(_) => {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                    Err(_) => at += 1,
                }
            }
        }));
        // Writes: a deterministic mix, each recorded with its outcome and
        // numbered in the session as a PServer numbers its changes (one
        // that a paused central delivers late is then refused).
        let (cl, stop2, hist) = (clients_for(), stop.clone(), history.clone());
        let stale = stale_reads.clone();
        tasks.push(tokio::spawn(async move {
            let mut at = k + 1;
            let mut n = 0usize;
            while !stop2.is_cancelled() {
                n += 1;
                let f = (n * 7 + k) % FILES;
                let publish = (n / FILES + k).is_multiple_of(2) || n.is_multiple_of(5);
                let c = &mut cl[at % 3].clone();
                let r = if publish {
                    c.publish(authed(
                        v1::PublishRequest {
                            peer_id: peer.to_string(),
                            files: vec![file(k, f)],
                            seq: n as u64,
                        },
                        &token,
                    ))
                    .await
                    .map(|_| ())
                } else {
                    c.unpublish(authed(
                        v1::UnpublishRequest {
                            peer_id: peer.to_string(),
                            files: vec![v1::FileRef {
                                file_id: file(k, f).file_id,
                                name: String::new(),
                            }],
                            seq: n as u64,
                        },
                        &token,
                    ))
                    .await
                    .map(|_| ())
                };
                let outcome = match &r {
                    Ok(()) => {
                        // Read your own write, from the central that took it.
                        let seen = c
                            .locate(v1::LocateRequest {
                                target: Some(v1::locate_request::Target::FileId(
                                    file(k, f).file_id,
                                )),
                                max_holders: 0,
                            })
                            .await
                            .map(|l| {
                                l.into_inner().files.iter().any(|l| {
                                    l.holders.iter().any(|h| h.peer_id == peer.to_string())
                                })
                            });
                        if let Ok(seen) = seen
                            && seen != publish
                        {
                            stale.lock().unwrap().push((k, f, publish));
                        }
                        Outcome::Acked
                    }
                    Err(_) => {
                        at += 1;
                        Outcome::Unknown
                    }
                };
                hist.lock()
                    .unwrap()
                    .entry((k, f))
                    .or_default()
                    .push((publish, outcome));
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }));
    }

    // The faults, one after another, with the writes running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let raft =
        tokio::task::block_in_place(|| etcd.wait_leader(None, Duration::from_secs(10))).unwrap();
    etcd.kill9(raft);
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| etcd.restart(raft)).unwrap();
    cs[0].proc.signal(libc::SIGSTOP);
    tokio::time::sleep(HISTORY_TTL + Duration::from_secs(1)).await;
    cs[0].proc.signal(libc::SIGCONT);
    cs[1].restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cs[2].proc.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cs[2].restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    let lost = lost_lease.lock().unwrap().clone();
    if !lost.is_empty() {
        let logs: Vec<String> = cs
            .iter()
            .flat_map(|c| {
                c.all_logs()
                    .lines()
                    .filter(|l| {
                        ["rejoin", "WARN", "gone", "heartbeat:", "lease", "reload"]
                            .iter()
                            .any(|w| l.contains(w))
                    })
                    .map(|l| format!("{}: {l}", c.name))
                    .collect::<Vec<_>>()
            })
            .take(80)
            .collect();
        panic!(
            "leases were lost ({} times), the first: {:?}\n{}",
            lost.len(),
            &lost[..lost.len().min(3)],
            logs.join("\n")
        );
    }
    let stale = stale_reads.lock().unwrap().clone();
    assert!(
        stale.is_empty(),
        "a central answered without a write it had acknowledged: {stale:?}"
    );

    // Every central converges on the same revision.
    let rev = wait_for(
        "the centrals to converge",
        Duration::from_secs(20),
        || async {
            let mut revs = Vec::new();
            for c in &cs {
                revs.push(info(c).await?.revision);
            }
            (revs.iter().all(|r| *r == revs[0])).then_some(revs[0])
        },
    )
    .await;
    assert!(rev > 0);

    let history = history.lock().unwrap().clone();
    let (mut acked, mut unknown) = (0, 0);
    for ops in history.values() {
        for (_, o) in ops {
            match o {
                Outcome::Acked => acked += 1,
                Outcome::Unknown => unknown += 1,
            }
        }
    }
    assert!(
        acked > 100,
        "too few writes acknowledged ({acked}, {unknown} unknown)"
    );
    for (i, c) in cs.iter().enumerate() {
        let mut cl = c.client();
        for k in 0..CLIENTS {
            for f in 0..FILES {
                let located = cl
                    .locate(v1::LocateRequest {
                        target: Some(v1::locate_request::Target::FileId(file(k, f).file_id)),
                        max_holders: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let held = located.files.iter().any(|l| {
                    l.holders
                        .iter()
                        .any(|h| h.peer_id == peers[k].peer.to_string())
                });
                let ops = history.get(&(k, f)).cloned().unwrap_or_default();
                // The state after the last acknowledged write, and whether
                // an unacknowledged one came after it (then either state).
                let last_acked = ops.iter().rposition(|(_, o)| *o == Outcome::Acked);
                let expected = last_acked.map(|i| ops[i].0);
                let open_after = ops[last_acked.map_or(0, |i| i + 1)..]
                    .iter()
                    .any(|(_, o)| *o == Outcome::Unknown);
                let ever_asked = ops.iter().any(|(p, _)| *p);
                match expected {
                    Some(e) if !open_after => assert_eq!(
                        held, e,
                        "central {} (#{i}): peer {k} file {f}: after {ops:?}",
                        c.name
                    ),
                    _ if !ever_asked => assert!(!held, "file {f} of peer {k} was never published"),
                    _ => {}
                }
            }
        }
    }
    eprintln!("history: {acked} acknowledged writes, {unknown} unknown, revision {rev}");
}

/// Wanted files on etcd: a Watch at one central hears a publish made
/// through another at once, with the fields of a Locate answer, for a
/// file id, an exact name and a query (Search's rules). The subscriptions
/// are bounded by CENTRAL_MAX_WATCHES_PER_PEER (the refusal names it), a
/// blank query is refused, a new Watch of the peer replaces its old
/// stream, and the peer's Leave ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_at_one_central_hears_a_publish_made_through_another() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let etcd = etcd(1).await;
    let root = tempfile::tempdir().unwrap();
    let eps = etcd.endpoints();
    let cs: Vec<Central> = (1..=2)
        .map(|i| central(root.path(), i, &eps, TTL))
        .collect();
    let (mut a, mut b) = (cs[0].client(), cs[1].client());
    let mut joined = Vec::new();
    for (k, c) in [&mut a, &mut b].into_iter().enumerate() {
        let peer = PeerId::new_random();
        let req = v1::JoinRequest {
            peer_id: peer.to_string(),
            peer_url: format!("http://127.0.0.1:{}", 9100 + k),
            ..Default::default()
        };
        let j = signed_join(c, &peer_key(&peer, 0), req).await.unwrap();
        joined.push((peer, j.into_inner().session_token));
    }
    let ((watcher, wt), (holder, ht)) = (joined[0].clone(), joined[1].clone());
    // Both keep their leases (4 s) for as long as the test runs.
    let beats: Vec<_> = joined
        .iter()
        .map(|(peer, token)| heartbeats(&cs[0], *peer, token.clone(), Duration::from_millis(700)))
        .collect();
    let watch = |ids: Vec<String>, names: Vec<&str>, queries: Vec<&str>| v1::WatchRequest {
        peer_id: watcher.to_string(),
        file_ids: ids,
        names: names.into_iter().map(Into::into).collect(),
        queries: queries.into_iter().map(Into::into).collect(),
    };

    // Limits, refused by name.
    let many = (0..101).map(|k| file(9, k).file_id).collect();
    let e = a
        .watch(authed(watch(many, vec![], vec![]), &wt))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("CENTRAL_MAX_WATCHES_PER_PEER"),
        "{}",
        e.message()
    );
    let e = a
        .watch(authed(watch(vec![], vec![], vec!["  "]), &wt))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = a
        .watch(authed(watch(vec![], vec![], vec![]), "wrong"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    let req = watch(vec![file(1, 0).file_id], vec!["p1-f1.bin"], vec!["P1 F2"]);
    let mut s = a.watch(authed(req, &wt)).await.unwrap().into_inner();
    let ready = s.message().await.unwrap().unwrap();
    assert!(ready.ready, "{ready:?}");

    // Through the other central: three files that match, one that does not.
    let files = (0..4).map(|k| file(1, k)).collect();
    b.publish(authed(
        v1::PublishRequest {
            peer_id: holder.to_string(),
            files,
            seq: 1,
        },
        &ht,
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(ev.files.len(), 1, "{ev:?}");
        let f = &ev.files[0];
        assert_eq!(f.holders.len(), 1, "{ev:?}");
        assert_eq!(f.holders[0].peer_id, holder.to_string());
        assert_eq!(f.holders[0].peer_url, "http://127.0.0.1:9101");
        got.push((
            ev.file_id.clone(),
            ev.name.clone(),
            ev.query.clone(),
            ev.matched_name.clone(),
            f.file_id.clone(),
            f.size,
        ));
    }
    got.sort();
    let (f0, f1, f2) = (file(1, 0), file(1, 1), file(1, 2));
    let mut want = vec![
        (
            f0.file_id.clone(),
            String::new(),
            String::new(),
            String::new(),
            f0.file_id,
            f0.size,
        ),
        (
            String::new(),
            "p1-f1.bin".into(),
            String::new(),
            String::new(),
            f1.file_id,
            f1.size,
        ),
        (
            String::new(),
            String::new(),
            "P1 F2".into(),
            "p1-f2.bin".into(),
            f2.file_id,
            f2.size,
        ),
    ];
    want.sort();
    assert_eq!(got, want);

    // A new Watch of the peer replaces the old stream.
    let req = watch(vec![file(1, 5).file_id], vec![], vec![]);
    let mut s2 = a.watch(authed(req, &wt)).await.unwrap().into_inner();
    assert!(s2.message().await.unwrap().unwrap().ready);
    let end = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), tonic::Code::Aborted, "{end:?}");
    // Leave ends it.
    a.leave(authed(
        v1::LeaveRequest {
            peer_id: watcher.to_string(),
        },
        &wt,
    ))
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), s2.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), tonic::Code::FailedPrecondition, "{end:?}");
    for b in beats {
        b.abort();
    }
}

/// What a central answers about `files`: per file, its size, names and
/// holders (sorted), or nothing.
async fn answers(
    c: &Central,
    files: &[SharedFile],
) -> Vec<Option<(u64, Vec<String>, Vec<String>)>> {
    let mut out = Vec::new();
    for f in files {
        out.push(c.locate(&f.file_id).await.map(|l| {
            let mut names = l.names.clone();
            names.sort();
            let mut holders: Vec<String> = l.holders.iter().map(|h| h.peer_id.clone()).collect();
            holders.sort();
            (l.size, names, holders)
        }));
    }
    out
}

/// Restart `c` (stopped) and wait until it answers Info: where its index
/// came from.
pub(super) async fn restarted(c: &mut Central) -> v1::IndexSource {
    c.restart();
    let i = wait_for(
        "the restarted central to answer",
        Duration::from_secs(30),
        || info(c),
    )
    .await;
    i.index_source()
}

/// A bigger island (issue 27): a central stopped cleanly writes a
/// snapshot of its index; restarted, it loads it and catches up with what
/// changed meanwhile through another central before it serves (nothing
/// lost, nothing stale). A snapshot older than etcd's compacted history,
/// or damaged, is not used: a full read, and the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_snapshot_and_catches_up_or_reads_everything() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let etcd = etcd(1).await;
    let root = tempfile::tempdir().unwrap();
    let eps = etcd.endpoints();
    let mut a = central(root.path(), 1, &eps, HISTORY_TTL);
    let b = central(root.path(), 2, &eps, HISTORY_TTL);
    let snapshot = a.dir().join("index.snapshot");
    let first = wait_for("A to answer", Duration::from_secs(30), || info(&a)).await;
    assert_eq!(first.index_source(), v1::IndexSource::FullRead);

    // Four peers, joined through A, kept alive through B.
    let (mut ca, mut cb) = (a.client(), b.client());
    let mut peers = Vec::new();
    let mut all: Vec<SharedFile> = Vec::new();
    for p in 0..4 {
        let peer = PeerId::new_random();
        let files: Vec<SharedFile> = (0..3).map(|k| file(p, k)).collect();
        all.extend(files.iter().cloned());
        let req = v1::JoinRequest {
            peer_id: peer.to_string(),
            peer_url: format!("http://127.0.0.1:{}", 9200 + p),
            files,
            ..Default::default()
        };
        let j = signed_join(&mut ca, &peer_key(&peer, 0), req)
            .await
            .unwrap();
        peers.push((peer, j.into_inner().session_token));
    }
    let beats: Vec<_> = peers
        .iter()
        .map(|(peer, token)| heartbeats(&b, *peer, token.clone(), Duration::from_millis(700)))
        .collect();
    let publish = |p: usize, files: Vec<SharedFile>, seq: u64| v1::PublishRequest {
        peer_id: peers[p].0.to_string(),
        files,
        seq,
    };

    // B applies the Joins through its own watch.
    let joined = all.clone();
    wait_for("B to see every Join", Duration::from_secs(10), || async {
        let seen = answers(&b, &joined).await;
        seen.iter().all(Option::is_some).then_some(())
    })
    .await;

    all.extend((10..13).map(|k| file(0, k)));
    all.push(file(9, 0));

    // 1. A stale snapshot catches up and loses nothing.
    a.terminate(Duration::from_secs(20));
    assert!(snapshot.is_file(), "a clean stop writes the snapshot");
    // Meanwhile, through B: a publish, an unpublish, a leave, a new peer.
    cb.publish(authed(
        publish(0, (10..12).map(|k| file(0, k)).collect(), 1),
        &peers[0].1,
    ))
    .await
    .unwrap();
    cb.unpublish(authed(
        v1::UnpublishRequest {
            peer_id: peers[1].0.to_string(),
            files: vec![v1::FileRef {
                file_id: file(1, 0).file_id,
                name: String::new(),
            }],
            seq: 1,
        },
        &peers[1].1,
    ))
    .await
    .unwrap();
    cb.leave(authed(
        v1::LeaveRequest {
            peer_id: peers[2].0.to_string(),
        },
        &peers[2].1,
    ))
    .await
    .unwrap();
    let late = PeerId::new_random();
    let req = v1::JoinRequest {
        peer_id: late.to_string(),
        peer_url: "http://127.0.0.1:9299".into(),
        files: vec![file(9, 0)],
        ..Default::default()
    };
    signed_join(&mut cb, &peer_key(&late, 0), req)
        .await
        .unwrap();
    let want = answers(&b, &all).await;
    assert_eq!(restarted(&mut a).await, v1::IndexSource::Snapshot);
    // Its very first answers are current: it caught up before serving.
    assert_eq!(answers(&a, &all).await, want);
    assert!(
        want[12].is_some() && want[3].is_none() && want[6].is_none(),
        "{want:?}"
    );

    // 2. A snapshot behind a compaction: a full read, the same answers.
    a.terminate(Duration::from_secs(20));
    cb.publish(authed(publish(0, vec![file(0, 12)], 2), &peers[0].1))
        .await
        .unwrap();
    let rev = etcd.put(0, "/unrelated/mark", "x").unwrap();
    etcd.compact(0, rev).unwrap();
    let want = answers(&b, &all).await;
    assert_eq!(restarted(&mut a).await, v1::IndexSource::FullReadStale);
    assert_eq!(answers(&a, &all).await, want);

    // 3. A damaged snapshot: deleted, a full read, the same answers; the
    //    full read is snapshotted again at once.
    a.terminate(Duration::from_secs(20));
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&snapshot, &bytes).unwrap();
    assert_eq!(restarted(&mut a).await, v1::IndexSource::FullReadCorrupt);
    assert_eq!(answers(&a, &all).await, want);
    wait_for("a fresh snapshot", Duration::from_secs(10), || async {
        std::fs::read(&snapshot)
            .ok()
            .filter(|b| *b != bytes)
            .map(|_| ())
    })
    .await;
    a.terminate(Duration::from_secs(20));
    assert_eq!(restarted(&mut a).await, v1::IndexSource::Snapshot);
    assert_eq!(answers(&a, &all).await, want);
    for t in beats {
        t.abort();
    }
}
