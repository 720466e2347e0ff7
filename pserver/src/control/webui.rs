//! The web UI: a single page and its script, style and icon, compiled into
//! the binary from `pserver/ui/` and served at `/` of the control API.
//!
//! The assets hold no data and no secret, so they are served without the
//! bearer token (the `Host` check still applies): a page opened without a
//! valid token asks for one and keeps it in the browser's session storage.
//! Everything the page shows comes from the same `/api/v1` as the CLI, with
//! the token.
//!
//! Served with a Content-Security-Policy that allows only these assets
//! (no inline script, no other origin), `frame-ancestors 'none'` against
//! clickjacking, `nosniff`, and a strong ETag (`no-cache`: revalidated on
//! each load, so a new build is picked up at once).

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::{Error, Result};
use crate::peer::conditional::{self, Verdict};

/// The policy of every asset: only our own script, style and images, API
/// calls to this origin, never framed, no forms posted anywhere.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../ui/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../ui/app.css"),
    },
    Asset {
        path: "/ui/icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../ui/icon.svg"),
    },
];

/// Each asset's strong ETag: its BLAKE3, shortened.
static TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| blake3::hash(a.body.as_bytes()).to_hex()[..32].to_owned())
        .collect()
});

/// Is `path` one of the UI's assets (served without the token)?
pub(crate) fn is_asset(path: &str) -> bool {
    path == "/index.html" || ASSETS.iter().any(|a| a.path == path)
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    for path in ASSETS.iter().map(|a| a.path).chain(["/index.html"]) {
        cfg.service(
            web::resource(path)
                .route(
                    web::route()
                        .guard(
                            actix_web::guard::Any(actix_web::guard::Get())
                                .or(actix_web::guard::Head()),
                        )
                        .to(asset),
                )
                .default_service(web::to(|req: HttpRequest| async move {
                    Err::<HttpResponse, _>(Error::MethodNotAllowed {
                        method: req.method().to_string(),
                        allow: "GET, HEAD",
                    })
                })),
        );
    }
}

async fn asset(req: HttpRequest) -> Result<HttpResponse> {
    let path = match req.path() {
        "/index.html" => "/",
        p => p,
    };
    let i = ASSETS.iter().position(|a| a.path == path).ok_or_else(|| {
        Error::from(crate::error::Missing::Asset {
            path: path.to_owned(),
        })
    })?;
    let (a, tag) = (&ASSETS[i], &TAGS[i]);
    let fresh = conditional::evaluate(&req, tag)? == Verdict::NotModified;
    let mut resp = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    resp.insert_header((header::ETAG, format!("\"{tag}\"")))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if fresh {
        return Ok(resp.finish());
    }
    Ok(resp.content_type(a.content_type).body(a.body))
}
