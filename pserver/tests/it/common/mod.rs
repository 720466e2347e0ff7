//! Helpers of the PServer suites: the control API's steps, servers and
//! child processes come from `peerdex-testkit`; what is here only these
//! suites use (a rotting disk, a hand-written fake holder).
#![allow(dead_code)]

use std::path::Path;

pub use peerdex_testkit::control::{
    by_folder, by_id, by_name, finish, holders, job, refused, search, start_job, upload, upload_ok,
    wait_holders_exactly,
};
pub use peerdex_testkit::{
    ChildPeer, ChildProc, TestCentral, TestPeer, blake3_hex, files_under, test_bytes, wait_for,
};

/// Flip the bytes at `offsets` of `path` in place through one handle, then
/// put its mtime back to the nanosecond, so no rescan notices the change
/// (what a silently rotting disk does).
pub fn flip_in_place(path: &Path, offsets: &[u64]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    for &at in offsets {
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    }
    f.set_modified(mtime).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

/// What a fake holder (a hand-written HTTP/1.1 server in a test) was asked:
/// the path and, if any, the single `Range: bytes=a-b`.
pub struct FakeRequest {
    pub path: String,
    pub range: Option<(u64, u64)>,
}

/// Read one request head from `s` (at most 8 KiB); `None` if the client
/// went away first.
pub async fn read_fake_request(s: &mut tokio::net::TcpStream) -> Option<FakeRequest> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let range = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .map(str::to_owned)
        })
        .and_then(|r| {
            let (a, b) = r.trim().split_once('-')?;
            Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
        });
    Some(FakeRequest { path, range })
}

/// Answer a fake request and close: `status` ("206 Partial Content"),
/// `extra` header lines (each ending in CRLF), `body`.
pub async fn send_fake_answer(
    mut s: tokio::net::TcpStream,
    status: &str,
    extra: &str,
    body: &[u8],
) {
    use tokio::io::AsyncWriteExt;
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.write_all(body).await;
    let _ = s.shutdown().await;
}
