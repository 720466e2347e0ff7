//! The follower of a directory on etcd: the index (and the replication
//! state) kept equal to etcd by applying its watch, in etcd's order, at
//! every central.
//!
//! At start the index comes from this central's snapshot when it has a
//! usable one ([`start`]: same cluster and prefix, and etcd still keeps
//! the history after its revision), and the watch then brings it up to
//! date before the central serves ([`catch_up`]); else from a full read.
//! The follower writes the snapshot between two watch answers, so the
//! index, the mirror and the revision agree ([`Snapshots`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peerdex_proto::convert::SharedFile;
use peerdex_proto::{FileId, FileName, PeerId, PeerUrl, v1};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gate::{IndexGate, Steps};
use super::shared::Shared;
use crate::error::{Error, Result};
use crate::etcd::{Change, Etcd};
use crate::index::{Holdings, Index, Load, Row, TokenHash};
use crate::snapshot::{self, Snapshot};

/// The longest wait for the watch to bring a snapshot's index up to date
/// at start (a fall behind a compaction meanwhile means a full read).
const CATCH_UP: Duration = Duration::from_secs(600);

/// Where and how often this central writes its snapshot.
pub(super) struct Snapshots {
    pub path: PathBuf,
    /// Zero: no snapshot is read or written.
    pub every: Duration,
    /// The etcd cluster's id, written in the snapshot.
    pub cluster: u64,
}

/// Build the index at start: from the snapshot when it is usable, else
/// from a full read. Returns the revision it reflects and where it came
/// from.
pub(super) async fn start(
    dir: &Arc<Shared>,
    etcd: &Arc<Etcd>,
    snaps: &Snapshots,
) -> Result<(i64, v1::IndexSource)> {
    if snaps.every.is_zero() {
        return Ok((load(dir, etcd).await?, v1::IndexSource::FullRead));
    }
    let path = snaps.path.clone();
    let read = tokio::task::spawn_blocking(move || snapshot::load(&path)).await?;
    let source = match read {
        Ok(None) => v1::IndexSource::FullRead,
        Err(e) => {
            tracing::warn!(error = %e, "the snapshot is unusable: deleted; reading the whole directory from etcd");
            snapshot::discard(&snaps.path);
            v1::IndexSource::FullReadCorrupt
        }
        Ok(Some(snap)) if snap.cluster != snaps.cluster || snap.prefix != etcd.prefix() => {
            tracing::warn!(cluster = snap.cluster, prefix = %snap.prefix,
                "the snapshot is of another etcd cluster or prefix; reading the whole directory from etcd");
            v1::IndexSource::FullReadStale
        }
        Ok(Some(snap)) if !etcd.has_history_from(snap.revision).await? => {
            tracing::warn!(
                revision = snap.revision,
                "etcd no longer keeps the history after the snapshot (compacted); reading the whole directory"
            );
            v1::IndexSource::FullReadStale
        }
        Ok(Some(snap)) => {
            let revision = snap.revision;
            let t = std::time::Instant::now();
            let (shared, e) = (dir.clone(), etcd.clone());
            tokio::task::spawn_blocking(move || {
                let fresh = from_snapshot(&shared, &e, snap);
                *shared.index.write() = fresh;
            })
            .await?;
            etcd.set_applied(revision);
            tracing::info!(
                revision,
                secs = t.elapsed().as_secs_f64(),
                "index loaded from the snapshot; following etcd from its revision"
            );
            return Ok((revision, v1::IndexSource::Snapshot));
        }
    };
    Ok((load(dir, etcd).await?, source))
}

/// The index a snapshot describes (its mirror restored on the way).
fn from_snapshot(shared: &Shared, etcd: &Etcd, snap: Snapshot) -> Index {
    build(shared, etcd.restore(&snap.kvs), &snap.holdings)
}

/// A whole index with the bulk loader: `changes` (peers first, and the
/// replication keys) one by one, then every holding of `holdings`.
fn build(shared: &Shared, changes: Vec<Change>, holdings: &Holdings) -> Index {
    let peers = changes
        .iter()
        .filter(|c| matches!(c, Change::Peer { .. }))
        .count();
    let mut fresh = Index::with_capacity(peers, holdings.files.len());
    let now = Instant::now();
    let mut gone = Vec::new();
    shared.replicas.clear();
    for c in changes {
        if let Some(c) = shared.replicas.apply(c) {
            apply_one(&mut fresh, c, now, &mut gone);
        }
    }
    let skipped = fresh.import(holdings);
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "holdings without their peer (or with a contradicting size) were skipped"
        );
    }
    fresh.finish_bulk();
    fresh
}

/// A full read's changes: the holdings in tables for the bulk loader
/// (names checked as the watch checks them), everything else as is.
fn tables(changes: Vec<Change>) -> (Vec<Change>, Holdings) {
    let mut h = Holdings::default();
    let mut peer_at: HashMap<PeerId, u32> = HashMap::new();
    let mut file_at: HashMap<FileId, u32> = HashMap::new();
    let mut rest = Vec::new();
    for c in changes {
        let Change::Holding {
            peer,
            file,
            name,
            size,
            replica,
        } = c
        else {
            rest.push(c);
            continue;
        };
        if name.parse::<FileName>().is_err() {
            tracing::warn!(%peer, "etcd: holding with a bad name ignored");
            continue;
        }
        let peer = *peer_at.entry(peer).or_insert_with(|| {
            h.peers.push(peer);
            h.peers.len() as u32 - 1
        });
        let file = *file_at.entry(file).or_insert_with(|| {
            h.files.push(file);
            h.files.len() as u32 - 1
        });
        h.names.push_str(&name);
        h.name_ends.push(h.names.len() as u64);
        h.rows.push(Row {
            peer,
            file,
            name: h.name_ends.len() as u32 - 1,
            size,
            replica,
        });
    }
    (rest, h)
}

/// Wait until the watch has applied every change etcd had when this is
/// called (after a start from a snapshot: serve nothing older).
pub(super) async fn catch_up(etcd: &Etcd) -> Result<()> {
    let (now, _) = etcd.position().await?;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        match etcd.wait_applied(now).await {
            Ok(()) => return Ok(()),
            Err(Error::Etcd(e)) if e.is_unavailable() && Instant::now() < deadline => {
                tracing::info!(
                    applied = etcd.applied(),
                    target = now,
                    "catching up with etcd"
                );
            }
            Err(e) => return Err(e),
        }
    }
}

/// Write this central's snapshot: the index, the mirror and the applied
/// revision, read together (the follower calls it between two watch
/// answers). A failure is logged; the previous snapshot stays.
async fn save(dir: &Arc<Shared>, etcd: &Arc<Etcd>, snaps: &Snapshots) -> i64 {
    let (shared, e, path, cluster) = (dir.clone(), etcd.clone(), snaps.path.clone(), snaps.cluster);
    let revision = etcd.applied();
    let saved = tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let holdings = shared.index().export();
        let snap = Snapshot {
            cluster,
            prefix: e.prefix().to_owned(),
            revision,
            kvs: e.mirrored(),
            holdings,
        };
        let rows = snap.holdings.rows.len();
        snapshot::save(&path, &snap).map(|bytes| (bytes, rows, t.elapsed()))
    })
    .await;
    match saved {
        Ok(Ok((bytes, holdings, took))) => {
            tracing::info!(
                revision,
                bytes,
                holdings,
                secs = took.as_secs_f64(),
                "snapshot written"
            );
            revision
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot write the snapshot; the previous one stays");
            0
        }
        Err(e) => {
            tracing::warn!(error = %e, "the snapshot task failed");
            0
        }
    }
}

/// A session that never ends by the index's clock: etcd says when it
/// ended (the central that keeps it ends it there, see
/// `etcd::sessions`), so a central whose view is behind (paused, its
/// watch lagging) never turns a live peer away by its own clock.
pub(super) fn never(now: Instant) -> Instant {
    now + Duration::from_secs(100 * 365 * 86_400)
}

/// Build the index from etcd (at start, and after falling behind a
/// compaction); returns the revision it reflects.
pub(super) async fn load(dir: &Arc<Shared>, etcd: &Etcd) -> Result<i64> {
    let (changes, revision) = etcd.snapshot().await?;
    let shared = dir.clone();
    tokio::task::spawn_blocking(move || {
        let (changes, holdings) = tables(changes);
        let fresh = build(&shared, changes, &holdings);
        drop(holdings);
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
/// behind a compaction; writes the snapshot every `snaps.every` when the
/// index changed, and once more at the end.
pub(super) async fn follow_loop(
    dir: Arc<Shared>,
    etcd: Arc<Etcd>,
    cancel: CancellationToken,
    snaps: Snapshots,
    source: v1::IndexSource,
) {
    // A snapshot just loaded needs no rewrite; after a full read one is
    // written at once.
    let mut saved = match source {
        v1::IndexSource::Snapshot => etcd.applied(),
        _ => 0,
    };
    let on = !snaps.every.is_zero();
    let every = if on {
        snaps.every
    } else {
        Duration::from_secs(86_400)
    };
    let first = if saved > 0 { every } else { Duration::ZERO };
    let mut tick = tokio::time::interval_at(Instant::now() + first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    follow(&dir, &etcd, &cancel, &mut tick, on, &snaps, &mut saved).await;
    if on && etcd.applied() > saved {
        save(&dir, &etcd, &snaps).await;
    }
}

async fn follow(
    dir: &Arc<Shared>,
    etcd: &Arc<Etcd>,
    cancel: &CancellationToken,
    tick: &mut tokio::time::Interval,
    on: bool,
    snaps: &Snapshots,
    saved: &mut i64,
) {
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
                _ = tick.tick(), if on => {
                    if etcd.applied() > *saved {
                        let at = save(dir, etcd, snaps).await;
                        *saved = (*saved).max(at);
                    }
                    continue;
                }
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
                        if let Err(e) = load(dir, etcd).await {
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
                    if let Err(e) = apply_changes(dir, changes).await {
                        tracing::error!(error = %e, "applying etcd changes failed; reloading");
                        let _ = load(dir, etcd).await;
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
            ix.unpublish(&peer, &[(file, name)]);
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
