//! JSON bodies of the PServer's two HTTP APIs.
//!
//! # Control API (`/api/v1`, for the local `peerdex` client)
//!
//! | method & path                          | body / answer                                   |
//! |----------------------------------------|-------------------------------------------------|
//! | `PUT /api/v1/files/{name}`             | raw bytes → 201 [`FileInfo`] (200 if identical already shared), 409 name clash, 413 too large |
//! | `GET /api/v1/files`                    | → [`FileList`]                                  |
//! | `DELETE /api/v1/files/{id}`            | → [`FileList`] of the removed entries, 404      |
//! | `GET /api/v1/files/{id}/content`       | → the bytes (`application/octet-stream`)        |
//! | `GET /api/v1/status`                   | → [`Status`]                                    |
//! | `GET /api/v1/search?q=&limit=&page=`   | → [`SearchResults`]                             |
//! | `GET /api/v1/locate?file_id=` or `?name=` | → [`LocateResult`]: holders and copies wanted/live |
//! | `POST /api/v1/downloads`               | [`DownloadRequest`] → 202 [`Job`], 404, 409 [`ApiError`] with candidates |
//! | `GET /api/v1/downloads`                | → [`JobList`]                                   |
//! | `GET /api/v1/downloads/{job}`          | → [`Job`]                                       |
//! | `GET /api/v1/downloads/{job}/events`   | → `text/event-stream` (or `application/x-ndjson` when asked): one [`Job`] per change, ends after a final state |
//! | `GET /api/v1/events`                   | → the same framing, one [`Events`] (jobs, wants, want notices) per change; never ends |
//! | `DELETE /api/v1/downloads/{job}`       | cancel a running job, remove a finished one → [`Job`] |
//! | `POST /api/v1/pins`                    | [`PinRequest`] → [`PinStatus`], 404, 409 [`ApiError`] with candidates |
//! | `GET /api/v1/pins`                     | → [`PinList`] (this PServer's pins)             |
//! | `POST /api/v1/wants`                   | [`WantRequest`] → 201 [`Want`], 400, 429 (PSERVER_MAX_WANTS) |
//! | `GET /api/v1/wants`                    | → [`WantList`]                                  |
//! | `DELETE /api/v1/wants/{want}`          | → [`Want`] (the one removed), 404               |
//! | `GET /api/v1/openapi.json`             | the OpenAPI document                            |
//!
//! # Peer API (`/peer/v1`, public)
//!
//! | method & path                          | answer                                          |
//! |----------------------------------------|-------------------------------------------------|
//! | `GET`/`HEAD /peer/v1/files/{id}`       | the bytes; single `Range` → 206; 416 otherwise  |
//! | `GET /peer/v1/locate?file_id=` or `?name=` | → [`LocateResult`] (neighbour role)         |
//! | `GET /peer/v1/search?q=&limit=&page=`  | → [`SearchResults`] (neighbour role)            |
//!
//! Neighbour requests carry the hop count in the `x-peerdex-hops` header.
//!
//! Every error answer is an [`ApiError`].

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

mod reach;
mod wants;
pub use reach::Reachability;
pub use wants::{
    Events, NoticeKind, Want, WantList, WantMatch, WantNotice, WantRequest, WantState,
};

/// A file shared by this PServer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    /// BLAKE3 of the content, 64 hex characters.
    #[schema(schema_with = schema::file_id)]
    pub file_id: String,
    #[schema(schema_with = schema::file_name)]
    pub name: String,
    pub size: u64,
    /// A word of the name mixes scripts (Latin with a Cyrillic `а`, say):
    /// it may imitate another name. Present only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lookalike: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    pub files: Vec<FileInfo>,
}

/// Reachability of one neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NeighbourStatus {
    pub url: String,
    pub reachable: bool,
}

/// Query string of `GET /api/v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// List every file of the share folder that is not shared (at most
    /// [`MAX_UNSHARED_LISTED`]), not only the first 20.
    #[serde(default)]
    pub all_unshared: bool,
}

/// Most unshared files one status lists (`all_unshared=true`); all are
/// counted.
pub const MAX_UNSHARED_LISTED: usize = 10_000;

/// `GET /api/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    #[schema(schema_with = schema::uuid)]
    pub peer_id: String,
    pub public_url: String,
    /// The central this PServer talks to now (one of `centrals`).
    pub central_url: String,
    /// Every central of `PSERVER_CENTRAL_URL`, in its order.
    #[serde(default)]
    pub centrals: Vec<String>,
    /// The name the central in use gave in its Join or last Heartbeat
    /// answer; null when unknown (not heard yet, or a central that gives
    /// none).
    #[serde(default)]
    pub central_name: Option<String>,
    /// The directory's leader, as the Join or last Heartbeat answer named
    /// it; null when unknown.
    #[serde(default)]
    pub leader: Option<String>,
    /// The directory's island (CENTRAL_ISLAND_NAME), as the last Join or
    /// Heartbeat answer named it; null when unknown.
    #[serde(default)]
    pub island: Option<String>,
    /// Did the last call to the central succeed?
    pub central_reachable: bool,
    /// Seconds since the lease was last renewed (Join or Heartbeat); none if never.
    pub lease_age_secs: Option<u64>,
    /// Why the last Join or Heartbeat failed (gRPC code and the central's
    /// message); absent once one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_error: Option<String>,
    pub neighbours: Vec<NeighbourStatus>,
    pub shared_files: u64,
    pub shared_bytes: u64,
    pub active_uploads: u32,
    pub active_downloads: u32,
    /// Largest upload this PServer accepts, in bytes.
    #[serde(default)]
    pub max_upload_bytes: u64,
    /// Files hashed since start (unchanged files are known from the hash cache).
    #[serde(default)]
    pub files_hashed: u64,
    /// File bytes sent to other peers since start (the figure of
    /// `peerdex_pserver_bytes_sent_total`).
    #[serde(default)]
    pub bytes_sent: u64,
    /// File bytes received from holders since start, verified or not
    /// (`peerdex_pserver_bytes_received_total`).
    #[serde(default)]
    pub bytes_received: u64,
    /// Lease renewals since start, by result
    /// (`peerdex_pserver_lease_renewals_total`).
    #[serde(default)]
    pub lease_renewals: LeaseRenewals,
    /// Space offered for replicas of other peers' files
    /// (`PSERVER_REPLICA_QUOTA_BYTES`; 0 = none).
    #[serde(default)]
    pub replica_quota_bytes: u64,
    /// Of which in use by the replicas held.
    #[serde(default)]
    pub replica_used_bytes: u64,
    /// The replicas this PServer holds for the directory.
    #[serde(default)]
    pub replicas: Vec<FileInfo>,
    /// Replica fetches in progress (the directory's FETCH tasks; not the
    /// user's download jobs).
    #[serde(default)]
    pub replica_fetches: Vec<ReplicaFetch>,
    /// Files (or whole folders) in the share folder that are not shared: a
    /// name that cannot be a file name here (invisible characters, a
    /// leading drive prefix, not UTF-8, a path over 1024 bytes…), two
    /// Unicode spellings of one name, a symlink leaving the folder,
    /// unreadable. How many.
    #[serde(default)]
    pub unshared_files: u64,
    /// The first of them (at most 20; with `all_unshared=true` at most
    /// 10,000), each with why.
    #[serde(default)]
    pub unshared: Vec<UnsharedFile>,
    /// Shared files the directory does not list: how many (0 when it
    /// lists them all).
    #[serde(default)]
    pub not_listed_files: u64,
    /// Why they are not listed and what to do (absent when all are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_listed_reason: Option<String>,
    /// New or changed files being hashed before they are shared (absent
    /// when none is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing: Option<Hashing>,
    pub version: String,
    /// Whether other peers reach this PServer directly or through a relay
    /// (absent until the first Join answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachability: Option<Reachability>,
}

/// Files of the share folder being hashed in the background: `done` of
/// `total` in the batches under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hashing {
    pub done: u64,
    pub total: u64,
}

/// A file in the share folder that is not shared, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnsharedFile {
    /// Its name on disk, control and invisible characters written as
    /// `\u{…}` escapes.
    pub name: String,
    /// Why it is not shared, and what to do.
    pub reason: String,
}

/// A replica this PServer is fetching for the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaFetch {
    #[schema(schema_with = schema::file_id)]
    pub file_id: String,
    /// The name the directory gave; it is announced under it.
    pub name: String,
    /// Verified bytes so far.
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Heartbeats sent to the central since start, by answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseRenewals {
    /// The lease was renewed.
    pub ok: u64,
    /// The central did not know us (any more): we joined again.
    pub rejoin: u64,
    /// No answer, or an error other than "join again".
    pub error: u64,
}

/// One search result: a (name, content) pair and how many live peers hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    #[schema(schema_with = schema::file_name)]
    pub name: String,
    #[schema(schema_with = schema::file_id)]
    pub file_id: String,
    pub size: u64,
    pub holders: u32,
    /// The highest pin on this content: live copies the directory keeps
    /// (0 = not pinned).
    #[serde(default)]
    pub replicas_wanted: u32,
    /// A word of the name mixes scripts (Latin with a Cyrillic `а`, say):
    /// it may imitate another name. Present only when true; the PServer
    /// works it out itself, whatever a neighbour said.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lookalike: bool,
    /// The island (directory) whose peers hold it: the PServer's own, or
    /// a linked one (`CENTRAL_LINKS`). Empty from an older directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub island: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
    /// Pass as `page` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
    /// The directory stopped at its work budget for one query: these are
    /// some of the matches, not all. Another word narrows the search and
    /// gets a complete answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Linked islands that answered this search too (first page only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub islands: Vec<String>,
    /// Linked islands that were not asked or did not answer in time (down).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub islands_skipped: Vec<String>,
}

/// Query string of the search endpoints (its OpenAPI parameters are
/// written out below: utoipa's derive drops `required` and the description
/// of a field whose schema comes from a function).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchQuery {
    /// Words (letters and digits; anything else separates them), each a
    /// prefix of a word of the name: at most 1024 bytes and 16 distinct
    /// words, at least one character that is not whitespace.
    #[schema(schema_with = schema::query)]
    pub q: String,
    /// Hits per page, at most 10000 (the directory clamps it further to its
    /// own CENTRAL_MAX_PAGE; 0 or none: the directory's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::limit)]
    pub limit: Option<u32>,
    /// `next_page` of the previous answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::page_token)]
    pub page: Option<String>,
}

impl IntoParams for SearchQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::Required;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        let param = |name: &str, required: bool, schema: utoipa::openapi::schema::Object| {
            let what = schema.description.clone();
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(if required {
                    Required::True
                } else {
                    Required::False
                })
                .description(what)
                .schema(Some(schema))
                .build()
        };
        vec![
            param("q", true, schema::query()),
            param("limit", false, schema::limit()),
            param("page", false, schema::page_token()),
        ]
    }
}

/// Largest `limit` a search may ask for (the directory clamps it further).
pub const MAX_SEARCH_LIMIT: u32 = 10_000;

/// A live peer holding a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Holder {
    #[schema(schema_with = schema::uuid)]
    pub peer_id: String,
    pub peer_url: String,
    pub active_uploads: u32,
    pub free_upload_slots: u32,
    /// It holds the file as a replica (a volunteer), not as an owner.
    #[serde(default)]
    pub replica: bool,
    /// Its island (directory): the PServer's own, or a linked one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub island: String,
}

/// A content and its live holders, least-loaded first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LocatedFile {
    #[schema(schema_with = schema::file_id)]
    pub file_id: String,
    pub size: u64,
    pub names: Vec<String>,
    pub holders: Vec<Holder>,
    /// Copies wanted (pins) and live.
    #[serde(default)]
    pub replication: Replication,
}

/// How many copies of a file the directory is asked to keep, and how many
/// it sees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Replication {
    /// The highest pin on the file (0 = not pinned).
    pub wanted: u32,
    /// Live peers holding it, owners and replica holders.
    pub live: u32,
    /// Of which: volunteers holding a replica.
    pub replicas: u32,
    /// `ok` (proven >= wanted), `under` (being restored), `lost` (pinned,
    /// no live copy: waits for a peer that has it to come back), or empty
    /// when not pinned.
    #[serde(default)]
    pub state: String,
    /// Of the live copies, those the directory stands behind (fetched at
    /// its request, or passed an audit of a random chunk): only these
    /// count toward a pin. `live - proven` are unchecked claims.
    #[serde(default)]
    pub proven: u32,
}

/// `POST /api/v1/pins`: pin a file (by id, or by an exact name) to
/// `replicas` live copies, or stop asking (0 or 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// A file id (64 hex characters) or an exact file name.
    #[schema(schema_with = schema::file_ref)]
    pub file: String,
    /// Live copies wanted: 2 or more (up to the directory's
    /// CENTRAL_MAX_REPLICAS), or 0 or 1 to stop asking.
    #[schema(schema_with = schema::replicas)]
    #[serde(deserialize_with = "whole_u32")]
    pub replicas: u32,
}

/// A `u32` written as `15` or as `15.0`: JSON does not tell the two apart
/// (JSON Schema's `integer` is any number with a zero fractional part), so
/// neither does the API.
fn whole_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = u32;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number from 0 to 4294967295")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| {
                E::custom(format!(
                    "{v} is out of range: expected a whole number from 0 to 4294967295"
                ))
            })
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| {
                E::custom(format!(
                    "{v} is out of range: expected a whole number from 0 to 4294967295"
                ))
            })
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u32, E> {
            if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                Ok(v as u32)
            } else {
                Err(E::custom(format!(
                    "{v} is not a whole number from 0 to 4294967295"
                )))
            }
        }
    }
    d.deserialize_any(Whole)
}

/// One pin this PServer set, and the file's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PinStatus {
    #[schema(schema_with = schema::file_id)]
    pub file_id: String,
    #[schema(schema_with = schema::file_name)]
    pub name: String,
    pub size: u64,
    /// This PServer's pin (0 once removed).
    pub pinned: u32,
    /// The file's state under the highest pin of any peer.
    pub replication: Replication,
    /// Why copies are missing when no volunteer can take one now ("no
    /// volunteer has room: N bytes wanted, M free in total"); empty
    /// otherwise.
    #[serde(default)]
    pub waiting: String,
}

/// `GET /api/v1/pins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PinList {
    pub pins: Vec<PinStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LocateResult {
    pub files: Vec<LocatedFile>,
}

/// Query string of `GET /peer/v1/locate` and `GET /api/v1/locate`: exactly
/// one of the two. A query string cannot say "exactly one of" with two
/// parameters, so the OpenAPI document declares it as one exploded object
/// parameter whose schema is this `oneOf`. Other parameters are refused,
/// as the schema says (`additionalProperties: false`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocateQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /api/v1/downloads`: exactly one of `file_id`, `name` and
/// `folder` (the OpenAPI schema says so with a `oneOf`, written by hand
/// below). Unknown fields are refused, not ignored: a misspelt field is a
/// mistake to report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A folder of another peer's share (`Music/Album`): every file under
    /// it, at any depth, from one holder, as one job; each file lands
    /// under the same relative path here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

/// `GET /peer/v1/folder?path=…`: the files this peer shares under one
/// folder of its share, at any depth, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FolderFiles {
    pub files: Vec<FileInfo>,
    /// More files are under it than one answer lists
    /// ([`MAX_FOLDER_FILES`]): the first are.
    #[serde(default)]
    pub truncated: bool,
}

/// Most files one folder listing (and so one folder download) holds.
pub const MAX_FOLDER_FILES: usize = 10_000;

/// The query of `GET /peer/v1/folder`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderQuery {
    pub path: String,
}

impl utoipa::PartialSchema for DownloadRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let by = |field: &str, pattern: &str, max: usize, what: &str| {
            ObjectBuilder::new()
                .property(
                    field,
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(pattern))
                        .min_length(Some(1))
                        .max_length(Some(max))
                        .description(Some(what)),
                )
                .required(field)
                .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::<
                    utoipa::openapi::schema::Schema,
                >::FreeForm(false)))
        };
        OneOfBuilder::new()
            .item(by(
                "file_id",
                crate::types::FILE_ID_PATTERN,
                64,
                "the file's id (BLAKE3 hash, 64 lowercase hex characters)",
            ))
            .item(by(
                "name",
                crate::types::FILE_NAME_PATTERN,
                crate::types::MAX_PATH_BYTES,
                "an exact share name (a path relative to the holder's share folder); \
                 several contents under it answer 409 with candidates",
            ))
            .item(by(
                "folder",
                crate::types::FILE_NAME_PATTERN,
                crate::types::MAX_PATH_BYTES,
                "a folder of a holder's share (a relative path): every file under it, \
                 from one holder, as one job",
            ))
            .description(Some("exactly one of file_id, name and folder"))
            .into()
    }
}

impl ToSchema for DownloadRequest {}

impl utoipa::PartialSchema for LocateQuery {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema};
        let by = |field: &str, schema: utoipa::openapi::schema::Object| {
            ObjectBuilder::new()
                .property(field, schema)
                .required(field)
                .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
        };
        OneOfBuilder::new()
            .item(by("file_id", schema::file_id()))
            .item(by("name", schema::file_name()))
            .description(Some("exactly one of file_id and name"))
            .into()
    }
}

impl ToSchema for LocateQuery {}

pub mod schema;

/// Lifecycle of a download job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Locating,
    Downloading,
    Verifying,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    /// No further changes will happen.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// Throughput from one source peer during a download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SourceProgress {
    pub peer_id: String,
    pub peer_url: String,
    pub bytes: u64,
    /// Recent rate in bytes per second.
    pub rate_bps: u64,
    /// Chunks from this source that passed verification and were kept.
    #[serde(default)]
    pub chunks: u64,
    /// Chunks from this source that failed verification (or broke the
    /// protocol); three strikes drop the source for the job.
    #[serde(default)]
    pub strikes: u32,
    /// Requests to this source currently in flight.
    #[serde(default)]
    pub in_flight: u32,
    /// Why the source was dropped for this job, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

/// A download job, as polled or streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    #[schema(schema_with = schema::uuid)]
    pub job_id: String,
    pub state: JobState,
    /// What was asked for: the id or the name.
    pub request: DownloadRequest,
    /// Known once located.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::file_id)]
    pub file_id: Option<String>,
    /// Name the file is stored under in the share dir (known once located).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::file_name)]
    pub name: Option<String>,
    pub bytes_done: u64,
    /// Known once located.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Peer URL currently sending, while downloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default)]
    pub sources: Vec<SourceProgress>,
    /// Why the job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since the job was created.
    pub elapsed_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// A content that matches a name, offered when the name is ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Candidate {
    #[schema(schema_with = schema::file_id)]
    pub file_id: String,
    pub size: u64,
    pub holders: u32,
}

/// Every error answer of both APIs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `not_found`, `ambiguous_name`,
    /// `name_conflict`, `too_large`, `invalid_argument`, `unauthorized`,
    /// `busy`, `unavailable`, `loop_detected`, `internal`.
    pub code: String,
    /// One lowercase sentence for people, naming the offending value or limit.
    pub message: String,
    /// For `ambiguous_name`: every content carrying the name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_state_wire_names() {
        assert_eq!(
            serde_json::to_string(&JobState::Downloading).unwrap(),
            "\"downloading\""
        );
        assert!(JobState::Failed.is_final());
        assert!(!JobState::Verifying.is_final());
    }
}
