//! The Watch stream (wanted files): opened at the central we use, moving
//! to the next one of the list when it does not answer, as every call
//! does. What to watch and what to do with the events is `crate::wants`'.

use peerdex_proto::v1;
use tonic::Code;
use tonic::codec::Streaming;

use super::{CallError, Central};

impl Central {
    /// Open a Watch stream of `req`'s subscriptions (our peer id and
    /// token added), replacing any stream we hold at that central.
    /// Returns the index of the central in the list
    /// with the stream. A refusal of the subscriptions themselves (a
    /// limit, a bad query) is the central's answer, not a reason to move:
    /// it comes back as is.
    pub(crate) async fn open_watch(
        &self,
        mut req: v1::WatchRequest,
    ) -> Result<(usize, Streaming<v1::WatchEvent>), CallError> {
        req.peer_id = self.peer_id.to_string();
        let (at, r) = self
            .call("watch", |mut c| {
                let req = self.authed(req.clone());
                async move {
                    match c.watch(req).await {
                        Err(s)
                            if matches!(
                                s.code(),
                                Code::ResourceExhausted | Code::InvalidArgument
                            ) =>
                        {
                            Ok(Err(CallError::from(s)))
                        }
                        r => r.map(Ok),
                    }
                }
            })
            .await?;
        Ok((at, r?.into_inner()))
    }
}

impl Central {
    /// This peer's id.
    pub(crate) fn peer_id(&self) -> peerdex_proto::PeerId {
        self.peer_id
    }
}
