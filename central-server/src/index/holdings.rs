//! Holdings and size claims: what each peer serves under which name,
//! and the size it claims for each content. A file keeps one `size` and
//! lists in `other_sizes` only the holders that claim another, so a
//! disagreement costs nothing until it happens (see the module docs of
//! [`super`]).

use std::cmp::Reverse;
use std::collections::HashMap;

use peerdex_proto::convert::SharedFile;
use peerdex_proto::{FileId, PeerId};

use super::compact::Small;
use super::{File, Index, SizeConflict};

/// The most claimed of `sizes` (ties: the smaller); `None` if there are none.
pub(super) fn most_claimed(sizes: impl Iterator<Item = u64>) -> Option<u64> {
    let mut counts: Vec<(u64, u32)> = Vec::new();
    for s in sizes {
        match counts.iter_mut().find(|(c, _)| *c == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(s, n)| (n, Reverse(s)))
        .map(|(s, _)| s)
}

impl Index {
    /// Add files to a known peer's inventory. Returns false if the peer is
    /// unknown. `files` must be free of [`Index::size_conflicts`] (without
    /// `replace`); a conflicting entry would be skipped.
    pub fn publish(&mut self, peer: &PeerId, files: &[SharedFile]) -> bool {
        let Some(&p) = self.peer_ix.get(peer) else {
            return false;
        };
        self.add_files(p, files);
        self.flush_unless_deferred();
        true
    }

    /// Withdraw `(file, name)` pairs; `None` withdraws every name of the file.
    pub fn unpublish(&mut self, peer: &PeerId, refs: &[(FileId, Option<String>)]) -> bool {
        let Some(&p) = self.peer_ix.get(peer) else {
            return false;
        };
        for (id, name) in refs {
            let Some(f) = self.file(id) else {
                continue;
            };
            let victims: Vec<(u32, u32)> = self
                .files
                .get(f)
                .refs
                .iter()
                .filter(|&&(rp, rn)| {
                    rp == p && name.as_deref().is_none_or(|n| self.names.text(rn) == n)
                })
                .map(|&(_, rn)| (f, rn))
                .collect();
            for (f, n) in victims {
                self.remove_ref(p, f, n);
            }
        }
        self.flush_unless_deferred();
        true
    }

    /// The entries of `files` that contradict the peer's own claims: an id
    /// listed earlier in `files` with another size, or (unless `replace`,
    /// as a Join replaces the whole inventory) already held by this peer
    /// with another size. Other peers' claims never conflict: each holder
    /// answers for its own.
    pub fn size_conflicts(
        &self,
        peer: &PeerId,
        files: &[SharedFile],
        replace: bool,
    ) -> Vec<SizeConflict> {
        let me = if replace {
            None
        } else {
            self.peer_ix.get(peer).copied()
        };
        let mut first: HashMap<FileId, u64> = HashMap::new();
        let mut out = Vec::new();
        for (index, f) in files.iter().enumerate() {
            let claimed = match first.get(&f.id) {
                Some(&s) => s,
                None => {
                    let held = me.and_then(|p| {
                        let fx = self.file(&f.id)?;
                        self.claim(p, fx)
                    });
                    let s = held.unwrap_or(f.size);
                    first.insert(f.id, s);
                    s
                }
            };
            if claimed != f.size {
                out.push(SizeConflict {
                    index,
                    claimed,
                    size: f.size,
                });
            }
        }
        out
    }

    /// Insert a content with no holders yet; returns its handle.
    pub fn insert_file(&mut self, id: FileId) -> u32 {
        let f = self.new_file(id);
        match &mut self.bulk {
            Some(bulk) => bulk.file(f, id),
            None => {
                let files = &self.files;
                self.file_ix.insert(f, &id, |g| &files.get(g).id);
            }
        }
        f
    }

    /// A content with no holders yet in the slab, not yet findable by id.
    pub(super) fn new_file(&mut self, id: FileId) -> u32 {
        self.files.insert(File {
            id,
            size: 0,
            refs: Small::default(),
        })
    }

    /// Record that peer handle `p` holds file handle `f` under `name` and
    /// claims `size` for it. Returns false, and changes nothing, when `p`
    /// already claims another size for `f` (see [`Index::size_conflicts`]).
    pub fn add_ref(&mut self, p: u32, f: u32, name: &str, size: u64) -> bool {
        let claimed = self.claim(p, f);
        if claimed.is_some_and(|c| c != size) {
            return false;
        }
        let n = self.intern_name(name);
        if !self.peers.get_mut(p).holdings.insert((f, n)) {
            return true;
        }
        self.holdings += 1;
        let file = self.files.get_mut(f);
        if claimed.is_none() {
            if file.refs.is_empty() {
                file.size = size;
            } else if file.size != size {
                self.other_sizes.entry(f).or_default().push((p, size));
            }
        }
        let file = self.files.get_mut(f);
        let name_is_new_for_file = !file.refs.iter().any(|&(_, rn)| rn == n);
        file.refs.push((p, n));
        if name_is_new_for_file {
            self.names.get_mut(n).files.push(f);
        }
        true
    }

    fn add_files(&mut self, p: u32, files: &[SharedFile]) {
        for sf in files {
            let f = match self.file(&sf.id) {
                Some(f) => f,
                None => self.insert_file(sf.id),
            };
            let added = self.add_ref(p, f, sf.name.as_str(), sf.size);
            debug_assert!(added, "size conflicts are screened before");
            self.mark_replica(p, f, sf.replica);
        }
    }

    /// Peer `p` holds file `f` as a replica (`true`) or as an owner: the
    /// last announcement of the file decides.
    pub fn mark_replica(&mut self, p: u32, f: u32, replica: bool) {
        let replicas = &mut self.peers.get_mut(p).replicas;
        if replica {
            replicas.insert(f);
        } else {
            replicas.remove(&f);
        }
    }

    /// The size peer `p` claims for file `f`, if it holds it.
    pub(super) fn claim(&self, p: u32, f: u32) -> Option<u64> {
        let file = self.files.get(f);
        if !file.refs.iter().any(|&(rp, _)| rp == p) {
            return None;
        }
        let other = self
            .other_sizes
            .get(&f)
            .and_then(|l| l.iter().find(|&&(q, _)| q == p));
        Some(other.map_or(file.size, |&(_, s)| s))
    }

    fn remove_ref(&mut self, p: u32, f: u32, n: u32) {
        if self.peers.get_mut(p).holdings.remove(&(f, n)) {
            self.holdings -= 1;
            self.unlink(p, f, n);
        }
    }

    /// Remove the `(p, n)` ref from file `f`; forget `p`'s size claim when
    /// it no longer holds `f`, and garbage-collect the name and the file
    /// when nothing refers to them any more.
    pub(super) fn unlink(&mut self, p: u32, f: u32, n: u32) {
        let file = self.files.get_mut(f);
        if let Some(pos) = file.refs.iter().position(|&r| r == (p, n)) {
            file.refs.swap_remove(pos);
        }
        let name_still_used = file.refs.iter().any(|&(_, rn)| rn == n);
        let still_holds = file.refs.iter().any(|&(rp, _)| rp == p);
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
        if !still_holds {
            self.peers.get_mut(p).replicas.remove(&f);
        }
        if file_empty {
            self.remove_file(f);
        } else if !still_holds {
            self.forget_claim(p, f);
        }
    }

    /// `p` no longer holds `f`: drop its claim, and when no remaining holder
    /// claims the file's `size`, make the most claimed size the new one, so
    /// `other_sizes` stays as short as the disagreement.
    fn forget_claim(&mut self, p: u32, f: u32) {
        let Some(others) = self.other_sizes.get_mut(&f) else {
            return;
        };
        others.retain(|&(q, _)| q != p);
        let file = self.files.get_mut(f);
        let size_still_claimed = file
            .refs
            .iter()
            .any(|&(rp, _)| !others.iter().any(|&(q, _)| q == rp));
        if !size_still_claimed && let Some(size) = most_claimed(others.iter().map(|&(_, s)| s)) {
            file.size = size;
            others.retain(|&(_, s)| s != size);
        }
        if others.is_empty() {
            self.other_sizes.remove(&f);
        }
    }

    pub(super) fn file(&self, id: &FileId) -> Option<u32> {
        self.file_ix.get(id, |f| &self.files.get(f).id)
    }

    /// Drop a file (its refs are gone already).
    pub(super) fn remove_file(&mut self, f: u32) {
        let id = self.files.get(f).id;
        let files = &self.files;
        self.file_ix.remove(&id, |g| &files.get(g).id);
        self.files.remove(f);
        self.other_sizes.remove(&f);
    }
}
