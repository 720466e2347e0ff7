//! Heartbeat and Leave: the lease of a joined peer, and the replica tasks
//! each Heartbeat answer hands out.

use std::sync::atomic::Ordering;

use peerdex_common::sync::lock;
use peerdex_proto::{FileId, PeerId, v1};
use tokio::time::Instant;
use tonic::Request;

use super::{DirectoryService, bearer, parse_peer, secs};
use crate::error::Result;
use crate::etcd::Decline;
use crate::index::Load;
use crate::replication::Action;
use crate::replication::rounds::unix_ms;

/// Most declines one Heartbeat may carry, and the longest reason kept.
const MAX_DECLINED: usize = 64;
const MAX_REASON: usize = 200;

impl DirectoryService {
    pub(super) async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<v1::HeartbeatResponse> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        let load = r.load.map(|l| Load::from(Some(l)));
        let now = Instant::now();
        let drain = &self.inner.drain;
        lock(&drain.heard).insert(peer, now);
        if drain.draining.load(Ordering::Relaxed) {
            lock(&drain.told).insert(peer);
        }
        let live = self
            .dir()
            .heartbeat(&peer, &token, load, || {
                self.admission().heartbeat(&peer, now)
            })
            .await?;
        let rejoin = !live;
        if rejoin {
            tracing::debug!(%peer, "heartbeat from unknown or expired peer: asked to rejoin");
        }
        // A live lease renews the credential; an expired one cannot.
        let (credential, credential_expires) = if rejoin {
            (String::new(), 0)
        } else {
            self.credential(&peer)?
        };
        let replica_tasks = if rejoin {
            Vec::new()
        } else {
            self.replica_tasks(&peer, r.declined).await?
        };
        Ok(v1::HeartbeatResponse {
            rejoin,
            lease_ttl_secs: secs(self.inner.lease_ttl),
            heartbeat_interval_secs: secs(self.inner.heartbeat_interval),
            credential,
            credential_expires,
            replica_tasks,
            revoked: self.revoked(),
            moved: drain.draining.load(Ordering::Relaxed),
            central: self.inner.leadership.name().to_owned(),
            leader: self.inner.leadership.leader(),
            island: self.inner.links.island().to_owned(),
        })
    }

    /// The tasks to hand `peer` in its Heartbeat answer, after recording
    /// what it declined.
    ///
    /// A decline counts only for a FETCH the directory gave this peer and
    /// that is open at that moment: anything else (an id it was never
    /// asked for, a repeat of a decline already kept) is left out, costs
    /// no memory and, on etcd, no write. So the declines kept for a peer
    /// are at most the FETCHes it was given, and in total at most
    /// `MAX_DECLINES_KEPT` (the oldest go first beyond). They are logged
    /// at debug level: a peer cannot make the log grow with them.
    async fn replica_tasks(
        &self,
        peer: &PeerId,
        declined: Vec<v1::Declined>,
    ) -> Result<Vec<v1::ReplicaTask>> {
        let replicas = self.dir().replicas();
        // A Heartbeat renews the lease whatever its declines say: entries
        // beyond the limit, malformed ones and ones for tasks not given
        // are left out.
        if !declined.is_empty() {
            let now_ms = unix_ms();
            let sent = declined.len();
            let mut parsed = Vec::new();
            for d in declined.into_iter().take(MAX_DECLINED) {
                let Ok(file) = d.file_id.parse::<FileId>() else {
                    continue;
                };
                let given = replicas
                    .task(peer, &file)
                    .is_some_and(|t| t.action == Action::Fetch);
                if !given || replicas.declined(peer, &file) {
                    continue;
                }
                // Out of the answers at once; the planner asks another.
                replicas.withdraw(peer, &file);
                let mut reason: String = d.reason.chars().take(MAX_REASON).collect();
                if reason.trim().is_empty() {
                    reason = "no reason given".into();
                }
                tracing::debug!(%peer, %file, reason, "replication: a volunteer declined a fetch");
                parsed.push((
                    file,
                    Decline {
                        reason,
                        at_ms: now_ms,
                    },
                ));
            }
            if parsed.len() < sent {
                tracing::debug!(%peer, sent, taken = parsed.len(),
                    "declined: entries beyond {MAX_DECLINED}, malformed, repeated or for a fetch not given to this peer were left out");
            }
            self.dir().record_declines(peer, parsed).await?;
        }
        Ok(replicas.tasks_of(peer))
    }

    pub(super) async fn leave(&self, req: Request<v1::LeaveRequest>) -> Result<v1::LeaveResponse> {
        let token = bearer(req.metadata())?;
        let peer = parse_peer(&req.into_inner().peer_id)?;
        self.dir().leave(peer, token).await?;
        Ok(v1::LeaveResponse {})
    }
}
