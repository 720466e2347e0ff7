//! The interactive shell: `peerdex` with no command.
//!
//! On a terminal it is a line editor (rustyline) with history in the user's
//! data folder and tab completion of commands and of names from the last
//! search. With stdin from a pipe or file it reads one command per line, no
//! prompt, and exits 0 at the end of input, so scripts can drive it:
//! `printf 'search x\nexit\n' | peerdex`. A failed command prints its error
//! and the shell goes on.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};
use tokio::runtime::Runtime;

use crate::cli::{ReplCommand, ReplLine, repl_command_names};
use crate::cmd::{self, Ctx};
use crate::report;

/// Run the shell until `exit`, Ctrl+D or the end of input.
pub fn run(rt: &Runtime, ctx: &mut Ctx, verbose: bool) {
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        interactive(rt, ctx, verbose);
    } else {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if handle_line(rt, ctx, verbose, &line) == Flow::Exit {
                break;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Exit,
}

fn handle_line(rt: &Runtime, ctx: &mut Ctx, verbose: bool, line: &str) -> Flow {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Flow::Continue;
    }
    let words = match split_words(line) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return Flow::Continue;
        }
    };
    let parsed = match ReplLine::try_parse_from(&words) {
        Ok(p) => p,
        Err(e) => {
            // Help goes to stdout, usage errors to stderr; both keep the shell going.
            let _ = e.print();
            return Flow::Continue;
        }
    };
    match parsed.command {
        ReplCommand::Exit => Flow::Exit,
        ReplCommand::Run(command) => {
            if let Err(e) = rt.block_on(cmd::execute(ctx, command)) {
                report::report(ctx, &e, verbose);
            }
            Flow::Continue
        }
    }
}

fn interactive(rt: &Runtime, ctx: &mut Ctx, verbose: bool) {
    let config = rustyline::Config::builder()
        .auto_add_history(true)
        .history_ignore_space(true)
        .max_history_size(1000)
        .and_then(|b| b.history_ignore_dups(true))
        .map(|b| b.build());
    let editor = config.and_then(Editor::<ReplHelper, DefaultHistory>::with_config);
    let mut editor = match editor {
        Ok(e) => e,
        Err(e) => {
            // No usable terminal after all: fall back to plain lines.
            eprintln!("warning: line editing unavailable ({e}); reading plain lines");
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if handle_line(rt, ctx, verbose, &line) == Flow::Exit {
                    break;
                }
            }
            return;
        }
    };
    let names = Arc::new(Mutex::new(Vec::new()));
    editor.set_helper(Some(ReplHelper {
        commands: repl_command_names(),
        names: names.clone(),
    }));
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    eprintln!(
        "peerdex {} — talking to the PServer at {}. `help` lists commands, `exit` or Ctrl+D leaves.",
        env!("CARGO_PKG_VERSION"),
        ctx.api.base_url().as_str().trim_end_matches('/')
    );
    loop {
        match editor.readline("peerdex> ") {
            Ok(line) => {
                let flow = handle_line(rt, ctx, verbose, &line);
                *names.lock().unwrap() = ctx.last_hits.iter().map(|h| h.name.clone()).collect();
                if flow == Flow::Exit {
                    break;
                }
            }
            // Ctrl+C at the prompt clears the line, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: cannot read the terminal: {e}");
                break;
            }
        }
    }
    if let Some(path) = &history {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(path);
    }
}

/// `<data dir>/peerdex/history`, e.g. `~/.local/share/peerdex/history`.
fn history_path() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("peerdex").join("history"))
}

/// Split a line into words like a shell: whitespace separates, single and
/// double quotes group, backslash escapes the next character (outside single
/// quotes).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("missing closing ' quote".to_owned()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err("missing closing \" quote".to_owned()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("missing closing \" quote".to_owned()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("line ends with a lone backslash".to_owned()),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Quote a word so [`split_words`] gives it back unchanged.
fn quote(word: &str) -> String {
    if !word.is_empty()
        && !word
            .chars()
            .any(|c| c.is_whitespace() || "'\"\\#".contains(c))
    {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Byte offset where the word under the cursor starts, the text typed so far
/// (unquoted) and whether it is the first word of the line.
fn current_word(before: &str) -> (usize, String, bool) {
    let mut start = 0;
    let mut quote_char: Option<char> = None;
    let mut escaped = false;
    let mut words_before = 0;
    let mut in_word = false;
    for (i, c) in before.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote_char, c) {
            (Some(q), c) if c == q => quote_char = None,
            (Some(_), _) => {}
            (None, '\\') => escaped = true,
            (None, '\'' | '"') => {
                if !in_word {
                    start = i;
                    in_word = true;
                }
                quote_char = Some(c);
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words_before += 1;
                    in_word = false;
                }
                start = i + c.len_utf8();
            }
            (None, _) => {
                if !in_word {
                    start = i;
                    in_word = true;
                }
            }
        }
    }
    let partial = &before[start..];
    let unquoted = match split_words(partial) {
        Ok(w) => w.concat(),
        // An unfinished quote: what is inside it so far.
        Err(_) => partial.trim_start_matches(['\'', '"']).to_owned(),
    };
    (start, unquoted, words_before == 0)
}

/// Completes command names, then names from the last search.
struct ReplHelper {
    commands: Vec<String>,
    names: Arc<Mutex<Vec<String>>>,
}

impl ReplHelper {
    fn candidates(&self, before: &str) -> (usize, Vec<Pair>) {
        let (start, typed, first) = current_word(before);
        let pool: Vec<String> = if first {
            self.commands.clone()
        } else {
            let mut names = self.names.lock().unwrap().clone();
            names.sort();
            names.dedup();
            names
        };
        let pairs = pool
            .into_iter()
            .filter(|c| c.starts_with(&typed))
            .map(|c| Pair {
                replacement: quote(&c),
                display: crate::output::sanitize(&c),
            })
            .collect();
        (start, pairs)
    }
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(self.candidates(&line[..pos]))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(
            split_words("get  'my file.txt' -o x").unwrap(),
            ["get", "my file.txt", "-o", "x"]
        );
        assert_eq!(
            split_words(r#"get "a \"b\"" c\ d"#).unwrap(),
            ["get", "a \"b\"", "c d"]
        );
        assert_eq!(split_words("search ''").unwrap(), ["search", ""]);
        assert!(split_words("get 'open").is_err());
        assert!(split_words("x \\").is_err());
        assert!(split_words("   ").unwrap().is_empty());
    }

    #[test]
    fn quoting_round_trips() {
        for w in [
            "plain.txt",
            "with space.txt",
            "it's.txt",
            "a\"b",
            "back\\slash",
            "#hash",
            "",
        ] {
            assert_eq!(
                split_words(&quote(w)).unwrap(),
                [w],
                "{w:?} quoted as {}",
                quote(w)
            );
        }
    }

    #[test]
    fn completion() {
        let h = ReplHelper {
            commands: repl_command_names(),
            names: Arc::new(Mutex::new(vec![
                "report 2024.pdf".into(),
                "report.txt".into(),
                "song.mp3".into(),
            ])),
        };
        let (start, c) = h.candidates("se");
        assert_eq!(start, 0);
        assert_eq!(
            c.iter().map(|p| p.replacement.as_str()).collect::<Vec<_>>(),
            ["search"]
        );
        let (start, c) = h.candidates("get rep");
        assert_eq!(start, 4);
        assert_eq!(
            c.iter().map(|p| p.replacement.as_str()).collect::<Vec<_>>(),
            ["'report 2024.pdf'", "report.txt"]
        );
        let (start, c) = h.candidates("get 'report 2");
        assert_eq!(start, 4);
        assert_eq!(c.len(), 1);
        let (_, c) = h.candidates("get ");
        assert_eq!(c.len(), 3);
    }
}
