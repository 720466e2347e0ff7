//! The peerdex peer daemon.
