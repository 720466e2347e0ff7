//! What each command does: call the control API, show progress, print the
//! result (a table or sentence for people, one JSON document with `--json`).
//!
//! One file per command, in the style of mini-redis's `cmd/`; this file holds
//! what they share: the session context [`Ctx`] and [`execute`], which runs a
//! command under the Ctrl+C handler. Following a download job lives in
//! [`crate::progress`], printing a failure in [`crate::report`].

mod cancel;
mod completions;
mod get;
mod jobs;
mod ls;
mod rm;
mod search;
mod status;
mod upload;

use std::sync::{Arc, Mutex};

use peerdex_proto::rest::SearchHit;
use serde::Serialize;

use crate::api;
use crate::cli::Command;
use crate::output::Term;
use crate::report::Interrupted;

/// Everything a command needs, kept for the whole session (one command, or
/// a REPL session).
pub(crate) struct Ctx {
    pub(crate) api: api::Client,
    pub(crate) json: bool,
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

/// Run one command until it finishes or the user presses Ctrl+C.
pub(crate) async fn execute(ctx: &mut Ctx, command: Command) -> anyhow::Result<()> {
    let note = ctx.interrupt_note.clone();
    *note.lock().unwrap() = None;
    tokio::select! {
        // Biased, Ctrl+C first: the handler is installed before the command
        // does anything.
        biased;
        () = ctrl_c() => {
            let msg = note.lock().unwrap().take().unwrap_or_else(|| "interrupted".to_owned());
            Err(Interrupted(msg).into())
        }
        r = dispatch(ctx, command) => r,
    }
}

/// Resolves on Ctrl+C; never, if the handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn dispatch(ctx: &mut Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Upload(a) => upload::run(ctx, a).await,
        Command::Get(a) => get::run(ctx, a).await,
        Command::Search(a) => search::run(ctx, a).await,
        Command::Ls => ls::run(ctx).await,
        Command::Rm(a) => rm::run(ctx, a).await,
        Command::Status => status::run(ctx).await,
        Command::Jobs => jobs::run(ctx).await,
        Command::Cancel(a) => cancel::run(ctx, a).await,
        Command::Completions(a) => completions::run(a),
    }
}
