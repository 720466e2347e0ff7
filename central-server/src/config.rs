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
    pub limits: Limits,
}

impl Config {
    /// Defaults (TTL 30 s, heartbeat 10 s, default limits) over `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            limits: Limits::default(),
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
                "heartbeat_interval (CENTRAL_HEARTBEAT_SECS) is {:?}; it must be positive and shorter than lease_ttl (CENTRAL_LEASE_TTL_SECS) {:?}",
                self.heartbeat_interval, self.lease_ttl
            ));
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
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}
