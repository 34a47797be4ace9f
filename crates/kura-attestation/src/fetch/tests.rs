//! The fetchers against fake AMD and Intel services that answer with the bytes the vendors
//! served for the vectors in `testdata/`, and the cache on a temporary
//! directory. Nothing here touches the network.

use std::path::PathBuf;
use std::sync::Mutex;

use super::*;
use crate::{AttestationError, VerifyOptions, verifier_for};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
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

/// Answers GETs from a table of URL prefixes; remembers every URL asked.
#[derive(Default)]
struct FakeService {
    routes: Vec<(String, HttpResponse)>,
    asked: Mutex<Vec<String>>,
}

impl FakeService {
    fn route(mut self, prefix: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Self {
        self.routes.push((
            prefix.to_string(),
            HttpResponse {
                status: 200,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                body,
            },
        ));
        self
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Http for &FakeService {
    async fn get(&self, url: &str) -> Result<HttpResponse, String> {
        self.asked.lock().unwrap().push(url.to_string());
        Ok(self
            .routes
            .iter()
            .find(|(prefix, _)| url.starts_with(prefix.as_str()))
            .map(|(_, r)| r.clone())
            .unwrap_or(HttpResponse {
                status: 404,
                ..Default::default()
            }))
    }
}

fn endpoints() -> Endpoints {
    Endpoints {
        kds: "https://kds.test".into(),
        pcs: "https://pcs.test".into(),
        intel_root_crl: "https://crl.test/root.der".into(),
    }
}

fn milan_evidence() -> Evidence {
    Evidence::new(
        Platform::SevSnp,
        read("sev-snp/virtee-sev/report_milan.hex"),
    )
}

fn snp_claims(evidence: &Evidence) -> Result<crate::Claims, AttestationError> {
    let options = VerifyOptions {
        certs: evidence.certs.clone(),
        at: at("2025-01-01T00:00:00Z"),
        ..Default::default()
    };
    verifier_for(Platform::SevSnp, &options)?.verify(evidence)
}

#[tokio::test]
async fn offline_stores_never_fetch_and_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::offline(dir.path());
    let mut evidence = milan_evidence();
    let err = store.complete(&mut evidence).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, AttestationError::Unavailable(_)), "{text}");
    assert!(
        text.contains("Milan VCEK of chip d49554ec717f4e5b") && text.contains("--fetch"),
        "{text}"
    );
    let mut quote = Evidence::new(
        Platform::Tdx,
        read("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat"),
    );
    let text = store.complete(&mut quote).await.unwrap_err().to_string();
    assert!(
        text.contains("tdx collateral for FMSPC 50806f000000"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_vcek_is_fetched_once_by_chip_and_tcb_then_served_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let kds = FakeService::default().route(
        "https://kds.test/vcek/v1/Milan/",
        read("sev-snp/virtee-sev/vcek_milan.der"),
        &[],
    );
    let store = CertStore::online(dir.path(), &kds, endpoints());
    let mut evidence = milan_evidence();
    assert!(snp_claims(&evidence).is_err(), "no VCEK yet");
    store.complete(&mut evidence).await.unwrap();
    let claims = snp_claims(&evidence).unwrap();
    assert_eq!(claims.svns["snp"], 8);
    // The report is version 2 (no CPUID): Milan is tried first, and answers. The URL carries
    // the whole 64-byte chip id and the reported TCB (bl=3 tee=0 snp=8 ucode=115).
    let asked = kds.asked();
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].starts_with("https://kds.test/vcek/v1/Milan/d49554ec717f4e5b")
            && asked[0].ends_with("?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115"),
        "{}",
        asked[0]
    );
    assert_eq!(
        asked[0]
            .split('/')
            .nth(6)
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .len(),
        128
    );

    // Again: from the cache, online or offline.
    let mut again = milan_evidence();
    store.complete(&mut again).await.unwrap();
    assert_eq!(kds.asked().len(), 1);
    let mut offline = milan_evidence();
    CertStore::offline(dir.path())
        .complete(&mut offline)
        .await
        .unwrap();
    assert!(snp_claims(&offline).is_ok());

    // Evidence that brings its own VCEK is left alone.
    let mut complete = milan_evidence();
    complete.certs = vec![read("sev-snp/virtee-sev/vcek_milan.der")];
    CertStore::offline(tempfile::tempdir().unwrap().path())
        .complete(&mut complete)
        .await
        .unwrap();
    assert_eq!(complete.certs.len(), 1);
}

#[tokio::test]
async fn a_wrong_answer_from_the_service_ends_in_a_refusal_not_in_trust() {
    let dir = tempfile::tempdir().unwrap();
    // A KDS (or a man in the middle) that answers with another chip's VCEK.
    let kds = FakeService::default().route(
        "https://kds.test/vcek/v1/",
        read("sev-snp/virtee-sev/vcek_turin.der"),
        &[],
    );
    let store = CertStore::online(dir.path(), &kds, endpoints());
    let mut evidence = milan_evidence();
    store.complete(&mut evidence).await.unwrap();
    assert!(matches!(
        snp_claims(&evidence),
        Err(AttestationError::Signature(_) | AttestationError::Mismatch(_))
    ));

    // A service that does not know the chip: every product is tried, nothing is cached.
    let empty = FakeService::default();
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::online(dir.path(), &empty, endpoints());
    let text = store
        .complete(&mut milan_evidence())
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("HTTP 404"), "{text}");
    assert_eq!(empty.asked().len(), 3);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn turin_vceks_are_asked_for_by_the_8_byte_hwid_with_the_fmc_svn() {
    // A version-3 report that says it comes from family 0x1A (Turin). It is not signed; only
    // the lookup is under test.
    let mut raw = hex::decode(read("sev-snp/virtee-sev/report_milan.hex")).unwrap();
    raw[0..4].copy_from_slice(&3u32.to_le_bytes());
    raw[0x188] = 0x1a;
    raw[0x189] = 0x02;
    let kds = FakeService::default();
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::online(dir.path(), &kds, endpoints());
    let _ = store
        .complete(&mut Evidence::new(Platform::SevSnp, raw))
        .await;
    let asked = kds.asked();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].starts_with("https://kds.test/vcek/v1/Turin/d49554ec717f4e5b?fmcSPL="),
        "{}",
        asked[0]
    );
}

#[tokio::test]
async fn vlek_reports_cannot_be_completed_from_the_kds() {
    let store = CertStore::offline(tempfile::tempdir().unwrap().path());
    let mut evidence = Evidence::new(
        Platform::SevSnp,
        read("sev-snp/trustee/test-vlek-report.bin"),
    );
    let text = store.complete(&mut evidence).await.unwrap_err().to_string();
    assert!(text.contains("VLEK"), "{text}");
}

fn url_encode(text: &[u8]) -> String {
    text.iter()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (*b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Intel's PCS as it answered in June 2023 (raw responses kept by go-tdx-guest).
fn pcs_2023() -> FakeService {
    let dir = "tdx/go-tdx-guest";
    let chain = |name: &str| url_encode(&read(&format!("{dir}/{name}")));
    FakeService::default()
        .route(
            "https://pcs.test/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
            read(&format!("{dir}/pckcrl")),
            &[(
                "sgx-pck-crl-issuer-chain",
                chain("pck_crl_issuer_chain.pem"),
            )],
        )
        .route(
            "https://pcs.test/tdx/certification/v4/tcb?fmspc=50806f000000",
            read(&format!("{dir}/sample_tcbInfo_response")),
            &[("tcb-info-issuer-chain", chain("tcb_info_issuer_chain.pem"))],
        )
        .route(
            "https://pcs.test/tdx/certification/v4/qe/identity",
            read(&format!("{dir}/sample_qeIdentity_response")),
            &[(
                "sgx-enclave-identity-issuer-chain",
                chain("qe_identity_issuer_chain.pem"),
            )],
        )
        .route(
            "https://crl.test/root.der",
            read(&format!("{dir}/rootcrl.der")),
            &[],
        )
}

#[tokio::test]
async fn dcap_collateral_is_assembled_from_the_pcs_answers_exactly() {
    let pcs = pcs_2023();
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::online(dir.path(), &pcs, endpoints());
    let quote = read("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
    let mut evidence = Evidence::new(Platform::Tdx, quote.clone());
    store.complete(&mut evidence).await.unwrap();
    assert_eq!(pcs.asked().len(), 4);

    // Field for field what the vector's maintainer assembled by hand from the same answers.
    let ours: serde_json::Value =
        serde_json::from_slice(evidence.collateral.as_ref().unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&read("tdx/go-tdx-guest/collateral-2023.json")).unwrap();
    for field in [
        "pck_crl_issuer_chain",
        "root_ca_crl",
        "pck_crl",
        "tcb_info_issuer_chain",
        "tcb_info",
        "tcb_info_signature",
        "qe_identity_issuer_chain",
        "qe_identity",
        "qe_identity_signature",
    ] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    // And the verdict is the one the README gives: every signature verifies, no TCB level
    // matches. (Tampering with the signed text would have failed on the signature instead.)
    let options = VerifyOptions {
        at: at("2023-07-01T01:00:00Z"),
        ..Default::default()
    };
    let err = verifier_for(Platform::Tdx, &options)
        .unwrap()
        .verify(&evidence)
        .unwrap_err()
        .to_string();
    assert!(err.contains("No matching TCB level"), "{err}");

    // A second quote of the platform is served from the cache, online and offline.
    let mut again = Evidence::new(Platform::Tdx, quote);
    store.complete(&mut again).await.unwrap();
    assert_eq!(pcs.asked().len(), 4);
    assert_eq!(again.collateral, evidence.collateral);
}

#[tokio::test]
async fn pcs_answers_without_their_issuer_chain_are_refused() {
    let dir = "tdx/go-tdx-guest";
    let pcs = FakeService::default()
        .route(
            "https://pcs.test/sgx/certification/v4/pckcrl",
            read(&format!("{dir}/pckcrl")),
            &[],
        )
        .route("https://pcs.test/", b"{}".to_vec(), &[])
        .route("https://crl.test/", vec![], &[]);
    let tmp = tempfile::tempdir().unwrap();
    let store = CertStore::online(tmp.path(), &pcs, endpoints());
    let mut evidence = Evidence::new(
        Platform::Tdx,
        read(&format!("{dir}/tdx_prod_quote_SPR_E4.dat")),
    );
    let text = store.complete(&mut evidence).await.unwrap_err().to_string();
    assert!(
        text.contains("unreadable") || text.contains("header"),
        "{text}"
    );
    assert!(evidence.collateral.is_none());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
