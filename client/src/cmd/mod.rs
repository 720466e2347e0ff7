//! What each command does: call the control API, show progress, print the
//! result (a table or sentence for people, one JSON document with `--json`).
//!
//! One file per command, in the style of mini-redis's `cmd/`; this file holds
//! [`execute`], which runs a command under the Ctrl+C handler; the session
//! context they share is [`crate::ctx::Ctx`]. Following a download job lives in
//! [`crate::progress`], printing a failure in [`crate::report`].

mod cancel;
mod completions;
mod get;
mod info;
mod jobs;
mod ls;
mod pins;
mod private;
mod replicate;
mod rm;
mod search;
mod status;
mod upload;
mod wants;

use crate::cli::Command;
pub(crate) use crate::ctx::Ctx;
use crate::report::Interrupted;

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
        Command::Info(a) => info::run(ctx, a).await,
        Command::Ls => ls::run(ctx).await,
        Command::Rm(a) => rm::run(ctx, a).await,
        Command::Status => status::run(ctx).await,
        Command::Jobs => jobs::run(ctx).await,
        Command::Cancel(a) => cancel::run(ctx, a).await,
        Command::Replicate(a) => replicate::run(ctx, a).await,
        Command::Pins => pins::run(ctx).await,
        Command::Want(a) => wants::want(ctx, a).await,
        Command::Wants => wants::list(ctx).await,
        Command::Unwant(a) => wants::unwant(ctx, a).await,
        Command::Private(a) => private::run(ctx, a).await,
        Command::Completions(a) => completions::run(a),
    }
}
