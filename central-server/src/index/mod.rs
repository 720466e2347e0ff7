//! The live index, in memory.
//!
//! Compact on purpose (a million files must fit well under 1 GiB): peers, file
//! contents and names are interned into slabs and referred to by `u32`
//! indices. A *holding* is one `(peer, file, name)` triple: the peer serves
//! that content under that name. Each file keeps its holdings as
//! `(peer, name)` pairs, each name the files that carry it, each peer its
//! `(file, name)` set. Search goes through a sorted token map (lowercased
//! words of names → name indices), so a word prefix is one range scan.
//!
//! The index knows nothing about storage or auth; the service decides and
//! keeps it in step with SQLite. Time is passed in (`now`), so leases are
//! testable with paused tokio time.
//!
//! Layout:
//! * `mod.rs` — [`Index`]: peers and leases, holdings, Locate and Search.
//! * [`words`] — the tokenizer shared by names and queries.
//! * `slab` — `u32`-handle storage for peers, files and names.
//! * [`cursor`] — the search page token.
//! * `bulk` — the restart path: load every row, build tokens on a thread.

mod bulk;
mod cursor;
mod slab;
mod words;

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use peerdex_proto::convert::{Manifest, SharedFile};
use peerdex_proto::{FileId, PeerId, PeerUrl, v1};
use tokio::time::Instant;

use bulk::TokenBuilder;
pub use cursor::Cursor;
use slab::Slab;
pub use words::words;

/// BLAKE3 hash of a session token; the token itself is never kept.
pub type TokenHash = [u8; 32];

/// Load figures a peer reports, used to order holders least-loaded first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub active_uploads: u32,
    pub free_upload_slots: u32,
}

impl From<Option<v1::Load>> for Load {
    fn from(l: Option<v1::Load>) -> Self {
        let l = l.unwrap_or_default();
        Self {
            active_uploads: l.active_uploads,
            free_upload_slots: l.free_upload_slots,
        }
    }
}

struct Peer {
    id: PeerId,
    url: PeerUrl,
    token_hash: TokenHash,
    expires: Instant,
    load: Load,
    /// `(file, name)` pairs this peer holds.
    holdings: HashSet<(u32, u32)>,
}

struct File {
    id: FileId,
    size: u64,
    manifest: Option<Box<Manifest>>,
    /// `(peer, name)` pairs holding this content.
    refs: Vec<(u32, u32)>,
}

struct Name {
    text: Arc<str>,
    /// Files carrying this name (each at most once).
    files: Vec<u32>,
}

/// What a peer's lease looks like right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    Unknown,
    Expired,
    Live,
}

/// One page of search hits.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub hits: Vec<v1::SearchHit>,
    pub next: Option<Cursor>,
}

/// Sizes of the index, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub peers: usize,
    pub files: usize,
    pub names: usize,
}

pub struct Index {
    peers: Slab<Peer>,
    peer_ix: HashMap<PeerId, u32>,
    files: Slab<File>,
    file_ix: HashMap<FileId, u32>,
    names: Slab<Name>,
    name_ix: HashMap<Arc<str>, u32>,
    /// Lowercased word → names containing it (sorted, unique).
    tokens: BTreeMap<Box<str>, Vec<u32>>,
    /// While bulk loading, new names go to a thread that builds the token
    /// map in parallel with the rest of the load.
    bulk: Option<TokenBuilder>,
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl Index {
    pub fn new() -> Self {
        Self {
            peers: Slab::new(),
            peer_ix: HashMap::new(),
            files: Slab::new(),
            file_ix: HashMap::new(),
            names: Slab::new(),
            name_ix: HashMap::new(),
            tokens: BTreeMap::new(),
            bulk: None,
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            peers: self.peers.len(),
            files: self.files.len(),
            names: self.names.len(),
        }
    }

    // ---------------------------------------------------------------- peers

    pub fn lease(&self, peer: &PeerId, now: Instant) -> Lease {
        match self.peer_ix.get(peer) {
            None => Lease::Unknown,
            Some(&p) if self.peers.get(p).expires > now => Lease::Live,
            Some(_) => Lease::Expired,
        }
    }

    /// Whether `hash` is the hash of the peer's current session token.
    /// (`blake3::Hash` compares in constant time.)
    pub fn token_matches(&self, peer: &PeerId, hash: &TokenHash) -> bool {
        self.peer_ix.get(peer).is_some_and(|&p| {
            blake3::Hash::from_bytes(self.peers.get(p).token_hash)
                == blake3::Hash::from_bytes(*hash)
        })
    }

    pub fn inventory_len(&self, peer: &PeerId) -> usize {
        self.peer_ix
            .get(peer)
            .map_or(0, |&p| self.peers.get(p).holdings.len())
    }

    /// Renew a live lease. Returns false (and changes nothing) when the peer
    /// is unknown or its lease has already expired.
    pub fn renew(
        &mut self,
        peer: &PeerId,
        load: Option<Load>,
        expires: Instant,
        now: Instant,
    ) -> bool {
        let Some(&p) = self.peer_ix.get(peer) else {
            return false;
        };
        let entry = self.peers.get_mut(p);
        if entry.expires <= now {
            return false;
        }
        entry.expires = expires;
        if let Some(load) = load {
            entry.load = load;
        }
        true
    }

    /// Give every peer a lease ending at `expires` (grace after a restart).
    pub fn renew_all(&mut self, expires: Instant) {
        for p in self.peers.values_mut() {
            p.expires = expires;
        }
    }

    /// Peers whose lease ended at or before `now`.
    pub fn expired(&self, now: Instant) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(_, p)| p.id)
            .collect()
    }

    /// Create or replace a peer: new URL, token and lease, and `files` as its
    /// whole inventory.
    pub fn join(
        &mut self,
        id: PeerId,
        url: PeerUrl,
        token_hash: TokenHash,
        load: Load,
        expires: Instant,
        files: &[SharedFile],
    ) {
        let p = match self.peer_ix.get(&id) {
            Some(&p) => {
                self.drop_holdings(p);
                let e = self.peers.get_mut(p);
                e.url = url;
                e.token_hash = token_hash;
                e.expires = expires;
                p
            }
            None => self.insert_peer(id, url, token_hash, expires),
        };
        self.peers.get_mut(p).load = load;
        self.add_files(p, files);
    }

    /// Add files to a known peer's inventory. Returns false if the peer is unknown.
    pub fn publish(&mut self, peer: &PeerId, files: &[SharedFile]) -> bool {
        let Some(&p) = self.peer_ix.get(peer) else {
            return false;
        };
        self.add_files(p, files);
        true
    }

    /// Withdraw `(file, name)` pairs; `None` withdraws every name of the file.
    pub fn unpublish(&mut self, peer: &PeerId, refs: &[(FileId, Option<String>)]) -> bool {
        let Some(&p) = self.peer_ix.get(peer) else {
            return false;
        };
        for (id, name) in refs {
            let Some(&f) = self.file_ix.get(id) else {
                continue;
            };
            let victims: Vec<(u32, u32)> = self
                .files
                .get(f)
                .refs
                .iter()
                .filter(|&&(rp, rn)| {
                    rp == p
                        && name
                            .as_deref()
                            .is_none_or(|n| &*self.names.get(rn).text == n)
                })
                .map(|&(_, rn)| (f, rn))
                .collect();
            for (f, n) in victims {
                self.remove_ref(p, f, n);
            }
        }
        true
    }

    /// Drop a peer and its whole inventory.
    pub fn remove_peer(&mut self, peer: &PeerId) -> bool {
        let Some(&p) = self.peer_ix.get(peer) else {
            return false;
        };
        self.drop_holdings(p);
        self.peer_ix.remove(peer);
        self.peers.remove(p);
        true
    }

    /// Refuse files whose id is already known with another size while some
    /// *other* peer holds it (the first announcement wins; a re-joining peer
    /// may correct its own). Checks the request against itself too.
    pub fn check_sizes(&self, peer: &PeerId, files: &[SharedFile]) -> Result<(), String> {
        let me = self.peer_ix.get(peer).copied();
        let mut seen: HashMap<FileId, u64> = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            if let Some(&size) = seen.get(&f.id) {
                if size != f.size {
                    return Err(format!(
                        "files[{i}]: file id {} appears with sizes {size} and {}",
                        f.id, f.size
                    ));
                }
                continue;
            }
            seen.insert(f.id, f.size);
            if let Some(&fx) = self.file_ix.get(&f.id) {
                let known = self.files.get(fx);
                if known.size != f.size && known.refs.iter().any(|&(rp, _)| Some(rp) != me) {
                    return Err(format!(
                        "files[{i}]: file id {} is already known with size {}, not {}",
                        f.id, known.size, f.size
                    ));
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------- queries

    /// Metadata and live holders of one content; `None` when unknown or
    /// when no live peer holds it.
    pub fn locate_id(
        &self,
        id: &FileId,
        now: Instant,
        max_holders: usize,
    ) -> Option<v1::LocatedFile> {
        let &f = self.file_ix.get(id)?;
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
        let Some(&n) = self.name_ix.get(name) else {
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
            for &n in postings {
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
                for &f in &name.files {
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
                size: self.files.get(*f).size,
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

    // ------------------------------------------------------ building blocks
    // Used by Join/Publish and, row by row, by the bulk load (`bulk.rs`).

    /// Insert a peer with an empty inventory; returns its handle.
    pub fn insert_peer(
        &mut self,
        id: PeerId,
        url: PeerUrl,
        token_hash: TokenHash,
        expires: Instant,
    ) -> u32 {
        let p = self.peers.insert(Peer {
            id,
            url,
            token_hash,
            expires,
            load: Load::default(),
            holdings: HashSet::new(),
        });
        self.peer_ix.insert(id, p);
        p
    }

    /// Insert a content with no holders yet; returns its handle.
    pub fn insert_file(&mut self, id: FileId, size: u64, manifest: Option<Manifest>) -> u32 {
        let f = self.files.insert(File {
            id,
            size,
            manifest: manifest.map(Box::new),
            refs: Vec::new(),
        });
        self.file_ix.insert(id, f);
        f
    }

    /// Record that peer handle `p` holds file handle `f` under `name`.
    pub fn add_ref(&mut self, p: u32, f: u32, name: &str) {
        let n = self.intern_name(name);
        if !self.peers.get_mut(p).holdings.insert((f, n)) {
            return;
        }
        let file = self.files.get_mut(f);
        let name_is_new_for_file = !file.refs.iter().any(|&(_, rn)| rn == n);
        file.refs.push((p, n));
        if name_is_new_for_file {
            self.names.get_mut(n).files.push(f);
        }
    }

    // ------------------------------------------------------------ internals

    fn live(&self, p: u32, now: Instant) -> bool {
        self.peers.get(p).expires > now
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
            size: file.size,
            names: names.into_iter().map(str::to_owned).collect(),
            manifest: file.manifest.as_ref().map(|m| m.to_wire()),
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

    fn add_files(&mut self, p: u32, files: &[SharedFile]) {
        for sf in files {
            let f = match self.file_ix.get(&sf.id) {
                Some(&f) => {
                    let file = self.files.get_mut(f);
                    if file.manifest.is_none() && sf.manifest.is_some() {
                        file.manifest = sf.manifest.clone().map(Box::new);
                    }
                    f
                }
                None => self.insert_file(sf.id, sf.size, sf.manifest.clone()),
            };
            self.add_ref(p, f, sf.name.as_str());
        }
    }

    fn drop_holdings(&mut self, p: u32) {
        let all: Vec<(u32, u32)> = self.peers.get_mut(p).holdings.drain().collect();
        for (f, n) in all {
            self.unlink(p, f, n);
        }
    }

    fn remove_ref(&mut self, p: u32, f: u32, n: u32) {
        if self.peers.get_mut(p).holdings.remove(&(f, n)) {
            self.unlink(p, f, n);
        }
    }

    /// Remove the `(p, n)` ref from file `f` and garbage-collect the name and
    /// the file when nothing refers to them any more.
    fn unlink(&mut self, p: u32, f: u32, n: u32) {
        let file = self.files.get_mut(f);
        if let Some(pos) = file.refs.iter().position(|&r| r == (p, n)) {
            file.refs.swap_remove(pos);
        }
        let name_still_used = file.refs.iter().any(|&(_, rn)| rn == n);
        let file_empty = file.refs.is_empty();
        if !name_still_used {
            let name = self.names.get_mut(n);
            if let Some(pos) = name.files.iter().position(|&x| x == f) {
                name.files.swap_remove(pos);
            }
            if name.files.is_empty() {
                self.drop_name(n);
            }
        }
        if file_empty {
            let file = self.files.remove(f).expect("live file");
            self.file_ix.remove(&file.id);
        }
    }

    fn intern_name(&mut self, name: &str) -> u32 {
        if let Some(&n) = self.name_ix.get(name) {
            return n;
        }
        let text: Arc<str> = Arc::from(name);
        let n = self.names.insert(Name {
            text: text.clone(),
            files: Vec::new(),
        });
        if let Some(builder) = &self.bulk {
            builder.send(n, text.clone());
        }
        self.name_ix.insert(text, n);
        if self.bulk.is_none() {
            let mut ws: Vec<String> = words(name).collect();
            ws.sort_unstable();
            ws.dedup();
            for w in ws {
                let postings = self.tokens.entry(w.into_boxed_str()).or_default();
                if let Err(pos) = postings.binary_search(&n) {
                    postings.insert(pos, n);
                }
            }
        }
        n
    }

    fn drop_name(&mut self, n: u32) {
        let name = self.names.remove(n).expect("live name");
        self.name_ix.remove(&name.text);
        let mut ws: Vec<String> = words(&name.text).collect();
        ws.sort_unstable();
        ws.dedup();
        for w in ws {
            if let Some(postings) = self.tokens.get_mut(w.as_str()) {
                if let Ok(pos) = postings.binary_search(&n) {
                    postings.remove(pos);
                }
                if postings.is_empty() {
                    self.tokens.remove(w.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! Helpers shared by the index tests (`bulk.rs` uses them too), the
    //! index's own tests, and the model test.

    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;

    pub(in crate::index) fn fid(i: u32) -> FileId {
        FileId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }
    pub(in crate::index) fn sf(i: u32, size: u64, name: &str) -> SharedFile {
        SharedFile {
            id: fid(i),
            size,
            name: name.parse().unwrap(),
            manifest: None,
        }
    }
    pub(in crate::index) fn url(port: u16) -> PeerUrl {
        format!("http://127.0.0.1:{port}").parse().unwrap()
    }
    fn q(s: &str) -> Vec<String> {
        words(s).collect()
    }

    pub(in crate::index) const TTL: Duration = Duration::from_secs(30);

    /// A peer as the store keeps it: id, URL, token hash.
    pub(in crate::index) type StoredPeer = (PeerId, PeerUrl, TokenHash);

    /// An index built the way a restart builds it (`Store::load`): peers,
    /// then contents (`(file, size)`; ones nobody holds are dropped), then
    /// holdings `(peer position, file, name)`, then `finish_bulk`.
    pub(in crate::index) fn bulk_from(
        peers: &[StoredPeer],
        files: &[(u32, u64)],
        holdings: &[(usize, u32, &str)],
        expires: Instant,
    ) -> Index {
        let mut ix = Index::with_capacity(peers.len(), files.len());
        let ps: Vec<u32> = peers
            .iter()
            .map(|(id, url, hash)| ix.insert_peer(*id, url.clone(), *hash, expires))
            .collect();
        let fs: HashMap<u32, u32> = files
            .iter()
            .map(|&(i, size)| (i, ix.insert_file(fid(i), size, None)))
            .collect();
        for &(p, f, name) in holdings {
            ix.add_ref(ps[p], fs[&f], name);
        }
        ix.finish_bulk();
        ix
    }

    /// Everything an index answers about the given peers, files, names and
    /// query words, in the order it answers it. Name handles are replaced by
    /// name text, so two indexes built differently compare equal exactly
    /// when no client could tell them apart.
    #[derive(Debug, PartialEq)]
    pub(in crate::index) struct Answers {
        stats: Stats,
        /// Per peer: lease, whether its token hash matches, inventory size.
        peers: Vec<(Lease, bool, usize)>,
        located: Vec<Option<v1::LocatedFile>>,
        by_name: Vec<Vec<v1::LocatedFile>>,
        /// Every page of each query, two hits per page.
        searched: Vec<Vec<Vec<v1::SearchHit>>>,
        /// Token → names it points to.
        tokens: BTreeMap<String, BTreeSet<String>>,
    }

    pub(in crate::index) fn answers(
        ix: &Index,
        peers: &[StoredPeer],
        files: &[u32],
        names: &[&str],
        queries: &[&str],
        now: Instant,
    ) -> Answers {
        let pages = |query: &str| {
            let mut pages = Vec::new();
            let mut cursor = None;
            loop {
                let page = ix.search(&q(query), cursor.as_ref(), 2, now, 1000);
                pages.push(page.hits);
                match page.next {
                    Some(c) => cursor = Some(c),
                    None => break pages,
                }
            }
        };
        Answers {
            stats: ix.stats(),
            peers: peers
                .iter()
                .map(|(id, _, hash)| {
                    (
                        ix.lease(id, now),
                        ix.token_matches(id, hash),
                        ix.inventory_len(id),
                    )
                })
                .collect(),
            located: files
                .iter()
                .map(|&f| ix.locate_id(&fid(f), now, 64))
                .collect(),
            by_name: names
                .iter()
                .map(|n| ix.locate_name(n, now, 64, 64))
                .collect(),
            searched: queries.iter().map(|w| pages(w)).collect(),
            tokens: ix
                .tokens
                .iter()
                .map(|(w, ns)| {
                    let texts = ns.iter().map(|&n| ix.names.get(n).text.to_string());
                    (w.to_string(), texts.collect())
                })
                .collect(),
        }
    }

    #[test]
    fn join_locate_search_and_garbage_collection() {
        let now = Instant::now();
        let mut ix = Index::new();
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        ix.join(
            a,
            url(1),
            [1; 32],
            Load::default(),
            now + TTL,
            &[sf(1, 10, "alpha-report.bin"), sf(2, 20, "beta.txt")],
        );
        ix.join(
            b,
            url(2),
            [2; 32],
            Load {
                active_uploads: 0,
                free_upload_slots: 9,
            },
            now + TTL,
            &[sf(1, 10, "Alpha Report.bin")],
        );
        assert_eq!(
            ix.stats(),
            Stats {
                peers: 2,
                files: 2,
                names: 3
            }
        );

        let l = ix.locate_id(&fid(1), now, 64).unwrap();
        assert_eq!(l.names, ["Alpha Report.bin", "alpha-report.bin"]);
        // b is less loaded (same active uploads, more free slots) → first.
        assert_eq!(l.holders[0].peer_id, b.to_string());
        assert_eq!(l.holders.len(), 2);
        assert_eq!(ix.locate_id(&fid(1), now, 1).unwrap().holders.len(), 1);

        assert_eq!(ix.locate_name("beta.txt", now, 64, 10).len(), 1);
        assert!(
            ix.locate_name("BETA.txt", now, 64, 10).is_empty(),
            "exact name is case-sensitive"
        );

        let page = ix.search(&q("ALPHA rep"), None, 10, now, 1000);
        let names: Vec<_> = page
            .hits
            .iter()
            .map(|h| (h.name.as_str(), h.holders))
            .collect();
        assert_eq!(names, [("Alpha Report.bin", 2), ("alpha-report.bin", 2)]);
        assert!(
            ix.search(&q("lpha"), None, 10, now, 1000).hits.is_empty(),
            "prefixes only"
        );
        assert!(
            ix.search(&q("alpha beta"), None, 10, now, 1000)
                .hits
                .is_empty(),
            "all words"
        );

        // Unpublish one name: the other name and the content stay.
        ix.unpublish(&b, &[(fid(1), Some("Alpha Report.bin".into()))]);
        assert_eq!(
            ix.locate_id(&fid(1), now, 64).unwrap().names,
            ["alpha-report.bin"]
        );
        assert_eq!(ix.search(&q("alpha"), None, 10, now, 1000).hits.len(), 1);
        assert_eq!(ix.stats().names, 2);

        // Leaving drops everything only a leaves: tokens included.
        ix.remove_peer(&a);
        assert!(ix.locate_id(&fid(1), now, 64).is_none());
        assert!(ix.search(&q("beta"), None, 10, now, 1000).hits.is_empty());
        assert_eq!(
            ix.stats(),
            Stats {
                peers: 1,
                files: 0,
                names: 0
            }
        );
        assert!(ix.tokens.is_empty());
    }

    #[test]
    fn rejoin_replaces_inventory() {
        let now = Instant::now();
        let mut ix = Index::new();
        let a = PeerId::new_random();
        ix.join(
            a,
            url(1),
            [1; 32],
            Load::default(),
            now + TTL,
            &[sf(1, 1, "one"), sf(2, 2, "two")],
        );
        ix.join(
            a,
            url(3),
            [9; 32],
            Load::default(),
            now + TTL,
            &[sf(3, 3, "three")],
        );
        assert!(ix.locate_id(&fid(1), now, 9).is_none());
        assert_eq!(
            ix.locate_id(&fid(3), now, 9).unwrap().holders[0].peer_url,
            "http://127.0.0.1:3"
        );
        assert!(ix.token_matches(&a, &[9; 32]));
        assert!(!ix.token_matches(&a, &[1; 32]));
        assert_eq!(ix.inventory_len(&a), 1);
    }

    #[test]
    fn size_conflicts_are_refused_unless_only_the_same_peer_holds_it() {
        let now = Instant::now();
        let mut ix = Index::new();
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        ix.join(
            a,
            url(1),
            [1; 32],
            Load::default(),
            now + TTL,
            &[sf(1, 10, "x")],
        );
        assert!(
            ix.check_sizes(&b, &[sf(1, 11, "x")])
                .unwrap_err()
                .contains("size 10")
        );
        assert!(ix.check_sizes(&a, &[sf(1, 11, "x")]).is_ok());
        assert!(ix.check_sizes(&b, &[sf(2, 1, "y"), sf(2, 2, "z")]).is_err());
        assert!(ix.check_sizes(&b, &[sf(1, 10, "x2")]).is_ok());
    }

    #[test]
    fn search_ranks_and_paginates_without_gaps_or_repeats() {
        let now = Instant::now();
        let mut ix = Index::new();
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::new_random()).collect();
        for (k, p) in peers.iter().enumerate() {
            // file i is held by peers 0..=i%5 → holder counts 1..=5
            let files: Vec<SharedFile> = (0..50u32)
                .filter(|i| (*i as usize % 5) >= k)
                .map(|i| sf(i, u64::from(i), &format!("song-{i:03}.mp3")))
                .collect();
            ix.join(
                *p,
                url(k as u16 + 1),
                [k as u8; 32],
                Load::default(),
                now + TTL,
                &files,
            );
        }
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = ix.search(&q("song mp3"), cursor.as_ref(), 7, now, 10_000);
            assert!(page.hits.len() <= 7);
            all.extend(page.hits);
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let distinct: BTreeSet<(&str, &str)> = all
            .iter()
            .map(|h| (h.name.as_str(), h.file_id.as_str()))
            .collect();
        assert_eq!(distinct.len(), all.len(), "no repeats");
        assert_eq!(all.len(), 50, "no gaps");
        assert!(
            all.windows(2).all(|w| {
                (Reverse(w[0].holders), &w[0].name) < (Reverse(w[1].holders), &w[1].name)
            }),
            "ranked by holders, then name"
        );
        assert_eq!(all[0].holders, 5);
        assert_eq!(all[0].name, "song-004.mp3");
    }

    #[test]
    fn expired_peers_vanish_from_answers_before_the_sweep() {
        let now = Instant::now();
        let mut ix = Index::new();
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        ix.join(
            a,
            url(1),
            [1; 32],
            Load::default(),
            now + Duration::from_secs(5),
            &[sf(1, 1, "shared.bin")],
        );
        ix.join(
            b,
            url(2),
            [2; 32],
            Load::default(),
            now + TTL,
            &[sf(1, 1, "shared.bin"), sf(2, 1, "only-a.bin")],
        );
        ix.unpublish(&b, &[(fid(2), None)]);
        ix.publish(&a, &[sf(2, 1, "only-a.bin")]);
        let later = now + Duration::from_secs(6);
        assert_eq!(ix.lease(&a, later), Lease::Expired);
        assert_eq!(ix.lease(&b, later), Lease::Live);
        assert_eq!(ix.expired(later), vec![a]);
        assert!(
            !ix.renew(&a, None, later + TTL, later),
            "an expired lease is not renewed"
        );
        assert_eq!(ix.locate_id(&fid(1), later, 9).unwrap().holders.len(), 1);
        assert!(ix.locate_id(&fid(2), later, 9).is_none());
        assert!(ix.locate_name("only-a.bin", later, 9, 9).is_empty());
        assert_eq!(
            ix.search(&q("shared"), None, 9, later, 99).hits[0].holders,
            1
        );
        assert!(ix.search(&q("only"), None, 9, later, 99).hits.is_empty());
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::TestCaseError;
        use std::collections::{BTreeMap, BTreeSet};

        const NAMES: [&str; 6] = [
            "red fox.jpg",
            "red-panda.jpg",
            "Blue Fox.png",
            "fox",
            "a.b.c",
            "Ünï-Fox.txt",
        ];
        const QUERIES: [&str; 12] = [
            "fox", "f", "red", "pan", "blue", "jp", "a", "b", "c", "png", "ün", "ünï",
        ];
        const FILES: u32 = 6;
        const PEERS: usize = 4;

        /// The oracle's own tokenizer, written independently of
        /// [`words`]: split on anything not alphanumeric, lowercase.
        fn oracle_words(s: &str) -> BTreeSet<String> {
            s.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect()
        }

        #[derive(Debug, Clone)]
        enum Op {
            Join(usize, Vec<(u32, usize)>),
            Publish(usize, u32, usize),
            Unpublish(usize, u32, Option<usize>),
            Leave(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            let holding = (0..FILES, 0usize..NAMES.len());
            prop_oneof![
                (0..PEERS, prop::collection::vec(holding, 0..6)).prop_map(|(p, f)| Op::Join(p, f)),
                (0..PEERS, 0..FILES, 0usize..NAMES.len())
                    .prop_map(|(p, f, n)| Op::Publish(p, f, n)),
                (0..PEERS, 0..FILES, prop::option::of(0usize..NAMES.len()))
                    .prop_map(|(p, f, n)| Op::Unpublish(p, f, n)),
                (0..PEERS).prop_map(Op::Leave),
            ]
        }

        type Model = BTreeMap<usize, BTreeSet<(u32, usize)>>;

        /// `ix` answers exactly what the model `peer → {(file, name)}` says,
        /// with no leftover files, names or tokens.
        fn check(
            ix: &Index,
            model: &Model,
            peers: &[PeerId],
            now: Instant,
        ) -> Result<(), TestCaseError> {
            let all: BTreeSet<(u32, usize, usize)> = model
                .iter()
                .flat_map(|(&p, set)| set.iter().map(move |&(f, n)| (f, n, p)))
                .collect();
            for f in 0..FILES {
                let holders: BTreeSet<String> = all
                    .iter()
                    .filter(|h| h.0 == f)
                    .map(|h| peers[h.2].to_string())
                    .collect();
                let names: BTreeSet<&str> = all
                    .iter()
                    .filter(|h| h.0 == f)
                    .map(|h| NAMES[h.1])
                    .collect();
                match ix.locate_id(&fid(f), now, 64) {
                    None => prop_assert!(holders.is_empty()),
                    Some(l) => {
                        prop_assert_eq!(
                            l.holders
                                .iter()
                                .map(|h| h.peer_id.clone())
                                .collect::<BTreeSet<_>>(),
                            holders
                        );
                        prop_assert_eq!(
                            l.names.iter().map(String::as_str).collect::<BTreeSet<_>>(),
                            names
                        );
                    }
                }
            }
            for (n, name) in NAMES.iter().enumerate() {
                let files: BTreeSet<String> = all
                    .iter()
                    .filter(|h| h.1 == n)
                    .map(|h| fid(h.0).to_hex())
                    .collect();
                let got: BTreeSet<String> = ix
                    .locate_name(name, now, 64, 64)
                    .into_iter()
                    .map(|l| l.file_id)
                    .collect();
                prop_assert_eq!(got, files);
            }
            for word in QUERIES {
                let want: BTreeSet<(String, String)> = all
                    .iter()
                    .filter(|h| oracle_words(NAMES[h.1]).iter().any(|w| w.starts_with(word)))
                    .map(|h| (NAMES[h.1].to_owned(), fid(h.0).to_hex()))
                    .collect();
                let got: BTreeSet<(String, String)> = ix
                    .search(&[word.to_owned()], None, 1000, now, 1000)
                    .hits
                    .into_iter()
                    .map(|h| (h.name, h.file_id))
                    .collect();
                prop_assert_eq!(got, want, "word {}", word);
            }
            let distinct_files: BTreeSet<u32> = all.iter().map(|h| h.0).collect();
            let distinct_names: BTreeSet<usize> = all.iter().map(|h| h.1).collect();
            prop_assert_eq!(
                ix.stats(),
                Stats {
                    peers: model.len(),
                    files: distinct_files.len(),
                    names: distinct_names.len()
                }
            );
            let token_count: usize = ix.tokens.values().map(Vec::len).sum();
            let want_tokens: usize = distinct_names
                .iter()
                .map(|&n| oracle_words(NAMES[n]).len())
                .sum();
            prop_assert_eq!(token_count, want_tokens);
            Ok(())
        }

        proptest! {
            /// Any sequence of operations leaves the index answering exactly
            /// what a naive model says; an index bulk-loaded from the same
            /// holdings (as at every restart) answers the same, in the same
            /// order.
            #[test]
            fn index_matches_a_naive_model(ops in prop::collection::vec(op(), 1..40)) {
                let now = Instant::now();
                let peers: Vec<PeerId> = (0..PEERS).map(|_| PeerId::new_random()).collect();
                let mut ix = Index::new();
                let mut model = Model::new();
                let shared = |f: u32, n: usize| sf(f, u64::from(f), NAMES[n]);
                for op in ops {
                    match op {
                        Op::Join(p, files) => {
                            let list: Vec<_> = files.iter().map(|&(f, n)| shared(f, n)).collect();
                            ix.join(peers[p], url(1), [0; 32], Load::default(), now + TTL, &list);
                            model.insert(p, files.into_iter().collect());
                        }
                        Op::Publish(p, f, n) => {
                            let known = ix.publish(&peers[p], &[shared(f, n)]);
                            prop_assert_eq!(known, model.contains_key(&p));
                            if let Some(set) = model.get_mut(&p) {
                                set.insert((f, n));
                            }
                        }
                        Op::Unpublish(p, f, n) => {
                            ix.unpublish(&peers[p], &[(fid(f), n.map(|n| NAMES[n].to_owned()))]);
                            if let Some(set) = model.get_mut(&p) {
                                set.retain(|&(mf, mn)| !(mf == f && n.is_none_or(|n| n == mn)));
                            }
                        }
                        Op::Leave(p) => {
                            ix.remove_peer(&peers[p]);
                            model.remove(&p);
                        }
                    }
                }
                check(&ix, &model, &peers, now)?;

                // The restart path, from what the store would hold: the
                // joined peers, every content row (orphans included), the
                // holdings.
                let stored: Vec<StoredPeer> = model.keys().map(|&p| (peers[p], url(1), [0; 32])).collect();
                let holdings: Vec<(usize, u32, &str)> = model
                    .values()
                    .enumerate()
                    .flat_map(|(i, set)| set.iter().map(move |&(f, n)| (i, f, NAMES[n])))
                    .collect();
                let files: Vec<(u32, u64)> = (0..FILES).map(|f| (f, u64::from(f))).collect();
                let bulk = bulk_from(&stored, &files, &holdings, now + TTL);
                check(&bulk, &model, &peers, now)?;
                let all_files: Vec<u32> = (0..FILES).collect();
                let all_peers: Vec<StoredPeer> = peers.iter().map(|&p| (p, url(1), [0; 32])).collect();
                prop_assert_eq!(
                    answers(&bulk, &all_peers, &all_files, &NAMES, &QUERIES, now),
                    answers(&ix, &all_peers, &all_files, &NAMES, &QUERIES, now)
                );
            }
        }
    }
}
