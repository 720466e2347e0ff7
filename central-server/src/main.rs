//! `central-server`: parse configuration, bind, serve until Ctrl+C/SIGTERM.
//! The flags and what they mean are the library's ([`central_server::Args`]).

use std::process::ExitCode;

use anyhow::Context;
use central_server::Args;
use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // One crypto provider for the whole process: ring (never aws-lc).
    peerdex_common::tls::install_provider();
    // `.env` first (before any thread), so its values act as environment
    // defaults for clap; a line it cannot parse stops start-up.
    let settings = match peerdex_common::settings::load(&Args::command(), "CENTRAL_") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(try_main(settings.unknown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(unknown: Vec<peerdex_common::settings::UnknownSetting>) -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for u in &unknown {
        tracing::warn!("{u}");
    }
    let config = args.load()?;
    let listen = args.serve.listen_addr;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (CENTRAL_LISTEN_ADDR)"))?;
    let metrics =
        match args.serve.metrics_addr.0 {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| {
                format!("cannot listen for metrics on {a} (CENTRAL_METRICS_ADDR)")
            })?),
            None => None,
        };
    // One line on stdout that scripts and tests read: the gRPC address
    // last, and `metrics=URL` when there is a metrics listener.
    let addr = listener.local_addr()?;
    let metrics_url = match &metrics {
        Some(m) => format!(" metrics=http://{}/metrics", m.local_addr()?),
        None => String::new(),
    };
    println!("central-server{metrics_url} listening on {addr}");
    central_server::run_with_metrics(
        listener,
        metrics,
        config,
        peerdex_common::signal::shutdown(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use central_server::config::OptionalAddr;
    use central_server::{Config, Limits};
    use clap::FromArgMatches;
    use std::path::PathBuf;
    use std::time::Duration;

    /// Flags only: `env` is dropped from every argument, so a `CENTRAL_*`
    /// variable in the developer's shell cannot change what is tested.
    fn args(flags: &[&str]) -> Result<Args, clap::Error> {
        let matches = Args::command()
            .mut_args(|a| a.env(None::<&str>))
            .try_get_matches_from(std::iter::once("central-server").chain(flags.iter().copied()))?;
        Args::from_arg_matches(&matches)
    }

    #[test]
    fn defaults_are_the_library_defaults() {
        let a = args(&[]).unwrap();
        assert_eq!(a.serve.listen_addr, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(a.serve.metrics_addr, OptionalAddr(None));
        let c = a.config();
        let d = Config::new("./data/central");
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!(c.lease_ttl, d.lease_ttl);
        assert_eq!(c.heartbeat_interval, d.heartbeat_interval);
        assert_eq!(c.limits, d.limits);
        c.validate().unwrap();
    }

    #[test]
    fn flags_reach_the_config() {
        let c = args(&[
            "--data-dir=/tmp/x",
            "--lease-ttl-secs=60",
            "--heartbeat-secs=20",
            "--max-message-bytes=2048",
            "--max-name-bytes=100",
            "--max-inventory=7",
            "--max-page=8",
            "--max-holders=9",
            "--search-budget=10",
            "--join-rate=0",
            "--publish-rate=3",
            "--search-rate=4",
            "--max-peers-per-addr=5",
            "--max-files=6",
        ])
        .unwrap()
        .config();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.lease_ttl, Duration::from_secs(60));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(20));
        assert_eq!(
            c.limits,
            Limits {
                max_message_bytes: 2048,
                max_name_bytes: 100,
                max_inventory: 7,
                max_page: 8,
                max_holders: 9,
                search_budget: 10,
                join_rate: 0,
                publish_rate: 3,
                search_rate: 4,
                max_peers_per_addr: 5,
                max_files: 6,
                ..Limits::default()
            }
        );
    }

    #[test]
    fn metrics_addr_is_empty_or_an_address() {
        let a = args(&["--metrics-addr=127.0.0.1:9090"]).unwrap();
        assert_eq!(
            a.serve.metrics_addr,
            OptionalAddr(Some("127.0.0.1:9090".parse().unwrap()))
        );
        let a = args(&["--metrics-addr="]).unwrap();
        assert_eq!(a.serve.metrics_addr, OptionalAddr(None));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (flag, var) in [
            ("--lease-ttl-secs=0", "CENTRAL_LEASE_TTL_SECS"),
            ("--heartbeat-secs=-1", "CENTRAL_HEARTBEAT_SECS"),
            ("--max-page=x", "CENTRAL_MAX_PAGE"),
            ("--listen-addr=nowhere", "CENTRAL_LISTEN_ADDR"),
            ("--search-budget=0", "CENTRAL_SEARCH_BUDGET"),
            ("--join-rate=-1", "CENTRAL_JOIN_RATE"),
            ("--publish-rate=fast", "CENTRAL_PUBLISH_RATE"),
            ("--search-rate=2000000", "CENTRAL_SEARCH_RATE"),
            ("--max-peers-per-addr=0", "CENTRAL_MAX_PEERS_PER_ADDR"),
            ("--max-files=0", "CENTRAL_MAX_FILES"),
            ("--metrics-addr=nowhere", "CENTRAL_METRICS_ADDR"),
            ("--max-keys=0", "CENTRAL_MAX_KEYS"),
            ("--max-replicas=1", "CENTRAL_MAX_REPLICAS"),
            ("--max-replicas=65", "CENTRAL_MAX_REPLICAS"),
            ("--max-pins-per-peer=0", "CENTRAL_MAX_PINS_PER_PEER"),
            ("--max-watches-per-peer=0", "CENTRAL_MAX_WATCHES_PER_PEER"),
            (
                "--max-pinned-bytes-per-peer=-1",
                "CENTRAL_MAX_PINNED_BYTES_PER_PEER",
            ),
            ("--replica-grace-secs=0", "CENTRAL_REPLICA_GRACE_SECS"),
            ("--key-retention-days=0", "CENTRAL_KEY_RETENTION_DAYS"),
        ] {
            let e = args(&[flag]).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(var), "{flag}: {e}");
        }
        let c = args(&["--lease-ttl-secs=10", "--heartbeat-secs=10"])
            .unwrap()
            .config();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("CENTRAL_HEARTBEAT_SECS"), "{e}");
        // A private network: a real secret, and only over TLS.
        let c = args(&["--join-secret=short"]).unwrap().config();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("CENTRAL_JOIN_SECRET"), "{e}");
        let c = args(&["--join-secret=long-enough-secret-1234"])
            .unwrap()
            .config();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("CENTRAL_TLS_CERT"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_setting_and_the_range() {
        /// Flag, variable, the range in words, refused values, accepted edges.
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                "lease-ttl-secs",
                "CENTRAL_LEASE_TTL_SECS",
                "a positive whole number",
                &["0", "-1", "1.5"],
                &["1"],
            ),
            (
                "heartbeat-secs",
                "CENTRAL_HEARTBEAT_SECS",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "max-message-bytes",
                "CENTRAL_MAX_MESSAGE_BYTES",
                "a whole number of at least 1024",
                &["0", "1023"],
                &["1024"],
            ),
            (
                "max-name-bytes",
                "CENTRAL_MAX_NAME_BYTES",
                "a whole number from 1 to 255",
                &["0", "256"],
                &["1", "255"],
            ),
            (
                "max-inventory",
                "CENTRAL_MAX_INVENTORY",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "max-page",
                "CENTRAL_MAX_PAGE",
                "a positive whole number",
                &["0", "x"],
                &["1"],
            ),
            (
                "max-holders",
                "CENTRAL_MAX_HOLDERS",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "search-budget",
                "CENTRAL_SEARCH_BUDGET",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "join-rate",
                "CENTRAL_JOIN_RATE",
                "calls per second (0 = no limit, at most 1000000)",
                &["-1", "1000001"],
                &["0", "1000000"],
            ),
            (
                "publish-rate",
                "CENTRAL_PUBLISH_RATE",
                "calls per second (0 = no limit, at most 1000000)",
                &["fast", "1000001"],
                &["0", "1000000"],
            ),
            (
                "search-rate",
                "CENTRAL_SEARCH_RATE",
                "calls per second (0 = no limit, at most 1000000)",
                &["2000000"],
                &["0", "1000000"],
            ),
            (
                "max-peers-per-addr",
                "CENTRAL_MAX_PEERS_PER_ADDR",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "max-files",
                "CENTRAL_MAX_FILES",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "max-keys",
                "CENTRAL_MAX_KEYS",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "max-replicas",
                "CENTRAL_MAX_REPLICAS",
                "a whole number from 2 to 64",
                &["1", "65"],
                &["2", "64"],
            ),
            (
                "max-pins-per-peer",
                "CENTRAL_MAX_PINS_PER_PEER",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "max-watches-per-peer",
                "CENTRAL_MAX_WATCHES_PER_PEER",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "max-pinned-bytes-per-peer",
                "CENTRAL_MAX_PINNED_BYTES_PER_PEER",
                "a positive whole number",
                &["0", "-1"],
                &["1"],
            ),
            (
                "max-pins-per-addr",
                "CENTRAL_MAX_PINS_PER_ADDR",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "max-pinned-bytes-per-addr",
                "CENTRAL_MAX_PINNED_BYTES_PER_ADDR",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "pin-orphan-days",
                "CENTRAL_PIN_ORPHAN_DAYS",
                "a number of days from 0 to 36500",
                &["-1", "36501"],
                &["0", "36500"],
            ),
            (
                "audit-secs",
                "CENTRAL_AUDIT_SECS",
                "a number of seconds from 1 to 86400",
                &["0", "86401"],
                &["1", "86400"],
            ),
            (
                "replica-grace-secs",
                "CENTRAL_REPLICA_GRACE_SECS",
                "a positive whole number",
                &["0"],
                &["1"],
            ),
            (
                "key-retention-days",
                "CENTRAL_KEY_RETENTION_DAYS",
                "a number of days from 1 to 36500",
                &["0", "36501"],
                &["1", "36500"],
            ),
        ];
        for &(flag, var, range, refused, accepted) in cases {
            for v in refused {
                let e = args(&[&format!("--{flag}={v}")]).map(|_| ()).unwrap_err();
                assert_eq!(
                    e.kind(),
                    clap::error::ErrorKind::ValueValidation,
                    "--{flag}={v}"
                );
                let e = e.to_string();
                assert!(
                    e.contains(&format!("{var}: expected {range}, got {v:?}")),
                    "--{flag}={v}: {e}"
                );
            }
            for v in accepted {
                args(&[&format!("--{flag}={v}")]).unwrap_or_else(|e| panic!("--{flag}={v}: {e}"));
            }
        }
    }

    #[test]
    fn every_flag_is_its_variable() {
        // The names are a contract: `--foo-bar` is `CENTRAL_FOO_BAR`, and
        // every setting can come from the environment or a `.env`.
        let cmd = Args::command();
        let mut names = Vec::new();
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            let want = format!("CENTRAL_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(env.as_deref(), Some(want.as_str()), "--{long}");
            names.push(want);
        }
        // And `.env.example` documents exactly these.
        let mut documented: Vec<String> = include_str!("../../.env.example")
            .lines()
            .filter_map(|l| l.split_once('=')?.0.strip_prefix("CENTRAL_"))
            .map(|n| format!("CENTRAL_{n}"))
            .collect();
        documented.sort();
        names.sort();
        assert_eq!(names, documented);
    }

    #[test]
    fn sections_reach_the_config() {
        let c = args(&[
            "--pin-orphan-days=0",
            "--audit-secs=60",
            "--replica-grace-secs=7",
            "--key-retention-days=2",
            "--max-replicas=9",
            "--max-pins-per-peer=3",
            "--max-pinned-bytes-per-peer=4096",
            "--max-pins-per-addr=5",
            "--max-pinned-bytes-per-addr=8192",
            "--etcd-endpoints= http://a:2379,http://b:2379 ",
            "--etcd-prefix=/x/",
            "--name=c1",
            "--join-secret=",
        ])
        .unwrap()
        .config();
        assert_eq!(c.pin_orphan, Duration::ZERO);
        assert_eq!(c.audit_every, Duration::from_secs(60));
        assert_eq!(c.audit_retry, Config::default().audit_retry);
        assert_eq!(c.replica_grace, Duration::from_secs(7));
        assert_eq!(c.key_retention, Duration::from_secs(2 * 86_400));
        assert_eq!(c.limits.max_replicas, 9);
        assert_eq!(c.limits.max_pins_per_peer, 3);
        assert_eq!(c.limits.max_pinned_bytes_per_peer, 4096);
        assert_eq!(c.limits.max_pins_per_addr, 5);
        assert_eq!(c.limits.max_pinned_bytes_per_addr, 8192);
        assert_eq!(
            c.etcd_endpoints.as_deref(),
            Some("http://a:2379,http://b:2379")
        );
        assert_eq!(c.etcd_prefix, "/x/");
        assert_eq!(c.name.as_deref(), Some("c1"));
        assert_eq!(c.join_secret, None);
        assert!(c.tls.is_none() && c.drain.is_none() && c.peer_ca.is_empty());
        c.validate().unwrap();
        // Empty = unset.
        let c = args(&["--etcd-endpoints=", "--name= "]).unwrap().config();
        assert_eq!((c.etcd_endpoints, c.name), (None, None));
    }
}
