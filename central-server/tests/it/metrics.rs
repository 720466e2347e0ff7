//! The directory's Prometheus metrics (issue 15): `/metrics` on the
//! `CENTRAL_METRICS_ADDR` listener parses as Prometheus text with the
//! reference parser, counts every RPC by its gRPC code, times them, and its
//! gauges match the directory.

use std::time::Duration;

use peerdex_proto::PeerId;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::locate_request::Target;
use peerdex_proto::v1::{self, SharedFile};
use peerdex_testkit::grpc::{self, authed, fid};
use peerdex_testkit::prom::{self, Exposition};
use peerdex_testkit::{ChildProc, TestCentral, bin, wait_for};
use tonic::Code;
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(30);

fn file(i: u32, name: &str) -> SharedFile {
    SharedFile {
        replica: false,
        file_id: fid(i.into()),
        size: 1000 + u64::from(i),
        name: name.into(),
    }
}

async fn join(
    c: &mut DirectoryClient<Channel>,
    peer: &PeerId,
    port: u16,
    files: Vec<SharedFile>,
) -> String {
    grpc::join(c, peer, &format!("http://127.0.0.1:{port}"), files).await
}

async fn locate(c: &mut DirectoryClient<Channel>, target: Option<Target>) -> Result<usize, Code> {
    c.locate(v1::LocateRequest {
        target,
        max_holders: 0,
    })
    .await
    .map(|r| r.into_inner().files.len())
    .map_err(|s| s.code())
}

async fn scrape(url: &str) -> Exposition {
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    prom::parse(&r.text().await.unwrap())
}

fn get(m: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.value(name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", m.samples))
}

fn requests(m: &Exposition, rpc: &str, code: &str) -> f64 {
    m.value(
        "peerdex_central_requests_total",
        &[("rpc", rpc), ("code", code)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_rpc_and_code_and_gauges_match_the_directory() {
    let central = TestCentral::start_with_metrics(|c| {
        // One search per second, burst ten: the twelfth quick one is refused.
        c.limits.search_rate = 1;
    })
    .await;
    let url = central.metrics_url.clone().unwrap();
    let m = scrape(&url).await;
    for (family, kind) in [
        ("peerdex_central_requests", "counter"),
        ("peerdex_central_request_duration_seconds", "histogram"),
        ("peerdex_central_peers", "gauge"),
        ("peerdex_central_files", "gauge"),
        ("peerdex_central_names", "gauge"),
        ("peerdex_central_holdings", "gauge"),
        ("peerdex_central_leases_expired", "counter"),
        ("peerdex_central_refusals", "counter"),
        ("peerdex_central_search_truncated", "counter"),
        ("peerdex_central_sweep_duration_seconds", "histogram"),
    ] {
        assert_eq!(
            m.types.get(family).map(String::as_str),
            Some(kind),
            "{family}: {:?}",
            m.types
        );
    }
    assert_eq!(get(&m, "peerdex_central_peers", &[]), 0.0);
    assert_eq!(requests(&m, "join", "ok"), 0.0);

    let mut c = DirectoryClient::connect(central.url.clone()).await.unwrap();
    let (p1, p2) = (PeerId::new_random(), PeerId::new_random());
    let t1 = join(
        &mut c,
        &p1,
        7001,
        vec![file(1, "alpha one.bin"), file(2, "beta.bin")],
    )
    .await;
    join(&mut c, &p2, 7002, vec![file(1, "alpha one.bin")]).await;
    let refused = c
        .publish(authed(
            v1::PublishRequest {
                peer_id: p1.to_string(),
                files: vec![file(3, "gamma.bin")],
                seq: 0,
            },
            &t1,
        ))
        .await
        .unwrap()
        .into_inner()
        .refused;
    assert_eq!(refused, []);
    // Publish with a wrong token: UNAUTHENTICATED.
    let e = c
        .publish(authed(
            v1::PublishRequest {
                peer_id: p1.to_string(),
                files: vec![],
                seq: 0,
            },
            "00",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(locate(&mut c, Some(Target::FileId(fid(1)))).await, Ok(1));
    assert_eq!(
        locate(&mut c, Some(Target::Name("beta.bin".into()))).await,
        Ok(1)
    );
    assert_eq!(
        locate(&mut c, Some(Target::FileId("not-hex".into()))).await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(locate(&mut c, None).await, Err(Code::InvalidArgument));
    let (mut ok, mut limited) = (0.0, 0.0);
    for _ in 0..12 {
        match c
            .search(v1::SearchRequest {
                query: "alpha".into(),
                limit: 10,
                page_token: String::new(),
            })
            .await
        {
            Ok(r) => {
                assert_eq!(r.into_inner().hits.len(), 1);
                ok += 1.0;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                limited += 1.0;
            }
        }
    }
    assert!(limited >= 1.0, "the search rate limit refused nothing");

    let m = scrape(&url).await;
    let want = [
        ("challenge", "ok", 2.0), // one before each Join
        ("join", "ok", 2.0),
        ("publish", "ok", 1.0),
        ("publish", "unauthenticated", 1.0),
        ("locate", "ok", 2.0),
        ("locate", "invalid_argument", 2.0),
        ("search", "ok", ok),
        ("search", "resource_exhausted", limited),
        ("heartbeat", "ok", 0.0),
        ("leave", "ok", 0.0),
    ];
    for (rpc, code, n) in want {
        assert_eq!(requests(&m, rpc, code), n, "{rpc} {code}");
    }
    // Nothing else was counted.
    let all = m.all("peerdex_central_requests_total");
    let total: f64 = all.iter().map(|s| s.value).sum();
    let counted: Vec<_> = all
        .iter()
        .map(|s| (&s.labels["rpc"], &s.labels["code"], s.value))
        .collect();
    assert_eq!(
        total,
        want.iter().map(|w| w.2).sum::<f64>(),
        "counted: {counted:?}"
    );
    // One latency sample per call, in the +Inf bucket too.
    for (rpc, n) in [
        ("join", 2.0),
        ("publish", 2.0),
        ("locate", 4.0),
        ("search", ok + limited),
    ] {
        assert_eq!(
            get(
                &m,
                "peerdex_central_request_duration_seconds_count",
                &[("rpc", rpc)]
            ),
            n,
            "{rpc}"
        );
        assert_eq!(
            get(
                &m,
                "peerdex_central_request_duration_seconds_bucket",
                &[("rpc", rpc), ("le", "+Inf")]
            ),
            n,
            "{rpc}"
        );
    }
    assert_eq!(
        get(
            &m,
            "peerdex_central_refusals_total",
            &[("setting", "CENTRAL_SEARCH_RATE")]
        ),
        limited
    );
    // The directory: 2 peers, 3 contents, 3 names, 4 holdings.
    assert_eq!(get(&m, "peerdex_central_peers", &[]), 2.0);
    assert_eq!(get(&m, "peerdex_central_files", &[]), 3.0);
    assert_eq!(get(&m, "peerdex_central_names", &[]), 3.0);
    assert_eq!(get(&m, "peerdex_central_holdings", &[]), 4.0);

    // A peer leaves: the gauges follow.
    c.leave(authed(
        v1::LeaveRequest {
            peer_id: p1.to_string(),
        },
        &t1,
    ))
    .await
    .unwrap();
    let m = scrape(&url).await;
    assert_eq!(requests(&m, "leave", "ok"), 1.0);
    assert_eq!(get(&m, "peerdex_central_peers", &[]), 1.0);
    assert_eq!(get(&m, "peerdex_central_files", &[]), 1.0);
    assert_eq!(get(&m, "peerdex_central_holdings", &[]), 1.0);
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_are_counted() {
    let central = TestCentral::start_with_metrics(|c| {
        c.lease_ttl = Duration::from_millis(800);
        c.heartbeat_interval = Duration::from_millis(300);
    })
    .await;
    let url = central.metrics_url.clone().unwrap();
    let mut c = DirectoryClient::connect(central.url.clone()).await.unwrap();
    join(&mut c, &PeerId::new_random(), 7003, vec![file(9, "x.bin")]).await;
    wait_for("the silent peer's lease to be swept", T, || async {
        let m = scrape(&url).await;
        (get(&m, "peerdex_central_leases_expired_total", &[]) == 1.0).then_some(m)
    })
    .await;
    let m = scrape(&url).await;
    assert_eq!(get(&m, "peerdex_central_peers", &[]), 0.0);
    assert_eq!(get(&m, "peerdex_central_holdings", &[]), 0.0);
    assert!(get(&m, "peerdex_central_sweep_duration_seconds_count", &[]) >= 1.0);
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_metrics_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        ("CENTRAL_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("CENTRAL_DATA_DIR", "./data".to_owned()),
    ];
    let mut env = base.to_vec();
    env.push(("CENTRAL_METRICS_ADDR", "127.0.0.1:0".into()));
    let on = ChildProc::spawn(&bin("central-server"), &dir.path().join("on"), &env);
    // Announced on the first line of stdout, beside the gRPC address.
    let url = on.field("metrics");
    assert!(on.first_line.contains("listening on"), "{}", on.first_line);
    let m = scrape(&url).await;
    assert_eq!(get(&m, "peerdex_central_peers", &[]), 0.0);
    assert_eq!(
        get(
            &m,
            "peerdex_central_requests_total",
            &[("rpc", "locate"), ("code", "ok")]
        ),
        0.0
    );
    // Without the setting: no listener, and none is announced.
    let off = ChildProc::spawn(&bin("central-server"), &dir.path().join("off"), &base);
    assert!(
        off.first_line.contains("listening on"),
        "{}",
        off.first_line
    );
    assert!(!off.first_line.contains("metrics="), "{}", off.first_line);
    // A bad value is refused at start-up, naming the variable.
    let out = std::process::Command::new(bin("central-server"))
        .current_dir(dir.path())
        .env_clear()
        .env("CENTRAL_METRICS_ADDR", "nowhere")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CENTRAL_METRICS_ADDR"), "{err}");
}
