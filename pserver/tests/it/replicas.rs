//! Replicas on the PServer side, over real servers: the replica space is
//! served like shared files (ranges, manifests, downloads from it) and
//! survives a restart (announced again, never a damaged copy); the pins
//! endpoint refuses bad requests before asking the directory; a bad
//! PSERVER_REPLICA_QUOTA_BYTES stops the binary with a message naming it.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use peerdex_proto::rest::{ApiError, JobState, PinList, PinRequest, PinStatus};
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::{self, locate_request::Target};

const LONG_TTL: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(40);
const MIB: u64 = 1 << 20;

/// A folder for a peer whose replica space already holds `files` (as a
/// finished fetch leaves them, but without an index: the peer hashes them
/// at start). Returns the folder.
fn root_with_replicas(files: &[(&str, &[u8])]) -> Arc<tempfile::TempDir> {
    let root = Arc::new(tempfile::tempdir().unwrap());
    let dir = root.path().join("data").join("replicas");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    root
}

/// The central's holders of `id`: (peer url, replica flag).
async fn holders_of(central: &TestCentral, id: &str) -> Vec<(String, bool)> {
    located(central, id).await.0
}

/// The central's view of `id`: holders (url, replica) and replication.
pub(crate) async fn located(
    central: &TestCentral,
    id: &str,
) -> (Vec<(String, bool)>, v1::Replication) {
    let mut c = DirectoryClient::connect(central.url.clone()).await.unwrap();
    let f = c
        .locate(v1::LocateRequest {
            target: Some(Target::FileId(id.to_owned())),
            max_holders: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .files
        .into_iter()
        .next();
    match f {
        Some(f) => (
            f.holders
                .into_iter()
                .map(|h| (h.peer_url, h.replica))
                .collect(),
            f.replication.unwrap_or_default(),
        ),
        None => (Vec::new(), v1::Replication::default()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_served_like_a_shared_file_and_outlives_a_restart() {
    let central = TestCentral::start(LONG_TTL).await;
    let bytes = test_bytes(3 * MIB as usize + 12_345, 41);
    let id = blake3_hex(&bytes);
    // A second "replica" whose bytes are not what its id says (damaged).
    let liar_id = blake3_hex(b"what it should be");
    let root = root_with_replicas(&[(&id, &bytes), (&liar_id, b"what it is instead")]);
    let quota = 64 * MIB;
    let a = volunteer_in(root, &central, quota).await;

    // Held as a replica: in status and its quota, not among the user's files.
    let s = a.status().await;
    assert_eq!(s.replica_quota_bytes, quota);
    assert_eq!(s.replica_used_bytes, bytes.len() as u64);
    assert_eq!(s.replicas.len(), 1, "{:?}", s.replicas);
    assert_eq!(s.replicas[0].file_id, id);
    assert_eq!(s.shared_files, 0);
    assert!(files_under(&a.share_dir).is_empty());
    // The damaged one was found at start and deleted, never announced.
    assert!(!a.data_path().join("replicas").join(&liar_id).exists());
    let r = a
        .http
        .get(format!("{}/peer/v1/files/{liar_id}", a.peer_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(holders_of(&central, &liar_id).await.is_empty());

    // Served by id, with ranges, like a shared file.
    let url = format!("{}/peer/v1/files/{id}", a.peer_url);
    let r = a
        .http
        .get(&url)
        .header("Range", "bytes=1048570-2097160")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1048570-2097160/{}", bytes.len()).as_str()
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &bytes[1_048_570..=2_097_160]);
    let head = a.http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        bytes.len().to_string().as_str()
    );

    // Announced to the directory, and another peer downloads it from the
    // replica (the only holder): manifest, ranges, verification.
    wait_for("the replica to be announced as one", T, || async {
        (holders_of(&central, &id).await == [(a.peer_url.clone(), true)]).then_some(())
    })
    .await;
    let b = TestPeer::start(&central.url, &[], |c| c.store.min_free_bytes = 0).await;
    b.wait_joined().await;
    let job = start_job(&b, &id).await;
    let done = finish(&b, &job.job_id, T).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let name = done.name.unwrap();
    assert_eq!(std::fs::read(b.path_in_share(&name)).unwrap(), bytes);

    // A restart: known from the index (nothing hashed), announced again.
    let hashed_first = a.status().await.files_hashed;
    assert_eq!(
        hashed_first, 2,
        "both replicas were hashed at the first start"
    );
    let root = a.stop().await;
    wait_for("a's holding to go with its Leave", T, || async {
        (holders_of(&central, &id).await.len() == 1).then_some(())
    })
    .await;
    let a = volunteer_in(root, &central, quota).await;
    let s = a.status().await;
    assert_eq!(s.files_hashed, 0, "an unchanged replica was hashed again");
    assert_eq!(s.replicas.len(), 1);
    wait_for("a (a replica) and b (an owner) to hold it", T, || async {
        let mut h = holders_of(&central, &id).await;
        h.sort();
        let mut want = vec![(a.peer_url.clone(), true), (b.peer_url.clone(), false)];
        want.sort();
        (h == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pin_requests_are_refused_before_the_directory_is_asked() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    a.wait_joined().await;
    // Raw: bodies the typed client cannot send (wrong types, not JSON,
    // the wrong method).
    let post = |body: serde_json::Value| {
        a.http
            .post(format!("{}/api/v1/pins", a.api_url))
            .json(&body)
            .send()
    };
    let id = "ab".repeat(32);
    for (body, says) in [
        (
            serde_json::json!({"file": id, "replicas": "three"}),
            "a whole number from 0 to 4294967295",
        ),
        (
            serde_json::json!({"file": id, "replicas": -1}),
            "a whole number from 0 to 4294967295",
        ),
        (
            serde_json::json!({"file": id, "replicas": 4294967296u64}),
            "a whole number from 0 to 4294967295",
        ),
        (serde_json::json!({"file": id}), "missing field `replicas`"),
        (serde_json::json!({"replicas": 3}), "missing field `file`"),
        (
            serde_json::json!({"file": id, "replicas": 3, "owner": "me"}),
            "unknown field `owner`",
        ),
        (
            serde_json::json!({"file": "../etc/passwd", "replicas": 3}),
            "file must be a file id",
        ),
        (
            serde_json::json!({"file": "", "replicas": 3}),
            "file must be a file id",
        ),
    ] {
        let r = post(body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: ApiError = r.json().await.unwrap();
        assert_eq!(e.code, "invalid_argument", "{body}");
        assert!(e.message.contains(says), "{body}: {}", e.message);
    }
    // Not JSON at all (415 without the JSON content type, 400 with it),
    // and the wrong method.
    let r = a
        .http
        .post(format!("{}/api/v1/pins", a.api_url))
        .body("replicas=3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = a
        .http
        .post(format!("{}/api/v1/pins", a.api_url))
        .header("content-type", "application/json")
        .body("replicas=3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = a
        .http
        .delete(format!("{}/api/v1/pins", a.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST");
    // A name no live peer carries.
    let req = PinRequest {
        file: "nobody-has-this.txt".into(),
        replicas: 3,
    };
    let (status, e) = refused(a.api.pin(&req).await);
    assert_eq!(status, 404);
    assert_eq!(e.code, "not_found");
}

#[test]
fn a_bad_quota_stops_the_binary_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (value, says) in [
        ("512", "PSERVER_REPLICA_QUOTA_BYTES (512) must be 0"),
        ("1GB", "--replica-quota-bytes"),
        ("-5", "--replica-quota-bytes"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pserver"))
            .current_dir(dir.path())
            .env("PSERVER_REPLICA_QUOTA_BYTES", value)
            .env("PSERVER_API_ADDR", "127.0.0.1:0")
            .env("PSERVER_PEER_ADDR", "127.0.0.1:0")
            .env("PSERVER_SHARE_DIR", dir.path().join("share"))
            .env("PSERVER_DATA_DIR", dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
    }
}

// ── with the directory's planner ────────────────────────────────────────────

/// A central whose leases, heartbeats (every second), planner (every half
/// second) and grace before dropping extras (a second) are quick.
async fn quick_central() -> TestCentral {
    TestCentral::start_with(|c| {
        c.lease_ttl = Duration::from_secs(3);
        c.heartbeat_interval = Duration::from_secs(1);
        c.replica_grace = Duration::from_secs(1);
    })
    .await
}

/// A peer offering `quota` bytes of replica space, in fresh folders.
pub(crate) async fn volunteer(central: &TestCentral, quota: u64) -> TestPeer {
    volunteer_in(Arc::new(tempfile::tempdir().unwrap()), central, quota).await
}

/// A peer offering `quota` bytes of replica space over the folders of
/// `root`, joined.
async fn volunteer_in(root: Arc<tempfile::TempDir>, central: &TestCentral, quota: u64) -> TestPeer {
    let p = TestPeer::start_in(root, &central.url, &[], |c| {
        c.replicas.quota_bytes = quota;
        c.store.min_free_bytes = 0;
    })
    .await;
    p.wait_joined().await;
    p
}

pub(crate) async fn pin(p: &TestPeer, file: &str, replicas: u32) -> PinStatus {
    let req = PinRequest {
        file: file.into(),
        replicas,
    };
    p.api
        .pin(&req)
        .await
        .unwrap_or_else(|e| panic!("pin {file} to {replicas}: {e:?}"))
}

pub(crate) async fn pins(p: &TestPeer) -> PinList {
    p.api.pins().await.unwrap()
}

async fn metrics(p: &TestPeer) -> String {
    p.http
        .get(format!("{}/metrics", p.api_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Wait until the central's holders of `id` are exactly `want` (any order).
async fn wait_holders(central: &TestCentral, id: &str, what: &str, want: &[(&TestPeer, bool)]) {
    let mut want: Vec<(String, bool)> =
        want.iter().map(|(p, r)| (p.peer_url.clone(), *r)).collect();
    want.sort();
    wait_for(what, T, || async {
        let mut h = holders_of(central, id).await;
        h.sort();
        (h == want).then_some(())
    })
    .await;
}

/// The peers of `all` that hold `id` as a replica, per the central.
async fn replica_holders<'a>(
    central: &TestCentral,
    id: &str,
    all: &'a [TestPeer],
) -> Vec<&'a TestPeer> {
    let h = holders_of(central, id).await;
    all.iter()
        .filter(|p| h.contains(&(p.peer_url.clone(), true)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_of_three_gets_three_live_copies_on_three_peers() {
    let central = quick_central().await;
    let owner = volunteer(&central, 64 * MIB).await;
    let mut vols = Vec::new();
    for _ in 0..4 {
        vols.push(volunteer(&central, 64 * MIB).await);
    }
    let bytes = test_bytes(3 * MIB as usize + 777, 7);
    let info = upload_ok(&owner, "keep-me.bin", bytes.clone()).await;
    let id = info.file_id.clone();

    // By name: the owner's own file.
    let p = pin(&owner, "keep-me.bin", 3).await;
    assert_eq!(
        (p.file_id.as_str(), p.pinned, p.replication.wanted),
        (id.as_str(), 3, 3)
    );

    // Three live copies on three distinct peers: the owner's and two
    // replicas on two volunteers.
    let live = wait_for("3 live copies", T, || async {
        let h = holders_of(&central, &id).await;
        (h.len() == 3).then_some(h)
    })
    .await;
    let urls: std::collections::BTreeSet<&str> = live.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(urls.len(), 3, "{live:?}");
    assert!(live.contains(&(owner.peer_url.clone(), false)), "{live:?}");
    let holders = replica_holders(&central, &id, &vols).await;
    assert_eq!(holders.len(), 2, "{live:?}");

    // Each replica holder has the very bytes, serves them, and keeps them
    // out of its share folder; the others hold nothing.
    for v in &vols {
        let s = v.status().await;
        if holders.iter().any(|h| h.peer_url == v.peer_url) {
            assert_eq!(s.replicas.len(), 1);
            assert_eq!(s.replicas[0].file_id, id);
            assert_eq!(s.replicas[0].name, "keep-me.bin");
            assert_eq!(s.replica_used_bytes, bytes.len() as u64);
            let on_disk = std::fs::read(v.data_path().join("replicas").join(&id)).unwrap();
            assert_eq!(blake3_hex(&on_disk), id);
            let served = v
                .http
                .get(format!("{}/peer/v1/files/{id}", v.peer_url))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(&served[..], &bytes[..]);
            let m = metrics(v).await;
            assert!(
                m.contains("peerdex_pserver_replica_fetches_total{result=\"done\"} 1\n"),
                "{m}"
            );
            assert!(
                m.contains(&format!("peerdex_pserver_replica_bytes {}\n", bytes.len())),
                "{m}"
            );
        } else {
            assert!(s.replicas.is_empty(), "{s:?}");
        }
        assert!(files_under(&v.share_dir).is_empty());
        assert!(files_under(&v.data_path().join("replicas").join("partial")).is_empty());
    }

    // The pin reports ok, and search shows the copies wanted.
    wait_for("the pin to say ok", T, || async {
        let l = pins(&owner).await;
        (l.pins.len() == 1
            && l.pins[0].replication.state == "ok"
            && l.pins[0].replication.live == 3)
            .then_some(())
    })
    .await;
    let hit = search(&owner, "keep").await.hits;
    assert_eq!(
        (hit.len(), hit[0].replicas_wanted, hit[0].holders),
        (1, 3, 3)
    );

    // The owner leaves: a newcomer still gets the file, from the replicas.
    owner.stop().await;
    let c = TestPeer::start(&central.url, &[], |c| c.store.min_free_bytes = 0).await;
    c.wait_joined().await;
    let job = start_job(&c, &id).await;
    let done = finish(&c, &job.job_id, T).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(
        std::fs::read(c.path_in_share("keep-me.bin")).unwrap(),
        bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volunteer_without_room_declines_and_another_is_asked() {
    let central = quick_central().await;
    let owner = volunteer(&central, 0).await;
    // The roomiest quota, so the planner asks it first; but its disk
    // cannot take the file beside PSERVER_MIN_FREE_BYTES.
    let full = TestPeer::start(&central.url, &[], |c| {
        c.replicas.quota_bytes = 1 << 40;
        c.store.min_free_bytes = u64::MAX / 4;
    })
    .await;
    full.wait_joined().await;
    let roomy = volunteer(&central, 64 * MIB).await;
    let bytes = test_bytes(2 * MIB as usize, 8);
    let info = upload_ok(&owner, "needs-a-home.bin", bytes.clone()).await;
    let p = pin(&owner, &info.file_id, 2).await;
    assert_eq!(p.name, "needs-a-home.bin");

    wait_holders(
        &central,
        &info.file_id,
        "the roomy volunteer to hold the replica",
        &[(&owner, false), (&roomy, true)],
    )
    .await;
    // The full one was asked, said no (why: in its log), and holds nothing.
    let m = metrics(&full).await;
    assert!(
        m.contains("peerdex_pserver_replica_fetches_total{result=\"refused\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("peerdex_pserver_replica_fetches_total{result=\"done\"} 0\n"),
        "{m}"
    );
    let s = full.status().await;
    assert!(
        s.replicas.is_empty() && s.replica_fetches.is_empty(),
        "{s:?}"
    );
    assert!(
        !full
            .data_path()
            .join("replicas")
            .join(&info.file_id)
            .exists()
    );
    assert!(files_under(&full.data_path().join("replicas").join("partial")).is_empty());
    assert_eq!(roomy.status().await.replica_used_bytes, bytes.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_a_pin_drops_replicas_never_an_owners_copy() {
    let central = quick_central().await;
    let owner = volunteer(&central, 64 * MIB).await;
    let mut vols = Vec::new();
    for i in 0..3 {
        let v = volunteer(&central, 64 * MIB).await;
        // Each volunteer shares a file of its own, which no DROP touches.
        v.drop_file(&format!("mine-{i}.txt"), format!("mine {i}").as_bytes());
        vols.push(v);
    }
    for v in &vols {
        wait_for("the volunteer's own file", T, || async {
            (v.status().await.shared_files == 1).then_some(())
        })
        .await;
    }
    let bytes = test_bytes(MIB as usize + 5, 9);
    let id = upload_ok(&owner, "pinned.bin", bytes.clone()).await.file_id;
    pin(&owner, &id, 4).await;
    wait_for("4 live copies", T, || async {
        (holders_of(&central, &id).await.len() == 4).then_some(())
    })
    .await;

    // 4 → 2: two replicas go once the grace is over; the owner's stays.
    let p = pin(&owner, &id, 2).await;
    assert_eq!((p.pinned, p.replication.wanted), (2, 2));
    let kept = wait_for("2 live copies", T, || async {
        let h = holders_of(&central, &id).await;
        (h.len() == 2).then_some(h)
    })
    .await;
    assert!(kept.contains(&(owner.peer_url.clone(), false)), "{kept:?}");

    // Unpinned: every replica goes; the owner keeps its copy.
    let p = pin(&owner, &id, 0).await;
    assert_eq!((p.pinned, p.replication.wanted), (0, 0));
    wait_holders(&central, &id, "only the owner", &[(&owner, false)]).await;
    for (i, v) in vols.iter().enumerate() {
        wait_for("the replica to be deleted", T, || async {
            (v.status().await.replicas.is_empty()).then_some(())
        })
        .await;
        assert!(!v.data_path().join("replicas").join(&id).exists());
        let s = v.status().await;
        assert_eq!((s.replica_used_bytes, s.shared_files), (0, 1));
        assert_eq!(
            std::fs::read(v.path_in_share(&format!("mine-{i}.txt"))).unwrap(),
            format!("mine {i}").as_bytes()
        );
    }
    let drops: u32 = {
        let mut n = 0;
        for v in &vols {
            let m = metrics(v).await;
            n += u32::from(m.contains("peerdex_pserver_replica_drops_total 1\n"));
        }
        n
    };
    assert_eq!(drops, 3, "each volunteer dropped its one replica");
    assert_eq!(
        std::fs::read(owner.path_in_share("pinned.bin")).unwrap(),
        bytes
    );
    assert!(pins(&owner).await.pins.is_empty());
}

/// The replica partials of `id` in a peer's replica space.
fn replica_partials(p: &TestPeer, id: &str) -> Vec<std::path::PathBuf> {
    files_under(&p.data_path().join("replicas").join("partial"))
        .into_iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(id))
        })
        .collect()
}

/// A FETCH the directory stops asking for (the pin is lifted while the
/// volunteer fetches) is stopped within a few heartbeats, long before it
/// could have finished: nothing is held, announced or left on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_no_longer_asked_for_is_stopped_and_leaves_nothing() {
    let central = quick_central().await;
    let owner = volunteer(&central, 0).await;
    // 8 MiB at 200 kB/s: about 42 s to finish.
    let slow = TestPeer::start(&central.url, &[], |c| {
        c.replicas.quota_bytes = 64 * MIB;
        c.store.min_free_bytes = 0;
        c.downloads.max_download_bps = 200_000;
    })
    .await;
    slow.wait_joined().await;
    let id = upload_ok(&owner, "slow.bin", test_bytes(8 * MIB as usize, 11))
        .await
        .file_id;
    pin(&owner, &id, 2).await;
    wait_for("the volunteer to be fetching", T, || async {
        let s = slow.status().await;
        s.replica_fetches
            .iter()
            .any(|f| f.file_id == id && f.bytes_done > 0)
            .then_some(())
    })
    .await;
    assert!(!replica_partials(&slow, &id).is_empty());

    let p = pin(&owner, &id, 0).await;
    assert_eq!(p.replication.wanted, 0);
    // Stopped, not finished: what decides is the fetch's outcome (counted
    // as cancelled below, and no replica kept), not how long it took.
    wait_for("the fetch to stop", T, || async {
        slow.status().await.replica_fetches.is_empty().then_some(())
    })
    .await;
    wait_for("its partial to be deleted", T, || async {
        replica_partials(&slow, &id).is_empty().then_some(())
    })
    .await;
    let s = slow.status().await;
    assert!(s.replicas.is_empty(), "{:?}", s.replicas);
    assert_eq!(s.replica_used_bytes, 0);
    assert_eq!(
        holders_of(&central, &id).await,
        [(owner.peer_url.clone(), false)]
    );
    assert!(
        metrics(&slow)
            .await
            .contains("peerdex_pserver_replica_fetches_total{result=\"cancelled\"} 1\n")
    );
}

/// An owner (no replica space) uploads `bytes` as `name` and pins it to 2
/// copies; a volunteer then holds the one replica. Returns (owner,
/// volunteer, file id).
async fn replicated_once(
    central: &TestCentral,
    name: &str,
    bytes: &[u8],
) -> (TestPeer, TestPeer, String) {
    let owner = volunteer(central, 0).await;
    let vol = volunteer(central, 64 * MIB).await;
    let id = upload_ok(&owner, name, bytes.to_vec()).await.file_id;
    pin(&owner, &id, 2).await;
    wait_holders(
        central,
        &id,
        "a replica on the volunteer",
        &[(&owner, false), (&vol, true)],
    )
    .await;
    (owner, vol, id)
}

/// `get` of a file this peer holds as a replica makes the user's copy
/// from it (verified again, no transfer), even when no other peer holds
/// it any more; the file is then announced as the user's and the replica
/// space is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_of_a_replica_held_here_needs_no_other_peer() {
    let central = quick_central().await;
    let bytes = test_bytes(3 * MIB as usize + 7, 12);
    let (owner, vol, id) = replicated_once(&central, "last copy.bin", &bytes).await;
    owner.stop().await;
    wait_holders(&central, &id, "the volunteer alone", &[(&vol, true)]).await;

    // By name: the directory lists no holder but this peer.
    // (POST /downloads answers 202 whenever it takes the request.)
    let j = vol
        .api
        .start_download(&by_name("last copy.bin"))
        .await
        .unwrap();
    let j = finish(&vol, &j.job_id, T).await;
    assert_eq!(j.state, JobState::Done, "{:?}", j.error);
    assert_eq!(j.name.as_deref(), Some("last copy.bin"));
    assert_eq!(
        std::fs::read(vol.path_in_share("last copy.bin")).unwrap(),
        bytes
    );
    let s = vol.status().await;
    assert!(s.replicas.is_empty(), "{:?}", s.replicas);
    assert_eq!((s.replica_used_bytes, s.shared_files), (0, 1));
    assert!(!vol.data_path().join("replicas").join(&id).exists());
    wait_holders(
        &central,
        &id,
        "the volunteer as the file's owner",
        &[(&vol, false)],
    )
    .await;
    // Asked again by id: it is the user's file now, done at once.
    let j = start_job(&vol, &id).await;
    assert_eq!(j.state, JobState::Done);
}

/// A replica damaged on disk is never made the user's copy: the `get`
/// fails saying so, and the replica is deleted and withdrawn, so the
/// planner sees the copy missing and has a good one fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_replica_is_never_made_the_users_copy() {
    let central = quick_central().await;
    let bytes = test_bytes(MIB as usize + 3, 13);
    let (owner, vol, id) = replicated_once(&central, "fragile.bin", &bytes).await;
    // Bit rot: same size, other bytes.
    let path = vol.data_path().join("replicas").join(&id);
    let mut damaged = bytes.clone();
    damaged[MIB as usize / 2] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();

    let j = start_job(&vol, &id).await;
    let j = finish(&vol, &j.job_id, T).await;
    assert_eq!(j.state, JobState::Failed);
    let error = j.error.unwrap_or_default();
    assert!(error.contains("damaged"), "{error}");
    assert!(!vol.path_in_share("fragile.bin").exists());
    assert_eq!(vol.status().await.shared_files, 0);
    // Withdrawn, the copy is missing for the planner, which asks the
    // volunteer again: a good replica, fetched a second time.
    wait_for("a good replica again", T, || async {
        let m = metrics(&vol).await;
        (m.contains("peerdex_pserver_replica_fetches_total{result=\"done\"} 2\n")
            && std::fs::read(&path).is_ok_and(|b| b == bytes))
        .then_some(())
    })
    .await;
    wait_holders(
        &central,
        &id,
        "the volunteer holding a replica again",
        &[(&owner, false), (&vol, true)],
    )
    .await;
}
