//! The tokenizer: how names and queries become lowercase words.
//!
//! One definition for both sides, so a query word matches a name word
//! exactly when a user would expect: any non-alphanumeric character
//! separates words, and case is folded per character. A share name is a
//! path (`Artist/Album/01 Track.mp3`): `/` separates words like any other
//! punctuation, so every folder's words are words of the name.

/// Split a name or a query into lowercase words: any non-alphanumeric
/// character separates words.
pub fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    raw_words(s).map(|w| {
        let mut out = String::with_capacity(w.len());
        lower_into(w, &mut out);
        out
    })
}

pub(super) fn raw_words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Append the lowercase form of `w` to `out` (per character, so a word
/// lowercases the same wherever it appears).
pub(super) fn lower_into(w: &str, out: &mut String) {
    if w.is_ascii() {
        let start = out.len();
        out.push_str(w);
        out[start..].make_ascii_lowercase();
    } else {
        out.extend(w.chars().flat_map(char::to_lowercase));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<String> {
        words(s).collect()
    }

    #[test]
    fn words_split_on_non_alphanumerics() {
        assert_eq!(q("Alpha-Report_v2.BIN"), ["alpha", "report", "v2", "bin"]);
        assert_eq!(q("--"), Vec::<String>::new());
        assert_eq!(q("Ünï cødé"), ["ünï", "cødé"]);
    }

    /// A share name is a path: the words of every folder count, so a
    /// search for an artist or an album finds the files under it.
    #[test]
    fn folder_words_are_words_of_the_name() {
        assert_eq!(
            q("Music/Miles Davis/Kind of Blue/01 So What.flac"),
            [
                "music", "miles", "davis", "kind", "of", "blue", "01", "so", "what", "flac"
            ]
        );
    }
}
