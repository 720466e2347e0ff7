//! Failover over the centrals of `PSERVER_CENTRAL_URL`: run a call at the
//! central we use, and move to the next one when it does not answer (see
//! the module doc of `link`).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use peerdex_proto::v1::directory_client::DirectoryClient;
use tonic::Status;
use tonic::transport::Channel;

use super::CallError;

use super::Central;

/// A central that failed this recently is passed over when we move, unless
/// every central did.
pub(super) const FAILED_RECENTLY: Duration = Duration::from_secs(5);
/// One central of the list: its lazy channel and when it last failed us.
pub(super) struct Link {
    pub(super) url: String,
    pub(super) client: DirectoryClient<Channel>,
    pub(super) failed_at: Mutex<Option<Instant>>,
}

impl Link {
    pub(super) fn failed_recently(&self) -> bool {
        self.failed_at
            .lock()
            .unwrap()
            .is_some_and(|t| t.elapsed() < FAILED_RECENTLY)
    }
}

impl Central {
    /// Run `f` against the central we use; when that one fails in a way
    /// worth moving for (see [`CallError::worth_moving`]), move to the next and run
    /// `f` there at once, until one answers or every central not failed
    /// lately was tried. Only for calls that are safe to repeat. Returns
    /// the index of the central that answered with its answer.
    pub(super) async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        f: F,
    ) -> Result<(usize, T), CallError>
    where
        F: Fn(DirectoryClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tried = 0u64;
        let mut i = self.current.load(Ordering::Acquire);
        loop {
            tried |= 1 << i;
            let r = f(self.links[i].client.clone()).await;
            let s = match r {
                Ok(v) => {
                    self.note(true);
                    *self.links[i].failed_at.lock().unwrap() = None;
                    return Ok((i, v));
                }
                // The status becomes ours here, where we know who said it.
                Err(s) => CallError::at(&s, &self.links[i].url),
            };
            self.note(!s.unreachable());
            if !s.worth_moving() {
                return Err(s);
            }
            let why = format!("{what}: {:?}: {}", s.code, s.explained());
            let next = self.move_from(i, &why);
            // Within one call, every central is tried once before the call
            // fails: one that failed lately (restarted since, in a rolling
            // restart) comes last, but it comes.
            let n = self.links.len();
            let untried = |j: &usize| tried & (1 << j) == 0;
            i = match Some(next).filter(untried).or_else(|| {
                let order = (1..n).map(|k| (i + k) % n);
                let fresh = order
                    .clone()
                    .filter(untried)
                    .find(|&j| !self.links[j].failed_recently());
                fresh.or_else(|| order.clone().find(untried))
            }) {
                Some(j) => j,
                None => return Err(s),
            };
        }
    }

    /// Central `i` failed us or is going away: mark it, and unless another
    /// call moved already, move to the next one in list order that did not
    /// fail lately (or simply the next, if all did). Returns the central
    /// to use now.
    pub(super) fn move_from(&self, i: usize, why: &str) -> usize {
        *self.links[i].failed_at.lock().unwrap() = Some(Instant::now());
        let n = self.links.len();
        let next = (1..n)
            .map(|k| (i + k) % n)
            .find(|&j| !self.links[j].failed_recently())
            .unwrap_or((i + 1) % n);
        if next == i {
            return i;
        }
        match self
            .current
            .compare_exchange(i, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                tracing::info!(from = %self.links[i].url, to = %self.links[next].url, reason = %why,
                    "moving to another central");
                self.heard.lock().unwrap().central = None;
                next
            }
            Err(now) => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tonic::Code;

    use peerdex_proto::PeerId;

    use super::*;
    use crate::peer::network::Network;

    /// A `Central` over `n` centrals (lazy channels: nothing connects),
    /// using the first.
    fn centrals(n: usize, dir: &std::path::Path) -> Central {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect();
        let c = Central::new(
            &urls,
            PeerId::new_random(),
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
            Arc::new(Network::new(None)),
            "http://127.0.0.1:9".parse().unwrap(),
            dir,
            &[],
            0,
            Arc::new(crate::relay::Reach::new(
                crate::config::Reachability::Auto,
                0,
            )),
        )
        .unwrap();
        c.current.store(0, Ordering::Release);
        c
    }

    #[tokio::test]
    async fn moves_in_list_order_past_the_centrals_that_failed_lately() {
        let dir = tempfile::tempdir().unwrap();
        let c = centrals(4, dir.path());
        // 0 fails: the next in order.
        assert_eq!(c.move_from(0, "test"), 1);
        assert_eq!(c.url(), "http://127.0.0.1:2");
        // 1 fails: 2 is next (0 failed lately).
        assert_eq!(c.move_from(1, "test"), 2);
        // 3 failed a moment ago too: when 2 fails, every central failed
        // lately, so simply the next one, 3.
        *c.links[3].failed_at.lock().unwrap() = Some(Instant::now());
        assert_eq!(c.move_from(2, "test"), 3);
        // A call that saw 1 fail after another call moved on to 3 does
        // not move us again.
        assert_eq!(c.move_from(1, "test"), 3);
        assert_eq!(c.url(), "http://127.0.0.1:4");
        // Failures are forgotten after a while: from 3 to 0 again.
        for l in &c.links {
            *l.failed_at.lock().unwrap() = Some(Instant::now() - FAILED_RECENTLY);
        }
        assert_eq!(c.move_from(3, "test"), 0);
        // A single central has nowhere to go.
        let one = centrals(1, dir.path());
        assert_eq!(one.move_from(0, "test"), 0);
        assert_eq!(one.urls(), ["http://127.0.0.1:1"]);
    }

    #[test]
    fn what_is_worth_moving_for() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unknown,
            Code::ResourceExhausted,
        ] {
            assert!(
                CallError::from(Status::new(code, "x")).worth_moving(),
                "{code:?}"
            );
        }
        // Only a central that did not answer keeps a change in the queue.
        assert!(!CallError::from(Status::resource_exhausted("x")).unreachable());
        for code in [
            Code::FailedPrecondition,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::NotFound,
        ] {
            assert!(
                !CallError::from(Status::new(code, "x")).worth_moving(),
                "{code:?}"
            );
        }
    }
}
