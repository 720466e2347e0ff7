//! The main tokio runtime, as a handle.
//!
//! actix-web cannot serve from the main (multi-threaded) runtime: each HTTP
//! worker is a thread with its own single-threaded runtime, and handlers are
//! not `Send`. A connection opened from a worker would live on that worker's
//! runtime and die with it, so outbound work (gRPC to the central, HTTP to
//! peers, download jobs) runs on the main runtime through [`MainRt`], and
//! the connection pools outlive the HTTP workers.

use std::future::Future;

use crate::error::{Error, Internal, Result};

#[derive(Clone)]
pub(crate) struct MainRt(tokio::runtime::Handle);

impl MainRt {
    /// The runtime this is called from (call from `run`, on the main runtime).
    pub(crate) fn current() -> Self {
        Self(tokio::runtime::Handle::current())
    }

    /// Run `f` on the main runtime and wait for its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.0
            .spawn(f)
            .await
            .map_err(|e| Error::Internal(Internal::Background(e)))?
    }

    /// Start `f` on the main runtime.
    pub(crate) fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(f);
    }
}
