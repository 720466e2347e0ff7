//! A static holder: the two read routes of the peer API (a file's manifest,
//! and its bytes with a single `Range`) over fixed contents, on
//! `127.0.0.1:0`. For the directory's own tests, whose peers are raw gRPC
//! clients: a claim made at this URL holds up to an audit, as a real
//! PServer's would. Tests of PServers use [`crate::TestPeer`] instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use peerdex_proto::range::{RangeReq, parse_range};
use peerdex_proto::tree::{TreeHasher, chunk_size_for};

/// Serves fixed contents until dropped.
pub struct StaticHolder {
    pub addr: SocketAddr,
    /// The file id (BLAKE3, hex) of each content, in the order given.
    pub ids: Vec<String>,
    shared: Files,
    task: tokio::task::JoinHandle<()>,
}

struct Content {
    bytes: Vec<u8>,
    manifest: Vec<u8>,
}

struct Shared {
    files: HashMap<String, Content>,
    /// When each file's manifest was first asked for (a download began).
    asked: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl StaticHolder {
    pub async fn start(contents: Vec<Vec<u8>>) -> Self {
        let mut files = HashMap::new();
        let mut ids = Vec::new();
        for bytes in contents {
            let mut h = TreeHasher::with_chunk_size(chunk_size_for(bytes.len() as u64));
            h.update(&bytes);
            let (id, manifest) = h.finish();
            ids.push(id.to_hex());
            files.insert(
                id.to_hex(),
                Content {
                    bytes,
                    manifest: manifest.encode(),
                },
            );
        }
        let app_state: Files = Arc::new(Shared {
            files,
            asked: Default::default(),
        });
        let app = axum::Router::new()
            .route("/peer/v1/files/{id}/manifest", axum::routing::get(manifest))
            .route("/peer/v1/files/{id}", axum::routing::get(content))
            .with_state(app_state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            ids,
            shared: app_state,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// When the manifest of `id` was first asked for: a downloader began
    /// (benchmarks time it).
    pub fn asked_at(&self, id: &str) -> Option<std::time::Instant> {
        self.shared.asked.lock().unwrap().get(id).copied()
    }
}

impl Drop for StaticHolder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Files = Arc<Shared>;

async fn manifest(State(files): State<Files>, Path(id): Path<String>) -> Response {
    let now = std::time::Instant::now();
    files.asked.lock().unwrap().entry(id.clone()).or_insert(now);
    match files.files.get(&id) {
        Some(c) => c.manifest.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn content(State(files): State<Files>, Path(id): Path<String>, h: HeaderMap) -> Response {
    let Some(c) = files.files.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let size = c.bytes.len() as u64;
    let range = h
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeReq::Full, |v| parse_range(v, size));
    match range {
        RangeReq::Full => c.bytes.clone().into_response(),
        RangeReq::Part(a, b) => (
            StatusCode::PARTIAL_CONTENT,
            [(header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}"))],
            c.bytes[a as usize..=b as usize].to_vec(),
        )
            .into_response(),
        RangeReq::Unsatisfiable => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
    }
}
