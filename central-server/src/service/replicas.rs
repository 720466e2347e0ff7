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

use super::{DirectoryService, Steps, authorize, bearer, lock, parse_peer};
use crate::error::{Error, Result};
use crate::etcd::{Change, Decline};
use crate::index::{Index, Lease};
use crate::replication::{
    self, Action, Input, Pin, PinBook, Proof, ProofVia, Task, Tasks, Unplaced, plan,
};
use crate::store::Withdrawal;

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

/// Audits running at once (each fetches one chunk).
const AUDITS_IN_FLIGHT: usize = 8;
/// Failed audits in a row after which a holder's claim is dropped from
/// the directory (it may announce the file again, and is audited again).
const MAX_STRIKES: u32 = 3;

/// Pins, tasks, declines and proofs, in memory.
#[derive(Default)]
pub(crate) struct Replicas {
    pins: RwLock<PinBook>,
    tasks: Mutex<Tasks>,
    declined: Mutex<HashMap<(PeerId, FileId), Decline>>,
    /// Copies the directory stands behind (see [`Proof`]).
    proofs: Mutex<HashMap<(PeerId, FileId), Proof>>,
    /// The planner's own memory (on the leader).
    planner: Mutex<Memory>,
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
        lock(&self.proofs).clear();
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
            Change::Proof { peer, file, proof } => {
                let mut proofs = lock(&self.proofs);
                match proof {
                    Some(x) => proofs.insert((peer, file), x),
                    None => proofs.remove(&(peer, file)),
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
        lock(&self.proofs).retain(|(p, _), _| p != peer);
    }

    fn proven(&self, peer: &PeerId, file: &FileId) -> bool {
        lock(&self.proofs).contains_key(&(*peer, *file))
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
        let copies = ix.live_copies(file, now);
        let live = copies.len() as u32;
        let replicas = copies.iter().filter(|(_, r)| *r).count() as u32;
        let proven = copies
            .iter()
            .filter(|(p, _)| self.replicas().proven(p, file))
            .count() as u32;
        v1::Replication {
            wanted,
            live,
            replicas,
            state: replication::state(wanted, live, proven).to_owned(),
            proven,
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
                proven: 0,
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
        let addr = super::source(&req);
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
            // The same limits per source address: a key costs one
            // Challenge, an address does not come that cheap.
            let (count, bytes) = self
                .replicas()
                .pins
                .read()
                .usage_of_addr(addr, &peer, &file);
            if count + 1 > limits.max_pins_per_addr {
                return Err(Error::LimitExceeded(format!(
                    "pins: {count} pins were set from {addr}, the limit (CENTRAL_MAX_PINS_PER_ADDR); remove one first (peerdex replicate ID 0)"
                ))
                .into());
            }
            if bytes.saturating_add(more) > limits.max_pinned_bytes_per_addr {
                return Err(Error::LimitExceeded(format!(
                    "pinned bytes: {bytes} pinned from {addr} + {more} (size {size} × {} copies) exceed CENTRAL_MAX_PINNED_BYTES_PER_ADDR ({})",
                    r.replicas, limits.max_pinned_bytes_per_addr
                ))
                .into());
            }
            Some(Pin {
                replicas: r.replicas,
                size,
                name,
                at: super::unix_secs(),
                addr: Some(addr),
                orphaned_at: None,
            })
        };
        self.store_pin(file, peer, pin.clone()).await?;
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
        let replication = self.replication(&ix, file, now);
        let waiting = (replication.state == "under")
            .then(|| self.waiting_for_room(&ix, file, &replication, size, now))
            .flatten()
            .map(|u| u.message())
            .unwrap_or_default();
        v1::PinStatus {
            file_id: file.to_hex(),
            name,
            size,
            pinned,
            replication: Some(replication),
            waiting,
        }
    }

    /// A pin short of copies that no volunteer can take now: what the
    /// planner found (on the leader), or else what this central sees (no
    /// fetch open for it and no volunteer with room for it).
    fn waiting_for_room(
        &self,
        ix: &Index,
        file: &FileId,
        r: &v1::Replication,
        size: u64,
        now: Instant,
    ) -> Option<Unplaced> {
        if let Some(u) = lock(&self.replicas().planner).unplaced.get(file) {
            return Some(*u);
        }
        let fetching = lock(&self.replicas().tasks)
            .iter()
            .any(|((_, f), t)| f == file && t.action == Action::Fetch);
        if fetching || r.live == 0 {
            return None;
        }
        let mut pinned = BTreeMap::new();
        pinned.insert(*file, (r.wanted, size, String::new()));
        let (files, volunteers) = ix.replication_view(now, &pinned);
        let holders: HashSet<PeerId> = files
            .iter()
            .filter(|f| f.id == *file)
            .flat_map(|f| f.holders.iter().map(|h| h.peer))
            .collect();
        let room = |v: &replication::Volunteer| v.quota.saturating_sub(v.used);
        if volunteers
            .iter()
            .any(|v| !holders.contains(&v.peer) && room(v) >= size)
        {
            return None;
        }
        Some(Unplaced {
            wanted_bytes: size.saturating_mul(u64::from(r.wanted.saturating_sub(r.proven))),
            free_bytes: volunteers.iter().map(room).fold(0, u64::saturating_add),
        })
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

    /// Write `peer`'s pin of `file` (`None` removes it) where the
    /// directory keeps pins, and in memory.
    async fn store_pin(&self, file: FileId, peer: PeerId, pin: Option<Pin>) -> Result<()> {
        if let Some(etcd) = self.etcd() {
            let revision = etcd.set_pin(&file, &peer, pin.as_ref()).await?;
            etcd.wait_applied(revision).await?;
        } else {
            let p = pin.clone();
            self.write(move |_, store| store.set_pin(&file, &peer, p.as_ref()))
                .await?;
            self.replicas().pins.write().set(file, peer, pin);
        }
        Ok(())
    }

    /// Pins whose owner has no lease are marked orphaned; those orphaned
    /// for `CENTRAL_PIN_ORPHAN_DAYS` end (their replicas are released by
    /// the planner); an owner back in time clears the mark.
    async fn end_orphan_pins(&self, now: Instant) -> Result<()> {
        let secs = super::unix_secs();
        let keep = i64::try_from(self.shared.pin_orphan.as_secs()).unwrap_or(i64::MAX);
        let changes: Vec<(FileId, PeerId, Option<Pin>)> = {
            let book = self.replicas().pins.read();
            let ix = self.index();
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
                    if let Some(m) = self.metrics() {
                        m.pin_orphaned();
                    }
                }
            }
            self.store_pin(f, p, pin).await?;
        }
        Ok(())
    }

    /// Mark each holder proven or not, each file auditing or not, and
    /// start the audits that are due (at most [`AUDITS_IN_FLIGHT`]).
    fn schedule_audits(&self, files: &mut [replication::FileState], tasks: &Tasks, now_ms: u64) {
        let reps = self.replicas();
        let every = self.shared.audit_every.as_millis() as u64;
        let proofs: HashSet<(PeerId, FileId)> = lock(&reps.proofs).keys().copied().collect();
        let audit_wait = (crate::audit::AUDIT_TIMEOUT + Duration::from_secs(2)).as_millis() as u64;
        let mut start = Vec::new();
        {
            let mut mem = lock(&reps.planner);
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
        let ix = self.index();
        let now = Instant::now();
        for (peer, file) in start {
            let url = ix.url_of(&peer, now);
            let this = self.clone();
            tokio::spawn(async move {
                let result = match url {
                    Some(url) => {
                        let credential = this
                            .shared
                            .network
                            .as_ref()
                            .and_then(|n| n.own_credential().ok());
                        this.shared
                            .auditor
                            .audit(&url, &file, credential.as_deref())
                            .await
                            .map(|_| ())
                    }
                    None => Err(crate::audit::AuditError::Unreachable("no lease".into())),
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
        result: std::result::Result<(), crate::audit::AuditError>,
    ) -> Result<()> {
        let reps = self.replicas();
        let now_ms = unix_ms();
        let every = self.shared.audit_every.as_millis() as u64;
        let proven = reps.proven(&peer, &file);
        if let Some(m) = self.metrics() {
            m.audit(result.is_ok());
        }
        let (strikes, give_up) = {
            let mut mem = lock(&reps.planner);
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
                        + (self.shared.audit_retry.as_millis() as u64 * u64::from(m.strikes))
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
                self.set_proof(
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
                    self.set_proof(peer, file, None).await?;
                }
            }
        }
        if give_up {
            tracing::warn!(%peer, %file, "audit: {MAX_STRIKES} failed audits in a row; its claim is dropped from the directory");
            self.drop_claim(peer, file).await?;
        }
        Ok(())
    }

    /// Record (or forget) that the directory stands behind a copy.
    async fn set_proof(&self, peer: PeerId, file: FileId, proof: Option<Proof>) -> Result<()> {
        if let Some(etcd) = self.etcd() {
            let revision = etcd.set_proof(&peer, &file, proof.as_ref()).await?;
            if revision > 0 {
                etcd.wait_applied(revision).await?;
            }
        } else {
            let mut proofs = lock(&self.replicas().proofs);
            match proof {
                Some(p) => proofs.insert((peer, file), p),
                None => proofs.remove(&(peer, file)),
            };
        }
        Ok(())
    }

    /// Forget proofs of copies nobody claims any more (the leader).
    async fn forget_stale_proofs(&self, files: &[replication::FileState]) -> Result<()> {
        let held: HashSet<(PeerId, FileId)> = files
            .iter()
            .flat_map(|f| f.holders.iter().map(|h| (h.peer, f.id)))
            .collect();
        let stale: Vec<(PeerId, FileId)> = lock(&self.replicas().proofs)
            .keys()
            .filter(|k| !held.contains(k))
            .copied()
            .collect();
        for (p, f) in stale {
            self.set_proof(p, f, None).await?;
        }
        Ok(())
    }

    /// Remove `peer`'s claim to hold `file` (every name), as its own
    /// Unpublish would.
    async fn drop_claim(&self, peer: PeerId, file: FileId) -> Result<()> {
        let refs: Vec<Withdrawal> = vec![(file, None)];
        if let Some(etcd) = self.etcd() {
            let _serial = self.peer_lock(&peer).await;
            let Some(meta) = etcd.peer_meta(&peer) else {
                return Ok(());
            };
            match etcd.unpublish(&peer, meta.lease, 0, &refs).await {
                Ok(crate::etcd::Ordered::Applied(revision)) => etcd.wait_applied(revision).await?,
                Ok(_) => {}
                Err(e) if crate::etcd::lease_gone(&e) => {}
                Err(e) => return Err(e),
            }
        } else {
            self.write(move |gate, store| {
                store.unpublish(&peer, &refs)?;
                let mut steps = Steps::new(gate);
                steps.unpublish(&peer, &refs);
                Ok(())
            })
            .await?;
        }
        if let Some(m) = self.metrics() {
            m.claim_dropped();
        }
        Ok(())
    }

    /// One round of the planner: end orphaned pins, audit, read the state,
    /// plan, write the difference in tasks, log the decisions.
    pub(crate) async fn plan_once(&self) -> Result<()> {
        let now = Instant::now();
        self.end_orphan_pins(now).await?;
        let now_ms = unix_ms();
        let reps = self.replicas();
        let pinned: BTreeMap<FileId, (u32, u64, String)>;
        let pinners: HashMap<FileId, Option<std::net::IpAddr>>;
        {
            let book = reps.pins.read();
            pinned = book
                .files()
                .map(|(f, wanted, p)| (f, (wanted, p.size, p.name.clone())))
                .collect();
            pinners = book.files().map(|(f, _, _)| (f, book.pinner(&f))).collect();
        }
        let (mut files, volunteers) = self.index().replication_view(now, &pinned);
        for f in &mut files {
            f.pinner = pinners.get(&f.id).copied().flatten();
        }
        let old_tasks = lock(&reps.tasks).clone();
        self.schedule_audits(&mut files, &old_tasks, now_ms);
        self.forget_stale_proofs(&files).await?;
        if files.is_empty() && old_tasks.is_empty() {
            return Ok(());
        }
        let expired: Vec<(PeerId, FileId)>;
        let declined: HashSet<(PeerId, FileId)> = {
            let d = lock(&reps.declined);
            let old = |x: &Decline| now_ms.saturating_sub(x.at_ms) > DECLINE_FOR.as_millis() as u64;
            expired = d.iter().filter(|(_, x)| old(x)).map(|(k, _)| *k).collect();
            d.iter().filter(|(_, x)| !old(x)).map(|(k, _)| *k).collect()
        };
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
            let mut mem = lock(&reps.planner);
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
                self.set_proof(
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
        fig.unplaced = lock(&reps.planner).unplaced.len();
        fig.proofs = lock(&reps.proofs).len();
        for (f, wanted, _) in book.files() {
            let copies = ix.live_copies(&f, now);
            let live = copies.len() as u32;
            let proven = copies.iter().filter(|(p, _)| reps.proven(p, &f)).count() as u32;
            match replication::state(wanted, live, proven) {
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
