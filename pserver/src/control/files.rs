//! `/api/v1/files`: upload (streamed, hashed on the way in), list, remove,
//! and a stored file's content.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use peerdex_proto::rest::{ApiError, FileInfo, FileList};
use peerdex_proto::{FileId, FileName};
use tokio::io::AsyncWriteExt;

use super::Control;
use crate::error::{Error, Invalid, Result, TooLarge};
use crate::link::Central;
use crate::peer::conditional;
use crate::peer::serve::{Withdraw, verified_range};
use crate::rt::MainRt;
use crate::store::{Added, Store};

/// Upload a file: the request body is the content, streamed.
#[utoipa::path(put, path = "/api/v1/files/{file}", request_body(content = Option<Vec<u8>>, content_type = "application/octet-stream", description = "the content; none (no Content-Length, no chunked body) is an empty file"),
    params(("file" = String, Path, description = "the name to share it under: one path component, at most 255 bytes (UTF-8)"),
    ),
    responses((status = 201, body = FileInfo, description = "stored and published"), (status = 200, body = FileInfo, description = "identical content already shared under that name"),
              (status = 400, body = ApiError, description = "not a valid file name (for example over 255 bytes of UTF-8), or the body was cut off"), (status = 409, body = ApiError, description = "name taken by different content"),
              (status = 413, body = ApiError, description = "larger than PSERVER_MAX_UPLOAD_BYTES"),
              (status = 507, body = ApiError, description = "it would cut into PSERVER_MIN_FREE_BYTES, or the disk is full")))]
pub(super) async fn upload(
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
    let too_large = || Error::TooLarge(TooLarge::Upload { max });
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
        let piece = piece.map_err(|e| Error::InvalidArgument(Invalid::UploadInterrupted(e)))?;
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
        .map_err(Error::from)??;
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
pub(super) async fn list_files(store: web::Data<Store>) -> web::Json<FileList> {
    web::Json(FileList {
        files: store.list(),
    })
}

/// Stop sharing a file: withdraws it from the central and deletes this peer's copy.
#[utoipa::path(delete, path = "/api/v1/files/{file}", params(("file" = String, Path, description = "the file's id: its BLAKE3 hash, 64 lowercase hex characters")),
    responses((status = 200, body = FileList, description = "the entries removed"), (status = 400, body = ApiError, description = "not a file id"), (status = 404, body = ApiError, description = "this PServer shares no file with that id")))]
pub(super) async fn remove_file(
    store: web::Data<Store>,
    central: web::Data<Central>,
    rt: web::Data<MainRt>,
    id: web::Path<String>,
) -> Result<web::Json<FileList>> {
    let id: FileId = id.parse()?;
    let store = store.into_inner();
    let removed = web::block(move || store.remove(&id))
        .await
        .map_err(Error::from)??;
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
pub(super) async fn file_content(
    store: web::Data<Store>,
    withdraw: web::Data<Withdraw>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id: FileId = id.parse()?;
    let store = store.into_inner();
    let (file, entry) = web::block(move || store.open_shared(&id))
        .await
        .map_err(Error::from)??;
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
