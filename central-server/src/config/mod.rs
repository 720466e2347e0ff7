//! What [`crate::run`] needs: the directory's settings and its explicit
//! limits, checked at start-up with messages that name the variable.
//!
//! * `mod.rs` — [`Config`], [`Limits`], every default and bound written
//!   once ([`defaults`], [`bounds`]), and [`Config::validate`] with its
//!   typed [`ConfigError`].
//! * `flags` — [`Args`]: the `central-server` flags, environment
//!   variables and `.env` names, in sections that fill a [`Config`].
//! * `parse` — the typed value parsers of those flags: bounds checked where
//!   a flag is declared, errors that name the variable and the range.

mod flags;
mod links;
mod parse;

use std::path::PathBuf;
use std::time::Duration;

use peerdex_proto::types::MAX_NAME_BYTES;

use crate::error::{Error, Result};

pub use flags::{
    Args, EtcdArgs, KeyArgs, LeaseArgs, LimitArgs, LinkArgs, ReplicationArgs, ServeArgs, TlsArgs,
};
pub use links::{LinkConfig, LinkUrl, MAX_LINKS, host, host_name, parse_links, valid_name};
pub use parse::{Expected, OptionalAddr, SettingError};

/// Every default, written once: [`Config::new`], [`Limits::default`] and
/// the flags' `[default: …]` all read these.
pub mod defaults {
    /// `CENTRAL_LISTEN_ADDR`.
    pub const LISTEN_ADDR: &str = "0.0.0.0:50051";
    /// `CENTRAL_DATA_DIR`.
    pub const DATA_DIR: &str = "./data/central";
    /// `CENTRAL_LEASE_TTL_SECS`.
    pub const LEASE_TTL_SECS: u64 = 30;
    /// `CENTRAL_HEARTBEAT_SECS`.
    pub const HEARTBEAT_SECS: u64 = 10;
    /// `CENTRAL_DIAL_BACK`.
    pub const DIAL_BACK: bool = true;
    /// `CENTRAL_LINK_REFRESH_SECS`.
    pub const LINK_REFRESH_SECS: u64 = 10;
    /// `CENTRAL_LINK_TIMEOUT_MS`.
    pub const LINK_TIMEOUT_MS: u64 = 500;
    /// `CENTRAL_LINK_RATE`.
    pub const LINK_RATE: u32 = 200;
    /// `CENTRAL_KEY_RETENTION_DAYS`.
    pub const KEY_RETENTION_DAYS: u32 = 90;
    /// `CENTRAL_ETCD_PREFIX`.
    pub const ETCD_PREFIX: &str = "/peerdex/";
    pub const ETCD_PAGES: bool = true;
    /// `CENTRAL_SNAPSHOT_SECS`.
    pub const SNAPSHOT_SECS: u64 = 300;
    /// `CENTRAL_REPLICA_GRACE_SECS`.
    pub const REPLICA_GRACE_SECS: u64 = 300;
    /// `CENTRAL_PIN_ORPHAN_DAYS`.
    pub const PIN_ORPHAN_DAYS: u32 = 30;
    /// `CENTRAL_AUDIT_SECS`.
    pub const AUDIT_SECS: u64 = 600;
    /// The pause after a failed audit, per failure in a row (no setting).
    pub const AUDIT_RETRY_SECS: u64 = 10;
    /// `CENTRAL_MAX_MESSAGE_BYTES`: 4 MiB.
    pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
    /// `CENTRAL_MAX_NAME_BYTES`.
    pub const MAX_NAME_BYTES: usize = peerdex_proto::types::MAX_NAME_BYTES;
    /// `CENTRAL_MAX_INVENTORY`.
    pub const MAX_INVENTORY: usize = 100_000;
    /// `CENTRAL_MAX_PAGE`.
    pub const MAX_PAGE: usize = 1000;
    /// `CENTRAL_MAX_HOLDERS`.
    pub const MAX_HOLDERS: usize = 64;
    /// [`super::Limits::max_search_matches`] (no setting).
    pub const MAX_SEARCH_MATCHES: usize = 10_000;
    /// `CENTRAL_SEARCH_BUDGET`.
    pub const SEARCH_BUDGET: usize = 100_000;
    /// `CENTRAL_JOIN_RATE`.
    pub const JOIN_RATE: u32 = 5;
    /// `CENTRAL_PUBLISH_RATE`.
    pub const PUBLISH_RATE: u32 = 20;
    /// `CENTRAL_SEARCH_RATE`.
    pub const SEARCH_RATE: u32 = 50;
    /// `CENTRAL_MAX_PEERS_PER_ADDR`.
    pub const MAX_PEERS_PER_ADDR: usize = 1000;
    /// `CENTRAL_MAX_FILES`.
    pub const MAX_FILES: usize = 5_000_000;
    /// `CENTRAL_MAX_KEYS`.
    pub const MAX_KEYS: usize = 1_000_000;
    /// `CENTRAL_MAX_REPLICAS`.
    pub const MAX_REPLICAS: u32 = 5;
    /// `CENTRAL_MAX_PINS_PER_PEER`.
    pub const MAX_PINS_PER_PEER: usize = 1000;
    /// `CENTRAL_MAX_WATCHES_PER_PEER`.
    pub const MAX_WATCHES_PER_PEER: usize = 100;
    /// `CENTRAL_MAX_PINNED_BYTES_PER_PEER`: 1 TiB.
    pub const MAX_PINNED_BYTES_PER_PEER: u64 = 1 << 40;
    /// `CENTRAL_MAX_PINS_PER_ADDR`.
    pub const MAX_PINS_PER_ADDR: usize = 1000;
    /// `CENTRAL_MAX_PINNED_BYTES_PER_ADDR`: 1 TiB.
    pub const MAX_PINNED_BYTES_PER_ADDR: u64 = 1 << 40;
}

/// Every bound of a setting, written once: the flags refuse what is out
/// of them (naming the variable and the range), and
/// [`Config::validate`] checks a [`Config`] built in code against them.
pub mod bounds {
    /// Smallest `CENTRAL_MAX_MESSAGE_BYTES`.
    pub const MIN_MESSAGE_BYTES: u64 = 1024;
    /// Largest `CENTRAL_MAX_NAME_BYTES`: what file systems accept.
    pub const MAX_NAME_BYTES: u64 = peerdex_proto::types::MAX_NAME_BYTES as u64;
    /// Highest rate of `CENTRAL_*_RATE`, calls per second (0 = no limit).
    pub const MAX_RATE: u64 = 1_000_000;
    /// Smallest `CENTRAL_MAX_REPLICAS` (a pin of one copy is no pin).
    pub const MIN_REPLICAS: u64 = 2;
    /// Largest `CENTRAL_MAX_REPLICAS`.
    pub const MAX_REPLICAS: u64 = peerdex_proto::types::MAX_REPLICAS as u64;
    /// Longest `CENTRAL_KEY_RETENTION_DAYS` and `CENTRAL_PIN_ORPHAN_DAYS`:
    /// a hundred years.
    pub const MAX_DAYS: u64 = 36_500;
    /// Longest `CENTRAL_AUDIT_SECS`: a day.
    pub const MAX_AUDIT_SECS: u64 = 86_400;
}

/// Seconds in a day, for the `*_DAYS` settings.
pub(crate) const DAY_SECS: u64 = 86_400;

/// Explicit bounds on what one request may ask of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest decoded request message, in bytes (default 4 MiB). Bigger
    /// requests get RESOURCE_EXHAUSTED before they are parsed.
    pub max_message_bytes: usize,
    /// Longest file name, in bytes (default 255, and never more: that is
    /// what file systems accept).
    pub max_name_bytes: usize,
    /// Most entries in one Join/Publish/Unpublish, and in one peer's whole
    /// inventory (default 100,000).
    pub max_inventory: usize,
    /// Most search hits per page, and most contents per Locate by name
    /// (default 1000).
    pub max_page: usize,
    /// Most holders listed per located file (default 64).
    pub max_holders: usize,
    /// Most `(name, file)` matches ranked per search (default 10,000).
    pub max_search_matches: usize,
    /// Units of work one search may spend (`CENTRAL_SEARCH_BUDGET`, default
    /// 100,000): a unit is one word of the token map or one name visited.
    /// A query that would need more is answered with what was found and
    /// `truncated = true`. The rarest query word drives the search, so a
    /// query is complete when one of its words is in at most ~100,000
    /// names (a title word or a year on a million names: 30,000 at most in
    /// `central-bench`); only queries made of very common words (each in an
    /// eighth of a million names) are cut. A unit costs ~50 ns on the
    /// 2-core VM of `bench/README.md`, so the worst search costs ~5 ms.
    pub search_budget: usize,
    /// Joins per second per source address (`CENTRAL_JOIN_RATE`, default
    /// 5; burst 10 seconds' worth). 0 = no limit.
    pub join_rate: u32,
    /// Publish + Unpublish calls per second per peer
    /// (`CENTRAL_PUBLISH_RATE`, default 20; burst 10 seconds' worth).
    /// 0 = no limit.
    pub publish_rate: u32,
    /// Search calls per second per source address, and per peer when the
    /// call names one (`CENTRAL_SEARCH_RATE`, default 50; burst 10
    /// seconds' worth). 0 = no limit.
    pub search_rate: u32,
    /// Peers joined from one source address at a time
    /// (`CENTRAL_MAX_PEERS_PER_ADDR`, default 1000: a campus behind one
    /// NAT fits).
    pub max_peers_per_addr: usize,
    /// Holdings (a peer serving a file under a name) in the whole directory
    /// (`CENTRAL_MAX_FILES`, default 5,000,000: about 1.3 GiB of index).
    pub max_files: usize,
    /// Peer-id-to-key bindings kept (`CENTRAL_MAX_KEYS`, default
    /// 1,000,000). When full, a new peer makes room by forgetting the
    /// binding of the absent peer idle longest.
    pub max_keys: usize,
    /// Highest number of copies a pin may ask for (`CENTRAL_MAX_REPLICAS`,
    /// default 5).
    pub max_replicas: u32,
    /// Pins one peer may hold (`CENTRAL_MAX_PINS_PER_PEER`, default 1000).
    pub max_pins_per_peer: usize,
    /// Bytes one peer's pins may ask the network to keep, size × copies
    /// summed (`CENTRAL_MAX_PINNED_BYTES_PER_PEER`, default 1 TiB).
    pub max_pinned_bytes_per_peer: u64,
    /// Subscriptions (file ids, exact names, queries) one peer's Watch
    /// stream may hold (`CENTRAL_MAX_WATCHES_PER_PEER`, default 100).
    pub max_watches_per_peer: usize,
    /// Pins set from one source address (`CENTRAL_MAX_PINS_PER_ADDR`,
    /// default 1000): a key costs one Challenge, an address does not.
    pub max_pins_per_addr: usize,
    /// Bytes the pins set from one source address may ask the network to
    /// keep (`CENTRAL_MAX_PINNED_BYTES_PER_ADDR`, default 1 TiB).
    pub max_pinned_bytes_per_addr: u64,
}

impl Default for Limits {
    fn default() -> Self {
        use defaults as d;
        Self {
            max_message_bytes: d::MAX_MESSAGE_BYTES,
            max_name_bytes: d::MAX_NAME_BYTES,
            max_inventory: d::MAX_INVENTORY,
            max_page: d::MAX_PAGE,
            max_holders: d::MAX_HOLDERS,
            max_search_matches: d::MAX_SEARCH_MATCHES,
            search_budget: d::SEARCH_BUDGET,
            join_rate: d::JOIN_RATE,
            publish_rate: d::PUBLISH_RATE,
            search_rate: d::SEARCH_RATE,
            max_peers_per_addr: d::MAX_PEERS_PER_ADDR,
            max_files: d::MAX_FILES,
            max_keys: d::MAX_KEYS,
            max_replicas: d::MAX_REPLICAS,
            max_pins_per_peer: d::MAX_PINS_PER_PEER,
            max_pinned_bytes_per_peer: d::MAX_PINNED_BYTES_PER_PEER,
            max_watches_per_peer: d::MAX_WATCHES_PER_PEER,
            max_pins_per_addr: d::MAX_PINS_PER_ADDR,
            max_pinned_bytes_per_addr: d::MAX_PINNED_BYTES_PER_ADDR,
        }
    }
}

/// Everything [`run`](crate::run) needs. Build with [`Config::new`] and
/// adjust fields.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database lives (`central.db` plus WAL files); created if
    /// missing. Default `./data/central`.
    pub data_dir: PathBuf,
    /// A peer that does not heartbeat for this long vanishes (default 30 s).
    pub lease_ttl: Duration,
    /// The heartbeat period advised to peers (default 10 s); must be
    /// shorter than `lease_ttl` so one lost heartbeat is not fatal.
    pub heartbeat_interval: Duration,
    /// A peer id stays bound to its key after the peer leaves, until it has
    /// not joined for this long (`CENTRAL_KEY_RETENTION_DAYS`, default 90
    /// days); then anyone may take the id again.
    pub key_retention: Duration,
    /// `CENTRAL_JOIN_SECRET`: makes the network private (see
    /// `crate::network`); `None` = open.
    pub join_secret: Option<String>,
    pub limits: Limits,
    /// Serve gRPC over TLS only, with this certificate and key
    /// (`CENTRAL_TLS_CERT`, `CENTRAL_TLS_KEY`). `None`: plaintext.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Keep the directory in etcd at these comma-separated client URLs
    /// (`CENTRAL_ETCD_ENDPOINTS`), shared by any number of centrals.
    /// `None`: the embedded SQLite store in `data_dir`, one central.
    pub etcd_endpoints: Option<String>,
    /// The directory's keys in etcd start with this (`CENTRAL_ETCD_PREFIX`,
    /// default `/peerdex/`): several directories can share one cluster.
    pub etcd_prefix: String,
    /// Write inventories to etcd in pages (`CENTRAL_ETCD_PAGES`, default
    /// true); false keeps a key per holding, which centrals from before
    /// pages can read (during a rolling upgrade).
    pub etcd_pages: bool,
    /// On etcd: how often this central writes the snapshot of its index
    /// to `data_dir` (when it changed; also at a clean shutdown), so that
    /// a restart loads it and follows etcd from its revision instead of
    /// reading the whole directory (`CENTRAL_SNAPSHOT_SECS`, default 300).
    /// Zero: no snapshot is written or read.
    pub snapshot_every: Duration,
    /// This central's name in answers, logs and the leader election
    /// (`CENTRAL_NAME`; default `<host>:<port>`).
    pub name: Option<String>,
    /// On etcd, after SIGTERM: how long at most to keep answering while
    /// telling peers to move (`moved` in Heartbeat answers), before no
    /// longer accepting calls. It ends sooner once every peer that
    /// heartbeated here lately was told. `None`: one heartbeat interval
    /// and a second.
    pub drain: Option<Duration>,
    /// How long a file stays above its wanted copies (a holder came back)
    /// before replica holders are asked to drop the extras
    /// (`CENTRAL_REPLICA_GRACE_SECS`, default 300).
    pub replica_grace: Duration,
    /// A pin outlives its owner's lease by this long, then ends and its
    /// replicas are released (`CENTRAL_PIN_ORPHAN_DAYS`, default 30 days).
    pub pin_orphan: Duration,
    /// How often the leader audits each copy it counts (a random chunk
    /// checked against the file id; `CENTRAL_AUDIT_SECS`, default 600).
    /// Unproven copies are audited at once.
    pub audit_every: Duration,
    /// After a failed audit, the next comes this much later per failure in
    /// a row (default 10 s; three in a row drop the claim).
    pub audit_retry: Duration,
    /// Extra CA certificates (PEM) trusted when auditing peers whose API
    /// is https (`CENTRAL_PEER_CA_FILE`), beside the system's roots.
    pub peer_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The island's name and its links to other islands (`crate::link`).
    pub links: LinkConfig,
    /// Dial back every advertised peer URL at Join (`CENTRAL_DIAL_BACK`,
    /// default true): an unreachable peer is listed only through a relay.
    /// false = believe every peer (closed LANs; tests and benchmarks that
    /// simulate peers).
    pub dial_back: bool,
}

/// Longest `CENTRAL_NAME`.
pub const MAX_NAME_LEN: usize = 64;

impl Config {
    /// Defaults (TTL 30 s, heartbeat 10 s, default limits) over `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        use defaults as d;
        Self {
            data_dir: data_dir.into(),
            lease_ttl: Duration::from_secs(d::LEASE_TTL_SECS),
            heartbeat_interval: Duration::from_secs(d::HEARTBEAT_SECS),
            key_retention: days(d::KEY_RETENTION_DAYS),
            join_secret: None,
            limits: Limits::default(),
            tls: None,
            etcd_endpoints: None,
            etcd_prefix: d::ETCD_PREFIX.into(),
            etcd_pages: d::ETCD_PAGES,
            snapshot_every: Duration::from_secs(d::SNAPSHOT_SECS),
            name: None,
            drain: None,
            replica_grace: Duration::from_secs(d::REPLICA_GRACE_SECS),
            pin_orphan: days(d::PIN_ORPHAN_DAYS),
            audit_every: Duration::from_secs(d::AUDIT_SECS),
            audit_retry: Duration::from_secs(d::AUDIT_RETRY_SECS),
            peer_ca: Vec::new(),
            links: LinkConfig::default(),
            dial_back: d::DIAL_BACK,
        }
    }

    /// Check the values; the message names the setting and its variable.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(Error::from)
    }

    fn check(&self) -> Result<(), ConfigError> {
        use ConfigError as E;
        if self.lease_ttl.is_zero() {
            return Err(E::LeaseTtlZero);
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.lease_ttl {
            return Err(E::HeartbeatNotShorter {
                heartbeat: self.heartbeat_interval,
                lease_ttl: self.lease_ttl,
            });
        }
        if self.key_retention.is_zero() {
            return Err(E::KeyRetentionZero);
        }
        if let Some(s) = &self.join_secret
            && (s.len() < MIN_JOIN_SECRET || !s.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(E::WeakJoinSecret);
        }
        if self.join_secret.is_some() && self.tls.is_none() {
            return Err(E::PrivateWithoutTls);
        }
        self.links.check(self.tls.is_some())?;
        if let Some(eps) = &self.etcd_endpoints {
            let list: Vec<&str> = eps.split(',').map(str::trim).collect();
            if list.iter().any(|e| e.is_empty()) {
                return Err(E::EtcdEmptyItem {
                    endpoints: eps.clone(),
                });
            }
            for e in &list {
                let ok = ["http://", "https://"].iter().any(|s| {
                    e.strip_prefix(s)
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
                });
                if !ok {
                    return Err(E::EtcdNotUrl {
                        endpoint: (*e).to_owned(),
                    });
                }
            }
        }
        let p = &self.etcd_prefix;
        if !p.starts_with('/')
            || !p.ends_with('/')
            || p.len() > MAX_ETCD_PREFIX
            || p.contains(char::is_whitespace)
        {
            return Err(E::EtcdPrefix { prefix: p.clone() });
        }
        if let Some(n) = &self.name
            && !valid_name(n)
        {
            return Err(E::Name { name: n.clone() });
        }
        if self.audit_every < Duration::from_secs(1) {
            return Err(E::AuditTooOften);
        }
        let l = &self.limits;
        if (l.max_message_bytes as u64) < bounds::MIN_MESSAGE_BYTES {
            return Err(E::MessageTooSmall {
                bytes: l.max_message_bytes,
            });
        }
        if l.max_name_bytes == 0 || l.max_name_bytes > MAX_NAME_BYTES {
            return Err(E::NameBytes {
                bytes: l.max_name_bytes,
            });
        }
        for (v, setting) in [
            (l.max_inventory, "max_inventory (CENTRAL_MAX_INVENTORY)"),
            (l.max_page, "max_page (CENTRAL_MAX_PAGE)"),
            (l.max_holders, "max_holders (CENTRAL_MAX_HOLDERS)"),
            (l.max_search_matches, "max_search_matches"),
            (l.search_budget, "search_budget (CENTRAL_SEARCH_BUDGET)"),
            (
                l.max_peers_per_addr,
                "max_peers_per_addr (CENTRAL_MAX_PEERS_PER_ADDR)",
            ),
            (l.max_files, "max_files (CENTRAL_MAX_FILES)"),
            (l.max_keys, "max_keys (CENTRAL_MAX_KEYS)"),
            (
                l.max_pins_per_addr,
                "max_pins_per_addr (CENTRAL_MAX_PINS_PER_ADDR)",
            ),
            (
                l.max_watches_per_peer,
                "max_watches_per_peer (CENTRAL_MAX_WATCHES_PER_PEER)",
            ),
        ] {
            if v == 0 {
                return Err(E::NotPositive { setting });
            }
        }
        for (rate, setting) in [
            (l.join_rate, "join_rate (CENTRAL_JOIN_RATE)"),
            (l.publish_rate, "publish_rate (CENTRAL_PUBLISH_RATE)"),
            (l.search_rate, "search_rate (CENTRAL_SEARCH_RATE)"),
        ] {
            if u64::from(rate) > bounds::MAX_RATE {
                return Err(E::RateTooHigh { setting, rate });
            }
        }
        Ok(())
    }
}

impl Default for Config {
    /// [`Config::new`] over the default data directory.
    fn default() -> Self {
        Self::new(defaults::DATA_DIR)
    }
}

/// `days` whole days.
pub(crate) fn days(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * DAY_SECS)
}

/// Shortest `CENTRAL_JOIN_SECRET`.
const MIN_JOIN_SECRET: usize = 16;

/// Longest `CENTRAL_ETCD_PREFIX`, in bytes.
const MAX_ETCD_PREFIX: usize = 128;

/// Why a [`Config`] cannot be used: each names the setting and its
/// variable, and what would do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("lease_ttl (CENTRAL_LEASE_TTL_SECS) must be positive")]
    LeaseTtlZero,
    #[error(
        "heartbeat_interval (CENTRAL_HEARTBEAT_SECS) is {} s; it must be positive and shorter than lease_ttl (CENTRAL_LEASE_TTL_SECS) {} s",
        heartbeat.as_secs_f64(),
        lease_ttl.as_secs_f64()
    )]
    HeartbeatNotShorter {
        heartbeat: Duration,
        lease_ttl: Duration,
    },
    #[error("key_retention (CENTRAL_KEY_RETENTION_DAYS) must be at least 1 day")]
    KeyRetentionZero,
    #[error(
        "join_secret (CENTRAL_JOIN_SECRET) must be at least {MIN_JOIN_SECRET} printable ASCII characters without spaces"
    )]
    WeakJoinSecret,
    #[error(
        "CENTRAL_JOIN_SECRET makes the network private, and a private network speaks only TLS: set CENTRAL_TLS_CERT and CENTRAL_TLS_KEY too"
    )]
    PrivateWithoutTls,
    #[error(
        "CENTRAL_ETCD_ENDPOINTS {endpoints:?} has an empty item: give comma-separated URLs such as http://10.0.0.1:2379,http://10.0.0.2:2379"
    )]
    EtcdEmptyItem { endpoints: String },
    #[error(
        "CENTRAL_ETCD_ENDPOINTS: {endpoint:?} is not an http:// or https:// URL of an etcd member"
    )]
    EtcdNotUrl { endpoint: String },
    /// etcd could not be reached at start-up.
    #[error("CENTRAL_ETCD_ENDPOINTS {endpoints:?}: cannot connect: {source}")]
    EtcdConnect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error(
        "CENTRAL_ETCD_PREFIX {prefix:?} must start and end with '/', without spaces, at most {MAX_ETCD_PREFIX} bytes (default /peerdex/)"
    )]
    EtcdPrefix { prefix: String },
    #[error(
        "CENTRAL_NAME {name:?} must be 1-{MAX_NAME_LEN} characters among letters, digits and . _ : -"
    )]
    Name { name: String },
    #[error("audit_every (CENTRAL_AUDIT_SECS) must be at least 1 second")]
    AuditTooOften,
    #[error(
        "max_message_bytes (CENTRAL_MAX_MESSAGE_BYTES) {bytes} is below {}",
        bounds::MIN_MESSAGE_BYTES
    )]
    MessageTooSmall { bytes: usize },
    #[error("max_name_bytes (CENTRAL_MAX_NAME_BYTES) {bytes} must be 1-{MAX_NAME_BYTES}")]
    NameBytes { bytes: usize },
    #[error("{setting} must be positive")]
    NotPositive { setting: &'static str },
    #[error(
        "{setting} is {rate}; at most {} calls per second (0 = no limit)",
        bounds::MAX_RATE
    )]
    RateTooHigh { setting: &'static str, rate: u32 },
    #[error(
        "CENTRAL_ISLAND_NAME {name:?} must be 1-{MAX_NAME_LEN} characters among letters, digits and . _ : -"
    )]
    IslandName { name: String },
    #[error(
        "CENTRAL_LINKS: {url:?} is not a URL of a central such as https://central.example:50051"
    )]
    LinkNotUrl { url: String },
    #[error("CENTRAL_LINKS: {url:?} is not https://: links between islands speak only TLS")]
    LinkNotHttps { url: String },
    #[error("CENTRAL_LINKS lists {links} centrals; at most {max}")]
    TooManyLinks { links: usize, max: usize },
    #[error(
        "CENTRAL_LINKS needs TLS: set CENTRAL_TLS_CERT and CENTRAL_TLS_KEY (the certificate is also shown to linked islands)"
    )]
    LinksWithoutTls,
    #[error(
        "CENTRAL_LINKS needs CENTRAL_LINK_CA_FILE: the CA certificates (PEM) that sign the linked centrals' certificates"
    )]
    LinksWithoutCa,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_uses_the_defaults() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.data_dir, PathBuf::from(defaults::DATA_DIR));
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.key_retention, Duration::from_secs(90 * 86_400));
        assert_eq!(c.pin_orphan, Duration::from_secs(30 * 86_400));
        assert_eq!(c.limits.max_message_bytes, 4 << 20);
        assert_eq!(c.limits.max_pinned_bytes_per_peer, 1 << 40);
        assert!(defaults::MAX_REPLICAS as u64 >= bounds::MIN_REPLICAS);
        assert_eq!(
            u64::from(peerdex_proto::types::MAX_REPLICAS),
            bounds::MAX_REPLICAS
        );
    }

    #[test]
    fn errors_name_the_setting_and_keep_their_words() {
        let mut c = Config::new(defaults::DATA_DIR);
        c.heartbeat_interval = c.lease_ttl;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid configuration: heartbeat_interval (CENTRAL_HEARTBEAT_SECS) is 30 s; it must be positive and shorter than lease_ttl (CENTRAL_LEASE_TTL_SECS) 30 s"
        );
        let mut c = Config::new(defaults::DATA_DIR);
        c.limits.max_message_bytes = 1023;
        assert!(matches!(
            c.check(),
            Err(ConfigError::MessageTooSmall { bytes: 1023 })
        ));
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid configuration: max_message_bytes (CENTRAL_MAX_MESSAGE_BYTES) 1023 is below 1024"
        );
        let mut c = Config::new(defaults::DATA_DIR);
        c.limits.search_rate = 1_000_001;
        assert_eq!(
            c.check().unwrap_err().to_string(),
            "search_rate (CENTRAL_SEARCH_RATE) is 1000001; at most 1000000 calls per second (0 = no limit)"
        );
        let mut c = Config::new(defaults::DATA_DIR);
        c.limits.max_keys = 0;
        assert!(matches!(
            c.check(),
            Err(ConfigError::NotPositive {
                setting: "max_keys (CENTRAL_MAX_KEYS)"
            })
        ));
        let mut c = Config::new(defaults::DATA_DIR);
        c.etcd_prefix = "peerdex".into();
        assert!(c.check().unwrap_err().to_string().starts_with(
            "CENTRAL_ETCD_PREFIX \"peerdex\" must start and end with '/', without spaces, at most 128 bytes"
        ));
        let mut c = Config::new(defaults::DATA_DIR);
        c.name = Some("a b".into());
        assert_eq!(
            c.check().unwrap_err().to_string(),
            "CENTRAL_NAME \"a b\" must be 1-64 characters among letters, digits and . _ : -"
        );
        let mut c = Config::new(defaults::DATA_DIR);
        c.etcd_endpoints = Some("http://a:2379,,http://b:2379".into());
        assert!(matches!(c.check(), Err(ConfigError::EtcdEmptyItem { .. })));
        c.etcd_endpoints = Some("a:2379".into());
        assert!(
            matches!(c.check(), Err(ConfigError::EtcdNotUrl { endpoint }) if endpoint == "a:2379")
        );
    }
}
