//! The leader's rounds: orphaned pins end, copies are audited, the
//! planner runs, and the tasks it wants are written through the directory
//! (the volunteers find theirs in their Heartbeat answers).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerdex_common::sync::lock;
use peerdex_proto::{FileId, PeerId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::audit::{AUDIT_TIMEOUT, AuditError, Auditor};
use super::planner::{Action, FileState, Input, Pin, Proof, ProofVia, Task, Tasks, Unplaced, plan};
use crate::config::Config;
use crate::directory::{Directory, TaskChanges, unix_secs};
use crate::error::Result;
use crate::etcd::Decline;
use crate::index::Lease;
use crate::leader::Leadership;
use crate::metrics::Metrics;

/// A declined FETCH keeps that volunteer out of that file for this long
/// (it may have room again later).
const DECLINE_FOR: Duration = Duration::from_secs(600);
/// A FETCH open for longer (plus a second per MiB) is given to another.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Audits running at once (each fetches one chunk).
const AUDITS_IN_FLIGHT: usize = 8;
/// Failed audits in a row after which a holder's claim is dropped from
/// the directory (it may announce the file again, and is audited again).
const MAX_STRIKES: u32 = 3;

/// The settings of the rounds.
#[derive(Debug, Clone, Copy)]
struct Timing {
    heartbeat_interval: Duration,
    /// CENTRAL_REPLICA_GRACE_SECS.
    replica_grace: Duration,
    /// CENTRAL_PIN_ORPHAN_DAYS.
    pin_orphan: Duration,
    /// CENTRAL_AUDIT_SECS, and the wait after a failed audit.
    audit_every: Duration,
    audit_retry: Duration,
}

/// Runs the rounds while this central leads (a single central leads
/// itself). Shared as `Arc<Replicator>`.
pub(crate) struct Replicator {
    dir: Arc<Directory>,
    leadership: Leadership,
    /// Checks claimed copies (see [`super::audit`]).
    auditor: Auditor,
    /// The planner's own memory (on the leader).
    memory: Mutex<Memory>,
    metrics: Option<Arc<Metrics>>,
    timing: Timing,
}

#[derive(Default)]
struct Memory {
    over_since: HashMap<FileId, u64>,
    lost: BTreeSet<FileId>,
    unplaced: BTreeMap<FileId, Unplaced>,
    /// Audits of each copy the planner looks after.
    audits: HashMap<(PeerId, FileId), AuditMemo>,
}

/// The leader's audit schedule for one copy.
#[derive(Debug, Clone, Copy, Default)]
struct AuditMemo {
    /// When the next audit is due (Unix milliseconds).
    next_ms: u64,
    /// Failed audits in a row.
    strikes: u32,
    /// An audit has answered since this leader took over.
    answered: bool,
    running: bool,
    /// When this leader first saw the claim (Unix milliseconds).
    first_seen_ms: u64,
}

/// Milliseconds since the Unix epoch, as tasks, declines and proofs keep
/// them.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Replicator {
    pub(crate) fn new(
        dir: Arc<Directory>,
        leadership: Leadership,
        config: &Config,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self> {
        Ok(Self {
            dir,
            leadership,
            auditor: Auditor::new(&config.peer_ca)?,
            memory: Mutex::default(),
            metrics,
            timing: Timing {
                heartbeat_interval: config.heartbeat_interval,
                replica_grace: config.replica_grace,
                pin_orphan: config.pin_orphan,
                audit_every: config.audit_every,
                audit_retry: config.audit_retry,
            },
        })
    }

    /// What the planner found of a pin no volunteer can take now (on the
    /// leader; `None` elsewhere or when there is room).
    pub(crate) fn unplaced(&self, file: &FileId) -> Option<Unplaced> {
        lock(&self.memory).unplaced.get(file).copied()
    }

    /// Pins short of copies that no volunteer can take (for the metrics).
    pub(crate) fn unplaced_count(&self) -> usize {
        lock(&self.memory).unplaced.len()
    }

    /// Remove `peer`'s claim to hold `file` from the directory.
    async fn drop_claim(&self, peer: PeerId, file: FileId) -> Result<()> {
        self.dir.drop_claim(peer, file).await?;
        if let Some(m) = &self.metrics {
            m.claim_dropped();
        }
        Ok(())
    }

    /// Plan replicas while this central leads, every `every`, until
    /// `cancel`.
    pub(crate) async fn plan_loop(self: Arc<Self>, cancel: CancellationToken) {
        let every = (self.timing.heartbeat_interval / 2)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.leadership.is_leader() {
                if leading {
                    // A new leader starts from what is stored, not from
                    // our memory.
                    *lock(&self.memory) = Memory::default();
                    leading = false;
                }
                continue;
            }
            leading = true;
            if let Err(e) = self.plan_once().await {
                tracing::warn!(error = %e, "replication: planning failed; retrying");
            }
        }
    }

    /// Pins whose owner has no lease are marked orphaned; those orphaned
    /// for `CENTRAL_PIN_ORPHAN_DAYS` end (their replicas are released by
    /// the planner); an owner back in time clears the mark.
    async fn end_orphan_pins(&self, now: Instant) -> Result<()> {
        let secs = unix_secs();
        let keep = i64::try_from(self.timing.pin_orphan.as_secs()).unwrap_or(i64::MAX);
        let changes: Vec<(FileId, PeerId, Option<Pin>)> = {
            let book = self.dir.replicas().pins();
            let ix = self.dir.index();
            book.all()
                .filter_map(|(f, p, pin)| {
                    let live = ix.lease(&p, now) == Lease::Live;
                    match (live, pin.orphaned_at) {
                        (true, Some(_)) => Some((
                            f,
                            p,
                            Some(Pin {
                                orphaned_at: None,
                                ..pin.clone()
                            }),
                        )),
                        (false, None) => Some((
                            f,
                            p,
                            Some(Pin {
                                orphaned_at: Some(secs),
                                ..pin.clone()
                            }),
                        )),
                        (false, Some(at)) if secs.saturating_sub(at) >= keep => Some((f, p, None)),
                        _ => None,
                    }
                })
                .collect()
        };
        for (f, p, pin) in changes {
            match &pin {
                Some(x) if x.orphaned_at.is_some() => {
                    tracing::info!(peer = %p, file = %f, "pin: its owner has no lease; it ends after CENTRAL_PIN_ORPHAN_DAYS unless the owner comes back")
                }
                Some(_) => tracing::info!(peer = %p, file = %f, "pin: its owner is back"),
                None => {
                    tracing::info!(peer = %p, file = %f, "pin ended: its owner has been gone for CENTRAL_PIN_ORPHAN_DAYS");
                    if let Some(m) = &self.metrics {
                        m.pin_orphaned();
                    }
                }
            }
            self.dir.set_pin(f, p, pin).await?;
        }
        Ok(())
    }

    /// Mark each holder proven or not, each file auditing or not, and
    /// start the audits that are due (at most [`AUDITS_IN_FLIGHT`]).
    fn schedule_audits(self: &Arc<Self>, files: &mut [FileState], tasks: &Tasks, now_ms: u64) {
        let reps = self.dir.replicas();
        let every = self.timing.audit_every.as_millis() as u64;
        let proofs = reps.proofs();
        let audit_wait = (AUDIT_TIMEOUT + Duration::from_secs(2)).as_millis() as u64;
        let mut start = Vec::new();
        {
            let mut mem = lock(&self.memory);
            let held: HashSet<(PeerId, FileId)> = files
                .iter()
                .flat_map(|f| f.holders.iter().map(|h| (h.peer, f.id)))
                .collect();
            mem.audits.retain(|k, m| m.running || held.contains(k));
            let mut running = mem.audits.values().filter(|m| m.running).count();
            for f in files.iter_mut() {
                for h in &mut f.holders {
                    let k = (h.peer, f.id);
                    h.proven = proofs.contains(&k);
                    let m = mem.audits.entry(k).or_insert_with(|| AuditMemo {
                        // A proven copy (a previous leader's word) is
                        // audited some time within the period; any other
                        // at once.
                        next_ms: if h.proven {
                            now_ms + rand::random_range(0..every.max(1))
                        } else {
                            now_ms
                        },
                        first_seen_ms: now_ms,
                        ..AuditMemo::default()
                    });
                    // The planner waits for the first audit of an owner's
                    // copy or of one it asked for (so a new leader does not
                    // ask for copies that exist), but not longer than an
                    // audit takes, and never for an unsolicited replica
                    // claim (it cannot count before its audit anyway).
                    let asked = tasks.contains_key(&k);
                    if !h.proven
                        && !m.answered
                        && (!h.replica || asked)
                        && now_ms.saturating_sub(m.first_seen_ms) < audit_wait
                    {
                        f.auditing = true;
                    }
                    if !m.running && m.next_ms <= now_ms && running < AUDITS_IN_FLIGHT {
                        m.running = true;
                        running += 1;
                        start.push(k);
                    }
                }
            }
        }
        let ix = self.dir.index();
        let now = Instant::now();
        for (peer, file) in start {
            let url = ix.url_of(&peer, now);
            let this = self.clone();
            tokio::spawn(async move {
                let result = match url {
                    Some(url) => {
                        let credential = this.dir.network().and_then(|n| n.own_credential().ok());
                        this.auditor
                            .audit(&url, &file, credential.as_deref())
                            .await
                            .map(|_| ())
                    }
                    None => Err(AuditError::Unreachable("no lease".into())),
                };
                if let Err(e) = this.audited(peer, file, result).await {
                    tracing::warn!(error = %e, %peer, %file, "audit: cannot record the result; retrying later");
                }
            });
        }
    }

    /// Record an audit's answer: a pass proves the copy, a failure takes
    /// the proof away and is a strike; after [`MAX_STRIKES`] the holder's
    /// claim is dropped.
    async fn audited(
        &self,
        peer: PeerId,
        file: FileId,
        result: std::result::Result<(), AuditError>,
    ) -> Result<()> {
        let reps = self.dir.replicas();
        let now_ms = unix_ms();
        let every = self.timing.audit_every.as_millis() as u64;
        let proven = reps.proven(&peer, &file);
        if let Some(m) = &self.metrics {
            m.audit(result.is_ok());
        }
        let (strikes, give_up) = {
            let mut mem = lock(&self.memory);
            let Some(m) = mem.audits.get_mut(&(peer, file)) else {
                return Ok(());
            };
            m.running = false;
            m.answered = true;
            match &result {
                Ok(()) => {
                    m.strikes = 0;
                    // Some spread, so audits do not come in waves.
                    m.next_ms = now_ms + every / 2 + rand::random_range(0..every.max(2) / 2);
                }
                Err(_) => {
                    m.strikes += 1;
                    m.next_ms = now_ms
                        + (self.timing.audit_retry.as_millis() as u64 * u64::from(m.strikes))
                            .min(every);
                }
            }
            let s = m.strikes;
            if s >= MAX_STRIKES {
                mem.audits.remove(&(peer, file));
            }
            (s, s >= MAX_STRIKES)
        };
        match result {
            Ok(()) if !proven => {
                tracing::info!(%peer, %file, "audit: a copy checked out; it counts");
                self.dir
                    .set_proof(
                        peer,
                        file,
                        Some(Proof {
                            via: ProofVia::Audited,
                            at_ms: now_ms,
                        }),
                    )
                    .await?;
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(%peer, %file, strikes, error = %e, "audit: a copy failed its audit; it does not count");
                if proven {
                    self.dir.set_proof(peer, file, None).await?;
                }
            }
        }
        if give_up {
            tracing::warn!(%peer, %file, "audit: {MAX_STRIKES} failed audits in a row; its claim is dropped from the directory");
            self.drop_claim(peer, file).await?;
        }
        Ok(())
    }

    /// Forget proofs of copies nobody claims any more (the leader).
    async fn forget_stale_proofs(&self, files: &[FileState]) -> Result<()> {
        let held: HashSet<(PeerId, FileId)> = files
            .iter()
            .flat_map(|f| f.holders.iter().map(|h| (h.peer, f.id)))
            .collect();
        let stale: Vec<(PeerId, FileId)> = self
            .dir
            .replicas()
            .proofs()
            .into_iter()
            .filter(|k| !held.contains(k))
            .collect();
        for (p, f) in stale {
            self.dir.set_proof(p, f, None).await?;
        }
        Ok(())
    }

    /// One round of the planner: end orphaned pins, audit, read the state,
    /// plan, write the difference in tasks, log the decisions.
    pub(crate) async fn plan_once(self: &Arc<Self>) -> Result<()> {
        let now = Instant::now();
        self.end_orphan_pins(now).await?;
        let now_ms = unix_ms();
        let reps = self.dir.replicas();
        let (pinned, pinners) = reps.pinned();
        let (mut files, volunteers) = self.dir.index().replication_view(now, &pinned);
        for f in &mut files {
            f.pinner = pinners.get(&f.id).copied().flatten();
        }
        let old_tasks = reps.tasks();
        self.schedule_audits(&mut files, &old_tasks, now_ms);
        self.forget_stale_proofs(&files).await?;
        if files.is_empty() && old_tasks.is_empty() {
            return Ok(());
        }
        let expired: Vec<(PeerId, FileId)>;
        let declined: HashSet<(PeerId, FileId)> = {
            let d = reps.declines();
            let old = |at_ms: u64| now_ms.saturating_sub(at_ms) > DECLINE_FOR.as_millis() as u64;
            expired = d
                .iter()
                .filter(|(_, at)| old(*at))
                .map(|(k, _)| *k)
                .collect();
            d.iter()
                .filter(|(_, at)| !old(*at))
                .map(|(k, _)| *k)
                .collect()
        };
        let input = Input {
            files,
            volunteers,
            tasks: old_tasks.clone(),
            declined,
            over_since: lock(&self.memory).over_since.clone(),
            now_ms,
            grace_ms: self.timing.replica_grace.as_millis() as u64,
            fetch_timeout_ms: FETCH_TIMEOUT.as_millis() as u64,
        };
        let plan = plan(&input);
        let give: Vec<(PeerId, FileId, Task)> = plan
            .tasks
            .iter()
            .filter(|(k, t)| old_tasks.get(k) != Some(t))
            .map(|(&(p, f), t)| (p, f, t.clone()))
            .collect();
        let withdraw: Vec<(PeerId, FileId)> = old_tasks
            .keys()
            .filter(|k| !plan.tasks.contains_key(k))
            .copied()
            .collect();
        for (p, f, t) in &give {
            tracing::info!(
                peer = %p,
                file = %f,
                name = t.name,
                size = t.size,
                "replication: asked a volunteer to {} a copy",
                t.action.as_str()
            );
            if let Some(m) = &self.metrics {
                m.task_given(t.action == Action::Fetch);
            }
        }
        let mut fetched = Vec::new();
        for (p, f) in &withdraw {
            let done = input.files.iter().find(|x| x.id == *f).is_some_and(|x| {
                let holds = x.holders.iter().any(|h| h.peer == *p);
                match old_tasks[&(*p, *f)].action {
                    Action::Fetch => holds,
                    Action::Drop => !holds,
                }
            });
            let action = old_tasks[&(*p, *f)].action;
            let what = action.as_str();
            if done {
                tracing::info!(peer = %p, file = %f, "replication: a volunteer did its {what}");
                if action == Action::Fetch {
                    fetched.push((*p, *f));
                }
            } else {
                tracing::info!(peer = %p, file = %f, "replication: {what} no longer needed; withdrawn");
            }
        }
        let timed_out: Vec<(FileId, PeerId)> =
            plan.timed_out.iter().map(|(p, f)| (*f, *p)).collect();
        for (f, p) in &timed_out {
            tracing::warn!(peer = %p, file = %f, "replication: a fetch took too long; asking another volunteer");
        }
        {
            let mut mem = lock(&self.memory);
            for f in plan.lost.difference(&mem.lost) {
                tracing::warn!(file = %f, "replication: a pinned file has no live copy (lost until a peer that has it comes back)");
            }
            for f in mem.lost.difference(&plan.lost) {
                tracing::info!(file = %f, "replication: a lost file has a live copy again");
            }
            mem.lost = plan.lost.clone();
            mem.over_since = plan.over_since.clone();
            for (f, u) in &plan.unplaced {
                if !mem.unplaced.contains_key(f) {
                    tracing::warn!(file = %f, "replication: {}", u.message());
                }
            }
            mem.unplaced = plan.unplaced.clone();
            // A copy fetched at our request counts (a verified download),
            // unless an audit of it failed meanwhile; audits go on.
            fetched.retain(|k| mem.audits.get(k).is_none_or(|m| m.strikes == 0));
        }
        for (p, f) in fetched {
            if !reps.proven(&p, &f) {
                self.dir
                    .set_proof(
                        p,
                        f,
                        Some(Proof {
                            via: ProofVia::Fetched,
                            at_ms: now_ms,
                        }),
                    )
                    .await?;
            }
        }
        let decline = |at_ms| Decline {
            reason: "timed out".into(),
            at_ms,
        };
        self.dir
            .set_tasks(TaskChanges {
                tasks: plan.tasks,
                give,
                withdraw,
                timed_out: timed_out
                    .into_iter()
                    .map(|(f, p)| (p, f, decline(now_ms)))
                    .collect(),
                forget: expired,
            })
            .await
    }
}
