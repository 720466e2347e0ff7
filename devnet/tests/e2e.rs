//! End-to-end tests: the real `central-server`, `pserver` and `peerdex`
//! binaries as separate processes on loopback, ports from the OS, temp
//! folders, faults injected with real signals (SIGKILL, SIGINT).
//!
//! The binaries are taken from the same target folder as this test; the
//! README's test command (`cargo test --workspace`) builds them all first.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_devnet"))
        .parent()
        .unwrap()
        .to_path_buf();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run the whole suite with `cargo test --workspace` (it builds every binary)",
        p.display()
    );
    p
}

/// Poll `f` until it returns `Some`, or panic naming `what`.
fn wait_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child process we own.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// A child process, killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Start `bin` with `env`, wait for its one stdout line (its bound addresses).
fn spawn(bin_name: &str, dir: &Path, env: &[(&str, String)]) -> (Proc, String) {
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.join(format!("{bin_name}.log"));
    let mut cmd = Command::new(bin(bin_name));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        !line.is_empty(),
        "{bin_name} exited at start:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (Proc { child, log }, line)
}

struct Central {
    proc: Proc,
    addr: String,
    dir: PathBuf,
}

impl Central {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn start_central(dir: &Path, listen: &str, ttl: u64, heartbeat: u64) -> Central {
    let (proc, line) = spawn(
        "central-server",
        dir,
        &[
            ("CENTRAL_LISTEN_ADDR", listen.to_owned()),
            ("CENTRAL_DATA_DIR", dir.join("db").display().to_string()),
            ("CENTRAL_LEASE_TTL_SECS", ttl.to_string()),
            ("CENTRAL_HEARTBEAT_SECS", heartbeat.to_string()),
        ],
    );
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    Central {
        proc,
        addr,
        dir: dir.to_path_buf(),
    }
}

struct Peer {
    proc: Proc,
    api: String,
    peer_url: String,
    share: PathBuf,
}

impl Peer {
    fn peerdex(&self, args: &[&str]) -> Output {
        peerdex(&self.api, args)
    }
    /// `peerdex --json ARGS`, asserting success, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.peerdex(&a);
        assert!(
            out.status.success(),
            "peerdex {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("peerdex --json printed JSON")
    }
    /// Live holders of `file_id` as seen in a search for `query` (0 if absent).
    fn holders(&self, query: &str, file_id: &str) -> u64 {
        let out = self.peerdex(&["--json", "search", query]);
        if !out.status.success() {
            return 0;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["file_id"] == file_id)
            .map(|h| h["holders"].as_u64().unwrap())
            .max()
            .unwrap_or(0)
    }
    /// `peerdex --json get ID` in the background; returns once the job has
    /// moved more than `min_bytes` (so a fault can be injected mid-transfer).
    fn start_get(&self, id: &str, min_bytes: u64) -> Child {
        let child = Command::new(bin("peerdex"))
            .args(["--json", "get", id])
            .env("PEERDEX_PSERVER_URL", &self.api)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("bytes to flow", T, || {
            let jobs = self.json(&["jobs"]);
            jobs["jobs"]
                .as_array()?
                .iter()
                .any(|j| j["bytes_done"].as_u64().unwrap_or(0) > min_bytes)
                .then_some(())
        });
        child
    }

    fn joined(&self) -> bool {
        let out = self.peerdex(&["--json", "status"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|v| !v["lease_age_secs"].is_null())
    }
}

fn peerdex(api: &str, args: &[&str]) -> Output {
    Command::new(bin("peerdex"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PEERDEX_PSERVER_URL", api)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Start a PServer whose peer API is on `peer_port` (0: any), with its files.
fn start_peer(
    dir: &Path,
    central: &str,
    peer_port: u16,
    neighbours: &[String],
    extra: &[(&str, &str)],
) -> Peer {
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let mut env = vec![
        ("PSERVER_API_ADDR", "127.0.0.1:0".to_owned()),
        ("PSERVER_PEER_ADDR", format!("127.0.0.1:{peer_port}")),
        ("PSERVER_SHARE_DIR", share.display().to_string()),
        ("PSERVER_DATA_DIR", dir.join("data").display().to_string()),
        ("PSERVER_CENTRAL_URL", central.to_owned()),
        ("PSERVER_NEIGHBOURS", neighbours.join(",")),
        ("PSERVER_RESCAN_SECS", "1".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let (proc, line) = spawn("pserver", dir, &env);
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap()
            .to_owned()
    };
    let peer = Peer {
        api: field("api="),
        peer_url: field("peer="),
        proc,
        share,
    };
    wait_until(
        "the peer to join the central",
        Duration::from_secs(30),
        || peer.joined().then_some(()),
    );
    peer
}

/// A holder sharing `files`, its uploads capped at 1 MB/s so a fault can be
/// injected mid-transfer, and a downloading peer whose neighbour it is.
fn slow_holder_and_downloader(root: &Path, central: &str, files: &[(&str, &[u8])]) -> (Peer, Peer) {
    let dir = root.join("h");
    std::fs::create_dir_all(dir.join("share")).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join("share").join(name), bytes).unwrap();
    }
    let holder = start_peer(
        &dir,
        central,
        0,
        &[],
        &[("PSERVER_MAX_UPLOAD_BPS", "1000000")],
    );
    let p = start_peer(
        &root.join("p"),
        central,
        0,
        std::slice::from_ref(&holder.peer_url),
        &[],
    );
    (holder, p)
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn b3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

const T: Duration = Duration::from_secs(30);

/// The full shape: a file uploaded on peer 1 is fetched by peer 3, the lookup
/// going peer 3 → its neighbour (peer 2) → central, the bytes coming from
/// peer 1 directly; peer 3 then shows up as a holder.
#[test]
fn full_shape_upload_on_one_get_on_three() {
    let root = tempfile::tempdir().unwrap();
    let central = start_central(&root.path().join("central"), "127.0.0.1:0", 30, 10);
    let ports = [free_port(), free_port(), free_port()];
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let p1 = start_peer(
        &root.path().join("p1"),
        &central.url(),
        ports[0],
        &[url(2)],
        &[],
    );
    let p2 = start_peer(
        &root.path().join("p2"),
        &central.url(),
        ports[1],
        &[url(0)],
        &[],
    );
    let p3 = start_peer(
        &root.path().join("p3"),
        &central.url(),
        ports[2],
        &[url(1)],
        &[],
    );

    let bytes = noise(5_000_000, 7);
    let src = root.path().join("quarterly-numbers.bin");
    std::fs::write(&src, &bytes).unwrap();
    let up = p1.json(&["upload", src.to_str().unwrap()]);
    let id = up["files"][0]["file_id"].as_str().unwrap().to_owned();
    assert_eq!(id, b3(&bytes));

    let got = p3.json(&["get", "quarterly-numbers.bin"]);
    assert_eq!(got["job"]["state"], "done", "{got}");
    let sources: Vec<&str> = got["job"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["peer_url"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        [p1.peer_url.as_str()],
        "bytes must come from peer 1 directly"
    );
    let stored = std::fs::read(p3.share.join("quarterly-numbers.bin")).unwrap();
    assert_eq!(b3(&stored), id);
    // The lookup went through peer 3's neighbour, peer 2.
    assert!(
        p2.proc.log().contains("neighbour role: locating"),
        "peer 2 did not locate for peer 3"
    );
    // Peer 3 is now a holder.
    wait_until("peer 3 to be listed as a holder", T, || {
        (p2.holders("quarterly", &id) == 2).then_some(())
    });
    // `get -o` writes a copy anywhere, and refuses to overwrite without --force.
    let out_path = root.path().join("copy.bin");
    p3.json(&["get", &id, "-o", out_path.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out_path).unwrap(), bytes);
    let again = p3.peerdex(&["get", &id, "-o", out_path.to_str().unwrap()]);
    assert!(!again.status.success());
    drop(central);
}

/// kill -9 of a holder: it vanishes after the lease TTL and downloads use the
/// remaining holder.
#[test]
fn killed_holder_expires_and_the_other_serves() {
    let root = tempfile::tempdir().unwrap();
    let central = start_central(&root.path().join("central"), "127.0.0.1:0", 3, 1);
    let bytes = noise(2_000_000, 8);
    let id = b3(&bytes);
    let mut holders = Vec::new();
    for name in ["h1", "h2"] {
        let dir = root.path().join(name);
        std::fs::create_dir_all(dir.join("share")).unwrap();
        std::fs::write(dir.join("share/shared-video.bin"), &bytes).unwrap();
        holders.push(start_peer(&dir, &central.url(), 0, &[], &[]));
    }
    let p3 = start_peer(
        &root.path().join("p3"),
        &central.url(),
        0,
        std::slice::from_ref(&holders[0].peer_url),
        &[],
    );
    wait_until("two holders", T, || {
        (p3.holders("shared video", &id) == 2).then_some(())
    });
    let killed = Instant::now();
    holders[1].proc.kill9();
    wait_until("the killed holder to expire", T, || {
        (p3.holders("shared", &id) == 1).then_some(())
    });
    // TTL 3 s, heartbeat every 1 s: the lease had about 2 s left at the
    // kill; 1 s leaves room for a heartbeat delayed by a loaded machine.
    assert!(
        killed.elapsed() >= Duration::from_secs(1),
        "expired before its lease could have run out"
    );
    let got = p3.json(&["get", &id]);
    assert_eq!(got["job"]["state"], "done");
    assert_eq!(
        got["job"]["sources"][0]["peer_url"],
        holders[0].peer_url.as_str()
    );
    assert_eq!(
        b3(&std::fs::read(p3.share.join("shared-video.bin")).unwrap()),
        id
    );
}

/// SIGINT of a PServer: its in-flight upload finishes first, then it leaves
/// the directory at once (no waiting for the lease).
#[test]
fn ctrl_c_drains_uploads_then_leaves_at_once() {
    let root = tempfile::tempdir().unwrap();
    let central = start_central(&root.path().join("central"), "127.0.0.1:0", 30, 10);
    let bytes = noise(3_000_000, 9);
    let id = b3(&bytes);
    let (mut holder, p) = slow_holder_and_downloader(
        root.path(),
        &central.url(),
        &[
            ("slow-transfer.bin", &bytes),
            ("only-on-holder.txt", b"just here"),
        ],
    );
    wait_until("file listed", T, || {
        (p.holders("slow", &id) == 1).then_some(())
    });

    // `peerdex get` in the background; SIGINT the holder once bytes flow.
    let get = p.start_get(&id, 200_000);
    signal(&holder.proc.child, libc::SIGINT);
    let status = wait_until("the holder to exit", T, || {
        holder.proc.child.try_wait().unwrap()
    });
    assert!(status.success(), "pserver exited with {status}");
    // It is gone from lookups at once, far before its 30 s lease.
    assert_eq!(p.holders("only holder", &b3(b"just here")), 0);
    // And the upload it was serving completed.
    assert!(get.wait_with_output().unwrap().status.success());
    assert_eq!(
        b3(&std::fs::read(p.share.join("slow-transfer.bin")).unwrap()),
        id
    );
    assert!(holder.proc.log().contains("left the central directory"));
    holder.proc.kill9();
}

/// kill -9 of the central: located downloads go on; after a restart on the
/// same data folder, lookups work again without restarting any peer.
#[test]
fn central_killed_and_restarted() {
    let root = tempfile::tempdir().unwrap();
    let cdir = root.path().join("central");
    let mut central = start_central(&cdir, "127.0.0.1:0", 6, 2);
    let bytes = noise(3_000_000, 10);
    let id = b3(&bytes);
    let (holder, p) =
        slow_holder_and_downloader(root.path(), &central.url(), &[("survivor.bin", &bytes)]);
    wait_until("file listed", T, || {
        (p.holders("survivor", &id) == 1).then_some(())
    });

    let mut get = p.start_get(&id, 100_000);
    central.proc.kill9();
    assert!(
        get.wait().unwrap().success(),
        "the located download must finish without the central"
    );
    assert_eq!(
        b3(&std::fs::read(p.share.join("survivor.bin")).unwrap()),
        id
    );
    // Lookups fail while the central is down…
    assert!(!p.peerdex(&["search", "survivor"]).status.success());
    // …and work again after a restart on the same address and data folder.
    let addr = central.addr.clone();
    let restarted = Instant::now();
    let central = wait_until("the central to restart on its port", T, || {
        std::panic::catch_unwind(|| start_central(&cdir, &addr, 6, 2)).ok()
    });
    wait_until("lookups to work again", T, || {
        (p.holders("survivor", &id) == 2).then_some(())
    });
    assert!(
        restarted.elapsed() < Duration::from_secs(2 + 5),
        "took longer than a heartbeat interval (+slack)"
    );
    // The peers' leases are renewed (not expired after the grace period):
    // once the grace of one lease is over, the holder is still listed.
    let grace_over = restarted + Duration::from_secs(6 + 1);
    wait_until("the grace period to pass with leases renewed", T, || {
        (Instant::now() > grace_over && holder.joined() && p.holders("survivor", &id) == 2)
            .then_some(())
    });
    assert!(central.dir.join("db").exists());
}

/// A neighbour that is down is skipped for the next; with none left the
/// PServer asks the central itself.
#[test]
fn lookups_survive_dead_neighbours() {
    let root = tempfile::tempdir().unwrap();
    let central = start_central(&root.path().join("central"), "127.0.0.1:0", 30, 10);
    let mut n1 = start_peer(&root.path().join("n1"), &central.url(), 0, &[], &[]);
    let mut n2 = start_peer(&root.path().join("n2"), &central.url(), 0, &[], &[]);
    let dir = root.path().join("p");
    std::fs::create_dir_all(dir.join("share")).unwrap();
    std::fs::write(dir.join("share/findable.txt"), b"find me").unwrap();
    let p = start_peer(
        &dir,
        &central.url(),
        0,
        &[n1.peer_url.clone(), n2.peer_url.clone()],
        &[],
    );
    let id = b3(b"find me");
    wait_until("found via the first neighbour", T, || {
        (p.holders("findable", &id) == 1).then_some(())
    });
    assert!(n1.proc.log().contains("neighbour role: searching"));
    n1.proc.kill9();
    assert_eq!(
        p.holders("findable", &id),
        1,
        "second neighbour should answer"
    );
    assert!(n2.proc.log().contains("neighbour role: searching"));
    n2.proc.kill9();
    assert_eq!(
        p.holders("findable", &id),
        1,
        "the central itself should answer"
    );
    assert!(p.proc.log().contains("asking the central directly"));
}
