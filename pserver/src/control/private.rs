//! `/api/v1/private`: private files for this PServer's owner. Upload a
//! plaintext (sealed on the way in; only its ciphertext is stored and
//! announced), list the keys held with their tickets, fetch and open a
//! file by ticket, read an opened file's plaintext, remove a file (key,
//! ciphertext and the plaintext opened here).
//!
//! The control API's guard applies as on every route: the token, and the
//! `write` scope for everything but `GET`/`HEAD`. A `read` token can list
//! the tickets: a ticket is what a file's reader needs, and whoever reads
//! this API is its owner. Nothing here logs a name or a ticket.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use peerdex_proto::FileId;
use peerdex_proto::FileName;
use peerdex_proto::private::{PrivateFile, PrivateList, PrivateUploadQuery, TicketRequest};
use peerdex_proto::rest::{ApiError, Job};
use peerdex_proto::ticket::Ticket;
use tokio::io::AsyncWriteExt;

use super::Control;
use crate::download::Downloads;
use crate::error::{Error, Invalid, Missing, Result, TooLarge};
use crate::link::Central;
use crate::private::Vault;
use crate::private::crypt::{CIPHER, Sealer, ciphertext_size, fresh_key};
use crate::rt::MainRt;
use crate::store::Store;

/// Upload a private file: the body is the plaintext, streamed and sealed
/// on the way in with a fresh key.
#[utoipa::path(post, path = "/api/v1/private", params(PrivateUploadQuery),
    request_body(content = Option<Vec<u8>>, content_type = "application/octet-stream", description = "the plaintext; none is an empty file"),
    responses((status = 201, body = PrivateFile, description = "sealed, stored and announced (as its ciphertext only); `ticket` opens it"),
              (status = 400, body = ApiError, description = "not a valid file name, or the body was cut off"),
              (status = 413, body = ApiError, description = "larger than PSERVER_MAX_UPLOAD_BYTES"),
              (status = 507, body = ApiError, description = "it would cut into PSERVER_MIN_FREE_BYTES, or the disk is full")))]
#[allow(clippy::too_many_arguments)]
pub(super) async fn upload_private(
    control: web::Data<Control>,
    store: web::Data<Store>,
    central: web::Data<Central>,
    vault: web::Data<Vault>,
    rt: web::Data<MainRt>,
    req: HttpRequest,
    query: web::Query<PrivateUploadQuery>,
    mut body: web::Payload,
) -> Result<HttpResponse> {
    let name: FileName = query.into_inner().name.parse()?;
    // A private file's name travels in its ticket: a file name, no folders.
    if name.as_str().contains('/') {
        return Err(Invalid::PrivateName {
            name: name.to_string(),
        }
        .into());
    }
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
    let (space, tmp) = (store.space().clone(), store.tmp_dir().to_owned());
    // Claims name the file by nothing but "a private file".
    let what = "a private file".to_owned();
    let claim = space.claim(&tmp, ciphertext_size(declared.unwrap_or(0)), &what)?;
    let disk = |e: std::io::Error| crate::store::space::disk_error(&space, e, &tmp);
    let (key, nonce) = fresh_key()?;
    let mut sealer = Sealer::new(CIPHER, &key, &nonce);
    let temp = store.temp_path("private-upload");
    let guard = TempGuard(temp.clone());
    let file = tokio::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&temp)
        .await
        .map_err(disk)?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = peerdex_proto::tree::TreeHasher::new();
    let mut sealed = Vec::with_capacity(1 << 20);
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| Error::InvalidArgument(Invalid::UploadInterrupted(e)))?;
        if sealer.plain_bytes() + piece.len() as u64 > max {
            return Err(too_large());
        }
        let before = sealer.plain_bytes();
        sealer
            .push(&piece, &mut sealed)
            .map_err(std::io::Error::other)?;
        if sealed.len() >= 1 << 20 {
            hasher.update(&sealed);
            out.write_all(&sealed).await.map_err(disk)?;
            sealed.clear();
        }
        if before >> 23 != sealer.plain_bytes() >> 23 {
            let left = declared.unwrap_or(0).saturating_sub(sealer.plain_bytes());
            claim.recheck(&tmp, ciphertext_size(left), &what)?;
        }
    }
    let size = sealer.finish(&mut sealed).map_err(std::io::Error::other)?;
    hasher.update(&sealed);
    out.write_all(&sealed).await.map_err(disk)?;
    out.flush().await.map_err(disk)?;
    drop(out);
    let (id, manifest) = hasher.finish();
    let ticket = Ticket {
        file_id: id,
        cipher: CIPHER,
        key,
        nonce,
        size,
        name,
        hints: vec![vault.public_url().clone()],
    };
    // The key first: a ciphertext is never kept without it.
    let (s, v, t2, tk) = (
        store.clone().into_inner(),
        vault.clone().into_inner(),
        temp.clone(),
        ticket.clone(),
    );
    let entry = web::block(move || {
        v.add_owned(&tk)?;
        s.add_blob(&t2, tk.file_id, manifest).inspect_err(|_| {
            let _ = v.remove(&tk.file_id, false);
        })
    })
    .await
    .map_err(Error::from)??;
    drop(claim);
    guard.disarm();
    tracing::info!(file = %id, bytes = entry.size, "private file sealed and stored");
    let central = central.into_inner();
    let shared = entry.to_shared();
    rt.run(async move {
        central.publish(&[shared]).await;
        Ok(())
    })
    .await?;
    let info = vault.get(&id, true).ok_or(Missing::NotPrivate { id })?;
    Ok(HttpResponse::Created().json(info))
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

/// The private files this PServer holds the key of, with their tickets.
#[utoipa::path(get, path = "/api/v1/private", responses((status = 200, body = PrivateList)))]
pub(super) async fn list_private(
    store: web::Data<Store>,
    vault: web::Data<Vault>,
) -> web::Json<PrivateList> {
    web::Json(PrivateList {
        files: vault.list(|id| store.blob(id).is_some()),
        private_dir: vault.dir().display().to_string(),
    })
}

/// Fetch a private file by its ticket: the ciphertext from its holders
/// (verified against its id), opened into the private folder.
#[utoipa::path(post, path = "/api/v1/private/fetch", request_body = TicketRequest,
    responses((status = 202, body = Job, description = "the job started (or the ciphertext is held here and is being opened); follow it at /api/v1/downloads/{job}/events; `name` is the plaintext's"),
              (status = 400, body = ApiError, description = "not of a ticket's form: no `peerdex1`, a character outside base32, too short (cut off) or too long"),
              (status = 404, body = ApiError, description = "the ticket names no file (its checksum does not match: mistyped or cut off; or a layout version this PServer does not know), or no live peer holds the ciphertext"),
              (status = 503, body = ApiError, description = "neither the neighbours nor the central answer")))]
pub(super) async fn fetch_private(
    downloads: web::Data<Downloads>,
    vault: web::Data<Vault>,
    req: web::Json<TicketRequest>,
) -> Result<HttpResponse> {
    let ticket: Ticket = req.into_inner().ticket.parse().map_err(|e| {
        use peerdex_proto::ticket::TicketError as T;
        match e {
            // What the document's pattern and lengths forbid: malformed.
            T::NoPrefix | T::NotBase32 { .. } | T::TooShort { .. } | T::TooLong { .. } => {
                Error::InvalidArgument(Invalid::Ticket(e))
            }
            // Of the right form, yet it names no file.
            e => Error::NotFound(Missing::Ticket(e)),
        }
    })?;
    let job = downloads.start_private(ticket, vault.into_inner()).await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// Stop sharing a private file: its key, its ciphertext here (withdrawn
/// from the directory, its pin ended) and the plaintext opened here.
#[utoipa::path(delete, path = "/api/v1/private/{file}", params(("file" = String, Path, description = "the ciphertext's id, 64 lowercase hex characters")),
    responses((status = 200, body = PrivateFile, description = "what was removed"), (status = 400, body = ApiError, description = "not a file id"),
              (status = 404, body = ApiError, description = "this PServer holds no key of that id")))]
pub(super) async fn remove_private(
    store: web::Data<Store>,
    central: web::Data<Central>,
    vault: web::Data<Vault>,
    rt: web::Data<MainRt>,
    id: web::Path<String>,
) -> Result<web::Json<PrivateFile>> {
    let id: FileId = id.parse()?;
    let (s, v) = (store.into_inner(), vault.into_inner());
    let (removed, blob) = web::block(move || {
        let held = s.blob(&id).is_some();
        let removed = v.remove(&id, held)?;
        let blob = removed.as_ref().and_then(|_| s.remove_blob(&id));
        Ok::<_, std::io::Error>((removed, blob))
    })
    .await
    .map_err(Error::from)??;
    let removed = removed.ok_or(Missing::NotPrivate { id })?;
    tracing::info!(file = %id, "private file removed");
    let central: Arc<Central> = central.into_inner();
    let owned = removed.origin == peerdex_proto::private::PrivateOrigin::Owned;
    rt.run(async move {
        if let Some(b) = blob {
            central.unpublish(&[(b.id, b.name)]).await;
        }
        // The owner's pin ends with the file (nothing to do if none).
        if owned && let Err(e) = central.pin(id, 0).await {
            tracing::debug!(file = %id, error = %e, "no pin ended");
        }
        Ok(())
    })
    .await?;
    Ok(web::Json(removed))
}

/// The plaintext of a private file opened here (in the private folder).
#[utoipa::path(get, path = "/api/v1/private/{file}/content", params(("file" = String, Path, description = "the ciphertext's id, 64 lowercase hex characters")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, description = "the plaintext, authenticated when it was opened"),
              (status = 400, body = ApiError, description = "not a file id"),
              (status = 404, body = ApiError, description = "no plaintext of that id in the private folder (fetch it with its ticket first)")))]
pub(super) async fn private_content(
    vault: web::Data<Vault>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id: FileId = id.parse()?;
    let (path, name) = vault.saved(&id).ok_or(Missing::NotOpened { id })?;
    let file = tokio::fs::File::open(&path).await?;
    let size = file.metadata().await?.len();
    let shown = name.as_str().replace('"', "_");
    let mut resp = HttpResponse::Ok();
    resp.content_type("application/octet-stream")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{shown}\""),
        ))
        .insert_header((header::CACHE_CONTROL, crate::peer::conditional::NO_STORE))
        .no_chunking(size);
    if req.method() == actix_web::http::Method::HEAD {
        return Ok(resp.streaming(futures_util::stream::empty::<std::io::Result<bytes::Bytes>>()));
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    Ok(resp.streaming(stream))
}
