//! Rows of an inventory: a peer's row, its holdings dropped, holdings
//! added. Each runs inside the
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
    tx.prepare_cached("DELETE FROM holdings WHERE peer = ?1")?
        .execute([peer_row])?;
    Ok(())
}

/// Add holdings, each with the size the peer claims (the service has
/// screened out a peer's contradicting claims, so a repeated holding says
/// the same size). Rows go in by peer, so a Join appends.
pub(super) fn insert_files(tx: &Connection, peer_row: i64, files: &[SharedFile]) -> Result<()> {
    let mut hold = tx.prepare_cached(
        "INSERT OR IGNORE INTO holdings(peer, file_id, name, size, replica)
         VALUES(?1, ?2, ?3, ?4, ?5)",
    )?;
    // The last announcement of a file says whether the peer holds it as a
    // replica (every name of it: see `Index::mark_replica`).
    let mut flag = tx.prepare_cached(
        "UPDATE holdings SET replica = ?3 WHERE peer = ?1 AND file_id = ?2 AND replica != ?3",
    )?;
    for f in files {
        hold.execute(params![
            peer_row,
            f.id.as_bytes(),
            f.name.as_str(),
            size_col(f.size),
            f.replica
        ])?;
        flag.execute(params![peer_row, f.id.as_bytes(), f.replica])?;
    }
    Ok(())
}

/// SQLite integers are signed: sizes are stored as their two's complement
/// bit pattern and read back with `as u64`, so every `u64` round-trips.
pub(super) fn size_col(size: u64) -> i64 {
    size as i64
}
