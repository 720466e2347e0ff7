//! Pins through the control API: ask the directory to keep a number of
//! live copies of a file (`POST /api/v1/pins`), and list this peer's pins
//! (`GET /api/v1/pins`). The directory keeps the pins and plans the
//! copies; this PServer names the file and speaks for its user.
//!
//! A file is named by its id, or by an exact name: the user's own shared
//! files first (the usual case: `peerdex upload --replicas 3 FILE` pins
//! what was just uploaded), then the directory, where a name carried by
//! several contents is a 409 with the candidates, as for downloads.

use actix_web::web;
use peerdex_proto::rest::{ApiError, Candidate, PinList, PinRequest, PinStatus};
use peerdex_proto::types::MAX_REPLICAS;
use peerdex_proto::{FileId, FileName};
use tonic::Code;

use crate::error::{Error, Forbidden, Invalid, Missing, Result, Throttled, Unavailable};
use crate::link::lookup::{LocateTarget, Lookup};
use crate::link::{CallError, Central};
use crate::rt::MainRt;
use crate::store::Store;

/// Pin (or unpin, with 0 or 1) the file `req.file` names.
pub(crate) async fn pin_file(
    store: &Store,
    central: &Central,
    lookup: &Lookup,
    req: PinRequest,
) -> Result<PinStatus> {
    let id = resolve(store, central, lookup, &req.file).await?;
    let pin = central.pin(id, req.replicas).await.map_err(pin_error)?;
    tracing::info!(file = %id, replicas = req.replicas, "pin set at the directory");
    Ok(pin.into())
}

/// The pins this peer set, with their state.
pub(crate) async fn list(central: &Central) -> Result<PinList> {
    let pins = central.pins().await.map_err(pin_error)?;
    Ok(PinList {
        pins: pins.into_iter().map(Into::into).collect(),
    })
}

/// The file `file` names: an id as is; a name among our shared files,
/// else at the directory (exactly one content must carry it).
async fn resolve(store: &Store, central: &Central, lookup: &Lookup, file: &str) -> Result<FileId> {
    if let Ok(id) = file.parse::<FileId>() {
        return Ok(id);
    }
    let name: FileName = file
        .parse()
        .map_err(|e| Error::InvalidArgument(Invalid::PinFile(e)))?;
    if let Some(e) = store.by_name(&name) {
        return Ok(e.id);
    }
    let mut located = lookup
        .locate(central, &LocateTarget::Name(name.clone()))
        .await?;
    located.sort_by(|a, b| a.file_id.cmp(&b.file_id));
    located.dedup_by(|a, b| a.file_id == b.file_id);
    match located.len() {
        0 => Err(Missing::NoHolderNamed { name }.into()),
        1 => Ok(located[0].file_id.parse()?),
        count => Err(Error::Ambiguous {
            name,
            count,
            what: "pin",
            candidates: located
                .iter()
                .map(|f| Candidate {
                    file_id: f.file_id.clone(),
                    size: f.size,
                    holders: f.holders.len() as u32,
                })
                .collect(),
        }),
    }
}

/// The directory's answer to Pin or Pins, as ours. RESOURCE_EXHAUSTED is
/// a pin limit (its message names it), unless it carries `retry-after`
/// (a rate limit: 429 with Retry-After).
fn pin_error(s: CallError) -> Error {
    let msg = s.message.clone();
    match s.code {
        Code::InvalidArgument | Code::OutOfRange => Invalid::Central { message: msg }.into(),
        Code::NotFound => Missing::Central { message: msg }.into(),
        Code::PermissionDenied => Forbidden::Central { message: msg }.into(),
        Code::ResourceExhausted => match s.retry_after {
            Some(secs) => Error::TooManyRequests {
                why: Throttled::Central { message: msg },
                retry_after: secs.clamp(1, 3600),
            },
            None => Error::LimitReached { message: msg },
        },
        Code::Unimplemented => Error::PinsUnsupported { message: msg },
        Code::Unauthenticated | Code::FailedPrecondition => {
            Unavailable::NotJoined { message: msg }.into()
        }
        _ => Unavailable::Central { why: s.explained() }.into(),
    }
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
pub(super) async fn pin(
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
        return Err(Invalid::Replicas {
            given: req.replicas,
        }
        .into());
    }
    Ok(web::Json(
        rt.run(async move { pin_file(&store, &central, &lookup, req).await })
            .await?,
    ))
}

/// The pins this PServer set, with each file's wanted and live copies.
#[utoipa::path(get, path = "/api/v1/pins",
    responses((status = 200, body = PinList),
              (status = 501, body = ApiError, description = "the central directory keeps no pins (an older version)"),
              (status = 503, body = ApiError, description = "the central directory does not answer, or this PServer is not joined right now")))]
pub(super) async fn list_pins(
    central: web::Data<Central>,
    rt: web::Data<MainRt>,
) -> Result<web::Json<PinList>> {
    let central = central.into_inner();
    Ok(web::Json(
        rt.run(async move { list(&central).await }).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_answers_map_to_api_errors() {
        let e = |s: tonic::Status| pin_error(CallError::from(s));
        assert!(matches!(
            e(tonic::Status::invalid_argument("replicas 9 is above CENTRAL_MAX_REPLICAS (5)")),
            Error::InvalidArgument(Invalid::Central { message: m }) if m.contains("CENTRAL_MAX_REPLICAS")
        ));
        assert!(matches!(
            e(tonic::Status::not_found("x")),
            Error::NotFound(Missing::Central { .. })
        ));
        assert!(matches!(
            e(tonic::Status::resource_exhausted("CENTRAL_MAX_PINS_PER_PEER (2) reached")),
            Error::LimitReached { message: m } if m.contains("CENTRAL_MAX_PINS_PER_PEER")
        ));
        let mut rate = tonic::Status::resource_exhausted("slow down");
        rate.metadata_mut()
            .insert("retry-after", "4".parse().unwrap());
        assert!(matches!(
            e(rate),
            Error::TooManyRequests {
                why: Throttled::Central { .. },
                retry_after: 4
            }
        ));
        assert!(matches!(
            e(tonic::Status::unimplemented("")),
            Error::PinsUnsupported { .. }
        ));
        assert!(matches!(
            e(tonic::Status::unauthenticated("")),
            Error::Unavailable(Unavailable::NotJoined { .. })
        ));
        assert!(matches!(
            e(tonic::Status::unavailable("down")),
            Error::Unavailable(Unavailable::Central { .. })
        ));
    }
}
