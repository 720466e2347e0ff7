//! `/api/v1/wants`: wanted files (see `crate::wants`). Make one, list
//! them, remove one; what happens to them is in `GET /api/v1/events`.

use actix_web::{HttpResponse, web};
use peerdex_proto::rest::{ApiError, Want, WantList, WantRequest};

use peerdex_proto::types::parse_hyphenated_uuid;

use crate::error::{Error, Missing, Result};
use crate::wants::Wants;

/// Want a file (by id, or an exact name) or a query: downloaded (or
/// notified, with `"download": false`) the moment a holder appears.
#[utoipa::path(post, path = "/api/v1/wants", request_body = WantRequest,
    responses((status = 201, body = Want, description = "the want: waiting (watched at the directory), or done at once when the file is in the share folder already"),
              (status = 400, body = ApiError, description = "not exactly one of file and query, a file that is neither an id nor a valid name, a blank query, one over 1024 bytes or 16 words"),
              (status = 429, body = ApiError, description = "PSERVER_MAX_WANTS wants are waiting already: remove one first")))]
pub(super) async fn add_want(
    wants: web::Data<Wants>,
    req: web::Json<WantRequest>,
) -> Result<HttpResponse> {
    let want = wants.add(req.into_inner())?;
    Ok(HttpResponse::Created().json(want))
}

/// Every want, with its state (waiting, matched, ambiguous, downloading,
/// done) and what it matched.
#[utoipa::path(get, path = "/api/v1/wants", responses((status = 200, body = WantList)))]
pub(super) async fn list_wants(wants: web::Data<Wants>) -> web::Json<WantList> {
    web::Json(wants.list())
}

/// Stop wanting (a download it started goes on: cancel it as a job).
#[utoipa::path(delete, path = "/api/v1/wants/{want}", params(("want" = String, Path, description = "a want id (a UUID, as `POST /api/v1/wants` answers)")),
    responses((status = 200, body = Want, description = "the want removed"),
              (status = 400, body = ApiError, description = "not a want id"),
              (status = 404, body = ApiError, description = "no such want")))]
pub(super) async fn remove_want(
    wants: web::Data<Wants>,
    path: web::Path<String>,
) -> Result<web::Json<Want>> {
    let id = path.into_inner();
    // Want ids are UUIDs: anything else names no want (404, as an
    // unknown UUID), whatever a client took for one.
    let uuid =
        parse_hyphenated_uuid(&id).ok_or_else(|| Error::from(Missing::Want { id: id.clone() }))?;
    Ok(web::Json(wants.remove(&uuid.hyphenated().to_string())?))
}
