//! Verification time per platform on the real vectors of `testdata/` (see its README).
//!
//! `cargo bench -p kura-attestation` prints one table: median and 95th percentile per platform,
//! and the ratio of the median to the 2 ms goal. Everything a verifier needs (certificates,
//! collateral) is already in memory: that is the "certificates cached" case; each iteration still
//! verifies the whole chain.

use std::time::Duration;

const GOAL: Duration = Duration::from_millis(2);

mod vectors;
use vectors::{cases, time_verification};

fn main() {
    let iterations: usize = std::env::var("KURA_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!("attestation verification, {iterations} iterations each, goal {GOAL:?}");
    println!(
        "{:<28} {:>12} {:>12} {:>14}",
        "platform", "median", "p95", "median / goal"
    );
    for case in cases() {
        let name = case.name;
        let times = time_verification(case, iterations);
        let median = times[times.len() / 2];
        let p95 = times[times.len() * 95 / 100];
        println!(
            "{:<28} {:>10.3}ms {:>10.3}ms {:>13.2}x",
            name,
            median.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3,
            median.as_secs_f64() / GOAL.as_secs_f64()
        );
    }
}
