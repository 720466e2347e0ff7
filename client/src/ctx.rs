//! The session context every command takes: the PServer client, the output
//! mode, and what the last search found.

use std::sync::{Arc, Mutex};

use peerdex_proto::rest::SearchHit;
use serde::Serialize;

use crate::api;
use crate::output::Term;

/// Everything a command needs, kept for the whole session (one command, or
/// a REPL session).
pub(crate) struct Ctx {
    pub(crate) api: api::Client,
    pub(crate) json: bool,
    /// `-v`: full error chains, and more detail where a command has it
    /// (`status` lists every file that is not shared).
    pub(crate) verbose: bool,
    pub(crate) term: Term,
    /// In the REPL, hints name commands without the `peerdex` prefix.
    pub(crate) repl: bool,
    /// Results of the last search, for short ids and tab completion.
    pub(crate) last_hits: Vec<SearchHit>,
    /// What to tell the user if Ctrl+C stops the running command (e.g. that
    /// a download goes on in the PServer). Set by the command.
    pub(crate) interrupt_note: Arc<Mutex<Option<String>>>,
}

impl Ctx {
    /// How to spell a command in a hint: `peerdex get x`, or `get x` in the REPL.
    pub(crate) fn cmd(&self, rest: &str) -> String {
        if self.repl {
            format!("`{rest}`")
        } else {
            format!("`peerdex {rest}`")
        }
    }

    /// Print one JSON document on stdout.
    pub(crate) fn print_json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        crate::output::out(&text);
        Ok(())
    }
}
