//! Lookups sent to linked islands: Locate only to islands whose summary
//! may hold the id (or the exact name), Search to every island that is
//! up; all at once, under one deadline (`CENTRAL_LINK_TIMEOUT_MS`). What
//! comes back is checked like any peer input (ids, names, URLs, sizes
//! against what this island knows), capped, marked with its island, and
//! merged after the local answer. An island that does not answer in time
//! is skipped, and not asked again until it answers a pull.

use std::future::Future;

use peerdex_proto::{FileId, FileName, PeerId, PeerUrl, v1};
use tonic::transport::Channel;
use tonic::{Response, Status};

use super::summary::Summary;
use super::{Links, Remote};
use peerdex_proto::v1::link_client::LinkClient;

/// Most names kept per file from a link.
const MAX_NAMES: usize = 64;

/// What linked islands answered.
#[derive(Debug, Default)]
pub struct Forwarded<T> {
    /// Each island that answered, with its answer (unchecked).
    pub answers: Vec<(String, T)>,
    /// Islands that were skipped (down, or too slow, or failed).
    pub skipped: Vec<String>,
}

impl Links {
    /// One remote per island that is up and whose summary passes `pick`,
    /// and the islands known but not up.
    fn targets(&self, pick: impl Fn(&Summary) -> bool) -> (Vec<(&Remote, String)>, Vec<String>) {
        let mut chosen: Vec<(&Remote, String)> = Vec::new();
        let (mut up, mut down): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for r in self.remotes() {
            match r.up_summary() {
                Some((island, s)) => {
                    if island != self.island()
                        && !chosen.iter().any(|(_, i)| *i == island)
                        && pick(&s)
                    {
                        chosen.push((r, island.clone()));
                    }
                    up.push(island);
                }
                None => {
                    if let Some(i) = r.island()
                        && !down.contains(&i)
                    {
                        down.push(i);
                    }
                }
            }
        }
        // An island with one central down and another up is not skipped.
        down.retain(|i| !up.contains(i));
        (chosen, down)
    }

    async fn ask<T, F, Fut>(
        &self,
        rpc: &'static str,
        targets: Vec<(&Remote, String)>,
        mut skipped: Vec<String>,
        call: F,
    ) -> Forwarded<T>
    where
        F: Fn(LinkClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = self.timeout();
        let calls = targets.into_iter().map(|(r, island)| {
            let call = call(r.client.clone());
            async move {
                let out = tokio::time::timeout(deadline, call).await;
                (r, island, out)
            }
        });
        let mut answers = Vec::new();
        for (r, island, out) in futures_util::future::join_all(calls).await {
            let result = match out {
                Ok(Ok(a)) => {
                    answers.push((island.clone(), a.into_inner()));
                    "ok"
                }
                Ok(Err(status)) => {
                    r.failed(format!("{}: {}", status.code(), status.message()));
                    skipped.push(island.clone());
                    "error"
                }
                Err(_) => {
                    r.failed(format!("no answer within {deadline:?}"));
                    skipped.push(island.clone());
                    "timeout"
                }
            };
            if let Some(m) = self.metrics() {
                m.link_query(&island, rpc, result);
            }
        }
        Forwarded { answers, skipped }
    }

    /// Locate `target` in the linked islands that may hold it.
    pub async fn locate(
        &self,
        target: &v1::locate_request::Target,
        max_holders: u32,
    ) -> Forwarded<v1::LocateResponse> {
        use v1::locate_request::Target;
        let (targets, skipped) = match target {
            Target::FileId(id) => match id.parse::<FileId>() {
                Ok(id) => self.targets(|s| s.may_hold_id(&id)),
                Err(_) => return Forwarded::default(),
            },
            Target::Name(name) => self.targets(|s| s.may_hold_name(name)),
        };
        if targets.is_empty() {
            return Forwarded {
                answers: Vec::new(),
                skipped,
            };
        }
        let req = v1::LinkLocateRequest {
            island: self.island().to_owned(),
            locate: Some(v1::LocateRequest {
                target: Some(target.clone()),
                max_holders,
            }),
        };
        self.ask("locate", targets, skipped, |mut c| {
            let req = req.clone();
            async move { c.locate(req).await }
        })
        .await
    }

    /// Search every linked island that is up (first page only).
    pub async fn search(&self, query: &str, limit: u32) -> Forwarded<v1::SearchResponse> {
        let (targets, skipped) = self.targets(|s| s.ids > 0);
        if targets.is_empty() {
            return Forwarded {
                answers: Vec::new(),
                skipped,
            };
        }
        let req = v1::LinkSearchRequest {
            island: self.island().to_owned(),
            search: Some(v1::SearchRequest {
                query: query.to_owned(),
                limit,
                page_token: String::new(),
            }),
        };
        self.ask("search", targets, skipped, |mut c| {
            let req = req.clone();
            async move { c.search(req).await }
        })
        .await
    }

    /// Count an answer from `island` that was (partly) refused.
    pub(crate) fn invalid_answer(&self, island: &str, rpc: &'static str) {
        if let Some(m) = self.metrics() {
            m.link_query(island, rpc, "invalid");
        }
    }
}

/// Merge a linked island's Locate answer into `local`, checked: `id` (a
/// Locate by id) must be the file answered; a file this island knows must
/// have the size it knows; names, peer ids and URLs must parse; at most
/// `max_holders` holders per file and `max_files` files. Returns how many
/// entries were refused.
pub fn merge_located(
    local: &mut Vec<v1::LocatedFile>,
    island: &str,
    answer: v1::LocateResponse,
    id: Option<&FileId>,
    max_holders: usize,
    max_files: usize,
) -> usize {
    let mut refused = 0;
    for f in answer.files.into_iter().take(max_files) {
        let Ok(fid) = f.file_id.parse::<FileId>() else {
            refused += 1;
            continue;
        };
        if id.is_some_and(|want| *want != fid) {
            refused += 1;
            continue;
        }
        let holders: Vec<v1::Holder> = f
            .holders
            .into_iter()
            .take(max_holders)
            .filter_map(|h| {
                h.peer_id.parse::<PeerId>().ok()?;
                h.peer_url.parse::<PeerUrl>().ok()?;
                Some(v1::Holder {
                    island: island.to_owned(),
                    ..h
                })
            })
            .collect();
        if holders.is_empty() {
            refused += 1;
            continue;
        }
        let names: Vec<String> = f
            .names
            .into_iter()
            .take(MAX_NAMES)
            .filter(|n| n.parse::<FileName>().is_ok())
            .collect();
        let Some(l) = local.iter_mut().find(|l| l.file_id == f.file_id) else {
            if local.len() < max_files {
                local.push(v1::LocatedFile {
                    file_id: f.file_id,
                    size: f.size,
                    names,
                    holders,
                    replication: None,
                });
            }
            continue;
        };
        if l.size != f.size {
            refused += 1;
            continue;
        }
        let room = max_holders.saturating_sub(l.holders.len());
        l.holders.extend(holders.into_iter().take(room));
        for n in names {
            if !l.names.contains(&n) && l.names.len() < MAX_NAMES {
                l.names.push(n);
            }
        }
    }
    refused
}

/// Merge a linked island's search hits into `hits`, checked and marked
/// with `island`, while `hits` has fewer than `max`. Returns how many
/// were refused.
pub fn merge_hits(
    hits: &mut Vec<v1::SearchHit>,
    island: &str,
    answer: v1::SearchResponse,
    max: usize,
) -> usize {
    let mut refused = 0;
    for h in answer.hits {
        if hits.len() >= max {
            break;
        }
        if h.file_id.parse::<FileId>().is_err() || h.name.parse::<FileName>().is_err() {
            refused += 1;
            continue;
        }
        if hits
            .iter()
            .any(|x| x.file_id == h.file_id && x.name == h.name && x.island == island)
        {
            continue;
        }
        hits.push(v1::SearchHit {
            island: island.to_owned(),
            ..h
        });
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, size: u64, holders: usize) -> v1::LocatedFile {
        v1::LocatedFile {
            file_id: id.into(),
            size,
            names: vec!["a.txt".into(), "../x".into()],
            holders: (0..holders)
                .map(|i| v1::Holder {
                    peer_id: uuid::Uuid::from_u128(i as u128 + 1).to_string(),
                    peer_url: format!("http://10.0.0.{}:7071", i + 1),
                    ..Default::default()
                })
                .collect(),
            replication: None,
        }
    }

    #[test]
    fn answers_are_checked_capped_and_marked() {
        let id = blake3::hash(b"x").to_hex().to_string();
        let fid: FileId = id.parse().unwrap();
        let mut local = vec![];
        let answer = v1::LocateResponse {
            files: vec![file(&id, 5, 10)],
            ..Default::default()
        };
        assert_eq!(merge_located(&mut local, "b", answer, Some(&fid), 3, 10), 0);
        assert_eq!(local.len(), 1);
        assert_eq!(local[0].holders.len(), 3);
        assert!(local[0].holders.iter().all(|h| h.island == "b"));
        assert_eq!(local[0].names, vec!["a.txt".to_string()]);
        // A wrong size for a file we know is refused.
        let wrong = v1::LocateResponse {
            files: vec![file(&id, 6, 1)],
            ..Default::default()
        };
        assert_eq!(merge_located(&mut local, "c", wrong, Some(&fid), 9, 10), 1);
        assert_eq!(local[0].holders.len(), 3);
        // Another id than asked, a bad URL: refused.
        let other = blake3::hash(b"y").to_hex().to_string();
        let mut bad = file(&id, 5, 1);
        bad.holders[0].peer_url = "not a url".into();
        let answer = v1::LocateResponse {
            files: vec![file(&other, 5, 1), bad],
            ..Default::default()
        };
        assert_eq!(merge_located(&mut local, "c", answer, Some(&fid), 9, 10), 2);
    }
}
