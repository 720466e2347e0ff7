//! Replication: pins (a wanted number of live copies per file) and the
//! planner that keeps them, as a pure function ([`plan`]): the state goes
//! in, the whole set of open tasks comes out. The service runs it on the
//! leader (a single central leads itself), writes the difference, and
//! hands each volunteer its tasks in its Heartbeat answers.
//!
//! The rules, for each file that is pinned or has a replica holder:
//!
//! * **Live copies** are the live peers that claim it, owners and replica
//!   holders alike; **proven** copies are those the directory stands
//!   behind (see [`Holder::proven`]): only they count toward a pin. A
//!   claim alone (a rogue's `replica = true` for bytes it does not have)
//!   never counts. `target` is the highest pin (`wanted`), at least 1.
//! * **Auditing**: while an audit of one of a file's copies is due, the
//!   planner asks nothing for that file (a new leader audits first).
//! * **Too few** (`proven < wanted`): volunteers that do not hold it, are
//!   not already fetching it, did not decline it and have room in their
//!   quota (quota − replicas held − fetches under way) are asked to FETCH
//!   it, one copy at a time, the pinner with the least replica space
//!   first, each from the roomiest volunteer, until
//!   `proven + fetching = wanted`. No peer is ever asked for a second
//!   copy, and no quota is ever exceeded. A copy no volunteer can take is
//!   reported **unplaced** (with the bytes wanted and free).
//! * **Fair share**: while a pinner that holds less than its share
//!   (volunteers' total quota ÷ pinners) waits for room, replicas of any
//!   pinner above its share are dropped, biggest first, until it is at
//!   its share.
//! * **Lost** (`live = 0`): nothing can be fetched; the pin stays and the
//!   file is reported lost until a peer that has it announces it again.
//! * **Too many** (`live > target`) for longer than the grace period:
//!   replica holders, never owners, are asked to DROP, unproven copies
//!   first, never a proven copy the target needs, until
//!   `live − dropping = target`. Owners alone may exceed the target.
//! * Fetches no longer needed are withdrawn, and a fetch open for longer
//!   than its deadline is withdrawn and counted as declined, so another
//!   volunteer is asked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use peerdex_proto::{FileId, PeerId};
use serde::{Deserialize, Serialize};

/// A live holder of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub peer: PeerId,
    /// Holds it as a replica (may be asked to drop it), not as an owner.
    pub replica: bool,
    /// The directory stands behind this copy: it asked for it and the
    /// volunteer reported it done, or it passed its last audit. Only
    /// proven copies count toward a pin.
    pub proven: bool,
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
    /// An audit of one of its copies is due: nothing is asked for it until
    /// the answer is in (a new leader audits before it counts).
    pub auditing: bool,
    /// Who pinned it (the source address of the highest pin's owner):
    /// replica space is shared fairly among pinners.
    pub pinner: Option<IpAddr>,
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
    /// Pinned files short of copies that no volunteer can take now.
    pub unplaced: BTreeMap<FileId, Unplaced>,
}

/// A pin no volunteer has room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unplaced {
    /// Bytes of the copies it is short of.
    pub wanted_bytes: u64,
    /// Room left in all volunteers' replica space together.
    pub free_bytes: u64,
}

impl Unplaced {
    /// What `peerdex pins` shows.
    pub fn message(&self) -> String {
        format!(
            "no volunteer has room: {} bytes wanted, {} free in total",
            self.wanted_bytes, self.free_bytes
        )
    }
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

    // Replica space each pinner takes (copies held by volunteers, and
    // fetches under way), for a fair share of it.
    let mut usage: HashMap<Option<IpAddr>, u64> = HashMap::new();
    for f in &files {
        let copies = f.holders.iter().filter(|h| h.replica).count()
            + fetching.get(&f.id).map_or(0, Vec::len);
        *usage.entry(f.pinner).or_default() += f.size.saturating_mul(copies as u64);
    }
    // Files short of copies, and how many more each needs.
    let mut short: Vec<(&FileState, usize)> = Vec::new();

    for f in files.iter().copied() {
        let live = f.holders.len() as u64;
        let proven = f.holders.iter().filter(|h| h.proven).count() as u64;
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
        if f.auditing {
            // Some copy's audit is due: decide once its answer is in.
            continue;
        }
        if proven < wanted {
            // Too few proven copies: keep as many fetches as are missing,
            // ask for the rest below (fairly among pinners).
            let missing = (wanted - proven) as usize;
            let (keep, extra) = mine.split_at(mine.len().min(missing));
            withdraw(&mut out.tasks, &mut room, f, extra);
            if missing > keep.len() {
                short.push((f, missing - keep.len()));
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
        // extras, unproven copies first, then those already dropping,
        // never an owner, and never a proven copy the target needs.
        let extra = (live - target) as usize;
        let mut replicas: Vec<(bool, bool, PeerId)> = f
            .holders
            .iter()
            .filter(|h| h.replica)
            .map(|h| (h.proven, !dropping(input, h.peer, f.id), h.peer))
            .collect();
        replicas.sort();
        let mut proven_spare = proven.saturating_sub(target);
        let mut dropped = 0;
        for (is_proven, _, p) in replicas {
            if dropped == extra {
                break;
            }
            if is_proven {
                if proven_spare == 0 {
                    continue;
                }
                proven_spare -= 1;
            }
            dropped += 1;
            drop_task(&mut out.tasks, input, f, p);
        }
    }

    // Ask for the missing copies one at a time, the pinner with the least
    // replica space first, each from the roomiest volunteer that may take
    // it. A file no volunteer can take is unplaced.
    // Each pinner's files short of copies, in file order; the pinners by
    // the replica space they take.
    let mut wants: BTreeMap<Option<IpAddr>, std::collections::VecDeque<(&FileState, usize)>> =
        BTreeMap::new();
    for (f, n) in short {
        wants.entry(f.pinner).or_default().push_back((f, n));
    }
    let mut queue: BTreeSet<(u64, Option<IpAddr>)> = wants
        .keys()
        .map(|p| (usage.get(p).copied().unwrap_or(0), *p))
        .collect();
    while let Some((used, pinner)) = queue.pop_first() {
        let Some(list) = wants.get_mut(&pinner) else {
            continue;
        };
        let Some((f, n)) = list.pop_front() else {
            continue;
        };
        let best = input
            .volunteers
            .iter()
            .map(|v| v.peer)
            .filter(|p| {
                !f.holders.iter().any(|h| h.peer == *p)
                    && !out.tasks.contains_key(&(*p, f.id))
                    && !input.declined.contains(&(*p, f.id))
                    && !timed_out.contains(&(*p, f.id))
            })
            .filter_map(|p| room.get(&p).filter(|&&r| r >= f.size).map(|&r| (r, p)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut used = used;
        match best {
            Some((_, p)) => {
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
                used = used.saturating_add(f.size);
                usage.insert(pinner, used);
                if n > 1 {
                    list.push_front((f, n - 1));
                }
            }
            None => {
                let free = room.values().copied().fold(0u64, u64::saturating_add);
                out.unplaced.insert(
                    f.id,
                    Unplaced {
                        wanted_bytes: f.size.saturating_mul(n as u64),
                        free_bytes: free,
                    },
                );
            }
        }
        if !list.is_empty() {
            queue.insert((used, pinner));
        }
    }

    // While a pin waits for room, no pinner keeps more than its fair share
    // of the replica space: its replicas above the share are dropped (the
    // newest pinner's wait ends as the space frees).
    if !out.unplaced.is_empty() {
        let total: u64 = input
            .volunteers
            .iter()
            .map(|v| v.quota)
            .fold(0, u64::saturating_add);
        let pinners: BTreeSet<Option<IpAddr>> = files
            .iter()
            .filter(|f| f.wanted > 1)
            .map(|f| f.pinner)
            .collect();
        let fair = total / (pinners.len().max(1) as u64);
        let used_by = |p: &Option<IpAddr>| usage.get(p).copied().unwrap_or(0);
        let needy = out
            .unplaced
            .keys()
            .filter_map(|id| by_id.get(id))
            .any(|f| used_by(&f.pinner) < fair);
        for pinner in pinners.iter().filter(|_| needy) {
            let mut used = used_by(pinner);
            if used <= fair {
                continue;
            }
            // Its copies held by volunteers, biggest files first.
            let mut theirs: Vec<(&FileState, PeerId)> = files
                .iter()
                .filter(|f| f.pinner == *pinner)
                .flat_map(|f| {
                    f.holders
                        .iter()
                        .filter(|h| h.replica)
                        .map(move |h| (*f, h.peer))
                })
                .collect();
            theirs.sort_by(|a, b| {
                b.0.size
                    .cmp(&a.0.size)
                    .then(dropping(input, b.1, b.0.id).cmp(&dropping(input, a.1, a.0.id)))
                    .then(a.0.id.cmp(&b.0.id))
                    .then(a.1.cmp(&b.1))
            });
            for (f, p) in theirs {
                if used <= fair {
                    break;
                }
                if out.tasks.contains_key(&(p, f.id)) {
                    continue;
                }
                used = used.saturating_sub(f.size);
                drop_task(&mut out.tasks, input, f, p);
            }
        }
    }
    out
}

/// `peer` is already asked to drop its copy of `file`.
fn dropping(input: &Input, peer: PeerId, file: FileId) -> bool {
    input
        .tasks
        .get(&(peer, file))
        .is_some_and(|t| t.action == Action::Drop)
}

/// Ask `peer` to drop its copy of `f` (keeping when it was first asked).
fn drop_task(tasks: &mut Tasks, input: &Input, f: &FileState, peer: PeerId) {
    let since_ms = match input.tasks.get(&(peer, f.id)) {
        Some(t) if t.action == Action::Drop => t.since_ms,
        _ => input.now_ms,
    };
    tasks.insert(
        (peer, f.id),
        Task {
            action: Action::Drop,
            size: f.size,
            name: f.name.clone(),
            since_ms,
        },
    );
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

/// The state of a file as answers show it: `live` copies, of which
/// `proven` count.
pub fn state(wanted: u32, live: u32, proven: u32) -> &'static str {
    match (wanted, live) {
        (0, _) => "",
        (_, 0) => "lost",
        (w, _) if proven < w => "under",
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
    /// The source address of the pinning peer's call: limits and the
    /// replica space's fair share hold per address, not per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    /// Since when its owner has had no lease (Unix seconds): the pin ends
    /// `CENTRAL_PIN_ORPHAN_DAYS` later unless the owner comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphaned_at: Option<i64>,
}

/// Why the directory stands behind a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProofVia {
    /// The directory asked this volunteer to fetch it (a verified
    /// download) and the volunteer reported it done.
    Fetched,
    /// A random chunk of it checked out against the file id.
    Audited,
}

/// A proven copy: how, and when (Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub via: ProofVia,
    pub at_ms: u64,
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

    /// Who pinned `file`: the address of the highest pin's owner.
    pub fn pinner(&self, file: &FileId) -> Option<IpAddr> {
        self.by_file
            .get(file)?
            .values()
            .max_by_key(|p| (p.replicas, std::cmp::Reverse(p.at)))?
            .addr
    }

    /// `peer`'s pins.
    pub fn of(&self, peer: &PeerId) -> Vec<(FileId, Pin)> {
        self.by_file
            .iter()
            .filter_map(|(f, m)| Some((*f, m.get(peer)?.clone())))
            .collect()
    }

    /// How many pins were set from `addr`, and the bytes they ask the
    /// network to keep (size × copies), leaving out `peer`'s pin of
    /// `except`.
    pub fn usage_of_addr(&self, addr: IpAddr, peer: &PeerId, except: &FileId) -> (usize, u64) {
        self.by_file
            .iter()
            .flat_map(|(f, m)| m.iter().map(move |(p, pin)| (f, p, pin)))
            .filter(|(f, p, pin)| pin.addr == Some(addr) && !(*f == except && *p == peer))
            .fold((0, 0), |(n, b), (_, _, pin)| {
                (
                    n + 1,
                    b.saturating_add(pin.size.saturating_mul(u64::from(pin.replicas))),
                )
            })
    }

    /// Every pin, with its owner.
    pub fn all(&self) -> impl Iterator<Item = (FileId, PeerId, &Pin)> + '_ {
        self.by_file
            .iter()
            .flat_map(|(f, m)| m.iter().map(move |(p, pin)| (*f, *p, pin)))
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
                proven: true,
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
            auditing: false,
            pinner: None,
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
            proven: true,
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
                proven: true,
            },
            Holder {
                peer: peer(4),
                replica: true,
                proven: true,
            },
        ];
        let mut i = input(vec![pinned(1, 100, 0, holders)], vec![]);
        i.grace_ms = 0;
        let p = plan(&i);
        assert_eq!(p.tasks.len(), 1, "one copy stays: {p:?}");
    }

    fn claim(i: u8, proven: bool) -> Holder {
        Holder {
            peer: peer(i),
            replica: true,
            proven,
        }
    }

    #[test]
    fn a_rogue_claim_never_counts_and_is_dropped_before_an_honest_copy() {
        // Three real copies (an owner, two proven replicas) and a rogue's
        // unproven claim, sorting first by peer id.
        let mut holders = owners(&[9]);
        holders.extend([claim(1, false), claim(5, true), claim(6, true)]);
        let mut i = input(vec![pinned(1, 100, 3, holders)], vec![]);
        i.grace_ms = 0;
        let p = plan(&i);
        let dropping: Vec<PeerId> = p.tasks.keys().map(|(p, _)| *p).collect();
        assert_eq!(dropping, vec![peer(1)], "only the rogue is asked to drop");
        assert_eq!(state(3, 4, 3), "ok");
        // Two proven copies and the rogue: under, and a volunteer is asked.
        let mut holders = owners(&[9]);
        holders.extend([claim(1, false), claim(5, true)]);
        let i = input(vec![pinned(1, 100, 3, holders)], vec![vol(7, 1000)]);
        let p = plan(&i);
        assert_eq!(p.tasks.keys().next(), Some(&(peer(7), file(1))));
        assert_eq!(p.tasks[&(peer(7), file(1))].action, Action::Fetch);
        assert_eq!(state(3, 3, 2), "under");
    }

    #[test]
    fn two_rogues_before_any_fetch_do_not_stop_replication() {
        let mut holders = owners(&[9]);
        holders.extend([claim(1, false), claim(2, false)]);
        let i = input(
            vec![pinned(1, 100, 3, holders)],
            vec![vol(5, 1000), vol(6, 1000)],
        );
        let p = plan(&i);
        let asked: Vec<PeerId> = p.tasks.keys().map(|(p, _)| *p).collect();
        assert_eq!(asked, vec![peer(5), peer(6)]);
    }

    #[test]
    fn nothing_is_decided_for_a_file_while_an_audit_is_due() {
        let mut f = pinned(1, 100, 3, vec![claim(1, false)]);
        f.auditing = true;
        let p = plan(&input(vec![f], vec![vol(5, 1000)]));
        assert!(p.tasks.is_empty(), "{p:?}");
    }

    #[test]
    fn a_pinner_over_its_fair_share_makes_room_for_one_that_waits() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // A's two pins fill both volunteers (1000 bytes each).
        let mut files = Vec::new();
        for id in [1, 2] {
            let mut f = pinned(id, 500, 3, owners(&[20 + id]));
            f.holders.extend([claim(5, true), claim(6, true)]);
            f.pinner = Some(a);
            files.push(f);
        }
        // B's pin finds no room.
        let mut fb = pinned(3, 500, 2, owners(&[30]));
        fb.pinner = Some(b);
        files.push(fb);
        let vols = vec![
            Volunteer {
                peer: peer(5),
                quota: 1000,
                used: 1000,
            },
            Volunteer {
                peer: peer(6),
                quota: 1000,
                used: 1000,
            },
        ];
        let p = plan(&input(files, vols));
        let u = p.unplaced[&file(3)];
        assert_eq!(
            u.message(),
            "no volunteer has room: 500 bytes wanted, 0 free in total"
        );
        // A holds 2000 of 2000 bytes, its fair share is 1000: two of its
        // replicas go.
        let drops: Vec<_> = p
            .tasks
            .iter()
            .filter(|(_, t)| t.action == Action::Drop)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(drops.len(), 2, "{drops:?}");
        assert!(drops.iter().all(|(_, f)| *f != file(3)));
    }

    #[test]
    fn copies_are_shared_out_least_served_pinner_first() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // Room for two copies; A asks for three files first (ids 1-3), B
        // for one (id 4): B gets one of the two.
        let mut files: Vec<FileState> = (1..=3)
            .map(|id| {
                let mut f = pinned(id, 100, 2, owners(&[20 + id]));
                f.pinner = Some(a);
                f
            })
            .collect();
        let mut fb = pinned(4, 100, 2, owners(&[30]));
        fb.pinner = Some(b);
        files.push(fb);
        let p = plan(&input(files, vec![vol(5, 200)]));
        let fetched: Vec<FileId> = p.tasks.keys().map(|(_, f)| *f).collect();
        assert!(fetched.contains(&file(4)), "{fetched:?}");
        assert_eq!(fetched.len(), 2);
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
                prop::collection::vec((0u8..12, any::<bool>(), any::<bool>()), 0..5),
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
                        .filter(|(p, _, _)| seen.insert(*p))
                        .map(|(p, replica, proven)| Holder {
                            peer: peer(p),
                            replica,
                            proven,
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
                // Never a proven copy the target needs.
                let proven = f.holders.iter().filter(|h| h.proven).count();
                let proven_dropped = f
                    .holders
                    .iter()
                    .filter(|h| h.proven && p.tasks.contains_key(&(h.peer, f.id)))
                    .count();
                prop_assert!(
                    proven - proven_dropped >= proven.min((f.wanted as usize).max(1)),
                    "a needed proven copy dropped: {f:?}"
                );
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
                        proven: true,
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
                let proven = f.holders.iter().filter(|h| h.proven).count() as u32;
                if proven < f.wanted {
                    let could = w.volunteers.iter().any(|v| {
                        !f.holders.iter().any(|h| h.peer == v.peer)
                            && v.quota.saturating_sub(v.used) >= f.size
                    });
                    prop_assert!(!could, "{f:?} stuck under its pin with room left");
                }
                let unproven_replicas = f.holders.iter().filter(|h| h.replica && !h.proven).count();
                let proven_replicas = f.holders.iter().filter(|h| h.replica && h.proven).count();
                // (A file short of proven copies keeps its claims while
                // volunteers are asked for more.)
                if live > f.wanted.max(1) && proven >= f.wanted {
                    prop_assert_eq!(unproven_replicas, 0, "extra unproven replicas left: {:?}", f);
                    if proven > f.wanted.max(1) {
                        prop_assert_eq!(proven_replicas, 0, "extra proven replicas left: {:?}", f);
                    }
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
