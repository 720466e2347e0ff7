//! Replicas on the PServer side, over real servers: the replica space is
//! served like shared files (ranges, manifests, downloads from it) and
//! survives a restart (announced again, never a damaged copy); the pins
//! endpoint refuses bad requests before asking the directory; a bad
//! PSERVER_REPLICA_QUOTA_BYTES stops the binary with a message naming it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use peerdex_proto::rest::{ApiError, JobState};
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
    let mut c = DirectoryClient::connect(central.url.clone()).await.unwrap();
    let files = c
        .locate(v1::LocateRequest {
            target: Some(Target::FileId(id.to_owned())),
            max_holders: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .files;
    files
        .into_iter()
        .flat_map(|f| f.holders)
        .map(|h| (h.peer_url, h.replica))
        .collect()
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
    let a = TestPeer::start_in(root, &central.url, &[], |c| {
        c.replica_quota_bytes = quota;
        c.min_free_bytes = 0;
    })
    .await;
    a.wait_joined().await;

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
    wait_for("the replica to be announced", T, || async {
        (holders_of(&central, &id).await.len() == 1).then_some(())
    })
    .await;
    let b = TestPeer::start(&central.url, &[], |c| c.min_free_bytes = 0).await;
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
    let a = TestPeer::start_in(root, &central.url, &[], |c| {
        c.replica_quota_bytes = quota;
        c.min_free_bytes = 0;
    })
    .await;
    a.wait_joined().await;
    let s = a.status().await;
    assert_eq!(s.files_hashed, 0, "an unchanged replica was hashed again");
    assert_eq!(s.replicas.len(), 1);
    wait_for("a and b to hold it", T, || async {
        (holders_of(&central, &id).await.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pin_requests_are_refused_before_the_directory_is_asked() {
    let central = TestCentral::start(LONG_TTL).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    a.wait_joined().await;
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
            "expected u32",
        ),
        (
            serde_json::json!({"file": id, "replicas": -1}),
            "expected u32",
        ),
        (
            serde_json::json!({"file": id, "replicas": 4294967296u64}),
            "expected u32",
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
    // Not JSON at all, and the wrong method.
    let r = a
        .http
        .post(format!("{}/api/v1/pins", a.api_url))
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
    let r = post(serde_json::json!({"file": "nobody-has-this.txt", "replicas": 3}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<ApiError>().await.unwrap().code, "not_found");
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
