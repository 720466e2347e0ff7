//! `--island` (issue 27): an island simulated on this machine, measured.
//!
//! On etcd: a 3-member cluster (testkit's, on loopback) and 3 centrals on
//! it; with `--store sqlite` one SQLite central. `--peers` peers join with
//! their own Ed25519 keys (the signed Join of the tests), spread over the
//! centrals, holding `--files` files in total under music-library names
//! ([`track_name`], about 40 bytes). From the first Join on every peer
//! heartbeats its central at the default interval (10 s), all of them
//! through `--heartbeat-connections` connections per central. Then:
//!
//! * `join_seconds`: the whole populate;
//! * `rss_bytes_per_holding`: per central, VmRSS after populating minus
//!   VmRSS of the same central empty, over the holdings; the median;
//! * `etcd_db_bytes`: the largest member's `dbSize` (endpoint status);
//! * `locate_p99_ms_quiet` / `locate_p99_ms_heartbeating`: Locate of a
//!   random held id, 64 in flight for `--seconds`, at the first central,
//!   with every heartbeat paused (shorter than a lease) and then with
//!   all of them flowing; `heartbeats_per_second` is the rate of answered
//!   heartbeats during the second run;
//! * `startup_seconds`: a fourth central started beside the populated
//!   island, from spawn until a Locate of a known id answers;
//! * `restart_seconds`: the second central stopped (SIGTERM) and started
//!   again on its own data folder, until it answers likewise (SQLite: the
//!   central itself).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peerdex_proto::PeerId;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::locate_request::Target;
use peerdex_proto::v1::{self, JoinRequest, LocateRequest};
use peerdex_testkit::etcd::EtcdCluster;
use peerdex_testkit::grpc::{authed, fid, peer_key, signed_join};

use crate::args::{Args, HEARTBEAT_SECS, Store, track_name};
use crate::load::locate_run;
use crate::procs::{Proc, channel, rss_mib, sigterm_and_wait, start_central_env};

/// The island's peers: id, session token, the central it joined.
type Peers = Arc<std::sync::Mutex<Vec<(PeerId, String, usize)>>>;

/// Heartbeats in flight on one connection at most.
const BEATS_IN_FLIGHT: usize = 256;

/// Heartbeats answered and refused (or failed).
#[derive(Default)]
struct Beats {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Answered, but the peer was told to join again: its session was
    /// lost (the bench's peers do not join again).
    rejoin: AtomicU64,
    /// When each peer's last heartbeat was answered.
    last: std::sync::Mutex<std::collections::HashMap<PeerId, Instant>>,
    /// Answered heartbeats that came more than a lease TTL (30 s, the
    /// default) after the peer's previous one: the bench fell behind, and
    /// the central may have ended the session meanwhile.
    late: AtomicU64,
    /// The longest time between two answered heartbeats of one peer, ms.
    max_gap_ms: AtomicU64,
    /// The peers told to join again, each with how long before its first
    /// such answer its last heartbeat had been answered (a lost session
    /// of a peer that kept heartbeating shows a short gap here).
    lost: std::sync::Mutex<std::collections::HashMap<PeerId, Duration>>,
    /// Every failure of the run by gRPC code, with the first message of
    /// each code (why heartbeats fail, in the report).
    why: std::sync::Mutex<std::collections::BTreeMap<String, (u64, String)>>,
}

impl Beats {
    /// `peer`'s heartbeat was answered now: how long since the last.
    fn answered(&self, peer: PeerId) {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if let Some(before) = last.insert(peer, now) {
            let gap = now - before;
            self.max_gap_ms
                .fetch_max(gap.as_millis() as u64, Ordering::Relaxed);
            if gap > Duration::from_secs(LEASE_TTL_SECS) {
                self.late.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `peer` was told to join again now.
    fn told_to_rejoin(&self, peer: PeerId) {
        self.rejoin.fetch_add(1, Ordering::Relaxed);
        let since = self
            .last
            .lock()
            .ok()
            .and_then(|l| l.get(&peer).map(|t| t.elapsed()))
            .unwrap_or(Duration::MAX);
        if let Ok(mut lost) = self.lost.lock()
            && !lost.contains_key(&peer)
        {
            eprintln!(
                "  peer {peer} told to join again, {:.1} s after its last answered heartbeat",
                since.as_secs_f64()
            );
            lost.insert(peer, since);
        }
    }

    /// How many peers were told to join again, and the longest time any
    /// of them had been answered before (seconds; none answered: NaN).
    fn lost(&self) -> (usize, f64) {
        let Ok(lost) = self.lost.lock() else {
            return (0, f64::NAN);
        };
        let longest = lost
            .values()
            .filter(|d| **d != Duration::MAX)
            .map(Duration::as_secs_f64)
            .fold(f64::NAN, f64::max);
        (lost.len(), longest)
    }
}

/// The central's default lease TTL (`CENTRAL_LEASE_TTL_SECS`).
const LEASE_TTL_SECS: u64 = 30;

/// The 1-minute load average of the machine (shared with other work).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A central of the island on `data`, with the island's settings.
fn central(
    bin: &PathBuf,
    data: &Path,
    endpoints: Option<&str>,
    holdings: u64,
) -> anyhow::Result<Proc> {
    let max_files = (holdings * 2).max(5_000_000).to_string();
    let mut env = vec![
        ("CENTRAL_MAX_FILES", max_files.as_str()),
        ("CENTRAL_MAX_KEYS", "10000000"),
    ];
    if let Some(e) = endpoints {
        env.push(("CENTRAL_ETCD_ENDPOINTS", e));
    }
    start_central_env(bin, &data.to_path_buf(), &env)
}

/// Start a central with `start` and time it from spawn until a Locate of
/// `probe` answers with the file.
async fn time_to_serve(
    start: impl FnOnce() -> anyhow::Result<Proc>,
    probe: &str,
) -> anyhow::Result<(Proc, f64)> {
    let t = Instant::now();
    let proc = start()?;
    let deadline = t + Duration::from_secs(600);
    let mut client = loop {
        if let Ok(ch) = channel(proc.addr).await {
            break DirectoryClient::new(ch);
        }
        if Instant::now() > deadline {
            bail!("the central at {} never accepted a connection", proc.addr);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    loop {
        let req = LocateRequest {
            target: Some(Target::FileId(probe.into())),
            max_holders: 0,
        };
        if let Ok(r) = client.locate(req).await
            && !r.get_ref().files.is_empty()
        {
            return Ok((proc, t.elapsed().as_secs_f64()));
        }
        if Instant::now() > deadline {
            bail!("the central at {} never found the probe file", proc.addr);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Join `args.peers` peers spread over `addrs`, `per_peer` files each.
async fn populate(
    addrs: &[std::net::SocketAddr],
    args: &Args,
    per_peer: u64,
    peers: Peers,
    retries: Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let mut clients = Vec::new();
    for a in addrs {
        clients.push(DirectoryClient::new(channel(*a).await?));
    }
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.join_concurrency)
        .map(|_| {
            let (clients, next, peers, total, retries) = (
                clients.clone(),
                next.clone(),
                peers.clone(),
                args.peers,
                retries.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let p = next.fetch_add(1, Ordering::Relaxed);
                    if p >= total {
                        return Ok::<_, tonic::Status>(());
                    }
                    let at = (p % clients.len() as u64) as usize;
                    let files = (p * per_peer..(p + 1) * per_peer)
                        .map(|i| v1::SharedFile {
                            replica: false,
                            file_id: fid(i),
                            size: i * 1000 + 1,
                            name: track_name(i),
                        })
                        .collect();
                    let peer = PeerId::new_random();
                    let req = JoinRequest {
                        peer_id: peer.to_string(),
                        peer_url: format!(
                            "http://10.{}.{}.{}:7071",
                            p >> 16,
                            (p >> 8) & 255,
                            p & 255
                        ),
                        files,
                        ..Default::default()
                    };
                    let mut c = clients[at].clone();
                    // A central that answers Unavailable (etcd busy, or its
                    // watch behind a committed write) asks for the call
                    // again, as a PServer makes it: a few times, counted.
                    let mut tries = 0;
                    let token = loop {
                        match signed_join(&mut c, &peer_key(&peer, 0), req.clone()).await {
                            Ok(a) => break a.into_inner().session_token,
                            Err(e) if e.code() == tonic::Code::Unavailable && tries < 5 => {
                                tries += 1;
                                retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(e) => return Err(e),
                        }
                    };
                    if let Ok(mut j) = peers.lock() {
                        j.push((peer, token, at));
                    }
                    if (p + 1) % 1000 == 0 {
                        eprintln!("  joined {} peers", p + 1);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Every peer of central `at` heartbeats once per interval, spread evenly
/// over `connections` connections to it, until `stop`; none while `paused`.
fn heartbeats(
    addr: std::net::SocketAddr,
    at: usize,
    connections: usize,
    peers: Peers,
    beats: Arc<Beats>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
) {
    for conn in 0..connections {
        let (peers, beats, stop, paused) =
            (peers.clone(), beats.clone(), stop.clone(), paused.clone());
        tokio::spawn(async move {
            let Ok(ch) = channel(addr).await else { return };
            let client = DirectoryClient::new(ch);
            let slots = Arc::new(tokio::sync::Semaphore::new(BEATS_IN_FLIGHT));
            while !stop.load(Ordering::Relaxed) {
                let mine: Vec<(PeerId, String)> = peers
                    .lock()
                    .map(|j| {
                        j.iter()
                            .filter(|(_, _, c)| *c == at)
                            .skip(conn)
                            .step_by(connections)
                            .map(|(p, t, _)| (*p, t.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                if mine.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let cycle = Instant::now();
                let gap = Duration::from_secs(HEARTBEAT_SECS) / mine.len() as u32;
                for (i, (peer, token)) in mine.into_iter().enumerate() {
                    while paused.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let (mut c, beats) = (client.clone(), beats.clone());
                    tokio::spawn(async move {
                        let req = v1::HeartbeatRequest {
                            declined: Vec::new(),
                            peer_id: peer.to_string(),
                            load: None,
                        };
                        let counter = match c.heartbeat(authed(req, &token)).await {
                            Ok(a) if a.get_ref().rejoin => {
                                beats.told_to_rejoin(peer);
                                drop(permit);
                                return;
                            }
                            Ok(_) => {
                                beats.answered(peer);
                                &beats.ok
                            }
                            Err(e) => {
                                if let Ok(mut why) = beats.why.lock() {
                                    let entry = why
                                        .entry(format!("{:?}", e.code()))
                                        .or_insert_with(|| (0, e.message().to_owned()));
                                    entry.0 += 1;
                                }
                                &beats.failed
                            }
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        drop(permit);
                    });
                    let due = cycle + gap * (i as u32 + 1);
                    tokio::time::sleep_until(due.into()).await;
                }
            }
        });
    }
}

fn addrs_now(centrals: &[Proc]) -> Vec<std::net::SocketAddr> {
    centrals.iter().map(|c| c.addr).collect()
}

/// Wait until every central's index holds `files` contents.
async fn converge(addrs: &[std::net::SocketAddr], files: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    for a in addrs {
        let mut c = DirectoryClient::new(channel(*a).await?);
        loop {
            let n = c.info(v1::InfoRequest {}).await?.into_inner().files;
            if n >= files {
                break;
            }
            if Instant::now() > deadline {
                bail!("the central at {a} holds {n} of {files} files after 300 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// `--island`: see the module doc.
pub(crate) async fn island(args: &Args, bin: &PathBuf, data: &Path) -> anyhow::Result<()> {
    let load_before = load_average();
    let per_peer = (args.files / args.peers).max(1);
    let holdings = per_peer * args.peers;
    let cluster = match args.store {
        Store::Sqlite => None,
        Store::Etcd => {
            let dir = data.join("etcd");
            eprintln!("starting a 3-member etcd cluster in {} …", dir.display());
            Some(
                tokio::task::spawn_blocking(move || EtcdCluster::start_in(&dir, 3))
                    .await?
                    .map_err(anyhow::Error::msg)?,
            )
        }
    };
    let endpoints = cluster.as_ref().map(EtcdCluster::endpoints);
    let n = if cluster.is_some() { 3 } else { 1 };
    let mut centrals = Vec::new();
    for i in 0..n {
        centrals.push(central(
            bin,
            &data.join(format!("c{i}")),
            endpoints.as_deref(),
            holdings,
        )?);
    }
    let addrs = addrs_now(&centrals);
    converge(&addrs, 0).await?;
    let empty: Vec<f64> = centrals
        .iter()
        .map(|c| rss_mib(c.child.id()).unwrap_or(0.0))
        .collect();
    eprintln!(
        "{n} central(s) at {addrs:?}; joining {} peers holding {holdings} files …",
        args.peers
    );
    let peers: Peers = Arc::default();
    let beats = Arc::new(Beats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    for (at, a) in addrs.iter().enumerate() {
        heartbeats(
            *a,
            at,
            args.heartbeat_connections as usize,
            peers.clone(),
            beats.clone(),
            stop.clone(),
            paused.clone(),
        );
    }
    let join_retries = Arc::new(AtomicU64::new(0));
    let join_seconds =
        populate(&addrs, args, per_peer, peers.clone(), join_retries.clone()).await?;
    eprintln!("joined in {join_seconds:.1} s; waiting for every central to hold them all …");
    converge(&addrs, holdings).await?;
    let per_holding: Vec<f64> = centrals
        .iter()
        .zip(&empty)
        .map(|(c, e)| (rss_mib(c.child.id()).unwrap_or(0.0) - e) * 1_048_576.0 / holdings as f64)
        .collect();
    let rss_bytes_per_holding = median(per_holding.clone());
    let etcd_db_bytes = cluster.as_ref().map(|c| {
        (0..c.len())
            .filter_map(|i| c.db_size(i).ok())
            .max()
            .unwrap_or(0)
    });

    eprintln!("Locate, heartbeats paused, for {} s …", args.seconds);
    paused.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quiet = locate_run(addrs[0], holdings, args).await?;
    paused.store(false, Ordering::Relaxed);
    // The heartbeats due meanwhile go out at once: let them pass.
    tokio::time::sleep(Duration::from_secs(HEARTBEAT_SECS / 2)).await;
    eprintln!("Locate, heartbeats flowing, for {} s …", args.seconds);
    let (ok0, failed0, t0) = (
        beats.ok.load(Ordering::Relaxed),
        beats.failed.load(Ordering::Relaxed),
        Instant::now(),
    );
    let busy = locate_run(addrs[0], holdings, args).await?;
    let secs = t0.elapsed().as_secs_f64();
    let heartbeats_per_second = (beats.ok.load(Ordering::Relaxed) - ok0) as f64 / secs;
    let heartbeat_failures = beats.failed.load(Ordering::Relaxed) - failed0;

    let probe = fid(holdings / 2);
    let startup_seconds = match &endpoints {
        Some(e) => {
            eprintln!("a fourth central starts beside the island …");
            let dir = data.join("c-new");
            let (mut p, t) =
                time_to_serve(|| central(bin, &dir, Some(e.as_str()), holdings), &probe).await?;
            sigterm_and_wait(&mut p)?;
            Some(t)
        }
        None => None,
    };
    let (late, max_gap_ms, rejoin) = (
        beats.late.load(Ordering::Relaxed),
        beats.max_gap_ms.load(Ordering::Relaxed),
        beats.rejoin.load(Ordering::Relaxed),
    );
    eprintln!("one central restarts on its own data folder …");
    let again = if n > 1 { 1 } else { 0 };
    sigterm_and_wait(&mut centrals[again])?;
    let dir = data.join(format!("c{again}"));
    // Its log of the run so far is kept beside the new one.
    let _ = std::fs::rename(
        dir.with_extension("log"),
        dir.with_extension("before-restart.log"),
    );
    let (p, restart_seconds) = time_to_serve(
        || central(bin, &dir, endpoints.as_deref(), holdings),
        &probe,
    )
    .await?;
    centrals[again] = p;
    // A restart must cost no session: a heartbeat interval and a bit
    // later, every central still holds every holding and no peer was
    // told to join again.
    tokio::time::sleep(Duration::from_secs(HEARTBEAT_SECS + 2)).await;
    let mut after_restart = true;
    for a in addrs_now(&centrals) {
        let mut c = DirectoryClient::new(channel(a).await?);
        let n = c.info(v1::InfoRequest {}).await?.into_inner().files;
        if n != holdings {
            eprintln!("the central at {a} holds {n} of {holdings} files after the restart");
            after_restart = false;
        }
    }
    let load_after = load_average();
    let (lost_peers, lost_gap) = beats.lost();
    stop.store(true, Ordering::Relaxed);
    for c in &mut centrals {
        sigterm_and_wait(c).context("stop a central")?;
    }
    drop(cluster);
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(data);
    }

    let ms = |us: u64| us as f64 / 1000.0;
    let report = serde_json::json!({
        "store": match args.store { Store::Etcd => "etcd", Store::Sqlite => "sqlite" },
        "centrals": n,
        "peers": args.peers,
        "holdings": holdings,
        "join_seconds": join_seconds,
        "join_retries": join_retries.load(Ordering::Relaxed),
        "rss_bytes_per_holding": rss_bytes_per_holding,
        "rss_bytes_per_holding_each": per_holding,
        "etcd_db_bytes": etcd_db_bytes,
        "heartbeats_per_second": heartbeats_per_second,
        "heartbeat_failures": heartbeat_failures,
        "heartbeats_told_to_rejoin": beats.rejoin.load(Ordering::Relaxed),
        "peers_told_to_rejoin": lost_peers,
        "rejoin_after_answered_seconds_max": lost_gap,
        "heartbeats_told_to_rejoin_before_restart": rejoin,
        "heartbeats_late_before_restart": late,
        "heartbeat_max_gap_seconds_before_restart": max_gap_ms as f64 / 1000.0,
        "every_holding_listed_after_restart": after_restart,
        "heartbeat_failures_by_code": beats.why.lock().map(|w| w.iter().map(|(code, (n, first))| {
            (code.clone(), serde_json::json!({ "count": n, "first": first }))
        }).collect::<serde_json::Map<_, _>>()).unwrap_or_default(),
        "locate_p99_ms_quiet": ms(quiet.p99_us),
        "locate_p99_ms_heartbeating": ms(busy.p99_us),
        "locate_errors": quiet.errors + busy.errors,
        "startup_seconds": startup_seconds,
        "restart_seconds": restart_seconds,
        "load_average": [load_before, load_after],
    });
    if args.json {
        println!("{report}");
    } else {
        println!("\n| measure | value |\n|---|---:|");
        if let Some(o) = report.as_object() {
            for (k, v) in o {
                println!("| {k} | {v} |");
            }
        }
    }
    Ok(())
}
