//! The neighbour role cannot be used to flood the central: requests per
//! source address are rate limited (429 + Retry-After), the PServer stays
//! responsive, and a peer whose neighbour says 429 passes it on instead of
//! going around it. Real servers on loopback.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::time::{Duration, Instant};

use common::*;
use peerdex_proto::rest::ApiError;
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
    let p = TestPeer::start(&central.url, &[], |c| c.neighbour_rate = 5).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_from_the_neighbour_is_passed_on_not_routed_around() {
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let b = TestPeer::start(&central.url, &[], |c| c.neighbour_rate = 1).await;
    let a = TestPeer::start(&central.url, &[&b.peer_url], |_| {}).await;
    let http = reqwest::Client::new();
    // Everyone here is 127.0.0.1: emptying B's bucket empties A's share too.
    let (_, refused, _) = search_until_refused(&http, &b.peer_url, 100).await;
    assert!(refused.is_some());

    let r = http
        .get(format!("{}/api/v1/search", a.api_url))
        .query(&[("q", "report")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "A went around its neighbour's limit"
    );
    assert!(r.headers().contains_key("retry-after"));
    let e: ApiError = r.json().await.unwrap();
    assert!(e.message.contains(&b.peer_url), "{}", e.message);

    // B was not written off: once its bucket refilled, A asks it again.
    wait_for("A's searches to pass through B again", T, || async {
        let r = http
            .get(format!("{}/api/v1/search", a.api_url))
            .query(&[("q", "report")])
            .send()
            .await
            .unwrap();
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
}
