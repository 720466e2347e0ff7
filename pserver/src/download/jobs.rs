//! The list of download jobs: each job's live state (a `watch` channel the
//! control API follows), cancellation, and the retention of finished jobs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerdex_proto::FileId;
use peerdex_proto::rest::{DownloadRequest, Job, JobState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Finished jobs kept for listing.
const KEEP_FINISHED: usize = 256;

/// A running or finished job.
pub(crate) struct JobHandle {
    pub(crate) id: Uuid,
    file_id: Mutex<Option<FileId>>,
    created: Instant,
    tx: watch::Sender<Job>,
    /// The list's change counter, bumped on every update of this job.
    changes: Arc<watch::Sender<u64>>,
    pub(super) cancel: CancellationToken,
}

impl JobHandle {
    pub(crate) fn snapshot(&self) -> Job {
        let mut j = self.tx.borrow().clone();
        j.elapsed_secs = self.created.elapsed().as_secs_f64();
        j
    }
    pub(crate) fn subscribe(&self) -> watch::Receiver<Job> {
        self.tx.subscribe()
    }
    /// Cancel the job; its partial download is discarded.
    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
    }
    pub(super) fn update(&self, f: impl FnOnce(&mut Job)) {
        let created = self.created;
        self.tx.send_modify(|j| {
            f(j);
            j.elapsed_secs = created.elapsed().as_secs_f64();
        });
        self.changes.send_modify(|n| *n += 1);
    }
    pub(super) fn is_final(&self) -> bool {
        self.tx.borrow().state.is_final()
    }
}

pub(crate) struct Jobs {
    map: Mutex<HashMap<Uuid, Arc<JobHandle>>>,
    order: Mutex<Vec<Uuid>>,
    /// Set on shutdown: stopped jobs keep their partials to resume later.
    stopping: AtomicBool,
    /// Counts changes of the list: a job added, or any job's state.
    changes: Arc<watch::Sender<u64>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            order: Mutex::default(),
            stopping: AtomicBool::new(false),
            changes: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Jobs {
    /// Follow changes of the list (see `GET /api/v1/events`).
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn get(&self, id: &Uuid) -> Option<Arc<JobHandle>> {
        self.map.lock().unwrap().get(id).cloned()
    }

    pub(crate) fn list(&self) -> Vec<Job> {
        let map = self.map.lock().unwrap();
        self.order
            .lock()
            .unwrap()
            .iter()
            .filter_map(|id| map.get(id))
            .map(|h| h.snapshot())
            .collect()
    }

    pub(crate) fn active(&self) -> u32 {
        self.map
            .lock()
            .unwrap()
            .values()
            .filter(|h| !h.is_final())
            .count() as u32
    }

    /// Files that a job not final yet is downloading (their partials are
    /// never dropped to make room).
    pub(crate) fn busy_files(&self) -> std::collections::HashSet<FileId> {
        self.map
            .lock()
            .unwrap()
            .values()
            .filter(|h| !h.is_final())
            .filter_map(|h| *h.file_id.lock().unwrap())
            .collect()
    }

    /// Stop every job because the PServer is shutting down. Unlike
    /// [`JobHandle::cancel`], partial downloads are kept, and the next start
    /// resumes them. See [`Jobs::shutdown`] to also wait for that.
    pub(crate) fn cancel_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.changes.send_modify(|n| *n += 1);
        for h in self.map.lock().unwrap().values() {
            h.cancel();
        }
    }

    /// [`Jobs::cancel_all`], then wait (at most `grace`) until every job has
    /// saved its partial download.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.cancel_all();
        let running: Vec<Arc<JobHandle>> = self
            .map
            .lock()
            .unwrap()
            .values()
            .filter(|h| !h.is_final())
            .cloned()
            .collect();
        let all = futures_util::future::join_all(running.iter().map(|h| {
            let mut rx = h.subscribe();
            async move {
                let _ = rx.wait_for(|j| j.state.is_final()).await;
            }
        }));
        let _ = tokio::time::timeout(grace, all).await;
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Add a job. A job that is not final yet for a file that already has a
    /// running job is refused with that job (checked under the lock, so two
    /// requests for the same file never start two jobs).
    pub(super) fn insert(
        &self,
        request: DownloadRequest,
        file_id: Option<FileId>,
        state: JobState,
    ) -> std::result::Result<Arc<JobHandle>, Arc<JobHandle>> {
        let id = Uuid::new_v4();
        let job = Job {
            job_id: id.to_string(),
            state,
            request,
            file_id: file_id.map(|f| f.to_hex()),
            name: None,
            bytes_done: 0,
            bytes_total: None,
            source: None,
            sources: Vec::new(),
            error: None,
            elapsed_secs: 0.0,
        };
        let handle = Arc::new(JobHandle {
            id,
            file_id: Mutex::new(file_id),
            created: Instant::now(),
            tx: watch::Sender::new(job),
            changes: self.changes.clone(),
            cancel: CancellationToken::new(),
        });
        let mut map = self.map.lock().unwrap();
        let mut order = self.order.lock().unwrap();
        if let Some(fid) = file_id.filter(|_| !state.is_final())
            && let Some(running) = map
                .values()
                .find(|h| !h.is_final() && h.file_id.lock().unwrap().as_ref() == Some(&fid))
        {
            return Err(running.clone());
        }
        // Forget the oldest finished jobs beyond the retention limit.
        let finished = order
            .iter()
            .filter(|j| map.get(j).is_some_and(|h| h.is_final()))
            .count();
        if finished >= KEEP_FINISHED {
            let mut drop_n = finished + 1 - KEEP_FINISHED;
            order.retain(|j| {
                if drop_n > 0 && map.get(j).is_some_and(|h| h.is_final()) {
                    map.remove(j);
                    drop_n -= 1;
                    false
                } else {
                    true
                }
            });
        }
        map.insert(id, handle.clone());
        order.push(id);
        self.changes.send_modify(|n| *n += 1);
        Ok(handle)
    }

    /// Forget a finished job (`DELETE` of a job that has ended): its id is
    /// unknown from then on. A job still running is kept; false then.
    pub(crate) fn forget(&self, id: &Uuid) -> bool {
        let mut map = self.map.lock().unwrap();
        if !map.get(id).is_some_and(|h| h.is_final()) {
            return false;
        }
        map.remove(id);
        self.order.lock().unwrap().retain(|j| j != id);
        self.changes.send_modify(|n| *n += 1);
        true
    }
}
