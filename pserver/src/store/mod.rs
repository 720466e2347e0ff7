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
//! private-blobs/   ciphertexts of private files (see `blobs`), like replicas
//!   <file id>        one verified ciphertext, named by its id
//!   index.json       file id → size, mtime, manifest
//!   partial/         fetches by ticket in progress; emptied at start
//! private-keys.json  keys of private files, 0600 (see `crate::private`)
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
//! The share folder is a tree: every file under it, at any depth, is
//! shared under its path relative to the folder, with `/` separators
//! (`Music/Album/01 Track.mp3`, a [`FileName`]); hidden files and folders
//! are left out. A download lands under the same relative path, its
//! folders made as needed. Only names that parse as [`FileName`] are ever
//! joined onto the share folder (no `..`, no empty or hidden component),
//! and files reached through a symlink that leaves the share folder are
//! neither listed nor served; symlinks to folders are not followed.
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

mod blobs;
mod cache;
mod hashing;
mod replicas;
mod scan;
pub(crate) mod space;
pub(crate) mod watch;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use peerdex_proto::convert::SharedFile;
use peerdex_proto::rest::FileInfo;
use peerdex_proto::tree::Manifest;
use peerdex_proto::types::escape_invisible;
use peerdex_proto::{FileId, FileName, PeerId};

use crate::error::{Conflict, Error, Missing, Result};
use crate::store::space::{Space, disk_error};
use peerdex_common::fs::write_atomic;
use scan::mtime_ns;

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

/// Files of the share folder that are not shared, shown at most this many
/// at a time in the status (all are counted).
pub const MAX_UNSHARED_SHOWN: usize = 20;

pub struct Store {
    share_dir: PathBuf,
    data_dir: PathBuf,
    tmp_dir: PathBuf,
    /// `data/replicas/`: replicas held for the directory.
    replica_dir: PathBuf,
    /// `data/private-blobs/`: ciphertexts of private files (see `blobs`).
    blob_dir: PathBuf,
    files: Mutex<BTreeMap<FileName, Entry>>,
    /// Files of the share folder the last rescan could not share: name on
    /// disk → why. Each is logged when it first appears here.
    unshared: Mutex<BTreeMap<std::ffi::OsString, String>>,
    /// Replicas held, by id (one name each: the one the directory gave).
    replicas: Mutex<BTreeMap<FileId, Entry>>,
    /// Ciphertexts of private files held, by id.
    blobs: Mutex<BTreeMap<FileId, Entry>>,
    /// Ids withdrawn because their bytes failed verification, so requests
    /// for them are told why (bounded: forgotten past [`MAX_QUARANTINED`]).
    quarantined: Mutex<std::collections::HashSet<FileId>>,
    /// Files hashed since start (the cache saves re-hashing unchanged ones).
    hashed: AtomicU64,
    /// The hashing under way (see `hashing`).
    hashing: hashing::Progress,
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
        let blob_dir = data_dir.join("private-blobs");
        fs::create_dir_all(&blob_dir)?;
        let store = Self {
            share_dir,
            data_dir,
            tmp_dir,
            replica_dir,
            blob_dir,
            blobs: Mutex::new(BTreeMap::new()),
            files: Mutex::new(BTreeMap::new()),
            unshared: Mutex::new(BTreeMap::new()),
            replicas: Mutex::new(BTreeMap::new()),
            quarantined: Mutex::new(std::collections::HashSet::new()),
            hashed: AtomicU64::new(0),
            hashing: hashing::Progress::default(),
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
    /// shared files, the replicas (`replica = true`) whose content the
    /// user does not share too, and the ciphertexts of private files.
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
        all.extend(self.blobs().iter().map(Entry::to_shared));
        all
    }

    /// The shared files under `folder` (at any depth), by name: at most
    /// `max`, and whether there were more.
    pub fn files_under(&self, folder: &FileName, max: usize) -> (Vec<FileInfo>, bool) {
        let files = self.files.lock().unwrap();
        let mut under = files.values().filter(|e| e.name.is_under(folder));
        let listed: Vec<FileInfo> = under.by_ref().take(max).map(Entry::to_info).collect();
        let more = under.next().is_some();
        (listed, more)
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
        } else if self.blob(id).is_some_and(|b| b.name == entry.name) {
            (&self.blob_dir, self.blob_path(id))
        } else {
            (&self.share_dir, self.share_path(&entry))
        };
        let real = path.canonicalize().map_err(|_| Missing::Gone { id: *id })?;
        if !real.starts_with(dir) {
            return Err(Missing::NotShared { id: *id }.into());
        }
        let file = fs::File::open(&real)?;
        let len = file.metadata()?.len();
        if len != entry.size {
            return Err(Missing::Changed { id: *id }.into());
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
    /// and the first `max` (name with its invisible and control characters
    /// escaped, reason).
    pub fn unshared(&self, max: usize) -> (u64, Vec<(String, String)>) {
        let u = self.unshared.lock().unwrap();
        let shown = u
            .iter()
            .take(max)
            .map(|(n, why)| (escape_invisible(&n.to_string_lossy()), why.clone()))
            .collect();
        (u.len() as u64, shown)
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
                Err(Conflict::Taken {
                    name: name.clone(),
                    existing: existing.id,
                }
                .into())
            };
        }
        let dest = self.share_dir.join(name.as_str());
        // A name in folders lands in the same folders here (made as
        // needed), never outside the share folder: a folder on the way
        // that is a symlink leading out refuses it.
        let parent = dest.parent().unwrap_or(&self.share_dir).to_path_buf();
        if let Err(e) = fs::create_dir_all(&parent) {
            let _ = fs::remove_file(temp);
            return Err(
                if e.kind() == io::ErrorKind::NotADirectory
                    || e.kind() == io::ErrorKind::AlreadyExists
                {
                    Conflict::NoFolder { name: name.clone() }.into()
                } else {
                    disk_error(&self.space, e, &self.share_dir)
                },
            );
        }
        if !parent
            .canonicalize()
            .is_ok_and(|real| real.starts_with(&self.share_dir))
        {
            let _ = fs::remove_file(temp);
            return Err(Conflict::NoFolder { name: name.clone() }.into());
        }
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
                return Err(Conflict::Appeared { name: name.clone() }.into());
            }
            Err(_) => {
                // Different file systems (or no hard links): copy to a hidden
                // temp next to the destination, then rename.
                let side = parent.join(format!(".peerdex-{}", uuid::Uuid::new_v4()));
                let copied = fs::copy(temp, &side).and_then(|_| fs::File::open(&side)?.sync_all());
                if let Err(e) = copied {
                    // Nothing half-copied stays in the share folder.
                    let _ = fs::remove_file(&side);
                    return Err(disk_error(&self.space, e, &self.share_dir));
                }
                if dest.exists() {
                    let _ = fs::remove_file(&side);
                    return Err(Conflict::Exists { name: name.clone() }.into());
                }
                fs::rename(&side, &dest)?;
                let _ = fs::remove_file(temp);
            }
        }
        if let Ok(dir) = fs::File::open(&parent) {
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

    /// The entry of `id` (a shared file, else a replica, else a private
    /// file's ciphertext), or `NotFound` saying why it is not shared here.
    pub fn shared(&self, id: &FileId) -> Result<Entry> {
        let found = self.by_id(id).or_else(|| self.replica(id));
        found.or_else(|| self.blob(id)).ok_or_else(|| {
            let id = *id;
            Error::from(if self.quarantined.lock().unwrap().contains(&id) {
                Missing::Rotten { id }
            } else {
                Missing::NotShared { id }
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
        // So is a rotten ciphertext: its key stays, and a fetch by ticket
        // gets a good copy from another holder.
        removed.extend(self.remove_blob(id));
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
            return Err(Missing::NotShared { id: *id }.into());
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
