//! The subscriptions of one Watch stream, parsed at the edge, and how a
//! published `(file, name)` is matched against them: a file id exactly,
//! a name exactly (case-sensitive, as Locate), a query by Search's rules
//! (the words come from the same parser, and are matched by the index's
//! own word-prefix check).

use std::collections::{HashMap, HashSet};

use peerdex_proto::{FileId, FileName};

use crate::index::name_matches;

/// What one stream waits for.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    /// Watched ids, as the request spelled them.
    ids: HashMap<FileId, String>,
    names: HashSet<FileName>,
    /// Each query as sent, with its words (lowercase, sorted, no repeats).
    queries: Vec<(String, Vec<String>)>,
}

/// One subscription that a published holding matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Match {
    /// A holder of this watched content appeared.
    Id { file: FileId, spelled: String },
    /// A holder of a content carrying this watched name appeared.
    Name(FileName),
    /// A file under a name matching this query (as sent) got a holder.
    Query {
        query: String,
        file: FileId,
        name: FileName,
    },
}

impl Filter {
    pub(crate) fn watch_id(&mut self, id: FileId, spelled: String) {
        self.ids.insert(id, spelled);
    }

    pub(crate) fn watch_name(&mut self, name: FileName) {
        self.names.insert(name);
    }

    /// `words` from the query parser (`crate::rpc`'s, Search's).
    pub(crate) fn watch_query(&mut self, query: String, words: Vec<String>) {
        if !self.queries.iter().any(|(q, _)| *q == query) {
            self.queries.push((query, words));
        }
    }

    /// The ids and exact names watched, as Locate targets: what a linked
    /// island is asked for when its summary changes.
    pub(crate) fn targets(&self) -> Vec<(Match, peerdex_proto::v1::locate_request::Target)> {
        use peerdex_proto::v1::locate_request::Target;
        let ids = self.ids.iter().map(|(file, spelled)| {
            (
                Match::Id {
                    file: *file,
                    spelled: spelled.clone(),
                },
                Target::FileId(file.to_hex()),
            )
        });
        let names = self
            .names
            .iter()
            .map(|n| (Match::Name(n.clone()), Target::Name(n.to_string())));
        ids.chain(names).collect()
    }

    /// Subscriptions held (each counts against
    /// `CENTRAL_MAX_WATCHES_PER_PEER`).
    pub(crate) fn len(&self) -> usize {
        self.ids.len() + self.names.len() + self.queries.len()
    }

    /// Add to `out` what `(file, name)`, a holding just published,
    /// matches (each subscription at most once per `out`).
    pub(crate) fn matches(&self, file: &FileId, name: &FileName, out: &mut Vec<Match>) {
        let mut push = |m: Match| {
            if !out.contains(&m) {
                out.push(m);
            }
        };
        if let Some(spelled) = self.ids.get(file) {
            push(Match::Id {
                file: *file,
                spelled: spelled.clone(),
            });
        }
        if self.names.contains(name) {
            push(Match::Name(name.clone()));
        }
        for (query, words) in &self.queries {
            if name_matches(name.as_str(), words) {
                push(Match::Query {
                    query: query.clone(),
                    file: *file,
                    name: name.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(q: &str) -> Vec<String> {
        let mut w: Vec<String> = crate::index::words(q).collect();
        w.sort_unstable();
        w
    }

    #[test]
    fn ids_names_and_queries_match_as_locate_and_search_do() {
        let (a, b) = (FileId::from_bytes([1; 32]), FileId::from_bytes([2; 32]));
        let mut f = Filter::default();
        f.watch_id(a, a.to_hex());
        f.watch_name("Report.pdf".parse().unwrap());
        f.watch_query("ann rep".into(), words("ann rep"));
        assert_eq!(f.len(), 3);
        let mut out = Vec::new();
        let name: FileName = "Annual-REPORT-2024.pdf".parse().unwrap();
        f.matches(&a, &name, &mut out);
        assert_eq!(
            out,
            [
                Match::Id {
                    file: a,
                    spelled: a.to_hex()
                },
                Match::Query {
                    query: "ann rep".into(),
                    file: a,
                    name: name.clone()
                }
            ]
        );
        // Names are exact and case-sensitive; every query word must be a
        // prefix of a word of the name.
        out.clear();
        f.matches(&b, &"report.pdf".parse().unwrap(), &mut out);
        f.matches(&b, &"annex.txt".parse().unwrap(), &mut out);
        assert!(out.is_empty(), "{out:?}");
        f.matches(&b, &"Report.pdf".parse().unwrap(), &mut out);
        f.matches(&b, &"Report.pdf".parse().unwrap(), &mut out);
        assert_eq!(out, [Match::Name("Report.pdf".parse().unwrap())]);
    }
}
