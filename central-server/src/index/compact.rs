//! Compact containers for the index, where one allocation per entry would
//! cost more than the entry itself (measured at a million files: see
//! `bench/README.md`).
//!
//! * [`Small`] — a list that keeps a single element inline. Most files have
//!   one holder under one name, most names one file, most words one name.
//! * [`Word`] — a lowercased word, inline when short (nearly all are), as
//!   the key of the token map.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// A list of `Copy` values: none or one inline, more behind one pointer.
/// 16 bytes for values up to 8 bytes (a `Vec` takes 24, and allocates for
/// one value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum Small<T> {
    #[default]
    Empty,
    One(T),
    /// Two values or more.
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps the enum at 16 bytes; a Vec would make it 24"
    )]
    Many(Box<Vec<T>>),
}

impl<T: Copy> Small<T> {
    pub(super) fn one(x: T) -> Self {
        Small::One(x)
    }

    /// Insert at `i` (as `Vec::insert`).
    pub(super) fn insert(&mut self, i: usize, x: T) {
        match self {
            Small::Empty => {
                assert_eq!(i, 0, "index out of bounds");
                *self = Small::One(x);
            }
            Small::One(a) => {
                let mut v = Vec::with_capacity(2);
                v.push(*a);
                v.insert(i, x);
                *self = Small::Many(Box::new(v));
            }
            Small::Many(v) => v.insert(i, x),
        }
    }

    pub(super) fn push(&mut self, x: T) {
        self.insert(self.len(), x);
    }

    /// Remove the value at `i` (as `Vec::remove`, order kept).
    pub(super) fn remove(&mut self, i: usize) -> T {
        let x = match self {
            Small::Empty => panic!("index out of bounds"),
            Small::One(a) => {
                assert_eq!(i, 0, "index out of bounds");
                let a = *a;
                *self = Small::default();
                return a;
            }
            Small::Many(v) => v.remove(i),
        };
        self.shrink();
        x
    }

    /// Remove the value at `i`, moving the last one into its place.
    pub(super) fn swap_remove(&mut self, i: usize) -> T {
        let x = match self {
            Small::Empty | Small::One(_) => return self.remove(i),
            Small::Many(v) => v.swap_remove(i),
        };
        self.shrink();
        x
    }

    /// Keep only the values `keep` accepts (order kept): one pass, however
    /// many go.
    pub(super) fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        match self {
            Small::Empty => {}
            Small::One(a) => {
                let mut keep = keep;
                if !keep(a) {
                    *self = Small::Empty;
                }
            }
            Small::Many(v) => {
                v.retain(keep);
                if v.is_empty() {
                    *self = Small::Empty;
                } else {
                    self.shrink();
                }
            }
        }
    }

    /// Back inline once one value is left.
    fn shrink(&mut self) {
        if let Small::Many(v) = self
            && v.len() == 1
        {
            *self = Small::One(v[0]);
        }
    }
}

impl<T> Deref for Small<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Small::Empty => &[],
            Small::One(x) => std::slice::from_ref(x),
            Small::Many(v) => v,
        }
    }
}

const INLINE: usize = 22;

/// A word of the token map: inline up to 22 bytes (zero-padded), boxed
/// beyond, so each text has exactly one representation. Compares, hashes and
/// borrows as the `str` it holds, so the map is searched with `&str` ranges.
// Derived equality is the text's: the representation is canonical.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Word {
    Inline(u8, [u8; INLINE]),
    Heap(Box<str>),
}

impl Word {
    pub(super) fn new(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut b = [0; INLINE];
            b[..s.len()].copy_from_slice(s.as_bytes());
            Word::Inline(s.len() as u8, b)
        } else {
            Word::Heap(s.into())
        }
    }

    /// The lowercase form of `w` (as [`super::words::lower_into`]), built in
    /// place when it is short ASCII: a restart lowercases every word of
    /// every name.
    pub(super) fn lowercase(w: &str) -> Self {
        if w.len() <= INLINE && w.is_ascii() {
            let mut b = [0; INLINE];
            b[..w.len()].copy_from_slice(w.as_bytes());
            // The whole array at once (zeros stay zeros): no byte loop.
            b.make_ascii_lowercase();
            Word::Inline(w.len() as u8, b)
        } else {
            let mut s = String::with_capacity(w.len());
            super::words::lower_into(w, &mut s);
            Word::new(&s)
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` cut at its own length: always UTF-8.
            Word::Inline(len, b) => std::str::from_utf8(&b[..*len as usize]).expect("utf-8 word"),
            Word::Heap(s) => s,
        }
    }

    /// The UTF-8 bytes, without the validation `as_str` costs: comparing,
    /// sorting and hashing use them (a restart sorts a million words).
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Word::Inline(len, b) => &b[..*len as usize],
            Word::Heap(s) => s.as_bytes(),
        }
    }
}

impl Deref for Word {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Word {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// Order and hash are those of the text too (`Borrow<str>` requires it):
// `str` compares bytewise, and hashes as its bytes then 0xff.
impl PartialOrd for Word {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Word {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Word {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl std::fmt::Debug for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::hash::BuildHasher;

    #[test]
    fn sizes() {
        assert_eq!(std::mem::size_of::<Small<(u32, u32)>>(), 16);
        assert_eq!(std::mem::size_of::<Small<u32>>(), 16);
        assert_eq!(std::mem::size_of::<Word>(), 24);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, u32),
        Push(u32),
        Remove(usize),
        SwapRemove(usize),
        RetainOdd,
    }

    proptest! {
        /// `Small` behaves exactly like a `Vec`, and holds one value inline.
        #[test]
        fn small_matches_vec(ops in prop::collection::vec(
            prop_oneof![
                (0usize..8, any::<u32>()).prop_map(|(i, x)| Op::Insert(i, x)),
                any::<u32>().prop_map(Op::Push),
                (0usize..8).prop_map(Op::Remove),
                (0usize..8).prop_map(Op::SwapRemove),
                Just(Op::RetainOdd),
            ],
            0..40,
        )) {
            let mut s = Small::default();
            let mut v: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(i, x) if i <= v.len() => { s.insert(i, x); v.insert(i, x); }
                    Op::Push(x) => { s.push(x); v.push(x); }
                    Op::Remove(i) if i < v.len() => prop_assert_eq!(s.remove(i), v.remove(i)),
                    Op::SwapRemove(i) if i < v.len() => prop_assert_eq!(s.swap_remove(i), v.swap_remove(i)),
                    Op::RetainOdd => { s.retain(|x| x % 2 == 1); v.retain(|x| x % 2 == 1); }
                    _ => {}
                }
                prop_assert_eq!(&*s, &v[..]);
                prop_assert_eq!(matches!(s, Small::Empty), v.is_empty());
                prop_assert_eq!(matches!(s, Small::One(_)), v.len() == 1);
            }
        }

        /// `Word` orders, compares and reads back as its text, inline or not.
        #[test]
        fn word_is_its_text(a in "\\PC{0,30}", b in "\\PC{0,30}") {
            let (wa, wb) = (Word::new(&a), Word::new(&b));
            prop_assert_eq!(wa.as_str(), a.as_str());
            prop_assert_eq!(wa.cmp(&wb), a.cmp(&b));
            prop_assert_eq!(wa == wb, a == b);
            let state = std::hash::RandomState::new();
            prop_assert_eq!(state.hash_one(&wa), state.hash_one(a.as_str()));
            prop_assert_eq!(matches!(wa, Word::Inline(..)), a.len() <= INLINE);
            let mut lower = String::new();
            crate::index::words::lower_into(&a, &mut lower);
            prop_assert_eq!(Word::lowercase(&a), Word::new(&lower));
        }
    }
}
