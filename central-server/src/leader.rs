//! Leader election among the centrals of one directory on etcd, with
//! etcd's election API (Raft underneath: we write no consensus).
//!
//! Each central campaigns with its name on a lease of its own (TTL
//! [`election_ttl`]) that it keeps alive. etcd makes exactly one campaign
//! the leader; when the leader dies its lease ends and the next campaign
//! wins, within one TTL. The leader runs the work that must happen once
//! (compaction, forgetting idle key bindings).
//!
//! A central counts itself leader only while its lease is surely alive by
//! its own clock: until the last successful keep-alive's send time plus
//! the TTL. A central that was paused (SIGSTOP) or cut off therefore stops
//! leading before etcd can elect another, so two centrals never both
//! lead. Every change is logged (`leadership`), with the election
//! revision that orders them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaderKey, ResignOptions};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `t` as Unix milliseconds (for the log of leadership changes, which
/// tests read across processes).
fn unix_ms(t: Instant) -> u64 {
    let now = Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let wall = if t <= now {
        wall.saturating_sub(now - t)
    } else {
        wall + (t - now)
    };
    wall.as_millis() as u64
}

/// The election lease's TTL for a directory whose peer leases last
/// `lease_ttl`: half of it (a new leader within one peer lease), at least
/// etcd's minimum of 2 s.
pub(crate) fn election_ttl(lease_ttl: Duration) -> Duration {
    (lease_ttl / 2).max(Duration::from_secs(2))
}

/// Terms kept for Info.
const TERMS_KEPT: usize = 16;

/// One term of this central as leader (Unix ms; no end while it goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Term {
    pub began_ms: u64,
    pub ended_ms: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct View {
    /// The leader's name, as last seen in etcd.
    leader: Option<String>,
    /// While we lead: until when our lease is surely alive.
    mine_until: Option<Instant>,
    /// Our latest terms, oldest first.
    terms: VecDeque<Term>,
}

impl View {
    fn begin(&mut self, at: Instant) {
        if self.terms.len() == TERMS_KEPT {
            self.terms.pop_front();
        }
        self.terms.push_back(Term {
            began_ms: unix_ms(at),
            ended_ms: None,
        });
    }

    fn end(&mut self, at: Instant) {
        if let Some(t) = self.terms.back_mut().filter(|t| t.ended_ms.is_none()) {
            t.ended_ms = Some(unix_ms(at));
        }
    }
}

/// Who leads, as this central sees it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Leadership {
    name: Arc<str>,
    view: Arc<watch::Sender<View>>,
}

impl Leadership {
    /// A single central (SQLite) always leads itself.
    pub(crate) fn alone(name: &str) -> Self {
        let l = Self::new(name);
        l.view.send_modify(|v| {
            v.leader = Some(name.to_owned());
            v.mine_until = None;
            v.begin(Instant::now());
        });
        l
    }

    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            view: Arc::new(watch::Sender::new(View::default())),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether this central leads now.
    pub(crate) fn is_leader(&self) -> bool {
        let v = self.view.borrow();
        match v.mine_until {
            Some(until) => until > Instant::now(),
            None => v.leader.as_deref() == Some(&*self.name),
        }
    }

    /// This central's latest terms as leader, oldest first.
    pub(crate) fn terms(&self) -> Vec<Term> {
        self.view.borrow().terms.iter().copied().collect()
    }

    /// The leader's name, when known ("" otherwise).
    pub(crate) fn leader(&self) -> String {
        if self.is_leader() {
            return self.name.to_string();
        }
        let v = self.view.borrow();
        match &v.leader {
            // Our own name, from before our lease lapsed: not known now.
            Some(l) if *l != *self.name => l.clone(),
            _ => String::new(),
        }
    }

    /// Campaign, lead, and campaign again, until `cancel`; then resign.
    pub(crate) async fn run(
        self,
        client: Client,
        election: String,
        ttl: Duration,
        cancel: CancellationToken,
    ) {
        let observer = tokio::spawn(self.clone().observe(
            client.clone(),
            election.clone(),
            ttl,
            cancel.clone(),
        ));
        let mut pause = Duration::from_millis(200);
        while !cancel.is_cancelled() {
            match self.term(client.clone(), &election, ttl, &cancel).await {
                Ok(()) => pause = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, "leadership: campaign failed; trying again");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(ttl);
                }
            }
        }
        let _ = observer.await;
    }

    /// One lease: campaign on it, lead while it lives.
    async fn term(
        &self,
        mut client: Client,
        election: &str,
        ttl: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), etcd_client::Error> {
        let granted = client.lease_grant(ttl.as_secs() as i64, None).await?;
        let lease = granted.id();
        let sent = Instant::now();
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
        // Opening the stream sent a first keep-alive and read its answer,
        // so each later answer is paired with its own request.
        // Alive until this, by our clock (moved on by each keep-alive).
        let alive = watch::Sender::new(Some(sent + ttl));
        let keep = async {
            let mut tick = tokio::time::interval_at(Instant::now() + ttl / 4, ttl / 4);
            loop {
                tick.tick().await;
                let sent = Instant::now();
                let ok = match keeper.keep_alive().await {
                    Ok(()) => tokio::time::timeout(ttl / 2, stream.message())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                        .is_some_and(|r| r.ttl() > 0),
                    Err(_) => false,
                };
                if ok {
                    alive.send_replace(Some(sent + ttl));
                } else {
                    // An unanswered keep-alive: we can no longer tell how
                    // long the lease lives, so stop leading now (and
                    // campaign again on a new lease).
                    alive.send_replace(None);
                    return;
                }
            }
        };
        let campaign = async {
            let r = client
                .clone()
                .campaign(election, self.name.as_bytes(), lease)
                .await?;
            Ok::<Option<LeaderKey>, etcd_client::Error>(r.leader().cloned())
        };
        tokio::pin!(keep);
        let key = tokio::select! {
            () = cancel.cancelled() => {
                let _ = client.lease_revoke(lease).await;
                return Ok(());
            }
            () = &mut keep => return Ok(()),
            r = campaign => r?,
        };
        let until = *alive.borrow();
        let Some(until) = until.filter(|u| *u > Instant::now()) else {
            return Ok(());
        };
        let rev = key.as_ref().map_or(0, LeaderKey::rev);
        let began = Instant::now();
        self.view.send_modify(|v| {
            v.leader = Some(self.name.to_string());
            v.mine_until = Some(until);
            v.begin(began);
        });
        tracing::info!(central = %self.name, term = rev, at_ms = unix_ms(began),
            "leadership: became the leader");
        let mut lease_view = alive.subscribe();
        let resign = loop {
            tokio::select! {
                () = cancel.cancelled() => break true,
                () = &mut keep => break false,
                changed = lease_view.changed() => {
                    if changed.is_err() { break false; }
                    let until = *lease_view.borrow_and_update();
                    match until {
                        Some(u) => self.view.send_modify(|v| v.mine_until = Some(u)),
                        None => break false,
                    }
                }
            }
        };
        // Leadership ended when our lease was last surely alive, or now.
        let ended = self
            .view
            .borrow()
            .mine_until
            .map_or(Instant::now(), |u| u.min(Instant::now()));
        self.view.send_modify(|v| {
            v.mine_until = None;
            v.leader = None;
            v.end(ended);
        });
        tracing::info!(central = %self.name, term = rev, until_ms = unix_ms(ended),
            "leadership: no longer the leader");
        if resign {
            if let Some(k) = key {
                let _ = client
                    .resign(Some(ResignOptions::new().with_leader(k)))
                    .await;
            }
            let _ = client.lease_revoke(lease).await;
        }
        Ok(())
    }

    /// Follow who leads (for followers' answers), every quarter TTL.
    async fn observe(
        self,
        mut client: Client,
        election: String,
        ttl: Duration,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let seen = match client.leader(election.as_bytes()).await {
                Ok(r) => r.kv().and_then(|kv| kv.value_str().ok()).map(str::to_owned),
                Err(e) if e.to_string().contains("no leader") => None,
                Err(e) => {
                    tracing::debug!(error = %e, "leadership: cannot read the leader");
                    continue;
                }
            };
            self.view.send_if_modified(|v| {
                if v.mine_until.is_none() && v.leader != seen {
                    v.leader = seen;
                    true
                } else {
                    false
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_begin_and_end_in_order_and_only_the_latest_are_kept() {
        let alone = Leadership::alone("solo");
        let t = alone.terms();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].ended_ms, None, "a single central leads from its start");

        let l = Leadership::new("c1");
        assert!(l.terms().is_empty());
        let base = Instant::now();
        let ms = |n: u64| base + Duration::from_millis(n);
        for k in 0..(TERMS_KEPT + 3) as u64 {
            l.view.send_modify(|v| v.begin(ms(20 * k)));
            l.view.send_modify(|v| v.end(ms(20 * k + 10)));
            // Ending twice changes nothing.
            l.view.send_modify(|v| v.end(ms(20 * k + 15)));
        }
        let t = l.terms();
        assert_eq!(t.len(), TERMS_KEPT);
        // The oldest went: the first kept began at the fourth term.
        assert!(t[0].began_ms >= unix_ms(ms(60)) - 1, "{t:?}");
        for w in t.windows(2) {
            let ended = w[0].ended_ms.unwrap();
            assert!(w[0].began_ms < ended && ended <= w[1].began_ms, "{t:?}");
        }
    }
}
