//! The attestation vectors of `kura-attestation/testdata` that the benchmarks verify, with
//! everything a verifier needs already in memory (the "certificates cached" case).
//! Shared by `kura-attestation`'s `verify` bench and `kura-cli`'s `cost` bench.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kura_attestation::{Evidence, VerifyOptions, verifier_for};
use kura_contract::Platform;

fn read(path: &str) -> Vec<u8> {
    // Also included by the cost bench in `benchmarks/`: the testdata is found from either
    // package's folder.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = [
        "../kura-attestation/testdata",
        "../crates/kura-attestation/testdata",
    ]
    .iter()
    .map(|p| manifest.join(p))
    .find(|d| d.is_dir())
    .expect("kura-attestation's testdata");
    std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn at(t: &str) -> Option<time::OffsetDateTime> {
    Some(time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap())
}

pub struct Case {
    pub name: &'static str,
    pub platform: Platform,
    pub evidence: Vec<u8>,
    pub options: VerifyOptions,
}

pub fn cases() -> Vec<Case> {
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

/// Verifies `case` once untimed (it must pass), then `iterations` times: the times, sorted.
pub fn time_verification(case: Case, iterations: usize) -> Vec<Duration> {
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
    times
}
