//! Calls that ask the directory: Locate and Search (for the neighbour
//! role), this peer's pins, and the network's keys.

use peerdex_proto::FileId;
use peerdex_proto::v1::{self, locate_request::Target};

use super::{CallError, Central};

impl Central {
    /// Fetch the keys that sign this network's credentials.
    pub async fn refresh_keys(&self) -> Result<(), CallError> {
        let (_, r) = self
            .call("network keys", |mut c| async move {
                c.network_keys(v1::NetworkKeysRequest {}).await
            })
            .await?;
        self.network.set_keys(&r.into_inner().keys);
        Ok(())
    }

    /// Ask the directory to keep `replicas` live copies of `id` (0 or 1:
    /// stop asking). Our pin: it counts against our limits.
    pub async fn pin(&self, id: FileId, replicas: u32) -> Result<v1::PinStatus, CallError> {
        let (_, r) = self
            .call("pin", |mut c| async move {
                let req = self.authed(v1::PinRequest {
                    peer_id: self.peer_id.to_string(),
                    file_id: id.to_hex(),
                    replicas,
                });
                c.pin(req).await
            })
            .await?;
        r.into_inner()
            .pin
            .ok_or_else(|| CallError::internal("the central answered a pin without its status"))
    }

    /// The pins this peer set, with their state.
    pub async fn pins(&self) -> Result<Vec<v1::PinStatus>, CallError> {
        let (_, r) = self
            .call("pins", |mut c| async move {
                let req = self.authed(v1::PinsRequest {
                    peer_id: self.peer_id.to_string(),
                });
                c.pins(req).await
            })
            .await?;
        Ok(r.into_inner().pins)
    }

    pub async fn locate(&self, target: Target) -> Result<Vec<v1::LocatedFile>, CallError> {
        let (_, r) = self
            .call("locate", |mut c| {
                let target = target.clone();
                async move {
                    c.locate(v1::LocateRequest {
                        target: Some(target),
                        max_holders: 0,
                    })
                    .await
                }
            })
            .await?;
        Ok(r.into_inner().files)
    }

    pub async fn search(
        &self,
        query: &str,
        limit: u32,
        page_token: &str,
    ) -> Result<v1::SearchResponse, CallError> {
        let (_, r) = self
            .call("search", |mut c| async move {
                c.search(v1::SearchRequest {
                    query: query.to_owned(),
                    limit,
                    page_token: page_token.to_owned(),
                })
                .await
            })
            .await?;
        Ok(r.into_inner())
    }
}
