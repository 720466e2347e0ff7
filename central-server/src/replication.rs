//! Replication: pins (a wanted number of live copies per file) and the
//! planner that keeps them, as a pure function ([`plan`]): the state goes
//! in, the whole set of open tasks comes out. The service runs it on the
//! leader (a single central leads itself), writes the difference, and
//! hands each volunteer its tasks in its Heartbeat answers.
//!
//! The rules, for each file that is pinned or has a replica holder:
//!
//! * **Live copies** are the live peers that hold it, owners and replica
//!   holders alike. `target` is the highest pin (`wanted`), at least 1.
//! * **Too few** (`live < wanted`): volunteers that do not hold it, are
//!   not already fetching it, did not decline it and have room in their
//!   quota (quota − replicas held − fetches under way) are asked to FETCH
//!   it, the roomiest first, until `live + fetching = wanted`. No peer is
//!   ever asked for a second copy, and no quota is ever exceeded.
//! * **Lost** (`live = 0`): nothing can be fetched; the pin stays and the
//!   file is reported lost until a peer that has it announces it again.
//! * **Too many** (`live > target`) for longer than the grace period:
//!   replica holders, never owners, are asked to DROP, until
//!   `live − dropping = target`. Owners alone may exceed the target.
//! * Fetches no longer needed are withdrawn, and a fetch open for longer
//!   than its deadline is withdrawn and counted as declined, so another
//!   volunteer is asked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use peerdex_proto::{FileId, PeerId};
use serde::{Deserialize, Serialize};

/// A live holder of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub peer: PeerId,
    /// Holds it as a replica (may be asked to drop it), not as an owner.
    pub replica: bool,
}

/// A file the planner looks after: pinned, or held as a replica somewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub id: FileId,
    pub size: u64,
    /// The name volunteers keep and announce it under.
    pub name: String,
    /// The highest pin (0 = not pinned).
    pub wanted: u32,
    /// Live holders, each peer once.
    pub holders: Vec<Holder>,
}

/// A live peer that offers replica space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Volunteer {
    pub peer: PeerId,
    pub quota: u64,
    /// Bytes of the replicas it holds now.
    pub used: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Fetch,
    Drop,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Fetch => "fetch",
            Action::Drop => "drop",
        }
    }
}

/// An open task of one volunteer for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub action: Action,
    pub size: u64,
    pub name: String,
    /// When it was given (Unix milliseconds).
    pub since_ms: u64,
}

/// Every open task, by `(volunteer, file)`: at most one per pair.
pub type Tasks = BTreeMap<(PeerId, FileId), Task>;

/// What the planner sees.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub files: Vec<FileState>,
    pub volunteers: Vec<Volunteer>,
    /// The tasks open now.
    pub tasks: Tasks,
    /// `(volunteer, file)` pairs it must not ask (declined lately).
    pub declined: HashSet<(PeerId, FileId)>,
    /// Since when each file has had more live copies than its target
    /// (Unix milliseconds).
    pub over_since: HashMap<FileId, u64>,
    pub now_ms: u64,
    /// How long a file stays over its target before extras are dropped.
    pub grace_ms: u64,
    /// How long a fetch may stay open (before the size's share, see
    /// [`fetch_deadline_ms`]).
    pub fetch_timeout_ms: u64,
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The tasks that should be open: write the difference with the input's.
    pub tasks: Tasks,
    pub over_since: HashMap<FileId, u64>,
    /// Fetches withdrawn for taking too long: record them as declined.
    pub timed_out: Vec<(PeerId, FileId)>,
    /// Pinned files with no live copy.
    pub lost: BTreeSet<FileId>,
}

/// How long a fetch of `size` bytes may stay open: the timeout, plus a
/// second per MiB (a slow but moving transfer is not cut).
pub fn fetch_deadline_ms(timeout_ms: u64, size: u64) -> u64 {
    timeout_ms.saturating_add(size / (1 << 20) * 1000)
}

/// Plan the open tasks for `input`. Pure: same input, same plan.
pub fn plan(input: &Input) -> Plan {
    let mut room: HashMap<PeerId, u64> = input
        .volunteers
        .iter()
        .map(|v| (v.peer, v.quota.saturating_sub(v.used)))
        .collect();
    let mut files: Vec<&FileState> = input.files.iter().collect();
    files.sort_by_key(|f| f.id);
    let mut out = Plan::default();

    // Fetches stay open while they are due, not timed out, and fit: they
    // reserve room first (oldest first), so a new one never takes it.
    let mut kept: Vec<(&(PeerId, FileId), &Task)> = input
        .tasks
        .iter()
        .filter(|(_, t)| t.action == Action::Fetch)
        .collect();
    kept.sort_by_key(|(k, t)| (t.since_ms, **k));
    let mut fetching: HashMap<FileId, Vec<PeerId>> = HashMap::new();
    let by_id: HashMap<FileId, &FileState> = files.iter().map(|f| (f.id, *f)).collect();
    for (&(peer, file), task) in kept {
        let Some(f) = by_id.get(&file) else { continue };
        if f.holders.iter().any(|h| h.peer == peer) || input.declined.contains(&(peer, file)) {
            continue;
        }
        let deadline = fetch_deadline_ms(input.fetch_timeout_ms, f.size);
        if input.now_ms.saturating_sub(task.since_ms) > deadline {
            out.timed_out.push((peer, file));
            continue;
        }
        let Some(r) = room.get_mut(&peer) else {
            continue;
        };
        if *r < f.size {
            continue;
        }
        *r -= f.size;
        fetching.entry(file).or_default().push(peer);
        out.tasks.insert((peer, file), task.clone());
    }
    let timed_out: HashSet<(PeerId, FileId)> = out.timed_out.iter().copied().collect();

    for f in files {
        let live = f.holders.len() as u64;
        let wanted = u64::from(f.wanted);
        let target = wanted.max(1);
        let mine = fetching.remove(&f.id).unwrap_or_default();
        if live == 0 {
            if f.wanted > 0 {
                out.lost.insert(f.id);
            }
            withdraw(&mut out.tasks, &mut room, f, &mine);
            continue;
        }
        if live < wanted {
            // Too few: keep as many fetches as are missing, add the rest.
            let missing = (wanted - live) as usize;
            let (keep, extra) = mine.split_at(mine.len().min(missing));
            withdraw(&mut out.tasks, &mut room, f, extra);
            let mut candidates: Vec<(u64, PeerId)> = input
                .volunteers
                .iter()
                .map(|v| v.peer)
                .filter(|p| {
                    !f.holders.iter().any(|h| h.peer == *p)
                        && !keep.contains(p)
                        && !input.declined.contains(&(*p, f.id))
                        && !timed_out.contains(&(*p, f.id))
                })
                .filter_map(|p| room.get(&p).filter(|&&r| r >= f.size).map(|&r| (r, p)))
                .collect();
            candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for (_, p) in candidates.into_iter().take(missing - keep.len()) {
                *room.get_mut(&p).expect("a volunteer") -= f.size;
                out.tasks.insert(
                    (p, f.id),
                    Task {
                        action: Action::Fetch,
                        size: f.size,
                        name: f.name.clone(),
                        since_ms: input.now_ms,
                    },
                );
            }
            continue;
        }
        // Enough: no fetch is needed any more.
        withdraw(&mut out.tasks, &mut room, f, &mine);
        if live <= target {
            continue;
        }
        let since = input.over_since.get(&f.id).copied().unwrap_or(input.now_ms);
        out.over_since.insert(f.id, since);
        if input.now_ms.saturating_sub(since) < input.grace_ms {
            continue;
        }
        // Too many for the whole grace period: replica holders drop the
        // extras, those already dropping first, never an owner.
        let extra = (live - target) as usize;
        let mut replicas: Vec<(bool, PeerId)> = f
            .holders
            .iter()
            .filter(|h| h.replica)
            .map(|h| {
                let dropping = input
                    .tasks
                    .get(&(h.peer, f.id))
                    .is_some_and(|t| t.action == Action::Drop);
                (!dropping, h.peer)
            })
            .collect();
        replicas.sort();
        for (fresh, p) in replicas.into_iter().take(extra) {
            let since_ms = if fresh {
                input.now_ms
            } else {
                input.tasks[&(p, f.id)].since_ms
            };
            out.tasks.insert(
                (p, f.id),
                Task {
                    action: Action::Drop,
                    size: f.size,
                    name: f.name.clone(),
                    since_ms,
                },
            );
        }
    }
    out
}

/// Withdraw the fetches of `f` by `peers`, giving their room back.
fn withdraw(tasks: &mut Tasks, room: &mut HashMap<PeerId, u64>, f: &FileState, peers: &[PeerId]) {
    for p in peers {
        if tasks.remove(&(*p, f.id)).is_some()
            && let Some(r) = room.get_mut(p)
        {
            *r += f.size;
        }
    }
}

/// The state of a file as answers show it.
pub fn state(wanted: u32, live: u32) -> &'static str {
    match (wanted, live) {
        (0, _) => "",
        (_, 0) => "lost",
        (w, l) if l < w => "under",
        _ => "ok",
    }
}

/// One pin: a peer asks for `replicas` live copies of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub replicas: u32,
    /// The file's size and a name when it was pinned (a lost file is still
    /// shown by them).
    pub size: u64,
    pub name: String,
    /// Unix seconds.
    pub at: i64,
}

/// Every pin, in memory (the durable copy is in SQLite or etcd).
#[derive(Debug, Default)]
pub struct PinBook {
    by_file: BTreeMap<FileId, BTreeMap<PeerId, Pin>>,
}

impl PinBook {
    pub fn set(&mut self, file: FileId, peer: PeerId, pin: Option<Pin>) {
        match pin {
            Some(p) => {
                self.by_file.entry(file).or_default().insert(peer, p);
            }
            None => {
                if let Some(m) = self.by_file.get_mut(&file) {
                    m.remove(&peer);
                    if m.is_empty() {
                        self.by_file.remove(&file);
                    }
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.by_file.clear();
    }

    /// The highest pin on `file` (0 = none).
    pub fn wanted(&self, file: &FileId) -> u32 {
        self.by_file
            .get(file)
            .and_then(|m| m.values().map(|p| p.replicas).max())
            .unwrap_or(0)
    }

    pub fn get(&self, file: &FileId, peer: &PeerId) -> Option<&Pin> {
        self.by_file.get(file)?.get(peer)
    }

    /// Any pin of `file` (for its size and name).
    pub fn any(&self, file: &FileId) -> Option<&Pin> {
        self.by_file.get(file)?.values().next()
    }

    /// Every pinned file with its highest pin.
    pub fn files(&self) -> impl Iterator<Item = (FileId, u32, &Pin)> + '_ {
        self.by_file.iter().filter_map(|(f, m)| {
            let best = m.values().max_by_key(|p| p.replicas)?;
            Some((*f, best.replicas, best))
        })
    }

    /// `peer`'s pins.
    pub fn of(&self, peer: &PeerId) -> Vec<(FileId, Pin)> {
        self.by_file
            .iter()
            .filter_map(|(f, m)| Some((*f, m.get(peer)?.clone())))
            .collect()
    }

    /// How many pins `peer` has, and the bytes they ask the network to
    /// keep (size × copies), leaving out its pin of `except`.
    pub fn usage(&self, peer: &PeerId, except: &FileId) -> (usize, u64) {
        self.by_file
            .iter()
            .filter(|(f, _)| *f != except)
            .filter_map(|(_, m)| m.get(peer))
            .fold((0, 0), |(n, b), p| {
                (
                    n + 1,
                    b.saturating_add(p.size.saturating_mul(u64::from(p.replicas))),
                )
            })
    }

    pub fn len(&self) -> usize {
        self.by_file.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_file.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(i: u8) -> PeerId {
        PeerId::from_uuid(uuid::Uuid::from_bytes([i; 16]))
    }
    fn file(i: u8) -> FileId {
        FileId::from_bytes([i; 32])
    }

    fn input(files: Vec<FileState>, volunteers: Vec<Volunteer>) -> Input {
        Input {
            files,
            volunteers,
            now_ms: 1_000_000,
            grace_ms: 10_000,
            fetch_timeout_ms: 60_000,
            ..Input::default()
        }
    }

    fn owners(ids: &[u8]) -> Vec<Holder> {
        ids.iter()
            .map(|&i| Holder {
                peer: peer(i),
                replica: false,
            })
            .collect()
    }

    fn pinned(id: u8, size: u64, wanted: u32, holders: Vec<Holder>) -> FileState {
        FileState {
            id: file(id),
            size,
            name: format!("f{id}"),
            wanted,
            holders,
        }
    }

    fn vol(i: u8, quota: u64) -> Volunteer {
        Volunteer {
            peer: peer(i),
            quota,
            used: 0,
        }
    }

    #[test]
    fn too_few_copies_ask_the_roomiest_volunteers_and_never_a_holder() {
        let f = pinned(1, 100, 3, owners(&[1]));
        let p = plan(&input(
            vec![f],
            vec![vol(1, 1000), vol(2, 500), vol(3, 900), vol(4, 50)],
        ));
        let asked: Vec<PeerId> = p.tasks.keys().map(|(p, _)| *p).collect();
        assert_eq!(asked, vec![peer(2), peer(3)]);
        assert!(p.tasks.values().all(|t| t.action == Action::Fetch));
    }

    #[test]
    fn open_fetches_are_kept_not_doubled() {
        let mut i = input(
            vec![pinned(1, 100, 2, owners(&[1]))],
            vec![vol(2, 1000), vol(3, 1000)],
        );
        let first = plan(&i);
        assert_eq!(first.tasks.len(), 1);
        i.tasks = first.tasks.clone();
        i.now_ms += 5_000;
        assert_eq!(plan(&i).tasks, first.tasks);
    }

    #[test]
    fn a_declined_or_timed_out_fetch_goes_to_another_volunteer() {
        let mut i = input(
            vec![pinned(1, 100, 2, owners(&[1]))],
            vec![vol(2, 1000), vol(3, 999)],
        );
        let first = plan(&i);
        assert!(first.tasks.contains_key(&(peer(2), file(1))));
        i.declined.insert((peer(2), file(1)));
        i.tasks = first.tasks.clone();
        let second = plan(&i);
        assert_eq!(second.tasks.keys().next(), Some(&(peer(3), file(1))));

        i.declined.clear();
        i.now_ms += 61_000;
        let third = plan(&i);
        assert_eq!(third.timed_out, vec![(peer(2), file(1))]);
        assert_eq!(third.tasks.keys().next(), Some(&(peer(3), file(1))));
    }

    #[test]
    fn extras_are_dropped_after_the_grace_period_by_replica_holders_only() {
        let mut holders = owners(&[1, 2]);
        holders.extend([3, 4].map(|i| Holder {
            peer: peer(i),
            replica: true,
        }));
        let mut i = input(vec![pinned(1, 100, 2, holders)], vec![]);
        let first = plan(&i);
        assert!(first.tasks.is_empty(), "within the grace period");
        assert_eq!(first.over_since[&file(1)], i.now_ms);
        i.over_since = first.over_since;
        i.now_ms += 10_000;
        let second = plan(&i);
        let dropping: Vec<PeerId> = second.tasks.keys().map(|(p, _)| *p).collect();
        assert_eq!(dropping, vec![peer(3), peer(4)]);
        assert!(second.tasks.values().all(|t| t.action == Action::Drop));
    }

    #[test]
    fn a_pin_with_no_live_copy_is_lost_and_asks_nobody() {
        let p = plan(&input(vec![pinned(1, 100, 3, vec![])], vec![vol(2, 1000)]));
        assert!(p.tasks.is_empty());
        assert!(p.lost.contains(&file(1)));
    }

    #[test]
    fn unpinned_replicas_are_dropped_down_to_one_copy() {
        let holders = vec![
            Holder {
                peer: peer(3),
                replica: true,
            },
            Holder {
                peer: peer(4),
                replica: true,
            },
        ];
        let mut i = input(vec![pinned(1, 100, 0, holders)], vec![]);
        i.grace_ms = 0;
        let p = plan(&i);
        assert_eq!(p.tasks.len(), 1, "one copy stays: {p:?}");
    }

    // ------------------------------------------------------------ properties

    #[derive(Debug, Clone)]
    struct World {
        files: Vec<FileState>,
        volunteers: Vec<Volunteer>,
    }

    fn world() -> impl Strategy<Value = World> {
        let files = prop::collection::vec(
            (
                1u64..500,
                0u32..=5,
                prop::collection::vec((0u8..12, any::<bool>()), 0..5),
            ),
            1..8,
        );
        let vols = prop::collection::vec((0u8..12, 0u64..2000, 0u64..300), 0..10);
        (files, vols).prop_map(|(files, vols)| {
            let files = files
                .into_iter()
                .enumerate()
                .map(|(i, (size, wanted, hs))| {
                    let mut seen = HashSet::new();
                    let holders = hs
                        .into_iter()
                        .filter(|(p, _)| seen.insert(*p))
                        .map(|(p, replica)| Holder {
                            peer: peer(p),
                            replica,
                        })
                        .collect();
                    pinned(i as u8, size, wanted, holders)
                })
                .collect();
            let mut seen = HashSet::new();
            let volunteers = vols
                .into_iter()
                .filter(|(p, _, _)| seen.insert(*p))
                .map(|(p, quota, used)| Volunteer {
                    peer: peer(p),
                    quota,
                    used,
                })
                .collect();
            World { files, volunteers }
        })
    }

    /// Check one plan against the invariants.
    fn check(i: &Input, p: &Plan) -> Result<(), TestCaseError> {
        for ((peer, file), t) in &p.tasks {
            let f = i
                .files
                .iter()
                .find(|f| f.id == *file)
                .expect("a known file");
            let held = f.holders.iter().find(|h| h.peer == *peer);
            match t.action {
                Action::Fetch => {
                    prop_assert!(held.is_none(), "a second copy asked of {peer}");
                    prop_assert!(i.volunteers.iter().any(|v| v.peer == *peer));
                }
                Action::Drop => {
                    prop_assert!(held.is_some_and(|h| h.replica), "an owner's copy dropped");
                }
            }
        }
        for v in &i.volunteers {
            let fetching: u64 = p
                .tasks
                .iter()
                .filter(|((q, _), t)| *q == v.peer && t.action == Action::Fetch)
                .map(|(_, t)| t.size)
                .sum();
            if fetching > 0 {
                prop_assert!(
                    v.used + fetching <= v.quota,
                    "quota of {} exceeded: {} + {fetching} > {}",
                    v.peer,
                    v.used,
                    v.quota
                );
            }
        }
        for f in &i.files {
            let dropping = p
                .tasks
                .iter()
                .filter(|((_, q), t)| *q == f.id && t.action == Action::Drop)
                .count();
            let live = f.holders.len();
            if dropping > 0 {
                prop_assert!(live - dropping >= (f.wanted as usize).max(1));
            }
        }
        Ok(())
    }

    /// Apply a plan as volunteers would: fetches become replicas, drops go.
    fn apply(w: &mut World, p: &Plan) {
        for ((peer, file), t) in &p.tasks {
            let f = w.files.iter_mut().find(|f| f.id == *file).unwrap();
            match t.action {
                Action::Fetch => {
                    f.holders.push(Holder {
                        peer: *peer,
                        replica: true,
                    });
                    let v = w.volunteers.iter_mut().find(|v| v.peer == *peer).unwrap();
                    v.used += t.size;
                }
                Action::Drop => {
                    f.holders.retain(|h| h.peer != *peer);
                    if let Some(v) = w.volunteers.iter_mut().find(|v| v.peer == *peer) {
                        v.used = v.used.saturating_sub(t.size);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn plans_keep_the_invariants_and_converge(mut w in world()) {
            let mut over_since = HashMap::new();
            let mut now = 1_000_000;
            for _ in 0..12 {
                let i = Input {
                    files: w.files.clone(),
                    volunteers: w.volunteers.clone(),
                    over_since: over_since.clone(),
                    now_ms: now,
                    grace_ms: 0,
                    fetch_timeout_ms: 60_000,
                    ..Input::default()
                };
                let p = plan(&i);
                check(&i, &p)?;
                prop_assert_eq!(&plan(&i), &p, "not deterministic");
                if p.tasks.is_empty() {
                    break;
                }
                over_since = p.over_since.clone();
                apply(&mut w, &p);
                now += 1000;
            }
            // Settled: every file with a live copy has what it wants, or
            // no volunteer that could take one more is left.
            for f in &w.files {
                let live = f.holders.len() as u32;
                if live == 0 {
                    continue;
                }
                if live < f.wanted {
                    let could = w.volunteers.iter().any(|v| {
                        !f.holders.iter().any(|h| h.peer == v.peer)
                            && v.quota.saturating_sub(v.used) >= f.size
                    });
                    prop_assert!(!could, "{f:?} stuck under its pin with room left");
                }
                let replicas = f.holders.iter().filter(|h| h.replica).count() as u32;
                if live > f.wanted.max(1) {
                    prop_assert_eq!(replicas, 0, "extra replicas left: {:?}", f);
                }
            }
        }

        #[test]
        fn enough_volunteers_bring_every_live_file_to_its_pin(
            sizes in prop::collection::vec((1u64..100, 2u32..=5), 1..6),
        ) {
            let files: Vec<FileState> = sizes
                .iter()
                .enumerate()
                .map(|(i, &(size, wanted))| pinned(i as u8, size, wanted, owners(&[100 + i as u8])))
                .collect();
            // Five volunteers, each with room for every file.
            let volunteers: Vec<Volunteer> = (0..5).map(|i| vol(i, 10_000)).collect();
            let mut w = World { files, volunteers };
            for _ in 0..3 {
                let i = Input {
                    files: w.files.clone(),
                    volunteers: w.volunteers.clone(),
                    now_ms: 1,
                    fetch_timeout_ms: 60_000,
                    ..Input::default()
                };
                let p = plan(&i);
                check(&i, &p)?;
                apply(&mut w, &p);
            }
            for f in &w.files {
                prop_assert_eq!(f.holders.len() as u32, f.wanted);
            }
        }
    }
}
