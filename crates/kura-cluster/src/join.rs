//! How an executor joins a coordinator: mutual attestation before any plan, key or byte of
//! data moves.
//!
//! 1. The executor makes a TLS key pair and gets evidence whose report data binds the contract
//!    and that key ([`kura_attestation::executor_report_data`]).
//! 2. It verifies the coordinator as a party would: the coordinator's evidence against the
//!    contract's `[enclave]` policy, bound to the coordinator's key, signed for a fresh nonce.
//! 3. It sends its evidence and TLS key ([`JoinRequest`]). The coordinator verifies them against
//!    the same policy, logs the executor (or its refusal), and answers, signed with its attested
//!    key for this very request, with the certificate of the executor's key from its authority
//!    ([`Admission`]).
//! 4. The executor then speaks only mutual TLS with certificates of that authority.

use kura_api::{Answer, EnclaveInfo, SignedResponse, evidence_request, request_hash, routes};
use kura_attestation::{Claims, Evidence};
use kura_contract::Contract;
use kura_crypto::PublicIdentity;
use serde::{Deserialize, Serialize};

/// The join route on the coordinator's service.
pub const JOIN: &str = "/v1/cluster/join";

/// An executor's request to join.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub contract_id: String,
    /// The executor's TLS public key (PEM), bound by `evidence`.
    pub tls_key: String,
    pub evidence: Evidence,
}

/// The coordinator's answer: where its scheduler listens, its authority, and the certificate of
/// the executor's key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// The name under which the log records this executor.
    pub executor: String,
    /// `host:port` of the scheduler (mutual TLS).
    pub scheduler: String,
    pub authority: String,
    pub certificate: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the coordinator is not an enclave of this contract: {0}")]
    Coordinator(String),
    #[error("the coordinator refused this executor: {0}")]
    Refused(String),
}

/// The coordinator, verified.
#[derive(Debug, Clone)]
pub struct VerifiedCoordinator {
    pub key: PublicIdentity,
    pub claims: Claims,
}

/// Steps 2 and 3 of the join, from the executor.
pub async fn join(
    coordinator: &str,
    contract: &Contract,
    tls_key: &str,
    evidence: Evidence,
) -> Result<(VerifiedCoordinator, Admission), JoinError> {
    let base = coordinator.trim_end_matches('/');
    // reqwest is built without a default TLS provider: use ring's, as the client does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    // Every answer is a signed response, whatever its status.
    let answer = |request: reqwest::RequestBuilder| async move {
        let unreachable = |e: reqwest::Error| JoinError::Unreachable {
            url: base.to_string(),
            reason: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        response.json::<SignedResponse>().await.map_err(unreachable)
    };
    let bad = |what: &str| JoinError::Coordinator(what.to_string());
    let nonce = kura_api::nonce();
    let signed = answer(http.get(format!("{base}{}?nonce={nonce}", routes::EVIDENCE))).await?;
    let info = match signed
        .parse::<EnclaveInfo>()
        .map_err(|e| bad(&e.to_string()))?
        .answer
    {
        Answer::Ok(info) => info,
        Answer::Refused(e) => return Err(bad(&e.reason)),
    };
    if info.contract_id != contract.id().as_str() {
        return Err(bad("it serves another contract"));
    }
    let key = PublicIdentity::parse(&info.enclave_key).map_err(|e| bad(&e.to_string()))?;
    let claims =
        kura_attestation::verify_enclave(&info.evidence, &contract.enclave, contract.id(), &key)
            .map_err(|e| bad(&e.to_string()))?;
    match signed.open::<EnclaveInfo>(&key, &request_hash(&evidence_request(&nonce))) {
        Ok(Answer::Ok(_)) => {}
        _ => return Err(bad("its evidence is not signed for this request")),
    }
    let body = serde_json::to_string(&JoinRequest {
        contract_id: contract.id().to_string(),
        tls_key: tls_key.to_string(),
        evidence,
    })
    .expect("requests serialise");
    let signed = answer(
        http.post(format!("{base}{JOIN}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone()),
    )
    .await?;
    match signed.open::<Admission>(&key, &request_hash(&body)) {
        Ok(Answer::Ok(admission)) => Ok((VerifiedCoordinator { key, claims }, admission)),
        Ok(Answer::Refused(e)) => Err(JoinError::Refused(e.reason)),
        Err(e) => Err(bad(&format!("its answer does not verify: {e}"))),
    }
}
