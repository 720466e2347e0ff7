//! A typed HTTP client for a PServer's control API (`/api/v1`).
//!
//! Every answer is decoded into the DTOs of [`peerdex_proto::rest`]; every
//! failure becomes an [`Error`] that says what went wrong and what to do. The
//! client holds no state besides a connection pool, so it is cheap to clone
//! (a job's event stream keeps its own copy).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use peerdex_proto::private::{PrivateFile, PrivateList, TicketRequest};
use peerdex_proto::rest::{
    ApiError, DownloadRequest, FileInfo, FileList, Job, JobList, LocateQuery, LocateResult,
    PinList, PinRequest, PinStatus, SearchQuery, SearchResults, Status, Want, WantList,
    WantRequest,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url, header};
use serde::de::DeserializeOwned;

/// Default address of the control API (what `pserver` binds by default).
pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

/// How long an idle pooled connection is kept: shorter than the PServer's
/// keep-alive (5 s, actix-web's default).
const POOL_IDLE: Duration = Duration::from_secs(2);

/// Largest single line accepted on a job's event stream (a serialized [`Job`]).
const MAX_EVENT_LINE: usize = 1 << 20;

/// Why a control-API call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection was made but TLS failed (untrusted or wrong
    /// certificate, TLS against plaintext or the other way round); the
    /// message says which and what to set.
    #[error("{message}")]
    Tls {
        message: String,
        #[source]
        source: reqwest::Error,
    },
    /// Nothing answered at the URL (connection refused, unknown host, connect timeout).
    #[error(
        "cannot reach PServer at {url} — is `pserver` running? set PEERDEX_PSERVER_URL or pass --pserver"
    )]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The PServer stopped answering in the middle of a call.
    #[error(
        "the connection to the PServer at {url} broke during the request — is `pserver` still running?"
    )]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The PServer answered with an [`ApiError`].
    #[error("{}", .error.message)]
    Api { status: StatusCode, error: ApiError },
    /// Something answered, but not with the control API's JSON.
    #[error(
        "{url} answered {status} with something that is not the PServer control API — check --pserver / PEERDEX_PSERVER_URL"
    )]
    BadResponse {
        url: String,
        status: StatusCode,
        #[source]
        source: Option<serde_json::Error>,
    },
}

impl Error {
    /// The [`ApiError`] the PServer sent, if that is what this is.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Error::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The HTTP status of an [`ApiError`] answer or of an answer that was
    /// not the control API's JSON; `None` when no answer came.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } | Error::BadResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A stable machine-readable code: the server's code for API errors,
    /// `unreachable`, `transport` or `bad_response` otherwise.
    pub fn code(&self) -> &str {
        match self {
            Error::Unreachable { .. } => "unreachable",
            Error::Tls { .. } => "tls",
            Error::Transport { .. } => "transport",
            Error::Api { error, .. } => &error.code,
            Error::BadResponse { .. } => "bad_response",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Outcome of an upload: the stored file, and whether it is new (201) or was
/// already shared with identical content under that name (200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub file: FileInfo,
    pub created: bool,
}

/// A client for one PServer's control API.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for the control API at `base` (e.g. `http://127.0.0.1:7070`),
    /// sending `Authorization: Bearer <token>` when a token is given.
    pub fn new(base: Url, token: Option<String>) -> Self {
        Self::with_roots(base, token, Vec::new())
    }

    /// [`Client::new`] trusting `roots` (PEERDEX_CA_FILE) besides the
    /// system's roots for an `https://` control API.
    pub fn with_roots(base: Url, token: Option<String>, roots: Vec<reqwest::Certificate>) -> Self {
        // rustls' ring provider, the one every peerdex process uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                // Event streams send a line at least every second or so; uploads
                // get their answer once the body is stored. A minute of silence
                // means the PServer is stuck.
                .read_timeout(Duration::from_secs(60))
                // The PServer closes a keep-alive connection after 5 s idle.
                // Between two shell commands nothing polls the pool, so it cannot
                // see that close: drop idle connections well before the server
                // does instead of reusing a dead one.
                .pool_idle_timeout(POOL_IDLE)
                .tcp_nodelay(true)
                .user_agent(concat!("peerdex/", env!("CARGO_PKG_VERSION")))
                // The control API is HTTP/1.1 over TLS as over plaintext.
                .http1_only()
        };
        let http = builder()
            .tls_certs_merge(roots.clone())
            .build()
            // No system roots at all (a minimal container): trust only
            // PEERDEX_CA_FILE, so plaintext keeps working and https says why.
            .or_else(|_| builder().tls_certs_only(roots).build())
            .expect("a reqwest client with static settings builds");
        Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        }
    }

    /// The base URL this client talks to.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `base` + `/api/v1/` + `segments`, each segment percent-encoded on its own.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let rb = self.http.request(method, self.url(segments));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    fn base_str(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// Send a request; map transport failures and non-2xx answers to [`Error`].
    ///
    /// An idempotent request (GET, HEAD, PUT with a replayable body, DELETE)
    /// that fails because the server closed the connection before any byte
    /// of an answer is sent once more on a fresh connection: that is the
    /// keep-alive race (the server closes an idle connection just as a
    /// request goes out on it), not a fault of the PServer.
    async fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let req = rb.build().map_err(|e| self.transport_error(e))?;
        let again = is_idempotent(req.method())
            .then(|| req.try_clone())
            .flatten();
        let resp = match (self.http.execute(req).await, again) {
            (Ok(resp), _) => resp,
            (Err(e), Some(again)) if closed_before_answer(&e) => self
                .http
                .execute(again)
                .await
                .map_err(|e| self.transport_error(e))?,
            (Err(e), _) => return Err(self.transport_error(e)),
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let url = resp.url().to_string();
        let body = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(error) => Err(Error::Api { status, error }),
            Err(e) => Err(Error::BadResponse {
                url,
                status,
                source: Some(e),
            }),
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        if let Some(message) = explain_tls(&e, &self.base_str()) {
            return Error::Tls { message, source: e };
        }
        if e.is_connect() || (e.is_timeout() && e.is_request()) {
            Error::Unreachable {
                url: self.base_str(),
                source: e,
            }
        } else {
            Error::Transport {
                url: self.base_str(),
                source: e,
            }
        }
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        let resp = self.send(rb).await?;
        let status = resp.status();
        let url = resp.url().to_string();
        let body = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
            url,
            status,
            source: Some(e),
        })
    }

    /// `GET /api/v1/status`.
    pub async fn status(&self) -> Result<Status> {
        self.json(self.request(Method::GET, &["status"])).await
    }

    /// `GET /api/v1/status?all_unshared=true`: with every file of the share
    /// folder that is not shared listed (at most 10,000).
    pub async fn status_all_unshared(&self) -> Result<Status> {
        self.json(
            self.request(Method::GET, &["status"])
                .query(&[("all_unshared", "true")]),
        )
        .await
    }

    /// `GET /api/v1/openapi.json`: the OpenAPI document of this API.
    pub async fn openapi(&self) -> Result<serde_json::Value> {
        self.json(self.request(Method::GET, &["openapi.json"]))
            .await
    }

    /// `GET /api/v1/files`: the files this PServer shares.
    pub async fn list_files(&self) -> Result<FileList> {
        self.json(self.request(Method::GET, &["files"])).await
    }

    /// `DELETE /api/v1/files/{id}`: stop sharing; answers the removed entries.
    pub async fn remove_file(&self, file_id: &str) -> Result<FileList> {
        self.json(self.request(Method::DELETE, &["files", file_id]))
            .await
    }

    /// `GET /api/v1/files/{id}/content`: the response, to be streamed with
    /// [`Response::chunk`].
    pub async fn file_content(&self, file_id: &str) -> Result<Response> {
        self.send(self.request(Method::GET, &["files", file_id, "content"]))
            .await
    }

    /// `PUT /api/v1/files/{name}` with `body` as the content. `len` is sent as
    /// `Content-Length` so the PServer can refuse too-large files up front.
    pub async fn upload(&self, name: &str, len: u64, body: reqwest::Body) -> Result<Uploaded> {
        let rb = self
            .request(Method::PUT, &["files", name])
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .body(body);
        let resp = self.send(rb).await?;
        let created = resp.status() == StatusCode::CREATED;
        let status = resp.status();
        let url = resp.url().to_string();
        let body = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        let file = serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
            url,
            status,
            source: Some(e),
        })?;
        Ok(Uploaded { file, created })
    }

    /// `POST /api/v1/private?name=` with `body` as the plaintext: sealed
    /// by the PServer, which answers the file's ticket.
    pub async fn upload_private(
        &self,
        name: &str,
        len: u64,
        body: reqwest::Body,
    ) -> Result<PrivateFile> {
        let rb = self
            .request(Method::POST, &["private"])
            .query(&[("name", name)])
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .body(body);
        self.json(rb).await
    }

    /// `GET /api/v1/private`: the keys of private files held, with tickets.
    pub async fn list_private(&self) -> Result<PrivateList> {
        self.json(self.request(Method::GET, &["private"])).await
    }

    /// `POST /api/v1/private/fetch`: fetch and open a private file by ticket.
    pub async fn fetch_private(&self, ticket: &str) -> Result<Job> {
        let req = TicketRequest {
            ticket: ticket.to_owned(),
        };
        self.json(self.request(Method::POST, &["private", "fetch"]).json(&req))
            .await
    }

    /// `DELETE /api/v1/private/{id}`: key, ciphertext and opened plaintext.
    pub async fn remove_private(&self, file_id: &str) -> Result<PrivateFile> {
        self.json(self.request(Method::DELETE, &["private", file_id]))
            .await
    }

    /// `GET /api/v1/private/{id}/content`: the plaintext opened there.
    pub async fn private_content(&self, file_id: &str) -> Result<Response> {
        self.send(self.request(Method::GET, &["private", file_id, "content"]))
            .await
    }

    /// `GET /api/v1/search`.
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchResults> {
        self.json(self.request(Method::GET, &["search"]).query(query))
            .await
    }

    /// `POST /api/v1/downloads`: start a download job. A name that matches
    /// several contents fails with code `ambiguous_name` and the candidates.
    pub async fn start_download(&self, req: &DownloadRequest) -> Result<Job> {
        self.json(self.request(Method::POST, &["downloads"]).json(req))
            .await
    }

    /// `GET /api/v1/locate`: a file by id, or every content with a name.
    pub async fn locate(&self, query: &LocateQuery) -> Result<LocateResult> {
        self.json(self.request(Method::GET, &["locate"]).query(query))
            .await
    }

    /// `POST /api/v1/pins`: pin a file (by id or name) to a number of live
    /// copies, or unpin it (0 or 1). An ambiguous name fails with code
    /// `ambiguous_name` and the candidates.
    pub async fn pin(&self, req: &PinRequest) -> Result<PinStatus> {
        self.json(self.request(Method::POST, &["pins"]).json(req))
            .await
    }

    /// `GET /api/v1/pins`: the pins this PServer set.
    pub async fn pins(&self) -> Result<PinList> {
        self.json(self.request(Method::GET, &["pins"])).await
    }

    /// `POST /api/v1/wants`: want a file (id or exact name) or a query.
    pub async fn want(&self, req: &WantRequest) -> Result<Want> {
        self.json(self.request(Method::POST, &["wants"]).json(req))
            .await
    }

    /// `GET /api/v1/wants`: every want, with its state.
    pub async fn wants(&self) -> Result<WantList> {
        self.json(self.request(Method::GET, &["wants"])).await
    }

    /// `DELETE /api/v1/wants/{want}`: stop wanting; answers the want removed.
    pub async fn unwant(&self, want_id: &str) -> Result<Want> {
        self.json(self.request(Method::DELETE, &["wants", want_id]))
            .await
    }

    /// `GET /api/v1/downloads`: every job, oldest first.
    pub async fn list_downloads(&self) -> Result<JobList> {
        self.json(self.request(Method::GET, &["downloads"])).await
    }

    /// `GET /api/v1/downloads/{job}`.
    pub async fn job(&self, job_id: &str) -> Result<Job> {
        self.json(self.request(Method::GET, &["downloads", job_id]))
            .await
    }

    /// `DELETE /api/v1/downloads/{job}`: cancel; answers the job's last state.
    pub async fn cancel(&self, job_id: &str) -> Result<Job> {
        self.json(self.request(Method::DELETE, &["downloads", job_id]))
            .await
    }

    /// `GET /api/v1/downloads/{job}/events`: follow a job live.
    pub async fn events(&self, job_id: &str) -> Result<Events> {
        // NDJSON, one Job per line (without Accept the PServer streams
        // server-sent events, for generic clients).
        let resp = self
            .send(
                self.request(Method::GET, &["downloads", job_id, "events"])
                    .header(reqwest::header::ACCEPT, "application/x-ndjson"),
            )
            .await?;
        Ok(Events {
            client: self.clone(),
            resp,
            buf: BytesMut::new(),
            finished: false,
        })
    }
}

/// A job's event stream: one [`Job`] per line until a final state.
#[derive(Debug)]
pub struct Events {
    client: Client,
    resp: Response,
    buf: BytesMut,
    finished: bool,
}

impl Events {
    /// The next update, or `None` when the stream ended (after a final state,
    /// or because the PServer closed it).
    pub async fn next(&mut self) -> Result<Option<Job>> {
        loop {
            if let Some(line) = take_line(&mut self.buf) {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let job: Job = serde_json::from_slice(&line).map_err(|e| Error::BadResponse {
                    url: self.resp.url().to_string(),
                    status: self.resp.status(),
                    source: Some(e),
                })?;
                return Ok(Some(job));
            }
            if self.finished {
                return Ok(None);
            }
            match self
                .resp
                .chunk()
                .await
                .map_err(|e| self.client.transport_error(e))?
            {
                Some(chunk) => {
                    self.buf.extend_from_slice(&chunk);
                    if self.buf.len() > MAX_EVENT_LINE {
                        return Err(Error::BadResponse {
                            url: self.resp.url().to_string(),
                            status: self.resp.status(),
                            source: None,
                        });
                    }
                }
                None => {
                    self.finished = true;
                    // A last line without its newline still counts.
                    if !self.buf.is_empty() {
                        self.buf.extend_from_slice(b"\n");
                    }
                }
            }
        }
    }
}

fn is_idempotent(m: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .contains(m)
}

/// The server closed (or reset) the connection before any answer arrived:
/// hyper's "connection closed before message completed", or a reset seen
/// while writing the request. Connect failures and timeouts are not this.
fn closed_before_answer(e: &reqwest::Error) -> bool {
    if e.is_connect() || e.is_timeout() || e.is_status() || e.is_body() || e.is_decode() {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The rustls error in `e`, also when io errors wrap it (reqwest nests two:
/// an io error's `source` skips what it wraps, so look inside).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

/// TLS trouble with the PServer at `url`, in plain words; `None` when the
/// failure is not about TLS.
fn explain_tls(e: &(dyn std::error::Error + 'static), url: &str) -> Option<String> {
    use rustls::{CertificateError as C, Error as R};
    let mut cause = Some(e);
    let mut text = String::new();
    while let Some(c) = cause {
        if let Some(r) = rustls_error(c) {
            return Some(match r {
                R::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
                    "the PServer at {url} presented a certificate not signed by a trusted CA; \
                     set PEERDEX_CA_FILE (or --ca-file) to your network's CA certificate"
                ),
                R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                    format!("the PServer at {url} presented an expired certificate")
                }
                R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    format!(
                        "the PServer at {url} presented a certificate for another name or address"
                    )
                }
                R::InvalidMessage(_) | R::InappropriateMessage { .. } => format!(
                    "the PServer at {url} did not answer with TLS; if its control API is \
                     plaintext, use an http:// URL"
                ),
                other => format!("TLS with the PServer at {url} failed: {other}"),
            });
        }
        text.push_str(&c.to_string().to_lowercase());
        cause = c.source();
    }
    (url.starts_with("http://") && text.contains("invalid http version")).then(|| {
        format!(
            "the PServer at {url} did not answer in plaintext HTTP; if its control API uses \
             TLS, use an https:// URL"
        )
    })
}

/// Split off the first complete line (without its `\n`), if there is one.
fn take_line(buf: &mut BytesMut) -> Option<Bytes> {
    let at = buf.iter().position(|&b| b == b'\n')?;
    let line = buf.split_to(at + 1);
    Some(line.freeze().slice(..at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_each_segment() {
        let c = Client::new(Url::parse("http://127.0.0.1:7070").unwrap(), None);
        assert_eq!(
            c.url(&["status"]).as_str(),
            "http://127.0.0.1:7070/api/v1/status"
        );
        assert_eq!(
            c.url(&["files", "my report?#1/2 %.pdf"]).as_str(),
            "http://127.0.0.1:7070/api/v1/files/my%20report%3F%231%2F2%20%25.pdf"
        );
        // A base with a path prefix (reverse proxy) keeps it.
        let c = Client::new(Url::parse("http://host/peerdex/").unwrap(), None);
        assert_eq!(
            c.url(&["files"]).as_str(),
            "http://host/peerdex/api/v1/files"
        );
    }

    #[test]
    fn lines_split_across_chunks() {
        let mut buf = BytesMut::from(&b"{\"a\":1}\n{\"b\""[..]);
        assert_eq!(
            take_line(&mut buf).unwrap(),
            Bytes::from_static(b"{\"a\":1}")
        );
        assert!(take_line(&mut buf).is_none());
        buf.extend_from_slice(b":2}\n");
        assert_eq!(
            take_line(&mut buf).unwrap(),
            Bytes::from_static(b"{\"b\":2}")
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn empty_token_is_no_token() {
        let c = Client::new(Url::parse(DEFAULT_URL).unwrap(), Some(String::new()));
        assert!(c.token.is_none());
    }
}
