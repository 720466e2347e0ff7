//! The peerdex CLI.
