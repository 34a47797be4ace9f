//! Verification time per platform on the real vectors of ../shared/attestation-vectors.
//!
//! `cargo bench -p kura-attestation` prints one table: median and 95th percentile per platform,
//! and the ratio of the median to the 2 ms goal. Everything a verifier needs (certificates,
//! collateral) is already in memory: that is the "certificates cached" case; each iteration still
//! verifies the whole chain.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kura_attestation::{Evidence, VerifyOptions, verifier_for};
use kura_contract::Platform;

const GOAL: Duration = Duration::from_millis(2);

fn read(path: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/attestation-vectors");
    std::fs::read(dir.join(path))
        .unwrap_or_else(|e| panic!("{path}: {e} (../shared must sit beside the project)"))
}

fn at(t: &str) -> Option<time::OffsetDateTime> {
    Some(time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap())
}

struct Case {
    name: &'static str,
    platform: Platform,
    evidence: Vec<u8>,
    options: VerifyOptions,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "sev-snp (Milan VCEK)",
            platform: Platform::SevSnp,
            evidence: read("sev-snp/virtee-sev/report_milan.hex"),
            options: VerifyOptions {
                certs: vec![
                    read("sev-snp/virtee-sev/vcek_milan.der"),
                    read("sev-snp/virtee-sev/cert_chain_milan"),
                ],
                ..Default::default()
            },
        },
        Case {
            name: "tdx (DCAP v4)",
            platform: Platform::Tdx,
            evidence: read("tdx/dcap-qvl/tdx_quote"),
            options: VerifyOptions {
                at: at("2025-06-19T11:16:00Z"),
                collateral: Some(read("tdx/dcap-qvl/tdx_quote_collateral.json")),
                ..Default::default()
            },
        },
        Case {
            name: "sgx (DCAP v3)",
            platform: Platform::Sgx,
            evidence: read("sgx/dcap-qvl/sgx_quote"),
            options: VerifyOptions {
                at: at("2025-06-19T11:56:00Z"),
                collateral: Some(read("sgx/dcap-qvl/sgx_quote_collateral.json")),
                ..Default::default()
            },
        },
        Case {
            name: "nitro (COSE, 4-cert chain)",
            platform: Platform::Nitro,
            evidence: read("nitro/evervault/beta_valid-attestation-doc-bytes"),
            options: VerifyOptions {
                at: at("2022-10-13T08:58:03Z"),
                ..Default::default()
            },
        },
    ]
}

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
