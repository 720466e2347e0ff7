//! The share folder scan: what is shared, what changed since the last
//! scan. The hash cache (`cache`) makes a restart cheap:
//! a file whose size and mtime did not change is not hashed again.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use peerdex_proto::tree::{Manifest, TreeHasher};
use peerdex_proto::types::{MAX_PATH_BYTES, escape_invisible};
use peerdex_proto::{FileId, FileName};

use super::{Changes, Entry, Store};

/// A file the walk found that may be shared.
struct Candidate {
    name: FileName,
    /// Its relative path as spelt on disk, when not as `name` (NFD).
    on_disk: Option<String>,
    /// Its relative path on disk (the key of `unshared`).
    raw: std::ffi::OsString,
    meta: fs::Metadata,
}

/// Which part of the share folder a reconcile covers.
enum Scope {
    /// The whole tree (a full rescan).
    All,
    /// These paths relative to the share folder (as spelt on disk), each a
    /// file or a folder with everything under it.
    Paths(Vec<String>),
}

impl Scope {
    fn covers(&self, disk: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Paths(paths) => paths.iter().any(|p| {
                disk.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }),
        }
    }
}

/// Why `s` cannot be one component of a share name (a folder's name).
fn check_component(s: &str) -> Result<(), String> {
    match s.parse::<FileName>() {
        Ok(_) => Ok(()),
        Err(peerdex_proto::ParseError::FileName { reason, .. }) => Err(reason.into_owned()),
        Err(other) => Err(other.to_string()),
    }
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
    hash_path_with(path, &mut vec![0u8; HASH_BUF])
}

/// The read buffer of [`hash_path_with`].
pub(super) const HASH_BUF: usize = 1 << 20;

/// [`hash_path`] reading through `buf` (not empty): a caller that hashes
/// many files (a library of small ones) reuses one buffer instead of
/// allocating and zeroing a MiB per file, which also kept the heap of
/// each hashing thread fragmented (RSS at rest).
pub(super) fn hash_path_with(path: &Path, buf: &mut [u8]) -> io::Result<(FileId, Manifest)> {
    let mut f = fs::File::open(path)?;
    let mut h = TreeHasher::new();
    loop {
        let n = match f.read(buf) {
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
        // The share folder itself must be readable.
        fs::read_dir(&self.share_dir)?;
        let candidates = self.walk(vec![(self.share_dir.clone(), String::new())], &mut unshared);
        Ok(self.reconcile(&Scope::All, candidates, unshared))
    }

    /// Bring the index in line with the disk for `paths` only (files or
    /// folders under the share folder that a notification named: created,
    /// changed, moved or removed), without reading the rest of the tree.
    /// A folder is read in full (one moved in brings its files along).
    /// Blocking; run it off the async runtime.
    pub fn rescan_paths(&self, paths: &[PathBuf]) -> Changes {
        let mut unshared = BTreeMap::new();
        let mut rels = Vec::new();
        let mut candidates = Vec::new();
        for path in paths {
            let Ok(rel) = path.strip_prefix(&self.share_dir) else {
                continue;
            };
            let Some(rel) = rel.to_str().filter(|r| !r.is_empty()) else {
                continue; // the share folder itself, or not UTF-8 (the rescan says so)
            };
            if rel.split('/').any(|c| c.starts_with('.')) || path.starts_with(&self.data_dir) {
                continue; // hidden, our temp files, or our data folder
            }
            rels.push(rel.to_owned());
            let Ok(meta) = fs::symlink_metadata(path) else {
                continue; // gone: its entries are withdrawn below
            };
            let parent = rel
                .rsplit_once('/')
                .map_or(String::new(), |(d, _)| format!("{d}/"));
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let mut stack = Vec::new();
            self.visit(
                path,
                &parent,
                name,
                meta.file_type(),
                || Ok(meta.clone()),
                &mut stack,
                &mut candidates,
                &mut unshared,
            );
            candidates.extend(self.walk(stack, &mut unshared));
        }
        if rels.is_empty() {
            return Changes::default();
        }
        self.reconcile(&Scope::Paths(rels), candidates, unshared)
    }

    /// Bring the index in line with `candidates`, the files found on disk
    /// within `scope`: entries of the scope not found are dropped, new or
    /// changed files hashed; what could not be shared within the scope is
    /// replaced by `unshared`.
    fn reconcile(
        &self,
        scope: &Scope,
        mut candidates: Vec<Candidate>,
        mut unshared: BTreeMap<std::ffi::OsString, String>,
    ) -> Changes {
        // The names spelt in NFC first: of two spellings of one name, that
        // one is shared (else the first by bytes).
        candidates
            .sort_by(|a, b| (a.on_disk.is_some(), &a.raw).cmp(&(b.on_disk.is_some(), &b.raw)));

        let mut seen: HashMap<FileName, (u64, u128, Option<String>)> = HashMap::new();
        // Names already shared from a file outside the scope (a partial
        // look at a few paths): a candidate of the same name is another
        // spelling of it.
        let mut spelt: HashMap<FileName, std::ffi::OsString> = HashMap::new();
        if let Scope::Paths(_) = scope {
            let files = self.files.lock().unwrap();
            for c in &candidates {
                if let Some(e) = files.get(&c.name) {
                    let disk = e.on_disk.as_deref().unwrap_or(e.name.as_str());
                    if !scope.covers(disk) {
                        spelt.insert(c.name.clone(), disk.into());
                    }
                }
            }
        }
        for Candidate {
            name,
            on_disk,
            raw,
            meta,
        } in candidates
        {
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
                .filter(|e| scope.covers(e.on_disk.as_deref().unwrap_or(e.name.as_str())))
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
        for entry in self.hash_all(todo, &mut unshared) {
            changes.added.push(entry.to_shared());
            self.files.lock().unwrap().insert(entry.name.clone(), entry);
        }
        // A changed file is both removed (old id) and added (new id); the
        // removal only needs sending if the id really changed.
        let added: std::collections::HashSet<(FileId, &FileName)> =
            changes.added.iter().map(|a| (a.id, &a.name)).collect();
        let removed = std::mem::take(&mut changes.removed);
        let kept = removed
            .into_iter()
            .filter(|(id, name)| !added.contains(&(*id, name)))
            .collect();
        drop(added);
        changes.removed = kept;
        if !changes.is_empty() {
            self.save_cache();
        }
        changes.removed.extend(self.drop_shadowed_replicas());
        self.note_unshared(scope, unshared);
        changes
    }

    /// Every file under the folders of `stack` (each with its path
    /// relative to the share folder as spelt on disk: "" at the top, else
    /// ending with '/'), at any depth, that may be shared (see
    /// [`Store::visit`]).
    fn walk(
        &self,
        mut stack: Vec<(PathBuf, String)>,
        unshared: &mut BTreeMap<std::ffi::OsString, String>,
    ) -> Vec<Candidate> {
        let mut out = Vec::new();
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    unshared.insert(
                        rel.trim_end_matches('/').into(),
                        format!("this folder cannot be read ({e}); nothing under it is shared"),
                    );
                    continue;
                }
            };
            for dirent in entries {
                let Ok(dirent) = dirent else { continue };
                let raw_name = dirent.file_name();
                let Some(s) = raw_name.to_str() else {
                    let mut raw = std::ffi::OsString::from(&rel);
                    raw.push(&raw_name);
                    unshared.insert(
                        raw,
                        "its name is not valid UTF-8; rename it (peers exchange names as Unicode text)"
                            .to_owned(),
                    );
                    continue;
                };
                let Ok(kind) = dirent.file_type() else {
                    continue;
                };
                self.visit(
                    &dirent.path(),
                    &rel,
                    s,
                    kind,
                    || dirent.metadata(),
                    &mut stack,
                    &mut out,
                    unshared,
                );
            }
        }
        out
    }

    /// One entry of a folder of the share folder (`rel`: the folder's
    /// relative path on disk, "" or ending with '/'; `s`: the entry's
    /// name): a file that may be shared goes to `out`, a folder to
    /// `stack`. Hidden files and folders (a leading `.`) and the data
    /// folder are left out quietly; a file or folder whose name cannot be
    /// a share name, or a symlink leaving the share folder, goes to
    /// `unshared` with its reason (a folder once, for everything under
    /// it). Symlinks to files inside the folder are shared under their
    /// own name; symlinks to folders are not followed (a loop would never
    /// end, and the folder's files are shared where they really are).
    #[allow(clippy::too_many_arguments)]
    fn visit(
        &self,
        path: &Path,
        rel: &str,
        s: &str,
        kind: fs::FileType,
        metadata: impl FnOnce() -> io::Result<fs::Metadata>,
        stack: &mut Vec<(PathBuf, String)>,
        out: &mut Vec<Candidate>,
        unshared: &mut BTreeMap<std::ffi::OsString, String>,
    ) {
        if s.starts_with('.') {
            return; // hidden and our own temp files are never shared
        }
        let disk = format!("{rel}{s}");
        let meta = if kind.is_symlink() {
            let Ok(real) = path.canonicalize() else {
                return; // dangling
            };
            if !real.starts_with(&self.share_dir) {
                unshared.insert(
                    disk.into(),
                    "it is a symlink to a file outside the share folder, which is never served"
                        .to_owned(),
                );
                return;
            }
            match fs::metadata(&real) {
                Ok(m) if m.is_file() => m,
                _ => return,
            }
        } else if kind.is_dir() {
            if path == self.data_dir {
                return;
            }
            // A folder whose name cannot be a component of a share name:
            // said once, for all it holds.
            match check_component(s) {
                Ok(()) if disk.len() < MAX_PATH_BYTES => {
                    stack.push((path.to_owned(), format!("{disk}/")));
                }
                Ok(()) => {
                    unshared.insert(
                        disk.into(),
                        format!(
                            "this folder's path is {MAX_PATH_BYTES} bytes long or more, so no file \
                             under it fits in a share name ({MAX_PATH_BYTES} bytes at most); move its files up"
                        ),
                    );
                }
                Err(why) => {
                    unshared.insert(
                        disk.into(),
                        format!(
                            "this folder's name {why}; nothing under it is shared: rename it to share its files"
                        ),
                    );
                }
            }
            return;
        } else if kind.is_file() {
            match metadata() {
                Ok(m) => m,
                Err(_) => return, // gone meanwhile
            }
        } else {
            return; // sockets, pipes, devices
        };
        let name = match disk.parse::<FileName>() {
            Ok(n) => n,
            Err(e) => {
                let why = match e {
                    peerdex_proto::ParseError::FileName { reason, .. } => reason.into_owned(),
                    other => other.to_string(),
                };
                unshared.insert(
                    disk.into(),
                    format!("its name {why}; rename it to share it"),
                );
                return;
            }
        };
        let on_disk = (disk != name.as_str()).then(|| disk.clone());
        out.push(Candidate {
            name,
            on_disk,
            raw: disk.into(),
            meta,
        });
    }

    /// Keep what the last rescan could not share; log each file when it
    /// first appears (or its reason changes), not at every rescan.
    fn note_unshared(&self, scope: &Scope, now: BTreeMap<std::ffi::OsString, String>) {
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
        match scope {
            Scope::All => *known = now,
            Scope::Paths(_) => {
                known.retain(|raw, _| !scope.covers(&raw.to_string_lossy()));
                known.extend(now);
            }
        }
    }

    // ── replicas ────────────────────────────────────────────────────────
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

    /// The tree at any depth under relative paths; hidden folders out; a
    /// folder whose name cannot be shared said once with its reason; a
    /// symlink to a folder not followed; a path looked at alone.
    #[test]
    fn the_share_folder_is_a_tree() {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("share");
        let data = root.path().join("data");
        fs::create_dir_all(share.join("Music/Album/CD 2")).unwrap();
        fs::create_dir_all(share.join(".git/objects")).unwrap();
        fs::create_dir_all(share.join("bad\u{202e}folder")).unwrap();
        fs::write(share.join("top.txt"), b"top").unwrap();
        fs::write(share.join("Music/Album/01.mp3"), b"one").unwrap();
        fs::write(share.join("Music/Album/CD 2/02.mp3"), b"two").unwrap();
        fs::write(share.join(".git/objects/x"), b"hidden").unwrap();
        fs::write(share.join("bad\u{202e}folder/a.txt"), b"a").unwrap();
        fs::write(share.join("bad\u{202e}folder/b.txt"), b"b").unwrap();
        std::os::unix::fs::symlink(share.join("Music"), share.join("loop")).unwrap();
        let store = Store::open(&share, &data).unwrap();
        let c = store.rescan().unwrap();
        let mut names: Vec<&str> = c.added.iter().map(|a| a.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["Music/Album/01.mp3", "Music/Album/CD 2/02.mp3", "top.txt"]
        );
        let (n, listed) = store.unshared(100);
        assert_eq!(n, 1, "{listed:?}");
        assert!(listed[0].0.starts_with("bad\\u{202e}folder"), "{listed:?}");
        assert!(
            listed[0].1.contains("nothing under it is shared"),
            "{listed:?}"
        );

        // One path changed: looked at alone.
        fs::write(share.join("Music/Album/CD 2/03.mp3"), b"three").unwrap();
        let c = store.rescan_paths(&[share
            .canonicalize()
            .unwrap()
            .join("Music/Album/CD 2/03.mp3")]);
        assert_eq!(c.added.len(), 1);
        assert_eq!(c.added[0].name.as_str(), "Music/Album/CD 2/03.mp3");
        // A folder removed: everything under it goes, the rest stays.
        fs::remove_dir_all(share.join("Music/Album/CD 2")).unwrap();
        let c = store.rescan_paths(&[share.canonicalize().unwrap().join("Music/Album/CD 2")]);
        assert!(c.added.is_empty());
        let mut gone: Vec<&str> = c.removed.iter().map(|r| r.1.as_str()).collect();
        gone.sort();
        assert_eq!(gone, ["Music/Album/CD 2/02.mp3", "Music/Album/CD 2/03.mp3"]);
        assert_eq!(store.totals().0, 2);
        // Nothing climbs out: a folder on the way that leads outside.
        let outside = root.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, share.join("out")).unwrap();
        let temp = store.temp_path("t");
        fs::write(&temp, b"x").unwrap();
        let (id, m) = hash_path(&temp).unwrap();
        let name: FileName = "out/x.txt".parse().unwrap();
        let e = store.add_from_temp(&temp, &name, id, m).unwrap_err();
        assert!(e.to_string().contains("leads outside"), "{e}");
        assert!(files_in(&outside).is_empty());
        // A new folder is made for a download.
        let temp = store.temp_path("t");
        fs::write(&temp, b"x").unwrap();
        let (id, m) = hash_path(&temp).unwrap();
        let name: FileName = "New/Sub/x.txt".parse().unwrap();
        store.add_from_temp(&temp, &name, id, m).unwrap();
        assert_eq!(fs::read(share.join("New/Sub/x.txt")).unwrap(), b"x");
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
