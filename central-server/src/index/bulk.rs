//! The bulk load used at every restart: [`Index::with_capacity`], then
//! [`Index::insert_peer`], [`Index::insert_file`] and [`Index::add_ref`] for
//! every row, then [`Index::finish_bulk`].
//!
//! It answers exactly like an index built by Join/Publish, but faster: slabs
//! are sized up front, and the token map is built on its own thread while
//! the rows are read, instead of one sorted insertion per name.

use std::collections::{BTreeMap, HashMap};

use super::compact::{Small, Word};
use super::words::{lower_into, raw_words};
use super::{Handles, Index, Slab};

impl Index {
    /// Start a bulk load: token indexing is deferred to [`Index::finish_bulk`].
    pub fn with_capacity(peers: usize, files: usize) -> Self {
        let mut ix = Self::new();
        ix.peers = Slab::with_capacity(peers);
        ix.peer_ix.reserve(peers);
        ix.files = Slab::with_capacity(files);
        ix.file_ix = Handles::with_capacity(files);
        ix.names = Slab::with_capacity(files);
        ix.name_ix = Handles::with_capacity(files);
        ix.bulk = Some(TokenBuilder::spawn());
        ix
    }

    /// End a bulk load: drop contents nobody holds and build the token map.
    pub fn finish_bulk(&mut self) {
        let orphans: Vec<u32> = self
            .files
            .iter()
            .filter(|(_, f)| f.refs.is_empty())
            .map(|(i, _)| i)
            .collect();
        for f in orphans {
            self.remove_file(f);
        }
        if let Some(builder) = self.bulk.take() {
            self.tokens = builder.finish();
        }
    }
}

/// Builds the token map on its own thread during a bulk load (the load is
/// CPU-bound and the box has more than one core).
pub(super) struct TokenBuilder {
    tx: std::sync::mpsc::Sender<(u32, Box<str>)>,
    thread: std::thread::JoinHandle<BTreeMap<Word, Small<u32>>>,
}

impl TokenBuilder {
    pub(super) fn spawn() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<(u32, Box<str>)>();
        let thread = std::thread::spawn(move || {
            // Names arrive in increasing index order, so postings come out
            // sorted; a word repeated within one name is skipped by `last()`.
            let mut map: HashMap<Word, Small<u32>> = HashMap::new();
            let mut buf = String::new();
            for (n, text) in rx {
                for w in raw_words(&text) {
                    buf.clear();
                    lower_into(w, &mut buf);
                    match map.get_mut(buf.as_str()) {
                        Some(v) if v.last() == Some(&n) => {}
                        Some(v) => v.push(n),
                        None => {
                            map.insert(Word::new(&buf), Small::one(n));
                        }
                    }
                }
            }
            let mut sorted: Vec<(Word, Small<u32>)> = map.into_iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            sorted.into_iter().collect()
        });
        Self { tx, thread }
    }

    pub(super) fn send(&self, n: u32, text: Box<str>) {
        // The receiver lives until `finish`; a failed send means it panicked,
        // which `finish` reports.
        let _ = self.tx.send((n, text));
    }

    pub(super) fn finish(self) -> BTreeMap<Word, Small<u32>> {
        drop(self.tx);
        self.thread.join().expect("token builder thread panicked")
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::super::tests::{StoredPeer, TTL, answers, bulk_from, sf, url};
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
}
