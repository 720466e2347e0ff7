//! Joining in pages: an inventory of any size reaches the directory as a
//! Join with a first page, then Publish pages, each within the central's
//! message limit, in order, under the Join's lease (the outbox is held
//! meanwhile, so no other change of ours overtakes a page). The central's
//! inventory limit (`CENTRAL_MAX_INVENTORY`) is the only ceiling: past it
//! we send nothing more, and the status says how many files are not
//! listed and why.

use std::ops::Range;
use std::time::Duration;

use peerdex_proto::convert::SharedFile;
use peerdex_proto::v1;
use prost::Message as _;
use tonic::Code;

use super::outbox::Change;
use super::{CallError, Central};

/// Largest page we send, in encoded bytes, even to a central that takes
/// more: a page is one gRPC message the central decodes and applies at
/// once, so a modest one keeps its latency for other peers low.
pub(super) const MAX_PAGE_BYTES: usize = 1 << 20;
/// What an older central that does not say its limit takes (its default,
/// `CENTRAL_MAX_MESSAGE_BYTES`).
const DEFAULT_MESSAGE_BYTES: u64 = 4 << 20;
/// Room kept in each message for everything but the files (ids, key,
/// signature, URL, metadata).
const ENVELOPE_BYTES: usize = 2048;
/// Tries of one page the central paces (`CENTRAL_PUBLISH_RATE`).
const PACED_TRIES: u32 = 20;

/// How an inventory goes out: the first page in the Join, the rest in
/// Publish pages; files past the central's inventory limit not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) first: Range<usize>,
    pub(super) rest: Vec<Range<usize>>,
    /// Files past `CENTRAL_MAX_INVENTORY`, not sent.
    pub(super) beyond: u64,
    /// The central's `CENTRAL_MAX_INVENTORY` (0 = it did not say).
    pub(super) max_inventory: u64,
    /// The central's `CENTRAL_MAX_MESSAGE_BYTES` (0 = it did not say).
    pub(super) max_message_bytes: u64,
}

impl Plan {
    /// Cut `files` in pages of at most `max_message_bytes` / 2 (and
    /// [`MAX_PAGE_BYTES`]) each, keeping at most `max_inventory` files
    /// (0 = no limit said). Every page holds at least one file. Each
    /// file's wire form is made only to be measured (never a full copy of
    /// the inventory in wire form: a page is converted when it is sent).
    pub(super) fn new(files: &[SharedFile], max_message_bytes: u64, max_inventory: u64) -> Self {
        let budget = page_budget(max_message_bytes);
        let kept = match max_inventory {
            0 => files.len(),
            m => files.len().min(usize::try_from(m).unwrap_or(usize::MAX)),
        };
        let mut pages = Vec::new();
        let (mut start, mut bytes) = (0, 0usize);
        for (i, f) in files[..kept].iter().enumerate() {
            // The entry, its tag and its length prefix.
            let len = v1::SharedFile::from(f).encoded_len();
            let n = len + 1 + prost::length_delimiter_len(len);
            if i > start && bytes + n > budget {
                pages.push(start..i);
                (start, bytes) = (i, 0);
            }
            bytes += n;
        }
        pages.push(start..kept);
        let mut pages = pages.into_iter();
        Self {
            first: pages.next().unwrap_or(0..0),
            rest: pages.collect(),
            beyond: (files.len() - kept) as u64,
            max_inventory,
            max_message_bytes,
        }
    }
}

/// Bytes of files one page may hold, for a central whose message limit
/// is `max_message_bytes` (0 = it did not say): half of it (the answer
/// has room too), less the envelope, at most [`MAX_PAGE_BYTES`].
pub(super) fn page_budget(max_message_bytes: u64) -> usize {
    let limit = if max_message_bytes == 0 {
        DEFAULT_MESSAGE_BYTES
    } else {
        max_message_bytes
    };
    usize::try_from(limit / 2)
        .unwrap_or(usize::MAX)
        .saturating_sub(ENVELOPE_BYTES)
        .clamp(1, MAX_PAGE_BYTES)
}

/// Files of ours the directory does not list because its inventory limit
/// is reached: how many, and the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotListed {
    pub files: u64,
    /// The central's `CENTRAL_MAX_INVENTORY` (0 = it did not say).
    pub max_inventory: u64,
}

impl Central {
    /// Publish the pages after a Join's first one, in order, each with the
    /// next `seq`. The caller holds the outbox. A page the central paces
    /// is tried again when it says; any other failure ends the session
    /// (the lease loop joins again with the whole inventory). Returns how
    /// many entries the central did not take for its inventory limit.
    pub(super) async fn publish_pages(
        &self,
        inventory: &[SharedFile],
        plan: &Plan,
    ) -> Result<u64, CallError> {
        let mut over = 0;
        for (k, page) in plan.rest.iter().enumerate() {
            let seq = {
                let mut s = self.session.lock().unwrap();
                s.seq += 1;
                s.seq
            };
            let change = Change::Publish(inventory[page.clone()].to_vec(), seq);
            let mut tries = 0;
            loop {
                match self.send(&change).await {
                    Ok(n) => {
                        over += n;
                        break;
                    }
                    // Applied already (an answer we did not get).
                    Err(s) if s.code == Code::Aborted => break,
                    Err(s)
                        if s.code == Code::ResourceExhausted
                            && s.retry_after.is_some()
                            && tries < PACED_TRIES =>
                    {
                        tries += 1;
                        let wait = Duration::from_secs(s.retry_after.unwrap_or(1).clamp(1, 30));
                        tracing::debug!(page = k + 2, retry_in = ?wait, "inventory page paced by the central");
                        tokio::time::sleep(wait).await;
                    }
                    Err(s) => {
                        tracing::warn!(page = k + 2, pages = plan.rest.len() + 1, code = ?s.code,
                            status = %s.explained(), "an inventory page was not taken; joining again");
                        self.mark_not_joined();
                        return Err(s);
                    }
                }
            }
        }
        Ok(over)
    }

    /// `files` cut in pages that each fit the message limit the central
    /// gave at our last Join (a big batch of new files, after a rescan).
    pub(super) fn publish_pages_of(&self, files: &[SharedFile]) -> Vec<Vec<SharedFile>> {
        let limit = self
            .message_limit
            .load(std::sync::atomic::Ordering::Relaxed);
        let plan = Plan::new(files, limit, 0);
        std::iter::once(plan.first)
            .chain(plan.rest)
            .filter(|r| !r.is_empty())
            .map(|r| files[r].to_vec())
            .collect()
    }

    /// Note how many of our files the directory does not list for its
    /// inventory limit (after a Join and its pages).
    pub(super) fn set_not_listed(&self, files: u64, max_inventory: u64) {
        if files > 0 {
            tracing::warn!(
                files,
                max_inventory,
                "the directory lists at most CENTRAL_MAX_INVENTORY files per peer; the rest of our share is not listed"
            );
        }
        *self.not_listed.lock().unwrap() = NotListed {
            files,
            max_inventory,
        };
    }

    /// A later Publish found the limit reached too: those are not listed.
    pub(super) fn add_not_listed(&self, files: u64) {
        if files > 0 {
            self.not_listed.lock().unwrap().files += files;
        }
    }

    /// Files of ours the directory does not list (its inventory limit).
    pub fn not_listed(&self) -> NotListed {
        *self.not_listed.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<SharedFile> {
        (0..n)
            .map(|i| SharedFile {
                id: format!("{i:064x}").parse().unwrap(),
                size: i as u64,
                name: format!("Music/Album {}/{i:05} track.mp3", i / 100)
                    .parse()
                    .unwrap(),
                replica: false,
            })
            .collect()
    }

    #[test]
    fn pages_fit_the_message_limit_and_cover_the_inventory_in_order() {
        let f = files(5_000);
        let plan = Plan::new(&f, 64 * 1024, 0);
        let mut all = vec![plan.first.clone()];
        all.extend(plan.rest.iter().cloned());
        assert!(all.len() > 2, "{} pages", all.len());
        let mut next = 0;
        for page in &all {
            assert_eq!(page.start, next, "pages in order, no gap");
            next = page.end;
            let msg = v1::PublishRequest {
                peer_id: uuid::Uuid::nil().to_string(),
                files: f[page.clone()].iter().map(Into::into).collect(),
                seq: u64::MAX,
            };
            assert!(msg.encoded_len() <= 32 * 1024, "{}", msg.encoded_len());
        }
        assert_eq!((next, plan.beyond), (5_000, 0));
        // A central that does not say: its default, one page here.
        let plan = Plan::new(&f, 0, 0);
        assert_eq!((plan.first, plan.rest.len()), (0..5_000, 0));
    }

    #[test]
    fn files_past_the_inventory_limit_are_not_sent() {
        let f = files(300);
        let plan = Plan::new(&f, 8 * 1024, 120);
        let last = plan.rest.last().map_or(plan.first.end, |r| r.end);
        assert_eq!((last, plan.beyond, plan.max_inventory), (120, 180, 120));
        let plan = Plan::new(&[], 0, 10);
        assert_eq!((plan.first, plan.rest.len(), plan.beyond), (0..0, 0, 0));
    }
}
