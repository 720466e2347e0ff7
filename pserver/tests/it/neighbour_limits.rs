//! The neighbour role cannot be used to flood the central: requests per
//! source address are rate limited (429 + Retry-After) and the PServer
//! stays responsive. A peer whose neighbour says 429 asks the next source
//! (another neighbour, then the directory, within the directory's own
//! limit), and fails the user's lookup only when all of them refuse.
//! Real servers on loopback.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::time::{Duration, Instant};

use common::*;
use peerdex_proto::rest::{ApiError, LocateQuery, SearchQuery};
use peerdex_testkit::api::Client;
use reqwest::StatusCode;

const T: Duration = Duration::from_secs(20);

/// Search at a peer API as a neighbour would, until the first 429 (at most
/// `max` requests); the successes before it, the 429 itself, and how long.
async fn search_until_refused(
    http: &reqwest::Client,
    peer_url: &str,
    max: usize,
) -> (usize, Option<reqwest::Response>, Duration) {
    let t0 = Instant::now();
    for ok in 0..max {
        let r = http
            .get(format!("{peer_url}/peer/v1/search"))
            .query(&[("q", "report aaaaa")])
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => return (ok, Some(r), t0.elapsed()),
            s => panic!("unexpected {s}: {}", r.text().await.unwrap()),
        }
    }
    (max, None, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_flood_gets_429_after_the_burst_and_the_peer_stays_up() {
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let p = TestPeer::start(&central.url, &[], |c| c.peer_api.neighbour_rate = 5).await;
    let http = reqwest::Client::new();

    let (ok, refused, took) = search_until_refused(&http, &p.peer_url, 400).await;
    let refused = refused.expect("a flood of 400 searches is never refused");
    // The burst is ten seconds' worth (50); the bucket refills at 5/s while
    // the loop runs.
    let most = 50 + (5.0 * took.as_secs_f64()).ceil() as usize + 1;
    assert!(
        (50..=most).contains(&ok),
        "{ok} searches passed in {took:?}"
    );
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let e: ApiError = refused.json().await.unwrap();
    assert_eq!(e.code, "too_many_requests");
    assert!(
        e.message.contains("PSERVER_NEIGHBOUR_RATE"),
        "{}",
        e.message
    );

    // The peer stays responsive: its other endpoints answer at once, and
    // the neighbour role again once the bucket refilled.
    let health = http
        .get(format!("{}/peer/v1/health", p.peer_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(!p.status().await.peer_id.is_empty());
    wait_for("the neighbour role to answer again", T, || async {
        let r = http
            .get(format!("{}/peer/v1/search", p.peer_url))
            .query(&[("q", "report")])
            .send()
            .await
            .unwrap();
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    // Locate shares the same bucket.
    let (_, refused, _) = search_until_refused(&http, &p.peer_url, 400).await;
    assert!(refused.is_some());
    let locate = http
        .get(format!("{}/peer/v1/locate", p.peer_url))
        .query(&[("name", "report.pdf")])
        .send()
        .await
        .unwrap();
    assert_eq!(locate.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// Locate at a peer API as a neighbour would, until the first 429 (at
/// most `max` requests): empties the neighbour-role bucket of 127.0.0.1
/// (every test process and peer here) without spending the central's
/// search budget.
async fn drain_by_locate(http: &reqwest::Client, peer_url: &str, max: usize) {
    for _ in 0..max {
        let r = http
            .get(format!("{peer_url}/peer/v1/locate"))
            .query(&[("name", "nothing-here.bin")])
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            return;
        }
        assert_eq!(r.status(), StatusCode::OK);
    }
    panic!("{max} locates at {peer_url} were never refused");
}

/// `peerdex_pserver_neighbour_requests_refused_total` of `p`.
async fn refused_by(p: &TestPeer) -> f64 {
    metric(p, "peerdex_pserver_neighbour_requests_refused_total", &[]).await
}

/// One sample of `p`'s metrics (0 if absent).
async fn metric(p: &TestPeer, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = p
        .http
        .get(format!("{}/metrics", p.api_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    peerdex_testkit::prom::parse(&text)
        .value(name, labels)
        .unwrap_or(0.0)
}

/// One search and one locate through `api` (the user's own PServer), as a
/// script doing `peerdex search` and `peerdex get` would; `Err` says what
/// failed.
async fn search_and_locate(api: Client, id: String) -> Result<(), String> {
    let q = SearchQuery {
        q: "busy report".into(),
        ..Default::default()
    };
    let hits = api.search(&q).await.map_err(|e| format!("search: {e:?}"))?;
    if !hits.hits.iter().any(|h| h.file_id == id) {
        return Err(format!("search: the file is missing from {hits:?}"));
    }
    let q = LocateQuery {
        file_id: None,
        name: Some("busy-report.bin".into()),
    };
    let found = api.locate(&q).await.map_err(|e| format!("locate: {e:?}"))?;
    if !found.files.iter().any(|f| f.file_id == id) {
        return Err(format!("locate: the file is missing from {found:?}"));
    }
    Ok(())
}

/// Issue 29: a script doing about 70 searches and gets a second through
/// its own PServer, whose only neighbour allows 20 lookups a second, fails
/// no command: what the neighbour refuses, the directory answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_neighbour_fails_no_lookup_at_70_a_second() {
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let b = TestPeer::start(&central.url, &[], |c| c.peer_api.neighbour_rate = 20).await;
    let a = TestPeer::start(&central.url, &[&b.peer_url], |_| {}).await;
    let info = upload_ok(&b, "busy-report.bin", test_bytes(10_000, 29)).await;
    wait_for("the file to be found", T, || async {
        search_and_locate(a.api.clone(), info.file_id.clone())
            .await
            .ok()
    })
    .await;
    // B's bucket starts empty (its burst spent), so whatever the speed of
    // this machine, most of the loop's lookups are beyond B's limit.
    drain_by_locate(&a.http, &b.peer_url, 1000).await;
    let refused_before = refused_by(&b).await;

    const OPS: usize = 210; // 70 a second for 3 s, each a search and a locate
    let mut tick = tokio::time::interval(Duration::from_secs(1) / 70);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ops = tokio::task::JoinSet::new();
    for _ in 0..OPS {
        tick.tick().await;
        ops.spawn(search_and_locate(a.api.clone(), info.file_id.clone()));
    }
    let mut failed = Vec::new();
    while let Some(r) = ops.join_next().await {
        if let Err(e) = r.unwrap() {
            failed.push(e);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {OPS} commands failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    // The loop did meet B's limit (else it proves nothing), and both B and
    // the directory answered A.
    assert!(
        refused_by(&b).await > refused_before,
        "B never refused a lookup of the loop"
    );
    for (who, some) in [("neighbour", true), ("central", true), ("none", false)] {
        let n = metric(&a, "peerdex_pserver_lookups_total", &[("answered_by", who)]).await;
        assert_eq!(n > 0.0, some, "lookups answered by {who}: {n}");
    }
}

/// When the only neighbour and the directory both refuse, the lookup fails
/// with 429, the soonest Retry-After, and both refusers named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_every_source_refuses_fails_naming_them_all() {
    let central = TestCentral::start_with(|c| c.limits.search_rate = 1).await;
    let b = TestPeer::start(&central.url, &[], |c| c.peer_api.neighbour_rate = 1).await;
    let a = TestPeer::start(&central.url, &[&b.peer_url], |_| {}).await;
    let http = reqwest::Client::new();
    drain_by_locate(&http, &b.peer_url, 100).await;
    // Raw: the answer's Retry-After header is part of what is checked.
    let search = || async {
        http.get(format!("{}/api/v1/search", a.api_url))
            .query(&[("q", "report")])
            .send()
            .await
            .unwrap()
    };
    // B refuses, the central answers.
    let r = search().await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    // Until the central's own limit (a burst of 10) refuses too.
    let mut refused = None;
    for _ in 0..100 {
        let r = search().await;
        match r.status() {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => {
                refused = Some(r);
                break;
            }
            s => panic!("unexpected {s}: {}", r.text().await.unwrap()),
        }
    }
    let r = refused.expect("100 searches at 1/s were never refused");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    let e: ApiError = r.json().await.unwrap();
    assert_eq!(e.code, "too_many_requests");
    assert!(
        e.message.starts_with("every source refused the lookup: "),
        "{}",
        e.message
    );
    assert!(
        e.message.contains(&format!(
            "neighbour {} is rate limiting our requests",
            b.peer_url
        )),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("the central directory is busy"),
        "{}",
        e.message
    );
}
