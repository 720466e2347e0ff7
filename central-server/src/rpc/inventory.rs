//! Publish and Unpublish: a joined peer changes its inventory, one
//! numbered change (`seq`) at a time. A big inventory arrives this way
//! too: a Join with a first page, then Publish pages; the peer's limit
//! (`CENTRAL_MAX_INVENTORY`) holds on the running total (see
//! `crate::admission`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use peerdex_proto::{FileId, FileName, v1};
use tonic::Request;

use super::{DirectoryService, bearer, parse_peer};
use crate::directory::log_refused;
use crate::error::{Field, Invalid, Result};
use crate::index::Index;
use crate::store::Withdrawal;

impl DirectoryService {
    pub(super) async fn publish(
        &self,
        req: Request<v1::PublishRequest>,
    ) -> Result<v1::PublishResponse> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        self.peer_rate(&peer, &token)?;
        let inventory = self.parse_files(r.files)?;
        let admission = self.inner.admission.clone();
        let over = Arc::new(AtomicU64::new(0));
        let admit = {
            let over = over.clone();
            Box::new(move |ix: &Index| admission.publish_inventory(ix, &peer, inventory, &over))
        };
        let refused = self.dir().publish(peer, token, r.seq, admit).await?;
        log_refused(&peer, &refused);
        Ok(v1::PublishResponse {
            refused,
            over_limit: over.load(Ordering::Relaxed),
        })
    }

    pub(super) async fn unpublish(
        &self,
        req: Request<v1::UnpublishRequest>,
    ) -> Result<v1::UnpublishResponse> {
        let token = bearer(req.metadata())?;
        let r = req.into_inner();
        let peer = parse_peer(&r.peer_id)?;
        self.peer_rate(&peer, &token)?;
        self.check_entries(r.files.len())?;
        let refs: Vec<Withdrawal> = r
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let id: FileId = f.file_id.parse().map_err(|source| Invalid::Parse {
                    field: Field::FileIdAt(i),
                    source,
                })?;
                let name = if f.name.is_empty() {
                    None
                } else {
                    self.check_name_len(&f.name, Field::FileName(i))?;
                    let n: FileName = f.name.parse().map_err(|source| Invalid::Parse {
                        field: Field::FileName(i),
                        source,
                    })?;
                    Some(n.into_string())
                };
                Ok((id, name))
            })
            .collect::<Result<_>>()?;
        self.dir().unpublish(peer, token, r.seq, refs).await?;
        Ok(v1::UnpublishResponse {})
    }
}
