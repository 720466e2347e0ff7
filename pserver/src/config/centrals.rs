//! `PSERVER_CENTRAL_URL`: the list of centrals that serve one directory.

use tonic::codegen::http::uri::InvalidUri;

/// Most centrals one PServer lists: a directory is a handful of processes,
/// and a longer list is more likely a pasted mistake than a cluster.
pub const MAX_CENTRALS: usize = 16;

/// Why `PSERVER_CENTRAL_URL` is refused, naming the item.
#[derive(Debug, thiserror::Error)]
pub enum CentralsError {
    #[error("PSERVER_CENTRAL_URL is empty: give the gRPC URL of the central directory")]
    Empty,
    #[error("PSERVER_CENTRAL_URL lists {count} centrals; at most {MAX_CENTRALS} are allowed")]
    TooMany { count: usize },
    #[error("PSERVER_CENTRAL_URL {raw:?}: item {item} is empty (a stray comma?)")]
    EmptyItem { raw: String, item: usize },
    #[error("PSERVER_CENTRAL_URL {url:?} must start with http:// or https://")]
    Scheme { url: String },
    #[error("PSERVER_CENTRAL_URL {url:?} is not a valid URL: {source}")]
    Invalid { url: String, source: InvalidUri },
    #[error("PSERVER_CENTRAL_URL {url:?} has no host")]
    NoHost { url: String },
    #[error("PSERVER_CENTRAL_URL lists {url} twice")]
    Twice { url: String },
}

/// `PSERVER_CENTRAL_URL`: one URL, or several separated by commas. Each is
/// an http:// or https:// URL with a host (a trailing `/` is dropped); an
/// empty item, a duplicate or more than [`MAX_CENTRALS`] items are refused
/// with a message naming the item.
pub fn parse_centrals(raw: &str) -> Result<Vec<String>, CentralsError> {
    if raw.trim().is_empty() {
        return Err(CentralsError::Empty);
    }
    let items: Vec<&str> = raw.split(',').map(str::trim).collect();
    if items.len() > MAX_CENTRALS {
        return Err(CentralsError::TooMany { count: items.len() });
    }
    let mut centrals: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.is_empty() {
            return Err(CentralsError::EmptyItem {
                raw: raw.to_owned(),
                item: i + 1,
            });
        }
        let url = || item.to_string();
        if !(item.starts_with("http://") || item.starts_with("https://")) {
            return Err(CentralsError::Scheme { url: url() });
        }
        let uri = item
            .parse::<tonic::codegen::http::Uri>()
            .map_err(|source| CentralsError::Invalid { url: url(), source })?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(CentralsError::NoHost { url: url() });
        }
        let trimmed = item.trim_end_matches('/');
        if centrals.iter().any(|c| c.eq_ignore_ascii_case(trimmed)) {
            return Err(CentralsError::Twice {
                url: trimmed.to_owned(),
            });
        }
        centrals.push(trimmed.to_owned());
    }
    Ok(centrals)
}
