//! The PServer's integration tests, in one binary: real PServers (in this
//! process, or `pserver` child processes), real centrals, real sockets.
//! One binary links and instantiates the dependencies once, not once per
//! suite (CI stays under its 20 minutes cold on 2 cores). Run one suite
//! with `cargo test -p pserver --test it replication::`.

mod common;

mod auth;
mod daemon;
mod disk_space;
mod failover;
mod ha;
mod http_semantics;
mod islands;
mod library;
mod metrics;
mod names;
mod nat;
mod neighbour_limits;
mod openapi;
mod private;
mod private_network;
mod replicas;
mod replication;
mod revocation;
mod settings;
mod slow_readers;
mod swarm;
mod tls;
mod trust;
mod verify;
mod wants;
mod webui;
