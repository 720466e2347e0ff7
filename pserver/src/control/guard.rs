//! Who may talk to the control API: the `Host` check (DNS rebinding),
//! the bearer token (`PSERVER_API_TOKEN` or a client token with its
//! scope) and the same-origin check of requests that change things.

use std::net::{IpAddr, SocketAddr};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::web;
use peerdex_proto::network::constant_time_eq;

use super::Control;
use crate::control::tokens::Scope;
use crate::error::{Error, Forbidden, Result, Unauthorized};

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
        return Err(Error::from(Forbidden::Host {
            host: host.to_owned(),
        })
        .into());
    }
    if let Err(why) = same_origin(&req, host) {
        return Err(Error::from(why).into());
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if safe && super::webui::is_asset(req.path()) {
        return next.call(req).await;
    }
    let given = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(h) => Some(
            h.to_str()
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| Error::from(Unauthorized::BadHeader))?,
        ),
    };
    match given {
        // Without a token: full access only where none is configured (on
        // loopback without PSERVER_API_TOKEN).
        None if control.api_token.is_some() => {
            return Err(Error::from(Unauthorized::MissingToken).into());
        }
        None => {}
        // The static token: full access.
        Some(g)
            if control
                .api_token
                .as_ref()
                .is_some_and(|t| constant_time_eq(g.as_bytes(), t.as_bytes())) => {}
        // A client token: checked, and limits the request to its scope,
        // on loopback too.
        Some(g) if g.matches('.').count() == 2 => {
            let claims = control
                .tokens
                .check(g)
                .map_err(|e| Error::from(Unauthorized::from(e)))?;
            if claims.scope == Scope::Read && !safe {
                return Err(Error::from(Forbidden::ReadOnly {
                    method: req.method().to_string(),
                    path: req.path().to_owned(),
                    name: claims.sub,
                })
                .into());
            }
        }
        Some(_) => {
            return Err(Error::from(Unauthorized::WrongToken).into());
        }
    }
    next.call(req).await
}

/// A request that changes something (any method but GET, HEAD, OPTIONS)
/// must come from this API's own origin or from no browser page at all: a
/// page of another site (a cross-site form, a fetch from elsewhere) is
/// refused before anything happens. Browsers send `Origin` on such requests
/// and `Sec-Fetch-Site` on all of them; the CLI sends neither. Together with
/// the JSON body `POST /api/v1/downloads` requires (a form cannot send one)
/// and the `Host` check against DNS rebinding, this is the CSRF defence.
fn same_origin(req: &ServiceRequest, host: &str) -> std::result::Result<(), Forbidden> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && matches!(site, "cross-site" | "same-site")
    {
        return Err(Forbidden::CrossSite {
            method: req.method().to_string(),
            site: site.to_owned(),
        });
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let ours = ["http://", "https://"].iter().any(|scheme| {
            origin
                .strip_prefix(scheme)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
        });
        if !ours {
            return Err(Forbidden::Origin {
                method: req.method().to_string(),
                origin: origin.to_owned(),
                host: host.to_owned(),
            });
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
