//! The control API (`/api/v1`) used by the local `peerdex` client.
//!
//! Guarded by a `Host` check (DNS-rebinding defence: only IP literals and
//! `localhost`, and only our own address when bound to a specific one) and,
//! when `PSERVER_API_TOKEN` is set, a bearer token on every request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use peerdex_proto::rest::{
    ApiError, DownloadRequest, FileInfo, FileList, Job, JobList, NeighbourStatus, SearchQuery,
    SearchResults, Status,
};
use peerdex_proto::{FileId, FileName, PeerId, PeerUrl};
use tokio::io::AsyncWriteExt;
use utoipa::OpenApi;

use crate::central::Central;
use crate::conditional;
use crate::download::{Downloads, JobHandle};
use crate::error::{Error, Result};
use crate::lookup::Lookup;
use crate::rt::MainRt;
use crate::serve::{Withdraw, verified_range};
use crate::store::{Added, Store};
use crate::uploads::Uploads;

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
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "peerdex PServer control API",
        description = "Used by the local `peerdex` client. Errors are always an ApiError."
    ),
    paths(
        upload,
        list_files,
        remove_file,
        file_content,
        status,
        search,
        start_download,
        list_downloads,
        get_download,
        download_events,
        cancel_download
    ),
    components(schemas(
        ApiError,
        FileInfo,
        FileList,
        Status,
        NeighbourStatus,
        SearchResults,
        DownloadRequest,
        Job,
        JobList
    ))
)]
struct ApiDoc;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .route("/openapi.json", web::get().to(openapi))
            .route("/files", web::get().to(list_files))
            .route("/files/{name}", web::put().to(upload))
            .route("/files/{id}", web::delete().to(remove_file))
            .route(
                "/files/{id}/content",
                web::route()
                    .guard(
                        actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()),
                    )
                    .to(file_content),
            )
            .route("/status", web::get().to(status))
            .route("/search", web::get().to(search))
            .route("/downloads", web::post().to(start_download))
            .route("/downloads", web::get().to(list_downloads))
            .route("/downloads/{job}", web::get().to(get_download))
            .route("/downloads/{job}", web::delete().to(cancel_download))
            .route("/downloads/{job}/events", web::get().to(download_events)),
    )
    .default_service(web::to(|| async {
        Err::<HttpResponse, _>(Error::NotFound(
            "no such endpoint; see /api/v1/openapi.json".into(),
        ))
    }));
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
    if let Some(token) = &control.api_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return Err(Error::Unauthorized(
                "missing or wrong bearer token; pass --token or set PEERDEX_API_TOKEN".into(),
            )
            .into());
        }
    }
    next.call(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        .body(ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}

/// Upload a file: the request body is the content, streamed.
#[utoipa::path(put, path = "/api/v1/files/{name}", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = FileInfo, description = "stored and published"), (status = 200, body = FileInfo, description = "identical content already shared under that name"),
              (status = 400, body = ApiError), (status = 409, body = ApiError, description = "name taken by different content"), (status = 413, body = ApiError)))]
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
    // what arrives (looked at every 8 MiB); a full disk is answered 413.
    let (space, tmp) = (store.space().clone(), store.tmp_dir().to_owned());
    let what = format!("upload {:?}", name.as_str());
    let claim = space.claim(&tmp, declared.unwrap_or(0), &what)?;
    let disk = |e: std::io::Error| crate::space::disk_error(&space, e, &tmp);
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
#[utoipa::path(delete, path = "/api/v1/files/{id}", responses((status = 200, body = FileList, description = "the entries removed"), (status = 404, body = ApiError)))]
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
#[utoipa::path(get, path = "/api/v1/files/{id}/content", responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ApiError)))]
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
) -> Result<web::Json<Status>> {
    let probe = lookup.clone().into_inner();
    let neighbours = rt.run(async move { Ok(probe.probe().await) }).await?;
    let (files, bytes) = store.totals();
    Ok(web::Json(Status {
        peer_id: control.peer_id.to_string(),
        public_url: control.public_url.to_string(),
        central_url: central.url().to_owned(),
        central_reachable: central.reachable(),
        lease_age_secs: central.lease_age().map(|d| d.as_secs()),
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
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }))
}

/// Search the network (through a neighbour, or the central if none answers).
#[utoipa::path(get, path = "/api/v1/search", params(("q" = String, Query, description = "words; each is a prefix of a word of the name"), ("limit" = Option<u32>, Query), ("page" = Option<String>, Query)),
    responses((status = 200, body = SearchResults), (status = 400, body = ApiError), (status = 503, body = ApiError)))]
async fn search(
    central: web::Data<Central>,
    lookup: web::Data<Lookup>,
    rt: web::Data<MainRt>,
    q: web::Query<SearchQuery>,
) -> Result<web::Json<SearchResults>> {
    let q = q.into_inner();
    if q.q.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "search query q is empty; give one or more words".into(),
        ));
    }
    let (central, lookup) = (central.into_inner(), lookup.into_inner());
    Ok(web::Json(
        rt.run(async move { lookup.search(&central, &q).await })
            .await?,
    ))
}

/// Start downloading a file by id or exact name.
#[utoipa::path(post, path = "/api/v1/downloads", request_body = DownloadRequest,
    responses((status = 202, body = Job), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the name matches several contents: see candidates")))]
async fn start_download(
    downloads: web::Data<Downloads>,
    req: web::Json<DownloadRequest>,
) -> Result<HttpResponse> {
    let job = downloads.start(req.into_inner()).await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// All download jobs, oldest first.
#[utoipa::path(get, path = "/api/v1/downloads", responses((status = 200, body = JobList)))]
async fn list_downloads(downloads: web::Data<Downloads>) -> web::Json<JobList> {
    web::Json(JobList {
        jobs: downloads.list(),
    })
}

fn job_handle(downloads: &Downloads, id: &str) -> Result<Arc<JobHandle>> {
    let uuid = uuid::Uuid::parse_str(id)
        .map_err(|_| Error::InvalidArgument(format!("invalid job id {id:?}")))?;
    downloads
        .get(&uuid)
        .ok_or_else(|| Error::NotFound(format!("no download job {id}")))
}

/// One job's current state.
#[utoipa::path(get, path = "/api/v1/downloads/{job}", responses((status = 200, body = Job), (status = 404, body = ApiError)))]
async fn get_download(
    downloads: web::Data<Downloads>,
    job: web::Path<String>,
) -> Result<web::Json<Job>> {
    Ok(web::Json(job_handle(&downloads, &job)?.snapshot()))
}

/// Cancel a job; its partial bytes are discarded.
#[utoipa::path(delete, path = "/api/v1/downloads/{job}", responses((status = 200, body = Job), (status = 404, body = ApiError)))]
async fn cancel_download(
    downloads: web::Data<Downloads>,
    job: web::Path<String>,
) -> Result<web::Json<Job>> {
    let h = job_handle(&downloads, &job)?;
    h.cancel();
    let mut rx = h.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|j| j.state.is_final())).await;
    Ok(web::Json(h.snapshot()))
}

/// Follow a job live: newline-delimited JSON, one Job per change (at least
/// every second), ending after a final state.
#[utoipa::path(get, path = "/api/v1/downloads/{job}/events", responses((status = 200, content_type = "application/x-ndjson", body = Job), (status = 404, body = ApiError)))]
async fn download_events(
    downloads: web::Data<Downloads>,
    job: web::Path<String>,
) -> Result<HttpResponse> {
    let h = job_handle(&downloads, &job)?;
    let stream = async_stream(h);
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

fn async_stream(
    h: Arc<JobHandle>,
) -> impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, actix_web::Error>> {
    let rx = h.subscribe();
    futures_util::stream::unfold((h, rx, false), |(h, mut rx, done)| async move {
        if done {
            return None;
        }
        rx.mark_unchanged();
        let job = h.snapshot();
        let last = job.state.is_final();
        let mut line = serde_json::to_vec(&job).unwrap_or_default();
        line.push(b'\n');
        if !last {
            // Wait for a change, but emit at least every second.
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
            tokio::time::sleep(Duration::from_millis(50)).await; // coalesce bursts
        }
        Some((Ok(bytes::Bytes::from(line)), (h, rx, last)))
    })
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

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
