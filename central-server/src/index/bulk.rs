//! The bulk load used at every restart: [`Index::with_capacity`], then
//! [`Index::insert_peer`] and [`Index::insert_file`] for every peer and
//! file, [`Index::files_loaded`], [`Index::add_ref`] for every holding,
//! then [`Index::finish_bulk`]; or, when holdings come by peer (SQLite's
//! table), [`Index::file_or_insert`] for each holding's content instead
//! of `insert_file` and `files_loaded`.
//!
//! It answers exactly like an index built by Join/Publish, but faster: slabs
//! are sized up front, and the work that the rows after it do not need runs
//! on other threads while they are read: the file id table once the files
//! are in, the token map (instead of one sorted insertion per name).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::thread::JoinHandle;

use peerdex_proto::FileId;

use super::Index;
use super::compact::{Small, Word};
use super::slab::{Handles, Slab};
use super::words::raw_words;

/// The state of a bulk load (see the module doc).
pub(super) struct Bulk {
    tokens: TokenBuilder,
    /// Files inserted whose ids are not in `file_ix` yet.
    ids: Vec<(u32, FileId)>,
    /// Building `file_ix` from `ids`, once [`Index::files_loaded`] ran.
    file_ix: Option<JoinHandle<Handles>>,
    /// Files went into `file_ix` as they came ([`Index::file_or_insert`]).
    direct: bool,
}

impl Bulk {
    /// Hand a name to the token builder.
    pub(super) fn name(&mut self, n: u32, text: &str) {
        self.tokens.send(n, text);
    }

    /// Record a file whose id goes into the id table later.
    pub(super) fn file(&mut self, f: u32, id: FileId) {
        self.ids.push((f, id));
    }
}

/// The id table of `ids` (`(handle, id)` pairs).
fn file_table(ids: Vec<(u32, FileId)>) -> Handles {
    let mut table = Handles::with_capacity(ids.len());
    // Handles are dense from 0 in a fresh slab, so most are their position.
    let pos: HashMap<u32, usize> = ids
        .iter()
        .enumerate()
        .filter(|&(k, &(f, _))| f as usize != k)
        .map(|(k, &(f, _))| (f, k))
        .collect();
    let key_of = |f: u32| {
        let k = pos.get(&f).copied().unwrap_or(f as usize);
        &ids[k].1
    };
    for &(f, id) in &ids {
        table.insert(f, &id, key_of);
    }
    table
}

impl Index {
    /// Start a bulk load. Until [`Index::finish_bulk`], files cannot be
    /// found by id and the token map is empty.
    pub fn with_capacity(peers: usize, files: usize) -> Self {
        let mut ix = Self::new();
        ix.peers = Slab::with_capacity(peers);
        ix.peer_ix.reserve(peers);
        ix.files = Slab::with_capacity(files);
        ix.names = super::arena::Names::with_capacity(files);
        ix.name_ix = Handles::with_capacity(files);
        ix.bulk = Some(Bulk {
            // About as many distinct words as names (a name's own number, say).
            tokens: TokenBuilder::spawn(files),
            ids: Vec::with_capacity(files),
            file_ix: None,
            direct: false,
        });
        ix
    }

    /// During a bulk load: every file is in; its id table is built on its
    /// own thread while the holdings are read.
    pub fn files_loaded(&mut self) {
        if let Some(bulk) = &mut self.bulk
            && bulk.file_ix.is_none()
            && !bulk.direct
        {
            let ids = std::mem::take(&mut bulk.ids);
            bulk.file_ix = Some(std::thread::spawn(move || file_table(ids)));
        }
    }

    /// For a load whose holdings come by peer, not by content (SQLite's):
    /// the slot of content `id`, made at its first holding, its id table
    /// built as the load goes (one random-access table, where a map of the
    /// loader's and the table built after it would be two). Not mixed with
    /// [`Index::insert_file`] in one load. `expected`: how many contents
    /// to size the table for at the first call.
    pub fn file_or_insert(&mut self, id: FileId, expected: usize) -> u32 {
        if let Some(bulk) = &mut self.bulk
            && !bulk.direct
        {
            bulk.direct = true;
            self.file_ix = Handles::with_capacity(expected);
        }
        let files = &self.files;
        match self.file_ix.find(&id, |g| &files.get(g).id) {
            Ok(f) => f,
            Err(at) => {
                let f = self.new_file(id);
                let files = &self.files;
                self.file_ix.insert_at(at, f, |g| &files.get(g).id);
                f
            }
        }
    }

    /// End a bulk load: drop contents nobody holds and build the token map.
    pub fn finish_bulk(&mut self) {
        if let Some(mut bulk) = self.bulk.take() {
            // Files inserted after `files_loaded` (or without it) too.
            let mut table = match bulk.file_ix.take() {
                Some(t) => t.join().expect("file id table thread panicked"),
                None if bulk.direct => std::mem::replace(&mut self.file_ix, Handles::new()),
                None => Handles::with_capacity(bulk.ids.len()),
            };
            let files = &self.files;
            for (f, id) in bulk.ids {
                table.insert(f, &id, |g| &files.get(g).id);
            }
            self.file_ix = table;
            self.tokens = bulk.tokens.finish();
        }
        let orphans: Vec<u32> = self
            .files
            .iter()
            .filter(|(_, f)| f.refs.is_empty())
            .map(|(i, _)| i)
            .collect();
        for f in orphans {
            self.remove_file(f);
        }
    }
}

/// Builds the token map on its own thread during a bulk load (the load is
/// CPU-bound and the box has more than one core). Names travel in batches
/// of concatenated text, so that handing them over costs no allocation per
/// name.
struct TokenBuilder {
    tx: std::sync::mpsc::Sender<Batch>,
    batch: Batch,
    thread: std::thread::JoinHandle<BTreeMap<Word, Small<u32>>>,
}

/// A batch of names: `text` holds their texts one after the other, and
/// name `names[k].0` ends at byte `names[k].1`.
#[derive(Default)]
struct Batch {
    text: String,
    names: Vec<(u32, usize)>,
}

/// Bytes of name text per batch.
const BATCH_BYTES: usize = 64 * 1024;

impl TokenBuilder {
    /// `words`: the number of distinct words to expect.
    fn spawn(words: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
        let thread = std::thread::spawn(move || {
            // Names arrive in increasing index order, so postings come out
            // sorted; a word repeated within one name is skipped by `last()`.
            let mut map: HashMap<Word, Small<u32>> = HashMap::with_capacity(words);
            for batch in rx {
                let mut start = 0;
                for &(n, end) in &batch.names {
                    for w in raw_words(&batch.text[start..end]) {
                        match map.entry(Word::lowercase(w)) {
                            Entry::Occupied(e) if e.get().last() == Some(&n) => {}
                            Entry::Occupied(mut e) => e.get_mut().push(n),
                            Entry::Vacant(e) => {
                                e.insert(Small::one(n));
                            }
                        }
                    }
                    start = end;
                }
            }
            let mut sorted: Vec<(Word, Small<u32>)> = map.into_iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            sorted.into_iter().collect()
        });
        Self {
            tx,
            batch: Batch::default(),
            thread,
        }
    }

    fn send(&mut self, n: u32, text: &str) {
        self.batch.text.push_str(text);
        self.batch.names.push((n, self.batch.text.len()));
        if self.batch.text.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        // The receiver lives until `finish`; a failed send means it panicked,
        // which `finish` reports.
        let _ = self.tx.send(batch);
    }

    fn finish(mut self) -> BTreeMap<Word, Small<u32>> {
        self.flush();
        drop(self.tx);
        self.thread.join().expect("token builder thread panicked")
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::super::tests::{StoredPeer, TTL, answers, bulk_from, fid, sf, url};
    use super::super::{Index, Load, Stats};
    use peerdex_proto::PeerId;

    #[test]
    fn bulk_load_matches_incremental() {
        let now = Instant::now();
        let peers: Vec<StoredPeer> = (0..3u8)
            .map(|k| (PeerId::new_random(), url(u16::from(k) + 1), [k; 32]))
            .collect();
        // (peer, file, name, size): one content under two names, one name
        // on two contents, a word repeated within a name, non-ASCII words, a
        // content two peers hold, two peers that disagree on a size, and a
        // peer that holds nothing.
        let holdings: [(usize, u32, &str, u64); 7] = [
            (0, 1, "Red Fox.jpg", 10),
            (0, 2, "red-panda.jpg", 20),
            (1, 1, "red fox (copy).JPG", 10),
            (1, 3, "Red Fox.jpg", 31),
            (1, 4, "Ünï Cødé.txt", 40),
            (0, 4, "Ünï Cødé.txt", 40),
            (0, 3, "fox fox FOX.bin", 30),
        ];
        // File 5 is a row nobody holds: the bulk load drops it.
        let files: Vec<u32> = (1..=5).collect();

        let mut incremental = Index::new();
        for (k, (id, url, hash)) in peers.iter().enumerate() {
            let mine: Vec<_> = holdings
                .iter()
                .filter(|h| h.0 == k)
                .map(|&(_, f, name, size)| sf(f, size, name))
                .collect();
            incremental.join(*id, url.clone(), *hash, Load::default(), now + TTL, &mine);
        }
        let bulk = bulk_from(&peers, &files, &holdings, now + TTL);

        assert_eq!(
            bulk.stats(),
            Stats {
                peers: 3,
                files: 4,
                names: 5
            }
        );
        let names = [
            "Red Fox.jpg",
            "red-panda.jpg",
            "red fox (copy).JPG",
            "Ünï Cødé.txt",
            "fox fox FOX.bin",
            "Red Fox",
        ];
        let queries = [
            "red", "fox", "f", "r", "panda", "jpg", "copy", "ün", "CØDÉ", "fox red", "bin", "zebra",
        ];
        let all_files: Vec<u32> = (0..=6).collect();
        let want = answers(&incremental, &peers, &all_files, &names, &queries, now);
        let got = answers(&bulk, &peers, &all_files, &names, &queries, now);
        assert_eq!(got, want);
        // Guard the comparison itself: it saw real answers.
        assert_eq!(
            incremental
                .search(&["red".into()], None, 9, now, 99)
                .hits
                .len(),
            4
        );
    }

    #[test]
    fn every_file_is_found_whenever_files_loaded_is_called() {
        let now = Instant::now();
        // files_loaded before all, after two, never (finish_bulk does it).
        for split in [0, 2, 5] {
            let mut ix = Index::with_capacity(1, 5);
            let p = ix.insert_peer(PeerId::new_random(), url(1), [1; 32], now + TTL);
            let mut fs = Vec::new();
            for i in 0..5 {
                if i == split {
                    ix.files_loaded();
                }
                fs.push(ix.insert_file(fid(i)));
            }
            for (i, &f) in fs.iter().enumerate() {
                assert!(ix.add_ref(p, f, &format!("n{i}"), 1));
            }
            ix.finish_bulk();
            for i in 0..5 {
                let l = ix.locate_id(&fid(i), now, 9);
                assert_eq!(
                    l.map(|l| l.names),
                    Some(vec![format!("n{i}")]),
                    "split {split}"
                );
            }
        }
    }
}
