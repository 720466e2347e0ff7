//! A token bucket shared by all transfers in one direction
//! (`PSERVER_MAX_UPLOAD_BPS`, `PSERVER_MAX_DOWNLOAD_BPS`).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Bytes per second across every transfer using it; 0 means unlimited.
pub(crate) struct RateLimiter {
    rate: u64,
    /// (available tokens, may go negative as debt; last refill)
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            rate: bytes_per_sec,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    pub fn is_limited(&self) -> bool {
        self.rate > 0
    }

    /// A read size that keeps bursts to about a tenth of a second.
    pub fn piece_size(&self, max: usize) -> usize {
        if self.rate == 0 {
            max
        } else {
            ((self.rate / 10) as usize).clamp(512, max)
        }
    }

    /// Take `n` bytes' worth of tokens, waiting as long as the rate requires.
    pub async fn take(&self, n: usize) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().unwrap();
            let now = Instant::now();
            let burst = self.rate as f64 / 10.0;
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate as f64).min(burst);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate as f64)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_rate() {
        let r = RateLimiter::new(1000);
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            r.take(500).await;
        }
        // 5000 bytes at 1000 B/s from an empty bucket: 5 s (time is paused,
        // so exact up to the timer's millisecond), never a burst above a
        // tenth of a second, never slower than the rate.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(4900) && took <= Duration::from_millis(5010),
            "{took:?}"
        );
    }
}
