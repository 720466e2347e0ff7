//! The replica FETCH tasks this peer declined, on their way to the
//! directory: each Heartbeat carries at most [`DECLINES_PER_BEAT`] of
//! them, oldest first, and gives them back when no central took the call.
//! The replica worker adds to it ([`super::Central::decline`]); the lease
//! loop empties it.

use std::sync::Mutex;

use peerdex_common::sync::lock;
use peerdex_proto::v1;

/// Most declines one Heartbeat carries (the directory reads at most 64);
/// the rest wait for the next ones.
const DECLINES_PER_BEAT: usize = 64;

/// Declines not sent to the directory yet, oldest first.
#[derive(Debug, Default)]
pub(super) struct Declines(Mutex<Vec<v1::Declined>>);

impl Declines {
    /// A new decline of a file: replaces one of the same file still waiting.
    pub(super) fn push(&self, d: v1::Declined) {
        let mut q = lock(&self.0);
        q.retain(|o| o.file_id != d.file_id);
        q.push(d);
    }

    /// A decline said again (its task came back): added unless one of the
    /// same file is waiting.
    pub(super) fn repeat(&self, d: v1::Declined) {
        let mut q = lock(&self.0);
        if !q.iter().any(|o| o.file_id == d.file_id) {
            q.push(d);
        }
    }

    /// Declines for the next Heartbeat (given back with [`Self::give_back`]
    /// if it does not get through).
    pub(super) fn take(&self) -> Vec<v1::Declined> {
        take_some(&mut lock(&self.0))
    }

    pub(super) fn give_back(&self, declined: Vec<v1::Declined>) {
        let mut q = lock(&self.0);
        // Back in front: they are older than any decline made meanwhile.
        for d in declined.into_iter().rev() {
            if !q.iter().any(|o| o.file_id == d.file_id) {
                q.insert(0, d);
            }
        }
    }
}

/// The first [`DECLINES_PER_BEAT`] of `outgoing`, oldest first.
fn take_some(outgoing: &mut Vec<v1::Declined>) -> Vec<v1::Declined> {
    let n = outgoing.len().min(DECLINES_PER_BEAT);
    outgoing.drain(..n).collect()
}

#[cfg(test)]
mod tests {
    use peerdex_proto::FileId;

    use super::*;

    #[test]
    fn declines_go_at_most_64_a_heartbeat_oldest_first() {
        let mut outgoing: Vec<v1::Declined> = (0..100u8)
            .map(|i| v1::Declined {
                file_id: FileId::from_bytes([i; 32]).to_hex(),
                reason: "r".into(),
            })
            .collect();
        let first = take_some(&mut outgoing);
        assert_eq!(first.len(), 64);
        assert_eq!(first[0].file_id, FileId::from_bytes([0; 32]).to_hex());
        assert_eq!(take_some(&mut outgoing).len(), 36);
        assert!(take_some(&mut outgoing).is_empty());
    }

    #[test]
    fn declines_given_back_go_first_once_each() {
        let d = |i: u8| v1::Declined {
            file_id: FileId::from_bytes([i; 32]).to_hex(),
            reason: format!("r{i}"),
        };
        let q = Declines::default();
        q.push(d(1));
        q.push(d(2));
        let taken = q.take();
        assert_eq!(taken, vec![d(1), d(2)]);
        q.push(d(3));
        q.repeat(d(3));
        q.give_back(taken);
        assert_eq!(q.take(), vec![d(1), d(2), d(3)]);
        q.push(d(4));
        q.push(v1::Declined {
            reason: "again".into(),
            ..d(4)
        });
        assert_eq!(
            q.take(),
            vec![v1::Declined {
                reason: "again".into(),
                ..d(4)
            }]
        );
    }
}
