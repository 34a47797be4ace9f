//! How an executor joins a coordinator: mutual attestation before any plan, key or byte of
//! data moves.
//!
//! 1. The executor makes a TLS key pair.
//! 2. It verifies the coordinator as a party would: the coordinator's evidence against the
//!    contract's `[enclave]` policy, bound to the coordinator's key, signed for a fresh nonce.
//! 3. It asks the coordinator for a challenge ([`Challenge`]), which the coordinator accepts
//!    once, within [`CHALLENGE_LIFETIME`] (a few are outstanding at a time).
//! 4. It gets evidence whose report data binds the contract, that key and the challenge
//!    ([`kura_attestation::executor_report_data`]), and sends them ([`JoinRequest`]). The
//!    coordinator takes the challenge back (once), refuses a TLS key it already admitted in
//!    this start, verifies the evidence against the same policy, logs the executor (refusals
//!    at a bounded rate), and answers, signed with its attested key for this very request in
//!    a signature domain of its own ([`kura_api::JOIN_DOMAIN`]), with the certificate of the
//!    executor's key from its authority ([`Admission`]).
//! 5. The executor then speaks only mutual TLS with certificates of that authority.
//!
//! So a join captured on the wire cannot be admitted again (its challenge is spent), and the
//! same executor key cannot be admitted twice.

use kura_api::{
    Answer, EnclaveInfo, JOIN_DOMAIN, SignedResponse, evidence_request, request_hash, routes,
};
use kura_attestation::{Claims, Evidence};
use kura_contract::Contract;
use kura_crypto::PublicIdentity;
use serde::{Deserialize, Serialize};

/// The join route on the coordinator's service.
pub const JOIN: &str = "/v1/cluster/join";

/// The route that hands out join challenges.
pub const CHALLENGE: &str = "/v1/cluster/challenge";

/// How long a challenge can be used after it is handed out.
pub const CHALLENGE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

/// An executor's request for a challenge: a nonce of its own, which the signed answer names.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    pub nonce: String,
}

/// A challenge for one join (hex).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub challenge: String,
}

/// An executor's request to join.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub contract_id: String,
    /// The executor's TLS public key (PEM), bound by `evidence`.
    pub tls_key: String,
    /// The coordinator's challenge, bound by `evidence`.
    pub challenge: String,
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
    #[error("this executor has no evidence to send: {0}")]
    Evidence(String),
}

/// The coordinator, verified.
#[derive(Debug, Clone)]
pub struct VerifiedCoordinator {
    pub key: PublicIdentity,
    pub claims: Claims,
}

/// A coordinator verified (step 2), to which an executor asks to join.
#[derive(Debug)]
pub struct Joining {
    base: String,
    http: reqwest::Client,
    pub coordinator: VerifiedCoordinator,
}

impl Joining {
    /// Step 2: verifies the coordinator at `coordinator` against `contract`.
    pub async fn verify(coordinator: &str, contract: &Contract) -> Result<Self, JoinError> {
        let base = coordinator.trim_end_matches('/').to_string();
        // reqwest is built without a default TLS provider: use ring's, as the client does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let nonce = kura_api::nonce();
        let signed = answer(
            &base,
            http.get(format!("{base}{}?nonce={nonce}", routes::EVIDENCE)),
        )
        .await?;
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
        let claims = kura_attestation::verify_enclave(
            &info.evidence,
            &contract.enclave,
            contract.id(),
            &key,
        )
        .map_err(|e| bad(&e.to_string()))?;
        match signed.open::<EnclaveInfo>(&key, &request_hash(&evidence_request(&nonce))) {
            Ok(Answer::Ok(_)) => {}
            _ => return Err(bad("its evidence is not signed for this request")),
        }
        Ok(Self {
            base,
            http,
            coordinator: VerifiedCoordinator { key, claims },
        })
    }

    /// Step 3: a challenge for one join.
    pub async fn challenge(&self) -> Result<String, JoinError> {
        let body = serde_json::to_string(&ChallengeRequest {
            nonce: kura_api::nonce(),
        })
        .expect("requests serialise");
        let challenge: Challenge = self.post(CHALLENGE, body).await?;
        Ok(challenge.challenge)
    }

    /// Step 4: sends `request`; the coordinator's admission, or why it refused.
    pub async fn request(&self, request: &JoinRequest) -> Result<Admission, JoinError> {
        let body = serde_json::to_string(request).expect("requests serialise");
        self.post(JOIN, body).await
    }

    /// The coordinator's answer to `body` at `route`, which must be signed by its attested key
    /// for this very request, in the join's signature domain.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        body: String,
    ) -> Result<T, JoinError> {
        let base = &self.base;
        let signed = answer(
            base,
            self.http
                .post(format!("{base}{route}"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone()),
        )
        .await?;
        match signed.open_in::<T>(JOIN_DOMAIN, &self.coordinator.key, &request_hash(&body)) {
            Ok(Answer::Ok(value)) => Ok(value),
            Ok(Answer::Refused(e)) => Err(JoinError::Refused(e.reason)),
            Err(e) => Err(bad(&format!("its answer does not verify: {e}"))),
        }
    }
}

/// Every answer is a signed response, whatever its status.
async fn answer(base: &str, request: reqwest::RequestBuilder) -> Result<SignedResponse, JoinError> {
    let unreachable = |e: reqwest::Error| JoinError::Unreachable {
        url: base.to_string(),
        reason: e.to_string(),
    };
    let response = request.send().await.map_err(unreachable)?;
    response.json::<SignedResponse>().await.map_err(unreachable)
}

fn bad(what: &str) -> JoinError {
    JoinError::Coordinator(what.to_string())
}

/// Steps 2 to 4 of the join, from the executor: `evidence` gives evidence for the report data
/// it is handed.
pub async fn join(
    coordinator: &str,
    contract: &Contract,
    tls_key: &str,
    evidence: impl FnOnce(&[u8; 64]) -> Result<Evidence, String>,
) -> Result<(VerifiedCoordinator, Admission), JoinError> {
    let joining = Joining::verify(coordinator, contract).await?;
    let challenge = joining.challenge().await?;
    let report_data = kura_attestation::executor_report_data(contract.id(), tls_key, &challenge);
    let request = JoinRequest {
        contract_id: contract.id().to_string(),
        tls_key: tls_key.to_string(),
        challenge,
        evidence: evidence(&report_data).map_err(JoinError::Evidence)?,
    };
    let admission = joining.request(&request).await?;
    Ok((joining.coordinator, admission))
}
