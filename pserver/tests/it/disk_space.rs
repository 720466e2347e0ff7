//! Full disks and bogus sizes never leave a PServer stuck, over real
//! servers: a download or upload that does not fit besides
//! `PSERVER_MIN_FREE_BYTES` is refused up front, a disk that fills midway
//! fails the transfer cleanly (nothing half-written visible, the server
//! keeps serving), a rogue holder's made-up size allocates nothing, and
//! kept partials stay under `PSERVER_MAX_PARTIAL_BYTES`, oldest dropped
//! first.
//!
//! A small disk is a real tmpfs (the tests mount one: root on Linux, as in
//! CI). Where none can be mounted, the tests that only need a full disk run
//! a reserve variant instead (the reserve set to the free space less a
//! margin) and say so; the tests that need a disk filling midway fail and
//! say why, unless `PEERDEX_TEST_NO_TMPFS=1` leaves them out on purpose
//! (which also forces the reserve variants).

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
use common::*;
use peerdex_proto::rest::JobState;
use peerdex_proto::tree::{Manifest, TreeHasher};
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::{FileId, PeerId, v1};
use peerdex_testkit::grpc::{peer_key, signed_join};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fake holders never renew their lease: long enough for every test here.
const LONG_TTL: Duration = Duration::from_secs(120);
const T: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

// ── a small disk ────────────────────────────────────────────────────────────

/// A tmpfs of a fixed size mounted over a folder; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `bytes` over `dir`, or say why not
    /// (`PEERDEX_TEST_NO_TMPFS=1` runs the variants without one).
    fn mount(dir: &Path, bytes: u64) -> Result<Self, String> {
        if std::env::var_os("PEERDEX_TEST_NO_TMPFS").is_some() {
            return Err("PEERDEX_TEST_NO_TMPFS is set".into());
        }
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let m = Self(dir.to_owned());
        let got = free(dir);
        if got > bytes || got + MIB < bytes {
            return Err(format!("a tmpfs of {bytes} bytes shows {got} free"));
        }
        Ok(m)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server still closing its files does not keep it mounted.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A tmpfs for a test that cannot run without one. Where none can be
/// mounted the test fails and says why, unless `PEERDEX_TEST_NO_TMPFS` is
/// set: then it says it did not run (an explicit choice, never a silent
/// skip).
fn tmpfs_or_opt_out(dir: &Path, bytes: u64, what: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(dir, bytes) {
        Ok(m) => Some(m),
        Err(why) if std::env::var_os("PEERDEX_TEST_NO_TMPFS").is_some() => {
            println!("NOT RUN: {what} needs a small tmpfs here ({why})");
            None
        }
        Err(why) => panic!(
            "{what} needs a small tmpfs ({why}): run the tests as root on Linux, \
             or set PEERDEX_TEST_NO_TMPFS=1 to leave this test out on purpose"
        ),
    }
}

/// What an unprivileged program may still write to `dir`'s file system.
fn free(dir: &Path) -> u64 {
    let s = rustix::fs::statvfs(dir).unwrap();
    s.f_bavail * s.f_frsize
}

/// Fill `dir`'s file system with one file until it is full; its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x55u8; 64 << 10];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    let _ = f.flush();
    assert!(free(dir) < 4096, "{} is not full", dir.display());
    path
}

// ── helpers ─────────────────────────────────────────────────────────────────

/// Files under `dir` (recursively), as paths relative to it, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = files_under(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

/// The id of `name` in `p`'s share folder, once hashed and listed.
async fn listed_id(p: &TestPeer, name: &str) -> String {
    wait_for(&format!("{name} to be shared"), T, || async {
        let l = p.api.list_files().await.ok()?;
        l.files
            .into_iter()
            .find(|f| f.name == name)
            .map(|f| f.file_id)
    })
    .await
}

/// Partial-download files of `id` in `p`'s data folder.
fn partial_files(p: &TestPeer, id: &str) -> Vec<String> {
    listing(&p.data_path().join("partial"))
        .into_iter()
        .filter(|n| n.starts_with(id))
        .collect()
}

/// A PUT of `declared` bytes to `p`'s control API that sends the head and
/// no byte of the body: the answer must come from the head alone.
async fn put_head_only(p: &TestPeer, name: &str, declared: u64) -> (u16, String) {
    let addr = p.api_url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /api/v1/files/{name} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(T, async {
        let mut b = [0u8; 4096];
        loop {
            let n = s.read(&mut b).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&b[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((h, body)) = text.split_once("\r\n\r\n") {
                let len = h
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a PUT of {declared} bytes");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

// ── a fake holder ───────────────────────────────────────────────────────────

/// A holder of one file that is no PServer: it announces the file to the
/// directory with the size it likes, serves the manifest it likes, and only
/// the byte ranges it has (anything else: 404). Counts content requests.
struct Fake {
    content_requests: Arc<AtomicU64>,
    _server: tokio::task::JoinHandle<()>,
}

/// Bytes the fake holder can serve: `(offset, bytes)`.
type Pieces = Vec<(u64, Vec<u8>)>;

impl Fake {
    async fn start(
        central: &str,
        name: &str,
        id: FileId,
        size: u64,
        manifest: Vec<u8>,
        pieces: Pieces,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (manifest, pieces) = (Arc::new(manifest), Arc::new(pieces));
        let content_requests = Arc::new(AtomicU64::new(0));
        let counter = content_requests.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_fake(
                    s,
                    size,
                    manifest.clone(),
                    pieces.clone(),
                    counter.clone(),
                ));
            }
        });
        let mut c = DirectoryClient::connect(central.to_owned()).await.unwrap();
        let peer_id = PeerId::new_random();
        signed_join(
            &mut c,
            &peer_key(&peer_id, 0),
            v1::JoinRequest {
                peer_id: peer_id.to_string(),
                peer_url: url,
                files: vec![v1::SharedFile {
                    replica: false,
                    file_id: id.to_hex(),
                    size,
                    name: name.into(),
                }],
                load: Some(v1::Load {
                    active_uploads: 0,
                    free_upload_slots: 10_000,
                }),
                ..Default::default()
            },
        )
        .await
        .expect("the fake holder joins");
        Self {
            content_requests,
            _server: server,
        }
    }
}

/// One request per connection: the manifest, or a range it has.
async fn serve_fake(
    mut s: tokio::net::TcpStream,
    size: u64,
    manifest: Arc<Vec<u8>>,
    pieces: Arc<Pieces>,
    counter: Arc<AtomicU64>,
) {
    let Some(req) = read_fake_request(&mut s).await else {
        return;
    };
    let (status, extra, body): (&str, String, Vec<u8>) = if req.path.ends_with("/manifest") {
        ("200 OK", String::new(), manifest.to_vec())
    } else {
        counter.fetch_add(1, Ordering::SeqCst);
        let found = req.range.and_then(|(a, b)| {
            pieces
                .iter()
                .find_map(|(at, bytes)| {
                    let end = at + bytes.len() as u64;
                    (a >= *at && b < end)
                        .then(|| bytes[(a - at) as usize..=(b - at) as usize].to_vec())
                })
                .map(|bytes| (a, b, bytes))
        });
        match found {
            Some((a, b, bytes)) => (
                "206 Partial Content",
                format!("Content-Range: bytes {a}-{b}/{size}\r\n"),
                bytes,
            ),
            None => ("404 Not Found", String::new(), Vec::new()),
        }
    };
    send_fake_answer(s, status, &extra, &body).await;
}

/// BLAKE3's root of chunk CVs, merged left-balanced (as `peerdex_proto::tree`).
fn root_of(cvs: &[[u8; 32]]) -> FileId {
    fn left_len(n: usize) -> usize {
        1 << (usize::BITS - 1 - (n - 1).leading_zeros())
    }
    fn subtree(cvs: &[[u8; 32]]) -> [u8; 32] {
        if cvs.len() == 1 {
            return cvs[0];
        }
        let split = left_len(cvs.len());
        merge_subtrees_non_root(&subtree(&cvs[..split]), &subtree(&cvs[split..]), Mode::Hash)
    }
    let split = left_len(cvs.len());
    let root = merge_subtrees_root(&subtree(&cvs[..split]), &subtree(&cvs[split..]), Mode::Hash);
    FileId::from_bytes(*root.as_bytes())
}

fn encode(size: u64, chunk_size: u64, cvs: &[[u8; 32]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&chunk_size.to_le_bytes());
    for cv in cvs {
        out.extend_from_slice(cv);
    }
    out
}

// ── tests ───────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_does_not_fit_is_refused_up_front_and_the_peer_keeps_serving() {
    let central = TestCentral::start(LONG_TTL).await;
    let holder = TestPeer::start(&central.url, &[], |_| {}).await;
    let root = Arc::new(tempfile::tempdir().unwrap());
    let mnt = Tmpfs::mount(root.path(), 16 * MIB);
    // The big file fits on the disk but not besides the reserve (tmpfs), or
    // not besides a reserve of all the free space but 1 GiB.
    let (big_size, reserve) = match &mnt {
        Ok(_) => {
            println!("tmpfs variant: a 16 MiB tmpfs, a 14 MiB file, a 4 MiB reserve");
            (14 * MIB, 4 * MIB)
        }
        Err(why) => {
            let reserve = free(root.path()) - GIB;
            println!(
                "reserve variant ({why}): a 2 GiB file, PSERVER_MIN_FREE_BYTES = free space - 1 GiB = {reserve}"
            );
            (2 * GIB, reserve)
        }
    };
    // Zeros are content too (and a sparse file costs the holder nothing).
    std::fs::File::create(holder.share_dir.join("big.bin"))
        .unwrap()
        .set_len(big_size)
        .unwrap();
    let small = test_bytes(MIB as usize + 3, 51);
    upload_ok(&holder, "small.bin", small.clone()).await;
    let big_id = listed_id(&holder, "big.bin").await;
    let small_id = blake3_hex(&small);
    let d = TestPeer::start_in(root.clone(), &central.url, &[], |c| {
        c.store.min_free_bytes = reserve;
    })
    .await;
    wait_holders_exactly(&d, "big", &big_id, 1).await;

    let job = start_job(&d, &big_id).await;
    let end = finish(&d, &job.job_id, T).await;
    println!("refused: {:?}", end.error);
    assert_eq!(end.state, JobState::Failed, "{end:#?}");
    let why = end.error.clone().unwrap_or_default();
    assert!(
        why.contains("not enough free space")
            && why.contains("PSERVER_MIN_FREE_BYTES")
            && why.contains(&format!("({big_size} bytes)"))
            && why.contains(&format!("({reserve} bytes)")),
        "{why}"
    );
    // Up front: no chunk fetched, nothing allocated, nothing shared.
    assert!(end.sources.is_empty() && end.bytes_done == 0, "{end:#?}");
    assert_eq!(
        listing(&d.data_path().join("partial")),
        Vec::<String>::new()
    );
    assert_eq!(listing(&d.share_dir), Vec::<String>::new());

    // Still serving: a small download and the status.
    let job = start_job(&d, &small_id).await;
    let end = finish(&d, &job.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(std::fs::read(d.path_in_share("small.bin")).unwrap(), small);
    assert_eq!(d.status().await.shared_files, 1);
    drop(d);
    drop(mnt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_download_fails_the_job_cleanly_and_the_peer_keeps_serving() {
    let root = Arc::new(tempfile::tempdir().unwrap());
    let Some(mnt) = tmpfs_or_opt_out(root.path(), 32 * MIB, "a disk filling mid-download") else {
        return;
    };
    let central = TestCentral::start(LONG_TTL).await;
    // Slow enough that the disk fills long before the end.
    let holder = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 3 * MIB).await;
    let big = test_bytes(24 * MIB as usize, 52);
    let small = test_bytes(MIB as usize, 53);
    upload_ok(&holder, "big.bin", big.clone()).await;
    upload_ok(&holder, "small.bin", small.clone()).await;
    let (big_id, small_id) = (blake3_hex(&big), blake3_hex(&small));
    let d = TestPeer::start_in(root.clone(), &central.url, &[], |c| {
        c.store.min_free_bytes = 0
    })
    .await;
    wait_holders_exactly(&d, "big", &big_id, 1).await;

    let job = start_job(&d, &big_id).await;
    wait_for("4 MiB verified", T, || async {
        let j = job_of(&d, &job.job_id).await;
        assert!(!j.state.is_final(), "{j:#?}");
        (j.bytes_done >= 4 * MIB).then_some(())
    })
    .await;
    let filler = fill(root.path());
    // An upload meanwhile is refused up front, naming the figures.
    let (status, e) = refused(upload(&d, "late.txt", b"hello".to_vec()).await);
    assert_eq!(status, 507);
    let msg = e.message;
    assert!(
        msg.contains("not enough free space") && msg.contains("PSERVER_MIN_FREE_BYTES"),
        "{msg}"
    );
    // An empty file dropped in by hand is shared (it takes no block), but
    // the hash cache cannot be saved: no half-written copy is left behind.
    std::fs::File::create(d.path_in_share("empty.txt")).unwrap();
    listed_id(&d, "empty.txt").await;

    let end = finish(&d, &job.job_id, T).await;
    println!("failed: {:?}", end.error);
    assert_eq!(end.state, JobState::Failed, "{end:#?}");
    let why = end.error.clone().unwrap_or_default();
    let partial_dir = d.data_path().join("partial");
    assert!(
        why.contains(&format!(
            "no space left on device in {}: free ",
            partial_dir.display()
        )),
        "{why}"
    );
    // Nothing half-written visible; what stays is a resumable partial
    // with verified chunks, or nothing at all, never a temp file.
    assert_eq!(listing(&d.share_dir), ["empty.txt"]);
    let temps: Vec<String> = listing(d.data_path())
        .into_iter()
        .filter(|n| n.contains(".tmp-") || n.starts_with("tmp/"))
        .collect();
    assert_eq!(temps, Vec::<String>::new());
    let left = partial_files(&d, &big_id);
    assert!(
        left.is_empty()
            || left
                == [
                    format!("{big_id}.bitmap"),
                    format!("{big_id}.json"),
                    format!("{big_id}.part")
                ],
        "{left:?}"
    );
    println!("kept for resume: {left:?}");

    // Space again: the peer serves, resumes and completes.
    std::fs::remove_file(filler).unwrap();
    let job = start_job(&d, &small_id).await;
    assert_eq!(finish(&d, &job.job_id, T).await.state, JobState::Done);
    let job = start_job(&d, &big_id).await;
    let end = finish(&d, &job.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(std::fs::read(d.path_in_share("big.bin")).unwrap(), big);
    assert_eq!(listing(&partial_dir), Vec::<String>::new());
    assert_eq!(d.status().await.shared_files, 3);
    drop(d);
    drop(mnt);
}

async fn job_of(p: &TestPeer, id: &str) -> peerdex_proto::rest::Job {
    job(p, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_manifest_claiming_a_huge_size_allocates_nothing() {
    let central = TestCentral::start(LONG_TTL).await;
    // 1. A made-up id with a manifest that verifies against it: 8192 chunks
    // of 128 GiB (the chunk size every peer uses for that size), the last
    // one a single real byte, so the manifest is even confirmable.
    let cs: u64 = 1 << 37;
    let size = 8191 * cs + 1;
    assert_eq!(peerdex_proto::tree::chunk_size_for(size), cs);
    let mut cvs: Vec<[u8; 32]> = test_bytes(8191 * 32, 54)
        .chunks_exact(32)
        .map(|c| c.try_into().unwrap())
        .collect();
    let last = {
        let mut h = blake3::Hasher::new();
        h.set_input_offset(8191 * cs);
        h.update(b"!");
        h.finalize_non_root()
    };
    cvs.push(last);
    let huge_id = root_of(&cvs);
    let manifest = encode(size, cs, &cvs);
    Manifest::decode(huge_id, &manifest).expect("the lie verifies against its id");
    let huge = Fake::start(
        &central.url,
        "huge.bin",
        huge_id,
        size,
        manifest,
        vec![(8191 * cs, b"!".to_vec())],
    )
    .await;
    // 2. One chunk of 1 TiB: no chaining value to check at all, but not the
    // chunk size of that size on the wire (the confirming request would
    // hold the whole chunk in memory).
    let tib = 1u64 << 40;
    let one_id: FileId = blake3_hex(b"no such content").parse().unwrap();
    let one = encode(tib, tib, &[]);
    assert!(Manifest::decode_local(one_id, &one).is_ok());
    let one_chunk = Fake::start(&central.url, "onechunk.bin", one_id, tib, one, vec![]).await;
    // An honest holder of a small file.
    let holder = TestPeer::start(&central.url, &[], |_| {}).await;
    let small = test_bytes(MIB as usize + 9, 55);
    upload_ok(&holder, "small.bin", small.clone()).await;
    let small_id = blake3_hex(&small);
    let d = TestPeer::start(&central.url, &[], |_| {}).await;
    wait_holders_exactly(&d, "small", &small_id, 1).await;

    let end = finish(&d, &start_job(&d, &huge_id.to_hex()).await.job_id, T).await;
    println!("huge: {:?}", end.error);
    assert_eq!(end.state, JobState::Failed, "{end:#?}");
    let why = end.error.clone().unwrap_or_default();
    assert!(
        why.contains("not enough free space")
            && why.contains(&format!("({size} bytes)"))
            && why.contains("PSERVER_MIN_FREE_BYTES"),
        "{why}"
    );
    // Refused on the manifest alone: not even the confirming byte was asked for.
    assert_eq!(huge.content_requests.load(Ordering::SeqCst), 0);

    let end = finish(&d, &start_job(&d, &one_id.to_hex()).await.job_id, T).await;
    println!("one chunk: {:?}", end.error);
    assert_eq!(end.state, JobState::Failed, "{end:#?}");
    let why = end.error.clone().unwrap_or_default();
    assert!(
        why.contains(&format!(
            "a file of {tib} bytes is cut in chunks of {} on the wire, not {tib}",
            1u64 << 27
        )),
        "{why}"
    );
    assert_eq!(one_chunk.content_requests.load(Ordering::SeqCst), 0);

    // Nothing created, and the peer still serves.
    assert_eq!(
        listing(&d.data_path().join("partial")),
        Vec::<String>::new()
    );
    assert_eq!(listing(&d.share_dir), Vec::<String>::new());
    let end = finish(&d, &start_job(&d, &small_id).await.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(std::fs::read(d.path_in_share("small.bin")).unwrap(), small);
}

/// A file of 4 MiB + 1 byte (five 1 MiB chunks) whose only holder sends
/// chunks 0, 1 and the last, and 404 for the rest: a download of it fails
/// keeping a partial of about 2 MiB on disk.
async fn stingy(central: &str, name: &str, seed: u64) -> (String, Fake) {
    let bytes = test_bytes(4 * MIB as usize + 1, seed);
    let (id, m) = {
        let mut h = TreeHasher::new();
        h.update(&bytes);
        h.finish()
    };
    assert_eq!(m.chunks(), 5);
    let pieces = vec![
        (0, bytes[..2 * MIB as usize].to_vec()),
        (4 * MIB, bytes[4 * MIB as usize..].to_vec()),
    ];
    let fake = Fake::start(central, name, id, bytes.len() as u64, m.encode(), pieces).await;
    (id.to_hex(), fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_partials_beyond_the_cap_drop_the_oldest_first() {
    let central = TestCentral::start(LONG_TTL).await;
    let mut files = Vec::new();
    for (i, name) in ["one.bin", "two.bin", "three.bin"].iter().enumerate() {
        files.push(stingy(&central.url, name, 60 + i as u64).await);
    }
    // Room for two kept partials of ~2 MiB, not three.
    let d = TestPeer::start(&central.url, &[], |c| c.store.max_partial_bytes = 5 * MIB).await;
    let kept = |p: &TestPeer, id: &str| partial_files(p, id).len() == 3;
    for (i, (id, _)) in files.iter().enumerate() {
        let end = finish(&d, &start_job(&d, id).await.job_id, T).await;
        assert_eq!(end.state, JobState::Failed, "{end:#?}");
        assert_eq!(end.bytes_done, 2 * MIB + 1, "{end:#?}");
        assert!(
            kept(&d, id),
            "partial {i} not kept: {:?}",
            listing(&d.data_path().join("partial"))
        );
    }
    let on_disk: Vec<bool> = files.iter().map(|(id, _)| kept(&d, id)).collect();
    assert_eq!(
        on_disk,
        [false, true, true],
        "{:?}",
        listing(&d.data_path().join("partial"))
    );

    // At start too: with room for one, the older of the two goes and the
    // newer is resumed.
    let root = d.stop().await;
    let d = TestPeer::start_in(root, &central.url, &[], |c| {
        c.store.max_partial_bytes = 3 * MIB
    })
    .await;
    let on_disk: Vec<bool> = files.iter().map(|(id, _)| kept(&d, id)).collect();
    assert_eq!(
        on_disk,
        [false, false, true],
        "{:?}",
        listing(&d.data_path().join("partial"))
    );
    let jobs = d.api.list_downloads().await.unwrap().jobs;
    let resumed: Vec<Option<String>> = jobs.into_iter().map(|j| j.file_id).collect();
    assert_eq!(resumed, [Some(files[2].0.clone())]);
    for (_, fake) in &files {
        assert!(fake.content_requests.load(Ordering::SeqCst) > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_would_cut_into_the_reserve_is_refused_and_leaves_nothing() {
    let central = TestCentral::start(LONG_TTL).await;
    let root = Arc::new(tempfile::tempdir().unwrap());
    let mnt = Tmpfs::mount(root.path(), 32 * MIB);
    let (declared, reserve) = match &mnt {
        Ok(_) => {
            println!("tmpfs variant: a 32 MiB tmpfs, 20 MiB declared, a 16 MiB reserve");
            (20 * MIB, 16 * MIB)
        }
        Err(why) => {
            let reserve = free(root.path()) - GIB;
            println!(
                "reserve variant ({why}): 2 GiB declared, PSERVER_MIN_FREE_BYTES = free space - 1 GiB = {reserve}"
            );
            (2 * GIB, reserve)
        }
    };
    let p = TestPeer::start_in(root.clone(), &central.url, &[], |c| {
        c.store.min_free_bytes = reserve
    })
    .await;
    let (status, answer) = put_head_only(&p, "big.bin", declared).await;
    println!("{answer}");
    assert_eq!(status, 507, "{answer}");
    assert!(
        answer.contains("not enough free space")
            && answer.contains("PSERVER_MIN_FREE_BYTES")
            && answer.contains(&format!("({declared} bytes)")),
        "{answer}"
    );
    assert_eq!(listing(&p.share_dir), Vec::<String>::new());
    assert_eq!(listing(&p.data_path().join("tmp")), Vec::<String>::new());
    // What fits is taken.
    let small = test_bytes(MIB as usize, 56);
    upload_ok(&p, "small.bin", small.clone()).await;
    assert_eq!(std::fs::read(p.path_in_share("small.bin")).unwrap(), small);
    assert_eq!(p.status().await.shared_files, 1);
    drop(p);
    drop(mnt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_upload_leaves_nothing_half_written() {
    let root = Arc::new(tempfile::tempdir().unwrap());
    let Some(mnt) = tmpfs_or_opt_out(root.path(), 16 * MIB, "a disk filling mid-upload") else {
        return;
    };
    let central = TestCentral::start(LONG_TTL).await;
    let p = TestPeer::start_in(root.clone(), &central.url, &[], |c| {
        c.store.min_free_bytes = 0
    })
    .await;
    let before = free(root.path());
    // Streamed without a length: the check up front cannot see it coming
    // (raw: the typed client always sends the length).
    let body = test_bytes(24 * MIB as usize, 57);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(256 << 10).map(|c| Ok(c.to_vec())).collect();
    let r = p
        .http
        .put(format!("{}/api/v1/files/big.bin", p.api_url))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await;
    match r {
        Ok(r) => {
            let status = r.status();
            let msg = r.text().await.unwrap_or_default();
            println!("{status}: {msg}");
            assert_eq!(status, 507, "{msg}");
            let tmp = p.data_path().join("tmp");
            assert!(
                msg.contains(&format!(
                    "no space left on device in {}: free ",
                    tmp.display()
                )),
                "{msg}"
            );
        }
        // The server may close before the client got the answer out.
        Err(e) => println!("the upload broke off: {e}"),
    }
    // Nothing half-written anywhere; the space is back.
    wait_for("the temp file to go", T, || async {
        listing(&p.data_path().join("tmp")).is_empty().then_some(())
    })
    .await;
    assert_eq!(listing(&p.share_dir), Vec::<String>::new());
    assert!(free(root.path()) + MIB >= before, "space not given back");
    // Still serving.
    let small = test_bytes(MIB as usize, 58);
    upload_ok(&p, "small.bin", small.clone()).await;
    assert_eq!(p.status().await.shared_files, 1);
    drop(p);
    drop(mnt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_downloads_that_fit_alone_do_not_fill_the_disk_together() {
    let root = Arc::new(tempfile::tempdir().unwrap());
    let Some(mnt) = tmpfs_or_opt_out(
        root.path(),
        24 * MIB,
        "two downloads filling a disk together",
    ) else {
        return;
    };
    let central = TestCentral::start(LONG_TTL).await;
    // Slow, so the first is still running when the second asks.
    let holder = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 4 * MIB).await;
    let (a, b) = (
        test_bytes(14 * MIB as usize, 71),
        test_bytes(14 * MIB as usize, 72),
    );
    upload_ok(&holder, "a.bin", a.clone()).await;
    upload_ok(&holder, "b.bin", b.clone()).await;
    let (a_id, b_id) = (blake3_hex(&a), blake3_hex(&b));
    let d = TestPeer::start_in(root.clone(), &central.url, &[], |c| {
        c.store.min_free_bytes = 0
    })
    .await;
    wait_holders_exactly(&d, "a", &a_id, 1).await;
    wait_holders_exactly(&d, "b", &b_id, 1).await;

    let job_a = start_job(&d, &a_id).await;
    wait_for("the first download to write", T, || async {
        let j = job_of(&d, &job_a.job_id).await;
        assert!(!j.state.is_final(), "{j:#?}");
        (j.bytes_done > 0).then_some(())
    })
    .await;
    // Each fits on the empty disk alone; not both.
    let end = finish(&d, &start_job(&d, &b_id).await.job_id, T).await;
    println!("second: {:?}", end.error);
    assert_eq!(end.state, JobState::Failed, "{end:#?}");
    let why = end.error.clone().unwrap_or_default();
    assert!(
        why.contains("not enough free space") && why.contains("promised to transfers in progress"),
        "{why}"
    );
    assert!(partial_files(&d, &b_id).is_empty());
    let end = finish(&d, &job_a.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(std::fs::read(d.path_in_share("a.bin")).unwrap(), a);
    drop(d);
    drop(mnt);
}
