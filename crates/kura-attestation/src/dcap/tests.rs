//! Against quotes and collateral captured from real Intel platforms
//! (`testdata/{tdx,sgx}`), at the times their READMEs give.

use std::path::PathBuf;

use super::*;
use crate::appraise;
use kura_contract::{AcceptEntry, EnclavePolicy};

fn read(path: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    assert!(
        dir.is_dir(),
        "attestation vectors missing at {}",
        dir.display()
    );
    std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A verifier for `platform` with `collateral`, at the RFC 3339 time `at`.
fn dcap_verifier(platform: Platform, collateral: Vec<u8>, at: &str) -> DcapVerifier {
    let at =
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap();
    let options = VerifyOptions {
        at: Some(at),
        certs: vec![],
        collateral: Some(collateral),
    };
    DcapVerifier { platform, options }
}

fn verify(
    platform: Platform,
    quote: &str,
    collateral: &str,
    at: &str,
) -> Result<Claims, AttestationError> {
    dcap_verifier(platform, read(collateral), at).verify(&Evidence::new(platform, read(quote)))
}

const TDX_AT: &str = "2025-06-19T11:16:00Z";

#[test]
fn tdx_quote_is_valid_and_up_to_date() {
    let c = verify(
        Platform::Tdx,
        "tdx/dcap-qvl/tdx_quote",
        "tdx/dcap-qvl/tdx_quote_collateral.json",
        TDX_AT,
    )
    .unwrap();
    assert_eq!(
        hex::encode(&c.measurement),
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
    );
    assert!(
        hex::encode(&c.report_data).starts_with("9a9d48e7"),
        "{}",
        hex::encode(&c.report_data)
    );
    assert!(
        hex::encode(&c.report_data).ends_with("2b523f20"),
        "{}",
        hex::encode(&c.report_data)
    );
    assert_eq!(c.tcb_status.as_deref(), Some("UpToDate"));
    assert!(c.advisories.is_empty());
    assert!(!c.debug);
    assert_eq!(c.registers.len(), 5);
    // The same quote is not an SGX quote.
    let err = verify(
        Platform::Sgx,
        "tdx/dcap-qvl/tdx_quote",
        "tdx/dcap-qvl/tdx_quote_collateral.json",
        TDX_AT,
    )
    .unwrap_err();
    assert!(matches!(err, AttestationError::Malformed(_)), "{err}");
}

#[test]
fn tdx_collateral_outside_its_window_is_refused() {
    let err = verify(
        Platform::Tdx,
        "tdx/dcap-qvl/tdx_quote",
        "tdx/dcap-qvl/tdx_quote_collateral.json",
        "2025-09-01T00:00:00Z",
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AttestationError::Expired(_) | AttestationError::Signature(_)
        ),
        "{err}"
    );
}

#[test]
fn tdx_quotes_without_a_matching_tcb_level_are_refused() {
    let err = verify(
        Platform::Tdx,
        "tdx/dcap-qvl/tdx_quote_outdated",
        "tdx/dcap-qvl/tdx_quote_outdated_collateral.json",
        "2026-02-18T11:58:00Z",
    )
    .unwrap_err();
    assert!(err.to_string().contains("TCB"), "{err}");
    for quote in [
        "tdx/dcap-qvl/tdx-quote.hex",
        "tdx/dcap-qvl/quote-from-tappd.hex",
    ] {
        let err = verify(
            Platform::Tdx,
            quote,
            "tdx/dcap-qvl/tdx_quote_collateral.json",
            TDX_AT,
        )
        .unwrap_err();
        assert!(err.to_string().contains("TCB"), "{quote}: {err}");
    }
}

#[test]
fn sgx_quote_is_valid_with_its_advisories_and_the_contract_decides() {
    let c = verify(
        Platform::Sgx,
        "sgx/dcap-qvl/sgx_quote",
        "sgx/dcap-qvl/sgx_quote_collateral.json",
        "2025-06-19T11:56:00Z",
    )
    .unwrap();
    assert_eq!(
        hex::encode(&c.measurement),
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(
        c.registers["mrsigner"],
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    );
    assert_eq!(&c.report_data[..13], b"Hello, world!");
    assert!(c.report_data[13..].iter().all(|b| *b == 0));
    assert_eq!(
        c.tcb_status.as_deref(),
        Some("ConfigurationAndSWHardeningNeeded")
    );
    assert_eq!(c.advisories, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert!(!c.debug);

    let entry = |statuses: &[&str]| EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::Sgx],
        accept: vec![AcceptEntry {
            platform: "sgx".into(),
            measurements: vec![hex::encode(&c.measurement)],
            allow_debug: false,
            min_tcb: Default::default(),
            tcb_statuses: statuses.iter().map(|s| s.to_string()).collect(),
            registers: Default::default(),
            ..Default::default()
        }],
    };
    let err = appraise(&entry(&[]), &c).unwrap_err();
    assert!(
        matches!(&err, AttestationError::TcbTooLow(r) if r.contains("INTEL-SA-00615")),
        "{err}"
    );
    appraise(
        &entry(&["UpToDate", "ConfigurationAndSWHardeningNeeded"]),
        &c,
    )
    .unwrap();
}

#[test]
fn tampered_quotes_and_collateral_are_refused() {
    let quote = read("tdx/dcap-qvl/tdx_quote");
    let collateral = read("tdx/dcap-qvl/tdx_quote_collateral.json");
    let verifier = dcap_verifier(Platform::Tdx, collateral.clone(), TDX_AT);
    // Header, TD report (MRTD at 0xb8, report data at 0x238) and the signature area.
    for i in [0x08, 0x30, 0xb8, 0x100, 0x238, 0x270, 0x2b0, 0x300, 0x400] {
        let mut bad = quote.clone();
        bad[i] ^= 0x01;
        assert!(
            verifier.verify(&Evidence::new(Platform::Tdx, bad)).is_err(),
            "flip at {i:#x} went unnoticed"
        );
    }
    let truncated = quote[..quote.len() / 2].to_vec();
    assert!(
        verifier
            .verify(&Evidence::new(Platform::Tdx, truncated))
            .is_err()
    );
    // Collateral whose TCB info was edited no longer matches Intel's signature.
    let edited = String::from_utf8(collateral)
        .unwrap()
        .replacen("UpToDate", "UpToDatf", 1)
        .into_bytes();
    let verifier = dcap_verifier(Platform::Tdx, edited, TDX_AT);
    assert!(
        verifier
            .verify(&Evidence::new(Platform::Tdx, quote.clone()))
            .is_err()
    );
    // No collateral at all.
    let none = DcapVerifier {
        platform: Platform::Tdx,
        options: VerifyOptions::default(),
    };
    let err = none
        .verify(&Evidence::new(Platform::Tdx, quote))
        .unwrap_err();
    assert!(
        matches!(&err, AttestationError::Unavailable(r) if r.contains("--collateral")),
        "{err}"
    );
}

#[test]
fn go_tdx_guest_2023_quote_has_no_matching_tcb_level() {
    let err = verify(
        Platform::Tdx,
        "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
        "tdx/go-tdx-guest/collateral-2023.json",
        "2023-07-01T01:00:00Z",
    )
    .unwrap_err();
    assert!(err.to_string().contains("No matching TCB level"), "{err}");
}

#[test]
fn rtmrs_can_be_pinned_by_the_contract() {
    let c = verify(
        Platform::Tdx,
        "tdx/dcap-qvl/tdx_quote",
        "tdx/dcap-qvl/tdx_quote_collateral.json",
        TDX_AT,
    )
    .unwrap();
    let entry = |registers: &[(&str, String)], firmware_only: bool| EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::Tdx],
        accept: vec![AcceptEntry {
            platform: "tdx".into(),
            measurements: vec![hex::encode(&c.measurement)],
            registers: registers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            firmware_only,
            ..Default::default()
        }],
    };
    let policy = |registers: &[(&str, String)]| entry(registers, false);
    appraise(
        &policy(&[("rtmr1", c.registers["rtmr1"].to_uppercase())]),
        &c,
    )
    .unwrap();
    let err = appraise(&policy(&[("rtmr1", "00".repeat(48))]), &c).unwrap_err();
    assert!(
        matches!(&err, AttestationError::MeasurementNotAccepted(r) if r.contains("rtmr1")),
        "{err}"
    );
    // MRTD and RTMR0 measure the firmware: by default, not enough.
    let firmware = [("rtmr0", c.registers["rtmr0"].clone())];
    let err = appraise(&policy(&firmware), &c).unwrap_err();
    assert!(
        matches!(&err, AttestationError::MeasurementNotAccepted(r) if r.contains("pins only firmware")),
        "{err}"
    );
    appraise(&entry(&firmware, true), &c).unwrap();
    let err = appraise(&entry(&[("pcr8", "00".repeat(48))], true), &c).unwrap_err();
    assert!(
        matches!(&err, AttestationError::MeasurementNotAccepted(r) if r.contains("pcr8 = absent")),
        "{err}"
    );
}
