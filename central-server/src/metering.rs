//! Counts and times every call of `peerdex.v1.Directory`, as a tower layer
//! around the gRPC server: one place for every RPC, none in the handlers.
//!
//! A call is counted by its gRPC status code: the `grpc-status` header of
//! a trailers-only answer (every error, including those tonic gives before
//! a handler runs, such as an oversized message), else OK. It is timed
//! until its answer's headers (for a unary call, the whole handler; for
//! the Revocations stream, its opening). Without metrics the layer passes
//! calls through untouched.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::Code;
use tonic::codegen::http::{Request, Response};
use tower_service::Service;

use crate::metrics::{Metrics, Rpc};

/// The path prefix of our service's calls.
const PREFIX: &str = "/peerdex.v1.Directory/";

/// The RPC a request path names, if it is one of ours.
fn rpc_of(path: &str) -> Option<Rpc> {
    Some(match path.strip_prefix(PREFIX)? {
        "Join" => Rpc::Join,
        "Heartbeat" => Rpc::Heartbeat,
        "Publish" => Rpc::Publish,
        "Unpublish" => Rpc::Unpublish,
        "Locate" => Rpc::Locate,
        "Search" => Rpc::Search,
        "Leave" => Rpc::Leave,
        "Challenge" => Rpc::Challenge,
        "NetworkKeys" => Rpc::NetworkKeys,
        "Info" => Rpc::Info,
        "Pin" => Rpc::Pin,
        "Pins" => Rpc::Pins,
        "Revocations" => Rpc::Revocations,
        "Watch" => Rpc::Watch,
        _ => return None,
    })
}

/// The status code of an answer, from its headers.
fn code_of<B>(resp: &Response<B>) -> Code {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

#[derive(Clone)]
pub(crate) struct MeteringLayer(pub Option<Arc<Metrics>>);

impl<S> tower_layer::Layer<S> for MeteringLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Metered<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Metered<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let measure = self
            .metrics
            .clone()
            .and_then(|m| Some((m, rpc_of(req.uri().path())?)));
        let call = self.inner.call(req);
        Box::pin(async move {
            let Some((metrics, rpc)) = measure else {
                return call.await;
            };
            let started = std::time::Instant::now();
            let r = call.await;
            if let Ok(resp) = &r {
                metrics.observe(rpc, code_of(resp), started.elapsed());
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_service_has_a_label_and_others_have_none() {
        let names = [
            "Join",
            "Heartbeat",
            "Publish",
            "Unpublish",
            "Locate",
            "Search",
            "Leave",
            "Challenge",
            "NetworkKeys",
            "Info",
            "Pin",
            "Pins",
            "Revocations",
            "Watch",
        ];
        for n in names {
            assert!(rpc_of(&format!("{PREFIX}{n}")).is_some(), "{n}");
        }
        assert!(rpc_of("/grpc.health.v1.Health/Check").is_none());
        assert!(rpc_of("/peerdex.v1.Directory/Nope").is_none());
    }

    #[test]
    fn the_code_is_read_from_a_trailers_only_answer() {
        let mut r = Response::new(());
        assert_eq!(code_of(&r), Code::Ok);
        r.headers_mut().insert("grpc-status", "8".parse().unwrap());
        assert_eq!(code_of(&r), Code::ResourceExhausted);
    }
}
