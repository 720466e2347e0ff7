//! Client tokens for the control API: JWTs (EdDSA) that this PServer signs
//! with its own API key (`api.key` in the data folder, 0600) and checks on
//! every request: signature, expiry, audience, issuer, scope.
//!
//! `pserver token create --scope read|write --ttl 24h --name laptop` prints
//! one. `read` may search, list, see status, jobs and file contents (GET and
//! HEAD); `write` may also upload, start and cancel downloads and remove
//! files. Replacing `api.key` (with the PServer stopped) revokes every token
//! issued before.
//!
//! The key is not the peer's identity key (`peer.key`): revoking client
//! tokens must never cost the peer its id.

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use peerdex_proto::network::unix_now;
use serde::{Deserialize, Serialize};

/// File name of the API key in the data folder.
pub const API_KEY_FILE: &str = "api.key";
/// The audience of every client token.
pub const AUDIENCE: &str = "peerdex-control-api";
/// Longest lifetime of a client token.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

/// What a client token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Search, list, status, jobs and file contents: GET and HEAD.
    Read,
    /// Everything `read` may do, plus upload, download, cancel and remove.
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// The claims of a client token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The peer id of the PServer that issued it.
    pub iss: String,
    pub aud: String,
    /// The name given at creation (which device or script holds it).
    pub sub: String,
    pub scope: Scope,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// Checks client tokens against this PServer's API key.
pub struct ClientTokens {
    decoding: DecodingKey,
    validation: Validation,
}

/// Load the API key from `data_dir`, or create it (0600).
pub fn load_key(data_dir: &Path) -> std::io::Result<SigningKey> {
    crate::identity::load_or_create_at(
        &data_dir.join(API_KEY_FILE),
        "remove it (every client token issued so far stops working)",
    )
}

/// Sign a new client token.
pub fn issue(
    key: &SigningKey,
    peer_id: &str,
    scope: Scope,
    ttl: Duration,
    name: &str,
) -> Result<(String, Claims), TokenError> {
    let iat = unix_now();
    let claims = Claims {
        iss: peer_id.to_owned(),
        aud: AUDIENCE.to_owned(),
        sub: name.to_owned(),
        scope,
        iat,
        exp: iat + ttl.as_secs(),
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let der = key.to_pkcs8_der().map_err(TokenError::EncodeKey)?;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_der(der.as_bytes()),
    )
    .map_err(TokenError::Sign)?;
    Ok((token, claims))
}

impl ClientTokens {
    pub fn new(key: &SigningKey, peer_id: &str) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[peer_id]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = 30;
        Self {
            decoding: DecodingKey::from_ed_der(key.verifying_key().as_bytes()),
            validation,
        }
    }

    /// The claims of a valid token, or why it is not one (for a 401).
    pub fn check(&self, token: &str) -> Result<Claims, Refused> {
        // The header first: only EdDSA is ever accepted (`alg: none` and
        // HMAC tokens are refused by name).
        match jsonwebtoken::decode_header(token) {
            Ok(h) if h.alg == Algorithm::EdDSA => {}
            Ok(h) => return Err(Refused::Algorithm(h.alg)),
            Err(_) => return Err(Refused::Malformed),
        }
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Refused::Expired,
                ErrorKind::InvalidSignature => Refused::Signature,
                ErrorKind::InvalidAudience => Refused::Audience,
                ErrorKind::InvalidIssuer => Refused::Issuer,
                ErrorKind::ImmatureSignature => Refused::NotYetValid,
                _ => Refused::Other(e),
            })
    }
}

/// Why a client token is refused (a 401 says it in these words).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("client token signed with {0:?}; this PServer only accepts EdDSA tokens it issued")]
    Algorithm(Algorithm),
    #[error(
        "not a token this PServer issued (malformed, or `alg: none`); create one with `pserver token create`"
    )]
    Malformed,
    #[error("client token expired; create a new one with `pserver token create`")]
    Expired,
    #[error(
        "client token signature does not verify: it was not issued by this PServer (or api.key changed), or it was altered"
    )]
    Signature,
    #[error("client token is not for this API (audience is not {AUDIENCE})")]
    Audience,
    #[error("client token was issued by another PServer")]
    Issuer,
    #[error("client token is not valid yet")]
    NotYetValid,
    #[error("client token refused: {0}")]
    Other(jsonwebtoken::errors::Error),
}

/// Why `pserver token create` cannot issue a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("--name must be 1 to 64 printable characters")]
    Name,
    #[error("cannot create PSERVER_DATA_DIR {}: {source}", dir.display())]
    DataDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the peer id in {}: {source}", dir.display())]
    PeerId {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read or create the API key: {0}")]
    Key(#[source] std::io::Error),
    #[error("cannot encode the API key: {0}")]
    EncodeKey(ed25519_dalek::pkcs8::Error),
    #[error("cannot sign the token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// `pserver token create`: print a new token for the PServer whose data
/// folder is `data_dir`.
pub fn create_command(
    data_dir: &Path,
    scope: Scope,
    ttl: Duration,
    name: &str,
    json: bool,
) -> Result<(), TokenError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(TokenError::Name);
    }
    let dir = || data_dir.to_path_buf();
    std::fs::create_dir_all(data_dir)
        .map_err(|source| TokenError::DataDir { dir: dir(), source })?;
    let peer_id = crate::store::peer_id_in(data_dir)
        .map_err(|source| TokenError::PeerId { dir: dir(), source })?;
    let key = load_key(data_dir).map_err(TokenError::Key)?;
    let (token, claims) = issue(&key, &peer_id.to_string(), scope, ttl, name)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "token": token,
                "scope": scope.as_str(),
                "name": claims.sub,
                "expires_at": claims.exp,
            })
        );
    } else {
        println!("{token}");
        eprintln!(
            "a {} token for {name:?}, valid {} s; use it as `peerdex --token …` or PEERDEX_API_TOKEN",
            scope.as_str(),
            ttl.as_secs()
        );
    }
    Ok(())
}

/// Parse a lifetime such as `90s`, `30m`, `24h`, `7d` (a bare number is
/// seconds), at most [`MAX_TTL`].
pub fn parse_ttl(s: &str) -> Result<Duration, TtlError> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let given = || s.to_owned();
    let n: u64 = digits
        .parse()
        .map_err(|_| TtlError::NotANumber { given: given() })?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(TtlError::Unit { given: given() }),
    };
    let ttl = Duration::from_secs(secs);
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(TtlError::OutOfRange { given: given() });
    }
    Ok(ttl)
}

/// Why a token lifetime (`--ttl`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("{given:?}: expected a number and a unit, such as 30m, 24h or 7d")]
    NotANumber { given: String },
    #[error("{given:?}: the unit is one of s, m, h, d")]
    Unit { given: String },
    #[error("{given:?}: a token lives from 1 s to {} days", MAX_TTL.as_secs() / 86_400)]
    OutOfRange { given: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn tokens_verify_and_every_forgery_is_named() {
        let (k, peer) = (key(1), "peer-a");
        let tokens = ClientTokens::new(&k, peer);
        let (t, c) = issue(&k, peer, Scope::Read, Duration::from_secs(60), "laptop").unwrap();
        assert_eq!(tokens.check(&t).unwrap(), c.clone());
        assert_eq!(c.scope, Scope::Read);

        // Another PServer's key, or another issuer.
        let (other, _) = issue(&key(2), peer, Scope::Write, Duration::from_secs(60), "x").unwrap();
        assert!(matches!(tokens.check(&other), Err(Refused::Signature)));
        let (foreign, _) = issue(&k, "peer-b", Scope::Write, Duration::from_secs(60), "x").unwrap();
        assert!(
            tokens
                .check(&foreign)
                .unwrap_err()
                .to_string()
                .contains("another PServer")
        );

        // Expired (beyond the leeway).
        let mut old = c.clone();
        old.exp = unix_now() - 120;
        let der = k.to_pkcs8_der().unwrap();
        let enc = EncodingKey::from_ed_der(der.as_bytes());
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &old, &enc).unwrap();
        assert!(matches!(tokens.check(&expired), Err(Refused::Expired)));
        assert!(
            tokens
                .check(&expired)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );

        // A tampered signature, and claims signed for read then sent as
        // write (the payload of another token under this signature).
        let parts: Vec<&str> = t.split('.').collect();
        let mut sig = parts[2].as_bytes().to_vec();
        sig[20] = if sig[20] == b'A' { b'B' } else { b'A' };
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            String::from_utf8(sig).unwrap()
        );
        assert!(
            tokens
                .check(&tampered)
                .unwrap_err()
                .to_string()
                .contains("signature")
        );
        let (w, _) = issue(&k, peer, Scope::Write, Duration::from_secs(60), "laptop").unwrap();
        let spliced = format!("{}.{}.{}", parts[0], w.split('.').nth(1).unwrap(), parts[2]);
        assert!(
            tokens
                .check(&spliced)
                .unwrap_err()
                .to_string()
                .contains("signature")
        );

        // `alg: none` ({"alg":"none","typ":"JWT"}), HMAC, garbage.
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(matches!(tokens.check(&none), Err(Refused::Malformed)));
        assert!(
            tokens
                .check(&none)
                .unwrap_err()
                .to_string()
                .contains("alg: none")
        );
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &c,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(tokens.check(&hs).unwrap_err().to_string().contains("HS256"));
        assert!(tokens.check("nonsense").is_err());

        // Another audience.
        let mut aud = c;
        aud.aud = "something-else".into();
        let other_aud = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &aud, &enc).unwrap();
        assert!(
            tokens
                .check(&other_aud)
                .unwrap_err()
                .to_string()
                .contains("audience")
        );
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("400d").is_err());
        assert!(parse_ttl("1w").unwrap_err().to_string().contains("unit"));
        assert_eq!(parse_ttl("1w"), Err(TtlError::Unit { given: "1w".into() }));
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
    }
}
