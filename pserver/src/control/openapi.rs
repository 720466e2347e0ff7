//! The control API's OpenAPI document (`GET /api/v1/openapi.json`): the
//! operations of every resource, the answers any of them can give, and the
//! bounds of the parsers, from the parsers' own constants.

use actix_web::HttpResponse;
use peerdex_proto::rest::{
    ApiError, Candidate, DownloadRequest, Events, FileInfo, FileList, Hashing, Holder, Job,
    JobList, LeaseRenewals, LocateQuery, LocateResult, LocatedFile, NeighbourStatus, NoticeKind,
    PinList, PinRequest, PinStatus, ReplicaFetch, Replication, SearchHit, SearchResults,
    SourceProgress, Status, UnsharedFile, Want, WantList, WantMatch, WantNotice, WantRequest,
    WantState, schema,
};
use utoipa::OpenApi;

// The handlers are named bare (through these imports): a path in
// `paths(...)` would become the operation's tag.
use super::downloads::{
    __path_cancel_download, __path_download_events, __path_events, __path_get_download,
    __path_list_downloads, __path_start_download,
};
use super::files::{__path_file_content, __path_list_files, __path_remove_file, __path_upload};
use super::pins::{__path_list_pins, __path_pin};
use super::private::{
    __path_fetch_private, __path_list_private, __path_private_content, __path_remove_private,
    __path_upload_private,
};
use super::search::{__path_locate, __path_search};
use super::status::__path_status;
use super::wants::{__path_add_want, __path_list_wants, __path_remove_want};
use peerdex_proto::private::{PrivateFile, PrivateList, PrivateOrigin, TicketRequest};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "peerdex PServer control API",
        description = "Used by the local `peerdex` client and the web UI. Every bound a \
parser of this API enforces is declared here (patterns, lengths, ranges): a request within them \
is never refused for its form, one outside them is answered 400. File names are limited to 255 \
bytes of UTF-8, which maxLength (counting characters) can only bound from above. Errors are \
always an ApiError. The two event streams (`/api/v1/events`, `/api/v1/downloads/{job}/events`) \
are text/event-stream (or application/x-ndjson when asked for with Accept); `/api/v1/events` \
never ends: close the connection to stop."
    ),
    paths(
        upload,
        list_files,
        remove_file,
        file_content,
        status,
        search,
        locate,
        start_download,
        list_downloads,
        get_download,
        download_events,
        events,
        cancel_download,
        pin,
        list_pins,
        add_want,
        list_wants,
        remove_want,
        upload_private,
        list_private,
        fetch_private,
        remove_private,
        private_content
    ),
    modifiers(&CommonAnswers),
    security(("bearer" = [])),
    components(schemas(
        ApiError,
        FileInfo,
        FileList,
        Status,
        NeighbourStatus,
        LeaseRenewals,
        SearchResults,
        DownloadRequest,
        Job,
        JobList,
        PinRequest,
        PinStatus,
        PinList,
        Replication,
        ReplicaFetch,
        UnsharedFile,
        Hashing,
        SearchHit,
        LocateResult,
        LocateQuery,
        LocatedFile,
        Holder,
        Candidate,
        SourceProgress,
        WantRequest,
        Want,
        WantList,
        WantMatch,
        WantState,
        WantNotice,
        NoticeKind,
        Events,
        PrivateFile,
        PrivateList,
        PrivateOrigin,
        TicketRequest
    ))
)]
struct ApiDoc;

/// Links an operation's answers get: the path parameter they fill, the
/// status codes, and (link name, target operation) pairs.
type Links = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

/// Added to every operation: the answers any of them can give, 401 (token),
/// 403 (the `Host` check, a cross-site request, a read-only client token)
/// and 500; the `{file}` path parameter's schema, from the parsers' own
/// constants (a name for PUT, an id for the others); and the bearer
/// security scheme.
struct CommonAnswers;

impl utoipa::Modify for CommonAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::LinkBuilder;
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
        doc.components.get_or_insert_default().add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "PSERVER_API_TOKEN, or a client token from `pserver token create` \
                         (scope read: GET and HEAD only). Required whenever the PServer has \
                         PSERVER_API_TOKEN, which it must when bound beyond loopback; on \
                         loopback without one, requests need none.",
                    ))
                    .build(),
            ),
        );
        let answer = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ApiError"))),
                )
                .build()
        };
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.head,
            ];
            for op in ops.into_iter().flatten() {
                let put = op.operation_id.as_deref() == Some("upload");
                // What an upload or a new job answers is how to reach it next.
                let links: &[Links] = match op.operation_id.as_deref() {
                    Some("upload") => &[
                        ("file", &["200", "201"], &[("content", "file_content")]),
                        ("file", &["200", "201"], &[("remove", "remove_file")]),
                    ],
                    Some("start_download") => &[(
                        "job",
                        &["202"],
                        &[
                            ("job", "get_download"),
                            ("events", "download_events"),
                            ("cancel", "cancel_download"),
                        ],
                    )],
                    Some("add_want") => &[("want", &["201"], &[("remove", "remove_want")])],
                    _ => &[],
                };
                for (param, codes, targets) in links {
                    let from = match *param {
                        "file" => "$response.body#/file_id",
                        "want" => "$response.body#/want_id",
                        _ => "$response.body#/job_id",
                    };
                    for code in *codes {
                        if let Some(RefOr::T(resp)) = op.responses.responses.get_mut(*code) {
                            for (name, then) in *targets {
                                resp.links.insert(
                                    (*name).into(),
                                    LinkBuilder::new()
                                        .operation_id(*then)
                                        .parameter(*param, from)
                                        .build()
                                        .into(),
                                );
                            }
                        }
                    }
                }
                for param in op.parameters.iter_mut().flatten() {
                    if param.name == "file" {
                        param.schema = Some(if put {
                            schema::file_name().into()
                        } else {
                            schema::file_id().into()
                        });
                    }
                    if param.name == "job" || param.name == "want" {
                        param.schema = Some(schema::uuid().into());
                    }
                }
                let json_body = op
                    .request_body
                    .as_ref()
                    .is_some_and(|b| b.content.contains_key("application/json"));
                let r = &mut op.responses.responses;
                if json_body {
                    r.entry("400".into()).or_insert_with(|| {
                        answer("the body is not JSON of the documented schema").into()
                    });
                    r.entry("413".into())
                        .or_insert_with(|| answer("the JSON body is larger than 64 KiB").into());
                    r.entry("415".into())
                        .or_insert_with(|| answer("the body is not application/json").into());
                }
                r.entry("401".into()).or_insert_with(|| {
                    answer("missing or wrong bearer token (when PSERVER_API_TOKEN is set)").into()
                });
                r.entry("403".into()).or_insert_with(|| {
                    answer(
                        "the Host header is not this API's address (DNS-rebinding defence), \
                         a change asked by a page of another site, or a client token of \
                         scope read asking for a change",
                    )
                    .into()
                });
                r.entry("500".into())
                    .or_insert_with(|| answer("a fault of this PServer; see its log").into());
            }
        }
    }
}

pub(super) async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document().to_string())
}

/// The OpenAPI document, as served. utoipa 5.5 writes a Link object's
/// fields in snake case (`operation_id`); the specification spells them
/// `operationId`, `operationRef`, `requestBody`, so they are renamed here.
/// And a `text/event-stream` answer's schema describes one event (OpenAPI
/// 3.1 has no `itemSchema` yet): an object whose `data` is the JSON of the
/// value utoipa was given, which utoipa cannot write (`contentSchema`).
fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let streams = responses(&mut doc)
        .filter_map(|resp| resp.get_mut("content")?.get_mut("text/event-stream"));
    for media in streams {
        if let Some(value) = media.get_mut("schema") {
            let each = value.take();
            *value = serde_json::json!({
                "type": "object",
                "description": "one server-sent event: its data is one JSON value",
                "required": ["data"],
                "properties": {
                    "event": { "type": "string", "const": "message" },
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": each,
                    },
                },
            });
        }
    }
    let links = responses(&mut doc)
        .filter_map(|resp| resp.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (from, to) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(from) {
                link.insert(to.into(), v);
            }
        }
    }
    doc
}

/// Every response object of every operation of an OpenAPI document.
fn responses(doc: &mut serde_json::Value) -> impl Iterator<Item = &mut serde_json::Value> {
    doc.get_mut("paths")
        .and_then(|p| p.as_object_mut())
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every link names an operation that exists, in the specification's
    /// spelling; the `{file}` parameters carry the parsers' patterns.
    #[test]
    fn the_document_links_and_patterns() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let put = &paths["/api/v1/files/{file}"]["put"];
        let links = put["responses"]["201"]["links"].as_object().unwrap();
        assert_eq!(links.len(), 2);
        for link in links.values() {
            let to = link["operationId"].as_str().unwrap();
            assert!(ids.contains(&to), "{to} not in {ids:?}");
            assert!(link.get("operation_id").is_none());
        }
        assert_eq!(
            put["parameters"][0]["schema"]["pattern"],
            peerdex_proto::types::FILE_NAME_PATTERN
        );
        let del = &paths["/api/v1/files/{file}"]["delete"];
        assert_eq!(
            del["parameters"][0]["schema"]["pattern"],
            peerdex_proto::types::FILE_ID_PATTERN
        );
        for code in ["401", "403", "500"] {
            assert!(del["responses"].get(code).is_some(), "{code}");
        }
    }

    /// The bounds the parsers enforce are in the document, from the same
    /// constants: a change to one is a change to the other.
    #[test]
    fn the_document_declares_the_parsers_bounds() {
        use peerdex_proto::types::{
            MAX_PATH_BYTES, MAX_QUERY_BYTES, MAX_REPLICAS, QUERY_PATTERN, UUID_PATTERN,
        };
        let doc = document();
        let paths = &doc["paths"];
        let schemas = &doc["components"]["schemas"];
        let search = paths["/api/v1/search"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let q = search.iter().find(|p| p["name"] == "q").unwrap();
        assert_eq!(q["required"], true);
        assert_eq!(q["schema"]["pattern"], QUERY_PATTERN);
        assert_eq!(q["schema"]["maxLength"], MAX_QUERY_BYTES);
        let limit = search.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(
            limit["schema"]["maximum"],
            peerdex_proto::rest::MAX_SEARCH_LIMIT
        );
        let pin = &schemas["PinRequest"]["properties"];
        assert_eq!(pin["replicas"]["maximum"], MAX_REPLICAS);
        assert_eq!(pin["file"]["minLength"], 1);
        assert_eq!(pin["file"]["maxLength"], MAX_PATH_BYTES);
        let locate = &schemas["LocateQuery"]["oneOf"];
        assert_eq!(locate[1]["properties"]["name"]["minLength"], 1);
        assert_eq!(locate[0]["additionalProperties"], false);
        let job = &paths["/api/v1/downloads/{job}"]["get"]["parameters"][0]["schema"];
        assert_eq!(job["pattern"], UUID_PATTERN);
        let want = &paths["/api/v1/wants/{want}"]["delete"]["parameters"][0]["schema"];
        assert_eq!(want["pattern"], UUID_PATTERN);
        let w = &schemas["WantRequest"]["oneOf"];
        assert_eq!(w[0]["properties"]["file"]["maxLength"], MAX_PATH_BYTES);
        assert_eq!(w[1]["properties"]["query"]["maxLength"], MAX_QUERY_BYTES);
        assert_eq!(w[1]["additionalProperties"], false);
        // JSON bodies: too large and not JSON are documented answers.
        for (path, method) in [
            ("/api/v1/pins", "post"),
            ("/api/v1/downloads", "post"),
            ("/api/v1/wants", "post"),
        ] {
            for code in ["400", "413", "415"] {
                assert!(
                    paths[path][method]["responses"].get(code).is_some(),
                    "{method} {path} {code}"
                );
            }
        }
        // The streams say they stream, and each event's data is JSON of
        // the documented schema.
        for path in ["/api/v1/events", "/api/v1/downloads/{job}/events"] {
            let ok = &paths[path]["get"]["responses"]["200"];
            let sse = &ok["content"]["text/event-stream"]["schema"];
            assert_eq!(
                sse["properties"]["data"]["contentMediaType"],
                "application/json"
            );
            assert!(sse["properties"]["data"]["contentSchema"]["$ref"].is_string());
            assert!(ok["content"].get("application/x-ndjson").is_some());
            assert!(paths[path]["get"]["responses"].get("406").is_some());
        }
        let events = paths["/api/v1/events"]["get"]["responses"]["200"]["description"]
            .as_str()
            .unwrap();
        assert!(events.contains("never ends"), "{events}");
        assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
