//! The crate's one error type, mapped to HTTP answers at the edge.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use peerdex_proto::rest::{ApiError, Candidate};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, phrased so the caller knows what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: fix it.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// A name matches several contents: ask again by id.
    #[error("{message}")]
    Ambiguous {
        message: String,
        candidates: Vec<Candidate>,
    },
    /// The name is taken by a different content.
    #[error("{0}")]
    NameConflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The body is not of a media type the endpoint reads (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The `Accept` header allows no form this endpoint answers in (406).
    #[error("{0}")]
    NotAcceptable(String),
    /// The disk cannot take it (the reserve `PSERVER_MIN_FREE_BYTES`, or
    /// ENOSPC): 507, naming the folder and the figures.
    #[error("{0}")]
    InsufficientStorage(String),
    /// A known path asked with a method it does not have (405); `allow`
    /// lists the methods it has.
    #[error("{method} is not allowed here; this endpoint answers {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// All upload slots are taken: retry after the given seconds.
    #[error("all {slots} upload slots are busy; retry in {retry_after} s")]
    Busy { slots: u32, retry_after: u64 },
    /// This source asks too often or holds too many connections: retry
    /// after the given seconds (429).
    #[error("{message}; retry in {retry_after} s")]
    TooManyRequests { message: String, retry_after: u64 },
    /// A limit of the directory on what this peer may ask for (pins,
    /// pinned bytes): 429 without Retry-After, since waiting does not help;
    /// the message names the limit.
    #[error("{0}")]
    LimitReached(String),
    /// The directory does not offer this (an older version): 501.
    #[error("{0}")]
    NotImplemented(String),
    /// A conditional request's precondition (`If-Match`) does not hold (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// A dependency (central, neighbours, holders) cannot be reached: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Not ready to judge the request yet (a private network's peer API
    /// before the list of departed peers arrived): 503 with
    /// `Retry-After: 1`.
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    LoopDetected(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::Ambiguous { .. } => "ambiguous_name",
            Error::NameConflict(_) => "name_conflict",
            Error::TooLarge(_) => "too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::NotAcceptable(_) => "not_acceptable",
            Error::InsufficientStorage(_) => "insufficient_storage",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::Busy { .. } => "busy",
            Error::TooManyRequests { .. } => "too_many_requests",
            Error::LimitReached(_) => "limit_reached",
            Error::NotImplemented(_) => "not_implemented",
            Error::PreconditionFailed(_) => "precondition_failed",
            Error::Unavailable(_) => "unavailable",
            Error::NotReady(_) => "not_ready",
            Error::LoopDetected(_) => "loop_detected",
            Error::Io(_) | Error::Internal(_) => "internal",
        }
    }
}

impl From<peerdex_proto::ParseError> for Error {
    fn from(e: peerdex_proto::ParseError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Ambiguous { .. } | Error::NameConflict(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Error::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Busy { .. } | Error::Unavailable(_) | Error::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::TooManyRequests { .. } | Error::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Error::LoopDetected(_) => StatusCode::LOOP_DETECTED,
            Error::Io(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let candidates = match self {
            Error::Ambiguous { candidates, .. } => candidates.clone(),
            _ => Vec::new(),
        };
        let mut resp = HttpResponse::build(self.status_code());
        if let Error::Busy { retry_after, .. } | Error::TooManyRequests { retry_after, .. } = self {
            resp.insert_header(("Retry-After", retry_after.to_string()));
        }
        if let Error::NotReady(_) = self {
            resp.insert_header(("Retry-After", "1"));
        }
        // An error describes this moment, never the resource: no cache keeps it.
        resp.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
        if let Error::MethodNotAllowed { allow, .. } = self {
            resp.insert_header((actix_web::http::header::ALLOW, *allow));
        }
        if let Error::Unauthorized(_) = self {
            resp.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if matches!(self, Error::Io(_) | Error::Internal(_)) {
            tracing::error!(error = %self, "internal error answered with 500");
        }
        resp.json(ApiError {
            code: self.code().to_owned(),
            message: self.to_string(),
            candidates,
        })
    }
}
