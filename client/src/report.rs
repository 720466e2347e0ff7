//! How a failed command is told: a sentence on stderr (every cause with
//! `-v`), the candidates of an ambiguous name, and with `--json` one
//! `{"error": ...}` document on stdout, so scripts see a failure the same
//! way they see a result.

use std::fmt::Write as _;

use peerdex_proto::rest::Candidate;
use serde::Serialize;

use crate::api;
use crate::ctx::Ctx;
use crate::output::{human_size, outln, table};

/// The user pressed Ctrl+C; the message says what is left running.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Interrupted(pub(crate) String);

/// A failure whose details were already printed (per file); the reporter
/// prints only this summary and, with `--json`, no second document.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ReportedFailure(pub(crate) String);

/// The candidates table for an ambiguous name.
fn candidates_table(candidates: &[Candidate]) -> String {
    let rows: Vec<Vec<String>> = candidates
        .iter()
        .map(|c| vec![c.file_id.clone(), human_size(c.size), c.holders.to_string()])
        .collect();
    table(&["ID", "SIZE", "HOLDERS"], &rows, &[1, 2])
}

#[derive(Serialize)]
struct ErrorDoc<'a> {
    error: ErrorJson<'a>,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    candidates: &'a [Candidate],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<String>,
}

/// Print a failed command's error: a sentence on stderr (every cause with
/// `-v`), the candidates of an ambiguous name, and with `--json` an
/// `{"error": ...}` document on stdout.
pub(crate) fn report(ctx: &Ctx, err: &anyhow::Error, verbose: bool) {
    let api_err = err.chain().find_map(|e| e.downcast_ref::<api::Error>());
    let candidates: &[Candidate] = api_err
        .and_then(api::Error::api_error)
        .map_or(&[], |e| &e.candidates);
    let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
    let mut msg = format!("error: {err}\n");
    if verbose {
        for c in &causes {
            let _ = writeln!(msg, "  caused by: {c}");
        }
    } else if !causes.is_empty() && !ctx.json {
        msg.push_str("  (run with -v for details)\n");
    }
    if !candidates.is_empty() {
        let _ = writeln!(
            msg,
            "{}ask for one by id: {}",
            candidates_table(candidates),
            ctx.cmd(&format!("get {}", candidates[0].file_id))
        );
    }
    eprint!("{msg}");
    if ctx.json && !err.is::<ReportedFailure>() {
        let code = if err.is::<Interrupted>() {
            "interrupted"
        } else {
            api_err.map_or("failed", api::Error::code)
        };
        let doc = ErrorDoc {
            error: ErrorJson {
                code,
                message: err.to_string(),
                candidates,
                causes,
            },
        };
        outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
}
