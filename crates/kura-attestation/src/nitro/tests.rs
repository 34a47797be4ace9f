//! Against Nitro attestation documents from real enclaves (`testdata/nitro`),
//! verified at each document's timestamp.

use std::path::PathBuf;

use super::*;

fn read(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/nitro/evervault");
    assert!(
        dir.is_dir(),
        "attestation vectors missing at {}",
        dir.display()
    );
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn verify(name: &str, at: &str) -> Result<Claims, AttestationError> {
    verify_bytes(read(name), at)
}

fn verify_bytes(data: Vec<u8>, at: &str) -> Result<Claims, AttestationError> {
    let options = VerifyOptions {
        at: Some(
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .unwrap(),
        ),
        ..Default::default()
    };
    NitroVerifier { options }.verify(&Evidence::new(Platform::Nitro, data))
}

#[test]
fn the_pinned_root_is_the_one_aws_publishes() {
    let root = Certificate::from_pem(AWS_NITRO_ROOT_PEM).unwrap();
    let fingerprint = hex::encode(kura_crypto::sha256(&root.to_der().unwrap()));
    assert!(
        fingerprint.starts_with("641a0321") && fingerprint.ends_with("79bb5b"),
        "{fingerprint}"
    );
    assert_eq!(
        root.to_der().unwrap(),
        Certificate::from_pem(read("nitro.pem"))
            .unwrap()
            .to_der()
            .unwrap()
    );
}

#[test]
fn a_production_document_is_valid_at_its_timestamp() {
    let c = verify("beta_valid-attestation-doc-bytes", "2022-10-13T08:58:03Z").unwrap();
    assert_eq!(
        hex::encode(&c.measurement),
        "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b"
    );
    assert!(!c.debug);
    assert!(c.registers.contains_key("pcr1") && c.registers.contains_key("pcr2"));
}

#[test]
fn debug_documents_verify_and_say_so() {
    let c = verify(
        "beta_debug-mode-attestation-doc-bytes",
        "2022-10-12T13:50:07Z",
    )
    .unwrap();
    assert!(c.debug);
    assert_eq!(c.report_data, b"hello, world!");
    let c = verify("valid-attestation-doc-base64", "2023-09-18T15:03:31Z").unwrap();
    assert!(c.debug, "PCR0-2 are zero in this document");
}

#[test]
fn the_short_lived_leaf_is_refused_outside_its_hours() {
    let err = verify("beta_valid-attestation-doc-bytes", "2022-10-14T12:00:00Z").unwrap_err();
    assert!(matches!(err, AttestationError::Expired(_)), "{err}");
    let err = verify("beta_valid-attestation-doc-bytes", "2026-01-01T00:00:00Z").unwrap_err();
    assert!(matches!(err, AttestationError::Expired(_)), "{err}");
}

#[test]
fn tampered_documents_are_refused() {
    let doc = read("beta_valid-attestation-doc-bytes");
    let at = "2022-10-13T08:58:03Z";
    // Flip bits across the whole document: header, payload (PCRs, certificates), signature.
    let mut unnoticed = vec![];
    for i in (0..doc.len()).step_by(17) {
        let mut bad = doc.clone();
        bad[i] ^= 0x01;
        if verify_bytes(bad, at).is_ok() {
            unnoticed.push(i);
        }
    }
    assert!(
        unnoticed.is_empty(),
        "flips at {unnoticed:?} went unnoticed"
    );
    assert!(verify_bytes(doc[..doc.len() - 10].to_vec(), at).is_err());
}

#[test]
fn pcrs_can_be_pinned_by_the_contract() {
    use kura_contract::{AcceptEntry, EnclavePolicy};
    let c = verify("beta_valid-attestation-doc-bytes", "2022-10-13T08:58:03Z").unwrap();
    let policy = |pcr1: String| EnclavePolicy {
        clock_tolerance_seconds: EnclavePolicy::DEFAULT_CLOCK_TOLERANCE,
        platforms: vec![Platform::Nitro],
        accept: vec![AcceptEntry {
            platform: "nitro".into(),
            measurements: vec![hex::encode(&c.measurement)],
            allow_debug: false,
            min_tcb: Default::default(),
            tcb_statuses: vec![],
            registers: [("pcr1".to_string(), pcr1)].into_iter().collect(),
            ..Default::default()
        }],
    };
    crate::appraise(&policy(c.registers["pcr1"].clone()), &c).unwrap();
    assert!(crate::appraise(&policy("ab".repeat(48)), &c).is_err());
}

/// The real document's path: the pinned root, the cabundle's intermediates, the leaf.
fn real_path() -> Vec<Certificate> {
    let raw = decode_document(&read("beta_valid-attestation-doc-bytes"));
    let sign1 = CoseSign1::from_tagged_slice(&raw)
        .or_else(|_| CoseSign1::from_slice(&raw))
        .unwrap();
    let doc: Value = ciborium::from_reader(sign1.payload.as_deref().unwrap()).unwrap();
    let map = doc.as_map().unwrap();
    let der = |v: &Value| Certificate::from_der(v.as_bytes().unwrap()).unwrap();
    let Some(Value::Array(bundle)) = field(map, "cabundle") else {
        panic!("no cabundle")
    };
    let mut path: Vec<Certificate> = bundle.iter().map(der).collect();
    path.push(der(field(map, "certificate").unwrap()));
    path
}

#[test]
fn each_certificate_must_have_the_role_its_place_in_the_path_needs() {
    let path = real_path();
    assert!(path.len() >= 3, "root, intermediates and leaf");
    check_roles(&path).unwrap();
    // The leaf's key used as an issuer: it is no CA.
    let n = path.len();
    let mut leaf_issues = path.clone();
    leaf_issues.swap(n - 2, n - 1);
    let err = check_roles(&leaf_issues).unwrap_err().to_string();
    assert!(err.contains("is not a CA"), "{err}");
    // A CA's key as the document's signer.
    let err = check_roles(&path[..n - 1]).unwrap_err().to_string();
    assert!(err.contains("is a CA, yet signs"), "{err}");
    // More CAs below an issuer than its path length allows (the intermediates repeated).
    let mut longer = path[..n - 1].to_vec();
    longer.extend(path[1..].iter().cloned());
    let err = check_roles(&longer).unwrap_err().to_string();
    assert!(err.contains("fewer CAs below it"), "{err}");
}
