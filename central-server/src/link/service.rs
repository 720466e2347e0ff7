//! `peerdex.v1.Link`: what this island answers to linked islands. Every
//! call is checked by [`super::auth`] first; lookups are answered from
//! this island's own index only (one hop: nothing is forwarded again); a
//! private island exports nothing.

use peerdex_proto::v1::{self, link_server};
use tonic::{Request, Response, Status};

use super::Links;
use crate::rpc::DirectoryService;

/// Implements `peerdex.v1.Link`. Cheap to clone.
#[derive(Clone)]
pub struct LinkService {
    links: Links,
    directory: DirectoryService,
}

impl LinkService {
    pub(crate) fn new(links: Links, directory: DirectoryService) -> Self {
        Self { links, directory }
    }

    /// The caller's links, or the refusal; counts what is served. Of
    /// the links whose host the certificate names, those of the island
    /// the caller says it is (several linked centrals may share a
    /// certificate's host, as on one machine).
    fn admit<T>(
        &self,
        req: &Request<T>,
        island: &str,
        rpc: &'static str,
    ) -> Result<Vec<usize>, Status> {
        let mut links = self.links.gate().caller(req).inspect_err(|e| {
            tracing::debug!(error = %e, "link call refused");
        })?;
        let remotes = self.links.remotes();
        let same: Vec<usize> = links
            .iter()
            .copied()
            .filter(|&i| remotes[i].island().as_deref() == Some(island))
            .collect();
        if !same.is_empty() {
            links = same;
        }
        if let Some(m) = self.links.metrics() {
            let label = links
                .first()
                .map(|&i| remotes[i].label())
                .unwrap_or_default();
            m.link_served(&label, rpc);
        }
        Ok(links)
    }

    fn exports(&self) -> Result<(), Status> {
        if self.links.private() {
            return Err(Status::permission_denied(
                "this island is private (CENTRAL_JOIN_SECRET): it exports nothing over links",
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl link_server::Link for LinkService {
    async fn summary(
        &self,
        req: Request<v1::LinkSummaryRequest>,
    ) -> Result<Response<v1::LinkSummaryResponse>, Status> {
        self.admit(&req, &req.get_ref().island.clone(), "summary")?;
        let r = req.into_inner();
        let mut answer = v1::LinkSummaryResponse {
            island: self.links.island().to_owned(),
            central: self.directory.central_name(),
            private: self.links.private(),
            ..Default::default()
        };
        if !answer.private {
            let links = self.links.clone();
            let s = tokio::task::spawn_blocking(move || links.local_summary())
                .await
                .map_err(|e| Status::internal(format!("summary: {e}")))?;
            answer.version.clone_from(&s.version);
            answer.ids = s.ids;
            if r.version == s.version {
                answer.not_modified = true;
            } else {
                answer.filter = s.to_proto();
            }
        }
        Ok(Response::new(answer))
    }

    async fn locate(
        &self,
        req: Request<v1::LinkLocateRequest>,
    ) -> Result<Response<v1::LocateResponse>, Status> {
        self.admit(&req, &req.get_ref().island.clone(), "locate")?;
        self.exports()?;
        let locate = req
            .into_inner()
            .locate
            .ok_or_else(|| Status::invalid_argument("LinkLocateRequest.locate is missing"))?;
        Ok(Response::new(self.directory.locate_here(locate)?))
    }

    async fn search(
        &self,
        req: Request<v1::LinkSearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        self.admit(&req, &req.get_ref().island.clone(), "search")?;
        self.exports()?;
        let search = req
            .into_inner()
            .search
            .ok_or_else(|| Status::invalid_argument("LinkSearchRequest.search is missing"))?;
        Ok(Response::new(self.directory.search_here(search).await?))
    }

    async fn leaving(
        &self,
        req: Request<v1::LinkLeavingRequest>,
    ) -> Result<Response<v1::LinkLeavingResponse>, Status> {
        let links = self.admit(&req, &req.get_ref().island.clone(), "leaving")?;
        self.links.left(&links, req.get_ref().last);
        Ok(Response::new(v1::LinkLeavingResponse {}))
    }
}
