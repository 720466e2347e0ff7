//! The keys of private files at rest, and the private folder.
//!
//! `data/private-keys.json` (mode 0600, written whole with
//! `peerdex_common::fs::write_secret`) maps each ciphertext id to its
//! ticket (which holds the key), where the key comes from (owned or
//! received) and, for a file opened here, its name in the private folder.
//! Nothing of it is ever logged.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use peerdex_proto::private::{PrivateFile, PrivateOrigin};
use peerdex_proto::ticket::Ticket;
use peerdex_proto::{FileId, FileName, PeerUrl};
use serde::{Deserialize, Serialize};

use super::crypt::{self, CryptError};

/// One key in `private-keys.json`.
#[derive(Clone, Serialize, Deserialize)]
struct Record {
    ticket: String,
    origin: PrivateOrigin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    saved_as: Option<String>,
    created_unix: u64,
}

/// Why the private folder or the keys cannot be used (at start).
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "PSERVER_PRIVATE_DIR {} is inside PSERVER_SHARE_DIR {} (or contains it): the share folder is public, a private file's plaintext must stay out of it",
        private.display(), share.display()
    )]
    InShare { private: PathBuf, share: PathBuf },
    #[error("cannot create PSERVER_PRIVATE_DIR {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error("cannot read the keys of private files ({}): {source}; fix or move that file", path.display())]
    Keys { path: PathBuf, source: io::Error },
}

/// Why a private file could not be opened into the private folder.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error("cannot write into PSERVER_PRIVATE_DIR {}: {source}", dir.display())]
    Folder { dir: PathBuf, source: io::Error },
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Crypt(CryptError::Io(e))
    }
}

/// The keys this PServer holds and the private folder, as a handle.
pub(crate) struct Vault {
    keys_path: PathBuf,
    dir: PathBuf,
    records: Mutex<BTreeMap<FileId, Record>>,
    /// This peer's peer API, the hint in the tickets it makes.
    public_url: PeerUrl,
}

impl Vault {
    /// Open the keys in `data_dir` and create the private folder (0700),
    /// which must be neither inside `share_dir` nor contain it.
    pub(crate) fn open(
        data_dir: &Path,
        private_dir: &Path,
        share_dir: &Path,
        public_url: PeerUrl,
    ) -> Result<Self, VaultError> {
        let dir_err = |source| VaultError::Dir {
            dir: private_dir.to_owned(),
            source,
        };
        fs::create_dir_all(private_dir).map_err(dir_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(private_dir, fs::Permissions::from_mode(0o700));
        }
        let dir = private_dir.canonicalize().map_err(dir_err)?;
        let share = share_dir.canonicalize().unwrap_or(share_dir.to_owned());
        if dir.starts_with(&share) || share.starts_with(&dir) {
            return Err(VaultError::InShare {
                private: dir,
                share,
            });
        }
        let keys_path = data_dir.join("private-keys.json");
        let records: BTreeMap<String, Record> = match fs::read(&keys_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| VaultError::Keys {
                path: keys_path.clone(),
                source: io::Error::other(e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(VaultError::Keys {
                    path: keys_path,
                    source,
                });
            }
        };
        // Keyed by the ciphertext's id in hex on disk.
        let records = records
            .into_iter()
            .filter_map(|(id, r)| Some((id.parse::<FileId>().ok()?, r)))
            .collect();
        Ok(Self {
            keys_path,
            dir,
            records: Mutex::new(records),
            public_url,
        })
    }

    /// The private folder (`PSERVER_PRIVATE_DIR`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// This peer's peer API URL, the holder hint of the tickets it makes.
    pub(crate) fn public_url(&self) -> &PeerUrl {
        &self.public_url
    }

    /// Every key held, oldest first; `held` says which ciphertexts this
    /// PServer keeps.
    pub(crate) fn list(&self, held: impl Fn(&FileId) -> bool) -> Vec<PrivateFile> {
        let records = self.records.lock().unwrap();
        let mut files: Vec<PrivateFile> = records
            .iter()
            .filter_map(|(id, r)| describe(id, r, held(id)))
            .collect();
        files.sort_by_key(|f| f.created_unix);
        files
    }

    /// The key of `id`, described.
    pub(crate) fn get(&self, id: &FileId, held: bool) -> Option<PrivateFile> {
        let records = self.records.lock().unwrap();
        describe(id, records.get(id)?, held)
    }

    /// Keep the key of a file uploaded here.
    pub(crate) fn add_owned(&self, ticket: &Ticket) -> io::Result<()> {
        self.update(|r| {
            r.insert(
                ticket.file_id,
                Record {
                    ticket: ticket.encode(),
                    origin: PrivateOrigin::Owned,
                    saved_as: None,
                    created_unix: now(),
                },
            );
        })
    }

    /// Keep the key of a file opened here into the private folder as
    /// `saved_as` (a key held already keeps its origin).
    pub(crate) fn add_opened(&self, ticket: &Ticket, saved_as: &FileName) -> io::Result<()> {
        self.update(|r| {
            let rec = r.entry(ticket.file_id).or_insert_with(|| Record {
                ticket: ticket.encode(),
                origin: PrivateOrigin::Received,
                saved_as: None,
                created_unix: now(),
            });
            rec.saved_as = Some(saved_as.to_string());
        })
    }

    /// Forget the key of `id` and delete the plaintext this PServer saved
    /// of it in the private folder; the key as it was, if there was one.
    pub(crate) fn remove(&self, id: &FileId, held: bool) -> io::Result<Option<PrivateFile>> {
        let mut records = self.records.lock().unwrap();
        let Some(rec) = records.get(id).cloned() else {
            return Ok(None);
        };
        let before = describe(id, &rec, held);
        records.remove(id);
        if let Err(e) = self.save(&records) {
            records.insert(*id, rec);
            return Err(e);
        }
        drop(records);
        if let Some(saved) = rec.saved_as.and_then(|n| n.parse::<FileName>().ok()) {
            let _ = fs::remove_file(self.dir.join(saved.as_str()));
        }
        Ok(before)
    }

    /// The plaintext of `id` this PServer saved in the private folder, if
    /// it is still there: its path and name.
    pub(crate) fn saved(&self, id: &FileId) -> Option<(PathBuf, FileName)> {
        let records = self.records.lock().unwrap();
        let name: FileName = records.get(id)?.saved_as.as_deref()?.parse().ok()?;
        let path = self.dir.join(name.as_str());
        path.is_file().then_some((path, name))
    }

    /// Open the ciphertext `src` (`len` bytes) with `ticket` into `temp`
    /// (a fresh path in the data folder), then move it into the private
    /// folder under the ticket's name (or `stem (id12).ext` when taken):
    /// the plaintext appears there whole and authenticated, or not at all.
    /// A plaintext saved here before from the same ticket is answered at
    /// once. Blocking. The name it is saved under.
    pub(crate) fn open_into_folder(
        &self,
        src: &mut impl Read,
        len: u64,
        ticket: &Ticket,
        temp: &Path,
    ) -> Result<FileName, OpenError> {
        if let Some(name) = self.saved_whole(ticket) {
            return Ok(name);
        }
        open_to_temp(src, len, ticket, temp)?;
        self.place(temp, ticket)
    }

    /// The name of the plaintext of `ticket` saved here before, if it is
    /// still there whole.
    pub(crate) fn saved_whole(&self, ticket: &Ticket) -> Option<FileName> {
        let (path, name) = self.saved(&ticket.file_id)?;
        fs::metadata(&path)
            .is_ok_and(|m| m.len() == ticket.size)
            .then_some(name)
    }

    /// Move the authenticated plaintext `temp` (made by [`open_to_temp`])
    /// into the private folder without replacing anything there, and keep
    /// its key; `temp` is gone either way. Blocking. The name it is saved
    /// under.
    pub(crate) fn place(&self, temp: &Path, ticket: &Ticket) -> Result<FileName, OpenError> {
        let placed = self.place_temp(temp, ticket);
        if placed.is_err() {
            let _ = fs::remove_file(temp);
        }
        placed
    }

    fn place_temp(&self, temp: &Path, ticket: &Ticket) -> Result<FileName, OpenError> {
        let folder = |source| OpenError::Folder {
            dir: self.dir.clone(),
            source,
        };
        let base = ticket.name.clone();
        let short = ticket.file_id.short();
        let candidates = std::iter::once(base.clone())
            .chain((0..100).filter_map(|n| alternative(&base, &short, n)));
        for name in candidates {
            let dest = self.dir.join(name.as_str());
            match fs::hard_link(temp, &dest) {
                Ok(()) => {
                    let _ = fs::remove_file(temp);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) => {
                    // Another file system: copy beside it, then rename.
                    if dest.exists() {
                        continue;
                    }
                    let side = self
                        .dir
                        .join(format!(".peerdex-{}.part", uuid::Uuid::new_v4()));
                    let copied = fs::copy(temp, &side).and_then(|_| {
                        let f = fs::File::open(&side)?;
                        f.sync_all()
                    });
                    if let Err(e) = copied.and_then(|()| fs::rename(&side, &dest)) {
                        let _ = fs::remove_file(&side);
                        return Err(folder(e));
                    }
                    let _ = fs::remove_file(temp);
                }
            }
            if let Ok(dir) = fs::File::open(&self.dir) {
                let _ = dir.sync_all();
            }
            self.add_opened(ticket, &name).map_err(folder)?;
            return Ok(name);
        }
        Err(folder(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free name for {short}: rename files in the private folder"),
        )))
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<FileId, Record>)) -> io::Result<()> {
        let mut records = self.records.lock().unwrap();
        let before = records.clone();
        change(&mut records);
        let saved = self.save(&records);
        if saved.is_err() {
            *records = before;
        }
        saved
    }

    fn save(&self, records: &BTreeMap<FileId, Record>) -> io::Result<()> {
        let by_hex: BTreeMap<String, &Record> =
            records.iter().map(|(id, r)| (id.to_hex(), r)).collect();
        let bytes = serde_json::to_vec_pretty(&by_hex).map_err(io::Error::other)?;
        peerdex_common::fs::write_secret(&self.keys_path, &bytes)
    }
}

/// Plaintext written between two background flushes of [`open_to_temp`].
const FLUSH_EVERY: u64 = 32 << 20;

/// Open the ciphertext read from `src` (`len` bytes, read in order) with
/// `ticket` into `temp` (a fresh path in the data folder, mode 0600), each
/// segment authenticated before it is written, then fsync'd: on success
/// `temp` holds the whole authenticated plaintext, not yet in the private
/// folder ([`Vault::place`] puts it there); on failure `temp` is deleted.
/// A thread flushes what is written every [`FLUSH_EVERY`] bytes while the
/// opening goes on, so the final fsync has little left to write. Blocking.
pub(crate) fn open_to_temp(
    src: &mut impl Read,
    len: u64,
    ticket: &Ticket,
    temp: &Path,
) -> Result<(), OpenError> {
    let opened = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(temp)?;
        let syncing = file.try_clone()?;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(0);
            // An error of a background flush is kept for the caller (the
            // kernel reports a write-back error once).
            let flusher = scope.spawn(move || {
                while rx.recv().is_ok() {
                    syncing.sync_data()?;
                }
                Ok::<_, io::Error>(())
            });
            let mut out = Flushing {
                file: &file,
                unflushed: 0,
                tx: Some(tx),
            };
            let opened = crypt::open(src, len, ticket, &mut out);
            out.tx = None;
            let flushed = flusher
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("flush thread panicked")));
            opened?;
            flushed?;
            Ok::<_, OpenError>(())
        })?;
        file.sync_all()?;
        Ok::<_, OpenError>(())
    })();
    if opened.is_err() {
        let _ = fs::remove_file(temp);
    }
    opened
}

/// Writes straight to the file (the segments are 64 KiB already) and asks
/// the flush thread to flush every [`FLUSH_EVERY`] bytes (skipped while it
/// is still busy with the last one).
struct Flushing<'a> {
    file: &'a fs::File,
    unflushed: u64,
    tx: Option<std::sync::mpsc::SyncSender<()>>,
}

impl Write for Flushing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.unflushed += n as u64;
        if self.unflushed >= FLUSH_EVERY
            && let Some(tx) = &self.tx
            && tx.try_send(()).is_ok()
        {
            self.unflushed = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `stem (id12).ext`, then `stem (id12-2).ext`, …
fn alternative(base: &FileName, short: &str, n: u32) -> Option<FileName> {
    let s = base.as_str();
    let (stem, ext) = match s.rfind('.') {
        Some(i) if i > 0 => (&s[..i], &s[i..]),
        _ => (s, ""),
    };
    let tag = if n == 0 {
        short.to_owned()
    } else {
        format!("{short}-{}", n + 1)
    };
    let mut stem = stem.to_owned();
    while stem.len() + ext.len() + tag.len() + 3 > peerdex_proto::types::MAX_NAME_BYTES {
        stem.pop();
    }
    format!("{stem} ({tag}){ext}").parse().ok()
}

fn describe(id: &FileId, r: &Record, held: bool) -> Option<PrivateFile> {
    let t: Ticket = r.ticket.parse().ok()?;
    Some(PrivateFile {
        file_id: id.to_hex(),
        name: t.name.to_string(),
        size: t.size,
        ciphertext_size: crypt::ciphertext_size(t.size),
        ticket: r.ticket.clone(),
        origin: r.origin,
        held,
        saved_as: r.saved_as.clone(),
        created_unix: r.created_unix,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::private::crypt::{CIPHER, Sealer, fresh_key};
    use peerdex_proto::ticket::Cipher;

    fn sealed(plain: &[u8], name: &str, dir: &Path) -> (Ticket, PathBuf) {
        sealed_with(CIPHER, plain, name, dir)
    }

    fn sealed_with(cipher: Cipher, plain: &[u8], name: &str, dir: &Path) -> (Ticket, PathBuf) {
        let (key, nonce) = fresh_key().unwrap();
        let mut s = Sealer::new(cipher, &key, &nonce);
        let mut ct = Vec::new();
        s.push(plain, &mut ct).unwrap();
        s.finish(&mut ct).unwrap();
        let path = dir.join("ct");
        fs::write(&path, &ct).unwrap();
        let t = Ticket {
            file_id: FileId::from_bytes(*blake3::hash(&ct).as_bytes()),
            cipher,
            key,
            nonce,
            size: plain.len() as u64,
            name: name.parse().unwrap(),
            hints: Vec::new(),
        };
        (t, path)
    }

    #[test]
    fn opened_files_land_whole_in_the_private_folder_and_keys_are_secret() {
        let root = tempfile::tempdir().unwrap();
        let (data, share, private) = (
            root.path().join("data"),
            root.path().join("share"),
            root.path().join("data/private"),
        );
        fs::create_dir_all(&share).unwrap();
        let url: PeerUrl = "http://127.0.0.1:1".parse().unwrap();
        let v = Vault::open(&data, &private, &share, url.clone()).unwrap();
        let (t, ct) = sealed(b"secret marker", "note.txt", root.path());
        let mut f = fs::File::open(&ct).unwrap();
        let name = v
            .open_into_folder(&mut f, 13 + 16, &t, &data.join("t1"))
            .unwrap();
        assert_eq!(name.as_str(), "note.txt");
        assert_eq!(
            fs::read(private.join("note.txt")).unwrap(),
            b"secret marker"
        );
        assert!(!data.join("t1").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join("private-keys.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let listed = v.list(|_| false);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].origin, PrivateOrigin::Received);
        assert_eq!(listed[0].saved_as.as_deref(), Some("note.txt"));

        // Another file of the same name gets its own; a wrong key writes nothing.
        let (t2, ct2) = sealed(b"other", "note.txt", root.path());
        let mut f = fs::File::open(&ct2).unwrap();
        let n2 = v
            .open_into_folder(&mut f, 5 + 16, &t2, &data.join("t2"))
            .unwrap();
        assert_eq!(n2.as_str(), format!("note ({}).txt", t2.file_id.short()));
        let mut wrong = t2.clone();
        wrong.file_id = FileId::from_bytes([1; 32]);
        wrong.key.0[3] ^= 1;
        let mut f = fs::File::open(&ct2).unwrap();
        let e = v
            .open_into_folder(&mut f, 5 + 16, &wrong, &data.join("t3"))
            .unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
        assert!(!data.join("t3").exists());
        assert_eq!(fs::read_dir(&private).unwrap().count(), 2);

        // A file sealed before version 2 (ChaCha20-Poly1305), its ticket
        // read back from its text form, still opens.
        let (t1, ct1) = sealed_with(Cipher::ChaCha20Poly1305, b"old one", "old.txt", root.path());
        let t1: Ticket = t1.encode().parse().unwrap();
        assert_eq!(t1.cipher, Cipher::ChaCha20Poly1305);
        let mut f = fs::File::open(&ct1).unwrap();
        v.open_into_folder(&mut f, 7 + 16, &t1, &data.join("t4"))
            .unwrap();
        assert_eq!(fs::read(private.join("old.txt")).unwrap(), b"old one");
        assert!(v.remove(&t1.file_id, false).unwrap().is_some());

        // Kept across a restart; removal deletes key and plaintext.
        drop(v);
        let v = Vault::open(&data, &private, &share, url.clone()).unwrap();
        assert_eq!(v.list(|_| true).len(), 2);
        assert!(v.remove(&t.file_id, false).unwrap().is_some());
        assert!(!private.join("note.txt").exists());
        assert!(v.remove(&t.file_id, false).unwrap().is_none());

        // A private folder inside the share folder is refused.
        let e = Vault::open(&data, &share.join("p"), &share, url)
            .err()
            .unwrap();
        assert!(e.to_string().contains("PSERVER_PRIVATE_DIR"), "{e}");
    }
}
