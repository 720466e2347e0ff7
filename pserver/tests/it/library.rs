//! A share folder that is a library (issue 30): a tree of folders shared
//! at any depth under relative paths, found by folder words, fetched a
//! folder at a time; inventories bigger than a message join in pages up
//! to the directory's limit; changes seen by notification, without
//! rescans. Real PServers and a real central.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use peerdex_proto::rest::{JobState, SearchQuery};
use peerdex_proto::v1;
use peerdex_testkit::grpc::connect;

const LONG_TTL: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Files the central lists (distinct ids), from its Info.
async fn listed(central: &TestCentral) -> u64 {
    let mut c = connect(&central.url).await;
    c.info(v1::InfoRequest {})
        .await
        .map_or(0, |r| r.into_inner().files)
}

/// Whether the central has a live holder of `id`.
async fn located(central: &TestCentral, id: &str) -> bool {
    let mut c = connect(&central.url).await;
    let r = c
        .locate(v1::LocateRequest {
            target: Some(v1::locate_request::Target::FileId(id.into())),
            max_holders: 0,
        })
        .await;
    r.is_ok_and(|r| r.into_inner().files.iter().any(|f| !f.holders.is_empty()))
}

/// A folder for a big tree: in `/dev/shm` (a RAM file system) where there
/// is one, since making and deleting 60,000 files on a busy disk costs
/// minutes; else the usual temp folder.
fn ram_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new()
            .prefix("peerdex-library-")
            .tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// Write `n` tiny distinct files in `folders` folders two levels deep
/// (`Artist a{a}/Album b{a}x{b}/Track {i}.txt`) under `share`; returns
/// the relative paths and contents.
fn library(share: &Path, folders: usize, per_folder: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(folders * per_folder);
    for f in 0..folders {
        let (a, b) = (f / 10, f % 10);
        let dir = format!("Artist a{a}/Album b{a}x{b}");
        std::fs::create_dir_all(share.join(&dir)).unwrap();
        for i in 0..per_folder {
            let rel = format!("{dir}/Track {i:03}.txt");
            let bytes = format!("{f}.{i}").into_bytes();
            std::fs::write(share.join(&rel), &bytes).unwrap();
            out.push((rel, bytes));
        }
    }
    out
}

/// 60,000 files in 300 folders: every one listed (the directory holds
/// 60,000 distinct ids: they joined in pages), a search for a folder word
/// finds exactly the files under that folder, and a download keeps the
/// relative path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_60000_files_is_listed_and_found_by_folder_words() {
    let central = TestCentral::start(LONG_TTL).await;
    let root = std::sync::Arc::new(ram_dir());
    let t0 = Instant::now();
    let files = library(&root.path().join("share"), 300, 200);
    assert_eq!(files.len(), 60_000);
    let written = t0.elapsed();
    let holder = TestPeer::start_in(root, &central.url, &[], |_| {}).await;
    let scanned = t0.elapsed();
    let me = TestPeer::start(&central.url, &[], |_| {}).await;
    wait_for("all 60,000 files to be listed", T, || async {
        (listed(&central).await == 60_000).then_some(())
    })
    .await;
    eprintln!(
        "60,000 files: written in {written:?}, scanned by {scanned:?}, listed by {:?}",
        t0.elapsed()
    );
    assert_eq!(holder.status().await.shared_files, 60_000);
    for (rel, bytes) in files.iter().step_by(6_007) {
        assert!(
            located(&central, &blake3_hex(bytes)).await,
            "{rel} not listed"
        );
    }

    // A folder word: the 200 files of that album, all of them and only them.
    let mut names = Vec::new();
    let mut page = None;
    loop {
        let q = SearchQuery {
            q: "b17x3".into(),
            limit: Some(100),
            page: page.take(),
        };
        let r = me.api.search(&q).await.expect("search");
        names.extend(r.hits.into_iter().map(|h| h.name));
        match r.next_page {
            Some(p) => page = Some(p),
            None => break,
        }
    }
    names.sort();
    let want: Vec<String> = (0..200)
        .map(|i| format!("Artist a17/Album b17x3/Track {i:03}.txt"))
        .collect();
    assert_eq!(names, want);

    // Fetched by its path: stored under the same path.
    let (rel, bytes) = &files[17 * 2_000 + 3 * 200 + 42];
    assert_eq!(rel, "Artist a17/Album b17x3/Track 042.txt");
    let j = me
        .api
        .start_download(&by_name(rel))
        .await
        .expect("download");
    let j = finish(&me, &j.job_id, T).await;
    assert_eq!(j.state, JobState::Done, "{j:?}");
    assert_eq!(j.name.as_deref(), Some(rel.as_str()));
    assert_eq!(&std::fs::read(me.path_in_share(rel)).unwrap(), bytes);
    drop((me, holder));
}

/// With full rescans an hour apart, a file written into a new subfolder is
/// listed within 2 s of its write (by notification), and withdrawn as
/// fast when removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_in_a_subfolder_is_listed_by_notification_and_withdrawn_on_removal() {
    let central = TestCentral::start(LONG_TTL).await;
    let p = TestPeer::start(&central.url, &[], |c| c.store.rescan_interval = HOUR).await;
    p.wait_joined().await;
    let dir = p.path_in_share("Photos/2026/June");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = test_bytes(300_000, 30);
    let id = blake3_hex(&bytes);
    std::fs::write(dir.join("beach.jpg"), &bytes).unwrap();
    let written = Instant::now();
    wait_for(
        "the new file to be listed",
        Duration::from_secs(2),
        || async { located(&central, &id).await.then_some(()) },
    )
    .await;
    eprintln!("listed {:?} after its write", written.elapsed());
    let files = p.api.list_files().await.unwrap().files;
    assert!(
        files.iter().any(|f| f.name == "Photos/2026/June/beach.jpg"),
        "{files:?}"
    );

    std::fs::remove_file(dir.join("beach.jpg")).unwrap();
    wait_for(
        "the removed file to be withdrawn",
        Duration::from_secs(2),
        || async { (!located(&central, &id).await).then_some(()) },
    )
    .await;
    // A whole folder removed: its files go too.
    std::fs::write(dir.join("dune.jpg"), b"dune").unwrap();
    let dune = blake3_hex(b"dune");
    wait_for("dune.jpg to be listed", Duration::from_secs(2), || async {
        located(&central, &dune).await.then_some(())
    })
    .await;
    std::fs::remove_dir_all(p.path_in_share("Photos")).unwrap();
    wait_for(
        "the removed folder's file to be withdrawn",
        Duration::from_secs(2),
        || async { (!located(&central, &dune).await).then_some(()) },
    )
    .await;
}

/// More changed paths at once than notifications are looked at one by
/// one: the watch falls back to a full rescan, and every file is listed
/// (with full rescans an hour apart, nothing else would find them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_overflow_falls_back_to_a_rescan() {
    let central = TestCentral::start(LONG_TTL).await;
    let p = TestPeer::start(&central.url, &[], |c| c.store.rescan_interval = HOUR).await;
    p.wait_joined().await;
    // Made in a hidden folder (not watched for sharing), then moved in at
    // once: 6,000 notifications within a moment, more than the 4,096
    // paths looked at one by one.
    let staging = p.path_in_share(".staging");
    std::fs::create_dir_all(&staging).unwrap();
    let target = p.path_in_share("Dump");
    std::fs::create_dir_all(&target).unwrap();
    let n = 6_000;
    for i in 0..n {
        std::fs::write(staging.join(format!("f{i}")), format!("dump {i}")).unwrap();
    }
    for i in 0..n {
        std::fs::rename(staging.join(format!("f{i}")), target.join(format!("f{i}"))).unwrap();
    }
    wait_for("every moved file to be listed", T, || async {
        (listed(&central).await == n).then_some(())
    })
    .await;
    assert_eq!(p.status().await.shared_files, n);
}

/// `get --folder`: a folder of 50 files of one holder, nested, fetched as
/// one job, byte-exact, in the same tree; a file beside the folder stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_50_files_is_fetched_as_one_job_with_its_tree() {
    let central = TestCentral::start(LONG_TTL).await;
    let holder = TestPeer::start(&central.url, &[], |_| {}).await;
    let me = TestPeer::start(&central.url, &[], |_| {}).await;
    let mut want = Vec::new();
    for i in 0..50u64 {
        let rel = format!("Trips/Lisbon 2026/day {}/img{i:02}.jpg", i % 5);
        let bytes = test_bytes(1_000 + i as usize * 997, i);
        holder.drop_file(&rel, &bytes);
        want.push((rel, bytes));
    }
    holder.drop_file("Trips/Porto/other.jpg", b"not in the folder");
    let last = blake3_hex(&want[49].1);
    wait_for("the holder's files to be listed", T, || async {
        located(&central, &last).await.then_some(())
    })
    .await;
    wait_for("all 51 files listed", T, || async {
        (listed(&central).await == 51).then_some(())
    })
    .await;
    let job = me
        .api
        .start_download(&by_folder("Trips/Lisbon 2026"))
        .await
        .expect("folder download");
    let total: u64 = want.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(job.bytes_total, Some(total));
    let job = finish(&me, &job.job_id, T).await;
    assert_eq!(job.state, JobState::Done, "{job:?}");
    assert_eq!(job.bytes_done, total);
    let share = me.path_in_share("");
    let mut got: Vec<(String, Vec<u8>)> = files_under(&share.join("Trips"))
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&share).unwrap().to_str().unwrap().to_owned();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(
        got.len(),
        50,
        "{:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
    assert!(got == want, "the fetched tree differs from the holder's");

    // A folder nobody shares: told at once.
    let (code, err) = refused(me.api.start_download(&by_folder("Trips/Nowhere")).await);
    assert_eq!(code, 404, "{err:?}");
}

/// A peer whose inventory is bigger than the central's message limit
/// joins in pages (all listed); one over CENTRAL_MAX_INVENTORY shares the
/// first files up to it and its status says how many are not listed and
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_inventories_join_in_pages_up_to_the_directory_limit() {
    let central = TestCentral::start_with(|c| {
        peerdex_testkit::central::lease(c, LONG_TTL);
        c.limits.max_message_bytes = 64 * 1024;
        c.limits.max_inventory = 1_500;
    })
    .await;
    let big = std::sync::Arc::new(ram_dir());
    // 1,200 entries of ~150 bytes: about three times the message limit.
    let files = library(&big.path().join("share"), 6, 200);
    let paged = TestPeer::start_in(big, &central.url, &[], |_| {}).await;
    wait_for("the paged inventory to be listed", T, || async {
        (listed(&central).await == 1_200).then_some(())
    })
    .await;
    for (rel, bytes) in files.iter().step_by(97) {
        assert!(
            located(&central, &blake3_hex(bytes)).await,
            "{rel} not listed"
        );
    }
    assert_eq!(paged.status().await.not_listed_files, 0);

    let over = std::sync::Arc::new(ram_dir());
    let share = over.path().join("share");
    std::fs::create_dir_all(share.join("Many")).unwrap();
    for i in 0..2_000 {
        std::fs::write(share.join(format!("Many/{i:04}.txt")), format!("over {i}")).unwrap();
    }
    let capped = TestPeer::start_in(over, &central.url, &[], |_| {}).await;
    let s = wait_for("the capped peer to say what is not listed", T, || async {
        let s = capped.status().await;
        (s.not_listed_files > 0).then_some(s)
    })
    .await;
    assert_eq!(s.shared_files, 2_000);
    assert_eq!(s.not_listed_files, 500);
    let why = s.not_listed_reason.unwrap_or_default();
    assert!(
        why.contains("CENTRAL_MAX_INVENTORY") && why.contains("1500"),
        "{why}"
    );
    assert_eq!(listed(&central).await, 2_700);
}
