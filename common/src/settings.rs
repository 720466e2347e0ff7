//! The one `.env` loader of every binary (`central-server`, `pserver`,
//! `peerdex`), so a bad configuration is fatal and a misspelt one is seen.
//!
//! * A `.env` that cannot be parsed stops start-up with the file, the line
//!   (1-based, the line where the faulty setting starts) and what is wrong.
//!   dotenvy alone stops at the first bad line and ignores the rest of the
//!   file, so a line such as `PSERVER_RESCAN_SECS 2` silently dropped every
//!   setting after it, `PSERVER_API_TOKEN` included. A missing `.env` is
//!   fine. Values never appear in the message (they may be secrets).
//! * A name with the program's own prefix (`PSERVER_`, `CENTRAL_`,
//!   `PEERDEX_`) that the program does not read, in the `.env` or in the
//!   environment, is returned as an [`UnknownSetting`] naming the closest
//!   known name, for the program to warn about. Another component's names
//!   are not ours to judge (one shell may hold both). The known names come
//!   from the clap definition ([`env_names`]), so the list cannot drift, plus
//!   [`READ_ELSEWHERE`].
//!
//! The file is found as `dotenvy::dotenv()` finds it (the working directory,
//! then its parents), checked in full with dotenvy's own parser, and only
//! then loaded by dotenvy (a variable already in the environment wins).
//! Line numbers are exact however values span lines: the faulty setting
//! ends on the first line whose prefix of the file shows the same error
//! (found by bisection), and starts as many lines earlier as it holds
//! line breaks.

use std::path::{Path, PathBuf};

/// Names with our prefixes that are read by tests and tools through
/// `std::env`, not by a binary's flags: never reported as unknown.
pub const READ_ELSEWHERE: &[&str] = &[
    "CENTRAL_SERVER_BIN",
    "PEERDEX_TEST_NO_TMPFS",
    "PEERDEX_PROM_TEST_VENV",
    "PEERDEX_DEPLOY_TEST_VENV",
    "PEERDEX_ETCD_PROBE",
];

/// Why start-up stops: the `.env` exists but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DotenvError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}, line {line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        /// 1-based.
        line: usize,
        problem: String,
    },
}

/// A name with the program's prefix that it does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSetting {
    pub name: String,
    /// The `.env` it is in; `None`: the environment.
    pub file: Option<PathBuf>,
    /// The known name closest to it, when one is close enough to be a typo.
    pub closest: Option<String>,
}

impl std::fmt::Display for UnknownSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown setting {}", self.name)?;
        match &self.file {
            Some(p) => write!(f, " in {}", p.display())?,
            None => f.write_str(" in the environment")?,
        }
        match &self.closest {
            Some(c) => write!(f, "; did you mean {c}?"),
            None => f.write_str(" (ignored; .env.example lists every setting)"),
        }
    }
}

/// What [`load`] did.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The `.env` loaded, if there was one.
    pub file: Option<PathBuf>,
    /// Names to warn about, the `.env`'s first.
    pub unknown: Vec<UnknownSetting>,
}

/// Every `env = "..."` name of `cmd` and its subcommands.
pub fn env_names(cmd: &clap::Command) -> Vec<String> {
    let mut names: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    for sub in cmd.get_subcommands() {
        names.extend(env_names(sub));
    }
    names.sort();
    names.dedup();
    names
}

/// Find, check and load the `.env` (see the module docs), then look for
/// unknown `prefix` names in it and in the environment. `cmd` is the
/// program's clap command (its `env` names are the known settings).
pub fn load(cmd: &clap::Command, prefix: &str) -> Result<Loaded, DotenvError> {
    let mut known = env_names(cmd);
    known.extend(READ_ELSEWHERE.iter().map(|s| (*s).to_owned()));
    let file = std::env::current_dir().ok().and_then(|d| find(&d));
    let mut in_file = Vec::new();
    if let Some(path) = &file {
        let bytes = std::fs::read(path).map_err(|source| DotenvError::Read {
            path: path.clone(),
            source,
        })?;
        let pairs = parse(&bytes).map_err(|(line, problem)| DotenvError::Line {
            path: path.clone(),
            line,
            problem,
        })?;
        // Checked: dotenvy loads the same bytes (keeping what the
        // environment already has).
        dotenvy::from_read(&bytes[..]).map_err(|e| DotenvError::Read {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        in_file = pairs.into_iter().map(|(k, _)| k).collect();
    }
    let env: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    Ok(Loaded {
        unknown: unknown(&known, prefix, file.as_deref(), &in_file, &env),
        file,
    })
}

/// `.env` in `dir` or the nearest parent that has one (as dotenvy looks).
fn find(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|d| d.join(".env"))
        .find(|p| p.is_file())
}

/// The unknown `prefix` names among `in_file` (from `file`), then among
/// `in_env` (not already reported).
fn unknown(
    known: &[String],
    prefix: &str,
    file: Option<&Path>,
    in_file: &[String],
    in_env: &[String],
) -> Vec<UnknownSetting> {
    let mut out: Vec<UnknownSetting> = Vec::new();
    let sources = in_file
        .iter()
        .map(|n| (n, file))
        .chain(in_env.iter().map(|n| (n, None)));
    for (name, file) in sources {
        if !name.starts_with(prefix)
            || known.iter().any(|k| k == name)
            || out.iter().any(|u| &u.name == name)
        {
            continue;
        }
        out.push(UnknownSetting {
            name: name.clone(),
            file: file.map(Path::to_owned),
            closest: closest(name, prefix, known),
        });
    }
    out
}

/// The known `prefix` name nearest to `name` by edit distance, if within a
/// third of the part after the prefix (at least 2 edits): a typo, not
/// another word.
fn closest(name: &str, prefix: &str, known: &[String]) -> Option<String> {
    let rest = name.len().saturating_sub(prefix.len());
    let most = (rest / 3).max(2);
    known
        .iter()
        .filter(|k| k.starts_with(prefix))
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= most)
        .min()
        .map(|(_, k)| k.clone())
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

/// dotenvy's first error in `text`, as (content, index), if any.
fn first_error(text: &str) -> Option<(String, usize)> {
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok(_) => {}
            Err(dotenvy::Error::LineParse(content, at)) => return Some((content, at)),
            Err(e) => return Some((e.to_string(), usize::MAX)),
        }
    }
    None
}

/// Every `NAME=value` of a `.env`, or the 1-based line of the first bad
/// setting and what is wrong with it.
fn parse(bytes: &[u8]) -> Result<Vec<(String, String)>, (usize, String)> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            return Err((line, "not valid UTF-8 text".into()));
        }
    };
    // dotenvy drops a byte-order mark only when it loads, not in its iterator.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(error) = first_error(text) else {
        return dotenvy::from_read_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (1, e.to_string()));
    };
    // Ends of the physical lines (past their '\n').
    let mut ends: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
    if !text.ends_with('\n') {
        ends.push(text.len());
    }
    // The setting ends on the first line `e` whose prefix of the file shows
    // the same error: shorter prefixes have no error or cut a quoted value
    // short (another error), longer ones reach it (dotenvy reads in order).
    let e = 1 + ends.partition_point(|&end| first_error(&text[..end]).as_ref() != Some(&error));
    let e = e.min(ends.len());
    let (content, at) = &error;
    let held = content.strip_suffix('\n').unwrap_or(content);
    let start_line = e.saturating_sub(held.matches('\n').count()).max(1);
    let start = if start_line == 1 {
        0
    } else {
        ends[start_line - 2]
    };
    let setting = &text[start..ends[e - 1]];
    let at_eof = *at == content.len() && ends[e - 1] == text.len() && content.ends_with('\n');
    Err((start_line, problem(setting, content, *at, at_eof)))
}

/// What is wrong with `setting` (the faulty setting's lines), given
/// dotenvy's error (`content` and `at`, the whole setting or its value).
/// Never quotes the value: it may be a secret.
fn problem(setting: &str, content: &str, at: usize, at_eof: bool) -> String {
    let mut t = setting.trim_start();
    if let Some(rest) = t.strip_prefix("export")
        && rest.starts_with([' ', '\t'])
    {
        t = rest.trim_start();
    }
    let Some(first) = t.chars().next() else {
        return "cannot be parsed".into();
    };
    if !(first.is_ascii_alphabetic() || first == '_') {
        return format!(
            "a setting must be NAME=value with a NAME that starts with a letter or `_`, not {first:?}"
        );
    }
    let key_len = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(t.len());
    let key = &t[..key_len];
    if !t[key_len..].trim_start().starts_with('=') {
        return format!("no `=` after {key}: write {key}=value");
    }
    if at_eof {
        return format!("the value of {key} opens a quote that is never closed");
    }
    // `content` is the value itself when dotenvy failed inside it (then
    // `at` counts characters), else the whole line.
    let chars: Vec<char> = content.chars().collect();
    let (prev, here) = (at.checked_sub(1).and_then(|i| chars.get(i)), chars.get(at));
    match (prev, here) {
        (Some(p), Some(_)) if p.is_whitespace() => format!(
            "the value of {key} holds a space: put it in quotes (\"...\") or remove what follows it"
        ),
        (Some('\\'), Some(c)) => format!(
            "the value of {key} has an unknown escape \\{c}: use \\\\, \\n, \\\", \\' or \\$"
        ),
        _ if at + 1 >= chars.len() => {
            format!("the value of {key} has a quote or ${{ that is not closed")
        }
        _ => format!(
            "the value of {key} cannot be parsed at character {} of the value",
            at + 1
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (usize, String) {
        parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn good_files_parse_in_full() {
        let text = "# comment\n\nA=1\r\nexport B = \"two words\"\nC='multi\nline'\nD=x # note\n";
        let pairs = parse(text.as_bytes()).unwrap();
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["A", "B", "C", "D"]);
        assert_eq!(pairs[2].1, "multi\nline");
        assert!(parse(b"\xEF\xBB\xBFA=1\n").is_ok(), "a byte-order mark");
        assert!(parse(b"").unwrap().is_empty());
    }

    #[test]
    fn a_line_without_equals_is_named_with_its_line_and_name() {
        let (line, why) = err("PSERVER_RESCAN_SECS 2\nPSERVER_API_TOKEN=secret-secret-secret\n");
        assert_eq!(line, 1);
        assert_eq!(
            why,
            "no `=` after PSERVER_RESCAN_SECS: write PSERVER_RESCAN_SECS=value"
        );
        // Later, after comments, blank lines, CRLF and a value over 3 lines.
        let text = "# a\n\nA=1\r\nB=\"x\ny\nz\"\n  # b\nPSERVER_RESCAN_SECS 2\nC=3\n";
        assert_eq!(err(text).0, 8);
        // The last line, without a final newline.
        assert_eq!(err("A=1\nB").0, 2);
    }

    #[test]
    fn each_problem_is_told_without_the_value() {
        let (line, why) = err("A=1\nTOKEN=abc def\n");
        assert_eq!(line, 2);
        assert!(why.contains("TOKEN holds a space"), "{why}");
        assert!(!why.contains("abc"), "the value leaks: {why}");
        let (line, why) = err("A=1\n\nB=\"open\nC=2\n");
        assert_eq!(line, 3, "{why}");
        assert_eq!(why, "the value of B opens a quote that is never closed");
        let (line, why) = err("A=1\n1A=2\n");
        assert_eq!(line, 2);
        assert!(why.contains("starts with a letter"), "{why}");
        let (line, why) = err("A=\"x\\qy\"\n");
        assert_eq!(line, 1);
        assert!(why.contains("unknown escape \\q"), "{why}");
        let (line, why) = err("A=1\nB=${OPEN\n");
        assert_eq!(line, 2);
        assert!(why.contains("not closed"), "{why}");
        let (line, why) = err("A=1\n\u{e9}=2\n");
        assert_eq!(line, 2, "{why}");
        let (line, why) = parse(b"A=1\nB=\xFF\n").unwrap_err();
        assert_eq!((line, why.as_str()), (2, "not valid UTF-8 text"));
    }

    #[test]
    fn the_error_after_a_multi_line_value_is_on_its_own_line() {
        // A quoted value over lines 1-3 that dotenvy accepts, then a bad one.
        let text = "A=\"1\n2\n3\"\nB=\"4\n5\" tail\n";
        let (line, why) = err(text);
        assert_eq!(line, 4, "{why}");
        assert!(why.contains("value of B"), "{why}");
    }

    #[test]
    fn the_example_file_is_a_valid_env() {
        let pairs = parse(include_str!("../../.env.example").as_bytes()).unwrap();
        assert!(pairs.iter().any(|(k, _)| k == "PSERVER_API_TOKEN"));
    }

    fn cmd() -> clap::Command {
        clap::Command::new("x")
            .arg(clap::Arg::new("a").long("a").env("PSERVER_RESCAN_SECS"))
            .arg(clap::Arg::new("b").long("b").env("PSERVER_API_TOKEN"))
            .arg(clap::Arg::new("c").long("c"))
            .subcommand(
                clap::Command::new("sub").arg(clap::Arg::new("d").long("d").env("PSERVER_SUB")),
            )
    }

    #[test]
    fn known_names_come_from_clap_with_subcommands() {
        assert_eq!(
            env_names(&cmd()),
            ["PSERVER_API_TOKEN", "PSERVER_RESCAN_SECS", "PSERVER_SUB"]
        );
    }

    #[test]
    fn unknown_names_are_reported_once_with_the_closest_known_one() {
        let known = env_names(&cmd());
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let file = Path::new("/srv/p/.env");
        let got = unknown(
            &known,
            "PSERVER_",
            Some(file),
            &s(&["PSERVER_RESCAN_SEC", "PSERVER_API_TOKEN", "OTHER"]),
            &s(&[
                "PSERVER_RESCAN_SEC",
                "PSERVER_APITOKEN",
                "PSERVER_SOMETHING_ELSE",
                "CENTRAL_X",
                "PATH",
            ]),
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0].to_string(),
            "unknown setting PSERVER_RESCAN_SEC in /srv/p/.env; did you mean PSERVER_RESCAN_SECS?"
        );
        assert_eq!(
            got[1].to_string(),
            "unknown setting PSERVER_APITOKEN in the environment; did you mean PSERVER_API_TOKEN?"
        );
        assert_eq!(got[2].name, "PSERVER_SOMETHING_ELSE");
        assert_eq!(got[2].closest, None);
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("SECS", "SEC"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 2);
    }
}
