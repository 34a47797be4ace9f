//! Against evidence captured on real AMD hardware (`testdata/sev-snp`, sources in `testdata/README.md`), with
//! the verdicts, measurements and TCB values their READMEs give.

use std::path::PathBuf;

use super::*;
use crate::{AttestationError, appraise};
use kura_contract::{AcceptEntry, EnclavePolicy};

fn vectors() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/sev-snp");
    assert!(
        dir.is_dir(),
        "attestation vectors missing at {}",
        dir.display()
    );
    dir
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(vectors().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn at(rfc3339: &str) -> Option<time::OffsetDateTime> {
    Some(
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
            .unwrap(),
    )
}

fn verify(report: &str, certs: &[&str], when: Option<&str>) -> Result<Claims, AttestationError> {
    let verifier = SevSnpVerifier {
        options: VerifyOptions {
            at: when.and_then(at),
            certs: certs.iter().map(|c| read(c)).collect(),
            collateral: None,
        },
    };
    verifier.verify(&Evidence::new(Platform::SevSnp, read(report)))
}

fn svns(bl: u64, tee: u64, snp: u64, ucode: u64) -> Svns {
    [
        ("bootloader", bl),
        ("tee", tee),
        ("snp", snp),
        ("microcode", ucode),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn virtee_milan_report_is_valid() {
    let c = verify(
        "virtee-sev/report_milan.hex",
        &["virtee-sev/vcek_milan.der", "virtee-sev/cert_chain_milan"],
        None,
    )
    .unwrap();
    assert_eq!(
        hex::encode(&c.measurement),
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    );
    assert_eq!(
        hex::encode(&c.report_data),
        "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd"
    );
    assert!(!c.debug);
    assert_eq!(c.svns, svns(3, 0, 8, 115));
    assert!(c.signer.contains("VCEK (Milan)"), "{}", c.signer);
    // The ASK is optional for a VCEK: the pinned Milan ASK is used.
    verify(
        "virtee-sev/report_milan.hex",
        &["virtee-sev/vcek_milan.der"],
        None,
    )
    .unwrap();
}

#[test]
fn trustee_vcek_report_is_valid() {
    let c = verify(
        "trustee/test-report.bin",
        &["trustee/test-vcek.der", "trustee/milan_ask_ark_asvk.pem"],
        None,
    )
    .unwrap();
    assert_eq!(
        hex::encode(&c.measurement),
        "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c"
    );
    assert_eq!(
        hex::encode(&c.report_data[..32]),
        "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2"
    );
    assert_eq!(c.report_data[32..], [0u8; 32]);
    assert_eq!(c.svns, svns(3, 0, 8, 115));
}

#[test]
fn trustee_vlek_report_is_valid_inside_its_window_and_expired_after() {
    let certs = ["trustee/test-vlek.der", "trustee/milan_ask_ark_asvk.pem"];
    let c = verify(
        "trustee/test-vlek-report.bin",
        &certs,
        Some("2025-06-01T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(
        hex::encode(&c.measurement),
        "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0"
    );
    assert_eq!(c.svns, svns(4, 0, 24, 217));
    assert!(c.signer.contains("VLEK"), "{}", c.signer);
    let err = verify(
        "trustee/test-vlek-report.bin",
        &certs,
        Some("2026-01-01T00:00:00Z"),
    )
    .unwrap_err();
    assert!(
        matches!(&err, AttestationError::Expired(r) if r.contains("2025-12-10")),
        "{err}"
    );
    // A VLEK needs its ASVK: the pinned set has only ASKs.
    let err = verify(
        "trustee/test-vlek-report.bin",
        &["trustee/test-vlek.der"],
        Some("2025-06-01T00:00:00Z"),
    )
    .unwrap_err();
    assert!(matches!(err, AttestationError::Certificate(_)), "{err}");
}

#[test]
fn tampered_vceks_are_rejected() {
    for bad in [
        "trustee/test-vcek-invalid-legacy.der",
        "trustee/test-vcek-invalid-new.der",
    ] {
        // The parser accepts them ...
        let certs = parse_certs(&[read(bad)]).unwrap();
        assert_eq!(certs.len(), 1);
        // ... the verifier does not.
        let err = verify(
            "trustee/test-report.bin",
            &[bad, "trustee/milan_ask_ark_asvk.pem"],
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, AttestationError::Certificate(_)),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_debug_guest_verifies_but_a_no_debug_policy_refuses_it() {
    let c = verify(
        "go-sev-guest/attestation.bin",
        &["go-sev-guest/vcek.testcer", "go-sev-guest/milan.testcer"],
        None,
    )
    .unwrap();
    assert!(c.debug);
    assert_eq!(
        hex::encode(&c.measurement),
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
    );
    assert_eq!(c.svns, svns(2, 0, 5, 68));
    let entry = AcceptEntry {
        platform: "sev-snp".into(),
        measurements: vec![hex::encode(&c.measurement)],
        allow_debug: false,
        min_tcb: Default::default(),
        tcb_statuses: vec![],
        registers: Default::default(),
        ..Default::default()
    };
    let policy = EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::SevSnp],
        accept: vec![entry.clone()],
    };
    assert_eq!(appraise(&policy, &c), Err(AttestationError::Debug));
    let lenient = EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::SevSnp],
        accept: vec![AcceptEntry {
            allow_debug: true,
            ..entry
        }],
    };
    appraise(&lenient, &c).unwrap();
}

#[test]
fn minimum_tcb_is_enforced() {
    let c = verify(
        "virtee-sev/report_milan.hex",
        &["virtee-sev/vcek_milan.der"],
        None,
    )
    .unwrap();
    let policy = |min: &[(&str, u64)]| EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::SevSnp],
        accept: vec![AcceptEntry {
            platform: "sev-snp".into(),
            measurements: vec![hex::encode(&c.measurement)],
            allow_debug: false,
            min_tcb: min.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            tcb_statuses: vec![],
            registers: Default::default(),
            ..Default::default()
        }],
    };
    appraise(&policy(&[("snp", 8), ("microcode", 115)]), &c).unwrap();
    let err = appraise(&policy(&[("snp", 9)]), &c).unwrap_err();
    assert!(
        matches!(&err, AttestationError::TcbTooLow(r) if r.contains("snp")),
        "{err}"
    );
    let err = appraise(&policy(&[("fmc", 1)]), &c).unwrap_err();
    assert!(
        matches!(&err, AttestationError::TcbTooLow(r) if r.contains("fmc")),
        "{err}"
    );
}

#[test]
fn the_turin_chain_verifies_and_carries_an_8_byte_hwid() {
    let certs = parse_certs(&[
        read("virtee-sev/vcek_turin.der"),
        read("virtee-sev/cert_chain_turin"),
    ])
    .unwrap();
    let chain = verify_chain(&certs).unwrap();
    assert_eq!((chain.product, chain.kind), ("Turin", KeyKind::Vcek));
    assert_eq!(
        extension(&chain.vek, OID_HWID).map(hwid).map(<[u8]>::len),
        Some(8)
    );
    assert!(extension(&chain.vek, OID_FMC).and_then(integer).is_some());
}

#[test]
fn another_chips_vcek_is_refused() {
    // A Turin VCEK (whose chain verifies) and another Milan chip's VCEK.
    for certs in [
        &["virtee-sev/vcek_turin.der", "virtee-sev/cert_chain_turin"][..],
        &["trustee/test-vcek.der"][..],
    ] {
        let err = verify("virtee-sev/report_milan.hex", certs, None).unwrap_err();
        assert_eq!(
            err,
            AttestationError::Signature("the report is not signed by this VCEK".into()),
            "{certs:?}"
        );
    }
}

#[test]
fn every_bit_flip_in_the_signed_report_is_refused() {
    let raw = hex::decode(
        String::from_utf8(read("virtee-sev/report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let verifier = SevSnpVerifier {
        options: VerifyOptions {
            certs: vec![read("virtee-sev/vcek_milan.der")],
            ..Default::default()
        },
    };
    for i in 0..0x2a0 {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        let result = verifier.verify(&Evidence::new(Platform::SevSnp, bad));
        assert!(result.is_err(), "flip in signed byte {i:#x} went unnoticed");
    }
    // The signature itself.
    let mut bad = raw.clone();
    bad[0x2a0] ^= 0x01;
    assert!(
        verifier
            .verify(&Evidence::new(Platform::SevSnp, bad))
            .is_err()
    );
    // Truncated.
    let err = verifier
        .verify(&Evidence::new(Platform::SevSnp, raw[..1000].to_vec()))
        .unwrap_err();
    assert!(matches!(err, AttestationError::Malformed(_)), "{err}");
    // No certificate at all.
    let none = SevSnpVerifier {
        options: VerifyOptions::default(),
    };
    let err = none
        .verify(&Evidence::new(Platform::SevSnp, raw))
        .unwrap_err();
    assert!(
        matches!(&err, AttestationError::Certificate(r) if r.contains("--certs")),
        "{err}"
    );
}

#[test]
fn certificates_carried_in_the_evidence_reach_the_verifier() {
    let raw = read("virtee-sev/report_milan.hex");
    let evidence = Evidence {
        certs: vec![read("virtee-sev/vcek_milan.der")],
        ..Evidence::new(Platform::SevSnp, raw)
    };
    let policy = EnclavePolicy {
clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::SevSnp],
        accept: vec![AcceptEntry {
            platform: "sev-snp".into(),
            measurements: vec!["7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f".into()],
            allow_debug: false,
            min_tcb: Default::default(),
            tcb_statuses: vec![],
            registers: Default::default(),
            ..Default::default()
        }],
    };
    let contract = kura_contract::ContractId::of(b"contract");
    let key = kura_crypto::SecretIdentity::generate();
    // Chain, signature and policy pass; the report's data does not bind our keys.
    assert_eq!(
        crate::verify_enclave(&evidence, &policy, &contract, key.public()),
        Err(AttestationError::Binding)
    );
    // Without the certificates the chain cannot be checked at all.
    let bare = Evidence {
        certs: vec![],
        ..evidence
    };
    assert!(matches!(
        crate::verify_enclave(&bare, &policy, &contract, key.public()),
        Err(AttestationError::Certificate(_))
    ));
}

#[test]
fn the_intermediate_checked_is_the_one_that_signed() {
    // milan_ask_ark_asvk.pem holds the ASK first, then the ARK, then the ASVK.
    let bundle = read("trustee/milan_ask_ark_asvk.pem");
    let vlek =
        verify_chain(&parse_certs(&[read("trustee/test-vlek.der"), bundle.clone()]).unwrap())
            .unwrap();
    assert_eq!(common_name(&vlek.ask), "SEV-VLEK-Milan");
    let vcek =
        verify_chain(&parse_certs(&[read("trustee/test-vcek.der"), bundle]).unwrap()).unwrap();
    assert_eq!(common_name(&vcek.ask), "SEV-Milan");
}

#[test]
fn the_vmpl_is_reported_and_must_be_the_contracts() {
    let c = verify(
        "virtee-sev/report_milan.hex",
        &["virtee-sev/vcek_milan.der"],
        None,
    )
    .unwrap();
    assert_eq!(c.registers["vmpl"], "0");
    let policy = |vmpl: Option<u32>| EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::SevSnp],
        accept: vec![AcceptEntry {
            platform: "sev-snp".into(),
            measurements: vec![hex::encode(&c.measurement)],
            allow_debug: true,
            vmpl,
            ..Default::default()
        }],
    };
    appraise(&policy(None), &c).unwrap();
    // The same report as if requested from VMPL 2 (a guest below a paravisor).
    let mut lower = c.clone();
    lower.registers.insert("vmpl".into(), "2".into());
    let err = appraise(&policy(None), &lower).unwrap_err();
    assert!(
        matches!(&err, AttestationError::MeasurementNotAccepted(r) if r.contains("VMPL 2")),
        "{err}"
    );
    appraise(&policy(Some(2)), &lower).unwrap();
    assert!(appraise(&policy(Some(2)), &c).is_err());
}
