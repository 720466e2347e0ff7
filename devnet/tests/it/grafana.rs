//! `deploy/grafana/peerdex.json` (issue 15) is a valid dashboard whose
//! queries name only metrics that a real central and a real PServer export
//! (as parsed by the reference Prometheus parser), and that graphs the
//! figures the issue names.

use std::collections::BTreeSet;
use std::path::Path;

use peerdex_testkit::prom;
use peerdex_testkit::{TestCentral, TestPeer};
use serde_json::Value;

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/peerdex.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every query of the dashboard: targets' `expr` and variables' queries.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| queries(x, out)),
        _ => {}
    }
}

/// The `peerdex_*` names a query mentions.
fn names(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = q;
    while let Some(at) = rest.find("peerdex_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_names_an_exported_metric() {
    let central = TestCentral::start_with_metrics(|_| {}).await;
    let peer = TestPeer::start(&central.url, &[], |_| {}).await;
    let mut exported = BTreeSet::new();
    for url in [
        central.metrics_url.clone().unwrap(),
        format!("{}/metrics", peer.api_url),
    ] {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let m = prom::parse(&text);
        exported.extend(m.samples.iter().map(|s| s.name.clone()));
    }
    // Histograms show as their _bucket/_sum/_count series.
    assert!(
        exported.contains("peerdex_central_request_duration_seconds_bucket"),
        "{exported:?}"
    );

    let d = dashboard();
    assert_eq!(d["uid"], "peerdex");
    let panels = d["panels"].as_array().expect("panels");
    let mut all = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let mut qs = Vec::new();
        queries(&p["targets"], &mut qs);
        assert!(!qs.is_empty(), "panel {:?} has no query", p["title"]);
        for q in &qs {
            assert!(
                !names(q).is_empty(),
                "panel {:?}: {q} names no metric",
                p["title"]
            );
        }
    }
    queries(&d, &mut all);
    let mut used = BTreeSet::new();
    for q in &all {
        for n in names(q) {
            assert!(
                exported.contains(&n),
                "the dashboard queries {n}, which nothing exports: {q}"
            );
            used.insert(n);
        }
    }
    // What the issue asks the dashboard to show.
    for n in [
        "peerdex_central_requests_total",
        "peerdex_central_request_duration_seconds_bucket",
        "peerdex_central_peers",
        "peerdex_central_files",
        "peerdex_pserver_bytes_sent_total",
        "peerdex_pserver_bytes_received_total",
        "peerdex_pserver_uploads_active",
        "peerdex_pserver_downloads_active",
        "peerdex_pserver_lease_renewals_total",
        "peerdex_central_refusals_total",
        "peerdex_pserver_upload_slots_refused_total",
        "peerdex_pserver_neighbour_requests_refused_total",
    ] {
        assert!(used.contains(n), "the dashboard does not graph {n}");
    }
    let quantiles: Vec<&String> = all
        .iter()
        .filter(|q| q.contains("histogram_quantile("))
        .collect();
    assert!(
        quantiles.iter().any(|q| q.contains("0.5,"))
            && quantiles.iter().any(|q| q.contains("0.99,")),
        "{quantiles:?}"
    );
    peer.stop().await;
    central.stop().await;
}
