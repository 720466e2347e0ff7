//! Serving files to other peers: the upload slots (`PSERVER_MAX_UPLOADS`)
//! and the upload rate cap (`PSERVER_MAX_UPLOAD_BPS`), one cheap handle.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::rate::RateLimiter;

/// Concurrent uploads and their shared rate cap. A response body holds a
/// [`Slot`] until it is dropped (sent, or the client went away).
#[derive(Clone)]
pub(crate) struct Uploads {
    slots: Arc<Semaphore>,
    max: u32,
    limit: Arc<RateLimiter>,
}

/// One upload slot, released when dropped.
pub(crate) type Slot = OwnedSemaphorePermit;

impl Uploads {
    pub(crate) fn new(max: u32, max_bps: u64) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
            limit: Arc::new(RateLimiter::new(max_bps)),
        }
    }

    /// A free slot now, or `Busy` (answered 503 with `Retry-After`).
    pub(crate) fn try_acquire(&self) -> Result<Slot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Busy {
                slots: self.max,
                retry_after: 1,
            })
    }

    pub(crate) fn active(&self) -> u32 {
        self.max - self.free()
    }

    pub(crate) fn free(&self) -> u32 {
        self.slots.available_permits() as u32
    }

    pub(crate) fn limit(&self) -> &Arc<RateLimiter> {
        &self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_released_on_drop() {
        let u = Uploads::new(2, 0);
        assert_eq!((u.active(), u.free()), (0, 2));
        let a = u.try_acquire().unwrap();
        let b = u.clone().try_acquire().unwrap();
        assert_eq!((u.active(), u.free()), (2, 0));
        assert!(matches!(
            u.try_acquire(),
            Err(Error::Busy {
                slots: 2,
                retry_after: 1
            })
        ));
        drop(a);
        assert_eq!((u.active(), u.free()), (1, 1));
        drop(b);
        assert_eq!((u.active(), u.free()), (0, 2));
    }
}
