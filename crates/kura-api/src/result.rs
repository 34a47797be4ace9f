//! A result, both halves: the enclave signs a receiver's table and seals it to the receiver
//! (HPKE, bound to contract, run and receiver); the receiver opens it and checks the signature
//! against the attested enclave key and that it answers the run it was released for.

use kura_contract::ColumnType;
use kura_contract::dp::DpReport;
use kura_crypto::{PublicIdentity, Sealed, SecretIdentity, b64};
use kura_ledger::Receipt;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{ApiError, RESULT_DOMAIN};

/// A rule-checked result, as receivers see it (the stable JSON shape of DESIGN.md §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultTable {
    pub run_id: String,
    pub analysis: String,
    /// The SQL of an ad-hoc query (a named analysis has its SQL in the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// SHA-256 (hex) of the signed request that started the run: the table says which
    /// question it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    pub columns: Vec<String>,
    /// Each column's type (`utf8`, `int64`, `float64`, `boolean`, `date`), so that typed files
    /// can be written from the rows. Empty in results sealed before types were added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<ColumnType>,
    pub rows: Vec<Vec<serde_json::Value>>,
    pub suppressed_groups: u64,
    /// For a differentially private release: ε and δ spent and each statistic's noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpReport>,
    /// A trained model's ONNX file (base64), for a model analysis whose family has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<String>,
}

/// The plaintext inside a sealed result: the table's exact JSON and the enclave's signature
/// (Ed25519, and ML-DSA-65 beside it when the enclave key signs with one: both must verify).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedResult {
    pub table: String,
    pub signature: String,
    /// The ML-DSA-65 half (base64), from an enclave key that has one (`kura-pub-v3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pq_signature: Option<String>,
}

/// A result sealed to one receiver.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedResult {
    pub run_id: String,
    pub analysis: String,
    pub receiver: String,
    pub sealed: Sealed,
    /// Receipt of the log entry that released this result to its receiver.
    pub receipt: Receipt,
    /// The enclave key (text) that signed and sealed it, when that was an earlier start of the
    /// service than the one serving it (results survive restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// That earlier start's `enclave_started` entry, with a receipt under the serving head, so
    /// that the receiver can verify its evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Receipt>,
}

/// HPKE `info` of a result sealed to `receiver`.
pub fn result_context(contract_id: &str, run_id: &str, receiver: &str) -> Vec<u8> {
    format!("kura-result-v1\0{contract_id}\0{run_id}\0{receiver}").into_bytes()
}

/// The enclave's half: `table` signed with the enclave key and sealed to `receiver` with the
/// contract's `kem`.
pub fn seal_result(
    enclave: &SecretIdentity,
    kem: kura_crypto::Kem,
    contract_id: &str,
    table: &ResultTable,
    receiver: &str,
    receiver_key: &PublicIdentity,
) -> Result<Sealed, ApiError> {
    let table_json = serde_json::to_string(table).map_err(|e| ApiError::Seal(e.to_string()))?;
    let signed = SignedResult {
        signature: b64::encode(enclave.sign(RESULT_DOMAIN, table_json.as_bytes())),
        pq_signature: enclave
            .sign_post_quantum(RESULT_DOMAIN, table_json.as_bytes())
            .map(b64::encode),
        table: table_json,
    };
    let plaintext =
        Zeroizing::new(serde_json::to_vec(&signed).map_err(|e| ApiError::Seal(e.to_string()))?);
    let info = result_context(contract_id, &table.run_id, receiver);
    kura_crypto::seal(receiver_key, kem, &info, b"", &plaintext)
        .map_err(|e| ApiError::Seal(e.to_string()))
}

/// The receiver's half: opens `sealed`, released for `run_id`, with the receiver's key `me`,
/// checks the enclave's signature with the attested `enclave` key and that the table answers
/// `run_id`.
pub fn open_result(
    me: &SecretIdentity,
    kem: kura_crypto::Kem,
    receiver: &str,
    enclave: &PublicIdentity,
    contract_id: &str,
    run_id: &str,
    sealed: &Sealed,
) -> Result<ResultTable, ApiError> {
    let info = result_context(contract_id, run_id, receiver);
    let plain =
        kura_crypto::open(me, kem, &info, b"", sealed).map_err(|_| ApiError::Undecryptable)?;
    let signed: SignedResult =
        serde_json::from_slice(&plain).map_err(|e| ApiError::MalformedResult(e.to_string()))?;
    let sig = b64::decode(&signed.signature).map_err(|_| ApiError::ResultSignature)?;
    let pq = match &signed.pq_signature {
        Some(pq) => Some(b64::decode(pq).map_err(|_| ApiError::ResultSignature)?),
        None => None,
    };
    enclave
        .verify_hybrid(RESULT_DOMAIN, signed.table.as_bytes(), &sig, pq.as_deref())
        .map_err(|_| ApiError::ResultSignature)?;
    let table: ResultTable = serde_json::from_str(&signed.table)
        .map_err(|e| ApiError::MalformedResult(e.to_string()))?;
    if table.run_id != run_id {
        return Err(ApiError::OtherRun {
            expected: run_id.to_string(),
            found: table.run_id,
        });
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ResultTable {
        ResultTable {
            run_id: "run-1".into(),
            analysis: "a".into(),
            sql: None,
            request: None,
            columns: vec!["band".into(), "people".into()],
            types: vec![ColumnType::Utf8, ColumnType::Int64],
            rows: vec![vec!["high".into(), 40.into()]],
            suppressed_groups: 1,
            dp: None,
            onnx: None,
        }
    }

    /// An enclave key that signs with ML-DSA-65 signs results with both halves, and a result
    /// stripped of (or given another) post-quantum half does not open.
    #[test]
    fn a_post_quantum_enclave_s_result_needs_both_signatures() {
        let (enclave, me) = (
            SecretIdentity::generate_post_quantum(),
            SecretIdentity::generate(),
        );
        let kem = kura_crypto::Kem::XWing;
        let s = seal_result(&enclave, kem, "c", &table(), "r", me.public()).unwrap();
        let opened = open_result(&me, kem, "r", enclave.public(), "c", "run-1", &s).unwrap();
        assert_eq!(opened, table());
        let info = result_context("c", "run-1", "r");
        let plain = kura_crypto::open(&me, kem, &info, b"", &s).unwrap();
        let signed: SignedResult = serde_json::from_slice(&plain).unwrap();
        assert!(signed.pq_signature.is_some());
        let other = SecretIdentity::generate_post_quantum();
        for pq in [
            None,
            other
                .sign_post_quantum(RESULT_DOMAIN, signed.table.as_bytes())
                .map(b64::encode),
        ] {
            let edited = SignedResult {
                pq_signature: pq,
                ..signed.clone()
            };
            let resealed = kura_crypto::seal(
                me.public(),
                kem,
                &info,
                b"",
                &serde_json::to_vec(&edited).unwrap(),
            )
            .unwrap();
            let e = open_result(&me, kem, "r", enclave.public(), "c", "run-1", &resealed);
            assert_eq!(e.unwrap_err(), ApiError::ResultSignature);
        }
    }

    #[test]
    fn only_the_receiver_opens_only_what_the_enclave_signed_for_this_run() {
        let (enclave, me, other) = (
            SecretIdentity::generate(),
            SecretIdentity::generate(),
            SecretIdentity::generate(),
        );
        let kem = kura_crypto::Kem::XWing;
        let s = seal_result(&enclave, kem, "c", &table(), "r", me.public()).unwrap();
        let open = |me: &SecretIdentity, r: &str, e: &SecretIdentity, c: &str, run: &str, s| {
            open_result(me, kem, r, e.public(), c, run, s)
        };
        assert_eq!(open(&me, "r", &enclave, "c", "run-1", &s).unwrap(), table());

        // Another party's key, another receiver name, another contract, another run (a result
        // relabelled by the host): the HPKE context no longer matches.
        for e in [
            open(&other, "r", &enclave, "c", "run-1", &s),
            open(&me, "q", &enclave, "c", "run-1", &s),
            open(&me, "r", &enclave, "d", "run-1", &s),
            open(&me, "r", &enclave, "c", "run-2", &s),
        ] {
            assert_eq!(e.unwrap_err(), ApiError::Undecryptable);
        }
        // Signed by a key other than the attested enclave's.
        let e = open(&me, "r", &other, "c", "run-1", &s).unwrap_err();
        assert_eq!(e, ApiError::ResultSignature);
        // A genuine table for run 2 sealed under run 1's label is caught by the id check.
        let mut two = table();
        two.run_id = "run-2".into();
        let info = result_context("c", "run-1", "r");
        let signed = SignedResult {
            signature: b64::encode(enclave.sign(
                RESULT_DOMAIN,
                serde_json::to_string(&two).unwrap().as_bytes(),
            )),
            table: serde_json::to_string(&two).unwrap(),
            pq_signature: None,
        };
        let swapped = kura_crypto::seal(
            me.public(),
            kem,
            &info,
            b"",
            &serde_json::to_vec(&signed).unwrap(),
        )
        .unwrap();
        let e = open(&me, "r", &enclave, "c", "run-1", &swapped).unwrap_err();
        assert!(matches!(e, ApiError::OtherRun { .. }), "{e}");
        // Under the other KEM than the contract's, nothing opens.
        assert_eq!(
            open_result(
                &me,
                kura_crypto::Kem::X25519,
                "r",
                enclave.public(),
                "c",
                "run-1",
                &s
            )
            .unwrap_err(),
            ApiError::Undecryptable
        );
    }

    #[test]
    fn results_without_types_still_parse() {
        let old =
            r#"{"run_id":"r","analysis":"a","columns":["x"],"rows":[[1]],"suppressed_groups":0}"#;
        let t: ResultTable = serde_json::from_str(old).unwrap();
        assert!(t.types.is_empty());
        let json = serde_json::to_value(table()).unwrap();
        assert_eq!(json["types"], serde_json::json!(["utf8", "int64"]));
    }
}
