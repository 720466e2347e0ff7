//! `status`: who this PServer is and how its links to the central and the
//! neighbours are doing.

use std::fmt::Write as _;

use super::Ctx;
use crate::output::{human_size, outp};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
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
    let named = match &s.central_name {
        Some(n) => format!(" \"{n}\""),
        None => String::new(),
    };
    line(
        "central",
        format!(
            "{}{named} ({}, {lease})",
            s.central_url,
            reach(s.central_reachable)
        ),
    );
    if s.centrals.len() > 1 {
        line("centrals", s.centrals.join(", "));
    }
    if let Some(l) = s.leader.clone() {
        line("leader", l);
    }
    if let Some(e) = s.lease_error.clone() {
        line("central said", e);
    }
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
    line(
        "bytes",
        format!(
            "{} sent, {} received",
            human_size(s.bytes_sent),
            human_size(s.bytes_received)
        ),
    );
    let r = s.lease_renewals;
    line(
        "renewals",
        format!("{} ok, {} rejoin, {} error", r.ok, r.rejoin, r.error),
    );
    if s.max_upload_bytes > 0 {
        line("max upload", human_size(s.max_upload_bytes));
    }
    line("version", s.version);
    outp!("{out}");
    Ok(())
}
