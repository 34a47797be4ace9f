//! Verification time per platform on the real vectors of ../shared/attestation-vectors.
//!
//! `cargo bench -p kura-attestation` prints one table: median and 95th percentile per platform,
//! and the ratio of the median to the 2 ms goal. Everything a verifier needs (certificates,
//! collateral) is already in memory: that is the "certificates cached" case; each iteration still
//! verifies the whole chain.

use std::time::{Duration, Instant};

use kura_attestation::{Evidence, verifier_for};

const GOAL: Duration = Duration::from_millis(2);

mod vectors;
use vectors::cases;

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
        let verifier = verifier_for(case.platform, &case.options).unwrap();
        let evidence = Evidence::new(case.platform, case.evidence);
        verifier.verify(&evidence).expect("the vector verifies");
        let mut times: Vec<Duration> = (0..iterations)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(verifier.verify(std::hint::black_box(&evidence)).unwrap());
                start.elapsed()
            })
            .collect();
        times.sort();
        let median = times[times.len() / 2];
        let p95 = times[times.len() * 95 / 100];
        println!(
            "{:<28} {:>10.3}ms {:>10.3}ms {:>13.2}x",
            case.name,
            median.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3,
            median.as_secs_f64() / GOAL.as_secs_f64()
        );
    }
}
