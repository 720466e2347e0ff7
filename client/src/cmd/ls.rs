//! `ls`: the files this PServer shares.

use super::Ctx;
use crate::output::{human_size, name, outp, table};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
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
        .map(|f| vec![name(&f.name), f.file_id.clone(), human_size(f.size)])
        .collect();
    outp!("{}", table(&["NAME", "ID", "SIZE"], &rows, &[2]));
    Ok(())
}
