//! Small files written whole or not at all.
//!
//! A writer makes a temporary file beside the target (`<name>.tmp-<pid>`),
//! writes and syncs it, then renames it over the target: a reader sees the
//! old file or the new one, never a part. On failure (a full disk) the
//! previous version stays and the temporary file is removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension(format!("tmp-{}", std::process::id()))
}

fn write_via_tmp(
    path: &Path,
    options: &fs::OpenOptions,
    write: impl FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = tmp_path(path);
    let written = options.open(&tmp).and_then(|f| {
        let mut w = io::BufWriter::with_capacity(64 * 1024, f);
        write(&mut w)?;
        let f = w.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_all()
    });
    let result = written.and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write a small file atomically (temp + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    write_via_tmp(path, &options, |w| io::Write::write_all(w, bytes))
}

/// [`write_atomic`] for a file written piece by piece: `write` streams the
/// content into a buffered writer (the whole file is never in memory at
/// once; a big index is serialized straight to disk). The target is
/// replaced only if `write` succeeds.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    write_via_tmp(path, &options, write)
}

/// Write a secret (a key, a token) atomically, readable by its owner only
/// from the first byte on.
pub fn write_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let _ = fs::remove_file(tmp_path(path));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    write_via_tmp(path, &options, |w| io::Write::write_all(w, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"first, and longer").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_streamed_write_lands_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        write_atomic_with(&path, |w| {
            for i in 0..100_000u32 {
                io::Write::write_all(w, &i.to_be_bytes())?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 400_000);
        // A writer that fails half way: the old file stays, no temporary.
        let failed = write_atomic_with(&path, |w| {
            io::Write::write_all(w, &[0; 100_000])?;
            Err(io::Error::other("serializer failed"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "serializer failed");
        assert_eq!(fs::metadata(&path).unwrap().len(), 400_000);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").unwrap();
        // The rename cannot land on a non-empty folder of the target's name.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_atomic(&blocked, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(!tmp_path(&blocked).exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_is_private_from_the_first_byte() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_secret(&path, b"s3cret").unwrap();
        write_secret(&path, b"again").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"again");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
