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
}

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
    let mut cmd = Command::new(bin);
    cmd.env("CENTRAL_LISTEN_ADDR", "127.0.0.1:0")
        .env("CENTRAL_DATA_DIR", data)
        .env("CENTRAL_LEASE_TTL_SECS", "3600")
        .env("CENTRAL_HEARTBEAT_SECS", "600")
        .env("RUST_LOG", "warn");
    spawn(cmd, "central-server listening on")
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
    let call = Arc::new(call);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let workers: Vec<_> = (0..concurrency as u64)
        .map(|w| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let mut errors = 0;
                let mut x = 0x2545_F491_4F6C_DD1D_u64 ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while Instant::now() < end {
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

async fn populate(addr: SocketAddr, args: &Args) -> anyhow::Result<Duration> {
    let client = DirectoryClient::new(channel(addr).await?);
    let per_peer = args.files / args.peers;
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..args.join_concurrency)
        .map(|_| {
            let (mut c, next, peers) = (client.clone(), next.clone(), args.peers);
            tokio::spawn(async move {
                loop {
                    let p = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if p >= peers {
                        return Ok::<_, tonic::Status>(());
                    }
                    let files = (p * per_peer..(p + 1) * per_peer)
                        .map(|i| v1::SharedFile {
                            file_id: file_id(i),
                            size: i * 1000 + 1,
                            name: file_name(i),
                        })
                        .collect();
                    let req = JoinRequest {
                        peer_id: PeerId::new_random().to_string(),
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
                    };
                    c.join(req).await?;
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
    let bin = exe_dir.join("central-server");
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
    let populate_time = populate(addr, &args).await?;
    eprintln!("populated in {:.1} s", populate_time.as_secs_f64());
    let rss_populated = central.as_ref().and_then(|c| rss_mib(c.child.id()));

    eprintln!(
        "Locate: {} in flight for {} s …",
        args.concurrency, args.seconds
    );
    let locate = locate_run(addr, args.files, &args).await?;

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
