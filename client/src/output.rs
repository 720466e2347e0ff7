//! Everything printed for people: sizes, rates, tables, progress bars.
//!
//! Results go to stdout, progress and diagnostics to stderr. Progress bars
//! appear only when stderr is a terminal (and not with `--json` or
//! `TERM=dumb`); colour only when, in addition, `NO_COLOR` is unset.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How this process may draw on the terminal, decided once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Term {
    /// Live progress bars on stderr.
    pub(crate) bars: bool,
    /// ANSI colour in bars.
    pub(crate) color: bool,
}

impl Term {
    /// Look at the environment: `--json`, whether stderr is a terminal,
    /// `TERM=dumb` and `NO_COLOR`.
    pub(crate) fn detect(json: bool) -> Self {
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let bars = !json && !dumb && std::io::stderr().is_terminal();
        Self {
            bars,
            color: bars && !no_color,
        }
    }

    /// A byte-progress bar of `total` bytes (spinner if unknown), or a hidden
    /// one when bars are off.
    pub(crate) fn bytes_bar(&self, total: Option<u64>) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        bar.set_style(self.bytes_style(total.is_some()));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// Switch a bar between the spinner (unknown size) and the byte bar.
    pub(crate) fn set_total(&self, bar: &ProgressBar, total: u64) {
        if bar.length() != Some(total) {
            bar.set_length(total);
            if self.bars {
                bar.set_style(self.bytes_style(true));
            }
        }
    }

    fn bytes_style(&self, known: bool) -> ProgressStyle {
        let template = match (known, self.color) {
            (true, true) => {
                "{spinner:.green} {prefix:.bold} [{bar:28.cyan/blue}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}"
            }
            (true, false) => {
                "{spinner} {prefix} [{bar:28}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}"
            }
            (false, true) => "{spinner:.green} {prefix:.bold} {binary_bytes} {wide_msg}",
            (false, false) => "{spinner} {prefix} {binary_bytes} {wide_msg}",
        };
        ProgressStyle::with_template(template)
            .expect("static progress template is valid")
            .progress_chars("=> ")
    }
}

/// Write results to stdout. A closed pipe (`peerdex search x | head -1`)
/// is not an error: the reader has what it wanted.
pub(crate) fn out(text: impl AsRef<str>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_ref().as_bytes())
        .and_then(|()| stdout.flush());
}

/// `println!` to stdout through [`out`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::out(format!("{}\n", format_args!($($arg)*))) };
}
/// `print!` to stdout through [`out`].
macro_rules! outp {
    ($($arg:tt)*) => { $crate::output::out(format!($($arg)*)) };
}
pub(crate) use {outln, outp};

/// Bytes in binary units, e.g. `1.5 MiB`; exact below 1 KiB.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else if value >= 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// A rate in binary units per second, e.g. `12.3 MiB/s`.
pub(crate) fn human_rate(bytes_per_sec: u64) -> String {
    format!("{}/s", human_size(bytes_per_sec))
}

/// The first 12 hex characters of a file id (what `FileId::short` prints).
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `host:port` of a URL, for compact display of peers.
pub(crate) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// A plain-text table: columns padded to the widest cell, two spaces apart,
/// columns listed in `right` right-aligned. No trailing spaces. Widths are
/// what a terminal shows (wide CJK characters take two columns, combining
/// marks none), so no name can push the other columns out of line.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    use unicode_width::UnicodeWidthStr;
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.width());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(cols) {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width[i].saturating_sub(cell.width());
            if right.contains(&i) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < cols {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `s` in double quotes, for messages: sanitized text, never Rust debug form.
pub(crate) fn quoted(s: &str) -> String {
    format!("\u{201c}{}\u{201d}", sanitize(s))
}

/// Replace control characters (a peer could put escape codes in a name)
/// and invisible ones (bidi overrides, zero-width characters: see
/// `peerdex_proto::types::is_invisible`) by U+FFFD, so nothing we print can
/// drive the terminal or show in another order than it reads. The
/// directory refuses such names; this is for the ones from elsewhere
/// (errors, older peers).
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || peerdex_proto::types::is_invisible(c) {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// The marker before a name whose words mix scripts (it may imitate
/// another name letter for letter).
pub(crate) const LOOKALIKE: &str = "\u{26a0} ";

/// A file name as shown to people: [`sanitize`]d, and marked with
/// [`LOOKALIKE`] when a word of it mixes scripts (Latin with a Cyrillic
/// `а`, say; `peerdex_proto::types::mixes_scripts`).
pub(crate) fn name(s: &str) -> String {
    if peerdex_proto::types::mixes_scripts(s) {
        format!("{LOOKALIKE}{}", sanitize(s))
    } else {
        sanitize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.00 KiB");
        assert_eq!(human_size(1536), "1.50 KiB");
        assert_eq!(human_size(10 * 1024 * 1024 + 512 * 1024), "10.5 MiB");
        assert_eq!(human_size(300 * 1024 * 1024 * 1024), "300 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
        assert_eq!(human_rate(2 * 1024 * 1024), "2.00 MiB/s");
    }

    #[test]
    fn ids_and_hosts() {
        let id = "ab".repeat(32);
        assert_eq!(short_id(&id), "abababababab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(host_of("http://127.0.0.1:7071"), "127.0.0.1:7071");
        assert_eq!(host_of("https://peer.example/x"), "peer.example");
        assert_eq!(host_of("weird"), "weird");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "SIZE"],
            &[
                vec!["a.txt".into(), "1 B".into()],
                vec!["longer name.bin".into(), "10.0 KiB".into()],
            ],
            &[1],
        );
        assert_eq!(
            t,
            "NAME                 SIZE\na.txt                 1 B\nlonger name.bin  10.0 KiB\n"
        );
        // Last left-aligned column gets no trailing padding.
        let t = table(&["ID", "NAME"], &[vec!["1".into(), "x".into()]], &[]);
        assert_eq!(t, "ID  NAME\n1   x\n");
    }

    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(sanitize("a\u{1b}[31mb\n"), "a\u{FFFD}[31mb\u{FFFD}");
        assert_eq!(sanitize("naïve.txt"), "naïve.txt");
        assert_eq!(sanitize("x\u{202e}fdp.exe"), "x\u{FFFD}fdp.exe");
        assert_eq!(sanitize("a\u{200b}b"), "a\u{FFFD}b");
    }

    #[test]
    fn lookalike_names_are_marked() {
        assert_eq!(name("p\u{430}ypal.pdf"), "\u{26a0} p\u{430}ypal.pdf");
        assert_eq!(name("paypal.pdf"), "paypal.pdf");
        assert_eq!(
            name("\u{43e}\u{442}\u{447}\u{451}\u{442}.pdf"),
            "\u{43e}\u{442}\u{447}\u{451}\u{442}.pdf"
        );
    }

    /// Wide characters and combining marks cannot fake columns: every row
    /// puts the next column at the same terminal column.
    #[test]
    fn tables_align_by_display_width() {
        use unicode_width::UnicodeWidthStr;
        let t = table(
            &["NAME", "ID"],
            &[
                vec!["報告書.pdf".into(), "a1".into()],
                vec!["cafe\u{301}\u{301}\u{301}.txt".into(), "b2".into()],
                vec!["plain.txt".into(), "c3".into()],
            ],
            &[],
        );
        let cols: Vec<usize> = t
            .lines()
            .map(|l| {
                let cut = l.rfind("  ").unwrap() + 2;
                l[..cut].width()
            })
            .collect();
        assert!(cols.windows(2).all(|w| w[0] == w[1]), "{t}\n{cols:?}");
    }

    #[test]
    fn hidden_bars_when_plain() {
        let plain = Term {
            bars: false,
            color: false,
        };
        let bar = plain.bytes_bar(Some(10));
        assert!(bar.is_hidden());
    }
}
