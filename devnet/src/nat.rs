//! `--nat`: the network on a simulated internet, two of its peers behind
//! NATs (real ones: Linux network namespaces and masquerading `iptables`
//! routers, see `peerdex_testkit::netns`).
//!
//! ```text
//!   internet 10.77.0.0/24:  central    peer3 (public, PSERVER_RELAY=true)
//!                            nat1 ── peer1 (192.168.1.11)
//!                            nat2 ── peer2 (192.168.2.11)
//! ```
//! peer1 and peer2 advertise their private addresses: the central's
//! dial-back fails, so each is shared through peer3's relay; a download
//! by peer1 from peer2 crosses both NATs. Needs root, `ip` and `iptables`;
//! without them devnet says so and stops.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Result, anyhow};
use peerdex_testkit::netns::{Host, Lab};

/// The namespaces of a `--nat` devnet; dropping it deletes them (after
/// devnet stopped what runs inside).
pub struct NatNet {
    pub lab: Lab,
    pub central: Host,
    /// peer1, peer2 (behind NATs), peer3 (public, the relay).
    pub peers: [Host; 3],
}

impl NatNet {
    pub fn build() -> Result<Self> {
        let mut lab = Lab::new().map_err(|e| anyhow!("--nat: {e}"))?;
        let central = lab.public("central").map_err(anyhow::Error::msg)?;
        let peer3 = lab.public("peer3").map_err(anyhow::Error::msg)?;
        let nat1 = lab.nat("nat1").map_err(anyhow::Error::msg)?;
        let peer1 = lab.behind(&nat1, "peer1").map_err(anyhow::Error::msg)?;
        let nat2 = lab.nat("nat2").map_err(anyhow::Error::msg)?;
        let peer2 = lab.behind(&nat2, "peer2").map_err(anyhow::Error::msg)?;
        Ok(Self {
            lab,
            central,
            peers: [peer1, peer2, peer3],
        })
    }

    /// The address a process in `host` binds (port chosen by the OS).
    pub fn bind_addr(host: &Host) -> String {
        format!("{}:0", host.ip())
    }

    /// `program` to run inside `host`'s namespace.
    pub fn command(host: &Host, program: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &host.ns]).arg(program);
        cmd
    }

    /// GET `url` from inside `host` (a control API listens on the
    /// namespace's own loopback): the body of a success, else `None`.
    pub async fn get(&self, host: &Host, url: String) -> Option<String> {
        self.lab
            .within(host, move || async move {
                let r = reqwest::get(url).await.ok()?;
                if !r.status().is_success() {
                    return None;
                }
                r.text().await.ok()
            })
            .await
    }

    /// The lines devnet prints about the topology.
    pub fn describe(&self) -> Vec<String> {
        let ip = |h: &Host| -> Ipv4Addr { h.ip() };
        vec![
            format!(
                "  simulated internet 10.77.0.0/24: central {}, peer3 {} (public, relays for the others)",
                ip(&self.central),
                ip(&self.peers[2])
            ),
            format!(
                "  peer1 {} and peer2 {} each sit behind a NAT of their own: nobody can connect to them",
                ip(&self.peers[0]),
                ip(&self.peers[1])
            ),
            format!(
                "  run a command inside a peer's namespace: sudo ip netns exec {} <command>",
                self.peers[0].ns
            ),
        ]
    }
}
