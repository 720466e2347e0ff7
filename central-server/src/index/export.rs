//! Every holding of the index in flat tables ([`Holdings`]), and back: a
//! snapshot of the directory keeps them (see `crate::snapshot`), so that a
//! restart rebuilds the index with the bulk load instead of replaying one
//! publish per holding.
//!
//! The tables are a handful of large buffers (no allocation per holding),
//! so that building and dropping them leaves nothing behind in the heap.

use peerdex_proto::{FileId, PeerId};

use super::Index;

/// No entry yet in a remapping table.
const NONE: u32 = u32::MAX;

/// One holding: indexes into [`Holdings`]' tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub peer: u32,
    pub file: u32,
    pub name: u32,
    /// The size this peer claims for the file.
    pub size: u64,
    /// Held as a replica for the directory, not as an owner.
    pub replica: bool,
}

/// The holdings of an index, in tables.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    pub peers: Vec<PeerId>,
    pub files: Vec<FileId>,
    /// The names' text, one after another; name `i` ends at `name_ends[i]`.
    pub names: String,
    pub name_ends: Vec<u64>,
    pub rows: Vec<Row>,
}

impl Holdings {
    /// Name `i`'s text, if the tables are consistent.
    pub fn name(&self, i: u32) -> Option<&str> {
        let i = i as usize;
        let end = usize::try_from(*self.name_ends.get(i)?).ok()?;
        let start = match i {
            0 => 0,
            _ => usize::try_from(self.name_ends[i - 1]).ok()?,
        };
        self.names.get(start..end)
    }
}

impl Index {
    /// Every holding, with the size its holder claims and its replica flag.
    pub fn export(&self) -> Holdings {
        let mut out = Holdings {
            rows: Vec::with_capacity(self.holdings),
            ..Holdings::default()
        };
        let mut file_map: Vec<u32> = Vec::new();
        let mut name_map: Vec<u32> = Vec::new();
        for (p, peer) in self.peers.iter() {
            if peer.holdings.is_empty() {
                continue;
            }
            let at = out.peers.len() as u32;
            out.peers.push(peer.id);
            for &(f, n) in &peer.holdings {
                let file = remap(&mut file_map, f, || {
                    out.files.push(self.files.get(f).id);
                    out.files.len() as u32 - 1
                });
                let name = remap(&mut name_map, n, || {
                    out.names.push_str(self.names.text(n));
                    out.name_ends.push(out.names.len() as u64);
                    out.name_ends.len() as u32 - 1
                });
                out.rows.push(Row {
                    peer: at,
                    file,
                    name,
                    size: self.claim(p, f).unwrap_or(0),
                    replica: peer.replicas.contains(&f),
                });
            }
        }
        out
    }

    /// Add `h`'s holdings to an index being bulk loaded
    /// ([`Index::with_capacity`]) whose peers are in already; then call
    /// [`Index::finish_bulk`]. Holdings of peers it does not know, and rows
    /// that point outside the tables, are skipped: returns how many.
    pub fn import(&mut self, h: &Holdings) -> usize {
        let peers: Vec<Option<u32>> = h
            .peers
            .iter()
            .map(|id| self.peer_ix.get(id).copied())
            .collect();
        let files: Vec<u32> = h.files.iter().map(|id| self.insert_file(*id)).collect();
        self.files_loaded();
        let mut skipped = 0;
        for r in &h.rows {
            let (Some(&Some(p)), Some(&f), Some(name)) = (
                peers.get(r.peer as usize),
                files.get(r.file as usize),
                h.name(r.name),
            ) else {
                skipped += 1;
                continue;
            };
            if self.add_ref(p, f, name, r.size) {
                if r.replica {
                    self.mark_replica(p, f, true);
                }
            } else {
                skipped += 1;
            }
        }
        skipped
    }
}

/// `map[old]`, assigned by `make` the first time.
fn remap(map: &mut Vec<u32>, old: u32, make: impl FnOnce() -> u32) -> u32 {
    let i = old as usize;
    if map.len() <= i {
        map.resize(i + 1, NONE);
    }
    if map[i] == NONE {
        map[i] = make();
    }
    map[i]
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TTL, answers, fid, sf, url};
    use super::*;
    use crate::index::Load;
    use tokio::time::Instant;

    #[test]
    fn an_index_rebuilt_from_its_export_answers_alike() {
        let now = Instant::now();
        let mut ix = Index::new();
        let (a, b, idle) = (
            PeerId::new_random(),
            PeerId::new_random(),
            PeerId::new_random(),
        );
        let mut replica = sf(3, 30, "gamma/x.bin");
        replica.replica = true;
        ix.join(
            a,
            url(1),
            [1; 32],
            Load::default(),
            now + TTL,
            &[
                sf(1, 10, "Artist - Album/01 Song.flac"),
                sf(2, 20, "beta.txt"),
                replica.clone(),
            ],
        );
        // b claims another size for file 1, under two names.
        ix.join(
            b,
            url(2),
            [2; 32],
            Load::default(),
            now + TTL,
            &[
                sf(1, 11, "song.flac"),
                sf(1, 11, "Artist - Album/01 Song.flac"),
                sf(4, 40, "beta.txt"),
            ],
        );
        ix.join(idle, url(3), [3; 32], Load::default(), now + TTL, &[]);
        let h = ix.export();
        assert_eq!(h.rows.len(), 6);
        assert_eq!(h.peers.len(), 2, "a peer without holdings has no row");

        let mut back = Index::with_capacity(3, h.files.len());
        for (id, port, hash) in [(a, 1, [1; 32]), (b, 2, [2; 32]), (idle, 3, [3; 32])] {
            back.begin_join(id, url(port), hash, Load::default(), now + TTL, None);
        }
        assert_eq!(back.import(&h), 0);
        back.finish_bulk();
        let peers = [
            (a, url(1), [1; 32]),
            (b, url(2), [2; 32]),
            (idle, url(3), [3; 32]),
        ];
        let files = [1, 2, 3, 4, 5];
        let names = [
            "Artist - Album/01 Song.flac",
            "beta.txt",
            "song.flac",
            "gamma/x.bin",
        ];
        let queries = ["song", "beta", "album", "x"];
        assert_eq!(
            answers(&back, &peers, &files, &names, &queries, now),
            answers(&ix, &peers, &files, &names, &queries, now)
        );
        assert_eq!(
            flat(&back.export()),
            flat(&h),
            "the rebuilt index exports the same holdings"
        );
        assert_eq!(back.live_copies(&fid(3), now), ix.live_copies(&fid(3), now));
    }

    /// The holdings as a sorted list of what they say (row order and table
    /// positions follow hash sets).
    fn flat(h: &Holdings) -> Vec<(PeerId, FileId, String, u64, bool)> {
        let mut v: Vec<_> = h
            .rows
            .iter()
            .map(|r| {
                let name = h.name(r.name).unwrap().to_owned();
                (
                    h.peers[r.peer as usize],
                    h.files[r.file as usize],
                    name,
                    r.size,
                    r.replica,
                )
            })
            .collect();
        v.sort_by(|x, y| {
            (x.0.to_string(), x.1.to_hex(), &x.2).cmp(&(y.0.to_string(), y.1.to_hex(), &y.2))
        });
        v
    }

    #[test]
    fn rows_of_unknown_peers_or_outside_the_tables_are_skipped() {
        let now = Instant::now();
        let mut ix = Index::new();
        let a = PeerId::new_random();
        ix.join(
            a,
            url(1),
            [1; 32],
            Load::default(),
            now + TTL,
            &[sf(1, 10, "one"), sf(2, 20, "two")],
        );
        let mut h = ix.export();
        h.rows.push(Row {
            peer: 0,
            file: 99,
            name: 0,
            size: 1,
            replica: false,
        });
        h.rows.push(Row {
            peer: 0,
            file: 0,
            name: 99,
            size: 1,
            replica: false,
        });
        let mut back = Index::with_capacity(1, 2);
        // `a` is not in `back`: all its rows are skipped.
        assert_eq!(back.import(&h), 4);
        back.finish_bulk();
        assert_eq!(back.holdings(), 0);
        assert_eq!(back.stats().files, 0, "files nobody holds are dropped");
    }
}
