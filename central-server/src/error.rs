//! The crate's errors, each a typed value, mapped to a gRPC status at the
//! edge (`From<Error> for Status`): the variant decides the code, its
//! `Display` is the message the caller reads.

use std::fmt;
use std::net::IpAddr;

use peerdex_proto::{FileId, PeerId};
use tonic::Status;

/// The metadata key of a rate-limit answer: whole seconds to wait.
pub const RETRY_AFTER: &str = "retry-after";

/// A field of a request, as messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    PeerId,
    PeerUrl,
    FileId,
    Name,
    /// `files[i].name` of a Join, Publish or Unpublish.
    FileName(usize),
    /// `files[i].file_id` of an Unpublish.
    FileIdAt(usize),
    /// The metadata naming the peer that searches.
    PeerIdMeta,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::PeerId => f.write_str("peer_id"),
            Field::PeerUrl => f.write_str("peer_url"),
            Field::FileId => f.write_str("file_id"),
            Field::Name => f.write_str("name"),
            Field::FileName(i) => write!(f, "files[{i}].name"),
            Field::FileIdAt(i) => write!(f, "files[{i}].file_id"),
            Field::PeerIdMeta => write!(f, "{} metadata", crate::rpc::PEER_ID_META),
        }
    }
}

/// A malformed request: fix it and send again (INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("{field}: {source}")]
    Parse {
        field: Field,
        source: peerdex_proto::ParseError,
    },
    /// An inventory entry that does not convert (`files[i].…`).
    #[error("files[{index}].{source}")]
    Entry {
        index: usize,
        source: peerdex_proto::convert::WireError,
    },
    #[error(
        "{field}: a file or folder name of {bytes} bytes exceeds the limit of {max} bytes (max_name_bytes, CENTRAL_MAX_NAME_BYTES)"
    )]
    NameTooLong {
        field: Field,
        bytes: usize,
        max: usize,
    },
    #[error("query: {bytes} bytes exceed the limit of {max} bytes")]
    QueryTooLong { bytes: usize, max: usize },
    #[error("query: {words} words exceed the limit of {max}")]
    TooManyWords { words: usize, max: usize },
    #[error("query is empty: give one or more words")]
    EmptyQuery,
    #[error("page_token: not a token from a previous search answer")]
    PageToken,
    #[error(
        "peer_url: {url} is a relay URL; advertise your own peer API (the directory assigns relays)"
    )]
    RelayUrl { url: String },
    #[error("reachability: {value} is not AUTO (0), PUBLIC (1) or FIREWALLED (2)")]
    Reachability { value: i32 },
    #[error("target: file_id or name is required")]
    NoTarget,
    #[error(
        "replicas: {asked} is above CENTRAL_MAX_REPLICAS ({max}); ask for 2 to {max} live copies, or 0 to stop asking"
    )]
    Replicas { asked: u32, max: u32 },
    #[error("{source} (every Join proves the peer's key: see Challenge)")]
    PublicKey {
        source: peerdex_proto::identity::ProofError,
    },
    #[error(
        "files: {refused} of {total} entries are refused, too many to list in one answer ({bytes} bytes, over half of max_message_bytes); the first: {first}"
    )]
    TooManyRefused {
        refused: usize,
        total: usize,
        bytes: usize,
        first: String,
    },
}

/// Why a Join nonce is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("nonce: {0} bytes, not a nonce from Challenge; ask Challenge for one")]
    Length(usize),
    #[error(
        "nonce: not issued by this directory for this peer id (or before its restart); ask Challenge for a fresh one"
    )]
    Foreign,
    #[error("nonce: expired (a nonce is good for {valid_secs} s); ask Challenge for a fresh one")]
    Expired { valid_secs: u64 },
    #[error("nonce: already used by a Join; ask Challenge for a fresh one")]
    Spent,
}

/// The caller did not prove who it is (UNAUTHENTICATED). Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum Auth {
    #[error(
        "missing or malformed `authorization` metadata: expected `Bearer <session token from Join>`"
    )]
    MissingToken,
    #[error("session token does not match peer {0}")]
    WrongToken(PeerId),
    #[error("peer {0} has a live lease: a re-join must carry its current session token")]
    LiveLease(PeerId),
    #[error("peerdex-peer-id: a search that names peer {0} must carry its session token")]
    SearchWithoutToken(PeerId),
    #[error(transparent)]
    Nonce(#[from] NonceError),
    #[error("{0}")]
    Signature(peerdex_proto::identity::ProofError),
    #[error(
        "this is a private network: a Join must prove the join secret (set PSERVER_JOIN_SECRET)"
    )]
    NoSecretProof,
    #[error(
        "secret_proof: wrong join secret (PSERVER_JOIN_SECRET must equal the directory's CENTRAL_JOIN_SECRET)"
    )]
    WrongSecret,
}

/// A configured limit was reached (RESOURCE_EXHAUSTED); each names its
/// setting. Nothing changed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Limit {
    #[error(
        "files: {count} entries exceed the limit of {max} per request (max_inventory, CENTRAL_MAX_INVENTORY)"
    )]
    Entries { count: usize, max: usize },
    #[error(
        "{joined} peers are already joined from address {addr}, the limit (CENTRAL_MAX_PEERS_PER_ADDR) is {max}: leave with one, or wait for a lease to end"
    )]
    PeersPerAddr {
        joined: usize,
        addr: IpAddr,
        max: usize,
    },
    #[error(
        "files: the directory would hold {total} entries, over its limit of {max} (CENTRAL_MAX_FILES); nothing was changed"
    )]
    DirectoryFull { total: usize, max: usize },
    #[error(
        "the directory holds {max} peer keys, its limit (CENTRAL_MAX_KEYS); none is idle enough to forget"
    )]
    Keys { max: usize },
    #[error(
        "pins: peer {peer} holds {count} pins, the limit (CENTRAL_MAX_PINS_PER_PEER); remove one first (peerdex replicate ID 0)"
    )]
    PinsPerPeer { peer: PeerId, count: usize },
    #[error(
        "pinned bytes: {pinned} pinned + {more} (size {size} × {copies} copies) exceed CENTRAL_MAX_PINNED_BYTES_PER_PEER ({max})"
    )]
    PinnedBytesPerPeer {
        pinned: u64,
        more: u64,
        size: u64,
        copies: u32,
        max: u64,
    },
    #[error(
        "pins: {count} pins were set from {addr}, the limit (CENTRAL_MAX_PINS_PER_ADDR); remove one first (peerdex replicate ID 0)"
    )]
    PinsPerAddr { addr: IpAddr, count: usize },
    #[error(
        "pinned bytes: {pinned} pinned from {addr} + {more} (size {size} × {copies} copies) exceed CENTRAL_MAX_PINNED_BYTES_PER_ADDR ({max})"
    )]
    PinnedBytesPerAddr {
        addr: IpAddr,
        pinned: u64,
        more: u64,
        size: u64,
        copies: u32,
        max: u64,
    },
    #[error("peer {peer} already has {max} Revocations streams open; close one first")]
    Streams { peer: PeerId, max: usize },
    #[error(
        "watch: {count} subscriptions (file ids, names and queries) for peer {peer} exceed the limit of {max} (CENTRAL_MAX_WATCHES_PER_PEER); watch fewer"
    )]
    Watches {
        peer: PeerId,
        count: usize,
        max: usize,
    },
}

/// Whose allowance a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKey {
    Addr(IpAddr),
    Peer(PeerId),
}

impl fmt::Display for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateKey::Addr(a) => a.fmt(f),
            RateKey::Peer(p) => p.fmt(f),
        }
    }
}

/// A rate limit was hit: retry after `retry_after_secs` (sent as
/// `retry-after` metadata).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RateLimited {
    #[error("too many {what} from {key}: the limit is {setting}; retry in {retry_after_secs} s")]
    Calls {
        what: &'static str,
        key: RateKey,
        setting: &'static str,
        retry_after_secs: u64,
    },
    #[error(
        "too many heartbeats from peer {peer}: at most one per half heartbeat interval ({gap_ms} ms, CENTRAL_HEARTBEAT_SECS / 2) is taken; retry in {retry_after_secs} s"
    )]
    Heartbeats {
        peer: PeerId,
        gap_ms: u128,
        retry_after_secs: u64,
    },
}

impl RateLimited {
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            RateLimited::Calls {
                retry_after_secs, ..
            }
            | RateLimited::Heartbeats {
                retry_after_secs, ..
            } => *retry_after_secs,
        }
    }
}

/// What in the stored state this version cannot read.
#[derive(Debug, thiserror::Error)]
pub enum Corrupt {
    #[error("cannot switch the database to WAL (got {mode})")]
    NotWal { mode: String },
    #[error(
        "schema version {version} (PRAGMA user_version) is not one this central-server knows ({known}); a newer release wrote it"
    )]
    Schema { version: i64, known: &'static str },
    #[error("{table} row {row}: {problem}")]
    Row {
        table: &'static str,
        row: i64,
        problem: &'static str,
    },
    #[error("{table}: {problem}")]
    Table {
        table: &'static str,
        problem: &'static str,
    },
    #[error("a holding of peer row {peer_row} refers to a missing peer")]
    MissingPeer { peer_row: i64 },
    #[error("unexpected column type: {0}")]
    Column(rusqlite::types::FromSqlError),
    #[error("etcd: {key}: {problem}")]
    Secret {
        key: &'static str,
        problem: &'static str,
    },
}

/// Everything that can go wrong in the directory. Each variant says what the
/// caller should do: fix the request, authenticate, join again, send less, or
/// (for storage trouble) retry later.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Missing or wrong credentials. Nothing was changed.
    #[error(transparent)]
    Auth(#[from] Auth),
    /// The peer id is bound to another key (since its first Join).
    #[error(
        "peer id {0} is bound to another key (since its first Join): a PServer keeps its key in its data folder (peer.key) beside its id (peer-id); restore both, or start with a fresh data folder to get a new id"
    )]
    OtherKey(PeerId),
    /// The peer is unknown or its lease expired: it must call Join again.
    #[error("peer {0} is not joined or its lease expired: join again")]
    NotJoined(PeerId),
    /// A configured limit was hit; the message names the setting.
    #[error(transparent)]
    Limit(#[from] Limit),
    /// A rate limit was hit; the message names the setting.
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// A peer's inventory change arrived after a later one was applied
    /// (it was delivered late): refused, nothing changed.
    #[error(
        "seq: change {seq} of peer {peer} arrived after change {last} was applied; refused (it was delivered late), nothing changed"
    )]
    Superseded { peer: PeerId, seq: u64, last: u64 },
    /// The peer changed at another central while its Join was checked.
    #[error("peer {0} changed at another central while this Join was checked; join again")]
    Raced(PeerId),
    /// Pin of a file nobody holds or pinned.
    #[error("file_id: no live peer holds {0} and nobody pinned it; share or upload it first")]
    NoSuchFile(FileId),
    /// The call needs a private network (`CENTRAL_JOIN_SECRET`) and this
    /// directory is open.
    #[error(
        "this directory is an open network (no CENTRAL_JOIN_SECRET): it gives no credentials, so revokes none"
    )]
    OpenNetwork,
    /// The embedded database failed. Retry later.
    #[error("storage error: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The commit of a group of changes (this one among them) failed:
    /// none of them was made. Retry later.
    #[error("storage error: the commit of {changes} grouped changes failed: {source}")]
    GroupCommit {
        changes: usize,
        source: std::sync::Arc<rusqlite::Error>,
    },
    /// The directory's store (etcd) did not answer, or a write could not
    /// be confirmed; nothing acknowledged is lost. Retry (here or at
    /// another central).
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    /// The server is shutting down. Retry against the next instance.
    #[error("the directory is shutting down")]
    Closed,
    /// The database holds something this version cannot read.
    #[error("corrupt database: {0}")]
    Corrupt(#[from] Corrupt),
    /// A configuration value is out of range; the message names the setting.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// No CA certificates to check peers' certificates with (audits).
    #[error(
        "invalid configuration: CENTRAL_PEER_CA_FILE: no trusted CA certificates for https peers ({0})"
    )]
    PeerRoots(rustls::Error),
    /// The audit client cannot be built.
    #[error("audit client: {0}")]
    AuditClient(reqwest::Error),
    /// A credential (JWT) cannot be signed.
    #[error("cannot sign a credential: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// A fresh key cannot be encoded.
    #[error("cannot encode a key: {0}")]
    KeyEncoding(#[from] ed25519_dalek::pkcs8::Error),
    /// A certificate or key file (`CENTRAL_TLS_*`, a CA file) is unusable;
    /// the message names the setting and the file.
    #[error("invalid configuration: {0}")]
    TlsFile(#[from] peerdex_common::tls::PemFileError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The data folder (`CENTRAL_DATA_DIR`) cannot be created.
    #[error("CENTRAL_DATA_DIR {}: cannot create it: {source}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A fault of the directory (see its log).
    #[error("{0}")]
    Internal(&'static str),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let m = e.to_string();
        match e {
            Error::Invalid(_) => Status::invalid_argument(m),
            Error::Auth(_) => Status::unauthenticated(m),
            Error::OtherKey(_) => Status::permission_denied(m),
            Error::NotJoined(_) | Error::OpenNetwork => Status::failed_precondition(m),
            Error::Limit(_) => Status::resource_exhausted(m),
            Error::RateLimited(r) => {
                let mut s = Status::resource_exhausted(m);
                s.metadata_mut()
                    .insert(RETRY_AFTER, r.retry_after_secs().into());
                s
            }
            Error::Superseded { .. } => Status::aborted(m),
            Error::NoSuchFile(_) => Status::not_found(m),
            Error::Etcd(ref etcd) if etcd.is_unavailable() => {
                tracing::warn!(error = %m, "call not done: the store did not answer");
                Status::unavailable(m)
            }
            Error::Raced(_) => {
                tracing::warn!(error = %m, "call not done: the store did not answer");
                Status::unavailable(m)
            }
            Error::Closed => Status::unavailable(
                "this central is shutting down; call another central of the directory",
            ),
            _ => {
                tracing::error!(error = %m, "internal error");
                Status::unavailable(format!("internal error, retry later: {m}"))
            }
        }
    }
}

impl From<rusqlite::types::FromSqlError> for Error {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        Error::Corrupt(Corrupt::Column(e))
    }
}

impl From<NonceError> for Error {
    fn from(e: NonceError) -> Self {
        Error::Auth(Auth::Nonce(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_error_gets_its_grpc_code_and_a_rate_limit_its_retry_after() {
        let peer = PeerId::new_random();
        let cases: Vec<(Error, tonic::Code)> = vec![
            (Invalid::EmptyQuery.into(), tonic::Code::InvalidArgument),
            (Auth::WrongToken(peer).into(), tonic::Code::Unauthenticated),
            (NonceError::Spent.into(), tonic::Code::Unauthenticated),
            (Error::OtherKey(peer), tonic::Code::PermissionDenied),
            (Error::NotJoined(peer), tonic::Code::FailedPrecondition),
            (
                Limit::Keys { max: 3 }.into(),
                tonic::Code::ResourceExhausted,
            ),
            (
                Error::Superseded {
                    peer,
                    seq: 1,
                    last: 2,
                },
                tonic::Code::Aborted,
            ),
            (Error::Raced(peer), tonic::Code::Unavailable),
        ];
        assert!(
            Auth::SearchWithoutToken(peer)
                .to_string()
                .starts_with(crate::rpc::PEER_ID_META)
        );
        for (e, code) in cases {
            let text = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{text}");
            assert_eq!(s.message(), text);
        }
        let closed = Status::from(Error::Closed);
        assert_eq!(closed.code(), tonic::Code::Unavailable);
        assert!(closed.message().contains("call another central"));
        let s = Status::from(Error::from(RateLimited::Calls {
            what: "searches",
            key: RateKey::Addr("192.0.2.1".parse().unwrap()),
            setting: "CENTRAL_SEARCH_RATE (searches per second per source address)",
            retry_after_secs: 2,
        }));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_AFTER).unwrap(), "2");
        assert!(
            s.message().contains("CENTRAL_SEARCH_RATE"),
            "{}",
            s.message()
        );
    }
}
