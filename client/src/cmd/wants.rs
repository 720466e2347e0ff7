//! `want`, `wants`, `unwant`: wanted files (the PServer keeps them and the
//! directory tells it the moment one appears).

use peerdex_proto::rest::{Want, WantRequest, WantState};

use super::Ctx;
use crate::cli::{UnwantArgs, WantArgs};
use crate::output::{outln, outp, quoted, sanitize, short_id, table};

pub(super) async fn want(ctx: &Ctx, args: WantArgs) -> anyhow::Result<()> {
    let req = match args.target {
        Some(t) => WantRequest {
            file: Some(super::replicate::target(&t, &ctx.last_hits)),
            query: None,
            download: args.no_download.then_some(false),
        },
        None => WantRequest {
            file: None,
            query: Some(args.query.join(" ")),
            download: Some(!args.no_download),
        },
    };
    let w = ctx.api.want(&req).await?;
    if ctx.json {
        return ctx.print_json(&w);
    }
    let what = wanted(&w);
    match w.state {
        WantState::Done => outln!("{what} is in your share folder already: nothing to wait for"),
        _ if w.download => outln!(
            "wanted {what} (want {}): it downloads the moment a peer shares it; {} shows where it is",
            short_id(&w.want_id),
            ctx.cmd("wants")
        ),
        _ => outln!(
            "watching for {what} (want {}): you are told when it appears (web UI, events, PSERVER_NOTIFY_URL); {} lists what matched",
            short_id(&w.want_id),
            ctx.cmd("wants")
        ),
    }
    Ok(())
}

pub(super) async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let list = ctx.api.wants().await?;
    if ctx.json {
        return ctx.print_json(&list);
    }
    if list.wants.is_empty() {
        eprintln!(
            "you want no file; {} downloads one the moment someone shares it",
            ctx.cmd("want ID|NAME")
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .wants
        .iter()
        .map(|w| {
            vec![
                short_id(&w.want_id).to_owned(),
                wanted(w),
                if w.download { "download" } else { "notify" }.to_owned(),
                state(w),
                matched(w),
            ]
        })
        .collect();
    outp!(
        "{}",
        table(&["WANT", "WANTED", "THEN", "STATE", "MATCHED"], &rows, &[])
    );
    if !list.watching {
        eprintln!(
            "not all wants are watched yet (the PServer is (re)connecting to the directory); they are checked once it is"
        );
    }
    Ok(())
}

pub(super) async fn unwant(ctx: &Ctx, args: UnwantArgs) -> anyhow::Result<()> {
    let id = resolve(ctx, &args.want).await?;
    let w = ctx.api.unwant(&id).await?;
    if ctx.json {
        return ctx.print_json(&w);
    }
    outln!("no longer wanted: {}", wanted(&w));
    if w.state == WantState::Downloading {
        eprintln!(
            "its download goes on; {} stops it",
            ctx.cmd(&format!("cancel {}", w.job_id.unwrap_or_default()))
        );
    }
    Ok(())
}

/// A full want id as is; a prefix of exactly one want's id, that id.
async fn resolve(ctx: &Ctx, given: &str) -> anyhow::Result<String> {
    if given.len() == 36 {
        return Ok(given.to_owned());
    }
    let list = ctx.api.wants().await?;
    let found: Vec<&Want> = list
        .wants
        .iter()
        .filter(|w| !given.is_empty() && w.want_id.starts_with(given))
        .collect();
    match found[..] {
        [w] => Ok(w.want_id.clone()),
        [] => anyhow::bail!(
            "no want starts with {given:?}; {} lists them",
            ctx.cmd("wants")
        ),
        _ => anyhow::bail!(
            "{} wants start with {given:?}; give more of the id",
            found.len()
        ),
    }
}

fn wanted(w: &Want) -> String {
    match (&w.file, &w.query) {
        (Some(f), _) => quoted(f),
        (None, Some(q)) => format!("files matching {}", quoted(q)),
        (None, None) => "?".into(),
    }
}

fn state(w: &Want) -> String {
    let s = match w.state {
        WantState::Waiting => "waiting",
        WantState::Matched => "matched",
        WantState::Ambiguous => "ambiguous: want one by id",
        WantState::Downloading => "downloading",
        WantState::Done => "done",
    };
    match &w.error {
        Some(e) if w.state != WantState::Done => format!("{s} ({})", sanitize(e)),
        _ => s.to_owned(),
    }
}

fn matched(w: &Want) -> String {
    match w.matches.len() {
        0 => "-".into(),
        1 => format!(
            "{} ({})",
            crate::output::name(&w.matches[0].name),
            short_id(&w.matches[0].file_id)
        ),
        n => {
            w.matches
                .iter()
                .map(|m| short_id(&m.file_id).to_owned())
                .collect::<Vec<_>>()
                .join(", ")
                + &format!(" ({n} files)")
        }
    }
}
