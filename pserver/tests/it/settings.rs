//! Bad configuration is fatal (issue 29): the real `pserver` binary refuses
//! a `.env` it cannot parse, naming the file, the line and the problem (it
//! used to ignore the bad line and every line after it, the API token
//! included), and warns about a misspelt setting, naming the right one.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use peerdex_testkit::{ChildProc, DeadUrl, wait_for};

/// Settings that let a PServer start in `dir` (loopback, port 0).
fn base(dir: &Path, central: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PSERVER_API_ADDR", "127.0.0.1:0".into()),
        ("PSERVER_PEER_ADDR", "127.0.0.1:0".into()),
        ("PSERVER_SHARE_DIR", dir.join("share").display().to_string()),
        ("PSERVER_DATA_DIR", dir.join("data").display().to_string()),
        ("PSERVER_CENTRAL_URL", central.to_owned()),
    ]
}

#[tokio::test]
async fn a_env_line_without_equals_stops_start_up_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let dead = DeadUrl::new();
    // The token after the bad line must never be silently dropped.
    std::fs::write(
        dir.path().join(".env"),
        "PSERVER_RESCAN_SECS 2\nPSERVER_API_TOKEN=a-token-of-twenty-chars\n",
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pserver"));
    cmd.current_dir(dir.path())
        .env_clear()
        .envs(base(dir.path(), &dead.url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        cmd.spawn().unwrap().wait_with_output(),
    )
    .await
    .expect("pserver started (and kept running) despite a .env it cannot parse")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.is_empty(), "it printed its addresses: {stdout}");
    // Named as the process sees its working folder (symlinks resolved).
    let file = dir.path().canonicalize().unwrap().join(".env");
    let told = format!(
        "{}, line 1: no `=` after PSERVER_RESCAN_SECS: write PSERVER_RESCAN_SECS=value",
        file.display()
    );
    assert!(stderr.contains(&told), "{stderr}");
    assert!(!stderr.contains("a-token-of"), "a value leaks: {stderr}");
}

#[tokio::test]
async fn an_unknown_setting_is_a_warning_naming_the_closest_one() {
    let dir = tempfile::tempdir().unwrap();
    let dead = DeadUrl::new();
    std::fs::write(dir.path().join(".env"), "PSERVER_RESCAN_SEC=2\n").unwrap();
    let mut env = base(dir.path(), &dead.url);
    env.push(("PSERVER_NEIGHBOURS_RATE", "5".into()));
    let p = ChildProc::spawn(Path::new(env!("CARGO_BIN_EXE_pserver")), dir.path(), &env);
    // It started (the first line, its addresses, was read) and said why the
    // names do nothing.
    assert!(
        p.first_line.starts_with("pserver listening"),
        "{}",
        p.first_line
    );
    let file = dir.path().canonicalize().unwrap().join(".env");
    let in_file = format!(
        "unknown setting PSERVER_RESCAN_SEC in {}; did you mean PSERVER_RESCAN_SECS?",
        file.display()
    );
    let in_env = "unknown setting PSERVER_NEIGHBOURS_RATE in the environment; \
                  did you mean PSERVER_NEIGHBOUR_RATE?";
    wait_for(
        "the warnings in the log",
        Duration::from_secs(30),
        || async {
            let log = p.log();
            (log.contains(&in_file) && log.contains(in_env)).then_some(())
        },
    )
    .await;
    assert!(p.log().contains("WARN"), "{}", p.log());
}
