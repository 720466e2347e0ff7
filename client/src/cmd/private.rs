//! `private`: the private files whose keys the PServer holds, with their
//! tickets; `private rm ID` removes one (key, ciphertext, pin, and the
//! plaintext opened there).

use anyhow::bail;
use peerdex_proto::private::{PrivateFile, PrivateOrigin};

use super::Ctx;
use crate::cli::{PrivateAction, PrivateArgs};
use crate::output::{human_size, outln, outp, quoted, short_id, table};

pub(super) async fn run(ctx: &Ctx, args: PrivateArgs) -> anyhow::Result<()> {
    match args.action {
        None => list(ctx).await,
        Some(PrivateAction::Rm { id }) => remove(ctx, &id).await,
    }
}

async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let list = ctx.api.list_private().await?;
    if ctx.json {
        return ctx.print_json(&list);
    }
    if list.files.is_empty() {
        eprintln!(
            "no private file; {} encrypts one and prints its ticket",
            ctx.cmd("upload --private FILE")
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .files
        .iter()
        .map(|f| {
            vec![
                crate::output::name(&f.name),
                short_id(&f.file_id).to_owned(),
                human_size(f.size),
                origin(f).to_owned(),
                if f.held { "yes" } else { "no" }.to_owned(),
                f.saved_as.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    outp!(
        "{}",
        table(
            &["NAME", "ID", "SIZE", "ORIGIN", "HELD", "OPENED AS"],
            &rows,
            &[2]
        )
    );
    outln!("");
    for f in &list.files {
        outln!("{}  {}", short_id(&f.file_id), f.ticket);
    }
    eprintln!(
        "opened files are in {} (never shared); a ticket opens its file for whoever has it",
        list.private_dir
    );
    Ok(())
}

fn origin(f: &PrivateFile) -> &'static str {
    match f.origin {
        PrivateOrigin::Owned => "yours",
        PrivateOrigin::Received => "received",
    }
}

async fn remove(ctx: &Ctx, given: &str) -> anyhow::Result<()> {
    let files = ctx.api.list_private().await?.files;
    let lower = given.to_ascii_lowercase();
    let mut ids: Vec<&str> = files
        .iter()
        .map(|f| f.file_id.as_str())
        .filter(|id| lower.len() >= 4 && id.starts_with(&lower))
        .collect();
    ids.dedup();
    let id = match ids[..] {
        [id] => id.to_owned(),
        [] => bail!(
            "your PServer holds no private file with id {}; {} lists them",
            quoted(given),
            ctx.cmd("private")
        ),
        _ => bail!(
            "{} matches {} private files; give more characters of the id",
            quoted(given),
            ids.len()
        ),
    };
    let removed = ctx.api.remove_private(&id).await?;
    if ctx.json {
        return ctx.print_json(&removed);
    }
    outln!(
        "removed private file {} ({}): its key and this PServer's copy",
        crate::output::name(&removed.name),
        removed.file_id
    );
    Ok(())
}
