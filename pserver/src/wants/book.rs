//! The wants on disk (`wants.json` in the data folder, written whole with
//! `write_atomic`: a crash leaves the old list or the new one), and a
//! want request parsed at the edge into what is wanted.

use std::io;
use std::path::Path;

use peerdex_common::fs::write_atomic;
use peerdex_proto::rest::{Want, WantRequest, WantState};
use peerdex_proto::types::{MAX_QUERY_BYTES, MAX_QUERY_WORDS};
use peerdex_proto::{FileId, FileName};
use serde::{Deserialize, Serialize};

/// The file in the data folder.
pub(super) const FILE: &str = "wants.json";
/// Finished wants kept for the user to see (the oldest go first).
const DONE_KEPT: usize = 100;

/// What a want waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wanted {
    Id(FileId),
    /// An exact name (case-sensitive, as Locate).
    Name(FileName),
    /// Words, as a search.
    Query(String),
}

/// Why a want request is refused (400).
#[derive(Debug, thiserror::Error)]
pub enum BadWant {
    #[error("give exactly one of file (a file id or an exact name) and query (words)")]
    OneTarget,
    #[error("file must be a file id (64 lowercase hex characters) or an exact file name: {0}")]
    File(#[source] peerdex_proto::ParseError),
    #[error("query is empty; give one or more words")]
    EmptyQuery,
    #[error("query is {bytes} bytes; at most {MAX_QUERY_BYTES}")]
    QueryTooLong { bytes: usize },
    #[error("query has {words} distinct words; at most {MAX_QUERY_WORDS}")]
    TooManyWords { words: usize },
}

impl Wanted {
    /// A request's target and whether to download (default: yes).
    pub(crate) fn parse(req: &WantRequest) -> Result<(Self, bool), BadWant> {
        let download = req.download.unwrap_or(true);
        let wanted = match (&req.file, &req.query) {
            (Some(f), None) => match f.parse::<FileId>() {
                Ok(id) => Wanted::Id(id),
                Err(_) => Wanted::Name(f.parse().map_err(BadWant::File)?),
            },
            (None, Some(q)) => Wanted::Query(check_query(q)?),
            _ => return Err(BadWant::OneTarget),
        };
        Ok((wanted, download))
    }

    /// The target of a stored want (`None`: unreadable, left out).
    fn of(w: &Want) -> Option<Self> {
        let req = WantRequest {
            file: w.file.clone(),
            query: w.query.clone(),
            download: Some(w.download),
        };
        Self::parse(&req).ok().map(|(t, _)| t)
    }

    /// As the user wrote it.
    pub(crate) fn spelled(&self) -> String {
        match self {
            Wanted::Id(id) => id.to_hex(),
            Wanted::Name(n) => n.to_string(),
            Wanted::Query(q) => q.clone(),
        }
    }
}

/// A query as Search takes it: not blank, at most [`MAX_QUERY_BYTES`],
/// at most [`MAX_QUERY_WORDS`] distinct words (letters and digits;
/// anything else separates them). A query of no word (only punctuation)
/// is taken, as Search takes it: it matches no name. The directory
/// parses it again with its own tokenizer when it matches names; this
/// only refuses early, and alone, what it would refuse for the whole
/// Watch stream.
fn check_query(q: &str) -> Result<String, BadWant> {
    let q = q.trim();
    if q.is_empty() {
        return Err(BadWant::EmptyQuery);
    }
    if q.len() > MAX_QUERY_BYTES {
        return Err(BadWant::QueryTooLong { bytes: q.len() });
    }
    let mut words: Vec<String> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.sort_unstable();
    words.dedup();
    match words.len() {
        n if n > MAX_QUERY_WORDS => Err(BadWant::TooManyWords { words: n }),
        _ => Ok(q.to_owned()),
    }
}

/// One want with what is only kept in memory.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub want: Want,
    pub wanted: Wanted,
    /// Checked with Locate (or Search) since the Watch stream that covers
    /// it opened.
    pub checked: bool,
}

impl Entry {
    /// Watched at the directory: not done, not downloading.
    pub(super) fn watched(&self) -> bool {
        !matches!(self.want.state, WantState::Done | WantState::Downloading)
    }
}

/// The list, in the order the wants were made.
#[derive(Debug, Default)]
pub(super) struct Book {
    pub entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    wants: Vec<Want>,
}

impl Book {
    /// Read `dir/wants.json` (none yet: an empty list). A want that was
    /// downloading waits again (its job did not outlive the process; a
    /// partial download resumes by itself, and the first check finds it).
    pub(super) fn load(dir: &Path) -> io::Result<Self> {
        let bytes = match std::fs::read(dir.join(FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.join(FILE).display()),
            )
        })?;
        let mut entries = Vec::new();
        for mut want in disk.wants {
            let Some(wanted) = Wanted::of(&want) else {
                tracing::warn!(want = %want.want_id, "an unreadable want in wants.json is left out");
                continue;
            };
            if want.state == WantState::Downloading {
                want.state = WantState::Waiting;
                want.job_id = None;
            }
            entries.push(Entry {
                want,
                wanted,
                checked: false,
            });
        }
        Ok(Self { entries })
    }

    /// Write the list whole (temp file, fsync, rename).
    pub(super) fn save(&mut self, dir: &Path) -> io::Result<()> {
        let done = self
            .entries
            .iter()
            .filter(|e| e.want.state == WantState::Done)
            .count();
        if done > DONE_KEPT {
            let mut drop = done - DONE_KEPT;
            self.entries.retain(|e| {
                let old_done = e.want.state == WantState::Done && drop > 0;
                if old_done {
                    drop -= 1;
                }
                !old_done
            });
        }
        let disk = OnDisk {
            version: 1,
            wants: self.entries.iter().map(|e| e.want.clone()).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&disk).map_err(io::Error::other)?;
        write_atomic(&dir.join(FILE), &bytes)
    }

    /// Wants not done yet (each counts against `PSERVER_MAX_WANTS`).
    pub(super) fn open(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.want.state != WantState::Done)
            .count()
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.want.want_id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(file: Option<&str>, query: Option<&str>) -> WantRequest {
        WantRequest {
            file: file.map(Into::into),
            query: query.map(Into::into),
            download: None,
        }
    }

    #[test]
    fn a_request_becomes_an_id_a_name_or_a_query_or_a_clear_refusal() {
        let id = "ab".repeat(32);
        let (w, download) = Wanted::parse(&req(Some(&id), None)).unwrap();
        assert_eq!(w, Wanted::Id(id.parse().unwrap()));
        assert!(download);
        let (w, _) = Wanted::parse(&req(Some("Report.pdf"), None)).unwrap();
        assert_eq!(w, Wanted::Name("Report.pdf".parse().unwrap()));
        let (w, _) = Wanted::parse(&req(None, Some("  annual report "))).unwrap();
        assert_eq!(w, Wanted::Query("annual report".into()));
        // No word: taken, as Search takes it (it matches no name).
        assert!(Wanted::parse(&req(None, Some("-- !!"))).is_ok());
        for (r, what) in [
            (req(None, None), "exactly one"),
            (req(Some("a"), Some("b")), "exactly one"),
            (req(Some("../x"), None), "file must be"),
            (req(None, Some("   ")), "empty"),
            (req(None, Some(&"w ".repeat(600))), "bytes"),
        ] {
            let e = Wanted::parse(&r).unwrap_err().to_string();
            assert!(e.contains(what), "{r:?}: {e}");
        }
        let many: String = (0..17).map(|i| format!("w{i} ")).collect();
        let e = Wanted::parse(&req(None, Some(&many))).unwrap_err();
        assert!(e.to_string().contains("17 distinct words"), "{e}");
    }

    #[test]
    fn the_list_survives_a_restart_and_a_download_in_flight_waits_again() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Book::load(dir.path()).unwrap().entries.is_empty());
        let want = |id: &str, state| Want {
            want_id: id.into(),
            file: Some("Report.pdf".into()),
            query: None,
            download: true,
            state,
            created: 1,
            updated: 2,
            job_id: Some("j".into()),
            matches: Vec::new(),
            error: None,
        };
        let mut book = Book::default();
        for (id, state) in [("a", WantState::Downloading), ("b", WantState::Done)] {
            book.entries.push(Entry {
                want: want(id, state),
                wanted: Wanted::Name("Report.pdf".parse().unwrap()),
                checked: true,
            });
        }
        book.save(dir.path()).unwrap();
        let back = Book::load(dir.path()).unwrap();
        assert_eq!(back.entries.len(), 2);
        assert_eq!(back.entries[0].want.state, WantState::Waiting);
        assert_eq!(back.entries[0].want.job_id, None);
        assert!(!back.entries[0].checked);
        assert_eq!(back.entries[1].want.state, WantState::Done);
        assert_eq!(back.open(), 1);
        // Nothing but the file itself in the folder (no temp left).
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
