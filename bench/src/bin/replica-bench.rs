//! Time to restore R = 3 copies of a file after two of its three holders
//! die (issue 13), split into detection and transfer, beside a plain
//! single-source download of the same file.
//!
//! Starts one `central-server` (SQLite; `--ttl-secs` leases, heartbeats
//! every second) and real `pserver` processes on loopback, the binaries
//! built next to this bench:
//!
//! * an **owner**, whose share folder gets a `--size-mib` file of
//!   pseudo-random bytes;
//! * four **volunteers** (`PSERVER_REPLICA_QUOTA_BYTES` = twice the file);
//! * a **downloader** with no replica space, for the reference.
//!
//! Then:
//!
//! 1. **reference**: the downloader downloads the file by id while the
//!    owner is its only holder (`POST /api/v1/downloads`, until `done`): a
//!    plain single-source download through the same verified engine. Its
//!    copy is then removed and the downloader stopped, so it is not a copy.
//! 2. **pin**: the owner pins the file to 3 copies (`POST /api/v1/pins`);
//!    the time until the directory's Locate shows 3 live copies.
//! 3. **loss**: `kill -9` of the owner and of one replica holder, which
//!    leaves one copy. *Detection*: from the kill until Locate shows one
//!    live copy (the two leases ended: about one TTL). *Restore*: from
//!    there until Locate shows 3 live copies again (the leader plans, each
//!    chosen volunteer hears its task in its next heartbeat, fetches the
//!    file from the survivor, verifies it and announces it).
//!
//! Prints a markdown table.
//!
//! ```text
//! cargo build --release -p central-server -p pserver -p peerdex-bench
//! target/release/replica-bench --size-mib 1024
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use peerdex_proto::rest::{PinRequest, Status};
use peerdex_testkit::ChildPeer;
use peerdex_testkit::central::CentralProc;
use peerdex_testkit::control::by_id;

#[derive(Debug, Parser)]
#[command(about = "Time to restore 3 copies of a file after losing 2 of its holders")]
struct Args {
    /// Size of the file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// The central's lease TTL in seconds (heartbeats every second): the
    /// detection time.
    #[arg(long, default_value_t = 5)]
    ttl_secs: u64,
    /// Folder for the central and the PServers (default: a fresh temp
    /// folder, deleted after; a given one is kept).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.size_mib == 0 || args.ttl_secs < 2 {
        bail!("--size-mib must be at least 1 and --ttl-secs at least 2");
    }
    peerdex_testkit::tls::install_provider();
    let (root, own) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("replica-bench-{}", std::process::id())),
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

/// How long any one wait may take before the bench gives up.
fn deadline(args: &Args) -> Duration {
    Duration::from_secs(120 + args.size_mib / 4)
}

/// A `pserver` process (testkit's child PServer) and its peer id.
struct Peer {
    peer: ChildPeer,
    id: String,
}

async fn spawn(root: &Path, central: &str, quota: u64) -> anyhow::Result<Peer> {
    let quota_bytes = quota.to_string();
    let max_upload = (quota.max(1 << 30) * 2).to_string();
    let vars = [
        ("RUST_LOG", "info"),
        ("NO_COLOR", "1"),
        ("PSERVER_REPLICA_QUOTA_BYTES", quota_bytes.as_str()),
        ("PSERVER_MAX_UPLOAD_BYTES", max_upload.as_str()),
    ];
    let peer = ChildPeer::spawn_in(root, central, &vars);
    let status: Status = poll("a PServer to answer", Duration::from_secs(30), || async {
        peer.api.status().await.ok()
    })
    .await?;
    Ok(Peer {
        peer,
        id: status.peer_id,
    })
}

async fn poll<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("gave up waiting for {what} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Live copies of `id` per the directory.
async fn live(central: &CentralProc, id: &str) -> Option<(u32, Vec<(String, bool)>)> {
    let f = central.locate(id).await?;
    let holders = f
        .holders
        .iter()
        .map(|h| (h.peer_id.clone(), h.replica))
        .collect();
    Some((f.replication.map_or(0, |r| r.live), holders))
}

async fn bench(args: &Args, root: &Path) -> anyhow::Result<()> {
    let size = args.size_mib << 20;
    let limit = deadline(args);
    let env: Vec<(String, String)> = [
        ("CENTRAL_LEASE_TTL_SECS", args.ttl_secs.to_string()),
        ("CENTRAL_HEARTBEAT_SECS", "1".into()),
        ("CENTRAL_REPLICA_GRACE_SECS", "3600".into()),
        ("CENTRAL_JOIN_RATE", "0".into()),
        ("CENTRAL_PUBLISH_RATE", "0".into()),
        ("CENTRAL_SEARCH_RATE", "0".into()),
        ("CENTRAL_MAX_PINNED_BYTES_PER_PEER", (size * 8).to_string()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let central = CentralProc::start(&root.join("central"), "central", env);
    eprintln!("central at {}", central.url);

    // The owner's file, written and hashed in 16 MiB pieces.
    let owner_root = root.join("owner");
    std::fs::create_dir_all(owner_root.join("share"))?;
    let path = owner_root.join("share").join("big.bin");
    let mut hasher = blake3::Hasher::new();
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let piece = 16u64 << 20;
        let mut left = size;
        let mut seed = 1u64;
        while left > 0 {
            let n = left.min(piece) as usize;
            let bytes = peerdex_testkit::test_bytes(n, seed);
            hasher.update(&bytes);
            out.write_all(&bytes)?;
            left -= n as u64;
            seed += 1;
        }
        out.flush()?;
    }
    let id = hasher.finalize().to_hex().to_string();
    eprintln!("file {id}, {} MiB", args.size_mib);

    let mut owner = spawn(&owner_root, &central.url, 0).await?;
    let mut vols = Vec::new();
    for i in 0..4 {
        vols.push(spawn(&root.join(format!("vol{i}")), &central.url, size * 2).await?);
    }
    poll("the owner's file announced", limit, || async {
        live(&central, &id).await.filter(|(n, _)| *n == 1)
    })
    .await?;

    // 1. Reference: a single-source download.
    let dl_root = root.join("downloader");
    let mut dl = spawn(&dl_root, &central.url, 0).await?;
    let t = Instant::now();
    let job = dl.peer.api.start_download(&by_id(&id)).await?;
    let done = poll("the reference download", limit, || async {
        let j = dl.peer.api.job(&job.job_id).await.ok()?;
        j.state.is_final().then_some(j)
    })
    .await?;
    let reference = t.elapsed();
    if done.error.is_some() {
        bail!("the reference download failed: {done:?}");
    }
    eprintln!(
        "reference single-source download: {:.2} s",
        reference.as_secs_f64()
    );
    dl.peer
        .api
        .remove_file(&id)
        .await
        .context("removing the reference copy")?;
    dl.peer.kill9();
    poll("the reference copy gone", limit, || async {
        live(&central, &id).await.filter(|(n, _)| *n == 1)
    })
    .await?;

    // 2. Pin 3 copies.
    let t = Instant::now();
    let pin = PinRequest {
        file: id.clone(),
        replicas: 3,
    };
    owner.peer.api.pin(&pin).await.context("pinning")?;
    let (_, holders) = poll("3 copies", limit, || async {
        live(&central, &id).await.filter(|(n, _)| *n == 3)
    })
    .await?;
    let pinned = t.elapsed();
    eprintln!("3 copies after {:.2} s", pinned.as_secs_f64());

    // 3. Lose the owner and one replica holder.
    let victim = holders
        .iter()
        .find(|(h, replica)| *replica && *h != owner.id)
        .map(|(h, _)| h.clone())
        .context("no replica holder")?;
    let v = vols
        .iter_mut()
        .find(|p| p.id == victim)
        .context("the replica holder is not one of ours")?;
    let t = Instant::now();
    owner.peer.kill9();
    v.peer.kill9();
    poll("the two losses detected", limit, || async {
        live(&central, &id).await.filter(|(n, _)| *n == 1)
    })
    .await?;
    let detected = t.elapsed();
    poll("3 copies again", limit, || async {
        live(&central, &id).await.filter(|(n, _)| *n == 3)
    })
    .await?;
    let restored = t.elapsed();
    let transfer = restored - detected;
    let mib = args.size_mib as f64;
    let status: Option<Status> = vols[0].peer.api.status().await.ok();
    eprintln!(
        "done (a volunteer's status: {:?})",
        status.map(|s| s.replica_used_bytes)
    );

    println!(
        "\n| {} MiB, lease TTL {} s, heartbeat 1 s, loopback | seconds | MiB/s |",
        args.size_mib, args.ttl_secs
    );
    println!("|---|---:|---:|");
    let row = |what: &str, d: Duration, rate: bool| {
        let r = if rate {
            format!("{:.0}", mib / d.as_secs_f64())
        } else {
            String::new()
        };
        println!("| {what} | {:.2} | {r} |", d.as_secs_f64());
    };
    row(
        "reference: plain single-source download (one holder → one downloader)",
        reference,
        true,
    );
    row(
        "pin 3 → 3 live copies (2 volunteers fetch from the owner)",
        pinned,
        true,
    );
    row(
        "kill -9 of 2 holders → loss detected (leases end)",
        detected,
        false,
    );
    row(
        "**detected → 3 live copies (2 volunteers fetch from the survivor)**",
        transfer,
        true,
    );
    row("kill -9 → 3 live copies (total)", restored, false);
    for p in &mut vols {
        p.peer.kill9();
    }
    Ok(())
}
