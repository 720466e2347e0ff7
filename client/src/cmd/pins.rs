//! `pins`: the pins this PServer set, with each file's copies wanted and
//! live; and how a pin's state is told, for `replicate` and `upload
//! --replicas` too.

use peerdex_proto::rest::PinStatus;

use super::Ctx;
use crate::output::{human_size, outp, quoted, sanitize, short_id, table};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let list = ctx.api.pins().await?;
    if ctx.json {
        return ctx.print_json(&list);
    }
    if list.pins.is_empty() {
        eprintln!(
            "you pinned no file; {} asks the network to keep copies of one",
            ctx.cmd("replicate ID|NAME N")
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .pins
        .iter()
        .map(|p| {
            let r = &p.replication;
            vec![
                crate::output::name(&p.name),
                short_id(&p.file_id).to_owned(),
                human_size(p.size),
                p.pinned.to_string(),
                r.wanted.to_string(),
                r.proven.to_string(),
                r.live.saturating_sub(r.proven).to_string(),
                r.replicas.to_string(),
                state_or_dash(p),
            ]
        })
        .collect();
    outp!(
        "{}",
        table(
            &[
                "NAME", "ID", "SIZE", "YOURS", "WANTED", "PROVEN", "UNPROVEN", "REPLICAS", "STATE"
            ],
            &rows,
            &[2, 3, 4, 5, 6, 7]
        )
    );
    Ok(())
}

fn state_or_dash(p: &PinStatus) -> String {
    match (p.replication.state.as_str(), p.waiting.as_str()) {
        ("", _) => "-".to_owned(),
        (s, "") => s.to_owned(),
        (s, why) => format!("{s}: {}", sanitize(why)),
    }
}

/// What a pin's state means, in a few words.
fn state_words(p: &PinStatus) -> String {
    match p.replication.state.as_str() {
        "ok" => "ok".into(),
        "under" if !p.waiting.is_empty() => format!("under: {}", sanitize(&p.waiting)),
        "under" => "under: volunteers are fetching copies".into(),
        "lost" => "lost: no live copy; waiting for a peer that has it to come back".into(),
        "" => "not pinned".into(),
        _ => "unknown state".into(),
    }
}

/// One sentence about a pin just set or removed.
pub(super) fn describe(p: &PinStatus) -> String {
    let r = &p.replication;
    let what = format!("{} ({})", quoted(&p.name), short_id(&p.file_id));
    let live = format!(
        "{} live {} ({} proven, {} of them replicas)",
        r.live,
        if r.live == 1 { "copy" } else { "copies" },
        r.proven,
        r.replicas
    );
    if p.pinned >= 2 {
        format!(
            "pinned {what}: {} copies wanted, {live} — {}",
            r.wanted,
            state_words(p)
        )
    } else if r.wanted >= 2 {
        format!(
            "your pin on {what} is removed; another peer's pin keeps {} copies wanted, {live} — {}",
            r.wanted,
            state_words(p)
        )
    } else {
        format!("{what} is not pinned (any more): {live}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdex_proto::rest::Replication;

    fn pin(pinned: u32, wanted: u32, live: u32, state: &str) -> PinStatus {
        PinStatus {
            file_id: "ab".repeat(32),
            name: "report.pdf".into(),
            size: 10,
            pinned,
            replication: Replication {
                wanted,
                live,
                replicas: live.saturating_sub(1),
                state: state.into(),
                proven: live,
            },
            waiting: String::new(),
        }
    }

    #[test]
    fn pins_are_told_in_words() {
        assert_eq!(
            describe(&pin(3, 3, 1, "under")),
            "pinned \u{201c}report.pdf\u{201d} (abababababab): 3 copies wanted, 1 live copy (1 proven, 0 of them replicas) — under: volunteers are fetching copies"
        );
        assert!(describe(&pin(0, 4, 4, "ok")).starts_with("your pin on"));
        assert!(
            describe(&pin(0, 0, 2, "")).ends_with(
                "is not pinned (any more): 2 live copies (2 proven, 1 of them replicas)"
            )
        );
        assert!(describe(&pin(2, 2, 0, "lost")).contains("lost: no live copy"));
        let mut starving = pin(3, 3, 1, "under");
        starving.waiting = "no volunteer has room: 20 bytes wanted, 5 free in total".into();
        assert!(
            describe(&starving)
                .ends_with("— under: no volunteer has room: 20 bytes wanted, 5 free in total"),
            "{}",
            describe(&starving)
        );
    }
}
