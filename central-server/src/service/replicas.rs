//! Replication in the service: the Pin and Pins RPCs, replica tasks in
//! Heartbeat answers and the FETCHes volunteers decline, the replication
//! state in Locate and Search answers, and the planner loop on the leader.
//!
//! Pins, tasks and declines live in [`Replicas`], in memory. On SQLite the
//! pins are also in the database and the tasks only here (the single
//! central plans and answers every heartbeat). On etcd all three are in
//! etcd (`pins/`, `tasks/`, `declined/`), and every central mirrors them
//! through its watch: the leader plans and writes tasks, any central hands
//! a volunteer its tasks and records what it declines.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use parking_lot::RwLock;
use peerdex_proto::{FileId, PeerId, v1};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DirectoryService, authorize, bearer, lock, parse_peer};
use crate::error::{Error, Result};
use crate::etcd::{Change, Decline};
use crate::index::Index;
use crate::replication::{self, Action, Input, Pin, PinBook, Task, Tasks, plan};

/// A declined FETCH keeps that volunteer out of that file for this long
/// (it may have room again later).
const DECLINE_FOR: Duration = Duration::from_secs(600);
/// Most declines one Heartbeat may carry, and the longest reason kept.
const MAX_DECLINED: usize = 64;
const MAX_REASON: usize = 200;
/// Most declines kept in all (each is for a FETCH the directory gave, so
/// this is only reached with that many tasks declined within
/// [`DECLINE_FOR`]); beyond it the oldest is forgotten.
const MAX_DECLINES_KEPT: usize = 65_536;
/// A FETCH open for longer (plus a second per MiB) is given to another.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Pins, tasks and declines, in memory.
#[derive(Default)]
pub(crate) struct Replicas {
    pins: RwLock<PinBook>,
    tasks: Mutex<Tasks>,
    declined: Mutex<HashMap<(PeerId, FileId), Decline>>,
    /// The planner's own memory (on the leader).
    planner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    over_since: HashMap<FileId, u64>,
    lost: BTreeSet<FileId>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Replicas {
    /// Forget everything mirrored (before a reload from etcd).
    pub(crate) fn clear(&self) {
        self.pins.write().clear();
        lock(&self.tasks).clear();
        lock(&self.declined).clear();
    }

    /// Take the pins read from the database.
    pub(crate) fn load_pins(&self, pins: Vec<(FileId, PeerId, Pin)>) {
        let mut book = self.pins.write();
        for (f, p, pin) in pins {
            book.set(f, p, Some(pin));
        }
    }

    /// Apply a change mirrored from etcd; hand back the index's changes.
    pub(crate) fn apply(&self, c: Change) -> Option<Change> {
        match c {
            Change::Pin { file, peer, pin } => self.pins.write().set(file, peer, pin),
            Change::Task { peer, file, task } => {
                let mut tasks = lock(&self.tasks);
                match task {
                    Some(t) => tasks.insert((peer, file), t),
                    None => tasks.remove(&(peer, file)),
                };
            }
            Change::Declined {
                peer,
                file,
                decline,
            } => {
                let mut d = lock(&self.declined);
                match decline {
                    Some(x) => d.insert((peer, file), x),
                    None => d.remove(&(peer, file)),
                };
            }
            Change::PeerGone(p) => {
                // etcd drops a peer's tasks and declines with its lease;
                // SQLite has no such keys, so forget them here too.
                self.forget_peer(&p);
                return Some(Change::PeerGone(p));
            }
            other => return Some(other),
        }
        None
    }

    /// A peer left or expired: its tasks and declines go with it.
    pub(crate) fn forget_peer(&self, peer: &PeerId) {
        lock(&self.tasks).retain(|(p, _), _| p != peer);
        lock(&self.declined).retain(|(p, _), _| p != peer);
    }

    /// The open tasks of `peer`, as Heartbeat answers carry them.
    fn tasks_of(&self, peer: &PeerId) -> Vec<v1::ReplicaTask> {
        let lo = (*peer, FileId::from_bytes([0; 32]));
        let hi = (*peer, FileId::from_bytes([0xff; 32]));
        lock(&self.tasks)
            .range(lo..=hi)
            .map(|((_, f), t)| v1::ReplicaTask {
                action: match t.action {
                    Action::Fetch => v1::replica_task::Action::Fetch,
                    Action::Drop => v1::replica_task::Action::Drop,
                } as i32,
                file_id: f.to_hex(),
                size: t.size,
                name: t.name.clone(),
            })
            .collect()
    }

    pub(crate) fn wanted(&self, file: &FileId) -> u32 {
        self.pins.read().wanted(file)
    }

    pub(crate) fn has_pins(&self) -> bool {
        !self.pins.read().is_empty()
    }
}

impl DirectoryService {
    fn replicas(&self) -> &Replicas {
        &self.shared.replicas
    }

    /// Take the pins read from the database (SQLite).
    pub(crate) fn load_pins(&self, pins: Vec<(FileId, PeerId, Pin)>) {
        self.replicas().load_pins(pins);
    }

    /// The replication state of `file` for answers.
    pub(super) fn replication(&self, ix: &Index, file: &FileId, now: Instant) -> v1::Replication {
        let wanted = self.replicas().wanted(file);
        let (live, replicas) = ix.copies(file, now);
        v1::Replication {
            wanted,
            live,
            replicas,
            state: replication::state(wanted, live).to_owned(),
        }
    }

    /// Locate of a pinned file that no live peer holds: its pin, lost.
    pub(super) fn located_lost(&self, file: &FileId) -> Option<v1::LocatedFile> {
        let book = self.replicas().pins.read();
        let pin = book.any(file)?;
        Some(v1::LocatedFile {
            file_id: file.to_hex(),
            size: pin.size,
            names: vec![pin.name.clone()],
            holders: Vec::new(),
            replication: Some(v1::Replication {
                wanted: book.wanted(file),
                live: 0,
                replicas: 0,
                state: "lost".into(),
            }),
        })
    }

    /// Fill the replication state of located files and search hits.
    pub(super) fn with_replication(&self, files: &mut [v1::LocatedFile], now: Instant) {
        let ix = self.index();
        for f in files {
            if let Ok(id) = f.file_id.parse::<FileId>() {
                f.replication = Some(self.replication(&ix, &id, now));
            }
        }
    }

    pub(super) fn hits_with_pins(&self, hits: &mut [v1::SearchHit]) {
        if !self.replicas().has_pins() {
            return;
        }
        let book = self.replicas().pins.read();
        for h in hits {
            if let Ok(id) = h.file_id.parse::<FileId>() {
                h.replicas_wanted = book.wanted(&id);
            }
        }
    }

    /// The tasks to hand `peer` in its Heartbeat answer, after recording
    /// what it declined.
    ///
    /// A decline counts only for a FETCH the directory gave this peer and
    /// that is open at that moment: anything else (an id it was never
    /// asked for, a repeat of a decline already kept) is left out, costs
    /// no memory and, on etcd, no write. So the declines kept for a peer
    /// are at most the FETCHes it was given, and in total at most
    /// [`MAX_DECLINES_KEPT`] (the oldest go first beyond). They are logged
    /// at debug level: a peer cannot make the log grow with them.
    pub(super) async fn heartbeat_replicas(
        &self,
        peer: &PeerId,
        declined: Vec<v1::Declined>,
    ) -> Result<Vec<v1::ReplicaTask>> {
        // A Heartbeat renews the lease whatever its declines say: entries
        // beyond the limit, malformed ones and ones for tasks not given
        // are left out.
        if !declined.is_empty() {
            let now_ms = unix_ms();
            let sent = declined.len();
            let mut parsed = Vec::new();
            {
                let mut tasks = lock(&self.replicas().tasks);
                let kept = lock(&self.replicas().declined);
                for d in declined.into_iter().take(MAX_DECLINED) {
                    let Ok(file) = d.file_id.parse::<FileId>() else {
                        continue;
                    };
                    let key = (*peer, file);
                    let given = tasks.get(&key).is_some_and(|t| t.action == Action::Fetch);
                    if !given || kept.contains_key(&key) {
                        continue;
                    }
                    // Out of the answers at once; the planner asks another.
                    tasks.remove(&key);
                    let mut reason: String = d.reason.chars().take(MAX_REASON).collect();
                    if reason.trim().is_empty() {
                        reason = "no reason given".into();
                    }
                    tracing::debug!(%peer, %file, reason, "replication: a volunteer declined a fetch");
                    parsed.push((
                        file,
                        Decline {
                            reason,
                            at_ms: now_ms,
                        },
                    ));
                }
            }
            if parsed.len() < sent {
                tracing::debug!(%peer, sent, taken = parsed.len(),
                    "declined: entries beyond {MAX_DECLINED}, malformed, repeated or for a fetch not given to this peer were left out");
            }
            if parsed.is_empty() {
                // Nothing to record.
            } else if let Some(etcd) = self.etcd() {
                if let Some(meta) = etcd.peer_meta(peer) {
                    let revision = etcd.decline(peer, meta.lease, &parsed).await?;
                    etcd.wait_applied(revision).await?;
                }
            } else {
                let mut d = lock(&self.replicas().declined);
                for (f, x) in parsed {
                    if d.len() >= MAX_DECLINES_KEPT
                        && let Some(oldest) = d.iter().min_by_key(|(_, x)| x.at_ms).map(|(k, _)| *k)
                    {
                        d.remove(&oldest);
                    }
                    d.insert((*peer, f), x);
                }
            }
        }
        Ok(self.replicas().tasks_of(peer))
    }

    pub(super) async fn pin_rpc(
        &self,
        req: tonic::Request<v1::PinRequest>,
    ) -> Result<tonic::Response<v1::PinResponse>, tonic::Status> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        self.peer_rate(&peer, &token)?;
        let now = Instant::now();
        authorize(&self.index(), &peer, &token, now)?;
        let file: FileId = r
            .file_id
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("file_id: {e}")))?;
        let limits = &self.shared.limits;
        let max = limits.max_replicas;
        if r.replicas > max {
            return Err(Error::InvalidArgument(format!(
                "replicas: {} is above CENTRAL_MAX_REPLICAS ({max}); ask for 2 to {max} live copies, or 0 to stop asking",
                r.replicas
            ))
            .into());
        }
        // One pin change of a peer at a time (its limits are checked
        // against its other pins).
        let _serial = self.peer_lock(&peer).await;
        let known = self.index().locate_id(&file, now, 1);
        let pin = if r.replicas <= 1 {
            if known.is_none() && self.replicas().pins.read().any(&file).is_none() {
                return Err(not_found(&file).into());
            }
            None
        } else {
            let (size, name) = match (&known, self.replicas().pins.read().any(&file)) {
                (Some(k), _) => (k.size, k.names.first().cloned().unwrap_or_default()),
                (None, Some(p)) => (p.size, p.name.clone()),
                (None, None) => return Err(not_found(&file).into()),
            };
            let (count, bytes) = self.replicas().pins.read().usage(&peer, &file);
            if count + 1 > limits.max_pins_per_peer {
                return Err(Error::LimitExceeded(format!(
                    "pins: peer {peer} holds {count} pins, the limit (CENTRAL_MAX_PINS_PER_PEER); remove one first (peerdex replicate ID 0)"
                ))
                .into());
            }
            let more = size.saturating_mul(u64::from(r.replicas));
            if bytes.saturating_add(more) > limits.max_pinned_bytes_per_peer {
                return Err(Error::LimitExceeded(format!(
                    "pinned bytes: {bytes} pinned + {more} (size {size} × {} copies) exceed CENTRAL_MAX_PINNED_BYTES_PER_PEER ({})",
                    r.replicas, limits.max_pinned_bytes_per_peer
                ))
                .into());
            }
            Some(Pin {
                replicas: r.replicas,
                size,
                name,
                at: super::unix_secs(),
            })
        };
        if let Some(etcd) = self.etcd() {
            let revision = etcd.set_pin(&file, &peer, pin.as_ref()).await?;
            etcd.wait_applied(revision).await?;
        } else {
            let p = pin.clone();
            self.write(move |_, store| store.set_pin(&file, &peer, p.as_ref()))
                .await?;
            self.replicas().pins.write().set(file, peer, pin.clone());
        }
        match &pin {
            Some(p) => {
                tracing::info!(%peer, %file, name = p.name, replicas = p.replicas, "pin set")
            }
            None => tracing::info!(%peer, %file, "pin removed"),
        }
        Ok(tonic::Response::new(v1::PinResponse {
            pin: Some(self.pin_status(&file, &peer, now)),
        }))
    }

    pub(super) async fn pins_rpc(
        &self,
        req: tonic::Request<v1::PinsRequest>,
    ) -> Result<tonic::Response<v1::PinsResponse>, tonic::Status> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let now = Instant::now();
        authorize(&self.index(), &peer, &token, now)?;
        let mine = self.replicas().pins.read().of(&peer);
        let pins = mine
            .into_iter()
            .map(|(f, _)| self.pin_status(&f, &peer, now))
            .collect();
        Ok(tonic::Response::new(v1::PinsResponse { pins }))
    }

    fn pin_status(&self, file: &FileId, peer: &PeerId, now: Instant) -> v1::PinStatus {
        let ix = self.index();
        let located = ix.locate_id(file, now, 1);
        let book = self.replicas().pins.read();
        let mine = book.get(file, peer);
        let (size, name) = match (&located, mine.or_else(|| book.any(file))) {
            (Some(l), _) => (l.size, l.names.first().cloned().unwrap_or_default()),
            (None, Some(p)) => (p.size, p.name.clone()),
            (None, None) => (0, String::new()),
        };
        let pinned = mine.map_or(0, |p| p.replicas);
        drop(book);
        v1::PinStatus {
            file_id: file.to_hex(),
            name,
            size,
            pinned,
            replication: Some(self.replication(&ix, file, now)),
        }
    }

    /// Plan replicas while this central leads, every `every`, until
    /// `cancel`.
    pub(crate) async fn plan_loop(self, cancel: CancellationToken) {
        let every = (self.shared.heartbeat_interval / 2)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.shared.leadership.is_leader() {
                if leading {
                    // A new leader starts from what is stored, not from
                    // our memory.
                    *lock(&self.replicas().planner) = Memory::default();
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

    /// One round of the planner: read the state, plan, write the
    /// difference in tasks, log the decisions.
    pub(crate) async fn plan_once(&self) -> Result<()> {
        let now_ms = unix_ms();
        let now = Instant::now();
        let reps = self.replicas();
        let pinned: BTreeMap<FileId, (u32, u64, String)> = reps
            .pins
            .read()
            .files()
            .map(|(f, wanted, p)| (f, (wanted, p.size, p.name.clone())))
            .collect();
        let (files, volunteers) = self.index().replication_view(now, &pinned);
        if files.is_empty() && lock(&reps.tasks).is_empty() {
            return Ok(());
        }
        let expired: Vec<(PeerId, FileId)>;
        let declined: HashSet<(PeerId, FileId)> = {
            let d = lock(&reps.declined);
            let old = |x: &Decline| now_ms.saturating_sub(x.at_ms) > DECLINE_FOR.as_millis() as u64;
            expired = d.iter().filter(|(_, x)| old(x)).map(|(k, _)| *k).collect();
            d.iter().filter(|(_, x)| !old(x)).map(|(k, _)| *k).collect()
        };
        let old_tasks = lock(&reps.tasks).clone();
        let input = Input {
            files,
            volunteers,
            tasks: old_tasks.clone(),
            declined,
            over_since: lock(&reps.planner).over_since.clone(),
            now_ms,
            grace_ms: self.shared.replica_grace.as_millis() as u64,
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
            if let Some(m) = self.metrics() {
                m.task_given(t.action == Action::Fetch);
            }
        }
        for (p, f) in &withdraw {
            let done = input.files.iter().find(|x| x.id == *f).is_some_and(|x| {
                let holds = x.holders.iter().any(|h| h.peer == *p);
                match old_tasks[&(*p, *f)].action {
                    Action::Fetch => holds,
                    Action::Drop => !holds,
                }
            });
            let what = old_tasks[&(*p, *f)].action.as_str();
            if done {
                tracing::info!(peer = %p, file = %f, "replication: a volunteer did its {what}");
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
            let mut mem = lock(&reps.planner);
            for f in plan.lost.difference(&mem.lost) {
                tracing::warn!(file = %f, "replication: a pinned file has no live copy (lost until a peer that has it comes back)");
            }
            for f in mem.lost.difference(&plan.lost) {
                tracing::info!(file = %f, "replication: a lost file has a live copy again");
            }
            mem.lost = plan.lost.clone();
            mem.over_since = plan.over_since.clone();
        }
        let decline = |at_ms| Decline {
            reason: "timed out".into(),
            at_ms,
        };
        if let Some(etcd) = self.etcd() {
            if give.is_empty() && withdraw.is_empty() && timed_out.is_empty() && expired.is_empty()
            {
                return Ok(());
            }
            let mut revision = etcd.set_tasks(&give, &withdraw).await?;
            for (f, p) in &timed_out {
                if let Some(meta) = etcd.peer_meta(p) {
                    revision = revision.max(
                        etcd.decline(p, meta.lease, &[(*f, decline(now_ms))])
                            .await?,
                    );
                }
            }
            if !expired.is_empty() {
                revision = revision.max(etcd.forget_declines(&expired).await?);
            }
            etcd.wait_applied(revision).await?;
        } else {
            *lock(&reps.tasks) = plan.tasks;
            let mut d = lock(&reps.declined);
            for k in &expired {
                d.remove(k);
            }
            for (f, p) in timed_out {
                d.insert((p, f), decline(now_ms));
            }
        }
        Ok(())
    }

    /// Figures for the metrics.
    pub(super) fn replication_figures(&self) -> crate::metrics::Replication {
        let now = Instant::now();
        let reps = self.replicas();
        let book = reps.pins.read();
        let ix = self.index();
        let mut fig = crate::metrics::Replication {
            pins: book.len(),
            tasks_open: lock(&reps.tasks).len(),
            declines: lock(&reps.declined).len(),
            ..Default::default()
        };
        for (f, wanted, _) in book.files() {
            let (live, _) = ix.copies(&f, now);
            match replication::state(wanted, live) {
                "lost" => fig.lost += 1,
                "under" => fig.under += 1,
                _ => fig.ok += 1,
            }
        }
        fig
    }
}

fn not_found(file: &FileId) -> Error {
    Error::NotFound(format!(
        "file_id: no live peer holds {file} and nobody pinned it; share or upload it first"
    ))
}
