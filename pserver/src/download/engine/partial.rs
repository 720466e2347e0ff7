//! A download in progress, kept on disk so it survives failures and restarts.
//!
//! ```text
//! data/partial/<file_id>.part    sparse file of the final size; verified chunks at their offsets
//! data/partial/<file_id>.json    what is fetched: name and the verified manifest (written once)
//! data/partial/<file_id>.bitmap  one bit per chunk: verified and on disk
//! ```
//!
//! A chunk's bit is set only after the chunk passed verification (chunks up
//! to 8 MiB are even written only then; larger ones are written in place as
//! they arrive and a failed one is simply overwritten by the next attempt),
//! and the bitmap is replaced (temp + fsync + rename) only *after* the
//! `.part` file was fsync'd, so a set bit always means verified bytes on
//! disk; a crash loses at most the chunks since the last checkpoint (about a
//! second's worth).
//! The folder is outside `tmp/` (emptied at start) and outside the share
//! folder, so a partial is never listed, served or published.
//!
//! One blocking thread per partial writes the chunks; checkpoints (fsync +
//! bitmap) run on a second thread so the writer never waits for the disk
//! to flush. There is no whole-file hash to compute at the end: the
//! manifest was checked against the file id before the partial was
//! created, and every chunk against the manifest before it was written, so
//! a complete partial *is* the file.
//!
//! A failed write (a full disk) stops the writer; every later call returns
//! that error, and the chunks written before it are still checkpointed.
//! A partial that ends with no verified chunk on disk is removed
//! ([`Partial::close_or_discard`]); the ones kept are capped together by
//! `PSERVER_MAX_PARTIAL_BYTES` ([`enforce_cap`]).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use peerdex_proto::FileId;
use peerdex_proto::tree::Manifest;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use peerdex_common::fs::write_atomic;

use super::prefix::{Prefix, PrefixReader};

/// Checkpoint at least this often while chunks arrive...
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// ...or after this many bytes, whichever comes first.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Verified chunks queued for the writer: at most 4, and about 16 MiB.
const WRITE_QUEUE_BYTES: u64 = 16 << 20;

/// The `.json` format version; partials of other versions are discarded.
const VERSION: u32 = 2;

/// What the `.json` file records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartialMeta {
    pub version: u32,
    pub file_id: String,
    /// The name the file will be stored under.
    pub name: String,
    /// [`Manifest::encode`], hex: checked against the id again when loaded.
    pub manifest: String,
}

impl PartialMeta {
    /// The manifest, verified against the file id again.
    pub fn manifest(&self) -> Option<Manifest> {
        let id: FileId = self.file_id.parse().ok()?;
        Manifest::decode_local(id, &hex::decode(&self.manifest).ok()?).ok()
    }
}

struct Paths {
    part: PathBuf,
    meta: PathBuf,
    bitmap: PathBuf,
}

impl Paths {
    fn new(dir: &Path, id: &FileId) -> Self {
        let hex = id.to_hex();
        Self {
            part: dir.join(format!("{hex}.part")),
            meta: dir.join(format!("{hex}.json")),
            bitmap: dir.join(format!("{hex}.bitmap")),
        }
    }

    fn remove_all(&self) {
        for p in [&self.part, &self.meta, &self.bitmap] {
            if let Err(e) = fs::remove_file(p)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove partial download file");
            }
        }
    }
}

enum Cmd {
    Write(usize, Bytes),
    /// Chunk already written in place (streamed by the swarm) and verified.
    Mark(usize),
    /// Checkpoint and fsync (every chunk must be in).
    Finish(oneshot::Sender<io::Result<()>>),
}

/// A partial download: the `.part` file and its state, with the writer thread.
pub(crate) struct Partial {
    paths: Paths,
    chunk_size: u64,
    size: u64,
    /// Verified chunks found on disk when opened.
    verified: Vec<bool>,
    /// Why the writer stopped, if a write failed.
    failed: Arc<Mutex<Option<io::Error>>>,
    tx: Option<mpsc::Sender<Cmd>>,
    worker: Option<tokio::task::JoinHandle<()>>,
    in_place: Arc<fs::File>,
    /// The verified prefix, grown by the writer.
    prefix: Arc<Prefix>,
}

impl Partial {
    /// Open the partial download of `manifest`'s file in `dir`, resuming it
    /// if one exists for the same manifest, else starting afresh. Blocking
    /// (cheap: the `.part` is created sparse). On failure nothing of a new
    /// partial is left behind.
    pub fn open(dir: &Path, manifest: &Manifest, name: &str) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let opened = Self::open_in(dir, manifest, name);
        if opened.is_err()
            && load_bitmap(&Paths::new(dir, &manifest.id()).bitmap, manifest.chunks())
                .iter()
                .all(|b| !b)
        {
            Paths::new(dir, &manifest.id()).remove_all();
        }
        opened
    }

    fn open_in(dir: &Path, manifest: &Manifest, name: &str) -> io::Result<Self> {
        let id = manifest.id();
        let size = manifest.size();
        let paths = Paths::new(dir, &id);
        let n = manifest.chunks();
        let encoded = hex::encode(manifest.encode());
        let resumed = load_meta(&paths.meta)
            .filter(|m| m.file_id == id.to_hex() && m.manifest == encoded)
            .and_then(|_| {
                let len = fs::metadata(&paths.part).ok()?.len();
                (len == size).then(|| load_bitmap(&paths.bitmap, n))
            });
        let verified = match resumed {
            Some(bits) => bits,
            None => {
                paths.remove_all();
                let f = fs::File::create(&paths.part)?;
                f.set_len(size)?;
                f.sync_all()?;
                let meta = PartialMeta {
                    version: VERSION,
                    file_id: id.to_hex(),
                    name: name.to_owned(),
                    manifest: encoded,
                };
                write_atomic(
                    &paths.meta,
                    &serde_json::to_vec(&meta).map_err(io::Error::other)?,
                )?;
                vec![false; n]
            }
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.part)?;
        let queue = (WRITE_QUEUE_BYTES / manifest.chunk_size()).clamp(1, 4) as usize;
        let (tx, rx) = mpsc::channel(queue);
        let in_place = Arc::new(file.try_clone()?);
        let failed = Arc::new(Mutex::new(None));
        let mut writer = Writer::new(file, &paths, manifest.chunk_size(), size, verified.clone())?;
        writer.failed = failed.clone();
        let prefix = writer.prefix.clone();
        let worker = tokio::task::spawn_blocking(move || writer.run(rx));
        Ok(Self {
            paths,
            chunk_size: manifest.chunk_size(),
            size,
            failed,
            verified,
            tx: Some(tx),
            worker: Some(worker),
            in_place,
            prefix,
        })
    }

    /// A reader of the file from its start that follows the verified
    /// prefix while the download runs (see `prefix`). It keeps the `.part`
    /// open, so it reads on after the file was moved into place; once the
    /// partial stops, a read beyond what was verified fails.
    pub fn follow(&self) -> PrefixReader {
        PrefixReader::new(self.in_place.clone(), self.prefix.clone(), self.size)
    }

    /// The `.part` file, for writing a chunk in place while it streams in
    /// (large chunks). The caller must be the only writer of that chunk, and
    /// call [`Partial::mark`] only once the chunk is verified.
    pub fn file(&self) -> Arc<fs::File> {
        self.in_place.clone()
    }

    /// Record a chunk written in place with [`Partial::file`] as verified.
    pub async fn mark(&self, idx: usize) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| self.stopped())?;
        tx.send(Cmd::Mark(idx)).await.map_err(|_| self.stopped())
    }

    /// Chunks already verified and on disk when the partial was opened.
    pub fn verified(&self) -> &[bool] {
        &self.verified
    }

    pub fn verified_bytes(&self) -> u64 {
        self.verified
            .iter()
            .enumerate()
            .filter(|(_, v)| **v)
            .map(|(i, _)| chunk_len(i, self.chunk_size, self.size))
            .sum()
    }

    pub fn part_path(&self) -> &Path {
        &self.paths.part
    }

    /// Queue a verified chunk for writing (waits when the queue is full).
    /// Fails once a write failed (a full disk), with that error.
    pub async fn write(&self, idx: usize, data: Bytes) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| self.stopped())?;
        tx.send(Cmd::Write(idx, data))
            .await
            .map_err(|_| self.stopped())
    }

    /// Wait for every queued write and fsync. Fails if a chunk is missing.
    pub async fn finish(&mut self) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| self.stopped())?;
        let (reply, rx) = oneshot::channel();
        tx.send(Cmd::Finish(reply))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Why the writer stopped: the write that failed, if one did.
    fn stopped(&self) -> io::Error {
        match &*self.failed.lock().unwrap() {
            Some(e) => copy_error(e),
            None => io::Error::other("the partial-download writer stopped"),
        }
    }

    /// Stop the writer after a last checkpoint; the partial stays for a
    /// later resume.
    #[cfg(test)]
    pub async fn close(mut self) {
        self.stop().await;
    }

    /// Stop the writer after a last checkpoint, and keep the partial only if
    /// a verified chunk made it to disk (the bitmap); else delete it. `true`
    /// if kept.
    pub async fn close_or_discard(mut self) -> bool {
        self.stop().await;
        let paths = Paths {
            part: self.paths.part.clone(),
            meta: self.paths.meta.clone(),
            bitmap: self.paths.bitmap.clone(),
        };
        let n = self.verified.len();
        tokio::task::spawn_blocking(move || {
            let kept = load_bitmap(&paths.bitmap, n).iter().any(|b| *b);
            if !kept {
                paths.remove_all();
            }
            kept
        })
        .await
        .unwrap_or(true)
    }

    /// Stop the writer and delete every file of the partial.
    pub async fn discard(mut self) {
        self.stop().await;
        let paths = Paths {
            part: self.paths.part.clone(),
            meta: self.paths.meta.clone(),
            bitmap: self.paths.bitmap.clone(),
        };
        let _ = tokio::task::spawn_blocking(move || paths.remove_all()).await;
    }

    async fn stop(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.await;
        }
    }
}

/// The same error again (an OS error stays one, so it can be explained).
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Length of chunk `i`.
pub fn chunk_len(i: usize, chunk_size: u64, size: u64) -> u64 {
    let start = i as u64 * chunk_size;
    chunk_size.min(size.saturating_sub(start))
}

fn load_meta(path: &Path) -> Option<PartialMeta> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice::<PartialMeta>(&bytes)
        .ok()
        .filter(|m| m.version == VERSION)
}

fn load_bitmap(path: &Path, n: usize) -> Vec<bool> {
    let bytes = fs::read(path).unwrap_or_default();
    if bytes.len() != n.div_ceil(8) {
        return vec![false; n];
    }
    (0..n).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect()
}

fn encode_bitmap(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
        out[i / 8] |= 1 << (i % 8);
    }
    out
}

/// A partial download found in the data folder at start.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub id: FileId,
    pub meta: PartialMeta,
    pub manifest: Manifest,
    pub verified_chunks: usize,
}

/// Every resumable partial in `dir`; files that belong to none (leftovers of
/// an interrupted checkpoint, a `.part` without state) are removed.
pub fn scan(dir: &Path) -> Vec<Stored> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    let mut found = Vec::new();
    for n in &names {
        let Some(hex) = n.strip_suffix(".json") else {
            continue;
        };
        let Ok(id) = hex.parse::<FileId>() else {
            continue;
        };
        let paths = Paths::new(dir, &id);
        let Some((meta, manifest)) = load_meta(&paths.meta)
            .filter(|m| m.file_id == id.to_hex())
            .and_then(|m| m.manifest().map(|man| (m, man)))
        else {
            tracing::warn!(file = %id, "unreadable or outdated partial-download state; discarding it");
            paths.remove_all();
            continue;
        };
        let part_ok = fs::metadata(&paths.part).is_ok_and(|m| m.len() == manifest.size());
        let bits = load_bitmap(&paths.bitmap, manifest.chunks());
        if !part_ok || !bits.iter().any(|b| *b) {
            // Nothing verified to resume from: leave nothing behind.
            paths.remove_all();
            continue;
        }
        found.push(Stored {
            id,
            verified_chunks: bits.iter().filter(|b| **b).count(),
            meta,
            manifest,
        });
    }
    // Leftovers: anything whose id has no state file.
    for n in &names {
        let hex = n.split('.').next().unwrap_or("");
        if !found.iter().any(|s| s.id.to_hex() == hex) {
            let _ = fs::remove_file(dir.join(n));
        }
    }
    found
}

/// The manifest recorded by a partial download of `id` in `dir` (checked
/// against the id again), if there is one to resume.
pub fn stored_manifest(dir: &Path, id: &FileId) -> Option<Manifest> {
    load_meta(&Paths::new(dir, id).meta)
        .filter(|m| m.file_id == id.to_hex())
        .and_then(|m| m.manifest())
}

/// Delete the partial of `id` in `dir`, if any.
pub fn remove(dir: &Path, id: &FileId) {
    Paths::new(dir, id).remove_all();
}

/// Bytes a partial of `manifest`'s file already holds on disk in `dir`
/// (what a resume need not allocate again): 0 unless one exists for the
/// same manifest.
pub fn on_disk(dir: &Path, manifest: &Manifest) -> u64 {
    let paths = Paths::new(dir, &manifest.id());
    let same = load_meta(&paths.meta).is_some_and(|m| m.manifest == hex::encode(manifest.encode()));
    if !same {
        return 0;
    }
    fs::metadata(&paths.part).map_or(0, |m| allocated(&m).min(manifest.size()))
}

/// Bytes a file really takes on disk (a sparse `.part` takes only what was
/// written).
fn allocated(m: &fs::Metadata) -> u64 {
    m.blocks().saturating_mul(512)
}

/// A partial on disk as the cap sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub id: FileId,
    /// Bytes its files take on disk.
    pub bytes: u64,
    /// When it last changed (its newest file).
    pub touched: SystemTime,
}

/// Every partial in `dir` with what it takes on disk, oldest first.
pub fn usage(dir: &Path) -> Vec<Usage> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut by_id: std::collections::HashMap<FileId, Usage> = std::collections::HashMap::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.split('.').next()) else {
            continue;
        };
        let Ok(id) = hex.parse::<FileId>() else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        let touched = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let u = by_id.entry(id).or_insert(Usage {
            id,
            bytes: 0,
            touched,
        });
        u.bytes += allocated(&meta);
        u.touched = u.touched.max(touched);
    }
    let mut all: Vec<Usage> = by_id.into_values().collect();
    all.sort_by_key(|u| (u.touched, u.id.to_hex()));
    all
}

/// Keep the partials in `dir` within `cap` bytes on disk together: drop the
/// oldest first, never one in `busy` (a job is running for it). 0 = no cap.
/// Returns what was dropped.
pub fn enforce_cap(dir: &Path, cap: u64, busy: &HashSet<FileId>) -> Vec<Usage> {
    if cap == 0 {
        return Vec::new();
    }
    let all = usage(dir);
    let mut total: u64 = all.iter().map(|u| u.bytes).sum();
    let mut dropped = Vec::new();
    for u in all {
        if total <= cap {
            break;
        }
        if busy.contains(&u.id) {
            continue;
        }
        remove(dir, &u.id);
        total = total.saturating_sub(u.bytes);
        dropped.push(u);
    }
    dropped
}

/// The writer thread's state.
struct Writer {
    file: fs::File,
    chunk_size: u64,
    size: u64,
    written: Vec<bool>,
    dirty: bool,
    unsynced: u64,
    last_checkpoint: Instant,
    checkpoints: Option<std::sync::mpsc::SyncSender<Vec<bool>>>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
    /// The write that failed (shared with the [`Partial`]).
    failed: Arc<Mutex<Option<io::Error>>>,
    /// The first chunk not written yet, and the prefix it ends.
    next: usize,
    prefix: Arc<Prefix>,
}

impl Writer {
    fn new(
        file: fs::File,
        paths: &Paths,
        chunk_size: u64,
        size: u64,
        written: Vec<bool>,
    ) -> io::Result<Self> {
        // Checkpoints run one at a time on their own thread; the writer
        // skips one while the previous is still flushing.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<bool>>(0);
        let sync_file = file.try_clone()?;
        let bitmap = paths.bitmap.clone();
        let checkpointer = std::thread::Builder::new()
            .name("partial-checkpoint".into())
            .spawn(move || {
                while let Ok(bits) = rx.recv() {
                    let r = sync_file
                        .sync_data()
                        .and_then(|_| write_atomic(&bitmap, &encode_bitmap(&bits)));
                    if let Err(e) = r {
                        tracing::warn!(path = %bitmap.display(), error = %e, "cannot checkpoint partial download");
                    }
                }
            })?;
        let next = written.iter().position(|w| !w).unwrap_or(written.len());
        let prefix = Prefix::new((next as u64 * chunk_size).min(size));
        Ok(Self {
            file,
            chunk_size,
            size,
            next,
            prefix,
            written,
            dirty: false,
            unsynced: 0,
            last_checkpoint: Instant::now(),
            checkpoints: Some(tx),
            checkpointer: Some(checkpointer),
            failed: Arc::new(Mutex::new(None)),
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        while let Some(cmd) = rx.blocking_recv() {
            let r = match cmd {
                Cmd::Write(i, data) => self.write(i, data),
                Cmd::Mark(i) => self.mark(i),
                Cmd::Finish(reply) => {
                    let _ = reply.send(self.finish());
                    Ok(())
                }
            };
            if let Err(e) = r {
                // Stop taking chunks: the job learns why from the next call.
                tracing::warn!(error = %e, "cannot write a downloaded chunk; the download stops");
                *self.failed.lock().unwrap() = Some(e);
                break;
            }
        }
        drop(rx);
        self.prefix.close();
        // What was written before a failure is verified and on disk: keep it.
        self.checkpoint(true);
        self.checkpoints = None;
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }

    fn write(&mut self, i: usize, data: Bytes) -> io::Result<()> {
        if i >= self.written.len() || self.written[i] {
            return Ok(());
        }
        self.refused()?;
        let expected = chunk_len(i, self.chunk_size, self.size);
        if data.len() as u64 != expected {
            return Err(io::Error::other(format!(
                "chunk {i} has {} bytes, expected {expected}",
                data.len()
            )));
        }
        self.file.write_all_at(&data, i as u64 * self.chunk_size)?;
        self.written[i] = true;
        self.grow();
        self.dirty = true;
        self.unsynced += data.len() as u64;
        if self.unsynced >= CHECKPOINT_BYTES || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint(false);
        }
        Ok(())
    }

    fn mark(&mut self, i: usize) -> io::Result<()> {
        if i >= self.written.len() || self.written[i] {
            return Ok(());
        }
        self.refused()?;
        self.written[i] = true;
        self.grow();
        self.dirty = true;
        self.unsynced += chunk_len(i, self.chunk_size, self.size);
        if self.unsynced >= CHECKPOINT_BYTES || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint(false);
        }
        Ok(())
    }

    /// The prefix's reader wants no more of the file (see `prefix`).
    fn refused(&self) -> io::Result<()> {
        if self.prefix.refused() {
            return Err(io::Error::other(
                "the download was stopped: its content was refused by its reader",
            ));
        }
        Ok(())
    }

    /// Move the verified prefix past the chunks written in a row.
    fn grow(&mut self) {
        let from = self.next;
        while self.next < self.written.len() && self.written[self.next] {
            self.next += 1;
        }
        if self.next > from {
            self.prefix
                .advance((self.next as u64 * self.chunk_size).min(self.size));
        }
    }

    /// Hand the current bitmap to the checkpoint thread (fsync, then the
    /// bitmap). `wait`: block until it is taken, else skip if one is running.
    fn checkpoint(&mut self, wait: bool) {
        if !self.dirty {
            return;
        }
        let Some(tx) = &self.checkpoints else { return };
        let bits = self.written.clone();
        let sent = if wait {
            tx.send(bits).is_ok()
        } else {
            tx.try_send(bits).is_ok()
        };
        if sent {
            self.dirty = false;
            self.unsynced = 0;
            self.last_checkpoint = Instant::now();
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        if let Some(i) = self.written.iter().position(|w| !w) {
            return Err(io::Error::other(format!("chunk {i} is missing")));
        }
        self.checkpoint(true);
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use peerdex_proto::tree::TreeHasher;

    use super::*;

    fn manifest(data: &[u8], cs: u64) -> Manifest {
        let mut h = TreeHasher::with_chunk_size(cs);
        h.update(data);
        h.finish().1
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_reads_the_verified_prefix_only_and_in_order() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let data = peerdex_testkit::test_bytes(10_000, 3);
        let m = manifest(&data, 1024);
        let p = Partial::open(dir.path(), &m, "x.bin").unwrap();
        let mut r = p.follow();
        let reading = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).map(|_| got)
        });
        // Last chunk first: nothing past chunk 0 may be read before chunk 0.
        for i in (0..10usize).rev() {
            let c = &data[i * 1024..((i + 1) * 1024).min(data.len())];
            p.write(i, Bytes::copy_from_slice(c)).await.unwrap();
        }
        assert_eq!(reading.await.unwrap().unwrap(), data);

        // A partial that stops short: the follower gets an error, never a
        // short file.
        let dir = tempfile::tempdir().unwrap();
        let p = Partial::open(dir.path(), &m, "x.bin").unwrap();
        let mut r = p.follow();
        p.write(0, Bytes::copy_from_slice(&data[..1024]))
            .await
            .unwrap();
        p.write(2, Bytes::copy_from_slice(&data[2048..3072]))
            .await
            .unwrap();
        let reading = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let r = r.read_to_end(&mut got);
            (r, got.len())
        });
        p.discard().await;
        let (r, read) = reading.await.unwrap();
        assert!(r.is_err());
        assert_eq!(read, 1024, "only the verified prefix is read");

        // A reader that refuses the content stops the download: the
        // writer takes no more chunks.
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partial::open(dir.path(), &m, "x.bin").unwrap();
        p.follow().prefix().refuse();
        let _ = p.write(0, Bytes::copy_from_slice(&data[..1024])).await;
        let e = p.finish().await.unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        p.discard().await;
    }

    #[tokio::test]
    async fn writes_out_of_order_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let data = peerdex_testkit::test_bytes(10_000, 9);
        let m = manifest(&data, 1024);
        assert_eq!(m.chunks(), 10);
        let p = Partial::open(dir.path(), &m, "x.bin").unwrap();
        assert!(p.verified().iter().all(|v| !v));
        for i in [3usize, 0, 9, 1] {
            let c = &data[i * 1024..((i + 1) * 1024).min(data.len())];
            p.write(i, Bytes::copy_from_slice(c)).await.unwrap();
        }
        p.close().await;
        let found = scan(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].verified_chunks, 4);
        assert_eq!(found[0].manifest, m);
        let mut p = Partial::open(dir.path(), &m, "x.bin").unwrap();
        assert_eq!(
            p.verified(),
            &[
                true, true, false, true, false, false, false, false, false, true
            ]
        );
        assert!(p.finish().await.is_err(), "finished with chunks missing");
        for i in [2usize, 4, 5, 6, 7, 8] {
            let c = &data[i * 1024..((i + 1) * 1024).min(data.len())];
            p.write(i, Bytes::copy_from_slice(c)).await.unwrap();
        }
        p.finish().await.unwrap();
        assert_eq!(std::fs::read(p.part_path()).unwrap(), data);
        p.discard().await;
        assert!(scan(dir.path()).is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn the_cap_drops_the_oldest_idle_partials_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        for (age, seed) in [(300u64, 1u64), (200, 2), (100, 3)] {
            let data = peerdex_testkit::test_bytes(64 << 10, seed);
            let m = manifest(&data, 16 << 10);
            let p = Partial::open(dir.path(), &m, "x").unwrap();
            p.write(0, Bytes::copy_from_slice(&data[..16 << 10]))
                .await
                .unwrap();
            assert!(
                p.close_or_discard().await,
                "a partial with a verified chunk is kept"
            );
            // Last touched `age` seconds ago.
            let when = SystemTime::now() - Duration::from_secs(age);
            for e in fs::read_dir(dir.path()).unwrap().flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&m.id().to_hex())
                {
                    fs::File::options()
                        .write(true)
                        .open(e.path())
                        .unwrap()
                        .set_modified(when)
                        .unwrap();
                }
            }
            ids.push(m.id());
        }
        let all = usage(dir.path());
        assert_eq!(
            all.iter().map(|u| u.id).collect::<Vec<_>>(),
            ids,
            "oldest first"
        );
        let each = all[0].bytes;
        assert!(each >= 16 << 10, "{all:?}");
        // No cap, or room for all: nothing goes.
        assert!(enforce_cap(dir.path(), 0, &HashSet::new()).is_empty());
        assert!(enforce_cap(dir.path(), 3 * each + 4096, &HashSet::new()).is_empty());
        // Room for one: the oldest is busy (a job runs for it), so the two
        // others go, oldest first.
        let busy: HashSet<FileId> = [ids[0]].into();
        let dropped = enforce_cap(dir.path(), each + 4096, &busy);
        assert_eq!(
            dropped.iter().map(|u| u.id).collect::<Vec<_>>(),
            [ids[1], ids[2]]
        );
        assert_eq!(
            usage(dir.path()).iter().map(|u| u.id).collect::<Vec<_>>(),
            [ids[0]]
        );
        // Over the cap with only a busy one left: it stays.
        assert!(enforce_cap(dir.path(), 1, &busy).is_empty());
    }

    #[tokio::test]
    async fn a_partial_without_a_verified_chunk_on_disk_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = peerdex_testkit::test_bytes(5000, 4);
        let m = manifest(&data, 1024);
        let p = Partial::open(dir.path(), &m, "x").unwrap();
        assert!(!p.close_or_discard().await);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn other_manifest_starts_afresh_and_empty_partials_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = peerdex_testkit::test_bytes(3000, 1);
        let m = manifest(&data, 1024);
        let p = Partial::open(dir.path(), &m, "x").unwrap();
        p.write(0, Bytes::copy_from_slice(&data[..1024]))
            .await
            .unwrap();
        p.close().await;
        // The same file cut in other chunks is not resumed from those bits.
        let other = manifest(&data, 2048);
        assert_eq!((other.id(), other.chunks()), (m.id(), 2));
        let p = Partial::open(dir.path(), &other, "x").unwrap();
        assert!(p.verified().iter().all(|v| !v));
        p.close().await;
        // A partial with no verified chunk is removed at start, files and all.
        assert!(scan(dir.path()).is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
