//! The crate's one error type, mapped to HTTP answers at the edge.
//!
//! Each variant is one HTTP answer (status, `code`, headers); what went
//! wrong is a typed reason of that class ([`Invalid`], [`Missing`], ...),
//! whose message is what the user reads in the JSON body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use peerdex_proto::rest::{ApiError, Candidate, MAX_SEARCH_LIMIT};
use peerdex_proto::types::{MAX_QUERY_BYTES, MAX_REPLICAS};
use peerdex_proto::{FileId, FileName};

use crate::control::tokens;
use crate::link::lookup::Refusal;
use crate::peer::network::BadCredential;
use crate::store::space::NoSpace;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, phrased so the caller knows what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: fix it.
    #[error(transparent)]
    InvalidArgument(#[from] Invalid),
    #[error(transparent)]
    NotFound(#[from] Missing),
    /// A name matches several contents: ask again by id.
    #[error("{count} different files are named \"{name}\"; {what} one by id")]
    Ambiguous {
        name: FileName,
        count: usize,
        /// `download` or `pin`: what to do with one of them.
        what: &'static str,
        candidates: Vec<Candidate>,
    },
    /// The name is taken by a different content.
    #[error(transparent)]
    NameConflict(#[from] Conflict),
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The body is not of a media type the endpoint reads (415).
    #[error("the body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    /// The `Accept` header allows no form this endpoint answers in (406).
    #[error("this stream is {sse} or {ndjson}; Accept {accept:?} allows neither")]
    NotAcceptable {
        accept: String,
        sse: &'static str,
        ndjson: &'static str,
    },
    /// The disk cannot take it (the reserve `PSERVER_MIN_FREE_BYTES`, or
    /// ENOSPC): 507, naming the folder and the figures.
    #[error(transparent)]
    InsufficientStorage(#[from] NoRoom),
    /// A known path asked with a method it does not have (405); `allow`
    /// lists the methods it has.
    #[error("{method} is not allowed here; this endpoint answers {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error(transparent)]
    Unauthorized(#[from] Unauthorized),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// All upload slots are taken: retry after the given seconds.
    #[error("all {slots} upload slots are busy; retry in {retry_after} s")]
    Busy { slots: u32, retry_after: u64 },
    /// This source asks too often or holds too many connections: retry
    /// after the given seconds (429).
    #[error("{why}; retry in {retry_after} s")]
    TooManyRequests { why: Throttled, retry_after: u64 },
    /// A limit of the directory on what this peer may ask for (pins,
    /// pinned bytes): 429 without Retry-After, since waiting does not help;
    /// the directory's message names the limit.
    #[error("{message}")]
    LimitReached { message: String },
    /// The directory does not offer this (an older version): 501.
    #[error("the central directory does not keep pins (an older version): {message}")]
    PinsUnsupported { message: String },
    /// A conditional request's precondition (`If-Match`) does not hold (412).
    #[error("If-Match {if_match} does not match this resource's ETag \"{etag}\"")]
    PreconditionFailed { if_match: String, etag: String },
    /// A dependency (central, neighbours, holders) cannot be reached: retry later.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Not ready to judge the request yet (a private network's peer API
    /// before the list of departed peers arrived): 503 with
    /// `Retry-After: 1`.
    #[error(
        "this peer (re)started and has not yet received the directory's list of departed peers; it accepts credentials once it has (it comes with its Join)"
    )]
    NotReady,
    /// A private file asked for without its ticket (403).
    #[error(
        "file {id} is private (encrypted by its owner): it opens only with its ticket; ask the owner for it (`peerdex private` lists them) and run `peerdex get <ticket>`"
    )]
    NeedsTicket { id: FileId },
    #[error("request already made {hops} hops; neighbours do not forward")]
    LoopDetected { hops: u32 },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Internal(#[from] Internal),
}

/// 400: the request is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error(transparent)]
    Parse(#[from] peerdex_proto::ParseError),
    #[error("file must be a file id (64 lowercase hex characters) or an exact file name: {0}")]
    PinFile(#[source] peerdex_proto::ParseError),
    #[error("replicas: {given} is above {MAX_REPLICAS}, the most any directory keeps")]
    Replicas { given: u32 },
    #[error("invalid job id {given:?}: expected a hyphenated UUID")]
    JobId { given: String },
    #[error(
        "private file name {name:?} has folders: a private file's name is a file name (no '/'), kept in its ticket"
    )]
    PrivateName { name: String },
    #[error("limit is at most {MAX_SEARCH_LIMIT} hits per page")]
    SearchLimit,
    #[error("search query q is empty; give one or more words")]
    EmptyQuery,
    /// The neighbour role's words for it.
    #[error("search query q is empty")]
    EmptyNeighbourQuery,
    #[error("page: not a `next_page` token of a previous search answer")]
    PageToken,
    #[error("search query q is {bytes} bytes; at most {MAX_QUERY_BYTES}")]
    QueryTooLong { bytes: usize },
    #[error("upload interrupted: {0}")]
    UploadInterrupted(#[source] actix_web::error::PayloadError),
    #[error("give exactly one of file_id and name")]
    OneTarget,
    #[error("give exactly one of file_id, name and folder")]
    OneDownloadTarget,
    /// A ticket that breaks the form the OpenAPI document gives it
    /// (prefix, alphabet, length); one of that form that still does not
    /// decode names no file: [`Missing::Ticket`].
    #[error(transparent)]
    Ticket(peerdex_proto::ticket::TicketError),
    #[error("{header} must be a small number")]
    Hops { header: &'static str },
    #[error("bad JSON body: {0}")]
    JsonBody(#[source] actix_web::error::JsonPayloadError),
    #[error("bad query string: {0}")]
    QueryString(#[source] actix_web::error::QueryPayloadError),
    /// The directory says so, in its words.
    #[error("{message}")]
    Central { message: String },
    #[error(transparent)]
    Want(#[from] crate::wants::BadWant),
}

/// 404: there is no such thing (here, or live on the network).
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error("no such endpoint; see /api/v1/openapi.json")]
    ControlEndpoint,
    #[error("no such endpoint; the peer API lives under /peer/v1")]
    PeerEndpoint,
    #[error("no such asset {path}")]
    Asset { path: String },
    #[error("no download job {id}")]
    Job { id: String },
    #[error("no want {id}; list them with `peerdex wants` (GET /api/v1/wants)")]
    Want { id: String },
    #[error("no live peer shares file {id}")]
    NoHolder { id: FileId },
    #[error("no live peer shares a file named \"{name}\"; try `search`")]
    NoHolderNamed { name: FileName },
    #[error(
        "no live peer shares a folder \"{folder}\" (a path in its share, e.g. Music/Album); try `search` with its words"
    )]
    NoFolder { folder: FileName },
    #[error(
        "no live peer holds the private file of this ticket (id {id}): its owner and the peers keeping copies of it are offline, or it was removed"
    )]
    NoPrivateHolder { id: FileId },
    #[error("no live peer other than this one shares file {id}")]
    NoOtherHolder { id: FileId },
    #[error("file {id} is not shared here")]
    NotShared { id: FileId },
    #[error("file {id} failed verification on this peer and is no longer shared here")]
    Rotten { id: FileId },
    #[error("file {id} is no longer on disk")]
    Gone { id: FileId },
    #[error("file {id} changed on disk; it will be re-hashed")]
    Changed { id: FileId },
    /// A ticket of the right form that does not decode (checksum,
    /// version, fields): it names no file.
    #[error(transparent)]
    Ticket(peerdex_proto::ticket::TicketError),
    #[error("this PServer holds no key of a private file {id}; `peerdex private` lists them")]
    NotPrivate { id: FileId },
    #[error(
        "no plaintext of private file {id} in the private folder: fetch it with its ticket first (`peerdex get <ticket>`)"
    )]
    NotOpened { id: FileId },
    #[error("file {id} is no longer held here as a replica")]
    ReplicaGone { id: FileId },
    /// The directory says so, in its words.
    #[error("{message}")]
    Central { message: String },
}

/// 409: the name is taken.
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    #[error(
        "a different file named \"{name}\" is already shared (id {existing}); rename yours or remove that one first"
    )]
    Taken { name: FileName, existing: FileId },
    #[error("a file named \"{name}\" appeared in the share folder meanwhile; rename yours")]
    Appeared { name: FileName },
    #[error("a file named \"{name}\" already exists")]
    Exists { name: FileName },
    /// A folder of the name cannot be made in the share folder: a file
    /// has its name, or it is a symlink leading out of the share folder.
    #[error(
        "the folder of \"{name}\" cannot be made in the share folder: a file there has the name of one of its folders, or a folder on the way leads outside; rename yours"
    )]
    NoFolder { name: FileName },
}

/// 413: a body over a limit.
#[derive(Debug, thiserror::Error)]
pub enum TooLarge {
    #[error("upload exceeds PSERVER_MAX_UPLOAD_BYTES ({max} bytes)")]
    Upload { max: u64 },
    #[error("the JSON body is larger than {limit} bytes")]
    JsonBody { limit: usize },
}

/// 507: the disk cannot take it.
#[derive(Debug, thiserror::Error)]
pub enum NoRoom {
    /// It would cut into the reserve or what other transfers were promised.
    #[error(transparent)]
    Reserve(#[from] NoSpace),
    /// The disk is full (ENOSPC), told with the folder and the figures.
    #[error(transparent)]
    Full(std::io::Error),
}

/// 401: who are you?
#[derive(Debug, thiserror::Error)]
pub enum Unauthorized {
    #[error("the Authorization header must be `Bearer <token>`")]
    BadHeader,
    #[error(
        "missing bearer token: give this PServer's API token (PSERVER_API_TOKEN, or a client token from `pserver token create`); the CLI takes it as --token or PEERDEX_API_TOKEN"
    )]
    MissingToken,
    #[error(
        "wrong bearer token: it is neither this PServer's PSERVER_API_TOKEN nor a client token (a JWT from `pserver token create`)"
    )]
    WrongToken,
    #[error(transparent)]
    ClientToken(#[from] tokens::Refused),
    #[error(
        "this is a private network: every request needs `Authorization: Bearer <credential>` (a credential the directory gives to the peers that joined)"
    )]
    NoCredential,
    #[error(transparent)]
    Credential(#[from] BadCredential),
    #[error(
        "credential signed by a key this network's directory does not use (kid {kid}): a credential of another network?"
    )]
    UnknownKey { kid: String },
}

/// 403: not allowed.
#[derive(Debug, thiserror::Error)]
pub enum Forbidden {
    #[error("host {host:?} is not allowed; address this API by IP address or localhost")]
    Host { host: String },
    #[error(
        "{method} from a page of another site (Sec-Fetch-Site: {site}) is refused; use the web UI at this address, or the peerdex CLI"
    )]
    CrossSite { method: String, site: String },
    #[error(
        "{method} from origin {origin:?} is refused: only pages served by this API (http://{host}) may change things; use its web UI, or the peerdex CLI"
    )]
    Origin {
        method: String,
        origin: String,
        host: String,
    },
    #[error(
        "{method} {path} needs scope write; this token ({name:?}) has scope read: create one with `pserver token create --scope write`"
    )]
    ReadOnly {
        method: String,
        path: String,
        name: String,
    },
    /// The directory says so, in its words.
    #[error("{message}")]
    Central { message: String },
}

/// Why a source is asked to slow down (429).
#[derive(Debug, thiserror::Error)]
pub enum Throttled {
    #[error(
        "more than {max} open connections from {from}; PSERVER_MAX_CONNS_PER_ADDR limits them per source address"
    )]
    Connections { max: u32, from: std::net::IpAddr },
    #[error(
        "too many neighbour requests from {from}; PSERVER_NEIGHBOUR_RATE allows {per_sec} per second"
    )]
    NeighbourRate {
        from: std::net::IpAddr,
        per_sec: u32,
    },
    #[error("the central directory is busy: {message}")]
    Central { message: String },
    #[error("every source refused the lookup: {}", Refusal::list(refusals))]
    AllRefused { refusals: Vec<Refusal> },
}

/// 503: someone we need does not answer; retry later.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("central directory unavailable: {why}")]
    Central { why: String },
    #[error(
        "this PServer is not joined to the directory right now (it joins again by itself; try again in a moment): {message}"
    )]
    NotJoined { message: String },
    /// The directory's keys could not be fetched (its words).
    #[error("{message}")]
    Keys { message: String },
}

/// 500: a fault of this PServer (logged).
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    /// A blocking task of an HTTP worker failed.
    #[error("{0}")]
    Blocking(#[from] actix_web::error::BlockingError),
    #[error("background task failed: {0}")]
    Background(#[source] tokio::task::JoinError),
    #[error("the file reader stopped")]
    ReaderStopped,
    #[error(
        "the copy of file {id} held here as a replica was damaged on disk and is deleted; download it again to fetch it from other peers"
    )]
    ReplicaDamaged { id: FileId },
    #[error("\"{name}\" vanished from the share folder meanwhile")]
    Vanished { name: FileName },
}

impl Error {
    fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::Ambiguous { .. } => "ambiguous_name",
            Error::NameConflict(_) => "name_conflict",
            Error::TooLarge(_) => "too_large",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::NotAcceptable { .. } => "not_acceptable",
            Error::InsufficientStorage(_) => "insufficient_storage",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::Busy { .. } => "busy",
            Error::TooManyRequests { .. } => "too_many_requests",
            Error::LimitReached { .. } => "limit_reached",
            Error::PinsUnsupported { .. } => "not_implemented",
            Error::PreconditionFailed { .. } => "precondition_failed",
            Error::Unavailable(_) => "unavailable",
            Error::NotReady => "not_ready",
            Error::LoopDetected { .. } => "loop_detected",
            Error::NeedsTicket { .. } => "needs_ticket",
            Error::Io(_) | Error::Internal(_) => "internal",
        }
    }
}

impl From<peerdex_proto::ParseError> for Error {
    fn from(e: peerdex_proto::ParseError) -> Self {
        Error::InvalidArgument(Invalid::Parse(e))
    }
}

impl From<NoSpace> for Error {
    fn from(e: NoSpace) -> Self {
        Error::InsufficientStorage(NoRoom::Reserve(e))
    }
}

impl From<actix_web::error::BlockingError> for Error {
    fn from(e: actix_web::error::BlockingError) -> Self {
        Error::Internal(Internal::Blocking(e))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(Internal::Task(e))
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Ambiguous { .. } | Error::NameConflict(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::NotAcceptable { .. } => StatusCode::NOT_ACCEPTABLE,
            Error::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::NeedsTicket { .. } => StatusCode::FORBIDDEN,
            Error::Busy { .. } | Error::Unavailable(_) | Error::NotReady => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::TooManyRequests { .. } | Error::LimitReached { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::PinsUnsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            Error::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Error::LoopDetected { .. } => StatusCode::LOOP_DETECTED,
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
        if let Error::NotReady = self {
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
