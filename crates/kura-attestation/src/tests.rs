use kura_contract::{AcceptEntry, ContractId, EnclavePolicy, Platform};
use kura_crypto::SecretIdentity;

use super::*;
use crate::simulated::SimulatedHardware;

fn policy(accept: Vec<AcceptEntry>) -> EnclavePolicy {
    EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::Simulated],
        accept,
    }
}

fn setup(debug: bool) -> (ContractId, SecretIdentity, Evidence) {
    let contract = ContractId::of(b"contract bytes");
    let enclave = SecretIdentity::generate();
    let hw = SimulatedHardware::new();
    let ev = hw.issue(
        &[7u8; 48],
        &report_data_for(&contract, enclave.public()),
        debug,
    );
    (contract, enclave, ev)
}

#[test]
fn simulated_evidence_verifies_and_binds() {
    let (contract, enclave, ev) = setup(false);
    let claims = verify_enclave(&ev, &policy(vec![]), &contract, enclave.public()).unwrap();
    assert_eq!(claims.measurement, vec![7u8; 48]);
    assert!(claims.signer.contains("NOT a hardware root of trust"));
}

/// Evidence that binds an enclave key with its ML-DSA-65 half does not pass for the same key
/// without it (the v2 text of the same Ed25519, X25519 and X-Wing keys): the host cannot strip
/// the post-quantum key from an attested enclave.
#[test]
fn a_hybrid_key_s_evidence_does_not_bind_its_classical_half() {
    let contract = ContractId::of(b"contract bytes");
    let enclave = SecretIdentity::generate_post_quantum();
    let ev = SimulatedHardware::new().issue(
        &[7u8; 48],
        &report_data_for(&contract, enclave.public()),
        false,
    );
    verify_enclave(&ev, &policy(vec![]), &contract, enclave.public()).unwrap();
    let bytes = enclave.public().to_bytes();
    let classical = kura_crypto::PublicIdentity::from_bytes(&bytes[..1280]).unwrap();
    assert!(!classical.signs_post_quantum());
    let e = verify_enclave(&ev, &policy(vec![]), &contract, &classical).unwrap_err();
    assert!(matches!(e, AttestationError::Binding), "{e}");
}

#[test]
fn simulated_evidence_is_refused_unless_the_contract_lists_it() {
    let (contract, enclave, ev) = setup(false);
    let p = EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::SevSnp],
        accept: vec![],
    };
    assert_eq!(
        verify_enclave(&ev, &p, &contract, enclave.public()),
        Err(AttestationError::PlatformNotAccepted(Platform::Simulated))
    );
}

#[test]
fn wrong_contract_or_substituted_keys_are_refused() {
    let (contract, enclave, ev) = setup(false);
    let other = ContractId::of(b"another contract");
    assert_eq!(
        verify_enclave(&ev, &policy(vec![]), &other, enclave.public()),
        Err(AttestationError::Binding)
    );
    let mallory = SecretIdentity::generate();
    assert_eq!(
        verify_enclave(&ev, &policy(vec![]), &contract, mallory.public()),
        Err(AttestationError::Binding)
    );
}

#[test]
fn tampered_evidence_is_refused() {
    let (contract, enclave, ev) = setup(false);
    let text = String::from_utf8(ev.data.clone()).unwrap();
    // Change one measurement digit inside the signed report.
    let tampered = Evidence::new(
        Platform::Simulated,
        text.replacen("0707", "0708", 1).into_bytes(),
    );
    assert!(matches!(
        verify_enclave(&tampered, &policy(vec![]), &contract, enclave.public()),
        Err(AttestationError::Signature(_))
    ));
    let truncated = Evidence::new(Platform::Simulated, ev.data[..ev.data.len() / 2].to_vec());
    assert!(matches!(
        verify_enclave(&truncated, &policy(vec![]), &contract, enclave.public()),
        Err(AttestationError::Malformed(_))
    ));
}

#[test]
fn pinned_measurements_and_debug_are_enforced() {
    let (contract, enclave, ev) = setup(false);
    let wrong = AcceptEntry {
        platform: "simulated".into(),
        measurements: vec!["aa".repeat(48)],
        allow_debug: false,
        min_tcb: Default::default(),
        tcb_statuses: vec![],
        registers: Default::default(),
        ..Default::default()
    };
    assert!(matches!(
        verify_enclave(&ev, &policy(vec![wrong]), &contract, enclave.public()),
        Err(AttestationError::MeasurementNotAccepted(_))
    ));
    let right = AcceptEntry {
        platform: "simulated".into(),
        measurements: vec!["07".repeat(48)],
        allow_debug: false,
        min_tcb: Default::default(),
        tcb_statuses: vec![],
        registers: Default::default(),
        ..Default::default()
    };
    verify_enclave(
        &ev,
        &policy(vec![right.clone()]),
        &contract,
        enclave.public(),
    )
    .unwrap();

    let (contract, enclave, debug_ev) = setup(true);
    assert_eq!(
        verify_enclave(
            &debug_ev,
            &policy(vec![right.clone()]),
            &contract,
            enclave.public()
        ),
        Err(AttestationError::Debug)
    );
    assert_eq!(
        verify_enclave(&debug_ev, &policy(vec![]), &contract, enclave.public()),
        Err(AttestationError::Debug)
    );
    let allow = AcceptEntry {
        allow_debug: true,
        ..right
    };
    verify_enclave(&debug_ev, &policy(vec![allow]), &contract, enclave.public()).unwrap();
}

#[test]
fn real_platforms_need_a_pinned_measurement() {
    let claims = Claims {
        platform: Platform::SevSnp,
        measurement: vec![1; 48],
        report_data: vec![0; 64],
        debug: false,
        svns: Default::default(),
        registers: Default::default(),
        tcb_status: None,
        advisories: vec![],
        signer: "test".into(),
    };
    let p = EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::SevSnp],
        accept: vec![],
    };
    assert_eq!(
        appraise(&p, &claims),
        Err(AttestationError::NoMeasurementPinned(Platform::SevSnp))
    );
}
