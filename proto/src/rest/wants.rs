//! Wanted files (`/api/v1/wants`): ask once, get it the moment someone
//! shares it. The PServer keeps its wants in its data folder and a Watch
//! stream open at the directory; these are the bodies of its control API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Candidate, Job, schema};

/// `POST /api/v1/wants`: exactly one of `file` (an id or an exact name)
/// and `query` (words, as a search), and whether to download what
/// appears (default true). The OpenAPI schema says so with a `oneOf`,
/// written by hand below. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WantRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Download it when it appears (default). `false`: notify only.
    /// `null` is refused, as the schema says (a boolean or nothing).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_bool"
    )]
    pub download: Option<bool>,
}

/// A present `download` must be a boolean (not `null`).
fn some_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    bool::deserialize(d).map(Some)
}

impl utoipa::PartialSchema for WantRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type,
        };
        let by = |field: &str, s: utoipa::openapi::schema::Object| {
            ObjectBuilder::new()
                .property(field, s)
                .required(field)
                .property(
                    "download",
                    ObjectBuilder::new()
                        .schema_type(Type::Boolean)
                        .description(Some(
                            "download what appears (default true); false: notify only",
                        )),
                )
                .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
        };
        OneOfBuilder::new()
            .item(by("file", schema::file_ref()))
            .item(by("query", schema::query()))
            .description(Some(
                "exactly one of file (a file id, or an exact name) and query (words, \
                 as a search: a query of no word matches no name)",
            ))
            .into()
    }
}

impl ToSchema for WantRequest {}

/// Where a want is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WantState {
    /// Watched at the directory: nothing matched yet.
    Waiting,
    /// A notify-only want that matched (it keeps watching).
    Matched,
    /// The name is carried by several contents: nothing is downloaded;
    /// want one of `candidates` by id.
    Ambiguous,
    /// It appeared: the download job `job_id` runs.
    Downloading,
    /// The file is in place (in the share folder): the want ended.
    Done,
}

/// A file a want matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WantMatch {
    #[schema(schema_with = schema::file_id)]
    pub file_id: String,
    pub name: String,
    pub size: u64,
    /// Live holders when it matched.
    pub holders: u32,
}

/// One want.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Want {
    /// Its id (`DELETE /api/v1/wants/{want}`).
    #[schema(schema_with = schema::uuid)]
    pub want_id: String,
    /// The file id or exact name asked for (one of `file` and `query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub download: bool,
    pub state: WantState,
    /// Unix seconds when it was made, and when its state last changed.
    pub created: u64,
    pub updated: u64,
    /// The download job started for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// What it matched, newest last (at most 20): for an ambiguous name,
    /// every content carrying it.
    #[serde(default)]
    pub matches: Vec<WantMatch>,
    /// Why the last attempt failed (a download that failed, a watch the
    /// directory refused); the want keeps waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WantList {
    pub wants: Vec<Want>,
    /// Whether the Watch stream is open at a central now (false: wants
    /// wait for it; they are checked with Locate once it opens).
    pub watching: bool,
}

/// What happened to a want: in `GET /api/v1/events` and POSTed to
/// `PSERVER_NOTIFY_URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A notify-only want matched a file.
    Matched,
    /// A wanted name is carried by several contents: nothing downloaded.
    Ambiguous,
    /// A wanted file appeared: its download started.
    Downloading,
    /// A wanted file is in place.
    Done,
    /// Its download failed; the want keeps waiting.
    Failed,
}

/// A notification about one want.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WantNotice {
    /// Grows by one with each notice of this PServer (since its start).
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    pub kind: NoticeKind,
    #[schema(schema_with = schema::uuid)]
    pub want_id: String,
    /// What was wanted: the file id, name or query.
    pub wanted: String,
    /// The file concerned (absent for an ambiguous name: see `candidates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For `ambiguous`: every content carrying the name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// One sentence for people.
    pub message: String,
}

/// One event of `GET /api/v1/events`: every download job, every want,
/// and the want notices since the previous event of this stream (the
/// first event: the latest ones kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Events {
    pub jobs: Vec<Job>,
    #[serde(default)]
    pub wants: Vec<Want>,
    #[serde(default)]
    pub notices: Vec<WantNotice>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_is_a_boolean_or_absent() {
        let r: WantRequest = serde_json::from_str(r#"{"query": "x"}"#).unwrap();
        assert_eq!(r.download, None);
        let r: WantRequest = serde_json::from_str(r#"{"file": "x", "download": false}"#).unwrap();
        assert_eq!(r.download, Some(false));
        for bad in [
            r#"{"query": "x", "download": null}"#,
            r#"{"query": "x", "download": "yes"}"#,
            r#"{"query": "x", "extra": 1}"#,
        ] {
            assert!(serde_json::from_str::<WantRequest>(bad).is_err(), "{bad}");
        }
    }
}
