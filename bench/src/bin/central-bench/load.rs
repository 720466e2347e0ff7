//! The load generators: populate through Join, keep the leases alive,
//! drive a call with N in flight into a histogram, and the three Locate
//! measurements (quiet, under a search flood, during a mass expiry).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peerdex_proto::PeerId;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::locate_request::Target;
use peerdex_proto::v1::{self, JoinRequest, LocateRequest};
use peerdex_testkit::grpc::{authed, fid, peer_key, signed_join};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::args::{Args, FLOOD_QUERIES, HEARTBEAT_SECS, Joined, LEASE_TTL_SECS, file_name};
use crate::procs::{channel, swept};

pub(crate) struct Run {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) rps: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
}

/// `concurrency` workers call `call` in a loop for `secs`.
pub(crate) async fn drive<F, Fut>(concurrency: usize, secs: u64, call: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let run = drive_until(concurrency, stop, call).await;
    timer.abort();
    run
}

/// `concurrency` workers call `call` in a loop until `stop` is set.
pub(crate) async fn drive_until<F, Fut>(concurrency: usize, stop: Arc<AtomicBool>, call: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency as u64)
        .map(|w| {
            let (call, stop) = (call.clone(), stop.clone());
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let mut errors = 0;
                let mut x = 0x2545_F491_4F6C_DD1D_u64 ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let t = Instant::now();
                    let ok = call(x).await;
                    h.saturating_record(t.elapsed().as_micros() as u64);
                    if !ok {
                        errors += 1;
                    }
                }
                (h, errors)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.await.expect("worker");
        all.add(h).expect("same bounds");
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Run {
        requests: all.len(),
        errors,
        rps: all.len() as f64 / elapsed,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        max_us: all.max(),
    }
}

pub(crate) fn locate_call(
    client: DirectoryClient<Channel>,
    files: u64,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
+ Send
+ Sync
+ 'static {
    move |x| {
        let mut c = client.clone();
        Box::pin(async move {
            let req = LocateRequest {
                target: Some(Target::FileId(fid(x % files))),
                max_holders: 0,
            };
            matches!(c.locate(req).await, Ok(r) if !r.get_ref().files.is_empty())
        })
    }
}

/// Locate under a search flood: `clients` callers loop the
/// [`FLOOD_QUERIES`] while Locate is measured. Returns the Locate run and,
/// per query, (answers, truncated answers, errors, answers per second).
pub(crate) async fn flood_run(
    addr: SocketAddr,
    files: u64,
    args: &Args,
) -> anyhow::Result<(Run, Vec<(&'static str, u64, u64, u64, f64)>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut flood = Vec::new();
    for k in 0..args.flood_clients {
        let q = FLOOD_QUERIES[k % FLOOD_QUERIES.len()];
        let (mut c, stop) = (DirectoryClient::new(channel(addr).await?), stop.clone());
        flood.push(tokio::spawn(async move {
            let (mut n, mut cut, mut errors) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let req = v1::SearchRequest {
                    query: q.into(),
                    limit: 50,
                    page_token: String::new(),
                };
                match c.search(req).await {
                    Ok(r) => {
                        n += 1;
                        cut += u64::from(r.into_inner().truncated);
                    }
                    Err(_) => errors += 1,
                }
            }
            (q, n, cut, errors)
        }));
    }
    let locate = drive(
        args.concurrency,
        args.seconds,
        locate_call(DirectoryClient::new(channel(addr).await?), files),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let mut per_query: Vec<(&'static str, u64, u64, u64, f64)> =
        FLOOD_QUERIES.iter().map(|&q| (q, 0, 0, 0, 0.0)).collect();
    for f in flood {
        let (q, n, cut, errors) = f.await?;
        if let Some(e) = per_query.iter_mut().find(|e| e.0 == q) {
            e.1 += n;
            e.2 += cut;
            e.3 += errors;
            e.4 = e.1 as f64 / secs;
        }
    }
    Ok((locate, per_query))
}

/// Heartbeat every joined peer once per heartbeat interval, spread evenly
/// over `workers` sequential callers, until `stop`; none is sent while
/// `paused`.
pub(crate) fn keepalive(
    addr: SocketAddr,
    joined: Joined,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    workers: usize,
) {
    for w in 0..workers {
        let (joined, stop, paused) = (joined.clone(), stop.clone(), paused.clone());
        tokio::spawn(async move {
            let Ok(ch) = channel(addr).await else { return };
            let mut c = DirectoryClient::new(ch);
            while !stop.load(Ordering::Relaxed) {
                let mine: Vec<(PeerId, String)> = joined
                    .lock()
                    .map(|j| j.iter().skip(w).step_by(workers).cloned().collect())
                    .unwrap_or_default();
                let cycle = Instant::now();
                let gap = Duration::from_secs(HEARTBEAT_SECS) / (mine.len().max(1) as u32);
                for (i, (peer, token)) in mine.iter().enumerate() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Paused for one short measurement (well within a
                    // lease): the heartbeats due meanwhile go out after.
                    while paused.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let req = v1::HeartbeatRequest {
                        declined: Vec::new(),
                        peer_id: peer.to_string(),
                        load: None,
                    };
                    let _ = c.heartbeat(authed(req, token)).await;
                    let due = cycle + gap * (i as u32 + 1);
                    tokio::time::sleep_until(due.into()).await;
                }
                if mine.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
}

/// Locate while `peers` peers of `per_peer` files, which heartbeat
/// together once, expire and are swept. Returns the Locate run, the
/// sweeper's log lines (for the report) and how long the sweep took.
pub(crate) async fn expiry_run(
    addr: SocketAddr,
    data: &std::path::Path,
    files: u64,
    args: &Args,
) -> anyhow::Result<(Run, Vec<String>, Duration)> {
    let mut client = DirectoryClient::new(channel(addr).await?);
    let files_before = client.info(v1::InfoRequest {}).await?.into_inner().files;
    let joined: Joined = Arc::default();
    let base = files + 1_000_000;
    let next = Arc::new(AtomicU64::new(0));
    let (peers, per_peer) = (args.expire_peers, args.expire_files);
    let workers: Vec<_> = (0..args.join_concurrency)
        .map(|_| {
            let (mut c, next, joined) = (client.clone(), next.clone(), joined.clone());
            tokio::spawn(async move {
                loop {
                    let p = next.fetch_add(1, Ordering::Relaxed);
                    if p >= peers {
                        return Ok::<_, tonic::Status>(());
                    }
                    let files = (base + p * per_peer..base + (p + 1) * per_peer)
                        .map(|i| v1::SharedFile {
                            replica: false,
                            file_id: fid(i),
                            size: i + 1,
                            name: file_name(i),
                        })
                        .collect();
                    let peer = PeerId::new_random();
                    let r = signed_join(
                        &mut c,
                        &peer_key(&peer, 0),
                        JoinRequest {
                            peer_id: peer.to_string(),
                            peer_url: format!("http://10.200.{}.{}:7071", p >> 8, p & 255),
                            files,
                            ..Default::default()
                        },
                    )
                    .await?;
                    if let Ok(mut j) = joined.lock() {
                        j.push((peer, r.into_inner().session_token));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    // One last heartbeat each, all at once: they expire together.
    let all: Vec<(PeerId, String)> = joined.lock().map(|j| j.clone()).unwrap_or_default();
    let beats: Vec<_> = all
        .into_iter()
        .map(|(peer, token)| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let req = v1::HeartbeatRequest {
                    declined: Vec::new(),
                    peer_id: peer.to_string(),
                    load: None,
                };
                c.heartbeat(authed(req, &token)).await.is_ok()
            })
        })
        .collect();
    for b in beats {
        b.await?;
    }
    let expires = Instant::now() + Duration::from_secs(LEASE_TTL_SECS);
    eprintln!("  {peers} peers x {per_peer} files joined; they expire in {LEASE_TTL_SECS} s …");
    tokio::time::sleep_until((expires - Duration::from_secs(1)).into()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, mut c) = (stop.clone(), client.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            // Swept when the index holds what it held before these peers
            // joined (`Info` counts the index, expired or not), asked 5
            // times a second.
            loop {
                let now = c
                    .info(v1::InfoRequest {})
                    .await
                    .map(|r| r.into_inner().files);
                if now.is_ok_and(|n| n <= files_before) || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let done = expires.elapsed();
            // A second more after the sweep ended.
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.store(true, Ordering::Relaxed);
            done
        })
    };
    let run = drive_until(
        args.concurrency,
        stop,
        locate_call(DirectoryClient::new(channel(addr).await?), files),
    )
    .await;
    let done = watcher.await?;
    let (_, lines) = swept(data);
    Ok((run, lines, done))
}

pub(crate) async fn locate_run(addr: SocketAddr, files: u64, args: &Args) -> anyhow::Result<Run> {
    let client = DirectoryClient::new(channel(addr).await?);
    Ok(drive(args.concurrency, args.seconds, move |x| {
        let mut c = client.clone();
        async move {
            let req = LocateRequest {
                target: Some(Target::FileId(fid(x % files))),
                max_holders: 0,
            };
            matches!(c.locate(req).await, Ok(r) if !r.get_ref().files.is_empty())
        }
    })
    .await)
}

pub(crate) async fn health_run(addr: SocketAddr, args: &Args) -> anyhow::Result<Run> {
    let client = HealthClient::new(channel(addr).await?);
    Ok(drive(args.concurrency, args.seconds, move |_| {
        let mut c = client.clone();
        async move {
            c.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
        }
    })
    .await)
}

pub(crate) async fn populate(
    addr: SocketAddr,
    args: &Args,
    joined: Joined,
) -> anyhow::Result<Duration> {
    let client = DirectoryClient::new(channel(addr).await?);
    let per_peer = args.files / args.peers;
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.join_concurrency)
        .map(|_| {
            let (mut c, next, peers, joined) =
                (client.clone(), next.clone(), args.peers, joined.clone());
            tokio::spawn(async move {
                loop {
                    let p = next.fetch_add(1, Ordering::Relaxed);
                    if p >= peers {
                        return Ok::<_, tonic::Status>(());
                    }
                    let files = (p * per_peer..(p + 1) * per_peer)
                        .map(|i| v1::SharedFile {
                            replica: false,
                            file_id: fid(i),
                            size: i * 1000 + 1,
                            name: file_name(i),
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
                        load: Some(v1::Load {
                            active_uploads: (p % 4) as u32,
                            free_upload_slots: 4,
                        }),
                        ..Default::default()
                    };
                    let token = signed_join(&mut c, &peer_key(&peer, 0), req)
                        .await?
                        .into_inner()
                        .session_token;
                    if let Ok(mut j) = joined.lock() {
                        j.push((peer, token));
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
    Ok(start.elapsed())
}
