//! Hashing new and changed files of the share folder on a bounded number
//! of threads, with progress the status shows ("hashing 1,234 of 50,000").

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use peerdex_proto::FileName;

use super::scan::{HASH_BUF, hash_path_with};
use super::{Entry, Store};

/// At most this many files are hashed at once (fewer on a machine with
/// fewer cores): hashing a big library keeps the rest of the machine, and
/// the PServer's own serving, responsive.
pub const MAX_HASH_THREADS: usize = 4;

/// A file to hash: its share name, size and mtime as seen by the scan, and
/// its relative path as spelt on disk when not as its name.
pub(super) type Todo = (FileName, u64, u128, Option<String>);

/// Progress of the hashing under way: files hashed and files to hash in
/// this batch (both 0 when idle).
#[derive(Debug, Default)]
pub(super) struct Progress {
    done: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    /// (hashed, of) in the batch under way; `None` when idle.
    pub(super) fn get(&self) -> Option<(u64, u64)> {
        let total = self.total.load(Ordering::Relaxed);
        (total > 0).then(|| (self.done.load(Ordering::Relaxed).min(total), total))
    }
}

impl Store {
    /// Hash `todo` on at most [`MAX_HASH_THREADS`] threads; files that
    /// cannot be read go to `unshared` with why, files whose size changed
    /// while hashing (still being written) are left for the next scan or
    /// notification. Returns the entries, in no particular order.
    pub(super) fn hash_all(
        &self,
        todo: Vec<Todo>,
        unshared: &mut BTreeMap<OsString, String>,
    ) -> Vec<Entry> {
        if todo.is_empty() {
            return Vec::new();
        }
        let progress = &self.hashing;
        progress
            .total
            .fetch_add(todo.len() as u64, Ordering::Relaxed);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_HASH_THREADS)
            .min(todo.len());
        let next = AtomicUsize::new(0);
        let entries = Mutex::new(Vec::with_capacity(todo.len()));
        let failed = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut buf = vec![0u8; HASH_BUF];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((name, size, mtime, on_disk)) = todo.get(i) else {
                            break;
                        };
                        let disk = on_disk.as_deref().unwrap_or(name.as_str());
                        let path = self.share_dir.join(disk);
                        self.hashed.fetch_add(1, Ordering::Relaxed);
                        let hashed = hash_path_with(&path, &mut buf);
                        progress.done.fetch_add(1, Ordering::Relaxed);
                        match hashed {
                            Ok((id, m)) if m.size() == *size => {
                                peerdex_common::sync::lock(&entries).push(Entry {
                                    name: name.clone(),
                                    on_disk: on_disk.clone(),
                                    id,
                                    size: *size,
                                    mtime_ns: *mtime,
                                    manifest: std::sync::Arc::new(m),
                                    replica: false,
                                });
                            }
                            // Still being written: picked up once it settles.
                            Ok(_) => {}
                            Err(e) => peerdex_common::sync::lock(&failed)
                                .push((OsString::from(disk), format!("it cannot be read: {e}"))),
                        }
                    }
                });
            }
        });
        // The batch is done: idle again once no other batch runs.
        let n = todo.len() as u64;
        if progress.total.fetch_sub(n, Ordering::Relaxed) == n {
            progress.done.store(0, Ordering::Relaxed);
        } else {
            progress.done.fetch_sub(n, Ordering::Relaxed);
        }
        unshared.extend(failed.into_inner().unwrap_or_else(|p| p.into_inner()));
        entries.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// Files being hashed now: (hashed, of); `None` when idle.
    pub fn hashing(&self) -> Option<(u64, u64)> {
        self.hashing.get()
    }
}
