//! Revocation at once (issue 29), in a private network over TLS: a
//! departed peer's credential is refused by a member within a second of
//! its Leave (the directory pushes it on the Revocations stream; the
//! heartbeat interval here is 10 s, so no heartbeat can be what told),
//! and a PServer killed with -9 and restarted refuses every credential
//! (503 with Retry-After) until it has the directory's list of departed
//! peers, then refuses the departed and accepts the others. Also: honest
//! PServers are never refused by the directory's heartbeat pacing.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use peerdex_proto::PeerId;
use peerdex_proto::rest::Status;
use peerdex_proto::v1::{self, directory_client::DirectoryClient};
use peerdex_testkit::grpc::{authed, peer_key};
use peerdex_testkit::tls::TestCa;
use reqwest::StatusCode;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const SECRET: &str = "correct-horse-battery-staple";
const T: Duration = Duration::from_secs(30);

/// A central of a private network over TLS whose heartbeats are far
/// apart (10 s), with metrics.
async fn private_central(ca: &TestCa) -> TestCentral {
    let tls = ca.central_tls(&ca.leaf("central"));
    TestCentral::start_with_metrics(move |c| {
        c.tls = Some(tls);
        c.join_secret = Some(SECRET.into());
        c.lease_ttl = Duration::from_secs(30);
        c.heartbeat_interval = Duration::from_secs(10);
    })
    .await
}

/// The directory's typed client, over TLS trusting `ca`.
async fn directory(url: &str, ca: &TestCa) -> DirectoryClient<Channel> {
    let pem = std::fs::read(&ca.ca_file).unwrap();
    let ch = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    DirectoryClient::new(ch)
}

/// A member joined by the test itself: its session token and the
/// credential the directory gave it.
struct Member {
    peer: PeerId,
    token: String,
    credential: String,
}

async fn join_member(c: &mut DirectoryClient<Channel>) -> Member {
    let peer = PeerId::new_random();
    let nonce = c
        .challenge(v1::ChallengeRequest {
            peer_id: peer.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .nonce;
    let mut r = v1::JoinRequest {
        peer_id: peer.to_string(),
        peer_url: "https://127.0.0.1:9".into(),
        ..Default::default()
    };
    r.secret_proof = peerdex_proto::network::secret_proof(SECRET, &nonce, &r.peer_id).to_vec();
    peerdex_proto::identity::prove(&mut r, &peer_key(&peer, 0), nonce);
    let a = c.join(r).await.unwrap().into_inner();
    assert!(!a.credential.is_empty());
    Member {
        peer,
        token: a.session_token,
        credential: a.credential,
    }
}

async fn leave(c: &mut DirectoryClient<Channel>, m: &Member) {
    let req = v1::LeaveRequest {
        peer_id: m.peer.to_string(),
    };
    c.leave(authed(req, &m.token)).await.unwrap();
}

/// A client of peer APIs that trusts `ca`.
fn https(ca: &TestCa) -> reqwest::Client {
    peerdex_testkit::tls::install_provider();
    let pem = std::fs::read(&ca.ca_file).unwrap();
    reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap()
}

/// `GET /peer/v1/folder?path=probe` of `peer_url` with `credential` (a
/// route the network credential guards; `/peer/v1/health` answers anyone,
/// for the directory's dial-back): the status, its Retry-After and the
/// body.
async fn ask(
    http: &reqwest::Client,
    peer_url: &str,
    credential: &str,
) -> (StatusCode, Option<String>, String) {
    let r = http
        .get(format!("{peer_url}/peer/v1/folder?path=probe"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status(), retry, r.text().await.unwrap())
}

/// One series of a Prometheus text exposition (`name{labels}` as
/// rendered).
async fn series(metrics_url: &str, name: &str) -> f64 {
    let text = reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

const STREAMS_OPENED: &str = "peerdex_central_requests_total{rpc=\"revocations\",code=\"ok\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_peers_credential_is_refused_at_once_by_stream() {
    let ca = TestCa::new("revoke");
    let central = private_central(&ca).await;
    let metrics = central.metrics_url.clone().unwrap();
    let tweak = ca.peer_tweak(&ca.leaf("b"));
    let b = TestPeer::start(&central.url, &[], move |c| {
        tweak(c);
        c.link.join_secret = Some(SECRET.into());
    })
    .await;
    b.wait_joined().await;
    // b follows the directory's departures.
    wait_for("b's Revocations stream", T, || async {
        (series(&metrics, STREAMS_OPENED).await >= 1.0).then_some(())
    })
    .await;

    let mut c = directory(&central.url, &ca).await;
    let http = https(&ca);
    // b hears of a departure on its Revocations stream, at once, not only
    // in its next heartbeat answer (every 10 s). Proven by events, not by
    // the clock: b refuses the credential before any heartbeat answer
    // reached it. A heartbeat answered in that window makes the round
    // inconclusive, and another member leaves.
    let renewals =
        |s: Status| s.lease_renewals.ok + s.lease_renewals.rejoin + s.lease_renewals.error;
    let mut by_stream = None;
    for _ in 0..3 {
        let a = join_member(&mut c).await;
        let (status, _, text) = ask(&http, &b.peer_url, &a.credential).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let beats = renewals(b.status().await);
        leave(&mut c, &a).await;
        let text = wait_for("b to refuse a's credential", T, || async {
            let (status, _, text) = ask(&http, &b.peer_url, &a.credential).await;
            (status == StatusCode::UNAUTHORIZED).then_some(text)
        })
        .await;
        if renewals(b.status().await) == beats {
            by_stream = Some(text);
            break;
        }
    }
    let text = by_stream
        .expect("b learnt of every departure from a heartbeat answer, never from its stream");
    assert!(text.contains("left the network"), "{text}");
    b.stop().await;
    central.stop().await;
}

/// A TCP relay to the central that the test closes and opens: while
/// closed, every new connection is dropped (the central looks down).
struct Gate {
    url: String,
    open: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn to(central: SocketAddr) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", l.local_addr().unwrap());
        let open = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let open = open.clone();
            async move {
                while let Ok((mut inbound, _)) = l.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(central).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                }
            }
        });
        Self { url, open, task }
    }

    fn set(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pserver_refuses_credentials_until_it_has_the_list() {
    let ca = TestCa::new("restart");
    let central = private_central(&ca).await;
    let gate = Gate::to(central.addr).await;
    let leaf = ca.leaf("b");
    let env = [
        ("PSERVER_JOIN_SECRET", SECRET),
        ("PSERVER_TLS_CERT", leaf.cert.to_str().unwrap()),
        ("PSERVER_TLS_KEY", leaf.key.to_str().unwrap()),
        ("PSERVER_CA_FILE", ca.ca_file.to_str().unwrap()),
    ];
    let root = tempfile::tempdir().unwrap();
    let mut b = ChildPeer::spawn_in(root.path(), &gate.url, &env);
    let joined = |b: &ChildPeer| {
        let api = b.api.clone();
        async move {
            let s = api.status().await.ok()?;
            s.lease_age_secs.map(|_| ())
        }
    };
    wait_for("b to join", T, || joined(&b)).await;

    let mut c = directory(&central.url, &ca).await;
    let (gone, member) = (join_member(&mut c).await, join_member(&mut c).await);
    let http = https(&ca);
    for m in [&gone, &member] {
        let (status, _, text) = ask(&http, &b.peer_url, &m.credential).await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }

    // b dies; `gone` leaves meanwhile; b comes back while the central is
    // out of its reach: it cannot know who left, so it takes nobody.
    b.kill9();
    leave(&mut c, &gone).await;
    gate.set(false);
    let b = ChildPeer::spawn_in(root.path(), &gate.url, &env);
    // Asked at once, and again once b has tried the central and failed
    // (its status says so): an event, not a span of time.
    let refuses_all = || async {
        for m in [&gone, &member] {
            let (status, retry, text) = ask(&http, &b.peer_url, &m.credential).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
            assert_eq!(retry.as_deref(), Some("1"), "{text}");
            assert!(text.contains("list of departed peers"), "{text}");
        }
    };
    refuses_all().await;
    wait_for("b to fail to reach the central", T, || async {
        let s = b.api.status().await.ok()?;
        (s.lease_error.is_some() || s.lease_renewals.error > 0).then_some(())
    })
    .await;
    refuses_all().await;

    // The central is back: b joins, and from its Join on it knows.
    gate.set(true);
    wait_for("b to accept a member's credential again", T, || async {
        let (status, _, _) = ask(&http, &b.peer_url, &member.credential).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    let (status, _, text) = ask(&http, &b.peer_url, &gone.credential).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("left the network"), "{text}");
    central.stop().await;
}

/// PServers heartbeat at the directory's pace through joins, a kill -9
/// and a restart: the directory never refuses one of their heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_pservers_are_never_paced() {
    let central = TestCentral::start_with_metrics(|c| {
        c.lease_ttl = Duration::from_secs(4);
        c.heartbeat_interval = Duration::from_secs(1);
    })
    .await;
    let metrics = central.metrics_url.clone().unwrap();
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let root = tempfile::tempdir().unwrap();
    let mut b = ChildPeer::spawn_in(root.path(), &central.url, &[]);
    a.wait_joined().await;
    const OK: &str = "peerdex_central_requests_total{rpc=\"heartbeat\",code=\"ok\"}";
    wait_for("a few heartbeats", T, || async {
        (series(&metrics, OK).await >= 4.0).then_some(())
    })
    .await;
    b.kill9();
    let _b = ChildPeer::spawn_in(root.path(), &central.url, &[]);
    let before = series(&metrics, OK).await;
    wait_for("more heartbeats after the restart", T, || async {
        (series(&metrics, OK).await >= before + 6.0).then_some(())
    })
    .await;
    let refused = series(
        &metrics,
        "peerdex_central_refusals_total{setting=\"CENTRAL_HEARTBEAT_SECS\"}",
    )
    .await;
    assert_eq!(refused, 0.0, "honest heartbeats were refused");
    a.stop().await;
    central.stop().await;
}
