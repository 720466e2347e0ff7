//! A Join or Publish inventory on its way in.
//!
//! A Join or Publish is applied entry by entry: an entry that cannot be
//! taken (a malformed id or name, or a size that contradicts the peer's own
//! claim for the same id) is listed in the answer's `refused` with the
//! reason, and the rest of the inventory is applied. Only what concerns the
//! whole call (authentication, the peer id or URL, the entry-count limits)
//! fails it.

use peerdex_proto::convert::SharedFile;
use peerdex_proto::{PeerId, v1};
use prost::Message;

use crate::error::{Invalid, Result};
use crate::index::{Index, SizeConflict};

/// A Join/Publish inventory on its way in: the well-formed entries (with
/// their positions in the request) and the refused ones.
#[derive(Default)]
pub(crate) struct Inventory {
    /// Entries in the request.
    pub(crate) total: usize,
    pub(crate) files: Vec<SharedFile>,
    /// `positions[k]` is the request position of `files[k]`.
    pub(crate) positions: Vec<usize>,
    pub(crate) refused: Vec<(usize, v1::Refused)>,
}

impl Inventory {
    /// Move the entries that contradict the peer's own size claims (see
    /// [`Index::size_conflicts`]) to `refused`; return what is left to
    /// apply and the refusals in request order. A list of refusals too big
    /// to answer (over `budget` bytes encoded) fails the call instead,
    /// before anything is applied.
    pub(crate) fn screen(
        mut self,
        ix: &Index,
        peer: &PeerId,
        replace: bool,
        budget: usize,
    ) -> Result<(Vec<SharedFile>, Vec<v1::Refused>)> {
        let conflicts = ix.size_conflicts(peer, &self.files, replace);
        let mut refused_at = vec![false; self.files.len()];
        for SizeConflict {
            index,
            claimed,
            size,
        } in conflicts
        {
            refused_at[index] = true;
            let f = &self.files[index];
            let i = self.positions[index];
            self.refused.push((
                i,
                v1::Refused {
                    file_id: f.id.to_hex(),
                    name: f.name.to_string(),
                    reason: format!(
                        "files[{i}]: this peer already lists file id {} with size {claimed}; size {size} refused (one size per file per peer)",
                        f.id
                    ),
                },
            ));
        }
        self.refused.sort_by_key(|&(i, _)| i);
        let encoded: usize = self.refused.iter().map(|(_, r)| r.encoded_len() + 4).sum();
        if encoded > budget {
            return Err(Invalid::TooManyRefused {
                refused: self.refused.len(),
                total: self.total,
                bytes: encoded,
                first: self.refused[0].1.reason.clone(),
            }
            .into());
        }
        let accepted = self
            .files
            .into_iter()
            .zip(refused_at)
            .filter(|(_, refused)| !refused)
            .map(|(f, _)| f)
            .collect();
        Ok((accepted, self.refused.into_iter().map(|(_, r)| r).collect()))
    }
}

pub(crate) fn log_refused(peer: &PeerId, refused: &[v1::Refused]) {
    if let Some(first) = refused.first() {
        tracing::info!(%peer, refused = refused.len(), first = %first.reason, "inventory entries refused");
    }
}
