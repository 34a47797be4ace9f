//! The client side of kura: what a party runs on its own machine.
//!
//! A [`Client`] first verifies the enclave's evidence against the contract ([`Client::attest`]);
//! nothing is sent before that succeeds. Uploads are encrypted here, chunk by chunk, so
//! plaintext never leaves the provider's machine; results are decrypted here and their enclave
//! signature checked against the attested key.

use std::io::Read;
use std::path::Path;

use kura_api::{
    Action, Answer, ApiError, AuditResponse, EnclaveInfo, ErrorBody, RequestBody, ResultTable,
    ResultsResponse, RunResponse, SignedRequest, SignedResponse, UploadFormat, UploadHeader,
    UploadResponse, UploadTicket, routes,
};
use kura_attestation::Claims;
use kura_contract::{ADHOC_ANALYSIS, Contract, SignedContract};
use kura_crypto::{DEFAULT_CHUNK_SIZE, DataKey, PublicIdentity, SecretIdentity, StreamEncoder};
use kura_ledger::{ChainReport, Event, LogEntry, Receipt, SignedTreeHead, TreeHead};

pub mod audit;
pub mod certs;

/// Installs ring as rustls' crypto provider for this process (once; later calls are no-ops).
/// [`Client::new`] does; other HTTP clients in the same process may need it first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("this key belongs to no party of the contract")]
    NotAParty,
    #[error("cannot reach the enclave at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("enclave evidence refused: {0}")]
    Attestation(#[from] kura_attestation::AttestationError),
    #[error("the enclave serves contract {served}, not this contract ({expected})")]
    WrongContract { served: String, expected: String },
    /// The service refused the request; `reason` is its explanation.
    #[error("{reason}")]
    Refused {
        status: u16,
        code: String,
        reason: String,
        /// The output rule that refused a query, by its stable id.
        rule: Option<String>,
    },
    #[error("the enclave's answer is invalid: {0}")]
    Protocol(String),
    /// An answer without the enclave's signature: the host (or anything on the way) may have
    /// written it, so it is reported but never acted on.
    #[error("the host answered HTTP {status} without the enclave's signature: {reason}")]
    Unauthenticated { status: u16, reason: String },
    /// The enclave's clock and this machine's disagree by more than the contract allows.
    #[error("clocks disagree: {0}")]
    Clock(String),
    /// A signed answer that is not to the request this client sent: replayed or swapped.
    #[error("the answer does not belong to this request: {0}")]
    NotMine(String),
    #[error("cannot read {path}: {reason}")]
    Input { path: String, reason: String },
    /// Refused on this machine, before anything was sent.
    #[error("{0}")]
    Local(String),
    #[error("audit log does not verify: {0}")]
    Audit(String),
    /// The log contradicts a tree head this party saw before, or a receipt does not verify.
    #[error("the enclave's log cannot be trusted: {0}")]
    Log(String),
}

/// The enclave as verified by [`Client::attest`].
#[derive(Clone, Debug)]
pub struct VerifiedEnclave {
    pub key: PublicIdentity,
    pub claims: Claims,
    pub info: EnclaveInfo,
}

impl VerifiedEnclave {
    pub fn is_simulated(&self) -> bool {
        self.claims.platform == kura_contract::Platform::Simulated
    }
}

#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    contract: Contract,
    me: SecretIdentity,
    party: String,
    enclave: Option<VerifiedEnclave>,
    /// The latest tree head this party verified; every contact must extend it.
    known_head: Option<SignedTreeHead>,
    /// Where certificates and collateral the evidence lacks come from.
    certs: Option<certs::Certs>,
    /// The request hash of each run this client started, by run id.
    started: std::collections::HashMap<String, String>,
    /// This provider's bucket for its datasets at rest (default: the service's store).
    storage: Option<kura_api::Storage>,
    /// Whether uploads add a batch to a dataset already uploaded.
    append: bool,
}

/// Result of an audit verification.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditReport {
    pub chain: ChainReport,
    pub entries: Vec<LogEntry>,
    /// The verified, signed tree head that covers `entries`.
    pub head: TreeHead,
}

impl Client {
    /// A client acts only on a contract signed by every party.
    pub fn new(
        base_url: &str,
        contract: SignedContract,
        me: SecretIdentity,
    ) -> Result<Self, ClientError> {
        let contract = contract.contract().clone();
        let party = contract
            .party_by_key(me.public())
            .ok_or(ClientError::NotAParty)?
            .name
            .clone();
        install_crypto_provider();
        Ok(Self {
            http: reqwest::Client::new(),
            base: base_url.trim_end_matches('/').to_string(),
            contract,
            me,
            party,
            enclave: None,
            known_head: None,
            certs: None,
            started: std::collections::HashMap::new(),
            storage: None,
            append: false,
        })
    }

    /// Keeps this provider's datasets in its own S3-compatible bucket, reached by the enclave
    /// with these credentials (sealed to it with every upload and release, never logged).
    pub fn with_storage(mut self, storage: Option<kura_api::Storage>) -> Self {
        self.storage = storage;
        self
    }

    /// Makes the next uploads add a batch to their dataset rather than provide it whole.
    pub fn set_append(&mut self, append: bool) {
        self.append = append;
    }

    /// Completes evidence that lacks a VCEK or DCAP collateral from `certs` before verifying
    /// it. Without it, evidence is verified with what the enclave sent.
    pub fn with_certs(mut self, certs: certs::Certs) -> Self {
        self.certs = Some(certs);
        self
    }

    /// The evidence with what verification needs added from the certificate store, if any.
    async fn completed(
        &self,
        evidence: &kura_attestation::Evidence,
    ) -> Result<kura_attestation::Evidence, ClientError> {
        let mut evidence = evidence.clone();
        if let Some(certs) = &self.certs {
            certs.complete(&mut evidence).await?;
        }
        Ok(evidence)
    }

    /// Starts from a tree head seen in an earlier session (persisted by the caller).
    pub fn with_known_head(mut self, head: Option<SignedTreeHead>) -> Self {
        self.known_head = head;
        self
    }

    /// The latest verified tree head, for the caller to persist.
    pub fn known_head(&self) -> Option<&SignedTreeHead> {
        self.known_head.as_ref()
    }

    pub fn party(&self) -> &str {
        &self.party
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    fn url(&self, route: &str) -> String {
        format!("{}{route}", self.base)
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    /// Fetches and verifies the enclave's evidence against the contract: platform accepted,
    /// measurement and debug policy, and the binding of the contract id and enclave keys. The
    /// answer must be signed by the attested key for this call's fresh nonce, and its log head
    /// must extend the one this party saw before; only then is the enclave used.
    pub async fn attest(&mut self) -> Result<&VerifiedEnclave, ClientError> {
        let nonce = kura_api::nonce();
        let resp = self
            .http
            // The nonce is hex: nothing to escape.
            .get(format!("{}?nonce={nonce}", self.url(routes::EVIDENCE)))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let (status, signed) = envelope(resp).await?;
        // The key that must have signed the answer is the one its evidence attests.
        let info = match signed.parse::<EnclaveInfo>().map_err(protocol)?.answer {
            Answer::Ok(info) => info,
            // No attested key to check it with: the host's word.
            Answer::Refused(e) => {
                return Err(ClientError::Unauthenticated {
                    status,
                    reason: e.reason,
                });
            }
        };
        if info.contract_id != self.contract.id().as_str() {
            return Err(ClientError::WrongContract {
                served: info.contract_id,
                expected: self.contract.id().to_string(),
            });
        }
        let key = PublicIdentity::parse(&info.enclave_key)
            .map_err(|e| ClientError::Protocol(format!("enclave key: {e}")))?;
        post_quantum(&key)?;
        let evidence = self.completed(&info.evidence).await?;
        let claims = kura_attestation::verify_enclave(
            &evidence,
            &self.contract.enclave,
            self.contract.id(),
            &key,
        )?;
        let request = kura_api::request_hash(&kura_api::evidence_request(&nonce));
        let info = match signed.open::<EnclaveInfo>(&key, &request) {
            Ok(Answer::Ok(info)) => info,
            Ok(Answer::Refused(e)) => return Err(refused(e)),
            Err(e) => return Err(not_mine(e)),
        };
        let head = info.tree_head.clone();
        check_clock(
            &head,
            self.contract.enclave.clock_tolerance_seconds,
            time::OffsetDateTime::now_utc(),
        )?;
        let candidate = VerifiedEnclave { key, claims, info };
        self.advance_head(&candidate, head, None).await?;
        self.enclave = Some(candidate);
        Ok(self.enclave.as_ref().expect("just set"))
    }

    /// Accepts `head` (signed by the attested key) as the latest, after checking that it extends
    /// the head this party saw before. Fetches a consistency proof unless `entries` (the whole
    /// log) are at hand.
    async fn advance_head(
        &mut self,
        enclave: &VerifiedEnclave,
        head: SignedTreeHead,
        entries: Option<&[LogEntry]>,
    ) -> Result<(), ClientError> {
        let log_err = |e: kura_ledger::LedgerError| ClientError::Log(e.to_string());
        // The offered head must be signed by the attested key in every case.
        head.verify(&enclave.key).map_err(log_err)?;
        let mut head = head;
        if let Some(old) = self
            .known_head
            .as_ref()
            .map(SignedTreeHead::unverified)
            .transpose()
            .map_err(log_err)?
        {
            match entries {
                Some(entries) => {
                    let prefix = entries.get(..old.size as usize).ok_or_else(|| {
                        ClientError::Log(
                            "the log is shorter than one seen before: it was rolled back".into(),
                        )
                    })?;
                    if kura_ledger::root_of(prefix) != old.root {
                        return Err(ClientError::Log(
                            "the log's history differs from the one seen before: it was rewritten or forked".into(),
                        ));
                    }
                }
                None => {
                    let resp: kura_api::ConsistencyResponse = self
                        .call_with(enclave, Action::Consistency { from: old.size })
                        .await
                        // The enclave itself says it cannot prove it: its log is not the one
                        // this party saw.
                        .map_err(|e| match e {
                            ClientError::Refused { reason, .. } => ClientError::Log(reason),
                            other => other,
                        })?;
                    let new = resp.tree_head.verify(&enclave.key).map_err(log_err)?;
                    kura_ledger::verify_consistency(&old, &new, &resp.proof).map_err(log_err)?;
                    head = resp.tree_head;
                }
            }
        }
        self.known_head = Some(head);
        Ok(())
    }

    /// Checks that `receipt` proves an entry appended after `after` (the size of the log this
    /// party knew when it sent the request, so that no older entry passes for the new one)
    /// whose event `expected` accepts, field by field.
    fn check_receipt(
        &self,
        enclave: &VerifiedEnclave,
        receipt: &Receipt,
        after: u64,
        what: &str,
        expected: impl Fn(&Event) -> bool,
    ) -> Result<(), ClientError> {
        receipt
            .verify(&enclave.key)
            .map_err(|e| ClientError::Log(format!("receipt refused: {e}")))?;
        if receipt.index < after {
            return Err(ClientError::NotMine(format!(
                "the receipt for {what} is for log entry {}, older than this request",
                receipt.index
            )));
        }
        let event = receipt
            .entry
            .parse_body()
            .map_err(|e| ClientError::Log(e.to_string()))?
            .event;
        if !expected(&event) {
            return Err(ClientError::NotMine(format!(
                "the receipt for {what} records another event ({})",
                event.kind()
            )));
        }
        Ok(())
    }

    /// The size of the log this party knows: entries a new request creates come after it.
    fn known_size(&self) -> Result<u64, ClientError> {
        Ok(match &self.known_head {
            Some(h) => {
                h.unverified()
                    .map_err(|e| ClientError::Log(e.to_string()))?
                    .size
            }
            None => 0,
        })
    }

    /// Accepts the newest of `receipts`' tree heads as this party's known head (after the
    /// consistency check), so that a later rollback of what they record is caught.
    async fn advance_to_receipts<'a>(
        &mut self,
        enclave: &VerifiedEnclave,
        receipts: impl IntoIterator<Item = &'a Receipt>,
    ) -> Result<(), ClientError> {
        let newest = receipts
            .into_iter()
            .filter_map(|r| Some((r.tree_head.unverified().ok()?.size, &r.tree_head)))
            .max_by_key(|(size, _)| *size);
        if let Some((size, head)) = newest
            && size > self.known_size()?
        {
            self.advance_head(enclave, head.clone(), None).await?;
        }
        Ok(())
    }

    async fn enclave(&mut self) -> Result<VerifiedEnclave, ClientError> {
        if self.enclave.is_none() {
            self.attest().await?;
        }
        Ok(self.enclave.clone().expect("attested"))
    }

    /// A request for this contract and this enclave instance, with a fresh nonce, signed.
    fn request(&self, enclave: &VerifiedEnclave, action: Action) -> SignedRequest {
        let body = RequestBody {
            contract_id: self.contract.id().to_string(),
            enclave: enclave.key.fingerprint(),
            nonce: kura_api::nonce(),
            time: Some(now_text()),
            action,
        };
        SignedRequest::new(&self.party, &self.me, &body)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        action: Action,
    ) -> Result<(T, String), ClientError> {
        let enclave = self.enclave().await?;
        let req = self.request(&enclave, action);
        let (value, call) = self.send(&enclave, &req).await?;
        Ok((value, call.request))
    }

    async fn call_with<T: serde::de::DeserializeOwned>(
        &self,
        enclave: &VerifiedEnclave,
        action: Action,
    ) -> Result<T, ClientError> {
        let req = self.request(enclave, action);
        Ok(self.send(enclave, &req).await?.0)
    }

    /// Seals `req` to the attested enclave, sends it, and opens the answer: sealed under this
    /// call's key, signed by the attested key, to this request. Returns the call too, for an
    /// upload's second answer.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        enclave: &VerifiedEnclave,
        req: &SignedRequest,
    ) -> Result<(T, kura_api::OutgoingCall), ClientError> {
        let call = kura_api::seal_call(
            &enclave.key,
            self.contract.crypto.kem,
            self.contract.id().as_str(),
            req,
        )
        .map_err(protocol)?;
        let resp = self
            .http
            .post(self.url(routes::CALL))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(call.message.clone())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let value = answer(resp, &call, 0, &enclave.key).await?;
        Ok((value, call))
    }

    /// Encrypts `path` on this machine and streams it to the enclave as `dataset`.
    /// `progress` is called with the number of plaintext bytes read so far.
    pub async fn upload(
        &mut self,
        dataset: &str,
        path: &Path,
        progress: impl Fn(u64) + Send + 'static,
    ) -> Result<UploadResponse, ClientError> {
        let input_err = |e: std::io::Error| ClientError::Input {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut file = std::fs::File::open(path).map_err(input_err)?;
        if let Some(model) = self.contract.model(dataset) {
            // A model is checked against the contract's pin here first: the enclave refuses any
            // other file, and would say so only after the whole of it arrived.
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(input_err)?;
            if hex::encode(kura_crypto::sha256(&bytes)) != model.sha256 {
                return Err(ClientError::Local(format!(
                    "{} is not the model the contract pins for {dataset:?} (its SHA-256 differs)",
                    path.display()
                )));
            }
            return self
                .upload_reader(
                    dataset,
                    UploadFormat::Onnx,
                    std::io::Cursor::new(bytes),
                    progress,
                )
                .await;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("parquet" | "pq") => {
                let (head, rest) = kura_api::footer_first(&mut file).map_err(input_err)?;
                let stream = std::io::Cursor::new(head).chain(file.take(rest));
                // The stream opens with two lengths that are not the file's: progress counts
                // the file's bytes, so it ends at the file's size.
                let prefix = kura_api::FOOTER_FIRST_PREFIX as u64;
                let of_file = move |n: u64| progress(n.saturating_sub(prefix));
                self.upload_reader(dataset, UploadFormat::ParquetFooterFirst, stream, of_file)
                    .await
            }
            _ => {
                self.upload_reader(dataset, UploadFormat::Csv, file, progress)
                    .await
            }
        }
    }

    /// Like [`Client::upload`], from any reader.
    pub async fn upload_reader(
        &mut self,
        dataset: &str,
        format: UploadFormat,
        reader: impl Read + Send + 'static,
        progress: impl Fn(u64) + Send + 'static,
    ) -> Result<UploadResponse, ClientError> {
        // Refuse locally what the enclave would refuse after the first bytes: it stops reading
        // then, and a large upload would end in a broken connection instead of a reason.
        let Some(provider) = self.contract.provider_of(dataset) else {
            return Err(ClientError::Local(format!(
                "dataset {dataset:?} is not in the contract"
            )));
        };
        let model = self.contract.model(dataset).is_some();
        if provider != self.party {
            return Err(ClientError::Local(format!(
                "party {:?} is not the provider of {} {dataset:?} (its provider is {provider:?})",
                self.party,
                if model { "model" } else { "dataset" }
            )));
        }
        let enclave = self.enclave().await?;
        // The data key is wrapped under a context that includes the request's nonce, so the
        // nonce is drawn first and the signed header then carries the wrapped key.
        let (contract_id, fingerprint, nonce) = (
            self.contract.id().to_string(),
            enclave.key.fingerprint(),
            kura_api::nonce(),
        );
        let context = kura_api::upload_context(&contract_id, dataset, &fingerprint, &nonce);
        let key = DataKey::generate();
        let kem = self.contract.crypto.kem;
        let wrapped = kura_crypto::seal(&enclave.key, kem, &context, b"", key.as_bytes())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let body = RequestBody {
            contract_id,
            enclave: fingerprint,
            nonce,
            time: Some(now_text()),
            action: Action::Upload(UploadHeader {
                dataset: dataset.to_string(),
                format,
                wrapped_key: wrapped,
                storage: self.storage.clone(),
                append: self.append,
            }),
        };
        let signed = SignedRequest::new(&self.party, &self.me, &body);
        let after = self.known_size()?;
        let (ticket, call): (UploadTicket, _) = self.send(&enclave, &signed).await?;
        let request = call.request.clone();

        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
        let encoder = StreamEncoder::new(key, &context);
        let sender =
            tokio::task::spawn_blocking(move || encrypt_file(reader, encoder, tx, progress));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let resp = self
            .http
            .post(self.url(&routes::upload_stream(&ticket.ticket)))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        // The stream's answer is the header call's second.
        let resp: UploadResponse = answer(resp, &call, 1, &enclave.key).await?;
        let sent = sender
            .await
            .map_err(|_| ClientError::Local("the encrypting thread stopped".into()))?;
        // The log must record this upload: this dataset, from this party, these exact bytes
        // (every upload's ciphertext is new: fresh key and nonce), for this request.
        // Its file key must be sealed to this party, or no later enclave instance could ever
        // get it back; a model is held in memory, never at rest.
        let sha = hex::encode(sent.sha256);
        let location = kura_api::Storage::location(self.storage.as_ref());
        self.check_receipt(&enclave, &resp.receipt, after, "the upload", |e| {
            matches!(e, Event::Upload {
                dataset: d, provider, rows, ciphertext_bytes, ciphertext_sha256, request: r,
                stored,
            } if d == dataset && provider == &self.party && *rows == resp.rows
                && *ciphertext_bytes == sent.bytes && ciphertext_sha256 == &sha
                && r.as_deref() == Some(request.as_str())
                && match stored {
                    None => model,
                    Some(stored) => !model && stored.location == location
                        && self.open_file_key(dataset, stored).is_ok(),
                })
        })?;
        if resp.dataset != dataset || resp.ciphertext_bytes != sent.bytes {
            return Err(ClientError::NotMine(
                "the upload's answer names another dataset or size".into(),
            ));
        }
        self.advance_to_receipts(&enclave, [&resp.receipt]).await?;
        Ok(resp)
    }

    /// Starts an analysis of the contract.
    pub async fn run(&mut self, analysis: &str) -> Result<RunResponse, ClientError> {
        self.start(Action::Run {
            analysis: analysis.to_string(),
        })
        .await
    }

    /// Runs an ad-hoc query under the contract's `[adhoc]` rules; the enclave refuses it,
    /// naming the rule, unless its plan satisfies them. Under `[privacy.dp]` the query is
    /// differentially private and spends `epsilon` (default: the contract's `query_epsilon`).
    pub async fn query(
        &mut self,
        sql: &str,
        epsilon: Option<f64>,
    ) -> Result<RunResponse, ClientError> {
        self.start(Action::Query {
            sql: sql.to_string(),
            epsilon,
        })
        .await
    }

    async fn start(&mut self, action: Action) -> Result<RunResponse, ClientError> {
        let (analysis, sql) = match &action {
            Action::Run { analysis } => (analysis.clone(), None),
            Action::Query { sql, .. } => (ADHOC_ANALYSIS.to_string(), Some(sql.clone())),
            other => unreachable!("not a run: {other:?}"),
        };
        let after = self.known_size()?;
        let (resp, request): (RunResponse, String) = self.call(action).await?;
        let enclave = self.enclave().await?;
        // The log must record this run: its id, this analysis or SQL, by this party, for this
        // request; and one deletion per dataset the answer says was deleted.
        self.check_receipt(&enclave, &resp.receipt, after, "the run", |e| {
            matches!(e, Event::Run { run_id, analysis: a, by, sql: s, request: r, .. }
                if run_id == &resp.run_id && a == &analysis && by == &self.party
                    && s == &sql && r.as_deref() == Some(request.as_str()))
        })?;
        if resp.analysis != analysis || resp.deletions.len() != resp.deleted.len() {
            return Err(ClientError::NotMine(
                "the run's answer names another analysis or other deletions".into(),
            ));
        }
        for (receipt, dataset) in resp.deletions.iter().zip(&resp.deleted) {
            self.check_receipt(
                &enclave,
                receipt,
                after,
                "a deletion",
                |e| matches!(e, Event::Deletion { dataset: d, .. } if d == dataset),
            )?;
        }
        self.advance_to_receipts(
            &enclave,
            std::iter::once(&resp.receipt).chain(&resp.deletions),
        )
        .await?;
        self.started.insert(resp.run_id.clone(), request);
        Ok(resp)
    }

    /// Fetches, decrypts and verifies this party's results (all runs, or one). Each must be
    /// released to this party on the record, signed by the enclave for its run, and (for a run
    /// this client started) answer the request this client sent.
    pub async fn results(&mut self, run_id: Option<&str>) -> Result<Vec<ResultTable>, ClientError> {
        let (resp, _): (ResultsResponse, _) = self
            .call(Action::Results {
                run_id: run_id.map(str::to_string),
            })
            .await?;
        let enclave = self.enclave().await?;
        let mut tables = Vec::with_capacity(resp.results.len());
        for sealed in &resp.results {
            if sealed.receiver != self.party {
                return Err(ClientError::NotMine(
                    "a result addressed to another party".into(),
                ));
            }
            if run_id.is_some_and(|id| id != sealed.run_id) {
                return Err(ClientError::NotMine(format!(
                    "a result of run {} where run {} was asked for",
                    sealed.run_id,
                    run_id.unwrap_or_default()
                )));
            }
            // The release must be on the record, for this run, receiver and ciphertext (it may
            // be older than this request: results stay until fetched).
            let sha = hex::encode(kura_crypto::sha256(&sealed.sealed.ct));
            self.check_receipt(&enclave, &sealed.receipt, 0, "a result", |e| {
                matches!(e, Event::Release { run_id, receiver, result_sha256 }
                    if run_id == &sealed.run_id && receiver == &self.party
                        && result_sha256 == &sha)
            })?;
            let signer = self.signer_of(&enclave, sealed).await?;
            let table = kura_api::open_result(
                &self.me,
                self.contract.crypto.kem,
                &self.party,
                &signer,
                self.contract.id().as_str(),
                &sealed.run_id,
                &sealed.sealed,
            )
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(request) = self.started.get(&table.run_id)
                && table.request.as_ref() != Some(request)
            {
                return Err(ClientError::NotMine(format!(
                    "the result of run {} answers another request",
                    table.run_id
                )));
            }
            tables.push(table);
        }
        Ok(tables)
    }

    /// The key that must have signed `sealed`: the attested enclave's, or for a result sealed
    /// before a restart, the key of the earlier start that released it. That start must be in
    /// the attested enclave's log, for this contract, with evidence for that key that verifies
    /// against the contract as of the time it was recorded; and the release entry must be
    /// signed by it.
    async fn signer_of(
        &self,
        enclave: &VerifiedEnclave,
        sealed: &kura_api::SealedResult,
    ) -> Result<PublicIdentity, ClientError> {
        let (Some(signer), Some(start)) = (&sealed.signer, &sealed.start) else {
            return match sealed.signer {
                None => Ok(enclave.key.clone()),
                Some(_) => Err(ClientError::Log(
                    "a result of an earlier start comes without that start's record".into(),
                )),
            };
        };
        let key = PublicIdentity::parse(signer)
            .map_err(|e| ClientError::Protocol(format!("the result's signer: {e}")))?;
        post_quantum(&key)?;
        let contract_id = self.contract.id().as_str();
        self.check_receipt(enclave, start, 0, "an earlier start", |e| {
            matches!(e, Event::EnclaveStarted { contract_id: c, enclave_key, .. }
                if c == contract_id && enclave_key == signer)
        })?;
        if start.index >= sealed.receipt.index {
            return Err(ClientError::Log(
                "a result released before the start that signed it".into(),
            ));
        }
        let body = start
            .entry
            .parse_body()
            .map_err(|e| ClientError::Log(e.to_string()))?;
        let Event::EnclaveStarted { evidence, .. } = &body.event else {
            unreachable!("checked above");
        };
        let completed = self.completed(evidence).await?;
        kura_ledger::Start {
            contract_id,
            key: &key,
            evidence,
            time: &body.time,
        }
        .verify(&self.contract, &completed)
        .map_err(|e| ClientError::Log(format!("the start that sealed a result: {e}")))?;
        let sig = kura_crypto::b64::decode(&sealed.receipt.entry.signature)
            .map_err(|e| ClientError::Log(e.to_string()))?;
        key.verify(
            kura_ledger::ENTRY_DOMAIN,
            sealed.receipt.entry.body.as_bytes(),
            &sig,
        )
        .map_err(|_| {
            ClientError::Log("a result's release is not signed by the start that sealed it".into())
        })?;
        Ok(key)
    }

    /// The key of one of this provider's stored batches, opened from the log.
    fn open_file_key(
        &self,
        dataset: &str,
        stored: &kura_ledger::StoredBatch,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
        let info = kura_api::file_key_info(self.contract.id().as_str(), dataset, &stored.batch);
        kura_crypto::open(&self.me, self.contract.crypto.kem, &info, b"", &stored.key).map_err(
            |_| {
                ClientError::Audit(format!(
                    "the key of batch {} of {dataset:?} is not sealed to this party",
                    stored.batch
                ))
            },
        )
    }

    /// Releases the keys of this provider's stored datasets to the attested enclave instance
    /// (after a restart or an upgrade), so that it reads them from storage again. Only after
    /// the whole log verifies; never the keys of a dataset the log shows deleted (naming one
    /// in `only` is an error). Datasets already released to this instance are skipped.
    pub async fn release(
        &mut self,
        only: &[String],
    ) -> Result<Vec<kura_api::ReleaseResponse>, ClientError> {
        let report = self.audit().await?;
        let enclave = self.enclave().await?;
        let mine: Vec<&str> = self
            .contract
            .datasets
            .iter()
            .filter(|d| d.provider == self.party)
            .map(|d| d.name.as_str())
            .collect();
        let mut stored: std::collections::BTreeMap<String, Vec<kura_ledger::StoredBatch>> =
            Default::default();
        let mut deleted = std::collections::BTreeMap::new();
        let mut released = std::collections::BTreeSet::new();
        for entry in &report.entries {
            let body = entry
                .parse_body()
                .map_err(|e| ClientError::Audit(e.to_string()))?;
            match body.event {
                // What an instance holds (uploaded to it, or released to it) dies with it.
                Event::EnclaveStarted { .. } => released.clear(),
                Event::Upload {
                    dataset,
                    stored: Some(batch),
                    ..
                } if mine.contains(&dataset.as_str()) => {
                    released.insert(dataset.clone());
                    stored.entry(dataset).or_default().push(batch);
                }
                Event::KeysReleased { dataset, .. } => {
                    released.insert(dataset);
                }
                Event::Deletion { dataset, reason } => {
                    stored.remove(&dataset);
                    deleted.insert(dataset, reason);
                }
                _ => {}
            }
        }
        for name in only {
            if !mine.contains(&name.as_str()) {
                return Err(ClientError::Local(format!(
                    "party {:?} provides no dataset {name:?}",
                    self.party
                )));
            }
            if let Some(why) = deleted.get(name) {
                return Err(ClientError::Local(format!(
                    "dataset {name:?} was deleted ({why}): its keys are never released again"
                )));
            }
            if !stored.contains_key(name) {
                return Err(ClientError::Local(format!(
                    "the log records no stored batch of {name:?}: upload it"
                )));
            }
        }
        let contract_id = self.contract.id().to_string();
        let fingerprint = enclave.key.fingerprint();
        let mut answers = Vec::new();
        for (dataset, batches) in &stored {
            if (!only.is_empty() && !only.contains(dataset)) || released.contains(dataset) {
                continue;
            }
            let location = &batches[0].location;
            let storage = match location.as_str() {
                kura_api::LOCAL_STORE => None,
                url => match &self.storage {
                    Some(s) if s.url == url => Some(s.clone()),
                    _ => {
                        return Err(ClientError::Local(format!(
                            "dataset {dataset:?} is stored at {url}: give that bucket's \
                             credentials (--storage)"
                        )));
                    }
                },
            };
            let mut keys = Vec::new();
            for batch in batches {
                let key = self.open_file_key(dataset, batch)?;
                let info =
                    kura_api::release_info(&contract_id, dataset, &batch.batch, &fingerprint);
                let sealed =
                    kura_crypto::seal(&enclave.key, self.contract.crypto.kem, &info, b"", &key)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                keys.push(kura_api::BatchKey {
                    batch: batch.batch.clone(),
                    key: sealed,
                });
            }
            let after = self.known_size()?;
            let action = Action::Release(kura_api::ReleaseRequest {
                dataset: dataset.clone(),
                keys,
                storage,
            });
            let (resp, _): (kura_api::ReleaseResponse, _) = self.call(action).await?;
            let ids: Vec<&str> = batches.iter().map(|b| b.batch.as_str()).collect();
            self.check_receipt(&enclave, &resp.receipt, after, "the release", |e| {
                matches!(e, Event::KeysReleased { dataset: d, party, batches: b }
                    if d == dataset && party == &self.party
                        && b.iter().map(String::as_str).eq(ids.iter().copied()))
            })?;
            self.advance_to_receipts(&enclave, [&resp.receipt]).await?;
            answers.push(resp);
        }
        Ok(answers)
    }

    /// Fetches the whole log and verifies it: chain, signatures, the evidence of every enclave
    /// start against this contract, the signed Merkle root, consistency with the head this
    /// party saw before, and that every event was allowed by the contract.
    pub async fn audit(&mut self) -> Result<AuditReport, ClientError> {
        let (resp, _): (AuditResponse, _) = self.call(Action::Audit).await?;
        // Every enclave start's evidence, completed from the certificate store up front (the
        // chain check below is synchronous).
        let mut completed = std::collections::HashMap::new();
        for body in resp.entries.iter().filter_map(|e| e.parse_body().ok()) {
            if let kura_ledger::Event::EnclaveStarted { evidence, .. } = body.event
                && !completed.contains_key(&evidence.data)
            {
                let full = self.completed(&evidence).await?;
                completed.insert(evidence.data, full);
            }
        }
        let contract = &self.contract;
        // Each start's evidence is judged as of the time it was recorded.
        let chain = kura_ledger::verify_chain(&resp.entries, |start| {
            start.verify(
                contract,
                completed
                    .get(&start.evidence.data)
                    .unwrap_or(start.evidence),
            )
        })
        .map_err(|e| ClientError::Audit(e.to_string()))?;
        let enclave = self.enclave().await?;
        let head = resp
            .tree_head
            .verify(&enclave.key)
            .map_err(|e| ClientError::Audit(e.to_string()))?;
        if head.size != chain.entries || head.root != chain.root {
            return Err(ClientError::Audit(
                "the entries served are not the ones the signed tree head commits to".into(),
            ));
        }
        let bodies = resp
            .entries
            .iter()
            .map(LogEntry::parse_body)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Audit(e.to_string()))?;
        audit::check_events(&self.contract, &bodies).map_err(ClientError::Audit)?;
        self.advance_head(&enclave, resp.tree_head, Some(&resp.entries))
            .await?;
        Ok(AuditReport {
            chain,
            entries: resp.entries,
            head,
        })
    }
}

/// What [`encrypt_file`] sent: the ciphertext's size and SHA-256, which the log must record.
struct Sent {
    bytes: u64,
    sha256: [u8; 32],
}

/// Reads, encrypts and sends; runs on its own thread so file reads never block the runtime.
fn encrypt_file(
    mut reader: impl Read,
    mut encoder: StreamEncoder,
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    progress: impl Fn(u64),
) -> Sent {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    let mut sent = 0u64;
    let mut read_total = 0u64;
    let mut current = vec![0u8; DEFAULT_CHUNK_SIZE];
    let mut next = vec![0u8; DEFAULT_CHUNK_SIZE];
    let fill = |buf: &mut Vec<u8>, r: &mut dyn Read| -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    };
    let result = (|| -> std::io::Result<()> {
        let mut len = fill(&mut current, &mut reader)?;
        loop {
            let next_len = if len == current.len() {
                fill(&mut next, &mut reader)?
            } else {
                0
            };
            let last = next_len == 0;
            let mut frame = Vec::with_capacity(len + 32);
            encoder
                .seal_chunk(&current[..len], last, &mut frame)
                .map_err(std::io::Error::other)?;
            read_total += len as u64;
            progress(read_total);
            digest.update(&frame);
            sent += frame.len() as u64;
            if tx.blocking_send(Ok(bytes::Bytes::from(frame))).is_err() {
                return Ok(()); // the request ended early; its error is reported there
            }
            if last {
                return Ok(());
            }
            std::mem::swap(&mut current, &mut next);
            len = next_len;
        }
    })();
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
    Sent {
        bytes: sent,
        sha256: digest.finalize().into(),
    }
}

/// The enclave signed `head` just now (for this request's nonce), so its time is the enclave's
/// clock, which must agree with this machine's (`now`) within `tolerance` seconds. A clock the
/// host turned back would keep a deadline from passing.
fn check_clock(
    head: &SignedTreeHead,
    tolerance: u64,
    now: time::OffsetDateTime,
) -> Result<(), ClientError> {
    let head = head
        .unverified()
        .map_err(|e| ClientError::Log(e.to_string()))?;
    let at =
        time::OffsetDateTime::parse(&head.time, &time::format_description::well_known::Rfc3339)
            .map_err(|_| ClientError::Protocol("the tree head's time is not RFC 3339".into()))?;
    let behind = (now - at).whole_seconds();
    if behind.unsigned_abs() > tolerance {
        return Err(ClientError::Clock(format!(
            "the enclave's clock is {} s {} this machine's, more than the contract's tolerance of {tolerance} s",
            behind.unsigned_abs(),
            if behind > 0 { "behind" } else { "ahead of" }
        )));
    }
    Ok(())
}

/// This machine's time, RFC 3339, for signed requests.
fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting of now")
}

/// Largest answer the client reads (results and logs included).
pub const MAX_RESPONSE: usize = 256 << 20;

/// An answer's status and body, at most [`MAX_RESPONSE`] bytes.
async fn read(mut resp: reqwest::Response) -> Result<(u16, Vec<u8>), ClientError> {
    let status = resp.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ClientError::Protocol(format!("reading the answer: {e}")))?
    {
        if bytes.len() + chunk.len() > MAX_RESPONSE {
            return Err(ClientError::Protocol(format!(
                "the answer exceeds {MAX_RESPONSE} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, bytes))
}

/// What a body that is not the enclave's says, for the record: never acted on.
fn hosts_word(status: u16, bytes: &[u8]) -> ClientError {
    ClientError::Unauthenticated {
        status,
        reason: serde_json::from_slice::<ErrorBody>(bytes)
            .map(|e| e.reason)
            .unwrap_or_else(|_| "(no readable reason)".into()),
    }
}

/// Reads the evidence answer's signed envelope. A body without one is the host's word.
async fn envelope(resp: reqwest::Response) -> Result<(u16, SignedResponse), ClientError> {
    let (status, bytes) = read(resp).await?;
    serde_json::from_slice::<SignedResponse>(&bytes)
        .map(|s| (status, s))
        .map_err(|_| hosts_word(status, &bytes))
}

/// Answer number `seq` to `call`: sealed under its key, signed by `key`, to its request. A
/// status other than 200 is the host's word (the enclave seals every answer, refusals too, as
/// 200).
async fn answer<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    call: &kura_api::OutgoingCall,
    seq: u64,
    key: &PublicIdentity,
) -> Result<T, ClientError> {
    let (status, bytes) = read(resp).await?;
    if status != 200 {
        return Err(hosts_word(status, &bytes));
    }
    match kura_api::open_answer(call, seq, key, &bytes).map_err(not_mine)? {
        Answer::Ok(value) => Ok(value),
        Answer::Refused(e) => Err(refused(e)),
    }
}

fn refused(e: ErrorBody) -> ClientError {
    ClientError::Refused {
        status: e.status,
        code: e.code,
        reason: e.reason,
        rule: e.rule,
    }
}

fn not_mine(e: ApiError) -> ClientError {
    match e {
        ApiError::OtherRequest | ApiError::ResponseSignature | ApiError::Unopened => {
            ClientError::NotMine(e.to_string())
        }
        other => ClientError::Protocol(other.to_string()),
    }
}

fn protocol(e: ApiError) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Refuses an enclave key that does not also sign with ML-DSA-65: its tree heads and results
/// would verify with Ed25519 alone, so an enclave build from before hybrid signatures, which a
/// contract might still accept, would be a downgrade the host could choose.
fn post_quantum(key: &PublicIdentity) -> Result<(), ClientError> {
    if key.signs_post_quantum() {
        return Ok(());
    }
    Err(ClientError::Protocol(
        "the enclave's key does not sign with ML-DSA-65 (kura-pub-v3): its heads and results \
         would rest on Ed25519 alone; this client accepts hybrid signatures only"
            .into(),
    ))
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    fn head_at(t: time::OffsetDateTime) -> SignedTreeHead {
        let head = TreeHead {
            size: 1,
            root: "00".repeat(32),
            time: t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            enclave_key: SecretIdentity::generate().public().to_text(),
        };
        SignedTreeHead {
            body: serde_json::to_string(&head).unwrap(),
            signature: String::new(),
            pq_signature: None,
        }
    }

    /// An enclave key without an ML-DSA-65 half (a build from before hybrid signatures) is
    /// refused, so its heads and results never verify on Ed25519 alone.
    #[test]
    fn only_an_enclave_key_that_signs_post_quantum_is_accepted() {
        assert!(post_quantum(SecretIdentity::generate_post_quantum().public()).is_ok());
        let e = post_quantum(SecretIdentity::generate().public()).unwrap_err();
        assert!(e.to_string().contains("ML-DSA-65"), "{e}");
    }

    #[test]
    fn an_enclave_clock_outside_the_tolerance_is_refused_either_way() {
        let now = time::OffsetDateTime::now_utc();
        let minutes = |m: i64| now + time::Duration::minutes(m);
        assert!(check_clock(&head_at(minutes(-4)), 300, now).is_ok());
        assert!(check_clock(&head_at(minutes(4)), 300, now).is_ok());
        for (at, words) in [
            (minutes(-6), "360 s behind"),
            (minutes(6), "360 s ahead of"),
        ] {
            match check_clock(&head_at(at), 300, now) {
                Err(ClientError::Clock(reason)) => assert!(reason.contains(words), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
