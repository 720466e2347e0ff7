//! The index's answers: Locate by id or exact name, and ranked, paginated
//! word-prefix Search. Read-only: nothing here changes the index.

use std::cmp::Reverse;
use std::collections::HashSet;

use peerdex_proto::{FileId, v1};
use tokio::time::Instant;

use super::{Cursor, Index, SearchPage, most_claimed, words};

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
    /// (desc), then name, then file id. At most `max_matches` matching
    /// `(name, file)` pairs are considered, so that a one-letter query cannot
    /// hold the index lock for long; beyond that the answer is partial.
    pub fn search(
        &self,
        query_words: &[String],
        after: Option<&Cursor>,
        limit: usize,
        now: Instant,
        max_matches: usize,
    ) -> SearchPage {
        let Some(driver) = query_words.iter().max_by_key(|w| w.len()) else {
            return SearchPage::default();
        };
        let mut seen = HashSet::new();
        let mut matches: Vec<(u32, u32, u32)> = Vec::new(); // (holders, name, file)
        'scan: for (_, postings) in self
            .tokens
            .range::<str, _>((
                std::ops::Bound::Included(driver.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(t, _)| t.starts_with(driver.as_str()))
        {
            for &n in postings.iter() {
                if !seen.insert(n) {
                    continue;
                }
                let name = self.names.get(n);
                let name_words: Vec<String> = words(&name.text).collect();
                if !query_words
                    .iter()
                    .all(|q| name_words.iter().any(|w| w.starts_with(q.as_str())))
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
                        break 'scan;
                    }
                }
            }
        }
        let key = |&(h, n, f): &(u32, u32, u32)| {
            (
                Reverse(h),
                self.names.get(n).text.clone(),
                self.files.get(f).id,
            )
        };
        let mut keyed: Vec<_> = matches.iter().map(|m| (key(m), *m)).collect();
        if let Some(c) = after {
            let ck = c.key();
            keyed.retain(|((h, name, id), _)| (*h, &**name, *id) > ck);
        }
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = keyed.len() > limit;
        keyed.truncate(limit);
        let hits: Vec<v1::SearchHit> = keyed
            .iter()
            .map(|((_, name, id), (h, _, f))| v1::SearchHit {
                name: name.to_string(),
                file_id: id.to_hex(),
                size: self.answer_size(*f, now),
                holders: *h,
            })
            .collect();
        let next = more.then(|| {
            let last = hits.last().expect("limit > 0");
            Cursor {
                holders: last.holders,
                name: last.name.clone(),
                file: keyed.last().expect("nonempty").0.2,
            }
        });
        SearchPage { hits, next }
    }

    /// The size to answer for `f`: the one claimed by the most live holders
    /// (ties: the smaller).
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
        if holders.is_empty() {
            return None;
        }
        let size = self.answer_size(f, now);
        holders.sort_by_key(|&p| {
            let e = self.peers.get(p);
            (
                e.load.active_uploads,
                Reverse(e.load.free_upload_slots),
                e.id,
            )
        });
        holders.truncate(max_holders);
        let mut names: Vec<&str> = file
            .refs
            .iter()
            .filter(|&&(p, _)| self.live(p, now))
            .map(|&(_, n)| &*self.names.get(n).text)
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
                    v1::Holder {
                        peer_id: e.id.to_string(),
                        peer_url: e.url.to_string(),
                        load: Some(v1::Load {
                            active_uploads: e.load.active_uploads,
                            free_upload_slots: e.load.free_upload_slots,
                        }),
                    }
                })
                .collect(),
        })
    }
}
