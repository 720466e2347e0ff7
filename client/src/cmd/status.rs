//! `status`: who this PServer is and how its links to the central and the
//! neighbours are doing.

use std::fmt::Write as _;

use super::Ctx;
use crate::output::{human_size, outp, sanitize};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let s = if ctx.verbose {
        ctx.api.status_all_unshared().await?
    } else {
        ctx.api.status().await?
    };
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
    let replicas = replicas_line(&s);
    let unshared = (s.unshared_files > 0).then(|| unshared_line(&s));
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
    if let Some(i) = s.island.clone() {
        line("island", i);
    }
    if let Some(r) = &s.reachability {
        let relaying = r.relaying_for.map_or(String::new(), |n| {
            format!("; relaying for {n} peers behind NAT")
        });
        line("reached", format!("{}{relaying}", r.summary));
    }
    if let Some(e) = s.lease_error.clone() {
        line("central said", e);
    }
    line("neighbours", neighbours);
    line(
        "sharing",
        format!("{} files, {}", s.shared_files, human_size(s.shared_bytes)),
    );
    if let Some(h) = s.hashing {
        line(
            "hashing",
            format!(
                "{} of {} new or changed files (shared as each is hashed)",
                thousands(h.done),
                thousands(h.total)
            ),
        );
    }
    if s.not_listed_files > 0 {
        line(
            "not listed",
            format!(
                "{} shared files are not listed by the directory: {}",
                thousands(s.not_listed_files),
                s.not_listed_reason
                    .as_deref()
                    .map(sanitize)
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(unshared) = unshared {
        line("not shared", unshared);
        for f in &s.unshared {
            line(
                "",
                format!("{}: {}", sanitize(&f.name), sanitize(&f.reason)),
            );
        }
        if s.unshared_files > s.unshared.len() as u64 {
            let more = s.unshared_files - s.unshared.len() as u64;
            let hint = if ctx.verbose {
                String::new()
            } else {
                format!(" ({} lists them all)", ctx.cmd("status --verbose"))
            };
            line("", format!("… and {more} more{hint}"));
        }
    }
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
    line("replicas", replicas);
    for f in &s.replica_fetches {
        line(
            "fetching",
            format!(
                "{} ({}) {} of {}",
                crate::output::name(&f.name),
                crate::output::short_id(&f.file_id),
                human_size(f.bytes_done),
                human_size(f.bytes_total)
            ),
        );
    }
    if s.max_upload_bytes > 0 {
        line("max upload", human_size(s.max_upload_bytes));
    }
    line("version", s.version);
    outp!("{out}");
    Ok(())
}

/// `n` with a comma every three digits: 50,000.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Files of the share folder that are not shared, and what to do.
fn unshared_line(s: &peerdex_proto::rest::Status) -> String {
    let n = s.unshared_files;
    let (files, are) = if n == 1 {
        ("file", "is")
    } else {
        ("files", "are")
    };
    format!(
        "{n} {files} in the share folder {are} not shared: rename or remove {}; \
         each is listed below with its reason (the PServer's log has them too)",
        if n == 1 { "it" } else { "them" }
    )
}

/// The replica space: held and offered.
fn replicas_line(s: &peerdex_proto::rest::Status) -> String {
    let n = s.replicas.len();
    let held = format!("{n} held ({})", human_size(s.replica_used_bytes));
    if s.replica_quota_bytes == 0 {
        if n == 0 {
            return "none: no replica space offered (PSERVER_REPLICA_QUOTA_BYTES is 0)".into();
        }
        return format!("{held}; no more are taken (PSERVER_REPLICA_QUOTA_BYTES is 0)");
    }
    format!(
        "{held}, {} of {} quota used",
        human_size(s.replica_used_bytes),
        human_size(s.replica_quota_bytes)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1_234, "1,234"),
            (50_000, "50,000"),
            (1_000_000, "1,000,000"),
        ] {
            assert_eq!(super::thousands(n), s);
        }
    }
}
