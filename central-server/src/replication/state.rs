//! Pins, tasks, declines and proofs as this central holds them in memory,
//! and the replication figures of Locate, Search and Pin answers.
//!
//! With SQLite this is the state itself (pins are also in the database);
//! with etcd it is a mirror, changed only by the follower (see
//! `crate::directory`). Either way it changes through the directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use parking_lot::RwLock;
use peerdex_common::sync::lock;
use peerdex_proto::{FileId, PeerId, v1};
use tokio::time::Instant;

use super::planner::{self, Action, Pin, PinBook, Proof, Task, Tasks};
use crate::etcd::{Change, Decline};
use crate::index::Index;

/// Most declines kept in all (each is for a FETCH the directory gave, so
/// this is only reached with that many tasks declined within the
/// decline period); beyond it the oldest is forgotten.
pub(crate) const MAX_DECLINES_KEPT: usize = 65_536;

/// Per pinned file: the copies wanted, its size and its name.
pub(crate) type Pinned = BTreeMap<FileId, (u32, u64, String)>;

/// Pins, tasks, declines and proofs, in memory.
#[derive(Default)]
pub(crate) struct Replicas {
    pins: RwLock<PinBook>,
    tasks: Mutex<Tasks>,
    declined: Mutex<HashMap<(PeerId, FileId), Decline>>,
    /// Copies the directory stands behind (see [`Proof`]).
    proofs: Mutex<HashMap<(PeerId, FileId), Proof>>,
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
            Change::Pin { file, peer, pin } => self.set_pin(file, peer, pin),
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
            Change::Proof { peer, file, proof } => self.set_proof(peer, file, proof),
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

    pub(crate) fn set_pin(&self, file: FileId, peer: PeerId, pin: Option<Pin>) {
        self.pins.write().set(file, peer, pin);
    }

    pub(crate) fn set_proof(&self, peer: PeerId, file: FileId, proof: Option<Proof>) {
        let mut proofs = lock(&self.proofs);
        match proof {
            Some(p) => proofs.insert((peer, file), p),
            None => proofs.remove(&(peer, file)),
        };
    }

    /// Keep declines (in memory only: SQLite), the oldest going first
    /// beyond [`MAX_DECLINES_KEPT`].
    pub(crate) fn keep_declines(&self, peer: &PeerId, declines: Vec<(FileId, Decline)>) {
        let mut d = lock(&self.declined);
        for (f, x) in declines {
            if d.len() >= MAX_DECLINES_KEPT
                && let Some(oldest) = d.iter().min_by_key(|(_, x)| x.at_ms).map(|(k, _)| *k)
            {
                d.remove(&oldest);
            }
            d.insert((*peer, f), x);
        }
    }

    /// The planner's whole set of tasks, declines forgotten and added
    /// (in memory only: SQLite).
    pub(crate) fn replace_tasks(
        &self,
        tasks: Tasks,
        forget: &[(PeerId, FileId)],
        declines: Vec<(PeerId, FileId, Decline)>,
    ) {
        *lock(&self.tasks) = tasks;
        let mut d = lock(&self.declined);
        for k in forget {
            d.remove(k);
        }
        for (p, f, x) in declines {
            d.insert((p, f), x);
        }
    }

    /// The pins, to read.
    pub(crate) fn pins(&self) -> parking_lot::RwLockReadGuard<'_, PinBook> {
        self.pins.read()
    }

    pub(crate) fn proven(&self, peer: &PeerId, file: &FileId) -> bool {
        lock(&self.proofs).contains_key(&(*peer, *file))
    }

    /// Every copy the directory stands behind.
    pub(crate) fn proofs(&self) -> HashSet<(PeerId, FileId)> {
        lock(&self.proofs).keys().copied().collect()
    }

    /// The open tasks.
    pub(crate) fn tasks(&self) -> Tasks {
        lock(&self.tasks).clone()
    }

    /// The open task of `peer` for `file`, if any.
    pub(crate) fn task(&self, peer: &PeerId, file: &FileId) -> Option<Task> {
        lock(&self.tasks).get(&(*peer, *file)).cloned()
    }

    /// Take a task out of the answers (its volunteer declined it).
    pub(crate) fn withdraw(&self, peer: &PeerId, file: &FileId) {
        lock(&self.tasks).remove(&(*peer, *file));
    }

    /// Whether some volunteer is fetching `file` now.
    pub(crate) fn fetching(&self, file: &FileId) -> bool {
        lock(&self.tasks)
            .iter()
            .any(|((_, f), t)| f == file && t.action == Action::Fetch)
    }

    /// Whether a decline of `peer` for `file` is kept.
    pub(crate) fn declined(&self, peer: &PeerId, file: &FileId) -> bool {
        lock(&self.declined).contains_key(&(*peer, *file))
    }

    /// The declines kept, with when each was made.
    pub(crate) fn declines(&self) -> Vec<((PeerId, FileId), u64)> {
        lock(&self.declined)
            .iter()
            .map(|(k, x)| (*k, x.at_ms))
            .collect()
    }

    /// The open tasks of `peer`, as Heartbeat answers carry them.
    pub(crate) fn tasks_of(&self, peer: &PeerId) -> Vec<v1::ReplicaTask> {
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

    /// The replication state of `file` for answers.
    pub(crate) fn replication(&self, ix: &Index, file: &FileId, now: Instant) -> v1::Replication {
        let wanted = self.wanted(file);
        let copies = ix.live_copies(file, now);
        let live = copies.len() as u32;
        let replicas = copies.iter().filter(|(_, r)| *r).count() as u32;
        let proven = copies.iter().filter(|(p, _)| self.proven(p, file)).count() as u32;
        v1::Replication {
            wanted,
            live,
            replicas,
            state: planner::state(wanted, live, proven).to_owned(),
            proven,
        }
    }

    /// Locate of a pinned file that no live peer holds: its pin, lost.
    pub(crate) fn located_lost(&self, file: &FileId) -> Option<v1::LocatedFile> {
        let book = self.pins.read();
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

    /// Fill the replication state of located files.
    pub(crate) fn with_replication(&self, ix: &Index, files: &mut [v1::LocatedFile], now: Instant) {
        for f in files {
            if let Ok(id) = f.file_id.parse::<FileId>() {
                f.replication = Some(self.replication(ix, &id, now));
            }
        }
    }

    /// Fill the copies wanted of search hits.
    pub(crate) fn hits_with_pins(&self, hits: &mut [v1::SearchHit]) {
        if !self.has_pins() {
            return;
        }
        let book = self.pins.read();
        for h in hits {
            if let Ok(id) = h.file_id.parse::<FileId>() {
                h.replicas_wanted = book.wanted(&id);
            }
        }
    }

    /// Figures for the metrics (`unplaced` is the leader's: see
    /// [`super::Replicator`]).
    pub(crate) fn figures(&self, ix: &Index, now: Instant) -> crate::metrics::Replication {
        let book = self.pins.read();
        let mut fig = crate::metrics::Replication {
            pins: book.len(),
            tasks_open: lock(&self.tasks).len(),
            declines: lock(&self.declined).len(),
            proofs: lock(&self.proofs).len(),
            ..Default::default()
        };
        for (f, wanted, _) in book.files() {
            let copies = ix.live_copies(&f, now);
            let live = copies.len() as u32;
            let proven = copies.iter().filter(|(p, _)| self.proven(p, &f)).count() as u32;
            match planner::state(wanted, live, proven) {
                "lost" => fig.lost += 1,
                "under" => fig.under += 1,
                _ => fig.ok += 1,
            }
        }
        fig
    }

    /// The pins as the planner reads them: per file, the copies wanted,
    /// the size and name, and the address of its pinner.
    pub(crate) fn pinned(&self) -> (Pinned, HashMap<FileId, Option<std::net::IpAddr>>) {
        let book = self.pins.read();
        let pinned = book
            .files()
            .map(|(f, wanted, p)| (f, (wanted, p.size, p.name.clone())))
            .collect();
        let pinners = book.files().map(|(f, _, _)| (f, book.pinner(&f))).collect();
        (pinned, pinners)
    }
}
