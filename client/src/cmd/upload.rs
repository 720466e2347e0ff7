//! `upload`: stream files to the PServer, which stores and publishes them.
//!
//! Every path is checked (exists, a file or `--recursive` folder, a valid
//! share name) before anything is sent, so a typo costs no transfer. One
//! failed file does not stop the others; the PServer being unreachable does.
//!
//! With `--private` each file is sealed by the PServer with a fresh key:
//! only its ciphertext is stored and announced, and the command prints the
//! ticket that opens it (`ticket` beside `file_id`, the ciphertext's id,
//! in the JSON).
//!
//! With `--replicas N` each uploaded file is then pinned to N live copies
//! (as `replicate` does). A refused pin leaves the upload in place: the
//! command says the file is shared but not pinned, and why, and exits 1.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use futures_util::TryStreamExt;
use peerdex_proto::FileName;
use peerdex_proto::rest::{FileInfo, PinRequest, PinStatus};
use serde::Serialize;

use super::Ctx;
use crate::api;
use crate::cli::UploadArgs;
use crate::output::{human_size, outln, sanitize};
use crate::report::{Interrupted, ReportedFailure};

/// One file to upload, checked before anything is sent.
struct UploadItem {
    path: PathBuf,
    name: FileName,
    size: u64,
}

#[derive(Serialize)]
struct UploadedJson {
    file_id: String,
    name: String,
    size: u64,
    /// False when identical content was already shared under that name.
    created: bool,
    /// With `--private`: the ticket that opens the file (`file_id` is
    /// the ciphertext's id).
    #[serde(skip_serializing_if = "Option::is_none")]
    ticket: Option<String>,
    /// With `--replicas`: the pin the directory keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pin: Option<PinStatus>,
}

#[derive(Serialize)]
struct UploadFailure {
    path: String,
    code: String,
    message: String,
}

#[derive(Serialize)]
struct UploadReport {
    files: Vec<UploadedJson>,
    errors: Vec<UploadFailure>,
    /// With `--replicas`: files uploaded (listed in `files`) whose pin
    /// was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pin_errors: Vec<UploadFailure>,
}

/// A file over the PServer's upload limit, caught before sending it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TooLarge(String);

pub(super) async fn run(ctx: &Ctx, args: UploadArgs) -> anyhow::Result<()> {
    let replicas = args.replicas.filter(|&n| n >= 2);
    let private = args.private;
    let items = tokio::task::spawn_blocking(move || collect_uploads(&args)).await??;
    if items.is_empty() {
        bail!("nothing to upload: the folders given contain no files");
    }
    // Also checks that the PServer is there before reading any file.
    let max = ctx.api.status().await?.max_upload_bytes;
    let mut report = UploadReport {
        files: Vec::new(),
        errors: Vec::new(),
        pin_errors: Vec::new(),
    };
    for item in items {
        let result = if max > 0 && item.size > max {
            Err(TooLarge(format!(
                "{} is {}; this PServer accepts files up to {} (PSERVER_MAX_UPLOAD_BYTES)",
                item.path.display(),
                human_size(item.size),
                human_size(max)
            ))
            .into())
        } else {
            upload_one(ctx, &item, private).await
        };
        match result {
            Ok((up, ticket)) => {
                if !ctx.json {
                    let note = match (&ticket, up.created) {
                        (Some(_), _) => "  (private)",
                        (None, true) => "",
                        (None, false) => "  (already shared)",
                    };
                    outln!(
                        "{}  {:>10}  {}{note}",
                        up.file.file_id,
                        human_size(up.file.size),
                        sanitize(&up.file.name)
                    );
                    if let Some(t) = &ticket {
                        outln!("  ticket: {t}");
                    }
                }
                let mut pin = None;
                if let Some(n) = replicas {
                    let req = PinRequest {
                        file: up.file.file_id.clone(),
                        replicas: n,
                    };
                    match ctx.api.pin(&req).await {
                        Ok(p) => {
                            if !ctx.json {
                                outln!("  {}", super::pins::describe(&p));
                            }
                            pin = Some(p);
                        }
                        Err(e) => {
                            let message = format!("uploaded and shared, but not pinned: {e}");
                            if !ctx.json {
                                eprintln!("error: {}: {message}", item.path.display());
                            }
                            report.pin_errors.push(UploadFailure {
                                path: item.path.display().to_string(),
                                code: e.code().to_owned(),
                                message,
                            });
                        }
                    }
                }
                report.files.push(UploadedJson {
                    file_id: up.file.file_id,
                    name: up.file.name,
                    size: up.file.size,
                    created: up.created,
                    ticket,
                    pin,
                });
            }
            Err(e) if e.is::<Interrupted>() => return Err(e),
            Err(e) => {
                // Keep going with the other files; the PServer being gone ends it all.
                let fatal = matches!(
                    e.downcast_ref::<api::Error>(),
                    Some(api::Error::Unreachable { .. })
                );
                if fatal {
                    return Err(e);
                }
                let code = match e.downcast_ref::<api::Error>() {
                    Some(api_err) => api_err.code(),
                    None if e.is::<TooLarge>() => "too_large",
                    None => "failed",
                }
                .to_owned();
                if !ctx.json {
                    eprintln!("error: {}: {e}", item.path.display());
                }
                report.errors.push(UploadFailure {
                    path: item.path.display().to_string(),
                    code,
                    message: e.to_string(),
                });
            }
        }
    }
    if ctx.json {
        ctx.print_json(&report)?;
    } else if private && !report.files.is_empty() {
        eprintln!(
            "only the ciphertext left your PServer; whoever has a ticket reads the file: peerdex get TICKET (peerdex private lists them)"
        );
    }
    match (report.errors.len(), report.pin_errors.len()) {
        (0, 0) => Ok(()),
        (0, p) => Err(ReportedFailure(format!(
            "{p} of {} files were uploaded and shared but not pinned",
            report.files.len()
        ))
        .into()),
        (n, _) => {
            Err(ReportedFailure(format!("{n} of {} uploads failed", n + report.files.len())).into())
        }
    }
}

async fn upload_one(
    ctx: &Ctx,
    item: &UploadItem,
    private: bool,
) -> anyhow::Result<(api::Uploaded, Option<String>)> {
    *ctx.interrupt_note.lock().unwrap() = Some(format!(
        "interrupted while uploading {}; it was not stored (files finished before it stay shared)",
        item.path.display()
    ));
    let file = tokio::fs::File::open(&item.path)
        .await
        .map_err(|e| anyhow!("cannot open {}: {e}", item.path.display()))?;
    let bar = ctx.term.bytes_bar(Some(item.size));
    bar.set_prefix(sanitize(item.name.as_str()));
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
        .inspect_ok(move |chunk| counted.inc(chunk.len() as u64));
    let body = reqwest::Body::wrap_stream(stream);
    if private {
        let result = ctx
            .api
            .upload_private(item.name.as_str(), item.size, body)
            .await;
        bar.finish_and_clear();
        let p = result?;
        let file = FileInfo {
            file_id: p.file_id,
            name: p.name,
            size: p.size,
            lookalike: false,
        };
        let up = api::Uploaded {
            file,
            created: true,
        };
        return Ok((up, Some(p.ticket)));
    }
    let result = ctx.api.upload(item.name.as_str(), item.size, body).await;
    bar.finish_and_clear();
    Ok((result?, None))
}

fn collect_uploads(args: &UploadArgs) -> anyhow::Result<Vec<UploadItem>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for path in &args.paths {
        let meta =
            std::fs::metadata(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        if meta.is_dir() {
            if !args.recursive {
                bail!(
                    "{} is a folder; pass --recursive to upload every file in it",
                    path.display()
                );
            }
            walk(path, &mut files)?;
        } else if meta.is_file() {
            files.push(path.clone());
        } else {
            bail!("{} is not a regular file", path.display());
        }
    }
    if args.name.is_some() && files.len() != 1 {
        bail!(
            "--name needs exactly one file, but {} were given",
            files.len()
        );
    }
    files
        .into_iter()
        .map(|path| {
            let raw = match &args.name {
                Some(n) => n.clone(),
                None => path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            let name: FileName = raw.parse().map_err(|e| {
                anyhow!(
                    "cannot share {}: {e}; choose a name with --name",
                    path.display()
                )
            })?;
            let size = std::fs::metadata(&path)
                .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?
                .len();
            Ok(UploadItem { path, name, size })
        })
        .collect()
}

/// Regular files under `dir`, sorted, skipping hidden entries and symlinked
/// folders (which could loop).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("cannot list {}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("cannot list {}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_collection() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.txt"), b"a").unwrap();
        std::fs::write(dir.path().join("sub/b.txt"), b"bb").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"h").unwrap();
        let args = |paths: Vec<PathBuf>, recursive, name: Option<&str>| UploadArgs {
            paths,
            recursive,
            name: name.map(str::to_owned),
            replicas: None,
            private: false,
        };
        let e = collect_uploads(&args(vec![dir.path().into()], false, None))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--recursive"), "{e}");
        let items = collect_uploads(&args(vec![dir.path().into()], true, None)).unwrap();
        let names: Vec<_> = items
            .iter()
            .map(|i| (i.name.as_str().to_owned(), i.size))
            .collect();
        assert_eq!(names, [("a.txt".to_owned(), 1), ("b.txt".to_owned(), 2)]);
        let items = collect_uploads(&args(
            vec![dir.path().join("a.txt")],
            false,
            Some("renamed.txt"),
        ))
        .unwrap();
        let names: Vec<_> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["renamed.txt"]);
        let e = collect_uploads(&args(vec![dir.path().join("a.txt")], false, Some("a//b")))
            .err()
            .unwrap();
        assert!(e.to_string().contains("choose a name with --name"), "{e}");
        let e = collect_uploads(&args(vec![dir.path().into()], true, Some("one.txt")))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("--name needs exactly one file"),
            "{e}"
        );
        let e = collect_uploads(&args(vec![dir.path().join("missing")], false, None))
            .err()
            .unwrap();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
