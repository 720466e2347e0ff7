//! The public peer API (`/peer/v1`): serve files by id with HTTP Range, every
//! byte verified before it leaves (see `serve`), their manifests (the BLAKE3
//! chaining values downloaders check against the id), and the neighbour role
//! (locate and search on behalf of another peer).
//!
//! Open to the world, so it holds up under abuse: connections per source
//! are capped (429), the neighbour role is rate limited per source (429,
//! token buckets), and a reader too slow to deserve an upload slot loses it
//! and its connection (see `uploads`). Bytes and manifests are immutable
//! under their URL and answer conditional requests (see `conditional`).

pub(crate) mod conditional;
pub(crate) mod limits;
pub(crate) mod network;
pub(crate) mod serve;
pub(crate) mod uploads;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{ConnectionType, Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use peerdex_proto::range::{RangeReq, parse_range};
use peerdex_proto::rest::{LocateQuery, LocateResult, SearchQuery};
use peerdex_proto::{FileId, HOPS_HEADER, PeerId};

use crate::error::{Error, Invalid, Missing, Result, Unauthorized, Unavailable};
use crate::link::Central;
use crate::link::lookup::{self, LocateTarget};
use crate::peer::conditional::Verdict;
use crate::peer::limits::{Conn, NeighbourRate};
use crate::peer::network::{Network, Refused};
use crate::peer::serve::{Withdraw, verified_range};
use crate::peer::uploads::Uploads;
use crate::rt::MainRt;
use crate::store::Store;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/peer/v1")
            .route(
                "/files/{id}",
                web::route()
                    .guard(
                        actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()),
                    )
                    .to(serve_file),
            )
            .route(
                "/files/{id}/manifest",
                web::route()
                    .guard(
                        actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()),
                    )
                    .to(manifest),
            )
            .route("/folder", web::get().to(folder))
            .route("/locate", web::get().to(locate))
            .route("/search", web::get().to(search))
            .route("/health", web::get().to(health))
            .configure(crate::relay::routes),
    )
    .default_service(web::to(|| async {
        Err::<HttpResponse, _>(Error::from(Missing::PeerEndpoint))
    }));
}

async fn serve_file(
    store: web::Data<Store>,
    uploads: web::Data<Uploads>,
    withdraw: web::Data<Withdraw>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id: FileId = id.parse()?;
    let tag = id.to_hex();
    let store = store.into_inner();
    let (file, entry) = web::block(move || store.open_shared(&id))
        .await
        .map_err(Error::from)??;
    let size = entry.size;
    let honour_range = match conditional::evaluate(&req, &tag)? {
        Verdict::NotModified => {
            return Ok(HttpResponse::NotModified()
                .insert_header((header::ETAG, format!("\"{tag}\"")))
                .insert_header((header::CACHE_CONTROL, conditional::IMMUTABLE))
                .insert_header((header::ACCEPT_RANGES, "bytes"))
                .finish());
        }
        Verdict::Send { range } => range,
    };
    let range = req
        .headers()
        .get(header::RANGE)
        .filter(|_| honour_range)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeReq::Full, |v| parse_range(v, size));
    let (status, start, len) = match range {
        RangeReq::Full => (StatusCode::OK, 0, size),
        RangeReq::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeReq::Unsatisfiable => {
            return Ok(HttpResponse::RangeNotSatisfiable()
                .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                .insert_header((header::ACCEPT_RANGES, "bytes"))
                .finish());
        }
    };
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::ETAG, format!("\"{tag}\"")))
        .insert_header((header::CACHE_CONTROL, conditional::IMMUTABLE))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .no_chunking(len);
    if status == StatusCode::PARTIAL_CONTENT {
        resp.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        ));
    }
    if req.method() == Method::HEAD {
        return Ok(resp.streaming(futures_util::stream::empty::<std::io::Result<bytes::Bytes>>()));
    }
    // Held by the body: released when the body is sent or dropped, or
    // taken back by its watchdog from a reader too slow to keep it.
    let slot = uploads.try_acquire()?;
    let limit = uploads.limit().clone();
    let piece = limit.piece_size(1 << 20);
    let limited = limit.is_limited();
    let withdraw = withdraw.get_ref().clone();
    let verified = verified_range(file, entry.manifest, start, len, piece, withdraw).await?;
    // Waiting on our own rate cap happens inside the body's poll, so the
    // watchdog never counts it against the reader.
    let body = verified.then(move |chunk| {
        let limit = limit.clone();
        async move {
            if limited && let Ok(b) = &chunk {
                limit.take(b.len()).await;
            }
            chunk
        }
    });
    let closer = req.conn_data::<Conn>().and_then(Conn::closer);
    let peer = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    Ok(resp.streaming(uploads.watched(body, slot, closer, peer)))
}

/// A file's manifest: size, chunk size and the BLAKE3 chaining value of
/// every chunk (`peerdex_proto::tree::Manifest::encode`). Downloaders check
/// it against the file id before fetching a byte. Immutable like the bytes.
async fn manifest(
    store: web::Data<Store>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id: FileId = id.parse()?;
    let entry = store.shared(&id)?;
    let tag = format!("{id}.manifest");
    let verdict = conditional::evaluate(&req, &tag)?;
    let mut resp = match verdict {
        Verdict::NotModified => HttpResponse::NotModified(),
        Verdict::Send { .. } => HttpResponse::Ok(),
    };
    resp.insert_header((header::ETAG, format!("\"{tag}\"")))
        .insert_header((header::CACHE_CONTROL, conditional::IMMUTABLE));
    if verdict == Verdict::NotModified {
        return Ok(resp.finish());
    }
    Ok(resp
        .content_type("application/octet-stream")
        .body(entry.manifest.encode()))
}

/// Every peer-API request: a connection beyond its source's cap
/// (`PSERVER_MAX_CONNS_PER_ADDR`) is answered 429 and closed.
pub(crate) async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> std::result::Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let over = req.conn_data::<Conn>().map_or(Ok(()), |c| c.check());
    if let Err(e) = over {
        let mut resp = e.error_response();
        resp.head_mut().set_connection_type(ConnectionType::Close);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    if let Err(e) = credential(&req).await {
        return Ok(req.into_response(e.error_response()).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// In a private network, every request needs a valid credential of the
/// network (see `crate::peer::network`); 401 says what is wrong with it.
async fn credential(req: &ServiceRequest) -> Result<()> {
    let Some(net) = req.app_data::<web::Data<Network>>() else {
        return Ok(());
    };
    // Health names this peer and nothing else: the directory's dial-back
    // (issue 25) reaches a peer before the peer has its credentials.
    if req.path() == "/peer/v1/health" {
        return Ok(());
    }
    if !net.is_private() {
        return Ok(());
    }
    let jwt = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| Error::from(Unauthorized::NoCredential))?;
    match net.check(jwt) {
        Ok(_) => Ok(()),
        Err(Refused::Invalid(why)) => Err(Unauthorized::from(why).into()),
        Err(Refused::NotReady) => Err(Error::NotReady),
        Err(Refused::UnknownKey(kid)) => {
            // A key we have not seen: the directory may have a new one.
            if net.may_refresh_keys()
                && let (Some(central), Some(rt)) = (
                    req.app_data::<web::Data<Central>>(),
                    req.app_data::<web::Data<MainRt>>(),
                )
            {
                let central = central.clone().into_inner();
                let _ = rt
                    .run(async move {
                        central
                            .refresh_keys()
                            .await
                            .map_err(|s| Error::from(Unavailable::Keys { message: s.message }))
                    })
                    .await;
            }
            match net.check(jwt) {
                Ok(_) => Ok(()),
                Err(Refused::Invalid(why)) => Err(Unauthorized::from(why).into()),
                Err(Refused::NotReady) => Err(Error::NotReady),
                Err(Refused::UnknownKey(_)) => Err(Unauthorized::UnknownKey { kid }.into()),
            }
        }
    }
}

// `Error::NotReady` (503 + `Retry-After`): we (re)started and do not have
// the directory's list of departed peers yet, so we cannot tell a departed
// peer's credential from a member's. It comes with our Join.

fn check_hops(req: &HttpRequest) -> Result<()> {
    let hops = match req.headers().get(HOPS_HEADER) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| {
                Error::from(Invalid::Hops {
                    header: HOPS_HEADER,
                })
            })?,
    };
    // A neighbour answers from the central itself and never forwards, so a
    // request that already made more than one hop came through a loop.
    if hops > 1 {
        return Err(Error::LoopDetected { hops });
    }
    Ok(())
}

/// The neighbour role's rate limit (`PSERVER_NEIGHBOUR_RATE`), per source.
fn check_rate(rate: &NeighbourRate, req: &HttpRequest) -> Result<()> {
    match req.peer_addr() {
        Some(a) => rate.check(a.ip()),
        None => Ok(()),
    }
}

/// The files this peer shares under one folder of its share (for
/// another peer's folder download), at most `MAX_FOLDER_FILES`. Charged
/// like the neighbour role's lookups.
async fn folder(
    store: web::Data<Store>,
    rate: web::Data<NeighbourRate>,
    req: HttpRequest,
    q: web::Query<peerdex_proto::rest::FolderQuery>,
) -> Result<web::Json<peerdex_proto::rest::FolderFiles>> {
    check_rate(&rate, &req)?;
    let folder: peerdex_proto::FileName = q.path.parse()?;
    let (files, truncated) = store.files_under(&folder, peerdex_proto::rest::MAX_FOLDER_FILES);
    Ok(web::Json(peerdex_proto::rest::FolderFiles {
        files,
        truncated,
    }))
}

async fn locate(
    central: web::Data<Central>,
    rate: web::Data<NeighbourRate>,
    rt: web::Data<MainRt>,
    req: HttpRequest,
    q: web::Query<LocateQuery>,
) -> Result<web::Json<LocateResult>> {
    check_rate(&rate, &req)?;
    check_hops(&req)?;
    let target = LocateTarget::from_query(&q)?;
    tracing::info!(
        %target,
        "neighbour role: locating at the central on behalf of a peer"
    );
    let central = central.into_inner();
    let files = rt
        .run(async move { lookup::locate_at_central(&central, &target).await })
        .await?;
    Ok(web::Json(LocateResult { files }))
}

async fn search(
    central: web::Data<Central>,
    rate: web::Data<NeighbourRate>,
    rt: web::Data<MainRt>,
    req: HttpRequest,
    q: web::Query<SearchQuery>,
) -> Result<web::Json<peerdex_proto::rest::SearchResults>> {
    check_rate(&rate, &req)?;
    check_hops(&req)?;
    let q = q.into_inner();
    if q.q.trim().is_empty() {
        return Err(Invalid::EmptyNeighbourQuery.into());
    }
    tracing::info!(query = %q.q, "neighbour role: searching at the central on behalf of a peer");
    let central = central.into_inner();
    let r = rt
        .run(async move { lookup::search_at_central(&central, &q).await })
        .await?;
    Ok(web::Json(r))
}

async fn health(peer_id: web::Data<PeerId>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "peer_id": peer_id.to_string() }))
}
