//! Names and the token map: interning a name (its words posted in the
//! sorted token map), dropping it, and removing dropped names' postings
//! in one pass per word ([`Index::flush_postings`]).

use std::collections::HashMap;

use super::Index;
use super::compact::Word;
use super::words::words;

impl Index {
    pub(super) fn name(&self, text: &str) -> Option<u32> {
        self.name_ix.get(text, |n| self.names.text(n))
    }

    pub(super) fn intern_name(&mut self, name: &str) -> u32 {
        // A handle freed by a dropped name may be reused here: its old
        // postings must be gone first.
        self.flush_postings();
        let vacant = match self.name_ix.find(name, |n| self.names.text(n)) {
            Ok(n) => return n,
            Err(vacant) => vacant,
        };
        let n = self.names.insert(name);
        if let Some(bulk) = &mut self.bulk {
            bulk.name(n, name);
        }
        let names = &self.names;
        self.name_ix.insert_at(vacant, n, |m| names.text(m));
        if self.bulk.is_none() {
            let mut ws: Vec<String> = words(name).collect();
            ws.sort_unstable();
            ws.dedup();
            for w in ws {
                let postings = self.tokens.entry(Word::new(&w)).or_default();
                if let Err(pos) = postings.binary_search(&n) {
                    postings.insert(pos, n);
                }
            }
        }
        n
    }

    pub(super) fn drop_name(&mut self, n: u32) {
        let names = &self.names;
        self.name_ix.remove(names.text(n), |m| names.text(m));
        if let Some(text) = self.names.remove(n) {
            self.unposted.push((n, text));
        }
    }

    /// While `on`, changes leave the postings of dropped names for one
    /// [`Index::flush_postings`] (a change in steps flushes once per step:
    /// each flush passes over the long posting lists once). Nothing may
    /// read the index before that flush.
    pub fn defer_postings(&mut self, on: bool) {
        self.defer_flush = on;
        if !on {
            self.flush_postings();
        }
    }

    pub(super) fn flush_unless_deferred(&mut self) {
        if !self.defer_flush {
            self.flush_postings();
        }
    }

    /// Remove the dropped names from the token map: one pass over each
    /// word's postings, however many of its names went.
    pub fn flush_postings(&mut self) {
        if self.unposted.is_empty() {
            return;
        }
        let mut by_word: HashMap<String, Vec<u32>> = HashMap::new();
        for (n, text) in std::mem::take(&mut self.unposted) {
            for w in words(&text) {
                by_word.entry(w).or_default().push(n);
            }
        }
        for (w, mut gone) in by_word {
            gone.sort_unstable();
            gone.dedup();
            if let Some(postings) = self.tokens.get_mut(w.as_str()) {
                if let [one] = gone[..] {
                    if let Ok(pos) = postings.binary_search(&one) {
                        postings.remove(pos);
                    }
                } else {
                    // Both sorted: one merge walk.
                    let mut i = 0;
                    postings.retain(|x| {
                        while i < gone.len() && gone[i] < *x {
                            i += 1;
                        }
                        gone.get(i) != Some(x)
                    });
                }
                if postings.is_empty() {
                    self.tokens.remove(w.as_str());
                }
            }
        }
    }
}
