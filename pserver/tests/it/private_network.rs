//! A private network end to end, over TLS: only PServers with the join
//! secret get in; every request to a peer API needs a credential of the
//! network, and every forged, expired, foreign or revoked one is refused
//! with a 401 that says which.

#[allow(unused_imports)] // each suite uses part of the shared helpers
use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use peerdex_proto::network::{Credential, audience, kid};
use peerdex_proto::rest::JobState;
use peerdex_testkit::tls::TestCa;
use reqwest::StatusCode;

const SECRET: &str = "correct-horse-battery-staple";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A credential signed with `key` (header `kid` = `kid_of`'s key id).
fn sign(
    key: &ed25519_dalek::SigningKey,
    kid_of: &ed25519_dalek::SigningKey,
    c: &Credential,
) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid(&kid_of.verifying_key().to_bytes()));
    jsonwebtoken::encode(
        &header,
        c,
        &jsonwebtoken::EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_network_over_tls() {
    let ca = TestCa::new("private");
    let central_leaf = ca.leaf("central");
    let central_tls = ca.central_tls(&central_leaf);
    let central = TestCentral::start_with(move |c| {
        c.tls = Some(central_tls);
        c.join_secret = Some(SECRET.into());
        c.lease_ttl = Duration::from_secs(6);
        c.heartbeat_interval = Duration::from_secs(1);
    })
    .await;
    assert!(central.url.starts_with("https://"));
    let member = |name: &str, secret: Option<&str>| {
        let tweak = ca.peer_tweak(&ca.leaf(name));
        let secret = secret.map(str::to_owned);
        move |c: &mut pserver::Config| {
            tweak(c);
            c.link.join_secret = secret;
        }
    };
    let a = TestPeer::start(&central.url, &[], member("a", Some(SECRET))).await;
    a.wait_joined().await;
    let b = TestPeer::start(&central.url, &[&a.peer_url], member("b", Some(SECRET))).await;
    b.wait_joined().await;
    assert!(a.peer_url.starts_with("https://"));

    // The shape: upload on a, find and download on b, over TLS, with
    // credentials on every hop.
    let bytes = test_bytes(3 << 20, 14);
    let info = upload_ok(&a, "members-only.bin", bytes.clone()).await;
    wait_holders_exactly(&b, "members", &info.file_id, 1).await;
    let job = start_job(&b, &info.file_id).await;
    let end = finish(&b, &job.job_id, Duration::from_secs(60)).await;
    assert_eq!(end.state, JobState::Done, "{end:#?}");
    assert_eq!(
        std::fs::read(b.path_in_share("members-only.bin")).unwrap(),
        bytes
    );

    // Outsiders: no secret, a wrong one. Their Joins are refused and their
    // status says why.
    for (name, secret, why) in [
        ("c", None, "private network"),
        (
            "d",
            Some("a-wrong-secret-of-some-length"),
            "wrong join secret",
        ),
    ] {
        let p = TestPeer::start(&central.url, &[], member(name, secret)).await;
        let e = wait_for(
            "the join to be refused",
            Duration::from_secs(20),
            || async { p.status().await.lease_error },
        )
        .await;
        assert!(e.contains(why), "{why:?} not in {e:?}");
        assert_eq!(p.status().await.lease_age_secs, None);
        p.stop().await;
    }

    // The peer API asks for a credential; what is wrong with each is said.
    // A client that trusts the network's CA (and sends no credential).
    let http = a.http.clone();
    let url = format!("{}/peer/v1/files/{}/manifest", a.peer_url, info.file_id);
    let network_key = ed25519_dalek::SigningKey::from_pkcs8_pem(
        &std::fs::read_to_string(central.data_dir.join("network.key")).unwrap(),
    )
    .unwrap();
    let b_id = b.status().await.peer_id;
    let good = Credential {
        sub: b_id.clone(),
        aud: audience(SECRET),
        iat: now(),
        exp: now() + 60,
    };
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let valid = sign(&network_key, &network_key, &good);
    let mut tampered = valid.clone().into_bytes();
    let i = tampered.len() - 12;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "private network"),
        (
            Some(sign(
                &network_key,
                &network_key,
                &Credential {
                    iat: now() - 600,
                    exp: now() - 300,
                    ..good.clone()
                },
            )),
            "expired",
        ),
        (Some(String::from_utf8(tampered).unwrap()), "signature"),
        (
            Some(format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                valid.split('.').nth(1).unwrap()
            )),
            "alg: none",
        ),
        // Another network's directory: its own key (and key id).
        (Some(sign(&stranger, &stranger, &good)), "does not use"),
        // Our directory's key id, another key.
        (Some(sign(&stranger, &network_key, &good)), "signature"),
        (
            Some(sign(
                &network_key,
                &network_key,
                &Credential {
                    aud: audience("another-network-secret"),
                    ..good.clone()
                },
            )),
            "another network",
        ),
    ];
    for (token, why) in cases {
        let mut r = http.get(&url);
        if let Some(t) = &token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {text}");
        assert!(text.contains(why), "{why:?} not in {text}");
    }
    let resp = http.get(&url).bearer_auth(&valid).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A peer that leaves: its credentials stop working at once (well
    // before they expire), everywhere, once the directory tells.
    let b_root = b.stop().await;
    wait_for(
        "a to learn that b left",
        Duration::from_secs(20),
        || async {
            let resp = http.get(&url).bearer_auth(&valid).send().await.unwrap();
            (resp.status() == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;
    let text = http
        .get(&url)
        .bearer_auth(&valid)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("left the network"), "{text}");
    // It comes back: a new credential, accepted again.
    let b = TestPeer::start_in(
        b_root,
        &central.url,
        &[&a.peer_url],
        member("b2", Some(SECRET)),
    )
    .await;
    b.wait_joined().await;
    let fresh = sign(
        &network_key,
        &network_key,
        &Credential {
            iat: now() + 1,
            ..good
        },
    );
    let resp = http.get(&url).bearer_auth(&fresh).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
