//! `peerdex`, the command-line client of a peerdex PServer.
//!
//! The CLI talks only to its own PServer, over the control API described in
//! [`peerdex_proto::rest`]. It runs one command (`peerdex search x`) or, with
//! no command, an interactive shell with the same commands.
//!
//! Layout:
//! * [`api`] — a typed HTTP client for the control API, reusable by other tools.
//! * [`cli`] — the command line (clap): global options and commands.
//! * `commands` — what each command does and prints; error reporting.
//! * `repl` — the interactive shell (rustyline), or line-by-line from a pipe.
//! * [`output`] — human sizes, tables, progress bars, terminal detection.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error, 130
//! interrupted by Ctrl+C.

pub mod api;
pub mod cli;
mod commands;
pub mod output;
mod repl;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::commands::{Ctx, Interrupted};
use crate::output::Term;

/// Exit code when the user pressed Ctrl+C (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The whole program: read `.env`, parse the command line, run.
pub fn main_entry() -> ExitCode {
    // `.env` first, so its values act as environment defaults for clap.
    let dotenv = dotenvy::dotenv();
    let cli = Cli::parse();
    if let Err(e) = dotenv
        && !e.not_found()
    {
        eprintln!("warning: ignoring .env: {e}");
    }
    run(cli)
}

/// Run a parsed command line and map the outcome to an exit code.
pub fn run(cli: Cli) -> ExitCode {
    let term = Term::detect(cli.global.json);
    init_tracing(term);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let api = api::Client::new(cli.global.pserver.clone(), cli.global.token.clone());
    let mut ctx = Ctx {
        api,
        json: cli.global.json,
        term,
        repl: cli.command.is_none(),
        last_hits: Vec::new(),
        interrupt_note: Default::default(),
    };
    let Some(command) = cli.command else {
        repl::run(&rt, &mut ctx, cli.global.verbose);
        return ExitCode::SUCCESS;
    };
    match rt.block_on(commands::execute(&mut ctx, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            commands::report(&ctx, &e, cli.global.verbose);
            if e.is::<Interrupted>() {
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Diagnostics for developers, only when `RUST_LOG` asks for them.
fn init_tracing(term: Term) {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(term.color)
            .try_init();
    }
}
