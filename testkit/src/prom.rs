//! Prometheus text checked by a real parser: the `prometheus_client` Python
//! package (`prometheus_client.parser.text_string_to_metric_families`), as
//! Prometheus' own client library parses it.
//!
//! The package is installed on first use into a virtualenv cached under
//! `target/prom-test-venv/<hash of python version and requirement>` (or
//! under `$PEERDEX_PROM_TEST_VENV`) by [`crate::pyvenv`]. The first run
//! needs PyPI (pip's own settings such as `PIP_INDEX_URL` apply); without
//! it the test fails and says why: nothing is skipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::pyvenv::{self, Failure};

/// What is installed from PyPI. Changing it changes the venv's folder.
pub const REQUIREMENT: &str = "prometheus_client>=0.20,<1";

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: every family's type, and every sample.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Family name (without `_total`/`_bucket`… suffixes) → type.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Every sample named `name`.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// The virtualenv with `prometheus_client`, created on first use (see
/// [`crate::pyvenv`]: installed in place behind a lock, so test processes
/// running at the same time take turns).
pub fn venv() -> PathBuf {
    let base = std::env::var_os("PEERDEX_PROM_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| pyvenv::target_dir().join("prom-test-venv"));
    match pyvenv::install(&base, &[REQUIREMENT]) {
        Ok(dir) => dir,
        Err(Failure::NoPython { python, detail }) => panic!(
            "the metrics tests need {python} (with the venv module) to run the Prometheus parser ({detail})"
        ),
        Err(Failure::Pip { status, stderr }) => panic!(
            "cannot install the Prometheus parser from PyPI ({status}): is PyPI reachable? \
             The metrics tests need `pip install '{REQUIREMENT}'` to work.\n{stderr}"
        ),
        Err(other) => panic!("{other}"),
    }
}

const PARSE: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
types, samples = {}, []
for fam in text_string_to_metric_families(sys.stdin.read()):
    types[fam.name] = fam.type
    for s in fam.samples:
        v = s.value
        samples.append({"name": s.name, "labels": s.labels,
                        "value": v if math.isfinite(v) else str(v)})
json.dump({"types": types, "samples": samples}, sys.stdout)
"#;

/// Parse `text` with `prometheus_client`; panics with the parser's message
/// if it is not valid Prometheus text.
pub fn parse(text: &str) -> Exposition {
    let python = venv().join("bin/python");
    let mut child = Command::new(&python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    let types = doc["types"]
        .as_object()
        .expect("types")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let samples = doc["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap_or_default().to_owned(),
            labels: s["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            value: match &s["value"] {
                serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                serde_json::Value::String(v) if v == "inf" => f64::INFINITY,
                serde_json::Value::String(v) if v == "-inf" => f64::NEG_INFINITY,
                _ => f64::NAN,
            },
        })
        .collect();
    Exposition { types, samples }
}
