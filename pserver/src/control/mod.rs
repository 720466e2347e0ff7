//! The control API (`/api/v1`) used by the local `peerdex` client.
//!
//! Guarded by a `Host` check (DNS-rebinding defence: only IP literals and
//! `localhost`, and only our own address when bound to a specific one) and,
//! when `PSERVER_API_TOKEN` is set, a bearer token on every request.

pub(crate) mod pins;
pub mod tokens;
mod webui;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use peerdex_proto::network::constant_time_eq;
use peerdex_proto::rest::{
    ApiError, Candidate, DownloadRequest, FileInfo, FileList, Holder, Job, JobList, LeaseRenewals,
    LocateQuery, LocateResult, LocatedFile, MAX_SEARCH_LIMIT, NeighbourStatus, PinList, PinRequest,
    PinStatus, ReplicaFetch, Replication, SearchHit, SearchQuery, SearchResults, SourceProgress,
    Status, UnsharedFile, schema,
};
use peerdex_proto::types::{MAX_NAME_BYTES, MAX_QUERY_BYTES, MAX_REPLICAS, parse_hyphenated_uuid};
use peerdex_proto::{FileId, FileName, PeerId, PeerUrl};
use tokio::io::AsyncWriteExt;
use utoipa::OpenApi;

use crate::control::tokens::{ClientTokens, Scope};
use crate::download::replicas::Replicas;
use crate::download::{Downloads, JobHandle};
use crate::error::{Error, Result};
use crate::link::Central;
use crate::link::lookup::Lookup;
use crate::metrics::{Live, Metrics};
use crate::peer::conditional;
use crate::peer::serve::{Withdraw, verified_range};
use crate::peer::uploads::Uploads;
use crate::rt::MainRt;
use crate::store::{Added, Store};

/// This API's own settings and what it reports about the PServer.
#[derive(Clone)]
pub(crate) struct Control {
    /// Where the control API is bound (for the `Host` check).
    pub api_addr: SocketAddr,
    /// `PSERVER_API_TOKEN`, required as a bearer token when set.
    pub api_token: Option<String>,
    pub max_upload_bytes: u64,
    pub peer_id: PeerId,
    pub public_url: PeerUrl,
    /// Checks client tokens (`pserver token create`).
    pub tokens: Arc<ClientTokens>,
}

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
        list_pins
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
        SearchHit,
        LocateResult,
        LocateQuery,
        LocatedFile,
        Holder,
        Candidate,
        SourceProgress
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
                    _ => &[],
                };
                for (param, codes, targets) in links {
                    let from = if *param == "file" {
                        "$response.body#/file_id"
                    } else {
                        "$response.body#/job_id"
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
                    if param.name == "job" {
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

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    let content = actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head());
    cfg.service(
        web::scope("/api/v1")
            .service(resource("/openapi.json", "GET").route(web::get().to(openapi)))
            .service(resource("/files", "GET").route(web::get().to(list_files)))
            .service(
                resource("/files/{file}", "PUT, DELETE")
                    .route(web::put().to(upload))
                    .route(web::delete().to(remove_file)),
            )
            .service(
                resource("/files/{file}/content", "GET, HEAD")
                    .route(web::route().guard(content).to(file_content)),
            )
            .service(resource("/status", "GET").route(web::get().to(status)))
            .service(resource("/search", "GET").route(web::get().to(search)))
            .service(resource("/locate", "GET").route(web::get().to(locate)))
            .service(
                resource("/downloads", "GET, POST")
                    .route(web::post().to(start_download))
                    .route(web::get().to(list_downloads)),
            )
            .service(
                resource("/downloads/{job}", "GET, DELETE")
                    .route(web::get().to(get_download))
                    .route(web::delete().to(cancel_download)),
            )
            .service(
                resource("/downloads/{job}/events", "GET").route(web::get().to(download_events)),
            )
            .service(resource("/events", "GET").route(web::get().to(events)))
            .service(
                resource("/pins", "GET, POST")
                    .route(web::post().to(pin))
                    .route(web::get().to(list_pins)),
            ),
    )
    .service(resource("/metrics", "GET").route(web::get().to(metrics)))
    .configure(webui::routes)
    .default_service(web::to(|| async {
        Err::<HttpResponse, _>(Error::NotFound(
            "no such endpoint; see /api/v1/openapi.json".into(),
        ))
    }));
}

/// A path of this API: a method it does not have is answered 405 with
/// `Allow` (not 404: the path exists).
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        Err::<HttpResponse, _>(Error::MethodNotAllowed {
            method: req.method().to_string(),
            allow,
        })
    }))
}

/// Host check and bearer token, for every control-API request.
pub(crate) async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let control = req
        .app_data::<web::Data<Control>>()
        .expect("control settings")
        .clone();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host, control.api_addr) {
        return Err(Error::Forbidden(format!(
            "host {host:?} is not allowed; address this API by IP address or localhost"
        ))
        .into());
    }
    if let Err(why) = same_origin(&req, host) {
        return Err(Error::Forbidden(why).into());
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if safe && webui::is_asset(req.path()) {
        return next.call(req).await;
    }
    let given = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(h) => Some(
            h.to_str()
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    Error::Unauthorized("the Authorization header must be `Bearer <token>`".into())
                })?,
        ),
    };
    match given {
        // Without a token: full access only where none is configured (on
        // loopback without PSERVER_API_TOKEN).
        None if control.api_token.is_some() => {
            return Err(Error::Unauthorized(
                "missing bearer token: give this PServer's API token (PSERVER_API_TOKEN, or a client token from `pserver token create`); the CLI takes it as --token or PEERDEX_API_TOKEN".into(),
            )
            .into());
        }
        None => {}
        // The static token: full access.
        Some(g)
            if control
                .api_token
                .as_ref()
                .is_some_and(|t| constant_time_eq(g.as_bytes(), t.as_bytes())) => {}
        // A client token: checked, and limits the request to its scope,
        // on loopback too.
        Some(g) if g.matches('.').count() == 2 => {
            let claims = control.tokens.check(g).map_err(Error::Unauthorized)?;
            if claims.scope == Scope::Read && !safe {
                return Err(Error::Forbidden(format!(
                    "{} {} needs scope write; this token ({:?}) has scope read: create one with `pserver token create --scope write`",
                    req.method(),
                    req.path(),
                    claims.sub
                ))
                .into());
            }
        }
        Some(_) => {
            return Err(Error::Unauthorized(
                "wrong bearer token: it is neither this PServer's PSERVER_API_TOKEN nor a client token (a JWT from `pserver token create`)".into(),
            )
            .into());
        }
    }
    next.call(req).await
}

/// A request that changes something (any method but GET, HEAD, OPTIONS)
/// must come from this API's own origin or from no browser page at all: a
/// page of another site (a cross-site form, a fetch from elsewhere) is
/// refused before anything happens. Browsers send `Origin` on such requests
/// and `Sec-Fetch-Site` on all of them; the CLI sends neither. Together with
/// the JSON body `POST /api/v1/downloads` requires (a form cannot send one)
/// and the `Host` check against DNS rebinding, this is the CSRF defence.
fn same_origin(req: &ServiceRequest, host: &str) -> std::result::Result<(), String> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && matches!(site, "cross-site" | "same-site")
    {
        return Err(format!(
            "{} from a page of another site (Sec-Fetch-Site: {site}) is refused; \
             use the web UI at this address, or the peerdex CLI",
            req.method()
        ));
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let ours = ["http://", "https://"].iter().any(|scheme| {
            origin
                .strip_prefix(scheme)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
        });
        if !ours {
            return Err(format!(
                "{} from origin {origin:?} is refused: only pages served by this API \
                 (http://{host}) may change things; use its web UI, or the peerdex CLI",
                req.method()
            ));
        }
    }
    Ok(())
}

/// Accept `localhost` and IP literals; when bound to a specific address, only
/// that address or loopback.
pub(crate) fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || bound.ip().is_unspecified() || ip == bound.ip(),
        Err(_) => false,
    }
}

async fn openapi() -> HttpResponse {
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

/// Upload a file: the request body is the content, streamed.
#[utoipa::path(put, path = "/api/v1/files/{file}", request_body(content = Option<Vec<u8>>, content_type = "application/octet-stream", description = "the content; none (no Content-Length, no chunked body) is an empty file"),
    params(("file" = String, Path, description = "the name to share it under: one path component, at most 255 bytes (UTF-8)"),
    ),
    responses((status = 201, body = FileInfo, description = "stored and published"), (status = 200, body = FileInfo, description = "identical content already shared under that name"),
              (status = 400, body = ApiError, description = "not a valid file name (for example over 255 bytes of UTF-8), or the body was cut off"), (status = 409, body = ApiError, description = "name taken by different content"),
              (status = 413, body = ApiError, description = "larger than PSERVER_MAX_UPLOAD_BYTES"),
              (status = 507, body = ApiError, description = "it would cut into PSERVER_MIN_FREE_BYTES, or the disk is full")))]
async fn upload(
    control: web::Data<Control>,
    store: web::Data<Store>,
    central: web::Data<Central>,
    rt: web::Data<MainRt>,
    req: HttpRequest,
    name: web::Path<String>,
    mut body: web::Payload,
) -> Result<HttpResponse> {
    let name: FileName = name.parse()?;
    let max = control.max_upload_bytes;
    let too_large = || {
        Error::TooLarge(format!(
            "upload exceeds PSERVER_MAX_UPLOAD_BYTES ({max} bytes)"
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }

    // What is declared must leave PSERVER_MIN_FREE_BYTES free, and so must
    // what arrives (looked at every 8 MiB); a full disk is answered 507.
    let (space, tmp) = (store.space().clone(), store.tmp_dir().to_owned());
    let what = format!("upload {:?}", name.as_str());
    let claim = space.claim(&tmp, declared.unwrap_or(0), &what)?;
    let disk = |e: std::io::Error| crate::store::space::disk_error(&space, e, &tmp);
    let temp = store.temp_path("upload");
    let guard = TempGuard(temp.clone());
    let file = tokio::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&temp)
        .await
        .map_err(disk)?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = peerdex_proto::tree::TreeHasher::new();
    while let Some(piece) = body.next().await {
        let piece =
            piece.map_err(|e| Error::InvalidArgument(format!("upload interrupted: {e}")))?;
        if hasher.total() + piece.len() as u64 > max {
            return Err(too_large());
        }
        let before = hasher.total();
        hasher.update(&piece);
        out.write_all(&piece).await.map_err(disk)?;
        if before >> 23 != hasher.total() >> 23 {
            let left = declared.unwrap_or(0).saturating_sub(hasher.total());
            claim.recheck(&tmp, left, &what)?;
        }
    }
    out.flush().await.map_err(disk)?;
    drop(out);
    let size = hasher.total();
    let (id, manifest) = hasher.finish();
    let s = store.clone().into_inner();
    let (n2, t2) = (name.clone(), temp.clone());
    let added = web::block(move || s.add_from_temp(&t2, &n2, id, manifest))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    drop(claim);
    guard.disarm();
    let info = FileInfo {
        file_id: id.to_hex(),
        name: name.to_string(),
        size,
        lookalike: name.mixes_scripts(),
    };
    if added == Added::New {
        tracing::info!(name = %name, file = %id, bytes = size, "file uploaded");
        if let Some(entry) = store.by_name(&name) {
            let central = central.into_inner();
            rt.run(async move {
                central.publish(&[entry.to_shared()]).await;
                Ok(())
            })
            .await?;
        }
        Ok(HttpResponse::Created().json(info))
    } else {
        Ok(HttpResponse::Ok().json(info))
    }
}

/// Removes a temp file unless disarmed.
struct TempGuard(std::path::PathBuf);
impl TempGuard {
    fn disarm(self) {
        std::mem::forget(self);
    }
}
impl Drop for TempGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The files this PServer shares.
#[utoipa::path(get, path = "/api/v1/files", responses((status = 200, body = FileList)))]
async fn list_files(store: web::Data<Store>) -> web::Json<FileList> {
    web::Json(FileList {
        files: store.list(),
    })
}

/// Stop sharing a file: withdraws it from the central and deletes this peer's copy.
#[utoipa::path(delete, path = "/api/v1/files/{file}", params(("file" = String, Path, description = "the file's id: its BLAKE3 hash, 64 lowercase hex characters")),
    responses((status = 200, body = FileList, description = "the entries removed"), (status = 400, body = ApiError, description = "not a file id"), (status = 404, body = ApiError, description = "this PServer shares no file with that id")))]
async fn remove_file(
    store: web::Data<Store>,
    central: web::Data<Central>,
    rt: web::Data<MainRt>,
    id: web::Path<String>,
) -> Result<web::Json<FileList>> {
    let id: FileId = id.parse()?;
    let store = store.into_inner();
    let removed = web::block(move || store.remove(&id))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let refs: Vec<_> = removed.iter().map(|e| (e.id, e.name.clone())).collect();
    let central = central.into_inner();
    rt.run(async move {
        central.unpublish(&refs).await;
        Ok(())
    })
    .await?;
    Ok(web::Json(FileList {
        files: removed.iter().map(|e| e.to_info()).collect(),
    }))
}

/// Stream a stored file's bytes (HEAD: the same headers, no body). A strong
/// ETag from the content id: `If-None-Match` gets 304, `If-Match` 412.
#[utoipa::path(get, path = "/api/v1/files/{file}/content", params(("file" = String, Path, description = "the file's id: its BLAKE3 hash, 64 lowercase hex characters")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, description = "the bytes, each checked against the file's manifest before it is sent"),
              (status = 304, description = "If-None-Match names this content's ETag: you have it"),
              (status = 400, body = ApiError, description = "not a file id"), (status = 404, body = ApiError, description = "this PServer shares no file with that id"),
              (status = 412, body = ApiError, description = "an If-Match that does not name this content's ETag")))]
async fn file_content(
    store: web::Data<Store>,
    withdraw: web::Data<Withdraw>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id: FileId = id.parse()?;
    let store = store.into_inner();
    let (file, entry) = web::block(move || store.open_shared(&id))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let size = entry.size;
    // Content-addressed like the peer API's bytes, but for this user only.
    if conditional::evaluate(&req, &id.to_hex())? == conditional::Verdict::NotModified {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, format!("\"{id}\"")))
            .insert_header((header::CACHE_CONTROL, conditional::PRIVATE))
            .finish());
    }
    let name = entry.name.as_str().replace('"', "_");
    let mut resp = HttpResponse::Ok();
    resp.content_type("application/octet-stream")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header((header::ETAG, format!("\"{id}\"")))
        .insert_header((header::CACHE_CONTROL, conditional::PRIVATE))
        .no_chunking(size);
    if req.method() == actix_web::http::Method::HEAD {
        // The same headers as GET, and no file read.
        return Ok(resp.streaming(futures_util::stream::empty::<std::io::Result<bytes::Bytes>>()));
    }
    let stream = verified_range(
        file,
        entry.manifest,
        0,
        size,
        1 << 20,
        withdraw.get_ref().clone(),
    )
    .await?;
    Ok(resp.streaming(stream))
}

/// Peer id, URLs, central and neighbour health, lease age and counts.
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, body = Status)))]
#[allow(clippy::too_many_arguments)]
async fn status(
    control: web::Data<Control>,
    store: web::Data<Store>,
    central: web::Data<Central>,
    lookup: web::Data<Lookup>,
    uploads: web::Data<Uploads>,
    downloads: web::Data<Downloads>,
    rt: web::Data<MainRt>,
    metrics: web::Data<Metrics>,
    replicas: web::Data<Replicas>,
) -> Result<web::Json<Status>> {
    let probe = lookup.clone().into_inner();
    let neighbours = rt.run(async move { Ok(probe.probe().await) }).await?;
    let (files, bytes) = store.totals();
    let (unshared_files, unshared) = store.unshared();
    Ok(web::Json(Status {
        peer_id: control.peer_id.to_string(),
        public_url: control.public_url.to_string(),
        central_url: central.url().to_owned(),
        centrals: central.urls(),
        central_name: central.central_name(),
        leader: central.leader(),
        central_reachable: central.reachable(),
        lease_age_secs: central.lease_age().map(|d| d.as_secs()),
        lease_error: central.lease_error(),
        neighbours: neighbours
            .into_iter()
            .map(|(u, ok)| NeighbourStatus {
                url: u.to_string(),
                reachable: ok,
            })
            .collect(),
        shared_files: files,
        shared_bytes: bytes,
        active_uploads: uploads.active(),
        active_downloads: downloads.active(),
        max_upload_bytes: control.max_upload_bytes,
        files_hashed: store.hashed_count(),
        bytes_sent: metrics.bytes().0,
        bytes_received: metrics.bytes().1,
        lease_renewals: {
            let (ok, rejoin, error) = metrics.renewals();
            LeaseRenewals { ok, rejoin, error }
        },
        replica_quota_bytes: replicas.quota(),
        replica_used_bytes: store.replica_bytes(),
        replicas: store.replicas().iter().map(|e| e.to_info()).collect(),
        replica_fetches: downloads.replica_fetches(),
        unshared_files,
        unshared: unshared
            .into_iter()
            .map(|(name, reason)| UnsharedFile { name, reason })
            .collect(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }))
}

/// This PServer's metrics in the Prometheus text format (behind the same
/// Host check and token as the rest of this API; see `crate::metrics`).
async fn metrics(
    metrics: web::Data<Metrics>,
    store: web::Data<Store>,
    uploads: web::Data<Uploads>,
    downloads: web::Data<Downloads>,
    replicas: web::Data<Replicas>,
) -> HttpResponse {
    let (shared_files, shared_bytes) = store.totals();
    let text = metrics.render(Live {
        shared_files: shared_files as usize,
        shared_bytes,
        uploads_active: uploads.active(),
        downloads_active: downloads.active(),
        replicas: store.replicas().len(),
        replica_bytes: store.replica_bytes(),
        replica_quota_bytes: replicas.quota(),
        replica_fetches_active: downloads.replica_fetches().len(),
    });
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(text)
}

/// Search the network (through a neighbour, or the central if none answers).
#[utoipa::path(get, path = "/api/v1/search", params(SearchQuery),
    responses((status = 200, body = SearchResults), (status = 400, body = ApiError, description = "outside the declared bounds: a query of only whitespace or over 1024 bytes (UTF-8) or 16 distinct words, a limit over 10000, a page token that is not hex of 36 to 291 bytes"),
              (status = 429, body = ApiError, description = "the directory or a neighbour rate-limits this peer; see Retry-After"),
              (status = 503, body = ApiError, description = "neither the neighbours nor the central answer")))]
async fn search(
    central: web::Data<Central>,
    lookup: web::Data<Lookup>,
    rt: web::Data<MainRt>,
    q: web::Query<SearchQuery>,
) -> Result<web::Json<SearchResults>> {
    let q = q.into_inner();
    if q.limit.is_some_and(|l| l > MAX_SEARCH_LIMIT) {
        return Err(Error::InvalidArgument(format!(
            "limit is at most {MAX_SEARCH_LIMIT} hits per page"
        )));
    }
    if q.q.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "search query q is empty; give one or more words".into(),
        ));
    }
    // The page token is the directory's, but its form is the document's:
    // checked here, so a bad one is refused whatever the query (the
    // directory answers a query without words before it reads the token).
    if let Some(page) = q.page.as_deref().filter(|p| !p.is_empty()) {
        let bytes = page.len() / 2;
        if page.len() % 2 != 0
            || !page.bytes().all(|b| b.is_ascii_hexdigit())
            || !(36..=36 + MAX_NAME_BYTES).contains(&bytes)
        {
            return Err(Error::InvalidArgument(
                "page: not a `next_page` token of a previous search answer".into(),
            ));
        }
    }
    if q.q.len() > MAX_QUERY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "search query q is {} bytes; at most {MAX_QUERY_BYTES}",
            q.q.len()
        )));
    }
    let (central, lookup) = (central.into_inner(), lookup.into_inner());
    let mut results = rt
        .run(async move { lookup.search(&central, &q).await })
        .await?;
    // Our own judgement, not a neighbour's.
    for h in &mut results.hits {
        h.lookalike = peerdex_proto::types::mixes_scripts(&h.name);
    }
    Ok(web::Json(results))
}

/// A file by id, or every content carrying an exact name: size, names,
/// live holders (owners and replica holders) and its copies wanted and
/// live (through a neighbour, or the central if none answers).
#[utoipa::path(get, path = "/api/v1/locate", params(("target" = LocateQuery, Query, style = Form, explode, description = "exactly one of `file_id` (a file id) and `name` (an exact file name), each its own query parameter: `?file_id=...` or `?name=...`")),
    responses((status = 200, body = LocateResult, description = "every content found (none: an empty list)"), (status = 400, body = ApiError, description = "not exactly one of a valid file_id and name"),
              (status = 429, body = ApiError, description = "the directory or a neighbour rate-limits this peer; see Retry-After"),
              (status = 503, body = ApiError, description = "neither the neighbours nor the central answer")))]
async fn locate(
    central: web::Data<Central>,
    lookup: web::Data<Lookup>,
    rt: web::Data<MainRt>,
    q: web::Query<LocateQuery>,
) -> Result<web::Json<LocateResult>> {
    let target = crate::link::lookup::LocateTarget::from_query(&q)?;
    let (central, lookup) = (central.into_inner(), lookup.into_inner());
    let files = rt
        .run(async move { lookup.locate(&central, &target).await })
        .await?;
    Ok(web::Json(LocateResult { files }))
}

/// Start downloading a file by id or exact name.
#[utoipa::path(post, path = "/api/v1/downloads", request_body = DownloadRequest,
    responses((status = 202, body = Job, description = "the job started; follow it at /api/v1/downloads/{job}/events"), (status = 400, body = ApiError, description = "not exactly one of a valid file_id and name"),
              (status = 404, body = ApiError, description = "no live peer shares it"), (status = 409, body = ApiError, description = "the name matches several contents: see candidates"),
              (status = 429, body = ApiError, description = "the directory or a neighbour rate-limits this peer; see Retry-After"),
              (status = 503, body = ApiError, description = "neither the neighbours nor the central answer")))]
async fn start_download(
    downloads: web::Data<Downloads>,
    req: web::Json<DownloadRequest>,
) -> Result<HttpResponse> {
    let job = downloads.start(req.into_inner()).await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// Pin a file: ask the directory to keep `replicas` live copies of it on
/// distinct peers (volunteers fetch copies as needed), or stop asking (0
/// or 1). The file is named by id, or by an exact name (this PServer's
/// shared files first, then the directory).
#[utoipa::path(post, path = "/api/v1/pins", request_body = PinRequest,
    responses((status = 200, body = PinStatus, description = "the pin as the directory keeps it, and the file's copies"),
              (status = 400, body = ApiError, description = "not a file id or name, or replicas above the directory's CENTRAL_MAX_REPLICAS (at most 64)"),
              (status = 404, body = ApiError, description = "no live peer holds the file and nobody pinned it"),
              (status = 409, body = ApiError, description = "the name matches several contents: see candidates"),
              (status = 429, body = ApiError, description = "a limit of the directory on this peer's pins (CENTRAL_MAX_PINS_PER_PEER, CENTRAL_MAX_PINNED_BYTES_PER_PEER), or its rate limit (then with Retry-After)"),
              (status = 501, body = ApiError, description = "the central directory keeps no pins (an older version)"),
              (status = 503, body = ApiError, description = "the central directory does not answer, or this PServer is not joined right now")))]
async fn pin(
    store: web::Data<Store>,
    central: web::Data<Central>,
    lookup: web::Data<Lookup>,
    rt: web::Data<MainRt>,
    req: web::Json<PinRequest>,
) -> Result<web::Json<PinStatus>> {
    let (store, central, lookup) = (
        store.into_inner(),
        central.into_inner(),
        lookup.into_inner(),
    );
    let req = req.into_inner();
    if req.replicas > MAX_REPLICAS {
        return Err(Error::InvalidArgument(format!(
            "replicas: {} is above {MAX_REPLICAS}, the most any directory keeps",
            req.replicas
        )));
    }
    Ok(web::Json(
        rt.run(async move { crate::control::pins::pin(&store, &central, &lookup, req).await })
            .await?,
    ))
}

/// The pins this PServer set, with each file's wanted and live copies.
#[utoipa::path(get, path = "/api/v1/pins",
    responses((status = 200, body = PinList),
              (status = 501, body = ApiError, description = "the central directory keeps no pins (an older version)"),
              (status = 503, body = ApiError, description = "the central directory does not answer, or this PServer is not joined right now")))]
async fn list_pins(
    central: web::Data<Central>,
    rt: web::Data<MainRt>,
) -> Result<web::Json<PinList>> {
    let central = central.into_inner();
    Ok(web::Json(
        rt.run(async move { crate::control::pins::list(&central).await })
            .await?,
    ))
}

/// All download jobs, oldest first.
#[utoipa::path(get, path = "/api/v1/downloads", responses((status = 200, body = JobList)))]
async fn list_downloads(downloads: web::Data<Downloads>) -> web::Json<JobList> {
    web::Json(JobList {
        jobs: downloads.list(),
    })
}

fn job_handle(downloads: &Downloads, id: &str) -> Result<Arc<JobHandle>> {
    let uuid = parse_hyphenated_uuid(id).ok_or_else(|| {
        Error::InvalidArgument(format!("invalid job id {id:?}: expected a hyphenated UUID"))
    })?;
    downloads
        .get(&uuid)
        .ok_or_else(|| Error::NotFound(format!("no download job {id}")))
}

/// One job's current state.
#[utoipa::path(get, path = "/api/v1/downloads/{job}", params(("job" = String, Path, description = "a job id (a UUID, as `POST /api/v1/downloads` answers)")), responses((status = 200, body = Job), (status = 400, body = ApiError, description = "not a job id"), (status = 404, body = ApiError, description = "no such job")))]
async fn get_download(
    downloads: web::Data<Downloads>,
    job: web::Path<String>,
) -> Result<web::Json<Job>> {
    Ok(web::Json(job_handle(&downloads, &job)?.snapshot()))
}

/// Cancel a running job (its partial bytes are discarded), or remove a
/// finished one. A running job stays listed with its final state, so
/// whoever follows it sees how it ended; deleting it again once it has
/// ended removes it, and its id answers 404 from then on.
#[utoipa::path(delete, path = "/api/v1/downloads/{job}", params(("job" = String, Path, description = "a job id (a UUID, as `POST /api/v1/downloads` answers)")), responses((status = 200, body = Job, description = "the job's last state: a running job is now cancelled (it stays listed, `cancelled`); a finished one (done, failed, cancelled) is removed"), (status = 400, body = ApiError, description = "not a job id"), (status = 404, body = ApiError, description = "no such job")))]
async fn cancel_download(
    downloads: web::Data<Downloads>,
    job: web::Path<String>,
) -> Result<web::Json<Job>> {
    let h = job_handle(&downloads, &job)?;
    let last = h.snapshot();
    if last.state.is_final() {
        if let Ok(id) = last.job_id.parse() {
            downloads.forget(&id);
        }
        return Ok(web::Json(last));
    }
    h.cancel();
    let mut rx = h.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|j| j.state.is_final())).await;
    Ok(web::Json(h.snapshot()))
}

/// Follow a job live: one Job per change (at least every second), ending
/// after a final state; as server-sent events or NDJSON (see `Framing`).
#[utoipa::path(get, path = "/api/v1/downloads/{job}/events", params(("job" = String, Path, description = "a job id (a UUID, as `POST /api/v1/downloads` answers)")),
    responses((status = 200, description = "a stream of Jobs: one now, then one on each change (at least every second); it ends after the job's final state. Server-sent events (one `data:` line of JSON per event) unless the request's Accept names application/x-ndjson (then one JSON line per Job). Close the connection to stop following early",
               content((Job = "text/event-stream"), (Job = "application/x-ndjson"))),
              (status = 400, body = ApiError, description = "not a job id"), (status = 404, body = ApiError, description = "no such job"),
              (status = 406, body = ApiError, description = "the Accept header names neither text/event-stream nor application/x-ndjson")))]
async fn download_events(
    downloads: web::Data<Downloads>,
    req: HttpRequest,
    job: web::Path<String>,
) -> Result<HttpResponse> {
    let framing = Framing::of(&req)?;
    let h = job_handle(&downloads, &job)?;
    Ok(framing.respond(job_stream(h, framing)))
}

/// Follow every download job: one JobList (as `GET /api/v1/downloads`) at
/// once, then after every change (at most four a second) and at least
/// every 15 s; as server-sent events or NDJSON (see `Framing`). Never ends
/// while the PServer runs: the client closes it.
#[utoipa::path(get, path = "/api/v1/events",
    responses((status = 200, description = "a stream that never ends while the PServer runs (close the connection to stop): a JobList now, on each change (at most four a second) and at least every 15 s. Server-sent events (one `data:` line of JSON per event) unless the request's Accept names application/x-ndjson (then one JSON line per JobList)",
               content((JobList = "text/event-stream"), (JobList = "application/x-ndjson"))),
              (status = 406, body = ApiError, description = "the Accept header names neither text/event-stream nor application/x-ndjson")))]
async fn events(downloads: web::Data<Downloads>, req: HttpRequest) -> Result<HttpResponse> {
    let framing = Framing::of(&req)?;
    let rx = downloads.watch();
    let stream = futures_util::stream::unfold(
        (downloads, rx, true),
        move |(downloads, mut rx, first)| async move {
            if !first {
                if let Ok(Err(_)) = tokio::time::timeout(EVENTS_KEEPALIVE, rx.changed()).await {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(250)).await; // coalesce bursts
            }
            if downloads.stopping() {
                return None;
            }
            rx.mark_unchanged();
            let list = JobList {
                jobs: downloads.list(),
            };
            Some((
                Ok::<_, actix_web::Error>(framing.frame(&list)),
                (downloads, rx, false),
            ))
        },
    );
    Ok(framing.respond(stream))
}

/// Longest quiet time on `GET /api/v1/events`.
const EVENTS_KEEPALIVE: Duration = Duration::from_secs(15);

/// How an event stream is framed. Server-sent events (`text/event-stream`)
/// unless the client asks for newline-delimited JSON: SSE is the format
/// generic HTTP clients and tools know never to wait for the end of (and
/// browsers' `EventSource` reads); the CLI and the web UI ask for NDJSON
/// with `Accept: application/x-ndjson`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Sse,
    Ndjson,
}

impl Framing {
    const NDJSON: &str = "application/x-ndjson";
    const SSE: &str = "text/event-stream";

    /// From the `Accept` header: NDJSON when it names it (or only
    /// `application/*`), SSE when it names SSE, `text/*` or `*/*`, or is
    /// absent; 406 when it allows neither. Ranges with `q=0` do not count.
    fn of(req: &HttpRequest) -> Result<Self> {
        let Some(accept) = req.headers().get(header::ACCEPT) else {
            return Ok(Self::Sse);
        };
        let accept = accept.to_str().unwrap_or("");
        let ranges: Vec<String> = accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';');
                let media = parts.next()?.trim().to_ascii_lowercase();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                (!refused && !media.is_empty()).then_some(media)
            })
            .collect();
        let named = |m: &str| ranges.iter().any(|r| r == m);
        if ranges.is_empty() && accept.trim().is_empty() {
            Ok(Self::Sse)
        } else if named(Self::NDJSON) {
            Ok(Self::Ndjson)
        } else if named(Self::SSE) || named("text/*") || named("*/*") {
            Ok(Self::Sse)
        } else if named("application/*") {
            Ok(Self::Ndjson)
        } else {
            Err(Error::NotAcceptable(format!(
                "this stream is {} or {}; Accept {accept:?} allows neither",
                Self::SSE,
                Self::NDJSON
            )))
        }
    }

    /// One value as one event (SSE) or one line (NDJSON); the JSON has no
    /// newline, so it fits one `data:` line.
    fn frame(self, value: &impl serde::Serialize) -> bytes::Bytes {
        let json = serde_json::to_vec(value).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 8);
        match self {
            Self::Sse => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"\n\n");
            }
            Self::Ndjson => {
                out.extend_from_slice(&json);
                out.push(b'\n');
            }
        }
        out.into()
    }

    fn respond(
        self,
        stream: impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, actix_web::Error>>
        + 'static,
    ) -> HttpResponse {
        HttpResponse::Ok()
            .content_type(match self {
                Self::Sse => Self::SSE,
                Self::Ndjson => Self::NDJSON,
            })
            .insert_header(("X-Accel-Buffering", "no"))
            .streaming(stream)
    }
}

fn job_stream(
    h: Arc<JobHandle>,
    framing: Framing,
) -> impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, actix_web::Error>> {
    let rx = h.subscribe();
    futures_util::stream::unfold((h, rx, false), move |(h, mut rx, done)| async move {
        if done {
            return None;
        }
        rx.mark_unchanged();
        let job = h.snapshot();
        let last = job.state.is_final();
        let frame = framing.frame(&job);
        if !last {
            // Wait for a change, but emit at least every second.
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
            tokio::time::sleep(Duration::from_millis(50)).await; // coalesce bursts
        }
        Some((Ok(frame), (h, rx, last)))
    })
}

#[cfg(test)]
mod tests {
    use super::{document, host_allowed};

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
            MAX_NAME_BYTES, MAX_QUERY_BYTES, MAX_REPLICAS, QUERY_PATTERN, UUID_PATTERN,
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
        assert_eq!(limit["schema"]["maximum"], super::MAX_SEARCH_LIMIT);
        let pin = &schemas["PinRequest"]["properties"];
        assert_eq!(pin["replicas"]["maximum"], MAX_REPLICAS);
        assert_eq!(pin["file"]["minLength"], 1);
        assert_eq!(pin["file"]["maxLength"], MAX_NAME_BYTES);
        let locate = &schemas["LocateQuery"]["oneOf"];
        assert_eq!(locate[1]["properties"]["name"]["minLength"], 1);
        assert_eq!(locate[0]["additionalProperties"], false);
        let job = &paths["/api/v1/downloads/{job}"]["get"]["parameters"][0]["schema"];
        assert_eq!(job["pattern"], UUID_PATTERN);
        // JSON bodies: too large and not JSON are documented answers.
        for (path, method) in [("/api/v1/pins", "post"), ("/api/v1/downloads", "post")] {
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

    #[test]
    fn event_streams_are_framed_as_asked() {
        use super::Framing::{self, Ndjson, Sse};
        use actix_web::test::TestRequest;
        let of = |accept: Option<&str>| {
            let mut r = TestRequest::default();
            if let Some(a) = accept {
                r = r.insert_header((actix_web::http::header::ACCEPT, a));
            }
            Framing::of(&r.to_http_request()).ok()
        };
        assert_eq!(of(None), Some(Sse));
        assert_eq!(of(Some("*/*")), Some(Sse));
        assert_eq!(of(Some("text/event-stream")), Some(Sse));
        assert_eq!(of(Some("application/x-ndjson")), Some(Ndjson));
        assert_eq!(
            of(Some("text/event-stream;q=0.5, Application/X-NDJSON")),
            Some(Ndjson)
        );
        assert_eq!(of(Some("application/*")), Some(Ndjson));
        assert_eq!(of(Some("application/json")), None);
        assert_eq!(of(Some("application/x-ndjson;q=0")), None);
        let value = serde_json::json!({"jobs": []});
        assert_eq!(&Sse.frame(&value)[..], b"data: {\"jobs\":[]}\n\n");
        assert_eq!(&Ndjson.frame(&value)[..], b"{\"jobs\":[]}\n");
    }

    #[test]
    fn hosts() {
        let lo: std::net::SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert!(host_allowed("127.0.0.1:7070", lo));
        assert!(host_allowed("localhost:7070", lo));
        assert!(host_allowed("[::1]:7070", lo));
        assert!(!host_allowed("evil.example.com:7070", lo));
        assert!(!host_allowed("10.0.0.5:7070", lo));
        assert!(!host_allowed("", lo));
        let any: std::net::SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert!(host_allowed("10.0.0.5:7070", any));
        assert!(!host_allowed("attacker.test", any));
    }
}
