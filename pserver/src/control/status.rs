//! `GET /api/v1/status` and `GET /metrics`: what this PServer reports
//! about itself.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use peerdex_proto::rest::{
    Hashing, LeaseRenewals, MAX_UNSHARED_LISTED, NeighbourStatus, Status, StatusQuery, UnsharedFile,
};

use super::Control;
use crate::download::Downloads;
use crate::download::replicas::Replicas;
use crate::error::Result;
use crate::link::lookup::Lookup;
use crate::link::{Central, NotListed};
use crate::metrics::{Live, Metrics};
use crate::peer::uploads::Uploads;
use crate::relay::{Reach, Relay};
use crate::rt::MainRt;
use crate::store::Store;
use crate::wants::Wants;

/// Peer id, URLs, central and neighbour health, lease age and counts.
#[utoipa::path(get, path = "/api/v1/status", params(StatusQuery), responses((status = 200, body = Status), (status = 400, body = peerdex_proto::rest::ApiError, description = "a query string that does not parse (all_unshared is true or false)")))]
#[allow(clippy::too_many_arguments)]
pub(super) async fn status(
    q: web::Query<StatusQuery>,
    control: web::Data<Control>,
    store: web::Data<Store>,
    central: web::Data<Central>,
    lookup: web::Data<Lookup>,
    uploads: web::Data<Uploads>,
    downloads: web::Data<Downloads>,
    rt: web::Data<MainRt>,
    metrics: web::Data<Metrics>,
    replicas: web::Data<Replicas>,
    nat: (web::Data<Reach>, web::Data<Arc<Relay>>),
) -> Result<web::Json<Status>> {
    let (reach, relay) = nat;
    let probe = lookup.clone().into_inner();
    let neighbours = rt.run(async move { Ok(probe.probe().await) }).await?;
    let (files, bytes) = store.totals();
    let shown = if q.all_unshared {
        MAX_UNSHARED_LISTED
    } else {
        crate::store::MAX_UNSHARED_SHOWN
    };
    let (unshared_files, unshared) = store.unshared(shown);
    let not_listed = central.not_listed();
    Ok(web::Json(Status {
        peer_id: control.peer_id.to_string(),
        public_url: control.public_url.to_string(),
        central_url: central.url().to_owned(),
        centrals: central.urls(),
        central_name: central.central_name(),
        leader: central.leader(),
        island: central.island(),
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
        not_listed_files: not_listed.files,
        not_listed_reason: (not_listed.files > 0).then(|| not_listed_reason(not_listed)),
        hashing: store.hashing().map(|(done, total)| Hashing { done, total }),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        reachability: reach.status(relay.enabled().then(|| relay.peers() as u32)),
    }))
}

/// Why some shared files are not listed by the directory, and what to do.
fn not_listed_reason(n: NotListed) -> String {
    let limit = match n.max_inventory {
        0 => "its limit of files per peer".to_owned(),
        m => format!("its limit of {m} files per peer"),
    };
    format!(
        "the directory lists {limit} (CENTRAL_MAX_INVENTORY); the first files are listed, \
         these are not: share fewer files, or ask the directory's operator to raise the limit"
    )
}

/// This PServer's metrics in the Prometheus text format (behind the same
/// Host check and token as the rest of this API; see `crate::metrics`).
pub(super) async fn metrics(
    metrics: web::Data<Metrics>,
    store: web::Data<Store>,
    uploads: web::Data<Uploads>,
    downloads: web::Data<Downloads>,
    replicas: web::Data<Replicas>,
    wants: web::Data<Wants>,
    nat: (web::Data<Reach>, web::Data<Arc<Relay>>),
) -> HttpResponse {
    let (reach, relay) = nat;
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
        wants: wants.by_state(),
        relay_peers: relay.peers(),
        reachable: reach.reachable(),
    });
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(text)
}
