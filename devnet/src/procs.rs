//! The processes devnet runs: started from their folder's `.env`, their
//! addresses read from their first line, stopped in order.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use peerdex_testkit::EtcdCluster;
use peerdex_testkit::netns::Host;

use crate::nat::NatNet;

pub struct Proc {
    pub name: String,
    pub child: Child,
    /// A central (stopped after the peers, with SIGTERM), not a peer.
    pub central: bool,
}

/// The addresses a PServer reports on its first line:
/// `pserver listening: api=http://A peer=http://B public=URL`.
pub struct PeerAddrs {
    pub api_url: String,
    /// What other peers use to reach it (its public URL).
    pub peer_url: String,
}

impl PeerAddrs {
    pub fn parse(line: &str) -> Option<Self> {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        };
        Some(Self {
            api_url: field("api=")?,
            peer_url: field("public=")?,
        })
    }
}

pub fn write_env(dir: &Path, lines: &[(&str, String)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let body: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    // It may hold a join secret: readable by its owner only.
    peerdex_common::fs::write_secret(&dir.join(".env"), body.as_bytes())?;
    Ok(())
}

/// Start a component in `dir` (where its `.env` is), in its own process group
/// so a Ctrl+C in the terminal reaches devnet only; devnet stops it in order.
///
/// With `host` (devnet `--nat`) it runs inside that network namespace.
pub async fn spawn(
    bins: &Path,
    bin: &str,
    dir: &Path,
    name: &str,
    host: Option<&Host>,
) -> Result<(Proc, String)> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = match host {
        Some(h) => NatNet::command(h, &bins.join(bin)),
        None => Command::new(bins.join(bin)),
    };
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bins.join(bin).display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .with_context(|| {
            format!(
                "{name} did not start within 30 s; see {}",
                dir.join(format!("{name}.log")).display()
            )
        })??
        .with_context(|| {
            format!(
                "{name} exited at start; see {}",
                dir.join(format!("{name}.log")).display()
            )
        })?;
    // Keep reading its stdout: a process that prints another line (the
    // central's metrics address) must not find the pipe closed.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((
        Proc {
            name: name.to_owned(),
            child,
            central: bin == "central-server",
        },
        first,
    ))
}

/// Stop everything in order: the peers (SIGINT, their Ctrl+C path: they
/// leave the directory), then the centrals (SIGTERM: they drain), then the
/// etcd members (SIGTERM). A process still running after 15 s is killed.
pub async fn stop_all(procs: &mut Vec<Proc>, etcd: Option<EtcdCluster>) {
    for centrals in [false, true] {
        let sig = if centrals {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        let group: Vec<&mut Proc> = procs
            .iter_mut()
            .rev()
            .filter(|p| p.central == centrals)
            .collect();
        for p in &group {
            if let Some(pid) = p.child.id() {
                // SAFETY: plain kill(2) on a child we started.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid as i32, sig);
                }
            }
        }
        for p in group {
            match tokio::time::timeout(Duration::from_secs(15), p.child.wait()).await {
                Ok(Ok(s)) if s.success() => eprintln!("devnet: {} stopped", p.name),
                Ok(Ok(s)) => eprintln!("devnet: {} stopped ({s})", p.name),
                _ => {
                    eprintln!("devnet: {} did not stop in 15 s; killing it", p.name);
                    let _ = p.child.kill().await;
                }
            }
        }
    }
    procs.clear();
    if let Some(mut etcd) = etcd {
        let _ = tokio::task::spawn_blocking(move || etcd.stop()).await;
        eprintln!("devnet: etcd stopped");
    }
}
