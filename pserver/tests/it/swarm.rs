//! Swarming downloads over real PServers: several holders at once, a holder
//! serving a corrupt chunk, a stalled holder, a restart of the downloading
//! peer, every holder killed and coming back, and cancel.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use peerdex_proto::rest::{Job, JobState, SourceProgress};

const LONG_TTL: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(40);
const MIB: usize = 1 << 20;

fn source<'a>(j: &'a Job, peer_id: &str) -> Option<&'a SourceProgress> {
    j.sources.iter().find(|s| s.peer_id == peer_id)
}

fn total_chunks(j: &Job) -> u64 {
    j.sources.iter().map(|s| s.chunks).sum()
}

fn partial_files(data: &Path) -> Vec<PathBuf> {
    files_under(&data.join("partial"))
}

/// Wait until `p` sees `n` holders of `id` (searching by `q`).
async fn wait_holders(p: &TestPeer, q: &str, id: &str, n: u32) {
    wait_for("the holders to be published", T, || async {
        (holders(p, q, id).await >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_holders_one_rotten_chunk_the_others_finish_and_it_withdraws() {
    let central = TestCentral::start(LONG_TTL).await;
    // Two slow honest holders and a fast one whose copy of the last chunk is
    // corrupt: the fast one finishes its first chunks long before the slow
    // ones and so is the one that takes (and fails) the last chunk.
    let a = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 1_000_000).await;
    let b = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 1_000_000).await;
    let c = TestPeer::start(&central.url, &[], |_| {}).await;
    let d = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    let bytes = test_bytes(6 * MIB + 12_345, 61);
    let id = blake3_hex(&bytes);
    for p in [&a, &b, &c] {
        upload_ok(p, "swarm-corrupt.bin", bytes.clone()).await;
    }
    flip_in_place(
        &c.path_in_share("swarm-corrupt.bin"),
        &[6 * MIB as u64 + 100],
    );
    let bad_peer = c.status().await.peer_id;
    wait_holders(&d, "swarm corrupt", &id, 3).await;

    let job = start_job(&d, &id).await;
    let end = finish(&d, &job.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(
        std::fs::read(d.path_in_share("swarm-corrupt.bin")).unwrap(),
        bytes
    );

    // Each of the 7 chunks was kept exactly once. The corrupt holder never
    // sent a byte of its rotten chunk (it verifies before serving): it
    // answered 404 with the reason, was dropped for this job, and withdrew
    // the file from the directory.
    assert_eq!(total_chunks(&end), 7, "{:#?}", end.sources);
    let strikes: u32 = end.sources.iter().map(|s| s.strikes).sum();
    assert_eq!(strikes, 0, "{:#?}", end.sources);
    // If the corrupt holder was asked for its rotten chunk (not always: the
    // chunk that confirms the manifest may come from another), it refused
    // with the reason and withdrew: the downloader replaces it as a holder.
    let asked = source(&end, &bad_peer).and_then(|s| s.dropped.clone());
    if let Some(why) = &asked {
        assert!(why.contains("failed verification"), "{why}");
    }
    let holders_now = if asked.is_some() { 3 } else { 4 };
    wait_holders_exactly(&d, "swarm corrupt", &id, holders_now).await;
    assert!(end.sources.len() >= 2, "{:#?}", end.sources);
    // Nothing unverified is left behind.
    assert!(partial_files(d.data_path()).is_empty());
    assert!(files_under(&d.data_path().join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_holder_does_not_stall_the_job() {
    let central = TestCentral::start(LONG_TTL).await;
    let fast = TestPeer::start(&central.url, &[], |_| {}).await;
    // A few bytes per second: its first bytes come after ~50 s.
    let slow = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 10).await;
    let d = TestPeer::start(&central.url, &[], |c| {
        c.downloads.stall_timeout = Duration::from_secs(1);
    })
    .await;
    let bytes = test_bytes(5 * MIB + 1, 62);
    let id = blake3_hex(&bytes);
    upload_ok(&slow, "stall.bin", bytes.clone()).await;
    upload_ok(&fast, "stall.bin", bytes.clone()).await;
    let slow_peer = slow.status().await.peer_id;
    wait_holders(&d, "stall", &id, 2).await;

    let job = start_job(&d, &id).await;
    // Far sooner than the slow holder could send a single chunk.
    let end = finish(&d, &job.job_id, Duration::from_secs(30)).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(std::fs::read(d.path_in_share("stall.bin")).unwrap(), bytes);
    let s = source(&end, &slow_peer).expect("the slow holder was asked");
    // At most the 1-byte last chunk, if it was the one asked to confirm
    // the manifest; never one of the 1 MiB chunks.
    assert!(s.bytes <= 1 && s.chunks <= 1, "{s:#?}");
    assert_eq!(total_chunks(&end), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_the_downloading_peer_resumes_the_job() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 1_500_000).await;
    let b = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 1_500_000).await;
    let d = TestPeer::start(&central.url, &[], |_| {}).await;
    let bytes = test_bytes(14 * MIB, 63);
    let id = blake3_hex(&bytes);
    upload_ok(&a, "resume.bin", bytes.clone()).await;
    upload_ok(&b, "resume.bin", bytes.clone()).await;
    wait_holders(&d, "resume", &id, 2).await;

    let job = start_job(&d, &id).await;
    // Both sources report their own rate while the job runs.
    let running = wait_for("two sources with a rate and 3 chunks in", T, || async {
        let j = common::job(&d, &job.job_id).await;
        assert!(!j.state.is_final(), "{j:#?}");
        let rated = j.sources.iter().filter(|s| s.rate_bps > 0).count();
        (rated == 2 && j.bytes_done >= 3 * MIB as u64).then_some(j)
    })
    .await;
    assert!(running.source.is_some());

    let root = d.stop().await;
    assert!(
        !partial_files(&root.path().join("data")).is_empty(),
        "the partial was not kept"
    );
    let d = TestPeer::start_in(root, &central.url, &[], |_| {}).await;
    // The restarted peer resumes by itself: a new job shows up.
    let resumed = wait_for("the job to be resumed", T, || async {
        let list = d.api.list_downloads().await.unwrap();
        list.jobs
            .into_iter()
            .find(|j| j.file_id.as_deref() == Some(id.as_str()))
    })
    .await;
    assert!(resumed.bytes_done >= 3 * MIB as u64, "{resumed:#?}");
    let end = finish(&d, &resumed.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(std::fs::read(d.path_in_share("resume.bin")).unwrap(), bytes);
    // Chunks verified before the restart were not fetched again.
    assert!(total_chunks(&end) <= 14 - 3, "{:#?}", end.sources);
    assert!(partial_files(d.data_path()).is_empty());
    // Asking again is done at once.
    assert_eq!(start_job(&d, &id).await.state, JobState::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_holders_killed_fails_keeping_chunks_then_resumes() {
    let central = TestCentral::start(LONG_TTL).await;
    let bytes = test_bytes(8 * MIB, 64);
    let id = blake3_hex(&bytes);
    let mut h1 = ChildPeer::spawn(&central.url, &[("PSERVER_MAX_UPLOAD_BPS", "1000000")]);
    let mut h2 = ChildPeer::spawn(&central.url, &[("PSERVER_MAX_UPLOAD_BPS", "1000000")]);
    std::fs::write(h1.share_dir().join("dies.bin"), &bytes).unwrap();
    std::fs::write(h2.share_dir().join("dies.bin"), &bytes).unwrap();
    let d = TestPeer::start(&central.url, &[], |_| {}).await;
    wait_holders(&d, "dies", &id, 2).await;

    let job = start_job(&d, &id).await;
    wait_for("two chunks to be verified", T, || async {
        let j = common::job(&d, &job.job_id).await;
        (j.bytes_done >= 2 * MIB as u64).then_some(())
    })
    .await;
    h1.kill9();
    h2.kill9();
    let end = finish(&d, &job.job_id, T).await;
    assert_eq!(end.state, JobState::Failed, "{end:#?}");
    let why = end.error.clone().unwrap();
    assert!(why.contains("kept") && why.contains("resume"), "{why}");
    let kept = end.bytes_done;
    assert!(kept >= 2 * MIB as u64, "{end:#?}");
    let partial = partial_files(d.data_path());
    assert!(
        partial.iter().any(|p| p.ends_with(format!("{id}.part"))),
        "{partial:?}"
    );
    assert!(
        files_under(&d.share_dir).is_empty(),
        "a partial file is visible"
    );

    // A holder comes back (the same content, another peer): asking again
    // resumes from the kept chunks.
    let h3 = TestPeer::start(&central.url, &[], |_| {}).await;
    upload_ok(&h3, "dies.bin", bytes.clone()).await;
    wait_holders(&d, "dies", &id, 3).await;
    let again = start_job(&d, &id).await;
    assert!(again.job_id != job.job_id);
    let end = finish(&d, &again.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(std::fs::read(d.path_in_share("dies.bin")).unwrap(), bytes);
    assert_eq!(
        total_chunks(&end),
        8 - kept / MIB as u64,
        "{:#?}",
        end.sources
    );
    assert!(partial_files(d.data_path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_discards_the_partial_and_a_second_request_joins_the_job() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 1_000_000).await;
    let d = TestPeer::start(&central.url, &[], |_| {}).await;
    let bytes = test_bytes(6 * MIB, 65);
    let id = blake3_hex(&bytes);
    upload_ok(&a, "cancel.bin", bytes).await;
    wait_holders(&d, "cancel", &id, 1).await;
    let job = start_job(&d, &id).await;
    // The same file asked again while running: the same job.
    assert_eq!(start_job(&d, &id).await.job_id, job.job_id);
    wait_for("a chunk to be verified", T, || async {
        let j = common::job(&d, &job.job_id).await;
        (j.bytes_done >= MIB as u64).then_some(())
    })
    .await;
    assert!(!partial_files(d.data_path()).is_empty());
    let cancelled = d.api.cancel(&job.job_id).await.unwrap();
    assert_eq!(cancelled.job_id, job.job_id);
    let end = finish(&d, &job.job_id, T).await;
    assert_eq!(end.state, JobState::Cancelled, "{end:#?}");
    wait_for("the partial to be discarded", T, || async {
        partial_files(d.data_path()).is_empty().then_some(())
    })
    .await;
    assert!(files_under(&d.share_dir).is_empty());
}

fn bitmap_bits(path: &Path) -> u32 {
    std::fs::read(path)
        .map(|b| b.iter().map(|x| x.count_ones()).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloader_killed_9_resumes_from_its_last_checkpoint() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 1_500_000).await;
    let b = TestPeer::start(&central.url, &[], |c| c.peer_api.max_upload_bps = 1_500_000).await;
    let bytes = test_bytes(12 * MIB, 66);
    let id = blake3_hex(&bytes);
    upload_ok(&a, "crash.bin", bytes.clone()).await;
    upload_ok(&b, "crash.bin", bytes.clone()).await;
    wait_holders(&a, "crash", &id, 2).await;

    let root = tempfile::tempdir().unwrap();
    let mut d = ChildPeer::spawn_in(root.path(), &central.url, &[]);
    let job = start_job(&d, &id).await;
    assert_eq!(job.state, JobState::Downloading, "{job:#?}");
    // Wait for a checkpoint on disk that records a few verified chunks.
    let bitmap = root.path().join(format!("data/partial/{id}.bitmap"));
    wait_for("a checkpoint with 3 chunks", T, || async {
        (bitmap_bits(&bitmap) >= 3).then_some(())
    })
    .await;
    d.kill9();
    let kept = bitmap_bits(&bitmap);
    assert!(kept < 12, "finished before the kill");
    assert!(files_under(&root.path().join("share")).is_empty());

    let d = ChildPeer::spawn_in(root.path(), &central.url, &[]);
    let resumed = wait_for("the job to be resumed", T, || async {
        let list = d.api.list_downloads().await.unwrap();
        list.jobs
            .into_iter()
            .find(|j| j.file_id.as_deref() == Some(id.as_str()))
    })
    .await;
    let end = finish(&d, &resumed.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(
        std::fs::read(root.path().join("share/crash.bin")).unwrap(),
        bytes
    );
    // Only what the last checkpoint did not record was fetched again.
    assert!(
        total_chunks(&end) <= 12 - u64::from(kept),
        "kept {kept}: {:#?}",
        end.sources
    );
    assert!(partial_files(&root.path().join("data")).is_empty());
}
