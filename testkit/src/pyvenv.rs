//! A cached Python virtualenv holding packages from PyPI, for tests that
//! drive a real outside tool (the Prometheus parser, a browser through
//! Playwright).
//!
//! The venv lives at `target/<cache name>/<hash of the Python version and
//! the requirements>` and is installed **in place**: a venv cannot be moved
//! after it is built (its console scripts name their interpreter by
//! absolute path in their shebang line). Test processes running at the same
//! time take turns through an exclusive `flock` on a lock file beside the
//! folder (released by the kernel even if the holder is killed), and a
//! `.complete` marker is written last: a folder without it is the remains
//! of an interrupted install and is wiped and done again.
//!
//! The first run needs PyPI (pip's own settings such as `PIP_INDEX_URL`
//! apply); without it the caller's test fails and says why: nothing is
//! skipped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Why a venv could not be had.
#[derive(Debug)]
pub enum Failure {
    /// `$PYTHON` (default `python3`) does not run.
    NoPython { python: String, detail: String },
    /// `python -m venv` failed (Debian: the `python3-venv` package).
    NoVenv { python: String, stderr: String },
    /// `pip install` failed (PyPI unreachable, no such version, ...).
    Pip { status: String, stderr: String },
    /// The cache folder or its lock file could not be made.
    Io { what: String, error: std::io::Error },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoPython { python, detail } => {
                write!(f, "cannot run {python} --version: {detail}")
            }
            Self::NoVenv { python, stderr } => write!(
                f,
                "cannot create a virtualenv with {python} -m venv (Debian: python3-venv):\n{stderr}"
            ),
            Self::Pip { status, stderr } => {
                write!(
                    f,
                    "pip install failed ({status}): is PyPI reachable?\n{stderr}"
                )
            }
            Self::Io { what, error } => write!(f, "cannot {what}: {error}"),
        }
    }
}

/// The venv with `requirements` (pip specifiers) under
/// `target/<cache_name>/`, installed on first use; panics with the reason
/// if it cannot be.
pub fn venv(cache_name: &str, requirements: &[&str]) -> PathBuf {
    install(&target_dir().join(cache_name), requirements).unwrap_or_else(|e| {
        panic!(
            "this test needs a Python virtualenv with `pip install {}`: {e}",
            requirements.join(" ")
        )
    })
}

/// The venv with `requirements` under `base/<hash>`, installed on first
/// use (for callers that let an environment variable move `base`).
pub fn install(base: &Path, requirements: &[&str]) -> Result<PathBuf, Failure> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .map_err(|e| Failure::NoPython {
            python: python.clone(),
            detail: e.to_string(),
        })?;
    if !version.status.success() {
        return Err(Failure::NoPython {
            python,
            detail: format!("{}", version.status),
        });
    }
    let key = format!(
        "{}|{}",
        String::from_utf8_lossy(&version.stdout).trim(),
        requirements.join("|")
    );
    let hash = format!("{:016x}", fnv1a(key.as_bytes()));
    let dir = base.join(&hash);
    let complete = dir.join(".complete");
    // `.complete` is written last and only ever removed with the folder by
    // an installer that found it missing: its presence is enough.
    if complete.exists() {
        return Ok(dir);
    }
    let io = |what: String| move |error| Failure::Io { what, error };
    std::fs::create_dir_all(base).map_err(io(format!("create {}", base.display())))?;
    let lock_path = base.join(format!("{hash}.lock"));
    let lock = File::create(&lock_path).map_err(io(format!("create {}", lock_path.display())))?;
    lock_exclusive(&lock).map_err(io(format!("lock {}", lock_path.display())))?;
    if complete.exists() {
        // Another process installed it while we waited.
        return Ok(dir);
    }
    if dir.exists() {
        eprintln!("wiping the unfinished venv {}", dir.display());
        std::fs::remove_dir_all(&dir).map_err(io(format!("remove {}", dir.display())))?;
    }
    let wanted = requirements.join(" ");
    eprintln!(
        "installing {wanted} into {} (first run only)",
        dir.display()
    );
    let started = Instant::now();
    let out = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .map_err(io(format!("run {python} -m venv")))?;
    if !out.status.success() {
        return Err(Failure::NoVenv {
            python,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let out = Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--timeout",
            "30",
            "--retries",
            "2",
        ])
        .args(requirements)
        // No package may fetch a browser build or other binary of its own
        // at install time (Playwright honours this; it is unreachable here).
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .output()
        .map_err(io(format!("run {}", dir.join("bin/pip").display())))?;
    if !out.status.success() {
        return Err(Failure::Pip {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    std::fs::write(&complete, &key).map_err(io(format!("write {}", complete.display())))?;
    eprintln!("venv ready in {:.0?}", started.elapsed());
    Ok(dir)
    // `lock` is dropped here: the next waiter finds `.complete`.
}

/// Block until this process holds `flock(LOCK_EX)` on `file`; the kernel
/// releases it when the file is closed or the process dies.
pub(crate) fn lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock(2) on a descriptor we own and keep open for the
        // call; it touches no memory of ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// FNV-1a, stable across Rust versions (names the cached venv).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `$CARGO_TARGET_DIR`, or the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}
