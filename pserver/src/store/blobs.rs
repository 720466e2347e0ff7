//! The ciphertexts of private files (`data/private-blobs/`): the owner's
//! (made by `POST /api/v1/private`) and a recipient's (fetched by ticket).
//! Like replicas they never enter the share folder and are not the user's
//! listed files, but the peer API serves them by id (verified chunk by
//! chunk) and the inventory announces them, under the name
//! `<file id>.peerdex-private` ([`private_name`]), which says nothing of
//! the plaintext. Their keys are the `private` module's; this file only
//! keeps the bytes. At start each is checked like a replica (the index
//! knows unchanged ones; others are hashed again, and one that no longer
//! matches its id is deleted); fetches cut short (`partial/`) are deleted.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use peerdex_proto::FileId;
use peerdex_proto::ticket::private_name;
use peerdex_proto::tree::Manifest;
use serde::{Deserialize, Serialize};

use super::scan::{hash_path, mtime_ns};
use super::{Entry, Store};
use crate::error::Result;
use crate::store::space::disk_error;
use peerdex_common::fs::write_atomic;

/// One ciphertext in `private-blobs/index.json`.
#[derive(Serialize, Deserialize)]
struct BlobRecord {
    size: u64,
    mtime_ns: u128,
    /// [`Manifest::encode`], hex; checked against the id again when loaded.
    manifest: String,
}

impl Store {
    /// Where fetches of ciphertexts in progress are written.
    pub fn blob_partial_dir(&self) -> PathBuf {
        self.blob_dir.join("partial")
    }

    /// Read the ciphertexts held (call once at start, before the first
    /// Join); blocking. Returns how many are held.
    pub fn load_blobs(&self) -> io::Result<usize> {
        let _ = fs::remove_dir_all(self.blob_partial_dir());
        let records: BTreeMap<String, BlobRecord> = fs::read(self.blob_index_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut held = BTreeMap::new();
        for dirent in fs::read_dir(&self.blob_dir)? {
            let Ok(dirent) = dirent else { continue };
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
                continue;
            }
            let (size, mtime) = (meta.len(), mtime_ns(&meta));
            let known = records
                .get(&id.to_hex())
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
                            tracing::warn!(file = %id, "a private file's ciphertext no longer matches its id (damaged on disk); deleting it");
                            let _ = fs::remove_file(&path);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(file = %id, error = %e, "cannot read a private file's ciphertext; leaving it out");
                            continue;
                        }
                    }
                }
            };
            held.insert(id, blob_entry(id, size, mtime, manifest));
        }
        let n = held.len();
        *self.blobs.lock().unwrap() = held;
        self.save_blobs();
        Ok(n)
    }

    /// The ciphertext of the private file `id`, if held here.
    pub fn blob(&self, id: &FileId) -> Option<Entry> {
        self.blobs.lock().unwrap().get(id).cloned()
    }

    /// The ciphertexts held.
    pub fn blobs(&self) -> Vec<Entry> {
        self.blobs.lock().unwrap().values().cloned().collect()
    }

    /// Where the ciphertext of `id` is kept.
    pub(super) fn blob_path(&self, id: &FileId) -> PathBuf {
        self.blob_dir.join(id.to_hex())
    }

    /// Move a verified ciphertext (a temp file on the data folder's file
    /// system) into the blob space as `id`. Not announced: the caller
    /// publishes [`Entry::to_shared`] once it wants it served.
    pub fn add_blob(&self, temp: &Path, id: FileId, manifest: Manifest) -> Result<Entry> {
        if let Some(held) = self.blob(&id) {
            let _ = fs::remove_file(temp);
            return Ok(held);
        }
        let dest = self.blob_path(&id);
        fs::File::open(temp)?
            .sync_all()
            .map_err(|e| disk_error(&self.space, e, &self.blob_dir))?;
        fs::rename(temp, &dest)?;
        if let Ok(dir) = fs::File::open(&self.blob_dir) {
            let _ = dir.sync_all();
        }
        let meta = fs::metadata(&dest)?;
        let entry = blob_entry(id, meta.len(), mtime_ns(&meta), manifest);
        self.blobs.lock().unwrap().insert(id, entry.clone());
        self.save_blobs();
        Ok(entry)
    }

    /// Forget the ciphertext of `id` and delete it; the entry, if held.
    pub fn remove_blob(&self, id: &FileId) -> Option<Entry> {
        let removed = self.blobs.lock().unwrap().remove(id)?;
        let path = self.blob_path(id);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a private file's ciphertext");
        }
        self.save_blobs();
        Some(removed)
    }

    fn blob_index_path(&self) -> PathBuf {
        self.blob_dir.join("index.json")
    }

    fn save_blobs(&self) {
        let raw: BTreeMap<String, BlobRecord> = self
            .blobs
            .lock()
            .unwrap()
            .values()
            .map(|e| {
                (
                    e.id.to_hex(),
                    BlobRecord {
                        size: e.size,
                        mtime_ns: e.mtime_ns,
                        manifest: hex::encode(e.manifest.encode()),
                    },
                )
            })
            .collect();
        let result = serde_json::to_vec(&raw)
            .map_err(io::Error::other)
            .and_then(|bytes| write_atomic(&self.blob_index_path(), &bytes));
        if let Err(e) = result {
            let e = self.space.explain(e, &self.blob_dir);
            tracing::warn!(error = %e, "cannot save the index of private ciphertexts; they are hashed again at the next start");
        }
    }
}

fn blob_entry(id: FileId, size: u64, mtime_ns: u128, manifest: Manifest) -> Entry {
    Entry {
        name: private_name(&id),
        on_disk: None,
        id,
        size,
        mtime_ns,
        manifest: std::sync::Arc::new(manifest),
        replica: false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::store::scan::tests::files_in;

    #[test]
    fn ciphertexts_are_served_announced_under_their_id_and_checked_at_start() {
        let root = tempfile::tempdir().unwrap();
        let (share, data) = (root.path().join("share"), root.path().join("data"));
        let store = Store::open(&share, &data).unwrap();
        let bytes: Vec<u8> = (0..1_500_000u32).map(|i| (i % 239) as u8).collect();
        fs::create_dir_all(store.blob_partial_dir()).unwrap();
        let temp = store.blob_partial_dir().join("x.part");
        fs::write(&temp, &bytes).unwrap();
        let (id, m) = hash_path(&temp).unwrap();
        let e = store.add_blob(&temp, id, m).unwrap();
        assert_eq!(e.name, private_name(&id));
        assert!(store.list().is_empty() && files_in(&share).is_empty());
        let inv = store.inventory();
        assert_eq!(inv.len(), 1);
        assert_eq!(inv[0].name, private_name(&id));
        assert!(!inv[0].replica);
        let (mut f, got) = store.open_shared(&id).unwrap();
        assert_eq!(got.name, private_name(&id));
        let mut read = Vec::new();
        f.read_to_end(&mut read).unwrap();
        assert_eq!(read, bytes);
        drop(store);

        // Known from the index at the next start; a damaged one is deleted.
        let store = Store::open(&share, &data).unwrap();
        assert_eq!(store.load_blobs().unwrap(), 1);
        assert_eq!(store.hashed_count(), 0);
        let path = data.join("private-blobs").join(id.to_hex());
        let mut damaged = bytes.clone();
        damaged[10] ^= 1;
        fs::write(&path, &damaged).unwrap();
        drop(store);
        let store = Store::open(&share, &data).unwrap();
        assert_eq!(store.load_blobs().unwrap(), 0);
        assert!(!path.exists());
        assert!(store.open_shared(&id).is_err());
        assert!(store.remove_blob(&id).is_none());
    }
}
