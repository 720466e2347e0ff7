//! Configuration: one typed [`Config`] in sections, built from flags,
//! environment variables and a `.env` file by [`Args`].
//!
//! Each default is written once, in [`defaults`]: the sections' `Default`
//! impls and the flags' `default_value_t` both read it. Bounds are checked
//! where a flag is declared (clap value parsers); what spans several
//! settings is checked by [`Args::into_config`], with a [`ConfigError`]
//! that names the variable to fix.

mod args;
mod centrals;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use peerdex_proto::PeerUrl;
use rustls::pki_types::CertificateDer;

use crate::tls::{PemFileError, ServerTls};
pub use args::{Args, Command, TokenCommand};
pub use centrals::{MAX_CENTRALS, parse_centrals};

/// The default of every setting that has one, in one place.
pub mod defaults {
    use std::time::Duration;

    pub const API_ADDR: &str = "127.0.0.1:7070";
    pub const PEER_ADDR: &str = "0.0.0.0:7071";
    pub const SHARE_DIR: &str = "./data/share";
    pub const DATA_DIR: &str = "./data/pserver";
    /// `PSERVER_PRIVATE_DIR` is this folder of the data folder unless set.
    pub const PRIVATE_SUBDIR: &str = "private";
    pub const CENTRAL_URL: &str = "http://127.0.0.1:50051";
    pub const NEIGHBOUR_TIMEOUT: Duration = Duration::from_secs(3);
    pub const MAX_UPLOAD_BYTES: u64 = 64 << 30;
    pub const MIN_FREE_BYTES: u64 = 1 << 30;
    pub const MAX_PARTIAL_BYTES: u64 = 64 << 30;
    pub const REPLICA_QUOTA_BYTES: u64 = 0;
    /// The full rescan is a safety net: notifications see changes.
    pub const RESCAN_SECS: u64 = 3600;
    pub const MAX_UPLOADS: u32 = 32;
    pub const DRAIN_SECS: u64 = 10;
    pub const MAX_UPLOAD_BPS: u64 = 0;
    pub const UPLOAD_MIN_BPS: u64 = 4096;
    pub const UPLOAD_IDLE_SECS: u64 = 30;
    pub const MAX_CONNS_PER_ADDR: u32 = 16;
    pub const NEIGHBOUR_RATE: u32 = 20;
    pub const MAX_SOURCES: u64 = 8;
    pub const STALL_TIMEOUT: Duration = Duration::from_secs(15);
    pub const MAX_DOWNLOAD_BPS: u64 = 0;
    pub const MAX_WANTS: u64 = 100;
    pub const REACHABILITY: super::Reachability = super::Reachability::Auto;
    pub const RELAY: bool = false;
    pub const RELAY_MAX_PEERS: u32 = 64;
    pub const RELAY_MAX_BPS: u64 = 0;
}

/// Validated settings of one PServer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL other peers use to reach our peer API (sent to the central).
    pub public_url: PeerUrl,
    pub share_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Where private files opened with a ticket are stored in the clear
    /// (`PSERVER_PRIVATE_DIR`, default `data_dir/private`): never scanned,
    /// served or announced; outside the share folder.
    pub private_dir: PathBuf,
    /// The directory link: centrals, neighbours, private network.
    pub link: LinkConfig,
    /// The control API for the local client.
    pub control: ControlConfig,
    /// The peer API: uploads to other peers and per-source limits.
    pub peer_api: PeerApiConfig,
    /// Download jobs.
    pub downloads: DownloadConfig,
    /// The share folder and the disk.
    pub store: StoreConfig,
    /// Space offered for replicas of other peers' files.
    pub replicas: ReplicaConfig,
    /// Wanted files: how many, and where to tell about them.
    pub wants: WantConfig,
    /// Reachability and relaying (peers behind NAT, `crate::relay`).
    pub relay: RelayConfig,
    /// Certificate and key of the peer API (then `public_url` is
    /// `https://`), and of the control API when `api_tls` is set.
    pub tls: Option<ServerTls>,
    /// The control API speaks TLS with `tls` (set when it is bound off
    /// loopback; tests set it on loopback).
    pub api_tls: bool,
    /// Roots trusted for the central and other peers besides the system's
    /// (`PSERVER_CA_FILE`).
    pub ca_roots: Vec<CertificateDer<'static>>,
}

/// How this PServer reaches the directory.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// gRPC URLs of the centrals that serve the directory (at least one,
    /// at most [`MAX_CENTRALS`], no duplicates; see `crate::link` for how
    /// a PServer uses several).
    pub centrals: Vec<String>,
    /// Peer-API base URLs of neighbours, asked in order.
    pub neighbours: Vec<PeerUrl>,
    /// Per-request timeout when asking a neighbour.
    pub neighbour_timeout: Duration,
    /// `PSERVER_JOIN_SECRET`: join a private network (needs an https://
    /// central); `None` = an open network.
    pub join_secret: Option<String>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            centrals: vec![defaults::CENTRAL_URL.to_owned()],
            neighbours: Vec::new(),
            neighbour_timeout: defaults::NEIGHBOUR_TIMEOUT,
            join_secret: None,
        }
    }
}

/// The control API's own settings.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Required on every control-API request when set.
    pub api_token: Option<String>,
    /// Largest file an upload through the control API may be.
    pub max_upload_bytes: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            api_token: None,
            max_upload_bytes: defaults::MAX_UPLOAD_BYTES,
        }
    }
}

/// Serving other peers.
#[derive(Debug, Clone)]
pub struct PeerApiConfig {
    /// Concurrent uploads to other peers.
    pub max_uploads: u32,
    /// On shutdown, how long in-flight uploads may take to finish.
    pub drain: Duration,
    /// Upload cap across all transfers to other peers, bytes/s (0 = unlimited).
    pub max_upload_bps: u64,
    /// A response to another peer that averages less than this, bytes/s,
    /// over 20 s of the peer (not our rate cap or disk) holding it up, loses
    /// its slot and its connection (0 = no minimum).
    pub upload_min_bps: u64,
    /// A response to another peer that the peer does not take a byte of
    /// for this long loses its slot and its connection.
    pub upload_idle: Duration,
    /// Open peer-API connections per source address (IPv6: per /64); the
    /// ones beyond it are answered 429 and closed.
    pub max_conns_per_addr: u32,
    /// Neighbour-role requests (locate, search) per second per source
    /// address, with a burst of ten seconds' worth; beyond it 429.
    pub neighbour_rate: u32,
}

impl Default for PeerApiConfig {
    fn default() -> Self {
        Self {
            max_uploads: defaults::MAX_UPLOADS,
            drain: Duration::from_secs(defaults::DRAIN_SECS),
            max_upload_bps: defaults::MAX_UPLOAD_BPS,
            upload_min_bps: defaults::UPLOAD_MIN_BPS,
            upload_idle: Duration::from_secs(defaults::UPLOAD_IDLE_SECS),
            max_conns_per_addr: defaults::MAX_CONNS_PER_ADDR,
            neighbour_rate: defaults::NEIGHBOUR_RATE,
        }
    }
}

/// Download jobs.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// Holders one download fetches from at the same time.
    pub max_sources: usize,
    /// A holder that sends no bytes for this long loses the transfer.
    pub stall_timeout: Duration,
    /// Download cap across all jobs, bytes/s (0 = unlimited).
    pub max_download_bps: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            max_sources: defaults::MAX_SOURCES as usize,
            stall_timeout: defaults::STALL_TIMEOUT,
            max_download_bps: defaults::MAX_DOWNLOAD_BPS,
        }
    }
}

/// The share folder and the disk.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How often the whole share folder tree is rescanned (the safety net
    /// behind notifications, see `store::watch`).
    pub rescan_interval: Duration,
    /// Free space kept for the user in the share and data folders: a
    /// download or upload that would cut into it is refused.
    pub min_free_bytes: u64,
    /// Cap on the disk space of all partial downloads together (0 = none).
    pub max_partial_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            rescan_interval: Duration::from_secs(defaults::RESCAN_SECS),
            min_free_bytes: defaults::MIN_FREE_BYTES,
            max_partial_bytes: defaults::MAX_PARTIAL_BYTES,
        }
    }
}

/// This peer as a volunteer for replicas.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Space offered for replicas of other peers' files, kept under
    /// `data_dir/replicas/` at the directory's request (0 = none: this peer
    /// never stores what its user did not ask for).
    pub quota_bytes: u64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            quota_bytes: defaults::REPLICA_QUOTA_BYTES,
        }
    }
}

/// Wanted files (`crate::wants`).
#[derive(Debug, Clone)]
pub struct WantConfig {
    /// Wants kept waiting at once (`PSERVER_MAX_WANTS`).
    pub max_wants: usize,
    /// Where to POST want notices (`PSERVER_NOTIFY_URL`); `None`: nowhere.
    pub notify_url: Option<reqwest::Url>,
}

impl Default for WantConfig {
    fn default() -> Self {
        Self {
            max_wants: defaults::MAX_WANTS as usize,
            notify_url: None,
        }
    }
}

/// How the directory judges whether other peers can reach this one
/// (`PSERVER_REACHABILITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reachability {
    /// The directory dials our public URL back: reachable if it answers,
    /// else we are shared through a relay.
    Auto,
    /// We must be reachable directly: the directory dials back, and if it
    /// fails our files are not listed (no relay); the status says why.
    Public,
    /// We are behind a NAT or firewall: no dial-back, always a relay.
    Firewalled,
}

/// Reachability and relaying (`crate::relay`).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `PSERVER_REACHABILITY`.
    pub reachability: Reachability,
    /// `PSERVER_RELAY`: offer to relay for firewalled peers (taken by the
    /// directory only when we are reachable).
    pub enabled: bool,
    /// `PSERVER_RELAY_MAX_PEERS`: firewalled peers relayed at once.
    pub max_peers: u32,
    /// `PSERVER_RELAY_MAX_BPS`: bytes per second per relayed peer (0 =
    /// unlimited).
    pub max_bps: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            reachability: defaults::REACHABILITY,
            enabled: defaults::RELAY,
            max_peers: defaults::RELAY_MAX_PEERS,
            max_bps: defaults::RELAY_MAX_BPS,
        }
    }
}

/// `PSERVER_NOTIFY_URL`: an http:// or https:// URL.
pub fn parse_notify_url(s: &str) -> Result<reqwest::Url, ConfigError> {
    let bad = |why: String| ConfigError::NotifyUrl {
        url: s.to_owned(),
        why,
    };
    let url = reqwest::Url::parse(s).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("expected http://host/... or https://host/...".into()));
    }
    Ok(url)
}

impl Config {
    /// Settings for a peer with everything at its default, for tests and
    /// tools, talking to the one central at `central_url` (set
    /// `link.centrals` for several).
    pub fn new(
        public_url: PeerUrl,
        share_dir: PathBuf,
        data_dir: PathBuf,
        central_url: String,
    ) -> Self {
        Self {
            public_url,
            share_dir,
            private_dir: data_dir.join(defaults::PRIVATE_SUBDIR),
            data_dir,
            link: LinkConfig {
                centrals: vec![central_url],
                ..LinkConfig::default()
            },
            control: ControlConfig::default(),
            peer_api: PeerApiConfig::default(),
            downloads: DownloadConfig::default(),
            store: StoreConfig::default(),
            replicas: ReplicaConfig::default(),
            wants: WantConfig::default(),
            relay: RelayConfig::default(),
            tls: None,
            api_tls: false,
            ca_roots: Vec::new(),
        }
    }

    /// A private network's rules: a secret of at least 16 printable
    /// characters, sent only to an https:// central.
    pub fn check_network(&self) -> Result<(), ConfigError> {
        if let Some(s) = &self.link.join_secret {
            if s.len() < 16 || !s.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ConfigError::WeakJoinSecret);
            }
            if let Some(plain) = self
                .link
                .centrals
                .iter()
                .find(|u| !u.starts_with("https://"))
            {
                return Err(ConfigError::PlainCentral { url: plain.clone() });
            }
        }
        Ok(())
    }
}

/// A setting, or a combination of settings, that cannot work: the message
/// names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("PSERVER_JOIN_SECRET must be at least 16 printable ASCII characters without spaces")]
    WeakJoinSecret,
    #[error(
        "PSERVER_JOIN_SECRET is set but PSERVER_CENTRAL_URL {url} is not https://: \
         a private network joins only over TLS"
    )]
    PlainCentral { url: String },
    #[error(transparent)]
    Centrals(#[from] centrals::CentralsError),
    /// A certificate, key or CA file (the message names the variable).
    #[error(transparent)]
    Pem(#[from] PemFileError),
    #[error("PSERVER_PUBLIC_URL: {0}")]
    PublicUrl(#[source] peerdex_proto::ParseError),
    #[error(
        "PSERVER_PUBLIC_URL is required when PSERVER_PEER_ADDR is {peer_addr} \
         (set it to the URL other peers can reach, e.g. {scheme}://203.0.113.7:{})",
        peer_addr.port()
    )]
    PublicUrlRequired {
        peer_addr: SocketAddr,
        scheme: &'static str,
    },
    #[error("PSERVER_PEER_ADDR: {0}")]
    PeerAddr(#[source] peerdex_proto::ParseError),
    #[error(
        "PSERVER_PUBLIC_URL {url} is https:// but the peer API has no certificate: \
         set PSERVER_TLS_CERT and PSERVER_TLS_KEY, or use an http:// URL"
    )]
    HttpsWithoutCertificate { url: PeerUrl },
    #[error(
        "PSERVER_PUBLIC_URL {url} must be https:// when PSERVER_TLS_CERT is set \
         (the peer API then speaks only TLS)"
    )]
    HttpWithCertificate { url: PeerUrl },
    #[error(
        "PSERVER_API_TOKEN is required when PSERVER_API_ADDR ({api_addr}) is not a loopback address"
    )]
    ApiTokenRequired { api_addr: SocketAddr },
    #[error(
        "PSERVER_API_ADDR ({api_addr}) is not a loopback address: the control API then needs TLS \
         (set PSERVER_TLS_CERT and PSERVER_TLS_KEY), or PSERVER_TRUSTED_LAN=true \
         (--trusted-lan) to serve it over plaintext on a LAN you trust"
    )]
    ApiTlsRequired { api_addr: SocketAddr },
    #[error("PSERVER_API_TOKEN must be at least 16 printable ASCII characters without spaces")]
    WeakApiToken,
    #[error("PSERVER_NEIGHBOURS: {0}")]
    Neighbours(#[source] peerdex_proto::ParseError),
    #[error("PSERVER_NOTIFY_URL {url:?} is not a URL to POST notices to: {why}")]
    NotifyUrl { url: String, why: String },
}
