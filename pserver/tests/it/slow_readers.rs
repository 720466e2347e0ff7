//! Upload slots cannot be held hostage: readers that take nothing (or a
//! trickle) lose their slots and their connections, and an honest download
//! completes; connections beyond the per-source cap are answered 429.
//! Real servers, raw TCP clients.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use peerdex_proto::rest::JobState;

const SIZE: usize = 64 << 20;

/// Send a GET for `path` and read only the status line: the response has
/// started (the request holds an upload slot), and nothing more is read.
fn start_get(peer_url: &str, path: &str) -> TcpStream {
    let addr = peer_url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut status = [0u8; 12];
    s.read_exact(&mut status).unwrap();
    assert_eq!(
        &status,
        b"HTTP/1.1 200",
        "{}",
        String::from_utf8_lossy(&status)
    );
    s
}

/// The TCP state of the server's end of `client` (Linux `/proc/net/tcp`
/// states: 01 ESTABLISHED, 04 FIN_WAIT1, ...); `None` once it is gone.
fn server_end_state(client: &TcpStream) -> Option<u8> {
    let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want = (
        format!(":{:04X}", peer.port()),
        format!(":{:04X}", local.port()),
    );
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[1].ends_with(&want.0) && f[2].ends_with(&want.1))
            .then(|| u8::from_str_radix(f[3], 16).unwrap())
    })
}

/// Read what is left until the server closes the connection (EOF or
/// reset); the bytes read. Panics if the server keeps it open for 20 s.
fn drain_until_closed(s: &mut TcpStream) -> usize {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return total,
            Err(e) => panic!("the server did not close the connection: {e} after {total} bytes"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_lose_their_slots_and_an_honest_download_completes() {
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let holder = TestPeer::start(&central.url, &[], |c| {
        c.peer_api.max_uploads = 4;
        // Longer than the engine's relocate rounds (0.5 + 1 + 2 s), so the
        // honest download below really has to wait out busy answers.
        c.peer_api.upload_idle = Duration::from_secs(6);
    })
    .await;
    holder.wait_joined().await;
    let bytes = test_bytes(SIZE, 16);
    let info = upload_ok(&holder, "big.bin", bytes.clone()).await;
    let path = format!("/peer/v1/files/{}", info.file_id);
    let downloader = TestPeer::start(&central.url, &[], |_| {}).await;
    downloader.wait_joined().await;

    // Three readers that take nothing and one that takes 1 KB a second
    // hold every slot.
    let mut silent: Vec<TcpStream> = (0..3).map(|_| start_get(&holder.peer_url, &path)).collect();
    let mut trickle = start_get(&holder.peer_url, &path);
    assert_eq!(holder.status().await.active_uploads, 4);
    let turned_away = reqwest::get(format!("{}{path}", holder.peer_url))
        .await
        .unwrap();
    assert_eq!(turned_away.status(), 503, "every slot should be taken");
    // An honest peer starts downloading the whole file through the real
    // engine while every slot is held: it is told 503 and must wait for a
    // slot, not fail.
    let job = start_job(&downloader, &info.file_id).await;
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while !stop.load(Ordering::Relaxed) {
                match trickle.read(&mut buf) {
                    Ok(0) => return total,
                    Ok(n) => total += n,
                    Err(_) => return total,
                }
                // The behaviour under test: a reader this slow.
                std::thread::sleep(Duration::from_secs(1));
            }
            total + drain_until_closed(&mut trickle)
        }
    });

    // The server takes the slots back while the slow sockets are still
    // open and unread.
    let t0 = Instant::now();
    wait_for(
        "the slow readers to lose their slots",
        Duration::from_secs(20),
        || async { (holder.status().await.active_uploads == 0).then_some(()) },
    )
    .await;
    let freed_after = t0.elapsed();
    // ... and shuts their connections down on its side, though the
    // clients read nothing (its end leaves ESTABLISHED for FIN_WAIT1 or
    // beyond: a FIN is queued behind the unread bytes).
    for s in &silent {
        wait_for(
            "the server to shut a silent reader's socket",
            Duration::from_secs(10),
            || async { (server_end_state(s) != Some(0x01)).then_some(()) },
        )
        .await;
    }

    // The honest download, started while every slot was held, completes.
    let done = finish(&downloader, &job.job_id, Duration::from_secs(120)).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let got = std::fs::read(downloader.path_in_share("big.bin")).unwrap();
    assert_eq!(blake3_hex(&got), info.file_id);

    // The slow sockets were closed by the server: draining them ends (EOF
    // or reset) long before the 64 MiB a live response would still send.
    for s in &mut silent {
        let n = drain_until_closed(s);
        assert!(n < SIZE / 2, "a closed response still sent {n} bytes");
    }
    stop.store(true, Ordering::Relaxed);
    let n = tokio::task::spawn_blocking(move || trickler.join().unwrap())
        .await
        .unwrap();
    assert!(n < SIZE / 2, "the trickling reader got {n} bytes");
    eprintln!("slots freed after {freed_after:?} (idle limit 6 s)");
}

/// One request on a held connection; the status line and headers.
fn request(s: &mut TcpStream, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: peer\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert_eq!(n, 1, "connection closed in the head");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap().to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_cap_get_429_and_are_closed() {
    let central = TestCentral::start(Duration::from_secs(10)).await;
    let p = TestPeer::start(&central.url, &[], |c| c.peer_api.max_conns_per_addr = 3).await;
    let addr = p.peer_url.trim_start_matches("http://").to_owned();
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            let head = request(&mut s, "/peer/v1/health");
            assert!(head.starts_with("http/1.1 200"), "{head}");
            s
        })
        .collect();

    let mut fourth = TcpStream::connect(&addr).unwrap();
    let head = request(&mut fourth, "/peer/v1/health");
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(head.contains("\r\nretry-after: 1\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let mut rest = Vec::new();
    fourth
        .read_to_end(&mut rest)
        .expect("the server closes the refused connection");
    // The held connections still work.
    let head = request(&mut held[0], "/peer/v1/health");
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // One held connection closes: a new one is admitted.
    drop(held.pop());
    wait_for(
        "a freed connection to be counted back",
        Duration::from_secs(10),
        || async {
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                request(&mut s, "/peer/v1/health").starts_with("http/1.1 200")
            })
            .await
            .unwrap()
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_rate_cap_never_makes_a_reader_look_slow_but_a_slow_reader_is_cut() {
    // The cap must fill a slow reader's socket buffers (megabytes on
    // loopback) quickly, so that it, not the kernel, holds the transfer up.
    const LEN: usize = 96 << 20;
    let central = TestCentral::start(Duration::from_secs(10)).await;
    // The cap (4 MiB/s) is below the minimum (8 MiB/s): every honest
    // response is slower than the minimum only because of us.
    let holder = TestPeer::start(&central.url, &[], |c| {
        c.peer_api.max_upload_bps = 4 << 20;
        c.peer_api.upload_min_bps = 8 << 20;
        // Only the minimum rate may cut anyone here.
        c.peer_api.upload_idle = Duration::from_secs(600);
    })
    .await;
    let bytes = test_bytes(LEN, 17);
    let info = upload_ok(&holder, "capped.bin", bytes.clone()).await;
    let path = format!("/peer/v1/files/{}", info.file_id);

    // A reader that takes 16 KiB a second: it makes progress (never idle
    // for PSERVER_UPLOAD_IDLE_SECS), but far below the minimum.
    let slow = start_get(&holder.peer_url, &path);
    let stop = Arc::new(AtomicBool::new(false));
    let slow_reader = std::thread::spawn({
        let (stop, mut slow) = (stop.clone(), slow.try_clone().unwrap());
        move || {
            let mut buf = vec![0u8; 16 << 10];
            let mut total = 0;
            while !stop.load(Ordering::Relaxed) {
                match slow.read(&mut buf) {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
                // The behaviour under test: a reader this slow.
                std::thread::sleep(Duration::from_secs(1));
            }
            total + drain_until_closed(&mut slow)
        }
    });

    // An honest reader takes the whole file at the capped rate, for longer
    // than the 20 s window over which the minimum is judged.
    let t0 = Instant::now();
    let got = reqwest::get(format!("{}{path}", holder.peer_url))
        .await
        .unwrap()
        .bytes()
        .await
        .expect("the capped response is never cut");
    let took = t0.elapsed();
    assert_eq!(got.len(), LEN);
    assert_eq!(blake3_hex(&got), info.file_id);
    assert!(took > Duration::from_secs(20), "took only {took:?}");

    // The slow reader was cut: its slot is free and the server shut its
    // socket while it was still trickling; what it had not read yet was all
    // it got (the kernel buffers, far from the whole file).
    wait_for(
        "the slow reader to lose its slot",
        Duration::from_secs(60),
        || async { (holder.status().await.active_uploads == 0).then_some(()) },
    )
    .await;
    wait_for(
        "the server to shut the slow reader's socket",
        Duration::from_secs(10),
        || async { (server_end_state(&slow) != Some(0x01)).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let n = tokio::task::spawn_blocking(move || slow_reader.join().unwrap())
        .await
        .unwrap();
    assert!(n < LEN / 2, "the slow reader got {n} bytes");
    eprintln!("honest capped transfer took {took:?}; slow reader cut after {n} bytes");
}
