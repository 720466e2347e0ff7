//! Links between islands (`CENTRAL_LINKS`): this central's view of the
//! other islands, and the lookups it forwards to them.
//!
//! * `mod.rs` — [`Links`]: one [`Remote`] per URL of `CENTRAL_LINKS`, its
//!   state and summary; the summary pull loop, which is also the probe of
//!   a link that is down; the leave at shutdown; Info's view.
//! * [`forward`] — Locate and Search sent to linked islands under one
//!   deadline, their answers checked and merged into the local one.
//! * [`service`] — the `peerdex.v1.Link` service: what this island answers
//!   to linked ones (from its own index only: one hop).
//! * [`auth`] — who may call it (a client certificate from the link CA
//!   naming a linked host) and how often.
//! * [`summary`] — the filter of the ids and names an island holds.
//!
//! Every URL is pulled every half `CENTRAL_LINK_REFRESH_SECS` (a pull
//! whose version did not change carries no filter), and this island's
//! own summary is rebuilt at most once per half period, so what a linked
//! island knows of this one is at most one period old. A lookup goes only
//! to links that are up; one that fails to answer is down until it
//! answers a pull again. A summary not renewed for three periods is
//! dropped (an island that died without a word).

pub mod auth;
pub mod forward;
pub mod service;
pub mod summary;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerdex_common::sync::lock;
use peerdex_proto::v1::{self, link_client::LinkClient};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::config::{LinkConfig, LinkUrl};
use crate::directory::Directory;
use crate::metrics::Metrics;
use crate::tls::TlsFiles;
use auth::Gate;
use summary::{MAX_FILTER_BYTES, Summary};

/// How long a Leaving call may take at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// A link's state, as Info shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkState {
    #[default]
    Unknown,
    Up,
    Down,
    Left,
    Refused,
    Private,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
            Self::Left => "left",
            Self::Refused => "refused",
            Self::Private => "private",
        }
    }
}

/// One URL of `CENTRAL_LINKS`.
pub struct Remote {
    pub url: LinkUrl,
    client: LinkClient<Channel>,
    state: Mutex<RemoteState>,
}

#[derive(Default)]
struct RemoteState {
    island: Option<String>,
    state: LinkState,
    summary: Option<Arc<Summary>>,
    last_ok: Option<Instant>,
    error: Option<String>,
}

impl Remote {
    fn new(url: LinkUrl, config: &LinkConfig, tls: &TlsFiles) -> Option<Self> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&config.ca_pem))
            .identity(Identity::from_pem(tls.cert_pem(), tls.key_pem()))
            .domain_name(url.host.clone());
        let endpoint = Channel::from_shared(url.url.clone())
            .map_err(|e| tracing::warn!(link = %url, error = %e, "link not usable"))
            .ok()?;
        let channel = endpoint
            .tls_config(tls)
            .map_err(|e| tracing::warn!(link = %url, error = %e, "link not usable"))
            .ok()?
            .connect_timeout(config.timeout.max(Duration::from_secs(1)))
            .tcp_nodelay(true)
            .connect_lazy();
        let client =
            LinkClient::new(channel).max_decoding_message_size(MAX_FILTER_BYTES + (1 << 20));
        Some(Self {
            url,
            client,
            state: Mutex::new(RemoteState::default()),
        })
    }

    /// Its island's name, once it answered.
    pub fn island(&self) -> Option<String> {
        lock(&self.state).island.clone()
    }

    pub(crate) fn label(&self) -> String {
        self.island().unwrap_or_else(|| self.url.host.clone())
    }

    fn up_summary(&self) -> Option<(String, Arc<Summary>)> {
        let s = lock(&self.state);
        match (s.state, &s.island, &s.summary) {
            (LinkState::Up, Some(i), Some(sum)) => Some((i.clone(), sum.clone())),
            _ => None,
        }
    }

    /// A lookup failed: down until a pull answers.
    fn failed(&self, error: String) {
        let mut s = lock(&self.state);
        if s.state == LinkState::Up {
            tracing::warn!(link = %self.url, %error, "linked island did not answer; skipped until it answers a probe");
            s.state = LinkState::Down;
        }
        s.error = Some(error);
    }
}

/// This central's links. Cheap to clone.
#[derive(Clone)]
pub struct Links {
    inner: Arc<Inner>,
}

struct Inner {
    island: String,
    central: String,
    /// CENTRAL_JOIN_SECRET: export nothing.
    private: bool,
    /// No other central serves this island (SQLite).
    alone: bool,
    refresh: Duration,
    timeout: Duration,
    remotes: Vec<Remote>,
    gate: Gate,
    local: Mutex<Option<(Instant, Arc<Summary>)>>,
    dir: Arc<Directory>,
    metrics: Option<Arc<Metrics>>,
    /// Bumped whenever a linked island's summary changes (Watch streams
    /// then ask that island for what they wait for).
    changed: tokio::sync::watch::Sender<u64>,
}

impl Links {
    pub(crate) fn new(
        config: &LinkConfig,
        tls: Option<&TlsFiles>,
        central: &str,
        private: bool,
        dir: Arc<Directory>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let remotes = match tls {
            Some(tls) => config
                .links
                .iter()
                .filter_map(|u| Remote::new(u.clone(), config, tls))
                .collect(),
            None => Vec::new(),
        };
        Self {
            inner: Arc::new(Inner {
                island: config.island_name(),
                central: central.to_owned(),
                private,
                alone: !dir.shared(),
                refresh: config.refresh,
                timeout: config.timeout,
                remotes,
                gate: Gate::new(&config.links, &config.ca, config.rate),
                local: Mutex::new(None),
                dir,
                metrics,
                changed: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// Wakes when a linked island's summary changed (a file may have
    /// appeared there).
    pub(crate) fn summaries_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// This island's name (`CENTRAL_ISLAND_NAME`).
    pub fn island(&self) -> &str {
        &self.inner.island
    }

    /// Any link configured?
    pub fn any(&self) -> bool {
        !self.inner.remotes.is_empty()
    }

    pub fn private(&self) -> bool {
        self.inner.private
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    pub(crate) fn remotes(&self) -> &[Remote] {
        &self.inner.remotes
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    pub(crate) fn metrics(&self) -> Option<&Metrics> {
        self.inner.metrics.as_deref()
    }

    /// This island's summary, rebuilt when it is older than half a
    /// refresh period.
    pub fn local_summary(&self) -> Arc<Summary> {
        let max_age = self.inner.refresh / 2;
        if let Some((at, s)) = &*lock(&self.inner.local)
            && at.elapsed() < max_age
        {
            return s.clone();
        }
        let (ids, keys) = self.inner.dir.index().summary_keys(
            tokio::time::Instant::now(),
            summary::id_key,
            summary::name_key,
        );
        let s = Arc::new(Summary::build(ids as u64, keys));
        *lock(&self.inner.local) = Some((Instant::now(), s.clone()));
        s
    }

    /// Info's view of the links.
    pub fn infos(&self) -> Vec<v1::LinkInfo> {
        self.inner
            .remotes
            .iter()
            .map(|r| {
                let s = lock(&r.state);
                v1::LinkInfo {
                    url: r.url.url.clone(),
                    island: s.island.clone().unwrap_or_default(),
                    state: s.state.as_str().to_owned(),
                    summary_ids: s.summary.as_ref().map_or(0, |s| s.ids),
                    last_ok_ms_ago: s
                        .last_ok
                        .map_or(0, |t| t.elapsed().as_millis().max(1) as u64),
                    error: s.error.clone().unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Pull every link's summary every half refresh period, until
    /// `cancel`.
    pub async fn refresh_loop(self, cancel: CancellationToken) {
        if !self.any() {
            return;
        }
        let mut tick =
            tokio::time::interval((self.inner.refresh / 2).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let pulls = self.inner.remotes.iter().map(|r| self.pull(r));
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = futures_util::future::join_all(pulls) => {}
            }
            self.expire();
            self.inner.gate.purge();
        }
    }

    /// Pull one link's summary (its probe too).
    async fn pull(&self, r: &Remote) {
        let have = lock(&r.state)
            .summary
            .as_ref()
            .map(|s| s.version.clone())
            .unwrap_or_default();
        let req = v1::LinkSummaryRequest {
            island: self.inner.island.clone(),
            central: self.inner.central.clone(),
            version: have,
        };
        // A whole summary may be megabytes: give it the period.
        let answer = tokio::time::timeout(
            self.inner.refresh.max(self.inner.timeout),
            r.client.clone().summary(req),
        )
        .await;
        let answer = match answer {
            Err(_) => Err(format!("no answer within {:?}", self.inner.refresh)),
            Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                let mut s = lock(&r.state);
                if s.state != LinkState::Refused {
                    tracing::warn!(link = %r.url, error = status.message(), "linked island refuses this central: does it list this central in its CENTRAL_LINKS, and trust our certificate's CA?");
                }
                s.state = LinkState::Refused;
                s.summary = None;
                s.error = Some(status.message().to_owned());
                drop(s);
                self.gauges(r);
                return;
            }
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Ok(Ok(a)) => Ok(a.into_inner()),
        };
        let a = match answer {
            Ok(a) => a,
            Err(e) => {
                let mut s = lock(&r.state);
                if s.state != LinkState::Down && s.state != LinkState::Left {
                    tracing::warn!(link = %r.url, error = %e, "linked island is down");
                }
                if s.state != LinkState::Left {
                    s.state = LinkState::Down;
                }
                s.error = Some(e);
                drop(s);
                self.gauges(r);
                return;
            }
        };
        if !crate::config::valid_name(&a.island) {
            r.failed(format!(
                "answered an invalid island name {:?}",
                a.island.chars().take(80).collect::<String>()
            ));
            self.count_invalid(r, "summary");
            return;
        }
        let summary = if a.private {
            None
        } else if a.not_modified {
            lock(&r.state).summary.clone()
        } else {
            match Summary::from_proto(a.version, a.ids, a.filter) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!(link = %r.url, error = %e, "linked island sent a summary we cannot use");
                    r.failed(e.to_string());
                    self.count_invalid(r, "summary");
                    return;
                }
            }
        };
        let fresh = summary.as_ref().is_some_and(|n| {
            lock(&r.state)
                .summary
                .as_ref()
                .is_none_or(|o| o.version != n.version)
        });
        {
            let mut s = lock(&r.state);
            if s.state != LinkState::Up && !a.private {
                tracing::info!(link = %r.url, island = %a.island, ids = summary.as_ref().map_or(0, |s| s.ids), "link up");
            }
            s.state = if a.private {
                LinkState::Private
            } else {
                LinkState::Up
            };
            s.island = Some(a.island);
            s.summary = summary;
            s.last_ok = Some(Instant::now());
            s.error = None;
        }
        if fresh {
            self.inner.changed.send_modify(|n| *n += 1);
        }
        self.gauges(r);
    }

    /// Drop summaries not renewed for three periods.
    fn expire(&self) {
        let ttl = self.inner.refresh * 3;
        for r in &self.inner.remotes {
            let mut s = lock(&r.state);
            if s.summary.is_some() && s.last_ok.is_none_or(|t| t.elapsed() > ttl) {
                tracing::warn!(link = %r.url, "linked island's summary expired");
                s.summary = None;
                if s.state == LinkState::Up {
                    s.state = LinkState::Down;
                }
                drop(s);
                self.gauges(r);
            }
        }
    }

    /// A linked central said it stops: stop asking the `links` it is;
    /// `last`: its island has no other central, drop what we know of it.
    pub(crate) fn left(&self, links: &[usize], last: bool) {
        let mut islands = Vec::new();
        for &i in links {
            let Some(r) = self.inner.remotes.get(i) else {
                continue;
            };
            let mut s = lock(&r.state);
            tracing::info!(link = %r.url, last, "linked central is leaving");
            s.state = LinkState::Left;
            s.summary = None;
            s.error = Some("its central stopped (Leaving)".into());
            islands.extend(s.island.clone());
            drop(s);
            self.gauges(r);
        }
        if last {
            for r in &self.inner.remotes {
                let mut s = lock(&r.state);
                if s.island.as_ref().is_some_and(|i| islands.contains(i)) {
                    s.state = LinkState::Left;
                    s.summary = None;
                    drop(s);
                    self.gauges(r);
                }
            }
        }
    }

    /// Shutting down: tell every linked island we go (at most a second).
    pub async fn leave(&self) {
        let calls = self.inner.remotes.iter().filter(|r| {
            matches!(lock(&r.state).state, LinkState::Up | LinkState::Private)
        }).map(|r| {
            let req = v1::LinkLeavingRequest {
                island: self.inner.island.clone(),
                central: self.inner.central.clone(),
                last: self.inner.alone,
            };
            let mut c = r.client.clone();
            async move {
                match tokio::time::timeout(LEAVE_TIMEOUT, c.leaving(req)).await {
                    Ok(Ok(_)) => tracing::info!(link = %r.url, "told the linked island we stop"),
                    Ok(Err(e)) => tracing::warn!(link = %r.url, error = %e, "could not tell the linked island we stop"),
                    Err(_) => tracing::warn!(link = %r.url, "linked island did not take our Leaving within {LEAVE_TIMEOUT:?}"),
                }
            }
        });
        futures_util::future::join_all(calls).await;
    }

    fn gauges(&self, r: &Remote) {
        let Some(m) = &self.inner.metrics else {
            return;
        };
        let (island, up, ids) = {
            let s = lock(&r.state);
            (
                s.island.clone().unwrap_or_else(|| r.url.host.clone()),
                s.state == LinkState::Up,
                s.summary.as_ref().map_or(0, |s| s.ids),
            )
        };
        m.link_gauge("peerdex_central_link_up", &island, f64::from(u8::from(up)));
        m.link_gauge("peerdex_central_link_summary_ids", &island, ids as f64);
    }

    fn count_invalid(&self, r: &Remote, rpc: &'static str) {
        if let Some(m) = &self.inner.metrics {
            m.link_query(&r.label(), rpc, "invalid");
        }
    }
}
