//! `rm`: stop sharing a file and delete the PServer's copy. Takes a full
//! id, a unique prefix of one (as `ls` shows) or an exact name.

use anyhow::bail;
use peerdex_proto::FileId;
use peerdex_proto::rest::FileInfo;

use super::Ctx;
use crate::cli::RmArgs;
use crate::output::{outln, quoted};

pub(super) async fn run(ctx: &Ctx, args: RmArgs) -> anyhow::Result<()> {
    let id = match args.id.parse::<FileId>() {
        Ok(id) => id.to_hex(),
        Err(_) => resolve_local(ctx, &args.id).await?,
    };
    let removed = ctx.api.remove_file(&id).await?;
    if ctx.json {
        return ctx.print_json(&removed);
    }
    for f in &removed.files {
        outln!(
            "stopped sharing {} ({})",
            crate::output::name(&f.name),
            f.file_id
        );
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
            "your PServer shares no file with id or name {}; {} lists them",
            quoted(given),
            ctx.cmd("ls")
        ),
        _ => bail!(
            "{} matches {} files; give more characters of the id",
            quoted(given),
            ids.len()
        ),
    }
}
