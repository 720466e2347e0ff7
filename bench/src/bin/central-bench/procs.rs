//! The processes of a run: the central (started, restarted, signalled),
//! the trivial health server of the baseline, and what `/proc` says of them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peerdex_proto::v1::LocateRequest;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::locate_request::Target;
use tonic::transport::Channel;

use crate::args::{HEARTBEAT_SECS, LEASE_TTL_SECS};

/// A trivial tonic server: health only. Stops when stdin closes.
pub(crate) async fn health_server() -> anyhow::Result<()> {
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
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

/// A server the bench started never outlives it (a run that fails half
/// way leaves no central behind).
impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn spawn(mut cmd: Command, prefix: &str) -> anyhow::Result<Proc> {
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
        // `NAME [metrics=URL] listening on ADDR`: the address is last.
        let l = line.trim();
        let name = prefix.split_whitespace().next().unwrap_or(prefix);
        if l.starts_with(name)
            && let Some((_, a)) = l.rsplit_once(" listening on ")
        {
            let addr = a.trim().parse()?;
            // Keep draining stdout so the child never blocks on it.
            std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
            return Ok(Proc { child, addr });
        }
    }
}

pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
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

pub(crate) fn start_central(bin: &PathBuf, data: &PathBuf) -> anyhow::Result<Proc> {
    start_central_with(bin, data, None)
}

/// [`start_central`] with the directory on etcd at `endpoints`.
pub(crate) fn start_central_on_etcd(
    bin: &PathBuf,
    data: &PathBuf,
    endpoints: &str,
) -> anyhow::Result<Proc> {
    start_central_env(bin, data, &[("CENTRAL_ETCD_ENDPOINTS", endpoints)])
}

/// [`start_central`], with `CENTRAL_METRICS_ADDR` when `metrics` is given.
pub(crate) fn start_central_with(
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
pub(crate) fn start_central_env(
    bin: &PathBuf,
    data: &PathBuf,
    env: &[(&str, &str)],
) -> anyhow::Result<Proc> {
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
        // The simulated peers serve nothing at their advertised URLs: a
        // dial-back would find none of them and list none of their files.
        .env("CENTRAL_DIAL_BACK", "false")
        .env("NO_COLOR", "1")
        // The sweeper's lines, shown in the report.
        .env("RUST_LOG", "warn,central_server::directory=info")
        .stderr(log);
    spawn(cmd, "central-server listening on")
}

fn log_path(data: &std::path::Path) -> PathBuf {
    data.with_extension("log")
}

/// The sweeper's lines in the central's log (colour codes or not), and
/// the peers they say were removed: for the report only (the end of a
/// sweep is decided on the `Info` RPC).
pub(crate) fn swept(data: &std::path::Path) -> (u64, Vec<String>) {
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

pub(crate) async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Time from spawning the central until a Locate of a known id answers.
pub(crate) async fn restart(
    bin: &PathBuf,
    data: &PathBuf,
    probe: &str,
) -> anyhow::Result<(Proc, Duration)> {
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

pub(crate) fn sigterm_and_wait(p: &mut Proc) -> anyhow::Result<()> {
    let pid = p.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let status = p.child.wait()?;
    if !status.success() {
        bail!("central exited with {status} after SIGTERM");
    }
    Ok(())
}

/// Restart the central on `data` twice: after SIGTERM (from `c`, the running
/// one) and after kill -9. Returns the RSS after the first restart and both
/// restart-to-serving times.
pub(crate) async fn restarts(
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

/// Every file called `name` under `dir`.
pub(crate) fn files_named(dir: &std::path::Path, name: &str) -> Vec<PathBuf> {
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
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
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
