//! Serving shared bytes, verified: no unverified byte leaves this peer.
//!
//! Every chunk a response touches is read and checked against the file's
//! manifest (BLAKE3 chaining values, see `peerdex_proto::tree`) before any
//! byte of it is sent, `Range` requests included. A copy that rotted on
//! disk (its mtime unchanged, so the rescan cannot notice) is therefore
//! caught by the first request that touches the bad chunk: the response
//! stops (a clean 404 when it is the first chunk, a cut body later), the
//! file is withdrawn from the directory and hashed again in the background,
//! and if its content is now another file, that file is shared under its
//! new id (see [`Withdraw`]).
//!
//! Cost: one BLAKE3 pass over what is served (plus, for a Range that starts
//! or ends inside a chunk, the rest of that chunk). One blocking thread per
//! response reads ahead and verifies the next chunk while the socket sends
//! the current one. Chunks up to [`BUFFER_MAX`] are read once and sent from
//! memory; larger ones are hashed in one pass and read again to send (flat
//! memory; the second read comes from the page cache).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use peerdex_proto::FileId;
use peerdex_proto::tree::Manifest;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::{Error, Internal, Missing, Result};
use crate::link::Central;
use crate::rt::MainRt;
use crate::store::Store;

/// Chunks up to this size are verified and sent from one read.
const BUFFER_MAX: u64 = 4 << 20;
/// Pieces queued between the reader thread and the socket.
const QUEUE: usize = 4;

/// Withdraws a file whose bytes on disk fail verification; cheap to clone.
#[derive(Clone)]
pub(crate) struct Withdraw {
    pub store: Arc<Store>,
    pub central: Arc<Central>,
    pub rt: MainRt,
    /// Wakes the rescan loop, which hashes the withdrawn files again.
    pub rescan_now: Arc<Notify>,
}

impl Withdraw {
    /// Chunk `chunk` of `id` failed verification: stop sharing it now,
    /// tell the directory, and have the rescan hash it again.
    pub(crate) fn rotten(&self, id: FileId, chunk: usize) {
        let removed = self.store.quarantine(&id);
        if removed.is_empty() {
            return; // already withdrawn by a concurrent response
        }
        let names: Vec<String> = removed.iter().map(|e| e.name.to_string()).collect();
        tracing::error!(file = %id, chunk, ?names,
            "a shared file failed BLAKE3 verification while being served (changed or damaged on disk); withdrawn, re-hashing it");
        let refs: Vec<_> = removed.iter().map(|e| (e.id, e.name.clone())).collect();
        let (central, rescan) = (self.central.clone(), self.rescan_now.clone());
        self.rt.spawn(async move {
            central.unpublish(&refs).await;
            rescan.notify_one();
        });
    }
}

/// The bytes `start..start + len` of a shared file, each chunk verified
/// before it is sent. Resolves once the first chunk is verified: a file
/// whose first chunk fails is withdrawn and answered `NotFound`; a later
/// chunk that fails cuts the body (and withdraws the file).
pub(crate) async fn verified_range(
    file: File,
    manifest: Arc<Manifest>,
    start: u64,
    len: u64,
    piece: usize,
    withdraw: Withdraw,
) -> Result<impl Stream<Item = io::Result<Bytes>> + use<>> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(QUEUE);
    let (first_tx, first_rx) = oneshot::channel::<Result<()>>();
    let id = manifest.id();
    tokio::task::spawn_blocking(move || {
        let mut reader = Reader {
            file,
            manifest,
            piece,
            first: Some(first_tx),
        };
        if let Err(Bad::Chunk(i)) = reader.run(start, len, &tx) {
            withdraw.rotten(id, i);
        }
    });
    first_rx
        .await
        .map_err(|_| Error::from(Internal::ReaderStopped))??;
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

enum Bad {
    /// This chunk failed verification.
    Chunk(usize),
    /// Read error, or the body was dropped: nothing to withdraw.
    Stop,
}

struct Reader {
    file: File,
    manifest: Arc<Manifest>,
    piece: usize,
    /// Told whether the first chunk verified, before any byte is queued.
    first: Option<oneshot::Sender<Result<()>>>,
}

impl Reader {
    fn run(
        &mut self,
        start: u64,
        len: u64,
        tx: &mpsc::Sender<io::Result<Bytes>>,
    ) -> std::result::Result<(), Bad> {
        if len == 0 {
            self.judged(Ok(()));
            return Ok(());
        }
        let end = start + len;
        let cs = self.manifest.chunk_size();
        let (first, last) = ((start / cs) as usize, ((end - 1) / cs) as usize);
        for i in first..=last {
            let (c_start, c_len) = self.manifest.chunk_range(i);
            let (from, to) = (start.max(c_start), end.min(c_start + c_len));
            let sent = if c_len <= BUFFER_MAX {
                let data = self.read_at(c_start, c_len).map_err(|e| self.fail(tx, e))?;
                if !self.manifest.check_chunk(i, &data) {
                    return Err(self.rotten(tx, i));
                }
                self.judged(Ok(()));
                let data = data.freeze();
                let mut at = (from - c_start) as usize;
                let stop = (to - c_start) as usize;
                let mut ok = true;
                while at < stop && ok {
                    let n = self.piece.min(stop - at);
                    ok = tx.blocking_send(Ok(data.slice(at..at + n))).is_ok();
                    at += n;
                }
                ok
            } else {
                self.verify_streaming(i, c_start, c_len)
                    .map_err(|e| self.fail(tx, e))?
                    .then_some(())
                    .ok_or_else(|| self.rotten(tx, i))?;
                self.judged(Ok(()));
                self.send_range(from, to, tx)
                    .map_err(|e| self.fail(tx, e))?
            };
            if !sent {
                return Err(Bad::Stop); // the client went away
            }
        }
        Ok(())
    }

    fn judged(&mut self, verdict: Result<()>) {
        if let Some(t) = self.first.take() {
            let _ = t.send(verdict);
        }
    }

    /// Chunk `i` is bad: answer 404 if nothing was sent yet, else cut the body.
    fn rotten(&mut self, tx: &mpsc::Sender<io::Result<Bytes>>, i: usize) -> Bad {
        if self.first.is_some() {
            let id = self.manifest.id();
            self.judged(Err(Missing::Rotten { id }.into()));
            // (the same words the store gives later requests for this id)
        } else {
            let _ = tx.blocking_send(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("chunk {i} failed verification; response cut"),
            )));
        }
        Bad::Chunk(i)
    }

    fn fail(&mut self, tx: &mpsc::Sender<io::Result<Bytes>>, e: io::Error) -> Bad {
        match self.first.take() {
            Some(t) => {
                let _ = t.send(Err(Error::Io(e)));
            }
            None => {
                let _ = tx.blocking_send(Err(e));
            }
        }
        Bad::Stop
    }

    fn read_at(&mut self, at: u64, len: u64) -> io::Result<BytesMut> {
        self.file.seek(SeekFrom::Start(at))?;
        let mut buf = BytesMut::zeroed(len as usize);
        self.file.read_exact(&mut buf).map_err(shrank)?;
        Ok(buf)
    }

    /// Hash chunk `i` in one pass without keeping it.
    fn verify_streaming(&mut self, i: usize, at: u64, len: u64) -> io::Result<bool> {
        self.file.seek(SeekFrom::Start(at))?;
        let mut h = self.manifest.chunk_hasher(i);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            self.file.read_exact(&mut buf[..n]).map_err(shrank)?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(h.matches())
    }

    /// Send `from..to` in pieces; `false` if the body was dropped.
    fn send_range(
        &mut self,
        from: u64,
        to: u64,
        tx: &mpsc::Sender<io::Result<Bytes>>,
    ) -> io::Result<bool> {
        self.file.seek(SeekFrom::Start(from))?;
        let mut left = to - from;
        while left > 0 {
            let n = (self.piece as u64).min(left) as usize;
            let mut buf = BytesMut::zeroed(n);
            self.file.read_exact(&mut buf).map_err(shrank)?;
            left -= n as u64;
            if tx.blocking_send(Ok(buf.freeze())).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn shrank(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while serving")
    } else {
        e
    }
}
