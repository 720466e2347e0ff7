//! Islands and their links: `CENTRAL_ISLAND_NAME`, `CENTRAL_LINKS`,
//! `CENTRAL_LINK_CA_FILE`, `CENTRAL_LINK_REFRESH_SECS`,
//! `CENTRAL_LINK_TIMEOUT_MS`, `CENTRAL_LINK_RATE` (see `crate::link`).

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tonic::codegen::http::Uri;

use super::{ConfigError, MAX_NAME_LEN, defaults};

/// Most entries in `CENTRAL_LINKS`: each is asked in parallel, and each
/// costs a summary in memory.
pub const MAX_LINKS: usize = 64;

/// One entry of `CENTRAL_LINKS`: a central of another island.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUrl {
    /// `https://host:port`, as it is called.
    pub url: String,
    /// The host its certificate must name, both ways.
    pub host: String,
}

impl std::fmt::Display for LinkUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl std::str::FromStr for LinkUrl {
    type Err = ConfigError;

    /// `https://host[:port]` (port 443 when absent), nothing after it.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::LinkNotUrl { url: s.to_owned() };
        let uri: Uri = s.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") {
            return Err(ConfigError::LinkNotHttps { url: s.to_owned() });
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(bad());
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let url = match host.contains(':') {
            true => format!("https://[{host}]:{port}"),
            false => format!("https://{host}:{port}"),
        };
        Ok(Self { url, host })
    }
}

/// What this central needs to link its island to others.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `CENTRAL_ISLAND_NAME`; `None`: the host name.
    pub island: Option<String>,
    /// `CENTRAL_LINKS`, in order (several centrals of one island fail
    /// over to each other in this order).
    pub links: Vec<LinkUrl>,
    /// `CENTRAL_LINK_CA_FILE`, as read (PEM), and its certificates.
    pub ca_pem: Vec<u8>,
    pub ca: Vec<CertificateDer<'static>>,
    /// `CENTRAL_LINK_REFRESH_SECS` (default 10): summaries are at most
    /// this old.
    pub refresh: Duration,
    /// `CENTRAL_LINK_TIMEOUT_MS` (default 500): how long a lookup waits
    /// for linked islands.
    pub timeout: Duration,
    /// `CENTRAL_LINK_RATE` (default 200): calls per second one linked
    /// island may make here (0 = no limit).
    pub rate: u32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            island: None,
            links: Vec::new(),
            ca_pem: Vec::new(),
            ca: Vec::new(),
            refresh: Duration::from_secs(defaults::LINK_REFRESH_SECS),
            timeout: Duration::from_millis(defaults::LINK_TIMEOUT_MS),
            rate: defaults::LINK_RATE,
        }
    }
}

/// An island's or a central's name: 1-64 letters, digits and `. _ : -`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
}

/// This machine's host name (`HOSTNAME`, else `/etc/hostname`), trimmed;
/// `None` when neither gives one.
pub fn host() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The island's name when `CENTRAL_ISLAND_NAME` is not set: the host name,
/// or `island`.
pub fn host_name() -> String {
    host()
        .filter(|h| valid_name(h))
        .unwrap_or_else(|| "island".into())
}

/// Parse `CENTRAL_LINKS`: comma-separated URLs; empty = no links.
pub fn parse_links(s: &str) -> Result<Vec<LinkUrl>, ConfigError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let links = s
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<Vec<LinkUrl>, _>>()?;
    if links.len() > MAX_LINKS {
        return Err(ConfigError::TooManyLinks {
            links: links.len(),
            max: MAX_LINKS,
        });
    }
    Ok(links)
}

impl LinkConfig {
    /// The island's name: `CENTRAL_ISLAND_NAME` or the host name.
    pub fn island_name(&self) -> String {
        self.island.clone().unwrap_or_else(host_name)
    }

    pub(super) fn check(&self, tls: bool) -> Result<(), ConfigError> {
        if let Some(name) = &self.island
            && !valid_name(name)
        {
            return Err(ConfigError::IslandName { name: name.clone() });
        }
        if self.links.is_empty() {
            return Ok(());
        }
        if !tls {
            return Err(ConfigError::LinksWithoutTls);
        }
        if self.ca.is_empty() {
            return Err(ConfigError::LinksWithoutCa);
        }
        if self.refresh.is_zero() {
            return Err(ConfigError::NotPositive {
                setting: "CENTRAL_LINK_REFRESH_SECS",
            });
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::NotPositive {
                setting: "CENTRAL_LINK_TIMEOUT_MS",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_urls_are_https_with_a_host_and_a_port() {
        let l: LinkUrl = "https://b.example:7443".parse().unwrap();
        assert_eq!(l.url, "https://b.example:7443");
        assert_eq!(l.host, "b.example");
        let l: LinkUrl = "https://10.0.0.2".parse().unwrap();
        assert_eq!(l.url, "https://10.0.0.2:443");
        let l: LinkUrl = "https://[::1]:50051/".parse().unwrap();
        assert_eq!(
            (l.url.as_str(), l.host.as_str()),
            ("https://[::1]:50051", "::1")
        );
        for bad in ["http://b:1", "b:1", "https://", "https://b:1/x", ""] {
            assert!(bad.parse::<LinkUrl>().is_err(), "{bad}");
        }
        assert_eq!(parse_links(" ").unwrap(), vec![]);
        assert_eq!(parse_links("https://a:1, https://b:2").unwrap().len(), 2);
        assert!(matches!(
            parse_links("https://a:1,,https://b:2"),
            Err(ConfigError::LinkNotUrl { .. })
        ));
    }

    #[test]
    fn links_need_tls_and_a_ca() {
        let mut c = LinkConfig {
            links: parse_links("https://b:1").unwrap(),
            ..LinkConfig::default()
        };
        assert!(matches!(c.check(false), Err(ConfigError::LinksWithoutTls)));
        assert!(matches!(c.check(true), Err(ConfigError::LinksWithoutCa)));
        c.links.clear();
        c.island = Some("bad name".into());
        assert!(matches!(
            c.check(false),
            Err(ConfigError::IslandName { .. })
        ));
    }
}
