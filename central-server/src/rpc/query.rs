//! Locate and Search: who holds a file, by id or name, and which names
//! match some words. Both read the index only, and never wait for a change
//! for longer than one step of it.

use peerdex_proto::types::{MAX_QUERY_BYTES, MAX_QUERY_WORDS};
use peerdex_proto::{FileId, FileName, PeerId, v1};
use prost::Message;
use tokio::time::Instant;
use tonic::Request;

use super::{DEFAULT_PAGE, DirectoryService, PEER_ID_META, bearer, source};
use crate::error::{Auth, Error, Field, Invalid, Result};
use crate::index::{Cursor, words};
use crate::link::forward::{merge_hits, merge_located};

impl DirectoryService {
    /// Locate here, then in linked islands when this one has fewer
    /// holders than asked (see `crate::link::forward`).
    pub(super) async fn locate(
        &self,
        req: Request<v1::LocateRequest>,
    ) -> Result<v1::LocateResponse> {
        let r = req.into_inner();
        let target = r.target.clone();
        let mut answer = self.locate_here(r.clone())?;
        let links = &self.inner.links;
        let Some(target) = target.filter(|_| links.any()) else {
            return Ok(answer);
        };
        let limits = self.admission().limits();
        let max_holders = match r.max_holders as usize {
            0 => limits.max_holders,
            n => n.min(limits.max_holders),
        };
        let short =
            answer.files.is_empty() || answer.files.iter().any(|f| f.holders.len() < max_holders);
        if !short {
            return Ok(answer);
        }
        let id = match &target {
            v1::locate_request::Target::FileId(s) => s.parse::<FileId>().ok(),
            v1::locate_request::Target::Name(_) => None,
        };
        let max_files = if id.is_some() { 1 } else { limits.max_page };
        let forwarded = links.locate(&target, max_holders as u32).await;
        for (island, remote) in forwarded.answers {
            let refused = merge_located(
                &mut answer.files,
                &island,
                remote,
                id.as_ref(),
                max_holders,
                max_files,
            );
            if refused > 0 {
                tracing::warn!(%island, refused, "linked island's Locate answer had entries we refused");
                links.invalid_answer(&island, "locate");
            }
            answer.islands.push(island);
        }
        answer.islands_skipped = forwarded.skipped;
        Ok(answer)
    }

    /// Locate in this island only (what a linked island is answered).
    pub(crate) fn locate_here(&self, r: v1::LocateRequest) -> Result<v1::LocateResponse> {
        use v1::locate_request::Target;
        let limits = self.admission().limits();
        let max_holders = match r.max_holders as usize {
            0 => limits.max_holders,
            n => n.min(limits.max_holders),
        };
        let now = Instant::now();
        let files = match r.target {
            Some(Target::FileId(s)) => {
                let id: FileId = s.parse().map_err(|source| Invalid::Parse {
                    field: Field::FileId,
                    source,
                })?;
                let found = self.dir().index().locate_id(&id, now, max_holders);
                found
                    .or_else(|| self.dir().replicas().located_lost(&id))
                    .into_iter()
                    .collect()
            }
            Some(Target::Name(s)) => {
                self.check_name_len(&s, Field::Name)?;
                let name: FileName = s.parse().map_err(|source| Invalid::Parse {
                    field: Field::Name,
                    source,
                })?;
                let mut found = self.dir().index().locate_name(
                    name.as_str(),
                    now,
                    max_holders,
                    limits.max_page,
                );
                // Keep the answer under the message limit (a content can
                // carry many names).
                let budget = limits.max_message_bytes / 2;
                let mut used = 0;
                let keep = found
                    .iter()
                    .take_while(|f| {
                        used += f.encoded_len() + 8;
                        used <= budget
                    })
                    .count()
                    .max(1);
                found.truncate(keep);
                found
            }
            None => {
                return Err(Invalid::NoTarget.into());
            }
        };
        let mut files: Vec<v1::LocatedFile> = files;
        self.dir()
            .replicas()
            .with_replication(&self.dir().index(), &mut files, now);
        let island = self.inner.links.island();
        for h in files.iter_mut().flat_map(|f| f.holders.iter_mut()) {
            island.clone_into(&mut h.island);
        }
        Ok(v1::LocateResponse {
            files,
            ..Default::default()
        })
    }

    pub(super) async fn search(
        &self,
        req: Request<v1::SearchRequest>,
    ) -> Result<v1::SearchResponse> {
        self.admission().search_from(&source(&req))?;
        let token = bearer(req.metadata()).ok();
        let named = match req.metadata().get(PEER_ID_META) {
            None => None,
            Some(v) => Some(v.to_str().unwrap_or_default().parse::<PeerId>().map_err(
                |source| Invalid::Parse {
                    field: Field::PeerIdMeta,
                    source,
                },
            )?),
        };
        let r = req.into_inner();
        let first_page = r.page_token.is_empty();
        let (query, limit) = (r.query.clone(), r.limit);
        if let Some(peer) = named {
            let token = token.ok_or(Auth::SearchWithoutToken(peer))?;
            match self.dir().authorize(&peer, &token, Instant::now()) {
                Ok(()) => self.admission().search_by(&peer)?,
                // A peer whose lease just ended may still search, within
                // its address's allowance.
                Err(Error::NotJoined(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let links = &self.inner.links;
        if !(first_page && links.any()) {
            return self.search_here(r).await;
        }
        // Linked islands are asked at once, beside the local search.
        let (answer, forwarded) = tokio::join!(self.search_here(r), links.search(&query, limit));
        let mut page = answer?;
        let max = page.hits.len() + self.page_size(limit);
        for (island, remote) in forwarded.answers {
            if merge_hits(&mut page.hits, &island, remote, max) > 0 {
                tracing::warn!(%island, "linked island's Search answer had hits we refused");
                links.invalid_answer(&island, "search");
            }
            page.islands.push(island);
        }
        page.islands_skipped = forwarded.skipped;
        Ok(page)
    }

    /// Hits per page for a request's `limit`.
    fn page_size(&self, limit: u32) -> usize {
        let max_page = self.admission().limits().max_page;
        match limit as usize {
            0 => DEFAULT_PAGE.min(max_page),
            n => n.min(max_page),
        }
    }

    /// Search this island only (what a linked island is answered).
    pub(crate) async fn search_here(&self, r: v1::SearchRequest) -> Result<v1::SearchResponse> {
        let limits = self.admission().limits();
        let query = query_words(&r.query)?;
        if query.is_empty() {
            // Names are found by their words; a query of none (only
            // punctuation, say) matches no name.
            return Ok(v1::SearchResponse::default());
        }
        let limit = self.page_size(r.limit);
        let cursor = if r.page_token.is_empty() {
            None
        } else {
            Some(Cursor::decode(&r.page_token).ok_or(Invalid::PageToken)?)
        };
        let (max_matches, budget) = (limits.max_search_matches, limits.search_budget);
        let _slot = self
            .inner
            .searching
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        let dir = self.dir().clone();
        let page = tokio::task::spawn_blocking(move || {
            dir.index().search_within(
                &query,
                cursor.as_ref(),
                limit,
                Instant::now(),
                max_matches,
                budget,
            )
        })
        .await?;
        if page.truncated
            && let Some(m) = &self.inner.metrics
        {
            m.search_truncated();
        }
        let mut hits = page.hits;
        self.dir().replicas().hits_with_pins(&mut hits);
        let island = self.inner.links.island();
        for h in &mut hits {
            island.clone_into(&mut h.island);
        }
        Ok(v1::SearchResponse {
            hits,
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
            truncated: page.truncated,
            ..Default::default()
        })
    }
}

/// The words of a query, as Search and Watch take them: bounded in bytes
/// and words, not empty, in NFC (as names are kept, so `café` typed with
/// a combining accent finds `café`), lowercased by the names' tokenizer,
/// sorted and without repeats. A query of no word (only punctuation) is
/// `Ok` and empty: it matches no name.
pub(super) fn query_words(q: &str) -> Result<Vec<String>> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(Invalid::QueryTooLong {
            bytes: q.len(),
            max: MAX_QUERY_BYTES,
        }
        .into());
    }
    if q.trim().is_empty() {
        return Err(Invalid::EmptyQuery.into());
    }
    let mut query: Vec<String> = words(&peerdex_proto::types::to_nfc(q)).collect();
    query.sort_unstable();
    query.dedup();
    if query.len() > MAX_QUERY_WORDS {
        return Err(Invalid::TooManyWords {
            words: query.len(),
            max: MAX_QUERY_WORDS,
        }
        .into());
    }
    Ok(query)
}
