//! The index's answers: Locate by id or exact name, and ranked, paginated
//! word-prefix Search. Read-only: nothing here changes the index.

use std::cmp::Reverse;
use std::collections::HashSet;

use peerdex_proto::{FileId, PeerId, v1};
use tokio::time::Instant;

use super::holdings::most_claimed;
use super::words::{lower_into, raw_words};
use super::{Cursor, Index, SearchPage};
use crate::replication::{FileState, Holder, Volunteer};

/// Whether some word of `name` starts with `q` (lowercase), case-folded as
/// the tokenizer does, without allocating for ASCII words.
fn has_prefix_word(name: &str, q: &str) -> bool {
    let mut lower = String::new();
    raw_words(name).any(|w| {
        if w.is_ascii() {
            w.len() >= q.len() && w.as_bytes()[..q.len()].eq_ignore_ascii_case(q.as_bytes())
        } else {
            lower.clear();
            lower_into(w, &mut lower);
            lower.starts_with(q)
        }
    })
}

/// Whether `name` matches a query as Search matches it: every word of
/// `query_words` (from the query parser: lowercase) is a prefix of some
/// word of the name. No word matches nothing. For the Watch stream, which
/// checks each name as it is published.
pub fn name_matches(name: &str, query_words: &[String]) -> bool {
    !query_words.is_empty() && query_words.iter().all(|q| has_prefix_word(name, q))
}

impl Index {
    /// Metadata and live holders of one content; `None` when unknown or
    /// when no live peer holds it.
    pub fn locate_id(
        &self,
        id: &FileId,
        now: Instant,
        max_holders: usize,
    ) -> Option<v1::LocatedFile> {
        let f = self.file(id)?;
        self.located(f, now, max_holders)
    }

    /// Every content carrying exactly `name` (case-sensitive), at most
    /// `max_files` of them, most-held first.
    pub fn locate_name(
        &self,
        name: &str,
        now: Instant,
        max_holders: usize,
        max_files: usize,
    ) -> Vec<v1::LocatedFile> {
        let Some(n) = self.name(name) else {
            return Vec::new();
        };
        let mut out: Vec<(usize, v1::LocatedFile)> = self
            .names
            .get(n)
            .files
            .iter()
            .filter(|&&f| {
                self.files
                    .get(f)
                    .refs
                    .iter()
                    .any(|&(p, rn)| rn == n && self.live(p, now))
            })
            .filter_map(|&f| {
                Some((
                    self.live_holders(f, now).len(),
                    self.located(f, now, max_holders)?,
                ))
            })
            .collect();
        out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.file_id.cmp(&b.1.file_id)));
        out.truncate(max_files);
        out.into_iter().map(|(_, f)| f).collect()
    }

    /// Word-prefix search. Every word of `query_words` (already lowercased)
    /// must be a prefix of some word of the name. Ranked by live holders
    /// (desc), then name, then file id.
    ///
    /// The work is bounded: the rarest query word (the fewest names under
    /// its prefix) drives the scan, and the others are checked on each of
    /// its names; every word of the token map and every name visited costs
    /// one unit of `budget`, and at most `max_matches` matching
    /// `(name, file)` pairs are ranked. Past either bound the answer is
    /// what was found so far, with `truncated` set.
    pub fn search_within(
        &self,
        query_words: &[String],
        after: Option<&Cursor>,
        limit: usize,
        now: Instant,
        max_matches: usize,
        budget: usize,
    ) -> SearchPage {
        let mut spent = 0usize;
        let mut truncated = false;
        // The rarest word: count the postings under each prefix, giving up
        // on a word as soon as it is no rarer than the best so far.
        let mut driver: Option<(&str, usize)> = None;
        for w in query_words {
            let best = driver.map_or(usize::MAX, |(_, n)| n);
            let mut count = 0usize;
            for (_, postings) in self.prefix(w) {
                spent += 1;
                count += postings.len();
                if count >= best || spent >= budget / 2 {
                    break;
                }
            }
            if count < best {
                driver = Some((w, count));
            }
        }
        let Some((driver, 1..)) = driver else {
            return SearchPage::default();
        };
        // The other words: a word that is exactly one word of the map is
        // checked by a binary search in its (sorted) postings; a prefix of
        // several, on the name's text.
        let mut exact: Vec<&[u32]> = Vec::new();
        let mut others: Vec<&str> = Vec::new();
        for w in query_words
            .iter()
            .map(String::as_str)
            .filter(|w| *w != driver)
        {
            let mut range = self.prefix(w);
            match (range.next(), range.next()) {
                (None, _) => return SearchPage::default(),
                (Some((_, postings)), None) => exact.push(postings),
                _ => others.push(w),
            }
        }
        // A name is in each word's postings once: only a prefix that spans
        // several words of the map can meet a name twice.
        let one_word = self.prefix(driver).nth(1).is_none();
        let mut seen = HashSet::new();
        let mut matches: Vec<(u32, u32, u32)> = Vec::new(); // (holders, name, file)
        'scan: for (_, postings) in self.prefix(driver) {
            spent += 1;
            for &n in postings.iter() {
                spent += 1;
                if spent > budget {
                    truncated = true;
                    break 'scan;
                }
                if !exact.iter().all(|p| p.binary_search(&n).is_ok()) {
                    continue;
                }
                if !one_word && !seen.insert(n) {
                    continue;
                }
                // A name dropped in the change that is being applied has
                // no entry any more (see `flush_postings`).
                let Some(name) = self.names.try_get(n) else {
                    continue;
                };
                if !others
                    .iter()
                    .all(|q| has_prefix_word(self.names.text_of(name), q))
                {
                    continue;
                }
                for &f in name.files.iter() {
                    let refs = &self.files.get(f).refs;
                    if !refs.iter().any(|&(p, rn)| rn == n && self.live(p, now)) {
                        continue;
                    }
                    let holders = self.live_holders(f, now).len() as u32;
                    matches.push((holders, n, f));
                    if matches.len() >= max_matches {
                        truncated = true;
                        break 'scan;
                    }
                }
            }
        }
        let key =
            |&(h, n, f): &(u32, u32, u32)| (Reverse(h), self.names.text(n), self.files.get(f).id);
        let mut keyed: Vec<_> = matches.iter().map(|m| (key(m), *m)).collect();
        if let Some(c) = after {
            let ck = c.key();
            keyed.retain(|((h, name, id), _)| (*h, *name, *id) > ck);
        }
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = keyed.len() > limit;
        keyed.truncate(limit);
        let hits: Vec<v1::SearchHit> = keyed
            .iter()
            .map(|((_, name, id), (h, _, f))| v1::SearchHit {
                name: (*name).to_owned(),
                file_id: id.to_hex(),
                size: self.answer_size(*f, now),
                holders: *h,
                replicas_wanted: 0,
                island: String::new(),
            })
            .collect();
        let next = match (more, hits.last(), keyed.last()) {
            (true, Some(last), Some(k)) => Some(Cursor {
                holders: last.holders,
                name: last.name.clone(),
                file: k.0.2,
            }),
            _ => None,
        };
        SearchPage {
            hits,
            next,
            truncated,
        }
    }

    /// [`Index::search_within`] without a work budget (tests).
    #[cfg(test)]
    pub fn search(
        &self,
        query_words: &[String],
        after: Option<&Cursor>,
        limit: usize,
        now: Instant,
        max_matches: usize,
    ) -> SearchPage {
        self.search_within(query_words, after, limit, now, max_matches, usize::MAX)
    }

    /// The token map's entries whose word starts with `prefix`.
    fn prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a super::Word, &'a super::Small<u32>)> + 'a {
        self.tokens
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(t, _)| t.starts_with(prefix))
    }

    /// Live peers holding `id`, each once, with whether each holds it as a
    /// replica.
    pub fn live_copies(&self, id: &FileId, now: Instant) -> Vec<(PeerId, bool)> {
        let Some(f) = self.file(id) else {
            return Vec::new();
        };
        self.live_holders(f, now)
            .into_iter()
            .map(|p| {
                let e = self.peers.get(p);
                (e.id, e.replicas.contains(&f))
            })
            .collect()
    }

    /// The peer-API URL a live peer announced.
    pub fn url_of(&self, peer: &PeerId, now: Instant) -> Option<String> {
        let &p = self.peer_ix.get(peer)?;
        self.live(p, now)
            .then(|| self.peers.get(p).url.as_str().to_owned())
    }

    /// What the replica planner sees: every file that is pinned (`pinned`:
    /// id → wanted copies, size and name kept by the pin) or held as a
    /// replica by a live peer, with its live holders; and every live peer
    /// that offers replica space or holds replicas, with the bytes its
    /// replicas take.
    pub fn replication_view(
        &self,
        now: Instant,
        pinned: &std::collections::BTreeMap<FileId, (u32, u64, String)>,
    ) -> (Vec<FileState>, Vec<Volunteer>) {
        let mut wanted_files: Vec<(FileId, Option<u32>)> =
            pinned.keys().map(|id| (*id, self.file(id))).collect();
        let mut volunteers = Vec::new();
        let mut seen: HashSet<u32> = HashSet::new();
        for (&id, &p) in &self.peer_ix {
            if !self.live(p, now) {
                continue;
            }
            let e = self.peers.get(p);
            if e.replica_quota == 0 && e.replicas.is_empty() {
                continue;
            }
            let used = e
                .replicas
                .iter()
                .map(|&f| self.claim(p, f).unwrap_or(0))
                .fold(0u64, u64::saturating_add);
            volunteers.push(Volunteer {
                peer: id,
                quota: e.replica_quota,
                used,
            });
            for &f in &e.replicas {
                let fid = self.files.get(f).id;
                if !pinned.contains_key(&fid) && seen.insert(f) {
                    wanted_files.push((fid, Some(f)));
                }
            }
        }
        let files = wanted_files
            .into_iter()
            .map(|(id, f)| {
                let pin = pinned.get(&id);
                let wanted = pin.map_or(0, |p| p.0);
                let live = f.map(|f| (f, self.live_holders(f, now)));
                let Some((f, live)) = live.filter(|(_, l)| !l.is_empty()) else {
                    let (_, size, name) = pin.cloned().unwrap_or_default();
                    return FileState {
                        id,
                        size,
                        name,
                        wanted,
                        holders: Vec::new(),
                        auditing: false,
                        pinner: None,
                    };
                };
                let holders = live
                    .into_iter()
                    .map(|p| {
                        let e = self.peers.get(p);
                        Holder {
                            peer: e.id,
                            replica: e.replicas.contains(&f),
                            proven: false,
                        }
                    })
                    .collect();
                let name = self
                    .files
                    .get(f)
                    .refs
                    .iter()
                    .filter(|&&(p, _)| self.live(p, now))
                    .map(|&(_, n)| self.names.text(n))
                    .min()
                    .map(str::to_owned)
                    .or_else(|| pin.map(|p| p.2.clone()))
                    .unwrap_or_default();
                FileState {
                    id,
                    size: self.answer_size(f, now),
                    name,
                    wanted,
                    holders,
                    auditing: false,
                    pinner: None,
                }
            })
            .collect();
        (files, volunteers)
    }

    /// The size to answer for `f`: the one claimed by the most live holders
    /// (ties: the smaller).
    /// The keys of this island's summary for linked islands: `id_key` of
    /// every file with a live holder and `name_key` of each of its live
    /// names (each name once). Returns how many ids, and the keys.
    pub fn summary_keys(
        &self,
        now: Instant,
        id_key: impl Fn(&FileId) -> u64,
        name_key: impl Fn(&str) -> u64,
    ) -> (usize, Vec<u64>) {
        let mut keys = Vec::with_capacity(self.holdings.min(1 << 24) + 16);
        let mut named = HashSet::new();
        let mut ids = 0;
        for (_, file) in self.files.iter() {
            let mut live = file
                .refs
                .iter()
                .filter(|&&(p, _)| self.live(p, now))
                .peekable();
            if live.peek().is_none() {
                continue;
            }
            ids += 1;
            keys.push(id_key(&file.id));
            for &(_, n) in live {
                if named.insert(n) {
                    keys.push(name_key(self.names.text(n)));
                }
            }
        }
        (ids, keys)
    }

    fn answer_size(&self, f: u32, now: Instant) -> u64 {
        let file = self.files.get(f);
        let Some(others) = self.other_sizes.get(&f) else {
            return file.size;
        };
        let claims = self.live_holders(f, now).into_iter().map(|p| {
            others
                .iter()
                .find(|&&(q, _)| q == p)
                .map_or(file.size, |&(_, s)| s)
        });
        most_claimed(claims).unwrap_or(file.size)
    }

    /// Distinct live peers holding `f`, least-loaded first.
    fn live_holders(&self, f: u32, now: Instant) -> Vec<u32> {
        let mut ps: Vec<u32> = self
            .files
            .get(f)
            .refs
            .iter()
            .map(|&(p, _)| p)
            .filter(|&p| self.live(p, now))
            .collect();
        ps.sort_unstable();
        ps.dedup();
        ps
    }

    fn located(&self, f: u32, now: Instant, max_holders: usize) -> Option<v1::LocatedFile> {
        let file = self.files.get(f);
        let mut holders = self.live_holders(f, now);
        // An unreachable peer without a relay holds, but nobody can fetch.
        holders.retain(|&p| !self.peers.get(p).reach.unlisted);
        if holders.is_empty() {
            return None;
        }
        let size = self.answer_size(f, now);
        holders.sort_by_key(|&p| {
            let e = self.peers.get(p);
            let load = e.load();
            (load.active_uploads, Reverse(load.free_upload_slots), e.id)
        });
        holders.truncate(max_holders);
        let mut names: Vec<&str> = file
            .refs
            .iter()
            .filter(|&&(p, _)| self.live(p, now))
            .map(|&(_, n)| self.names.text(n))
            .collect();
        names.sort_unstable();
        names.dedup();
        Some(v1::LocatedFile {
            file_id: file.id.to_hex(),
            size,
            names: names.into_iter().map(str::to_owned).collect(),
            holders: holders
                .into_iter()
                .map(|p| {
                    let e = self.peers.get(p);
                    let load = e.load();
                    v1::Holder {
                        peer_id: e.id.to_string(),
                        peer_url: e.url.to_string(),
                        load: Some(v1::Load {
                            active_uploads: load.active_uploads,
                            free_upload_slots: load.free_upload_slots,
                        }),
                        replica: e.replicas.contains(&f),
                        island: String::new(),
                    }
                })
                .collect(),
            replication: None,
        })
    }
}
