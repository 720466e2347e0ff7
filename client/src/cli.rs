//! Command-line syntax: global options and the commands shared by one-shot
//! use (`peerdex search x`) and the REPL (`search x`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use reqwest::Url;

use crate::api::DEFAULT_URL;

/// peerdex: share files with a peer-to-peer network and download files from it.
///
/// peerdex talks to your own PServer (the `pserver` daemon). It finds files
/// through the network's central directory and downloads them directly from
/// the peers that hold them. Run without a command for an interactive shell.
///
/// Every option can also be set in the environment (shown below) or in a
/// `.env` file in the working directory.
#[derive(Debug, Parser)]
#[command(
    name = "peerdex",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,

    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

impl Cli {
    /// [`Cli::try_parse_with_env`], exiting as [`Parser::parse`] does on a
    /// usage error (code 2), `--help` or `--version`.
    pub(crate) fn parse_with_env<I, T>(args: I, env: impl Fn(&str) -> Option<OsString>) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Self::try_parse_with_env(args, env).unwrap_or_else(|e| e.exit())
    }

    /// Parse `args` (program name first) with `env` as the environment the
    /// `env = "..."` options fall back to: flag, then environment, then
    /// default. `main` passes the process environment (after `.env`); tests
    /// pass their own, so no developer's `PEERDEX_*` setting can change
    /// what they see.
    pub(crate) fn try_parse_with_env<I, T>(
        args: I,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        // clap takes an `env` option's value from the process when the
        // command is built; put the given environment's value in its place,
        // as the option's default (which the flag still overrides).
        let mut cmd = Self::command().mut_args(|arg| {
            let Some(name) = arg.get_env().and_then(|n| n.to_str()).map(str::to_owned) else {
                return arg;
            };
            match env(&name) {
                // `&'static` because clap owns dynamic strings only with its
                // `string` feature; parsing happens once per process.
                Some(value) => arg
                    .env(None)
                    .default_value(&*Box::leak(value.into_boxed_os_str())),
                None => arg.env(None),
            }
        });
        match cmd.try_get_matches_from_mut(args.iter().cloned()) {
            Ok(mut matches) => {
                Self::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut cmd))
            }
            // Help names each option's variable (`[env: ...]`, values
            // hidden): render it from the definition as written. Parsing
            // stops at the help request before any environment is read.
            Err(e) if e.kind() == ErrorKind::DisplayHelp => Err(Self::command()
                .try_get_matches_from(args)
                .err()
                .unwrap_or(e)),
            Err(e) => Err(e),
        }
    }
}

/// Options that apply to every command.
#[derive(Debug, Clone, Args)]
pub(crate) struct GlobalArgs {
    /// URL of your PServer's control API.
    #[arg(long, global = true, env = "PEERDEX_PSERVER_URL", default_value = DEFAULT_URL,
          hide_env_values = true, value_name = "URL", value_parser = parse_pserver_url)]
    pub(crate) pserver: Url,

    /// Bearer token for the control API, needed when the PServer sets
    /// PSERVER_API_TOKEN.
    #[arg(
        long,
        global = true,
        env = "PEERDEX_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) token: Option<String>,

    /// PEM bundle of extra CA certificates trusted for an https:// PServer
    /// URL (your network's own CA), besides the system's roots.
    #[arg(long, global = true, env = "PEERDEX_CA_FILE", value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,

    /// Machine-readable output: one JSON document per command on stdout, no
    /// progress bars. Failures print {"error": {"code", "message", ...}}.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Explain failures in full: print every underlying cause.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
}

/// The commands, in one-shot mode and in the REPL.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
    /// Share files: stream them to your PServer, which publishes them.
    Upload(UploadArgs),
    /// Download a file by name or id (or a whole folder of one peer's
    /// share with --folder) into your PServer's shared folder, or a
    /// private file by its ticket into your PServer's private folder.
    Get(GetArgs),
    /// Search the network by words of file names.
    Search(SearchArgs),
    /// Show a file: its size, names, the peers that hold it (owners and
    /// replica holders) and, when it is pinned, the copies wanted and live.
    Info(InfoArgs),
    /// List the files your PServer shares.
    Ls,
    /// Stop sharing a file and delete your PServer's copy.
    Rm(RmArgs),
    /// Show your PServer's peer id, URLs, central and neighbour health.
    Status,
    /// List download jobs (running and finished).
    Jobs,
    /// Cancel a running download job.
    Cancel(CancelArgs),
    /// Ask the network to keep N live copies of a file on distinct peers.
    ///
    /// The directory then has volunteers (peers that offer replica space,
    /// PSERVER_REPLICA_QUOTA_BYTES) fetch copies until N peers hold the file,
    /// and makes new ones when holders go away, so the file outlives the
    /// peers that have it now. N counts every copy, yours included; the
    /// directory caps it (CENTRAL_MAX_REPLICAS, 5 by default) and limits how
    /// many pins each peer may set. 0 or 1 stops asking (nothing is deleted:
    /// spare copies are dropped by their holders later).
    ///
    /// Examples:
    ///   peerdex replicate report.pdf 3      keep 3 copies of report.pdf
    ///   peerdex replicate 9f2c...e1 0       stop asking for copies
    #[command(verbatim_doc_comment)]
    Replicate(ReplicateArgs),
    /// List the pins you set: copies wanted and live for each file.
    ///
    /// STATE is ok (enough live copies), under (fewer: volunteers are
    /// fetching copies) or lost (no live copy: waits for a peer that has
    /// the file to come back).
    Pins,
    /// Wait for a file: download it the moment someone shares it.
    ///
    /// Your PServer keeps the want (across restarts) and the directory tells
    /// it the moment a peer shares the file: nothing polls meanwhile. A name
    /// carried by several different files downloads nothing: you are told
    /// the candidates, to want one by id. With --query, any file whose name
    /// matches the words (as `search`); add --no-download to be told only.
    /// Follow what happens with `peerdex wants`, the web UI, or
    /// PSERVER_NOTIFY_URL.
    ///
    /// Examples:
    ///   peerdex want report-2024.pdf              download it when it appears
    ///   peerdex want 9f2c...e1                    the same, by id
    ///   peerdex want --query annual report --no-download
    #[command(verbatim_doc_comment)]
    Want(WantArgs),
    /// List your wants: what each waits for, its state and what it matched.
    ///
    /// STATE is waiting (watched at the directory), matched (a notify-only
    /// want found files; it keeps watching), ambiguous (several files carry
    /// the name: want one by id), downloading, or done (the file is in
    /// place).
    Wants,
    /// Stop wanting (a download it started goes on: `cancel` it).
    Unwant(UnwantArgs),
    /// List your private files with their tickets, or remove one.
    ///
    /// A private file (`peerdex upload --private FILE`) is encrypted by
    /// your PServer before it leaves it: the network stores and serves
    /// only the ciphertext, under its id. Its ticket (peerdex1...) holds
    /// the key: whoever has it reads the file with `peerdex get TICKET`.
    ///
    /// Examples:
    ///   peerdex private                     every key held, with its ticket
    ///   peerdex private rm 9f2c...e1        remove it: key, ciphertext, pin
    #[command(verbatim_doc_comment)]
    Private(PrivateArgs),
    /// Print a shell completion script, e.g. `peerdex completions bash > /etc/bash_completion.d/peerdex`.
    Completions(CompletionsArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct UploadArgs {
    /// Files to share (folders need --recursive).
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,

    /// Upload every file inside the given folders (sub-folders included);
    /// each is shared under its own file name.
    #[arg(short, long)]
    pub(crate) recursive: bool,

    /// Share the file under this name instead of its file name (one file only).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,

    /// After uploading, ask the network to keep N live copies of each file
    /// on distinct peers (yours included), as `peerdex replicate` does. The
    /// upload stands even if the pin is refused; the command then says why
    /// and exits 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) replicas: Option<u32>,

    /// Encrypt each file first (a fresh key per file): the network stores
    /// and serves only the ciphertext, never finds it by name, and the
    /// command prints a ticket (peerdex1...) that opens it. Give the
    /// ticket to whoever may read the file: `peerdex get TICKET`.
    #[arg(long)]
    pub(crate) private: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct PrivateArgs {
    #[command(subcommand)]
    pub(crate) action: Option<PrivateAction>,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum PrivateAction {
    /// Remove a private file: its key, your PServer's ciphertext (withdrawn
    /// from the network, its pin ended) and the plaintext opened there.
    /// Tickets already given keep opening copies others still hold.
    Rm {
        /// The ciphertext's id, as `peerdex private` shows it (a unique
        /// prefix works too).
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, Clone, Args)]
pub(crate) struct InfoArgs {
    /// The file's 64-character id, or its exact name (every content with
    /// that name is shown). In the shell, a short id from the last search.
    #[arg(value_name = "ID|NAME")]
    pub(crate) target: String,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ReplicateArgs {
    /// The file: its 64-character id, its exact name (your shared files
    /// first, then the network), or in the shell a short id from the last
    /// search.
    #[arg(value_name = "ID|NAME")]
    pub(crate) target: String,

    /// Live copies to keep, yours included (2 or more); 0 or 1 stops asking.
    #[arg(value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub(crate) replicas: u32,
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("wanted").required(true).args(["target", "query"])))]
pub(crate) struct WantArgs {
    /// The file: its 64-character id or its exact name (in the shell, a
    /// short id from the last search).
    #[arg(value_name = "ID|NAME")]
    pub(crate) target: Option<String>,

    /// Words instead: any file whose name has a word starting with each.
    #[arg(long, num_args = 1.., value_name = "WORD")]
    pub(crate) query: Vec<String>,

    /// Only tell me (events, web UI, PSERVER_NOTIFY_URL); download nothing.
    #[arg(long)]
    pub(crate) no_download: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct UnwantArgs {
    /// The want's id, as printed by `want` or `wants` (a unique prefix of
    /// it works too).
    #[arg(value_name = "WANT")]
    pub(crate) want: String,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct GetArgs {
    /// The file's name (exact: its path in the holder's share, e.g.
    /// `Music/Album/01 Track.mp3`) or its 64-character id. In the shell, a
    /// short id from the last search works too. The file is stored under
    /// the same path in your share folder. A ticket (peerdex1...) fetches
    /// a private file and stores its plaintext in your PServer's private
    /// folder (PSERVER_PRIVATE_DIR), never in the shared one.
    #[arg(value_name = "NAME|ID|TICKET", required_unless_present = "folder")]
    pub(crate) target: Option<String>,

    /// Fetch every file under a folder of one peer's share instead (e.g.
    /// `--folder "Music/Miles Davis"`), at any depth, as one job with one
    /// progress bar; each file is stored under the same path in your share
    /// folder.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["target", "output"])]
    pub(crate) folder: Option<String>,

    /// Also write the file to PATH (a file, or a folder to put it in).
    #[arg(short, long, value_name = "PATH")]
    pub(crate) output: Option<PathBuf>,

    /// Overwrite PATH if it exists.
    #[arg(short, long, requires = "output")]
    pub(crate) force: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct SearchArgs {
    /// Words to look for; each matches the start of a word in a file name.
    #[arg(required = true, value_name = "WORD")]
    pub(crate) query: Vec<String>,

    /// Most results to show.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) limit: Option<u32>,

    /// Page token printed by a previous search, for the next results.
    #[arg(long, value_name = "TOKEN")]
    pub(crate) page: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct RmArgs {
    /// Id of the file to stop sharing (a unique prefix of it, as shown by `ls`, works too).
    #[arg(value_name = "ID")]
    pub(crate) id: String,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CancelArgs {
    /// Job id, as printed by `get` or `jobs`.
    #[arg(value_name = "JOB")]
    pub(crate) job: String,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CompletionsArgs {
    /// Shell to generate the script for.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// One line typed into the REPL: a command without the `peerdex` prefix.
#[derive(Debug, Parser)]
#[command(
    name = "peerdex",
    no_binary_name = true,
    disable_version_flag = true,
    subcommand_required = true,
    help_template = "{all-args}",
    override_usage = "COMMAND [ARGS]"
)]
pub(crate) struct ReplLine {
    #[command(subcommand)]
    pub(crate) command: ReplCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum ReplCommand {
    #[command(flatten)]
    Run(Command),
    /// Leave the shell (Ctrl+D works too).
    #[command(alias = "quit")]
    Exit,
}

/// Names of every REPL command, for tab completion.
pub(crate) fn repl_command_names() -> Vec<String> {
    use clap::CommandFactory;
    let mut names: Vec<String> = ReplLine::command()
        .get_subcommands()
        .flat_map(|c| {
            std::iter::once(c.get_name().to_owned()).chain(c.get_all_aliases().map(str::to_owned))
        })
        .collect();
    names.push("help".to_owned());
    names.sort();
    names.dedup();
    names
}

/// Why `--pserver` / `PEERDEX_PSERVER_URL` is not a PServer's URL.
#[derive(Debug, thiserror::Error)]
pub enum PserverUrlError {
    #[error("{0}; expected e.g. {DEFAULT_URL}")]
    Parse(<Url as std::str::FromStr>::Err),
    #[error("expected an http:// or https:// URL with a host, e.g. {DEFAULT_URL}")]
    NotHttp,
    #[error("the URL must not have a query or fragment")]
    QueryOrFragment,
}

fn parse_pserver_url(s: &str) -> Result<Url, PserverUrlError> {
    let url = Url::parse(s).map_err(PserverUrlError::Parse)?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(PserverUrlError::NotHttp);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(PserverUrlError::QueryOrFragment);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
        ReplLine::command().debug_assert();
    }

    #[test]
    fn pserver_urls() {
        assert!(parse_pserver_url("http://127.0.0.1:7070").is_ok());
        assert!(parse_pserver_url("https://box.example/peerdex/").is_ok());
        assert!(parse_pserver_url("127.0.0.1:7070").is_err());
        assert!(parse_pserver_url("ftp://x").is_err());
        assert!(parse_pserver_url("http://x/?a=1").is_err());
    }

    #[test]
    fn repl_lines_parse() {
        let l = ReplLine::try_parse_from(["get", "my file.txt", "-o", "/tmp/x"]).unwrap();
        match l.command {
            ReplCommand::Run(Command::Get(g)) => {
                assert_eq!(g.target.as_deref(), Some("my file.txt"));
                assert_eq!(g.output.unwrap(), PathBuf::from("/tmp/x"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ReplLine::try_parse_from(["quit"]).unwrap().command,
            ReplCommand::Exit
        ));
        assert!(ReplLine::try_parse_from(["frobnicate"]).is_err());
        let names = repl_command_names();
        for n in [
            "upload",
            "get",
            "search",
            "ls",
            "rm",
            "status",
            "cancel",
            "replicate",
            "pins",
            "exit",
            "quit",
            "help",
        ] {
            assert!(names.contains(&n.to_owned()), "{n} missing from {names:?}");
        }
    }

    /// Parse as `peerdex ARGS...` in the environment `env` (and no other).
    fn parse_in(env: &[(&str, &str)], args: &[&str]) -> Result<Cli, clap::Error> {
        let env: Vec<(String, OsString)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        Cli::try_parse_with_env(
            std::iter::once("peerdex").chain(args.iter().copied()),
            |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        )
    }

    #[test]
    fn replica_arguments() {
        let cli = parse_in(&[], &["replicate", "report.pdf", "3"]).unwrap();
        match cli.command {
            Some(Command::Replicate(r)) => {
                assert_eq!((r.target.as_str(), r.replicas), ("report.pdf", 3));
            }
            other => panic!("{other:?}"),
        }
        // 0 stops asking; a count is required and must be a number.
        assert!(parse_in(&[], &["replicate", "x", "0"]).is_ok());
        for bad in [
            &["replicate", "x"][..],
            &["replicate", "x", "three"],
            &["replicate", "x", "-1"],
        ] {
            let e = parse_in(&[], bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        let cli = parse_in(&[], &["upload", "--replicas", "3", "a.txt"]).unwrap();
        match cli.command {
            Some(Command::Upload(u)) => assert_eq!(u.replicas, Some(3)),
            other => panic!("{other:?}"),
        }
        let e = parse_in(&[], &["upload", "--replicas", "0", "a.txt"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{e}");
        assert!(matches!(
            ReplLine::try_parse_from(["replicate", "abc123", "2"])
                .unwrap()
                .command,
            ReplCommand::Run(Command::Replicate(_))
        ));
        assert!(matches!(
            ReplLine::try_parse_from(["pins"]).unwrap().command,
            ReplCommand::Run(Command::Pins)
        ));
    }

    #[test]
    fn want_arguments() {
        let cli = parse_in(&[], &["want", "report.pdf"]).unwrap();
        match cli.command {
            Some(Command::Want(w)) => {
                assert_eq!(w.target.as_deref(), Some("report.pdf"));
                assert!(w.query.is_empty() && !w.no_download);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse_in(
            &[],
            &["want", "--query", "annual", "report", "--no-download"],
        )
        .unwrap();
        match cli.command {
            Some(Command::Want(w)) => {
                assert_eq!(w.query, ["annual", "report"]);
                assert!(w.target.is_none() && w.no_download);
            }
            other => panic!("{other:?}"),
        }
        for bad in [&["want"][..], &["want", "x", "--query", "y"], &["unwant"]] {
            let e = parse_in(&[], bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        assert!(matches!(
            ReplLine::try_parse_from(["wants"]).unwrap().command,
            ReplCommand::Run(Command::Wants)
        ));
    }

    #[test]
    fn force_needs_output() {
        let e = parse_in(&[], &["get", "x", "--force"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument, "{e}");
        assert!(e.to_string().contains("--output"), "{e}");
        let cli = parse_in(&[], &["get", "x", "-o", "y", "--force"]).unwrap();
        match cli.command {
            Some(Command::Get(g)) => {
                assert!(g.force);
                assert_eq!(g.output, Some(PathBuf::from("y")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_come_from_flag_then_environment_then_default() {
        let cli = parse_in(&[], &["status"]).unwrap();
        assert_eq!(cli.global.pserver.as_str(), "http://127.0.0.1:7070/");
        assert_eq!(cli.global.token, None);

        let env = [
            ("PEERDEX_PSERVER_URL", "http://box.example:7000"),
            ("PEERDEX_API_TOKEN", "env-token"),
        ];
        let cli = parse_in(&env, &["status"]).unwrap();
        assert_eq!(cli.global.pserver.as_str(), "http://box.example:7000/");
        assert_eq!(cli.global.token.as_deref(), Some("env-token"));

        // A flag wins, before or after the command (the options are global).
        for args in [
            &["--pserver", "http://flag:1", "--token", "flag-token", "ls"][..],
            &["ls", "--pserver", "http://flag:1", "--token", "flag-token"],
        ] {
            let cli = parse_in(&env, args).unwrap();
            assert_eq!(cli.global.pserver.as_str(), "http://flag:1/", "{args:?}");
            assert_eq!(cli.global.token.as_deref(), Some("flag-token"), "{args:?}");
        }

        // A bad value from the environment is a usage error naming the option.
        let e = parse_in(&[("PEERDEX_PSERVER_URL", "ftp://x")], &["status"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{e}");
        assert!(
            e.to_string().contains("'ftp://x' for '--pserver <URL>'"),
            "{e}"
        );

        // Help names the variables and never shows their values.
        let e = parse_in(&env, &["--help"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        let help = e.render().to_string();
        for shown in ["[env: PEERDEX_PSERVER_URL]", "[env: PEERDEX_API_TOKEN]"] {
            assert!(help.contains(shown), "{shown} missing from {help}");
        }
        for hidden in ["box.example", "env-token"] {
            assert!(!help.contains(hidden), "{hidden} shown in {help}");
        }
    }
}
