//! The A/B runs: metrics on and off (issue 15), SQLite and etcd (issue 12).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use peerdex_proto::v1::LocateRequest;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::locate_request::Target;
use peerdex_testkit::grpc::fid;

use crate::args::{Args, Joined};
use crate::load::{keepalive, locate_run, populate};
use crate::procs::{
    channel, cpu_ticks, files_named, rss_mib, sigterm_and_wait, start_central,
    start_central_on_etcd, start_central_with,
};
use crate::report::row;

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
pub(crate) async fn metrics_ab(
    args: &Args,
    bin: &PathBuf,
    data: &std::path::Path,
) -> anyhow::Result<()> {
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
pub(crate) async fn etcd_ab(
    args: &Args,
    bin: &PathBuf,
    data: &std::path::Path,
) -> anyhow::Result<()> {
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
    let probe = fid(args.files / 2);
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
