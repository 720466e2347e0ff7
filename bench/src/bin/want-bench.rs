//! Wanted files (issue 26): how soon a waiting PServer starts a download
//! once a holder publishes the file, beside the polling alternative.
//!
//! Starts one `central-server` (SQLite, rate limits off) and one real
//! `pserver` process (the waiter) with `--wants` wants by file id, all
//! watched on one Watch stream. A holder is played by hand: a signed gRPC
//! Join (testkit's) advertising a static peer API (`StaticHolder`, which
//! serves the contents and notes when each file's manifest is first asked
//! for). Then, one file at a time at a pseudo-random moment, the holder
//! publishes the file (gRPC Publish) and the bench times, from the
//! Publish sent and from its acknowledgement, until the waiter asks the
//! holder for that file's manifest: its download started. Nothing polls.
//!
//! The polling alternative (a Search per want every `--poll-secs`) is
//! computed from its request count and a measured Search cost: the bench
//! times `--search-seconds` of Searches at the same central, 8 in flight,
//! and reports what `--at` wants polling would ask of it (requests per
//! hour per want, Searches per second, the share of the central's measured
//! Search capacity), and the polling latency (uniform over the interval:
//! p50 = half of it, p99 = 99 % of it).
//!
//! ```text
//! cargo build --release -p central-server -p pserver -p peerdex-bench
//! target/release/want-bench --wants 100
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use peerdex_proto::PeerId;
use peerdex_proto::rest::WantRequest;
use peerdex_proto::v1;
use peerdex_testkit::central::CentralProc;
use peerdex_testkit::grpc::{self, authed};
use peerdex_testkit::{ChildPeer, StaticHolder};

#[derive(Debug, Parser)]
#[command(about = "Wanted files: publish acknowledged → download started, beside polling")]
struct Args {
    /// Wants (files by id) the PServer waits for; each is published once.
    /// At most 100 (CENTRAL_MAX_WATCHES_PER_PEER's default).
    #[arg(long, default_value_t = 100)]
    wants: usize,
    /// Bytes of each file.
    #[arg(long, default_value_t = 65_536)]
    file_bytes: usize,
    /// The polling alternative's interval: a Search per want this often.
    #[arg(long, default_value_t = 60)]
    poll_secs: u64,
    /// Wants to size the polling alternative for.
    #[arg(long, default_value_t = 10_000)]
    at: u64,
    /// Seconds of Searches timed to measure a Search's cost.
    #[arg(long, default_value_t = 5)]
    search_seconds: u64,
    /// Folder for the central and the PServer (default: a fresh temp
    /// folder, deleted after; a given one is kept).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// How long any one wait may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(1..=100).contains(&args.wants) {
        bail!("--wants must be 1-100, not {}", args.wants);
    }
    peerdex_testkit::tls::install_provider();
    let (root, own) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("want-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&root)?;
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt.block_on(bench(&args, &root));
    if own {
        let _ = std::fs::remove_dir_all(&root);
    }
    r
}

async fn bench(args: &Args, root: &Path) -> anyhow::Result<()> {
    let env = [
        ("CENTRAL_NAME", "c1"),
        ("CENTRAL_LEASE_TTL_SECS", "30"),
        ("CENTRAL_HEARTBEAT_SECS", "10"),
        ("CENTRAL_JOIN_RATE", "0"),
        ("CENTRAL_PUBLISH_RATE", "0"),
        ("CENTRAL_SEARCH_RATE", "0"),
        ("RUST_LOG", "warn"),
    ];
    let central = CentralProc::start(
        &root.join("central"),
        "c1",
        env.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    );
    eprintln!("central at {}", central.url);

    let contents: Vec<Vec<u8>> = (0..args.wants)
        .map(|i| content(i as u64, args.file_bytes))
        .collect();
    let holder = StaticHolder::start(contents).await;
    let holder_url = format!("http://{}", holder.addr);
    let mut dir = grpc::connect(&central.url).await;
    let peer = PeerId::new_random();
    let token = grpc::join(&mut dir, &peer, &holder_url, Vec::new()).await;
    // Keep the hand-played holder's lease.
    let beats = {
        let (mut dir, token) = (dir.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let req = v1::HeartbeatRequest {
                    peer_id: peer.to_string(),
                    ..Default::default()
                };
                let _ = dir.heartbeat(authed(req, &token)).await;
            }
        })
    };

    let waiter = ChildPeer::spawn_in(
        &root.join("waiter"),
        &central.url,
        &[
            ("PSERVER_MAX_WANTS", "100"),
            ("PSERVER_MIN_FREE_BYTES", "0"),
        ],
    );
    let api = &waiter.api;
    poll("the PServer to join", || async {
        api.status().await.ok()?.lease_age_secs
    })
    .await?;
    for id in &holder.ids {
        api.want(&WantRequest {
            file: Some(id.clone()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("want {id}"))?;
    }
    poll("every want to be watched", || async {
        api.wants().await.ok().filter(|l| l.watching).map(|_| ())
    })
    .await?;
    eprintln!(
        "{} wants watched; publishing one file at a time",
        args.wants
    );

    let mut from_ack = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut from_send = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut before_ack = 0;
    for (i, id) in holder.ids.iter().enumerate() {
        phase(i).await;
        let req = v1::PublishRequest {
            peer_id: peer.to_string(),
            files: vec![v1::SharedFile {
                file_id: id.clone(),
                size: args.file_bytes as u64,
                name: format!("want-bench-{i}.bin"),
                replica: false,
            }],
            seq: i as u64 + 1,
        };
        let sent = Instant::now();
        dir.publish(authed(req, &token)).await.context("publish")?;
        let acked = Instant::now();
        let started = poll("the download to start", || async { holder.asked_at(id) }).await?;
        let us = |d: Duration| (d.as_micros() as u64).max(1);
        if started < acked {
            before_ack += 1;
        }
        from_ack.record(us(started.saturating_duration_since(acked)))?;
        from_send.record(us(started.saturating_duration_since(sent)))?;
    }
    // Every want ends once its file is in place.
    poll("every want to be done", || async {
        let l = api.wants().await.ok()?;
        l.wants
            .iter()
            .all(|w| w.state == peerdex_proto::rest::WantState::Done)
            .then_some(())
    })
    .await?;

    let searches = search_rate(&central.url, Duration::from_secs(args.search_seconds)).await?;
    beats.abort();

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\n| {} wants by id, {} B files, one central (SQLite) | p50 ms | p99 ms | max ms |",
        args.wants, args.file_bytes
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| **Watch: Publish acknowledged → download started** ({before_ack} of {} began before the ack reached the publisher: counted as 0) | {:.2} | {:.2} | {:.2} |",
        args.wants,
        ms(&from_ack, 0.5),
        ms(&from_ack, 0.99),
        from_ack.max() as f64 / 1000.0
    );
    println!(
        "| Watch: Publish sent → download started | {:.2} | {:.2} | {:.2} |",
        ms(&from_send, 0.5),
        ms(&from_send, 0.99),
        from_send.max() as f64 / 1000.0
    );
    let n = args.poll_secs as f64;
    println!(
        "| polling every {} s: appeared → next search (uniform over the interval) | {:.0} | {:.0} | {:.0} |",
        args.poll_secs,
        n * 500.0,
        n * 990.0,
        n * 1000.0
    );
    let per_hour = 3600.0 / n;
    let load = args.at as f64 / n;
    println!(
        "\n| cost while nothing appears, {} wants | requests per hour per want | central requests/s | share of the central's Search capacity |",
        args.at
    );
    println!("|---|---:|---:|---:|");
    println!("| Watch (one stream per PServer; a message per appearance) | 0 | 0 | 0 % |");
    println!(
        "| polling: a Search per want every {} s | {per_hour:.0} | {load:.0} | {:.1} % (measured {searches:.0} Searches/s, 8 in flight) |",
        args.poll_secs,
        100.0 * load / searches
    );
    drop(waiter);
    drop(central);
    Ok(())
}

/// Searches per second the central answers, 8 in flight, for `len`.
async fn search_rate(url: &str, len: Duration) -> anyhow::Result<f64> {
    let dir = grpc::connect(url).await;
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let end = Instant::now() + len;
    let tasks: Vec<_> = (0..8)
        .map(|k| {
            let (mut dir, done) = (dir.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    let q = format!("want bench {}", (i + k) % 100);
                    let r = dir
                        .search(v1::SearchRequest {
                            query: q,
                            limit: 20,
                            page_token: String::new(),
                        })
                        .await;
                    if r.is_ok() {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    Ok(done.load(std::sync::atomic::Ordering::Relaxed) as f64 / len.as_secs_f64())
}

/// Poll `f` every millisecond until it gives a value, at most [`DEADLINE`].
async fn poll<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > DEADLINE {
            bail!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sleep a pseudo-random 0-99 ms before publish `i`.
async fn phase(i: usize) {
    let h = blake3::hash(&i.to_le_bytes());
    tokio::time::sleep(Duration::from_millis(u64::from(h.as_bytes()[0]) % 100)).await;
}

/// Distinct bytes for file `n`.
fn content(n: u64, len: usize) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(b"want-bench");
    h.update(&n.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let mut out = vec![0; len];
    h.finalize_xof().fill(&mut out);
    out
}
