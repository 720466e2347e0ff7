//! `completions`: print a shell completion script generated from the clap
//! definition, so it never lags behind the commands.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub(super) fn run(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "peerdex", &mut script);
    crate::output::out(String::from_utf8_lossy(&script));
    Ok(())
}
