//! How other peers reach a PServer (peers behind NAT, issue 25): the
//! `reachability` part of `GET /api/v1/status`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How other peers reach this PServer (peers behind NAT, issue 25).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reachability {
    /// One line for people: "reachable", "behind NAT, shared through
    /// relay <url>", or why the files are not listed.
    pub summary: String,
    /// The directory's dial-back reached `public_url`.
    pub reachable: bool,
    /// `PSERVER_REACHABILITY`: auto, public or firewalled.
    pub mode: String,
    /// Why the directory could not reach us (absent when it could).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The URL our files are listed under (absent: not listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed_url: Option<String>,
    /// The relay assigned to us (behind NAT), and whether our tunnel to
    /// it is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
    #[serde(default)]
    pub relay_attached: bool,
    /// We relay for others (`PSERVER_RELAY`): peers attached now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relaying_for: Option<u32>,
}
