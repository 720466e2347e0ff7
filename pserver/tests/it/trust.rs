//! Claims the directory does not believe (issue 29), over real PServers
//! and a real central: a rogue's fake replica never counts, never makes
//! the planner drop an honest copy, and loses its claim after failed
//! audits; rogues that claim a file before any volunteer fetched it do not
//! stop replication; pins are limited per source address and the replica
//! space is shared fairly; a pin no volunteer has room for says so; a pin
//! ends with its owner (plus CENTRAL_PIN_ORPHAN_DAYS).
//!
//! The rogues are raw gRPC clients (one signed Join each), as an attacker
//! with the release binaries' protocol would be.

use crate::common;
use crate::replicas::{located, pin, pins, volunteer as peer};

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use peerdex_proto::PeerId;
use peerdex_proto::v1;
use peerdex_proto::v1::directory_client::DirectoryClient;
use peerdex_testkit::DeadUrl;
use peerdex_testkit::grpc::{authed, peer_key, signed_join};
use tonic::transport::{Channel, Endpoint};

const T: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// Quick leases, planner and grace; failed audits retried after 300 ms
/// per failure in a row.
async fn central_with(tweak: impl FnOnce(&mut peerdex_testkit::central::Settings)) -> TestCentral {
    TestCentral::start_with(|c| {
        c.lease_ttl = Duration::from_secs(3);
        c.heartbeat_interval = Duration::from_secs(1);
        c.replica_grace = Duration::from_secs(1);
        c.audit_retry = Duration::from_millis(300);
        tweak(c);
    })
    .await
}

/// A rogue: a raw client from `source`, joined under `id` at a URL where
/// nothing answers, claiming `files`; it heartbeats until dropped.
struct Rogue {
    id: PeerId,
    url: DeadUrl,
    token: String,
    client: DirectoryClient<Channel>,
    beat: tokio::task::JoinHandle<()>,
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

async fn rogue(
    central: &TestCentral,
    id: PeerId,
    source: IpAddr,
    files: Vec<v1::SharedFile>,
) -> Rogue {
    let ch = Endpoint::from_shared(central.url.clone())
        .unwrap()
        .local_address(Some(source))
        .connect()
        .await
        .unwrap();
    let mut client = DirectoryClient::new(ch);
    let url = DeadUrl::new();
    let req = v1::JoinRequest {
        peer_id: id.to_string(),
        peer_url: url.url.clone(),
        files,
        ..Default::default()
    };
    let r = signed_join(&mut client, &peer_key(&id, 0), req)
        .await
        .unwrap()
        .into_inner();
    let token = r.session_token;
    let mut c = client.clone();
    let t = token.clone();
    let beat = tokio::spawn(async move {
        loop {
            let _ = c
                .heartbeat(authed(
                    v1::HeartbeatRequest {
                        peer_id: id.to_string(),
                        ..Default::default()
                    },
                    &t,
                ))
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Rogue {
        id,
        url,
        token,
        client,
        beat,
    }
}

/// A peer id that sorts after every random one (the planner used to drop
/// replicas in peer-id order, so an honest copy went first).
fn last_id(n: u8) -> PeerId {
    format!("ffffffff-ffff-4fff-bfff-ffffffffff{n:02x}")
        .parse()
        .unwrap()
}

fn replica_claim(id: &str, size: u64, name: &str) -> v1::SharedFile {
    v1::SharedFile {
        file_id: id.to_owned(),
        size,
        name: name.into(),
        replica: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_replica_never_counts_never_drops_an_honest_copy_and_loses_its_claim() {
    let central = central_with(|_| {}).await;
    let owner = peer(&central, 0).await;
    let v1 = peer(&central, 64 * MIB).await;
    let v2 = peer(&central, 64 * MIB).await;
    let bytes = test_bytes(2 * MIB as usize + 99, 29);
    let id = upload_ok(&owner, "precious.bin", bytes.clone())
        .await
        .file_id;
    pin(&owner, &id, 3).await;
    wait_for("3 proven copies", T, || async {
        let (h, r) = located(&central, &id).await;
        (h.len() == 3 && r.proven == 3 && r.state == "ok").then_some(())
    })
    .await;

    // The rogue claims a replica it has none of.
    let r = rogue(
        &central,
        last_id(1),
        "127.0.0.1".parse().unwrap(),
        vec![replica_claim(&id, bytes.len() as u64, "precious.bin")],
    )
    .await;
    let honest = [(v1.peer_url.clone(), true), (v2.peer_url.clone(), true)];
    // Until its claim is dropped (three failed audits), it never counts,
    // and both honest replicas stay, past the grace period.
    let seen = std::sync::atomic::AtomicBool::new(false);
    wait_for("the rogue's claim to be dropped", T, || {
        let (central, id, honest, rogue_url) = (&central, &id, &honest, r.url.url.clone());
        let seen = &seen;
        async move {
            use std::sync::atomic::Ordering::Relaxed;
            let (h, rep) = located(central, id).await;
            for x in honest {
                assert!(h.contains(x), "an honest replica was dropped: {h:?}");
            }
            assert_eq!(rep.proven, 3, "{rep:?} {h:?}");
            assert_eq!(rep.state, "ok");
            let claims = h.iter().any(|(u, _)| *u == rogue_url);
            if claims {
                seen.store(true, Relaxed);
                assert_eq!(rep.live, 4, "{h:?}");
            }
            (seen.load(Relaxed) && !claims).then_some(())
        }
    })
    .await;
    // The honest volunteers still hold and serve their copies.
    for v in [&v1, &v2] {
        let s = v.status().await;
        assert_eq!(s.replicas.len(), 1, "{s:?}");
        assert_eq!(s.replicas[0].file_id, id);
    }
    let (h, rep) = located(&central, &id).await;
    assert_eq!((h.len(), rep.live, rep.proven), (3, 3, 3), "{h:?}");
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogues_that_claim_a_file_before_any_fetch_do_not_stop_replication() {
    let central = central_with(|_| {}).await;
    let owner = peer(&central, 0).await;
    let vols = [
        peer(&central, 64 * MIB).await,
        peer(&central, 64 * MIB).await,
    ];
    let bytes = test_bytes(MIB as usize + 5, 30);
    let id = upload_ok(&owner, "album.flac", bytes.clone()).await.file_id;
    let size = bytes.len() as u64;
    let _r1 = rogue(
        &central,
        last_id(1),
        "127.0.0.1".parse().unwrap(),
        vec![replica_claim(&id, size, "album.flac")],
    )
    .await;
    let _r2 = rogue(
        &central,
        last_id(2),
        "127.0.0.1".parse().unwrap(),
        vec![replica_claim(&id, size, "album.flac")],
    )
    .await;
    let p = pin(&owner, &id, 3).await;
    assert!(p.replication.proven <= 1, "rogues' claims counted: {p:?}");
    // Both honest volunteers are asked and fetch: 3 proven copies.
    wait_for("both volunteers to hold a replica", T, || async {
        let mut n = 0;
        for v in &vols {
            n += v.status().await.replicas.len();
        }
        let (_, rep) = located(&central, &id).await;
        (n == 2 && rep.proven == 3 && rep.state == "ok").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_are_limited_per_address_and_a_sybil_cannot_starve_an_honest_pin() {
    let central = central_with(|c| {
        c.limits.max_pins_per_addr = 2;
    })
    .await;
    let owner = peer(&central, 0).await;
    // Room for four copies of 2 MiB, with a little to spare.
    let quota = 4 * MIB + MIB / 2;
    let vols = [peer(&central, quota).await, peer(&central, quota).await];
    let mut ids = Vec::new();
    for (i, name) in ["a.bin", "b.bin", "c.bin", "honest.bin"].iter().enumerate() {
        let b = test_bytes(2 * MIB as usize, 40 + i as u64);
        ids.push(upload_ok(&owner, name, b).await.file_id);
    }
    // Two identities from one other address: the address's limit holds
    // across keys.
    let sybil: IpAddr = "127.0.0.2".parse().unwrap();
    let mut k1 = rogue(&central, last_id(1), sybil, vec![]).await;
    let mut k2 = rogue(&central, last_id(2), sybil, vec![]).await;
    let pin_as = |r: &mut Rogue, file: &str| {
        let req = authed(
            v1::PinRequest {
                peer_id: r.id.to_string(),
                file_id: file.to_owned(),
                replicas: 3,
            },
            &r.token,
        );
        let mut c = r.client.clone();
        async move { c.pin(req).await }
    };
    pin_as(&mut k1, &ids[0]).await.unwrap();
    pin_as(&mut k2, &ids[1]).await.unwrap();
    let e = pin_as(&mut k2, &ids[2]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("CENTRAL_MAX_PINS_PER_ADDR"), "{e:?}");
    // The Sybil's two pins take all four copies' room.
    wait_for("the sybil's pins placed", T, || async {
        let mut ok = true;
        for id in &ids[..2] {
            ok &= located(&central, id).await.1.proven == 3;
        }
        ok.then_some(())
    })
    .await;
    // An honest pin from another address still gets its copy: the Sybil
    // is over its fair share of the replica space and gives some back.
    pin(&owner, &ids[3], 2).await;
    wait_for("the honest pin placed", T, || async {
        let l = pins(&owner).await;
        let p = l.pins.iter().find(|p| p.file_id == ids[3])?;
        (p.replication.proven >= 2 && p.replication.state == "ok" && p.waiting.is_empty())
            .then_some(())
    })
    .await;
    let mut held = 0;
    for v in &vols {
        held += v.status().await.replica_used_bytes;
        assert!(v.status().await.replica_used_bytes <= quota);
    }
    assert!(held <= 2 * quota);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_no_volunteer_has_room_for_says_so() {
    let central = TestCentral::start_with_metrics(|c| {
        c.lease_ttl = Duration::from_secs(3);
        c.heartbeat_interval = Duration::from_secs(1);
    })
    .await;
    let owner = peer(&central, 0).await;
    let _small = peer(&central, MIB).await;
    let size = 2 * MIB;
    let id = upload_ok(&owner, "big.iso", test_bytes(size as usize, 50))
        .await
        .file_id;
    pin(&owner, &id, 2).await;
    let want = format!("no volunteer has room: {size} bytes wanted, {MIB} free in total");
    wait_for("the pin to say why it waits", T, || async {
        let l = pins(&owner).await;
        let p = l.pins.first()?;
        (p.replication.state == "under" && p.waiting == want).then_some(())
    })
    .await;
    let url = central.metrics_url.clone().unwrap();
    wait_for("the unplaced metric", T, || async {
        let m = reqwest::get(&url).await.ok()?.text().await.ok()?;
        m.contains("peerdex_central_pinned_files_unplaced 1\n")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_ends_after_its_owner_is_gone_for_the_orphan_period() {
    let central = central_with(|c| c.pin_orphan = Duration::ZERO).await;
    let owner = peer(&central, 0).await;
    let vols = [
        peer(&central, 64 * MIB).await,
        peer(&central, 64 * MIB).await,
    ];
    let id = upload_ok(&owner, "ghost.bin", test_bytes(MIB as usize, 60))
        .await
        .file_id;
    pin(&owner, &id, 3).await;
    wait_for("3 proven copies", T, || async {
        (located(&central, &id).await.1.proven == 3).then_some(())
    })
    .await;
    // The owner leaves: with no orphan period, its pin ends with its
    // lease, and the replicas are released down to one copy.
    owner.stop().await;
    wait_for("the pin to end and a replica to go", T, || async {
        let (h, r) = located(&central, &id).await;
        let mut held = 0;
        for v in &vols {
            held += v.status().await.replicas.len();
        }
        (r.wanted == 0 && h.len() == 1 && held == 1).then_some(())
    })
    .await;
}
