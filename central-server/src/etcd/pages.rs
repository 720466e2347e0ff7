//! A peer's inventory in pages (issue 27): the holdings of a Join (and of
//! a big Publish) stored as a few values of compact binary rows under
//! `inv/<peer>/<change>.<part>`, instead of one etcd key per holding.
//!
//! A key per holding cost about 270 bytes of etcd database and a put, a
//! Raft entry, an MVCC entry and a bbolt write on every member: 1M
//! holdings made a 268 MB database and a Join of 1M holdings took minutes.
//! A page carries about [`PAGE_BYTES`] of rows for one key.
//!
//! # Format (version 1)
//!
//! ```text
//! version (1 byte, = 1) | row count (varint) | rows' length (varint)
//!     | rows, deflated | check (8 bytes)
//! row: file id (32 bytes) | size (varint) | flags (1 byte: bit 0 = replica)
//!      | name length (varint) | name (UTF-8)
//! ```
//!
//! Varints are LEB128 (7 bits a byte, low first). The rows are deflated
//! (RFC 1951, fastest level): names share their folders and words, and
//! about 45 % of a page goes (the ids, random, do not shrink), which also
//! keeps the page of a peer of 100 files (8 KB of rows) within two of
//! bbolt's 4 KiB pages instead of three. The check is the first 8 bytes
//! of the BLAKE3 hash of everything before it. A page is decoded whole
//! before any of it is applied: a truncated or corrupt page is refused
//! with a [`PageError`] and none of its rows count.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use peerdex_proto::FileId;
use peerdex_proto::convert::SharedFile;
use peerdex_proto::types::MAX_PATH_BYTES;

/// Rows are added to a page until it reaches this size; the row that
/// passes it ends the page (well below etcd's 1.5 MiB request limit).
pub(super) const PAGE_BYTES: usize = 64 * 1024;

const VERSION: u8 = 1;
const CHECK_BYTES: usize = 8;
const REPLICA: u8 = 1;
/// The largest varint of a u64.
const VARINT_MAX: usize = 10;
/// The largest row: id, size, flags, name length and the longest name.
const MAX_ROW_BYTES: usize = 32 + VARINT_MAX + 1 + 2 + MAX_PATH_BYTES;
/// The smallest row: id, a one-byte size, flags, a one-byte name length
/// and a one-byte name.
const MIN_ROW_BYTES: usize = 32 + 1 + 1 + 1 + 1;
/// The most rows' bytes of a page: a page ends with the row that passes
/// [`PAGE_BYTES`], so it overruns by less than one row.
const MAX_ROWS_BYTES: usize = PAGE_BYTES + MAX_ROW_BYTES;
/// The largest page read back: deflate stores what does not shrink in
/// blocks of at most 65,535 bytes with 5 bytes of header each.
pub(super) const MAX_PAGE_BYTES: usize =
    1 + 2 * VARINT_MAX + MAX_ROWS_BYTES + 5 * (MAX_ROWS_BYTES / 65_535 + 2) + CHECK_BYTES;

/// One holding read from a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PageRow {
    pub file: FileId,
    pub size: u64,
    pub replica: bool,
    pub name: String,
}

/// Why a stored page was refused (none of its rows is applied; the
/// peer's next Join rewrites its pages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PageError {
    #[error(
        "inventory page of {len} bytes is outside 10..={MAX_PAGE_BYTES}: truncated or not a page; ignored until its peer joins again"
    )]
    Length { len: usize },
    #[error(
        "inventory page fails its check (corrupt or truncated); ignored until its peer joins again"
    )]
    Check,
    #[error("inventory page of version {0}, this central reads version 1: upgrade this central")]
    Version(u8),
    #[error(
        "inventory page's rows do not inflate to their stated {len} bytes; ignored until its peer joins again"
    )]
    Inflate { len: u64 },
    #[error("inventory page ends inside row {row} of {rows}; ignored until its peer joins again")]
    Truncated { row: u64, rows: u64 },
    #[error(
        "inventory page row {row} is malformed ({problem}); ignored until its peer joins again"
    )]
    Row { row: u64, problem: &'static str },
    #[error(
        "inventory page has {extra} bytes after its {rows} rows; ignored until its peer joins again"
    )]
    Trailing { rows: u64, extra: usize },
}

/// The pages of `files`, in order: each about [`PAGE_BYTES`], every row
/// in exactly one page. No files, no pages.
pub(super) fn encode(files: &[SharedFile]) -> Vec<Vec<u8>> {
    let mut pages = Vec::new();
    let mut rows = Vec::with_capacity(PAGE_BYTES + MAX_ROW_BYTES);
    let mut count = 0u64;
    for f in files {
        rows.extend_from_slice(f.id.as_bytes());
        put_varint(&mut rows, f.size);
        rows.push(if f.replica { REPLICA } else { 0 });
        let name = f.name.as_str().as_bytes();
        put_varint(&mut rows, name.len() as u64);
        rows.extend_from_slice(name);
        count += 1;
        if rows.len() >= PAGE_BYTES {
            pages.push(seal(count, &rows));
            rows.clear();
            count = 0;
        }
    }
    if count > 0 {
        pages.push(seal(count, &rows));
    }
    pages
}

/// Header, deflated rows and check of one page.
fn seal(count: u64, rows: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(1 + 2 * VARINT_MAX + rows.len() / 2 + CHECK_BYTES);
    head.push(VERSION);
    put_varint(&mut head, count);
    put_varint(&mut head, rows.len() as u64);
    let mut z = DeflateEncoder::new(head, Compression::fast());
    let mut page = match z.write_all(rows).and_then(|()| z.finish()) {
        Ok(page) => page,
        // Deflating into memory does not fail.
        Err(e) => unreachable!("deflate into a Vec: {e}"),
    };
    let check = blake3::hash(&page);
    page.extend_from_slice(&check.as_bytes()[..CHECK_BYTES]);
    page
}

/// Every row of a stored page, or why it is refused (then no row).
pub(super) fn decode(page: &[u8]) -> Result<Vec<PageRow>, PageError> {
    let len = page.len();
    if !(1 + 1 + CHECK_BYTES..=MAX_PAGE_BYTES).contains(&len) {
        return Err(PageError::Length { len });
    }
    let (body, check) = page.split_at(len - CHECK_BYTES);
    if blake3::hash(body).as_bytes()[..CHECK_BYTES] != *check {
        return Err(PageError::Check);
    }
    if body[0] != VERSION {
        return Err(PageError::Version(body[0]));
    }
    let mut head = Reader { buf: body, at: 1 };
    let bad = |problem| PageError::Row { row: 0, problem };
    let rows = head.varint().ok_or(bad("bad row count"))?;
    let raw_len = head.varint().ok_or(bad("bad rows' length"))?;
    // Bound the allocations by the limits, not by what the page says.
    if raw_len > MAX_ROWS_BYTES as u64 {
        return Err(bad("rows longer than a page"));
    }
    if rows > raw_len / MIN_ROW_BYTES as u64 {
        return Err(bad("more rows than the page can hold"));
    }
    let mut raw = Vec::with_capacity(raw_len as usize);
    let inflated = DeflateDecoder::new(&body[head.at..])
        .take(raw_len + 1)
        .read_to_end(&mut raw);
    if inflated.is_err() || raw.len() as u64 != raw_len {
        return Err(PageError::Inflate { len: raw_len });
    }
    let body = &raw[..];
    let mut r = Reader { buf: body, at: 0 };
    let mut out = Vec::with_capacity(rows as usize);
    for row in 0..rows {
        let truncated = PageError::Truncated { row, rows };
        let file = r.take(32).ok_or(truncated.clone())?;
        let file = FileId::from_bytes(file.try_into().map_err(|_| truncated.clone())?);
        let size = r.varint().ok_or(truncated.clone())?;
        let flags = *r.take(1).ok_or(truncated.clone())?.first().unwrap_or(&0);
        if flags & !REPLICA != 0 {
            return Err(PageError::Row {
                row,
                problem: "unknown flags",
            });
        }
        let name_len = r.varint().ok_or(truncated.clone())?;
        if name_len == 0 || name_len > MAX_PATH_BYTES as u64 {
            return Err(PageError::Row {
                row,
                problem: "name length out of 1..=1024",
            });
        }
        let name = r.take(name_len as usize).ok_or(truncated)?;
        let name = std::str::from_utf8(name).map_err(|_| PageError::Row {
            row,
            problem: "name not UTF-8",
        })?;
        out.push(PageRow {
            file,
            size,
            replica: flags & REPLICA != 0,
            name: name.to_owned(),
        });
    }
    if r.at != body.len() {
        return Err(PageError::Trailing {
            rows,
            extra: body.len() - r.at,
        });
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A cursor over a page's body; `None` past its end.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    /// A LEB128 u64; `None` when cut short or longer than a u64.
    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for i in 0..VARINT_MAX {
            let b = *self.take(1)?.first()?;
            let part = u64::from(b & 0x7f);
            if i == VARINT_MAX - 1 && part > 1 {
                return None;
            }
            n |= part << (7 * i);
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(i: u32, name: &str, size: u64, replica: bool) -> SharedFile {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        SharedFile {
            id: FileId::from_bytes(id),
            size,
            name: name.parse().unwrap(),
            replica,
        }
    }

    fn rows(files: &[SharedFile]) -> Vec<PageRow> {
        files
            .iter()
            .map(|f| PageRow {
                file: f.id,
                size: f.size,
                replica: f.replica,
                name: f.name.as_str().to_owned(),
            })
            .collect()
    }

    #[test]
    fn pages_read_back_as_written_in_order() {
        let files: Vec<SharedFile> = (0..5000u32)
            .map(|i| {
                file(
                    i,
                    &format!("dir {i}/ünïcode name {i}.bin"),
                    if i % 2 == 0 {
                        u64::from(i) * 1_000_003
                    } else {
                        u64::MAX - u64::from(i)
                    },
                    i % 3 == 0,
                )
            })
            .collect();
        let pages = encode(&files);
        assert!(pages.len() > 3, "{} pages", pages.len());
        let mut back = Vec::new();
        for p in &pages {
            assert!(p.len() <= MAX_PAGE_BYTES);
            back.extend(decode(p).unwrap());
        }
        assert_eq!(back, rows(&files));
        assert!(encode(&[]).is_empty());
    }

    #[test]
    fn the_longest_names_and_sizes_fit() {
        // The longest share name: components of 255 bytes up to 1024.
        let part = "a".repeat(255);
        let long = format!("{part}/{part}/{part}/{}/c", "b".repeat(254));
        assert_eq!(long.len(), MAX_PATH_BYTES);
        let files = vec![
            file(1, &long, u64::MAX, true),
            file(2, "x", 0, false),
            file(3, &long, 127, false),
        ];
        let pages = encode(&files);
        assert_eq!(pages.len(), 1);
        assert_eq!(decode(&pages[0]).unwrap(), rows(&files));
    }

    #[test]
    fn a_truncated_page_is_refused() {
        let files: Vec<SharedFile> = (0..100).map(|i| file(i, "f.txt", 9, false)).collect();
        let page = &encode(&files)[0];
        for cut in [0, 1, 5, 9, 10, page.len() / 2, page.len() - 1] {
            assert!(decode(&page[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode(&page[..3]), Err(PageError::Length { len: 3 }));
        assert_eq!(decode(&page[..page.len() - 1]), Err(PageError::Check));
    }

    #[test]
    fn a_corrupt_page_is_refused_never_half_read() {
        let files: Vec<SharedFile> = (0..100).map(|i| file(i, "f.txt", 9, false)).collect();
        let page = encode(&files).remove(0);
        // Any flipped byte fails the check.
        for at in [0, 1, 40, page.len() / 2, page.len() - 1] {
            let mut bad = page.clone();
            bad[at] ^= 0x20;
            assert_eq!(decode(&bad), Err(PageError::Check), "byte {at}");
        }
    }

    /// A page with a valid check but bad content (as a buggy writer would
    /// make): refused whole, with the row named.
    #[test]
    fn malformed_rows_are_refused_with_the_row_named() {
        let sealed = |count: u64, body: &[u8]| seal(count, body);
        let mut row = vec![7u8; 32];
        row.extend([5, 0, 1, b'a']);
        // More rows announced than present.
        // (the second row's name is cut short)
        let mut cut = row.clone();
        cut.extend([7u8; 32]);
        cut.extend([5, 0, 10]);
        cut.extend(b"abcde");
        assert_eq!(
            decode(&sealed(2, &cut)),
            Err(PageError::Truncated { row: 1, rows: 2 })
        );
        // Bytes after the last row.
        let mut extra = row.clone();
        extra.push(0);
        assert_eq!(
            decode(&sealed(1, &extra)),
            Err(PageError::Trailing { rows: 1, extra: 1 })
        );
        // Unknown flags, empty and overlong names, invalid UTF-8.
        let mut flags = row.clone();
        flags[33] = 2;
        assert!(matches!(
            decode(&sealed(1, &flags)),
            Err(PageError::Row { row: 0, .. })
        ));
        let mut empty = vec![7u8; 32];
        empty.extend([5, 0, 0]);
        assert!(matches!(
            decode(&sealed(1, &empty)),
            Err(PageError::Row { row: 0, .. })
        ));
        let mut utf8 = vec![7u8; 32];
        utf8.extend([5, 0, 1, 0xff]);
        assert!(matches!(
            decode(&sealed(1, &utf8)),
            Err(PageError::Row { row: 0, .. })
        ));
        // A count the bytes cannot hold is refused before allocating.
        assert!(matches!(
            decode(&sealed(u64::MAX, &row)),
            Err(PageError::Row { row: 0, .. })
        ));
        // Another version.
        let mut v2 = sealed(1, &row);
        v2[0] = 2;
        let n = v2.len() - CHECK_BYTES;
        let check = blake3::hash(&v2[..n]);
        v2[n..].copy_from_slice(&check.as_bytes()[..CHECK_BYTES]);
        assert_eq!(decode(&v2), Err(PageError::Version(2)));
        // A size varint longer than a u64.
        let mut big = vec![7u8; 32];
        big.extend([0xff; 10]);
        big.extend([0, 1, b'a']);
        assert!(matches!(
            decode(&sealed(1, &big)),
            Err(PageError::Truncated { row: 0, .. })
        ));
    }

    /// Rows that do not inflate to the length the page states (short,
    /// or a stream that inflates past it, as a deflate bomb would) are
    /// refused, without inflating more than the stated length.
    #[test]
    fn rows_must_inflate_to_their_stated_length() {
        let mut row = vec![7u8; 32];
        row.extend([5, 0, 1, b'a']);
        let with_len = |stated: u64, rows: &[u8]| {
            let mut page = vec![VERSION];
            put_varint(&mut page, 1);
            put_varint(&mut page, stated);
            let mut z = DeflateEncoder::new(page, Compression::fast());
            z.write_all(rows).unwrap();
            let mut page = z.finish().unwrap();
            let check = blake3::hash(&page);
            page.extend_from_slice(&check.as_bytes()[..CHECK_BYTES]);
            page
        };
        assert!(decode(&with_len(36, &row)).is_ok());
        assert_eq!(
            decode(&with_len(40, &row)),
            Err(PageError::Inflate { len: 40 })
        );
        assert_eq!(
            decode(&with_len(36, &vec![0; 1 << 20])),
            Err(PageError::Inflate { len: 36 })
        );
        assert!(matches!(
            decode(&with_len(1 << 30, &row)),
            Err(PageError::Row { row: 0, .. })
        ));
        // Not a deflate stream at all.
        let mut page = vec![VERSION, 1, 36, 0xff, 0xff, 0xff];
        let check = blake3::hash(&page);
        page.extend_from_slice(&check.as_bytes()[..CHECK_BYTES]);
        assert_eq!(decode(&page), Err(PageError::Inflate { len: 36 }));
    }

    /// Rows deflate: a music library's page of 100 rows shrinks by a third
    /// or more (ids, random, do not).
    #[test]
    fn pages_are_smaller_than_their_rows() {
        let files: Vec<SharedFile> = (0..100u32)
            .map(|i| SharedFile {
                // Random-looking ids, as contents' hashes are.
                id: FileId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()),
                size: 123_456_789,
                name: format!("Some Artist - Some Album/{:02} Title {i}.flac", i % 14)
                    .parse()
                    .unwrap(),
                replica: false,
            })
            .collect();
        let raw: usize = files
            .iter()
            .map(|f| 32 + 4 + 1 + 1 + f.name.as_str().len())
            .sum();
        let page = encode(&files).remove(0);
        assert!(page.len() * 3 < raw * 2, "{} of {raw}", page.len());
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for n in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut v = Vec::new();
            put_varint(&mut v, n);
            assert!(v.len() <= VARINT_MAX);
            let mut r = Reader { buf: &v, at: 0 };
            assert_eq!(r.varint(), Some(n));
            assert_eq!(r.at, v.len());
        }
    }
}
