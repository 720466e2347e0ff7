//! The verified prefix of a partial download, and a reader that follows
//! it: the bytes from the file's start up to its first chunk not yet
//! verified and written to the `.part` file. A consumer that reads a
//! download in order (the opening of a private file, see
//! `download::private`) reads while the download runs, each read waiting
//! until the bytes it asks for are verified and on the page cache, instead
//! of waiting for the whole file and reading it back afterwards.
//!
//! Only verified bytes are ever handed out: the prefix grows when the
//! partial's writer has written a chunk that passed verification (or
//! marked one streamed in place after it passed), never before.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use peerdex_common::sync::lock;

/// How far the verified prefix reaches, shared by the writer (which grows
/// it) and the readers (which wait on it).
pub(crate) struct Prefix {
    state: Mutex<State>,
    grew: Condvar,
}

struct State {
    bytes: u64,
    /// No more growth: the partial's writer stopped, or the reader's owner
    /// gave up.
    closed: bool,
    /// The reader's owner wants no more of the file (what it read does not
    /// open): the writer takes no more chunks, so the download stops.
    refused: bool,
}

impl Prefix {
    pub(super) fn new(bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                bytes,
                closed: false,
                refused: false,
            }),
            grew: Condvar::new(),
        })
    }

    /// The first `bytes` of the file are verified and written.
    pub(super) fn advance(&self, bytes: u64) {
        let mut s = lock(&self.state);
        if bytes > s.bytes {
            s.bytes = bytes;
            self.grew.notify_all();
        }
    }

    /// It grows no more: readers waiting beyond it get an error.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.grew.notify_all();
    }

    /// The reader's owner wants no more of the file: the partial's writer
    /// refuses the next chunks (the download ends with an error).
    pub(crate) fn refuse(&self) {
        let mut s = lock(&self.state);
        s.refused = true;
        s.closed = true;
        self.grew.notify_all();
    }

    pub(super) fn refused(&self) -> bool {
        lock(&self.state).refused
    }

    /// Wait until the prefix reaches past `pos`; its end then, or `None`
    /// if it was closed before.
    fn wait_past(&self, pos: u64) -> Option<u64> {
        let mut s = lock(&self.state);
        loop {
            if s.bytes > pos {
                return Some(s.bytes);
            }
            if s.closed {
                return None;
            }
            s = self
                .grew
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Reads a partial download in order from its start, blocking until the
/// bytes asked for are verified. A read beyond what the download verified
/// before it stopped fails (never a short file).
pub(crate) struct PrefixReader {
    file: Arc<fs::File>,
    prefix: Arc<Prefix>,
    pos: u64,
    size: u64,
}

impl PrefixReader {
    pub(super) fn new(file: Arc<fs::File>, prefix: Arc<Prefix>, size: u64) -> Self {
        Self {
            file,
            prefix,
            pos: 0,
            size,
        }
    }

    /// The prefix it follows (to close it, which ends a waiting read).
    pub(crate) fn prefix(&self) -> Arc<Prefix> {
        self.prefix.clone()
    }
}

impl Read for PrefixReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        let Some(end) = self.prefix.wait_past(self.pos) else {
            return Err(io::Error::other(
                "the download stopped before this part of the file was verified",
            ));
        };
        let want = (end.min(self.size) - self.pos).min(buf.len() as u64) as usize;
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_reader_gets_only_verified_bytes_and_waits_for_the_rest() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 100]).unwrap();
        let prefix = Prefix::new(10);
        let mut r = PrefixReader::new(Arc::new(f), prefix.clone(), 100);
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 10);
        let grower = std::thread::spawn({
            let p = prefix.clone();
            move || p.advance(60)
        });
        // Waits (if need be) until the writer reaches 60.
        assert_eq!(r.read(&mut buf).unwrap(), 50);
        grower.join().unwrap();
        // Closed short of the end: the rest is refused, not cut.
        prefix.close();
        let e = r.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("stopped"), "{e}");
        let mut rest = Vec::new();
        assert!(r.read_to_end(&mut rest).is_err());
    }
}
