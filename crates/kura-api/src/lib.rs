//! The HTTP protocol between clients and the enclave service: routes, bodies, and the
//! signed-request and sealed-result formats. Both sides use these types, so they cannot drift.
//!
//! Every call except `GET /v1/evidence` is a [`SignedRequest`]: the party signs a body that
//! names the contract, the enclave key it attested, a fresh nonce and the action. The service
//! accepts a request only from a party of the contract, only for this enclave instance, and
//! only once. Every answer, refusals included, is a [`SignedResponse`]: signed by the enclave
//! key together with the hash of the request it answers (for the evidence, of the client's
//! nonce), so that the host can neither swap, replay nor forge one. Requests and answers travel
//! sealed ([`call`]): the host reads neither.

mod call;
mod response;
mod result;
mod upload;

use kura_attestation::Evidence;
use kura_crypto::{PublicIdentity, Sealed, SecretIdentity, b64};
use kura_ledger::{LogEntry, Receipt, SignedTreeHead};
use serde::{Deserialize, Serialize};

pub use call::{
    OutgoingCall, call_context, max_sealed_call, open_answer, open_call, seal_answer, seal_call,
};
pub use kura_contract::dp::{ColumnNoise, DpReport, GroupRelease};
pub use response::{
    Answer, JOIN_DOMAIN, RESPONSE_DOMAIN, ResponseBody, SignedResponse, evidence_request,
    request_hash,
};
pub use result::{
    ResultTable, SealedResult, SignedResult, open_result, result_context, seal_result,
};
pub use upload::{FOOTER_FIRST_PREFIX, UploadFormat, footer_first, footer_first_prefix};

pub const REQUEST_DOMAIN: &str = "request-v1";
pub const RESULT_DOMAIN: &str = "result-v1";

pub mod routes {
    /// Unsealed: the evidence, which the client needs before it can seal anything.
    pub const EVIDENCE: &str = "/v1/evidence";
    /// Liveness for load balancers and service managers: `{"status": "ok"}`, no request
    /// signature, nothing about the contract's data.
    pub const HEALTH: &str = "/v1/health";
    /// Every sealed call ([`super::seal_call`]), whatever its action: upload headers (answered
    /// with an [`super::UploadTicket`]), runs and queries, results, audit, consistency.
    pub const CALL: &str = "/v1/call";
    /// The encrypted stream for a ticket: `/v1/upload/{ticket}`; answered sealed under the
    /// header's call as answer number 1.
    pub const UPLOAD_STREAM: &str = "/v1/upload/{ticket}";

    pub fn upload_stream(ticket: &str) -> String {
        format!("/v1/upload/{ticket}")
    }
}

/// Largest request body other than an upload stream.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Answer to an accepted upload header: where to send the stream. Single use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadTicket {
    pub ticket: String,
}

/// The query of `GET /v1/evidence`: a fresh nonce (16 bytes, hex) that the signed answer
/// names, so that an old answer cannot pass for a new one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvidenceQuery {
    pub nonce: String,
}

/// What `GET /v1/evidence` answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnclaveInfo {
    pub contract_id: String,
    /// The enclave's public identity (text form); bound by the evidence's report data.
    pub enclave_key: String,
    pub evidence: Evidence,
    /// The log's current head, signed by the enclave key.
    pub tree_head: SignedTreeHead,
    pub kura_version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Upload(UploadHeader),
    Run {
        analysis: String,
    },
    /// An ad-hoc query under the contract's `[adhoc]` rules (sent to the run route).
    Query {
        sql: String,
        /// ε to spend when the contract has `[privacy.dp]` (default: its `query_epsilon`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epsilon: Option<f64>,
    },
    Results {
        run_id: Option<String>,
    },
    Audit,
    /// A consistency proof from the tree of the first `from` entries to the current head.
    Consistency {
        from: u64,
    },
    /// A provider releases the keys of its stored dataset to this enclave instance, which
    /// reads the dataset from storage again (after a restart or an upgrade).
    Release(ReleaseRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadHeader {
    pub dataset: String,
    /// The plaintext's layout.
    pub format: UploadFormat,
    /// The per-upload data key, HPKE-sealed to the enclave with [`upload_context`] as info.
    pub wrapped_key: Sealed,
    /// Where the enclave stores the dataset's encrypted files: the provider's own bucket. By
    /// default, the service's store (a directory of the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// Adds this upload to the dataset as a new batch; without it, a dataset takes one upload.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
}

/// A provider's S3-compatible bucket and the credentials the enclave writes and reads it with.
/// They travel only inside sealed calls, and are never logged or stored: a restarted enclave
/// gets them again with the dataset's keys ([`ReleaseRequest`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// The S3 endpoint, for stores other than AWS (`https://minio.example:9000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Plain HTTP to the endpoint (a store on the same machine). What travels is ciphertext
    /// and signed requests; the secret key itself is never sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
}

/// Prints nothing of the settings: a careless URL or endpoint can carry a credential too.
impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

/// The location the log records for a dataset kept in the service's own store.
pub const LOCAL_STORE: &str = "local";

impl Storage {
    /// The location the log records for a dataset kept here, or in the service's store when
    /// there is no bucket: the URL only, never a credential.
    pub fn location(storage: Option<&Storage>) -> String {
        storage.map_or_else(|| LOCAL_STORE.to_string(), |s| s.url.clone())
    }
}

/// The keys of a stored dataset's batches, each opened by its provider from the log and sealed
/// to this enclave instance with [`release_info`]; every batch the log records, or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub dataset: String,
    pub keys: Vec<BatchKey>,
    /// The bucket's credentials, when the dataset is in the provider's bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchKey {
    pub batch: String,
    pub key: Sealed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub dataset: String,
    pub batches: u64,
    pub rows: u64,
    /// Proof that the release is in the log.
    pub receipt: Receipt,
}

/// HPKE `info` of a stored batch's key sealed to its provider (recorded in the log).
pub fn file_key_info(contract_id: &str, dataset: &str, batch: &str) -> Vec<u8> {
    format!("kura-file-key-v1\0{contract_id}\0{dataset}\0{batch}").into_bytes()
}

/// HPKE `info` of a stored batch's key released by its provider to one enclave instance.
pub fn release_info(contract_id: &str, dataset: &str, batch: &str, enclave: &str) -> Vec<u8> {
    format!("kura-release-v1\0{contract_id}\0{dataset}\0{batch}\0{enclave}").into_bytes()
}

/// The AAD prefix of a stored batch's Parquet file: a file of one batch does not decrypt as
/// another's.
pub fn file_aad(contract_id: &str, dataset: &str, batch: &str) -> Vec<u8> {
    format!("kura-at-rest-v1\0{contract_id}\0{dataset}\0{batch}").into_bytes()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    pub contract_id: String,
    /// Fingerprint of the enclave key the client attested: a request is valid for one
    /// enclave instance only.
    pub enclave: String,
    /// 16 random bytes, hex; the service refuses a nonce it has seen.
    pub nonce: String,
    /// The party's clock when it signed (RFC 3339): the enclave's clock never goes behind it,
    /// and a time too far ahead of the enclave's is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub action: Action,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRequest {
    pub party: String,
    /// Exact JSON text of a [`RequestBody`] (what is signed).
    pub body: String,
    pub signature: String,
}

impl SignedRequest {
    pub fn new(party: &str, key: &SecretIdentity, body: &RequestBody) -> Self {
        let body = serde_json::to_string(body).expect("request body serialises");
        let signature = b64::encode(key.sign(REQUEST_DOMAIN, body.as_bytes()));
        Self {
            party: party.to_string(),
            body,
            signature,
        }
    }

    /// Checks the signature with the party's key and parses the body.
    pub fn open(&self, key: &PublicIdentity) -> Result<RequestBody, ApiError> {
        let sig = b64::decode(&self.signature).map_err(|_| ApiError::BadSignature)?;
        key.verify(REQUEST_DOMAIN, self.body.as_bytes(), &sig)
            .map_err(|_| ApiError::BadSignature)?;
        serde_json::from_str(&self.body).map_err(|e| ApiError::Malformed(e.to_string()))
    }
}

/// Fresh request nonce.
pub fn nonce() -> String {
    let mut n = [0u8; 16];
    kura_crypto::random_bytes(&mut n);
    hex::encode(n)
}

/// The context an upload is bound to: HPKE `info` for the data key and AAD of every chunk.
pub fn upload_context(contract_id: &str, dataset: &str, enclave: &str, nonce: &str) -> Vec<u8> {
    format!("kura-upload-v1\0{contract_id}\0{dataset}\0{enclave}\0{nonce}").into_bytes()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadResponse {
    pub dataset: String,
    pub rows: u64,
    pub ciphertext_bytes: u64,
    /// Proof that the upload is in the log.
    pub receipt: Receipt,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResponse {
    pub run_id: String,
    pub analysis: String,
    pub receivers: Vec<String>,
    /// Datasets deleted after this run under `delete_after = "run"`.
    pub deleted: Vec<String>,
    pub receipt: Receipt,
    /// Receipts of the deletions.
    pub deletions: Vec<Receipt>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultsResponse {
    pub results: Vec<SealedResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditResponse {
    pub entries: Vec<LogEntry>,
    pub tree_head: SignedTreeHead,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsistencyResponse {
    pub tree_head: SignedTreeHead,
    /// Base64 consistency proof (empty when trivial).
    pub proof: String,
}

/// Error body of every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub reason: String,
    /// The stable id of the output rule that refused the request (`aggregate-argument`,
    /// `min-group-size`, ...), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The HTTP status the refusal stands for (a sealed answer always travels as 200, so that
    /// the host cannot tell a refusal from an answer).
    #[serde(default)]
    pub status: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiError {
    #[error("request signature does not verify")]
    BadSignature,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("the result cannot be sealed: {0}")]
    Seal(String),
    #[error("the result does not decrypt for this party")]
    Undecryptable,
    #[error("the result is not signed by the attested enclave")]
    ResultSignature,
    #[error("the result is malformed: {0}")]
    MalformedResult(String),
    #[error("the result carries run {found}, not {expected}")]
    OtherRun { expected: String, found: String },
    #[error("the answer is not signed by the attested enclave")]
    ResponseSignature,
    #[error("the answer is to another request (replayed or swapped)")]
    OtherRequest,
    #[error("the answer is malformed: {0}")]
    MalformedResponse(String),
    #[error(
        "the answer does not open with this request's key: it answers another request \
         (replayed or swapped), or was altered or written on the way"
    )]
    Unopened,
}
