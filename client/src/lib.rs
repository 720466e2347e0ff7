//! `peerdex`, the command-line client of a peerdex PServer.
//!
//! The CLI talks only to its own PServer, over the control API described in
//! [`peerdex_proto::rest`]. It runs one command (`peerdex search x`) or, with
//! no command, an interactive shell with the same commands.
//!
//! Layout (every module but [`api`] is private: the only other user of
//! this library is `main.rs`, through [`main_entry`]):
//! * [`api`] — a typed HTTP client for the control API, public so the
//!   integration tests and benchmarks speak to a PServer as the CLI does.
//! * `cli` — the command line (clap): global options and commands, parsed
//!   against an environment given explicitly.
//! * `cmd` — what each command does and prints, one file per command.
//! * `ctx` — the session context every command takes.
//! * `progress` — following a download job: progress bar or state lines.
//! * `report` — how a failure is printed, and the exit code it maps to.
//! * `repl` — the interactive shell (rustyline), or line-by-line from a pipe.
//! * `output` — human sizes, tables, progress bars, terminal detection.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error (a bad
//! flag or setting, or a `.env` that cannot be parsed), 130
//! interrupted by Ctrl+C.

pub mod api;
mod cli;
mod cmd;
mod ctx;
mod output;
mod progress;
mod repl;
mod report;

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::ctx::Ctx;
use crate::output::Term;
use crate::report::Interrupted;

/// Exit code when the user pressed Ctrl+C (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// Exit code of a usage error: a bad flag or setting (clap's), or a `.env`
/// that cannot be parsed.
const EXIT_USAGE: u8 = 2;

/// The whole program: read `.env`, parse the command line, run.
pub fn main_entry() -> ExitCode {
    // `.env` first, so its values act as environment defaults for clap; a
    // line it cannot parse is a usage error (never a setting silently lost).
    let settings = match peerdex_common::settings::load(&Cli::command(), "PEERDEX_") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cli = Cli::parse_with_env(std::env::args_os(), |name| std::env::var_os(name));
    for u in &settings.unknown {
        eprintln!("warning: {u}");
    }
    run(cli)
}

/// Run a parsed command line and map the outcome to an exit code.
fn run(cli: Cli) -> ExitCode {
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
    let roots = match ca_roots(cli.global.ca_file.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let api = api::Client::with_roots(cli.global.pserver.clone(), cli.global.token.clone(), roots);
    let mut ctx = Ctx {
        api,
        json: cli.global.json,
        verbose: cli.global.verbose,
        term,
        repl: cli.command.is_none(),
        last_hits: Vec::new(),
        interrupt_note: Default::default(),
    };
    let Some(command) = cli.command else {
        repl::run(&rt, &mut ctx, cli.global.verbose);
        return ExitCode::SUCCESS;
    };
    match rt.block_on(cmd::execute(&mut ctx, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report::report(&ctx, &e, cli.global.verbose);
            if e.is::<Interrupted>() {
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The certificates of PEERDEX_CA_FILE (none when unset or empty).
fn ca_roots(path: Option<&std::path::Path>) -> anyhow::Result<Vec<reqwest::Certificate>> {
    use anyhow::Context;
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(Vec::new());
    };
    let ders = peerdex_common::tls::read_certs("PEERDEX_CA_FILE", path)?;
    ders.iter()
        .map(|d| {
            reqwest::Certificate::from_der(d)
                .with_context(|| format!("PEERDEX_CA_FILE {}", path.display()))
        })
        .collect()
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
