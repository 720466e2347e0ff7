//! Changes of the share folder by notification: the operating system
//! (inotify on Linux, through the `notify` crate) tells which paths
//! changed, and each is looked at again once it has been quiet for
//! [`SETTLE`] (a file being written is shared about a second after its
//! last write), without reading the rest of the tree. A burst of more
//! than [`MAX_PENDING`] changed paths, a lost notification (the kernel's
//! queue overflowed) or a watcher error asks for one full rescan instead.
//! The periodic full rescan (`PSERVER_RESCAN_SECS`) stays as a safety
//! net for what notifications cannot see (network file systems, a watch
//! that could not be set).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use peerdex_common::sync::lock;
use tokio::sync::Notify;

/// How long a path must be quiet before it is looked at.
pub const SETTLE: Duration = Duration::from_millis(1000);
/// Most changed paths waiting to settle; past it, one full rescan does
/// the work (a big copy into the share folder costs one walk, not one
/// look per file) and the paths are dropped.
pub const MAX_PENDING: usize = 4096;

/// What changed, to be looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// These paths (files or folders) changed and are quiet now.
    Paths(Vec<PathBuf>),
    /// Notifications were lost or too many: rescan the whole tree.
    Rescan(&'static str),
}

#[derive(Default)]
struct Pending {
    paths: HashMap<PathBuf, Instant>,
    /// Why a full rescan is needed, if it is.
    rescan: Option<&'static str>,
}

impl Pending {
    fn overflow(&mut self, why: &'static str) {
        self.paths.clear();
        self.rescan.get_or_insert(why);
    }
}

/// The watch on the share folder tree and the paths waiting to settle.
pub struct ShareWatch {
    /// `None` when no watch could be set: rescans only.
    watcher: Option<RecommendedWatcher>,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
}

impl ShareWatch {
    /// Watch `share_dir` and everything under it (folders made later
    /// too). If the system refuses (no inotify, too many watches), say so
    /// and go on with the periodic rescans only.
    pub fn start(share_dir: &Path) -> Self {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let wake = Arc::new(Notify::new());
        let root = share_dir.to_owned();
        // Hidden files and folders (ours too: temp files, a data folder
        // inside) are never shared: their changes are not looked at.
        let hidden = move |path: &Path| {
            path.strip_prefix(&root).is_ok_and(|rel| {
                rel.components()
                    .any(|c| c.as_os_str().to_str().is_some_and(|s| s.starts_with('.')))
            })
        };
        let handler = {
            let (pending, wake) = (pending.clone(), wake.clone());
            move |event: notify::Result<notify::Event>| {
                let mut p = lock(&pending);
                match event {
                    Ok(e) if e.need_rescan() => p.overflow("the system dropped notifications"),
                    Ok(e) => {
                        // Reads (ours too, serving or hashing) change nothing.
                        if matches!(e.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write))
                        {
                            return;
                        }
                        let now = Instant::now();
                        for path in e.paths {
                            if p.rescan.is_some() {
                                break;
                            }
                            if hidden(&path) {
                                continue;
                            }
                            if p.paths.len() >= MAX_PENDING && !p.paths.contains_key(&path) {
                                p.overflow("more changed paths than are looked at one by one");
                                break;
                            }
                            p.paths.insert(path, now);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "share folder watch error; rescanning");
                        p.overflow("the watch reported an error");
                    }
                }
                drop(p);
                wake.notify_one();
            }
        };
        let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
            w.configure(notify::Config::default().with_follow_symlinks(false))?;
            w.watch(share_dir, RecursiveMode::Recursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, dir = %share_dir.display(),
                    "cannot watch the share folder for changes; only the periodic rescans \
                     (PSERVER_RESCAN_SECS) will see new files (on Linux, raise fs.inotify.max_user_watches)");
                None
            }
        };
        Self {
            watcher,
            pending,
            wake,
        }
    }

    /// Whether notifications come (else only rescans see changes).
    pub fn is_watching(&self) -> bool {
        self.watcher.is_some()
    }

    /// The next batch to look at: paths quiet for [`SETTLE`], or a full
    /// rescan. Waits as long as nothing is due.
    pub async fn next(&self) -> Batch {
        loop {
            let wait = {
                let mut p = lock(&self.pending);
                if let Some(why) = p.rescan.take() {
                    p.paths.clear();
                    return Batch::Rescan(why);
                }
                let now = Instant::now();
                let mut due = Vec::new();
                let mut next: Option<Instant> = None;
                p.paths.retain(|path, at| {
                    let ready = *at + SETTLE;
                    if ready <= now {
                        due.push(path.clone());
                        false
                    } else {
                        next = Some(next.map_or(ready, |n| n.min(ready)));
                        true
                    }
                });
                if !due.is_empty() {
                    due.sort();
                    return Batch::Paths(due);
                }
                next.map(|n| n - now)
            };
            match wait {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_written_file_is_told_once_quiet_and_a_flood_asks_for_a_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let w = ShareWatch::start(&root);
        assert!(w.is_watching());
        std::fs::create_dir(root.join("sub")).unwrap();
        let at = Instant::now();
        std::fs::write(root.join("sub/a.txt"), b"a").unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                // The new folder (read in full: a file made in it before its
                // own watch was set is found so), or the file itself.
                if let Batch::Paths(p) = w.next().await
                    && (p.contains(&root.join("sub")) || p.contains(&root.join("sub/a.txt")))
                {
                    return p;
                }
            }
        })
        .await
        .expect("the write is told");
        assert!(
            at.elapsed() >= SETTLE,
            "told before it was quiet: {batch:?}"
        );
        // A flood: more paths than are looked at one by one.
        for i in 0..=MAX_PENDING {
            lock(&w.pending)
                .paths
                .insert(root.join(format!("f{i}")), Instant::now());
        }
        std::fs::write(root.join("one-more"), b"x").unwrap();
        let b = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("a batch");
        assert!(matches!(b, Batch::Rescan(_)), "{b:?}");
    }
}
