//! Real binaries as child processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The path of one of the workspace's binaries (`pserver`,
/// `central-server`, `peerdex`, `devnet`), from the target folder this test
/// runs in. `cargo test --workspace` builds every binary before any test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("test binary has a folder");
    let p = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds every binary)",
        p.display()
    );
    p
}

/// A child process started from a clean environment, whose first stdout
/// line (printed by every peerdex server once its sockets are bound) has
/// been read. Its stderr goes to a log file in its folder. Killed with
/// SIGKILL when dropped.
pub struct ChildProc {
    pub child: Child,
    /// The first line it printed (its bound addresses).
    pub first_line: String,
    pub log: PathBuf,
}

impl ChildProc {
    /// Start `program` in `dir` with only `PATH`, `RUST_LOG=info` and `env`
    /// set, and wait for its first line of output.
    pub fn spawn(program: &Path, dir: &Path, env: &[(&str, String)]) -> Self {
        Self::spawn_with(program, dir, env, |_| {})
    }

    /// [`ChildProc::spawn`], with `setup` applied to the command before it
    /// starts (the network namespace of [`crate::netns`] uses it).
    pub fn spawn_with(
        program: &Path,
        dir: &Path,
        env: &[(&str, String)],
        setup: impl FnOnce(&mut Command),
    ) -> Self {
        std::fs::create_dir_all(dir).expect("create the child's folder");
        let stem = program
            .file_stem()
            .map_or("child".into(), |s| s.to_string_lossy().into_owned());
        let log = dir.join(format!("{stem}.log"));
        let mut cmd = Command::new(program);
        cmd.current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the child's log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        setup(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut first_line = String::new();
        // The rest of stdout is drained by a thread, so the child never
        // blocks on a full pipe.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let _ = out.read_line(&mut first_line);
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let proc = Self {
            child,
            first_line,
            log,
        };
        assert!(
            !proc.first_line.is_empty(),
            "{} exited at start:\n{}",
            program.display(),
            proc.log()
        );
        proc
    }

    /// The value of `key=` in the first line (`api=`, `peer=`, `public=`).
    pub fn field(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.first_line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.first_line))
            .to_owned()
    }

    /// The last word of the first line (the central's `listening on ADDR`).
    pub fn last_word(&self) -> String {
        self.first_line
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned()
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal (`libc::SIGINT`, `libc::SIGTERM`, ...).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child process we own and have not reaped.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A loopback URL where nothing listens, for as long as this value lives:
/// the port is bound (so no other test can take it) but never listened on,
/// so every connection is refused at once.
pub struct DeadUrl {
    pub url: String,
    _socket: tokio::net::TcpSocket,
}

impl DeadUrl {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("local_addr");
        Self {
            url: format!("http://{addr}"),
            _socket: socket,
        }
    }
}

impl Default for DeadUrl {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dead_url_refuses_connections_while_held() {
        let dead = DeadUrl::new();
        let addr = dead.url.strip_prefix("http://").unwrap();
        let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        // The port stays taken while the value lives.
        assert!(std::net::TcpListener::bind(addr).is_err());
    }
}
