//! The names, their texts in one buffer: a name is its text's place in
//! the buffer and the files that carry it (24 bytes), instead of a boxed
//! string of its own (16 bytes of pointer and length, plus an allocation
//! with its header and rounding, for every one of millions of names).
//!
//! A dropped name leaves its bytes behind as garbage; once the garbage is
//! as big as the live texts (and at least [`COMPACT_AFTER`]), the buffer is
//! rewritten with the live texts only, so the buffer stays within twice
//! the live texts and each dropped byte is copied at most once on average.
//! The rewrite runs inside the change that dropped the name, under the
//! index's write lock: one pass over the live texts (about 40 MB at a
//! million names), rare but longer than one usual step of `gate.rs`.

use super::Name;
use super::compact::Small;
use super::slab::Slab;

/// Garbage below this is never worth a rewrite.
const COMPACT_AFTER: usize = 1 << 20;

/// Bits of a span that hold the length (the rest is the offset).
const LEN_BITS: u32 = 24;

/// A text's place in the buffer: offset and length in one `u64`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span(u64);

impl Span {
    fn new(at: usize, len: usize) -> Self {
        debug_assert!(len < 1 << LEN_BITS, "a name is at most a message long");
        Span(((at as u64) << LEN_BITS) | (len as u64 & ((1 << LEN_BITS) - 1)))
    }
    fn range(self) -> std::ops::Range<usize> {
        let at = (self.0 >> LEN_BITS) as usize;
        at..at + (self.0 & ((1 << LEN_BITS) - 1)) as usize
    }
}

/// Names by handle, with their texts in one buffer.
pub(super) struct Names {
    slab: Slab<Name>,
    texts: String,
    /// Bytes of `texts` no live name points to.
    garbage: usize,
}

impl Names {
    pub(super) fn new() -> Self {
        Self::with_capacity(0)
    }

    /// Room for `n` names of about 40 bytes.
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            slab: Slab::with_capacity(n),
            texts: String::with_capacity(n.saturating_mul(40)),
            garbage: 0,
        }
    }

    /// A new name carrying no file yet; its handle.
    pub(super) fn insert(&mut self, text: &str) -> u32 {
        let span = Span::new(self.texts.len(), text.len());
        self.texts.push_str(text);
        self.slab.insert(Name {
            span,
            files: Small::default(),
        })
    }

    /// Remove name `n`; its text (for the postings still to drop).
    pub(super) fn remove(&mut self, n: u32) -> Option<Box<str>> {
        let name = self.slab.remove(n)?;
        let range = name.span.range();
        let text: Box<str> = self.texts[range.clone()].into();
        self.garbage += range.len();
        if self.garbage >= COMPACT_AFTER && self.garbage * 2 >= self.texts.len() {
            self.compact();
        }
        Some(text)
    }

    /// Rewrite the buffer with the live texts only.
    fn compact(&mut self) {
        let mut texts = String::with_capacity(self.texts.len() - self.garbage);
        for name in self.slab.values_mut() {
            let range = name.span.range();
            name.span = Span::new(texts.len(), range.len());
            texts.push_str(&self.texts[range]);
        }
        self.texts = texts;
        self.garbage = 0;
    }

    pub(super) fn get(&self, n: u32) -> &Name {
        self.slab.get(n)
    }

    pub(super) fn try_get(&self, n: u32) -> Option<&Name> {
        self.slab.try_get(n)
    }

    pub(super) fn get_mut(&mut self, n: u32) -> &mut Name {
        self.slab.get_mut(n)
    }

    /// The text of live name `n`.
    pub(super) fn text(&self, n: u32) -> &str {
        self.text_of(self.slab.get(n))
    }

    /// The text of `name` (one of these names).
    pub(super) fn text_of(&self, name: &Name) -> &str {
        &self.texts[name.span.range()]
    }

    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_survive_removals_and_the_rewrite_of_the_buffer() {
        let mut names = Names::new();
        let text = |i: usize| format!("{i:06} {}", "x".repeat(i % 200));
        let handles: Vec<u32> = (0..20_000).map(|i| names.insert(&text(i))).collect();
        let before = names.texts.capacity();
        // Drop two in three: past the threshold, the buffer is rewritten.
        for (i, &h) in handles.iter().enumerate() {
            if i % 3 != 0 {
                assert_eq!(names.remove(h).as_deref(), Some(text(i).as_str()));
            }
        }
        assert!(
            names.texts.len() < before / 2,
            "rewritten: {} of {before} bytes",
            names.texts.len()
        );
        assert!(names.garbage * 2 < names.texts.len() || names.garbage < COMPACT_AFTER);
        for (i, &h) in handles.iter().enumerate() {
            if i % 3 == 0 {
                assert_eq!(names.text(h), text(i));
            } else {
                assert!(names.try_get(h).is_none());
                assert_eq!(names.remove(h), None, "removed once");
            }
        }
        // Freed handles are reused with their new texts.
        let again = names.insert("again");
        assert_eq!(names.text(again), "again");
        assert_eq!(names.len(), handles.len().div_ceil(3) + 1);
    }
}
