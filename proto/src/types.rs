//! Validated identities. Parse, don't validate: construct these at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted file name, in bytes (what common file systems allow).
pub const MAX_NAME_BYTES: usize = 255;
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

/// [`FileName`] as a JSON Schema (ECMA-262) pattern, for the OpenAPI
/// document: no `/`, `\`, `:` or control character; not starting with `.`
/// or whitespace; not ending with whitespace. The byte limit
/// ([`MAX_NAME_BYTES`]) is the schema's `maxLength` (which counts
/// characters, so a name of many multi-byte characters can still be too
/// long). Checked against [`FileName::from_str`] by a property test.
pub const FILE_NAME_PATTERN: &str = concat!(
    r"^[^./\\:\u0000-\u001f\u007f-\u009f",
    r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]",
    r"([^/\\:\u0000-\u001f\u007f-\u009f]*",
    r"[^/\\:\u0000-\u001f\u007f-\u009f",
    r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$"
);

/// Why a wire value was refused. Messages are lowercase and carry the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid file id {0:?}: expected 64 lowercase hex characters (a BLAKE3 hash)")]
    FileId(String),
    #[error("invalid peer id {0:?}: expected a UUID")]
    PeerId(String),
    #[error("invalid file name {name:?}: {reason}")]
    FileName { name: String, reason: &'static str },
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

/// A file name supplied by a user or a peer, safe to join onto a folder.
///
/// One path component: not empty, at most [`MAX_NAME_BYTES`] bytes, no `/`,
/// `\`, NUL or other control characters, not `.` or `..`, no drive prefix
/// (`C:`), no leading or trailing whitespace. Names starting with `.` are
/// refused too: they are hidden files and our own temp files use that prefix.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct FileName(String);

impl FileName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for FileName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let reject = |reason| ParseError::FileName {
            name: truncate(s),
            reason,
        };
        if s.is_empty() {
            return Err(reject("empty"));
        }
        if s.len() > MAX_NAME_BYTES {
            return Err(reject("longer than 255 bytes"));
        }
        if s == "." || s == ".." {
            return Err(reject("not a file name"));
        }
        if s.starts_with('.') {
            return Err(reject("names starting with '.' are reserved"));
        }
        if s.contains(['/', '\\']) {
            return Err(reject("contains a path separator"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(reject("contains a control character"));
        }
        if s.trim() != s {
            return Err(reject("leading or trailing whitespace"));
        }
        let b = s.as_bytes();
        if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
            return Err(reject("drive prefix"));
        }
        if s.contains(':') {
            return Err(reject("contains ':'"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Base URL of a peer's public peer API: `http(s)://host:port`, no path,
/// query, fragment or credentials. Stored without a trailing slash.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PeerUrl(String);

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
        let authority = rest.strip_suffix('/').unwrap_or(rest);
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
                    '\u{a0}', '\u{2003}', '\u{3000}', '\u{feff}', '\u{1c}', '\u{b}', '\u{2028}', 'é', '語', '🦀',
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
            "a/b",
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
        ] {
            assert_eq!(good.parse::<FileName>().unwrap().as_str(), good);
        }
        assert!("a".repeat(256).parse::<FileName>().is_err());
        assert!("a".repeat(255).parse::<FileName>().is_ok());
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
