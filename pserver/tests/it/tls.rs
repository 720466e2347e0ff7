//! TLS on every hop (issue 14): the shape of the system over TLS (central
//! on TLS only, peer APIs on https, a CA of our own), the plain-words errors
//! of a plaintext client against the TLS central, of a wrong CA and of a
//! wrong-name certificate, and a PServer that refuses to start with broken
//! TLS settings. Real servers on port 0, a real `pserver` binary for what
//! its log and exit code say.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use peerdex_testkit::tls::TestCa;
use peerdex_testkit::wait_until;

const T: Duration = Duration::from_secs(30);

/// Upload on peer 1; peer 3 finds it through its neighbour peer 2 (https)
/// and the central (TLS), fetches it from peer 1 (https), bytes verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shape_over_tls() {
    let ca = TestCa::new("shape");
    let leaf = ca.leaf("central");
    let central = TestCentral::start_with(|c| {
        c.tls = Some(ca.central_tls(&leaf));
    })
    .await;
    assert!(central.url.starts_with("https://"), "{}", central.url);
    let tls = |name: &str| ca.peer_tweak(&ca.leaf(name));
    let p1 = TestPeer::start(&central.url, &[], tls("p1")).await;
    let p2 = TestPeer::start(&central.url, &[&p1.peer_url], tls("p2")).await;
    let p3 = TestPeer::start(&central.url, &[&p2.peer_url], tls("p3")).await;
    for p in [&p1, &p2, &p3] {
        assert!(p.peer_url.starts_with("https://"), "{}", p.peer_url);
        p.wait_joined().await;
    }
    let bytes = test_bytes(3_000_000, 14);
    let id = upload_ok(&p1, "tls-report.bin", bytes.clone())
        .await
        .file_id;
    wait_holders_exactly(&p3, "tls-report", &id, 1).await;
    let job = start_job(&p3, &id).await;
    let job = finish(&p3, &job.job_id, T).await;
    assert_eq!(job.state, peerdex_proto::rest::JobState::Done, "{job:?}");
    let sources: Vec<&str> = job.sources.iter().map(|s| s.peer_url.as_str()).collect();
    assert_eq!(sources, [p1.peer_url.as_str()]);
    assert_eq!(
        files_under(&p3.share_dir),
        [p3.path_in_share("tls-report.bin")]
    );
    let got = std::fs::read(p3.path_in_share("tls-report.bin")).unwrap();
    assert_eq!(blake3_hex(&got), id);
    assert_eq!(got, bytes);
    // The peer API really is TLS only: plaintext gets no answer.
    let plain = p1.peer_url.replacen("https://", "http://", 1);
    assert!(
        reqwest::get(format!("{plain}/peer/v1/files/{id}"))
            .await
            .is_err()
    );
    wait_holders_exactly(&p1, "tls-report", &id, 2).await;
}

/// A log line about the central at `url` that advises an https:// URL.
fn p_says_https(log: &str, url: &str) -> bool {
    log.lines().any(|l| {
        l.contains(&format!("the central at {url} "))
            && l.contains("if it uses TLS, use an https:// URL")
    })
}

/// A child PServer whose log must come to say `needle`.
fn log_says(p: &ChildPeer, needle: &str) {
    wait_until(&format!("the PServer to log {needle:?}"), T, || {
        p.proc.log().contains(needle).then_some(())
    });
}

/// A plaintext client against the TLS central, a client without the CA,
/// with another CA, and against a certificate for another name: each
/// PServer says what happened in plain words, and none joins.
///
/// The words an operator reads in the PServer's log are the subject here,
/// so the log is compared; whether a PServer joined is read from its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mistakes_are_told_in_plain_words() {
    let ca = TestCa::new("net");
    let leaf = ca.leaf("central");
    let central = TestCentral::start_with(|c| c.tls = Some(ca.central_tls(&leaf))).await;
    let plain_url = central.url.replacen("https://", "http://", 1);
    let ca_file = ca.ca_file.to_str().unwrap();

    let plain = ChildPeer::spawn(&plain_url, &[]);
    // The TLS alert it gets is no HTTP/2 ("did not answer in plaintext
    // HTTP"), or the central just hangs up ("closed the connection without
    // a plaintext answer"); either way the advice is the same.
    wait_until("the plaintext PServer to say what is wrong", T, || {
        p_says_https(&plain.proc.log(), &plain_url).then_some(())
    });
    let no_ca = ChildPeer::spawn(&central.url, &[]);
    log_says(
        &no_ca,
        &format!(
            "the central at {} presented a certificate not signed by a trusted CA; set PSERVER_CA_FILE",
            central.url
        ),
    );
    let other = TestCa::new("other");
    let wrong_ca = ChildPeer::spawn(
        &central.url,
        &[("PSERVER_CA_FILE", other.ca_file.to_str().unwrap())],
    );
    log_says(
        &wrong_ca,
        "presented a certificate not signed by a trusted CA",
    );

    // The right CA, but a certificate for another name.
    let misnamed = ca.leaf_with("misnamed", &["central.example"], |_| {});
    let central2 = TestCentral::start_with(|c| c.tls = Some(ca.central_tls(&misnamed))).await;
    let wrong_name = ChildPeer::spawn(&central2.url, &[("PSERVER_CA_FILE", ca_file)]);
    log_says(
        &wrong_name,
        "presented a certificate for another name or address",
    );
    // An expired certificate.
    let expired = ca.leaf_with("expired", &["127.0.0.1"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let central3 = TestCentral::start_with(|c| c.tls = Some(ca.central_tls(&expired))).await;
    let late = ChildPeer::spawn(&central3.url, &[("PSERVER_CA_FILE", ca_file)]);
    log_says(&late, "presented an expired certificate");

    // None of them joined; with the CA, a PServer does.
    for p in [&plain, &no_ca, &wrong_ca] {
        assert_eq!(p.status().await.lease_age_secs, None);
    }
    let good = ChildPeer::spawn(&central.url, &[("PSERVER_CA_FILE", ca_file)]);
    wait_for("the PServer with the CA to join", T, || async {
        good.status().await.lease_age_secs
    })
    .await;
}

/// Run the `pserver` binary with `env` (on loopback ports the OS picks) and
/// return its exit success and stderr; it must stop on its own.
fn pserver_refuses(dir: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pserver"))
        .current_dir(dir)
        .env_clear()
        .env("PSERVER_API_ADDR", "127.0.0.1:0")
        .env("PSERVER_PEER_ADDR", "127.0.0.1:0")
        .env("PSERVER_SHARE_DIR", dir.join("share"))
        .env("PSERVER_DATA_DIR", dir.join("data"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "pserver started with {env:?}: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "pserver printed its addresses with {env:?}"
    );
    stderr
}

#[test]
fn refuses_to_start_with_broken_tls_settings() {
    let ca = TestCa::new("start");
    let leaf = ca.leaf("peer");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (leaf.cert.to_str().unwrap(), leaf.key.to_str().unwrap());

    let e = pserver_refuses(
        dir.path(),
        &[("PSERVER_PUBLIC_URL", "https://127.0.0.1:7071")],
    );
    assert!(
        e.contains("PSERVER_PUBLIC_URL https://127.0.0.1:7071 is https:// but the peer API has no certificate"),
        "{e}"
    );
    let e = pserver_refuses(dir.path(), &[("PSERVER_TLS_CERT", cert)]);
    assert!(
        e.contains("PSERVER_TLS_CERT is set but PSERVER_TLS_KEY is missing"),
        "{e}"
    );
    let missing = dir.path().join("no-such-key.pem");
    let e = pserver_refuses(
        dir.path(),
        &[
            ("PSERVER_TLS_CERT", cert),
            ("PSERVER_TLS_KEY", missing.to_str().unwrap()),
        ],
    );
    assert!(
        e.contains(&format!(
            "cannot read PSERVER_TLS_KEY {}",
            missing.display()
        )),
        "{e}"
    );
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = pserver_refuses(
        dir.path(),
        &[
            ("PSERVER_TLS_CERT", bad.to_str().unwrap()),
            ("PSERVER_TLS_KEY", key),
        ],
    );
    assert!(
        e.contains(&format!(
            "PSERVER_TLS_CERT {} is not valid PEM",
            bad.display()
        )),
        "{e}"
    );
    // A key file that holds a certificate, and a key of another certificate.
    let e = pserver_refuses(
        dir.path(),
        &[("PSERVER_TLS_CERT", cert), ("PSERVER_TLS_KEY", cert)],
    );
    assert!(e.contains("holds no usable private key"), "{e}");
    let other = ca.leaf("other");
    let e = pserver_refuses(
        dir.path(),
        &[
            ("PSERVER_TLS_CERT", cert),
            ("PSERVER_TLS_KEY", other.key.to_str().unwrap()),
        ],
    );
    assert!(e.contains("do not make a usable pair"), "{e}");
    // http public URL with a certificate; off-loopback control API in plaintext.
    let e = pserver_refuses(
        dir.path(),
        &[
            ("PSERVER_TLS_CERT", cert),
            ("PSERVER_TLS_KEY", key),
            ("PSERVER_PUBLIC_URL", "http://127.0.0.1:7071"),
        ],
    );
    assert!(
        e.contains("must be https:// when PSERVER_TLS_CERT is set"),
        "{e}"
    );
    let e = pserver_refuses(
        dir.path(),
        &[
            ("PSERVER_API_ADDR", "0.0.0.0:0"),
            ("PSERVER_API_TOKEN", "0123456789abcdef"),
        ],
    );
    assert!(e.contains("PSERVER_TRUSTED_LAN=true"), "{e}");
}

/// Off loopback the opt-out starts a plaintext control API and warns.
#[test]
fn trusted_lan_warns() {
    let dir = tempfile::tempdir().unwrap();
    let p = ChildProc::spawn(
        Path::new(env!("CARGO_BIN_EXE_pserver")),
        dir.path(),
        &[
            ("PSERVER_API_ADDR", "0.0.0.0:0".into()),
            ("PSERVER_PEER_ADDR", "127.0.0.1:0".into()),
            ("PSERVER_API_TOKEN", "0123456789abcdef".into()),
            ("PSERVER_TRUSTED_LAN", "true".into()),
            (
                "PSERVER_SHARE_DIR",
                dir.path().join("share").display().to_string(),
            ),
            (
                "PSERVER_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            ("PSERVER_CENTRAL_URL", peerdex_testkit::DeadUrl::new().url),
        ],
    );
    assert!(
        p.field("api").starts_with("http://0.0.0.0:"),
        "{}",
        p.first_line
    );
    wait_until("the plaintext warning", T, || {
        p.log()
            .contains("the control API is served off loopback over plaintext")
            .then_some(())
    });
}

/// The per-source connection cap of the peer API (PSERVER_MAX_CONNS_PER_ADDR)
/// holds over TLS too: it counts the TCP socket under the TLS stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_holds_over_tls() {
    let ca = TestCa::new("cap");
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let tls = ca.peer_tweak(&ca.leaf("capped"));
    let p = TestPeer::start(&central.url, &[], |c| {
        tls(c);
        c.peer_api.max_conns_per_addr = 2;
    })
    .await;
    let ca_pem = std::fs::read(&ca.ca_file).unwrap();
    // One client per connection: each keeps its connection alive in its pool.
    let client = || {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
            .http1_only()
            .build()
            .unwrap()
    };
    let health = format!("{}/peer/v1/health", p.peer_url);
    let held: Vec<reqwest::Client> = (0..2).map(|_| client()).collect();
    for c in &held {
        let r = c.get(&health).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let third = client().get(&health).send().await.unwrap();
    assert_eq!(third.status(), 429, "the cap must count TLS connections");
    // The held connections still work.
    assert_eq!(held[0].get(&health).send().await.unwrap().status(), 200);
}

/// A holder whose certificate the downloader does not trust: the job fails
/// and its error says so in plain words, naming the holder's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_holder_is_named_in_the_job_error() {
    let ca = TestCa::new("holder");
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let holder = TestPeer::start(&central.url, &[], ca.peer_tweak(&ca.leaf("holder"))).await;
    // The getter trusts only the system's roots.
    let getter = TestPeer::start(&central.url, &[], |_| {}).await;
    let id = upload_ok(&holder, "secret.bin", test_bytes(100_000, 3))
        .await
        .file_id;
    wait_holders_exactly(&getter, "secret", &id, 1).await;
    let job = start_job(&getter, &id).await;
    let job = finish(&getter, &job.job_id, T).await;
    assert_eq!(job.state, peerdex_proto::rest::JobState::Failed, "{job:?}");
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains(&format!(
            "the peer at {} presented a certificate not signed by a trusted CA",
            holder.peer_url
        )),
        "{error}"
    );
    assert!(!getter.path_in_share("secret.bin").exists());
}
