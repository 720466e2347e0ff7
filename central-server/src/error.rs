//! The crate's one error type, mapped to a gRPC status at the edge.

use peerdex_proto::PeerId;
use tonic::Status;

/// Everything that can go wrong in the directory. Each variant says what the
/// caller should do: fix the request, authenticate, join again, send less, or
/// (for storage trouble) retry later.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field. Fix and resend.
    #[error("{0}")]
    InvalidArgument(String),
    /// Missing or wrong session token. Nothing was changed.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller proved who it is, and that is not allowed (a peer id
    /// bound to another key).
    #[error("{0}")]
    PermissionDenied(String),
    /// The peer is unknown or its lease expired: it must call Join again.
    #[error("peer {0} is not joined or its lease expired: join again")]
    NotJoined(PeerId),
    /// A configured limit was hit; the message names the limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// A rate limit was hit; the message names the setting. Retry after
    /// `retry_after_secs` (sent as `retry-after` metadata).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// The embedded database failed. Retry later.
    #[error("storage error: {0}")]
    Storage(#[from] rusqlite::Error),
    /// A peer's inventory change arrived after a later one was applied
    /// (it was delivered late): refused, nothing changed.
    #[error("{0}")]
    Aborted(String),
    /// The directory's store (etcd) did not answer, or a write could not
    /// be confirmed; nothing acknowledged is lost. Retry (here or at
    /// another central).
    #[error("{0}")]
    Unavailable(String),
    /// The server is shutting down. Retry against the next instance.
    #[error("the directory is shutting down")]
    Closed,
    /// The database holds something this version cannot read.
    #[error("corrupt database: {0}")]
    Corrupt(String),
    /// A configuration value is out of range; the message names the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A certificate or key file (`CENTRAL_TLS_*`, a CA file) is unusable;
    /// the message names the setting and the file.
    #[error("invalid configuration: {0}")]
    TlsFile(#[from] peerdex_common::tls::PemFileError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The request names something the directory does not know.
    #[error("{0}")]
    NotFound(String),
    /// A fault of the directory (see its log).
    #[error("{0}")]
    Internal(String),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The metadata key of a rate-limit answer: whole seconds to wait.
pub const RETRY_AFTER: &str = "retry-after";

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            e @ Error::NotJoined(_) => Status::failed_precondition(e.to_string()),
            Error::LimitExceeded(m) => Status::resource_exhausted(m),
            Error::RateLimited {
                message,
                retry_after_secs,
            } => {
                let mut s = Status::resource_exhausted(message);
                s.metadata_mut()
                    .insert(RETRY_AFTER, retry_after_secs.into());
                s
            }
            Error::Aborted(m) => Status::aborted(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::Unavailable(m) => {
                tracing::warn!(error = %m, "call not done: the store did not answer");
                Status::unavailable(m)
            }
            Error::Closed => Status::unavailable(
                "this central is shutting down; call another central of the directory",
            ),
            e => {
                tracing::error!(error = %e, "internal error");
                Status::unavailable(format!("internal error, retry later: {e}"))
            }
        }
    }
}

impl From<rusqlite::types::FromSqlError> for Error {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        Error::Corrupt(format!("unexpected column type: {e}"))
    }
}
