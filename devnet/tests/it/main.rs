//! devnet's and the deployment's integration tests, in one binary: one
//! link, and the dependencies instantiated once, not once per suite (CI
//! stays under its 20 minutes cold on 2 cores). Run one suite with
//! `cargo test -p devnet --test it deploy::`.

mod deploy;
mod e2e;
mod grafana;
