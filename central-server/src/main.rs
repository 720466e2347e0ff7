//! `central-server`: parse configuration, bind, serve until Ctrl+C/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use central_server::{Config, Limits};
use clap::{CommandFactory, Parser};
use peerdex_proto::types::MAX_REPLICAS;
use tracing_subscriber::EnvFilter;

/// The peerdex central directory (gRPC). Every flag can also be set with the
/// environment variable shown, or in a `.env` file next to where it runs.
#[derive(Debug, Parser)]
#[command(name = "central-server", version, about)]
struct Args {
    /// Address to serve gRPC on (port 0 picks a free one; the actual address
    /// is printed on stdout as `central-server listening on ADDR`).
    #[arg(long, env = "CENTRAL_LISTEN_ADDR", default_value = "0.0.0.0:50051",
          value_parser = parse::<SocketAddr>("CENTRAL_LISTEN_ADDR"))]
    listen_addr: SocketAddr,

    /// Address to serve Prometheus metrics on, at `/metrics` (plain HTTP,
    /// no auth: bind it to loopback or a private address). Empty = no
    /// metrics listener, and nothing is measured.
    #[arg(long, env = "CENTRAL_METRICS_ADDR", default_value = "",
          value_parser = metrics_addr)]
    metrics_addr: MetricsAddr,

    /// Directory of the database (created if missing). The index survives
    /// restarts there.
    #[arg(long, env = "CENTRAL_DATA_DIR", default_value = "./data/central")]
    data_dir: PathBuf,

    /// Lease length in seconds: a peer that does not heartbeat for this long
    /// vanishes from every answer.
    #[arg(long, env = "CENTRAL_LEASE_TTL_SECS", default_value_t = 30,
          value_parser = positive("CENTRAL_LEASE_TTL_SECS"))]
    lease_ttl_secs: u64,

    /// Heartbeat period advised to peers, in seconds; must be shorter than
    /// the lease so one lost heartbeat is not fatal.
    #[arg(long, env = "CENTRAL_HEARTBEAT_SECS", default_value_t = 10,
          value_parser = positive("CENTRAL_HEARTBEAT_SECS"))]
    heartbeat_secs: u64,

    /// Largest accepted request message, in bytes.
    #[arg(long, env = "CENTRAL_MAX_MESSAGE_BYTES", default_value_t = Limits::default().max_message_bytes,
          value_parser = positive_usize("CENTRAL_MAX_MESSAGE_BYTES"))]
    max_message_bytes: usize,

    /// Longest accepted file name, in bytes (at most 255).
    #[arg(long, env = "CENTRAL_MAX_NAME_BYTES", default_value_t = Limits::default().max_name_bytes,
          value_parser = positive_usize("CENTRAL_MAX_NAME_BYTES"))]
    max_name_bytes: usize,

    /// Most files in one Join/Publish/Unpublish, and in one peer's inventory.
    #[arg(long, env = "CENTRAL_MAX_INVENTORY", default_value_t = Limits::default().max_inventory,
          value_parser = positive_usize("CENTRAL_MAX_INVENTORY"))]
    max_inventory: usize,

    /// Most search hits per page (larger requested limits are clamped).
    #[arg(long, env = "CENTRAL_MAX_PAGE", default_value_t = Limits::default().max_page,
          value_parser = positive_usize("CENTRAL_MAX_PAGE"))]
    max_page: usize,

    /// Most holders listed per located file.
    #[arg(long, env = "CENTRAL_MAX_HOLDERS", default_value_t = Limits::default().max_holders,
          value_parser = positive_usize("CENTRAL_MAX_HOLDERS"))]
    max_holders: usize,

    /// Units of work one search may spend (a word of the index or a name
    /// visited); beyond it the answer is partial and says `truncated`.
    #[arg(long, env = "CENTRAL_SEARCH_BUDGET", default_value_t = Limits::default().search_budget,
          value_parser = positive_usize("CENTRAL_SEARCH_BUDGET"))]
    search_budget: usize,

    /// Joins per second per source address (burst: 10 seconds' worth;
    /// 0 = no limit).
    #[arg(long, env = "CENTRAL_JOIN_RATE", default_value_t = Limits::default().join_rate,
          value_parser = rate("CENTRAL_JOIN_RATE"))]
    join_rate: u32,

    /// Publish + Unpublish calls per second per peer (burst: 10 seconds'
    /// worth; 0 = no limit).
    #[arg(long, env = "CENTRAL_PUBLISH_RATE", default_value_t = Limits::default().publish_rate,
          value_parser = rate("CENTRAL_PUBLISH_RATE"))]
    publish_rate: u32,

    /// Search calls per second per source address, and per peer when the
    /// call names one (burst: 10 seconds' worth; 0 = no limit).
    #[arg(long, env = "CENTRAL_SEARCH_RATE", default_value_t = Limits::default().search_rate,
          value_parser = rate("CENTRAL_SEARCH_RATE"))]
    search_rate: u32,

    /// Peers joined at a time from one source address (peers behind one
    /// NAT share it).
    #[arg(long, env = "CENTRAL_MAX_PEERS_PER_ADDR", default_value_t = Limits::default().max_peers_per_addr,
          value_parser = positive_usize("CENTRAL_MAX_PEERS_PER_ADDR"))]
    max_peers_per_addr: usize,

    /// Holdings (a peer serving a file under a name) in the whole directory.
    #[arg(long, env = "CENTRAL_MAX_FILES", default_value_t = Limits::default().max_files,
          value_parser = positive_usize("CENTRAL_MAX_FILES"))]
    max_files: usize,

    /// Peer ids bound to keys, kept even after their peers leave (so that
    /// nobody can take a departed peer's id). When full, the binding of the
    /// absent peer idle longest is forgotten to make room.
    #[arg(long, env = "CENTRAL_MAX_KEYS", default_value_t = Limits::default().max_keys,
          value_parser = positive_usize("CENTRAL_MAX_KEYS"))]
    max_keys: usize,

    /// Highest number of live copies a pin may ask for (`peerdex replicate
    /// ID N`, `peerdex upload --replicas N`). 2 to 64.
    #[arg(long, env = "CENTRAL_MAX_REPLICAS", default_value_t = Limits::default().max_replicas,
          value_parser = replicas("CENTRAL_MAX_REPLICAS"))]
    max_replicas: u32,

    /// Pins one peer may hold.
    #[arg(long, env = "CENTRAL_MAX_PINS_PER_PEER", default_value_t = Limits::default().max_pins_per_peer,
          value_parser = positive_usize("CENTRAL_MAX_PINS_PER_PEER"))]
    max_pins_per_peer: usize,

    /// Bytes one peer's pins may ask the network to keep: each pinned
    /// file's size times the copies it asks for, summed.
    #[arg(long, env = "CENTRAL_MAX_PINNED_BYTES_PER_PEER", default_value_t = Limits::default().max_pinned_bytes_per_peer,
          value_parser = positive("CENTRAL_MAX_PINNED_BYTES_PER_PEER"))]
    max_pinned_bytes_per_peer: u64,

    /// Pins that calls from one source address may set, whatever key they
    /// sign with (a key costs one Challenge; an address does not).
    #[arg(long, env = "CENTRAL_MAX_PINS_PER_ADDR", default_value_t = Limits::default().max_pins_per_addr,
          value_parser = positive_usize("CENTRAL_MAX_PINS_PER_ADDR"))]
    max_pins_per_addr: usize,

    /// Bytes the pins set from one source address may ask the network to
    /// keep (size times copies, summed).
    #[arg(long, env = "CENTRAL_MAX_PINNED_BYTES_PER_ADDR", default_value_t = Limits::default().max_pinned_bytes_per_addr,
          value_parser = positive("CENTRAL_MAX_PINNED_BYTES_PER_ADDR"))]
    max_pinned_bytes_per_addr: u64,

    /// Days a pin outlives its owner's lease: a pin whose owner has not
    /// been back for this long ends and its replicas are released
    /// (0 = the pin ends with its owner's lease).
    #[arg(long, env = "CENTRAL_PIN_ORPHAN_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(0..=36_500))]
    pin_orphan_days: u32,

    /// Seconds between two audits of a copy the directory counts toward a
    /// pin: the leader fetches a random chunk from the holder and checks
    /// it against the file id. Unproven copies are audited at once.
    #[arg(long, env = "CENTRAL_AUDIT_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    audit_secs: u64,

    /// PEM file of CA certificates to trust, beside the system's roots,
    /// when auditing peers whose API is https (set it to your network's CA,
    /// as PSERVER_CA_FILE on the PServers).
    #[arg(long, env = "CENTRAL_PEER_CA_FILE", value_name = "PEM")]
    peer_ca_file: Option<PathBuf>,

    /// Seconds a pinned file may keep more live copies than asked (an
    /// owner came back) before volunteers are asked to drop the extra
    /// replicas. Owners' copies are never dropped.
    #[arg(long, env = "CENTRAL_REPLICA_GRACE_SECS", default_value_t = 300,
          value_parser = positive("CENTRAL_REPLICA_GRACE_SECS"))]
    replica_grace_secs: u64,

    /// Days a departed peer's id stays bound to its key: within them only
    /// that key can join with the id again; after them the id is free.
    #[arg(long, env = "CENTRAL_KEY_RETENTION_DAYS", default_value_t = 90,
          value_parser = days("CENTRAL_KEY_RETENTION_DAYS"))]
    key_retention_days: u32,

    /// Makes the network private: only PServers whose PSERVER_JOIN_SECRET
    /// is this may join, and every peer API then asks for a credential
    /// signed by this directory. At least 16 characters; needs TLS.
    #[arg(long, env = "CENTRAL_JOIN_SECRET", hide_env_values = true)]
    join_secret: Option<String>,

    /// Keep the directory in etcd instead of the embedded SQLite database:
    /// comma-separated client URLs of the etcd members, e.g.
    /// http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379.
    /// Then any number of centrals serve the same directory, all active,
    /// and one of them is elected leader. Empty = SQLite in
    /// CENTRAL_DATA_DIR, one central.
    #[arg(long, env = "CENTRAL_ETCD_ENDPOINTS", default_value = "")]
    etcd_endpoints: String,

    /// Prefix of the directory's keys in etcd; centrals with the same
    /// endpoints and prefix serve the same directory.
    #[arg(long, env = "CENTRAL_ETCD_PREFIX", default_value = "/peerdex/")]
    etcd_prefix: String,

    /// This central's name in answers, logs and the leader election
    /// (letters, digits, . _ : -). Empty = <hostname>:<port>.
    #[arg(long, env = "CENTRAL_NAME", default_value = "")]
    name: String,
    /// PEM certificate (a chain: leaf first) to serve gRPC over TLS. With
    /// CENTRAL_TLS_KEY the port speaks only TLS (peers then use an https://
    /// PSERVER_CENTRAL_URL); both or neither.
    #[arg(long, env = "CENTRAL_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of CENTRAL_TLS_CERT (keep it mode 0600).
    #[arg(long, env = "CENTRAL_TLS_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,
}

/// `CENTRAL_METRICS_ADDR`: empty, or an address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MetricsAddr(Option<SocketAddr>);

fn metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s.trim().is_empty() {
        return Ok(MetricsAddr(None));
    }
    s.trim().parse().map(|a| MetricsAddr(Some(a))).map_err(|e| {
        format!("CENTRAL_METRICS_ADDR: {e}: expected an address such as 127.0.0.1:9090, or empty for none, got {s:?}")
    })
}

/// A value parser whose error names the environment variable too.
fn parse<T: FromStr>(var: &'static str) -> impl Fn(&str) -> Result<T, String> + Clone
where
    T::Err: std::fmt::Display,
{
    move |s| s.parse().map_err(|e| format!("{var}: {e}"))
}

fn positive(var: &'static str) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |s| match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{var}: expected a positive whole number, got {s:?}"
        )),
    }
}

fn positive_usize(var: &'static str) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s| match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{var}: expected a positive whole number, got {s:?}"
        )),
    }
}

/// A highest replica count, 2 to 64.
fn replicas(var: &'static str) -> impl Fn(&str) -> Result<u32, String> + Clone {
    move |s| match s.parse::<u32>() {
        Ok(n) if (2..=MAX_REPLICAS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{var}: expected a whole number from 2 to {MAX_REPLICAS}, got {s:?}"
        )),
    }
}

/// A number of days, 1 to 36,500.
fn days(var: &'static str) -> impl Fn(&str) -> Result<u32, String> + Clone {
    move |s| match s.parse::<u32>() {
        Ok(n) if (1..=36_500).contains(&n) => Ok(n),
        _ => Err(format!(
            "{var}: expected a number of days from 1 to 36500, got {s:?}"
        )),
    }
}

/// A rate: a whole number of calls per second, 0 for no limit, at most
/// one million.
fn rate(var: &'static str) -> impl Fn(&str) -> Result<u32, String> + Clone {
    move |s| match s.parse::<u32>() {
        Ok(n) if n <= 1_000_000 => Ok(n),
        _ => Err(format!(
            "{var}: expected calls per second (0 = no limit, at most 1000000), got {s:?}"
        )),
    }
}

impl Args {
    fn config(&self) -> Config {
        Config {
            tls: None,
            data_dir: self.data_dir.clone(),
            lease_ttl: Duration::from_secs(self.lease_ttl_secs),
            heartbeat_interval: Duration::from_secs(self.heartbeat_secs),
            key_retention: Duration::from_secs(u64::from(self.key_retention_days) * 86_400),
            join_secret: self.join_secret.clone().filter(|s| !s.is_empty()),
            etcd_endpoints: Some(self.etcd_endpoints.trim().to_owned()).filter(|s| !s.is_empty()),
            etcd_prefix: self.etcd_prefix.clone(),
            name: Some(self.name.trim().to_owned()).filter(|s| !s.is_empty()),
            drain: None,
            replica_grace: Duration::from_secs(self.replica_grace_secs),
            pin_orphan: Duration::from_secs(u64::from(self.pin_orphan_days) * 86_400),
            audit_every: Duration::from_secs(self.audit_secs),
            audit_retry: Config::new("").audit_retry,
            peer_ca: Vec::new(),
            limits: Limits {
                max_message_bytes: self.max_message_bytes,
                max_name_bytes: self.max_name_bytes,
                max_inventory: self.max_inventory,
                max_page: self.max_page,
                max_holders: self.max_holders,
                search_budget: self.search_budget,
                join_rate: self.join_rate,
                publish_rate: self.publish_rate,
                search_rate: self.search_rate,
                max_peers_per_addr: self.max_peers_per_addr,
                max_files: self.max_files,
                max_keys: self.max_keys,
                max_replicas: self.max_replicas,
                max_pins_per_peer: self.max_pins_per_peer,
                max_pinned_bytes_per_peer: self.max_pinned_bytes_per_peer,
                max_pins_per_addr: self.max_pins_per_addr,
                max_pinned_bytes_per_addr: self.max_pinned_bytes_per_addr,
                ..Limits::default()
            },
        }
    }
}

fn main() -> ExitCode {
    // One crypto provider for the whole process: ring (never aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    let mut config = args.config();
    let set = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    config.tls = central_server::tls_files::from_settings(
        set(&args.tls_cert).as_deref(),
        set(&args.tls_key).as_deref(),
    )?;
    if let Some(path) = set(&args.peer_ca_file) {
        config.peer_ca = central_server::read_ca_file(&path)?;
    }
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (CENTRAL_LISTEN_ADDR)",
                args.listen_addr
            )
        })?;
    let metrics =
        match args.metrics_addr.0 {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| {
                format!("cannot listen for metrics on {a} (CENTRAL_METRICS_ADDR)")
            })?),
            None => None,
        };
    let addr = listener.local_addr()?;
    println!("central-server listening on {addr}");
    if let Some(m) = &metrics {
        println!(
            "central-server metrics on http://{}/metrics",
            m.local_addr()?
        );
    }
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
    use clap::{CommandFactory, FromArgMatches};

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
        assert_eq!(a.listen_addr, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(a.metrics_addr, MetricsAddr(None));
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
            a.metrics_addr,
            MetricsAddr(Some("127.0.0.1:9090".parse().unwrap()))
        );
        let a = args(&["--metrics-addr="]).unwrap();
        assert_eq!(a.metrics_addr, MetricsAddr(None));
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
}
