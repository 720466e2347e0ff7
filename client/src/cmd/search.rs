//! `search`: look up files on the network by words of their names, and
//! remember the hits for short ids and tab completion in the shell.

use peerdex_proto::rest::SearchQuery;

use super::Ctx;
use crate::cli::SearchArgs;
use crate::output::{human_size, name, outp, quoted, short_id, table};

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
    let islands = || {
        if !results.islands.is_empty() {
            eprintln!(
                "linked islands searched too: {}",
                results.islands.join(", ")
            );
        }
        if !results.islands_skipped.is_empty() {
            eprintln!(
                "linked islands not searched (down or too slow): {}",
                results.islands_skipped.join(", ")
            );
        }
    };
    if results.hits.is_empty() {
        eprintln!("no shared file matches {}", quoted(&q));
        islands();
        cut();
        return Ok(());
    }
    // The island column appears once a hit comes from a linked island.
    let own = results
        .hits
        .first()
        .map(|h| h.island.clone())
        .unwrap_or_default();
    let mixed = results.hits.iter().any(|h| h.island != own);
    let rows: Vec<Vec<String>> = results
        .hits
        .iter()
        .map(|h| {
            let mut row = vec![
                name(&h.name),
                short_id(&h.file_id).to_owned(),
                human_size(h.size),
                holders(h.holders, h.replicas_wanted),
            ];
            if mixed {
                row.push(h.island.clone());
            }
            row
        })
        .collect();
    let head: &[&str] = if mixed {
        &["NAME", "ID", "SIZE", "HOLDERS", "ISLAND"]
    } else {
        &["NAME", "ID", "SIZE", "HOLDERS"]
    };
    outp!("{}", table(head, &rows, &[2, 3]));
    islands();
    if results.hits.iter().any(|h| h.replicas_wanted > 0) {
        eprintln!(
            "HOLDERS n/w: n live holders of a file pinned to w copies ({} shows them)",
            ctx.cmd("pins")
        );
    }
    cut();
    if let Some(page) = &results.next_page {
        eprintln!(
            "more results: {}",
            ctx.cmd(&format!("search {q} --page {page}"))
        );
    }
    Ok(())
}

/// Live holders, and the copies wanted when the file is pinned: `2/3`.
fn holders(live: u32, wanted: u32) -> String {
    if wanted > 0 {
        format!("{live}/{wanted}")
    } else {
        live.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn holders_show_the_copies_wanted_when_pinned() {
        assert_eq!(super::holders(2, 0), "2");
        assert_eq!(super::holders(2, 3), "2/3");
    }
}
