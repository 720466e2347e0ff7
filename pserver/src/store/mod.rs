//! The store: the share folder (files under their human names) and the data
//! folder (peer id, hash cache, temp files).
//!
//! Layout of the data folder:
//! ```text
//! peer-id          the UUID of this peer, created on first start
//! peer.key         this peer's Ed25519 key (PKCS#8 PEM, 0600): the directory binds the id to it
//! session.token    the central's session token (so a quick restart can re-join)
//! hash-cache.json  (name, size, mtime) → BLAKE3 id + tree manifest (chunk CVs)
//! tmp/             uploads and downloads in progress; emptied at start
//! replicas/        replicas held for the directory (see below)
//!   <file id>        one verified replica, named by its id
//!   index.json       file id → name, size, mtime, manifest (like the hash cache)
//!   partial/         replica fetches in progress (see `crate::download`)
//! ```
//! Replicas are copies of other peers' files that the directory asked this
//! peer to keep (`PSERVER_REPLICA_QUOTA_BYTES`, see `crate::download::replicas`).
//! They never enter the share folder and are not listed as the user's
//! files, but the peer API serves them like shared files (verified chunk
//! by chunk) and the inventory announces them with `replica = true`. A
//! replica whose content the user shares too is redundant: it is deleted
//! and the file announced once, as the owner's. At start each replica is
//! checked like a shared file (the index knows unchanged ones, others are
//! hashed again); one that no longer matches its id is deleted, never
//! served or announced.
//! Free space ([`Space`], `PSERVER_MIN_FREE_BYTES`) is checked before
//! anything big is written; a full disk while writing a small file (the hash
//! cache, a partial download's state) leaves the previous version in place
//! and no temp file behind.
//!
//! Only names that parse as [`FileName`] are ever joined onto the share
//! folder, and files reached through a symlink that leaves the share folder
//! are neither listed nor served.
//!
//! Names are shared in NFC (see [`FileName`]): a file whose name is written
//! on disk in another spelling (NFD, as macOS tools write `café`) is shared
//! under the NFC name and read from its real path. Two files whose names
//! differ only in spelling share one name: the one spelt in NFC (else the
//! first by bytes) is shared, the other is not. A file of the share folder
//! that cannot be shared (a name [`FileName`] refuses, two spellings of one
//! name, a symlink leaving the folder, unreadable) is logged once with its
//! reason and counted in the control API's status ([`Store::unshared`]);
//! hidden files (a leading `.`, our own temp files too) are left out
//! quietly, by design.

pub(crate) mod space;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use peerdex_proto::convert::SharedFile;
use peerdex_proto::rest::FileInfo;
use peerdex_proto::tree::{Manifest, TreeHasher};
use peerdex_proto::types::escape_invisible;
use peerdex_proto::{FileId, FileName, PeerId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::space::{Space, disk_error};

/// One shared file. Cheap to clone: the manifest (up to 256 KiB of CVs) is
/// shared.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: FileName,
    /// The file's name in the share folder when it is spelt otherwise than
    /// `name` (NFD on disk); `None` when they are the same.
    on_disk: Option<String>,
    pub id: FileId,
    pub size: u64,
    mtime_ns: u128,
    pub manifest: std::sync::Arc<Manifest>,
    /// Held in the replica space for the directory, not shared by the user.
    pub replica: bool,
}

impl Entry {
    pub fn to_shared(&self) -> SharedFile {
        SharedFile {
            id: self.id,
            size: self.size,
            name: self.name.clone(),
            replica: self.replica,
        }
    }
    pub fn to_info(&self) -> FileInfo {
        FileInfo {
            file_id: self.id.to_hex(),
            name: self.name.to_string(),
            size: self.size,
            lookalike: self.name.mixes_scripts(),
        }
    }
}

/// What a rescan found changed on disk.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<SharedFile>,
    pub removed: Vec<(FileId, FileName)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Outcome of adding a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    New,
    /// The same content was already shared under that name.
    AlreadyShared,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: u128,
    file_id: String,
    /// [`Manifest::encode`], hex; checked against the id again when loaded.
    manifest: String,
    /// The name on disk, when not spelt as the key (the NFC name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_disk: Option<String>,
}

/// Files of the share folder that are not shared, shown at most this many
/// at a time in the status (all are counted).
pub const MAX_UNSHARED_SHOWN: usize = 20;

/// One replica in `replicas/index.json`.
#[derive(Serialize, Deserialize)]
struct ReplicaRecord {
    name: String,
    size: u64,
    mtime_ns: u128,
    /// [`Manifest::encode`], hex; checked against the id again when loaded.
    manifest: String,
}

pub struct Store {
    share_dir: PathBuf,
    data_dir: PathBuf,
    tmp_dir: PathBuf,
    /// `data/replicas/`: replicas held for the directory.
    replica_dir: PathBuf,
    files: Mutex<BTreeMap<FileName, Entry>>,
    /// Files of the share folder the last rescan could not share: name on
    /// disk → why. Each is logged when it first appears here.
    unshared: Mutex<BTreeMap<std::ffi::OsString, String>>,
    /// Replicas held, by id (one name each: the one the directory gave).
    replicas: Mutex<BTreeMap<FileId, Entry>>,
    /// Ids withdrawn because their bytes failed verification, so requests
    /// for them are told why (bounded: forgotten past [`MAX_QUARANTINED`]).
    quarantined: Mutex<std::collections::HashSet<FileId>>,
    /// Files hashed since start (the cache saves re-hashing unchanged ones).
    hashed: AtomicU64,
    space: std::sync::Arc<Space>,
}

/// Withdrawn ids remembered for their error message.
const MAX_QUARANTINED: usize = 1024;

impl Store {
    /// Create the folders if needed, empty `tmp/`, and load the hash cache.
    /// Call [`Store::rescan`] to read the share folder.
    pub fn open(share_dir: &Path, data_dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(share_dir)?;
        fs::create_dir_all(data_dir)?;
        let share_dir = share_dir.canonicalize()?;
        let data_dir = data_dir.canonicalize()?;
        let tmp_dir = data_dir.join("tmp");
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir)?;
        }
        fs::create_dir_all(&tmp_dir)?;
        let replica_dir = data_dir.join("replicas");
        fs::create_dir_all(&replica_dir)?;
        let store = Self {
            share_dir,
            data_dir,
            tmp_dir,
            replica_dir,
            files: Mutex::new(BTreeMap::new()),
            unshared: Mutex::new(BTreeMap::new()),
            replicas: Mutex::new(BTreeMap::new()),
            quarantined: Mutex::new(std::collections::HashSet::new()),
            hashed: AtomicU64::new(0),
            space: std::sync::Arc::new(Space::new(0, 0)),
        };
        let cache = store.load_cache();
        *store.files.lock().unwrap() = cache;
        Ok(store)
    }

    /// Keep `space`'s reserve free (the default keeps none).
    pub fn with_space(mut self, space: Space) -> Self {
        self.space = std::sync::Arc::new(space);
        self
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn share_dir(&self) -> &Path {
        &self.share_dir
    }

    /// Where replica fetches in progress are written (their partials).
    pub fn replica_partial_dir(&self) -> PathBuf {
        self.replica_dir.join("partial")
    }

    /// Where uploads and downloads in progress are written.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// The free-space reserve and the claims of transfers in progress.
    pub fn space(&self) -> &std::sync::Arc<Space> {
        &self.space
    }

    /// How many files were hashed since start.
    pub fn hashed_count(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// The peer id kept in the data folder; created on first start.
    pub fn peer_id(&self) -> io::Result<PeerId> {
        peer_id_in(&self.data_dir)
    }

    /// A fresh temp file path under `tmp/` (removed at the next start at the latest).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.tmp_dir
            .join(format!("{what}-{}", uuid::Uuid::new_v4()))
    }

    pub fn list(&self) -> Vec<FileInfo> {
        self.files
            .lock()
            .unwrap()
            .values()
            .map(Entry::to_info)
            .collect()
    }

    /// Everything this peer holds, as announced to the directory: the
    /// shared files, and the replicas (`replica = true`) whose content the
    /// user does not share too.
    pub fn inventory(&self) -> Vec<SharedFile> {
        let files = self.files.lock().unwrap();
        let mut all: Vec<SharedFile> = files.values().map(Entry::to_shared).collect();
        let owned: std::collections::HashSet<FileId> = files.values().map(|e| e.id).collect();
        drop(files);
        all.extend(
            self.replicas
                .lock()
                .unwrap()
                .values()
                .filter(|r| !owned.contains(&r.id))
                .map(Entry::to_shared),
        );
        all
    }

    pub fn totals(&self) -> (u64, u64) {
        let files = self.files.lock().unwrap();
        (files.len() as u64, files.values().map(|e| e.size).sum())
    }

    pub fn by_name(&self, name: &FileName) -> Option<Entry> {
        self.files.lock().unwrap().get(name).cloned()
    }

    pub fn by_id(&self, id: &FileId) -> Option<Entry> {
        self.files
            .lock()
            .unwrap()
            .values()
            .find(|e| e.id == *id)
            .cloned()
    }

    /// Open a shared file or a replica for reading, refusing anything that
    /// resolves outside its folder or no longer matches the indexed size.
    pub fn open_shared(&self, id: &FileId) -> Result<(fs::File, Entry)> {
        let entry = self.shared(id)?;
        let (dir, path) = if entry.replica {
            (&self.replica_dir, self.replica_dir.join(id.to_hex()))
        } else {
            (&self.share_dir, self.share_path(&entry))
        };
        let real = path
            .canonicalize()
            .map_err(|_| Error::NotFound(format!("file {id} is no longer on disk")))?;
        if !real.starts_with(dir) {
            return Err(Error::NotFound(format!("file {id} is not shared here")));
        }
        let file = fs::File::open(&real)?;
        let len = file.metadata()?.len();
        if len != entry.size {
            return Err(Error::NotFound(format!(
                "file {id} changed on disk; it will be re-hashed"
            )));
        }
        Ok((file, entry))
    }

    /// Where a shared file is on disk: its name in the share folder as
    /// spelt there.
    fn share_path(&self, e: &Entry) -> PathBuf {
        self.share_dir
            .join(e.on_disk.as_deref().unwrap_or(e.name.as_str()))
    }

    /// Files of the share folder the last rescan could not share: how many,
    /// and the first [`MAX_UNSHARED_SHOWN`] (name with its invisible and
    /// control characters escaped, reason).
    pub fn unshared(&self) -> (u64, Vec<(String, String)>) {
        let u = self.unshared.lock().unwrap();
        let shown = u
            .iter()
            .take(MAX_UNSHARED_SHOWN)
            .map(|(n, why)| (escape_invisible(&n.to_string_lossy()), why.clone()))
            .collect();
        (u.len() as u64, shown)
    }

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
            return Err(Error::NotFound(format!(
                "file {id} is no longer held here as a replica"
            )));
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
                return Err(Error::Internal(format!(
                    "the copy of file {id} held here as a replica was damaged on disk and is deleted; \
                     download it again to fetch it from other peers"
                )));
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e.into());
            }
        };
        self.add_from_temp(&temp, name, *id, manifest)?;
        let entry = self.by_name(name).ok_or_else(|| {
            Error::Internal(format!(
                "\"{name}\" vanished from the share folder meanwhile"
            ))
        })?;
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
    fn drop_shadowed_replicas(&self) -> Vec<(FileId, FileName)> {
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

    /// Move a verified temp file into the share folder under `name`
    /// (atomically, never replacing a different content).
    pub fn add_from_temp(
        &self,
        temp: &Path,
        name: &FileName,
        id: FileId,
        manifest: Manifest,
    ) -> Result<Added> {
        if let Some(existing) = self.by_name(name) {
            let _ = fs::remove_file(temp);
            return if existing.id == id {
                Ok(Added::AlreadyShared)
            } else {
                Err(Error::NameConflict(format!(
                    "a different file named \"{name}\" is already shared (id {}); rename yours or remove that one first",
                    existing.id
                )))
            };
        }
        let dest = self.share_dir.join(name.as_str());
        let file = fs::File::open(temp)?;
        file.sync_all()
            .map_err(|e| disk_error(&self.space, e, &self.tmp_dir))?;
        let meta = file.metadata()?;
        drop(file);
        // Hard-link then unlink: fails instead of replacing a file that appeared
        // meanwhile under the same name (a rename would silently overwrite it).
        match fs::hard_link(temp, &dest) {
            Ok(()) => {
                let _ = fs::remove_file(temp);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(temp);
                return Err(Error::NameConflict(format!(
                    "a file named \"{name}\" appeared in the share folder meanwhile; rename yours"
                )));
            }
            Err(_) => {
                // Different file systems (or no hard links): copy to a hidden
                // temp next to the destination, then rename.
                let side = self
                    .share_dir
                    .join(format!(".peerdex-{}", uuid::Uuid::new_v4()));
                let copied = fs::copy(temp, &side).and_then(|_| fs::File::open(&side)?.sync_all());
                if let Err(e) = copied {
                    // Nothing half-copied stays in the share folder.
                    let _ = fs::remove_file(&side);
                    return Err(disk_error(&self.space, e, &self.share_dir));
                }
                if dest.exists() {
                    let _ = fs::remove_file(&side);
                    return Err(Error::NameConflict(format!(
                        "a file named \"{name}\" already exists"
                    )));
                }
                fs::rename(&side, &dest)?;
                let _ = fs::remove_file(temp);
            }
        }
        if let Ok(dir) = fs::File::open(&self.share_dir) {
            let _ = dir.sync_all();
        }
        let dest_meta = fs::metadata(&dest).unwrap_or(meta);
        let entry = Entry {
            name: name.clone(),
            on_disk: None,
            id,
            size: dest_meta.len(),
            mtime_ns: mtime_ns(&dest_meta),
            manifest: std::sync::Arc::new(manifest),
            replica: false,
        };
        self.files.lock().unwrap().insert(name.clone(), entry);
        self.save_cache();
        Ok(Added::New)
    }

    /// The entry of `id` (a shared file, else a replica), or `NotFound`
    /// saying why it is not shared here.
    pub fn shared(&self, id: &FileId) -> Result<Entry> {
        self.by_id(id).or_else(|| self.replica(id)).ok_or_else(|| {
            Error::NotFound(if self.quarantined.lock().unwrap().contains(id) {
                format!("file {id} failed verification on this peer and is no longer shared here")
            } else {
                format!("file {id} is not shared here")
            })
        })
    }

    /// Stop sharing every name of `id` whose bytes on disk no longer match
    /// it (found while serving): drop them from the index and the hash
    /// cache, so the next rescan hashes those files again and shares them
    /// under their new id if their content changed. Returns what was
    /// withdrawn (nothing if another call already did).
    pub fn quarantine(&self, id: &FileId) -> Vec<Entry> {
        let mut removed = self.take_all(id);
        // A rotten replica is simply deleted: the directory has another
        // volunteer fetch a good copy.
        removed.extend(self.remove_replica(id));
        if !removed.is_empty() {
            let mut q = self.quarantined.lock().unwrap();
            if q.len() >= MAX_QUARANTINED {
                q.clear();
            }
            q.insert(*id);
            drop(q);
            self.save_cache();
        }
        removed
    }

    /// Drop every name of `id` from the index; returns the entries.
    fn take_all(&self, id: &FileId) -> Vec<Entry> {
        let mut files = self.files.lock().unwrap();
        let names: Vec<FileName> = files
            .values()
            .filter(|e| e.id == *id)
            .map(|e| e.name.clone())
            .collect();
        names.iter().filter_map(|n| files.remove(n)).collect()
    }

    /// Stop sharing every name of `id` and delete those files from the share folder.
    pub fn remove(&self, id: &FileId) -> Result<Vec<Entry>> {
        let removed = self.take_all(id);
        if removed.is_empty() {
            return Err(Error::NotFound(format!("file {id} is not shared here")));
        }
        for e in &removed {
            let path = self.share_path(e);
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %err, "cannot delete unshared file");
            }
        }
        self.save_cache();
        Ok(removed)
    }

    fn cache_path(&self) -> PathBuf {
        self.data_dir.join("hash-cache.json")
    }

    fn load_cache(&self) -> BTreeMap<FileName, Entry> {
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

    fn save_cache(&self) {
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

fn mtime_ns(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// The name of a replica whose index entry was lost: `<id12>.bin`.
fn fallback_name(id: &FileId) -> FileName {
    format!("{}.bin", id.short())
        .parse()
        .expect("hex name is valid")
}

/// The peer id kept in `data_dir`; created on first start.
pub fn peer_id_in(data_dir: &Path) -> io::Result<PeerId> {
    let path = data_dir.join("peer-id");
    match fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = PeerId::new_random();
            write_atomic(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

pub use peerdex_common::fs::write_atomic;

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

#[cfg(test)]
mod tests {
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

    fn files_in(dir: &Path) -> Vec<PathBuf> {
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
