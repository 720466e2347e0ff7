//! Abuse limits of the peer API, per source address: open connections
//! (`PSERVER_MAX_CONNS_PER_ADDR`) and neighbour-role requests
//! (`PSERVER_NEIGHBOUR_RATE`, token buckets). IPv6 sources count per /64,
//! the block one host usually holds, so rotating addresses gains nothing.
//!
//! The connection count is taken when actix accepts a socket
//! ([`Conn::accept`], from `HttpServer::on_connect`) and given back when the
//! connection's data is dropped, with the connection. A connection over the
//! cap is still read (so it gets an answer, not a reset): its requests are
//! answered 429 with `Retry-After` and the connection is closed.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::dev::Extensions;
// The source a limit counts against: the IPv4 address, or the IPv6 /64.
use peerdex_common::limit::{Limiter, addr_key as source_key, retry_secs};

use crate::error::{Error, Result, Throttled};
use crate::metrics::Metrics;

/// Seconds a client over a limit is told to wait, at least.
const RETRY_AFTER: u64 = 1;

/// Open connections per source; cheap to clone.
#[derive(Clone)]
pub(crate) struct ConnLimit {
    max: u32,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl ConnLimit {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Count one more connection from `ip`; the ticket gives it back on drop.
    fn take(&self, ip: IpAddr) -> Ticket {
        let key = source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        *n += 1;
        Ticket {
            admitted: *n <= self.max,
            key,
            limit: self.clone(),
        }
    }

    /// Connections open from `ip`'s source now.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&source_key(ip)).copied().unwrap_or(0)
    }
}

/// One counted connection.
struct Ticket {
    admitted: bool,
    key: IpAddr,
    limit: ConnLimit,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What the peer API keeps about each connection (its connection data):
/// the count ticket, and a second handle on the socket so a watchdog can
/// close a connection actix no longer polls (see `uploads`).
pub(crate) struct Conn {
    ticket: Option<Ticket>,
    sock: Option<Rc<std::net::TcpStream>>,
}

impl Conn {
    /// `HttpServer::on_connect`: count the connection and keep a handle on
    /// its socket (a duplicated descriptor; no unsafe code). Over TLS the
    /// socket is the one under the TLS stream.
    pub(crate) fn accept(limit: &ConnLimit, io: &dyn std::any::Any, ext: &mut Extensions) {
        type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
        let tcp = match io.downcast_ref::<actix_web::rt::net::TcpStream>() {
            Some(tcp) => tcp,
            None => match io.downcast_ref::<Tls>() {
                Some(tls) => tls.get_ref().0,
                None => return,
            },
        };
        // Small answers (a tunnelled piece, the last bytes of a chunk, a
        // manifest) go out at once: without this, Nagle holds a small
        // write behind the previous one until the client's delayed ACK,
        // 40 ms per answer on a kept-alive connection.
        let _ = tcp.set_nodelay(true);
        let ticket = tcp.peer_addr().ok().map(|a| limit.take(a.ip()));
        let sock = tcp
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| Rc::new(std::net::TcpStream::from(fd)));
        ext.insert(Conn { ticket, sock });
    }

    /// `Err(TooManyRequests)` if this connection is beyond its source's cap.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.ticket {
            Some(t) if !t.admitted => Err(Error::TooManyRequests {
                why: Throttled::Connections {
                    max: t.limit.max,
                    from: t.key,
                },
                retry_after: RETRY_AFTER,
            }),
            _ => Ok(()),
        }
    }

    /// A handle that can close this connection from outside actix.
    pub(crate) fn closer(&self) -> Option<Closer> {
        self.sock.clone().map(Closer)
    }
}

/// Closes one connection: both directions are shut down, so actix's pending
/// write fails and it drops the connection (and the response body with it).
#[derive(Clone)]
pub(crate) struct Closer(Rc<std::net::TcpStream>);

impl Closer {
    pub(crate) fn close(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// Token buckets per source for the neighbour role (the shared
/// [`Limiter`]: burst of ten seconds' worth, bounded table); cheap to clone.
#[derive(Clone)]
pub(crate) struct NeighbourRate {
    per_sec: u32,
    buckets: Arc<Limiter<IpAddr>>,
    metrics: Metrics,
}

impl NeighbourRate {
    pub(crate) fn new(per_sec: u32, metrics: Metrics) -> Self {
        let per_sec = per_sec.max(1);
        Self {
            per_sec,
            buckets: Arc::new(Limiter::new(per_sec)),
            metrics,
        }
    }

    /// Take one request's token for `ip`, or `TooManyRequests` saying when
    /// the next one is due.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<()> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<()> {
        let key = source_key(ip);
        self.buckets.check(&key, now).map_err(|wait| {
            self.metrics.neighbour_refused();
            Error::TooManyRequests {
                why: Throttled::NeighbourRate {
                    from: key,
                    per_sec: self.per_sec,
                },
                retry_after: retry_secs(wait).max(RETRY_AFTER),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connections_beyond_the_cap_are_not_admitted_and_counts_return() {
        let l = ConnLimit::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t1 = l.take(ip);
        let t2 = l.take(ip);
        let t3 = l.take(ip);
        let o = l.take(other);
        assert_eq!(
            (t1.admitted, t2.admitted, t3.admitted, o.admitted),
            (true, true, false, true)
        );
        assert_eq!(l.open(ip), 3);
        drop((t1, t2, t3));
        assert_eq!(l.open(ip), 0);
        assert!(l.open.lock().unwrap().contains_key(&other));
        drop(o);
        assert!(l.open.lock().unwrap().is_empty());
    }

    #[test]
    fn buckets_allow_the_burst_then_the_rate() {
        let r = NeighbourRate::new(5, Metrics::new());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..50 {
            assert!(r.check_at(ip, t0).is_ok(), "request {i} of the burst");
        }
        match r.check_at(ip, t0) {
            Err(Error::TooManyRequests { retry_after, .. }) => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
        // Another source has its own bucket.
        assert!(r.check_at("10.0.0.2".parse().unwrap(), t0).is_ok());
        // One second later: five more, not six.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..5 {
            assert!(r.check_at(ip, t1).is_ok());
        }
        assert!(r.check_at(ip, t1).is_err());
    }
}
