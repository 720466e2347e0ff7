//! How a run is printed: one Markdown table row per measurement.

use crate::load::Run;

pub(crate) fn row(name: &str, r: &Run) -> String {
    format!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
        r.rps,
        r.p50_us as f64 / 1000.0,
        r.p99_us as f64 / 1000.0,
        r.max_us as f64 / 1000.0,
        r.requests,
        r.errors
    )
}
