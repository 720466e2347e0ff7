//! Token buckets keyed by source address or peer, shared by the directory's
//! rate limits (`CENTRAL_JOIN_RATE`, `CENTRAL_PUBLISH_RATE`,
//! `CENTRAL_SEARCH_RATE`) and the PServer's neighbour role
//! (`PSERVER_NEIGHBOUR_RATE`).
//!
//! A bucket holds up to `burst` tokens (10 seconds' worth of the rate) and
//! refills continuously; a call takes one token or is refused with the time
//! until the next one. A bucket that has refilled completely is the same as
//! a new one, so it is dropped: the table only holds keys that called
//! within the last 10 seconds, and never more than [`MAX_KEYS`] of them.
//! Beyond that (a flood from very many addresses at once), the keys not in
//! the table share one overflow bucket, so their total rate stays bounded
//! too.
//!
//! A small bucket rather than the `governor` crate: time is passed in (so
//! limits are testable without waiting, and the directory can use tokio's
//! pausable clock), the table bound and the overflow bucket are ours to
//! choose, and it costs no dependency. One `std` mutex, held for a hash
//! lookup. No I/O.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::sync::lock;
use std::time::{Duration, Instant};

/// Most keys a limiter tracks at once.
pub const MAX_KEYS: usize = 65_536;

/// Seconds of the rate a bucket may spend at once.
pub const BURST_SECS: u32 = 10;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Rate limits for one kind of call, per key.
pub struct Limiter<K> {
    /// Tokens per second; 0 disables the limiter.
    rate: f64,
    burst: f64,
    state: Mutex<State<K>>,
}

struct State<K> {
    buckets: HashMap<K, Bucket>,
    overflow: Bucket,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `rate` calls per second per key (0 = unlimited).
    pub fn new(rate: u32) -> Self {
        let burst = f64::from(rate) * f64::from(BURST_SECS);
        Self {
            rate: f64::from(rate),
            burst,
            state: Mutex::new(State {
                buckets: HashMap::new(),
                overflow: Bucket {
                    tokens: burst,
                    at: Instant::now(),
                },
            }),
        }
    }

    /// Take one token for `key`; `Err(wait)` when none is left, with the
    /// time until the next one.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let mut state = lock(&self.state);
        if !state.buckets.contains_key(key) && state.buckets.len() >= MAX_KEYS {
            self.evict_full(&mut state, now);
        }
        let state = &mut *state;
        let bucket = if state.buckets.len() < MAX_KEYS || state.buckets.contains_key(key) {
            state.buckets.entry(key.clone()).or_insert(Bucket {
                tokens: self.burst,
                at: now,
            })
        } else {
            &mut state.overflow
        };
        self.take(bucket, now)
    }

    fn take(&self, b: &mut Bucket, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    /// Drop the buckets that have refilled: they are as good as new.
    fn evict_full(&self, state: &mut State<K>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        state.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
    }

    /// Drop idle buckets (called periodically, so the table shrinks after
    /// a flood even when no new key arrives).
    pub fn purge(&self, now: Instant) {
        let mut state = lock(&self.state);
        self.evict_full(&mut state, now);
        state.buckets.shrink_to_fit();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.state).buckets.len()
    }
}

/// The key of a source address: the address itself for IPv4, its /64 for
/// IPv6 (one host usually holds a whole /64, so per-address limits on
/// IPv6 would be no limit at all).
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Whole seconds to wait, at least 1 (the `retry-after` value).
pub fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let l = Limiter::new(2);
        let now = Instant::now();
        for _ in 0..20 {
            assert!(l.check(&1, now).is_ok());
        }
        let wait = l.check(&1, now).unwrap_err();
        assert_eq!(retry_secs(wait), 1);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert!(l.check(&2, now).is_ok(), "other keys are untouched");
        let later = now + Duration::from_millis(500);
        assert!(l.check(&1, later).is_ok());
        assert!(l.check(&1, later).is_err());
        assert!(Limiter::new(0).check(&1, now).is_ok());
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_idle_keys() {
        let l = Limiter::new(1);
        let now = Instant::now();
        for k in 0..MAX_KEYS as u32 {
            l.check(&k, now).unwrap();
        }
        assert_eq!(l.len(), MAX_KEYS);
        // Beyond the table, new keys share the overflow bucket.
        let extra = MAX_KEYS as u32;
        for k in extra..extra + 10 {
            assert!(l.check(&k, now).is_ok());
        }
        assert!(
            l.check(&(extra + 10), now).is_err(),
            "overflow bucket spent"
        );
        assert_eq!(l.len(), MAX_KEYS);
        // Once refilled, old keys are dropped to make room.
        let later = now + Duration::from_secs(11);
        assert!(l.check(&(extra + 11), later).is_ok());
        assert_eq!(l.len(), 1);
        l.purge(later + Duration::from_secs(11));
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn ipv6_addresses_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(addr_key(a), addr_key(b));
        assert_ne!(addr_key(a), addr_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(addr_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
