//! The connection to etcd and its retries: connecting to the members,
//! repeating a call another member may answer (with backoff, under one
//! deadline), and what an etcd failure becomes for the directory
//! ([`unavailable`], [`lease_gone`]). Also the calls that are neither a
//! directory write nor part of following: leases, shared secrets, the
//! cluster's revision and compaction.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseGrantOptions, Txn, TxnOp,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Etcd;
use crate::config::ConfigError;
use crate::error::{Error, Result};

/// Per-request deadline towards etcd (a member that does not answer is
/// left for another).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause before a call is repeated; it doubles up to
/// [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// Longest pause between two tries of one call.
const MAX_PAUSE: Duration = Duration::from_millis(800);

/// What went wrong with etcd. Methods of [`Etcd`] that the service calls
/// turn it into the directory's [`Error`] (with the same words): etcd
/// trouble is UNAVAILABLE (retry here or at another central), a fault of
/// ours is internal.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd did not answer, or refused `what`.
    #[error("etcd: {what}: {source}")]
    Unavailable {
        what: &'static str,
        source: etcd_client::Error,
    },
    /// A write is committed but this central's watch has not applied it.
    #[error(
        "etcd: the write is committed (revision {revision}) but this central's watch has not caught up within {} s; retry the call here or at another central",
        waited.as_secs()
    )]
    NotApplied { revision: i64, waited: Duration },
    /// A key read back after a failed create was gone.
    #[error("etcd: {key} vanished while read")]
    Vanished { key: String },
    /// A value could not be encoded.
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl EtcdError {
    /// Whether etcd said the lease is gone (the peer's session ended).
    pub(crate) fn lease_gone(&self) -> bool {
        matches!(self, Self::Unavailable { source, .. } if lease_not_found(source))
    }
}

impl EtcdError {
    /// etcd trouble (retry here or at another central), not a fault of
    /// ours.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::NotApplied { .. })
    }
}

/// `e` as our error: etcd did not answer or refused `what`.
pub(super) fn unavailable(what: &'static str, source: etcd_client::Error) -> EtcdError {
    EtcdError::Unavailable { what, source }
}

/// Whether an error from a method of [`Etcd`] says the lease is gone.
pub(crate) fn lease_gone(e: &Error) -> bool {
    matches!(e, Error::Etcd(x) if x.lease_gone())
}

/// What etcd says of a lease it no longer has.
const LEASE_NOT_FOUND: &str = "lease not found";

/// Whether etcd's own error says the lease is gone (a revoke of a lease
/// that ended already).
pub(super) fn lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains(LEASE_NOT_FOUND)
}

/// Whether etcd refused to grant a lease under an id it already has.
fn lease_exists(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease already exists")
}

/// A call worth repeating at another member: no answer, or no leader.
fn transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

impl Etcd {
    /// Connect to `endpoints` (comma-separated URLs); `pages`: write
    /// inventories in pages (`CENTRAL_ETCD_PAGES`); `lease_ttl`: this
    /// central's lease and its sessions' (`CENTRAL_LEASE_TTL_SECS`).
    pub(crate) async fn connect(
        endpoints: &str,
        prefix: &str,
        pages: bool,
        lease_ttl: Duration,
    ) -> Result<Self> {
        let list: Vec<&str> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            // etcd closes connections that ping more often than its
            // --grpc-keepalive-min-time (5 s by default: "too many pings"),
            // which broke idle watches every few seconds.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let connect = |options| async {
            Client::connect(&list, Some(options))
                .await
                .map_err(|source| ConfigError::EtcdConnect {
                    endpoints: endpoints.to_owned(),
                    source,
                })
        };
        let client = connect(options.clone().with_timeout(REQUEST_TIMEOUT)).await?;
        // Campaigns wait as long as another central leads: no deadline.
        let waiting = connect(options).await?;
        Ok(Self {
            client,
            waiting,
            prefix: prefix.to_owned(),
            pages,
            endpoints: endpoints.to_owned(),
            mirror: std::sync::Mutex::default(),
            applied: watch::Sender::new(0),
            fenced: tokio::sync::Mutex::new(0),
            nonce_lease: tokio::sync::Mutex::new(None),
            lease_ttl,
            own_lease: std::sync::atomic::AtomicI64::new(0),
            kept: std::sync::Mutex::default(),
        })
    }

    /// The directory's key prefix (`CENTRAL_ETCD_PREFIX`).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// A client whose calls may wait as long as they need.
    pub(crate) fn waiting_client(&self) -> Client {
        self.waiting.clone()
    }

    /// Call `f` on a client, again after a short pause when etcd did not
    /// answer (a member died: the next call goes to another). Only for
    /// calls that may be repeated.
    pub(super) async fn retry<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut pause = FIRST_PAUSE;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            match f(self.client.clone()).await {
                Ok(t) => return Ok(t),
                Err(e) if transient(&e) && Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, what, "etcd call failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                Err(e) => return Err(unavailable(what, e)),
            }
        }
    }

    /// A transaction, repeated when etcd did not answer (see
    /// [`Etcd::retry`]).
    pub(super) async fn txn(
        &self,
        what: &'static str,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, EtcdError> {
        self.retry(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// The value at `rest`, created as `make()` when absent (whoever
    /// creates it first wins; every central then reads the same).
    pub(crate) async fn get_or_create(&self, rest: &str, make: Vec<u8>) -> Result<Vec<u8>> {
        let key = self.key(rest);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), make.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = self.txn("create shared secret", txn).await?;
        if r.succeeded() {
            return Ok(make);
        }
        for op in r.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
            {
                return Ok(kv.value().to_vec());
            }
        }
        Err(EtcdError::Vanished { key }.into())
    }

    /// A lease for a new session of `ttl`.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64> {
        Ok(self.grant_as(0, ttl, "grant a lease").await?.id())
    }

    /// Grant this central's lease `id` again, after etcd lost it (the
    /// central was cut off for longer than its TTL): whatever names the
    /// lease stays valid. etcd answering that it has the lease already
    /// counts as done (an earlier try whose answer was lost; ids are 63
    /// random bits, and only their holder asks for its own).
    pub(crate) async fn grant_again(&self, id: i64) -> Result<()> {
        match self
            .grant_as(id, self.lease_ttl, "grant a lease again")
            .await
        {
            Ok(_) => Ok(()),
            Err(EtcdError::Unavailable { source, .. }) if lease_exists(&source) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A lease of `ttl` (whole seconds, at least one) under `id`, or an
    /// id of etcd's choosing when `id` is 0.
    async fn grant_as(
        &self,
        id: i64,
        ttl: Duration,
        what: &'static str,
    ) -> Result<etcd_client::LeaseGrantResponse, EtcdError> {
        let secs = ttl.as_millis().div_ceil(1000).max(1) as i64;
        self.retry(what, |mut c| async move {
            c.lease_grant(secs, Some(LeaseGrantOptions::new().with_id(id)))
                .await
        })
        .await
    }

    /// Renew a lease; false when etcd no longer has it.
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<bool> {
        // Opening the stream sends a keep-alive and reads its answer (an
        // error saying "lease not found" when etcd no longer has it).
        let r = self
            .retry("keep a lease alive", |mut c| async move {
                c.lease_keep_alive(lease).await.map(|_| ())
            })
            .await;
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.lease_gone() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Compact etcd's history up to `revision` (the leader does this).
    pub(crate) async fn compact(&self, revision: i64) -> Result<()> {
        self.client
            .clone()
            .compact(revision, None)
            .await
            .map(|_| ())
            .or_else(|e| {
                if e.to_string().contains("compacted") {
                    Ok(())
                } else {
                    Err(unavailable("compact", e).into())
                }
            })
    }

    /// The current revision of the cluster.
    pub(crate) async fn revision(&self) -> Result<i64> {
        Ok(self.position().await?.0)
    }

    /// The current revision of the cluster and the cluster's id.
    pub(crate) async fn position(&self) -> Result<(i64, u64)> {
        let key = self.key("secrets/nonce");
        let r = self
            .retry("read the revision", |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_keys_only())).await }
            })
            .await?;
        Ok(r.header()
            .map_or((0, 0), |h| (h.revision(), h.cluster_id())))
    }

    /// Whether etcd still keeps its history from `revision` on: false
    /// once it was compacted past it (or when it is ahead of the cluster,
    /// as for a snapshot of an etcd restored from an older backup).
    pub(crate) async fn has_history_from(&self, revision: i64) -> Result<bool> {
        let key = self.key("secrets/nonce");
        let opts = GetOptions::new().with_keys_only().with_revision(revision);
        match self
            .retry("read at a revision", |mut c| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { c.get(key, Some(opts)).await }
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if e.to_string().contains("compacted") || e.to_string().contains("future rev") =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_keep_their_words_and_their_kind_at_the_edge() {
        let gone = || {
            unavailable(
                "keep a lease alive",
                etcd_client::Error::GRpcStatus(tonic::Status::not_found(
                    "etcdserver: requested lease not found",
                )),
            )
        };
        assert!(gone().lease_gone());
        let e = Error::from(gone());
        assert!(
            e.to_string().starts_with("etcd: keep a lease alive: "),
            "{e}"
        );
        assert_eq!(
            tonic::Status::from(Error::from(gone())).code(),
            tonic::Code::Unavailable
        );
        assert!(lease_gone(&e), "{e}");
        let other = unavailable(
            "join",
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("no leader")),
        );
        assert!(!other.lease_gone());
        assert!(!lease_gone(&Error::from(other)));
        let late = Error::from(EtcdError::NotApplied {
            revision: 7,
            waited: Duration::from_secs(10),
        });
        assert_eq!(
            late.to_string(),
            "etcd: the write is committed (revision 7) but this central's watch has not caught up within 10 s; retry the call here or at another central"
        );
        assert!(matches!(&late, Error::Etcd(x) if x.is_unavailable()));
        assert_eq!(tonic::Status::from(late).code(), tonic::Code::Unavailable);
        let lost = Error::from(EtcdError::Vanished {
            key: "/peerdex/secrets/nonce".into(),
        });
        assert_eq!(
            lost.to_string(),
            "etcd: /peerdex/secrets/nonce vanished while read"
        );
        assert!(matches!(&lost, Error::Etcd(x) if !x.is_unavailable()));
    }
}
