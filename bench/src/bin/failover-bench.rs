//! Failover time of a PServer between centrals on etcd (issue 12): from
//! `kill -9` of the central a PServer uses to its next successful call.
//!
//! Starts a 3-member etcd cluster (`peerdex_testkit::etcd`, etcd found like
//! the tests find it), `--centrals` `central-server` processes on it
//! (heartbeats every second) and one real `pserver` process whose
//! `PSERVER_CENTRAL_URL` lists them all; the binaries are the ones built
//! next to this bench. Then, `--rounds` times each:
//!
//! * **reference** (nothing killed): upload a small new file through the
//!   PServer's control API (`PUT /api/v1/files/{name}`, which publishes it)
//!   and time until the PUT is answered and until the file is locatable
//!   (gRPC Locate by its BLAKE3 id) at a central; and the time until the
//!   next lease renewal (the heartbeat phase, up to one interval).
//! * **kill -9**: read the central in use from `GET /api/v1/status`
//!   (`central_url`), `kill -9` it, upload at once, and time until the file
//!   is locatable at a surviving central (the PServer's next successful
//!   call: its publish) and until the status shows the lease renewed on
//!   another central (`lease_renewals` grew, `central_url` another). The
//!   killed central is restarted on the same address, and the next round
//!   waits `--settle-ms` (6 s: a PServer passes over centrals that failed in
//!   the last 5 s, so closer kills would measure two failures at once).
//!
//! Uploads and kills come at a pseudo-random point of the 1 s heartbeat
//! interval, so the renewal times spread over it like the reference's.
//!
//! Prints a markdown table of min / median / max per measurement.
//!
//! ```text
//! cargo build --release -p central-server -p pserver -p peerdex-bench
//! target/release/failover-bench --rounds 10
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use peerdex_proto::rest::Status;
use peerdex_proto::v1::LocateRequest;
use peerdex_proto::v1::locate_request::Target;
use peerdex_testkit::api::Client;
use peerdex_testkit::central::CentralProc;
use peerdex_testkit::control::upload;
use peerdex_testkit::{ChildPeer, EtcdCluster};

#[derive(Debug, Parser)]
#[command(about = "Failover time of a PServer between centrals on etcd")]
struct Args {
    /// Rounds of each measurement (reference and kill -9).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Centrals on the etcd cluster, all listed in `PSERVER_CENTRAL_URL`.
    #[arg(long, default_value_t = 3)]
    centrals: usize,
    /// The centrals' lease TTL in seconds (heartbeats every second).
    #[arg(long, default_value_t = 10)]
    ttl_secs: u64,
    /// Bytes of each uploaded file.
    #[arg(long, default_value_t = 4096)]
    file_bytes: usize,
    /// Pause after each restart before the next round, in milliseconds.
    /// A PServer passes over a central that failed in the last 5 s when it
    /// moves (unless all did), so rounds closer than that measure two
    /// failures at once, not one.
    #[arg(long, default_value_t = 6000)]
    settle_ms: u64,
    /// Folder for etcd, the centrals and the PServer (default: a fresh
    /// temp folder, deleted after; a given one is kept).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// How long any one wait may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(2..=16).contains(&args.centrals) {
        bail!("--centrals must be 2-16, not {}", args.centrals);
    }
    peerdex_testkit::tls::install_provider();
    let (root, own) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("failover-bench-{}", std::process::id())),
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

/// The times of every round of one kind, from the kill (or from the
/// upload when nothing is killed).
#[derive(Default)]
struct Times {
    put: Vec<Duration>,
    locatable: Vec<Duration>,
    renewed: Vec<Duration>,
}

async fn bench(args: &Args, root: &Path) -> anyhow::Result<()> {
    eprintln!("starting a 3-member etcd cluster in {} …", root.display());
    let etcd_dir = root.join("etcd");
    let etcd = tokio::task::spawn_blocking(move || EtcdCluster::start_in(&etcd_dir, 3))
        .await?
        .map_err(anyhow::Error::msg)?;
    let endpoints = etcd.endpoints();
    let ttl = Duration::from_secs(args.ttl_secs);
    let mut centrals: Vec<CentralProc> = (0..args.centrals)
        .map(|i| {
            let name = format!("c{}", i + 1);
            CentralProc::on_etcd(&root.join(&name), &endpoints, &name, ttl)
        })
        .collect();
    let list = centrals
        .iter()
        .map(|c| c.url.clone())
        .collect::<Vec<_>>()
        .join(",");
    eprintln!("centrals: {list}");
    let peer_root = root.join("pserver");
    // testkit's child PServer, with the default rescan (2 s) and info logs.
    let vars = [
        ("RUST_LOG", "info"),
        ("NO_COLOR", "1"),
        ("PSERVER_RESCAN_SECS", "2"),
    ];
    let pserver = ChildPeer::spawn_in(&peer_root, &list, &vars);
    let api = &pserver.api;
    let joined = poll("the PServer to join", || async {
        status(api)
            .await
            .filter(|s| s.central_reachable && s.lease_age_secs.is_some())
    })
    .await?;
    eprintln!("PServer joined through {}", joined.central_url);

    let mut reference = Times::default();
    let mut killed = Times::default();
    let mut n = 0u64;
    for round in 1..=args.rounds {
        // Reference: nothing killed. Each upload and each kill comes at a
        // random point of the heartbeat interval (1 s), not right after a
        // renewal (where the previous step's wait ended).
        phase(round, 0).await;
        n += 1;
        let before = status(api).await.context("status")?;
        let t = Instant::now();
        let (put, loc) = upload_and_locate(api, &centrals, None, args, n, t).await?;
        poll("a lease renewal", || async {
            status(api)
                .await
                .filter(|s| renewals(s) > renewals(&before))
        })
        .await?;
        let ren = t.elapsed();
        eprintln!(
            "round {round} reference: PUT {:.1} ms, locatable {:.1} ms, renewal {:.1} ms",
            ms(put),
            ms(loc),
            ms(ren)
        );
        reference.put.push(put);
        reference.locatable.push(loc);
        reference.renewed.push(ren);

        // kill -9 the central in use.
        phase(round, 1).await;
        n += 1;
        let before = status(api).await.context("status")?;
        let Some(victim) = centrals.iter().position(|c| c.url == before.central_url) else {
            bail!(
                "the PServer uses {}, which is not one of {list}",
                before.central_url
            );
        };
        let t = Instant::now();
        centrals[victim].proc.kill9();
        let (put, loc) = upload_and_locate(api, &centrals, Some(victim), args, n, t).await?;
        let victim_url = centrals[victim].url.clone();
        let after = poll("the lease renewed on another central", || async {
            status(api).await.filter(|s| {
                s.central_url != victim_url
                    && s.central_reachable
                    && renewals(s) > renewals(&before)
            })
        })
        .await?;
        let ren = t.elapsed();
        eprintln!(
            "round {round} kill -9 {} ({}): PUT {:.1} ms, locatable {:.1} ms, renewed on {} after {:.1} ms",
            centrals[victim].name,
            victim_url,
            ms(put),
            ms(loc),
            after.central_url,
            ms(ren)
        );
        killed.put.push(put);
        killed.locatable.push(loc);
        killed.renewed.push(ren);

        // Back on the same address before the next round, serving.
        centrals[victim].restart();
        poll("the restarted central to answer", || async {
            centrals[victim].info().await
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    }

    println!(
        "\n| {} centrals on a 3-member etcd, heartbeat 1 s, {} rounds | min ms | median ms | max ms |",
        args.centrals, args.rounds
    );
    println!("|---|---:|---:|---:|");
    for (what, v) in [
        ("no kill: upload → PUT answered", &mut reference.put),
        (
            "no kill: upload → locatable at a central",
            &mut reference.locatable,
        ),
        (
            "no kill: → next lease renewal (the heartbeat's phase)",
            &mut reference.renewed,
        ),
        (
            "kill -9 of its central → PUT answered (stored; its publish sent or queued)",
            &mut killed.put,
        ),
        (
            "**kill -9 of its central → upload locatable at a surviving central**",
            &mut killed.locatable,
        ),
        (
            "kill -9 of its central → lease renewed on another central",
            &mut killed.renewed,
        ),
    ] {
        v.sort();
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} |",
            ms(v[0]),
            ms(v[v.len() / 2]),
            ms(v[v.len() - 1])
        );
    }
    drop(pserver);
    drop(centrals);
    drop(etcd);
    Ok(())
}

/// Upload a new file `n`, then poll Locate by its id at every central but
/// `skip` until one knows it. Returns (PUT answered, locatable), both from
/// `t` (the kill, or the start of the upload).
async fn upload_and_locate(
    api: &Client,
    centrals: &[CentralProc],
    skip: Option<usize>,
    args: &Args,
    n: u64,
    t: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    let bytes = content(n, args.file_bytes);
    let id = blake3::hash(&bytes).to_hex().to_string();
    let clients: Vec<_> = centrals
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, c)| c.client())
        .collect();
    let name = format!("failover-bench-{n}.bin");
    let r = upload(api, &name, bytes).await;
    let put = t.elapsed();
    if let Err(e) = r {
        bail!("upload {n}: {e}");
    }
    let loc = poll("the upload to be locatable", || async {
        for c in &clients {
            let mut c = c.clone();
            let found = c
                .locate(LocateRequest {
                    target: Some(Target::FileId(id.clone())),
                    max_holders: 0,
                })
                .await
                .is_ok_and(|r| r.get_ref().files.iter().any(|f| !f.holders.is_empty()));
            if found {
                return Some(t.elapsed());
            }
        }
        None
    })
    .await?;
    Ok((put, loc))
}

/// Sleep a pseudo-random 0-999 ms (the same for the same arguments).
async fn phase(round: usize, step: u8) {
    let h = blake3::hash(&[&round.to_le_bytes()[..], &[step]].concat());
    let ms = u64::from(u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]])) % 1000;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Distinct bytes for upload `n`.
fn content(n: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut h = blake3::Hasher::new();
    h.update(b"failover-bench");
    h.update(&n.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let mut xof = h.finalize_xof();
    out.resize(len, 0);
    xof.fill(&mut out);
    out
}

/// Renewals of any kind (ok or rejoin) so far.
fn renewals(s: &Status) -> u64 {
    s.lease_renewals.ok + s.lease_renewals.rejoin
}

async fn status(api: &Client) -> Option<Status> {
    api.status().await.ok()
}

/// Poll `f` every millisecond (a timing, so no backoff) until it gives
/// `Some`, for at most [`DEADLINE`].
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
