//! Replicas: this peer as a volunteer that keeps copies of other peers'
//! files for the directory (`PSERVER_REPLICA_QUOTA_BYTES`).
//!
//! The directory repeats every open task in each Heartbeat answer until
//! it is done (see `ReplicaTask` in the .proto), so [`Replicas::tasks`] is
//! idempotent: a task already running, done or declined is not started
//! again.
//!
//! * FETCH: refused at once (declined, with the reason, in the next
//!   Heartbeat) when the replicas held, the fetches in progress and this
//!   file together would pass the quota, when the disk cannot take it
//!   besides `PSERVER_MIN_FREE_BYTES`, or when the user shares the file
//!   already (an owner's copy is no replica). Otherwise the verified
//!   download engine fetches it from its live holders (located like any
//!   download) into the replica space, and publishes it with `replica =
//!   true`. At most [`MAX_FETCHES`] run at once, so the user's own
//!   downloads keep most of the bandwidth; a failure is tried again
//!   ([`ATTEMPTS`] in all, verified chunks kept between attempts), then
//!   declined. A declined task that comes back is declined again (for
//!   [`DECLINE_HOLD`]; after that it is weighed afresh).
//! * DROP: the replica is deleted and unpublished. Nothing in the share
//!   folder is ever touched: a file the user shares is not a replica.
//!   A DROP for a fetch in progress stops it.
//! * A FETCH the directory no longer asks for (the file got its copies
//!   elsewhere, its pin was lowered, or the directory gave up waiting for
//!   us) is stopped once [`WITHDRAWN_AFTER`] answers in a row left it out:
//!   one answer may come from a central whose mirror of the tasks lags.
//!
//! A stopped fetch deletes what it had fetched (the replica space holds
//! no partial nobody asked for); one stopped by our own shutdown keeps it
//! to resume after the restart.
//!
//! A task that is done but comes back (our Publish or Unpublish was lost
//! on its way) is answered again, at most every [`NUDGE_EVERY`].
//!
//! Replica fetches are not the user's download jobs: they show in
//! `GET /api/v1/status` (`replica_fetches`, and the replicas held with the
//! quota) and in the metrics (`peerdex_pserver_replica_fetches_total`),
//! and each start, end and decline is logged at info.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerdex_proto::v1::{self, replica_task::Action};
use peerdex_proto::{FileId, FileName};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::download::{Downloads, ReplicaEnd};
use crate::link::Central;
use crate::metrics::{Metrics, ReplicaResult};
use crate::store::Store;
use crate::store::space::Bytes;

/// Replica fetches running at once.
pub(crate) const MAX_FETCHES: usize = 2;
/// Tries of one FETCH before it is declined.
const ATTEMPTS: u32 = 3;
/// How long a declined FETCH stays declined when it comes back.
const DECLINE_HOLD: Duration = Duration::from_secs(120);
/// Least time between two answers to the same task that is done already.
const NUDGE_EVERY: Duration = Duration::from_secs(30);
/// Renewed Heartbeat answers in a row without a running FETCH after
/// which it is stopped.
const WITHDRAWN_AFTER: u32 = 3;

/// The replica worker, as a cheap handle.
#[derive(Clone)]
pub(crate) struct Replicas(Arc<Inner>);

struct Inner {
    quota: u64,
    store: Arc<Store>,
    central: Arc<Central>,
    downloads: Downloads,
    metrics: Metrics,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// FETCHes queued or running, by file: their size counts against the
    /// quota until they end.
    running: HashMap<FileId, Running>,
    /// FETCHes declined lately: why, and when.
    declined: HashMap<FileId, (String, Instant)>,
    /// When a FETCH of a replica held already was last announced again.
    announced: HashMap<FileId, Instant>,
    /// When a DROP was last carried out (or withdrawn again).
    withdrawn: HashMap<FileId, Instant>,
    /// Running FETCHes left out of the last answers: how many in a row.
    unasked: HashMap<FileId, u32>,
    /// The replica partials of fetches no longer asked for were deleted
    /// (once, at the first answer after start).
    swept: bool,
}

struct Running {
    size: u64,
    cancel: CancellationToken,
}

/// Why a FETCH is not done, for the log and the directory.
fn quota_reason(quota: u64, used: u64, in_flight: u64, size: u64) -> String {
    if quota == 0 {
        return "this peer offers no replica space (PSERVER_REPLICA_QUOTA_BYTES is 0)".into();
    }
    format!(
        "replica quota exceeded: the file needs {}, and of PSERVER_REPLICA_QUOTA_BYTES {} this peer holds {} in replicas and {} in fetches in progress",
        Bytes(size),
        Bytes(quota),
        Bytes(used),
        Bytes(in_flight)
    )
}

impl Replicas {
    pub(crate) fn new(
        quota: u64,
        store: Arc<Store>,
        central: Arc<Central>,
        downloads: Downloads,
        metrics: Metrics,
    ) -> Self {
        Self(Arc::new(Inner {
            quota,
            store,
            central,
            downloads,
            metrics,
            slots: Arc::new(Semaphore::new(MAX_FETCHES)),
            state: Mutex::new(State::default()),
        }))
    }

    /// `PSERVER_REPLICA_QUOTA_BYTES`.
    pub(crate) fn quota(&self) -> u64 {
        self.0.quota
    }

    /// Count the answers that left out each running FETCH (`wanted` are
    /// the ones this answer asked for); stop those left out
    /// [`WITHDRAWN_AFTER`] times in a row.
    fn stop_unasked(&self, wanted: &HashSet<FileId>) {
        let mut st = self.0.state.lock().unwrap();
        let State {
            running, unasked, ..
        } = &mut *st;
        unasked.retain(|id, _| running.contains_key(id) && !wanted.contains(id));
        for (id, r) in running.iter() {
            if wanted.contains(id) || r.cancel.is_cancelled() {
                continue;
            }
            let n = unasked.entry(*id).or_default();
            *n += 1;
            if *n == WITHDRAWN_AFTER {
                tracing::info!(file = %id, answers = *n, "replica task: the directory no longer asks for this fetch; stopping it");
                r.cancel.cancel();
            }
        }
    }

    /// Say no to a FETCH of `id` (in the next Heartbeat), and keep saying
    /// it while the task comes back, for [`DECLINE_HOLD`].
    fn decline(&self, st: &mut State, id: FileId, reason: String, result: ReplicaResult) {
        tracing::info!(file = %id, %reason, "replica task: declined");
        self.0.metrics.replica_fetch(result);
        self.0.central.decline(id, reason.clone());
        st.declined.insert(id, (reason, Instant::now()));
    }

    /// Was the task of `id` last answered long enough ago (per `last`) to
    /// answer it again? Notes the answer.
    fn nudge(last: &mut HashMap<FileId, Instant>, id: FileId) -> bool {
        let now = Instant::now();
        last.retain(|_, at| now.duration_since(*at) < NUDGE_EVERY);
        if last.contains_key(&id) {
            return false;
        }
        last.insert(id, now);
        true
    }

    fn fetch(&self, id: FileId, name: FileName, size: u64) {
        let inner = &self.0;
        if inner.downloads.stopping() {
            return; // shutting down: the task comes back after the restart
        }
        let mut st = inner.state.lock().unwrap();
        if st.running.contains_key(&id) {
            return;
        }
        if let Some(held) = inner.store.replica(&id) {
            // Done: our Publish may not have reached the directory (we were
            // between centrals, say). Say it again, now and then.
            if Self::nudge(&mut st.announced, id) {
                drop(st);
                tracing::info!(file = %id, "replica task: held already; announcing it again");
                let central = inner.central.clone();
                tokio::spawn(async move { central.publish(&[held.to_shared()]).await });
            }
            return;
        }
        st.declined.retain(|_, (_, at)| at.elapsed() < DECLINE_HOLD);
        if let Some((reason, _)) = st.declined.get(&id) {
            inner.central.decline_again(id, reason.clone());
            return;
        }
        if inner.store.by_id(&id).is_some() {
            let reason =
                "this peer shares the file itself (an owner's copy, never a replica)".into();
            self.decline(&mut st, id, reason, ReplicaResult::Refused);
            return;
        }
        let used = inner.store.replica_bytes();
        let in_flight: u64 = st.running.values().map(|r| r.size).sum();
        if used.saturating_add(in_flight).saturating_add(size) > inner.quota {
            let reason = quota_reason(inner.quota, used, in_flight, size);
            self.decline(&mut st, id, reason, ReplicaResult::Refused);
            return;
        }
        let what = format!("replica of file {id} ({})", Bytes(size));
        if let Err(e) = inner
            .store
            .space()
            .check(&inner.store.replica_partial_dir(), size, &what)
        {
            self.decline(&mut st, id, e.to_string(), ReplicaResult::Refused);
            return;
        }
        let cancel = CancellationToken::new();
        st.running.insert(
            id,
            Running {
                size,
                cancel: cancel.clone(),
            },
        );
        drop(st);
        let this = self.clone();
        tokio::spawn(async move { this.run_fetch(id, name, size, cancel).await });
    }

    async fn run_fetch(self, id: FileId, name: FileName, size: u64, cancel: CancellationToken) {
        let inner = &self.0;
        let permit = tokio::select! {
            p = inner.slots.clone().acquire_owned() => p.ok(),
            _ = cancel.cancelled() => None,
        };
        let mut outcome = Err(ReplicaEnd::Cancelled);
        if permit.is_some() {
            tracing::info!(file = %id, name = %name, bytes = size, "replica task: fetching");
            for attempt in 1..=ATTEMPTS {
                outcome = inner
                    .downloads
                    .fetch_replica(id, name.clone(), size, &cancel)
                    .await;
                match &outcome {
                    Err(ReplicaEnd::Failed(e)) if !e.is_permanent() && attempt < ATTEMPTS => {
                        let pause = Duration::from_secs(2 << attempt);
                        tracing::warn!(file = %id, attempt, error = %e, retry_in = ?pause, "replica fetch failed; trying again");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = cancel.cancelled() => {
                                outcome = Err(ReplicaEnd::Cancelled);
                                break;
                            }
                        }
                    }
                    _ => break,
                }
            }
        }
        drop(permit);
        // What it fetched is deleted, unless we are shutting down (then it
        // resumes after the restart, if still asked for).
        let discard = match &outcome {
            Ok(()) => false,
            Err(ReplicaEnd::Failed(_)) => true,
            Err(ReplicaEnd::Cancelled) => !inner.downloads.stopping(),
        };
        // Before it leaves `running`: a FETCH of the same file that comes
        // again meanwhile is not started until this one has ended, so it
        // never finds its partial deleted under it.
        if discard {
            inner.downloads.discard_replica_partial(id).await;
        }
        {
            let mut st = inner.state.lock().unwrap();
            st.running.remove(&id);
            st.unasked.remove(&id);
            match outcome {
                Ok(()) => {
                    tracing::info!(file = %id, name = %name, bytes = size, "replica task: fetched, verified and announced");
                    inner.metrics.replica_fetch(ReplicaResult::Done);
                    st.announced.insert(id, Instant::now());
                }
                Err(ReplicaEnd::Cancelled) => {
                    tracing::info!(file = %id, "replica task: fetch stopped");
                    inner.metrics.replica_fetch(ReplicaResult::Cancelled);
                }
                Err(ReplicaEnd::Failed(e)) => {
                    let reason = if e.is_permanent() {
                        e.to_string()
                    } else {
                        format!("the download failed {ATTEMPTS} times: {e}")
                    };
                    self.decline(&mut st, id, reason, ReplicaResult::Failed);
                }
            }
        }
    }

    fn drop_replica(&self, id: FileId, task_name: &str) {
        let inner = &self.0;
        let mut st = inner.state.lock().unwrap();
        if let Some(r) = st.running.get(&id) {
            tracing::info!(file = %id, "replica task: drop; stopping its fetch");
            r.cancel.cancel();
            return;
        }
        if !Self::nudge(&mut st.withdrawn, id) {
            return;
        }
        drop(st);
        let (store, central, metrics) = (
            inner.store.clone(),
            inner.central.clone(),
            inner.metrics.clone(),
        );
        let task_name = task_name.parse::<FileName>().ok();
        tokio::spawn(async move {
            let s = store.clone();
            let removed = tokio::task::spawn_blocking(move || s.remove_replica(&id))
                .await
                .ok()
                .flatten();
            // The user's names of this file are never withdrawn.
            let owned: Vec<FileName> = store
                .list()
                .into_iter()
                .filter(|f| f.file_id == id.to_hex())
                .filter_map(|f| f.name.parse().ok())
                .collect();
            let name = match &removed {
                Some(r) => Some(r.name.clone()),
                // Not held (gone already): the directory still lists it,
                // so withdraw the name it gave.
                None => task_name,
            };
            match &removed {
                Some(r) => {
                    tracing::info!(file = %id, name = %r.name, bytes = r.size, "replica task: dropped");
                    metrics.replica_dropped();
                }
                None => {
                    tracing::info!(file = %id, "replica task: drop of a replica not held; withdrawing it")
                }
            }
            if let Some(n) = name.filter(|n| !owned.contains(n)) {
                central.unpublish(&[(id, n)]).await;
            }
        });
    }
}

impl Replicas {
    /// The worker's loop: the replica tasks of each Heartbeat answer, as
    /// the directory link sends them. Returns when the link's lease loop
    /// has ended (the sender is gone).
    pub(crate) async fn run(self, mut tasks: tokio::sync::mpsc::Receiver<Vec<v1::ReplicaTask>>) {
        while let Some(open) = tasks.recv().await {
            self.tasks(open);
        }
    }

    /// The tasks of a Heartbeat answer (all the open ones, every time).
    fn tasks(&self, tasks: Vec<v1::ReplicaTask>) {
        let mut wanted = HashSet::new();
        for t in tasks {
            let Ok(id) = t.file_id.parse::<FileId>() else {
                // Not even declined: the directory leaves out declines
                // that name no valid file.
                tracing::warn!(file = %t.file_id, "replica task with an invalid file id; ignored");
                continue;
            };
            match Action::try_from(t.action) {
                Ok(Action::Fetch) => {
                    wanted.insert(id);
                    let name = t.name.parse::<FileName>().unwrap_or_else(|_| {
                        format!("{}.bin", id.short())
                            .parse()
                            .expect("hex name is valid")
                    });
                    self.fetch(id, name, t.size);
                }
                Ok(Action::Drop) => self.drop_replica(id, &t.name),
                _ => {
                    tracing::debug!(file = %id, action = t.action, "replica task of an unknown kind; ignored")
                }
            }
        }
        self.stop_unasked(&wanted);
        let sweep = !std::mem::replace(&mut self.0.state.lock().unwrap().swept, true);
        if sweep {
            let downloads = self.0.downloads.clone();
            tokio::spawn(async move { downloads.sweep_replica_partials(wanted).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_setting_and_the_figures() {
        let r = quota_reason(0, 0, 0, 5);
        assert!(r.contains("PSERVER_REPLICA_QUOTA_BYTES is 0"), "{r}");
        let r = quota_reason(10 << 20, 4 << 20, 3 << 20, 4 << 20);
        assert_eq!(
            r,
            "replica quota exceeded: the file needs 4.0 MiB (4194304 bytes), and of \
             PSERVER_REPLICA_QUOTA_BYTES 10.0 MiB (10485760 bytes) this peer holds \
             4.0 MiB (4194304 bytes) in replicas and 3.0 MiB (3145728 bytes) in fetches in progress"
        );
    }
}
