//! `get`: have the PServer download a file (by id, short id or exact
//! name), follow the job live, and with `-o` copy the stored file out.
//!
//! A ticket (`peerdex1…`) fetches a private file instead: checked here
//! first (a cut-off or mistyped ticket is refused before anything is
//! asked), then fetched and opened by the PServer into its private folder,
//! and with `-o` copied out from there.
//!
//! The output path is checked before the download starts and again once
//! the name is known; the copy goes through a temp file in the same folder,
//! renamed into place only when every byte arrived.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use peerdex_proto::rest::{DownloadRequest, Job, JobState, SearchHit};
use peerdex_proto::ticket::Ticket;
use peerdex_proto::{FileId, FileName};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::Ctx;
use crate::api;
use crate::cli::GetArgs;
use crate::output::{human_size, outln, quoted};
use crate::progress::follow;

#[derive(Serialize)]
struct GetReport<'a> {
    job: &'a Job,
    /// Where `-o` wrote the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    saved_to: Option<String>,
}

pub(super) async fn run(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    if let Some(folder) = &args.folder {
        return get_folder(ctx, folder).await;
    }
    let target = args.target.clone().unwrap_or_default();
    if let Some(ticket) = as_ticket(&target)? {
        return get_private(ctx, &args, ticket).await;
    }
    let request = download_request(&target, &ctx.last_hits)?;
    if let Some(out) = &args.output {
        check_output(out, args.force, None)?;
    }
    let job = ctx.api.start_download(&request).await?;
    let job = follow(ctx, job).await?;
    let what = job.name.clone().unwrap_or_else(|| target.clone());
    match job.state {
        JobState::Done => {}
        JobState::Failed => bail!(
            "download of {} failed: {}",
            quoted(&what),
            job.error.as_deref().unwrap_or("no reason given")
        ),
        _ => bail!("download of {} was cancelled", quoted(&what)),
    }
    let file_id = job
        .file_id
        .clone()
        .context("the PServer reported a finished job without a file id")?;
    let size = job.bytes_total.unwrap_or(job.bytes_done);
    if !ctx.json {
        outln!(
            "{file_id}  {:>10}  {}",
            human_size(size),
            crate::output::name(&what)
        );
    }
    let mut saved_to = None;
    if let Some(out) = &args.output {
        let name = job.name.as_deref().unwrap_or(&file_id);
        let dest = check_output(out, args.force, Some(name))?;
        let resp = ctx.api.file_content(&file_id).await?;
        save_content(ctx, resp, &file_id, size, &dest, args.force).await?;
        if !ctx.json {
            eprintln!("saved to {}", dest.display());
        }
        saved_to = Some(dest.display().to_string());
    } else if !ctx.json {
        eprintln!("stored in your PServer's shared folder (and shared from now on)");
    }
    if ctx.json {
        ctx.print_json(&GetReport {
            job: &job,
            saved_to,
        })?;
    }
    Ok(())
}

/// `get --folder PATH`: every file under a folder of one holder's share,
/// as one job followed with one progress bar.
async fn get_folder(ctx: &Ctx, folder: &str) -> anyhow::Result<()> {
    let folder: FileName = folder.trim_end_matches('/').parse().map_err(|e| {
        anyhow!("{e}; give a folder's path in the holder's share, e.g. \"Music/Album\"")
    })?;
    let request = DownloadRequest {
        file_id: None,
        name: None,
        folder: Some(folder.to_string()),
    };
    let job = ctx.api.start_download(&request).await?;
    let job = follow(ctx, job).await?;
    let size = job.bytes_total.unwrap_or(job.bytes_done);
    match job.state {
        JobState::Done => {}
        JobState::Failed => bail!(
            "download of folder {} failed: {}",
            quoted(folder.as_str()),
            job.error.as_deref().unwrap_or("no reason given")
        ),
        _ => bail!(
            "download of folder {} was cancelled",
            quoted(folder.as_str())
        ),
    }
    if ctx.json {
        return ctx.print_json(&GetReport {
            job: &job,
            saved_to: None,
        });
    }
    outln!(
        "{:>10}  {}/",
        human_size(size),
        crate::output::name(folder.as_str())
    );
    eprintln!(
        "stored under {}/ in your PServer's shared folder (and shared from now on); {} lists the files",
        folder,
        ctx.cmd("ls")
    );
    Ok(())
}

/// A ticket, checked: `None` when `target` does not look like one.
fn as_ticket(target: &str) -> anyhow::Result<Option<(String, Ticket)>> {
    let t = target.trim();
    let prefix = peerdex_proto::ticket::PREFIX;
    if !t
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    {
        return Ok(None);
    }
    let ticket: Ticket = t.parse()?;
    Ok(Some((t.to_owned(), ticket)))
}

/// `get TICKET`: fetch and open a private file, then with `-o` copy its
/// plaintext out of the private folder.
async fn get_private(
    ctx: &Ctx,
    args: &GetArgs,
    (text, ticket): (String, Ticket),
) -> anyhow::Result<()> {
    if let Some(out) = &args.output {
        check_output(out, args.force, None)?;
    }
    let job = ctx.api.fetch_private(&text).await?;
    let job = follow(ctx, job).await?;
    let what = ticket.name.to_string();
    match job.state {
        JobState::Done => {}
        JobState::Failed => bail!(
            "private file {} could not be fetched: {}",
            quoted(&what),
            job.error.as_deref().unwrap_or("no reason given")
        ),
        _ => bail!("fetch of private file {} was cancelled", quoted(&what)),
    }
    let file_id = ticket.file_id.to_hex();
    if !ctx.json {
        outln!(
            "{file_id}  {:>10}  {}  (private)",
            human_size(ticket.size),
            crate::output::name(&what)
        );
    }
    let mut saved_to = None;
    if let Some(out) = &args.output {
        let dest = check_output(out, args.force, Some(&what))?;
        let resp = ctx.api.private_content(&file_id).await?;
        save_content(ctx, resp, &file_id, ticket.size, &dest, args.force).await?;
        if !ctx.json {
            eprintln!("saved to {}", dest.display());
        }
        saved_to = Some(dest.display().to_string());
    } else if !ctx.json {
        eprintln!(
            "stored in your PServer's private folder (PSERVER_PRIVATE_DIR; never shared); `peerdex private` lists it"
        );
    }
    if ctx.json {
        ctx.print_json(&GetReport {
            job: &job,
            saved_to,
        })?;
    }
    Ok(())
}

/// `X` is an id if it is one, a short id if it prefixes exactly one id from
/// the last search, otherwise an exact name.
fn download_request(target: &str, last_hits: &[SearchHit]) -> anyhow::Result<DownloadRequest> {
    if let Ok(id) = target.parse::<FileId>() {
        return Ok(DownloadRequest {
            file_id: Some(id.to_hex()),
            name: None,
            folder: None,
        });
    }
    if target.len() >= 6 && target.bytes().all(|b| b.is_ascii_hexdigit()) {
        let prefix = target.to_ascii_lowercase();
        let mut ids: Vec<&str> = last_hits
            .iter()
            .map(|h| h.file_id.as_str())
            .filter(|id| id.starts_with(&prefix))
            .collect();
        ids.dedup();
        if let [id] = ids[..] {
            return Ok(DownloadRequest {
                file_id: Some(id.to_owned()),
                name: None,
                folder: None,
            });
        }
    }
    let name: FileName = target
        .parse()
        .map_err(|e| anyhow!("{e}; give a file's exact name or its 64-character id"))?;
    Ok(DownloadRequest {
        file_id: None,
        name: Some(name.into_string()),
        folder: None,
    })
}

/// Where `-o PATH` writes: PATH itself, or PATH/NAME when PATH is a folder
/// (NAME: the file's own name, without the folders of its share name).
/// Refuses an existing file without `--force`. Before the name is known
/// (`name` = None) only checks what can be checked.
fn check_output(path: &Path, force: bool, name: Option<&str>) -> anyhow::Result<PathBuf> {
    let dest = if path.is_dir() {
        match name {
            None => return Ok(path.to_owned()),
            Some(n) => {
                let n: FileName = n
                    .parse()
                    .with_context(|| "the PServer gave the file an unusable name")?;
                // The file's own name: its folders in the share stay there.
                path.join(n.file_name())
            }
        }
    } else {
        path.to_owned()
    };
    if dest.is_dir() {
        bail!(
            "{} is a folder that already exists; pick another path",
            dest.display()
        );
    }
    if dest.exists() && !force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            dest.display()
        );
    }
    let parent = parent_dir(&dest);
    if !parent.is_dir() {
        bail!(
            "folder {} does not exist; create it first",
            parent.display()
        );
    }
    Ok(dest)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Stream a stored file from the PServer to `dest` through a temp file in
/// the same folder, renamed into place only once every byte arrived.
async fn save_content(
    ctx: &Ctx,
    mut resp: reqwest::Response,
    file_id: &str,
    size: u64,
    dest: &Path,
    force: bool,
) -> anyhow::Result<()> {
    let dir = parent_dir(dest);
    let temp = tempfile::Builder::new()
        .prefix(".peerdex-")
        .suffix(".part")
        .tempfile_in(&dir)
        .map_err(|e| anyhow!("cannot create a file in {}: {e}", dir.display()))?;
    let mut out = tokio::fs::File::from_std(temp.as_file().try_clone()?);
    let bar = ctx.term.bytes_bar(Some(size));
    bar.set_prefix(format!("writing {}", dest.display()));
    let mut written = 0u64;
    let copy = async {
        while let Some(chunk) = resp.chunk().await.map_err(|e| api::Error::Transport {
            url: ctx.api.base_url().to_string(),
            source: e,
        })? {
            out.write_all(&chunk)
                .await
                .map_err(|e| anyhow!("cannot write {}: {e}", dest.display()))?;
            written += chunk.len() as u64;
            bar.set_position(written);
        }
        out.flush().await?;
        out.sync_all()
            .await
            .map_err(|e| anyhow!("cannot write {}: {e}", dest.display()))?;
        anyhow::Ok(())
    };
    let copied = copy.await;
    bar.finish_and_clear();
    copied?;
    if written != size {
        bail!(
            "the PServer sent {written} bytes of file {file_id} instead of {size}; {} was not written",
            dest.display()
        );
    }
    drop(out);
    let persisted = if force {
        temp.persist(dest).map(drop)
    } else {
        temp.persist_noclobber(dest).map(drop)
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!(
                "{} already exists; pass --force to overwrite it",
                dest.display()
            )
        } else {
            anyhow!("cannot write {}: {}", dest.display(), e.error)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, name: &str) -> SearchHit {
        SearchHit {
            replicas_wanted: 0,
            name: name.into(),
            file_id: id.into(),
            size: 1,
            holders: 1,
            lookalike: false,
            island: String::new(),
        }
    }

    #[test]
    fn get_targets() {
        let id = "0123456789abcdef".repeat(4);
        let r = download_request(&id, &[]).unwrap();
        assert_eq!(r.file_id.as_deref(), Some(id.as_str()));
        let r = download_request("report.pdf", &[]).unwrap();
        assert_eq!(r.name.as_deref(), Some("report.pdf"));
        // A short id resolves through the last search, else it is a name.
        let hits = [hit(&id, "a"), hit(&"f".repeat(64), "b")];
        let r = download_request("0123456789ab", &hits).unwrap();
        assert_eq!(r.file_id.as_deref(), Some(id.as_str()));
        let r = download_request("0123456789ab", &[]).unwrap();
        assert_eq!(r.name.as_deref(), Some("0123456789ab"));
        let e = download_request("../etc/passwd", &[]).unwrap_err();
        assert!(e.to_string().contains("exact name"), "{e}");
    }

    #[test]
    fn output_paths() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("x.bin");
        std::fs::write(&existing, b"x").unwrap();
        let e = check_output(&existing, false, Some("x.bin")).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(
            check_output(&existing, true, Some("x.bin")).unwrap(),
            existing
        );
        // A folder receives the file under its name.
        assert_eq!(
            check_output(dir.path(), false, Some("y.bin")).unwrap(),
            dir.path().join("y.bin")
        );
        let e = check_output(dir.path(), false, Some("x.bin")).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        let e = check_output(dir.path(), false, Some("../evil")).unwrap_err();
        assert!(e.to_string().contains("unusable name"), "{e}");
        // A share name in folders lands in the folder under its own name.
        assert_eq!(
            check_output(dir.path(), false, Some("Music/Album/z.bin")).unwrap(),
            dir.path().join("z.bin")
        );
        let e = check_output(&dir.path().join("no/such/f"), false, None).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
