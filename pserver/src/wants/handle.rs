//! The [`Wants`] handle: make, list and remove wants, keep the list on
//! disk, and tell what happens to them (notices).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use peerdex_common::sync::lock;
use peerdex_proto::rest::{NoticeKind, Want, WantList, WantNotice, WantRequest, WantState};

use super::book::{Book, Entry, Wanted};
use super::notify;

use crate::config::WantConfig;
use crate::download::Downloads;
use crate::error::{Error, Missing, Result};
use crate::link::Central;
use crate::metrics::Metrics;
use crate::store::Store;

/// Notices kept for `GET /api/v1/events` (the newest).
const NOTICES_KEPT: usize = 100;
/// Files remembered per want (`Want::matches`).
pub(super) const MATCHES_KEPT: usize = 20;

/// The wants of this PServer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Wants(pub(super) Arc<Inner>);

/// What the handle shares with the stream's loop and the reactions
/// (`watch`, `react`).
pub(super) struct Inner {
    pub(super) book: Mutex<Book>,
    data_dir: PathBuf,
    max: usize,
    pub(super) downloads: Downloads,
    pub(super) store: Arc<Store>,
    pub(super) central: Arc<Central>,
    pub(super) metrics: Metrics,
    notifier: Option<notify::Notifier>,
    /// Moves on every change of the list or the notices.
    changed: tokio::sync::watch::Sender<u64>,
    /// The subscriptions changed: the stream opens again with the new set.
    pub(super) resubscribe: tokio::sync::Notify,
    notices: Mutex<VecDeque<WantNotice>>,
    next_seq: AtomicU64,
    /// The stream is open and every want it covers was checked.
    pub(super) watching: AtomicBool,
    /// Why the directory refused the last Watch (a limit), if it did.
    pub(super) watch_error: Mutex<Option<String>>,
}

/// Unix seconds now.
fn now() -> u64 {
    peerdex_proto::network::unix_now()
}

impl Wants {
    /// Load the wants of `data_dir`. `http` posts the notices.
    pub(crate) fn open(
        config: &WantConfig,
        data_dir: PathBuf,
        downloads: Downloads,
        store: Arc<Store>,
        central: Arc<Central>,
        metrics: Metrics,
        http: reqwest::Client,
    ) -> std::io::Result<Self> {
        let book = Book::load(&data_dir)?;
        if !book.entries.is_empty() {
            tracing::info!(
                wants = book.entries.len(),
                open = book.open(),
                "wanted files loaded"
            );
        }
        let notifier = config
            .notify_url
            .clone()
            .map(|url| notify::Notifier::start(url, http, metrics.clone()));
        Ok(Self(Arc::new(Inner {
            book: Mutex::new(book),
            data_dir,
            max: config.max_wants,
            downloads,
            store,
            central,
            metrics,
            notifier,
            changed: tokio::sync::watch::Sender::new(0),
            resubscribe: tokio::sync::Notify::new(),
            notices: Mutex::default(),
            next_seq: AtomicU64::new(1),
            watching: AtomicBool::new(false),
            watch_error: Mutex::new(None),
        })))
    }

    /// Add a want (`POST /api/v1/wants`). A file already in the share
    /// folder is done at once.
    pub(crate) fn add(&self, req: WantRequest) -> Result<Want> {
        let (wanted, download) =
            Wanted::parse(&req).map_err(|e| Error::from(crate::error::Invalid::from(e)))?;
        let t = now();
        let mut want = Want {
            want_id: uuid::Uuid::new_v4().to_string(),
            file: match &wanted {
                Wanted::Query(_) => None,
                w => Some(w.spelled()),
            },
            query: match &wanted {
                Wanted::Query(q) => Some(q.clone()),
                _ => None,
            },
            download,
            state: WantState::Waiting,
            created: t,
            updated: t,
            job_id: None,
            matches: Vec::new(),
            error: None,
        };
        let here = self.held_here(&wanted);
        if here.is_some() {
            want.state = WantState::Done;
        }
        {
            let mut book = lock(&self.0.book);
            let open = book.open();
            if here.is_none() && open >= self.0.max {
                return Err(Error::LimitReached {
                    message: format!(
                        "wants: {open} are waiting, the limit (PSERVER_MAX_WANTS is {}); remove one first (peerdex unwant WANT)",
                        self.0.max
                    ),
                });
            }
            book.entries.push(Entry {
                want: want.clone(),
                wanted: wanted.clone(),
                checked: false,
            });
            self.save(&mut book)?;
        }
        tracing::info!(want = %want.want_id, wanted = %wanted.spelled(), download, "want added");
        if let Some((id, name)) = here {
            self.notice(&want, NoticeKind::Done, Some((id, name)), Vec::new());
        } else {
            self.0.watching.store(false, Ordering::Relaxed);
            self.0.resubscribe.notify_one();
        }
        self.touch();
        Ok(want)
    }

    /// Every want, and whether the stream covers them all.
    pub(crate) fn list(&self) -> WantList {
        let book = lock(&self.0.book);
        let wants = book.entries.iter().map(|e| e.want.clone()).collect();
        let all_covered = book.entries.iter().all(|e| !e.watched() || e.checked);
        WantList {
            wants,
            watching: all_covered && self.0.watching.load(Ordering::Relaxed),
        }
    }

    /// Remove a want (`DELETE /api/v1/wants/{want}`); a download it
    /// started goes on (it is a job of its own).
    pub(crate) fn remove(&self, id: &str) -> Result<Want> {
        let removed = {
            let mut book = lock(&self.0.book);
            let Some(i) = book.entries.iter().position(|e| e.want.want_id == id) else {
                return Err(Missing::Want { id: id.to_owned() }.into());
            };
            let e = book.entries.remove(i);
            self.save(&mut book)?;
            e.want
        };
        tracing::info!(want = %id, "want removed");
        self.0.resubscribe.notify_one();
        self.touch();
        Ok(removed)
    }

    /// Wants by state: waiting, matched, ambiguous, downloading, done
    /// (`peerdex_pserver_wants{state}`).
    pub(crate) fn by_state(&self) -> [usize; 5] {
        let mut n = [0; 5];
        for e in &lock(&self.0.book).entries {
            n[match e.want.state {
                WantState::Waiting => 0,
                WantState::Matched => 1,
                WantState::Ambiguous => 2,
                WantState::Downloading => 3,
                WantState::Done => 4,
            }] += 1;
        }
        n
    }

    /// Follow changes of the list and the notices.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.changed.subscribe()
    }

    /// The notices after `seq` (all kept: 0), oldest first.
    pub(crate) fn notices_after(&self, seq: u64) -> Vec<WantNotice> {
        lock(&self.0.notices)
            .iter()
            .filter(|n| n.seq > seq)
            .cloned()
            .collect()
    }

    /// The file is in the share folder already: its id and name.
    pub(super) fn held_here(&self, wanted: &Wanted) -> Option<(String, String)> {
        let e = match wanted {
            Wanted::Id(id) => self.0.store.by_id(id)?,
            Wanted::Name(n) => self.0.store.by_name(n)?,
            Wanted::Query(_) => return None,
        };
        Some((e.id.to_hex(), e.name.to_string()))
    }

    /// Write the list (under its lock: one writer at a time).
    fn save(&self, book: &mut Book) -> Result<()> {
        book.save(&self.0.data_dir).map_err(|e| {
            tracing::warn!(error = %e, "cannot write wants.json in PSERVER_DATA_DIR");
            Error::Io(e)
        })
    }

    /// Change one want and write the list; `false` when it is gone.
    pub(super) fn update(&self, id: &str, f: impl FnOnce(&mut Entry)) -> bool {
        let mut book = lock(&self.0.book);
        let Some(e) = book.get_mut(id) else {
            return false;
        };
        f(e);
        e.want.updated = now();
        let _ = self.save(&mut book);
        drop(book);
        self.touch();
        true
    }

    pub(super) fn touch(&self) {
        self.0.changed.send_modify(|n| *n += 1);
    }

    /// Record and send a notice about `want`.
    pub(super) fn notice(
        &self,
        want: &Want,
        kind: NoticeKind,
        file: Option<(String, String)>,
        candidates: Vec<peerdex_proto::rest::Candidate>,
    ) {
        let wanted = want.file.clone().or(want.query.clone()).unwrap_or_default();
        let (file_id, name) = file.map_or((None, None), |(i, n)| (Some(i), Some(n)));
        let shown = name.clone().unwrap_or_else(|| wanted.clone());
        let message = match kind {
            NoticeKind::Matched => format!("\"{shown}\" matches the want \"{wanted}\""),
            NoticeKind::Ambiguous => format!(
                "{} different files are named \"{wanted}\": nothing downloaded; want one by id",
                candidates.len()
            ),
            NoticeKind::Downloading => format!("\"{shown}\" appeared: downloading it"),
            NoticeKind::Done => format!("\"{shown}\" is in place"),
            NoticeKind::Failed => format!(
                "the download of \"{shown}\" failed: {}; the want waits for another holder",
                want.error.clone().unwrap_or_default()
            ),
        };
        let n = WantNotice {
            seq: self.0.next_seq.fetch_add(1, Ordering::Relaxed),
            at: now(),
            kind,
            want_id: want.want_id.clone(),
            wanted,
            file_id,
            name,
            candidates,
            message,
        };
        tracing::info!(want = %n.want_id, kind = ?n.kind, "{}", n.message);
        if let Some(notifier) = &self.0.notifier {
            notifier.send(n.clone());
        }
        let mut kept = lock(&self.0.notices);
        kept.push_back(n);
        while kept.len() > NOTICES_KEPT {
            kept.pop_front();
        }
        drop(kept);
        self.touch();
    }
}
