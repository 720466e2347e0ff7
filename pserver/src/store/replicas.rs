//! The replica space (`data/replicas/`): copies this peer keeps for the
//! directory, never in the user's share folder, indexed in
//! `data/replicas.json` and checked again at start.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use peerdex_proto::tree::Manifest;
use peerdex_proto::{FileId, FileName};
use serde::{Deserialize, Serialize};

use super::scan::{hash_path, mtime_ns};
use super::{Entry, Store};
use crate::error::{Internal, Missing, Result};
use crate::store::space::disk_error;
use peerdex_common::fs::write_atomic;

/// One replica in `replicas/index.json`.
#[derive(Serialize, Deserialize)]
pub(super) struct ReplicaRecord {
    name: String,
    size: u64,
    mtime_ns: u128,
    /// [`Manifest::encode`], hex; checked against the id again when loaded.
    manifest: String,
}

/// The name of a replica whose index entry was lost: `<id12>.bin`.
pub(super) fn fallback_name(id: &FileId) -> FileName {
    format!("{}.bin", id.short())
        .parse()
        .expect("hex name is valid")
}

impl Store {
    /// Read the replica space (call once at start, before the first Join):
    /// a replica the index knows unchanged (size, mtime) is kept, any other
    /// is hashed again, and one whose bytes no longer match its id is
    /// deleted. Blocking. Returns how many replicas are held.
    pub fn load_replicas(&self) -> io::Result<usize> {
        let index_path = self.replica_index_path();
        let records: BTreeMap<String, ReplicaRecord> = match fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                tracing::warn!(path = %index_path.display(), "replica index unreadable; every replica is hashed again");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        let mut held = BTreeMap::new();
        for dirent in fs::read_dir(&self.replica_dir)? {
            let Ok(dirent) = dirent else { continue };
            // Only `<64 hex>` regular files (not the index, not partial/).
            let Some(id) = dirent
                .file_name()
                .to_str()
                .filter(|n| n.len() == 64)
                .and_then(|n| n.parse::<FileId>().ok())
            else {
                continue;
            };
            let path = dirent.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                tracing::warn!(path = %path.display(), "not a regular file in the replica space; ignoring it");
                continue;
            }
            let (size, mtime) = (meta.len(), mtime_ns(&meta));
            let record = records.get(&id.to_hex());
            let name = record
                .and_then(|r| r.name.parse::<FileName>().ok())
                .unwrap_or_else(|| fallback_name(&id));
            let known = record
                .filter(|r| r.size == size && r.mtime_ns == mtime)
                .and_then(|r| Manifest::decode(id, &hex::decode(&r.manifest).ok()?).ok())
                .filter(|m| m.size() == size);
            let manifest = match known {
                Some(m) => m,
                None => {
                    self.hashed.fetch_add(1, Ordering::Relaxed);
                    match hash_path(&path) {
                        Ok((got, m)) if got == id && m.size() == size => m,
                        Ok(_) => {
                            tracing::warn!(file = %id, "a replica no longer matches its id (damaged on disk); deleting it");
                            let _ = fs::remove_file(&path);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(file = %id, error = %e, "cannot read a replica; leaving it out");
                            continue;
                        }
                    }
                }
            };
            held.insert(
                id,
                Entry {
                    name,
                    on_disk: None,
                    id,
                    size,
                    mtime_ns: mtime,
                    manifest: std::sync::Arc::new(manifest),
                    replica: true,
                },
            );
        }
        let n = held.len();
        *self.replicas.lock().unwrap() = held;
        self.save_replicas();
        Ok(n)
    }

    /// The replicas held, by id.
    pub fn replicas(&self) -> Vec<Entry> {
        self.replicas.lock().unwrap().values().cloned().collect()
    }

    pub fn replica(&self, id: &FileId) -> Option<Entry> {
        self.replicas.lock().unwrap().get(id).cloned()
    }

    /// Bytes the replicas held take (what counts against the quota).
    pub fn replica_bytes(&self) -> u64 {
        self.replicas.lock().unwrap().values().map(|e| e.size).sum()
    }

    /// Move a verified temp file (in the replica space's `partial/`, so the
    /// same file system) into the replica space as `id`, announced under
    /// `name`. Returns the entry (the one held already, if any).
    pub fn add_replica(
        &self,
        temp: &Path,
        id: FileId,
        name: FileName,
        manifest: Manifest,
    ) -> Result<Entry> {
        if let Some(held) = self.replica(&id) {
            let _ = fs::remove_file(temp);
            return Ok(held);
        }
        let dest = self.replica_dir.join(id.to_hex());
        fs::File::open(temp)?
            .sync_all()
            .map_err(|e| disk_error(&self.space, e, &self.replica_dir))?;
        fs::rename(temp, &dest)?;
        if let Ok(dir) = fs::File::open(&self.replica_dir) {
            let _ = dir.sync_all();
        }
        let meta = fs::metadata(&dest)?;
        let entry = Entry {
            name,
            on_disk: None,
            id,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            manifest: std::sync::Arc::new(manifest),
            replica: true,
        };
        self.replicas.lock().unwrap().insert(id, entry.clone());
        self.save_replicas();
        Ok(entry)
    }

    /// Forget the replica of `id` and delete its file; the entry, if there
    /// was one. Never touches the share folder.
    pub fn remove_replica(&self, id: &FileId) -> Option<Entry> {
        let removed = self.replicas.lock().unwrap().remove(id)?;
        let path = self.replica_dir.join(id.to_hex());
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a dropped replica");
        }
        self.save_replicas();
        Some(removed)
    }

    /// Make the replica of `id` the user's own copy, shared as `name`
    /// (a `peerdex get` of a file held here as a replica): its bytes are
    /// hashed again, it is linked (or copied) into the share folder like a
    /// finished download, and the replica is deleted. Returns the shared
    /// entry and the replica's name when the user's copy does not carry it
    /// (to withdraw). A replica damaged on disk is deleted, never shared.
    /// Blocking.
    pub fn promote_replica(
        &self,
        id: &FileId,
        name: &FileName,
    ) -> Result<(Entry, Option<FileName>)> {
        if self.replica(id).is_none() {
            return Err(Missing::ReplicaGone { id: *id }.into());
        }
        let src = self.replica_dir.join(id.to_hex());
        let temp = self.temp_path("replica");
        if fs::hard_link(&src, &temp).is_err()
            && let Err(e) = fs::copy(&src, &temp)
        {
            let _ = fs::remove_file(&temp);
            return Err(disk_error(&self.space, e, &self.tmp_dir));
        }
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let manifest = match hash_path(&temp) {
            Ok((got, m)) if got == *id => m,
            Ok(_) => {
                let _ = fs::remove_file(&temp);
                tracing::warn!(file = %id, "a replica no longer matches its id (damaged on disk); deleting it");
                self.remove_replica(id);
                return Err(Internal::ReplicaDamaged { id: *id }.into());
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e.into());
            }
        };
        self.add_from_temp(&temp, name, *id, manifest)?;
        let entry = self
            .by_name(name)
            .ok_or_else(|| Internal::Vanished { name: name.clone() })?;
        let withdraw = self
            .remove_replica(id)
            .map(|r| r.name)
            .filter(|old| old != name && self.by_name(old).is_none_or(|e| e.id != *id));
        tracing::info!(file = %id, name = %name, "a replica became the user's copy (downloaded from this peer's replica space)");
        Ok((entry, withdraw))
    }

    /// Delete the replicas whose content the user shares too (announced
    /// as the owner's copy from now on). Returns the replica names to
    /// withdraw: those the user's copy does not carry.
    pub(super) fn drop_shadowed_replicas(&self) -> Vec<(FileId, FileName)> {
        let owned: HashMap<FileId, Vec<FileName>> = {
            let files = self.files.lock().unwrap();
            let mut m: HashMap<FileId, Vec<FileName>> = HashMap::new();
            for e in files.values() {
                m.entry(e.id).or_default().push(e.name.clone());
            }
            m
        };
        let shadowed: Vec<FileId> = self
            .replicas
            .lock()
            .unwrap()
            .keys()
            .filter(|id| owned.contains_key(id))
            .copied()
            .collect();
        let mut withdraw = Vec::new();
        for id in shadowed {
            if let Some(r) = self.remove_replica(&id) {
                tracing::info!(file = %id, "the user shares a file held as a replica; the replica is deleted, the file announced as the user's");
                if !owned[&id].contains(&r.name) {
                    withdraw.push((id, r.name));
                }
            }
        }
        withdraw
    }

    fn replica_index_path(&self) -> PathBuf {
        self.replica_dir.join("index.json")
    }

    fn save_replicas(&self) {
        let raw: BTreeMap<String, ReplicaRecord> = self
            .replicas
            .lock()
            .unwrap()
            .values()
            .map(|e| {
                (
                    e.id.to_hex(),
                    ReplicaRecord {
                        name: e.name.to_string(),
                        size: e.size,
                        mtime_ns: e.mtime_ns,
                        manifest: hex::encode(e.manifest.encode()),
                    },
                )
            })
            .collect();
        let result = serde_json::to_vec(&raw)
            .map_err(io::Error::other)
            .and_then(|bytes| write_atomic(&self.replica_index_path(), &bytes));
        if let Err(e) = result {
            let e = self.space.explain(e, &self.replica_dir);
            tracing::warn!(error = %e, "cannot save the replica index; replicas it misses are hashed again at the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::store::scan::tests::files_in;

    /// A replica put in the replica space by hand, as a finished fetch does.
    fn add_replica(store: &Store, bytes: &[u8], name: &str) -> FileId {
        let dir = store.replica_partial_dir();
        fs::create_dir_all(&dir).unwrap();
        let temp = dir.join("x.part");
        fs::write(&temp, bytes).unwrap();
        let (id, m) = hash_path(&temp).unwrap();
        store
            .add_replica(&temp, id, name.parse().unwrap(), m)
            .unwrap();
        assert!(!temp.exists());
        id
    }

    #[test]
    fn replicas_are_served_announced_and_checked_again_at_start() {
        let root = tempfile::tempdir().unwrap();
        let (share, data) = (root.path().join("share"), root.path().join("data"));
        let store = Store::open(&share, &data).unwrap();
        let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 241) as u8).collect();
        let id = add_replica(&store, &bytes, "theirs.bin");
        // Not the user's file, but announced (as a replica) and served.
        assert!(store.list().is_empty());
        assert_eq!(store.totals(), (0, 0));
        assert!(store.by_id(&id).is_none());
        let inv = store.inventory();
        assert_eq!(inv.len(), 1);
        assert!(inv[0].replica && inv[0].name.as_str() == "theirs.bin");
        let (mut f, e) = store.open_shared(&id).unwrap();
        assert!(e.replica);
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got, bytes);
        assert_eq!(store.replica_bytes(), bytes.len() as u64);
        assert!(files_in(&share).is_empty(), "nothing in the share folder");
        drop(store);

        // A restart knows it from the index, without hashing.
        let store = Store::open(&share, &data).unwrap();
        assert_eq!(store.load_replicas().unwrap(), 1);
        assert_eq!(store.hashed_count(), 0);
        assert_eq!(store.replica(&id).unwrap().name.as_str(), "theirs.bin");

        // Damaged on disk (its mtime moves): hashed again at the next
        // start, found wrong, deleted; never served or announced.
        let path = data.join("replicas").join(id.to_hex());
        let mut damaged = bytes.clone();
        damaged[1_000_000] ^= 1;
        fs::write(&path, &damaged).unwrap();
        drop(store);
        let store = Store::open(&share, &data).unwrap();
        assert_eq!(store.load_replicas().unwrap(), 0);
        assert_eq!(store.hashed_count(), 1);
        assert!(!path.exists());
        assert!(store.inventory().is_empty());
        assert!(store.open_shared(&id).is_err());

        // A replica whose index entry is gone is hashed and kept.
        let id = add_replica(&store, &bytes, "theirs.bin");
        fs::remove_file(data.join("replicas").join("index.json")).unwrap();
        drop(store);
        let store = Store::open(&share, &data).unwrap();
        assert_eq!(store.load_replicas().unwrap(), 1);
        assert_eq!(store.replica(&id).unwrap().name, fallback_name(&id));

        // Dropped: gone from disk and the inventory.
        let dropped = store.remove_replica(&id).unwrap();
        assert!(dropped.replica);
        assert!(!data.join("replicas").join(id.to_hex()).exists());
        assert!(store.remove_replica(&id).is_none());
        assert!(store.inventory().is_empty());
    }

    #[test]
    fn a_replica_the_user_shares_too_is_announced_once_as_the_owners() {
        let root = tempfile::tempdir().unwrap();
        let (share, data) = (root.path().join("share"), root.path().join("data"));
        let store = Store::open(&share, &data).unwrap();
        let id = add_replica(&store, b"same bytes", "replica-name.txt");
        fs::write(share.join("mine.txt"), b"same bytes").unwrap();
        let c = store.rescan().unwrap();
        assert_eq!(c.added.len(), 1);
        assert!(!c.added[0].replica);
        // The replica is deleted and its own name withdrawn.
        assert_eq!(c.removed, vec![(id, "replica-name.txt".parse().unwrap())]);
        assert!(store.replica(&id).is_none());
        assert_eq!(store.replica_bytes(), 0);
        let inv = store.inventory();
        assert_eq!(inv.len(), 1);
        assert!(!inv[0].replica);
        assert!(share.join("mine.txt").exists());
        // Under the same name, nothing is withdrawn: the owner's copy
        // carries it.
        let id2 = add_replica(&store, b"more bytes", "same.txt");
        fs::write(share.join("same.txt"), b"more bytes").unwrap();
        let c = store.rescan().unwrap();
        assert!(c.removed.is_empty(), "{:?}", c.removed);
        assert!(store.replica(&id2).is_none());
    }
}
