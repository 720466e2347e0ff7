//! `search`: look up files on the network by words of their names, and
//! remember the hits for short ids and tab completion in the shell.

use peerdex_proto::rest::SearchQuery;

use super::Ctx;
use crate::cli::SearchArgs;
use crate::output::{human_size, outp, quoted, sanitize, short_id, table};

pub(super) async fn run(ctx: &mut Ctx, args: SearchArgs) -> anyhow::Result<()> {
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
    let cut = || {
        if results.truncated {
            eprintln!(
                "the directory stopped this search at its work budget: not every match is shown; add a word to narrow it"
            );
        }
    };
    if results.hits.is_empty() {
        eprintln!("no shared file matches {}", quoted(&q));
        cut();
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
    cut();
    if let Some(page) = &results.next_page {
        eprintln!(
            "more results: {}",
            ctx.cmd(&format!("search {q} --page {page}"))
        );
    }
    Ok(())
}
