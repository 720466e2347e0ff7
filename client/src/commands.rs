//! What each command does: call the control API, show progress, print the
//! result (a table or sentence for people, one JSON document with `--json`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, anyhow, bail};
use futures_util::TryStreamExt;
use indicatif::ProgressBar;
use peerdex_proto::rest::{
    Candidate, DownloadRequest, FileInfo, Job, JobState, SearchHit, SearchQuery,
};
use peerdex_proto::{FileId, FileName};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::api;
use crate::cli::{
    CancelArgs, Cli, Command, CompletionsArgs, GetArgs, RmArgs, SearchArgs, UploadArgs,
};
use crate::output::{
    Term, host_of, human_rate, human_size, outln, outp, sanitize, short_id, table,
};

/// The user pressed Ctrl+C; the message says what is left running.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// Everything a command needs, kept for the whole session (one command, or
/// a REPL session).
pub struct Ctx {
    pub api: api::Client,
    pub json: bool,
    pub term: Term,
    /// In the REPL, hints name commands without the `peerdex` prefix.
    pub repl: bool,
    /// Results of the last search, for short ids and tab completion.
    pub last_hits: Vec<SearchHit>,
    /// What to tell the user if Ctrl+C stops the running command (e.g. that
    /// a download goes on in the PServer). Set by the command.
    pub interrupt_note: Arc<Mutex<Option<String>>>,
}

impl Ctx {
    /// How to spell a command in a hint: `peerdex get x`, or `get x` in the REPL.
    fn cmd(&self, rest: &str) -> String {
        if self.repl {
            format!("`{rest}`")
        } else {
            format!("`peerdex {rest}`")
        }
    }

    /// Print one JSON document on stdout.
    fn print_json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        crate::output::out(&text);
        Ok(())
    }
}

/// Run one command until it finishes or the user presses Ctrl+C.
pub async fn execute(ctx: &mut Ctx, command: Command) -> anyhow::Result<()> {
    let note = ctx.interrupt_note.clone();
    *note.lock().unwrap() = None;
    tokio::select! {
        // Biased, Ctrl+C first: the handler is installed before the command
        // does anything.
        biased;
        () = ctrl_c() => {
            let msg = note.lock().unwrap().take().unwrap_or_else(|| "interrupted".to_owned());
            Err(Interrupted(msg).into())
        }
        r = dispatch(ctx, command) => r,
    }
}

/// Resolves on Ctrl+C; never, if the handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn dispatch(ctx: &mut Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Upload(a) => upload(ctx, a).await,
        Command::Get(a) => get(ctx, a).await,
        Command::Search(a) => search(ctx, a).await,
        Command::Ls => ls(ctx).await,
        Command::Rm(a) => rm(ctx, a).await,
        Command::Status => status(ctx).await,
        Command::Jobs => jobs(ctx).await,
        Command::Cancel(a) => cancel(ctx, a).await,
        Command::Completions(a) => completions(a),
    }
}

// ---------------------------------------------------------------- upload

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
}

async fn upload(ctx: &mut Ctx, args: UploadArgs) -> anyhow::Result<()> {
    let items = tokio::task::spawn_blocking(move || collect_uploads(&args)).await??;
    if items.is_empty() {
        bail!("nothing to upload: the folders given contain no files");
    }
    // Also checks that the PServer is there before reading any file.
    let max = ctx.api.status().await?.max_upload_bytes;
    let mut report = UploadReport {
        files: Vec::new(),
        errors: Vec::new(),
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
            upload_one(ctx, &item).await
        };
        match result {
            Ok(up) => {
                if !ctx.json {
                    let note = if up.created { "" } else { "  (already shared)" };
                    outln!(
                        "{}  {:>10}  {}{note}",
                        up.file.file_id,
                        human_size(up.file.size),
                        sanitize(&up.file.name)
                    );
                }
                report.files.push(UploadedJson {
                    file_id: up.file.file_id,
                    name: up.file.name,
                    size: up.file.size,
                    created: up.created,
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
    }
    match report.errors.len() {
        0 => Ok(()),
        n => {
            Err(ReportedFailure(format!("{n} of {} uploads failed", n + report.files.len())).into())
        }
    }
}

/// A file over the PServer's upload limit, caught before sending it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TooLarge(String);

/// A failure whose details were already printed (per file); the reporter
/// prints only this summary and, with `--json`, no second document.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReportedFailure(pub String);

async fn upload_one(ctx: &Ctx, item: &UploadItem) -> anyhow::Result<api::Uploaded> {
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
    let result = ctx.api.upload(item.name.as_str(), item.size, body).await;
    bar.finish_and_clear();
    Ok(result?)
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

// ---------------------------------------------------------------- get

#[derive(Serialize)]
struct GetReport<'a> {
    job: &'a Job,
    /// Where `-o` wrote the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    saved_to: Option<String>,
}

async fn get(ctx: &mut Ctx, args: GetArgs) -> anyhow::Result<()> {
    let request = download_request(&args.target, &ctx.last_hits)?;
    if let Some(out) = &args.output {
        check_output(out, args.force, None)?;
    }
    let job = ctx.api.start_download(&request).await?;
    let job = follow(ctx, job).await?;
    let what = job.name.clone().unwrap_or_else(|| args.target.clone());
    match job.state {
        JobState::Done => {}
        JobState::Failed => bail!(
            "download of {:?} failed: {}",
            sanitize(&what),
            job.error.as_deref().unwrap_or("no reason given")
        ),
        _ => bail!("download of {:?} was cancelled", sanitize(&what)),
    }
    let file_id = job
        .file_id
        .clone()
        .context("the PServer reported a finished job without a file id")?;
    let size = job.bytes_total.unwrap_or(job.bytes_done);
    if !ctx.json {
        outln!("{file_id}  {:>10}  {}", human_size(size), sanitize(&what));
    }
    let mut saved_to = None;
    if let Some(out) = &args.output {
        let name = job.name.as_deref().unwrap_or(&file_id);
        let dest = check_output(out, args.force, Some(name))?;
        save_content(ctx, &file_id, size, &dest, args.force).await?;
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

/// `X` is an id if it is one, a short id if it prefixes exactly one id from
/// the last search, otherwise an exact name.
fn download_request(target: &str, last_hits: &[SearchHit]) -> anyhow::Result<DownloadRequest> {
    if let Ok(id) = target.parse::<FileId>() {
        return Ok(DownloadRequest {
            file_id: Some(id.to_hex()),
            name: None,
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
            });
        }
    }
    let name: FileName = target
        .parse()
        .map_err(|e| anyhow!("{e}; give a file's exact name or its 64-character id"))?;
    Ok(DownloadRequest {
        file_id: None,
        name: Some(name.into_string()),
    })
}

/// Where `-o PATH` writes: PATH itself, or PATH/NAME when PATH is a folder.
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
                path.join(n.as_str())
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

/// Follow a job's events with a progress bar until it reaches a final state.
/// Ctrl+C stops following (the job keeps running in the PServer).
async fn follow(ctx: &Ctx, job: Job) -> anyhow::Result<Job> {
    if job.state.is_final() {
        return Ok(job);
    }
    let job_id = job.job_id.clone();
    *ctx.interrupt_note.lock().unwrap() = Some(format!(
        "stopped following job {job_id}; the download continues in your PServer ({} stops it)",
        ctx.cmd(&format!("cancel {job_id}"))
    ));
    let bar = ctx.term.bytes_bar(job.bytes_total);
    let mut view = Progress {
        last_state: None,
        last_source: None,
    };
    view.show(ctx, &bar, &job);
    // Dropped on Ctrl+C: leaves the bar where it was instead of erasing it.
    let _bar_guard = AbandonOnDrop(bar.clone());
    let result = follow_events(ctx, &job_id, &bar, &mut view).await;
    *ctx.interrupt_note.lock().unwrap() = None;
    match &result {
        Ok(j) if j.state == JobState::Done => bar.finish(),
        _ => bar.abandon(),
    }
    result
}

/// Stops a bar's ticking and keeps its last line when the owner is dropped.
struct AbandonOnDrop(ProgressBar);
impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            self.0.abandon();
        }
    }
}

async fn follow_events(
    ctx: &Ctx,
    job_id: &str,
    bar: &ProgressBar,
    view: &mut Progress,
) -> anyhow::Result<Job> {
    let mut events = ctx.api.events(job_id).await?;
    while let Some(job) = events.next().await? {
        view.show(ctx, bar, &job);
        if job.state.is_final() {
            return Ok(job);
        }
    }
    // The stream ended without a final state (PServer restarting?): ask once.
    let job = ctx.api.job(job_id).await?;
    if job.state.is_final() {
        return Ok(job);
    }
    bail!(
        "lost the live updates of job {job_id} (state: {:?}); {} shows where it is",
        job.state,
        ctx.cmd("jobs")
    )
}

/// Turns job updates into bar updates, or into one stderr line per change
/// of state or source when there is no bar.
struct Progress {
    last_state: Option<JobState>,
    last_source: Option<String>,
}

impl Progress {
    fn show(&mut self, ctx: &Ctx, bar: &ProgressBar, job: &Job) {
        let label = job
            .name
            .as_deref()
            .or(job.request.name.as_deref())
            .map(sanitize);
        let label =
            label.unwrap_or_else(|| short_id(job.file_id.as_deref().unwrap_or("file")).to_owned());
        let sources = describe_sources(job);
        if ctx.term.bars {
            bar.set_prefix(label);
            if let Some(total) = job.bytes_total {
                ctx.term.set_total(bar, total);
            }
            bar.set_position(job.bytes_done);
            bar.set_message(match job.state {
                JobState::Downloading => sources,
                s => state_word(s).to_owned(),
            });
        } else if !ctx.json {
            let changed = self.last_state != Some(job.state) || self.last_source != job.source;
            if changed && !job.state.is_final() {
                let mut line = format!("{}: {label}", state_word(job.state));
                if job.state == JobState::Downloading && !sources.is_empty() {
                    let _ = write!(line, " {sources}");
                }
                eprintln!("{line}");
            }
        }
        self.last_state = Some(job.state);
        self.last_source.clone_from(&job.source);
    }
}

fn state_word(s: JobState) -> &'static str {
    match s {
        JobState::Locating => "locating",
        JobState::Downloading => "downloading",
        JobState::Verifying => "verifying",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// `from 10.0.0.5:7071 (3.10 MiB/s), 10.0.0.6:7071 (1.20 MiB/s)`.
fn describe_sources(job: &Job) -> String {
    let active: Vec<String> = job
        .sources
        .iter()
        .filter(|s| s.rate_bps > 0 || job.sources.len() == 1)
        .map(|s| {
            format!(
                "{} ({})",
                sanitize(host_of(&s.peer_url)),
                human_rate(s.rate_bps)
            )
        })
        .collect();
    if !active.is_empty() {
        format!("from {}", active.join(", "))
    } else if let Some(src) = &job.source {
        format!("from {}", sanitize(host_of(src)))
    } else {
        String::new()
    }
}

/// Stream a stored file from the PServer to `dest` through a temp file in
/// the same folder, renamed into place only once every byte arrived.
async fn save_content(
    ctx: &Ctx,
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
    let mut resp = ctx.api.file_content(file_id).await?;
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

// ---------------------------------------------------------------- search, ls, rm

async fn search(ctx: &mut Ctx, args: SearchArgs) -> anyhow::Result<()> {
    let q = args.query.join(" ");
    let query = SearchQuery {
        q: q.clone(),
        limit: args.limit,
        page: args.page,
    };
    let results = ctx.api.search(&query).await?;
    ctx.last_hits.clone_from(&results.hits);
    if ctx.json {
        return ctx.print_json(&results);
    }
    if results.hits.is_empty() {
        eprintln!("no shared file matches {q:?}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = results
        .hits
        .iter()
        .map(|h| {
            vec![
                sanitize(&h.name),
                short_id(&h.file_id).to_owned(),
                human_size(h.size),
                h.holders.to_string(),
            ]
        })
        .collect();
    outp!(
        "{}",
        table(&["NAME", "ID", "SIZE", "HOLDERS"], &rows, &[2, 3])
    );
    if let Some(page) = &results.next_page {
        eprintln!(
            "more results: {}",
            ctx.cmd(&format!("search {q} --page {page}"))
        );
    }
    Ok(())
}

async fn ls(ctx: &mut Ctx) -> anyhow::Result<()> {
    let list = ctx.api.list_files().await?;
    if ctx.json {
        return ctx.print_json(&list);
    }
    if list.files.is_empty() {
        eprintln!(
            "your PServer shares no files yet; {} shares one",
            ctx.cmd("upload PATH")
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .files
        .iter()
        .map(|f| vec![sanitize(&f.name), f.file_id.clone(), human_size(f.size)])
        .collect();
    outp!("{}", table(&["NAME", "ID", "SIZE"], &rows, &[2]));
    Ok(())
}

async fn rm(ctx: &mut Ctx, args: RmArgs) -> anyhow::Result<()> {
    let id = match args.id.parse::<FileId>() {
        Ok(id) => id.to_hex(),
        Err(_) => resolve_local(ctx, &args.id).await?,
    };
    let removed = ctx.api.remove_file(&id).await?;
    if ctx.json {
        return ctx.print_json(&removed);
    }
    for f in &removed.files {
        outln!("stopped sharing {} ({})", sanitize(&f.name), f.file_id);
    }
    Ok(())
}

/// A unique id prefix, or an exact name, among the files the PServer shares.
async fn resolve_local(ctx: &Ctx, given: &str) -> anyhow::Result<String> {
    let files = ctx.api.list_files().await?.files;
    let lower = given.to_ascii_lowercase();
    let by_prefix = |f: &&FileInfo| given.len() >= 4 && f.file_id.starts_with(&lower);
    let mut ids: Vec<&str> = files
        .iter()
        .filter(by_prefix)
        .map(|f| f.file_id.as_str())
        .collect();
    if ids.is_empty() {
        ids = files
            .iter()
            .filter(|f| f.name == given)
            .map(|f| f.file_id.as_str())
            .collect();
    }
    ids.sort_unstable();
    ids.dedup();
    match ids[..] {
        [id] => Ok(id.to_owned()),
        [] => bail!(
            "your PServer shares no file with id or name {:?}; {} lists them",
            sanitize(given),
            ctx.cmd("ls")
        ),
        _ => bail!(
            "{:?} matches {} files; give more characters of the id",
            sanitize(given),
            ids.len()
        ),
    }
}

// ---------------------------------------------------------------- status, jobs, cancel

async fn status(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.api.status().await?;
    if ctx.json {
        return ctx.print_json(&s);
    }
    let reach = |ok: bool| if ok { "reachable" } else { "UNREACHABLE" };
    let lease = match s.lease_age_secs {
        Some(n) => format!("lease renewed {n} s ago"),
        None => "never joined".to_owned(),
    };
    let neighbours = if s.neighbours.is_empty() {
        "none (searches go to the central directly)".to_owned()
    } else {
        s.neighbours
            .iter()
            .map(|n| format!("{} ({})", n.url, reach(n.reachable)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<12} {v}");
    };
    line("peer id", s.peer_id);
    line("public url", s.public_url);
    line(
        "central",
        format!(
            "{} ({}, {lease})",
            s.central_url,
            reach(s.central_reachable)
        ),
    );
    line("neighbours", neighbours);
    line(
        "sharing",
        format!("{} files, {}", s.shared_files, human_size(s.shared_bytes)),
    );
    line(
        "transfers",
        format!(
            "{} uploads, {} downloads",
            s.active_uploads, s.active_downloads
        ),
    );
    if s.max_upload_bytes > 0 {
        line("max upload", human_size(s.max_upload_bytes));
    }
    line("version", s.version);
    outp!("{out}");
    Ok(())
}

async fn jobs(ctx: &mut Ctx) -> anyhow::Result<()> {
    let list = ctx.api.list_downloads().await?;
    if ctx.json {
        return ctx.print_json(&list);
    }
    if list.jobs.is_empty() {
        eprintln!("no downloads yet; {} starts one", ctx.cmd("get NAME"));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .jobs
        .iter()
        .map(|j| {
            let name = j
                .name
                .as_deref()
                .or(j.request.name.as_deref())
                .unwrap_or("");
            let progress = match j.bytes_total {
                Some(t) => format!("{}/{}", human_size(j.bytes_done), human_size(t)),
                None => human_size(j.bytes_done),
            };
            vec![
                j.job_id.clone(),
                state_word(j.state).to_owned(),
                progress,
                sanitize(name),
                j.error.as_deref().map(sanitize).unwrap_or_default(),
            ]
        })
        .collect();
    outp!(
        "{}",
        table(&["JOB", "STATE", "PROGRESS", "NAME", "ERROR"], &rows, &[])
    );
    Ok(())
}

async fn cancel(ctx: &mut Ctx, args: CancelArgs) -> anyhow::Result<()> {
    let job = ctx.api.cancel(&args.job).await?;
    if ctx.json {
        return ctx.print_json(&job);
    }
    match job.state {
        JobState::Cancelled => outln!("cancelled job {}", job.job_id),
        s if s.is_final() => outln!("job {} had already ended ({})", job.job_id, state_word(s)),
        s => outln!(
            "asked job {} to stop; it is still {}",
            job.job_id,
            state_word(s)
        ),
    }
    Ok(())
}

fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "peerdex", &mut script);
    crate::output::out(String::from_utf8_lossy(&script));
    Ok(())
}

// ---------------------------------------------------------------- errors

/// The candidates table for an ambiguous name.
pub fn candidates_table(candidates: &[Candidate]) -> String {
    let rows: Vec<Vec<String>> = candidates
        .iter()
        .map(|c| vec![c.file_id.clone(), human_size(c.size), c.holders.to_string()])
        .collect();
    table(&["ID", "SIZE", "HOLDERS"], &rows, &[1, 2])
}

#[derive(Serialize)]
struct ErrorDoc<'a> {
    error: ErrorJson<'a>,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    candidates: &'a [Candidate],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<String>,
}

/// Print a failed command's error: a sentence on stderr (every cause with
/// `-v`), the candidates of an ambiguous name, and with `--json` an
/// `{"error": ...}` document on stdout.
pub fn report(ctx: &Ctx, err: &anyhow::Error, verbose: bool) {
    let api_err = err.chain().find_map(|e| e.downcast_ref::<api::Error>());
    let candidates: &[Candidate] = api_err
        .and_then(api::Error::api_error)
        .map_or(&[], |e| &e.candidates);
    let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
    let mut msg = format!("error: {err}\n");
    if verbose {
        for c in &causes {
            let _ = writeln!(msg, "  caused by: {c}");
        }
    } else if !causes.is_empty() && !ctx.json {
        msg.push_str("  (run with -v for details)\n");
    }
    if !candidates.is_empty() {
        let _ = writeln!(
            msg,
            "{}ask for one by id: {}",
            candidates_table(candidates),
            ctx.cmd(&format!("get {}", candidates[0].file_id))
        );
    }
    eprint!("{msg}");
    if ctx.json && !err.is::<ReportedFailure>() {
        let code = if err.is::<Interrupted>() {
            "interrupted"
        } else {
            api_err.map_or("failed", api::Error::code)
        };
        let doc = ErrorDoc {
            error: ErrorJson {
                code,
                message: err.to_string(),
                candidates,
                causes,
            },
        };
        outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, name: &str) -> SearchHit {
        SearchHit {
            name: name.into(),
            file_id: id.into(),
            size: 1,
            holders: 1,
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
        assert!(check_output(dir.path(), false, Some("x.bin")).is_err());
        assert!(check_output(dir.path(), false, Some("../evil")).is_err());
        let e = check_output(&dir.path().join("no/such/f"), false, None).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

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
        assert_eq!(items[0].name.as_str(), "renamed.txt");
        assert!(
            collect_uploads(&args(vec![dir.path().join("a.txt")], false, Some("a/b"))).is_err()
        );
        let e = collect_uploads(&args(vec![dir.path().join("missing")], false, None))
            .err()
            .unwrap();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn sources_text() {
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "job_id": "j", "state": "downloading", "request": {"name": "x"},
            "bytes_done": 0, "elapsed_secs": 0.0,
            "source": "http://10.0.0.5:7071",
        }))
        .unwrap();
        assert_eq!(describe_sources(&job), "from 10.0.0.5:7071");
        job.sources = serde_json::from_value(serde_json::json!([
            {"peer_id": "p", "peer_url": "http://10.0.0.5:7071", "bytes": 10, "rate_bps": 2048},
            {"peer_id": "q", "peer_url": "http://10.0.0.6:7071", "bytes": 5, "rate_bps": 1024},
        ]))
        .unwrap();
        assert_eq!(
            describe_sources(&job),
            "from 10.0.0.5:7071 (2.00 KiB/s), 10.0.0.6:7071 (1.00 KiB/s)"
        );
    }
}
