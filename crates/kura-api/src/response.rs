//! Every answer the enclave gives, both halves: the enclave signs the answer together with the
//! hash of the exact request it answers; the client checks the signature against the attested
//! enclave key and that the hash is that of the request it sent. The host between them can drop
//! an answer, but not swap it for another request's answer, replay an old one, or forge a
//! refusal.

use kura_crypto::{PublicIdentity, SecretIdentity, b64};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{ApiError, ErrorBody};

/// Signature domain of answers.
pub const RESPONSE_DOMAIN: &str = "response-v1";

/// Signature domain of the coordinator's answers to executors joining its cluster (a
/// challenge, an admission or a refusal): none of them can pass for an answer to a party.
pub const JOIN_DOMAIN: &str = "cluster-join-v1";

/// An answer as it travels: the exact JSON text of a [`ResponseBody`] and the enclave's
/// signature over it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedResponse {
    pub body: String,
    pub signature: String,
}

/// What the enclave signs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseBody<T> {
    /// [`request_hash`] of the request answered.
    pub request: String,
    pub answer: Answer<T>,
}

/// The service's verdict on a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer<T> {
    Ok(T),
    Refused(ErrorBody),
}

/// SHA-256 (hex) of a request's exact text: a signed request's `body`, or for the unsigned
/// evidence request, [`evidence_request`].
pub fn request_hash(text: &str) -> String {
    hex::encode(kura_crypto::sha256(text.as_bytes()))
}

/// The text an evidence request with `nonce` stands for (`GET /v1/evidence?nonce=...`).
pub fn evidence_request(nonce: &str) -> String {
    format!("kura-evidence-v1\0{nonce}")
}

impl SignedResponse {
    /// The enclave's half: `answer` to the request whose hash is `request`, signed.
    pub fn sign<T: Serialize>(key: &SecretIdentity, request: &str, answer: Answer<T>) -> Self {
        Self::sign_in(RESPONSE_DOMAIN, key, request, answer)
    }

    /// [`SignedResponse::sign`] in signature domain `domain`.
    pub fn sign_in<T: Serialize>(
        domain: &str,
        key: &SecretIdentity,
        request: &str,
        answer: Answer<T>,
    ) -> Self {
        let body = serde_json::to_string(&ResponseBody {
            request: request.to_string(),
            answer,
        })
        .expect("answers serialise");
        let signature = b64::encode(key.sign(domain, body.as_bytes()));
        Self { body, signature }
    }

    /// The client's half: checks the signature with the attested `key` and that the answer is to
    /// the request whose hash is `request`.
    pub fn open<T: DeserializeOwned>(
        &self,
        key: &PublicIdentity,
        request: &str,
    ) -> Result<Answer<T>, ApiError> {
        self.open_in(RESPONSE_DOMAIN, key, request)
    }

    /// [`SignedResponse::open`] in signature domain `domain`.
    pub fn open_in<T: DeserializeOwned>(
        &self,
        domain: &str,
        key: &PublicIdentity,
        request: &str,
    ) -> Result<Answer<T>, ApiError> {
        let sig = b64::decode(&self.signature).map_err(|_| ApiError::ResponseSignature)?;
        key.verify(domain, self.body.as_bytes(), &sig)
            .map_err(|_| ApiError::ResponseSignature)?;
        let body: ResponseBody<T> = self.parse()?;
        if body.request != request {
            return Err(ApiError::OtherRequest);
        }
        Ok(body.answer)
    }

    /// The body without checking anything: only for reading the evidence that establishes the
    /// key [`SignedResponse::open`] then checks.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<ResponseBody<T>, ApiError> {
        serde_json::from_str(&self.body).map_err(|e| ApiError::MalformedResponse(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_opens_only_for_its_request_and_its_enclave() {
        let enclave = SecretIdentity::generate();
        let request = request_hash("{\"nonce\":\"1\"}");
        let signed = SignedResponse::sign(&enclave, &request, Answer::Ok(7u64));
        assert_eq!(
            signed.open::<u64>(enclave.public(), &request),
            Ok(Answer::Ok(7))
        );
        // A join answer is no party's answer, nor the reverse.
        let joined = SignedResponse::sign_in(JOIN_DOMAIN, &enclave, &request, Answer::Ok(7u64));
        assert_eq!(
            joined.open::<u64>(enclave.public(), &request),
            Err(ApiError::ResponseSignature)
        );
        assert_eq!(
            signed.open_in::<u64>(JOIN_DOMAIN, enclave.public(), &request),
            Err(ApiError::ResponseSignature)
        );
        assert_eq!(
            joined.open_in::<u64>(JOIN_DOMAIN, enclave.public(), &request),
            Ok(Answer::Ok(7))
        );
        // Another request's answer (a replay, or a swap between two requests).
        assert_eq!(
            signed.open::<u64>(enclave.public(), &request_hash("{\"nonce\":\"2\"}")),
            Err(ApiError::OtherRequest)
        );
        // Signed by another key (another instance, or the host).
        let other = SecretIdentity::generate();
        assert_eq!(
            signed.open::<u64>(other.public(), &request),
            Err(ApiError::ResponseSignature)
        );
        // Edited after signing: a refusal turned into an answer, or a number changed.
        let mut edited = signed.clone();
        edited.body = edited.body.replace('7', "8");
        assert_eq!(
            edited.open::<u64>(enclave.public(), &request),
            Err(ApiError::ResponseSignature)
        );
        // A refusal is signed like an answer.
        let refusal = ErrorBody {
            code: "refused".into(),
            reason: "no".into(),
            rule: Some("min-group-size".into()),
            status: 422,
        };
        let signed =
            SignedResponse::sign::<u64>(&enclave, &request, Answer::Refused(refusal.clone()));
        assert_eq!(
            signed.open::<u64>(enclave.public(), &request),
            Ok(Answer::Refused(refusal))
        );
    }
}
