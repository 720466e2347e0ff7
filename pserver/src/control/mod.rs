//! The control API (`/api/v1`) used by the local `peerdex` client.
//!
//! Guarded by a `Host` check (DNS-rebinding defence: only IP literals and
//! `localhost`, and only our own address when bound to a specific one) and,
//! when `PSERVER_API_TOKEN` is set, a bearer token on every request.

mod downloads;
mod files;
mod guard;
mod openapi;
pub(crate) mod pins;
mod private;
mod search;
mod status;
pub mod tokens;
mod wants;
mod webui;

use downloads::{
    cancel_download, download_events, events, get_download, list_downloads, start_download,
};
use files::{file_content, list_files, remove_file, upload};
pub(crate) use guard::guard;
use openapi::openapi;
use pins::{list_pins, pin};
use private::{fetch_private, list_private, private_content, remove_private, upload_private};
use search::{locate, search};
use status::{metrics, status};
use wants::{add_want, list_wants, remove_want};

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use peerdex_proto::{PeerId, PeerUrl};

use crate::control::tokens::ClientTokens;
use crate::error::{Error, Missing};

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

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    let content = content_guard();
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
            )
            .service(
                resource("/wants", "GET, POST")
                    .route(web::post().to(add_want))
                    .route(web::get().to(list_wants)),
            )
            .service(resource("/wants/{want}", "DELETE").route(web::delete().to(remove_want)))
            .service(
                resource("/private", "GET, POST")
                    .route(web::post().to(upload_private))
                    .route(web::get().to(list_private)),
            )
            .service(resource("/private/fetch", "POST").route(web::post().to(fetch_private)))
            .service(resource("/private/{file}", "DELETE").route(web::delete().to(remove_private)))
            .service(
                resource("/private/{file}/content", "GET, HEAD")
                    .route(web::route().guard(content_guard()).to(private_content)),
            ),
    )
    .service(resource("/metrics", "GET").route(web::get().to(metrics)))
    .configure(webui::routes)
    .default_service(web::to(|| async {
        Err::<HttpResponse, _>(Error::from(Missing::ControlEndpoint))
    }));
}

/// GET or HEAD.
fn content_guard() -> actix_web::guard::AnyGuard {
    actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head())
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
