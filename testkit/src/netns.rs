//! Real NATs on one machine: Linux network namespaces joined by veth
//! pairs, with `iptables` routers that masquerade outbound traffic and drop
//! new inbound connections, as a home router or a carrier NAT does.
//!
//! ```text
//!            the simulated internet: namespace `<lab>-wan`, bridge br0
//!     ┌──────────────┬───────────────┴──────────────┐
//!  public host    public host                 NAT router (eth0 10.77.0.x)
//!  10.77.0.11     10.77.0.12                  MASQUERADE out, drop new in
//!                                                   │ bridge lan (192.168.n.1)
//!                                             host behind it: 192.168.n.11
//! ```
//!
//! Every namespace, link and address is made by the [`Lab`] and lives only
//! inside its namespaces (the root namespace is never touched); dropping
//! the lab kills whatever still runs in them and deletes them. Processes
//! start inside a namespace with [`Lab::spawn`]; the test itself reaches
//! them with [`Lab::block_in`] / [`Lab::within`], which run a future on a
//! thread that entered the host's namespace (every socket that thread and
//! the threads it starts open belongs to that namespace).
//!
//! Needs root (CI runs as root), `ip` (iproute2) and `iptables`: without
//! them [`Lab::new`] answers an error that says what is missing, and the
//! tests fail with it (never skip).

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::ChildProc;

/// Where `ip netns add` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Every lab's namespaces start with this, then the test process's pid.
const PREFIX: &str = "pdx";
/// The simulated internet's addresses.
const WAN: [u8; 3] = [10, 77, 0];

static LABS: AtomicU32 = AtomicU32::new(0);

/// A host: one network namespace with one address.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace's name (`ip netns exec <ns> ...` reaches it by hand).
    pub ns: String,
    ip: Ipv4Addr,
}

impl Host {
    /// Its address: on the simulated internet for a public host or a
    /// router, in its LAN for a host behind a NAT.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

/// A NAT router: a [`Host`] on the internet with a LAN behind it.
#[derive(Clone, Debug)]
pub struct Nat {
    /// The router itself; `router.ip()` is the public address its LAN's
    /// connections appear to come from.
    pub router: Host,
    lan: [u8; 3],
}

/// A set of namespaces made for one test; see the module docs.
pub struct Lab {
    name: String,
    wan: String,
    /// Every namespace made, the internet's first.
    namespaces: Vec<String>,
    /// Next host number on the internet (10.77.0.N).
    next_public: u8,
    /// Next LAN (192.168.N.0/24) and, per LAN, next host number.
    next_lan: u8,
    lan_hosts: Vec<(u8, u8)>,
    /// Each internet link's rate each way, in Mbit/s (None: as fast as the
    /// machine moves bytes).
    link_mbit: Option<u32>,
}

impl Lab {
    /// An empty internet. Errors say what is missing (root, `ip`,
    /// `iptables`) or what failed; the caller fails the test with it.
    pub fn new() -> Result<Lab, String> {
        // SAFETY: geteuid(2) has no preconditions.
        #[allow(unsafe_code)]
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err("the NAT tests build network namespaces and need root \
                 (CI runs as root): run them with sudo"
                .into());
        }
        for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
            if which(tool).is_none() {
                return Err(format!(
                    "`{tool}` is not installed: the NAT tests need it \
                     (Debian: apt-get install {package}; .ci/run installs it as root)"
                ));
            }
        }
        remove_stale();
        let name = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let wan = format!("{name}-wan");
        let mut lab = Lab {
            name,
            wan: wan.clone(),
            namespaces: Vec::new(),
            next_public: 11,
            next_lan: 1,
            lan_hosts: Vec::new(),
            link_mbit: None,
        };
        lab.add_ns(&wan)?;
        ip(&["-n", &wan, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &wan, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// Give every internet link made from now on (a public host's, a NAT
    /// router's) a rate of `mbit` Mbit/s each way, as an access line has:
    /// a token bucket (`tc tbf`) on both ends of the link. On one machine,
    /// unlimited links make every transfer a race for the CPU (each byte
    /// costs its sender's and receiver's kernel, and twice that through a
    /// relay); with links slower than the CPU, what a transfer reaches is
    /// what its protocol makes of the line, as on a real network.
    pub fn limit_links(&mut self, mbit: u32) {
        self.link_mbit = Some(mbit);
    }

    /// A host on the simulated internet, reachable by every other host.
    pub fn public(&mut self, name: &str) -> Result<Host, String> {
        let ns = self.ns_name(name);
        self.add_ns(&ns)?;
        let ip = self.attach_to_wan(&ns)?;
        Ok(Host { ns, ip })
    }

    /// A NAT router on the internet: connections from its LAN leave with
    /// its address (MASQUERADE); connections from the internet to its LAN
    /// are dropped unless they answer one the LAN opened.
    pub fn nat(&mut self, name: &str) -> Result<Nat, String> {
        let ns = self.ns_name(name);
        self.add_ns(&ns)?;
        let ip = self.attach_to_wan(&ns)?;
        let lan = [192, 168, self.next_lan];
        self.lan_hosts.push((self.next_lan, 11));
        self.next_lan += 1;
        ip_cmd(&ns, &["link", "add", "lan", "type", "bridge"])?;
        ip_cmd(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/24", dotted(lan, 1)),
                "dev",
                "lan",
            ],
        )?;
        ip_cmd(&ns, &["link", "set", "lan", "up"])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        let rules: [&[&str]; 4] = [
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "eth0",
                "-j",
                "MASQUERADE",
            ],
            &[
                "-A",
                "FORWARD",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            &["-A", "FORWARD", "-i", "eth0", "-j", "DROP"],
            // Nor does the router itself answer the internet.
            &[
                "-A",
                "INPUT",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "DROP",
            ],
        ];
        for rule in rules {
            let mut args = vec!["netns", "exec", &ns, "iptables", "-w"];
            args.extend_from_slice(rule);
            run("ip", &args)?;
        }
        Ok(Nat {
            router: Host { ns, ip },
            lan,
        })
    }

    /// A host in `nat`'s LAN: it reaches the internet through the router,
    /// and nobody on the internet can open a connection to it.
    pub fn behind(&mut self, nat: &Nat, name: &str) -> Result<Host, String> {
        let ns = self.ns_name(name);
        self.add_ns(&ns)?;
        let slot = self
            .lan_hosts
            .iter_mut()
            .find(|(lan, _)| *lan == nat.lan[2])
            .ok_or_else(|| format!("{} is not a NAT of this lab", nat.router.ns))?;
        let n = slot.1;
        slot.1 += 1;
        let port = format!("h{n}");
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &nat.router.ns,
        ])?;
        ip_cmd(&nat.router.ns, &["link", "set", &port, "master", "lan"])?;
        ip_cmd(&nat.router.ns, &["link", "set", &port, "up"])?;
        let ip = Ipv4Addr::from([nat.lan[0], nat.lan[1], nat.lan[2], n]);
        ip_cmd(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ip_cmd(&ns, &["link", "set", "eth0", "up"])?;
        ip_cmd(
            &ns,
            &["route", "add", "default", "via", &dotted(nat.lan, 1)],
        )?;
        Ok(Host { ns, ip })
    }

    /// Start `program` inside `host`'s namespace, as
    /// [`ChildProc::spawn`] does (clean environment, first line read, log
    /// in `dir`, SIGKILL on drop).
    pub fn spawn(
        &self,
        host: &Host,
        program: &Path,
        dir: &Path,
        env: &[(&str, String)],
    ) -> ChildProc {
        let netns = open_ns(&host.ns).unwrap_or_else(|e| panic!("{e}"));
        ChildProc::spawn_with(program, dir, env, move |cmd: &mut Command| {
            let fd = netns.as_raw_fd();
            // SAFETY: between fork and exec the closure only calls
            // setns(2), which is async-signal-safe, on a descriptor the
            // parent keeps open (`netns` lives in the closure).
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
            // The descriptor must outlive the spawn, which happens right
            // after this closure returns; leak it into the command.
            std::mem::forget(netns);
        })
    }

    /// Run the future `f` makes on a fresh thread inside `host`'s
    /// namespace (with a current-thread tokio runtime of its own), and
    /// wait for it. For tests that are not async, or are multi-threaded.
    pub fn block_in<T, F>(&self, host: &Host, f: impl FnOnce() -> F + Send) -> T
    where
        F: Future<Output = T>,
        T: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&host.ns);
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime inside the namespace")
                    .block_on(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// [`Lab::block_in`] for async tests: awaits the other thread without
    /// blocking the test's runtime.
    pub async fn within<T, F>(&self, host: &Host, f: impl FnOnce() -> F + Send + 'static) -> T
    where
        F: Future<Output = T>,
        T: Send + 'static,
    {
        let ns = host.ns.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let out = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime inside the namespace")
                .block_on(f());
            let _ = tx.send(out);
        });
        match rx.await {
            Ok(out) => out,
            Err(_) => match thread.join() {
                Err(p) => std::panic::resume_unwind(p),
                Ok(()) => unreachable!("the thread sends before it ends"),
            },
        }
    }

    fn ns_name(&self, name: &str) -> String {
        format!("{}-{name}", self.name)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns]).map_err(|e| {
            format!("cannot create network namespace {ns} (does this kernel allow them?): {e}")
        })?;
        self.namespaces.push(ns.to_owned());
        ip_cmd(ns, &["link", "set", "lo", "up"])
    }

    /// A veth from `ns` (its `eth0`) to the internet's bridge; its address.
    fn attach_to_wan(&mut self, ns: &str) -> Result<Ipv4Addr, String> {
        let n = self.next_public;
        self.next_public = n
            .checked_add(1)
            .filter(|n| *n < 255)
            .ok_or("the lab's internet is full (244 hosts)")?;
        let port = format!("p{n}");
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
            &self.wan,
        ])?;
        ip_cmd(&self.wan, &["link", "set", &port, "master", "br0"])?;
        ip_cmd(&self.wan, &["link", "set", &port, "up"])?;
        let ip = Ipv4Addr::from([WAN[0], WAN[1], WAN[2], n]);
        ip_cmd(ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ip_cmd(ns, &["link", "set", "eth0", "up"])?;
        if let Some(mbit) = self.link_mbit {
            // 10 ms of the rate as the bucket (at least 64 KiB: a GSO
            // packet), 50 ms of queue.
            let burst = (u64::from(mbit) * 1_000_000 / 8 / 100).max(64 * 1024);
            for (nsn, dev) in [(ns, "eth0"), (self.wan.as_str(), port.as_str())] {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        nsn,
                        "tc",
                        "qdisc",
                        "add",
                        "dev",
                        dev,
                        "root",
                        "tbf",
                        "rate",
                        &format!("{mbit}mbit"),
                        "burst",
                        &burst.to_string(),
                        "latency",
                        "50ms",
                    ],
                )?;
            }
        }
        Ok(ip)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            kill_all_in(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn dotted(net: [u8; 3], host: u8) -> String {
    Ipv4Addr::from([net[0], net[1], net[2], host]).to_string()
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let exe = which(program).unwrap_or_else(|| program.into());
    let out = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// `ip -n <ns> <args>`.
fn ip_cmd(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

fn open_ns(ns: &str) -> Result<std::fs::File, String> {
    let path = Path::new(NETNS_DIR).join(ns);
    std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Move the calling thread into `ns` (threads it starts afterwards are
/// born there too).
fn enter(ns: &str) {
    let file = open_ns(ns).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: setns(2) on a descriptor we hold open; it affects only the
    // calling thread.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "cannot enter network namespace {ns}: {}",
        std::io::Error::last_os_error()
    );
}

/// SIGKILL every process still inside `ns`.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new(which("ip").unwrap_or_else(|| "ip".into()))
        .args(["netns", "pids", ns])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) with a pid read from the namespace we made.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Delete namespaces left by labs of test processes that no longer run
/// (a test killed before its lab dropped).
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            kill_all_in(&name);
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab's promise, checked with real sockets: the internet reaches
    /// a public host, a host behind a NAT reaches the internet (appearing
    /// with its router's address), and nobody reaches the host behind it.
    #[test]
    fn a_nat_lets_connections_out_and_none_in() {
        let mut lab = Lab::new().unwrap_or_else(|e| panic!("{e}"));
        let public = lab.public("pub").unwrap();
        let nat = lab.nat("r1").unwrap();
        let home = lab.behind(&nat, "home").unwrap();
        let other = lab.nat("r2").unwrap();
        let away = lab.behind(&other, "away").unwrap();

        // A listener on every host; each tells the peer address it saw.
        let listen = |h: &Host| {
            lab.block_in(h, || async {
                std::net::TcpListener::bind("0.0.0.0:0").unwrap()
            })
        };
        let (lp, lh, la) = (listen(&public), listen(&home), listen(&away));
        let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
        let connect = |from: &Host, to: Ipv4Addr, port: u16| {
            lab.block_in(from, || async move {
                tokio::time::timeout(
                    std::time::Duration::from_millis(700),
                    tokio::net::TcpStream::connect((to, port)),
                )
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false)
            })
        };

        assert!(
            connect(&home, public.ip(), port(&lp)),
            "out through the NAT"
        );
        let (_, seen) = lp.accept().unwrap();
        assert_eq!(seen.ip(), nat.router.ip(), "masqueraded as the router");
        assert!(connect(&away, public.ip(), port(&lp)));
        assert!(
            !connect(&public, home.ip(), port(&lh)),
            "no route into a LAN"
        );
        assert!(
            !connect(&public, nat.router.ip(), port(&lh)),
            "router drops"
        );
        // Even a host that routes the LAN's addresses through the router
        // (a neighbour on the same link could) gets nothing in: the router
        // forwards only what answers a connection the LAN opened.
        ip_cmd(
            &public.ns,
            &[
                "route",
                "add",
                "192.168.1.0/24",
                "via",
                &nat.router.ip().to_string(),
            ],
        )
        .unwrap();
        assert!(!connect(&public, home.ip(), port(&lh)), "forwarding drops");
        assert!(!connect(&away, home.ip(), port(&lh)), "NAT to NAT");
        assert!(!connect(&home, away.ip(), port(&la)));

        // A process spawned inside a namespace lives there.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("where.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"ns=$(ip netns identify $$)\"\nexec sleep 60\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let child = lab.spawn(&home, &script, dir.path(), &[]);
        assert_eq!(child.field("ns"), home.ns);
        drop(child);
        let names: Vec<String> = lab.namespaces.clone();
        drop(lab);
        for ns in names {
            assert!(!Path::new(NETNS_DIR).join(ns).exists(), "deleted on drop");
        }
    }
}
