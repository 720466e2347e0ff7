//! A folder download (`{"folder": "Music/Album"}`): every file under a
//! folder of ONE holder's share, at any depth, as one job with one
//! progress (bytes of all its files). The holder is found through the
//! directory (a search for the folder's words, then the holders of a file
//! under it); its own listing (`GET /peer/v1/folder`) says which files
//! the folder holds. Each file is then a download of its own from that
//! holder (verified, resumable, listed in the jobs too), stored under the
//! same relative path here; files already held are counted as done.

use std::sync::Arc;

use peerdex_proto::rest::{
    DownloadRequest, FileInfo, FolderFiles, FolderQuery, Job, JobState, SearchQuery,
};
use peerdex_proto::types::MAX_QUERY_BYTES;
use peerdex_proto::{FileId, FileName, PeerUrl};

use super::fetch::pick_name;
use super::jobs::JobHandle;
use super::run::{Begin, spawn_job};
use super::start::validate;
use super::{Dest, Engine, Target};
use crate::error::{Missing, Result};
use crate::link::lookup::LocateTarget;

/// Hits of the folder's search looked at, and files of it whose holders
/// are asked for their listing, before giving up.
const SEARCH_HITS: u32 = 200;
const FILES_TRIED: usize = 5;
/// Distinct words a search takes (the directory's limit).
const MAX_WORDS: usize = 16;

/// Find a holder of `folder`, list its files there, and start the job.
pub(super) async fn start(
    shared: &Arc<Engine>,
    req: DownloadRequest,
    folder: FileName,
) -> Result<Job> {
    let ((peer, url), listing) = find_holder(shared, &folder).await?;
    let files: Vec<(FileId, FileName, u64)> = listing
        .files
        .iter()
        .filter_map(|f: &FileInfo| {
            let name: FileName = f.name.parse().ok()?;
            // A holder answers for its own folder only.
            name.is_under(&folder)
                .then_some((f.file_id.parse().ok()?, name, f.size))
        })
        .collect();
    if files.is_empty() {
        return Err(Missing::NoFolder { folder }.into());
    }
    let total: u64 = files.iter().map(|f| f.2).sum();
    let h = match shared.jobs.insert(req, None, JobState::Downloading) {
        Ok(h) | Err(h) => h,
    };
    h.update(|j| {
        j.name = Some(folder.to_string());
        j.bytes_total = Some(total);
        j.source = Some(url.to_string());
    });
    tracing::info!(job = %h.id, %folder, files = files.len(), bytes = total, holder = %peer,
        truncated = listing.truncated, "folder download");
    let snapshot = h.snapshot();
    let shared = shared.clone();
    let rt = shared.rt.clone();
    rt.spawn(async move { run(&shared, &h, files, (peer, url)).await });
    Ok(snapshot)
}

/// The words of a folder as a search query (within the directory's
/// limits on words and bytes).
fn query_of(folder: &FileName) -> String {
    let mut words: Vec<&str> = Vec::new();
    for w in folder
        .as_str()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !words.contains(&w) && words.len() < MAX_WORDS {
            words.push(w);
        }
    }
    let mut q = String::new();
    for w in words {
        if q.len() + w.len() + 1 > MAX_QUERY_BYTES {
            break;
        }
        if !q.is_empty() {
            q.push(' ');
        }
        q.push_str(w);
    }
    q
}

/// A live holder of some file under `folder` (other than us) and its
/// listing of the folder.
async fn find_holder(
    shared: &Arc<Engine>,
    folder: &FileName,
) -> Result<((String, PeerUrl), FolderFiles)> {
    let missing = || Missing::NoFolder {
        folder: folder.clone(),
    };
    let q = query_of(folder);
    if q.is_empty() {
        return Err(missing().into());
    }
    let query = SearchQuery {
        q,
        limit: Some(SEARCH_HITS),
        page: None,
    };
    let found = shared.lookup.search(&shared.central, &query).await?;
    let mut ids: Vec<FileId> = Vec::new();
    for hit in &found.hits {
        let under = hit
            .name
            .parse::<FileName>()
            .is_ok_and(|n| n.is_under(folder));
        if let (true, Ok(id)) = (under, hit.file_id.parse::<FileId>())
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    let own = shared.peer_id.to_string();
    let mut asked: Vec<String> = Vec::new();
    for id in ids.into_iter().take(FILES_TRIED) {
        let located = shared
            .lookup
            .locate(&shared.central, &LocateTarget::Id(id))
            .await?;
        for t in located.iter().filter_map(|f| validate(f, &own)) {
            for (peer, url) in t.holders {
                if asked.contains(&peer) {
                    continue;
                }
                asked.push(peer.clone());
                match listing(shared, &url, folder).await {
                    Ok(l) if !l.files.is_empty() => return Ok(((peer, url), l)),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(holder = %url, %folder, error = %e, "a holder did not list the folder; trying another");
                    }
                }
            }
        }
    }
    Err(missing().into())
}

/// `GET {holder}/peer/v1/folder?path=folder`.
async fn listing(
    shared: &Engine,
    holder: &PeerUrl,
    folder: &FileName,
) -> std::result::Result<FolderFiles, reqwest::Error> {
    shared
        .http
        .get(format!("{holder}/peer/v1/folder"))
        .query(&FolderQuery {
            path: folder.to_string(),
        })
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

/// Download each file in turn from the holder, keeping the folder job's
/// progress: the bytes of the files done plus those of the one under way.
async fn run(
    shared: &Arc<Engine>,
    h: &Arc<JobHandle>,
    files: Vec<(FileId, FileName, u64)>,
    holder: (String, PeerUrl),
) {
    let (mut done, mut failed, mut first_error) = (0u64, 0usize, None::<String>);
    let n = files.len();
    for (id, name, size) in files {
        if h.cancel.is_cancelled() {
            break;
        }
        if shared.store.by_id(&id).is_some() {
            done += size;
            h.update(|j| j.bytes_done = done);
            continue;
        }
        let t = Target {
            id,
            size,
            names: vec![name.clone()],
            holders: vec![holder.clone()],
        };
        let req = DownloadRequest {
            file_id: Some(id.to_hex()),
            name: None,
            folder: None,
        };
        let sub = match shared.jobs.insert(req, Some(id), JobState::Downloading) {
            Ok(sub) => {
                let stored_as = pick_name(shared, &t, &Dest::Share);
                sub.update(|j| {
                    j.bytes_total = Some(size);
                    j.name = Some(stored_as.to_string());
                });
                spawn_job(shared, sub.clone(), Begin::Located(t));
                sub
            }
            // Already on its way (asked for by itself): wait for it.
            Err(running) => running,
        };
        let mut rx = sub.subscribe();
        let end = loop {
            let j = rx.borrow_and_update().clone();
            h.update(|p| p.bytes_done = done + j.bytes_done.min(size));
            if j.state.is_final() {
                break j;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break sub.snapshot() },
                _ = h.cancel.cancelled() => {
                    sub.cancel();
                    break sub.snapshot();
                }
            }
        };
        done += size;
        h.update(|p| p.bytes_done = done);
        if end.state != JobState::Done {
            failed += 1;
            first_error.get_or_insert_with(|| {
                format!("{name}: {}", end.error.as_deref().unwrap_or("cancelled"))
            });
        }
    }
    let cancelled = h.cancel.is_cancelled();
    h.update(|j| {
        j.source = None;
        if cancelled {
            j.state = JobState::Cancelled;
        } else if failed > 0 {
            j.state = JobState::Failed;
            j.error = Some(format!(
                "{failed} of {n} files failed; the others are stored (first: {})",
                first_error.unwrap_or_default()
            ));
        } else {
            j.state = JobState::Done;
        }
    });
    tracing::info!(job = %h.id, files = n, failed, cancelled, "folder download ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_searched_by_its_words() {
        let f: FileName = "Music/Miles Davis/Kind of Blue".parse().unwrap();
        assert_eq!(query_of(&f), "Music Miles Davis Kind of Blue");
        let f: FileName = "a/a/b".parse().unwrap();
        assert_eq!(query_of(&f), "a b");
        let f: FileName = "---".parse().unwrap();
        assert_eq!(query_of(&f), "");
    }
}
