//! Content verified against its id alone, over real processes: poisoning
//! attempts (a lying size or manifest announced to the directory and served
//! by a lying holder), copies that rot on the only holder's disk, and every
//! download path (empty, one byte, one chunk, one chunk + 1, many chunks).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use peerdex_proto::rest::JobState;
use peerdex_proto::tree::TreeHasher;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::{FileId, PeerId, v1};
use peerdex_testkit::grpc::{peer_key, signed_join};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG_TTL: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(40);
const MIB: usize = 1 << 20;

/// A holder that lies about a file: announced to the directory with a size
/// one byte short (inside the same last chunk, so the manifest it serves
/// still merges to the id), and serving the true bytes cut to that size.
/// A plain HTTP/1.1 server on port 0, a plain gRPC client for the central.
struct Liar {
    peer_id: PeerId,
    url: String,
    _server: tokio::task::JoinHandle<()>,
}

impl Liar {
    async fn start(central: &str, bytes: &[u8], name: &str) -> Self {
        let (id, m) = {
            let mut h = TreeHasher::new();
            h.update(bytes);
            h.finish()
        };
        let lie = bytes.len() as u64 - 1;
        let mut manifest = m.encode();
        manifest[..8].copy_from_slice(&lie.to_le_bytes());
        // The lie passes the check against the id: only the size is wrong.
        peerdex_proto::tree::Manifest::decode(id, &manifest).expect("the lie verifies");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let content: Arc<Vec<u8>> = Arc::new(bytes[..lie as usize].to_vec());
        let manifest = Arc::new(manifest);
        let server = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_lie(s, content.clone(), manifest.clone()));
            }
        });
        let peer_id = PeerId::new_random();
        let mut c = DirectoryClient::connect(central.to_owned()).await.unwrap();
        signed_join(
            &mut c,
            &peer_key(&peer_id, 0),
            v1::JoinRequest {
                peer_id: peer_id.to_string(),
                peer_url: url.clone(),
                files: vec![v1::SharedFile {
                    replica: false,
                    file_id: id.to_hex(),
                    size: lie,
                    name: name.into(),
                }],
                // Least loaded of all: asked first.
                load: Some(v1::Load {
                    active_uploads: 0,
                    free_upload_slots: 10_000,
                }),
                ..Default::default()
            },
        )
        .await
        .expect("the liar joins");
        Self {
            peer_id,
            url,
            _server: server,
        }
    }
}

/// One request per connection: the lying manifest, or the lying bytes.
async fn serve_lie(mut s: tokio::net::TcpStream, content: Arc<Vec<u8>>, manifest: Arc<Vec<u8>>) {
    let Some(req) = read_fake_request(&mut s).await else {
        return;
    };
    let (status, extra, body): (&str, String, Vec<u8>) = if req.path.ends_with("/manifest") {
        ("200 OK", String::new(), manifest.to_vec())
    } else {
        let size = content.len() as u64;
        match req.range {
            Some((a, b)) if a < size => {
                let b = b.min(size - 1);
                (
                    "206 Partial Content",
                    format!("Content-Range: bytes {a}-{b}/{size}\r\n"),
                    content[a as usize..=b as usize].to_vec(),
                )
            }
            _ => ("416 Range Not Satisfiable", String::new(), Vec::new()),
        }
    };
    send_fake_answer(s, status, &extra, &body).await;
}

async fn download_is_right(d: &TestPeer, id: &str, name: &str, bytes: &[u8], liar: &Liar) {
    let job = start_job(d, id).await;
    let end = finish(d, &job.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(std::fs::read(d.path_in_share(name)).unwrap(), bytes);
    // The liar was asked first (least loaded): struck for its manifest (and
    // for every later answer with its size), not one of its chunks kept.
    let l = end
        .sources
        .iter()
        .find(|s| s.peer_id == liar.peer_id.to_string())
        .unwrap_or_else(|| panic!("the liar was never asked: {:#?}", end.sources));
    assert!(l.strikes >= 1 && l.chunks == 0, "{l:#?}");
    assert!(files_under(&d.data_path().join("partial")).is_empty());
    // Its last chunk, asked to confirm its manifest, failed verification:
    // counted like any chunk that fails in the swarm.
    let metrics = d
        .http
        .get(format!("{}/metrics", d.api_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("peerdex_pserver_chunks_failed_verification_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(failed.is_some_and(|n| n >= 1.0), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_announced_before_the_honest_holder_cannot_block_it() {
    let central = TestCentral::start(LONG_TTL).await;
    let bytes = test_bytes(3 * MIB + 777, 81);
    let id = blake3_hex(&bytes);
    let liar = Liar::start(&central.url, &bytes, "poisoned.bin").await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    a.drop_file("other.txt", b"the rest of the inventory");
    upload_ok(&a, "poisoned.bin", bytes.clone()).await;
    a.wait_joined().await;
    // The honest holder is listed next to the liar, with its whole inventory.
    wait_holders_exactly(&a, "poisoned", &id, 2).await;
    wait_holders_exactly(&a, "other", &blake3_hex(b"the rest of the inventory"), 1).await;
    let d = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    download_is_right(&d, &id, "poisoned.bin", &bytes, &liar).await;
    assert!(liar.url.starts_with("http://127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_announced_after_the_honest_lease_expired_cannot_block_it() {
    let central = TestCentral::start(Duration::from_secs(2)).await;
    let bytes = test_bytes(2 * MIB + 5, 82);
    let id = blake3_hex(&bytes);
    // The honest holder, then its death: its lease runs out.
    let root = tempfile::tempdir().unwrap();
    let mut a = ChildPeer::spawn_in(root.path(), &central.url, &[]);
    std::fs::write(a.share_dir().join("late.bin"), &bytes).unwrap();
    let probe = TestPeer::start(&central.url, &[], |_| {}).await;
    wait_holders_exactly(&probe, "late", &id, 1).await;
    a.kill9();
    wait_holders_exactly(&probe, "late", &id, 0).await;
    // The liar announces the id with its size while nobody holds it.
    let liar = Liar::start(&central.url, &bytes, "late.bin").await;
    wait_holders_exactly(&probe, "late", &id, 1).await;
    // The honest holder comes back, joins and is listed again.
    let _a = ChildPeer::spawn_in(root.path(), &central.url, &[]);
    wait_holders_exactly(&probe, "late", &id, 2).await;
    download_is_right(&probe, &id, "late.bin", &bytes, &liar).await;
}

/// Flip one byte in each chunk of `path` listed in `chunks` (1 MiB chunks;
/// all of them if empty), keeping the mtime.
fn rot(path: &std::path::Path, chunks: &[usize]) {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    let all: Vec<usize> = (0..len.div_ceil(MIB)).collect();
    let which = if chunks.is_empty() { &all[..] } else { chunks };
    let offsets: Vec<u64> = which
        .iter()
        .map(|&c| (c * MIB + (len - c * MIB).min(MIB) / 2) as u64)
        .collect();
    flip_in_place(path, &offsets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotten_only_copy_fails_cleanly_and_is_withdrawn() {
    let central = TestCentral::start(LONG_TTL).await;
    // No periodic rescan: what the holder does comes from serving alone.
    let a = TestPeer::start(&central.url, &[], |c| {
        c.store.rescan_interval = Duration::from_secs(3600)
    })
    .await;
    let d = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    let bytes = test_bytes(3 * MIB + 99, 83);
    let id = blake3_hex(&bytes);
    upload_ok(&a, "rots.bin", bytes.clone()).await;
    wait_holders_exactly(&d, "rots", &id, 1).await;
    rot(&a.path_in_share("rots.bin"), &[]);
    let rotten_id = blake3_hex(&std::fs::read(a.path_in_share("rots.bin")).unwrap());

    let job = start_job(&d, &id).await;
    let end = finish(&d, &job.job_id, Duration::from_secs(60)).await;
    assert_eq!(end.state, JobState::Failed, "{end:#?}");
    let why = end.error.unwrap();
    assert!(why.contains("failed verification"), "{why}");
    assert!(why.contains(&id), "{why}");
    // Nothing is left on the downloader: no file, no partial, no temp.
    assert!(files_under(&d.share_dir).is_empty());
    assert!(files_under(&d.data_path().join("partial")).is_empty());
    assert!(files_under(&d.data_path().join("tmp")).is_empty());
    // The holder withdrew the file at once (its periodic rescan is off) and,
    // having hashed it again, shares what its disk now holds.
    wait_holders_exactly(&d, "rots", &id, 0).await;
    wait_holders_exactly(&d, "rots", &rotten_id, 1).await;
}

/// A raw GET on the peer API: (status line, body bytes received, cut short?).
async fn raw_get(peer_url: &str, path: &str, range: Option<&str>) -> (String, Vec<u8>, bool) {
    let addr = peer_url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{range}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut all))
        .await
        .expect("answer");
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let body = all[split + 4..].to_vec();
    let declared: Option<usize> = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok());
    let cut = declared.is_some_and(|n| body.len() < n);
    (head.lines().next().unwrap_or("").to_owned(), body, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_of_a_rotten_chunk_leaves_the_holder() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |c| {
        c.store.rescan_interval = Duration::from_secs(3600)
    })
    .await;
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("r{i}.bin"), test_bytes(3 * MIB + 10, 90 + i)))
        .collect();
    for (name, bytes) in &files {
        upload_ok(&a, name, bytes.clone()).await;
    }
    rot(&a.path_in_share("r0.bin"), &[]);
    rot(&a.path_in_share("r1.bin"), &[]);
    rot(&a.path_in_share("r2.bin"), &[1]);
    let url = |i: usize| format!("/peer/v1/files/{}", blake3_hex(&files[i].1));

    // Every chunk rotten: a whole GET gets a 404 and no byte.
    let (status, body, _) = raw_get(&a.peer_url, &url(0), None).await;
    assert!(status.contains(" 404 "), "{status}");
    assert!(
        body.len() < 400,
        "only an error message: {} bytes",
        body.len()
    );

    // A Range inside a rotten chunk (the second): 404, no byte.
    let (status, body, _) = raw_get(&a.peer_url, &url(1), Some("bytes=1500000-1500099")).await;
    assert!(
        status.contains(" 404 "),
        "{status}: {} body bytes",
        body.len()
    );
    assert!(
        body.len() < 400,
        "only an error message: {} bytes",
        body.len()
    );

    // Only the second chunk rotten: the first chunk (verified) is sent, then
    // the body is cut before any byte of the second.
    let (status, body, cut) = raw_get(&a.peer_url, &url(2), None).await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(cut, "the body must be cut short");
    assert!(body.len() <= MIB, "{} bytes sent", body.len());
    assert_eq!(body, files[2].1[..body.len()]);

    // All three are withdrawn (nothing of theirs is listed any more).
    for (name, bytes) in &files {
        wait_holders_exactly(&a, name.trim_end_matches(".bin"), &blake3_hex(bytes), 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_downloads_through_the_one_engine() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let d = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    let sizes = [0, 1, MIB - 1, MIB, MIB + 1, 5 * MIB + 3];
    for (i, size) in sizes.into_iter().enumerate() {
        let name = format!("size{i}.bin");
        let bytes = test_bytes(size, 100 + i as u64);
        let id = blake3_hex(&bytes);
        upload_ok(&a, &name, bytes.clone()).await;
        // The manifest a holder serves verifies against the id.
        let m = reqwest::get(format!("{}/peer/v1/files/{id}/manifest", a.peer_url))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let m = peerdex_proto::tree::Manifest::decode(id.parse::<FileId>().unwrap(), &m)
            .expect("the served manifest verifies");
        assert_eq!(m.size(), size as u64);
        wait_holders_exactly(&d, &format!("size{i}"), &id, 1).await;
        let job = start_job(&d, &id).await;
        let end = finish(&d, &job.job_id, T).await;
        assert_eq!(end.state, JobState::Done, "size {size}: {end:#?}");
        assert_eq!(
            std::fs::read(d.path_in_share(&name)).unwrap(),
            bytes,
            "size {size}"
        );
        let chunks: u64 = end.sources.iter().map(|s| s.chunks).sum();
        assert_eq!(
            chunks,
            size.div_ceil(MIB) as u64,
            "size {size}: {:#?}",
            end.sources
        );
    }
    assert!(files_under(&d.data_path().join("partial")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_endpoint_answers_bad_input_clearly() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let get = |path: String| {
        let url = format!("{}{path}", a.peer_url);
        async move { reqwest::get(url).await.unwrap() }
    };
    // Not an id: 400, naming what is wrong.
    let r = get("/peer/v1/files/not-a-hash/manifest".into()).await;
    assert_eq!(r.status(), 400);
    let e: peerdex_proto::rest::ApiError = r.json().await.unwrap();
    assert!(e.message.contains("invalid file id"), "{}", e.message);
    // A well-formed id nobody shares here: 404.
    let r = get(format!("/peer/v1/files/{}/manifest", "ab".repeat(32))).await;
    assert_eq!(r.status(), 404);
    let e: peerdex_proto::rest::ApiError = r.json().await.unwrap();
    assert!(e.message.contains("not shared here"), "{}", e.message);
    // The server is still up and serves what it shares.
    let bytes = test_bytes(10, 7);
    upload_ok(&a, "small.bin", bytes.clone()).await;
    let r = get(format!("/peer/v1/files/{}/manifest", blake3_hex(&bytes))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap().len(),
        16,
        "size + chunk size, no CVs for one chunk"
    );
}
