//! Changes to the index in steps.
//!
//! The index sits behind one read-write lock (parking_lot's, which is fair
//! and lets a writer hand over to waiting threads). Readers (Locate,
//! Search, Heartbeat) take the read side. Changes take the write side in
//! steps of at most [`STEP`] holdings and hand the lock over between steps
//! ([`Steps`]), so a big Join, Publish, Unpublish, Leave or lease sweep
//! never makes a reader wait for more than one step (about a millisecond
//! at a million names). A reader may see a big change half applied, never
//! a change that is not committed.

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use peerdex_proto::PeerId;
use peerdex_proto::convert::SharedFile;

use crate::index::Index;
use crate::store::Withdrawal;

/// Most holdings one step of a bulk change adds or removes under the
/// write lock (see [`Steps`]).
pub const STEP: usize = 2048;

/// Access to the index lock inside a mutation, which already holds the
/// store mutex: the lock order is always store → index.
pub(crate) struct IndexGate<'a>(pub(super) &'a RwLock<Index>);
impl IndexGate<'_> {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.0.read()
    }
    pub(crate) fn lock(&self) -> RwLockWriteGuard<'_, Index> {
        self.0.write()
    }
}

/// A change applied to the index in steps: at most [`STEP`] holdings per
/// hold of the write lock, which is handed over fairly to any waiting
/// reader between steps (`bump`).
pub(crate) struct Steps<'a> {
    guard: RwLockWriteGuard<'a, Index>,
    pub(crate) used: usize,
}

impl<'a> Steps<'a> {
    pub(crate) fn new(gate: &'a IndexGate<'a>) -> Self {
        let mut guard = gate.lock();
        guard.defer_postings(true);
        Self { guard, used: 0 }
    }

    /// Room left in this step; ends the step (the token map made whole,
    /// the lock handed over) first when none is.
    pub(crate) fn room(&mut self) -> usize {
        if self.used >= STEP {
            self.guard.flush_postings();
            RwLockWriteGuard::bump(&mut self.guard);
            self.used = 0;
        }
        STEP - self.used
    }

    pub(crate) fn ix(&mut self) -> &mut Index {
        &mut self.guard
    }

    /// Remove `peer`'s whole inventory, then the peer.
    pub(crate) fn drop_inventory(&mut self, peer: &PeerId) {
        loop {
            let room = self.room();
            let before = self.ix().inventory_len(peer);
            let left = self.ix().drop_some(peer, room);
            self.used += before - left + 1;
            if left == 0 {
                return;
            }
        }
    }

    pub(crate) fn remove_peer(&mut self, peer: &PeerId) {
        self.drop_inventory(peer);
        self.ix().remove_peer(peer);
    }

    pub(crate) fn publish(&mut self, peer: &PeerId, mut files: &[SharedFile]) {
        while !files.is_empty() {
            let room = self.room();
            let (now, later) = files.split_at(room.min(files.len()));
            self.ix().publish(peer, now);
            self.used += now.len();
            files = later;
        }
    }

    pub(crate) fn unpublish(&mut self, peer: &PeerId, mut refs: &[Withdrawal]) {
        while !refs.is_empty() {
            let room = self.room();
            let (now, later) = refs.split_at(room.min(refs.len()));
            self.ix().unpublish(peer, now);
            self.used += now.len();
            refs = later;
        }
    }
}

impl Drop for Steps<'_> {
    fn drop(&mut self) {
        self.guard.defer_postings(false);
    }
}
