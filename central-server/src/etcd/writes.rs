//! The directory's writes: a Join (checked against the key binding, the
//! nonce and the peer's record revision), inventory changes in the
//! order their peer made them ([`Ordered`]), Leave, pins, proofs, the
//! planner's tasks, declines and forgotten bindings. Inventories bigger
//! than one transaction ([`TXN_OPS`]) are written in batches under the
//! same lease. A write returns the revision to wait for
//! ([`Etcd::wait_applied`]).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp};
use peerdex_proto::convert::SharedFile;
use peerdex_proto::{FileId, PeerId};
use tokio::time::Instant;

use super::Etcd;
use super::client::{EtcdError, lease_not_found, unavailable};
use super::pages;
use super::schema::{
    Binding, Decline, PeerRecord, holding_value, holdings_of, parse_seq, seq_value,
};
use crate::error::Result;
use crate::replication::{Pin, Proof, Task};

/// Most operations in one etcd transaction (etcd's default
/// `--max-txn-ops`).
pub const TXN_OPS: usize = 128;

/// Most bytes of operations in one transaction: etcd refuses a request
/// over its `--max-request-bytes` (1.5 MiB by default), and inventory
/// pages are big values (see `pages`). This leaves room for the rest of
/// a Join's first transaction.
pub const TXN_BYTES: usize = 1024 * 1024;

/// A Publish of at least this many files, as an ordered change, is
/// written in pages (a big inventory joins as a Join and Publish pages,
/// issue 30); a smaller one as a key per holding, which costs less than
/// a page for a few rows.
pub const PAGED_PUBLISH: usize = 32;

/// The operations of one write with their size in bytes, cut into
/// transactions of at most [`TXN_OPS`] operations and [`TXN_BYTES`].
#[derive(Default)]
struct Ops(Vec<(TxnOp, usize)>);

impl Ops {
    fn put(&mut self, key: String, value: Vec<u8>, lease: Option<i64>) {
        let bytes = key.len() + value.len();
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        self.0.push((TxnOp::put(key, value, opts), bytes));
    }

    fn delete(&mut self, key: String, prefix: bool) {
        let bytes = key.len();
        let opts = prefix.then(|| DeleteOptions::new().with_prefix());
        self.0.push((TxnOp::delete(key, opts), bytes));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The end of the operations from `from` that fit in `ops` operations
    /// and `bytes` (at least one, so every transaction makes progress).
    fn fit(&self, from: usize, ops: usize, bytes: usize) -> usize {
        let mut end = from;
        let mut used = 0;
        while end < self.0.len() && end - from < ops {
            used += self.0[end].1;
            if used > bytes && end > from {
                break;
            }
            end += 1;
        }
        end
    }

    fn slice(&self, from: usize, to: usize) -> Vec<TxnOp> {
        self.0[from..to].iter().map(|(op, _)| op.clone()).collect()
    }
}

/// A Join's write: the first transaction checks the key binding, the
/// nonce and the peer's record revision, and puts the binding, the spent
/// nonce, the record and the first holdings; the rest follow in batches.
pub(crate) struct JoinWrite<'a> {
    pub peer: PeerId,
    pub record: PeerRecord,
    pub binding: Binding,
    pub nonce: &'a [u8],
    pub files: &'a [SharedFile],
}

/// Why a Join's first transaction did not apply.
#[derive(Debug)]
pub(crate) enum JoinConflict {
    /// The id is bound to another key.
    OtherKey,
    /// The nonce was spent (at another central, say).
    NonceSpent,
    /// The record changed meanwhile (another Join or a lease end).
    Raced,
}

/// What became of an ordered inventory change.
#[derive(Debug)]
pub(crate) enum Ordered {
    /// Applied (or applied again): the revision to wait for.
    Applied(i64),
    /// A later change (this number) was applied already: refused.
    Superseded(u64),
    /// The peer's session is gone.
    Gone,
}

/// `value` as JSON for etcd.
fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, EtcdError> {
    serde_json::to_vec(value).map_err(|source| EtcdError::Encode { what, source })
}

impl Etcd {
    /// The lease that spent nonces live on: valid at least as long as any
    /// nonce issued now.
    async fn nonce_lease(&self, valid: Duration) -> Result<i64> {
        let mut l = self.nonce_lease.lock().await;
        if let Some((id, at)) = *l
            && at.elapsed() < valid
        {
            return Ok(id);
        }
        let id = self.grant(valid * 2 + Duration::from_secs(5)).await?;
        *l = Some((id, Instant::now()));
        Ok(id)
    }

    /// Put `ops` in transactions of at most [`TXN_OPS`]; the revision of
    /// the last.
    async fn batches(&self, what: &'static str, ops: Vec<TxnOp>) -> Result<i64, EtcdError> {
        let mut revision = 0;
        for chunk in ops.chunks(TXN_OPS) {
            let r = self.txn(what, Txn::new().and_then(chunk.to_vec())).await?;
            revision = r.header().map_or(revision, |h| h.revision());
        }
        Ok(revision)
    }

    /// Write `ops` from `from` on, in transactions that fit (see
    /// [`Ops`]); the revision of the last.
    async fn write(
        &self,
        what: &'static str,
        ops: &Ops,
        mut from: usize,
    ) -> Result<i64, EtcdError> {
        let mut revision = 0;
        while from < ops.len() {
            let to = ops.fit(from, TXN_OPS, TXN_BYTES);
            let r = self
                .txn(what, Txn::new().and_then(ops.slice(from, to)))
                .await?;
            revision = r.header().map_or(revision, |h| h.revision());
            from = to;
        }
        Ok(revision)
    }

    /// One key per holding (`files/<peer>/<file>/<name>`).
    fn put_holdings(&self, ops: &mut Ops, peer: &PeerId, lease: i64, files: &[SharedFile]) {
        for f in files {
            ops.put(
                self.holding_key(peer, &f.id, f.name.as_str()),
                holding_value(f.size, f.replica).into_bytes(),
                Some(lease),
            );
        }
    }

    /// The holdings of change `seq` (0: the Join) in pages (see `pages`).
    fn put_pages(&self, ops: &mut Ops, peer: &PeerId, lease: i64, seq: u64, files: &[SharedFile]) {
        for (part, page) in pages::encode(files).into_iter().enumerate() {
            ops.put(self.page_key(peer, seq, part), page, Some(lease));
        }
    }

    /// A Join: see [`JoinWrite`]. On success, the revision to wait for and
    /// the lease the peer had before (revoked here, after the new
    /// inventory is written).
    pub(crate) async fn join(
        &self,
        w: JoinWrite<'_>,
        nonce_valid: Duration,
    ) -> Result<std::result::Result<i64, JoinConflict>> {
        let peer = w.peer;
        let lease = w.record.lease;
        let before = self.peer_meta(&peer);
        let known_binding = self.binding_bytes(&peer);
        let nonce_key = self.nonce_key(w.nonce);
        let nonce_lease = self.nonce_lease(nonce_valid).await?;
        let bkey = self.binding_key(&peer);
        let pkey = self.peer_key(&peer);
        let mut when = vec![
            Compare::create_revision(nonce_key.clone(), CompareOp::Equal, 0),
            match &known_binding {
                Some(raw) => Compare::value(bkey.clone(), CompareOp::Equal, raw.clone()),
                None => Compare::create_revision(bkey.clone(), CompareOp::Equal, 0),
            },
        ];
        when.push(match before {
            Some(m) => Compare::mod_revision(pkey.clone(), CompareOp::Equal, m.mod_revision),
            None => Compare::create_revision(pkey.clone(), CompareOp::Equal, 0),
        });
        let record = encode("a peer record", &w.record)?;
        let binding = encode("a key binding", &w.binding)?;
        let mut ops = vec![
            // A new session: its inventory changes count from 1 again.
            TxnOp::put(
                self.seq_key(&peer),
                seq_value(0),
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(
                nonce_key.clone(),
                "",
                Some(PutOptions::new().with_lease(nonce_lease)),
            ),
            TxnOp::put(bkey.clone(), binding, None),
            TxnOp::put(
                pkey.clone(),
                record,
                Some(PutOptions::new().with_lease(lease)),
            ),
        ];
        // The previous session's holdings kept as keys (published while
        // live, or written by an older central) go now, before the pages
        // are written: left to the revocation of the old lease below,
        // their deletes would withdraw, at every central, the same
        // holdings the new pages announce. Its pages and tombstones need
        // not: a page's delete changes nothing, and a full read counts
        // only those of the peer's current lease.
        if self.pages {
            ops.push(TxnOp::delete(
                self.key(&holdings_of(&peer)),
                Some(DeleteOptions::new().with_prefix()),
            ));
        }
        // Without pages (`CENTRAL_ETCD_PAGES=false`) the new session's keys
        // are put again under its lease (etcd refuses a delete and a put of
        // one key in one transaction), and the revocation of the old lease
        // below takes only the keys the new inventory does not hold, as
        // before pages.
        let fixed_bytes = 4096 + w.nonce.len() * 2;
        let mut inventory = Ops::default();
        if self.pages {
            self.put_pages(&mut inventory, &peer, lease, 0, w.files);
        } else {
            self.put_holdings(&mut inventory, &peer, lease, w.files);
        }
        let first = if inventory.len() == 0 {
            0
        } else {
            inventory.fit(0, TXN_OPS - ops.len(), TXN_BYTES - fixed_bytes)
        };
        ops.extend(inventory.slice(0, first));
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else([TxnOp::get(nonce_key, None), TxnOp::get(bkey, None)]);
        // Not repeated on failure: a lost answer leaves the Join unknown,
        // and the peer joins again with a fresh nonce.
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("join", e))?;
        if !r.succeeded() {
            let mut found = r.op_responses().into_iter().map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            let (nonce, bound) = (found.next().flatten(), found.next().flatten());
            if nonce.is_some() {
                return Ok(Err(JoinConflict::NonceSpent));
            }
            if let Some(kv) = bound
                && let Ok(b) = serde_json::from_slice::<Binding>(kv.value())
                && b.key != w.binding.key
            {
                return Ok(Err(JoinConflict::OtherKey));
            }
            return Ok(Err(JoinConflict::Raced));
        }
        let mut revision = r.header().map_or(0, |h| h.revision());
        if first < inventory.len() {
            revision = revision.max(self.write("join", &inventory, first).await?);
        }
        if let Some(old) = before
            && old.lease != lease
        {
            match self.client.clone().lease_revoke(old.lease).await {
                Ok(r) => revision = revision.max(r.header().map_or(0, |h| h.revision())),
                Err(e) if lease_not_found(&e) => {}
                Err(e) => tracing::warn!(%peer, error = %e,
                    "etcd: revoking the previous lease failed; it ends at its TTL"),
            }
        }
        Ok(Ok(revision))
    }

    /// Apply a peer's inventory change `ops` as change number `seq` of its
    /// session (0: unordered). The first transaction applies only if the
    /// stored number is below `seq`, and stores `seq`; the rest follow in
    /// batches. A repeat of the last change (a retry whose answer was lost)
    /// writes its operations again, which changes nothing if they landed.
    async fn ordered(
        &self,
        what: &'static str,
        peer: &PeerId,
        lease: i64,
        seq: u64,
        ops: Ops,
    ) -> Result<Ordered> {
        if seq == 0 {
            return Ok(Ordered::Applied(self.write(what, &ops, 0).await?));
        }
        let key = self.seq_key(peer);
        let mut first = vec![TxnOp::put(
            key.clone(),
            seq_value(seq),
            Some(PutOptions::new().with_lease(lease)),
        )];
        let split = ops.fit(0, TXN_OPS - 1, TXN_BYTES);
        first.extend(ops.slice(0, split));
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Less, seq_value(seq))])
            .and_then(first)
            .or_else([TxnOp::get(key, None)]);
        let r = self.txn(what, txn).await?;
        if r.succeeded() {
            let mut revision = r.header().map_or(0, |h| h.revision());
            if split < ops.len() {
                revision = revision.max(self.write(what, &ops, split).await?);
            }
            return Ok(Ordered::Applied(revision));
        }
        let stored = r.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => {
                g.kvs().first().and_then(|kv| parse_seq(kv.value()))
            }
            _ => None,
        });
        Ok(match stored {
            None => Ordered::Gone,
            Some(n) if n == seq => Ordered::Applied(self.write(what, &ops, 0).await?),
            Some(n) => Ordered::Superseded(n),
        })
    }

    /// Add holdings under the peer's lease, as change `seq`: in pages
    /// named after the change when there are many (a repeat of the change
    /// rewrites the same pages), else a key each.
    pub(crate) async fn publish(
        &self,
        peer: &PeerId,
        lease: i64,
        seq: u64,
        files: &[SharedFile],
    ) -> Result<Ordered> {
        let mut ops = Ops::default();
        if self.pages && seq > 0 && files.len() >= PAGED_PUBLISH {
            self.put_pages(&mut ops, peer, lease, seq, files);
        } else {
            self.put_holdings(&mut ops, peer, lease, files);
        }
        self.ordered("publish", peer, lease, seq, ops).await
    }

    /// Withdraw holdings (one name, or every name of a file), as change
    /// `seq`: the holding's key goes, and a tombstone on the peer's lease
    /// withdraws it from the pages, which stay as written. Rewriting the
    /// page instead would mean reading it, a compare-and-swap against
    /// other centrals, ~64 KiB through Raft and into etcd's history for
    /// one row, and a watch that diffs pages; a tombstone is one small
    /// put in the same ordered transaction. Tombstones go with the
    /// session (its lease), and a full read replays them in revision
    /// order, so a holding published again later counts again.
    pub(crate) async fn unpublish(
        &self,
        peer: &PeerId,
        lease: i64,
        seq: u64,
        refs: &[(FileId, Option<String>)],
    ) -> Result<Ordered> {
        let mut ops = Ops::default();
        // etcd refuses a transaction that puts one key twice.
        let mut seen = std::collections::HashSet::new();
        for (file, name) in refs {
            if !seen.insert((file, name.as_deref())) {
                continue;
            }
            match name {
                Some(n) => ops.delete(self.holding_key(peer, file, n), false),
                None => ops.delete(self.names_key(peer, file), true),
            }
            ops.put(
                self.tombstone_key(peer, file, name.as_deref()),
                Vec::new(),
                Some(lease),
            );
        }
        self.ordered("unpublish", peer, lease, seq, ops).await
    }

    /// End a peer's session: etcd deletes all it announced, at once.
    pub(crate) async fn leave(&self, lease: i64) -> Result<Option<i64>> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(r) => Ok(Some(r.header().map_or(0, |h| h.revision()))),
            Err(e) if lease_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable("leave", e).into()),
        }
    }

    /// Forget these bindings (each only if its peer is still absent).
    pub(crate) async fn forget_bindings(&self, peers: &[PeerId]) -> Result<usize> {
        let mut forgotten = 0;
        for p in peers {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.peer_key(p),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::delete(self.binding_key(p), None)]);
            if self.txn("forget key binding", txn).await?.succeeded() {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Set (`Some`) or remove `peer`'s pin of `file`; the revision.
    pub(crate) async fn set_pin(
        &self,
        file: &FileId,
        peer: &PeerId,
        pin: Option<&Pin>,
    ) -> Result<i64> {
        let key = self.pin_key(file, peer);
        let op = match pin {
            Some(p) => TxnOp::put(key, encode("a pin", p)?, None),
            None => TxnOp::delete(key, None),
        };
        Ok(self.batches("pin", vec![op]).await?)
    }

    /// Write the planner's changes: tasks to give (each on its volunteer's
    /// lease) and to withdraw. A volunteer whose lease ended meanwhile is
    /// skipped (etcd dropped its tasks with it). The revision of the last
    /// write.
    pub(crate) async fn set_tasks(
        &self,
        give: &[(PeerId, FileId, Task)],
        withdraw: &[(PeerId, FileId)],
    ) -> Result<i64> {
        let mut revision = 0;
        let deletes: Vec<TxnOp> = withdraw
            .iter()
            .map(|(p, f)| TxnOp::delete(self.task_key(p, f), None))
            .collect();
        if !deletes.is_empty() {
            revision = self.batches("withdraw tasks", deletes).await?;
        }
        for (p, f, t) in give {
            let Some(meta) = self.peer_meta(p) else {
                continue;
            };
            let op = TxnOp::put(
                self.task_key(p, f),
                encode("a task", t)?,
                Some(PutOptions::new().with_lease(meta.lease)),
            );
            match self.batches("give a task", vec![op]).await {
                Ok(r) => revision = revision.max(r),
                Err(e) if e.lease_gone() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(revision)
    }

    /// Record FETCHes `peer` declined, on its lease.
    pub(crate) async fn decline(
        &self,
        peer: &PeerId,
        lease: i64,
        declined: &[(FileId, Decline)],
    ) -> Result<i64> {
        let mut ops = Vec::with_capacity(declined.len());
        for (f, d) in declined {
            ops.push(TxnOp::put(
                self.declined_key(peer, f),
                encode("a decline", d)?,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        Ok(self.batches("decline", ops).await?)
    }

    /// Forget old declines (they expire: a volunteer may have room again).
    pub(crate) async fn forget_declines(&self, gone: &[(PeerId, FileId)]) -> Result<i64> {
        let ops = gone
            .iter()
            .map(|(p, f)| TxnOp::delete(self.declined_key(p, f), None))
            .collect();
        Ok(self.batches("forget declines", ops).await?)
    }

    /// Record that the directory stands behind `peer`'s copy of `file`
    /// (`Some`, on the peer's lease), or no longer. A peer whose lease
    /// ended meanwhile is skipped. The revision of the write (0: none).
    pub(crate) async fn set_proof(
        &self,
        peer: &PeerId,
        file: &FileId,
        proof: Option<&Proof>,
    ) -> Result<i64> {
        let key = self.proof_key(peer, file);
        let op = match proof {
            Some(p) => {
                let Some(meta) = self.peer_meta(peer) else {
                    return Ok(0);
                };
                TxnOp::put(
                    key,
                    encode("a proof", p)?,
                    Some(PutOptions::new().with_lease(meta.lease)),
                )
            }
            None => TxnOp::delete(key, None),
        };
        match self.batches("proof", vec![op]).await {
            Err(e) if e.lease_gone() => Ok(0),
            r => Ok(r?),
        }
    }
}
