//! The follower of a directory on etcd: the index (and the replication
//! state) kept equal to etcd by applying its watch, in etcd's order, at
//! every central.

use std::sync::Arc;
use std::time::Duration;

use peerdex_proto::convert::SharedFile;
use peerdex_proto::{FileName, PeerId, PeerUrl};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gate::{IndexGate, Steps};
use super::shared::Shared;
use crate::error::Result;
use crate::etcd::{Change, Etcd};
use crate::index::{Index, Load, TokenHash};

/// A lease that never ends by our clock: etcd ends it.
pub(super) fn never(now: Instant) -> Instant {
    now + Duration::from_secs(100 * 365 * 86_400)
}

/// Build the index from etcd (at start, and after falling behind a
/// compaction); returns the revision it reflects.
pub(super) async fn load(dir: &Arc<Shared>, etcd: &Etcd) -> Result<i64> {
    let (changes, revision) = etcd.snapshot().await?;
    let shared = dir.clone();
    tokio::task::spawn_blocking(move || {
        let mut fresh = Index::new();
        fresh.defer_postings(true);
        let now = Instant::now();
        let mut gone = Vec::new();
        shared.replicas.clear();
        for c in changes {
            if let Some(c) = shared.replicas.apply(c) {
                apply_one(&mut fresh, c, now, &mut gone);
            }
        }
        fresh.defer_postings(false);
        *shared.index.write() = fresh;
    })
    .await?;
    etcd.set_applied(revision);
    // Changes between the old index and this one were never fed to the
    // Watch streams: they end, and their PServers check with Locate.
    dir.watches.reloaded();
    Ok(revision)
}

/// Apply decoded changes to the index, in steps.
async fn apply_changes(dir: &Arc<Shared>, changes: Vec<Change>) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let shared = dir.clone();
    let (gone, appeared) = tokio::task::spawn_blocking(move || {
        let gate = IndexGate(&shared.index);
        let mut steps = Steps::new(&gate);
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut appeared = Vec::new();
        for c in changes {
            let Some(c) = shared.replicas.apply(c) else {
                continue;
            };
            if let Change::Holding {
                file,
                name,
                size,
                replica,
                ..
            } = &c
                && let Ok(name) = name.parse::<FileName>()
            {
                appeared.push(SharedFile {
                    id: *file,
                    size: *size,
                    name,
                    replica: *replica,
                });
            }
            if let Change::PeerGone(p) = &c {
                steps.ix().retire(p);
                steps.drop_inventory(p);
            }
            steps.room();
            apply_one(steps.ix(), c, now, &mut gone);
            steps.used += 1;
        }
        (gone, appeared)
    })
    .await?;
    // Every central applies every change: a publish made through any of
    // them reaches the Watch streams of all.
    dir.appeared(&appeared);
    if !gone.is_empty() {
        for p in &gone {
            tracing::info!(peer = %p, "peer gone (left, or its etcd lease ended)");
        }
        dir.departed(&gone);
    }
    Ok(())
}

/// Follow etcd's changes into the index until `cancel`: reconnects
/// after a failure from the next revision, reloads after falling
/// behind a compaction.
pub(super) async fn follow_loop(dir: Arc<Shared>, etcd: Arc<Etcd>, cancel: CancellationToken) {
    let mut pause = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let from = etcd.applied() + 1;
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            s = etcd.watch(from) => s,
        };
        let (_watcher, mut stream) = match stream {
            Ok(s) => s.split(),
            Err(e) => {
                tracing::warn!(error = %e, "etcd: cannot watch the directory; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                () = cancel.cancelled() => return,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(resp)) => {
                    pause = Duration::from_millis(100);
                    if resp.compact_revision() > 0 || resp.canceled() {
                        tracing::warn!(
                            compacted = resp.compact_revision(),
                            reason = resp.cancel_reason(),
                            "etcd: the watch fell behind a compaction (or was cancelled); reloading the directory"
                        );
                        if let Err(e) = load(&dir, &etcd).await {
                            tracing::warn!(error = %e, "etcd: reload failed; retrying");
                            tokio::time::sleep(pause).await;
                        }
                        break;
                    }
                    // The last event's revision, never the header's
                    // (see the crate's etcd module).
                    let Some(revision) = resp
                        .events()
                        .iter()
                        .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
                        .max()
                    else {
                        continue;
                    };
                    let changes = etcd.decode(resp.events());
                    if let Err(e) = apply_changes(&dir, changes).await {
                        tracing::error!(error = %e, "applying etcd changes failed; reloading");
                        let _ = load(&dir, &etcd).await;
                        break;
                    }
                    etcd.set_applied(revision);
                }
                Ok(None) => {
                    tracing::warn!("etcd: the watch ended; watching again");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: the watch failed; watching again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    break;
                }
            }
        }
    }
}

/// One change into `ix`; peers that went are added to `gone`.
fn apply_one(ix: &mut Index, c: Change, now: Instant, gone: &mut Vec<PeerId>) {
    match c {
        Change::Peer {
            peer,
            record,
            new_session,
        } => {
            let (Ok(url), Some(hash)) = (record.url.parse::<PeerUrl>(), token_hash(&record.token))
            else {
                tracing::warn!(%peer, "etcd: peer record with a bad URL or token hash ignored");
                return;
            };
            if new_session {
                ix.drop_some(&peer, usize::MAX);
            }
            let load = Load {
                active_uploads: record.active_uploads,
                free_upload_slots: record.free_upload_slots,
            };
            ix.begin_join(peer, url, hash, load, never(now), record.addr);
            ix.set_quota_of(&peer, record.replica_quota);
            ix.set_reach_of(
                &peer,
                crate::index::Reach {
                    relay_max: record.relay_max,
                    unlisted: record.unlisted,
                },
            );
        }
        Change::PeerGone(peer) => {
            if ix.remove_peer(&peer) {
                gone.push(peer);
            }
        }
        Change::Holding {
            peer,
            file,
            name,
            size,
            replica,
        } => {
            let Ok(name) = name.parse::<FileName>() else {
                tracing::warn!(%peer, "etcd: holding with a bad name ignored");
                return;
            };
            ix.publish(
                &peer,
                &[SharedFile {
                    id: file,
                    size,
                    name,
                    replica,
                }],
            );
        }
        Change::HoldingGone { peer, file, name } => {
            ix.unpublish(&peer, &[(file, Some(name))]);
        }
        Change::Pin { .. }
        | Change::Task { .. }
        | Change::Declined { .. }
        | Change::Proof { .. } => {
            tracing::error!("a replication change reached the index; ignored");
        }
    }
}

fn token_hash(hex_hash: &str) -> Option<TokenHash> {
    let mut h = [0; 32];
    hex::decode_to_slice(hex_hash, &mut h).ok()?;
    Some(h)
}
