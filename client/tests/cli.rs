//! End-to-end tests of the `peerdex` binary: real processes, real PServers
//! and a real central directory in-process on port 0, checked by exit code,
//! stdout, stderr and the bytes that arrive.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use peerdex_testkit::{DeadUrl, TestCentral, TestPeer, test_bytes, wait_for};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(30);

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    /// Neither stream may carry terminal escape codes (they are pipes here).
    fn assert_plain(&self) {
        assert!(
            !self.stdout.contains('\u{1b}'),
            "escape code on stdout: {self:?}"
        );
        assert!(
            !self.stderr.contains('\u{1b}'),
            "escape code on stderr: {self:?}"
        );
    }
}

/// The binary with a clean environment: no PEERDEX_* settings, a terminal
/// type that would allow colour (to prove pipes are detected), and a fresh
/// working folder so no `.env` is picked up.
fn peerdex(cwd: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_peerdex"));
    cmd.current_dir(cwd)
        .env_remove("PEERDEX_PSERVER_URL")
        .env_remove("PEERDEX_API_TOKEN")
        .env_remove("PEERDEX_CA_FILE")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env("TERM", "xterm-256color")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run_cmd(mut cmd: tokio::process::Command, stdin: Option<&str>) -> Run {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn peerdex");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("peerdex did not finish within 120 s")
        .unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    run.assert_plain();
    run
}

/// `peerdex --pserver URL ARGS...` in `cwd`.
async fn cli(cwd: &Path, url: &str, args: &[&str]) -> Run {
    let mut cmd = peerdex(cwd);
    cmd.arg("--pserver").arg(url).args(args);
    run_cmd(cmd, None).await
}

/// The REPL fed `input` through a pipe.
async fn repl(cwd: &Path, url: &str, input: &str) -> Run {
    let mut cmd = peerdex(cwd);
    cmd.arg("--pserver").arg(url);
    run_cmd(cmd, Some(input)).await
}

// ------------------------------------------------------------ no server needed

#[tokio::test]
async fn unreachable_pserver_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let dead = DeadUrl::new();
    let url = &dead.url;
    for args in [
        &["status"][..],
        &["ls"],
        &["search", "x"],
        &["get", "x.txt"],
        &["rm", "abcd"],
        &["jobs"],
    ] {
        let r = cli(dir.path(), url, args).await;
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
        assert!(
            r.stderr
                .contains(&format!("cannot reach PServer at {url} ")),
            "{args:?}: {r:?}"
        );
        assert!(r.stderr.contains("is `pserver` running?"), "{r:?}");
        assert!(r.stderr.contains("PEERDEX_PSERVER_URL"), "{r:?}");
        assert!(
            r.stderr.contains("\n  (run with -v for details)\n"),
            "hint at -v: {r:?}"
        );
    }
    // -v: the whole chain, down to the OS error.
    let r = cli(dir.path(), url, &["-v", "status"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("caused by:"), "{r:?}");
    assert!(
        r.stderr.to_lowercase().contains("connection refused"),
        "{r:?}"
    );
    // --json: one error document on stdout.
    let r = cli(dir.path(), url, &["--json", "status"]).await;
    assert_eq!(r.code, 1);
    let doc = r.json();
    assert_eq!(doc["error"]["code"], "unreachable", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach PServer")
    );
}

#[tokio::test]
async fn pserver_url_from_env_and_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    let dead = DeadUrl::new();
    let url = &dead.url;
    let mut cmd = peerdex(dir.path());
    cmd.env("PEERDEX_PSERVER_URL", url).arg("status");
    let r = run_cmd(cmd, None).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("cannot reach PServer at {url} ")),
        "{r:?}"
    );

    let dead_too = DeadUrl::new();
    let other = &dead_too.url;
    std::fs::write(
        dir.path().join(".env"),
        format!("PEERDEX_PSERVER_URL={other}\n"),
    )
    .unwrap();
    let mut cmd = peerdex(dir.path());
    cmd.arg("ls");
    let r = run_cmd(cmd, None).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("cannot reach PServer at {other} ")),
        "{r:?}"
    );

    // A line that cannot be parsed is a usage error naming the file and
    // the line, not a silently dropped rest of the file.
    // (named as the process sees its working folder: symlinks resolved)
    let env_file = dir.path().canonicalize().unwrap().join(".env");
    std::fs::write(
        &env_file,
        format!("# settings\nPEERDEX_API_TOKEN secret-value\nPEERDEX_PSERVER_URL={other}\n"),
    )
    .unwrap();
    let mut cmd = peerdex(dir.path());
    cmd.arg("ls");
    let r = run_cmd(cmd, None).await;
    assert_eq!(r.code, 2, "{r:?}");
    let told = format!(
        "{}, line 2: no `=` after PEERDEX_API_TOKEN",
        env_file.display()
    );
    assert!(r.stderr.contains(&told), "{r:?}");
    assert!(!r.stderr.contains("secret-value"), "{r:?}");

    // An unknown PEERDEX_ name is a warning naming the closest setting.
    std::fs::write(&env_file, format!("PEERDEX_PSERVER_ULR={other}\n")).unwrap();
    let mut cmd = peerdex(dir.path());
    cmd.env("PEERDEX_PSERVER_URL", url).arg("ls");
    let r = run_cmd(cmd, None).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(
            "unknown setting PEERDEX_PSERVER_ULR in {}; did you mean PEERDEX_PSERVER_URL?"
                .replace("{}", &env_file.display().to_string())
                .as_str()
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let dead = DeadUrl::new();
    let url = &dead.url;
    for args in [
        &["frobnicate"][..],
        &["get"],
        &["upload"],
        &["get", "x", "--force"],
        &["search", "x", "--limit", "0"],
        &["completions", "tcsh"],
    ] {
        let r = cli(dir.path(), url, args).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("error: "), "{args:?}: {r:?}");
    }
    let mut cmd = peerdex(dir.path());
    cmd.args(["--pserver", "not a url", "status"]);
    let r = run_cmd(cmd, None).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--pserver"), "{r:?}");
    // --help and --version are not errors; help names every variable
    // (for sub-commands too: the options are global) but not its value.
    for args in [&["--help"][..], &["get", "--help"]] {
        let mut cmd = peerdex(dir.path());
        cmd.env("PEERDEX_API_TOKEN", "secret-token").args(args);
        let r = run_cmd(cmd, None).await;
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        for shown in ["[env: PEERDEX_PSERVER_URL]", "[env: PEERDEX_API_TOKEN]"] {
            assert!(r.stdout.contains(shown), "{args:?} lacks {shown}: {r:?}");
        }
        assert!(!r.stdout.contains("secret-token"), "{args:?}: {r:?}");
    }
    let r = cli(dir.path(), url, &["--version"]).await;
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("peerdex "), "{r:?}");
}

#[tokio::test]
async fn completions_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    let dead = DeadUrl::new();
    let url = &dead.url;
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let r = cli(dir.path(), url, &["completions", shell]).await;
        assert_eq!(r.code, 0, "{shell}: {r:?}");
        for word in ["upload", "search", "completions"] {
            assert!(r.stdout.contains(word), "{shell} script lacks {word}");
        }
    }
    let r = cli(dir.path(), url, &["completions", "bash"]).await;
    assert!(r.stdout.contains("_peerdex"), "{r:?}");
}

#[tokio::test]
async fn local_mistakes_are_caught_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let dead = DeadUrl::new();
    let url = &dead.url;
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let r = cli(dir.path(), url, &["upload", folder.to_str().unwrap()]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("is a folder; pass --recursive"), "{r:?}");

    let r = cli(dir.path(), url, &["upload", "no-such-file.bin"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("cannot read no-such-file.bin"), "{r:?}");

    let existing = dir.path().join("there.bin");
    std::fs::write(&existing, b"keep me").unwrap();
    let r = cli(
        dir.path(),
        url,
        &["get", "x.bin", "-o", existing.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already exists; pass --force"), "{r:?}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let r = cli(dir.path(), url, &["get", "../etc/passwd"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("exact name"), "{r:?}");
}

#[tokio::test]
async fn piped_repl_survives_errors_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let dead = DeadUrl::new();
    let url = &dead.url;
    let r = repl(
        dir.path(),
        url,
        "search x\nfrobnicate\n\n# a comment\nget 'unterminated\nstatus\nexit\nls\n",
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    // search and status failed, each with the hint; ls came after exit.
    assert_eq!(r.stderr.matches("cannot reach PServer").count(), 2, "{r:?}");
    assert!(
        r.stderr.contains("unrecognized subcommand 'frobnicate'"),
        "{r:?}"
    );
    assert!(r.stderr.contains("missing closing ' quote"), "{r:?}");
    assert!(
        !r.stderr.contains("peerdex>"),
        "no prompt in piped mode: {r:?}"
    );

    // End of input without `exit` is fine too; `help` lists the commands.
    let r = repl(dir.path(), url, "help\n").await;
    assert_eq!(r.code, 0, "{r:?}");
    for cmd in [
        "upload", "get", "search", "ls", "rm", "status", "cancel", "exit",
    ] {
        assert!(r.stdout.contains(cmd), "help lacks {cmd}: {r:?}");
    }
}

// ------------------------------------------------------------ against real servers

/// Poll `search` through the CLI until it lists `want` hits for `q`.
async fn wait_for_hits(cwd: &Path, peer: &TestPeer, q: &str, want: usize) -> Value {
    wait_for(&format!("{want} search hits for {q:?}"), T, || async {
        let r = cli(cwd, &peer.api_url, &["--json", "search", q]).await;
        assert_eq!(r.code, 0, "{r:?}");
        let doc = r.json();
        (doc["hits"].as_array().unwrap().len() == want).then_some(doc)
    })
    .await
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_on_one_peer_get_on_another() {
    let central = TestCentral::start(T).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    a.wait_joined().await;
    b.wait_joined().await;
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();

    // Upload on A: a name with a space and a '#' must survive the URL.
    let bytes = test_bytes(2_500_000, 7);
    let src = write_file(cwd, "holiday #1 photos.bin", &bytes);
    let r = cli(cwd, &a.api_url, &["upload", src.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("holiday #1 photos.bin"), "{r:?}");
    assert!(!r.stdout.contains("already shared"), "new content: {r:?}");
    // Same again with --json: identical content, so not created.
    let r = cli(
        cwd,
        &a.api_url,
        &["--json", "upload", src.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let up = r.json();
    let file = &up["files"][0];
    let id = file["file_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64);
    assert_eq!(file["name"], "holiday #1 photos.bin");
    assert_eq!(file["size"], bytes.len() as u64);
    assert_eq!(file["created"], false, "{up}");
    assert_eq!(up["errors"].as_array().unwrap().len(), 0);

    // B finds it (through its neighbour A) and shows it in a table.
    let found = wait_for_hits(cwd, &b, "holiday photos", 1).await;
    assert_eq!(found["hits"][0]["file_id"], id.as_str());
    let r = cli(cwd, &b.api_url, &["search", "holiday"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("NAME"), "{r:?}");
    assert!(r.stdout.contains(&id[..12]), "{r:?}");
    assert!(r.stdout.contains("2.38 MiB"), "{r:?}");

    // Get on B by name, also written to a file of ours.
    let out = cwd.join("copy.bin");
    let r = cli(
        cwd,
        &b.api_url,
        &["get", "holiday #1 photos.bin", "-o", out.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&id), "{r:?}");
    assert!(r.stderr.contains("saved to"), "{r:?}");
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(
        std::fs::read(b.path_in_share("holiday #1 photos.bin")).unwrap(),
        bytes
    );
    // No temp files left next to the output.
    let leftovers: Vec<_> = std::fs::read_dir(cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".peerdex-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Refuses to overwrite, unless forced; -o into a folder uses the name.
    std::fs::write(&out, b"old").unwrap();
    let r = cli(cwd, &b.api_url, &["get", &id, "-o", out.to_str().unwrap()]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--force"), "{r:?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let r = cli(
        cwd,
        &b.api_url,
        &["--json", "get", &id, "-o", out.to_str().unwrap(), "--force"],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["job"]["state"], "done", "{doc}");
    assert_eq!(doc["job"]["file_id"], id.as_str());
    assert_eq!(doc["saved_to"], out.to_str().unwrap());
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let folder = cwd.join("downloads");
    std::fs::create_dir(&folder).unwrap();
    let r = cli(
        cwd,
        &b.api_url,
        &["get", &id, "-o", folder.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read(folder.join("holiday #1 photos.bin")).unwrap(),
        bytes
    );

    // ls, status, jobs on B, as tables and as JSON.
    let r = cli(cwd, &b.api_url, &["ls"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&id) && r.stdout.contains("holiday #1 photos.bin"),
        "{r:?}"
    );
    let ls = cli(cwd, &b.api_url, &["--json", "ls"]).await.json();
    assert_eq!(ls["files"][0]["file_id"], id.as_str(), "{ls}");
    let st = cli(cwd, &b.api_url, &["--json", "status"]).await.json();
    assert_eq!(st["central_reachable"], true, "{st}");
    assert_eq!(st["neighbours"][0]["url"], a.peer_url.as_str(), "{st}");
    // B fetched the file from A once (the later gets found it stored).
    assert_eq!(st["bytes_received"], bytes.len() as u64, "{st}");
    assert_eq!(st["bytes_sent"], 0, "{st}");
    assert!(st["lease_renewals"]["error"].is_u64(), "{st}");
    assert!(st["peer_id"].as_str().unwrap().len() == 36, "{st}");
    let r = cli(cwd, &b.api_url, &["status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("peer id") && r.stdout.contains("reachable"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("sent, ") && r.stdout.contains(" received"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("renewals") && r.stdout.contains(" ok, "),
        "{r:?}"
    );
    // One job per `get` that reached the PServer (the refused overwrite
    // never did), each done, each for this content.
    let jobs = cli(cwd, &b.api_url, &["--json", "jobs"]).await.json();
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    for job in jobs {
        assert_eq!(job["state"], "done", "{job}");
        assert_eq!(job["file_id"], id.as_str(), "{job}");
    }
    let r = cli(cwd, &b.api_url, &["jobs"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 4, "header and 3 jobs: {r:?}");

    // rm by id prefix on B; then B no longer lists it.
    let r = cli(cwd, &b.api_url, &["rm", &id[..12]]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("stopped sharing holiday #1 photos.bin"),
        "{r:?}"
    );
    let ls = cli(cwd, &b.api_url, &["--json", "ls"]).await.json();
    assert!(ls["files"].as_array().unwrap().is_empty(), "{ls}");
    let r = cli(cwd, &b.api_url, &["rm", &id]).await;
    assert_eq!(r.code, 1, "{r:?}");

    // Unknown names and jobs fail with the PServer's message.
    let r = cli(cwd, &b.api_url, &["get", "no-such-file-anywhere.txt"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no-such-file-anywhere.txt"), "{r:?}");
    let r = cli(
        cwd,
        &b.api_url,
        &["--json", "cancel", "00000000-0000-4000-8000-000000000000"],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_name_lists_candidates() {
    let central = TestCentral::start(T).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    let c = TestPeer::start(&central.url, &[&a.peer_url], |_| {}).await;
    for p in [&a, &b, &c] {
        p.wait_joined().await;
    }
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let da = cwd.join("a");
    let db = cwd.join("b");
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let fa = write_file(&da, "notes.txt", b"version one");
    let fb = write_file(&db, "notes.txt", b"version two, longer");
    let ia = cli(cwd, &a.api_url, &["--json", "upload", fa.to_str().unwrap()])
        .await
        .json();
    let ib = cli(cwd, &b.api_url, &["--json", "upload", fb.to_str().unwrap()])
        .await
        .json();
    let id_a = ia["files"][0]["file_id"].as_str().unwrap().to_owned();
    let id_b = ib["files"][0]["file_id"].as_str().unwrap().to_owned();
    wait_for_hits(cwd, &c, "notes", 2).await;

    let r = cli(cwd, &c.api_url, &["get", "notes.txt"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&id_a) && r.stderr.contains(&id_b),
        "{r:?}"
    );
    assert!(r.stderr.contains("ask for one by id"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");

    let r = cli(cwd, &c.api_url, &["--json", "get", "notes.txt"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["error"]["code"], "ambiguous_name", "{doc}");
    let mut ids: Vec<&str> = doc["error"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["file_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = vec![id_a.as_str(), id_b.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);

    // Asking by id works; in the REPL a short id from the last search does too.
    let r = repl(
        cwd,
        &c.api_url,
        &format!("search notes\nget {}\nexit\n", &id_b[..12]),
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&id_b), "{r:?}");
    assert!(!r.stderr.contains("error:"), "{r:?}");
    assert_eq!(
        std::fs::read(c.path_in_share("notes.txt")).unwrap(),
        b"version two, longer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_repl_against_a_real_pserver() {
    let central = TestCentral::start(T).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    a.wait_joined().await;
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let folder = cwd.join("music");
    std::fs::create_dir_all(folder.join("live")).unwrap();
    write_file(&folder, "first song.mp3", &test_bytes(10_000, 1));
    write_file(
        &folder.join("live"),
        "second song.mp3",
        &test_bytes(20_000, 2),
    );

    let input = format!(
        "upload --recursive '{}'\nsearch song\nls\nbogus\nstatus\nquit\n",
        folder.display()
    );
    let r = repl(cwd, &a.api_url, &input).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("first song.mp3") && r.stdout.contains("second song.mp3"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("NAME") && r.stdout.contains("HOLDERS"),
        "search table: {r:?}"
    );
    assert!(
        r.stdout.contains("peer id"),
        "status ran after the bad line: {r:?}"
    );
    assert!(
        r.stderr.contains("unrecognized subcommand 'bogus'"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token() {
    let central = TestCentral::start(T).await;
    let token = "0123456789abcdef-test";
    let a = TestPeer::start(&central.url, &[], |c| {
        c.control.api_token = Some(token.to_owned())
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let r = cli(work.path(), &a.api_url, &["status"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--token or PEERDEX_API_TOKEN"), "{r:?}");
    let r = cli(
        work.path(),
        &a.api_url,
        &["--json", "--token", "wrong", "status"],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "unauthorized", "{r:?}");
    let r = cli(work.path(), &a.api_url, &["--token", token, "status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("peer id"), "{r:?}");
    let mut cmd = peerdex(work.path());
    cmd.env("PEERDEX_API_TOKEN", token)
        .args(["--pserver", &a.api_url, "--json", "ls"]);
    let r = run_cmd(cmd, None).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json()["files"].is_array());
}

/// A control API over TLS (as off loopback; here on loopback through the
/// library setting): `--ca-file`/PEERDEX_CA_FILE make it work, and without
/// the CA, or with the wrong scheme, the message says what to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_over_tls() {
    let ca = peerdex_testkit::tls::TestCa::new("cli");
    let leaf = ca.leaf("pserver");
    let central = TestCentral::start(T).await;
    let tls = ca.peer_tweak(&leaf);
    let a = TestPeer::start(&central.url, &[], |c| {
        tls(c);
        c.api_tls = true;
    })
    .await;
    assert!(a.api_url.starts_with("https://"), "{}", a.api_url);
    let work = tempfile::tempdir().unwrap();
    let ca_file = ca.ca_file.to_str().unwrap();

    let r = cli(work.path(), &a.api_url, &["--ca-file", ca_file, "status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("peer id"), "{r:?}");
    let mut cmd = peerdex(work.path());
    cmd.env("PEERDEX_CA_FILE", ca_file)
        .args(["--pserver", &a.api_url, "--json", "ls"]);
    let r = run_cmd(cmd, None).await;
    assert_eq!(r.code, 0, "{r:?}");

    // Without the CA: not "is pserver running?", but what to set.
    let r = cli(work.path(), &a.api_url, &["status"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("presented a certificate not signed by a trusted CA")
            && r.stderr.contains("PEERDEX_CA_FILE"),
        "{r:?}"
    );
    let r = cli(work.path(), &a.api_url, &["--json", "status"]).await;
    assert_eq!(r.json()["error"]["code"], "tls", "{r:?}");
    // Another CA's certificate is not trusted either.
    let other = peerdex_testkit::tls::TestCa::new("other");
    let r = cli(
        work.path(),
        &a.api_url,
        &["--ca-file", other.ca_file.to_str().unwrap(), "status"],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not signed by a trusted CA"), "{r:?}");
    // Plaintext against the TLS listener.
    let plain = a.api_url.replacen("https://", "http://", 1);
    let r = cli(work.path(), &plain, &["status"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("use an https:// URL"), "{r:?}");
    // A CA file that cannot be read is named.
    let r = cli(
        work.path(),
        &a.api_url,
        &["--ca-file", "/nonexistent/ca.pem", "status"],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("cannot read PEERDEX_CA_FILE /nonexistent/ca.pem"),
        "{r:?}"
    );
}

/// Send SIGINT to a child, as Ctrl+C in its terminal would.
fn interrupt(child: &tokio::process::Child) {
    let pid = child.id().expect("child still running");
    let ok = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -INT failed");
}

/// Read stderr lines until one starts with `prefix`; returns what was read.
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    prefix: &str,
) -> String {
    let mut seen = String::new();
    let found = tokio::time::timeout(T, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with(prefix) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        found,
        "no stderr line starting with {prefix:?}; got: {seen}"
    );
    seen
}

/// A peer with a slow (rate-capped) download of a 2 MB file from another.
async fn slow_download_setup(central: &TestCentral) -> (TestPeer, TestPeer, tempfile::TempDir) {
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let b = TestPeer::start(&central.url, &[&a.peer_url], |c| {
        c.downloads.max_download_bps = 100_000
    })
    .await;
    a.wait_joined().await;
    b.wait_joined().await;
    let work = tempfile::tempdir().unwrap();
    let src = write_file(work.path(), "slow.bin", &test_bytes(2_000_000, 3));
    let r = cli(work.path(), &a.api_url, &["upload", src.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{r:?}");
    wait_for_hits(work.path(), &b, "slow", 1).await;
    (a, b, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_following_but_not_the_download() {
    use tokio::io::AsyncBufReadExt;
    let central = TestCentral::start(T).await;
    let (_a, b, work) = slow_download_setup(&central).await;
    let cwd = work.path();

    let mut cmd = peerdex(cwd);
    cmd.args(["--pserver", &b.api_url, "get", "slow.bin"])
        .stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    read_until(&mut lines, "downloading").await;
    interrupt(&child);
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut rest = String::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert_eq!(status.code(), Some(130), "stderr: {rest}");
    assert!(rest.contains("stopped following job"), "{rest}");
    assert!(rest.contains("peerdex cancel "), "{rest}");

    // The job goes on in the PServer; `cancel` stops it.
    let jobs = cli(cwd, &b.api_url, &["--json", "jobs"]).await.json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    let job = &jobs["jobs"][0];
    assert_eq!(job["state"], "downloading", "{jobs}");
    let job_id = job["job_id"].as_str().unwrap();
    let r = cli(cwd, &b.api_url, &["cancel", job_id]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("cancelled job {job_id}")),
        "{r:?}"
    );
    let jobs = cli(cwd, &b.api_url, &["--json", "jobs"]).await.json();
    assert_eq!(jobs["jobs"][0]["state"], "cancelled", "{jobs}");
    assert!(!b.path_in_share("slow.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_the_repl_returns_to_the_prompt() {
    use tokio::io::AsyncBufReadExt;
    let central = TestCentral::start(T).await;
    let (_a, b, work) = slow_download_setup(&central).await;

    let mut cmd = peerdex(work.path());
    cmd.args(["--pserver", &b.api_url]).stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"get slow.bin\n").await.unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    read_until(&mut lines, "downloading").await;
    interrupt(&child);
    read_until(&mut lines, "error: stopped following job").await;
    // Still alive: the next commands run, then it exits 0.
    stdin.write_all(b"jobs\nexit\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("downloading") && stdout.contains("slow.bin"),
        "jobs table: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_failures_are_reported_per_file() {
    let central = TestCentral::start(T).await;
    let a = TestPeer::start(&central.url, &[], |c| c.control.max_upload_bytes = 1000).await;
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let small = write_file(cwd, "small.txt", b"small");
    let big = write_file(cwd, "big.bin", &test_bytes(5000, 4));
    let r = cli(
        cwd,
        &a.api_url,
        &[
            "--json",
            "upload",
            small.to_str().unwrap(),
            big.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["files"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["files"][0]["name"], "small.txt", "{doc}");
    assert_eq!(doc["files"][0]["created"], true, "{doc}");
    assert_eq!(doc["errors"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["errors"][0]["path"], big.to_str().unwrap(), "{doc}");
    assert_eq!(doc["errors"][0]["code"], "too_large", "{doc}");
    assert!(
        doc["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("PSERVER_MAX_UPLOAD_BYTES")
    );
    assert!(r.stderr.contains("1 of 2 uploads failed"), "{r:?}");

    // A different content under a taken name: the PServer's 409, in words.
    let other = write_file(cwd, "other.txt", b"different");
    let r = cli(
        cwd,
        &a.api_url,
        &["upload", other.to_str().unwrap(), "--name", "small.txt"],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already shared"), "{r:?}");
    let ls = cli(cwd, &a.api_url, &["--json", "ls"]).await.json();
    assert_eq!(ls["files"].as_array().unwrap().len(), 1, "{ls}");
}

/// The PServer's control API closes idle keep-alive connections after 5 s
/// (actix-web's default). The shell must not trip over a pooled connection
/// the server closed while the user was thinking: each command below comes
/// after a pause longer than that (the pause is the scenario, not a wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repl_survives_pauses_longer_than_the_servers_keep_alive() {
    use tokio::io::AsyncBufReadExt;
    const SERVER_KEEP_ALIVE: Duration = Duration::from_secs(5);
    let central = TestCentral::start(T).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    a.wait_joined().await;
    let work = tempfile::tempdir().unwrap();
    let mut cmd = peerdex(work.path());
    cmd.args(["--pserver", &a.api_url]).stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for round in 0..3 {
        if round > 0 {
            tokio::time::sleep(SERVER_KEEP_ALIVE + Duration::from_millis(700)).await;
        }
        stdin.write_all(b"status\n").await.unwrap();
        let answered = tokio::time::timeout(T, async {
            while let Some(line) = out.next_line().await.unwrap() {
                if line.contains("peer id") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(answered, "round {round}: `status` printed no peer id");
    }
    stdin.write_all(b"exit\n").await.unwrap();
    drop(stdin);
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut stderr = String::new();
    while let Some(l) = err.next_line().await.unwrap() {
        stderr.push_str(&l);
        stderr.push('\n');
    }
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("error"), "a command failed: {stderr}");
}

/// A PServer given two centrals: `status` names the one in use and lists
/// both; `--json` carries the list, the central's name and the leader
/// (null while unknown).
#[tokio::test]
async fn status_lists_every_central_and_names_the_one_in_use() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let central = TestCentral::start(T).await;
    let dead = DeadUrl::new();
    let list = vec![dead.url.clone(), central.url.clone()];
    let p = TestPeer::start(&central.url, &[], |c| c.link.centrals = list.clone()).await;
    p.wait_joined().await;
    let st = cli(cwd, &p.api_url, &["--json", "status"]).await.json();
    assert_eq!(st["central_url"], central.url.as_str(), "{st}");
    assert_eq!(
        st["centrals"],
        serde_json::json!([dead.url, central.url]),
        "{st}"
    );
    assert!(st.get("central_name").is_some(), "{st}");
    assert!(st.get("leader").is_some(), "{st}");
    let r = cli(cwd, &p.api_url, &["status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let line = |k: &str| {
        r.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(k))
            .unwrap_or_else(|| panic!("no {k} line: {r:?}"))
            .to_owned()
    };
    assert!(
        line("central").contains(&central.url) && !line("central").contains(&dead.url),
        "{r:?}"
    );
    assert_eq!(
        line("centrals"),
        format!("centrals     {}, {}", dead.url, central.url),
        "{r:?}"
    );
    // One central: no list line, as before.
    let q = TestPeer::start(&central.url, &[], |_| {}).await;
    let r = cli(cwd, &q.api_url, &["status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("centrals"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_with_replicas_replicate_and_pins() {
    let central = TestCentral::start_with(|c| {
        c.lease_ttl = Duration::from_secs(3);
        c.heartbeat_interval = Duration::from_secs(1);
        c.replica_grace = Duration::from_secs(1);
    })
    .await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    let v = TestPeer::start(&central.url, &[], |c| {
        c.replicas.quota_bytes = 64 << 20;
        c.store.min_free_bytes = 0;
    })
    .await;
    a.wait_joined().await;
    v.wait_joined().await;
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();

    // Upload and pin to 2 copies: the owner's and a replica on V.
    let bytes = test_bytes(1_500_000, 11);
    let src = write_file(cwd, "twice kept.bin", &bytes);
    let r = cli(
        cwd,
        &a.api_url,
        &["--json", "upload", "--replicas", "2", src.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    let id = doc["files"][0]["file_id"].as_str().unwrap().to_owned();
    assert_eq!(doc["files"][0]["pin"]["pinned"], 2, "{doc}");
    assert_eq!(doc["files"][0]["pin"]["replication"]["wanted"], 2, "{doc}");
    let pins = wait_for("the pin to be ok", T, || async {
        let doc = cli(cwd, &a.api_url, &["--json", "pins"]).await.json();
        (doc["pins"][0]["replication"]["state"] == "ok").then_some(doc)
    })
    .await;
    assert_eq!(pins["pins"][0]["replication"]["live"], 2, "{pins}");
    assert_eq!(pins["pins"][0]["replication"]["proven"], 2, "{pins}");
    assert_eq!(pins["pins"][0]["replication"]["replicas"], 1, "{pins}");
    let r = cli(cwd, &a.api_url, &["pins"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("NAME"), "{r:?}");
    assert!(
        r.stdout.contains("twice kept.bin") && r.stdout.contains(" ok"),
        "{r:?}"
    );
    // Search shows live/wanted; V's status the replica it holds.
    let r = cli(cwd, &a.api_url, &["search", "twice"]).await;
    assert!(r.stdout.contains("2/2"), "{r:?}");
    assert!(r.stderr.contains("pinned"), "{r:?}");
    let r = cli(cwd, &v.api_url, &["status"]).await;
    assert!(r.stdout.contains("replicas     1 held"), "{r:?}");
    assert!(r.stdout.contains("of 64.0 MiB quota used"), "{r:?}");

    // info: who holds it (owner, replica) and the copies.
    let r = cli(cwd, &v.api_url, &["info", "twice kept.bin"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&format!("id        {id}")), "{r:?}");
    assert!(
        r.stdout
            .contains("2 proven of 2 wanted (2 live: 0 unproven, 1 replicas) — ok"),
        "{r:?}"
    );
    for holder in [&a.peer_url, &v.peer_url] {
        assert!(
            r.stdout.contains(holder.trim_start_matches("http://")),
            "{r:?}"
        );
    }
    assert!(
        r.stdout.contains("(owner,") && r.stdout.contains("(replica,"),
        "{r:?}"
    );
    let doc = cli(cwd, &v.api_url, &["--json", "info", &id]).await.json();
    assert_eq!(doc["files"][0]["replication"]["wanted"], 2, "{doc}");
    let r = cli(cwd, &v.api_url, &["info", "nothing-like-it.txt"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("the directory knows no file"), "{r:?}");

    // A pin the directory refuses: the upload stands, the command says
    // why the pin did not, and exits 1.
    let src2 = write_file(cwd, "too many.bin", b"too many copies asked");
    let r = cli(
        cwd,
        &a.api_url,
        &["upload", "--replicas", "99", src2.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("too many.bin"), "{r:?}");
    assert!(
        r.stderr.contains("uploaded and shared, but not pinned"),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains("1 of 1 files were uploaded and shared but not pinned"),
        "{r:?}"
    );
    assert!(a.path_in_share("too many.bin").exists());

    // Stop asking, by name; an unknown name fails.
    let r = cli(cwd, &a.api_url, &["replicate", "twice kept.bin", "0"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("is not pinned (any more)"), "{r:?}");
    let r = cli(cwd, &a.api_url, &["replicate", "nobody-has-it.txt", "3"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no live peer shares"), "{r:?}");
    // The shell knows the commands too.
    let r = repl(cwd, &a.api_url, &format!("replicate {id} 2\npins\nexit\n")).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("pinned"), "{r:?}");
    assert!(r.stdout.contains("twice kept.bin"), "{r:?}");
}

/// Names that mix scripts are marked wherever `peerdex` shows them (and
/// say so in `--json`); wide characters and combining marks do not push
/// the search table's columns out of line; `status` counts the share
/// folder's files that cannot be shared and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookalike_names_are_marked_and_unshared_files_counted() {
    use unicode_width::UnicodeWidthStr;
    let central = TestCentral::start(T).await;
    let a = TestPeer::start(&central.url, &[], |_| {}).await;
    a.wait_joined().await;
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    // "pаypal" with a Cyrillic а; a wide name; a name of combining marks.
    let lookalike = "p\u{430}ypal invoice.pdf";
    a.drop_file(lookalike, b"phish");
    a.drop_file("invoice \u{5831}\u{544a}\u{66f8}.pdf", b"wide");
    a.drop_file("invoice z\u{301}\u{301}\u{301}\u{301}.pdf", b"marks");
    a.drop_file("invoice \u{202e}fdp.exe", b"disguised");
    let doc = wait_for_hits(cwd, &a, "invoice", 3).await;
    let marked: Vec<(&str, bool)> = doc["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), h["lookalike"] == true))
        .filter(|(_, l)| *l)
        .collect();
    assert_eq!(marked, [(lookalike, true)], "{doc}");

    let r = cli(cwd, &a.api_url, &["search", "invoice"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{r:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("\u{26a0} {lookalike}  "))),
        "{r:?}"
    );
    // The ID column starts at the same terminal column on every line:
    // the name cell's display width plus the padding after it.
    let id_col: Vec<usize> = lines
        .iter()
        .map(|l| {
            let (name, rest) = l.split_once("  ").unwrap();
            name.width() + 2 + rest.chars().take_while(|c| *c == ' ').count()
        })
        .collect();
    assert!(
        id_col.windows(2).all(|w| w[0] == w[1]),
        "{id_col:?}\n{}",
        r.stdout
    );

    let r = cli(cwd, &a.api_url, &["ls"]).await;
    assert!(r.stdout.contains(&format!("\u{26a0} {lookalike}")), "{r:?}");

    let r = cli(cwd, &a.api_url, &["status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("1 file in the share folder is not shared: rename or remove it"),
        "{r:?}"
    );
    assert!(r.stdout.contains("U+202E"), "{r:?}");
    assert!(!r.stdout.contains('\u{202e}'), "{r:?}");
    let doc = cli(cwd, &a.api_url, &["--json", "status"]).await.json();
    assert_eq!(doc["unshared_files"], 1, "{doc}");
}
