//! The schemas of the strings and numbers the PServer parses, built from
//! the parsers' own constants (utoipa's `#[schema(...)]` attributes take
//! only literals; `schema_with` takes these). Every bound here is one a
//! parser enforces: a value outside it is answered 400, a value inside it
//! is never refused for its form.

use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};

use crate::types::{
    FILE_COMPONENT_PATTERN, FILE_ID_PATTERN, FILE_NAME_PATTERN, MAX_NAME_BYTES, MAX_PATH_BYTES,
    MAX_QUERY_BYTES, MAX_REPLICAS, QUERY_PATTERN, UUID_PATTERN,
};

fn string(pattern: &str, min: usize, max: usize, what: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(min))
        .max_length(Some(max))
        .description(Some(what))
}

/// A file id ([`crate::FileId`]).
pub fn file_id() -> Object {
    string(
        FILE_ID_PATTERN,
        64,
        64,
        "a file id: the BLAKE3 hash of the content, 64 lowercase hex characters",
    )
    .build()
}

/// A share name ([`crate::FileName`]). `maxLength` counts characters;
/// the parser counts UTF-8 bytes (at most 1024, 255 a component), which
/// the description says.
pub fn file_name() -> Object {
    string(
        FILE_NAME_PATTERN,
        1,
        MAX_PATH_BYTES,
        "a share name: a path relative to the share folder, components \
         separated by '/', at most 1024 bytes (UTF-8); each component at \
         most 255 bytes, no '\\' or control character, not starting with \
         '.', whitespace or a drive prefix, not ending with whitespace",
    )
    .build()
}

/// A file name without folders (a private file's name).
pub fn file_component() -> Object {
    string(
        FILE_COMPONENT_PATTERN,
        1,
        MAX_NAME_BYTES,
        "a file name: at most 255 bytes (UTF-8), no '/', '\\' or control \
         character, not starting with '.', whitespace or a drive prefix, \
         not ending with whitespace",
    )
    .build()
}

/// A file id or an exact file name (every file id is also a valid
/// name: the id is tried first).
pub fn file_ref() -> Object {
    string(
        FILE_NAME_PATTERN,
        1,
        MAX_PATH_BYTES,
        "a file id (64 lowercase hex characters) or an exact share name \
         (a relative path of at most 1024 bytes in UTF-8)",
    )
    .build()
}

/// A UUID, hyphenated (peer and job ids).
pub fn uuid() -> Object {
    string(UUID_PATTERN, 36, 36, "a UUID, hyphenated")
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .build()
}

/// A search query: at least one character that is not whitespace.
pub fn query() -> Object {
    string(
        QUERY_PATTERN,
        1,
        MAX_QUERY_BYTES,
        "words (letters and digits; anything else separates them), each a \
         prefix of a word of the name: at most 1024 bytes (UTF-8) and 16 \
         distinct words",
    )
    .build()
}

/// `limit` of a search.
pub fn limit() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(0))
        .maximum(Some(super::MAX_SEARCH_LIMIT))
        .description(Some(
            "hits per page (0: the directory's default; it clamps larger \
             ones to its CENTRAL_MAX_PAGE)",
        ))
        .build()
}

/// A search page token: hex of 36 to 36 + 1024 bytes (what the directory
/// decodes; any such token is a position in the hit order), or empty
/// (the first page).
pub fn page_token() -> Object {
    string(
        &format!("^(([0-9a-fA-F]{{2}}){{36,{}}})?$", 36 + MAX_PATH_BYTES),
        0,
        2 * (36 + MAX_PATH_BYTES),
        "`next_page` of the previous answer (empty: the first page)",
    )
    .build()
}

/// `replicas` of a pin.
pub fn replicas() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(0))
        .maximum(Some(MAX_REPLICAS))
        .description(Some(
            "live copies wanted: 2 or more, or 0 or 1 to stop asking; a \
             directory set to fewer (CENTRAL_MAX_REPLICAS) answers 400 above it",
        ))
        .build()
}
