//! `nat-bench`: peers behind NAT (issue 25), on real NATs built with
//! network namespaces (`peerdex_testkit::netns`; run as root).
//!
//! ```text
//!   internet:  central   relay (PSERVER_RELAY=true)   pub-a   pub-b
//!   nat1 ── nat-a          nat2 ── nat-b
//! ```
//!
//! Per run, each a full `POST /api/v1/downloads` to a verified, stored,
//! published file (the copy is removed again before the next run):
//! * **direct**: pub-b fetches pub-a's file (public to public);
//! * **relayed**: nat-b fetches nat-a's file (NAT to NAT, through the relay);
//! * **callback**: pub-b fetches nat-a's file (the NATed holder calls the
//!   public downloader back: no byte through the relay).
//!
//! Reported: MiB/s (median of the runs), the relayed/direct ratio (goal
//! ≥ 0.7), the CPU seconds per GiB moved of the relay, the holder and the
//! downloader, and the bytes the relay carried per transfer (its
//! `peerdex_pserver_relay_bytes_total`); and the
//! time from a firewalled peer's start until its file is listed and until
//! another peer has downloaded it (goal < 2 s + one heartbeat).
//!
//!   cargo build --release -p central-server -p pserver -p peerdex-bench
//!   sudo target/release/nat-bench --size-mib 1024 --runs 3
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use peerdex_proto::rest::{DownloadRequest, JobState, LocateQuery};
use peerdex_testkit::api::Client;
use peerdex_testkit::netns::{Host, Lab};
use peerdex_testkit::{ChildProc, bin};

/// Peers behind real NATs: a relayed and a called-back download against a
/// direct one, and a firewalled peer's time to be downloadable.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Size of each file moved, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=16384))]
    size_mib: u64,
    /// Runs of each transfer (medians reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// The peers' heartbeat interval, in seconds (CENTRAL_HEARTBEAT_SECS).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    heartbeat_secs: u64,
    /// Folder for every process's files (emptied first).
    #[arg(long, default_value = "/tmp/peerdex-nat-bench")]
    dir: PathBuf,
    /// Each internet link's rate each way, in Mbit/s (`tc tbf` on both ends
    /// of every public host's and NAT router's link); 0: unlimited, every
    /// transfer then races for this machine's CPU.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    link_mbit: u32,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// One kind of transfer and its figures, one per run.
struct Row {
    name: &'static str,
    mib_per_s: Vec<f64>,
    relay_cpu_per_gib: Vec<f64>,
    holder_cpu_per_gib: Vec<f64>,
    downloader_cpu_per_gib: Vec<f64>,
    relay_bytes: Vec<u64>,
}

impl Row {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            mib_per_s: vec![],
            relay_cpu_per_gib: vec![],
            holder_cpu_per_gib: vec![],
            downloader_cpu_per_gib: vec![],
            relay_bytes: vec![],
        }
    }
}

struct Peer {
    host: Host,
    proc: ChildProc,
    api_url: String,
    root: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)?;
    }
    std::fs::create_dir_all(&args.dir)?;
    let mut lab = Lab::new().map_err(anyhow::Error::msg)?;
    if args.link_mbit > 0 {
        lab.limit_links(args.link_mbit);
    }
    let h = |r: Result<Host, String>| r.map_err(anyhow::Error::msg);
    let central_host = h(lab.public("central"))?;
    let relay_host = h(lab.public("relay"))?;
    let pub_a = h(lab.public("pub-a"))?;
    let pub_b = h(lab.public("pub-b"))?;
    let nat1 = lab.nat("nat1").map_err(anyhow::Error::msg)?;
    let nat2 = lab.nat("nat2").map_err(anyhow::Error::msg)?;
    let nat_a = h(lab.behind(&nat1, "nat-a"))?;
    let nat_b = h(lab.behind(&nat2, "nat-b"))?;

    let dir = args.dir.join("central");
    let hb = args.heartbeat_secs;
    let central = lab.spawn(
        &central_host,
        &bin("central-server"),
        &dir,
        &[
            ("CENTRAL_LISTEN_ADDR", format!("{}:0", central_host.ip())),
            ("CENTRAL_DATA_DIR", dir.join("data").display().to_string()),
            ("CENTRAL_HEARTBEAT_SECS", hb.to_string()),
            ("CENTRAL_LEASE_TTL_SECS", (hb * 3).to_string()),
            ("RUST_LOG", "warn".into()),
        ],
    );
    let central_url = format!("http://{}", central.last_word());

    let size = args.size_mib << 20;
    let spawn = |host: &Host, name: &str, files: &[(&str, u64)], relay: bool| -> Result<Peer> {
        let root = args.dir.join(name);
        std::fs::create_dir_all(root.join("share"))?;
        for (file, seed) in files {
            write_random(&root.join("share").join(file), size, *seed)?;
        }
        let mut env = vec![
            ("RUST_LOG", "warn".to_owned()),
            ("PSERVER_API_ADDR", "127.0.0.1:0".into()),
            ("PSERVER_PEER_ADDR", format!("{}:0", host.ip())),
            (
                "PSERVER_SHARE_DIR",
                root.join("share").display().to_string(),
            ),
            ("PSERVER_DATA_DIR", root.join("data").display().to_string()),
            ("PSERVER_CENTRAL_URL", central_url.clone()),
        ];
        if relay {
            env.push(("PSERVER_RELAY", "true".into()));
        }
        let proc = lab.spawn(host, &bin("pserver"), &root, &env);
        Ok(Peer {
            host: host.clone(),
            api_url: proc.field("api"),
            proc,
            root,
        })
    };
    eprintln!(
        "nat-bench: writing two {} MiB files and starting 5 peers …",
        args.size_mib
    );
    let relay = spawn(&relay_host, "relay", &[], true)?;
    let a = spawn(&pub_a, "pub-a", &[("direct.bin", 1)], false)?;
    let b = spawn(&pub_b, "pub-b", &[], false)?;
    let na = spawn(&nat_a, "nat-a", &[("behind-nat.bin", 2)], false)?;
    let nb = spawn(&nat_b, "nat-b", &[], false)?;
    let direct_id = file_id(&a.root.join("share/direct.bin"))?;
    let nat_id = file_id(&na.root.join("share/behind-nat.bin"))?;
    for (who, id) in [(&b, &direct_id), (&nb, &nat_id), (&b, &nat_id)] {
        wait_listed(&lab, who, id, Duration::from_secs(300)).await?;
    }

    let mut rows = [
        Row::new("direct (public → public)"),
        Row::new("relayed (NAT → NAT)"),
        Row::new("callback (NAT → public)"),
    ];
    for run in 1..=args.runs {
        for (k, (who, holder, id)) in [
            (&b, &a, &direct_id),
            (&nb, &na, &nat_id),
            (&b, &na, &nat_id),
        ]
        .into_iter()
        .enumerate()
        {
            let cpu0 = cpu_secs(&relay.proc)?;
            let (held0, got0) = (cpu_secs(&holder.proc)?, cpu_secs(&who.proc)?);
            let bytes0 = relay_bytes(&lab, &relay).await;
            let secs = download(&lab, who, id, Duration::from_secs(1800)).await?;
            let cpu = cpu_secs(&relay.proc)? - cpu0;
            let gib = size as f64 / (1u64 << 30) as f64;
            rows[k]
                .holder_cpu_per_gib
                .push((cpu_secs(&holder.proc)? - held0) / gib);
            rows[k]
                .downloader_cpu_per_gib
                .push((cpu_secs(&who.proc)? - got0) / gib);
            let carried = relay_bytes(&lab, &relay).await.saturating_sub(bytes0);
            let mibs = args.size_mib as f64 / secs;
            eprintln!(
                "  run {run}: {:<26} {secs:7.2} s  {mibs:8.1} MiB/s  relay {cpu:.2} CPU-s, {carried} B",
                rows[k].name
            );
            rows[k].mib_per_s.push(mibs);
            rows[k].relay_cpu_per_gib.push(cpu / gib);
            rows[k].relay_bytes.push(carried);
            remove(&lab, who, id).await?;
        }
    }

    // A firewalled peer's start until it can be downloaded from.
    let late = args.dir.join("nat-c/share/late.bin");
    std::fs::create_dir_all(late.parent().context("a folder")?)?;
    write_random(&late, 1 << 20, 3)?;
    let start = Instant::now();
    let nc = spawn(&nat_a, "nat-c", &[], false)?;
    let late_id = file_id(&nc.root.join("share/late.bin"))?;
    wait_listed(&lab, &b, &late_id, Duration::from_secs(120)).await?;
    let listed = start.elapsed().as_secs_f64();
    loop {
        if download(&lab, &b, &late_id, Duration::from_secs(30))
            .await
            .is_ok()
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the late peer's file was not downloadable within 120 s");
        }
    }
    let downloadable = start.elapsed().as_secs_f64();

    let med = |v: &[f64]| median(v);
    let direct = med(&rows[0].mib_per_s);
    if args.json {
        let row = |k: usize| {
            serde_json::json!({
                "mib_per_s": med(&rows[k].mib_per_s),
                "ratio_to_direct": med(&rows[k].mib_per_s) / direct,
                "relay_cpu_s_per_gib": med(&rows[k].relay_cpu_per_gib),
                "holder_cpu_s_per_gib": med(&rows[k].holder_cpu_per_gib),
                "downloader_cpu_s_per_gib": med(&rows[k].downloader_cpu_per_gib),
                "relay_bytes": rows[k].relay_bytes.iter().max(),
            })
        };
        println!(
            "{}",
            serde_json::json!({
                "size_mib": args.size_mib,
                "runs": args.runs,
                "heartbeat_secs": hb,
                "link_mbit": args.link_mbit,
                "direct": row(0),
                "relayed": row(1),
                "callback": row(2),
                "firewalled_listed_secs": listed,
                "firewalled_downloadable_secs": downloadable,
            })
        );
    } else {
        println!(
            "\n{} MiB, median of {} runs, heartbeat {hb} s, links {}",
            args.size_mib,
            args.runs,
            match args.link_mbit {
                0 => "unlimited".to_owned(),
                m => format!("{m} Mbit/s each way"),
            }
        );
        println!(
            "| transfer | MiB/s | vs direct | relay CPU-s/GiB | holder CPU-s/GiB | downloader CPU-s/GiB | bytes via relay |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {:.1} | {:.2}x | {:.2} | {:.2} | {:.2} | {} |",
                r.name,
                med(&r.mib_per_s),
                med(&r.mib_per_s) / direct,
                med(&r.relay_cpu_per_gib),
                med(&r.holder_cpu_per_gib),
                med(&r.downloader_cpu_per_gib),
                r.relay_bytes.iter().max().unwrap_or(&0)
            );
        }
        println!(
            "\nfirewalled peer start → file listed {listed:.2} s, → downloaded by another peer {downloadable:.2} s (goal < 2 s + one heartbeat = {} s)",
            2 + hb
        );
    }
    drop((nc, nb, na, b, a, relay, central));
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `size` bytes of a seeded xorshift stream (incompressible, and distinct
/// per seed, so no two peers hold the same file by chance).
fn write_random(path: &Path, size: u64, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

fn file_id(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)
        .with_context(|| format!("hash {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}

fn client(url: &str) -> Client {
    Client::new(url.parse().expect("api= is a URL"), None)
}

/// Until `who`'s directory lists at least one holder of `id`.
async fn wait_listed(lab: &Lab, who: &Peer, id: &str, deadline: Duration) -> Result<()> {
    let (url, wanted) = (who.api_url.clone(), id.to_owned());
    let ok = lab
        .within(&who.host, move || async move {
            let id = wanted;
            let api = client(&url);
            let start = Instant::now();
            while start.elapsed() < deadline {
                let q = LocateQuery {
                    file_id: Some(id.clone()),
                    name: None,
                };
                if api
                    .locate(&q)
                    .await
                    .is_ok_and(|r| r.files.iter().any(|f| !f.holders.is_empty()))
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
        .await;
    if !ok {
        bail!(
            "{id} was not listed for {} within {deadline:?}",
            who.root.display()
        );
    }
    Ok(())
}

/// One download job to its end: its seconds, or why it failed.
async fn download(lab: &Lab, who: &Peer, id: &str, deadline: Duration) -> Result<f64> {
    let (url, id) = (who.api_url.clone(), id.to_owned());
    lab.within(&who.host, move || async move {
        let api = client(&url);
        let start = Instant::now();
        let req = DownloadRequest {
            file_id: Some(id.clone()),
            ..Default::default()
        };
        let job = api
            .start_download(&req)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        loop {
            let j = api
                .job(&job.job_id)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            match j.state {
                JobState::Done => return Ok(start.elapsed().as_secs_f64()),
                s if s.is_final() => bail!("download of {id} ended {s:?}: {:?}", j.error),
                _ if start.elapsed() > deadline => bail!("download of {id} over {deadline:?}"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
}

/// Remove the downloaded copy (and its listing) before the next run.
async fn remove(lab: &Lab, who: &Peer, id: &str) -> Result<()> {
    let (url, id) = (who.api_url.clone(), id.to_owned());
    lab.within(&who.host, move || async move {
        client(&url)
            .remove_file(&id)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("remove {id}: {e:?}"))
    })
    .await
}

/// utime + stime of a process, in seconds.
fn cpu_secs(p: &ChildProc) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.child.id()))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf(3) has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// The relay's `peerdex_pserver_relay_bytes_total` (0 if not exported).
async fn relay_bytes(lab: &Lab, relay: &Peer) -> u64 {
    let url = format!("{}/metrics", relay.api_url);
    lab.within(&relay.host, move || async move {
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("peerdex_pserver_relay_bytes_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    })
    .await
    .unwrap_or(0)
}
