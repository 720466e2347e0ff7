//! Wanted files (issue 26): a want waits at the directory's Watch stream
//! and downloads the moment a holder appears, with no lookup meanwhile;
//! it survives a restart of its PServer and a kill -9 of the central it
//! watches at (centrals on etcd); a query want only notifies (events and
//! the PSERVER_NOTIFY_URL webhook, received by a small test HTTP server);
//! an ambiguous name downloads nothing; limits are refused by name.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::time::Duration;

use common::*;
use peerdex_proto::rest::{Events, NoticeKind, Want, WantList, WantRequest, WantState};
use peerdex_testkit::central::CentralProc;
use peerdex_testkit::etcd::EtcdCluster;

const T: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(4);

fn file(f: &str) -> WantRequest {
    WantRequest {
        file: Some(f.into()),
        ..Default::default()
    }
}

fn query(q: &str, download: bool) -> WantRequest {
    WantRequest {
        query: Some(q.into()),
        download: Some(download),
        ..Default::default()
    }
}

/// Wait until every want is watched and checked at the directory.
async fn watching(p: &TestPeer) -> WantList {
    wait_for("the wants to be watched", T, || async {
        let l = p.api.wants().await.unwrap();
        l.watching.then_some(l)
    })
    .await
}

/// Wait until want `id` is in `state`.
async fn state(p: &TestPeer, id: &str, state: WantState) -> Want {
    wait_for(&format!("want {id} to be {state:?}"), T, || async {
        let l = p.api.wants().await.unwrap();
        l.wants
            .into_iter()
            .find(|w| w.want_id == id && w.state == state)
    })
    .await
}

/// Locate and Search calls the central answered, whatever their code.
async fn lookups(metrics_url: &str) -> u64 {
    let text = reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("peerdex_central_requests_total{rpc=\"locate\"")
                || l.starts_with("peerdex_central_requests_total{rpc=\"search\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One value of the central's metrics page.
async fn central_metric(metrics_url: &str, name: &str) -> f64 {
    let text = reqwest::get(metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The first event of `GET /api/v1/events` (NDJSON): jobs, wants and the
/// notices kept.
async fn first_event(p: &TestPeer) -> Events {
    let mut r = p
        .http
        .get(format!("{}/api/v1/events", p.api_url))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let mut line = Vec::new();
    while !line.contains(&b'\n') {
        let chunk = tokio::time::timeout(T, r.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("an event");
        line.extend_from_slice(&chunk);
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap();
    serde_json::from_slice(&line[..end]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wanted_name_arrives_byte_exact_without_a_lookup_while_it_waited() {
    let central =
        TestCentral::start_with_metrics(|c| peerdex_testkit::central::lease(c, TTL)).await;
    let metrics = central.metrics_url.clone().unwrap();
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[], |_| {}).await;
    a.wait_joined().await;
    b.wait_joined().await;

    let w = b.api.want(&file("harbour-report.pdf")).await.unwrap();
    assert_eq!(w.state, WantState::Waiting);
    assert!(w.download);
    watching(&b).await;
    assert_eq!(
        central_metric(&metrics, "peerdex_central_watches").await,
        1.0
    );
    let before = lookups(&metrics).await;

    let bytes = test_bytes(300_000, 26);
    a.drop_file("harbour-report.pdf", &bytes);
    let done = state(&b, &w.want_id, WantState::Done).await;
    assert_eq!(
        std::fs::read(b.path_in_share("harbour-report.pdf")).unwrap(),
        bytes
    );
    assert_eq!(done.matches.len(), 1, "{done:?}");
    assert_eq!(done.matches[0].file_id, blake3_hex(&bytes));
    // Pushed, not polled: no Locate and no Search while it waited.
    assert_eq!(lookups(&metrics).await, before, "a lookup was made");
    assert!(central_metric(&metrics, "peerdex_central_watch_events_total").await >= 1.0);
    // The want ended: nothing is watched any more.
    wait_for("the watch to end", T, || async {
        (central_metric(&metrics, "peerdex_central_watches").await == 0.0).then_some(())
    })
    .await;
    // The story is in the events: it appeared, then it arrived.
    let ev = first_event(&b).await;
    let kinds: Vec<NoticeKind> = ev
        .notices
        .iter()
        .filter(|n| n.want_id == w.want_id)
        .map(|n| n.kind)
        .collect();
    assert_eq!(kinds, [NoticeKind::Downloading, NoticeKind::Done]);
    assert_eq!(ev.wants.len(), 1);
    assert_eq!(ev.wants[0].state, WantState::Done);
    // A file already here is done at once.
    let again = b.api.want(&file("harbour-report.pdf")).await.unwrap();
    assert_eq!(again.state, WantState::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wants_survive_a_restart_and_limits_are_refused_by_name() {
    let central = TestCentral::start_with(|c| {
        peerdex_testkit::central::lease(c, TTL);
        c.limits.max_watches_per_peer = 1;
    })
    .await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[], |c| c.wants.max_wants = 2).await;
    a.wait_joined().await;
    b.wait_joined().await;

    // Bad wants: a clear 400 each, nothing kept.
    for (bad, what) in [
        (WantRequest::default(), "exactly one"),
        (
            WantRequest {
                file: Some("a".into()),
                query: Some("b".into()),
                download: None,
            },
            "exactly one",
        ),
        (file("../etc/passwd"), "file must be"),
        (query("   ", false), "empty"),
        (query(&"long ".repeat(300), false), "1024"),
    ] {
        let (status, e) = refused(b.api.want(&bad).await);
        assert_eq!(status, 400, "{bad:?}: {e:?}");
        assert!(e.message.contains(what), "{bad:?}: {}", e.message);
    }
    let (status, e) = refused(b.api.unwant("not-a-want").await);
    assert_eq!((status, e.code.as_str()), (404, "not_found"));
    let (status, e) = refused(b.api.unwant(&uuid::Uuid::new_v4().to_string()).await);
    assert_eq!((status, e.code.as_str()), (404, "not_found"));

    let bytes = test_bytes(200_000, 27);
    let id = blake3_hex(&bytes);
    let by_id = b.api.want(&file(&id)).await.unwrap();
    let words = b
        .api
        .want(&query("lighthouse keeper", false))
        .await
        .unwrap();
    // PSERVER_MAX_WANTS = 2.
    let (status, e) = refused(b.api.want(&file("third.bin")).await);
    assert_eq!(status, 429);
    assert!(e.message.contains("PSERVER_MAX_WANTS"), "{}", e.message);
    // The directory watches one per peer here: it refuses both, by name.
    let refused_watch = wait_for("the directory's refusal", T, || async {
        let l = b.api.wants().await.unwrap();
        l.wants.iter().find_map(|w| {
            w.error
                .clone()
                .filter(|e| e.contains("CENTRAL_MAX_WATCHES_PER_PEER"))
        })
    })
    .await;
    assert!(refused_watch.starts_with("not watched"), "{refused_watch}");

    // A restart keeps both.
    let root = b.stop().await;
    let b = TestPeer::start_in(root, &central.url, &[], |c| c.wants.max_wants = 2).await;
    b.wait_joined().await;
    let list = b.api.wants().await.unwrap();
    let ids: Vec<&str> = list.wants.iter().map(|w| w.want_id.as_str()).collect();
    assert_eq!(ids, [by_id.want_id.as_str(), words.want_id.as_str()]);
    assert!(list.wants.iter().all(|w| w.state == WantState::Waiting));
    // One want left: the directory takes it, and the file comes.
    b.api.unwant(&words.want_id).await.unwrap();
    watching(&b).await;
    upload_ok(&a, "by-its-id.bin", bytes.clone()).await;
    state(&b, &by_id.want_id, WantState::Done).await;
    assert_eq!(
        std::fs::read(b.path_in_share("by-its-id.bin")).unwrap(),
        bytes
    );
}

/// A tiny HTTP server that keeps the JSON body of every POST.
async fn webhook() -> (String, tokio::sync::mpsc::Receiver<serde_json::Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                let body = loop {
                    let n = s.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&b[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                };
                let _ = s
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                if let Ok(v) = serde_json::from_slice(&body) {
                    let _ = tx.send(v).await;
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_want_notifies_and_an_ambiguous_name_downloads_nothing() {
    let central = TestCentral::start(TTL).await;
    let (hook, mut posted) = webhook().await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let c = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[], |cfg| {
        cfg.wants.notify_url = Some(hook.parse().unwrap());
    })
    .await;
    for p in [&a, &b, &c] {
        p.wait_joined().await;
    }

    // A query, notify only: the match is told (events and webhook), and
    // nothing is downloaded.
    let w = b.api.want(&query("tide tables", false)).await.unwrap();
    assert!(!w.download);
    watching(&b).await;
    let tides = upload_ok(&a, "Tide-Tables-2026.txt", test_bytes(50_000, 28)).await;
    let got = state(&b, &w.want_id, WantState::Matched).await;
    assert_eq!(got.matches[0].file_id, tides.file_id);
    let note = tokio::time::timeout(T, posted.recv())
        .await
        .expect("the webhook is called")
        .unwrap();
    assert_eq!(note["kind"], "matched", "{note}");
    assert_eq!(note["want_id"], w.want_id.as_str());
    assert_eq!(note["file_id"], tides.file_id.as_str());
    assert_eq!(note["name"], "Tide-Tables-2026.txt");
    assert!(b.api.list_downloads().await.unwrap().jobs.is_empty());
    assert!(!b.path_in_share("Tide-Tables-2026.txt").exists());

    // A name two different files carry: the candidates, no download.
    let one = upload_ok(&a, "twin.txt", test_bytes(10_000, 1)).await;
    let two = upload_ok(&c, "twin.txt", test_bytes(10_000, 2)).await;
    wait_holders_exactly(&b, "twin", &one.file_id, 1).await;
    wait_holders_exactly(&b, "twin", &two.file_id, 1).await;
    let w = b.api.want(&file("twin.txt")).await.unwrap();
    let amb = state(&b, &w.want_id, WantState::Ambiguous).await;
    let mut ids: Vec<&str> = amb.matches.iter().map(|m| m.file_id.as_str()).collect();
    ids.sort_unstable();
    let mut want = [one.file_id.as_str(), two.file_id.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    let note = loop {
        let n = tokio::time::timeout(T, posted.recv())
            .await
            .unwrap()
            .unwrap();
        if n["kind"] == "ambiguous" {
            break n;
        }
    };
    assert_eq!(note["candidates"].as_array().unwrap().len(), 2, "{note}");
    assert!(b.api.list_downloads().await.unwrap().jobs.is_empty());
    assert!(!b.path_in_share("twin.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_survives_a_kill_9_of_the_central_it_watches_at() {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cs: Vec<CentralProc> = (1..=2)
        .map(|i| {
            CentralProc::on_etcd(
                &root.path().join(format!("central-{i}")),
                &etcd.endpoints(),
                &format!("central-{i}"),
                TTL,
            )
        })
        .collect();
    let urls = cs
        .iter()
        .map(|c| c.url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let a = TestPeer::start(&urls, &[], |_| {}).await;
    let b = TestPeer::start(&urls, &[], |_| {}).await;
    a.wait_joined().await;
    b.wait_joined().await;
    let w = b.api.want(&file("after-the-move.bin")).await.unwrap();
    watching(&b).await;

    let used = b.status().await.central_url;
    let dead = cs.iter().position(|c| c.url == used).unwrap();
    cs[dead].proc.kill9();
    // Published while the watcher moves (its stream just broke).
    let bytes = test_bytes(400_000, 29);
    upload_ok(&a, "after-the-move.bin", bytes.clone()).await;

    state(&b, &w.want_id, WantState::Done).await;
    assert_eq!(
        std::fs::read(b.path_in_share("after-the-move.bin")).unwrap(),
        bytes
    );
    // The want can be done through the stream re-opened at the survivor
    // before b's lease calls notice the dead central: wait for the move
    // (its next heartbeat at most), never assert it at once.
    wait_for("b to move off the killed central", T, || async {
        (b.status().await.central_url != used).then_some(())
    })
    .await;
    // Watched again at the survivor: a second want is pushed from there.
    let w2 = b.api.want(&file("second.bin")).await.unwrap();
    watching(&b).await;
    let second = test_bytes(100_000, 30);
    a.drop_file("second.bin", &second);
    state(&b, &w2.want_id, WantState::Done).await;
    assert_eq!(
        std::fs::read(b.path_in_share("second.bin")).unwrap(),
        second
    );
}
