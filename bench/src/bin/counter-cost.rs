//! What one byte-counter increment of a PServer costs (issue 15): the
//! PServer counts bytes sent with one relaxed `fetch_add` per slice handed
//! to actix (at most 64 KiB) and bytes received with one per body chunk
//! from reqwest. This times that operation on this machine, alone and with
//! two threads hammering the same counter (the worst case: every upload
//! and download of one PServer share it), so the overhead per GiB follows
//! from the increments per GiB. A benchmark, not a test.
//!
//! ```text
//! cargo run --release -p peerdex-bench --bin counter-cost
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const N: u64 = 50_000_000;

fn hammer(c: &AtomicU64, n: u64) {
    for i in 0..n {
        c.fetch_add(black_box(i & 0xffff), Ordering::Relaxed);
    }
}

fn main() {
    let c = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    hammer(&c, N);
    let alone = t.elapsed().as_nanos() as f64 / N as f64;
    let threads = 2;
    let t = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || hammer(&c, N))
        })
        .collect();
    for h in hs {
        h.join().expect("thread");
    }
    // Wall time per increment of one thread while the other contends.
    let contended = t.elapsed().as_nanos() as f64 / N as f64;
    println!("| relaxed fetch_add, one thread | {alone:.1} ns |");
    println!("| relaxed fetch_add, {threads} threads on one counter | {contended:.1} ns |");
    for (what, per_gib) in [
        ("bytes sent: one per 64 KiB slice", 16_384.0),
        (
            "bytes received: one per 8 KiB chunk (worst case)",
            131_072.0,
        ),
    ] {
        println!(
            "| {what}: {per_gib:.0} per GiB | {:.2} ms per GiB contended |",
            per_gib * contended / 1e6
        );
    }
}
