//! Validated identities. Parse, don't validate: construct these at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::relay::RELAY_PATH;

/// Longest accepted file name, in bytes (what common file systems allow):
/// the bound of each component of a share name (see [`FileName`]).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest accepted share name (a relative path: folders and file name
/// with their `/` separators), in bytes. Well under Linux's `PATH_MAX`
/// (4096), so a share folder's own path fits in front of it.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest accepted peer URL, in bytes.
pub const MAX_URL_BYTES: usize = 512;

/// [`FileId`] as a JSON Schema (ECMA-262) pattern, for the OpenAPI document.
pub const FILE_ID_PATTERN: &str = "^[0-9a-f]{64}$";

/// A UUID in its hyphenated form (job ids), as a JSON Schema pattern: the
/// only form the control API accepts (see [`parse_hyphenated_uuid`]).
pub const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// A search query that is not only whitespace (Rust's `char::is_whitespace`,
/// which `str::trim` uses), as a JSON Schema pattern; written out rather
/// than `\S`, whose meaning differs between regex dialects (ECMA-262 counts
/// U+FEFF as whitespace and not U+0085, Python also U+001C to U+001F).
pub const QUERY_PATTERN: &str = concat!(
    r"[^\t\n\u000b\f\r\u0020\u0085\u00a0\u1680\u2000-\u200a",
    r"\u2028\u2029\u202f\u205f\u3000]"
);

/// Most live copies a pin may ask for, whatever the directory's own
/// `CENTRAL_MAX_REPLICAS` (which may be set lower, 2 to this).
pub const MAX_REPLICAS: u32 = 64;

/// Longest search query, in bytes (the directory refuses longer ones).
pub const MAX_QUERY_BYTES: usize = 1024;
/// Most distinct words in a search query (the directory refuses more).
pub const MAX_QUERY_WORDS: usize = 16;

/// A UUID written the one way the OpenAPI document declares
/// ([`UUID_PATTERN`]): 36 characters, hyphenated. `Uuid::parse_str` also
/// takes the braced, URN and unhyphenated forms; an API that documents one
/// form accepts only that one.
pub fn parse_hyphenated_uuid(s: &str) -> Option<uuid::Uuid> {
    let b = s.as_bytes();
    let hyphens = [8, 13, 18, 23];
    let shaped = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if hyphens.contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    shaped.then(|| uuid::Uuid::parse_str(s).ok()).flatten()
}

/// The invisible characters of [`is_invisible`], as the body of a regex
/// character class: the characters themselves (`concat!` of char
/// literals), ranges joined by `-`.
macro_rules! invisible_chars {
    () => {
        concat!(
            '\u{ad}',
            '\u{34f}',
            '\u{600}',
            "-",
            '\u{605}',
            '\u{61c}',
            '\u{6dd}',
            '\u{70f}',
            '\u{890}',
            "-",
            '\u{891}',
            '\u{8e2}',
            '\u{115f}',
            '\u{1160}',
            '\u{17b4}',
            '\u{17b5}',
            '\u{180b}',
            "-",
            '\u{180f}',
            '\u{200b}',
            "-",
            '\u{200f}',
            '\u{2028}',
            "-",
            '\u{202e}',
            '\u{2060}',
            "-",
            '\u{206f}',
            '\u{3164}',
            '\u{fe00}',
            "-",
            '\u{fe0f}',
            '\u{feff}',
            '\u{ffa0}',
            '\u{fff0}',
            "-",
            '\u{fffb}',
            '\u{110bd}',
            '\u{110cd}',
            '\u{13430}',
            "-",
            '\u{1343f}',
            '\u{1bca0}',
            "-",
            '\u{1bca3}',
            '\u{1d173}',
            "-",
            '\u{1d17a}',
            '\u{e0000}',
            "-",
            '\u{e0fff}'
        )
    };
}

/// Path separators and control characters, as a regex class body.
macro_rules! seps_and_controls {
    () => {
        r"/\\\u0000-\u001f\u007f-\u009f"
    };
}

/// The whitespace a name may not start or end with (what `str::trim`
/// strips beside control characters), as a regex class body.
macro_rules! edge_space {
    () => {
        r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    };
}

/// One component of a [`FileName`] (a folder or file name) as a regex
/// group, unanchored: see [`FILE_NAME_PATTERN`].
macro_rules! name_component {
    () => {
        concat!(
            // At most 255 characters (the schema's bound of a component's
            // 255 bytes: exact for ASCII). A first character other than an
            // ASCII letter (no drive prefix is possible), then the rest;
            "(?:[^A-Za-z.",
            seps_and_controls!(),
            edge_space!(),
            invisible_chars!(),
            "](?:[^",
            seps_and_controls!(),
            invisible_chars!(),
            "]{0,253}[^",
            seps_and_controls!(),
            edge_space!(),
            invisible_chars!(),
            "])?",
            // or an ASCII letter, then anything but ':' (a drive prefix) and the rest.
            "|[A-Za-z](?:[^:",
            seps_and_controls!(),
            edge_space!(),
            invisible_chars!(),
            "]|[^:",
            seps_and_controls!(),
            invisible_chars!(),
            "][^",
            seps_and_controls!(),
            invisible_chars!(),
            "]{0,252}[^",
            seps_and_controls!(),
            edge_space!(),
            invisible_chars!(),
            "])?)"
        )
    };
}

/// One component of a [`FileName`] (a file name without folders) as a
/// JSON Schema pattern: what a private file's name is (its ticket keeps
/// at most [`MAX_NAME_BYTES`]).
pub const FILE_COMPONENT_PATTERN: &str = concat!("^", name_component!(), "$");

/// [`FileName`] as a JSON Schema (ECMA-262) pattern, for the OpenAPI
/// document: components separated by single `/`s, each with no `\`,
/// control character or invisible character ([`is_invisible`]); not
/// starting with `.`, whitespace or a drive prefix (`C:`); not ending with
/// whitespace. The byte limit of the whole path ([`MAX_PATH_BYTES`]) is the
/// schema's `maxLength` (which counts characters, so a name of many
/// multi-byte characters can still be too long; so can a component, past
/// [`MAX_NAME_BYTES`]). The invisible characters
/// stand in the pattern as themselves, not as escapes: Python, Rust and
/// ECMA-262 with Unicode semantics (what JSON Schema validators use) read
/// them alike, where an escape of a character past U+FFFF is spelt
/// differently by each. Checked against [`FileName::from_str`] for every
/// character by a test.
pub const FILE_NAME_PATTERN: &str = concat!(
    "^",
    name_component!(),
    // Further components, each after one '/' (a folder, then a file).
    "(?:/",
    name_component!(),
    ")*$"
);

/// Characters that show nothing, or change how the text around them shows,
/// refused in file names like control characters: a name must look like
/// what it is. Every format character (Unicode category Cf: the bidi
/// controls U+061C, U+200E/U+200F, U+202A–U+202E and U+2066–U+2069, the
/// zero-width U+200B–U+200D, U+2060 and U+FEFF, the soft hyphen, tags…),
/// the rest of the Default_Ignorable_Code_Point property (the Hangul
/// fillers U+115F, U+1160, U+3164 and U+FFA0, variation selectors, the
/// combining grapheme joiner U+034F, Khmer inherent vowels, Mongolian
/// free variation selectors, unassigned U+2065, U+FFF0–U+FFF8 and
/// U+E0000–U+E0FFF), and the line and paragraph separators U+2028/U+2029.
/// The ranges are written out (Unicode 16); a test checks that they hold
/// every Cf character the `unicode-properties` crate knows.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{34f}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}'
        | '\u{890}'..='\u{891}' | '\u{8e2}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}' | '\u{110bd}' | '\u{110cd}'
        | '\u{13430}'..='\u{1343f}' | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e0fff}')
}

/// `s` in NFC (Unicode canonical composition), borrowed when it is
/// already (ASCII always is): how names are compared and searched.
pub fn to_nfc(s: &str) -> std::borrow::Cow<'_, str> {
    use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
    if s.is_ascii() || is_nfc_quick(s.chars()) == IsNormalized::Yes {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(s.nfc().collect())
    }
}

/// `s` with its control and invisible characters ([`is_invisible`])
/// written as `\u{…}` escapes: a name as it can be shown anywhere (logs,
/// JSON read by people) without hiding or reordering anything.
pub fn escape_invisible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || is_invisible(c) {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// What an invisible or control character is, for error messages.
fn kind_of(c: char) -> &'static str {
    match c {
        '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
            "a bidirectional control, which can make a name show in another order than it reads"
        }
        '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}' => {
            "a zero-width character, which can make two names look the same"
        }
        c if c.is_control() => "a control character",
        _ => "an invisible or format character, which can make two names look the same",
    }
}

/// The Unicode name of the invisible characters most used to disguise a
/// name; `None` for the others (the code point says enough).
fn name_of(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{ad}' => "SOFT HYPHEN",
        '\u{61c}' => "ARABIC LETTER MARK",
        '\u{180e}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{200b}' => "ZERO WIDTH SPACE",
        '\u{200c}' => "ZERO WIDTH NON-JOINER",
        '\u{200d}' => "ZERO WIDTH JOINER",
        '\u{200e}' => "LEFT-TO-RIGHT MARK",
        '\u{200f}' => "RIGHT-TO-LEFT MARK",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        '\u{202a}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202b}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202c}' => "POP DIRECTIONAL FORMATTING",
        '\u{202d}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202e}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2060}' => "WORD JOINER",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{3164}' => "HANGUL FILLER",
        '\u{feff}' => "ZERO WIDTH NO-BREAK SPACE",
        _ => return None,
    })
}

/// Does some word of `name` mix writing systems (Latin with a Cyrillic
/// `а`, say)? Such a name can imitate another one letter for letter; the
/// CLI and the web UI mark it. A word is a run of letters, digits and
/// combining marks; each must be of one script as UTS #39 resolves it
/// (augmented script sets: Han with Hiragana and Katakana is Japanese, with
/// Hangul Korean; digits and punctuation go with any script), so
/// `отчёт.pdf` or `報告 2024.pdf` are not marked, `pаypal.pdf` is. A whole
/// word in another script that looks Latin (all-Cyrillic `раура`) is not
/// caught: that needs the confusables table, and most such words are
/// honest.
pub fn mixes_scripts(name: &str) -> bool {
    use unicode_security::MixedScript;
    name.split(|c: char| {
        !(c.is_alphanumeric() || unicode_normalization::char::is_combining_mark(c))
    })
    .any(|w| !w.is_empty() && !w.is_single_script())
}

/// Why a wire value was refused. Messages are lowercase and carry the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid file id {0:?}: expected 64 lowercase hex characters (a BLAKE3 hash)")]
    FileId(String),
    #[error("invalid peer id {0:?}: expected a UUID")]
    PeerId(String),
    /// The name is shown with its invisible characters escaped.
    #[error("invalid file name \"{}\": {reason}", escape_invisible(.name))]
    FileName {
        name: String,
        reason: std::borrow::Cow<'static, str>,
    },
    #[error("invalid peer url {url:?}: {reason}")]
    PeerUrl { url: String, reason: &'static str },
}

/// A file's identity: the BLAKE3 hash of its content (what `b3sum` prints).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId([u8; 32]);

impl FileId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The first 12 hex characters, for tables meant for people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl FromStr for FileId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError::FileId(truncate(s));
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
        Ok(Self(out))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", self.short())
    }
}

/// A peer's identity: a UUID created on first start and kept in its data dir.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PeerId(uuid::Uuid);

impl PeerId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
    pub fn from_uuid(u: uuid::Uuid) -> Self {
        Self(u)
    }
    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl FromStr for PeerId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ParseError::PeerId(truncate(s)))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A file's share name, supplied by a user or a peer, safe to join onto a
/// folder: its path relative to the share folder, components separated by
/// `/` (`Music/Album/01 Track.mp3`; a file at the top is one component).
///
/// Each component (a folder or the file's name) is checked as a file name:
/// not empty, at most [`MAX_NAME_BYTES`] bytes, no `\`, NUL or other
/// control characters, no invisible character ([`is_invisible`]: bidi
/// controls, zero-width and other format characters), not `.` or `..`, no
/// drive prefix (`C:`), no leading or trailing whitespace. Components
/// starting with `.` are refused too: they are hidden files and folders,
/// and our own temp files use that prefix. `:` elsewhere is fine (every
/// system a peer runs on allows it: `meeting 12:30.txt`). So a name never
/// starts or ends with `/`, never holds `//`, and never climbs out of the
/// folder it is joined onto. The whole path is at most [`MAX_PATH_BYTES`]
/// bytes.
///
/// Parsing normalizes to NFC (Unicode canonical composition), so one name
/// is one value however it was typed or stored: `café` with a precomposed
/// `é` (U+00E9) and with `e` + U+0301 parse to the same name. Everything
/// that takes a name from outside (the share folder, the control API, the
/// directory's RPCs) goes through here.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct FileName(String);

impl FileName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
    /// See [`mixes_scripts`].
    pub fn mixes_scripts(&self) -> bool {
        mixes_scripts(&self.0)
    }
    /// The folders and the file's own name, in order (at least one).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
    /// The file's own name: the last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
    /// The folder the file is in (`Music/Album` for
    /// `Music/Album/01.mp3`); `None` at the top of the share folder.
    pub fn folder(&self) -> Option<&str> {
        self.0.rsplit_once('/').map(|(dir, _)| dir)
    }
    /// Is this file somewhere under `folder` (at any depth)? `folder` is
    /// a share name too: whole components are compared, so `Music/Al` is
    /// not a folder of `Music/Album/01.mp3`.
    pub fn is_under(&self, folder: &FileName) -> bool {
        self.0
            .strip_prefix(folder.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Why one component of a name is refused, or `None`.
fn component_error(c: &str) -> Option<std::borrow::Cow<'static, str>> {
    let fixed = |r: &'static str| Some(std::borrow::Cow::Borrowed(r));
    if c.is_empty() {
        return fixed("empty");
    }
    if c == "." || c == ".." {
        return fixed("not a file name");
    }
    if c.starts_with('.') {
        return fixed("names starting with '.' are reserved");
    }
    if c.contains('\\') {
        return fixed("contains a path separator");
    }
    if let Some((i, ch)) = c
        .chars()
        .enumerate()
        .find(|&(_, ch)| ch.is_control() || is_invisible(ch))
    {
        let named = name_of(ch).map(|n| format!(" {n}")).unwrap_or_default();
        return Some(
            format!(
                "contains U+{:04X}{named} at character {}, {}",
                ch as u32,
                i + 1,
                kind_of(ch)
            )
            .into(),
        );
    }
    if c.trim() != c {
        return fixed("leading or trailing whitespace");
    }
    let b = c.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return fixed(
            "starts with a drive prefix (a letter and ':'), which Windows tools read as a drive",
        );
    }
    // NFC never brings in a character refused above (no canonical
    // decomposition involves them), but it can lengthen a name.
    if to_nfc(c).len() > MAX_NAME_BYTES {
        return fixed("longer than 255 bytes");
    }
    None
}

impl FromStr for FileName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let reject = |reason: std::borrow::Cow<'static, str>| ParseError::FileName {
            name: truncate(s),
            reason,
        };
        let fixed = |r: &'static str| reject(r.into());
        if s.is_empty() {
            return Err(fixed("empty"));
        }
        if s.len() > 4 * MAX_PATH_BYTES {
            // Not worth normalizing.
            return Err(fixed("longer than 1024 bytes"));
        }
        if !s.contains('/') {
            if let Some(why) = component_error(s) {
                return Err(reject(why));
            }
        } else {
            if s.starts_with('/') {
                return Err(fixed(
                    "starts with '/': a share name is a path relative to the share folder",
                ));
            }
            if s.ends_with('/') {
                return Err(fixed(
                    "ends with '/': a share name names a file, not a folder",
                ));
            }
            for (i, c) in s.split('/').enumerate() {
                if c.is_empty() {
                    return Err(fixed("has an empty folder name (two '/' in a row)"));
                }
                if let Some(why) = component_error(c) {
                    return Err(reject(
                        format!(
                            "its component {} (\"{}\") is refused: {why}",
                            i + 1,
                            escape_invisible(&truncate(c))
                        )
                        .into(),
                    ));
                }
            }
        }
        let nfc = to_nfc(s);
        if nfc.len() > MAX_PATH_BYTES {
            return Err(fixed("longer than 1024 bytes"));
        }
        Ok(Self(nfc.into_owned()))
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Base URL of a peer's public peer API: `http(s)://host:port`, no path,
/// query, fragment or credentials; or a relay URL, the same followed by
/// exactly `/peer/v1/relay/<peer id>` (a peer behind NAT reached through
/// the relay at `host:port`, see [`PeerUrl::relayed`]). Stored without a
/// trailing slash.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PeerUrl(pub(crate) String);

impl PeerUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PeerUrl {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let reject = |reason| ParseError::PeerUrl {
            url: truncate(s),
            reason,
        };
        if s.len() > MAX_URL_BYTES {
            return Err(reject("longer than 512 bytes"));
        }
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .ok_or_else(|| reject("must start with http:// or https://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        // A relay URL: the relay's authority, then exactly the relay path
        // and a peer id in its canonical (lowercase, hyphenated) form.
        let authority = match rest.find(RELAY_PATH) {
            Some(at) => {
                let id = &rest[at + RELAY_PATH.len()..];
                match id.parse::<PeerId>() {
                    Ok(p) if p.to_string() == id => &rest[..at],
                    _ => return Err(reject("a relay URL ends with /peer/v1/relay/<peer id>")),
                }
            }
            None => rest,
        };
        if authority.is_empty() {
            return Err(reject("missing host"));
        }
        if authority.contains(['/', '?', '#', '@']) {
            return Err(reject(
                "must be scheme://host:port with no path, query or credentials",
            ));
        }
        if !authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c))
        {
            return Err(reject("host contains invalid characters"));
        }
        // Optional port must be numeric and in range.
        let host_end = if authority.starts_with('[') {
            authority
                .find(']')
                .ok_or_else(|| reject("unclosed ipv6 bracket"))?
                + 1
        } else {
            authority.find(':').unwrap_or(authority.len())
        };
        let (host, port) = authority.split_at(host_end);
        if host.is_empty() || host == "[]" {
            return Err(reject("missing host"));
        }
        if let Some(p) = port.strip_prefix(':') {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => {}
                _ => return Err(reject("port must be 1-65535")),
            }
        } else if !port.is_empty() {
            return Err(reject("unexpected text after host"));
        }
        Ok(Self(s.trim_end_matches('/').to_owned()))
    }
}

impl fmt::Display for PeerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_via_str!(FileId, PeerId, FileName, PeerUrl);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The OpenAPI patterns accept exactly what the parsers accept.
        #[test]
        fn schema_patterns_match_the_parsers(
            s in proptest::collection::vec(
                proptest::sample::select(vec![
                    'a', 'Z', '0', '.', ' ', '-', '/', '\\', ':', '\0', '\t', '\u{7f}', '\u{85}',
                    '\u{a0}', '\u{2003}', '\u{3000}', '\u{feff}', '\u{1c}', '\u{b}', 'é', '語', '🦀',
                    '\u{301}', '\u{202e}', '\u{200b}', '\u{2028}', '\u{e0001}', '\u{3164}', 'а',
                ]),
                0..12,
            ).prop_map(|v| v.into_iter().collect::<String>()),
            hex in "[0-9a-fA-F]{63,65}",
        ) {
            let name = regex::Regex::new(FILE_NAME_PATTERN).unwrap();
            prop_assert_eq!(name.is_match(&s), s.parse::<FileName>().is_ok(), "{:?}", s);
            let id = regex::Regex::new(FILE_ID_PATTERN).unwrap();
            prop_assert_eq!(id.is_match(&hex), hex.parse::<FileId>().is_ok(), "{}", hex);
            let query = regex::Regex::new(QUERY_PATTERN).unwrap();
            prop_assert_eq!(query.is_match(&s), !s.trim().is_empty(), "{:?}", s);
        }

        /// The job-id pattern accepts exactly what the control API parses.
        #[test]
        fn uuid_pattern_matches_the_parser(
            s in "[{]?(urn:uuid:)?[0-9a-fA-FgG-]{30,38}[}]?",
            u in proptest::array::uniform16(proptest::num::u8::ANY),
        ) {
            let re = regex::Regex::new(UUID_PATTERN).unwrap();
            prop_assert_eq!(re.is_match(&s), parse_hyphenated_uuid(&s).is_some(), "{}", s);
            let u = uuid::Uuid::from_bytes(u);
            for form in [u.hyphenated().to_string(), u.hyphenated().to_string().to_uppercase()] {
                prop_assert!(re.is_match(&form));
                prop_assert_eq!(parse_hyphenated_uuid(&form), Some(u));
            }
            prop_assert_eq!(parse_hyphenated_uuid(&u.simple().to_string()), None);
        }
    }

    #[test]
    fn file_names() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "Music/.hidden/x.mp3",
            "Music/ x/y",
            "Music/c:/y",
            "a\\b",
            "..\\x",
            "a\0b",
            "C:",
            "c:evil",
            "/etc/passwd",
            ".hidden",
            " x",
            "x ",
            "a\nb",
            "\u{3000}x",
            "a:b",
        ] {
            assert!(bad.parse::<FileName>().is_err(), "{bad:?} accepted");
        }
        for good in [
            "report.pdf",
            "alpha-report.bin",
            "ünïcødé.txt",
            "a b",
            "x..y",
            "ab:c",
            "meeting 12:30.txt",
            ":x",
            "12:30",
            "報告 2024.pdf",
            "a/b",
            "Music/Album/01 Track.mp3",
            "x..y/ab:c d/z",
        ] {
            assert_eq!(good.parse::<FileName>().unwrap().as_str(), good);
        }
        assert!("a".repeat(256).parse::<FileName>().is_err());
        assert!("a".repeat(255).parse::<FileName>().is_ok());
        // Each component is bounded, and the whole path.
        let c = "a".repeat(255);
        assert!(format!("{c}/{c}/{c}/{c}").parse::<FileName>().is_ok());
        assert!(format!("{c}/{c}/{c}/{c}/a").parse::<FileName>().is_err());
        assert!(format!("x/{c}a").parse::<FileName>().is_err());
        // The error says which component and why.
        let err = "Music/../etc".parse::<FileName>().unwrap_err().to_string();
        assert!(err.contains("component 2 (\"..\")"), "{err}");
    }

    #[test]
    fn share_names_are_paths() {
        let n: FileName = "Music/Album/01.mp3".parse().unwrap();
        assert_eq!(
            n.components().collect::<Vec<_>>(),
            ["Music", "Album", "01.mp3"]
        );
        assert_eq!((n.file_name(), n.folder()), ("01.mp3", Some("Music/Album")));
        let top: FileName = "a.txt".parse().unwrap();
        assert_eq!((top.file_name(), top.folder()), ("a.txt", None));
        assert!(n.is_under(&"Music".parse().unwrap()));
        assert!(n.is_under(&"Music/Album".parse().unwrap()));
        assert!(!n.is_under(&"Music/Al".parse().unwrap()));
        assert!(!n.is_under(&n));
        // NFC per component.
        let nfd: FileName = "cafe\u{301}/cafe\u{301}.txt".parse().unwrap();
        assert_eq!(nfd.as_str(), "caf\u{e9}/caf\u{e9}.txt");
    }

    /// One name whatever its spelling: NFD (as macOS tools write it) and
    /// NFC parse to the same NFC name, which parses to itself.
    #[test]
    fn file_names_are_nfc() {
        let nfd = "cafe\u{301}.txt";
        let nfc = "caf\u{e9}.txt";
        let a: FileName = nfd.parse().unwrap();
        let b: FileName = nfc.parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), nfc);
        assert_eq!(a.to_string().parse::<FileName>().unwrap(), a);
        // Hangul jamo compose; a singleton (OHM SIGN) becomes its canonical
        // equivalent (GREEK CAPITAL OMEGA).
        assert_eq!(
            "\u{1100}\u{1161}.txt".parse::<FileName>().unwrap().as_str(),
            "\u{ac00}.txt"
        );
        assert_eq!(
            "1k\u{2126}.txt".parse::<FileName>().unwrap().as_str(),
            "1k\u{3a9}.txt"
        );
        // 255 bytes in NFC, more in NFD: the NFC length counts.
        let long = format!("{}{}", "a".repeat(253), "e\u{301}");
        assert_eq!(long.len(), 256);
        assert_eq!(long.parse::<FileName>().unwrap().as_str().len(), 255);
    }

    /// Invisible characters are refused, and the error names the character
    /// (U+XXXX) and where it is, and never carries it raw.
    #[test]
    fn invisible_characters_are_refused_by_code_point_and_position() {
        for (name, code, at) in [
            (
                "invoice \u{202e}fdp.exe",
                "U+202E RIGHT-TO-LEFT OVERRIDE",
                9,
            ),
            ("pay\u{200b}pal.pdf", "U+200B ZERO WIDTH SPACE", 4),
            ("\u{feff}x", "U+FEFF ZERO WIDTH NO-BREAK SPACE", 1),
            ("a\u{2066}b\u{2069}", "U+2066 LEFT-TO-RIGHT ISOLATE", 2),
            ("x\u{61c}y", "U+061C ARABIC LETTER MARK", 2),
            ("x\u{200e}y", "U+200E LEFT-TO-RIGHT MARK", 2),
            ("e\u{301}\u{200d}", "U+200D ZERO WIDTH JOINER", 3),
            ("\u{3164}.txt", "U+3164 HANGUL FILLER", 1),
            ("x\u{180e}", "U+180E MONGOLIAN VOWEL SEPARATOR", 2),
            ("soft\u{ad}hyphen", "U+00AD SOFT HYPHEN", 5),
            ("flag\u{e0067}", "U+E0067", 5),
            ("vs\u{fe0f}", "U+FE0F", 3),
            ("a\u{7}b", "U+0007", 2),
        ] {
            let err = name.parse::<FileName>().unwrap_err().to_string();
            let want = format!("contains {code} at character {at}, ");
            assert!(err.contains(&want), "{name:?}: {err}");
            assert!(
                !err.contains(|c: char| is_invisible(c) || c.is_control()),
                "{err:?}"
            );
        }
    }

    /// The written-out ranges hold every format character (category Cf) of
    /// the Unicode version `unicode-properties` knows: a newer Unicode with
    /// new ones fails here until they are added.
    #[test]
    fn every_format_character_is_invisible() {
        use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
        let missing: Vec<String> = (0..=0x10ffff_u32)
            .filter_map(char::from_u32)
            .filter(|c| c.general_category() == GeneralCategory::Format && !is_invisible(*c))
            .map(|c| format!("U+{:04X}", c as u32))
            .collect();
        assert!(
            missing.is_empty(),
            "format characters not refused: {missing:?}"
        );
    }

    /// The OpenAPI pattern accepts exactly what the parser accepts, for
    /// every character at the start, in the middle and at the end.
    #[test]
    fn schema_pattern_matches_the_parser_for_every_character() {
        let re = regex::Regex::new(FILE_NAME_PATTERN).unwrap();
        let mut wrong = Vec::new();
        for c in (0..=0x10ffff_u32).filter_map(char::from_u32) {
            for s in [
                format!("{c}"),
                format!("{c}x"),
                format!("x{c}y"),
                format!("Z{c}y"),
            ] {
                if re.is_match(&s) != s.parse::<FileName>().is_ok() {
                    wrong.push(s);
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} disagreements: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(20)]
        );
    }

    #[test]
    fn mixed_scripts_are_told() {
        for lookalike in [
            "p\u{430}ypal.pdf",     // Cyrillic а in a Latin word
            "invoice-\u{3bf}k.txt", // Greek ο
            "\u{440}aypal.exe",     // Cyrillic р first
        ] {
            assert!(mixes_scripts(lookalike), "{lookalike:?}");
        }
        for honest in [
            "report.pdf",
            "caf\u{e9}.txt",
            "cafe\u{301}.txt",
            "\u{43e}\u{442}\u{447}\u{451}\u{442}.pdf", // отчёт.pdf
            "報告 2024.pdf",
            "日本語のテキスト.txt",
            "한국어 문서.hwp",
            "Ελληνικά-v2.doc",
            "meeting 12:30.txt",
            "🦀 notes.md",
        ] {
            assert!(!mixes_scripts(honest), "{honest:?}");
        }
    }

    #[test]
    fn file_ids() {
        let h = blake3_like();
        assert_eq!(h.parse::<FileId>().unwrap().to_hex(), h);
        assert!(h.to_uppercase().parse::<FileId>().is_err());
        assert!(h[..63].parse::<FileId>().is_err());
        assert!("zz".repeat(32).parse::<FileId>().is_err());
    }

    fn blake3_like() -> String {
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262".to_owned()
    }

    #[test]
    fn relay_urls() {
        let id = "0b6c3a8e-3f43-4d44-9a43-5d1b0c7a9e21";
        let url: PeerUrl = format!("https://relay.example:7071/peer/v1/relay/{id}")
            .parse()
            .unwrap();
        let (base, peer) = url.relayed().unwrap();
        assert_eq!(base.as_str(), "https://relay.example:7071");
        assert_eq!(peer.to_string(), id);
        assert_eq!(base.relay_for(&peer), url);
        assert!(base.is_base() && !url.is_base());
        for bad in [
            format!("http://h:1/peer/v1/relay/{}", id.to_uppercase()),
            "http://h:1/peer/v1/relay/".to_owned(),
            "http://h:1/peer/v1/relay/x".to_owned(),
            format!("http://h:1/peer/v1/relay/{id}/x"),
            format!("http://h:1/x/peer/v1/relay/{id}"),
            format!("http://h:1/peer/v1/relay/{id}?q"),
        ] {
            assert!(bad.parse::<PeerUrl>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn peer_urls() {
        for good in [
            "http://127.0.0.1:7071",
            "https://peer.example.com",
            "http://[::1]:80/",
        ] {
            good.parse::<PeerUrl>().unwrap();
        }
        assert_eq!(
            "http://h:1/".parse::<PeerUrl>().unwrap().as_str(),
            "http://h:1"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://h/path",
            "http://u@h",
            "http://h?x",
            "h:1",
            "http://h x",
        ] {
            assert!(bad.parse::<PeerUrl>().is_err(), "{bad:?} accepted");
        }
    }
}
