//! What [`crate::run`] needs: the directory's settings and its explicit
//! limits, checked at start-up with messages that name the variable.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

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
    /// Pins set from one source address (`CENTRAL_MAX_PINS_PER_ADDR`,
    /// default 1000): a key costs one Challenge, an address does not.
    pub max_pins_per_addr: usize,
    /// Bytes the pins set from one source address may ask the network to
    /// keep (`CENTRAL_MAX_PINNED_BYTES_PER_ADDR`, default 1 TiB).
    pub max_pinned_bytes_per_addr: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 << 20,
            max_name_bytes: peerdex_proto::types::MAX_NAME_BYTES,
            max_inventory: 100_000,
            max_page: 1000,
            max_holders: 64,
            max_search_matches: 10_000,
            search_budget: 100_000,
            join_rate: 5,
            publish_rate: 20,
            search_rate: 50,
            max_peers_per_addr: 1000,
            max_files: 5_000_000,
            max_keys: 1_000_000,
            max_replicas: 5,
            max_pins_per_peer: 1000,
            max_pinned_bytes_per_peer: 1 << 40,
            max_pins_per_addr: 1000,
            max_pinned_bytes_per_addr: 1 << 40,
        }
    }
}

/// Everything [`run`] needs. Build with [`Config::new`] and adjust fields.
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
}

/// Longest `CENTRAL_NAME`.
pub const MAX_NAME_LEN: usize = 64;

impl Config {
    /// Defaults (TTL 30 s, heartbeat 10 s, default limits) over `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            key_retention: Duration::from_secs(90 * 86_400),
            join_secret: None,
            limits: Limits::default(),
            tls: None,
            etcd_endpoints: None,
            etcd_prefix: "/peerdex/".into(),
            name: None,
            drain: None,
            replica_grace: Duration::from_secs(300),
            pin_orphan: Duration::from_secs(30 * 86_400),
            audit_every: Duration::from_secs(600),
            audit_retry: Duration::from_secs(10),
            peer_ca: Vec::new(),
        }
    }

    /// Check the values; the message names the setting and its variable.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.lease_ttl.is_zero() {
            return bad("lease_ttl (CENTRAL_LEASE_TTL_SECS) must be positive".into());
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.lease_ttl {
            return bad(format!(
                "heartbeat_interval (CENTRAL_HEARTBEAT_SECS) is {} s; it must be positive and shorter than lease_ttl (CENTRAL_LEASE_TTL_SECS) {} s",
                self.heartbeat_interval.as_secs_f64(),
                self.lease_ttl.as_secs_f64()
            ));
        }
        if self.key_retention.is_zero() {
            return bad("key_retention (CENTRAL_KEY_RETENTION_DAYS) must be at least 1 day".into());
        }
        if let Some(s) = &self.join_secret
            && (s.len() < 16 || !s.chars().all(|c| c.is_ascii_graphic()))
        {
            return bad("join_secret (CENTRAL_JOIN_SECRET) must be at least 16 printable ASCII characters without spaces".into());
        }
        if self.join_secret.is_some() && self.tls.is_none() {
            return bad("CENTRAL_JOIN_SECRET makes the network private, and a private network speaks only TLS: set CENTRAL_TLS_CERT and CENTRAL_TLS_KEY too".into());
        }
        if let Some(eps) = &self.etcd_endpoints {
            let list: Vec<&str> = eps.split(',').map(str::trim).collect();
            if list.iter().any(|e| e.is_empty()) {
                return bad(format!(
                    "CENTRAL_ETCD_ENDPOINTS {eps:?} has an empty item: give comma-separated URLs such as http://10.0.0.1:2379,http://10.0.0.2:2379"
                ));
            }
            for e in &list {
                let ok = ["http://", "https://"].iter().any(|s| {
                    e.strip_prefix(s)
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
                });
                if !ok {
                    return bad(format!(
                        "CENTRAL_ETCD_ENDPOINTS: {e:?} is not an http:// or https:// URL of an etcd member"
                    ));
                }
            }
        }
        let p = &self.etcd_prefix;
        if !p.starts_with('/')
            || !p.ends_with('/')
            || p.len() > 128
            || p.contains(char::is_whitespace)
        {
            return bad(format!(
                "CENTRAL_ETCD_PREFIX {p:?} must start and end with '/', without spaces, at most 128 bytes (default /peerdex/)"
            ));
        }
        if let Some(n) = &self.name
            && (n.is_empty()
                || n.len() > MAX_NAME_LEN
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)))
        {
            return bad(format!(
                "CENTRAL_NAME {n:?} must be 1-{MAX_NAME_LEN} characters among letters, digits and . _ : -"
            ));
        }
        if self.audit_every < Duration::from_secs(1) {
            return bad("audit_every (CENTRAL_AUDIT_SECS) must be at least 1 second".into());
        }
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            return bad(format!(
                "max_message_bytes (CENTRAL_MAX_MESSAGE_BYTES) {} is below 1024",
                l.max_message_bytes
            ));
        }
        if l.max_name_bytes == 0 || l.max_name_bytes > peerdex_proto::types::MAX_NAME_BYTES {
            return bad(format!(
                "max_name_bytes (CENTRAL_MAX_NAME_BYTES) {} must be 1-255",
                l.max_name_bytes
            ));
        }
        for (v, name) in [
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
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        for (v, name) in [
            (l.join_rate, "join_rate (CENTRAL_JOIN_RATE)"),
            (l.publish_rate, "publish_rate (CENTRAL_PUBLISH_RATE)"),
            (l.search_rate, "search_rate (CENTRAL_SEARCH_RATE)"),
        ] {
            if v > 1_000_000 {
                return bad(format!(
                    "{name} is {v}; at most 1000000 calls per second (0 = no limit)"
                ));
            }
        }
        Ok(())
    }
}
