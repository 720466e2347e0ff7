//! `jobs`: every download job of this PServer, running and finished.

use super::Ctx;
use crate::output::{human_size, outp, sanitize, table};
use crate::progress::state_word;

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
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
                crate::output::name(name),
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
