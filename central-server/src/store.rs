//! The durable copy of the index: SQLite (bundled), WAL, `synchronous=FULL`.
//!
//! Three tables: `peers` (id, URL, BLAKE3 hash of the session token),
//! `files` (content id, size, optional manifest) and `holdings`
//! (file, peer, name). Integer surrogate keys keep the holdings table and its
//! peer index small. Every mutation is one transaction, committed before the
//! RPC is acknowledged, so an acknowledged change survives `kill -9`.
//! Contents nobody holds any more are deleted in the same transaction.
//! Leases are not stored: after a restart every peer gets a fresh one.

use std::path::Path;

use peerdex_proto::convert::{Manifest, SharedFile};
use peerdex_proto::{FileId, PeerId, PeerUrl};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::index::{Index, TokenHash};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "central.db";

const SCHEMA: &str = "
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
            return Err(Error::Corrupt(format!(
                "cannot switch the database to WAL (got {mode})"
            )));
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA busy_timeout=5000;",
        )?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Load everything into a fresh index; every peer's lease ends at `expires`.
    pub fn load(&self, expires: Instant) -> Result<Index> {
        let count = |sql: &str| -> Result<usize> {
            let n: Option<i64> = self.conn.query_row(sql, [], |r| r.get(0))?;
            Ok(n.unwrap_or(0).max(0) as usize)
        };
        let t0 = std::time::Instant::now();
        let mut ix = Index::with_capacity(
            count("SELECT max(id) FROM peers")?,
            count("SELECT max(id) FROM files")?,
        );

        // Row ids are dense (INTEGER PRIMARY KEY), so plain vectors map them.
        const NONE: u32 = u32::MAX;
        let slot = |v: &mut Vec<u32>, row: i64| -> Result<usize> {
            let i = usize::try_from(row)
                .map_err(|_| Error::Corrupt(format!("negative row id {row}")))?;
            if i >= v.len() {
                v.resize(i + 1, NONE);
            }
            Ok(i)
        };
        let mut peer_of_row: Vec<u32> = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT id, peer_id, url, token_hash FROM peers")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row: i64 = r.get(0)?;
            let id = PeerId::from_uuid(
                uuid::Uuid::from_slice(r.get_ref(1)?.as_blob()?)
                    .map_err(|e| Error::Corrupt(format!("peer row {row}: {e}")))?,
            );
            let url: PeerUrl = r
                .get_ref(2)?
                .as_str()?
                .parse()
                .map_err(|e| Error::Corrupt(format!("peer row {row}: {e}")))?;
            let hash: TokenHash = r.get_ref(3)?.as_blob()?.try_into().map_err(|_| {
                Error::Corrupt(format!("peer row {row}: token hash is not 32 bytes"))
            })?;
            let i = slot(&mut peer_of_row, row)?;
            peer_of_row[i] = ix.insert_peer(id, url, hash, expires);
        }

        let mut file_of_row: Vec<u32> = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT id, file_id, size, chunk_size, chunk_hashes FROM files")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row: i64 = r.get(0)?;
            let corrupt = |what: &str| Error::Corrupt(format!("file row {row}: {what}"));
            let id = FileId::from_bytes(
                r.get_ref(1)?
                    .as_blob()?
                    .try_into()
                    .map_err(|_| corrupt("bad id"))?,
            );
            let size = r.get::<_, i64>(2)? as u64;
            let manifest = match r.get::<_, Option<i64>>(3)? {
                None => None,
                Some(cs) => {
                    let blob = r.get_ref(4)?.as_blob()?;
                    if blob.len() % 32 != 0 {
                        return Err(corrupt("bad manifest"));
                    }
                    let hashes = blob
                        .chunks_exact(32)
                        .map(|c| c.try_into().expect("32 bytes"))
                        .collect();
                    Some(Manifest {
                        chunk_size: cs as u64,
                        hashes,
                    })
                }
            };
            let i = slot(&mut file_of_row, row)?;
            file_of_row[i] = ix.insert_file(id, size, manifest);
        }

        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "loaded peers and files"
        );
        let mut stmt = self.conn.prepare("SELECT file, peer, name FROM holdings")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (f, p): (i64, i64) = (r.get(0)?, r.get(1)?);
            let get =
                |v: &[u32], row: i64| usize::try_from(row).ok().and_then(|i| v.get(i)).copied();
            let (Some(f), Some(p)) = (get(&file_of_row, f), get(&peer_of_row, p)) else {
                return Err(Error::Corrupt(format!(
                    "holding ({f}, {p}) refers to a missing row"
                )));
            };
            if f == NONE || p == NONE {
                return Err(Error::Corrupt("a holding refers to a missing row".into()));
            }
            ix.add_ref(p, f, r.get_ref(2)?.as_str()?);
        }
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "loaded holdings");
        ix.finish_bulk();
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "token index built");
        Ok(ix)
    }

    /// Create or replace a peer with `files` as its whole inventory.
    pub fn join(
        &mut self,
        peer: &PeerId,
        url: &PeerUrl,
        token_hash: &TokenHash,
        files: &[SharedFile],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let row: i64 = tx.query_row(
            "INSERT INTO peers(peer_id, url, token_hash) VALUES(?1, ?2, ?3)
             ON CONFLICT(peer_id) DO UPDATE SET url = excluded.url, token_hash = excluded.token_hash
             RETURNING id",
            params![peer.as_uuid().as_bytes(), url.as_str(), token_hash],
            |r| r.get(0),
        )?;
        drop_holdings(&tx, row)?;
        insert_files(&tx, row, files)?;
        tx.commit()?;
        Ok(())
    }

    /// Add files to a peer's inventory.
    pub fn publish(&mut self, peer: &PeerId, files: &[SharedFile]) -> Result<()> {
        let tx = self.conn.transaction()?;
        let Some(row) = peer_row(&tx, peer)? else {
            return Err(Error::NotJoined(*peer));
        };
        insert_files(&tx, row, files)?;
        tx.commit()?;
        Ok(())
    }

    /// Withdraw files (one name, or every name when `None`).
    pub fn unpublish(&mut self, peer: &PeerId, refs: &[Withdrawal]) -> Result<()> {
        let tx = self.conn.transaction()?;
        let Some(row) = peer_row(&tx, peer)? else {
            return Err(Error::NotJoined(*peer));
        };
        {
            let mut file_row = tx.prepare_cached("SELECT id FROM files WHERE file_id = ?1")?;
            let mut del_one = tx.prepare_cached(
                "DELETE FROM holdings WHERE file = ?1 AND peer = ?2 AND name = ?3",
            )?;
            let mut del_all =
                tx.prepare_cached("DELETE FROM holdings WHERE file = ?1 AND peer = ?2")?;
            for (id, name) in refs {
                let Some(f): Option<i64> = file_row
                    .query_row([id.as_bytes()], |r| r.get(0))
                    .optional()?
                else {
                    continue;
                };
                match name {
                    Some(n) => del_one.execute(params![f, row, n])?,
                    None => del_all.execute(params![f, row])?,
                };
                drop_if_orphan(&tx, f)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Remove peers and their inventories (Leave, lease expiry).
    pub fn remove_peers(&mut self, peers: &[PeerId]) -> Result<()> {
        let tx = self.conn.transaction()?;
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

    /// Checkpoint the WAL and close the database.
    pub fn close(self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        self.conn.close().map_err(|(_, e)| Error::Storage(e))
    }
}

fn peer_row(tx: &Transaction<'_>, peer: &PeerId) -> Result<Option<i64>> {
    Ok(tx
        .prepare_cached("SELECT id FROM peers WHERE peer_id = ?1")?
        .query_row([peer.as_uuid().as_bytes()], |r| r.get(0))
        .optional()?)
}

fn drop_holdings(tx: &Transaction<'_>, peer_row: i64) -> Result<()> {
    let files: Vec<i64> = tx
        .prepare_cached("DELETE FROM holdings WHERE peer = ?1 RETURNING file")?
        .query_map([peer_row], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for f in files {
        drop_if_orphan(tx, f)?;
    }
    Ok(())
}

fn drop_if_orphan(tx: &Transaction<'_>, file_row: i64) -> Result<()> {
    tx.prepare_cached(
        "DELETE FROM files WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM holdings WHERE file = ?1)",
    )?
    .execute([file_row])?;
    Ok(())
}

fn insert_files(tx: &Transaction<'_>, peer_row: i64, files: &[SharedFile]) -> Result<()> {
    // The first announcement of a content fixes its size; a manifest is
    // adopted when the content had none.
    let mut upsert = tx.prepare_cached(
        "INSERT INTO files(file_id, size, chunk_size, chunk_hashes) VALUES(?1, ?2, ?3, ?4)
         ON CONFLICT(file_id) DO UPDATE SET chunk_size = excluded.chunk_size, chunk_hashes = excluded.chunk_hashes
         WHERE files.chunk_size IS NULL AND excluded.chunk_size IS NOT NULL",
    )?;
    let mut file_row = tx.prepare_cached("SELECT id FROM files WHERE file_id = ?1")?;
    let mut hold =
        tx.prepare_cached("INSERT OR IGNORE INTO holdings(file, peer, name) VALUES(?1, ?2, ?3)")?;
    for f in files {
        let (cs, hashes) = match &f.manifest {
            Some(m) => (Some(m.chunk_size as i64), Some(m.hashes.concat())),
            None => (None, None),
        };
        upsert.execute(params![f.id.as_bytes(), f.size as i64, cs, hashes])?;
        let row: i64 = file_row.query_row([f.id.as_bytes()], |r| r.get(0))?;
        hold.execute(params![row, peer_row, f.name.as_str()])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sf(i: u32, name: &str, manifest: bool) -> SharedFile {
        SharedFile {
            id: FileId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()),
            size: 3 << 20,
            name: name.parse().unwrap(),
            manifest: manifest.then(|| Manifest {
                chunk_size: 1 << 20,
                hashes: vec![[i as u8; 32]; 3],
            }),
        }
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
                &[sf(1, "one.bin", true), sf(2, "two.bin", false)],
            )
            .unwrap();
            s.join(&b, &url, &[2; 32], &[sf(2, "zwei.bin", false)])
                .unwrap();
            s.publish(&b, &[sf(3, "drei.bin", false)]).unwrap();
            s.unpublish(&b, &[(sf(3, "x", false).id, None)]).unwrap();
            s.join(&a, &url, &[3; 32], &[sf(1, "one.bin", true)])
                .unwrap(); // replaces
            s.close().unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        let now = Instant::now();
        let ix = s.load(now + Duration::from_secs(5)).unwrap();
        assert_eq!(ix.stats().peers, 2);
        assert_eq!(ix.stats().files, 2);
        assert!(ix.token_matches(&a, &[3; 32]));
        let one = ix.locate_id(&sf(1, "x", false).id, now, 9).unwrap();
        assert_eq!(one.manifest.unwrap().chunk_hashes.len(), 3);
        assert_eq!(
            ix.locate_id(&sf(2, "x", false).id, now, 9).unwrap().names,
            ["zwei.bin"]
        );
        let rows: i64 = s
            .conn
            .query_row("SELECT count(*) FROM files", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "orphaned contents are deleted");
        assert!(matches!(
            s.publish(&PeerId::new_random(), &[]),
            Err(Error::NotJoined(_))
        ));
    }
}
