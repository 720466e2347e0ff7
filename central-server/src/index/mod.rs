//! The live index, in memory.
//!
//! Compact on purpose (a million files in about 250 MiB): peers, file
//! contents and names are interned into slabs and referred to by `u32`
//! indices, found by key through tables of handles that keep no second copy
//! of the key (`slab`), and the lists that nearly always hold one element
//! keep it inline (`compact`). A *holding* is one `(peer, file, name)` triple: the peer
//! serves that content under that name. Each file keeps its holdings as
//! `(peer, name)` pairs, each name the files that carry it, each peer its
//! `(file, name)` set. Search goes through a sorted token map (lowercased
//! words of names → name indices), so a word prefix is one range scan.
//!
//! **Sizes are claims.** Each holder claims a size for the content it holds
//! (one per peer and file; the directory cannot check it, downloaders do,
//! through the holders' manifests). A file keeps one `size`, the claim of
//! every holder except those listed in `other_sizes`, which stays empty
//! unless holders disagree. Answers carry the size claimed by the most live
//! holders (ties: the smaller), so a liar mislabels a file at most until
//! honest holders outnumber it, and never keeps anyone out.
//!
//! The index knows nothing about storage or auth; the service decides and
//! keeps it in step with SQLite. Time is passed in (`now`), so leases are
//! testable with paused tokio time.
//!
//! Layout:
//! * `mod.rs` — [`Index`] and the records it keeps (peer, file, name).
//! * `peers` — peers and leases: join in steps, renew, expire, remove.
//! * `holdings` — holdings and size claims: publish, unpublish, conflicts.
//! * `names` — interned names and the token map's postings.
//! * `query` — the read side: Locate by id or name, ranked Search.
//! * [`words`](mod@words) — the tokenizer shared by names and queries.
//! * `slab` — `u32`-handle storage for peers, files and names, and the
//!   key → handle tables.
//! * `arena` — the names, with their texts in one buffer.
//! * `compact` — inline-one lists and inline short words.
//! * [`cursor`] — the search page token.
//! * `bulk` — the restart path: load every row, build tokens on a thread.
//! * `export` — every holding in flat tables and back (the snapshot).

mod arena;
mod bulk;
mod compact;
mod cursor;
mod export;
mod holdings;
mod names;
mod peers;
mod query;
mod relays;
mod slab;
mod words;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use peerdex_proto::{FileId, PeerId, PeerUrl, v1};
use tokio::time::Instant;

use bulk::Bulk;
use compact::{Small, Word};
pub use cursor::Cursor;
pub use export::{Holdings, Row};
pub use query::name_matches;
pub use relays::{Reach, RelayCandidate};
use slab::{Handles, Slab};
pub use words::words;

/// BLAKE3 hash of a session token; the token itself is never kept.
pub type TokenHash = [u8; 32];

/// Load figures a peer reports, used to order holders least-loaded first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub active_uploads: u32,
    pub free_upload_slots: u32,
}

impl Load {
    fn pack(self) -> u64 {
        (u64::from(self.active_uploads) << 32) | u64::from(self.free_upload_slots)
    }
    fn unpack(x: u64) -> Self {
        Self {
            active_uploads: (x >> 32) as u32,
            free_upload_slots: x as u32,
        }
    }
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
    /// End of the lease, in [`Index::tick`]s. Atomic, with the load, so
    /// that a heartbeat needs only the read side of the index lock.
    expires: AtomicU64,
    /// [`Load::pack`]ed.
    load: AtomicU64,
    /// The source address of its Join (`None` after a restart until it
    /// joins again), for `CENTRAL_MAX_PEERS_PER_ADDR`.
    addr: Option<IpAddr>,
    /// `(file, name)` pairs this peer holds.
    holdings: HashSet<(u32, u32)>,
    /// Files it holds as a replica for the directory (announced with
    /// `replica = true`), not as an owner. Empty for most peers.
    replicas: HashSet<u32>,
    /// Space it offers for replicas (`replica_quota_bytes` of its Join).
    replica_quota: u64,
    /// Whether it relays, and whether its holdings are listed (issue 25).
    reach: Reach,
}

impl Peer {
    fn expires(&self) -> u64 {
        self.expires.load(Relaxed)
    }
    fn load(&self) -> Load {
        Load::unpack(self.load.load(Relaxed))
    }
}

struct File {
    id: FileId,
    /// The size claimed by every holder not listed in [`Index::other_sizes`].
    size: u64,
    /// `(peer, name)` pairs holding this content.
    refs: Small<(u32, u32)>,
}

struct Name {
    /// Where its text is in [`arena::Names`]' buffer.
    span: arena::Span,
    /// Files carrying this name (each at most once).
    files: Small<u32>,
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
    /// The work budget or the match limit cut the search short: the hits
    /// are some of the matches, not all.
    pub truncated: bool,
}

/// Sizes of the index, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub peers: usize,
    pub files: usize,
    pub names: usize,
}

/// An inventory entry that contradicts the peer's own claim for the same
/// id: `files[index]` says `size`, the peer already said `claimed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeConflict {
    pub index: usize,
    pub claimed: u64,
    pub size: u64,
}

pub struct Index {
    peers: Slab<Peer>,
    peer_ix: HashMap<PeerId, u32>,
    files: Slab<File>,
    /// File id → file handle.
    file_ix: Handles,
    /// Holders whose claimed size differs from their file's `size`:
    /// file → `(peer, size)`, one entry per such holder. Empty unless
    /// holders disagree, so it costs nothing in the usual case.
    other_sizes: HashMap<u32, Vec<(u32, u64)>>,
    names: arena::Names,
    /// Name text → name handle.
    name_ix: Handles,
    /// Lowercased word → names containing it (sorted, unique).
    tokens: BTreeMap<Word, Small<u32>>,
    /// While bulk loading: the work deferred to other threads.
    bulk: Option<Bulk>,
    /// Lease ends are kept as nanoseconds since this instant.
    epoch: Instant,
    /// Holdings in the whole index (`CENTRAL_MAX_FILES`).
    holdings: usize,
    /// Peers per source address of their Join (`CENTRAL_MAX_PEERS_PER_ADDR`).
    per_addr: HashMap<IpAddr, u32>,
    /// Names dropped whose words are still in the token map: removed from
    /// the postings in one pass per word at the end of each change
    /// ([`Index::flush_postings`]), instead of one shift of a long
    /// posting list per name.
    unposted: Vec<(u32, Box<str>)>,
    /// See [`Index::defer_postings`].
    defer_flush: bool,
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
            file_ix: Handles::new(),
            other_sizes: HashMap::new(),
            names: arena::Names::new(),
            name_ix: Handles::new(),
            tokens: BTreeMap::new(),
            bulk: None,
            // An hour back, so that a lease end is never before the epoch.
            epoch: Instant::now()
                .checked_sub(Duration::from_secs(3600))
                .unwrap_or_else(Instant::now),
            holdings: 0,
            per_addr: HashMap::new(),
            unposted: Vec::new(),
            defer_flush: false,
        }
    }

    /// Holdings in the whole index.
    pub fn holdings(&self) -> usize {
        self.holdings
    }

    /// Peers in the index that joined from `addr`.
    pub fn peers_from(&self, addr: IpAddr) -> usize {
        self.per_addr.get(&addr).map_or(0, |&n| n as usize)
    }

    /// The source address `peer` joined from, if known.
    pub fn addr_of(&self, peer: &PeerId) -> Option<IpAddr> {
        self.peer_ix.get(peer).and_then(|&p| self.peers.get(p).addr)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            peers: self.peers.len(),
            files: self.files.len(),
            names: self.names.len(),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! Helpers shared by the index tests (`bulk.rs` uses them too), the
    //! index's own tests, and the model test.

    use super::*;
    use peerdex_proto::convert::SharedFile;
    use std::cmp::Reverse;
    use std::collections::BTreeSet;

    pub(in crate::index) fn fid(i: u32) -> FileId {
        FileId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }
    pub(in crate::index) fn sf(i: u32, size: u64, name: &str) -> SharedFile {
        SharedFile {
            replica: false,
            id: fid(i),
            size,
            name: name.parse().unwrap(),
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
    /// then contents (ones nobody holds are dropped), then holdings
    /// `(peer position, file, name, claimed size)`, then `finish_bulk`.
    pub(in crate::index) fn bulk_from(
        peers: &[StoredPeer],
        files: &[u32],
        holdings: &[(usize, u32, &str, u64)],
        expires: Instant,
    ) -> Index {
        let mut ix = Index::with_capacity(peers.len(), files.len());
        let ps: Vec<u32> = peers
            .iter()
            .map(|(id, url, hash)| ix.insert_peer(*id, url.clone(), *hash, expires))
            .collect();
        let fs: HashMap<u32, u32> = files.iter().map(|&i| (i, ix.insert_file(fid(i)))).collect();
        ix.files_loaded();
        for &(p, f, name, size) in holdings {
            assert!(ix.add_ref(ps[p], fs[&f], name, size));
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
                    let texts = ns.iter().map(|&n| ix.names.text(n).to_string());
                    (w.as_str().to_owned(), texts.collect())
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

    /// `other_sizes` lists exactly the holders that claim another size than
    /// their file's `size`, and some holder always claims that `size`.
    pub(in crate::index) fn assert_claims_normalized(ix: &Index) {
        for (&f, others) in &ix.other_sizes {
            let file = ix.files.get(f);
            assert!(!others.is_empty(), "empty list kept for file {f}");
            let holders: BTreeSet<u32> = file.refs.iter().map(|&(p, _)| p).collect();
            let listed: BTreeSet<u32> = others.iter().map(|&(p, _)| p).collect();
            assert_eq!(listed.len(), others.len(), "one claim per holder");
            assert!(listed.is_subset(&holders), "only holders claim");
            assert!(others.iter().all(|&(_, s)| s != file.size));
            assert!(holders.len() > listed.len(), "someone claims `size`");
        }
    }

    #[test]
    fn size_conflicts_are_the_peers_own_only() {
        let now = Instant::now();
        let mut ix = Index::new();
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        let join = |ix: &mut Index, p: PeerId, files: &[SharedFile]| {
            ix.join(p, url(1), [1; 32], Load::default(), now + TTL, files)
        };
        join(&mut ix, a, &[sf(1, 10, "x")]);
        // Another peer's claim never conflicts, whether it joins or publishes.
        assert_eq!(ix.size_conflicts(&b, &[sf(1, 11, "x")], true), []);
        join(&mut ix, b, &[]);
        assert_eq!(ix.size_conflicts(&b, &[sf(1, 11, "x")], false), []);
        // The peer's own holding conflicts on Publish, not on a re-Join
        // (which replaces the inventory).
        assert_eq!(
            ix.size_conflicts(&a, &[sf(2, 5, "y"), sf(1, 11, "x2")], false),
            [SizeConflict {
                index: 1,
                claimed: 10,
                size: 11
            }]
        );
        assert_eq!(ix.size_conflicts(&a, &[sf(1, 11, "x2")], true), []);
        // Within one request, the first entry of an id fixes its size.
        assert_eq!(
            ix.size_conflicts(
                &b,
                &[sf(2, 1, "y"), sf(2, 2, "z"), sf(2, 1, "w"), sf(2, 3, "v")],
                true
            ),
            [
                SizeConflict {
                    index: 1,
                    claimed: 1,
                    size: 2
                },
                SizeConflict {
                    index: 3,
                    claimed: 1,
                    size: 3
                }
            ]
        );
        // The index itself refuses a contradicting claim and changes nothing.
        let (pa, f1) = (ix.peer_ix[&a], ix.file(&fid(1)).unwrap());
        let before = answers(
            &ix,
            &[(a, url(1), [1; 32])],
            &[1],
            &["x", "x3"],
            &["x"],
            now,
        );
        assert!(!ix.add_ref(pa, f1, "x3", 11));
        assert!(ix.add_ref(pa, f1, "x", 10), "the same claim again is fine");
        assert_eq!(
            answers(
                &ix,
                &[(a, url(1), [1; 32])],
                &[1],
                &["x", "x3"],
                &["x"],
                now
            ),
            before
        );
    }

    #[test]
    fn answers_carry_the_size_most_live_holders_claim() {
        let now = Instant::now();
        let mut ix = Index::new();
        let [liar, h1, h2, h3] = [(); 4].map(|_| PeerId::new_random());
        let join = |ix: &mut Index, p: PeerId, ttl: Duration, files: &[SharedFile]| {
            ix.join(p, url(1), [1; 32], Load::default(), now + ttl, files)
        };
        let size = |ix: &Index, at: Instant| {
            let located = ix.locate_id(&fid(1), at, 64).map(|l| l.size);
            let hits = ix.search(&q("report"), None, 9, at, 99).hits;
            assert!(hits.iter().all(|h| Some(h.size) == located), "{hits:?}");
            located
        };
        // The liar comes first; one honest holder ties with it (the smaller
        // size wins a tie), a second one outvotes it.
        join(
            &mut ix,
            liar,
            Duration::from_secs(5),
            &[sf(1, 999, "fake report")],
        );
        join(
            &mut ix,
            h1,
            TTL,
            &[sf(1, 1000, "report.pdf"), sf(2, 7, "other")],
        );
        assert_eq!(size(&ix, now), Some(999));
        assert_eq!(ix.locate_id(&fid(1), now, 64).unwrap().holders.len(), 2);
        join(&mut ix, h2, TTL, &[sf(1, 1000, "report.pdf")]);
        assert_eq!(size(&ix, now), Some(1000));
        assert_claims_normalized(&ix);

        // Expired (not yet swept) holders do not vote.
        let later = now + Duration::from_secs(6);
        ix.remove_peer(&h2);
        assert_eq!(size(&ix, now), Some(999), "tie again");
        assert_eq!(size(&ix, later), Some(1000), "the liar's lease ended");
        assert_eq!(ix.locate_id(&fid(1), later, 64).unwrap().holders.len(), 1);

        // Once the liar is gone the disagreement is forgotten: nothing is
        // kept beyond the file's one size.
        ix.remove_peer(&liar);
        assert_eq!(size(&ix, now), Some(1000));
        assert!(ix.other_sizes.is_empty());
        assert_eq!(ix.files.get(ix.file(&fid(1)).unwrap()).size, 1000);

        // A late liar, and honest holders leaving one by one: the answer
        // follows whoever remains, and the list shrinks with them.
        join(&mut ix, h2, TTL, &[sf(1, 1000, "report.pdf")]);
        join(&mut ix, liar, TTL, &[sf(1, 3, "report.pdf")]);
        join(&mut ix, h3, TTL, &[sf(1, 7, "report copy.pdf")]);
        assert_eq!(size(&ix, now), Some(1000));
        assert_claims_normalized(&ix);
        ix.unpublish(&h1, &[(fid(1), None)]);
        assert_eq!(
            size(&ix, now),
            Some(3),
            "1000, 3 and 7 once each: the smallest"
        );
        ix.remove_peer(&h2);
        assert_eq!(size(&ix, now), Some(3));
        assert_claims_normalized(&ix);
        ix.remove_peer(&liar);
        assert_eq!(size(&ix, now), Some(7));
        assert!(ix.other_sizes.is_empty());
        ix.remove_peer(&h3);
        assert_eq!(size(&ix, now), None);
        assert_eq!(ix.stats().files, 1, "file 2 is left");
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
    fn search_drives_from_the_rarest_word_and_stops_at_its_budget() {
        let now = Instant::now();
        let mut ix = Index::new();
        // 300 names with `report`, 90 of them `alpha`, 9 `alpha beta`.
        let files: Vec<SharedFile> = (0..300u32)
            .map(|i| {
                let tag = match i % 100 {
                    0..=2 => "alpha beta alphabet",
                    3..=29 => "alpha",
                    _ => "gamma",
                };
                sf(i, 1, &format!("Report {tag} {i}.pdf"))
            })
            .collect();
        ix.join(
            PeerId::new_random(),
            url(1),
            [1; 32],
            Load::default(),
            now + TTL,
            &files,
        );
        let run = |query: &str, budget: usize| {
            ix.search_within(&q(query), None, 1000, now, 10_000, budget)
        };
        // Exact words, prefixes, any order: the same complete answers.
        for (query, want) in [
            ("report alpha", 90),
            ("alpha REP", 90),
            ("beta report alpha", 9),
            ("be al", 9),
            // `alp` is two words of the map (alpha, alphabet).
            ("beta alp", 9),
            ("report alp", 90),
            ("alpha gamma", 0),
            ("report zzz", 0),
        ] {
            let page = run(query, usize::MAX);
            assert_eq!((page.hits.len(), page.truncated), (want, false), "{query}");
        }
        // The rarest word drives: 9 names of `beta` are all that is visited
        // (plus a few words of the map), so a small budget is enough.
        let page = run("report beta", 20);
        assert_eq!((page.hits.len(), page.truncated), (9, false));
        // A broad query past its budget answers part, and says so.
        let page = run("report", 50);
        assert!(page.truncated);
        assert!(
            !page.hits.is_empty() && page.hits.len() < 50,
            "{}",
            page.hits.len()
        );
        // The match limit cuts too.
        let page = ix.search_within(&q("report"), None, 1000, now, 10, usize::MAX);
        assert_eq!((page.hits.len(), page.truncated), (10, true));
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
        assert_eq!(ix.expired(later), vec![(a, 2)]);
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

        /// A holding `(file, name, size)`; sizes come from a set of three
        /// per file, so that peers disagree (and contradict themselves) often.
        type Holding = (u32, usize, u64);

        #[derive(Debug, Clone)]
        enum Op {
            Join(usize, Vec<Holding>),
            Publish(usize, Holding),
            Unpublish(usize, u32, Option<usize>),
            Leave(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            let holding = || {
                (0..FILES, 0usize..NAMES.len(), 0u64..3)
                    .prop_map(|(f, n, s)| (f, n, u64::from(f) * 10 + s))
            };
            prop_oneof![
                (0..PEERS, prop::collection::vec(holding(), 0..6))
                    .prop_map(|(p, f)| Op::Join(p, f)),
                (0..PEERS, holding()).prop_map(|(p, h)| Op::Publish(p, h)),
                (0..PEERS, 0..FILES, prop::option::of(0usize..NAMES.len()))
                    .prop_map(|(p, f, n)| Op::Unpublish(p, f, n)),
                (0..PEERS).prop_map(Op::Leave),
            ]
        }

        /// peer → `(file, name)` → the size the peer claims for the file.
        type Model = BTreeMap<usize, BTreeMap<(u32, usize), u64>>;

        /// The size the peer already claims for `f` in `held`, if any.
        fn claim(held: &BTreeMap<(u32, usize), u64>, f: u32) -> Option<u64> {
            held.iter().find(|((hf, _), _)| *hf == f).map(|(_, &s)| s)
        }

        /// The oracle's answer: the size most holders claim, the smaller on
        /// a tie, counted naively.
        fn majority(model: &Model, f: u32) -> Option<u64> {
            let claims: Vec<u64> = model.values().filter_map(|held| claim(held, f)).collect();
            let mut best: Option<(usize, u64)> = None;
            for &s in &claims {
                let n = claims.iter().filter(|&&c| c == s).count();
                best = match best {
                    Some((bn, bs)) if bn > n || (bn == n && bs <= s) => Some((bn, bs)),
                    _ => Some((n, s)),
                };
            }
            best.map(|(_, s)| s)
        }

        /// `ix` answers exactly what the model says, sizes included, with no
        /// leftover files, names, tokens or size claims.
        fn check(
            ix: &Index,
            model: &Model,
            peers: &[PeerId],
            now: Instant,
        ) -> Result<(), TestCaseError> {
            let all: BTreeSet<(u32, usize, usize)> = model
                .iter()
                .flat_map(|(&p, held)| held.keys().map(move |&(f, n)| (f, n, p)))
                .collect();
            assert_claims_normalized(ix);
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
                        prop_assert_eq!(Some(l.size), majority(model, f));
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
                let want: BTreeSet<(String, String, u64)> = all
                    .iter()
                    .filter(|h| oracle_words(NAMES[h.1]).iter().any(|w| w.starts_with(word)))
                    .map(|h| {
                        (
                            NAMES[h.1].to_owned(),
                            fid(h.0).to_hex(),
                            majority(model, h.0).unwrap(),
                        )
                    })
                    .collect();
                let got: BTreeSet<(String, String, u64)> = ix
                    .search(&[word.to_owned()], None, 1000, now, 1000)
                    .hits
                    .into_iter()
                    .map(|h| (h.name, h.file_id, h.size))
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
            let token_count: usize = ix.tokens.values().map(|v| v.len()).sum();
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
                let shared = |&(f, n, s): &Holding| sf(f, s, NAMES[n]);
                for op in ops {
                    match op {
                        Op::Join(p, files) => {
                            // The model screens on its own: the first entry
                            // of a file fixes the peer's claim.
                            let mut held = BTreeMap::new();
                            let mut refused = Vec::new();
                            for (i, &(f, n, s)) in files.iter().enumerate() {
                                match claim(&held, f) {
                                    Some(c) if c != s => refused.push(i),
                                    _ => { held.insert((f, n), s); }
                                }
                            }
                            let list: Vec<_> = files.iter().map(shared).collect();
                            let conflicts = ix.size_conflicts(&peers[p], &list, true);
                            prop_assert_eq!(conflicts.iter().map(|c| c.index).collect::<Vec<_>>(), refused.clone());
                            let accepted: Vec<_> = list
                                .into_iter()
                                .enumerate()
                                .filter(|(i, _)| !refused.contains(i))
                                .map(|(_, f)| f)
                                .collect();
                            ix.join(peers[p], url(1), [0; 32], Load::default(), now + TTL, &accepted);
                            model.insert(p, held);
                        }
                        Op::Publish(p, (f, n, s)) => {
                            let entry = [shared(&(f, n, s))];
                            let conflict = model
                                .get(&p)
                                .and_then(|held| claim(held, f))
                                .is_some_and(|c| c != s);
                            let found = ix.size_conflicts(&peers[p], &entry, false);
                            prop_assert_eq!(found.len(), usize::from(conflict));
                            if !conflict {
                                let known = ix.publish(&peers[p], &entry);
                                prop_assert_eq!(known, model.contains_key(&p));
                                if let Some(held) = model.get_mut(&p) {
                                    held.insert((f, n), s);
                                }
                            }
                        }
                        Op::Unpublish(p, f, n) => {
                            ix.unpublish(&peers[p], &[(fid(f), n.map(|n| NAMES[n].to_owned()))]);
                            if let Some(held) = model.get_mut(&p) {
                                held.retain(|&(mf, mn), _| !(mf == f && n.is_none_or(|n| n == mn)));
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
                let holdings: Vec<(usize, u32, &str, u64)> = model
                    .values()
                    .enumerate()
                    .flat_map(|(i, held)| held.iter().map(move |(&(f, n), &s)| (i, f, NAMES[n], s)))
                    .collect();
                let files: Vec<u32> = (0..FILES).collect();
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
