//! Names (issue 29): one name whatever its Unicode spelling, invisible
//! characters refused, and a share folder that says what it cannot share.
//! Real PServers and a real central; everything through the control API.

use crate::common;

use std::time::Duration;

use common::*;
use peerdex_proto::rest::{JobState, LocateQuery, LocateResult};

const LONG_TTL: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(40);

/// `café.txt` with a precomposed `é` (U+00E9), and with `e` + U+0301 (as
/// macOS tools write it).
const NFC: &str = "caf\u{e9}.txt";
const NFD: &str = "cafe\u{301}.txt";

async fn locate_name(p: &TestPeer, name: &str) -> LocateResult {
    let q = LocateQuery {
        file_id: None,
        name: Some(name.into()),
    };
    p.api
        .locate(&q)
        .await
        .unwrap_or_else(|e| panic!("locate {name:?}: {e:?}"))
}

/// Ids of the hits of a search for `q` named `name`, sorted.
async fn ids_named(p: &TestPeer, q: &str, name: &str) -> Vec<String> {
    let mut ids: Vec<String> = search(p, q)
        .await
        .hits
        .into_iter()
        .filter(|h| h.name == name)
        .map(|h| h.file_id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A file named in NFD on a holder's disk is shared under its NFC name,
/// found by a search typed either way and by locate of the NFC name, and
/// served from its real path. Another content under the NFC spelling is
/// the same name: `get` by that name, typed either way, never picks one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nfd_name_on_disk_is_the_same_name_as_its_nfc_spelling() {
    let central = TestCentral::start(LONG_TTL).await;
    let honest = TestPeer::start(&central.url, &[], |_| {}).await;
    let other = TestPeer::start(&central.url, &[], |_| {}).await;
    let me = TestPeer::start(&central.url, &[&honest.peer_url], |_| {}).await;
    me.wait_joined().await;
    let bytes = test_bytes(1_300_000, 29);
    let id = blake3_hex(&bytes);
    honest.drop_file(NFD, &bytes);

    for q in ["caf\u{e9}", "cafe\u{301}"] {
        wait_for(&format!("a search for {q:?} to find it"), T, || async {
            (ids_named(&me, q, NFC).await == [id.clone()]).then_some(())
        })
        .await;
    }
    let located = locate_name(&me, NFC).await;
    assert_eq!(located.files.len(), 1, "{located:?}");
    assert_eq!(
        (
            located.files[0].file_id.as_str(),
            &located.files[0].names[..]
        ),
        (id.as_str(), &[NFC.to_owned()][..])
    );
    assert_eq!(locate_name(&me, NFD).await, located);

    // Another content under the other spelling: one name, two candidates.
    let theirs = upload_ok(&other, NFC, b"not the cafe you want".to_vec()).await;
    assert_eq!(theirs.name, NFC);
    let mut both = vec![id.clone(), theirs.file_id.clone()];
    both.sort();
    wait_for("both contents under one name", T, || async {
        (ids_named(&me, "caf\u{e9}", NFC).await == both).then_some(())
    })
    .await;
    for typed in [NFC, NFD] {
        let (status, e) = refused(me.api.start_download(&by_name(typed)).await);
        assert_eq!(status, 409, "get {typed:?}");
        assert_eq!(e.code, "ambiguous_name", "{e:?}");
        let mut got: Vec<String> = e.candidates.iter().map(|c| c.file_id.clone()).collect();
        got.sort();
        assert_eq!(got, both, "get {typed:?}");
    }
    assert!(me.status().await.active_downloads == 0);

    // By id, the honest file comes from its NFD path on the holder's disk.
    let job = start_job(&me, &id).await;
    let end = finish(&me, &job.job_id, T).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(std::fs::read(me.path_in_share(NFC)).unwrap(), bytes);
}

/// Names with a bidi override or a zero-width space are refused at upload
/// with 400, naming the character and its position; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_are_refused_at_upload() {
    let central = TestCentral::start(LONG_TTL).await;
    let p = TestPeer::start(&central.url, &[], |_| {}).await;
    for (name, code, at) in [
        ("invoice \u{202e}fdp.exe", "U+202E", 9),
        ("pay\u{200b}pal.pdf", "U+200B", 4),
    ] {
        let (status, e) = refused(upload(&p, name, b"x".to_vec()).await);
        assert_eq!(status, 400, "{name:?}");
        assert_eq!(e.code, "invalid_argument", "{e:?}");
        assert!(
            e.message.contains(&format!("{code} "))
                && e.message.contains(&format!("at character {at}")),
            "{e:?}"
        );
    }
    assert_eq!(p.status().await.shared_files, 0);
    assert!(files_under(&p.share_dir).is_empty());
    // `:` is a name character.
    let ok = upload_ok(&p, "meeting 12:30.txt", b"minutes".to_vec()).await;
    assert_eq!(ok.name, "meeting 12:30.txt");
}

/// What the share folder cannot share is counted in the status, each with
/// its reason; `meeting 12:30.txt` is shared and found; of two spellings of
/// one name the NFC one is shared and the other reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_folder_says_what_it_cannot_share() {
    use std::os::unix::ffi::OsStrExt;
    let central = TestCentral::start(LONG_TTL).await;
    let p = TestPeer::start(&central.url, &[], |_| {}).await;
    p.wait_joined().await;
    let meeting = p.drop_file("meeting 12:30.txt", b"minutes of the meeting");
    let cafe = test_bytes(5_000, 1);
    p.drop_file(NFC, &cafe);
    p.drop_file(NFD, b"the other spelling");
    let bidi = p.drop_file("x\u{202e}txt.exe", b"disguised");
    p.drop_file("C:drive.txt", b"drive prefix");
    p.drop_file(".hidden", b"hidden files are left out quietly");
    std::fs::write(
        p.share_dir
            .join(std::ffi::OsStr::from_bytes(b"latin1-caf\xe9.txt")),
        b"not utf-8",
    )
    .unwrap();

    let s = wait_for(
        "the rescan to share two files and report four",
        T,
        || async {
            let s = p.status().await;
            (s.shared_files == 2 && s.unshared_files == 4).then_some(s)
        },
    )
    .await;
    let mut reasons: Vec<(String, String)> = s
        .unshared
        .iter()
        .map(|u| (u.name.clone(), u.reason.clone()))
        .collect();
    reasons.sort();
    let names: Vec<&str> = reasons.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "C:drive.txt",
            NFD,
            "latin1-caf\u{fffd}.txt",
            "x\\u{202e}txt.exe"
        ],
        "{reasons:#?}"
    );
    assert!(reasons[0].1.contains("drive prefix"), "{reasons:#?}");
    assert!(reasons[1].1.contains(NFC), "{reasons:#?}");
    assert!(reasons[2].1.contains("not valid UTF-8"), "{reasons:#?}");
    assert!(reasons[3].1.contains("U+202E"), "{reasons:#?}");

    let meeting_id = blake3_hex(b"minutes of the meeting");
    assert_eq!(
        ids_named(&p, "meeting", "meeting 12:30.txt").await,
        [meeting_id]
    );
    assert_eq!(ids_named(&p, "caf\u{e9}", NFC).await, [blake3_hex(&cafe)]);
    assert!(meeting.exists());

    // Renamed away, it is no longer counted.
    std::fs::rename(&bidi, p.share_dir.join("renamed.exe")).unwrap();
    wait_for("the rescan to count three", T, || async {
        let s = p.status().await;
        (s.shared_files == 3 && s.unshared_files == 3).then_some(())
    })
    .await;
}
