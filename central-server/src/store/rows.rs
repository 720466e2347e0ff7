//! Rows of an inventory: a peer's row, its holdings dropped (and the
//! contents nobody holds any more), holdings added. Each runs inside the
//! caller's savepoint.

use peerdex_proto::PeerId;
use peerdex_proto::convert::SharedFile;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

pub(super) fn peer_row(tx: &Connection, peer: &PeerId) -> Result<Option<i64>> {
    Ok(tx
        .prepare_cached("SELECT id FROM peers WHERE peer_id = ?1")?
        .query_row([peer.as_uuid().as_bytes()], |r| r.get(0))
        .optional()?)
}

pub(super) fn drop_holdings(tx: &Connection, peer_row: i64) -> Result<()> {
    let files: Vec<i64> = tx
        .prepare_cached("DELETE FROM holdings WHERE peer = ?1 RETURNING file")?
        .query_map([peer_row], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for f in files {
        drop_if_orphan(tx, f)?;
    }
    Ok(())
}

pub(super) fn drop_if_orphan(tx: &Connection, file_row: i64) -> Result<()> {
    tx.prepare_cached(
        "DELETE FROM files WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM holdings WHERE file = ?1)",
    )?
    .execute([file_row])?;
    Ok(())
}

/// Add holdings, each with the size the peer claims (the service has
/// screened out a peer's contradicting claims, so a repeated holding says
/// the same size).
pub(super) fn insert_files(tx: &Connection, peer_row: i64, files: &[SharedFile]) -> Result<()> {
    // A new content: one statement (its row id comes back); a known one:
    // a second to find its row.
    let mut new_file = tx.prepare_cached(
        "INSERT INTO files(file_id) VALUES(?1) ON CONFLICT(file_id) DO NOTHING RETURNING id",
    )?;
    let mut file_row = tx.prepare_cached("SELECT id FROM files WHERE file_id = ?1")?;
    let mut hold = tx.prepare_cached(
        "INSERT OR IGNORE INTO holdings(file, peer, name, size, replica)
         VALUES(?1, ?2, ?3, ?4, ?5)",
    )?;
    // The last announcement of a file says whether the peer holds it as a
    // replica (every name of it: see `Index::mark_replica`); only a known
    // content can have other names of this peer to change.
    let mut flag = tx.prepare_cached(
        "UPDATE holdings SET replica = ?3 WHERE file = ?1 AND peer = ?2 AND replica != ?3",
    )?;
    for f in files {
        let (row, known) = match new_file
            .query_row([f.id.as_bytes()], |r| r.get::<_, i64>(0))
            .optional()?
        {
            Some(row) => (row, false),
            None => (file_row.query_row([f.id.as_bytes()], |r| r.get(0))?, true),
        };
        hold.execute(params![
            row,
            peer_row,
            f.name.as_str(),
            size_col(f.size),
            f.replica
        ])?;
        if known {
            flag.execute(params![row, peer_row, f.replica])?;
        }
    }
    Ok(())
}

/// SQLite integers are signed: sizes are stored as their two's complement
/// bit pattern and read back with `as u64`, so every `u64` round-trips.
pub(super) fn size_col(size: u64) -> i64 {
    size as i64
}
