//! What a test reads and writes through each member's JSON gateway
//! (etcd's REST face of its gRPC API), over a plain blocking socket, so
//! that it works with or without a tokio runtime: keys, counts, leases,
//! the database size, compaction, a member's status.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use super::EtcdCluster;

impl EtcdCluster {
    /// Put `key` = `value` through member `i`'s JSON gateway; the revision
    /// of the write.
    pub fn put(&self, i: usize, key: &str, value: &str) -> Result<u64, String> {
        let body = serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())});
        let v = post(self.members[i].client_port, "/v3/kv/put", &body)?;
        json_u64(&v["header"]["revision"]).ok_or_else(|| format!("put answered {v}"))
    }

    /// The value of `key` read through member `i` (a linearizable read).
    pub fn get(&self, i: usize, key: &str) -> Result<Option<String>, String> {
        let body = serde_json::json!({"key": b64(key.as_bytes())});
        let v = post(self.members[i].client_port, "/v3/kv/range", &body)?;
        let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else {
            return Ok(None);
        };
        let raw = unb64(kv["value"].as_str().unwrap_or_default())
            .ok_or_else(|| format!("range answered bad base64: {v}"))?;
        Ok(Some(String::from_utf8_lossy(&raw).into_owned()))
    }

    /// Revoke lease `id` through member `i` (etcd drops every key on it),
    /// as etcd does itself when the lease's holder is silent for its TTL.
    pub fn revoke_lease(&self, i: usize, id: i64) -> Result<(), String> {
        let body = serde_json::json!({"ID": id.to_string()});
        post(self.members[i].client_port, "/v3/lease/revoke", &body).map(|_| ())
    }

    /// The seconds lease `id` has left, read through member `i`; `None`
    /// when etcd has no such lease.
    pub fn lease_ttl(&self, i: usize, id: i64) -> Result<Option<u64>, String> {
        let body = serde_json::json!({"ID": id.to_string()});
        let v = post(self.members[i].client_port, "/v3/lease/timetolive", &body)?;
        // -1 for a lease etcd does not have; the gateway leaves 0 out.
        match v["TTL"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .or_else(|| v["TTL"].as_i64())
        {
            Some(t) if t > 0 => Ok(Some(t as u64)),
            _ => Ok(None),
        }
    }

    /// How many keys start with `prefix`, read through member `i`.
    pub fn count(&self, i: usize, prefix: &str) -> Result<u64, String> {
        let mut end = prefix.as_bytes().to_vec();
        match end.last_mut() {
            Some(b) if *b < 0xff => *b += 1,
            _ => return Err(format!("cannot count under {prefix:?}")),
        }
        let body = serde_json::json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&end),
            "count_only": true,
        });
        let v = post(self.members[i].client_port, "/v3/kv/range", &body)?;
        // The gateway leaves zero fields out.
        Ok(json_u64(&v["count"]).unwrap_or(0))
    }

    /// Member `i`'s database size in bytes, as its endpoint status reports
    /// it (`dbSize`: the file etcd keeps, free pages included).
    pub fn db_size(&self, i: usize) -> Result<u64, String> {
        let v = post(
            self.members[i].client_port,
            "/v3/maintenance/status",
            &serde_json::json!({}),
        )?;
        json_u64(&v["dbSize"]).ok_or_else(|| format!("status answered {v}"))
    }

    /// Compact the cluster's history up to `revision` (through member
    /// `i`): older revisions can no longer be read or watched from.
    pub fn compact(&self, i: usize, revision: u64) -> Result<(), String> {
        let body = serde_json::json!({"revision": revision.to_string(), "physical": true});
        post(self.members[i].client_port, "/v3/kv/compaction", &body).map(|_| ())
    }
}

/// What a member says about itself in `/v3/maintenance/status`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Status {
    pub(super) member_id: u64,
    pub(super) leader: u64,
    pub(super) raft_term: u64,
}

pub(super) fn status(port: u16) -> Option<Status> {
    let v = post(port, "/v3/maintenance/status", &serde_json::json!({})).ok()?;
    Some(Status {
        member_id: json_u64(&v["header"]["member_id"])?,
        leader: json_u64(&v["leader"]).unwrap_or(0),
        raft_term: json_u64(&v["raftTerm"]).unwrap_or(0),
    })
}

/// The gateway writes 64-bit integers as JSON strings.
fn json_u64(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
}

/// POST `body` to `127.0.0.1:port` + `path` over HTTP/1.0 (the server
/// closes the connection after the answer), with 2 s timeouts; the JSON of
/// a 200 answer.
fn post(port: u16, path: &str, body: &Value) -> Result<Value, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, json) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("a truncated HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{path}: {}: {json}",
            head.lines().next().unwrap_or(head)
        ));
    }
    serde_json::from_str(json).map_err(|e| format!("{path}: {e}: {json}"))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (the gateway's encoding of bytes).
fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = B64.iter().position(|b| *b == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(unb64(&b64(&data)).unwrap(), data, "{len}");
        }
        assert_eq!(unb64("Zm9v!"), None);
    }
}
