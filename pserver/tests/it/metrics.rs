//! `GET /metrics` on the control API (issue 15): Prometheus text that the
//! reference parser accepts, byte counters that match a real download on
//! both sides, and the control API's token guarding it.

use crate::common;

use std::time::Duration;

use common::*;
use peerdex_proto::rest::{JobState, Status};
use peerdex_testkit::prom::{self, Exposition};

const T: Duration = Duration::from_secs(60);
const LONG_TTL: Duration = Duration::from_secs(30);

async fn scrape(p: &TestPeer, token: Option<&str>) -> reqwest::Response {
    let mut r = p.http.get(format!("{}/metrics", p.api_url));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn metrics(p: &TestPeer) -> Exposition {
    let r = scrape(p, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers()
    );
    prom::parse(&r.text().await.unwrap())
}

fn get(m: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.value(name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", m.samples))
}

fn bytes(m: &Exposition) -> (f64, f64) {
    (
        get(m, "peerdex_pserver_bytes_sent_total", &[]),
        get(m, "peerdex_pserver_bytes_received_total", &[]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_moves_the_byte_counters_of_both_peers_by_the_file_size() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    a.wait_joined().await;
    b.wait_joined().await;
    let data = test_bytes(3_500_000, 15);
    let size = data.len() as f64;
    let info = upload_ok(&a, "metered.bin", data.clone()).await;

    let (a0, b0) = (metrics(&a).await, metrics(&b).await);
    // Types as Prometheus sees them (the parser strips `_total`).
    for (family, kind) in [
        ("peerdex_pserver_bytes_sent", "counter"),
        ("peerdex_pserver_bytes_received", "counter"),
        ("peerdex_pserver_uploads_active", "gauge"),
        ("peerdex_pserver_downloads_active", "gauge"),
        ("peerdex_pserver_chunks_failed_verification", "counter"),
        ("peerdex_pserver_lease_renewals", "counter"),
        ("peerdex_pserver_shared_files", "gauge"),
        ("peerdex_pserver_shared_bytes", "gauge"),
        ("peerdex_pserver_upload_slots_refused", "counter"),
        ("peerdex_pserver_slow_readers_cut", "counter"),
        ("peerdex_pserver_neighbour_requests_refused", "counter"),
        ("peerdex_pserver_lookups", "counter"),
        ("peerdex_pserver_downloads_finished", "counter"),
        ("peerdex_pserver_replica_fetches", "counter"),
        ("peerdex_pserver_replica_drops", "counter"),
        ("peerdex_pserver_replicas", "gauge"),
        ("peerdex_pserver_replica_bytes", "gauge"),
        ("peerdex_pserver_replica_quota_bytes", "gauge"),
        ("peerdex_pserver_replica_fetches_active", "gauge"),
    ] {
        assert_eq!(
            a0.types.get(family).map(String::as_str),
            Some(kind),
            "{family}: {:?}",
            a0.types
        );
    }
    assert_eq!(get(&a0, "peerdex_pserver_shared_files", &[]), 1.0);
    assert_eq!(get(&a0, "peerdex_pserver_shared_bytes", &[]), size);
    assert_eq!(get(&b0, "peerdex_pserver_shared_files", &[]), 0.0);

    let job = start_job(&b, &info.file_id).await;
    let done = finish(&b, &job.job_id, T).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let got = std::fs::read(b.path_in_share("metered.bin")).unwrap();
    assert_eq!(blake3_hex(&got), info.file_id);
    assert!(files_under(&b.data_path().join("tmp")).is_empty());

    let (a1, b1) = (metrics(&a).await, metrics(&b).await);
    let (sent0, _) = bytes(&a0);
    let (sent1, _) = bytes(&a1);
    let (_, got0) = bytes(&b0);
    let (_, got1) = bytes(&b1);
    // One holder, no retries: every byte crossed the wire once, counted by
    // the holder as it handed it to its connection and by the downloader
    // as it arrived.
    assert_eq!(got1 - got0, size, "bytes received by the downloader");
    assert_eq!(sent1 - sent0, size, "bytes sent by the holder");
    assert_eq!(bytes(&b1).0, 0.0, "the downloader sent nothing");
    assert_eq!(bytes(&a1).1, 0.0, "the holder received nothing");
    assert_eq!(
        get(
            &b1,
            "peerdex_pserver_downloads_finished_total",
            &[("state", "done")]
        ),
        1.0
    );
    assert_eq!(
        get(&b1, "peerdex_pserver_chunks_failed_verification_total", &[]),
        0.0
    );
    assert_eq!(get(&b1, "peerdex_pserver_downloads_active", &[]), 0.0);
    assert_eq!(get(&b1, "peerdex_pserver_shared_files", &[]), 1.0);
    // Leases: both joined; renewals counted by result, none failed.
    let ok = get(
        &a1,
        "peerdex_pserver_lease_renewals_total",
        &[("result", "ok")],
    );
    assert_eq!(
        get(
            &a1,
            "peerdex_pserver_lease_renewals_total",
            &[("result", "error")]
        ),
        0.0
    );

    // `peerdex status` reads the same figures.
    let (sa, sb): (Status, Status) = (a.status().await, b.status().await);
    assert_eq!(sa.bytes_sent, size as u64);
    assert_eq!(sb.bytes_received, size as u64);
    assert_eq!(sb.bytes_sent, 0);
    assert!(sa.lease_renewals.ok >= ok as u64, "{sa:?}");
    assert_eq!(sa.lease_renewals.error, 0, "{sa:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewals_are_counted_by_result() {
    // Short leases: heartbeats every second (the advice is in whole seconds).
    let central = TestCentral::start(Duration::from_secs(3)).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    a.wait_joined().await;
    wait_for("two renewed leases", T, || async {
        let m = metrics(&a).await;
        (get(
            &m,
            "peerdex_pserver_lease_renewals_total",
            &[("result", "ok")],
        ) >= 2.0)
            .then_some(())
    })
    .await;
    // The central goes away: renewals fail, counted as errors.
    central.stop().await;
    wait_for("a failed renewal", T, || async {
        let m = metrics(&a).await;
        (get(
            &m,
            "peerdex_pserver_lease_renewals_total",
            &[("result", "error")],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    let s = a.status().await;
    assert!(
        s.lease_renewals.ok >= 2 && s.lease_renewals.error >= 1,
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_api_token_when_one_is_set() {
    let central = TestCentral::start(LONG_TTL).await;
    let token = "s3cret-token-for-metrics";
    let a = TestPeer::start(&central.url, &[], |c| {
        c.control.api_token = Some(token.into());
    })
    .await;
    for wrong in [None, Some("wrong"), Some("s3cret-token-for-metric")] {
        let r = scrape(&a, wrong).await;
        assert_eq!(r.status(), 401, "token {wrong:?}");
        assert!(!r.text().await.unwrap().contains("peerdex_pserver"));
    }
    let r = scrape(&a, Some(token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let m = prom::parse(&r.text().await.unwrap());
    assert_eq!(get(&m, "peerdex_pserver_uploads_active", &[]), 0.0);
    // The Host check applies too (DNS rebinding).
    let r = a
        .http
        .get(format!("{}/metrics", a.api_url))
        .bearer_auth(token)
        .header("host", "evil.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Only GET.
    let r = a
        .http
        .post(format!("{}/metrics", a.api_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}
