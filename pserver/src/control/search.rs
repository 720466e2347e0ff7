//! `GET /api/v1/search` and `GET /api/v1/locate`: lookups through the
//! neighbours (or the central), for the client.

use actix_web::web;
use peerdex_proto::rest::{
    ApiError, LocateQuery, LocateResult, MAX_SEARCH_LIMIT, SearchQuery, SearchResults,
};
use peerdex_proto::types::{MAX_PATH_BYTES, MAX_QUERY_BYTES};

use crate::error::{Invalid, Result};
use crate::link::Central;
use crate::link::lookup::Lookup;
use crate::rt::MainRt;

/// Search the network (through a neighbour, or the central if none answers).
#[utoipa::path(get, path = "/api/v1/search", params(SearchQuery),
    responses((status = 200, body = SearchResults), (status = 400, body = ApiError, description = "outside the declared bounds: a query of only whitespace or over 1024 bytes (UTF-8) or 16 distinct words, a limit over 10000, a page token that is not hex of 36 to 291 bytes"),
              (status = 429, body = ApiError, description = "the directory or a neighbour rate-limits this peer; see Retry-After"),
              (status = 503, body = ApiError, description = "neither the neighbours nor the central answer")))]
pub(super) async fn search(
    central: web::Data<Central>,
    lookup: web::Data<Lookup>,
    rt: web::Data<MainRt>,
    q: web::Query<SearchQuery>,
) -> Result<web::Json<SearchResults>> {
    let q = q.into_inner();
    if q.limit.is_some_and(|l| l > MAX_SEARCH_LIMIT) {
        return Err(Invalid::SearchLimit.into());
    }
    if q.q.trim().is_empty() {
        return Err(Invalid::EmptyQuery.into());
    }
    // The page token is the directory's, but its form is the document's:
    // checked here, so a bad one is refused whatever the query (the
    // directory answers a query without words before it reads the token).
    if let Some(page) = q.page.as_deref().filter(|p| !p.is_empty()) {
        let bytes = page.len() / 2;
        if page.len() % 2 != 0
            || !page.bytes().all(|b| b.is_ascii_hexdigit())
            || !(36..=36 + MAX_PATH_BYTES).contains(&bytes)
        {
            return Err(Invalid::PageToken.into());
        }
    }
    if q.q.len() > MAX_QUERY_BYTES {
        return Err(Invalid::QueryTooLong { bytes: q.q.len() }.into());
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
pub(super) async fn locate(
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
