//! Conditional requests (RFC 9110 §13) and cache policy, for every response
//! that has a validator.
//!
//! Validators are strong ETags derived from the content id: the bytes under
//! `/peer/v1/files/{id}` *are* the file whose BLAKE3 is `id`, so they can
//! never change under their URL; such responses are cacheable by anyone for
//! a year ([`IMMUTABLE`]). The control API's copy of the same bytes is
//! [`PRIVATE`]: only the user's own agent may keep it. Everything else (live
//! state, JSON, errors) is [`NO_STORE`].
//!
//! Order of evaluation (RFC 9110 §13.2.2): `If-Match` (strong comparison,
//! 412 when nothing matches), then `If-None-Match` (weak comparison, 304
//! for GET and HEAD), then `If-Range` on a `Range` request (strong
//! comparison; a date never matches, since no `Last-Modified` is sent, so
//! the full representation is sent instead of a part).

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderValue};

use crate::error::{Error, Result};

/// Content-addressed bytes, served to other peers.
pub(crate) const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Content-addressed bytes, served to this peer's own user.
pub(crate) const PRIVATE: &str = "private, max-age=31536000, immutable";
/// Live state: never stored by any cache.
pub(crate) const NO_STORE: &str = "no-store";

/// What the preconditions of a GET or HEAD allow.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Answer 304 Not Modified.
    NotModified,
    /// Send the representation; `range` says whether a `Range` header may
    /// be honoured (`If-Range`, when present, matched).
    Send { range: bool },
}

/// Evaluate the preconditions of a GET or HEAD of a representation whose
/// strong ETag is `"{tag}"`. `Err(PreconditionFailed)` when `If-Match`
/// does not match.
pub(crate) fn evaluate(req: &HttpRequest, tag: &str) -> Result<Verdict> {
    let h = req.headers();
    if let Some(v) = h.get(header::IF_MATCH)
        && !list_matches(v, tag, true)
    {
        return Err(Error::PreconditionFailed {
            if_match: v.to_str().unwrap_or("(not text)").to_owned(),
            etag: tag.to_owned(),
        });
    }
    if let Some(v) = h.get(header::IF_NONE_MATCH)
        && list_matches(v, tag, false)
    {
        return Ok(Verdict::NotModified);
    }
    let range = match h.get(header::IF_RANGE) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| opaque(s.trim(), true))
            .is_some_and(|t| t == tag),
    };
    Ok(Verdict::Send { range })
}

/// Does an `If-Match` / `If-None-Match` list match `tag`? `*` matches any
/// current representation. Strong comparison ignores weak tags.
fn list_matches(v: &HeaderValue, tag: &str, strong: bool) -> bool {
    let Ok(s) = v.to_str() else { return false };
    if s.trim() == "*" {
        return true;
    }
    s.split(',')
        .filter_map(|t| opaque(t.trim(), strong))
        .any(|t| t == tag)
}

/// The opaque part of one entity tag (`"x"` or `W/"x"`); `None` if it is
/// malformed, or weak under strong comparison.
fn opaque(t: &str, strong: bool) -> Option<&str> {
    let (weak, quoted) = match t.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    if weak && strong {
        return None;
    }
    quoted.strip_prefix('"')?.strip_suffix('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn verdict(headers: &[(&str, &str)]) -> Result<Verdict> {
        let mut r = TestRequest::get();
        for (k, v) in headers {
            r = r.insert_header((*k, *v));
        }
        evaluate(&r.to_http_request(), "abc")
    }

    #[test]
    fn preconditions_in_order() {
        use Verdict::*;
        assert_eq!(verdict(&[]).unwrap(), Send { range: true });
        assert_eq!(
            verdict(&[("If-None-Match", "\"abc\"")]).unwrap(),
            NotModified
        );
        assert_eq!(
            verdict(&[("If-None-Match", "\"x\", W/\"abc\"")]).unwrap(),
            NotModified
        );
        assert_eq!(verdict(&[("If-None-Match", "*")]).unwrap(), NotModified);
        assert_eq!(
            verdict(&[("If-None-Match", "\"abd\"")]).unwrap(),
            Send { range: true }
        );
        assert_eq!(
            verdict(&[("If-Match", "\"abc\"")]).unwrap(),
            Send { range: true }
        );
        assert_eq!(verdict(&[("If-Match", "*")]).unwrap(), Send { range: true });
        for bad in ["\"abd\"", "W/\"abc\"", "abc", ""] {
            assert!(
                matches!(
                    verdict(&[("If-Match", bad)]),
                    Err(Error::PreconditionFailed { .. })
                ),
                "{bad}"
            );
        }
        // If-Match is judged before If-None-Match.
        assert!(verdict(&[("If-Match", "\"x\""), ("If-None-Match", "\"abc\"")]).is_err());
        assert_eq!(
            verdict(&[("If-Range", "\"abc\"")]).unwrap(),
            Send { range: true }
        );
        for other in ["\"abd\"", "W/\"abc\"", "Sat, 01 Jan 2000 00:00:00 GMT"] {
            assert_eq!(
                verdict(&[("If-Range", other)]).unwrap(),
                Send { range: false },
                "{other}"
            );
        }
    }
}
