//! `replicate`: pin a file to N live copies (or stop, with 0 or 1), and
//! say how many copies are wanted and live.

use peerdex_proto::FileId;
use peerdex_proto::rest::{PinRequest, SearchHit};

use super::Ctx;
use crate::cli::ReplicateArgs;
use crate::output::outln;

pub(super) async fn run(ctx: &Ctx, args: ReplicateArgs) -> anyhow::Result<()> {
    let req = PinRequest {
        file: target(&args.target, &ctx.last_hits),
        replicas: args.replicas,
    };
    let pin = ctx.api.pin(&req).await?;
    if ctx.json {
        return ctx.print_json(&pin);
    }
    outln!("{}", super::pins::describe(&pin));
    Ok(())
}

/// A full id as is; a short id that prefixes exactly one id of the last
/// search, that id; anything else is a name for the PServer to resolve.
pub(super) fn target(given: &str, last_hits: &[SearchHit]) -> String {
    if let Ok(id) = given.parse::<FileId>() {
        return id.to_hex();
    }
    if given.len() >= 6 && given.bytes().all(|b| b.is_ascii_hexdigit()) {
        let prefix = given.to_ascii_lowercase();
        let mut ids: Vec<&str> = last_hits
            .iter()
            .map(|h| h.file_id.as_str())
            .filter(|id| id.starts_with(&prefix))
            .collect();
        ids.dedup();
        if let [id] = ids[..] {
            return id.to_owned();
        }
    }
    given.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let id = "ab".repeat(32);
        let hit = SearchHit {
            name: "x".into(),
            file_id: id.clone(),
            size: 1,
            holders: 1,
            replicas_wanted: 0,
            lookalike: false,
            island: String::new(),
        };
        assert_eq!(target(&id, &[]), id);
        assert_eq!(target("ABABAB", std::slice::from_ref(&hit)), id);
        assert_eq!(target("ababab", &[]), "ababab", "no search: a name");
        assert_eq!(target("report.pdf", &[hit]), "report.pdf");
    }
}
