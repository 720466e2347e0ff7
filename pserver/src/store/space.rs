//! Free space: the reserve kept free for the user (`PSERVER_MIN_FREE_BYTES`),
//! what transfers in progress were promised, and clear errors when a disk
//! fills up anyway.
//!
//! Before a download creates its partial, and before an upload writes a
//! byte, a [`Claim`] checks that what it will write still leaves the reserve
//! free, counting the bytes other transfers in progress were promised but
//! have not written yet (two downloads that each fit alone cannot fill the
//! disk together). A claim shrinks as its transfer writes and is given back
//! when it ends.
//!
//! Free space is what an unprivileged program may still write to the
//! folder's file system (`statvfs` `f_bavail`, through `rustix`: a safe
//! wrapper already in our dependency tree through `tempfile`, so no FFI of
//! our own and no new crate); blocks reserved for root are not ours to use.
//!
//! A disk can still fill up (another program writes to it, a quota): every
//! write path turns ENOSPC / EDQUOT into an error naming the folder and the
//! figures ([`Space::explain`]) and leaves nothing half-written visible.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, NoRoom};

/// The reserve, the partial cap and the claims of transfers in progress;
/// shared by the store, the download jobs and the upload handler.
#[derive(Debug)]
pub struct Space {
    min_free: u64,
    max_partial: u64,
    /// Claim id → bytes promised and not written yet.
    claims: Mutex<HashMap<u64, u64>>,
    next: AtomicU64,
}

/// A transfer's promise of bytes it has not written yet; given back when
/// dropped.
#[derive(Debug)]
pub struct Claim {
    space: Arc<Space>,
    id: u64,
}

/// Not enough free space for a transfer: the figures, and the setting that
/// keeps the reserve.
#[derive(Debug, Clone, thiserror::Error)]
pub struct NoSpace {
    pub what: String,
    pub folder: PathBuf,
    pub need: u64,
    pub free: u64,
    pub reserve: u64,
    /// Promised to other transfers in progress, not written yet.
    pub pending: u64,
}

impl fmt::Display for NoSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not enough free space in {} for {}: needs {}, free {}, and PSERVER_MIN_FREE_BYTES keeps {} free",
            self.folder.display(),
            self.what,
            Bytes(self.need),
            Bytes(self.free),
            Bytes(self.reserve)
        )?;
        if self.pending > 0 {
            write!(
                f,
                "; {} more are promised to transfers in progress (try again once they end)",
                Bytes(self.pending)
            )?;
        }
        if self.reserve > 0 {
            write!(f, "; free some space or lower PSERVER_MIN_FREE_BYTES")
        } else {
            write!(f, "; free some space")
        }
    }
}

/// A byte count for people: `1.5 GiB (1610612736 bytes)`.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} bytes");
        }
        let mut v = n as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit < UNITS.len() - 1 {
            v /= 1024.0;
            unit += 1;
        }
        write!(f, "{v:.1} {} ({n} bytes)", UNITS[unit])
    }
}

/// Bytes an unprivileged program may still write to `dir`'s file system
/// (the nearest existing folder's, if `dir` is not created yet).
pub fn available(dir: &Path) -> io::Result<u64> {
    let mut at = dir;
    loop {
        match rustix::fs::statvfs(at) {
            Ok(s) => return Ok(s.f_bavail.saturating_mul(s.f_frsize)),
            Err(rustix::io::Errno::NOENT) if at.parent().is_some() => {
                at = at.parent().unwrap_or(at);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Is this error a full disk or an exhausted quota?
pub fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Do `a` and `b` live on the same file system?
pub fn same_fs(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

impl Space {
    /// `min_free`: `PSERVER_MIN_FREE_BYTES`; `max_partial`:
    /// `PSERVER_MAX_PARTIAL_BYTES` (0 = no cap).
    pub fn new(min_free: u64, max_partial: u64) -> Self {
        Self {
            min_free,
            max_partial,
            claims: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// `PSERVER_MAX_PARTIAL_BYTES`; 0 = no cap.
    pub fn max_partial(&self) -> u64 {
        self.max_partial
    }

    /// Promise `need` bytes in `dir` to a transfer (`what`, for the error),
    /// if they fit without cutting into the reserve or into what other
    /// transfers were promised.
    pub fn claim(self: &Arc<Self>, dir: &Path, need: u64, what: &str) -> Result<Claim, NoSpace> {
        let free = self.free(dir);
        let mut claims = self.claims.lock().unwrap();
        let pending = claims.values().sum();
        self.fits(dir, need, free, pending, what)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        claims.insert(id, need);
        Ok(Claim {
            space: self.clone(),
            id,
        })
    }

    /// Would `need` more bytes in `dir` fit (besides every claim)? For a
    /// look before anything is promised.
    pub fn check(&self, dir: &Path, need: u64, what: &str) -> Result<(), NoSpace> {
        let free = self.free(dir);
        let pending = self.claims.lock().unwrap().values().sum();
        self.fits(dir, need, free, pending, what)
    }

    fn fits(
        &self,
        dir: &Path,
        need: u64,
        free: u64,
        pending: u64,
        what: &str,
    ) -> Result<(), NoSpace> {
        let wanted = need.saturating_add(self.min_free).saturating_add(pending);
        if wanted > free {
            return Err(NoSpace {
                what: what.to_owned(),
                folder: dir.to_owned(),
                need,
                free,
                reserve: self.min_free,
                pending,
            });
        }
        Ok(())
    }

    fn free(&self, dir: &Path) -> u64 {
        available(dir).unwrap_or_else(|e| {
            // Never the case for a folder we just created; do not block on it.
            tracing::warn!(folder = %dir.display(), error = %e, "cannot read the free space of a folder");
            u64::MAX
        })
    }

    /// `e` unchanged, unless it says the disk (or a quota) is full: then an
    /// error of the same kind that names the folder and the figures.
    pub fn explain(&self, e: io::Error, dir: &Path) -> io::Error {
        // An OS error carries no inner error; ours (already explained) do.
        if !is_full(&e) || e.get_ref().is_some() {
            return e;
        }
        let free = available(dir).unwrap_or(0);
        io::Error::new(
            e.kind(),
            format!(
                "no space left on device in {}: free {}, PSERVER_MIN_FREE_BYTES keeps {} free ({e}); free some space and try again",
                dir.display(),
                Bytes(free),
                Bytes(self.min_free)
            ),
        )
    }
}

impl Claim {
    /// The transfer has `remaining` bytes left to write.
    pub fn set_remaining(&self, remaining: u64) {
        if let Some(v) = self.space.claims.lock().unwrap().get_mut(&self.id) {
            *v = remaining;
        }
    }

    /// With `remaining` bytes left to write, does the transfer still fit in
    /// `dir` (the disk may have filled meanwhile)?
    pub fn recheck(&self, dir: &Path, remaining: u64, what: &str) -> Result<(), NoSpace> {
        let free = self.space.free(dir);
        let mut claims = self.space.claims.lock().unwrap();
        if let Some(v) = claims.get_mut(&self.id) {
            *v = remaining;
        }
        let others = claims
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, v)| *v)
            .sum();
        self.space.fits(dir, remaining, free, others, what)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut c) = self.space.claims.lock() {
            c.remove(&self.id);
        }
    }
}

/// An i/o error writing into `dir` for a client: a full disk is answered 507
/// (Insufficient Storage) with the folder and the figures, anything else is
/// ours (500).
pub(crate) fn disk_error(space: &Space, e: io::Error, dir: &Path) -> Error {
    let e = space.explain(e, dir);
    if is_full(&e) {
        Error::InsufficientStorage(NoRoom::Full(e))
    } else {
        Error::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_count_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let free = available(dir.path()).unwrap();
        assert!(free > 0);
        let s = Arc::new(Space::new(0, 0));
        // Half the free space each: the second does not fit besides the first.
        let a = s.claim(dir.path(), free / 2 + free / 8, "a").unwrap();
        let e = s.claim(dir.path(), free / 2 + free / 8, "b").unwrap_err();
        assert_eq!(e.pending, free / 2 + free / 8);
        assert!(e.to_string().contains("PSERVER_MIN_FREE_BYTES"), "{e}");
        // Written meanwhile: the claim shrinks.
        a.set_remaining(0);
        let b = s.claim(dir.path(), free / 4, "b").unwrap();
        drop((a, b));
        assert!(s.claims.lock().unwrap().is_empty());
        // The reserve counts like a claim.
        let s = Arc::new(Space::new(free * 2, 0));
        let e = s.check(dir.path(), 1 << 20, "c").unwrap_err();
        assert_eq!((e.need, e.reserve), (1 << 20, free * 2));
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(Bytes(512).to_string(), "512 bytes");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB (1610612736 bytes)");
    }

    #[test]
    fn a_full_disk_is_explained_once() {
        let s = Space::new(7, 0);
        let dir = tempfile::tempdir().unwrap();
        let e = s.explain(io::Error::from_raw_os_error(28), dir.path());
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let msg = e.to_string();
        assert!(msg.starts_with("no space left on device in "), "{msg}");
        assert!(
            msg.contains("PSERVER_MIN_FREE_BYTES keeps 7 bytes free"),
            "{msg}"
        );
        assert_eq!(s.explain(e, dir.path()).to_string(), msg);
        let other = s.explain(io::Error::from_raw_os_error(13), dir.path());
        assert_eq!(other.kind(), io::ErrorKind::PermissionDenied);
    }
}
