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
//!
//! `--island` (issue 27) simulates a whole island instead (a 3-member
//! etcd and 3 centrals, or one SQLite central with `--store sqlite`) and
//! prints its figures, one JSON object with `--json`: see `island`.
//!
//! Layout: `args` (the command line, lease settings, the synthetic
//! index), `island` (the island run), `procs` (the central and health-server processes, `/proc`),
//! `load` (populate, keep-alive, the generators and the three Locate
//! measurements), `ab` (the metrics and store A/B runs), `report` (table
//! rows); this file runs the main measurement and prints it. Ids, the
//! signed Join and authenticated calls come from `peerdex_testkit::grpc`,
//! as in the tests.

mod ab;
mod args;
mod island;
mod load;
mod procs;
mod report;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;
use peerdex_testkit::grpc::fid;

use crate::ab::{etcd_ab, metrics_ab};
use crate::args::{Args, FLOOD_QUERIES, Joined};
use crate::load::{expiry_run, flood_run, health_run, keepalive, locate_run, populate};
use crate::procs::{health_server, restart, restarts, rss_mib, spawn, start_central};
use crate::report::row;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    if args.health_server {
        return rt.block_on(health_server());
    }
    rt.block_on(bench(args))
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
    let probe = fid(args.files / 2);
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
    if args.island {
        return island::island(&args, &bin, &data).await;
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
            "\nthe sweep ended {:.2} s after the leases ended (per Info); the sweeper logged:",
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
