//! Peers behind NAT (issue 25) on real NATs: network namespaces, veth
//! pairs and masquerading routers that drop new inbound connections
//! (`peerdex_testkit::netns`). Every process is a real binary started
//! inside its host's namespace; the test talks to each control API from a
//! thread inside that namespace. Needs root, `ip` and `iptables` (CI runs
//! as root and installs them): without them these tests fail saying so.
//!
//! Each namespace has its own ports, so every process listens on fixed
//! ports inside its own host: the central on 50051, a PServer's peer API
//! on 7071 of its host's address, its control API on 127.0.0.1:7070.

use std::path::Path;
use std::time::Duration;

use peerdex_proto::rest::{Job, JobState, Status};
use peerdex_testkit::api::Client;
use peerdex_testkit::bytes::{blake3_hex, test_bytes};
use peerdex_testkit::control::by_id;
use peerdex_testkit::netns::{Host, Lab};
use peerdex_testkit::process::{ChildProc, bin};
use peerdex_testkit::prom;

const DEADLINE: Duration = Duration::from_secs(30);

/// A PServer running inside a host of the lab.
struct Node {
    host: Host,
    _proc: ChildProc,
    root: std::path::PathBuf,
}

impl Node {
    fn peer_url(&self) -> String {
        format!("http://{}:7071", self.host.ip())
    }
}

fn lab() -> Lab {
    Lab::new().unwrap_or_else(|e| panic!("the NAT tests need network namespaces: {e}"))
}

/// The central, on a public host, dialing back every Join (the default),
/// with short leases.
fn central(lab: &Lab, host: &Host, dir: &Path) -> (ChildProc, String) {
    let env = [
        ("CENTRAL_LISTEN_ADDR", "0.0.0.0:50051".to_owned()),
        (
            "CENTRAL_DATA_DIR",
            dir.join("central").display().to_string(),
        ),
        ("CENTRAL_LEASE_TTL_SECS", "6".into()),
        ("CENTRAL_HEARTBEAT_SECS", "2".into()),
        ("RUST_LOG", "info".into()),
    ];
    let p = lab.spawn(host, &bin("central-server"), &dir.join("central"), &env);
    (p, format!("http://{}:50051", host.ip()))
}

/// A PServer on `host` with `extra` settings on top of the defaults here.
fn pserver(lab: &Lab, host: &Host, central: &str, dir: &Path, extra: &[(&str, &str)]) -> Node {
    let root = dir.join(&host.ns);
    std::fs::create_dir_all(root.join("share")).unwrap();
    let mut env: Vec<(&str, String)> = vec![
        ("RUST_LOG", "info".into()),
        ("PSERVER_API_ADDR", "127.0.0.1:7070".into()),
        ("PSERVER_PEER_ADDR", format!("{}:7071", host.ip())),
        (
            "PSERVER_SHARE_DIR",
            root.join("share").display().to_string(),
        ),
        ("PSERVER_DATA_DIR", root.join("data").display().to_string()),
        ("PSERVER_CENTRAL_URL", central.to_owned()),
        ("PSERVER_RESCAN_SECS", "1".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let proc = lab.spawn(host, &bin("pserver"), &root, &env);
    Node {
        host: host.clone(),
        _proc: proc,
        root,
    }
}

/// Run `f` with `node`'s control API, from inside its namespace.
async fn on<T, F>(lab: &Lab, node: &Node, f: impl FnOnce(Client) -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    lab.within(&node.host, move || {
        f(Client::new("http://127.0.0.1:7070".parse().unwrap(), None))
    })
    .await
}

async fn status(lab: &Lab, node: &Node) -> Status {
    on(
        lab,
        node,
        |c| async move { c.status().await.expect("status") },
    )
    .await
}

/// Wait until `node` says how it is reached, and `ok` holds for it.
async fn wait_reach(lab: &Lab, node: &Node, what: &str, ok: impl Fn(&Status) -> bool) -> Status {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s = status(lab, node).await;
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: still {:?} after {DEADLINE:?}; log:\n{}",
            s.reachability,
            std::fs::read_to_string(node.root.join("pserver.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn relayed(s: &Status) -> bool {
    s.reachability
        .as_ref()
        .is_some_and(|r| !r.reachable && r.relay_attached)
}

fn reachable(s: &Status) -> bool {
    s.reachability.as_ref().is_some_and(|r| r.reachable)
}

/// One metric of `node` (0 when absent).
async fn metric(lab: &Lab, node: &Node, name: &'static str) -> f64 {
    let text = lab
        .within(&node.host, || async {
            reqwest::get("http://127.0.0.1:7070/metrics")
                .await
                .expect("GET /metrics")
                .text()
                .await
                .expect("metrics text")
        })
        .await;
    prom::parse(&text).value(name, &[]).unwrap_or(0.0)
}

/// Start a download of `id` on `node` and wait for its end.
async fn download(lab: &Lab, node: &Node, id: &str) -> Job {
    let id = id.to_owned();
    let job = on(lab, node, move |c| async move {
        c.start_download(&by_id(&id)).await.expect("download")
    })
    .await;
    finish(lab, node, &job.job_id).await
}

async fn finish(lab: &Lab, node: &Node, job: &str) -> Job {
    let job = job.to_owned();
    on(lab, node, move |c| async move {
        peerdex_testkit::control::finish(&c, &job, Duration::from_secs(90)).await
    })
    .await
}

/// Drop `bytes` into `node`'s share; its id.
fn share(node: &Node, name: &str, bytes: &[u8]) -> String {
    std::fs::write(node.root.join("share").join(name), bytes).unwrap();
    blake3_hex(bytes)
}

async fn wait_holders(lab: &Lab, asker: &Node, name: &str, id: &str, n: u32) {
    let (name, id) = (name.to_owned(), id.to_owned());
    on(lab, asker, move |c| async move {
        peerdex_testkit::control::wait_holders_exactly(&c, &name, &id, n).await
    })
    .await
}

fn same_bytes(node: &Node, name: &str, bytes: &[u8]) {
    let got = std::fs::read(node.root.join("share").join(name)).expect("downloaded file");
    assert_eq!(got.len(), bytes.len(), "{name}: size");
    assert!(got == bytes, "{name}: bytes differ");
}

/// A holder behind NAT that advertises its private address, a public
/// downloader: the directory finds the holder unreachable and lists it
/// only through the relay; the download goes direct (the holder calls
/// back), so the relay carries no file byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_behind_nat_calls_a_public_downloader_back() {
    let mut lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let c = lab.public("c").unwrap();
    let r = lab.public("r").unwrap();
    let pub_d = lab.public("d").unwrap();
    let nat = lab.nat("n1").unwrap();
    let h = lab.behind(&nat, "h").unwrap();
    let (_central, url) = central(&lab, &c, dir.path());
    let relay = pserver(&lab, &r, &url, dir.path(), &[("PSERVER_RELAY", "true")]);
    let holder = pserver(&lab, &h, &url, dir.path(), &[]);
    let downloader = pserver(&lab, &pub_d, &url, dir.path(), &[]);
    wait_reach(&lab, &relay, "relay reachable", reachable).await;
    wait_reach(&lab, &downloader, "downloader reachable", reachable).await;
    let hs = wait_reach(&lab, &holder, "holder relayed", relayed).await;
    let reach = hs.reachability.unwrap();
    assert!(
        reach
            .summary
            .starts_with("behind NAT, shared through relay"),
        "{reach:?}"
    );
    assert_eq!(reach.relay_url.as_deref(), Some(relay.peer_url().as_str()));
    assert_eq!(
        reach.listed_url,
        Some(format!("{}/peer/v1/relay/{}", relay.peer_url(), hs.peer_id)),
        "listed only through its relay, never at {}",
        holder.peer_url()
    );
    assert!(reach.reason.is_some_and(|w| w.contains(&holder.peer_url())));

    let bytes = test_bytes(4 << 20, 25);
    let id = share(&holder, "nat.bin", &bytes);
    wait_holders(&lab, &downloader, "nat.bin", &id, 1).await;
    let job = download(&lab, &downloader, &id).await;
    assert_eq!(job.state, JobState::Done, "{job:?}");
    same_bytes(&downloader, "nat.bin", &bytes);
    assert_eq!(
        metric(
            &lab,
            &downloader,
            "peerdex_pserver_callback_transfers_total"
        )
        .await,
        1.0
    );
    let through_relay = metric(&lab, &relay, "peerdex_pserver_relay_bytes_total").await;
    assert!(
        through_relay < 64.0 * 1024.0,
        "the relay carried {through_relay} bytes of a 4 MiB transfer that went direct"
    );
    assert_eq!(
        metric(&lab, &relay, "peerdex_pserver_relay_peers").await,
        1.0
    );
    assert_eq!(
        metric(&lab, &holder, "peerdex_pserver_reachable").await,
        0.0
    );
    assert_eq!(
        metric(&lab, &downloader, "peerdex_pserver_reachable").await,
        1.0
    );
}

/// Two peers behind two NATs: the bytes go through a relay; the relay is
/// killed (kill -9) a quarter into a 64 MiB download, the holder gets the
/// other relay, re-announces, and the download completes, verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_two_nats_through_a_relay_that_dies() {
    let mut lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let c = lab.public("c").unwrap();
    let (r1, r2) = (lab.public("r1").unwrap(), lab.public("r2").unwrap());
    let (n1, n2) = (lab.nat("n1").unwrap(), lab.nat("n2").unwrap());
    let h = lab.behind(&n1, "h").unwrap();
    let d = lab.behind(&n2, "d").unwrap();
    let (_central, url) = central(&lab, &c, dir.path());
    // 16 MiB/s per relayed peer: the download lasts long enough to be cut.
    let relay_env = [
        ("PSERVER_RELAY", "true"),
        ("PSERVER_RELAY_MAX_BPS", "16777216"),
    ];
    let mut relays = vec![
        pserver(&lab, &r1, &url, dir.path(), &relay_env),
        pserver(&lab, &r2, &url, dir.path(), &relay_env),
    ];
    for r in &relays {
        wait_reach(&lab, r, "relay reachable", reachable).await;
    }
    let holder = pserver(&lab, &h, &url, dir.path(), &[]);
    let downloader = pserver(&lab, &d, &url, dir.path(), &[]);
    let hs = wait_reach(&lab, &holder, "holder relayed", relayed).await;
    wait_reach(&lab, &downloader, "downloader relayed", relayed).await;
    let first = hs.reachability.unwrap().relay_url.unwrap();

    let bytes = test_bytes(64 << 20, 64);
    let id = share(&holder, "big.bin", &bytes);
    wait_holders(&lab, &downloader, "big.bin", &id, 1).await;
    let id2 = id.clone();
    let job = on(&lab, &downloader, move |c| async move {
        c.start_download(&by_id(&id2)).await.expect("download")
    })
    .await;
    // A quarter in, kill the relay the holder uses.
    let jid = job.job_id.clone();
    on(&lab, &downloader, move |c| async move {
        peerdex_testkit::wait::wait_for("a quarter of the download", DEADLINE, || async {
            let j = c.job(&jid).await.expect("job");
            (j.bytes_done >= 16 << 20 || j.state.is_final()).then_some(())
        })
        .await
    })
    .await;
    let victim = relays
        .iter()
        .position(|r| r.peer_url() == first)
        .expect("the holder's relay is one of ours");
    let mut dead = relays.remove(victim);
    dead._proc.kill9();
    let job = finish(&lab, &downloader, &job.job_id).await;
    assert_eq!(job.state, JobState::Done, "{job:?}");
    same_bytes(&downloader, "big.bin", &bytes);
    let now = wait_reach(&lab, &holder, "holder on the other relay", relayed).await;
    assert_eq!(
        now.reachability.unwrap().relay_url,
        Some(relays[0].peer_url()),
        "re-assigned to the relay still alive"
    );
    assert!(metric(&lab, &relays[0], "peerdex_pserver_relay_bytes_total").await > 0.0);
}

/// One public holder and two holders behind two NATs, a downloader behind
/// a third: all three serve chunks (the public one direct, the others
/// through relays). The first relay takes one peer
/// (PSERVER_RELAY_MAX_PEERS=1): the second NATed holder is given the
/// other relay. A relayed peer's tunnel answers only its own peer API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_of_public_and_nated_holders() {
    let mut lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let c = lab.public("c").unwrap();
    let (r1, r2, p) = (
        lab.public("r1").unwrap(),
        lab.public("r2").unwrap(),
        lab.public("p").unwrap(),
    );
    let (n1, n2, n3) = (
        lab.nat("n1").unwrap(),
        lab.nat("n2").unwrap(),
        lab.nat("n3").unwrap(),
    );
    let (h1, h2, d) = (
        lab.behind(&n1, "h1").unwrap(),
        lab.behind(&n2, "h2").unwrap(),
        lab.behind(&n3, "d").unwrap(),
    );
    let (_central, url) = central(&lab, &c, dir.path());
    let one = [("PSERVER_RELAY", "true"), ("PSERVER_RELAY_MAX_PEERS", "1")];
    let relay1 = pserver(&lab, &r1, &url, dir.path(), &one);
    let relay2 = pserver(&lab, &r2, &url, dir.path(), &one);
    wait_reach(&lab, &relay1, "relay 1 reachable", reachable).await;
    wait_reach(&lab, &relay2, "relay 2 reachable", reachable).await;
    let public = pserver(&lab, &p, &url, dir.path(), &[]);
    let nat1 = pserver(&lab, &h1, &url, dir.path(), &[]);
    let s1 = wait_reach(&lab, &nat1, "holder 1 relayed", relayed).await;
    let nat2 = pserver(&lab, &h2, &url, dir.path(), &[]);
    let s2 = wait_reach(&lab, &nat2, "holder 2 relayed", relayed).await;
    let (u1, u2) = (
        s1.reachability.clone().unwrap().relay_url.unwrap(),
        s2.reachability.clone().unwrap().relay_url.unwrap(),
    );
    assert_ne!(u1, u2, "a relay at its maximum is not given another peer");
    // The downloader is behind NAT too: no relay has room left for it, so
    // it is not listed, but it downloads.
    let downloader = pserver(&lab, &d, &url, dir.path(), &[]);

    let bytes = test_bytes(16 << 20, 3);
    let mut id = String::new();
    for n in [&public, &nat1, &nat2] {
        id = share(n, "swarm.bin", &bytes);
    }
    wait_holders(&lab, &downloader, "swarm.bin", &id, 3).await;
    let job = download(&lab, &downloader, &id).await;
    assert_eq!(job.state, JobState::Done, "{job:?}");
    same_bytes(&downloader, "swarm.bin", &bytes);
    for (n, who) in [(&public, "public"), (&nat1, "nat 1"), (&nat2, "nat 2")] {
        let sent = status(&lab, n).await.bytes_sent;
        assert!(sent > 0, "the {who} holder served no chunk");
    }

    // Through relay 1, only holder 1's own peer API answers.
    let h1_id = s1.peer_id.clone();
    let base = format!("{u1}/peer/v1/relay/{h1_id}");
    let codes = lab
        .within(&d, move || async move {
            let get = |u: String| async move { reqwest::get(u).await.unwrap() };
            let health = get(format!("{base}/peer/v1/health")).await;
            let named = health.json::<serde_json::Value>().await.unwrap();
            let mut codes = vec![named["peer_id"].as_str().unwrap_or("").to_owned()];
            for path in [
                "/api/v1/status",
                "/metrics",
                "/peer/v1/relay/attach",
                "/peer/v1/../api/v1/files",
            ] {
                codes.push(
                    get(format!("{base}{path}"))
                        .await
                        .status()
                        .as_u16()
                        .to_string(),
                );
            }
            codes
        })
        .await;
    assert_eq!(codes, [h1_id.as_str(), "404", "404", "404", "404"]);
}
