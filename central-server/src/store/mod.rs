//! The durable copy of the index: SQLite (bundled), WAL, `synchronous=FULL`.
//!
//! The inventories: `peers` (id, URL, BLAKE3 hash of the session token)
//! and `holdings` (peer row, content id, name, the size this peer claims
//! for the file, replica flag), keyed by peer first: a Join's rows go in
//! one after the other at the end of the table, and a peer's inventory is
//! dropped as one range (schema 7; before, a `files` table gave each
//! content a row id, and its unique index on random content ids made
//! nearly every insert dirty another page: most of a Join's time, in
//! writing those pages to the WAL and checkpointing them). Nothing is
//! looked up by content id here: the in-memory index answers that. Every
//! mutation is one savepoint: alone, its
//! own transaction; between [`Store::begin`] and [`Store::commit`], one of
//! a group of changes committed together (one fsync for all: the group
//! commit of `directory/sqlite.rs`). Either way it is committed before the
//! RPC is acknowledged, so an acknowledged change survives `kill -9`. Leases are not stored: after a restart every peer gets a
//! fresh one. No manifest is stored: holders serve them.
//!
//! The schema is versioned with `PRAGMA user_version` ([`SCHEMA_VERSION`]).
//! A database of the first release (version 0: one size per file, and the
//! file's chunk manifest) is migrated on open, in one transaction: each
//! holding takes its file's size as its claim, the manifest columns go.

use std::path::Path;

use peerdex_proto::convert::SharedFile;
use peerdex_proto::{FileId, PeerId, PeerUrl};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::time::Instant;

use crate::error::{Corrupt, Error, Result};
use crate::index::{Index, Reach, TokenHash};
use crate::replication::Pin;

mod rows;

use rows::{drop_holdings, insert_files, peer_row, size_col};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "central.db";

/// The schema this version writes (`PRAGMA user_version`). 0 is the first
/// release's schema, which [`Store::open`] migrates.
pub const SCHEMA_VERSION: i64 = 7;

const SCHEMA: &str = "
CREATE TABLE peers(
    id INTEGER PRIMARY KEY,
    peer_id BLOB NOT NULL UNIQUE,
    url TEXT NOT NULL,
    token_hash BLOB NOT NULL
);
CREATE TABLE files(
    id INTEGER PRIMARY KEY,
    file_id BLOB NOT NULL UNIQUE
);
CREATE TABLE holdings(
    file INTEGER NOT NULL,
    peer INTEGER NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY(file, peer, name)
) WITHOUT ROWID;
CREATE INDEX holdings_by_peer ON holdings(peer);
";

/// Version 3: the key each peer id is bound to (kept after the peer
/// leaves, until idle for `CENTRAL_KEY_RETENTION_DAYS`). `last_join` is
/// Unix seconds.
const KEYS: &str = "
CREATE TABLE peer_keys(
    peer_id BLOB PRIMARY KEY,
    public_key BLOB NOT NULL,
    last_join INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX peer_keys_by_last_join ON peer_keys(last_join);
";

/// Version 4 (issue 13): the replica space each peer offers, which
/// holdings are replicas, and the pins (wanted copies per file and peer;
/// `at` is Unix seconds). Pins are the directory's state: they stay when
/// the pinning peer leaves.
const REPLICAS: &str = "
ALTER TABLE peers ADD COLUMN replica_quota INTEGER NOT NULL DEFAULT 0;
ALTER TABLE holdings ADD COLUMN replica INTEGER NOT NULL DEFAULT 0;
CREATE TABLE pins(
    file_id BLOB NOT NULL,
    peer_id BLOB NOT NULL,
    replicas INTEGER NOT NULL,
    size INTEGER NOT NULL,
    name TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY(file_id, peer_id)
) WITHOUT ROWID;
";

/// Version 5 (issue 29): a pin remembers the source address that set it
/// (limits per address) and since when its owner has been gone (a pin
/// ends `CENTRAL_PIN_ORPHAN_DAYS` after its owner's lease).
const PIN_OWNERS: &str = "
ALTER TABLE pins ADD COLUMN addr TEXT;
ALTER TABLE pins ADD COLUMN orphaned_at INTEGER;
";

/// Version 6 (issue 25): whether a peer relays for firewalled peers (how
/// many), and whether its holdings are unlisted (unreachable, no relay).
const REACH: &str = "
ALTER TABLE peers ADD COLUMN relay_max INTEGER NOT NULL DEFAULT 0;
ALTER TABLE peers ADD COLUMN unlisted INTEGER NOT NULL DEFAULT 0;
";

/// From the first release (`files(id, file_id, size, chunk_size,
/// chunk_hashes)`, `holdings(file, peer, name)`) to version 2. Holdings are
/// rebuilt so that a migrated database has exactly the schema of a new one.
const MIGRATE_FROM_0: &str = "
CREATE TABLE holdings_v2(
    file INTEGER NOT NULL,
    peer INTEGER NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY(file, peer, name)
) WITHOUT ROWID;
INSERT INTO holdings_v2(file, peer, name, size)
    SELECT h.file, h.peer, h.name, f.size FROM holdings h JOIN files f ON f.id = h.file;
DROP TABLE holdings;
ALTER TABLE holdings_v2 RENAME TO holdings;
CREATE INDEX holdings_by_peer ON holdings(peer);
ALTER TABLE files DROP COLUMN size;
ALTER TABLE files DROP COLUMN chunk_size;
ALTER TABLE files DROP COLUMN chunk_hashes;
";

/// Version 7 (issue 27): holdings keyed by peer, with the content id in
/// the row; no `files` table (see the module doc).
const BY_PEER: &str = "
CREATE TABLE held(
    peer INTEGER NOT NULL,
    file_id BLOB NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    replica INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(peer, file_id, name)
) WITHOUT ROWID;
INSERT INTO held(peer, file_id, name, size, replica)
    SELECT h.peer, f.file_id, h.name, h.size, h.replica
    FROM holdings h JOIN files f ON f.id = h.file
    ORDER BY h.peer, f.file_id, h.name;
DROP TABLE holdings;
DROP TABLE files;
ALTER TABLE held RENAME TO holdings;
";

/// Largest database read through a memory map at load (beyond it SQLite
/// reads the rest with plain reads).
const LOAD_MMAP_BYTES: i64 = 1 << 30;

/// An Ed25519 public key, as bound to a peer id.
pub type PublicKey = [u8; 32];

/// One withdrawal: a content, and one of its names or all of them.
pub type Withdrawal = (FileId, Option<String>);

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let conn = Connection::open(dir.join(DB_FILE))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Corrupt::NotWal { mode }.into());
        }
        // The savepoints of a group commit journal pages in memory, not in a
        // temporary file; 16 MiB of page cache keeps the content-id index's
        // hot pages of a big group from being read again.
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA busy_timeout=5000;
             PRAGMA temp_store=MEMORY; PRAGMA cache_size=-16384;",
        )?;
        let mut store = Self { conn };
        store.upgrade()?;
        Ok(store)
    }

    /// Create the schema in a new database, or migrate an older one; one
    /// transaction either way, so a crash leaves the old schema intact.
    fn upgrade(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let has_tables: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'files')",
            [],
            |r| r.get(0),
        )?;
        // Each step of the schema after version 0 with the version it
        // upgrades from: a database runs the steps from its version on.
        const STEPS: [(i64, &str, &str); 5] = [
            (2, KEYS, "peer keys"),
            (3, REPLICAS, "replicas"),
            (4, PIN_OWNERS, "pins' owners' addresses"),
            (5, REACH, "relays, unlisted peers"),
            (6, BY_PEER, "holdings keyed by peer"),
        ];
        let from = match (version, has_tables) {
            (SCHEMA_VERSION, _) => return Ok(()),
            (0, false) => {
                tx.execute_batch(SCHEMA)?;
                0
            }
            (0, true) => {
                let (files, holdings): (i64, i64) = tx.query_row(
                    "SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM holdings)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                tracing::info!(
                    files,
                    holdings,
                    "migrating the database from schema 0 to {SCHEMA_VERSION} (manifests dropped, sizes kept per holding)"
                );
                tx.execute_batch(MIGRATE_FROM_0)?;
                0
            }
            (v @ 2..=6, _) => v,
            (v, _) => {
                return Err(Corrupt::Schema {
                    version: v,
                    known: "0, 2, 3, 4, 5, 6 or 7",
                }
                .into());
            }
        };
        let steps: Vec<_> = STEPS.iter().filter(|(v, ..)| *v >= from).collect();
        if from > 0 {
            let what: Vec<_> = steps.iter().map(|(_, _, what)| *what).collect();
            tracing::info!(
                "migrating the database from schema {from} to {SCHEMA_VERSION} ({})",
                what.join(", ")
            );
        }
        for (_, sql, _) in steps {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Load everything into a fresh index; every peer's lease ends at `expires`.
    pub fn load(&self, expires: Instant) -> Result<Index> {
        // Read the whole file through a memory map while loading (no read
        // syscall and copy per page), then unmap it so that the file's pages
        // do not count in the process's memory.
        let mmap = |bytes: i64| -> Result<i64> {
            Ok(self
                .conn
                .pragma_update_and_check(None, "mmap_size", bytes, |r| r.get(0))?)
        };
        mmap(LOAD_MMAP_BYTES)?;
        let loaded = self.load_rows(expires);
        mmap(0)?;
        loaded
    }

    fn load_rows(&self, expires: Instant) -> Result<Index> {
        let count = |sql: &str| -> Result<usize> {
            let n: Option<i64> = self.conn.query_row(sql, [], |r| r.get(0))?;
            Ok(n.unwrap_or(0).max(0) as usize)
        };
        let t0 = std::time::Instant::now();
        // Holdings bound the contents (as many when each has one holder).
        let holdings = count("SELECT count(*) FROM holdings")?;
        let mut ix = Index::with_capacity(count("SELECT max(id) FROM peers")?, holdings);

        // Row ids are dense (INTEGER PRIMARY KEY), so plain vectors map them.
        const NONE: u32 = u32::MAX;
        let slot = |v: &mut Vec<u32>, row: i64| -> Result<usize> {
            let i = usize::try_from(row).map_err(|_| Corrupt::Row {
                table: "a table",
                row,
                problem: "a negative row id",
            })?;
            if i >= v.len() {
                v.resize(i + 1, NONE);
            }
            Ok(i)
        };
        let mut peer_of_row: Vec<u32> = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT id, peer_id, url, token_hash, replica_quota, relay_max, unlisted FROM peers",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row: i64 = r.get(0)?;
            let id = PeerId::from_uuid(uuid::Uuid::from_slice(r.get_ref(1)?.as_blob()?).map_err(
                |_| Corrupt::Row {
                    table: "peers",
                    row,
                    problem: "the peer id is not a UUID",
                },
            )?);
            let url: PeerUrl = r.get_ref(2)?.as_str()?.parse().map_err(|_| Corrupt::Row {
                table: "peers",
                row,
                problem: "the URL is not a peer URL",
            })?;
            let hash: TokenHash =
                r.get_ref(3)?
                    .as_blob()?
                    .try_into()
                    .map_err(|_| Corrupt::Row {
                        table: "peers",
                        row,
                        problem: "the token hash is not 32 bytes",
                    })?;
            let i = slot(&mut peer_of_row, row)?;
            peer_of_row[i] = ix.insert_peer(id, url, hash, expires);
            ix.set_replica_quota(peer_of_row[i], r.get::<_, i64>(4)? as u64);
            ix.set_reach_of(
                &id,
                Reach {
                    relay_max: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                    unlisted: r.get::<_, i64>(6)? != 0,
                },
            );
        }

        // Rows come by peer; a content's slot is made at its first holding.
        let mut stmt = self
            .conn
            .prepare("SELECT peer, file_id, name, size, replica FROM holdings")?;
        let mut rows = stmt.query([])?;
        let mut contradictions = 0u64;
        while let Some(r) = rows.next()? {
            let row: i64 = r.get(0)?;
            let p = usize::try_from(row)
                .ok()
                .and_then(|i| peer_of_row.get(i))
                .copied()
                .filter(|p| *p != NONE)
                .ok_or(Corrupt::MissingPeer { peer_row: row })?;
            let id = FileId::from_bytes(r.get_ref(1)?.as_blob()?.try_into().map_err(|_| {
                Corrupt::Row {
                    table: "holdings",
                    row,
                    problem: "a file id is not 32 bytes",
                }
            })?);
            let f = ix.file_or_insert(id, holdings);
            let size = r.get::<_, i64>(3)? as u64;
            // Never written (Join/Publish screen a peer's contradictions);
            // kept out of the index if a hand-edited database has some.
            // Names written before names were normalized come back in NFC
            // (what every answer and lookup uses now).
            let name = peerdex_proto::types::to_nfc(r.get_ref(2)?.as_str()?);
            if !ix.add_ref(p, f, &name, size) {
                contradictions += 1;
            } else {
                ix.mark_replica(p, f, r.get::<_, bool>(4)?);
            }
        }
        if contradictions > 0 {
            tracing::warn!(
                holdings = contradictions,
                "holdings whose size contradicts the same peer's claim for the file were skipped"
            );
        }
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "loaded holdings");
        ix.finish_bulk();
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "token index built");
        Ok(ix)
    }

    /// The public key `peer` is bound to, if any.
    pub fn key_of(&self, peer: &PeerId) -> Result<Option<PublicKey>> {
        let key: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT public_key FROM peer_keys WHERE peer_id = ?1",
                params![peer.as_uuid().as_bytes()],
                |r| r.get(0),
            )
            .optional()?;
        key.map(|k| {
            PublicKey::try_from(k.as_slice()).map_err(|_| {
                Corrupt::Table {
                    table: "peer_keys",
                    problem: "a key is not 32 bytes",
                }
                .into()
            })
        })
        .transpose()
    }

    /// Key bindings held (peers that joined, present or not).
    pub fn keys_held(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM peer_keys", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Forget the bindings of peers that are not in the directory and did
    /// not join since `before` (Unix seconds); then, while more than `max`
    /// bindings are held, those of absent peers idle longest. Returns how
    /// many were forgotten.
    pub fn forget_idle_keys(&mut self, before: i64, max: u64) -> Result<usize> {
        let tx = self.conn.savepoint()?;
        let mut n = tx.execute(
            "DELETE FROM peer_keys WHERE last_join < ?1
             AND NOT EXISTS (SELECT 1 FROM peers WHERE peers.peer_id = peer_keys.peer_id)",
            params![before],
        )?;
        let held: i64 = tx.query_row("SELECT count(*) FROM peer_keys", [], |r| r.get(0))?;
        let over = held.max(0) as u64;
        if over > max {
            n += tx.execute(
                "DELETE FROM peer_keys WHERE peer_id IN (
                    SELECT k.peer_id FROM peer_keys k
                    WHERE NOT EXISTS (SELECT 1 FROM peers p WHERE p.peer_id = k.peer_id)
                    ORDER BY k.last_join LIMIT ?1)",
                params![(over - max) as i64],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Create or replace a peer with `files` as its whole inventory, and
    /// bind its id to `key` (the caller checked that it is not bound to
    /// another), at `now` (Unix seconds).
    #[allow(clippy::too_many_arguments)] // one row of `peers`, its key and its inventory
    pub fn join(
        &mut self,
        peer: &PeerId,
        url: &PeerUrl,
        token_hash: &TokenHash,
        key: &PublicKey,
        now: i64,
        replica_quota: u64,
        reach: Reach,
        files: &[SharedFile],
    ) -> Result<()> {
        let tx = self.conn.savepoint()?;
        tx.execute(
            "INSERT INTO peer_keys(peer_id, public_key, last_join) VALUES(?1, ?2, ?3)
             ON CONFLICT(peer_id) DO UPDATE SET last_join = excluded.last_join",
            params![peer.as_uuid().as_bytes(), key.as_slice(), now],
        )?;
        let row: i64 = tx.query_row(
            "INSERT INTO peers(peer_id, url, token_hash, replica_quota, relay_max, unlisted)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(peer_id) DO UPDATE SET url = excluded.url,
                 token_hash = excluded.token_hash, replica_quota = excluded.replica_quota,
                 relay_max = excluded.relay_max, unlisted = excluded.unlisted
             RETURNING id",
            params![
                peer.as_uuid().as_bytes(),
                url.as_str(),
                token_hash,
                size_col(replica_quota),
                i64::from(reach.relay_max),
                i64::from(reach.unlisted)
            ],
            |r| r.get(0),
        )?;
        drop_holdings(&tx, row)?;
        insert_files(&tx, row, files)?;
        tx.commit()?;
        Ok(())
    }

    /// Add files to a peer's inventory.
    pub fn publish(&mut self, peer: &PeerId, files: &[SharedFile]) -> Result<()> {
        let tx = self.conn.savepoint()?;
        let Some(row) = peer_row(&tx, peer)? else {
            return Err(Error::NotJoined(*peer));
        };
        insert_files(&tx, row, files)?;
        tx.commit()?;
        Ok(())
    }

    /// Withdraw files (one name, or every name when `None`).
    pub fn unpublish(&mut self, peer: &PeerId, refs: &[Withdrawal]) -> Result<()> {
        let tx = self.conn.savepoint()?;
        let Some(row) = peer_row(&tx, peer)? else {
            return Err(Error::NotJoined(*peer));
        };
        {
            let mut del_one = tx.prepare_cached(
                "DELETE FROM holdings WHERE peer = ?1 AND file_id = ?2 AND name = ?3",
            )?;
            let mut del_all =
                tx.prepare_cached("DELETE FROM holdings WHERE peer = ?1 AND file_id = ?2")?;
            for (id, name) in refs {
                match name {
                    Some(n) => del_one.execute(params![row, id.as_bytes(), n])?,
                    None => del_all.execute(params![row, id.as_bytes()])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Remove peers and their inventories (Leave, lease expiry).
    pub fn remove_peers(&mut self, peers: &[PeerId]) -> Result<()> {
        let tx = self.conn.savepoint()?;
        for peer in peers {
            if let Some(row) = peer_row(&tx, peer)? {
                drop_holdings(&tx, row)?;
                tx.prepare_cached("DELETE FROM peers WHERE id = ?1")?
                    .execute([row])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every pin.
    pub fn pins(&self) -> Result<Vec<(FileId, PeerId, Pin)>> {
        let mut stmt = self.conn.prepare(
            "SELECT file_id, peer_id, replicas, size, name, at, addr, orphaned_at FROM pins",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let file = FileId::from_bytes(r.get_ref(0)?.as_blob()?.try_into().map_err(|_| {
                Corrupt::Table {
                    table: "pins",
                    problem: "a file id is not 32 bytes",
                }
            })?);
            let peer = PeerId::from_uuid(
                uuid::Uuid::from_slice(r.get_ref(1)?.as_blob()?).map_err(|_| Corrupt::Table {
                    table: "pins",
                    problem: "a peer id is not a UUID",
                })?,
            );
            let pin = Pin {
                replicas: u32::try_from(r.get::<_, i64>(2)?).map_err(|_| Corrupt::Table {
                    table: "pins",
                    problem: "a count is out of range",
                })?,
                size: r.get::<_, i64>(3)? as u64,
                name: r.get(4)?,
                at: r.get(5)?,
                addr: r.get::<_, Option<String>>(6)?.and_then(|a| a.parse().ok()),
                orphaned_at: r.get(7)?,
            };
            out.push((file, peer, pin));
        }
        Ok(out)
    }

    /// Set (`Some`) or remove `peer`'s pin of `file`.
    pub fn set_pin(&mut self, file: &FileId, peer: &PeerId, pin: Option<&Pin>) -> Result<()> {
        let (f, p) = (file.as_bytes(), peer.as_uuid().as_bytes());
        match pin {
            Some(pin) => self.conn.execute(
                "INSERT INTO pins(file_id, peer_id, replicas, size, name, at, addr, orphaned_at)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(file_id, peer_id) DO UPDATE SET replicas = excluded.replicas,
                     size = excluded.size, name = excluded.name, at = excluded.at,
                     addr = excluded.addr, orphaned_at = excluded.orphaned_at",
                params![
                    f,
                    p,
                    pin.replicas,
                    size_col(pin.size),
                    pin.name,
                    pin.at,
                    pin.addr.map(|a| a.to_string()),
                    pin.orphaned_at
                ],
            )?,
            None => self.conn.execute(
                "DELETE FROM pins WHERE file_id = ?1 AND peer_id = ?2",
                params![f, p],
            )?,
        };
        Ok(())
    }

    /// Start a group: the changes until [`Store::commit`] share one
    /// transaction, each in a savepoint of its own (a failed one is rolled
    /// back alone).
    pub fn begin(&mut self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    /// Commit the group [`Store::begin`] started (one fsync); on failure
    /// the caller calls [`Store::rollback`].
    pub fn commit(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch("COMMIT")
    }

    /// Undo the group [`Store::begin`] started (after a failed commit).
    pub fn rollback(&mut self) {
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "rollback of a failed group commit");
        }
    }

    /// Checkpoint the WAL and close the database.
    pub fn close(self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        self.conn.close().map_err(|(_, e)| Error::Storage(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fid(i: u32) -> FileId {
        FileId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    fn sf(i: u32, size: u64, name: &str) -> SharedFile {
        SharedFile {
            replica: false,
            id: fid(i),
            size,
            name: name.parse().unwrap(),
        }
    }

    /// Distinct contents held.
    fn contents(s: &Store) -> i64 {
        s.conn
            .query_row("SELECT count(DISTINCT file_id) FROM holdings", [], |r| {
                r.get(0)
            })
            .unwrap()
    }

    fn count(s: &Store, table: &str) -> i64 {
        s.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// A group: changes share one transaction, a failed one is undone
    /// alone, a rolled-back group leaves nothing; a file's replica flag
    /// follows its last announcement, for every name the peer holds it
    /// under.
    #[test]
    fn a_group_commits_together_and_a_failed_change_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let url: PeerUrl = "http://127.0.0.1:1".parse().unwrap();
        let (a, b, gone) = (
            PeerId::new_random(),
            PeerId::new_random(),
            PeerId::new_random(),
        );
        let flags = |s: &Store| -> Vec<(String, bool)> {
            let mut st = s
                .conn
                .prepare("SELECT name, replica FROM holdings ORDER BY name")
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.begin().unwrap();
            s.join(
                &a,
                &url,
                &[1; 32],
                &[11; 32],
                1,
                0,
                Reach::default(),
                &[sf(1, 10, "a.bin")],
            )
            .unwrap();
            // Fails inside its savepoint: undone alone, the group goes on.
            let e = s.publish(&gone, &[sf(2, 20, "never.bin")]).unwrap_err();
            assert!(matches!(e, Error::NotJoined(p) if p == gone), "{e:?}");
            s.join(
                &b,
                &url,
                &[2; 32],
                &[22; 32],
                1,
                0,
                Reach::default(),
                &[sf(3, 30, "b.bin")],
            )
            .unwrap();
            s.commit().unwrap();
            // A group rolled back leaves nothing.
            s.begin().unwrap();
            s.publish(&a, &[sf(4, 40, "rolled back.bin")]).unwrap();
            s.rollback();
            // The replica flag: a second name as a replica marks both.
            let replica = SharedFile {
                replica: true,
                ..sf(1, 10, "a copy.bin")
            };
            s.publish(&a, &[replica]).unwrap();
            assert_eq!(
                flags(&s),
                [
                    ("a copy.bin".into(), true),
                    ("a.bin".into(), true),
                    ("b.bin".into(), false)
                ]
            );
            s.publish(&a, &[sf(1, 10, "a.bin")]).unwrap();
            assert_eq!(
                flags(&s)[..2],
                [("a copy.bin".into(), false), ("a.bin".into(), false)]
            );
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            (count(&s, "peers"), contents(&s), count(&s, "holdings")),
            (2, 2, 3)
        );
    }

    #[test]
    fn pins_keep_their_owner_address_and_orphan_mark_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        let pin = |addr: Option<&str>, orphaned_at| Pin {
            replicas: 3,
            size: 10,
            name: "x.bin".into(),
            at: 5,
            addr: addr.map(|a| a.parse().unwrap()),
            orphaned_at,
        };
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.set_pin(&fid(1), &a, Some(&pin(Some("192.0.2.7"), None)))
                .unwrap();
            s.set_pin(&fid(1), &b, Some(&pin(None, Some(1_700_000_000))))
                .unwrap();
            s.close().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let mut got = s.pins().unwrap();
        got.sort_by_key(|(_, p, _)| *p != a);
        assert_eq!(got[0], (fid(1), a, pin(Some("192.0.2.7"), None)));
        assert_eq!(got[1], (fid(1), b, pin(None, Some(1_700_000_000))));
    }

    #[tokio::test]
    async fn round_trip_through_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (PeerId::new_random(), PeerId::new_random());
        let url: PeerUrl = "http://127.0.0.1:9".parse().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.join(
                &a,
                &url,
                &[1; 32],
                &[11; 32],
                1,
                0,
                Reach::default(),
                &[sf(1, 10, "one.bin"), sf(2, 20, "two.bin")],
            )
            .unwrap();
            // b claims another size for file 1: kept, as b's claim.
            s.join(
                &b,
                &url,
                &[2; 32],
                &[22; 32],
                1,
                0,
                Reach {
                    relay_max: 4,
                    unlisted: false,
                },
                &[sf(2, 20, "zwei.bin"), sf(1, 11, "eins.bin")],
            )
            .unwrap();
            s.publish(&b, &[sf(3, u64::MAX, "drei.bin")]).unwrap();
            s.unpublish(&b, &[(fid(3), None)]).unwrap();
            s.join(
                &a,
                &url,
                &[3; 32],
                &[11; 32],
                2,
                0,
                Reach::default(),
                &[sf(1, 10, "one.bin")],
            )
            .unwrap(); // replaces
            s.close().unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        let now = Instant::now();
        let ix = s.load(now + Duration::from_secs(5)).unwrap();
        assert_eq!(ix.stats().peers, 2);
        assert_eq!(ix.stats().files, 2);
        assert!(ix.token_matches(&a, &[3; 32]));
        let one = ix.locate_id(&fid(1), now, 9).unwrap();
        assert_eq!(one.holders.len(), 2);
        assert_eq!(one.names, ["eins.bin", "one.bin"]);
        assert_eq!(one.size, 10, "10 and 11 once each: the smaller");
        assert_eq!(ix.locate_id(&fid(2), now, 9).unwrap().names, ["zwei.bin"]);
        // A relay's offer survives the restart.
        let relays = ix.relay_candidates(now);
        assert_eq!((relays.len(), relays[0].peer, relays[0].max), (1, b, 4));
        // Key bindings: kept across a restart and after a peer leaves; a
        // present peer's is never forgotten, an absent one's only once idle
        // past the cut-off (or to make room).
        assert_eq!(s.key_of(&a).unwrap(), Some([11; 32]));
        assert_eq!(s.key_of(&b).unwrap(), Some([22; 32]));
        let c = PeerId::new_random();
        assert_eq!(s.key_of(&c).unwrap(), None);
        s.join(&c, &url, &[4; 32], &[33; 32], 1, 0, Reach::default(), &[])
            .unwrap();
        s.remove_peers(&[c]).unwrap();
        assert_eq!(s.key_of(&c).unwrap(), Some([33; 32]), "kept after leaving");
        assert_eq!(s.forget_idle_keys(1, 10).unwrap(), 0, "not idle yet");
        assert_eq!(s.forget_idle_keys(0, 2).unwrap(), 1, "over the cap");
        assert_eq!((s.key_of(&c).unwrap(), s.keys_held().unwrap()), (None, 2));
        s.join(&c, &url, &[4; 32], &[33; 32], 1, 0, Reach::default(), &[])
            .unwrap();
        s.remove_peers(&[c]).unwrap();
        assert_eq!(s.forget_idle_keys(2, 10).unwrap(), 1, "joined at 1 < 2");
        assert_eq!(
            s.forget_idle_keys(100, 0).unwrap(),
            0,
            "a and b are present"
        );
        assert_eq!(s.keys_held().unwrap(), 2);
        let sizes: Vec<(String, i64)> = s
            .conn
            .prepare("SELECT name, size FROM holdings ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            sizes,
            [
                ("eins.bin".to_owned(), 11),
                ("one.bin".to_owned(), 10),
                ("zwei.bin".to_owned(), 20)
            ]
        );
        assert_eq!(contents(&s), 2, "orphaned contents are deleted");
        assert!(matches!(
            s.publish(&PeerId::new_random(), &[]),
            Err(Error::NotJoined(_))
        ));

        // Sizes beyond i64::MAX survive the signed column.
        s.publish(&b, &[sf(4, u64::MAX, "huge.img")]).unwrap();
        let ix = s.load(now + Duration::from_secs(5)).unwrap();
        assert_eq!(ix.locate_id(&fid(4), now, 9).unwrap().size, u64::MAX);
    }

    /// Every table's columns (name, type, not null, primary key position),
    /// every index, and which tables are WITHOUT ROWID.
    fn schema(conn: &Connection) -> Vec<String> {
        let mut out: Vec<String> = conn
            .prepare(
                "SELECT m.name || '.' || p.name || ' ' || p.type || ' notnull=' || p.\"notnull\" || ' pk=' || p.pk
                 FROM sqlite_schema m JOIN pragma_table_info(m.name) p
                 WHERE m.type = 'table' ORDER BY m.name, p.cid",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let more = conn
            .prepare(
                "SELECT 'index ' || m.name || ' on ' || m.tbl_name || '(' || p.name || ')'
                 FROM sqlite_schema m JOIN pragma_index_info(m.name) p
                 WHERE m.type = 'index' AND m.sql IS NOT NULL ORDER BY m.name, p.seqno",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        out.extend(more);
        let without_rowid = conn
            .prepare(
                "SELECT 'without rowid ' || name FROM sqlite_schema
                 WHERE type = 'table' AND sql LIKE '%WITHOUT ROWID%' ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        out.extend(without_rowid);
        out
    }

    /// The first release's schema, as it wrote it (no `user_version`).
    const FIRST_RELEASE_SCHEMA: &str = "
        CREATE TABLE IF NOT EXISTS peers(
            id INTEGER PRIMARY KEY,
            peer_id BLOB NOT NULL UNIQUE,
            url TEXT NOT NULL,
            token_hash BLOB NOT NULL
        );
        CREATE TABLE IF NOT EXISTS files(
            id INTEGER PRIMARY KEY,
            file_id BLOB NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            chunk_size INTEGER,
            chunk_hashes BLOB
        );
        CREATE TABLE IF NOT EXISTS holdings(
            file INTEGER NOT NULL,
            peer INTEGER NOT NULL,
            name TEXT NOT NULL,
            PRIMARY KEY(file, peer, name)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS holdings_by_peer ON holdings(peer);
    ";

    #[test]
    fn a_first_release_database_is_migrated_with_everything_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, idle] = [(); 3].map(|_| PeerId::new_random());
        {
            let old = Connection::open(dir.path().join(DB_FILE)).unwrap();
            old.pragma_update(None, "journal_mode", "WAL").unwrap();
            old.execute_batch(FIRST_RELEASE_SCHEMA).unwrap();
            for (row, peer, port) in [(1, a, 1), (2, b, 2), (3, idle, 3)] {
                old.execute(
                    "INSERT INTO peers(id, peer_id, url, token_hash) VALUES(?1, ?2, ?3, ?4)",
                    params![
                        row,
                        peer.as_uuid().as_bytes(),
                        format!("http://10.0.0.{port}:7071"),
                        [row as u8; 32]
                    ],
                )
                .unwrap();
            }
            // (row, file, size, chunk size, chunk hashes): file 1 has a
            // manifest of three chunks; file 3 is over 4 GiB.
            type OldFile = (i64, u32, i64, Option<i64>, Option<Vec<u8>>);
            let files: [OldFile; 3] = [
                (1, 1, 3 << 20, Some(1 << 20), Some(vec![7; 96])),
                (2, 2, 10, None, None),
                (3, 3, 5 << 30, None, None),
            ];
            for (row, i, size, cs, hashes) in files {
                old.execute(
                    "INSERT INTO files(id, file_id, size, chunk_size, chunk_hashes) VALUES(?1, ?2, ?3, ?4, ?5)",
                    params![row, fid(i).as_bytes(), size, cs, hashes],
                )
                .unwrap();
            }
            for (file, peer, name) in [
                (1, 1, "one.bin"),
                (1, 2, "uno.bin"),
                (2, 1, "two notes.txt"),
                (3, 2, "three.iso"),
                (3, 2, "drei.iso"),
            ] {
                old.execute(
                    "INSERT INTO holdings(file, peer, name) VALUES(?1, ?2, ?3)",
                    params![file, peer, name],
                )
                .unwrap();
            }
        }

        let s = Store::open(dir.path()).unwrap();
        let version: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let fresh = tempfile::tempdir().unwrap();
        assert_eq!(
            schema(&s.conn),
            schema(&Store::open(fresh.path()).unwrap().conn),
            "a migrated database has exactly the schema of a new one"
        );
        assert_eq!(
            (count(&s, "peers"), contents(&s), count(&s, "holdings")),
            (3, 3, 5)
        );

        let now = Instant::now();
        let check = |ix: &Index| {
            assert_eq!(
                ix.stats(),
                crate::index::Stats {
                    peers: 3,
                    files: 3,
                    names: 5
                }
            );
            for (peer, k) in [(a, 1u8), (b, 2), (idle, 3)] {
                assert!(ix.token_matches(&peer, &[k; 32]), "peer {k} and its token");
            }
            assert_eq!(ix.inventory_len(&idle), 0);
            let one = ix.locate_id(&fid(1), now, 9).unwrap();
            assert_eq!(
                (one.size, one.names.len(), one.holders.len()),
                (3 << 20, 2, 2)
            );
            let two = ix.locate_id(&fid(2), now, 9).unwrap();
            assert_eq!(two.size, 10);
            assert_eq!(two.holders[0].peer_id, a.to_string());
            assert_eq!(two.holders[0].peer_url, "http://10.0.0.1:7071");
            let three = ix.locate_id(&fid(3), now, 9).unwrap();
            assert_eq!(
                (three.size, three.names.as_slice()),
                (
                    5 << 30,
                    &["drei.iso".to_owned(), "three.iso".to_owned()][..]
                )
            );
            let hits = ix.search(&["notes".into()], None, 9, now, 99).hits;
            assert_eq!(hits.len(), 1, "the token map is rebuilt");
        };
        check(&s.load(now + Duration::from_secs(5)).unwrap());
        s.close().unwrap();

        // Opening again finds the current version and changes nothing.
        let s = Store::open(dir.path()).unwrap();
        check(&s.load(now + Duration::from_secs(5)).unwrap());
    }

    #[test]
    fn a_database_from_a_newer_release_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 9).unwrap();
        let before = schema(&conn);
        drop(conn);
        let e = Store::open(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("schema version 9"), "{e}");
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        assert_eq!(schema(&conn), before);
    }
}
