//! The share folder scan: what is shared, what changed since the last
//! scan, and the hash cache (`data/hashes.json`) that makes a restart cheap:
//! a file whose size and mtime did not change is not hashed again.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use peerdex_proto::tree::{Manifest, TreeHasher};
use peerdex_proto::types::escape_invisible;
use peerdex_proto::{FileId, FileName};
use serde::{Deserialize, Serialize};

use super::{Changes, Entry, Store};
use peerdex_common::fs::write_atomic;

#[derive(Serialize, Deserialize)]
pub(super) struct CacheEntry {
    size: u64,
    mtime_ns: u128,
    file_id: String,
    /// [`Manifest::encode`], hex; checked against the id again when loaded.
    manifest: String,
    /// The name on disk, when not spelt as the key (the NFC name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_disk: Option<String>,
}

pub(super) fn mtime_ns(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Hash a file on disk in one pass: its id and manifest (whose size is
/// what was read: compare it with the size expected, the file may be
/// changing).
pub fn hash_path(path: &Path) -> io::Result<(FileId, Manifest)> {
    let mut f = fs::File::open(path)?;
    let mut h = TreeHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

impl Store {
    /// Read the share folder and bring the index in line with it: new or
    /// changed files are hashed (unless the cache knows them), vanished ones
    /// dropped. Files that cannot be shared are remembered with their reason
    /// ([`Store::unshared`]) and logged once. Blocking; run it off the async
    /// runtime.
    pub fn rescan(&self) -> io::Result<Changes> {
        let mut unshared: BTreeMap<std::ffi::OsString, String> = BTreeMap::new();
        // (name, spelling on disk if not the name's, path), the names
        // spelt in NFC first: of two spellings of one name, that one is
        // shared (else the first by bytes).
        let mut candidates: Vec<(FileName, Option<String>, std::ffi::OsString, PathBuf)> =
            Vec::new();
        for dirent in fs::read_dir(&self.share_dir)? {
            let Ok(dirent) = dirent else { continue };
            let raw = dirent.file_name();
            let Some(s) = raw.to_str() else {
                unshared.insert(
                    raw,
                    "its name is not valid UTF-8; rename it (peers exchange names as Unicode text)"
                        .to_owned(),
                );
                continue;
            };
            if s.starts_with('.') {
                continue; // hidden and our own temp files are never shared
            }
            let name = match s.parse::<FileName>() {
                Ok(n) => n,
                Err(e) => {
                    let why = match e {
                        peerdex_proto::ParseError::FileName { reason, .. } => reason.into_owned(),
                        other => other.to_string(),
                    };
                    unshared.insert(raw, format!("its name {why}; rename it to share it"));
                    continue;
                }
            };
            let on_disk = (s != name.as_str()).then(|| s.to_owned());
            candidates.push((name, on_disk, raw, dirent.path()));
        }
        candidates.sort_by(|a, b| (a.1.is_some(), &a.2).cmp(&(b.1.is_some(), &b.2)));

        let mut seen: HashMap<FileName, (u64, u128, Option<String>)> = HashMap::new();
        let mut spelt: HashMap<FileName, std::ffi::OsString> = HashMap::new();
        for (name, on_disk, raw, path) in candidates {
            let Ok(real) = path.canonicalize() else {
                continue;
            };
            if !real.starts_with(&self.share_dir) {
                unshared.insert(
                    raw,
                    "it is a symlink to a file outside the share folder, which is never served"
                        .to_owned(),
                );
                continue;
            }
            let Ok(meta) = fs::metadata(&real) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if let Some(first) = spelt.get(&name) {
                unshared.insert(
                    raw,
                    format!(
                        "another file, \"{}\", has the same name spelt otherwise in Unicode (NFC and NFD); \
                         peers see one name, so only that one is shared: rename or remove one of them",
                        escape_invisible(&first.to_string_lossy())
                    ),
                );
                continue;
            }
            spelt.insert(name.clone(), raw);
            seen.insert(name, (meta.len(), mtime_ns(&meta), on_disk));
        }

        let mut changes = Changes::default();
        // Drop vanished or changed entries.
        let stale: Vec<Entry> = {
            let files = self.files.lock().unwrap();
            files
                .values()
                .filter(|e| {
                    seen.get(&e.name).is_none_or(|(size, mtime, on_disk)| {
                        (*size, *mtime, on_disk) != (e.size, e.mtime_ns, &e.on_disk)
                    })
                })
                .cloned()
                .collect()
        };
        {
            let mut files = self.files.lock().unwrap();
            for e in &stale {
                files.remove(&e.name);
                changes.removed.push((e.id, e.name.clone()));
            }
        }
        // Hash new or changed files, outside the lock.
        let todo: Vec<(FileName, u64, u128, Option<String>)> = {
            let files = self.files.lock().unwrap();
            seen.into_iter()
                .filter(|(n, _)| !files.contains_key(n))
                .map(|(n, (s, m, d))| (n, s, m, d))
                .collect()
        };
        for (name, size, mtime, on_disk) in todo {
            let path = self
                .share_dir
                .join(on_disk.as_deref().unwrap_or(name.as_str()));
            self.hashed.fetch_add(1, Ordering::Relaxed);
            let (id, manifest) = match hash_path(&path) {
                Ok((id, m)) if m.size() == size => (id, m),
                Ok(_) => continue, // still being written; the next scan picks it up
                Err(e) => {
                    let raw = std::ffi::OsString::from(on_disk.as_deref().unwrap_or(name.as_str()));
                    unshared.insert(raw, format!("it cannot be read: {e}"));
                    continue;
                }
            };
            let entry = Entry {
                name: name.clone(),
                on_disk,
                id,
                size,
                mtime_ns: mtime,
                manifest: std::sync::Arc::new(manifest),
                replica: false,
            };
            changes.added.push(entry.to_shared());
            self.files.lock().unwrap().insert(name, entry);
        }
        // A changed file is both removed (old id) and added (new id); the
        // removal only needs sending if the id really changed.
        changes
            .removed
            .retain(|(id, name)| !changes.added.iter().any(|a| a.id == *id && a.name == *name));
        if !changes.is_empty() {
            self.save_cache();
        }
        changes.removed.extend(self.drop_shadowed_replicas());
        self.note_unshared(unshared);
        Ok(changes)
    }

    /// Keep what the last rescan could not share; log each file when it
    /// first appears (or its reason changes), not at every rescan.
    fn note_unshared(&self, now: BTreeMap<std::ffi::OsString, String>) {
        let mut known = self.unshared.lock().unwrap();
        for (raw, why) in &now {
            if known.get(raw) != Some(why) {
                tracing::warn!(
                    file = %escape_invisible(&raw.to_string_lossy()),
                    reason = %why,
                    "a file in the share folder is not shared"
                );
            }
        }
        *known = now;
    }

    // ── replicas ────────────────────────────────────────────────────────

    fn cache_path(&self) -> PathBuf {
        self.data_dir.join("hash-cache.json")
    }

    pub(super) fn load_cache(&self) -> BTreeMap<FileName, Entry> {
        let Ok(bytes) = fs::read(self.cache_path()) else {
            return BTreeMap::new();
        };
        let Ok(raw) = serde_json::from_slice::<BTreeMap<String, CacheEntry>>(&bytes) else {
            tracing::warn!("hash cache unreadable; files will be re-hashed");
            return BTreeMap::new();
        };
        raw.into_iter()
            .filter_map(|(key, c)| {
                let name: FileName = key.parse().ok()?;
                // A cache written before names were normalized has the
                // disk's spelling as its key.
                let on_disk = c.on_disk.or_else(|| (key != name.as_str()).then_some(key));
                let id: FileId = c.file_id.parse().ok()?;
                let manifest = Manifest::decode(id, &hex::decode(c.manifest).ok()?)
                    .ok()
                    .filter(|m| m.size() == c.size)?;
                Some((
                    name.clone(),
                    Entry {
                        name,
                        on_disk,
                        id,
                        size: c.size,
                        mtime_ns: c.mtime_ns,
                        manifest: std::sync::Arc::new(manifest),
                        replica: false,
                    },
                ))
            })
            .collect()
    }

    pub(super) fn save_cache(&self) {
        let raw: BTreeMap<String, CacheEntry> = self
            .files
            .lock()
            .unwrap()
            .values()
            .map(|e| {
                (
                    e.name.to_string(),
                    CacheEntry {
                        size: e.size,
                        mtime_ns: e.mtime_ns,
                        file_id: e.id.to_hex(),
                        manifest: hex::encode(e.manifest.encode()),
                        on_disk: e.on_disk.clone(),
                    },
                )
            })
            .collect();
        let result = serde_json::to_vec(&raw)
            .map_err(io::Error::other)
            .and_then(|bytes| write_atomic(&self.cache_path(), &bytes));
        if let Err(e) = result {
            let e = self.space.explain(e, &self.data_dir);
            tracing::warn!(error = %e, "cannot save hash cache; the previous one stays (files it misses are hashed again at the next start)");
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn hash_path_gives_the_id_and_a_verified_manifest() {
        let root = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let p = root.path().join("f");
        fs::write(&p, &data).unwrap();
        let (id, m) = hash_path(&p).unwrap();
        assert_eq!(id.to_hex(), blake3::hash(&data).to_hex().as_str());
        assert_eq!(
            (m.size(), m.chunks(), m.chunk_size()),
            (3_500_000, 4, 1 << 20)
        );
        assert!(m.check_chunk(3, &data[3 << 20..]));
        assert_eq!(Manifest::decode(id, &m.encode()).unwrap(), m);
    }

    pub(in crate::store) fn files_in(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn rescan_uses_cache_and_skips_escaping_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("share");
        let data = root.path().join("data");
        fs::create_dir_all(&share).unwrap();
        fs::write(share.join("a.txt"), b"hello").unwrap();
        fs::write(share.join(".hidden"), b"x").unwrap();
        fs::write(root.path().join("secret"), b"top secret").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), share.join("link")).unwrap();
        let store = Store::open(&share, &data).unwrap();
        let c = store.rescan().unwrap();
        assert_eq!(c.added.len(), 1);
        assert_eq!(c.added[0].name.as_str(), "a.txt");
        assert_eq!(store.hashed_count(), 1);
        drop(store);
        let store = Store::open(&share, &data).unwrap();
        let c = store.rescan().unwrap();
        assert!(c.is_empty());
        assert_eq!(store.hashed_count(), 0, "unchanged file re-hashed");
        fs::remove_file(share.join("a.txt")).unwrap();
        let c = store.rescan().unwrap();
        assert_eq!(c.removed.len(), 1);
    }
}
