//! The peerdex central directory.
