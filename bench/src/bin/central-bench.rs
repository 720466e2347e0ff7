//! Load generator for the central directory (a benchmark, not a test).
//!
//! Starts the `central-server` binary next to this one on a temporary data
//! dir (or uses `--addr`), populates it through Join (default 1,000,000
//! files over 10,000 peers), then runs Locate by random file id with 64
//! requests in flight for 10 s and prints requests/s, p50 and p99. In the
//! same run, the same generator drives `grpc.health.v1.Health/Check` on a
//! trivial tonic-health server (this binary in `--health-server` mode, also
//! a separate process) as the baseline. It also reports the central's RSS
//! and its restart-to-serving time (after SIGTERM and after `kill -9`);
//! `--data-dir D --restarts-only` measures only that, on the database an
//! earlier run left in D.
//!
//! Abuse (issue 16), in the same run and on the same central: Locate
//! latency (a) quiet, (b) while `--flood-clients` callers loop the worst
//! Search shapes (a broad word with a word that matches nothing, and two
//! broad words that never meet), (c) while `--expire-peers` peers of
//! `--expire-files` files each, which stopped heartbeating together, are
//! swept. The central runs with the default lease (30 s, heartbeat 10 s):
//! every populated peer heartbeats all along (about 1,000 heartbeats per
//! second at 10k peers, in every measurement). Rate limits on Join and
//! Search and the peers-per-address cap are lifted (everything comes from
//! 127.0.0.1): the flood meets only the work budget per search.
//!
//! It lives in the `peerdex-bench` crate (not in `central-server`) so that
//! its histogram dependency never reaches the server's build.
//!
//! ```text
//! cargo build --release -p central-server -p peerdex-bench
//! target/release/central-bench
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use peerdex_proto::PeerId;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::locate_request::Target;
use peerdex_proto::v1::{self, JoinRequest, LocateRequest};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Parser)]
#[command(about = "Load generator for the peerdex central directory")]
struct Args {
    /// Use a running central at this address instead of starting one
    /// (RSS and restart are then not measured).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Files to publish in total.
    #[arg(long, default_value_t = 1_000_000)]
    files: u64,
    /// Peers to spread them over (files / peers per Join).
    #[arg(long, default_value_t = 10_000)]
    peers: u64,
    /// Joins in flight while populating.
    #[arg(long, default_value_t = 16)]
    join_concurrency: usize,
    /// Requests in flight during the measurement.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Data dir for the started central (default: a fresh temp dir, deleted
    /// after; a given one is kept).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Only measure restarts (RSS after loading, restart-to-serving after
    /// SIGTERM and after kill -9) on the already populated `--data-dir` of
    /// an earlier run with the same `--files`.
    #[arg(long, requires = "data_dir", conflicts_with = "addr")]
    restarts_only: bool,
    /// Internal: run the trivial health server used as the baseline.
    #[arg(long, hide = true)]
    health_server: bool,
    /// Run this central-server binary instead of the one next to this
    /// bench (e.g. a build from before a change).
    #[arg(long)]
    central_bin: Option<PathBuf>,
    /// Concurrent Search callers during the flood measurement.
    #[arg(long, default_value_t = 8)]
    flood_clients: usize,
    /// Peers that expire together during the expiry measurement (0: skip).
    #[arg(long, default_value_t = 500)]
    expire_peers: u64,
    /// Files of each expiring peer.
    #[arg(long, default_value_t = 1000)]
    expire_files: u64,
    /// Only measure the cost of metrics (issue 15): two centrals, one with
    /// `CENTRAL_METRICS_ADDR` set and one without, populated alike; Locate
    /// on each in turn, this many rounds (order alternating), medians.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["addr", "restarts_only"])]
    metrics_ab: u32,
    /// Only compare the two stores (issue 12): one central on SQLite and
    /// one on etcd, populated alike (the Joins timed, etcd's database size
    /// read); Locate on each in turn, with the peers heartbeating and
    /// with their heartbeats paused, this many rounds (order alternating),
    /// medians; then the start-up of another etcd-backed central (its range
    /// read) at that size.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["addr", "restarts_only", "metrics_ab"])]
    etcd_ab: u32,
    /// The etcd cluster of `--etcd-ab` (comma-separated client URLs);
    /// default: a 3-member cluster on loopback started by the bench (etcd
    /// found like the tests find it: PATH, ETCD_BIN or the pinned wheel).
    #[arg(long)]
    etcd_endpoints: Option<String>,
}

/// Lease settings of the started central (the defaults).
const LEASE_TTL_SECS: u64 = 30;
const HEARTBEAT_SECS: u64 = 10;

/// Joined peers and their session tokens.
type Joined = Arc<std::sync::Mutex<Vec<(PeerId, String)>>>;

/// The Search shapes of the flood: the issue's (a broad word and one that
/// matches nothing) and the costliest for a rarest-word-first search (two
/// broad words, an eighth of the names each, that never meet in a name).
const FLOOD_QUERIES: [&str; 2] = ["report aaaaa", "alpha blue"];

fn file_id(i: u64) -> String {
    blake3::hash(&i.to_le_bytes()).to_hex().to_string()
}

const ADJ: [&str; 8] = [
    "alpha", "blue", "quiet", "rapid", "golden", "misty", "north", "silver",
];
const NOUN: [&str; 8] = [
    "report", "river", "album", "backup", "lecture", "photo", "dataset", "movie",
];
const EXT: [&str; 4] = ["bin", "pdf", "mp3", "tar.gz"];

fn file_name(i: u64) -> String {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{}-{} {} {i}.{}",
        ADJ[(h >> 8) as usize % 8],
        NOUN[(h >> 16) as usize % 8],
        1990 + (h >> 24) % 35,
        EXT[(h >> 32) as usize % 4]
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    if args.health_server {
        return rt.block_on(health_server());
    }
    rt.block_on(bench(args))
}

/// A trivial tonic server: health only. Stops when stdin closes.
async fn health_server() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("health listening on {}", listener.local_addr()?);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
        })
        .await;
    };
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stdin_closed,
        )
        .await?;
    Ok(())
}

/// A child process that printed `<prefix> ADDR` on stdout.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

fn spawn(mut cmd: Command, prefix: &str) -> anyhow::Result<Proc> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            bail!("child exited before printing {prefix:?}");
        }
        if let Some(a) = line.trim().strip_prefix(prefix) {
            let addr = a.trim().parse()?;
            // Keep draining stdout so the child never blocks on it.
            std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
            return Ok(Proc { child, addr });
        }
    }
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn start_central(bin: &PathBuf, data: &PathBuf) -> anyhow::Result<Proc> {
    start_central_with(bin, data, None)
}

/// [`start_central`] with the directory on etcd at `endpoints`.
fn start_central_on_etcd(bin: &PathBuf, data: &PathBuf, endpoints: &str) -> anyhow::Result<Proc> {
    start_central_env(bin, data, &[("CENTRAL_ETCD_ENDPOINTS", endpoints)])
}

/// [`start_central`], with `CENTRAL_METRICS_ADDR` when `metrics` is given.
fn start_central_with(
    bin: &PathBuf,
    data: &PathBuf,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<Proc> {
    match metrics {
        Some(m) => start_central_env(bin, data, &[("CENTRAL_METRICS_ADDR", &m.to_string())]),
        None => start_central_env(bin, data, &[]),
    }
}

/// [`start_central`] with these settings too.
fn start_central_env(bin: &PathBuf, data: &PathBuf, env: &[(&str, &str)]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.envs(env.iter().copied());
    std::fs::create_dir_all(data)?;
    let log = std::fs::File::create(log_path(data))?;
    cmd.env("CENTRAL_LISTEN_ADDR", "127.0.0.1:0")
        .env("CENTRAL_DATA_DIR", data)
        .env("CENTRAL_LEASE_TTL_SECS", LEASE_TTL_SECS.to_string())
        .env("CENTRAL_HEARTBEAT_SECS", HEARTBEAT_SECS.to_string())
        .env("CENTRAL_JOIN_RATE", "0")
        .env("CENTRAL_SEARCH_RATE", "0")
        .env("CENTRAL_MAX_PEERS_PER_ADDR", "1000000")
        .env("NO_COLOR", "1")
        // The sweeper's line tells when an expiry is over.
        .env("RUST_LOG", "warn,central_server::service=info")
        .stderr(log);
    spawn(cmd, "central-server listening on")
}

fn log_path(data: &std::path::Path) -> PathBuf {
    data.with_extension("log")
}

/// Peers removed by the sweeper so far, from the central's log (colour
/// codes or not).
fn swept(data: &std::path::Path) -> (u64, Vec<String>) {
    let text = std::fs::read_to_string(log_path(data)).unwrap_or_default();
    let mut peers = 0;
    let mut lines = Vec::new();
    for l in text
        .lines()
        .filter(|l| l.contains("expired leases removed"))
    {
        let mut parts = l.split('\u{1b}');
        let mut plain: String = parts.next().unwrap_or_default().to_owned();
        for part in parts {
            plain.push_str(part.split_once('m').map_or(part, |(_, rest)| rest));
        }
        peers += plain
            .split_whitespace()
            .find_map(|w| w.strip_prefix("peers="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        lines.push(plain);
    }
    (peers, lines)
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

struct Run {
    requests: u64,
    errors: u64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// `concurrency` workers call `call` in a loop for `secs`.
async fn drive<F, Fut>(concurrency: usize, secs: u64, call: F) -> Run
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
async fn drive_until<F, Fut>(concurrency: usize, stop: Arc<AtomicBool>, call: F) -> Run
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

fn locate_call(
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
                target: Some(Target::FileId(file_id(x % files))),
                max_holders: 0,
            };
            matches!(c.locate(req).await, Ok(r) if !r.get_ref().files.is_empty())
        })
    }
}

/// Locate under a search flood: `clients` callers loop the
/// [`FLOOD_QUERIES`] while Locate is measured. Returns the Locate run and,
/// per query, (answers, truncated answers, errors, answers per second).
async fn flood_run(
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
fn keepalive(
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
                    let mut req = tonic::Request::new(v1::HeartbeatRequest {
                        declined: Vec::new(),
                        peer_id: peer.to_string(),
                        load: None,
                    });
                    if let Ok(v) = format!("Bearer {token}").parse() {
                        req.metadata_mut().insert("authorization", v);
                    }
                    let _ = c.heartbeat(req).await;
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
/// sweeper's log lines and how long the sweep took to log.
async fn expiry_run(
    addr: SocketAddr,
    data: &std::path::Path,
    files: u64,
    args: &Args,
) -> anyhow::Result<(Run, Vec<String>, Duration)> {
    let client = DirectoryClient::new(channel(addr).await?);
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
                            file_id: file_id(i),
                            size: i + 1,
                            name: file_name(i),
                        })
                        .collect();
                    let peer = PeerId::new_random();
                    let r = signed_join(
                        &mut c,
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
                let mut req = tonic::Request::new(v1::HeartbeatRequest {
                    declined: Vec::new(),
                    peer_id: peer.to_string(),
                    load: None,
                });
                if let Ok(v) = format!("Bearer {token}").parse() {
                    req.metadata_mut().insert("authorization", v);
                }
                c.heartbeat(req).await.is_ok()
            })
        })
        .collect();
    for b in beats {
        b.await?;
    }
    let expires = Instant::now() + Duration::from_secs(LEASE_TTL_SECS);
    let (before, _) = swept(data);
    eprintln!("  {peers} peers x {per_peer} files joined; they expire in {LEASE_TTL_SECS} s …");
    tokio::time::sleep_until((expires - Duration::from_secs(1)).into()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, data) = (stop.clone(), data.to_path_buf());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            // The log is read on the blocking pool, 5 times a second: the
            // measuring workers never wait for the file.
            loop {
                let d = data.clone();
                let n = tokio::task::spawn_blocking(move || swept(&d).0)
                    .await
                    .unwrap_or(0);
                if n >= before + peers || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let done = expires.elapsed();
            // A second more after the sweep logged its end.
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

async fn locate_run(addr: SocketAddr, files: u64, args: &Args) -> anyhow::Result<Run> {
    let client = DirectoryClient::new(channel(addr).await?);
    Ok(drive(args.concurrency, args.seconds, move |x| {
        let mut c = client.clone();
        async move {
            let req = LocateRequest {
                target: Some(Target::FileId(file_id(x % files))),
                max_holders: 0,
            };
            matches!(c.locate(req).await, Ok(r) if !r.get_ref().files.is_empty())
        }
    })
    .await)
}

async fn health_run(addr: SocketAddr, args: &Args) -> anyhow::Result<Run> {
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

async fn populate(addr: SocketAddr, args: &Args, joined: Joined) -> anyhow::Result<Duration> {
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
                            file_id: file_id(i),
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
                    let token = signed_join(&mut c, req).await?.into_inner().session_token;
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

/// Time from spawning the central until a Locate of a known id answers.
async fn restart(bin: &PathBuf, data: &PathBuf, probe: &str) -> anyhow::Result<(Proc, Duration)> {
    let start = Instant::now();
    let proc = start_central(bin, data)?;
    let bound = start.elapsed();
    let mut client = loop {
        if let Ok(ch) = channel(proc.addr).await {
            break DirectoryClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let connected = start.elapsed();
    let req = LocateRequest {
        target: Some(Target::FileId(probe.into())),
        max_holders: 0,
    };
    let r = client.locate(req).await?.into_inner();
    let took = start.elapsed();
    eprintln!(
        "  restart: port bound after {:.2} s, connected after {:.2} s, first Locate answered after {:.2} s",
        bound.as_secs_f64(),
        connected.as_secs_f64(),
        took.as_secs_f64()
    );
    if r.files.is_empty() || r.files[0].holders.is_empty() {
        bail!("after restart the probe file has no holders");
    }
    Ok((proc, took))
}

fn sigterm_and_wait(p: &mut Proc) -> anyhow::Result<()> {
    let pid = p.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let status = p.child.wait()?;
    if !status.success() {
        bail!("central exited with {status} after SIGTERM");
    }
    Ok(())
}

fn row(name: &str, r: &Run) -> String {
    format!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
        r.rps,
        r.p50_us as f64 / 1000.0,
        r.p99_us as f64 / 1000.0,
        r.max_us as f64 / 1000.0,
        r.requests,
        r.errors
    )
}

/// Restart the central on `data` twice: after SIGTERM (from `c`, the running
/// one) and after kill -9. Returns the RSS after the first restart and both
/// restart-to-serving times.
async fn restarts(
    mut c: Proc,
    bin: &PathBuf,
    data: &PathBuf,
    probe: &str,
) -> anyhow::Result<(Option<f64>, Vec<(&'static str, Duration)>)> {
    sigterm_and_wait(&mut c)?;
    let (mut c, t_term) = restart(bin, data, probe).await?;
    let rss = rss_mib(c.child.id());
    c.child.kill()?; // SIGKILL: no checkpoint, no clean close
    c.child.wait()?;
    let (mut c, t_kill) = restart(bin, data, probe).await?;
    sigterm_and_wait(&mut c)?;
    Ok((
        rss,
        vec![("after SIGTERM", t_term), ("after kill -9", t_kill)],
    ))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let bin = args
        .central_bin
        .clone()
        .unwrap_or_else(|| exe_dir.join("central-server"));
    let data = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("central-bench-{}", std::process::id()))
    });
    let probe = file_id(args.files / 2);
    if args.restarts_only {
        let (c, t) = restart(&bin, &data, &probe).await?;
        eprintln!("first start: {:.2} s", t.as_secs_f64());
        let (rss, times) = restarts(c, &bin, &data, &probe).await?;
        println!("\n| measure | value |");
        println!("|---|---:|");
        if let Some(r) = rss {
            println!("| central RSS after restart (loaded from disk) | {r:.0} MiB |");
        }
        for (what, t) in times {
            println!("| restart-to-serving {what} | {:.2} s |", t.as_secs_f64());
        }
        return Ok(());
    }
    if args.metrics_ab > 0 {
        return metrics_ab(&args, &bin, &data).await;
    }
    if args.etcd_ab > 0 {
        return etcd_ab(&args, &bin, &data).await;
    }
    let mut central = match args.addr {
        Some(_) => None,
        None => Some(start_central(&bin, &data)?),
    };
    let addr = args
        .addr
        .or(central.as_ref().map(|c| c.addr))
        .expect("an address");
    eprintln!(
        "central at {addr}; populating {} files over {} peers …",
        args.files, args.peers
    );
    let joined: Joined = Arc::default();
    let alive = Arc::new(AtomicBool::new(false));
    keepalive(addr, joined.clone(), alive.clone(), Arc::default(), 8);
    let populate_time = populate(addr, &args, joined.clone()).await?;
    eprintln!("populated in {:.1} s", populate_time.as_secs_f64());
    let rss_populated = central.as_ref().and_then(|c| rss_mib(c.child.id()));

    eprintln!(
        "Locate: {} in flight for {} s …",
        args.concurrency, args.seconds
    );
    let locate = locate_run(addr, args.files, &args).await?;
    eprintln!(
        "Locate under a search flood ({} callers: {FLOOD_QUERIES:?}) …",
        args.flood_clients
    );
    let (flooded, flood) = flood_run(addr, args.files, &args).await?;
    let expiry = if args.expire_peers > 0 && central.is_some() {
        eprintln!(
            "Locate during the expiry of {} peers x {} files …",
            args.expire_peers, args.expire_files
        );
        Some(expiry_run(addr, &data, args.files, &args).await?)
    } else {
        None
    };
    alive.store(true, Ordering::Relaxed);

    let mut health = spawn(
        {
            let mut c = Command::new(std::env::current_exe()?);
            c.arg("--health-server");
            c
        },
        "health listening on",
    )?;
    eprintln!(
        "baseline Health/Check: {} in flight for {} s …",
        args.concurrency, args.seconds
    );
    let baseline = health_run(health.addr, &args).await?;
    drop(health.child.stdin.take());
    let _ = health.child.wait();

    let (rss_restarted, restarts) = match central.take() {
        Some(c) => {
            let measured = restarts(c, &bin, &data, &probe).await?;
            if args.data_dir.is_none() {
                let _ = std::fs::remove_dir_all(&data);
            }
            measured
        }
        None => (None, Vec::new()),
    };

    let ratio = locate.rps / baseline.rps * 100.0;
    println!(
        "\n| load ({} in flight, {} s) | req/s | p50 ms | p99 ms | max ms | requests | errors |",
        args.concurrency, args.seconds
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!("{}", row("Locate by random id (central-server)", &locate));
    println!("{}", row("Health/Check (trivial tonic server)", &baseline));

    println!(
        "\n| Locate by random id ({} in flight) | req/s | p50 ms | p99 ms | max ms | requests | errors |",
        args.concurrency
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!("{}", row("(a) quiet (heartbeats only)", &locate));
    println!(
        "{}",
        row(
            &format!("(b) under a search flood ({} callers)", args.flood_clients),
            &flooded
        )
    );
    if let Some((run, _, _)) = &expiry {
        println!(
            "{}",
            row(
                &format!(
                    "(c) during the expiry of {} peers x {} files",
                    args.expire_peers, args.expire_files
                ),
                run
            )
        );
    }
    println!(
        "\n| flood query | answers | answers/s | truncated | errors |\n|---|---:|---:|---:|---:|"
    );
    for (q, n, cut, errors, rate) in &flood {
        println!("| `{q}` | {n} | {rate:.0} | {cut} | {errors} |");
    }
    if let Some((_, lines, done)) = &expiry {
        println!(
            "\nsweep logged its end {:.2} s after the leases ended:",
            done.as_secs_f64()
        );
        for l in lines {
            println!("    {}", l.trim());
        }
    }
    println!("\n| measure | value |");
    println!("|---|---:|");
    println!("| index | {} files, {} peers |", args.files, args.peers);
    println!("| Locate req/s vs baseline | {ratio:.0} % |");
    println!(
        "| populate via Join ({} in flight) | {:.1} s |",
        args.join_concurrency,
        populate_time.as_secs_f64()
    );
    if let Some(r) = rss_populated {
        println!("| central RSS after populating | {r:.0} MiB |");
    }
    if let Some(r) = rss_restarted {
        println!("| central RSS after restart (loaded from disk) | {r:.0} MiB |");
    }
    for (what, t) in restarts {
        println!("| restart-to-serving {what} | {:.2} s |", t.as_secs_f64());
    }
    Ok(())
}

/// `GET /metrics` over a bare HTTP/1.0 connection: the body.
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(text.clone(), |(_, b)| b.to_owned()))
}

/// The metrics A/B of issue 15 (see `--metrics-ab`).
async fn metrics_ab(args: &Args, bin: &PathBuf, data: &std::path::Path) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut off = start_central_with(bin, &data.join("off"), None)?;
    let mut on = start_central_with(bin, &data.join("on"), Some(port))?;
    let alive = Arc::new(AtomicBool::new(false));
    for c in [&off, &on] {
        eprintln!(
            "central at {}; populating {} files over {} peers …",
            c.addr, args.files, args.peers
        );
        let joined: Joined = Arc::default();
        keepalive(c.addr, joined.clone(), alive.clone(), Arc::default(), 8);
        let t = populate(c.addr, args, joined).await?;
        eprintln!("populated in {:.1} s", t.as_secs_f64());
    }
    let (mut rps_off, mut rps_on) = (Vec::new(), Vec::new());
    let (mut cpu_off, mut cpu_on) = (Vec::new(), Vec::new());
    println!(
        "\n| round | metrics | Locate/s | p50 ms | p99 ms | max ms | requests | errors | central CPU µs/Locate |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for round in 0..args.metrics_ab {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for metrics in order {
            let c = if metrics { &on } else { &off };
            let before = cpu_ticks(c.child.id());
            let r = locate_run(c.addr, args.files, args).await?;
            let ticks = cpu_ticks(c.child.id()).saturating_sub(before);
            // Clock ticks are 10 ms (USER_HZ 100).
            let cpu_us = ticks as f64 * 10_000.0 / r.requests.max(1) as f64;
            let name = format!("{} | {}", round + 1, if metrics { "on" } else { "off" });
            println!("{} {cpu_us:.2} |", row(&name, &r));
            if metrics {
                rps_on.push(r.rps);
                cpu_on.push(cpu_us);
            } else {
                rps_off.push(r.rps);
                cpu_off.push(cpu_us);
            }
        }
    }
    alive.store(true, Ordering::Relaxed);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m_off, m_on) = (median(&mut rps_off), median(&mut rps_on));
    println!(
        "\nmedian Locate/s: off {m_off:.0}, on {m_on:.0}: metrics cost {:+.2} %",
        (m_off - m_on) / m_off * 100.0
    );
    let (c_off, c_on) = (median(&mut cpu_off), median(&mut cpu_on));
    println!(
        "median central CPU per Locate (heartbeats included): off {c_off:.2} µs, on {c_on:.2} µs: {:+.2} %",
        (c_on - c_off) / c_off * 100.0
    );
    let text = scrape(port)?;
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("peerdex_central_requests_total{rpc=\"locate\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("the metered central counted {counted:.0} Locate calls");
    for c in [&mut off, &mut on] {
        sigterm_and_wait(c)?;
    }
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(data);
    }
    Ok(())
}

/// `--etcd-ab`: the same directory on SQLite and on etcd, side by side.
async fn etcd_ab(args: &Args, bin: &PathBuf, data: &std::path::Path) -> anyhow::Result<()> {
    let cluster = match &args.etcd_endpoints {
        Some(_) => None,
        None => {
            let dir = data.join("etcd");
            eprintln!("starting a 3-member etcd cluster in {} …", dir.display());
            Some(
                tokio::task::spawn_blocking(move || {
                    peerdex_testkit::etcd::EtcdCluster::start_in(&dir, 3)
                })
                .await?
                .map_err(anyhow::Error::msg)?,
            )
        }
    };
    let endpoints = match (&args.etcd_endpoints, &cluster) {
        (Some(e), _) => e.clone(),
        (None, Some(c)) => c.endpoints(),
        (None, None) => unreachable!(),
    };
    let alive = Arc::new(AtomicBool::new(false));
    // Heartbeats of both centrals' peers, paused for the quiet runs.
    let paused = Arc::new(AtomicBool::new(false));
    let mut sqlite = start_central(bin, &data.join("sqlite"))?;
    let mut etcd = start_central_on_etcd(bin, &data.join("on-etcd"), &endpoints)?;
    let mut joins = Vec::new();
    for (store, c) in [("SQLite", &sqlite), ("etcd", &etcd)] {
        eprintln!(
            "{store} central at {}; populating {} files over {} peers …",
            c.addr, args.files, args.peers
        );
        let joined: Joined = Arc::default();
        // A heartbeat on etcd is a lease keep-alive there: slower under
        // load than SQLite's in-memory renewal. With 8 sequential callers
        // one cycle of 10k peers outgrew the 30 s lease while etcd was
        // being populated (570 peers expired in one run): 64 keep every
        // lease renewed, at the same 1,000 heartbeats a second.
        keepalive(c.addr, joined.clone(), alive.clone(), paused.clone(), 64);
        let t = populate(c.addr, args, joined).await?;
        eprintln!("populated in {:.1} s", t.as_secs_f64());
        joins.push((store, t, rss_mib(c.child.id())));
    }
    let db_bytes = cluster.as_ref().map(|c| {
        files_named(c.dir(), "db")
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    });

    // Per (store, heartbeats): Locate/s and central CPU µs per Locate.
    let mut rps: [[Vec<f64>; 2]; 2] = Default::default();
    let mut cpu: [[Vec<f64>; 2]; 2] = Default::default();
    println!(
        "\n| round | store, peers' heartbeats | Locate/s | p50 ms | p99 ms | max ms | requests | errors | central CPU µs/Locate |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for round in 0..args.etcd_ab {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on_etcd in order {
            let c = if on_etcd { &etcd } else { &sqlite };
            // With the 10k peers heartbeating (1,000 a second to each
            // central, all along), then with every heartbeat paused for
            // the run (shorter than a lease: nothing expires, and a
            // Locate that finds nothing would count as an error).
            for quiet in [false, true] {
                paused.store(quiet, Ordering::Relaxed);
                let before = cpu_ticks(c.child.id());
                let r = locate_run(c.addr, args.files, args).await?;
                let ticks = cpu_ticks(c.child.id()).saturating_sub(before);
                paused.store(false, Ordering::Relaxed);
                // Clock ticks are 10 ms (USER_HZ = 100).
                let cpu_us = ticks as f64 * 10_000.0 / r.requests.max(1) as f64;
                let name = format!(
                    "{} | {}, {}",
                    round + 1,
                    if on_etcd { "etcd" } else { "SQLite" },
                    if quiet { "paused" } else { "1,000/s" }
                );
                println!("{} {cpu_us:.2} |", row(&name, &r));
                rps[usize::from(on_etcd)][usize::from(quiet)].push(r.rps);
                cpu[usize::from(on_etcd)][usize::from(quiet)].push(cpu_us);
                if quiet {
                    // Let the paused heartbeats catch up before the next run.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (quiet, what) in [(0, "peers heartbeating"), (1, "heartbeats paused")] {
        let (m_sqlite, m_etcd) = (median(&mut rps[0][quiet]), median(&mut rps[1][quiet]));
        let (c_sqlite, c_etcd) = (median(&mut cpu[0][quiet]), median(&mut cpu[1][quiet]));
        println!(
            "\n{what}: median Locate/s SQLite {m_sqlite:.0}, etcd {m_etcd:.0}: etcd/SQLite = {:.2}x; \
             median central CPU per Locate SQLite {c_sqlite:.2} µs, etcd {c_etcd:.2} µs",
            m_etcd / m_sqlite
        );
    }
    println!(
        "\n| Join of {} peers / {} files | time | central RSS after |",
        args.peers, args.files
    );
    println!("|---|---:|---:|");
    for (store, t, rss) in &joins {
        println!(
            "| {store} | {:.1} s | {} |",
            t.as_secs_f64(),
            rss.map_or("-".into(), |r| format!("{r:.0} MiB"))
        );
    }
    if let Some(b) = db_bytes {
        println!(
            "\netcd database (one member's `db` file): {:.0} MiB",
            b as f64 / (1 << 20) as f64
        );
    }
    // A second etcd-backed central: its start-up is the range read.
    let probe = file_id(args.files / 2);
    let t = Instant::now();
    let mut second = start_central_on_etcd(bin, &data.join("on-etcd-2"), &endpoints)?;
    let bound = t.elapsed();
    let mut client = DirectoryClient::new(channel(second.addr).await?);
    let r = client
        .locate(LocateRequest {
            target: Some(Target::FileId(probe)),
            max_holders: 0,
        })
        .await?
        .into_inner();
    let answered = t.elapsed();
    if r.files.is_empty() {
        bail!("the second etcd-backed central does not know the probe file");
    }
    println!(
        "another central on the same etcd: port bound after {:.2} s, first Locate answered (range read done) after {:.2} s, RSS {}",
        bound.as_secs_f64(),
        answered.as_secs_f64(),
        rss_mib(second.child.id()).map_or("-".into(), |r| format!("{r:.0} MiB"))
    );
    alive.store(true, Ordering::Relaxed);
    for c in [&mut sqlite, &mut etcd, &mut second] {
        sigterm_and_wait(c)?;
    }
    drop(cluster);
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(data);
    }
    Ok(())
}

/// Every file called `name` under `dir`.
fn files_named(dir: &std::path::Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_named(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) {
            found.push(p);
        }
    }
    found
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after ')'.
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Join as a PServer does: a Challenge, then the Join signed with a fresh
/// key of this peer's own.
async fn signed_join(
    c: &mut DirectoryClient<Channel>,
    mut req: JoinRequest,
) -> Result<tonic::Response<v1::JoinResponse>, tonic::Status> {
    let nonce = c
        .challenge(v1::ChallengeRequest {
            peer_id: req.peer_id.clone(),
        })
        .await?
        .into_inner()
        .nonce;
    let key =
        ed25519_dalek::SigningKey::from_bytes(blake3::hash(req.peer_id.as_bytes()).as_bytes());
    peerdex_proto::identity::prove(&mut req, &key, nonce);
    c.join(req).await
}
