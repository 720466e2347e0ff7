//! `PSERVER_NOTIFY_URL`: each want notice POSTed as a small JSON document
//! (a [`WantNotice`]), one at a time, 5 s each, from a queue of its own:
//! a URL that does not answer costs the wants nothing. A failure is
//! logged and counted (`peerdex_pserver_notify_posts_total{result="failed"}`),
//! never retried: the notice stays in `GET /api/v1/events`.

use std::time::Duration;

use peerdex_proto::rest::WantNotice;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Time one POST may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Notices waiting to be posted; beyond, a notice is dropped (counted).
const QUEUE: usize = 64;

pub(super) struct Notifier {
    tx: mpsc::Sender<WantNotice>,
    metrics: Metrics,
}

impl Notifier {
    /// Start posting to `url` (on the current runtime: the main one).
    pub(super) fn start(url: reqwest::Url, http: reqwest::Client, metrics: Metrics) -> Self {
        let (tx, mut rx) = mpsc::channel::<WantNotice>(QUEUE);
        let m = metrics.clone();
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let sent = http
                    .post(url.clone())
                    .timeout(TIMEOUT)
                    .json(&n)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => m.notify_post(true),
                    Ok(r) => {
                        tracing::warn!(url = %url, status = %r.status(), seq = n.seq, "PSERVER_NOTIFY_URL refused a want notice");
                        m.notify_post(false);
                    }
                    Err(e) => {
                        tracing::warn!(url = %url, error = %e, seq = n.seq, "PSERVER_NOTIFY_URL did not take a want notice (within 5 s)");
                        m.notify_post(false);
                    }
                }
            }
        });
        Self { tx, metrics }
    }

    /// Queue a notice; never waits.
    pub(super) fn send(&self, n: WantNotice) {
        if self.tx.try_send(n).is_err() {
            tracing::warn!(
                "PSERVER_NOTIFY_URL: {QUEUE} notices are waiting already; this one is dropped (it stays in GET /api/v1/events)"
            );
            self.metrics.notify_post(false);
        }
    }
}
