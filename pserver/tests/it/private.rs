//! Private files (issue 28) over real servers: encrypted by the owner's
//! PServer, kept as ciphertext by volunteers, fetched by ticket from the
//! replicas alone after the owner is killed; the plaintext and its name
//! found nowhere but where they belong (a marker searched on every disk
//! and log); bad tickets and tampered ciphertexts refused with nothing
//! written.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use peerdex_proto::private::PrivateOrigin;
use peerdex_proto::rest::{JobState, PinRequest};
use peerdex_proto::ticket::Ticket;

const T: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;
/// What the plaintext carries (and its name): searched for everywhere.
const MARKER: &[u8] = b"PLAINTEXT-MARKER-q7Zx";
const NAME_MARKER: &str = "tax-return-NAMEMARKER-k3Pw.pdf";

/// A plaintext of `len` bytes that carries [`MARKER`] every 64 KiB.
fn plaintext(len: usize) -> Vec<u8> {
    let mut b = test_bytes(len, 28);
    for at in (0..len.saturating_sub(MARKER.len())).step_by(64 * 1024) {
        b[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    b
}

/// Every file under `dir` (recursively) whose name or bytes contain
/// either marker, except under the paths of `except`.
fn leaks(dir: &Path, except: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if except.iter().any(|x| p.starts_with(x)) {
                continue;
            }
            if p.to_string_lossy().contains("NAMEMARKER") {
                found.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && (contains(&bytes, MARKER) || contains(&bytes, NAME_MARKER.as_bytes()))
            {
                found.push(p);
            }
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The central's quick settings: 3 s leases, 1 s heartbeats.
async fn quick_central() -> TestCentral {
    TestCentral::start_with(|c| {
        c.lease_ttl = Duration::from_secs(3);
        c.heartbeat_interval = Duration::from_secs(1);
        c.replica_grace = Duration::from_secs(1);
    })
    .await
}

/// Live holders of `id` at the central: (peer url, replica).
async fn holders_at(central: &TestCentral, id: &str) -> Vec<(String, bool)> {
    crate::replicas::located(central, id).await.0
}

/// A private upload with 3 wanted copies: 2 then 3 volunteers keep the
/// ciphertext; kill -9 of the owner; a fourth peer fetches by ticket from
/// the replicas alone, byte-exact, with `peerdex get TICKET -o PATH`.
/// The markers appear on no volunteer's disk, not in the central's data
/// folder, not in the owner's data folder or log, and on the fourth peer
/// only in its private folder and at PATH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_files_reach_replicas_and_readers_as_ciphertext_only() {
    let central = quick_central().await;
    let mut owner = ChildPeer::spawn(&central.url, &[("RUST_LOG", "debug")]);
    let mut volunteers = Vec::new();
    for _ in 0..3 {
        volunteers.push(crate::replicas::volunteer(&central, 64 * MIB as u64).await);
    }
    let plain = plaintext(3 * MIB + 4321);
    let up = owner
        .api
        .upload_private(NAME_MARKER, plain.len() as u64, plain.clone().into())
        .await
        .expect("private upload");
    assert_eq!(up.name, NAME_MARKER);
    assert_eq!(up.size, plain.len() as u64);
    assert_eq!(up.origin, PrivateOrigin::Owned);
    let ticket: Ticket = up.ticket.parse().expect("a ticket");
    assert_eq!(ticket.file_id.to_hex(), up.file_id);
    assert!(up.ciphertext_size > up.size);
    let id = up.file_id.clone();
    owner
        .api
        .pin(&PinRequest {
            file: id.clone(),
            replicas: 3,
        })
        .await
        .expect("pin");
    wait_for("3 live copies (the owner's and 2 replicas)", T, || async {
        (holders_at(&central, &id).await.len() == 3).then_some(())
    })
    .await;

    owner.kill9();
    wait_for("3 replicas on volunteers, the owner gone", T, || async {
        let h = holders_at(&central, &id).await;
        (h.len() == 3 && h.iter().all(|(_, replica)| *replica)).then_some(())
    })
    .await;

    // The fourth peer: a child process with its log, to read every line.
    let reader = ChildPeer::spawn(&central.url, &[("RUST_LOG", "debug")]);
    wait_for("the reader to join", T, || async {
        reader.status().await.lease_age_secs
    })
    .await;
    // Not found by name; `get ID` says it needs its ticket.
    let hits = search(&reader, "NAMEMARKER").await;
    assert!(hits.hits.is_empty(), "{hits:?}");
    let hits = search(&reader, "tax").await;
    assert!(hits.hits.is_empty(), "{hits:?}");
    let (code, e) = refused(reader.api.start_download(&by_id(&id)).await);
    assert_eq!((code, e.code.as_str()), (403, "needs_ticket"), "{e:?}");
    assert!(e.message.contains("ticket"), "{e:?}");

    // `peerdex get TICKET -o PATH`, the CLI as users run it.
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("copy.pdf");
    let cli = tokio::process::Command::new(peerdex_testkit::process::bin("peerdex"))
        .args([
            "--pserver",
            &reader.api_url,
            "--json",
            "get",
            &up.ticket,
            "-o",
        ])
        .arg(&out)
        .env_clear()
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["job"]["state"], "done", "{report}");
    assert_eq!(report["job"]["file_id"], id.as_str(), "{report}");
    assert_eq!(std::fs::read(&out).unwrap(), plain, "byte-exact at -o PATH");
    let private_dir = reader.root.join("data").join("private");
    assert_eq!(
        std::fs::read(private_dir.join(NAME_MARKER)).unwrap(),
        plain,
        "in the reader's private folder under its name"
    );
    // The reader now serves the ciphertext like any holder.
    let reader_url = reader.peer_url.clone();
    wait_for("the reader to hold the ciphertext", T, || async {
        holders_at(&central, &id)
            .await
            .iter()
            .any(|(u, replica)| *u == reader_url && !*replica)
            .then_some(())
    })
    .await;
    let listed = reader.api.list_private().await.unwrap();
    assert_eq!(listed.files.len(), 1);
    assert_eq!(listed.files[0].origin, PrivateOrigin::Received);
    assert_eq!(listed.files[0].saved_as.as_deref(), Some(NAME_MARKER));

    // Nowhere else: volunteers, the central, the owner's data folder and
    // log, the reader's share folder, data folder (but its private
    // folder) and log.
    for v in &volunteers {
        assert_eq!(leaks(v.root().path(), &[]), Vec::<PathBuf>::new());
    }
    assert_eq!(leaks(&central.data_dir, &[]), Vec::<PathBuf>::new());
    assert_eq!(leaks(&owner.root, &[]), Vec::<PathBuf>::new());
    // The reader keeps the plaintext in its private folder, and the
    // ticket (which holds the name) with the name it saved it under in
    // its keys (0600): nowhere else.
    let keys = reader.root.join("data").join("private-keys.json");
    assert_eq!(
        leaks(&reader.root, &[private_dir.clone(), keys]),
        Vec::<PathBuf>::new()
    );
    assert!(
        std::fs::read(reader.root.join("pserver.log")).is_ok_and(|l| !l.is_empty()),
        "the reader logged at debug level"
    );
    assert!(files_under(&reader.share_dir()).is_empty());
}

/// Bad tickets, a wrong key, a tampered ciphertext on the only holder, a
/// ticket of an unknown file: each a clear error, nothing written on the
/// reader. A good ticket opens; `private` lists it; remove ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tickets_and_tampered_ciphertexts_leave_nothing_behind() {
    let central = TestCentral::start(Duration::from_secs(30)).await;
    let a = TestPeer::start(&central.url, &[], |c| c.store.min_free_bytes = 0).await;
    let b = TestPeer::start(&central.url, &[], |c| c.store.min_free_bytes = 0).await;
    a.wait_joined().await;
    b.wait_joined().await;
    let plain = plaintext(300_000);
    let up = a
        .api
        .upload_private("notes.txt", plain.len() as u64, plain.clone().into())
        .await
        .unwrap();
    let good: Ticket = up.ticket.parse().unwrap();
    let b_private = b.data_dir.join("private");
    let b_blobs = b.data_dir.join("private-blobs");
    let nothing_on_b = || {
        assert_eq!(files_under(&b_private), Vec::<PathBuf>::new());
        // Nor a temp plaintext (a file opens while it downloads).
        assert_eq!(files_under(&b.data_dir.join("tmp")), Vec::<PathBuf>::new());
        assert_eq!(files_under(&b.share_dir), Vec::<PathBuf>::new());
        let blobs: Vec<PathBuf> = files_under(&b_blobs)
            .into_iter()
            .filter(|f| !f.ends_with("index.json"))
            .collect();
        assert_eq!(blobs, Vec::<PathBuf>::new());
    };
    // Announced under its id only: found by it, never by its name.
    wait_holders_exactly(&b, &up.file_id[..16], &up.file_id, 1).await;

    // Malformed: refused at once, naming the problem.
    let cut = &up.ticket[..up.ticket.len() - 3];
    let mut typo = up.ticket.clone().into_bytes();
    typo[40] = if typo[40] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    // Out of the ticket's form: 400; of its form but naming no file: 404.
    for (bad, status, says) in [
        ("hello", 400, "starts with peerdex1"),
        ("peerdex1abcd", 400, "too short"),
        ("peerdex10", 400, "not base32"),
        (cut, 404, "checksum"),
        (&typo[..], 404, "checksum"),
    ] {
        let (code, e) = refused(b.api.fetch_private(bad).await);
        assert_eq!(code, status, "{bad}: {e:?}");
        assert!(e.message.contains(says), "{bad}: {e:?}");
    }
    // A valid ticket of a file nobody holds.
    let unknown = Ticket {
        file_id: blake3_hex(b"nobody has this").parse().unwrap(),
        hints: Vec::new(),
        ..good.clone()
    };
    let (code, e) = refused(b.api.fetch_private(&unknown.encode()).await);
    assert_eq!((code, e.code.as_str()), (404, "not_found"), "{e:?}");
    assert!(e.message.contains("private file"), "{e:?}");
    // The right file, the wrong key: fetched, verified, refused, deleted.
    let mut wrong = good.clone();
    wrong.key.0[0] ^= 1;
    let job = b.api.fetch_private(&wrong.encode()).await.unwrap();
    let done = finish(&b, &job.job_id, T).await;
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    assert!(
        done.error.as_deref().unwrap().contains("does not open"),
        "{done:?}"
    );
    nothing_on_b();
    assert!(b.api.list_private().await.unwrap().files.is_empty());

    // The good ticket opens; listed as received; the plaintext readable.
    let job = b.api.fetch_private(&up.ticket).await.unwrap();
    assert_eq!(job.name.as_deref(), Some("notes.txt"));
    let done = finish(&b, &job.job_id, T).await;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(std::fs::read(b_private.join("notes.txt")).unwrap(), plain);
    let got = b
        .api
        .private_content(&up.file_id)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], &plain[..]);
    let listed = b.api.list_private().await.unwrap().files;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].origin, PrivateOrigin::Received);
    assert!(listed[0].held);
    // Removed on b: key, ciphertext and plaintext gone.
    b.api.remove_private(&up.file_id).await.unwrap();
    nothing_on_b();
    let (code, _) = refused(b.api.remove_private(&up.file_id).await);
    assert_eq!(code, 404);

    // A second file, tampered on its only holder's disk: a's verify-on-
    // serve withdraws it; b's fetch fails and writes nothing.
    let plain2 = plaintext(200_000);
    let up2 = a
        .api
        .upload_private("other.txt", plain2.len() as u64, plain2.into())
        .await
        .unwrap();
    wait_holders_exactly(&b, &up2.file_id[..16], &up2.file_id, 1).await;
    flip_in_place(
        &a.data_dir.join("private-blobs").join(&up2.file_id),
        &[150_000],
    );
    let job = b.api.fetch_private(&up2.ticket).await.unwrap();
    let done = finish(&b, &job.job_id, T).await;
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    nothing_on_b();

    // The owner lists both; a search finds neither name; remove ends it.
    let mine = a.api.list_private().await.unwrap();
    assert_eq!(mine.files.len(), 2);
    assert!(mine.files.iter().all(|f| f.origin == PrivateOrigin::Owned));
    for q in ["notes", "other"] {
        assert!(search(&b, q).await.hits.is_empty());
    }
    a.api.remove_private(&up.file_id).await.unwrap();
    assert_eq!(a.api.list_private().await.unwrap().files.len(), 1);
    assert!(!a.data_dir.join("private-blobs").join(&up.file_id).exists());
    wait_holders_exactly(&b, &up.file_id[..16], &up.file_id, 0).await;
}
