//! A call to the directory that did not succeed, as our error: the gRPC
//! `Status` becomes a [`CallError`] where it arrives (in `failover`'s
//! `call`, which knows which central answered), so nothing past the link
//! reads a `Status`.

use tonic::{Code, Status};

/// What the central (or the transport on the way to it) answered instead
/// of an answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// The gRPC code of the answer.
    pub code: Code,
    /// The central's own words (or the transport's).
    pub message: String,
    /// When the central says to come back (its `retry-after`, seconds).
    pub retry_after: Option<u64>,
    /// The failure in plain words, naming the central, when TLS (or
    /// plaintext meeting TLS) was the cause.
    pub tls: Option<String>,
}

impl CallError {
    /// `status`, as the central at `url` (or the way to it) answered.
    pub(crate) fn at(status: &Status, url: &str) -> Self {
        Self {
            tls: crate::tls::explain(status, "the central", url),
            ..Self::from(status)
        }
    }

    /// A failure that is ours to report (the central answered wrongly).
    pub(crate) fn internal(message: &str) -> Self {
        Self::from(&Status::internal(message))
    }

    /// In plain words: what went wrong with TLS when that is the cause,
    /// else the central's message.
    pub fn explained(&self) -> String {
        self.tls.clone().unwrap_or_else(|| self.message.clone())
    }

    /// The central did not answer (or a proxy in between said so): the
    /// failure says nothing about our request.
    pub fn unreachable(&self) -> bool {
        matches!(
            self.code,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        )
    }

    /// Worth trying another central for: it did not answer, or it is
    /// overloaded.
    pub fn worth_moving(&self) -> bool {
        self.unreachable() || self.code == Code::ResourceExhausted
    }
}

impl From<&Status> for CallError {
    fn from(s: &Status) -> Self {
        Self {
            code: s.code(),
            message: s.message().to_owned(),
            retry_after: s
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok()),
            tls: None,
        }
    }
}

impl From<Status> for CallError {
    fn from(s: Status) -> Self {
        Self::from(&s)
    }
}
