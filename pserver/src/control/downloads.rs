//! `/api/v1/downloads` and `/api/v1/events`: download jobs, and their
//! progress (with the wants and their notices) as event streams (SSE or
//! NDJSON).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use peerdex_proto::rest::{ApiError, DownloadRequest, Events, Job, JobList};
use peerdex_proto::types::parse_hyphenated_uuid;

use crate::download::{Downloads, JobHandle};
use crate::error::{Error, Invalid, Missing, Result};
use crate::wants::Wants;

/// Start downloading a file by id or exact name.
#[utoipa::path(post, path = "/api/v1/downloads", request_body = DownloadRequest,
    responses((status = 202, body = Job, description = "the job started; follow it at /api/v1/downloads/{job}/events"), (status = 400, body = ApiError, description = "not exactly one of a valid file_id and name"),
              (status = 403, body = ApiError, description = "a private file's ciphertext (code `needs_ticket`: it opens only with its ticket, through /api/v1/private/fetch); or, as on every operation, a Host header that is not this API's address, a change asked by a page of another site, or a client token of scope read"),
              (status = 404, body = ApiError, description = "no live peer shares it"), (status = 409, body = ApiError, description = "the name matches several contents: see candidates"),
              (status = 429, body = ApiError, description = "the directory or a neighbour rate-limits this peer; see Retry-After"),
              (status = 503, body = ApiError, description = "neither the neighbours nor the central answer")))]
pub(super) async fn start_download(
    downloads: web::Data<Downloads>,
    req: web::Json<DownloadRequest>,
) -> Result<HttpResponse> {
    let job = downloads.start(req.into_inner()).await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// All download jobs, oldest first.
#[utoipa::path(get, path = "/api/v1/downloads", responses((status = 200, body = JobList)))]
pub(super) async fn list_downloads(downloads: web::Data<Downloads>) -> web::Json<JobList> {
    web::Json(JobList {
        jobs: downloads.list(),
    })
}

fn job_handle(downloads: &Downloads, id: &str) -> Result<Arc<JobHandle>> {
    let uuid = parse_hyphenated_uuid(id).ok_or_else(|| {
        Error::from(Invalid::JobId {
            given: id.to_owned(),
        })
    })?;
    downloads
        .get(&uuid)
        .ok_or_else(|| Missing::Job { id: id.to_owned() }.into())
}

/// One job's current state.
#[utoipa::path(get, path = "/api/v1/downloads/{job}", params(("job" = String, Path, description = "a job id (a UUID, as `POST /api/v1/downloads` answers)")), responses((status = 200, body = Job), (status = 400, body = ApiError, description = "not a job id"), (status = 404, body = ApiError, description = "no such job")))]
pub(super) async fn get_download(
    downloads: web::Data<Downloads>,
    job: web::Path<String>,
) -> Result<web::Json<Job>> {
    Ok(web::Json(job_handle(&downloads, &job)?.snapshot()))
}

/// Cancel a running job (its partial bytes are discarded), or remove a
/// finished one. A running job stays listed with its final state, so
/// whoever follows it sees how it ended; deleting it again once it has
/// ended removes it, and its id answers 404 from then on.
#[utoipa::path(delete, path = "/api/v1/downloads/{job}", params(("job" = String, Path, description = "a job id (a UUID, as `POST /api/v1/downloads` answers)")), responses((status = 200, body = Job, description = "the job's last state: a running job is now cancelled (it stays listed, `cancelled`); a finished one (done, failed, cancelled) is removed"), (status = 400, body = ApiError, description = "not a job id"), (status = 404, body = ApiError, description = "no such job")))]
pub(super) async fn cancel_download(
    downloads: web::Data<Downloads>,
    job: web::Path<String>,
) -> Result<web::Json<Job>> {
    let h = job_handle(&downloads, &job)?;
    let last = h.snapshot();
    if last.state.is_final() {
        if let Ok(id) = last.job_id.parse() {
            downloads.forget(&id);
        }
        return Ok(web::Json(last));
    }
    h.cancel();
    let mut rx = h.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|j| j.state.is_final())).await;
    Ok(web::Json(h.snapshot()))
}

/// Follow a job live: one Job per change (at least every second), ending
/// after a final state; as server-sent events or NDJSON (see `Framing`).
#[utoipa::path(get, path = "/api/v1/downloads/{job}/events", params(("job" = String, Path, description = "a job id (a UUID, as `POST /api/v1/downloads` answers)")),
    responses((status = 200, description = "a stream of Jobs: one now, then one on each change (at least every second); it ends after the job's final state. Server-sent events (one `data:` line of JSON per event) unless the request's Accept names application/x-ndjson (then one JSON line per Job). Close the connection to stop following early",
               content((Job = "text/event-stream"), (Job = "application/x-ndjson"))),
              (status = 400, body = ApiError, description = "not a job id"), (status = 404, body = ApiError, description = "no such job"),
              (status = 406, body = ApiError, description = "the Accept header names neither text/event-stream nor application/x-ndjson")))]
pub(super) async fn download_events(
    downloads: web::Data<Downloads>,
    req: HttpRequest,
    job: web::Path<String>,
) -> Result<HttpResponse> {
    let framing = Framing::of(&req)?;
    let h = job_handle(&downloads, &job)?;
    Ok(framing.respond(job_stream(h, framing)))
}

/// Follow every download job and every want: one Events (the jobs as
/// `GET /api/v1/downloads`, the wants as `GET /api/v1/wants`, the want
/// notices kept) at once, then after every change (at most four a
/// second; notices only those not sent yet on this stream) and at least
/// every 15 s; as server-sent events or NDJSON (see `Framing`). Never
/// ends while the PServer runs: the client closes it.
#[utoipa::path(get, path = "/api/v1/events",
    responses((status = 200, description = "a stream that never ends while the PServer runs (close the connection to stop): an Events (every job, every want, the want notices kept) now, then one on each change (at most four a second; notices not sent before on this stream) and at least every 15 s. Server-sent events (one `data:` line of JSON per event) unless the request's Accept names application/x-ndjson (then one JSON line per Events)",
               content((Events = "text/event-stream"), (Events = "application/x-ndjson"))),
              (status = 406, body = ApiError, description = "the Accept header names neither text/event-stream nor application/x-ndjson")))]
pub(super) async fn events(
    downloads: web::Data<Downloads>,
    wants: web::Data<Wants>,
    req: HttpRequest,
) -> Result<HttpResponse> {
    let framing = Framing::of(&req)?;
    let (jobs_rx, wants_rx) = (downloads.watch(), wants.subscribe());
    let stream = futures_util::stream::unfold(
        (downloads, wants, jobs_rx, wants_rx, true, 0u64),
        move |(downloads, wants, mut jobs_rx, mut wants_rx, first, sent)| async move {
            if !first {
                let changed = tokio::time::timeout(EVENTS_KEEPALIVE, async {
                    tokio::select! {
                        r = jobs_rx.changed() => r.is_ok(),
                        r = wants_rx.changed() => r.is_ok(),
                    }
                })
                .await;
                if let Ok(false) = changed {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(250)).await; // coalesce bursts
            }
            if downloads.stopping() {
                return None;
            }
            jobs_rx.mark_unchanged();
            wants_rx.mark_unchanged();
            let notices = wants.notices_after(sent);
            let sent = notices.last().map_or(sent, |n| n.seq);
            let events = Events {
                jobs: downloads.list(),
                wants: wants.list().wants,
                notices,
            };
            Some((
                Ok::<_, actix_web::Error>(framing.frame(&events)),
                (downloads, wants, jobs_rx, wants_rx, false, sent),
            ))
        },
    );
    Ok(framing.respond(stream))
}

/// Longest quiet time on `GET /api/v1/events`.
const EVENTS_KEEPALIVE: Duration = Duration::from_secs(15);

/// How an event stream is framed. Server-sent events (`text/event-stream`)
/// unless the client asks for newline-delimited JSON: SSE is the format
/// generic HTTP clients and tools know never to wait for the end of (and
/// browsers' `EventSource` reads); the CLI and the web UI ask for NDJSON
/// with `Accept: application/x-ndjson`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Sse,
    Ndjson,
}

impl Framing {
    const NDJSON: &str = "application/x-ndjson";
    const SSE: &str = "text/event-stream";

    /// From the `Accept` header: NDJSON when it names it (or only
    /// `application/*`), SSE when it names SSE, `text/*` or `*/*`, or is
    /// absent; 406 when it allows neither. Ranges with `q=0` do not count.
    fn of(req: &HttpRequest) -> Result<Self> {
        let Some(accept) = req.headers().get(header::ACCEPT) else {
            return Ok(Self::Sse);
        };
        let accept = accept.to_str().unwrap_or("");
        let ranges: Vec<String> = accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';');
                let media = parts.next()?.trim().to_ascii_lowercase();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                (!refused && !media.is_empty()).then_some(media)
            })
            .collect();
        let named = |m: &str| ranges.iter().any(|r| r == m);
        if ranges.is_empty() && accept.trim().is_empty() {
            Ok(Self::Sse)
        } else if named(Self::NDJSON) {
            Ok(Self::Ndjson)
        } else if named(Self::SSE) || named("text/*") || named("*/*") {
            Ok(Self::Sse)
        } else if named("application/*") {
            Ok(Self::Ndjson)
        } else {
            Err(Error::NotAcceptable {
                accept: accept.to_owned(),
                sse: Self::SSE,
                ndjson: Self::NDJSON,
            })
        }
    }

    /// One value as one event (SSE) or one line (NDJSON); the JSON has no
    /// newline, so it fits one `data:` line.
    fn frame(self, value: &impl serde::Serialize) -> bytes::Bytes {
        let json = serde_json::to_vec(value).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 8);
        match self {
            Self::Sse => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"\n\n");
            }
            Self::Ndjson => {
                out.extend_from_slice(&json);
                out.push(b'\n');
            }
        }
        out.into()
    }

    fn respond(
        self,
        stream: impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, actix_web::Error>>
        + 'static,
    ) -> HttpResponse {
        HttpResponse::Ok()
            .content_type(match self {
                Self::Sse => Self::SSE,
                Self::Ndjson => Self::NDJSON,
            })
            .insert_header(("X-Accel-Buffering", "no"))
            .streaming(stream)
    }
}

fn job_stream(
    h: Arc<JobHandle>,
    framing: Framing,
) -> impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, actix_web::Error>> {
    let rx = h.subscribe();
    futures_util::stream::unfold((h, rx, false), move |(h, mut rx, done)| async move {
        if done {
            return None;
        }
        rx.mark_unchanged();
        let job = h.snapshot();
        let last = job.state.is_final();
        let frame = framing.frame(&job);
        if !last {
            // Wait for a change, but emit at least every second.
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
            tokio::time::sleep(Duration::from_millis(50)).await; // coalesce bursts
        }
        Some((Ok(frame), (h, rx, last)))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_streams_are_framed_as_asked() {
        use super::Framing::{self, Ndjson, Sse};
        use actix_web::test::TestRequest;
        let of = |accept: Option<&str>| {
            let mut r = TestRequest::default();
            if let Some(a) = accept {
                r = r.insert_header((actix_web::http::header::ACCEPT, a));
            }
            Framing::of(&r.to_http_request()).ok()
        };
        assert_eq!(of(None), Some(Sse));
        assert_eq!(of(Some("*/*")), Some(Sse));
        assert_eq!(of(Some("text/event-stream")), Some(Sse));
        assert_eq!(of(Some("application/x-ndjson")), Some(Ndjson));
        assert_eq!(
            of(Some("text/event-stream;q=0.5, Application/X-NDJSON")),
            Some(Ndjson)
        );
        assert_eq!(of(Some("application/*")), Some(Ndjson));
        assert_eq!(of(Some("application/json")), None);
        assert_eq!(of(Some("application/x-ndjson;q=0")), None);
        let value = serde_json::json!({"jobs": []});
        assert_eq!(&Sse.frame(&value)[..], b"data: {\"jobs\":[]}\n\n");
        assert_eq!(&Ndjson.frame(&value)[..], b"{\"jobs\":[]}\n");
    }
}
