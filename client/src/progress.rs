//! Following a download job: a live progress bar on a terminal, one
//! stderr line per change of state or source otherwise, nothing with
//! `--json`. Ctrl+C stops following, never the job itself.

use std::fmt::Write as _;

use anyhow::bail;
use indicatif::ProgressBar;
use peerdex_proto::rest::{Job, JobState};

use crate::ctx::Ctx;
use crate::output::{host_of, human_rate, sanitize, short_id};

/// Follow a job's events with a progress bar until it reaches a final state.
/// Ctrl+C stops following (the job keeps running in the PServer).
pub(crate) async fn follow(ctx: &Ctx, job: Job) -> anyhow::Result<Job> {
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
        "lost the live updates of job {job_id} (state: {}); {} shows where it is",
        state_word(job.state),
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

pub(crate) fn state_word(s: JobState) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

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
