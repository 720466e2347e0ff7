//! The command line: flags with their environment variables (and `.env`),
//! their help, defaults (from [`super::defaults`]) and bounds, and
//! [`Args::into_config`], which checks what spans several settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use peerdex_proto::PeerUrl;

use super::{
    Config, ConfigError, ControlConfig, DownloadConfig, LinkConfig, PeerApiConfig, RelayConfig,
    ReplicaConfig, StoreConfig, WantConfig, defaults, parse_centrals, parse_notify_url,
};
use crate::tls::ServerTls;

/// The peerdex peer daemon: shares the files in a folder, finds files through
/// a neighbour PServer and the central directory, and downloads them directly
/// from the peers that hold them, verified with BLAKE3.
///
/// Every flag can also be set with the environment variable shown, or in a
/// `.env` file in the working directory.
#[derive(Debug, Parser)]
#[command(name = "pserver", version, about, long_about = None)]
pub struct Args {
    /// Address of the control API used by the local `peerdex` client. Keep it
    /// on loopback; any other address requires PSERVER_API_TOKEN and TLS
    /// (PSERVER_TLS_CERT/KEY), or PSERVER_TRUSTED_LAN=true for plaintext.
    #[arg(long, env = "PSERVER_API_ADDR", default_value = defaults::API_ADDR)]
    pub api_addr: SocketAddr,

    /// Address of the peer API that other peers download from.
    #[arg(long, env = "PSERVER_PEER_ADDR", default_value = defaults::PEER_ADDR)]
    pub peer_addr: SocketAddr,

    /// URL other peers use to reach the peer API, e.g. http://203.0.113.7:7071
    /// (https:// when PSERVER_TLS_CERT is set). Defaults to http(s)://<peer
    /// addr> unless the peer address is 0.0.0.0/::, in which case it is
    /// required (the central must hand out a reachable URL).
    #[arg(long, env = "PSERVER_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Folder of shared files, under their human names. Files dropped in or
    /// removed by hand are published or withdrawn within a few seconds.
    #[arg(long, env = "PSERVER_SHARE_DIR", default_value = defaults::SHARE_DIR)]
    pub share_dir: PathBuf,

    /// Folder for the peer id, the hash cache and downloads in progress.
    #[arg(long, env = "PSERVER_DATA_DIR", default_value = defaults::DATA_DIR)]
    pub data_dir: PathBuf,

    /// Folder where private files fetched with a ticket (`peerdex get
    /// TICKET`) are stored in the clear: never scanned, served or
    /// announced. Must be outside PSERVER_SHARE_DIR. Default:
    /// PSERVER_DATA_DIR/private.
    #[arg(long, env = "PSERVER_PRIVATE_DIR")]
    pub private_dir: Option<PathBuf>,

    /// gRPC URL of the central directory, or a comma-separated list of
    /// the centrals that serve one directory (at most 16): the PServer picks
    /// one at random, stays with it while it answers, and moves to the next
    /// when it fails, is overloaded or shuts down.
    #[arg(long, env = "PSERVER_CENTRAL_URL", default_value = defaults::CENTRAL_URL)]
    pub central_url: String,

    /// Comma-separated peer-API URLs of neighbour PServers, asked in order to
    /// find files. Empty: ask the central directly.
    #[arg(
        long,
        env = "PSERVER_NEIGHBOURS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub neighbours: Vec<String>,

    /// Bearer token required on every control-API request. Mandatory when the
    /// control API is bound to a non-loopback address.
    #[arg(long, env = "PSERVER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// The join secret of a private network (the directory's
    /// CENTRAL_JOIN_SECRET). Joins prove it without sending it, and only
    /// over TLS (an https:// PSERVER_CENTRAL_URL); every peer API of the
    /// network then asks for the credential the directory gives.
    #[arg(long, env = "PSERVER_JOIN_SECRET", hide_env_values = true)]
    pub join_secret: Option<String>,

    /// Largest file accepted by an upload through the control API, in bytes.
    #[arg(long, env = "PSERVER_MAX_UPLOAD_BYTES", default_value_t = defaults::MAX_UPLOAD_BYTES,
          value_parser = max_upload_bytes)]
    pub max_upload_bytes: u64,

    /// Free space, in bytes, kept for the user on the disks of the share and
    /// data folders: a download (its size, from a manifest verified against
    /// the file id) or an upload that would leave less is refused up front,
    /// naming the figures. 0 = no reserve (the disk may fill up).
    #[arg(long, env = "PSERVER_MIN_FREE_BYTES", default_value_t = defaults::MIN_FREE_BYTES)]
    pub min_free_bytes: u64,

    /// Disk space, in bytes, that the partial downloads kept for resuming
    /// (failed or interrupted jobs) may take together; beyond it the oldest
    /// are dropped, never one a running job writes. 0 = no cap.
    #[arg(long, env = "PSERVER_MAX_PARTIAL_BYTES", default_value_t = defaults::MAX_PARTIAL_BYTES,
          value_parser = max_partial_bytes)]
    pub max_partial_bytes: u64,

    /// Disk space, in bytes, this peer offers for replicas of other peers'
    /// files: when someone pins a file (`peerdex replicate`), the directory
    /// may ask this peer to fetch a copy and keep it under
    /// PSERVER_DATA_DIR/replicas/ (never the share folder), served to other
    /// peers like a shared file. Replicas held and being fetched never take
    /// more than this together, and never cut into PSERVER_MIN_FREE_BYTES.
    /// 0 = offer none (this peer stores nothing its user did not ask for);
    /// otherwise at least 1048576 (1 MiB).
    #[arg(long, env = "PSERVER_REPLICA_QUOTA_BYTES", default_value_t = defaults::REPLICA_QUOTA_BYTES,
          value_parser = replica_quota_bytes)]
    pub replica_quota_bytes: u64,

    /// Concurrent uploads to other peers; beyond it peers get 503 + Retry-After.
    #[arg(long, env = "PSERVER_MAX_UPLOADS", default_value_t = defaults::MAX_UPLOADS,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_uploads: u32,

    /// On Ctrl+C/SIGTERM, seconds in-flight uploads may take to finish.
    #[arg(long, env = "PSERVER_DRAIN_SECS", default_value_t = defaults::DRAIN_SECS,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_secs: u64,

    /// Seconds between full rescans of the share folder tree: the safety
    /// net (changes are seen by notification within about a second; the
    /// rescan catches what notifications cannot see, e.g. on network file
    /// systems). Default 3600, like Syncthing's hourly full scan.
    #[arg(long, env = "PSERVER_RESCAN_SECS", default_value_t = defaults::RESCAN_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub rescan_secs: u64,

    /// Upload rate cap across all transfers to other peers, in bytes per
    /// second (token bucket). 0 = unlimited.
    #[arg(long, env = "PSERVER_MAX_UPLOAD_BPS", default_value_t = defaults::MAX_UPLOAD_BPS)]
    pub max_upload_bps: u64,

    /// Download rate cap across all download jobs, in bytes per second. 0 = unlimited.
    #[arg(long, env = "PSERVER_MAX_DOWNLOAD_BPS", default_value_t = defaults::MAX_DOWNLOAD_BPS)]
    pub max_download_bps: u64,

    /// Holders a download fetches chunks from at the same time (swarming).
    /// More sources spread the load and survive slow or dying holders; 1
    /// fetches from one holder at a time.
    #[arg(long, env = "PSERVER_MAX_SOURCES", default_value_t = defaults::MAX_SOURCES,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_sources: u64,

    /// Slowest average rate, in bytes per second, at which another peer may
    /// take a response from us (measured over 20 s, counting only the time
    /// the peer itself holds the transfer up, never our own rate cap). A
    /// slower reader loses its upload slot and its connection, so slow or
    /// stalled readers cannot keep honest peers out. 0 = no minimum.
    #[arg(long, env = "PSERVER_UPLOAD_MIN_BPS", default_value_t = defaults::UPLOAD_MIN_BPS)]
    pub upload_min_bps: u64,

    /// Longest time, in seconds, a response to another peer may make no
    /// progress (the peer reads nothing) before it loses its upload slot and
    /// its connection.
    #[arg(long, env = "PSERVER_UPLOAD_IDLE_SECS", default_value_t = defaults::UPLOAD_IDLE_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub upload_idle_secs: u64,

    /// Open peer-API connections allowed per source IP address (IPv6: per
    /// /64). Connections beyond it are answered 429 with Retry-After and closed.
    #[arg(long, env = "PSERVER_MAX_CONNS_PER_ADDR", default_value_t = defaults::MAX_CONNS_PER_ADDR,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_conns_per_addr: u32,

    /// Neighbour-role requests (locate, search on behalf of other peers) per
    /// second per source IP address, with a burst of ten seconds' worth;
    /// beyond it 429 with Retry-After, so no one can flood the central
    /// through this peer.
    #[arg(long, env = "PSERVER_NEIGHBOUR_RATE", default_value_t = defaults::NEIGHBOUR_RATE,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub neighbour_rate: u32,

    /// Wanted files (`peerdex want`) this PServer keeps waiting at once; a
    /// want beyond it is refused naming this setting. Each is one
    /// subscription at the directory, which allows
    /// CENTRAL_MAX_WATCHES_PER_PEER (default 100) per peer.
    #[arg(long, env = "PSERVER_MAX_WANTS", default_value_t = defaults::MAX_WANTS,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_wants: u64,

    /// URL (http:// or https://) the PServer POSTs a small JSON document to
    /// when a want matches, is ambiguous, starts downloading, fails or
    /// completes (a phone notification service, a chat bot, a script).
    /// Each POST has 5 s; failures are logged and counted
    /// (peerdex_pserver_notify_failures_total), never retried, never
    /// blocking. Empty: no notifications.
    #[arg(long, env = "PSERVER_NOTIFY_URL", value_name = "URL")]
    pub notify_url: Option<String>,

    /// How the directory judges whether other peers can reach this one at
    /// PSERVER_PUBLIC_URL. auto: it dials the URL back at every Join; if
    /// nobody can reach it (a home router, a carrier NAT), this PServer
    /// keeps a tunnel to a relay and its files are listed through the
    /// relay. public: dialled back too, but never relayed (if the dial-back
    /// fails, the files are not listed and `peerdex status` says why).
    /// firewalled: always through a relay, no dial-back.
    #[arg(long, env = "PSERVER_REACHABILITY", value_enum, default_value_t = defaults::REACHABILITY)]
    pub reachability: super::Reachability,

    /// Offer to relay for peers behind NAT (taken only when the directory
    /// can reach this PServer): requests for their files pass through this
    /// peer API, bytes in and out, never stored.
    #[arg(long, env = "PSERVER_RELAY", default_value_t = defaults::RELAY,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub relay: bool,

    /// Peers behind NAT relayed at once; an attach beyond it is refused
    /// with 503 + Retry-After and the directory assigns another relay.
    #[arg(long, env = "PSERVER_RELAY_MAX_PEERS", default_value_t = defaults::RELAY_MAX_PEERS,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub relay_max_peers: u32,

    /// Bytes per second relayed for each peer behind NAT, both directions
    /// together (token bucket). 0 = unlimited.
    #[arg(long, env = "PSERVER_RELAY_MAX_BPS", default_value_t = defaults::RELAY_MAX_BPS)]
    pub relay_max_bps: u64,

    /// PEM certificate (a chain: leaf first) the peer API serves over TLS,
    /// and the control API when bound off loopback. Set with
    /// PSERVER_TLS_KEY; then PSERVER_PUBLIC_URL must be https://.
    #[arg(long, env = "PSERVER_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of PSERVER_TLS_CERT (keep it mode 0600).
    #[arg(long, env = "PSERVER_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of extra CA certificates trusted for the central and for
    /// other peers (your network's own CA), besides the system's roots.
    #[arg(long, env = "PSERVER_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Allow the control API off loopback over plaintext (still with
    /// PSERVER_API_TOKEN), for a LAN you trust; a warning is logged at start.
    #[arg(long, env = "PSERVER_TRUSTED_LAN", default_value_t = false)]
    pub trusted_lan: bool,

    /// Without a command, run the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `pserver` can do besides running the daemon.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Client tokens for the control API (for the CLI or the web UI on
    /// another machine, or a script that should only read).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a new client token: a JWT signed with this PServer's API key
    /// (`api.key` in PSERVER_DATA_DIR, created if missing). Give it to a
    /// client as `peerdex --token` or PEERDEX_API_TOKEN. The PServer checks
    /// its signature, expiry and scope on every request; removing `api.key`
    /// (PServer stopped) revokes every token issued so far.
    ///
    /// Example: pserver token create --scope read --ttl 7d --name dashboard
    #[command(verbatim_doc_comment)]
    Create {
        /// `read`: search, list, status, jobs, file contents. `write`: also
        /// upload, download, cancel, remove.
        #[arg(long, value_enum)]
        scope: crate::control::tokens::Scope,
        /// Lifetime: a number and s, m, h or d (at most 366 days).
        #[arg(long, default_value = "24h", value_parser = crate::control::tokens::parse_ttl)]
        ttl: Duration,
        /// Who holds it (a device, a script); shown in refusals.
        #[arg(long, default_value = "client")]
        name: String,
        /// Print JSON ({"token", "scope", "name", "expires_at"}) instead of the bare token.
        #[arg(long)]
        json: bool,
    },
}

impl Args {
    /// Check cross-field rules and build the typed [`Config`]. Errors name the
    /// variable to fix.
    ///
    /// `peer_local` is the address the peer listener actually got (it differs
    /// from `peer_addr` when that asks for port 0); a derived public URL uses it.
    pub fn into_config(self, peer_local: std::net::SocketAddr) -> Result<Config, ConfigError> {
        let set = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let tls = ServerTls::from_settings(
            crate::tls::VARS,
            set(self.tls_cert).as_deref(),
            set(self.tls_key).as_deref(),
        )?;
        let ca_roots = match set(self.ca_file) {
            Some(f) => crate::tls::read_certs("PSERVER_CA_FILE", &f)?,
            None => Vec::new(),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = match self.public_url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => u.parse::<PeerUrl>().map_err(ConfigError::PublicUrl)?,
            None if self.peer_addr.ip().is_unspecified() => {
                return Err(ConfigError::PublicUrlRequired {
                    peer_addr: self.peer_addr,
                    scheme,
                });
            }
            None => format!("{scheme}://{peer_local}")
                .parse()
                .map_err(ConfigError::PeerAddr)?,
        };
        match (public_url.as_str().starts_with("https://"), tls.is_some()) {
            (true, false) => return Err(ConfigError::HttpsWithoutCertificate { url: public_url }),
            (false, true) => return Err(ConfigError::HttpWithCertificate { url: public_url }),
            _ => {}
        }
        let api_addr = self.api_addr;
        let off_loopback = !api_addr.ip().is_loopback();
        if off_loopback && self.api_token.as_deref().unwrap_or("").is_empty() {
            return Err(ConfigError::ApiTokenRequired { api_addr });
        }
        if off_loopback && tls.is_none() && !self.trusted_lan {
            return Err(ConfigError::ApiTlsRequired { api_addr });
        }
        if let Some(t) = self.api_token.as_deref().filter(|t| !t.is_empty())
            && (t.len() < 16 || !t.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(ConfigError::WeakApiToken);
        }
        let centrals = parse_centrals(&self.central_url)?;
        let neighbours = self
            .neighbours
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<PeerUrl>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Neighbours)?;
        let c = Config {
            public_url,
            share_dir: self.share_dir,
            private_dir: self
                .private_dir
                .unwrap_or_else(|| self.data_dir.join(defaults::PRIVATE_SUBDIR)),
            data_dir: self.data_dir,
            link: LinkConfig {
                centrals,
                neighbours,
                join_secret: self.join_secret.filter(|t| !t.is_empty()),
                ..LinkConfig::default()
            },
            control: ControlConfig {
                api_token: self.api_token.filter(|t| !t.is_empty()),
                max_upload_bytes: self.max_upload_bytes,
            },
            peer_api: PeerApiConfig {
                max_uploads: self.max_uploads,
                drain: Duration::from_secs(self.drain_secs),
                max_upload_bps: self.max_upload_bps,
                upload_min_bps: self.upload_min_bps,
                upload_idle: Duration::from_secs(self.upload_idle_secs),
                max_conns_per_addr: self.max_conns_per_addr,
                neighbour_rate: self.neighbour_rate,
            },
            downloads: DownloadConfig {
                max_sources: self.max_sources as usize,
                max_download_bps: self.max_download_bps,
                ..DownloadConfig::default()
            },
            store: StoreConfig {
                rescan_interval: Duration::from_secs(self.rescan_secs),
                min_free_bytes: self.min_free_bytes,
                max_partial_bytes: self.max_partial_bytes,
            },
            replicas: ReplicaConfig {
                quota_bytes: self.replica_quota_bytes,
            },
            wants: WantConfig {
                max_wants: self.max_wants as usize,
                notify_url: match self.notify_url.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(u) => Some(parse_notify_url(u)?),
                },
            },
            relay: RelayConfig {
                reachability: self.reachability,
                enabled: self.relay,
                max_peers: self.relay_max_peers,
                max_bps: self.relay_max_bps,
            },
            api_tls: tls.is_some() && off_loopback,
            tls,
            ca_roots,
        };
        c.check_network()?;
        Ok(c)
    }
}

/// A size setting out of its bounds (the value is in bytes).
#[derive(Debug, thiserror::Error)]
enum SizeError {
    #[error("not a number of bytes: {0}")]
    NotANumber(#[from] std::num::ParseIntError),
    #[error("PSERVER_MAX_UPLOAD_BYTES must be greater than 0")]
    NoUploads,
    #[error(
        "PSERVER_MAX_PARTIAL_BYTES ({0}) must be 0 (no cap) or at least 1048576 (one chunk): \
         a smaller cap drops every partial download it could keep"
    )]
    PartialCap(u64),
    #[error(
        "PSERVER_REPLICA_QUOTA_BYTES ({0}) must be 0 (no replica space) or at least 1048576 \
         (1 MiB): the value is in bytes, and a smaller quota holds next to nothing"
    )]
    ReplicaQuota(u64),
}

/// One MiB: the least a partial-download cap or a replica quota may be.
const MIB: u64 = 1 << 20;

/// `PSERVER_MAX_UPLOAD_BYTES`: at least 1.
fn max_upload_bytes(s: &str) -> Result<u64, SizeError> {
    match s.parse::<u64>()? {
        0 => Err(SizeError::NoUploads),
        n => Ok(n),
    }
}

/// `PSERVER_MAX_PARTIAL_BYTES`: 0 or at least [`MIB`].
fn max_partial_bytes(s: &str) -> Result<u64, SizeError> {
    match s.parse::<u64>()? {
        n if n != 0 && n < MIB => Err(SizeError::PartialCap(n)),
        n => Ok(n),
    }
}

/// `PSERVER_REPLICA_QUOTA_BYTES`: 0 or at least [`MIB`].
fn replica_quota_bytes(s: &str) -> Result<u64, SizeError> {
    match s.parse::<u64>()? {
        n if n != 0 && n < MIB => Err(SizeError::ReplicaQuota(n)),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags only: `env` is dropped from every argument, so a `PSERVER_*`
    /// variable in the developer's shell cannot change what is tested.
    fn args(extra: &[&str]) -> Args {
        use clap::{CommandFactory, FromArgMatches};
        let mut v = vec!["pserver"];
        v.extend_from_slice(extra);
        let m = Args::command()
            .mut_args(|a| a.env(None::<&str>))
            .try_get_matches_from(v)
            .unwrap();
        Args::from_arg_matches(&m).unwrap()
    }

    /// The error of parsing `extra` (flags only), as the user sees it.
    fn parse_err(extra: &[&str]) -> String {
        use clap::{CommandFactory, FromArgMatches};
        let mut v = vec!["pserver"];
        v.extend_from_slice(extra);
        let e = match Args::command()
            .mut_args(|a| a.env(None::<&str>))
            .try_get_matches_from(v)
        {
            Err(e) => e,
            Ok(m) => Args::from_arg_matches(&m).unwrap_err(),
        };
        e.to_string()
    }

    impl Args {
        fn cfg(self) -> Result<Config, ConfigError> {
            let local = self.peer_addr;
            self.into_config(local)
        }
    }

    #[test]
    fn public_url_rules() {
        let e = args(&[]).cfg().unwrap_err();
        assert!(e.to_string().contains("PSERVER_PUBLIC_URL"), "{e}");
        let c = args(&["--peer-addr", "127.0.0.1:9000"]).cfg().unwrap();
        assert_eq!(c.public_url.as_str(), "http://127.0.0.1:9000");
        let e = args(&["--public-url", "ftp://x"]).cfg().unwrap_err();
        assert!(format!("{e:#}").contains("PSERVER_PUBLIC_URL"));
    }

    #[test]
    fn token_and_tls_required_off_loopback() {
        let off = ["--peer-addr", "127.0.0.1:1", "--api-addr", "0.0.0.0:7070"];
        let token = ["--api-token", "0123456789abcdef"];
        let e = args(&off).cfg().unwrap_err();
        assert!(e.to_string().contains("PSERVER_API_TOKEN"), "{e}");
        // A token alone is not enough: plaintext off loopback needs the opt-out.
        let e = args(&[&off[..], &token[..]].concat()).cfg().unwrap_err();
        assert!(e.to_string().contains("PSERVER_TLS_CERT"), "{e}");
        assert!(e.to_string().contains("PSERVER_TRUSTED_LAN"), "{e}");
        let c = args(&[&off[..], &token[..], &["--trusted-lan"]].concat())
            .cfg()
            .unwrap();
        assert!(!c.api_tls);
        // The opt-out does not waive the token.
        let e = args(&[&off[..], &["--trusted-lan"]].concat())
            .cfg()
            .unwrap_err();
        assert!(e.to_string().contains("PSERVER_API_TOKEN"), "{e}");
        // On loopback neither is needed.
        let c = args(&["--peer-addr", "127.0.0.1:1"]).cfg().unwrap();
        assert!(!c.api_tls && c.tls.is_none());
    }

    #[test]
    fn tls_settings() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = test_cert(dir.path());
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        // With a certificate, off loopback, a token suffices and the control
        // API speaks TLS; the derived public URL is https.
        let c = args(&[
            "--peer-addr",
            "127.0.0.1:9000",
            "--api-addr",
            "0.0.0.0:7070",
            "--api-token",
            "0123456789abcdef",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ])
        .cfg()
        .unwrap();
        assert!(c.api_tls && c.tls.is_some());
        assert_eq!(c.public_url.as_str(), "https://127.0.0.1:9000");
        // On loopback the control API stays plaintext.
        let c = args(&[
            "--peer-addr",
            "127.0.0.1:1",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ])
        .cfg()
        .unwrap();
        assert!(!c.api_tls && c.tls.is_some());
        // Both or neither.
        let e = args(&["--peer-addr", "127.0.0.1:1", "--tls-cert", cert])
            .cfg()
            .unwrap_err();
        assert!(e.to_string().contains("PSERVER_TLS_KEY is missing"), "{e}");
        let e = args(&["--peer-addr", "127.0.0.1:1", "--tls-key", key])
            .cfg()
            .unwrap_err();
        assert!(e.to_string().contains("PSERVER_TLS_CERT is missing"), "{e}");
        // An http public URL with a certificate, an https one without.
        let e = args(&[
            "--public-url",
            "http://127.0.0.1:1",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ])
        .cfg()
        .unwrap_err();
        assert!(e.to_string().contains("must be https://"), "{e}");
        let e = args(&["--public-url", "https://127.0.0.1:1"])
            .cfg()
            .unwrap_err();
        assert!(e.to_string().contains("has no certificate"), "{e}");
        // The CA file is read; a missing one is named.
        let c = args(&["--peer-addr", "127.0.0.1:1", "--ca-file", cert])
            .cfg()
            .unwrap();
        assert_eq!(c.ca_roots.len(), 1);
        let e = args(&[
            "--peer-addr",
            "127.0.0.1:1",
            "--ca-file",
            "/nonexistent.pem",
        ])
        .cfg()
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read PSERVER_CA_FILE /nonexistent.pem"),
            "{e:#}"
        );
    }

    /// A self-signed certificate for 127.0.0.1, written as PEM files.
    fn test_cert(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn abuse_limits() {
        let c = args(&["--peer-addr", "127.0.0.1:1"]).cfg().unwrap();
        assert_eq!(
            (
                c.peer_api.upload_min_bps,
                c.peer_api.upload_idle,
                c.peer_api.max_conns_per_addr,
                c.peer_api.neighbour_rate
            ),
            (4096, Duration::from_secs(30), 16, 20)
        );
        let c = args(&[
            "--peer-addr",
            "127.0.0.1:1",
            "--upload-min-bps",
            "0",
            "--upload-idle-secs",
            "5",
            "--max-conns-per-addr",
            "2",
            "--neighbour-rate",
            "3",
        ])
        .cfg()
        .unwrap();
        assert_eq!(
            (
                c.peer_api.upload_min_bps,
                c.peer_api.upload_idle,
                c.peer_api.max_conns_per_addr,
                c.peer_api.neighbour_rate
            ),
            (0, Duration::from_secs(5), 2, 3)
        );
        for bad in [
            ["--upload-idle-secs", "0"],
            ["--max-conns-per-addr", "0"],
            ["--neighbour-rate", "0"],
        ] {
            use clap::{CommandFactory, FromArgMatches};
            let m = Args::command()
                .mut_args(|a| a.env(None::<&str>))
                .try_get_matches_from(["pserver", bad[0], bad[1]]);
            assert!(
                m.is_err() || Args::from_arg_matches(&m.unwrap()).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn disk_space_settings() {
        let c = args(&["--peer-addr", "127.0.0.1:1"]).cfg().unwrap();
        assert_eq!(
            (c.store.min_free_bytes, c.store.max_partial_bytes),
            (1 << 30, 64 << 30)
        );
        let c = args(&[
            "--peer-addr",
            "127.0.0.1:1",
            "--min-free-bytes",
            "0",
            "--max-partial-bytes",
            "0",
        ])
        .cfg()
        .unwrap();
        assert_eq!((c.store.min_free_bytes, c.store.max_partial_bytes), (0, 0));
        // Refused where the flag is parsed, with the same words.
        let e = parse_err(&["--max-partial-bytes", "64"]);
        assert!(
            e.contains("PSERVER_MAX_PARTIAL_BYTES (64) must be 0 (no cap) or at least 1048576"),
            "{e}"
        );
        let e = parse_err(&["--max-upload-bytes", "0"]);
        assert!(
            e.contains("--max-upload-bytes")
                && e.contains("PSERVER_MAX_UPLOAD_BYTES must be greater than 0"),
            "{e}"
        );
    }

    #[test]
    fn replica_quota() {
        let c = args(&["--peer-addr", "127.0.0.1:1"]).cfg().unwrap();
        assert_eq!(c.replicas.quota_bytes, 0, "no replica space unless offered");
        let c = args(&[
            "--peer-addr",
            "127.0.0.1:1",
            "--replica-quota-bytes",
            "1073741824",
        ])
        .cfg()
        .unwrap();
        assert_eq!(c.replicas.quota_bytes, 1 << 30);
        let e = parse_err(&["--replica-quota-bytes", "512"]);
        assert!(
            e.contains(
                "PSERVER_REPLICA_QUOTA_BYTES (512) must be 0 (no replica space) or at least 1048576"
            ),
            "{e}"
        );
        for bad in ["-1", "1GB", "", "18446744073709551616"] {
            use clap::{CommandFactory, FromArgMatches};
            let m = Args::command()
                .mut_args(|a| a.env(None::<&str>))
                .try_get_matches_from([
                    "pserver".to_owned(),
                    format!("--replica-quota-bytes={bad}"),
                ]);
            let e = match m {
                Err(e) => e,
                Ok(m) => Args::from_arg_matches(&m).unwrap_err(),
            };
            assert!(
                e.to_string().contains("--replica-quota-bytes"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn central_lists() {
        let one = |u: &str| {
            args(&["--peer-addr", "127.0.0.1:1", "--central-url", u])
                .cfg()
                .map(|c| c.link.centrals)
        };
        // One URL works as it always did (trailing slash trimmed).
        assert_eq!(one("http://c:50051/").unwrap(), ["http://c:50051"]);
        assert_eq!(
            one(" https://a:1/ , http://b:2").unwrap(),
            ["https://a:1", "http://b:2"]
        );
        let e = |u: &str| format!("{:#}", one(u).unwrap_err());
        assert!(
            e("http://a,,http://b").contains("item 2 is empty"),
            "{}",
            e("http://a,,http://b")
        );
        assert!(e("http://a,").contains("item 2 is empty"));
        assert!(e("").contains("PSERVER_CENTRAL_URL is empty"));
        assert!(e("http://a, ftp://b").contains("\"ftp://b\" must start with http:// or https://"));
        assert!(
            e("http://a b").contains("\"http://a b\" is not a valid URL"),
            "{}",
            e("http://a b")
        );
        assert!(e("http://").contains("\"http://\""), "{}", e("http://"));
        assert!(
            e("http://a:1,http://A:1/").contains("lists http://A:1 twice"),
            "{}",
            e("http://a:1,http://A:1/")
        );
        let sixteen: Vec<String> = (0..16).map(|i| format!("http://c{i}:1")).collect();
        assert_eq!(one(&sixteen.join(",")).unwrap().len(), 16);
        let seventeen = format!("{},http://c16:1", sixteen.join(","));
        assert!(e(&seventeen).contains("lists 17 centrals; at most 16 are allowed"));
        // A private network joins only over TLS, at every central.
        let e = args(&[
            "--peer-addr",
            "127.0.0.1:1",
            "--central-url",
            "https://a:1,http://b:2",
            "--join-secret",
            "0123456789abcdef",
        ])
        .cfg()
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("PSERVER_CENTRAL_URL http://b:2 is not https://"),
            "{e}"
        );
    }

    #[test]
    fn neighbours_parse() {
        let c = args(&[
            "--peer-addr",
            "127.0.0.1:1",
            "--neighbours",
            "http://a:1, http://b:2",
        ])
        .cfg()
        .unwrap();
        assert_eq!(c.link.neighbours.len(), 2);
        let e = args(&["--peer-addr", "127.0.0.1:1", "--neighbours", "nope"])
            .cfg()
            .unwrap_err();
        assert!(format!("{e:#}").contains("PSERVER_NEIGHBOURS"));
    }
}
