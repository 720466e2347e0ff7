//! Answers oversized requests with RESOURCE_EXHAUSTED.
//!
//! tonic refuses a request message over `max_decoding_message_size` with
//! OUT_OF_RANGE before any handler runs. gRPC's convention (and our contract)
//! is RESOURCE_EXHAUSTED naming the limit, so this layer rewrites that
//! trailers-only answer. Handlers never answer OUT_OF_RANGE themselves.

use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::Map;
use tonic::codegen::http::{HeaderValue, Request, Response};
use tower_service::Service;

#[derive(Debug, Clone, Copy)]
pub struct OversizeLayer;

impl<S> tower_layer::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize(inner)
    }
}

#[derive(Debug, Clone)]
pub struct Oversize<S>(S);

type Rewrite<B, E> = fn(Result<Response<B>, E>) -> Result<Response<B>, E>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for Oversize<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Map<S::Future, Rewrite<ResB, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        self.0.call(req).map(rewrite as Rewrite<ResB, S::Error>)
    }
}

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

fn rewrite<B, E>(r: Result<Response<B>, E>) -> Result<Response<B>, E> {
    r.map(|mut resp| {
        let h = resp.headers_mut();
        if h.get("grpc-status").is_some_and(|v| v == OUT_OF_RANGE) {
            h.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
            let msg = h
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .map(|m| format!("{m} (max_message_bytes)"))
                .and_then(|m| HeaderValue::from_str(&m).ok());
            if let Some(m) = msg {
                h.insert("grpc-message", m);
            }
        }
        resp
    })
}
