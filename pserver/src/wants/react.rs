//! What an event of the Watch stream, or a want's check, does: notify,
//! refuse an ambiguous name, or start the normal download job with the
//! holders in hand, then follow the job until the file is in place.

use peerdex_proto::rest::{
    Candidate, DownloadRequest, JobState, LocatedFile, NoticeKind, WantMatch, WantState,
};
use peerdex_proto::v1;

use peerdex_common::sync::lock;

use super::book::{Entry, Wanted};
use super::handle::{MATCHES_KEPT, Wants};
use crate::error::Error;
use crate::link::CallError;

impl Wants {
    /// An event of the Watch stream: every want it names reacts to the
    /// files it carries.
    pub(super) async fn on_event(&self, ev: v1::WatchEvent) {
        let files: Vec<LocatedFile> = ev.files.into_iter().map(Into::into).collect();
        let hit = |w: &Wanted| match w {
            Wanted::Id(id) => !ev.file_id.is_empty() && id.to_hex() == ev.file_id,
            Wanted::Name(n) => !ev.name.is_empty() && n.as_str() == ev.name,
            Wanted::Query(q) => !ev.query.is_empty() && *q == ev.query,
        };
        let ids: Vec<String> = lock(&self.0.book)
            .entries
            .iter()
            .filter(|e| e.watched() && hit(&e.wanted))
            .map(|e| e.want.want_id.clone())
            .collect();
        for id in ids {
            self.0.metrics.want_event();
            self.react(&id, files.clone(), false).await;
        }
    }

    /// Check one want at the directory (once per stream that covers it):
    /// Locate for a file, Search for a query. A central that does not
    /// answer leaves it unchecked (the stream is opened again).
    pub(super) async fn check(&self, e: &Entry) -> Result<(), CallError> {
        use v1::locate_request::Target;
        let files: Vec<LocatedFile> = match &e.wanted {
            Wanted::Id(id) => self.0.central.locate(Target::FileId(id.to_hex())).await?,
            Wanted::Name(n) => self.0.central.locate(Target::Name(n.to_string())).await?,
            Wanted::Query(q) => {
                // The hits as located files: enough to notify, and a
                // download locates its holders itself.
                let r = self.0.central.search(q, MATCHES_KEPT as u32, "").await?;
                r.hits
                    .into_iter()
                    .filter(|h| h.holders > 0)
                    .map(|h| v1::LocatedFile {
                        file_id: h.file_id,
                        size: h.size,
                        names: vec![h.name],
                        holders: Vec::new(),
                        replication: None,
                    })
                    .collect()
            }
        }
        .into_iter()
        .map(Into::into)
        .collect();
        let id = e.want.want_id.clone();
        lock(&self.0.book)
            .get_mut(&id)
            .into_iter()
            .for_each(|e| e.checked = true);
        if !files.is_empty() {
            let from_search = matches!(e.wanted, Wanted::Query(_));
            self.react(&id, files, from_search).await;
        }
        Ok(())
    }

    /// `files` appeared for want `id` (`from_search`: a query's hits,
    /// without their holders).
    async fn react(&self, id: &str, mut files: Vec<LocatedFile>, from_search: bool) {
        let Some(e) = lock(&self.0.book).get_mut(id).map(|e| e.clone()) else {
            return;
        };
        if !e.watched() {
            return;
        }
        // Already here (the user fetched it meanwhile): done.
        if let Some(file) = self.held_here(&e.wanted) {
            self.finish(id, file);
            return;
        }
        // Our own copy is no news: a file held here, or a holder that is
        // us (a query's hits have no holder list).
        let me = self.0.central.peer_id().to_string();
        for f in &mut files {
            f.holders.retain(|h| h.peer_id != me);
        }
        let store = &self.0.store;
        files.retain(|f| {
            (from_search || !f.holders.is_empty())
                && f.file_id
                    .parse()
                    .ok()
                    .and_then(|id| store.by_id(&id))
                    .is_none()
        });
        if files.is_empty() {
            return;
        }
        if let Wanted::Name(_) = e.wanted
            && files.len() > 1
        {
            self.ambiguous(&e, candidates(&files));
            return;
        }
        if !e.want.download {
            self.matched(&e, &files);
            return;
        }
        let file = files.swap_remove(0);
        let req = match &e.wanted {
            Wanted::Name(n) => DownloadRequest {
                file_id: None,
                name: Some(n.to_string()),
                folder: None,
            },
            _ => DownloadRequest {
                file_id: Some(file.file_id.clone()),
                name: None,
                folder: None,
            },
        };
        let name = file.names.first().cloned().unwrap_or_default();
        // The holders are in hand: no lookup (a query's hit has none: the
        // job locates them).
        let known = (!file.holders.is_empty()).then(|| vec![file.clone()]);
        match self.0.downloads.start_located(req, known).await {
            Ok(job) if job.state == JobState::Done => {
                self.finish(id, (file.file_id, job.name.unwrap_or(name)));
            }
            Ok(job) => {
                let job_id = job.job_id.clone();
                let m = WantMatch {
                    file_id: file.file_id.clone(),
                    name: job.name.clone().unwrap_or(name.clone()),
                    size: file.size,
                    holders: file.holders.len() as u32,
                };
                let mut want = None;
                self.update(id, |e| {
                    e.want.state = WantState::Downloading;
                    e.want.job_id = Some(job_id.clone());
                    e.want.error = None;
                    push_match(&mut e.want.matches, m);
                    want = Some(e.want.clone());
                });
                if let Some(w) = want {
                    self.notice(
                        &w,
                        NoticeKind::Downloading,
                        Some((file.file_id.clone(), name)),
                        Vec::new(),
                    );
                }
                self.0.resubscribe.notify_one();
                let me = self.clone();
                let want_id = id.to_owned();
                tokio::spawn(async move { me.follow(&want_id, &job_id, file.file_id).await });
            }
            Err(Error::Ambiguous { candidates, .. }) => self.ambiguous(&e, candidates),
            Err(err) => {
                tracing::warn!(want = %id, error = %err, "a wanted file appeared but its download did not start");
                self.update(id, |e| e.want.error = Some(err.to_string()));
            }
        }
    }

    /// Follow the job of a want until it ends: done ends the want; a
    /// failure puts it back to waiting.
    async fn follow(&self, id: &str, job_id: &str, file_id: String) {
        let Some(h) = job_id.parse().ok().and_then(|u| self.0.downloads.get(&u)) else {
            return;
        };
        let mut rx = h.subscribe();
        let job = loop {
            let job = rx.borrow_and_update().clone();
            if job.state.is_final() {
                break job;
            }
            if rx.changed().await.is_err() {
                break h.snapshot();
            }
        };
        let name = job.name.clone().unwrap_or_default();
        if job.state == JobState::Done {
            self.finish(id, (file_id, name));
            return;
        }
        let why = job
            .error
            .clone()
            .unwrap_or_else(|| format!("the job ended {:?}", job.state).to_lowercase());
        let mut want = None;
        self.update(id, |e| {
            e.want.state = WantState::Waiting;
            e.want.job_id = None;
            e.want.error = Some(why);
            // Checked again when the stream opens with it.
            e.checked = false;
            want = Some(e.want.clone());
        });
        if let Some(w) = want {
            self.notice(&w, NoticeKind::Failed, Some((file_id, name)), Vec::new());
        }
        self.0
            .watching
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.0.resubscribe.notify_one();
    }

    /// The file is in place: the want ends.
    fn finish(&self, id: &str, file: (String, String)) {
        let mut want = None;
        self.update(id, |e| {
            e.want.state = WantState::Done;
            e.want.error = None;
            want = Some(e.want.clone());
        });
        if let Some(w) = want {
            self.notice(&w, NoticeKind::Done, Some(file), Vec::new());
        }
        self.0.resubscribe.notify_one();
    }

    /// A name of several contents: nothing downloads; notified when the
    /// candidates change.
    fn ambiguous(&self, e: &Entry, candidates: Vec<Candidate>) {
        let matches: Vec<WantMatch> = candidates
            .iter()
            .map(|c| WantMatch {
                file_id: c.file_id.clone(),
                name: e.wanted.spelled(),
                size: c.size,
                holders: c.holders,
            })
            .collect();
        let same = {
            let mut a: Vec<&str> = e.want.matches.iter().map(|m| m.file_id.as_str()).collect();
            let mut b: Vec<&str> = matches.iter().map(|m| m.file_id.as_str()).collect();
            a.sort_unstable();
            b.sort_unstable();
            a == b && e.want.state == WantState::Ambiguous
        };
        if same {
            return;
        }
        let mut want = None;
        self.update(&e.want.want_id, |e| {
            e.want.state = WantState::Ambiguous;
            e.want.matches = matches;
            want = Some(e.want.clone());
        });
        if let Some(w) = want {
            self.notice(&w, NoticeKind::Ambiguous, None, candidates);
        }
    }

    /// A notify-only want matched: one notice per file not seen before.
    fn matched(&self, e: &Entry, files: &[LocatedFile]) {
        let new: Vec<WantMatch> = files
            .iter()
            .filter(|f| !e.want.matches.iter().any(|m| m.file_id == f.file_id))
            .map(|f| WantMatch {
                file_id: f.file_id.clone(),
                name: f.names.first().cloned().unwrap_or_default(),
                size: f.size,
                holders: f.holders.len() as u32,
            })
            .collect();
        if new.is_empty() {
            return;
        }
        let mut want = None;
        self.update(&e.want.want_id, |e| {
            e.want.state = WantState::Matched;
            for m in &new {
                push_match(&mut e.want.matches, m.clone());
            }
            want = Some(e.want.clone());
        });
        if let Some(w) = want {
            for m in new {
                self.notice(
                    &w,
                    NoticeKind::Matched,
                    Some((m.file_id, m.name)),
                    Vec::new(),
                );
            }
        }
    }
}

fn candidates(files: &[LocatedFile]) -> Vec<Candidate> {
    files
        .iter()
        .map(|f| Candidate {
            file_id: f.file_id.clone(),
            size: f.size,
            holders: f.holders.len() as u32,
        })
        .collect()
}

fn push_match(matches: &mut Vec<WantMatch>, m: WantMatch) {
    matches.retain(|x| x.file_id != m.file_id);
    matches.push(m);
    if matches.len() > MATCHES_KEPT {
        matches.remove(0);
    }
}
