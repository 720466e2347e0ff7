//! `island-bench`: what linking islands costs (issue 24).
//!
//! 1. Summary: build the filter of `--summary-ids` ids (and as many names),
//!    its size on the wire and the CPU a rebuild takes (one thread).
//! 2. Locate: two islands A and B (in-process centrals on loopback, TLS,
//!    linked), each holding `--files` files of `--peers` peers; Locate
//!    p50/p99 at A of A's own ids vs of B's ids (answered through the
//!    link), and at B of B's ids (one link round trip, about), same run.
//!
//! ```sh
//! cargo run --release -p peerdex-bench --bin island-bench -- --files 100000
//! ```

use std::time::{Duration, Instant};

use anyhow::Result;
use central_server::config::{LinkConfig, parse_links};
use central_server::link::summary::{Summary, id_key, name_key};
use clap::Parser;
use hdrhistogram::Histogram;
use peerdex_proto::v1::{self, directory_client::DirectoryClient};
use peerdex_proto::{FileId, PeerId};
use peerdex_testkit::TestCentral;
use peerdex_testkit::grpc::{fid, join};
use peerdex_testkit::tls::TestCa;
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Ids in the summary measured in part 1.
    #[arg(long, default_value_t = 1_000_000)]
    summary_ids: u64,
    /// Files each island holds in part 2.
    #[arg(long, default_value_t = 100_000)]
    files: u64,
    /// Peers holding them (files spread evenly).
    #[arg(long, default_value_t = 100)]
    peers: u64,
    /// Locates per kind in part 2.
    #[arg(long, default_value_t = 5_000)]
    rounds: u64,
    /// Part 3: this many islands in a full mesh (0: skip); Locate
    /// throughput of one of them for its own ids, against one unlinked
    /// central holding the same, in the same run.
    #[arg(long, default_value_t = 10)]
    mesh: usize,
    /// Seconds of load per side in part 3.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn summary_cost(n: u64) {
    let ids: Vec<FileId> = (0..n).map(|i| fid(i).parse().expect("an id")).collect();
    let names: Vec<String> = (0..n).map(|i| format!("file-{i:09}.bin")).collect();
    let mut best = Duration::MAX;
    let mut built = None;
    for _ in 0..3 {
        let t = Instant::now();
        let keys: Vec<u64> = ids
            .iter()
            .map(id_key)
            .chain(names.iter().map(|s| name_key(s)))
            .collect();
        let s = Summary::build(n, keys);
        best = best.min(t.elapsed());
        built = Some(s);
    }
    let s = built.expect("built");
    let wire = v1::LinkSummaryResponse {
        island: "bench".into(),
        version: s.version.clone(),
        ids: s.ids,
        filter: s.to_proto(),
        ..Default::default()
    }
    .encoded_len();
    let unchanged = v1::LinkSummaryResponse {
        island: "bench".into(),
        version: s.version.clone(),
        ids: s.ids,
        not_modified: true,
        ..Default::default()
    }
    .encoded_len();
    println!(
        "summary of {n} ids + {n} names: {:.2} MiB on the wire ({:.2} bytes a key), rebuilt in {:.0} ms of one core (best of 3); an unchanged refresh: {unchanged} bytes",
        wire as f64 / (1 << 20) as f64,
        wire as f64 / (2 * n) as f64,
        best.as_secs_f64() * 1000.0
    );
}

async fn populate(url: &str, ca: &TestCa, files: u64, peers: u64, base: u64) -> Result<()> {
    let mut c = DirectoryClient::new(channel(url, ca));
    let per = files / peers;
    for p in 0..peers {
        let peer = PeerId::from_uuid(uuid_of(base + p));
        let list = (0..per)
            .map(|i| {
                let n = base * 1_000_000 + p * per + i;
                v1::SharedFile {
                    file_id: fid(n),
                    size: 1000 + n,
                    name: format!("file-{n:09}.bin"),
                    replica: false,
                }
            })
            .collect();
        join(
            &mut c,
            &peer,
            &format!("http://10.1.{}.{}:7071", p / 250, p % 250 + 1),
            list,
        )
        .await;
    }
    Ok(())
}

fn uuid_of(n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | u128::from(n))
}

fn channel(url: &str, ca: &TestCa) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(&ca.ca_file).expect("CA"),
        ))
        .domain_name("127.0.0.1");
    Channel::from_shared(url.to_owned())
        .expect("URL")
        .tls_config(tls)
        .expect("TLS")
        .tcp_nodelay(true)
        .connect_lazy()
}

async fn locate_p(
    url: &str,
    ca: &TestCa,
    ids: impl Iterator<Item = String>,
) -> Result<(f64, f64, u64)> {
    let mut c = DirectoryClient::new(channel(url, ca));
    let mut h = Histogram::<u64>::new(3)?;
    let mut found = 0;
    for id in ids {
        let t = Instant::now();
        let r = c
            .locate(v1::LocateRequest {
                target: Some(v1::locate_request::Target::FileId(id)),
                max_holders: 0,
            })
            .await?
            .into_inner();
        h.record(t.elapsed().as_micros() as u64)?;
        found += u64::from(!r.files.is_empty());
    }
    Ok((
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        found,
    ))
}

fn link(
    ca: &TestCa,
    leaf: &peerdex_testkit::tls::CertFiles,
    island: &str,
    to: &str,
) -> impl FnOnce(&mut central_server::Config) + use<> {
    let tls = ca.central_tls(leaf);
    let ca_pem = std::fs::read(&ca.ca_file).expect("CA");
    let roots = central_server::read_ca_file(&ca.ca_file).expect("CA");
    let links = parse_links(to).expect("links");
    let island = island.to_owned();
    move |c: &mut central_server::Config| {
        c.tls = Some(tls);
        c.limits.join_rate = 0;
        c.limits.max_peers_per_addr = 1_000_000;
        // Measured: what a lookup costs, not CENTRAL_LINK_RATE (its
        // default 200/s would refuse this benchmark's thousands a second).
        c.links = LinkConfig {
            island: Some(island),
            links,
            ca_pem,
            ca: roots,
            rate: 0,
            ..LinkConfig::default()
        };
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    summary_cost(args.summary_ids);

    let ca = TestCa::new("island-bench");
    let leaf = ca.leaf("central");
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (ua, ub) = (
        format!("https://{}", la.local_addr()?),
        format!("https://{}", lb.local_addr()?),
    );
    let dir = tempfile::tempdir()?;
    let a = TestCentral::serve(la, &dir.path().join("a"), None, link(&ca, &leaf, "a", &ub));
    let b = TestCentral::serve(lb, &dir.path().join("b"), None, link(&ca, &leaf, "b", &ua));
    let t = Instant::now();
    populate(&ua, &ca, args.files, args.peers, 1).await?;
    populate(&ub, &ca, args.files, args.peers, 2).await?;
    println!(
        "joined {} files in each island in {:.1} s",
        args.files,
        t.elapsed().as_secs_f64()
    );
    // Wait until A has B's summary with every file.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = DirectoryClient::new(channel(&ua, &ca))
            .info(v1::InfoRequest {})
            .await?
            .into_inner();
        if info
            .links
            .iter()
            .any(|l| l.state == "up" && l.summary_ids >= args.files / args.peers * args.peers)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "A never got B's summary: {:?}",
            info.links
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let per = args.files / args.peers * args.peers;
    let pick = |base: u64, k: u64| (0..k).map(move |i| fid(base * 1_000_000 + (i * 7919) % per));
    // Warm both connections.
    locate_p(&ua, &ca, pick(1, 200)).await?;
    locate_p(&ua, &ca, pick(2, 200)).await?;
    let local = locate_p(&ua, &ca, pick(1, args.rounds)).await?;
    let remote = locate_p(&ua, &ca, pick(2, args.rounds)).await?;
    let at_b = locate_p(&ub, &ca, pick(2, args.rounds)).await?;
    let nowhere = locate_p(&ua, &ca, (0..args.rounds).map(|i| fid(9_000_000_000 + i))).await?;
    println!("Locate at A, {} each, sequential, ms:", args.rounds);
    println!(
        "  A's own ids            p50 {:.3}  p99 {:.3}  (found {})",
        local.0, local.1, local.2
    );
    println!(
        "  B's ids, through link  p50 {:.3}  p99 {:.3}  (found {})",
        remote.0, remote.1, remote.2
    );
    println!(
        "  ids held nowhere       p50 {:.3}  p99 {:.3}",
        nowhere.0, nowhere.1
    );
    println!(
        "  (B's ids at B itself   p50 {:.3}  p99 {:.3}: about one link round trip)",
        at_b.0, at_b.1
    );
    println!(
        "goal p99(linked) <= p99(local) + RTT + 2 ms: {:.3} <= {:.3} -> {}",
        remote.1,
        local.1 + at_b.1 + 2.0,
        if remote.1 <= local.1 + at_b.1 + 2.0 {
            "met"
        } else {
            "missed"
        }
    );
    a.stop().await;
    b.stop().await;
    if args.mesh > 1 {
        mesh(&ca, &leaf, &args).await?;
    }
    Ok(())
}

/// Locates per second at `url` for its own ids (`base`), 32 at a time.
async fn throughput(url: &str, ca: &TestCa, base: u64, per: u64, secs: u64) -> Result<f64> {
    let stop = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let mut c = DirectoryClient::new(channel(url, ca));
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < stop {
                    let id = fid(base * 1_000_000 + (n * 7919 + t * 104_729) % per);
                    c.locate(v1::LocateRequest {
                        target: Some(v1::locate_request::Target::FileId(id)),
                        max_holders: 0,
                    })
                    .await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / secs as f64)
}

/// Part 3: one island of a full mesh of `args.mesh` vs one unlinked.
async fn mesh(ca: &TestCa, leaf: &peerdex_testkit::tls::CertFiles, args: &Args) -> Result<()> {
    let n = args.mesh;
    let files = (args.files / 10).max(args.peers);
    let mut listeners = Vec::new();
    for _ in 0..=n {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| Ok(format!("https://{}", l.local_addr()?)))
        .collect::<Result<_>>()?;
    let dir = tempfile::tempdir()?;
    let mut centrals = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        // The last one stands alone: the reference.
        let others: Vec<&str> = match i < n {
            true => (0..n)
                .filter(|&j| j != i)
                .map(|j| urls[j].as_str())
                .collect(),
            false => Vec::new(),
        };
        let tweak = link(ca, leaf, &format!("i{i}"), &others.join(","));
        centrals.push(TestCentral::serve(
            l,
            &dir.path().join(format!("c{i}")),
            None,
            tweak,
        ));
    }
    for (i, url) in urls.iter().enumerate() {
        let base = if i == n { 10 } else { 10 + i as u64 };
        populate(url, ca, files, args.peers, base).await?;
    }
    let per = files / args.peers * args.peers;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut linked = Vec::new();
    let mut alone = Vec::new();
    for _ in 0..2 {
        alone.push(throughput(&urls[n], ca, 10, per, args.seconds).await?);
        linked.push(throughput(&urls[0], ca, 10, per, args.seconds).await?);
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "Locate throughput for own ids, 32 in flight, best of 2 interleaved rounds of {} s: linked in a mesh of {n}: {:.0}/s; unlinked: {:.0}/s; ratio {:.2} (goal >= 0.9)",
        args.seconds,
        best(&linked),
        best(&alone),
        best(&linked) / best(&alone)
    );
    for c in centrals {
        c.stop().await;
    }
    Ok(())
}
