//! A PServer's control API through the typed client the CLI uses
//! ([`peerdex_client::api::Client`]): the few steps every suite repeats,
//! with the assertions they always make.

use std::time::Duration;

use peerdex_client::api::{self, Client, Uploaded};
use peerdex_proto::rest::{ApiError, DownloadRequest, FileInfo, Job, SearchQuery, SearchResults};

use crate::peer::{ChildPeer, TestPeer};
use crate::wait::wait_for;

/// Whatever has a control API to talk to: a [`TestPeer`], a [`ChildPeer`],
/// or a [`Client`] itself. The steps below take any of them.
pub trait Control {
    fn api(&self) -> &Client;
}

impl Control for Client {
    fn api(&self) -> &Client {
        self
    }
}

impl Control for TestPeer {
    fn api(&self) -> &Client {
        &self.api
    }
}

impl Control for ChildPeer {
    fn api(&self) -> &Client {
        &self.api
    }
}

impl<T: Control + ?Sized> Control for &T {
    fn api(&self) -> &Client {
        (**self).api()
    }
}

/// `PUT /api/v1/files/{name}` with `bytes`, answered as is.
pub async fn upload(p: &impl Control, name: &str, bytes: Vec<u8>) -> api::Result<Uploaded> {
    let len = bytes.len() as u64;
    p.api().upload(name, len, bytes.into()).await
}

/// An upload that must be stored: the stored file.
pub async fn upload_ok(p: &impl Control, name: &str, bytes: Vec<u8>) -> FileInfo {
    upload(p, name, bytes)
        .await
        .unwrap_or_else(|e| panic!("upload of {name} failed: {e:?}"))
        .file
}

/// A search for `q` (first page, the server's default limit) that must succeed.
pub async fn search(p: &impl Control, q: &str) -> SearchResults {
    p.api()
        .search(&SearchQuery {
            q: q.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("search {q:?} failed: {e:?}"))
}

/// Holders of `file_id` in a search for `q` (0 if absent).
pub async fn holders(p: &impl Control, q: &str, file_id: &str) -> u32 {
    search(p, q)
        .await
        .hits
        .iter()
        .filter(|h| h.file_id == file_id)
        .map(|h| h.holders)
        .max()
        .unwrap_or(0)
}

/// Wait until a search for `q` sees exactly `n` holders of `id`.
pub async fn wait_holders_exactly(p: &impl Control, q: &str, id: &str, n: u32) {
    wait_for(
        &format!("{n} holders of {id}"),
        Duration::from_secs(40),
        || async { (holders(p, q, id).await == n).then_some(()) },
    )
    .await;
}

/// A download request by file id.
pub fn by_id(id: &str) -> DownloadRequest {
    DownloadRequest {
        file_id: Some(id.into()),
        name: None,
        folder: None,
    }
}

/// A download request by exact name.
pub fn by_name(name: &str) -> DownloadRequest {
    DownloadRequest {
        file_id: None,
        name: Some(name.into()),
        folder: None,
    }
}

/// A download request for every file under a folder of one holder's share.
pub fn by_folder(folder: &str) -> DownloadRequest {
    DownloadRequest {
        file_id: None,
        name: None,
        folder: Some(folder.into()),
    }
}

/// Start downloading `id`; the request must be accepted.
pub async fn start_job(p: &impl Control, id: &str) -> Job {
    p.api()
        .start_download(&by_id(id))
        .await
        .unwrap_or_else(|e| panic!("download of {id} refused: {e:?}"))
}

/// A job's state, which must exist.
pub async fn job(p: &impl Control, job_id: &str) -> Job {
    p.api()
        .job(job_id)
        .await
        .unwrap_or_else(|e| panic!("job {job_id}: {e:?}"))
}

/// Poll a job until it reaches a final state.
pub async fn finish(p: &impl Control, job_id: &str, deadline: Duration) -> Job {
    wait_for("the download job to finish", deadline, || async {
        let j = job(p, job_id).await;
        j.state.is_final().then_some(j)
    })
    .await
}

/// The HTTP status and the [`ApiError`] of a call the PServer must refuse
/// (any other outcome fails the test).
#[track_caller]
pub fn refused<T: std::fmt::Debug>(r: api::Result<T>) -> (u16, ApiError) {
    match r {
        Err(api::Error::Api { status, error }) => (status.as_u16(), error),
        other => panic!("expected an API error, got {other:?}"),
    }
}
