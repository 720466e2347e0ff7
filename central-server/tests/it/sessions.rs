//! Liveness kept by the centrals (issue 27): a heartbeat stays in the
//! memory of the central that keeps the peer's session, a heartbeat at
//! another central adopts it, and the leader ends the sessions of a dead
//! central that nobody adopted. Real etcd, real `central-server`
//! processes killed with `kill -9`, driven over gRPC.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerdex_proto::PeerId;
use peerdex_proto::v1::{self, SharedFile};
use peerdex_testkit::central::CentralProc as Central;
use peerdex_testkit::etcd::EtcdCluster;
use peerdex_testkit::grpc::{authed, peer_key, signed_join};
use peerdex_testkit::wait_for;

use super::ha::{ONE_AT_A_TIME, TTL, central, etcd, info};

fn file(peer: usize, k: usize) -> SharedFile {
    let id = blake3::hash(format!("sessions {peer}/{k}").as_bytes());
    SharedFile {
        replica: false,
        file_id: id.to_hex().to_string(),
        size: 10 + k as u64,
        name: format!("s{peer}-{k}.bin"),
    }
}

/// `n` centrals (lease TTL [`TTL`]) on a one-member etcd, all answering;
/// the cluster and the data folders live as long as the returned values.
async fn centrals(n: usize) -> (EtcdCluster, tempfile::TempDir, Vec<Central>) {
    let etcd = etcd(1).await;
    let root = tempfile::tempdir().unwrap();
    let eps = etcd.endpoints();
    let cs: Vec<Central> = (1..=n)
        .map(|i| central(root.path(), i, &eps, TTL))
        .collect();
    for c in &cs {
        wait_for("the centrals to answer", Duration::from_secs(30), || {
            info(c)
        })
        .await;
    }
    (etcd, root, cs)
}

/// Join `peer` (number `k`) with three files through `c`; its token.
async fn join(c: &Central, peer: &PeerId, k: usize) -> String {
    let req = v1::JoinRequest {
        peer_id: peer.to_string(),
        peer_url: format!("http://127.0.0.1:{}", 9100 + k),
        files: (0..3).map(|f| file(k, f)).collect(),
        ..Default::default()
    };
    signed_join(&mut c.client(), &peer_key(peer, k as u8), req)
        .await
        .expect("join")
        .into_inner()
        .session_token
}

/// Heartbeats of `peer` every 500 ms at `cs[first]`, and at the next
/// central when one fails (as a PServer moves on), until aborted; every
/// answer that said "join again" is recorded in `rejoins`.
fn beats(
    cs: &[Central],
    first: usize,
    peer: PeerId,
    token: String,
    rejoins: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    let clients: Vec<_> = cs.iter().map(Central::client).collect();
    tokio::spawn(async move {
        let mut at = first;
        loop {
            let req = v1::HeartbeatRequest {
                declined: Vec::new(),
                peer_id: peer.to_string(),
                load: None,
            };
            match clients[at % clients.len()]
                .clone()
                .heartbeat(authed(req, &token))
                .await
            {
                Ok(a) if a.get_ref().rejoin => {
                    rejoins
                        .lock()
                        .unwrap()
                        .push(format!("{peer} at central {at}"));
                }
                Ok(_) => {}
                Err(_) => {
                    at += 1;
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// `n` peers (numbers `0..n`) joined through `cs[0]`, each heartbeating
/// there from now on (see [`beats`]); the peers and their heartbeat tasks,
/// in that order.
async fn join_beating(
    cs: &[Central],
    n: usize,
    rejoins: &Arc<Mutex<Vec<String>>>,
) -> (Vec<PeerId>, Vec<tokio::task::JoinHandle<()>>) {
    let (mut peers, mut tasks) = (Vec::new(), Vec::new());
    for k in 0..n {
        let peer = PeerId::new_random();
        let token = join(&cs[0], &peer, k).await;
        tasks.push(beats(cs, 0, peer, token, rejoins.clone()));
        peers.push(peer);
    }
    (peers, tasks)
}

/// Whether every file of peer `k` is listed with `peer` as a holder at
/// `c` (`Some(false)`: none of them; `None`: some but not all).
async fn listed(c: &Central, peer: &PeerId, k: usize) -> Option<bool> {
    let mut held = 0;
    for f in 0..3 {
        if c.locate(&file(k, f).file_id)
            .await
            .is_some_and(|l| l.holders.iter().any(|h| h.peer_id == peer.to_string()))
        {
            held += 1;
        }
    }
    match held {
        3 => Some(true),
        0 => Some(false),
        _ => None,
    }
}

/// A central killed with `kill -9`: the peers it kept move to another
/// central with their next heartbeat (no Join again, nothing re-sent) and
/// their files stay listed at every surviving central all along; a peer
/// that died with it is removed within the stated bound (the central's
/// lease TTL, then one lease TTL for adoptions, plus sweeps and, when
/// the dead central led, an election).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_central_s_peers_move_and_its_dead_peers_go() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_etcd, _root, mut cs) = centrals(3).await;
    const LIVE: usize = 4;
    let rejoins = Arc::new(Mutex::new(Vec::new()));
    // Peers 0..LIVE live on; peer LIVE dies with the central.
    let (peers, mut tasks) = join_beating(&cs, LIVE + 1, &rejoins).await;
    for c in &cs[1..] {
        for (k, p) in peers.iter().enumerate() {
            wait_for(
                "every peer listed everywhere",
                Duration::from_secs(10),
                || async { (listed(c, p, k).await == Some(true)).then_some(()) },
            )
            .await;
        }
    }

    tasks.pop().unwrap().abort();
    cs[0].proc.kill9();
    let killed = Instant::now();
    // Until the dead peer is gone from both survivors, and for two lease
    // TTLs more: every live peer listed in full at both, every time.
    let bound = TTL * 2 + Duration::from_secs(20);
    let mut gone_after = None;
    let mut missing = Vec::new();
    loop {
        for c in &cs[1..] {
            for (k, p) in peers[..LIVE].iter().enumerate() {
                if listed(c, p, k).await != Some(true) {
                    missing.push(format!(
                        "peer {k} not fully listed at {} {:?} after the kill",
                        c.name,
                        killed.elapsed()
                    ));
                }
            }
        }
        if gone_after.is_none() {
            let mut gone = true;
            for c in &cs[1..] {
                gone &= listed(c, &peers[LIVE], LIVE).await == Some(false);
            }
            if gone {
                gone_after = Some(killed.elapsed());
            }
        }
        match gone_after {
            Some(t) if killed.elapsed() > t + TTL * 2 => break,
            None if killed.elapsed() > bound => break,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    for t in tasks {
        t.abort();
    }
    let logs = cs[1].all_logs() + &cs[2].all_logs();
    assert!(
        missing.is_empty(),
        "a live peer's files went missing: {missing:?}\n{logs}"
    );
    let gone_after = gone_after.unwrap_or_else(|| {
        panic!("the dead peer is still listed {bound:?} after its central was killed\n{logs}")
    });
    eprintln!("the dead peer was removed {gone_after:?} after its central was killed");
    assert!(
        rejoins.lock().unwrap().is_empty(),
        "live peers were told to join again: {:?}",
        rejoins.lock().unwrap()
    );
    assert!(
        logs.contains("session adopted from another central"),
        "the survivors adopted the sessions"
    );
}

/// etcd's count of lease renewals, read from a member's `/metrics`.
async fn lease_renewals(url: &str) -> f64 {
    peerdex_testkit::tls::install_provider();
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_lease_renewed_total "))
        .unwrap_or_else(|| panic!("no etcd_debugging_lease_renewed_total in etcd's metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Heartbeats at the central that keeps the session never reach etcd:
/// 40 peers heartbeating twice a second for 4 s (320 heartbeats) cost
/// etcd no more lease renewals than the central's own lease takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_stay_in_the_central_that_keeps_the_session() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (etcd, _root, cs) = centrals(1).await;
    let url = etcd.client_url(0);
    // The central's own leases (its lease, the election's) as a baseline:
    // 4 s without peers, then 4 s with 40 peers heartbeating.
    let start = lease_renewals(&url).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle = lease_renewals(&url).await - start;
    let rejoins = Arc::new(Mutex::new(Vec::new()));
    let (peers, tasks) = join_beating(&cs, 40, &rejoins).await;
    let before = lease_renewals(&url).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for t in tasks {
        t.abort();
    }
    let renewals = lease_renewals(&url).await - before;
    // One per heartbeat before issue 27's change: about 320.
    assert!(
        renewals <= idle + 4.0,
        "{renewals} lease renewals at etcd for about 320 heartbeats (without heartbeats: {idle})"
    );
    assert!(rejoins.lock().unwrap().is_empty());
    // And the peers are live: all listed.
    for (k, p) in peers.iter().enumerate().take(5) {
        assert_eq!(listed(&cs[0], p, k).await, Some(true));
    }
}

/// The lease of the central at `dir`, as it wrote it down.
fn lease_of(c: &Central) -> i64 {
    std::fs::read_to_string(c.dir().join("central.lease"))
        .expect("the central wrote its lease down")
        .trim()
        .parse()
        .unwrap()
}

/// etcd loses a central's lease (as when the central is cut off, or
/// starved of CPU, for longer than its TTL; here revoked): the central
/// grants it again under the same id, so the sessions that name it stay
/// its own: no peer is told to join again, none is adopted, none ended,
/// and the other central (whichever leads) lists every file all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_whose_lease_etcd_lost_takes_it_back_and_keeps_its_sessions() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (etcd, _root, cs) = centrals(2).await;
    const PEERS: usize = 3;
    let rejoins = Arc::new(Mutex::new(Vec::new()));
    let (peers, tasks) = join_beating(&cs, PEERS, &rejoins).await;
    for (k, p) in peers.iter().enumerate() {
        wait_for(
            "every peer listed at the other central",
            Duration::from_secs(10),
            || async { (listed(&cs[1], p, k).await == Some(true)).then_some(()) },
        )
        .await;
    }
    let lease = lease_of(&cs[0]);
    assert!(
        etcd.lease_ttl(0, lease).unwrap().is_some(),
        "the central's lease is alive"
    );
    etcd.revoke_lease(0, lease).unwrap();
    let lost = Instant::now();
    assert_eq!(
        etcd.lease_ttl(0, lease).unwrap(),
        None,
        "etcd lost the lease"
    );
    // Back under the same id within a keep-alive period (a third of the
    // TTL) and a bit.
    wait_for("the central's lease back", TTL * 2, || async {
        etcd.lease_ttl(0, lease).unwrap().map(|_| ())
    })
    .await;
    eprintln!("the lease was back {:?} after etcd lost it", lost.elapsed());
    // For three lease TTLs (past the leader's grace for a dead central's
    // sessions): every file listed at both centrals, every time.
    let mut missing = Vec::new();
    while lost.elapsed() < TTL * 3 {
        for c in &cs {
            for (k, p) in peers.iter().enumerate() {
                if listed(c, p, k).await != Some(true) {
                    missing.push(format!("peer {k} at {} {:?} after", c.name, lost.elapsed()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.abort();
    }
    let logs = cs[0].all_logs() + &cs[1].all_logs();
    assert!(
        missing.is_empty(),
        "files went missing: {missing:?}\n{logs}"
    );
    assert!(
        rejoins.lock().unwrap().is_empty(),
        "peers were told to join again: {:?}\n{logs}",
        rejoins.lock().unwrap()
    );
    assert!(logs.contains("this central's lease is back"), "{logs}");
    assert!(
        !logs.contains("session adopted") && !logs.contains("sessions ended"),
        "nothing moved, nothing ended:\n{logs}"
    );
    assert_eq!(lease_of(&cs[0]), lease, "the same lease, written down");
}
