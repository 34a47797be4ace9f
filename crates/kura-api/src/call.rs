//! A call as it travels: the party's [`SignedRequest`] sealed to the attested enclave key, and
//! the enclave's [`SignedResponse`] sealed back under the key only that request's sender holds
//! ([`kura_crypto::channel`]). The host sees one route, sealed bodies of padded sizes and
//! status 200; which action, which party, which SQL, which refusal: none of it.

use kura_crypto::channel::{self, AnswerKey};
use kura_crypto::{Kem, PublicIdentity, SecretIdentity};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Answer, ApiError, SignedRequest, SignedResponse, request_hash};

/// HPKE `info` of calls to one enclave instance for one contract.
pub fn call_context(contract_id: &str, enclave: &str) -> Vec<u8> {
    format!("kura-call-v1\0{contract_id}\0{enclave}").into_bytes()
}

/// Largest sealed call the enclave reads: a sealed [`crate::MAX_REQUEST`].
pub fn max_sealed_call() -> usize {
    channel::max_request_len(crate::MAX_REQUEST)
}

/// A sealed call, ready to send, with what its answers are opened with.
#[derive(Debug)]
pub struct OutgoingCall {
    pub message: Vec<u8>,
    /// [`request_hash`] of the signed request: the answer must name it.
    pub request: String,
    pub key: AnswerKey,
}

/// The party's half: `req` sealed to the attested `enclave` key with the contract's `kem`.
pub fn seal_call(
    enclave: &PublicIdentity,
    kem: Kem,
    contract_id: &str,
    req: &SignedRequest,
) -> Result<OutgoingCall, ApiError> {
    let plain = serde_json::to_vec(req).expect("requests serialise");
    let info = call_context(contract_id, &enclave.fingerprint());
    let (message, key) = channel::seal_request(enclave, kem, &info, &plain)
        .map_err(|e| ApiError::Seal(e.to_string()))?;
    Ok(OutgoingCall {
        message,
        request: request_hash(&req.body),
        key,
    })
}

/// The party's half: answer number `seq` to `call`, opened, its signature checked against the
/// attested `enclave` key and its request against `call`'s.
pub fn open_answer<T: DeserializeOwned>(
    call: &OutgoingCall,
    seq: u64,
    enclave: &PublicIdentity,
    sealed: &[u8],
) -> Result<Answer<T>, ApiError> {
    let plain = call.key.open(seq, sealed).map_err(|_| ApiError::Unopened)?;
    let signed: SignedResponse =
        serde_json::from_slice(&plain).map_err(|e| ApiError::MalformedResponse(e.to_string()))?;
    signed.open(enclave, &call.request)
}

/// The enclave's half: opens a sealed call to `me`.
pub fn open_call(
    me: &SecretIdentity,
    kem: Kem,
    contract_id: &str,
    message: &[u8],
) -> Result<(SignedRequest, AnswerKey), ApiError> {
    let info = call_context(contract_id, &me.public().fingerprint());
    let (plain, key) = channel::open_request(me, kem, &info, message).map_err(|_| {
        ApiError::Malformed(format!(
            "the call does not open with this enclave's key under this contract's KEM ({kem}): \
             sealed to another instance, or altered"
        ))
    })?;
    let req = serde_json::from_slice(&plain).map_err(|e| ApiError::Malformed(e.to_string()))?;
    Ok((req, key))
}

/// The enclave's half: `answer` to the request whose hash is `request`, signed and sealed as
/// answer number `seq` under `key`.
pub fn seal_answer<T: Serialize>(
    me: &SecretIdentity,
    key: &AnswerKey,
    seq: u64,
    request: &str,
    answer: Answer<T>,
) -> Vec<u8> {
    let signed = SignedResponse::sign(me, request, answer);
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&signed).expect("answers serialise"));
    key.seal(seq, &plain)
        .expect("an answer within u32 bytes seals")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, RequestBody};

    fn request(me: &SecretIdentity, enclave: &PublicIdentity) -> SignedRequest {
        let body = RequestBody {
            contract_id: "c".into(),
            enclave: enclave.fingerprint(),
            nonce: crate::nonce(),
            time: None,
            action: Action::Query {
                sql: "SELECT secret_column FROM t".into(),
                epsilon: None,
            },
        };
        SignedRequest::new("hospital-a", me, &body)
    }

    #[test]
    fn a_call_is_read_only_by_the_enclave_and_its_answer_only_by_the_caller() {
        let (enclave, party) = (SecretIdentity::generate(), SecretIdentity::generate());
        let req = request(&party, enclave.public());
        let call = seal_call(enclave.public(), Kem::XWing, "c", &req).unwrap();
        for needle in ["hospital-a", "secret_column", "query"] {
            assert!(
                !call
                    .message
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
                "{needle} travels in clear"
            );
        }
        // Only this instance, under this contract and KEM, opens it.
        let other = SecretIdentity::generate();
        assert!(open_call(&other, Kem::XWing, "c", &call.message).is_err());
        assert!(open_call(&enclave, Kem::XWing, "d", &call.message).is_err());
        assert!(open_call(&enclave, Kem::X25519, "c", &call.message).is_err());
        let (opened, key) = open_call(&enclave, Kem::XWing, "c", &call.message).unwrap();
        assert_eq!(opened.body, req.body);

        let refusal = crate::ErrorBody {
            code: "refused".into(),
            reason: "refused by rule min-group-size".into(),
            rule: Some("min-group-size".into()),
            status: 422,
        };
        let sealed = seal_answer::<u64>(
            &enclave,
            &key,
            0,
            &call.request,
            Answer::Refused(refusal.clone()),
        );
        assert!(!sealed.windows(14).any(|w| w == b"min-group-size"));
        assert_eq!(
            open_answer::<u64>(&call, 0, enclave.public(), &sealed).unwrap(),
            Answer::Refused(refusal)
        );
        // At another position, or to another call (a swap or a replay), it does not open.
        assert_eq!(
            open_answer::<u64>(&call, 1, enclave.public(), &sealed).unwrap_err(),
            ApiError::Unopened
        );
        let second = seal_call(enclave.public(), Kem::XWing, "c", &req).unwrap();
        assert_eq!(
            open_answer::<u64>(&second, 0, enclave.public(), &sealed).unwrap_err(),
            ApiError::Unopened
        );
    }
}
