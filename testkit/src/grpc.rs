//! The directory's gRPC API as a raw peer speaks it: file ids, the signed
//! Join, calls that carry the session token. One copy, for the central's
//! suites, the PServer suites that play a peer by hand, and the benchmarks.

use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_proto::v1::{self, SharedFile};
use peerdex_proto::{AUTHORIZATION, PeerId};
use tonic::Request;
use tonic::transport::Channel;

/// A gRPC client of one central directory.
pub type Directory = DirectoryClient<Channel>;

/// A well-formed file id (BLAKE3 hex) made from a number: the same `i`
/// gives the same id in every test and benchmark.
pub fn fid(i: u64) -> String {
    blake3::hash(&i.to_le_bytes()).to_hex().to_string()
}

/// `msg` with the session token a Join returned, as every later call of a
/// peer carries it.
pub fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        AUTHORIZATION,
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    r
}

/// A client of the central at `url`, connected now (no Nagle delay).
pub async fn connect(url: &str) -> Directory {
    let ch = Channel::from_shared(url.to_owned())
        .expect("a URL")
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    DirectoryClient::new(ch)
}

/// The Ed25519 key a test peer joins with: derived from its id, so every
/// call for the same peer proves the same key (a squatter uses another
/// `seed`).
pub fn peer_key(peer: &PeerId, seed: u8) -> ed25519_dalek::SigningKey {
    let mut h = blake3::Hasher::new();
    h.update(b"peerdex test peer key");
    h.update(peer.as_uuid().as_bytes());
    h.update(&[seed]);
    ed25519_dalek::SigningKey::from_bytes(h.finalize().as_bytes())
}

/// Join as a PServer does: ask a Challenge, sign it with `key`, then Join
/// (the request's metadata, such as a session token, is kept).
pub async fn signed_join(
    c: &mut Directory,
    key: &ed25519_dalek::SigningKey,
    req: impl tonic::IntoRequest<v1::JoinRequest>,
) -> Result<tonic::Response<v1::JoinResponse>, tonic::Status> {
    let mut req = req.into_request();
    let nonce = c
        .challenge(v1::ChallengeRequest {
            peer_id: req.get_ref().peer_id.clone(),
        })
        .await?
        .into_inner()
        .nonce;
    peerdex_proto::identity::prove(req.get_mut(), key, nonce);
    c.join(req).await
}

/// A signed Join of `peer` with its own key ([`peer_key`] seed 0),
/// advertising `peer_url` and `files`, answered as is.
pub async fn join_answer(
    c: &mut Directory,
    peer: &PeerId,
    peer_url: &str,
    files: Vec<SharedFile>,
) -> Result<v1::JoinResponse, tonic::Status> {
    let req = v1::JoinRequest {
        peer_id: peer.to_string(),
        peer_url: peer_url.to_owned(),
        files,
        ..Default::default()
    };
    Ok(signed_join(c, &peer_key(peer, 0), req).await?.into_inner())
}

/// [`join_answer`] that must succeed with nothing refused: the session token.
pub async fn join(
    c: &mut Directory,
    peer: &PeerId,
    peer_url: &str,
    files: Vec<SharedFile>,
) -> String {
    let r = join_answer(c, peer, peer_url, files)
        .await
        .unwrap_or_else(|e| panic!("join of {peer}: {e:?}"));
    assert_eq!(r.refused, [], "nothing refused");
    r.session_token
}
