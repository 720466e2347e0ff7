//! `central-server`'s flags, in sections: each flag has its environment
//! variable (also read from a `.env`), its doc comment as help, its
//! default from [`super::defaults`] and its bounds from [`super::bounds`]
//! checked where it is declared. [`Args::config`] fills a [`Config`];
//! [`Args::load`] also reads the files the flags name and validates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args as Section, Parser};

use super::parse::{Bounded, OptionalAddr, address, optional_address};
use super::{Config, Limits, LinkConfig, LinkUrl, bounds, days, defaults, parse_links};
use crate::error::Result;

/// The peerdex central directory (gRPC). Every flag can also be set with the
/// environment variable shown, or in a `.env` file next to where it runs.
#[derive(Debug, Parser)]
#[command(name = "central-server", version, about)]
pub struct Args {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub lease: LeaseArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub replication: ReplicationArgs,
    #[command(flatten)]
    pub reach: ReachArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub links: LinkArgs,
}

/// Where to serve: gRPC, metrics, and the database.
#[derive(Debug, Section)]
pub struct ServeArgs {
    /// Address to serve gRPC on (port 0 picks a free one; the actual address
    /// is printed on stdout as `central-server listening on ADDR`).
    #[arg(long, env = "CENTRAL_LISTEN_ADDR", default_value = defaults::LISTEN_ADDR,
          value_parser = address("CENTRAL_LISTEN_ADDR"))]
    pub listen_addr: SocketAddr,

    /// Address to serve Prometheus metrics on, at `/metrics` (plain HTTP,
    /// no auth: bind it to loopback or a private address). Empty = no
    /// metrics listener, and nothing is measured.
    #[arg(long, env = "CENTRAL_METRICS_ADDR", default_value = "",
          value_parser = optional_address("CENTRAL_METRICS_ADDR"))]
    pub metrics_addr: OptionalAddr,

    /// Directory of the database (created if missing). The index survives
    /// restarts there. On etcd: this central's snapshot of its index only.
    #[arg(long, env = "CENTRAL_DATA_DIR", default_value = defaults::DATA_DIR)]
    pub data_dir: PathBuf,
}

/// Leases and heartbeats.
#[derive(Debug, Section)]
pub struct LeaseArgs {
    /// Lease length in seconds: a peer that does not heartbeat for this long
    /// vanishes from every answer.
    #[arg(long, env = "CENTRAL_LEASE_TTL_SECS", default_value_t = defaults::LEASE_TTL_SECS,
          value_parser = Bounded::<u64>::positive("CENTRAL_LEASE_TTL_SECS"))]
    pub lease_ttl_secs: u64,

    /// Heartbeat period advised to peers, in seconds; must be shorter than
    /// the lease so one lost heartbeat is not fatal.
    #[arg(long, env = "CENTRAL_HEARTBEAT_SECS", default_value_t = defaults::HEARTBEAT_SECS,
          value_parser = Bounded::<u64>::positive("CENTRAL_HEARTBEAT_SECS"))]
    pub heartbeat_secs: u64,
}

/// [`Limits`]: what one request, peer or address may ask of the directory.
#[derive(Debug, Section)]
pub struct LimitArgs {
    /// Largest accepted request message, in bytes.
    #[arg(long, env = "CENTRAL_MAX_MESSAGE_BYTES", default_value_t = defaults::MAX_MESSAGE_BYTES,
          value_parser = Bounded::<usize>::at_least("CENTRAL_MAX_MESSAGE_BYTES", bounds::MIN_MESSAGE_BYTES))]
    pub max_message_bytes: usize,

    /// Longest accepted file or folder name (each component of a share
    /// name, which is a relative path of at most 1024 bytes), in bytes
    /// (at most 255).
    #[arg(long, env = "CENTRAL_MAX_NAME_BYTES", default_value_t = defaults::MAX_NAME_BYTES,
          value_parser = Bounded::<usize>::within("CENTRAL_MAX_NAME_BYTES", 1, bounds::MAX_NAME_BYTES))]
    pub max_name_bytes: usize,

    /// Most files in one Join/Publish/Unpublish, and in one peer's inventory.
    #[arg(long, env = "CENTRAL_MAX_INVENTORY", default_value_t = defaults::MAX_INVENTORY,
          value_parser = Bounded::<usize>::positive("CENTRAL_MAX_INVENTORY"))]
    pub max_inventory: usize,

    /// Most search hits per page (larger requested limits are clamped).
    #[arg(long, env = "CENTRAL_MAX_PAGE", default_value_t = defaults::MAX_PAGE,
          value_parser = Bounded::<usize>::positive("CENTRAL_MAX_PAGE"))]
    pub max_page: usize,

    /// Most holders listed per located file.
    #[arg(long, env = "CENTRAL_MAX_HOLDERS", default_value_t = defaults::MAX_HOLDERS,
          value_parser = Bounded::<usize>::positive("CENTRAL_MAX_HOLDERS"))]
    pub max_holders: usize,

    /// Units of work one search may spend (a word of the index or a name
    /// visited); beyond it the answer is partial and says `truncated`.
    #[arg(long, env = "CENTRAL_SEARCH_BUDGET", default_value_t = defaults::SEARCH_BUDGET,
          value_parser = Bounded::<usize>::positive("CENTRAL_SEARCH_BUDGET"))]
    pub search_budget: usize,

    /// Joins per second per source address (burst: 10 seconds' worth;
    /// 0 = no limit).
    #[arg(long, env = "CENTRAL_JOIN_RATE", default_value_t = defaults::JOIN_RATE,
          value_parser = Bounded::<u32>::rate("CENTRAL_JOIN_RATE", bounds::MAX_RATE))]
    pub join_rate: u32,

    /// Publish + Unpublish calls per second per peer (burst: 10 seconds'
    /// worth; 0 = no limit).
    #[arg(long, env = "CENTRAL_PUBLISH_RATE", default_value_t = defaults::PUBLISH_RATE,
          value_parser = Bounded::<u32>::rate("CENTRAL_PUBLISH_RATE", bounds::MAX_RATE))]
    pub publish_rate: u32,

    /// Search calls per second per source address, and per peer when the
    /// call names one (burst: 10 seconds' worth; 0 = no limit).
    #[arg(long, env = "CENTRAL_SEARCH_RATE", default_value_t = defaults::SEARCH_RATE,
          value_parser = Bounded::<u32>::rate("CENTRAL_SEARCH_RATE", bounds::MAX_RATE))]
    pub search_rate: u32,

    /// Peers joined at a time from one source address (peers behind one
    /// NAT share it).
    #[arg(long, env = "CENTRAL_MAX_PEERS_PER_ADDR", default_value_t = defaults::MAX_PEERS_PER_ADDR,
          value_parser = Bounded::<usize>::positive("CENTRAL_MAX_PEERS_PER_ADDR"))]
    pub max_peers_per_addr: usize,

    /// Holdings (a peer serving a file under a name) in the whole directory.
    #[arg(long, env = "CENTRAL_MAX_FILES", default_value_t = defaults::MAX_FILES,
          value_parser = Bounded::<usize>::positive("CENTRAL_MAX_FILES"))]
    pub max_files: usize,

    /// Peer ids bound to keys, kept even after their peers leave (so that
    /// nobody can take a departed peer's id). When full, the binding of the
    /// absent peer idle longest is forgotten to make room.
    #[arg(long, env = "CENTRAL_MAX_KEYS", default_value_t = defaults::MAX_KEYS,
          value_parser = Bounded::<usize>::positive("CENTRAL_MAX_KEYS"))]
    pub max_keys: usize,

    /// Highest number of live copies a pin may ask for (`peerdex replicate
    /// ID N`, `peerdex upload --replicas N`). 2 to 64.
    #[arg(long, env = "CENTRAL_MAX_REPLICAS", default_value_t = defaults::MAX_REPLICAS,
          value_parser = Bounded::<u32>::within("CENTRAL_MAX_REPLICAS", bounds::MIN_REPLICAS, bounds::MAX_REPLICAS))]
    pub max_replicas: u32,

    /// Pins one peer may hold.
    #[arg(long, env = "CENTRAL_MAX_PINS_PER_PEER", default_value_t = defaults::MAX_PINS_PER_PEER,
          value_parser = Bounded::<usize>::positive("CENTRAL_MAX_PINS_PER_PEER"))]
    pub max_pins_per_peer: usize,

    /// Subscriptions one peer may hold on its Watch stream (wanted files:
    /// file ids, exact names and queries together). A PServer's wants
    /// beyond it are refused naming this setting.
    #[arg(long, env = "CENTRAL_MAX_WATCHES_PER_PEER", default_value_t = defaults::MAX_WATCHES_PER_PEER,
          value_parser = Bounded::<usize>::positive("CENTRAL_MAX_WATCHES_PER_PEER"))]
    pub max_watches_per_peer: usize,

    /// Bytes one peer's pins may ask the network to keep: each pinned
    /// file's size times the copies it asks for, summed.
    #[arg(long, env = "CENTRAL_MAX_PINNED_BYTES_PER_PEER", default_value_t = defaults::MAX_PINNED_BYTES_PER_PEER,
          value_parser = Bounded::<u64>::positive("CENTRAL_MAX_PINNED_BYTES_PER_PEER"))]
    pub max_pinned_bytes_per_peer: u64,

    /// Pins that calls from one source address may set, whatever key they
    /// sign with (a key costs one Challenge; an address does not).
    #[arg(long, env = "CENTRAL_MAX_PINS_PER_ADDR", default_value_t = defaults::MAX_PINS_PER_ADDR,
          value_parser = Bounded::<usize>::positive("CENTRAL_MAX_PINS_PER_ADDR"))]
    pub max_pins_per_addr: usize,

    /// Bytes the pins set from one source address may ask the network to
    /// keep (size times copies, summed).
    #[arg(long, env = "CENTRAL_MAX_PINNED_BYTES_PER_ADDR", default_value_t = defaults::MAX_PINNED_BYTES_PER_ADDR,
          value_parser = Bounded::<u64>::positive("CENTRAL_MAX_PINNED_BYTES_PER_ADDR"))]
    pub max_pinned_bytes_per_addr: u64,
}

/// Reachability of peers (issue 25).
#[derive(Debug, Section)]
pub struct ReachArgs {
    /// Dial back every peer's advertised URL at Join (GET
    /// /peer/v1/health, 2 s): a peer nobody can reach is listed only
    /// through a relay (PSERVER_RELAY) and never with its own URL. false
    /// believes every peer: only for closed networks and simulations.
    #[arg(long, env = "CENTRAL_DIAL_BACK", default_value_t = defaults::DIAL_BACK,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub dial_back: bool,
}

/// Pins, replicas and audits.
#[derive(Debug, Section)]
pub struct ReplicationArgs {
    /// Days a pin outlives its owner's lease: a pin whose owner has not
    /// been back for this long ends and its replicas are released
    /// (0 = the pin ends with its owner's lease).
    #[arg(long, env = "CENTRAL_PIN_ORPHAN_DAYS", default_value_t = defaults::PIN_ORPHAN_DAYS,
          value_parser = Bounded::<u32>::days("CENTRAL_PIN_ORPHAN_DAYS", 0, bounds::MAX_DAYS))]
    pub pin_orphan_days: u32,

    /// Seconds between two audits of a copy the directory counts toward a
    /// pin: the leader fetches a random chunk from the holder and checks
    /// it against the file id. Unproven copies are audited at once.
    #[arg(long, env = "CENTRAL_AUDIT_SECS", default_value_t = defaults::AUDIT_SECS,
          value_parser = Bounded::<u64>::seconds("CENTRAL_AUDIT_SECS", 1, bounds::MAX_AUDIT_SECS))]
    pub audit_secs: u64,

    /// PEM file of CA certificates to trust, beside the system's roots,
    /// when auditing peers whose API is https (set it to your network's CA,
    /// as PSERVER_CA_FILE on the PServers).
    #[arg(long, env = "CENTRAL_PEER_CA_FILE", value_name = "PEM")]
    pub peer_ca_file: Option<PathBuf>,

    /// Seconds a pinned file may keep more live copies than asked (an
    /// owner came back) before volunteers are asked to drop the extra
    /// replicas. Owners' copies are never dropped.
    #[arg(long, env = "CENTRAL_REPLICA_GRACE_SECS", default_value_t = defaults::REPLICA_GRACE_SECS,
          value_parser = Bounded::<u64>::positive("CENTRAL_REPLICA_GRACE_SECS"))]
    pub replica_grace_secs: u64,
}

/// Who may join: key bindings and the private network.
#[derive(Debug, Section)]
pub struct KeyArgs {
    /// Days a departed peer's id stays bound to its key: within them only
    /// that key can join with the id again; after them the id is free.
    #[arg(long, env = "CENTRAL_KEY_RETENTION_DAYS", default_value_t = defaults::KEY_RETENTION_DAYS,
          value_parser = Bounded::<u32>::days("CENTRAL_KEY_RETENTION_DAYS", 1, bounds::MAX_DAYS))]
    pub key_retention_days: u32,

    /// Makes the network private: only PServers whose PSERVER_JOIN_SECRET
    /// is this may join, and every peer API then asks for a credential
    /// signed by this directory. At least 16 characters; needs TLS.
    #[arg(long, env = "CENTRAL_JOIN_SECRET", hide_env_values = true)]
    pub join_secret: Option<String>,
}

/// The directory on etcd, shared by several centrals.
#[derive(Debug, Section)]
pub struct EtcdArgs {
    /// Keep the directory in etcd instead of the embedded SQLite database:
    /// comma-separated client URLs of the etcd members, e.g.
    /// http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379.
    /// Then any number of centrals serve the same directory, all active,
    /// and one of them is elected leader. Empty = SQLite in
    /// CENTRAL_DATA_DIR, one central.
    #[arg(long, env = "CENTRAL_ETCD_ENDPOINTS", default_value = "")]
    pub etcd_endpoints: String,

    /// Prefix of the directory's keys in etcd; centrals with the same
    /// endpoints and prefix serve the same directory.
    #[arg(long, env = "CENTRAL_ETCD_PREFIX", default_value = defaults::ETCD_PREFIX)]
    pub etcd_prefix: String,

    /// Write a peer's inventory to etcd in pages (a few large keys per
    /// Join instead of a key per holding). Set false while a rolling
    /// upgrade still runs centrals from before pages (they read only a key
    /// per holding), true again once every central is upgraded; pages are
    /// read either way.
    #[arg(long, env = "CENTRAL_ETCD_PAGES", default_value_t = defaults::ETCD_PAGES,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub etcd_pages: bool,

    // The help shows `<hostname>:<port>` as written, not as HTML.
    #[allow(rustdoc::invalid_html_tags)]
    /// This central's name in answers, logs and the leader election
    /// (letters, digits, . _ : -). Empty = <hostname>:<port>.
    #[arg(long, env = "CENTRAL_NAME", default_value = "")]
    pub name: String,

    /// On etcd: write a snapshot of this central's index to
    /// CENTRAL_DATA_DIR every this many seconds when it changed, and at a
    /// clean shutdown. A restart loads it and follows etcd from its
    /// revision (seconds at a million holdings, instead of a full read of
    /// the directory). 0 = no snapshot: every start reads everything.
    #[arg(long, env = "CENTRAL_SNAPSHOT_SECS", default_value_t = defaults::SNAPSHOT_SECS,
        value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub snapshot_secs: u64,
}

/// TLS on the gRPC port.
#[derive(Debug, Section)]
pub struct TlsArgs {
    /// PEM certificate (a chain: leaf first) to serve gRPC over TLS. With
    /// CENTRAL_TLS_KEY the port speaks only TLS (peers then use an https://
    /// PSERVER_CENTRAL_URL); both or neither.
    #[arg(long, env = "CENTRAL_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of CENTRAL_TLS_CERT (keep it mode 0600).
    #[arg(long, env = "CENTRAL_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

/// The island and its links to other islands (see the README, "Islands").
#[derive(Debug, Section)]
pub struct LinkArgs {
    /// This island's name, shown in Info, in search results and by
    /// `peerdex status` (letters, digits, . _ : -). Empty = the host name.
    /// Every central of one island (on one etcd) should give the same.
    #[arg(long, env = "CENTRAL_ISLAND_NAME", default_value = "")]
    pub island_name: String,

    /// Comma-separated https://host:port URLs of the centrals of other
    /// islands to link with (several centrals of one island fail over in
    /// this order). A link exists only when both ends list each other.
    /// Needs CENTRAL_TLS_CERT/KEY (shown to them as a client certificate)
    /// and CENTRAL_LINK_CA_FILE. Empty = this island stands alone.
    #[arg(long, env = "CENTRAL_LINKS", default_value = "", value_name = "URLS",
          value_parser = links_list)]
    pub links: LinkList,

    /// PEM file of the CA certificates trusted for links: a linked central
    /// must show a certificate that chains to one of them and names the
    /// host of one of CENTRAL_LINKS (both ways).
    #[arg(long, env = "CENTRAL_LINK_CA_FILE", value_name = "PEM")]
    pub link_ca_file: Option<PathBuf>,

    /// Seconds between summary pulls from each linked island: a file
    /// shared there is found from here within this long.
    #[arg(long, env = "CENTRAL_LINK_REFRESH_SECS", default_value_t = defaults::LINK_REFRESH_SECS,
          value_parser = Bounded::<u64>::within("CENTRAL_LINK_REFRESH_SECS", 1, 3600))]
    pub link_refresh_secs: u64,

    /// Milliseconds a lookup waits for linked islands (the local answer
    /// never waits longer); a slower island is skipped until it answers a
    /// probe.
    #[arg(long, env = "CENTRAL_LINK_TIMEOUT_MS", default_value_t = defaults::LINK_TIMEOUT_MS,
          value_parser = Bounded::<u64>::within("CENTRAL_LINK_TIMEOUT_MS", 10, 60_000))]
    pub link_timeout_ms: u64,

    /// Calls per second each linked island may make here (Locate, Search,
    /// summaries); more are refused RESOURCE_EXHAUSTED. 0 = no limit.
    #[arg(long, env = "CENTRAL_LINK_RATE", default_value_t = defaults::LINK_RATE,
          value_parser = Bounded::<u32>::rate("CENTRAL_LINK_RATE", bounds::MAX_RATE))]
    pub link_rate: u32,
}

/// `CENTRAL_LINKS`, parsed.
#[derive(Debug, Clone, Default)]
pub struct LinkList(pub Vec<LinkUrl>);

fn links_list(s: &str) -> Result<LinkList, String> {
    parse_links(s).map(LinkList).map_err(|e| e.to_string())
}

impl LinkArgs {
    fn apply(&self, c: &mut Config) {
        c.links = LinkConfig {
            island: set(&self.island_name),
            links: self.links.0.clone(),
            refresh: Duration::from_secs(self.link_refresh_secs),
            timeout: Duration::from_millis(self.link_timeout_ms),
            rate: self.link_rate,
            ..LinkConfig::default()
        };
    }
}

/// `Some(s)` unless `s` is empty once trimmed (an empty setting is unset).
fn set(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// A path setting, unless empty.
fn set_path(p: Option<&PathBuf>) -> Option<&Path> {
    p.map(PathBuf::as_path)
        .filter(|p| !p.as_os_str().is_empty())
}

impl From<&LimitArgs> for Limits {
    fn from(a: &LimitArgs) -> Self {
        Limits {
            max_message_bytes: a.max_message_bytes,
            max_name_bytes: a.max_name_bytes,
            max_inventory: a.max_inventory,
            max_page: a.max_page,
            max_holders: a.max_holders,
            search_budget: a.search_budget,
            join_rate: a.join_rate,
            publish_rate: a.publish_rate,
            search_rate: a.search_rate,
            max_peers_per_addr: a.max_peers_per_addr,
            max_files: a.max_files,
            max_keys: a.max_keys,
            max_replicas: a.max_replicas,
            max_pins_per_peer: a.max_pins_per_peer,
            max_pinned_bytes_per_peer: a.max_pinned_bytes_per_peer,
            max_watches_per_peer: a.max_watches_per_peer,
            max_pins_per_addr: a.max_pins_per_addr,
            max_pinned_bytes_per_addr: a.max_pinned_bytes_per_addr,
            ..Limits::default()
        }
    }
}

impl LeaseArgs {
    fn apply(&self, c: &mut Config) {
        c.lease_ttl = Duration::from_secs(self.lease_ttl_secs);
        c.heartbeat_interval = Duration::from_secs(self.heartbeat_secs);
    }
}

impl ReplicationArgs {
    fn apply(&self, c: &mut Config) {
        c.pin_orphan = days(self.pin_orphan_days);
        c.audit_every = Duration::from_secs(self.audit_secs);
        c.replica_grace = Duration::from_secs(self.replica_grace_secs);
    }
}

impl KeyArgs {
    fn apply(&self, c: &mut Config) {
        c.key_retention = days(self.key_retention_days);
        c.join_secret = self.join_secret.clone().filter(|s| !s.is_empty());
    }
}

impl EtcdArgs {
    fn apply(&self, c: &mut Config) {
        c.etcd_endpoints = set(&self.etcd_endpoints);
        c.etcd_prefix.clone_from(&self.etcd_prefix);
        c.etcd_pages = self.etcd_pages;
        c.name = set(&self.name);
        c.snapshot_every = Duration::from_secs(self.snapshot_secs);
    }
}

impl Args {
    /// The library's [`Config`] for these flags, every section in its
    /// place; what they do not set keeps its default. Files are not read
    /// here (see [`Args::load`]).
    pub fn config(&self) -> Config {
        let mut c = Config::new(&self.serve.data_dir);
        self.lease.apply(&mut c);
        c.limits = Limits::from(&self.limits);
        self.replication.apply(&mut c);
        c.dial_back = self.reach.dial_back;
        self.keys.apply(&mut c);
        self.etcd.apply(&mut c);
        self.links.apply(&mut c);
        c
    }

    /// [`Args::config`] with the files the flags name read (TLS
    /// certificate and key, the peers' CA), validated.
    pub fn load(&self) -> Result<Config> {
        let mut c = self.config();
        c.tls = crate::tls::from_settings(
            set_path(self.tls.tls_cert.as_ref()),
            set_path(self.tls.tls_key.as_ref()),
        )?;
        if let Some(path) = set_path(self.replication.peer_ca_file.as_ref()) {
            c.peer_ca = crate::tls::read_ca_file(path)?;
        }
        if let Some(path) = set_path(self.links.link_ca_file.as_ref()) {
            (c.links.ca_pem, c.links.ca) = crate::tls::read_link_ca_file(path)?;
        }
        c.validate()?;
        Ok(c)
    }
}
