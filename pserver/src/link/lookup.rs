//! Finding files: ask the neighbours in order (each with a short timeout, a
//! failing one skipped for a while), and the central directly only when no
//! neighbour answers.
//!
//! A neighbour that answers 429 is not a failure: the next neighbour is
//! asked, then the central itself (whose own rate limit, RESOURCE_EXHAUSTED,
//! is a refusal too), and that neighbour is left alone until its
//! `Retry-After`. The user's lookup fails only when every source refused,
//! with 429, the soonest `Retry-After`, and each refuser named.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use peerdex_proto::rest::{
    LocateQuery, LocateResult, LocatedFile, SearchHit, SearchQuery, SearchResults,
};
use peerdex_proto::v1::locate_request::Target;
use peerdex_proto::{FileId, FileName, HOPS_HEADER, PeerUrl};
use serde::de::DeserializeOwned;

use crate::error::{Error, Invalid, Result, Throttled, Unavailable};
use crate::link::{CallError, Central};
use crate::metrics::{AnsweredBy, Metrics};

/// How long a neighbour that failed is skipped.
const SKIP_FOR: Duration = Duration::from_secs(15);

/// What to locate.
#[derive(Debug, Clone)]
pub enum LocateTarget {
    Id(FileId),
    Name(FileName),
}

impl LocateTarget {
    fn query(&self) -> LocateQuery {
        match self {
            Self::Id(id) => LocateQuery {
                file_id: Some(id.to_hex()),
                name: None,
            },
            Self::Name(n) => LocateQuery {
                file_id: None,
                name: Some(n.to_string()),
            },
        }
    }

    fn grpc(&self) -> Target {
        match self {
            Self::Id(id) => Target::FileId(id.to_hex()),
            Self::Name(n) => Target::Name(n.to_string()),
        }
    }

    /// Parse the neighbour-role query (exactly one of the two).
    pub fn from_query(q: &LocateQuery) -> Result<Self> {
        match (&q.file_id, &q.name) {
            (Some(id), None) => Ok(Self::Id(id.parse()?)),
            (None, Some(n)) => Ok(Self::Name(n.parse()?)),
            _ => Err(Invalid::OneTarget.into()),
        }
    }
}

/// As text, for logs and messages: `id <hex>` or `name <name>`.
impl std::fmt::Display for LocateTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "id {id}"),
            Self::Name(n) => write!(f, "name {n}"),
        }
    }
}

struct Neighbour {
    url: PeerUrl,
    /// Did not answer: skipped until then.
    skip_until: Mutex<Option<Instant>>,
    /// Answered 429: not asked again before its `Retry-After`.
    refused_until: Mutex<Option<Instant>>,
}

/// A source that would not answer a lookup now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A neighbour's rate limit (429), with its `Retry-After` in seconds.
    Neighbour { url: PeerUrl, retry_after: u64 },
    /// The central's rate limit (RESOURCE_EXHAUSTED).
    Central { message: String, retry_after: u64 },
    /// The central failed otherwise (told only when neighbours refused).
    CentralDown(String),
}

impl Refusal {
    /// The refusals, one after the other (for the user's message).
    pub(crate) fn list(refusals: &[Refusal]) -> String {
        let list: Vec<String> = refusals.iter().map(ToString::to_string).collect();
        list.join("; ")
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Neighbour { retry_after, .. } | Self::Central { retry_after, .. } => {
                Some(*retry_after)
            }
            Self::CentralDown(_) => None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Neighbour { url, retry_after } => {
                write!(
                    f,
                    "neighbour {url} is rate limiting our requests (retry in {retry_after} s)"
                )
            }
            Self::Central {
                message,
                retry_after,
            } => write!(f, "{message} (retry in {retry_after} s)"),
            Self::CentralDown(why) => f.write_str(why),
        }
    }
}

/// The user's lookup fails: every source refused it. 429 with the soonest
/// `Retry-After` among them, and each refuser named.
fn all_refused(refusals: Vec<Refusal>) -> Error {
    let retry_after = refusals
        .iter()
        .filter_map(Refusal::retry_after)
        .min()
        .unwrap_or(1)
        .clamp(1, 3600);
    Error::TooManyRequests {
        why: Throttled::AllRefused { refusals },
        retry_after,
    }
}

/// What asking the neighbours gave.
enum Asked<T> {
    Answered(T),
    /// None answered; these refused (rate limited). Empty when every one
    /// is down, or there are none.
    Refused(Vec<Refusal>),
}

pub struct Lookup {
    neighbours: Vec<Neighbour>,
    http: crate::peer::network::PeerHttp,
    timeout: Duration,
    metrics: Metrics,
}

impl Lookup {
    pub(crate) fn new(
        neighbours: &[PeerUrl],
        http: crate::peer::network::PeerHttp,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            neighbours: neighbours
                .iter()
                .map(|u| Neighbour {
                    url: u.clone(),
                    skip_until: Mutex::new(None),
                    refused_until: Mutex::new(None),
                })
                .collect(),
            http,
            timeout,
            metrics,
        }
    }

    /// Ask each usable neighbour in turn. A neighbour that answers 429 is
    /// up but asked too often: the next one is asked, and that neighbour
    /// is left alone until its `Retry-After` (its limit protects it; the
    /// user's lookup still gets an answer elsewhere).
    async fn ask<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl serde::Serialize,
    ) -> Asked<T> {
        let mut refused = Vec::new();
        for n in &self.neighbours {
            let now = Instant::now();
            if n.skip_until.lock().unwrap().is_some_and(|t| now < t) {
                continue;
            }
            if let Some(until) = n.refused_until.lock().unwrap().filter(|t| now < *t) {
                refused.push(Refusal::Neighbour {
                    url: n.url.clone(),
                    retry_after: (until - now).as_secs_f64().ceil().max(1.0) as u64,
                });
                continue;
            }
            let result = async {
                let resp = self
                    .http
                    .get(format!("{}{path}", n.url))
                    .query(query)
                    .header(HOPS_HEADER, "1")
                    .timeout(self.timeout)
                    .send()
                    .await?;
                if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(1);
                    return Ok(Err(retry_after));
                }
                resp.error_for_status()?.json::<T>().await.map(Ok)
            }
            .await;
            match result {
                Ok(Ok(v)) => {
                    *n.skip_until.lock().unwrap() = None;
                    tracing::debug!(neighbour = %n.url, "a neighbour answered the lookup");
                    return Asked::Answered(v);
                }
                Ok(Err(retry_after)) => {
                    let retry_after = retry_after.clamp(1, 3600);
                    tracing::debug!(neighbour = %n.url, retry_after, "neighbour rate limiting us; asking the next one");
                    *n.refused_until.lock().unwrap() =
                        Some(Instant::now() + Duration::from_secs(retry_after));
                    refused.push(Refusal::Neighbour {
                        url: n.url.clone(),
                        retry_after,
                    });
                }
                Err(e) => {
                    let error = crate::tls::explain(&e, "the neighbour", n.url.as_str())
                        .unwrap_or_else(|| e.to_string());
                    tracing::warn!(neighbour = %n.url, %error, "neighbour did not answer; skipping it for a while");
                    *n.skip_until.lock().unwrap() = Some(Instant::now() + SKIP_FOR);
                }
            }
        }
        Asked::Refused(refused)
    }

    /// Before asking the central directly: say why.
    fn log_fallback(&self, refused: &[Refusal]) {
        if !refused.is_empty() {
            tracing::debug!(
                refused = refused.len(),
                "neighbours rate limiting us; asking the central directly"
            );
        } else if !self.neighbours.is_empty() {
            tracing::warn!("no neighbour answered; asking the central directly");
        }
    }

    /// Metadata and live holders of a file, through a neighbour or the central.
    pub async fn locate(
        &self,
        central: &Central,
        target: &LocateTarget,
    ) -> Result<Vec<LocatedFile>> {
        let refused = match self
            .ask::<LocateResult>("/peer/v1/locate", &target.query())
            .await
        {
            Asked::Answered(r) => {
                self.metrics.lookup(AnsweredBy::Neighbour);
                return Ok(r.files);
            }
            Asked::Refused(r) => r,
        };
        self.log_fallback(&refused);
        self.counted(at_central(
            refused,
            locate_at_central(central, target).await,
        ))
    }

    pub async fn search(&self, central: &Central, q: &SearchQuery) -> Result<SearchResults> {
        let refused = match self.ask::<SearchResults>("/peer/v1/search", q).await {
            Asked::Answered(r) => {
                self.metrics.lookup(AnsweredBy::Neighbour);
                return Ok(r);
            }
            Asked::Refused(r) => r,
        };
        self.log_fallback(&refused);
        self.counted(at_central(refused, search_at_central(central, q).await))
    }

    /// Count a lookup the central answered, or no one.
    fn counted<T>(&self, answer: Result<T>) -> Result<T> {
        self.metrics.lookup(match &answer {
            Ok(_) => AnsweredBy::Central,
            Err(_) => AnsweredBy::None,
        });
        answer
    }

    /// Probe every neighbour's health endpoint concurrently.
    pub async fn probe(&self) -> Vec<(PeerUrl, bool)> {
        let probes = self.neighbours.iter().map(|n| async move {
            let ok = self
                .http
                .get(format!("{}/peer/v1/health", n.url))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (n.url.clone(), ok)
        });
        futures_util::future::join_all(probes).await
    }
}

/// The central's answer as ours. RESOURCE_EXHAUSTED is the central's rate
/// limit (its `retry-after` metadata, in seconds, says when to come back):
/// passed on as 429 with `Retry-After`, so whoever asked through us backs
/// off too.
fn central_error(s: CallError) -> Error {
    match s.code {
        tonic::Code::ResourceExhausted => Error::TooManyRequests {
            why: Throttled::Central {
                message: s.message.clone(),
            },
            retry_after: s.retry_after.unwrap_or(1).clamp(1, 3600),
        },
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Invalid::Central {
            message: s.message.clone(),
        }
        .into(),
        _ => Unavailable::Central {
            why: s.message.clone(),
        }
        .into(),
    }
}

/// [`central_error`], with TLS trouble told in plain words (see `crate::tls`).
fn central_error_at(s: CallError) -> Error {
    match s.tls.clone() {
        Some(why) => Unavailable::Central { why }.into(),
        None => central_error(s),
    }
}

/// The central's answer to a lookup the neighbours in `refused` would not
/// take: a refusal by the central too fails the lookup, naming them all;
/// so does any failure of the central once a neighbour refused (the
/// neighbours will take it again after their `Retry-After`). With no
/// refusal, or a mistake in the request, the central's error stays as it is.
fn at_central<T>(mut refused: Vec<Refusal>, answer: Result<T>) -> Result<T> {
    match answer {
        Ok(v) => {
            if !refused.is_empty() {
                tracing::debug!("the central answered the lookup the neighbours refused");
            }
            Ok(v)
        }
        Err(e) if refused.is_empty() => Err(e),
        Err(Error::TooManyRequests { why, retry_after }) => {
            refused.push(Refusal::Central {
                message: why.to_string(),
                retry_after,
            });
            Err(all_refused(refused))
        }
        Err(e @ Error::InvalidArgument(_)) => Err(e),
        Err(e) => {
            refused.push(Refusal::CentralDown(e.to_string()));
            Err(all_refused(refused))
        }
    }
}

pub async fn locate_at_central(
    central: &Central,
    target: &LocateTarget,
) -> Result<Vec<LocatedFile>> {
    let files = central
        .locate(target.grpc())
        .await
        .map_err(central_error_at)?;
    Ok(files.into_iter().map(Into::into).collect())
}

pub async fn search_at_central(central: &Central, q: &SearchQuery) -> Result<SearchResults> {
    let r = central
        .search(&q.q, q.limit.unwrap_or(0), q.page.as_deref().unwrap_or(""))
        .await
        .map_err(central_error_at)?;
    Ok(SearchResults {
        hits: r.hits.into_iter().map(SearchHit::from).collect(),
        next_page: (!r.next_page_token.is_empty()).then_some(r.next_page_token),
        truncated: r.truncated,
        islands: r.islands,
        islands_skipped: r.islands_skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_centrals_rate_limit_becomes_429_with_its_retry_after() {
        let mut s = tonic::Status::resource_exhausted("too many searches");
        s.metadata_mut().insert("retry-after", "7".parse().unwrap());
        match central_error(s.into()) {
            Error::TooManyRequests {
                retry_after,
                why: Throttled::Central { message },
            } => {
                assert_eq!(retry_after, 7);
                assert_eq!(message, "too many searches");
            }
            other => panic!("{other:?}"),
        }
        let bare = central_error(tonic::Status::resource_exhausted("slow down").into());
        assert!(
            matches!(bare, Error::TooManyRequests { retry_after: 1, .. }),
            "{bare:?}"
        );
        let bad = central_error(tonic::Status::invalid_argument("bad name").into());
        assert!(
            matches!(&bad, Error::InvalidArgument(Invalid::Central { message }) if message == "bad name"),
            "{bad:?}"
        );
    }

    #[test]
    fn a_lookup_fails_only_when_every_source_refused() {
        let b: PeerUrl = "http://192.0.2.1:7071".parse().unwrap();
        let neighbour = Refusal::Neighbour {
            url: b.clone(),
            retry_after: 4,
        };
        // The central answered: no failure, whoever refused.
        assert_eq!(at_central(vec![neighbour.clone()], Ok(7)).unwrap(), 7);
        // The central refused too: 429, the soonest Retry-After, both named.
        let busy = Error::TooManyRequests {
            why: Throttled::Central {
                message: "too many searches".into(),
            },
            retry_after: 2,
        };
        match at_central::<()>(vec![neighbour.clone()], Err(busy)) {
            Err(Error::TooManyRequests { why, retry_after }) => {
                assert_eq!(retry_after, 2);
                assert!(matches!(&why, Throttled::AllRefused { refusals } if refusals.len() == 2));
                assert_eq!(
                    why.to_string(),
                    format!(
                        "every source refused the lookup: neighbour {b} is rate limiting our \
                         requests (retry in 4 s); the central directory is busy: too many \
                         searches (retry in 2 s)"
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        // Down after a refusal: still 429 (the neighbour takes it later).
        let down = || -> Error {
            Unavailable::Central {
                why: "refused".into(),
            }
            .into()
        };
        assert!(matches!(
            at_central::<()>(vec![neighbour.clone()], Err(down())),
            Err(Error::TooManyRequests { retry_after: 4, .. })
        ));
        // No refusal, or the request's own mistake: the central's error as is.
        assert!(matches!(
            at_central::<()>(vec![], Err(down())),
            Err(Error::Unavailable(_))
        ));
        let bad = Error::InvalidArgument(Invalid::Central {
            message: "bad name".into(),
        });
        assert!(matches!(
            at_central::<()>(vec![neighbour], Err(bad)),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn targets_print_as_text() {
        let t = LocateTarget::Name("report.pdf".parse().unwrap());
        assert_eq!(t.to_string(), "name report.pdf");
    }
}
