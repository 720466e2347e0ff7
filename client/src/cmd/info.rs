//! `info`: one file as the directory sees it: size, names, holders (owner
//! or replica), and its copies wanted and live when it is pinned.

use std::fmt::Write as _;

use anyhow::bail;
use peerdex_proto::FileId;
use peerdex_proto::rest::{LocateQuery, LocatedFile};

use super::Ctx;
use crate::cli::InfoArgs;
use crate::output::{host_of, human_size, outp, quoted};

pub(super) async fn run(ctx: &Ctx, args: InfoArgs) -> anyhow::Result<()> {
    let target = super::replicate::target(&args.target, &ctx.last_hits);
    let query = match target.parse::<FileId>() {
        Ok(id) => LocateQuery {
            file_id: Some(id.to_hex()),
            name: None,
        },
        Err(_) => LocateQuery {
            file_id: None,
            name: Some(target.clone()),
        },
    };
    let found = ctx.api.locate(&query).await?;
    if ctx.json {
        return ctx.print_json(&found);
    }
    if found.files.is_empty() {
        bail!(
            "the directory knows no file {}; {} finds files by words of their names",
            quoted(&args.target),
            ctx.cmd("search WORDS")
        );
    }
    let mut out = String::new();
    for (i, f) in found.files.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&describe(f));
    }
    outp!("{out}");
    Ok(())
}

/// The lines `info` prints for one content.
fn describe(f: &LocatedFile) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<9} {v}");
    };
    line("id", f.file_id.clone());
    line("size", human_size(f.size));
    line(
        "names",
        f.names
            .iter()
            .map(|n| crate::output::name(n))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let r = &f.replication;
    let copies = if r.wanted > 0 {
        format!(
            "{} proven of {} wanted ({} live: {} unproven, {} replicas) — {}",
            r.proven,
            r.wanted,
            r.live,
            r.live.saturating_sub(r.proven),
            r.replicas,
            if r.state.is_empty() { "?" } else { &r.state }
        )
    } else {
        format!("{} live (not pinned)", f.holders.len())
    };
    line("copies", copies);
    if f.holders.is_empty() {
        line("holders", "none live".into());
    }
    for (i, h) in f.holders.iter().enumerate() {
        line(
            if i == 0 { "holders" } else { "" },
            format!(
                "{} ({}, {} uploads{})",
                host_of(&h.peer_url),
                if h.replica { "replica" } else { "owner" },
                h.active_uploads,
                if h.island.is_empty() {
                    String::new()
                } else {
                    format!(", island {}", h.island)
                }
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use peerdex_proto::rest::{Holder, Replication};

    use super::*;

    #[test]
    fn copies_and_holders_are_told() {
        let holder = |url: &str, replica| Holder {
            peer_id: "p".into(),
            peer_url: url.into(),
            active_uploads: 0,
            free_upload_slots: 4,
            replica,
            island: String::new(),
        };
        let mut f = LocatedFile {
            file_id: "ab".repeat(32),
            size: 2048,
            names: vec!["a.bin".into(), "b.bin".into()],
            holders: vec![
                holder("http://10.0.0.1:7071", false),
                holder("http://10.0.0.2:7071", true),
            ],
            replication: Replication {
                wanted: 3,
                live: 2,
                replicas: 1,
                state: "under".into(),
                proven: 1,
            },
        };
        let text = describe(&f);
        assert!(text.contains("names     a.bin, b.bin\n"), "{text}");
        assert!(
            text.contains(
                "copies    1 proven of 3 wanted (2 live: 1 unproven, 1 replicas) — under\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("holders   10.0.0.1:7071 (owner, 0 uploads)\n"),
            "{text}"
        );
        assert!(
            text.contains("          10.0.0.2:7071 (replica, 0 uploads)\n"),
            "{text}"
        );
        f.replication = Replication::default();
        assert!(describe(&f).contains("copies    2 live (not pinned)\n"));
    }
}
