//! The service's state and the rules applied to every request.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kura_api::{
    Action, AuditResponse, ConsistencyResponse, EnclaveInfo, RequestBody, ResultTable, RunResponse,
    SealedResult, SignedRequest, SignedResult, UploadHeader, UploadResponse,
};
use kura_contract::{ADHOC_ANALYSIS, AnalysisKind, Contract, DeleteAfter, Party, Role};
use kura_crypto::{DataKey, SecretIdentity, StreamDecoder, b64};
use kura_engine::{InputFormat, Tables};
use kura_ledger::{Event, Ledger, LogEntry, Receipt};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::{Config, ServiceError};

/// A dataset held in enclave memory.
struct Held {
    batches: Vec<kura_engine::RecordBatch>,
}

/// An accepted upload header waiting for its stream.
struct Pending {
    party: String,
    dataset: kura_contract::Dataset,
    format: InputFormat,
    key: DataKey,
    context: Vec<u8>,
    created: std::time::Instant,
}

/// How long a ticket stays valid, and how many may wait at once.
const TICKET_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);
const MAX_PENDING_UPLOADS: usize = 64;

#[derive(Default)]
struct State {
    pending: std::collections::HashMap<String, Pending>,
    datasets: BTreeMap<String, Held>,
    /// Datasets that were deleted, with the reason; they cannot be uploaded or used again.
    deleted: BTreeMap<String, String>,
    results: BTreeMap<String, Vec<SealedResult>>,
    nonces: HashSet<String>,
    runs: u64,
    /// The privacy budget spent so far, when the contract has `[privacy.dp]`.
    budget: Option<kura_contract::dp::Budget>,
    /// Who stood behind every released cell, under `[adhoc] overlap_control`.
    overlap: Option<kura_engine::overlap::Overlap>,
}

/// Rebuilds what must survive a restart from the log: which datasets were deleted (they stay
/// deleted) and how many runs there were. Returns the datasets the previous instance held,
/// which are lost now. Refuses a log that belongs to another contract.
fn recover(
    contract: &Contract,
    entries: &[LogEntry],
    state: &mut State,
) -> Result<Vec<String>, ServiceError> {
    let mut held = std::collections::BTreeSet::new();
    let bodies = entries
        .iter()
        .map(LogEntry::parse_body)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServiceError::Start(format!("stored log: {e}")))?;
    state.budget = kura_ledger::budget_spent(contract, bodies.iter().map(|b| &b.event));
    for body in &bodies {
        match &body.event {
            Event::EnclaveStarted { contract_id, .. } if contract_id != contract.id().as_str() => {
                return Err(ServiceError::Start(format!(
                    "the state directory holds the log of another contract ({contract_id}); use a new directory per contract"
                )));
            }
            Event::Upload { dataset, .. } => {
                held.insert(dataset.clone());
            }
            Event::Deletion { dataset, reason } => {
                held.remove(dataset);
                state.deleted.insert(dataset.clone(), reason.clone());
            }
            Event::Run { .. } => state.runs += 1,
            _ => {}
        }
    }
    Ok(held.into_iter().collect())
}

/// What a run executes: an ad-hoc query, a fixed aggregate analysis, a list, or either kind
/// of query under differential privacy (with its ε, if it names one).
enum Job<'a> {
    Query(&'a str),
    Dp(&'a str, Option<f64>),
    Aggregate(&'a str),
    List(&'a kura_contract::Analysis),
}

/// One enclave instance serving one contract.
pub struct Service {
    contract: Contract,
    identity: Arc<SecretIdentity>,
    info: EnclaveInfo,
    max_upload_bytes: u64,
    state: Mutex<State>,
    ledger: Mutex<Ledger>,
    /// The columns of each dataset that uploads keep, found on the first upload.
    kept: tokio::sync::OnceCell<Arc<KeptColumns>>,
}

type KeptColumns = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("contract", &self.contract.id())
            .field("enclave", &self.identity.public().fingerprint())
            .finish_non_exhaustive()
    }
}

impl Service {
    pub(crate) fn create(config: &Config) -> Result<Self, ServiceError> {
        let contract = config.contract.contract().clone();
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| ServiceError::Start(format!("cannot create state directory: {e}")))?;
        let identity = Arc::new(SecretIdentity::generate());
        let report_data = kura_attestation::report_data_for(contract.id(), identity.public());
        let mut evidence = crate::evidence::collect(config.platform, &report_data)?;
        evidence.certs.extend(config.evidence_certs.iter().cloned());
        if config.evidence_collateral.is_some() {
            evidence.collateral.clone_from(&config.evidence_collateral);
        }
        let mut ledger = Ledger::open(&config.state_dir.join("log.redb"), identity.clone())
            .map_err(|e| ServiceError::Start(e.to_string()))?;
        let mut state = State {
            budget: kura_contract::dp::Budget::of(&contract),
            overlap: kura_engine::overlap::Overlap::of(&contract),
            ..State::default()
        };
        let lost = recover(&contract, ledger.entries(), &mut state)?;
        ledger
            .append(Event::EnclaveStarted {
                contract_id: contract.id().to_string(),
                enclave_key: identity.public().to_text(),
                evidence: evidence.clone(),
            })
            .map_err(|e| ServiceError::Start(e.to_string()))?;
        // The previous instance's keys died with it: what it held can no longer be read.
        for dataset in lost {
            let reason = "enclave restarted: the previous instance's keys and plaintext are gone"
                .to_string();
            ledger
                .append(Event::Deletion {
                    dataset: dataset.clone(),
                    reason: reason.clone(),
                })
                .map_err(|e| ServiceError::Start(e.to_string()))?;
            state.deleted.insert(dataset, reason);
        }
        let info = EnclaveInfo {
            contract_id: contract.id().to_string(),
            enclave_key: identity.public().to_text(),
            evidence,
            tree_head: ledger.tree_head(),
            kura_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Ok(Self {
            contract,
            identity,
            info,
            max_upload_bytes: config.max_upload_bytes,
            state: Mutex::new(state),
            ledger: Mutex::new(ledger),
            kept: tokio::sync::OnceCell::new(),
        })
    }

    /// The evidence and keys of this instance, with the log's current head.
    pub async fn info(&self) -> EnclaveInfo {
        let mut info = self.info.clone();
        info.tree_head = self.ledger.lock().await.tree_head();
        info
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    async fn log(&self, event: Event) -> Result<Receipt, ServiceError> {
        Ok(self.ledger.lock().await.append(event)?)
    }

    /// Verifies who sent `req`, that it is meant for this contract and instance, and that it
    /// was not seen before. Returns the party and the body.
    pub(crate) async fn authenticate(
        &self,
        req: &SignedRequest,
    ) -> Result<(&Party, RequestBody), ServiceError> {
        let party = self.contract.party(&req.party).ok_or_else(|| {
            ServiceError::Unauthorized(format!("{:?} is not a party of this contract", req.party))
        })?;
        let body = req
            .open(&party.public_key)
            .map_err(|e| ServiceError::Unauthorized(format!("party {:?}: {e}", party.name)))?;
        if body.contract_id != self.contract.id().as_str() {
            return Err(ServiceError::Unauthorized(
                "request is for another contract".into(),
            ));
        }
        if body.enclave != self.identity.public().fingerprint() {
            return Err(ServiceError::Unauthorized(
                "request is for another enclave instance (it restarted?): attest again".into(),
            ));
        }
        if !self.state.lock().await.nonces.insert(body.nonce.clone()) {
            return Err(ServiceError::Unauthorized(
                "request replayed (nonce already used)".into(),
            ));
        }
        Ok((party, body))
    }

    fn deadline_passed(&self) -> bool {
        matches!(self.contract.retention.delete_after, DeleteAfter::Deadline(t) if time::OffsetDateTime::now_utc() >= t)
    }

    /// Checks an upload header: party, dataset, format, state, and that the data key was
    /// sealed to this enclave for this upload. Returns a single-use ticket for the stream.
    /// Every refusal is logged.
    pub(crate) async fn begin_upload(&self, req: SignedRequest) -> Result<String, ServiceError> {
        let (party, body) = self.authenticate(&req).await?;
        let Action::Upload(header) = &body.action else {
            return Err(ServiceError::BadRequest(
                "upload needs an upload action".into(),
            ));
        };
        let party = party.name.clone();
        match self.check_upload(&party, &body, header).await {
            Ok(pending) => {
                let ticket = kura_api::nonce();
                let mut state = self.state.lock().await;
                let now = std::time::Instant::now();
                state
                    .pending
                    .retain(|_, p| now.duration_since(p.created) < TICKET_LIFETIME);
                if state.pending.len() >= MAX_PENDING_UPLOADS {
                    return Err(ServiceError::Refused(
                        "too many uploads in progress; try again later".into(),
                    ));
                }
                state.pending.insert(ticket.clone(), pending);
                Ok(ticket)
            }
            Err(e) => Err(self.refuse_upload(&header.dataset, &party, e).await),
        }
    }

    async fn refuse_upload(&self, dataset: &str, party: &str, e: ServiceError) -> ServiceError {
        if matches!(e, ServiceError::Internal(_)) {
            return e;
        }
        let logged = self
            .log(Event::UploadRefused {
                dataset: dataset.to_string(),
                party: party.to_string(),
                reason: e.to_string(),
            })
            .await;
        match logged {
            Ok(_) => e,
            Err(log_error) => log_error,
        }
    }

    /// What a new upload must satisfy before its first byte of data (again at its end).
    fn check_state(&self, state: &State, dataset: &str) -> Result<(), ServiceError> {
        if let Some(why) = state.deleted.get(dataset) {
            return Err(ServiceError::Refused(format!(
                "dataset {dataset:?} was deleted ({why}); the contract does not allow it to be provided again"
            )));
        }
        if state.datasets.contains_key(dataset) {
            return Err(ServiceError::Refused(format!(
                "dataset {dataset:?} was already uploaded"
            )));
        }
        if self.deadline_passed() {
            return Err(ServiceError::Refused(
                "the contract's retention deadline has passed".into(),
            ));
        }
        Ok(())
    }

    async fn check_upload(
        &self,
        party: &str,
        body: &RequestBody,
        header: &UploadHeader,
    ) -> Result<Pending, ServiceError> {
        let dataset = self.contract.dataset(&header.dataset).ok_or_else(|| {
            ServiceError::NotFound(format!(
                "dataset {:?} is not in the contract",
                header.dataset
            ))
        })?;
        if dataset.provider != party {
            return Err(ServiceError::Forbidden(format!(
                "party {party:?} is not the provider of dataset {:?} (its provider is {:?})",
                dataset.name, dataset.provider
            )));
        }
        let format = match header.format.as_str() {
            "csv" => InputFormat::Csv,
            "parquet" => InputFormat::Parquet,
            "parquet-footer-first" => InputFormat::ParquetFooterFirst,
            other => {
                return Err(ServiceError::BadRequest(format!(
                    "unknown format {other:?} (csv, parquet or parquet-footer-first)"
                )));
            }
        };
        self.check_state(&*self.state.lock().await, &dataset.name)?;
        let context =
            kura_api::upload_context(&body.contract_id, &dataset.name, &body.enclave, &body.nonce);
        let key_bytes = kura_crypto::open(&self.identity, &context, b"", &header.wrapped_key).map_err(|_| {
            ServiceError::BadRequest("the data key cannot be unwrapped: it was not sealed to this enclave for this upload".into())
        })?;
        let key = DataKey::from_bytes(&key_bytes)
            .map_err(|_| ServiceError::BadRequest("the data key has the wrong length".into()))?;
        Ok(Pending {
            party: party.to_string(),
            dataset: dataset.clone(),
            format,
            key,
            context,
            created: std::time::Instant::now(),
        })
    }

    /// Receives the encrypted stream of a ticket. The whole body is read even after a failure,
    /// so that the sender gets the reason instead of a broken connection; nothing is kept unless
    /// every check passes.
    pub(crate) async fn upload_stream<S, E>(
        &self,
        ticket: &str,
        frames: S,
    ) -> Result<UploadResponse, ServiceError>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let pending = self
            .state
            .lock()
            .await
            .pending
            .remove(ticket)
            .ok_or_else(|| {
                ServiceError::NotFound("unknown or already used upload ticket".into())
            })?;
        let (dataset, party) = (pending.dataset.name.clone(), pending.party.clone());
        match self.receive(pending, frames).await {
            Ok(resp) => Ok(resp),
            Err(e) => Err(self.refuse_upload(&dataset, &party, e).await),
        }
    }

    async fn receive<S, E>(
        &self,
        pending: Pending,
        mut frames: S,
    ) -> Result<UploadResponse, ServiceError>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;

        let Pending {
            party,
            dataset,
            format,
            key,
            context,
            ..
        } = pending;
        // Decryption and parsing run on their own thread (parsing on a pool of its own), while
        // this task receives and hashes: the file is parsed while it is still arriving and is
        // never held whole.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(16);
        let ds = dataset.clone();
        let kept = self.kept_columns().await;
        let worker = tokio::task::spawn_blocking(move || {
            let mut decoder = StreamDecoder::new(&key, &context);
            drop(key);
            // A dataset missing from the set (none is) would keep everything rather than nothing.
            let keep = |column: &str| kept.get(&ds.name).is_none_or(|k| k.contains(column));
            let mut ingest = kura_engine::load::Ingest::keeping(&ds, format, keep);
            let refused = |e: kura_crypto::CryptoError| {
                ServiceError::BadRequest(format!("encrypted stream refused: {e}"))
            };
            let parse = |e: kura_engine::EngineError| ServiceError::BadRequest(e.to_string());
            while let Some(piece) = rx.blocking_recv() {
                // Decrypted straight into the ingest's buffer.
                ingest
                    .push_with(|buf| decoder.push(&piece, buf))
                    .map_err(parse)?
                    .map_err(refused)?;
            }
            decoder.finish().map_err(refused)?;
            ingest.finish().map_err(parse)
        });
        let mut received = 0u64;
        let mut digest = <sha2::Sha256 as sha2::Digest>::new();
        let mut tx = Some(tx);
        while let Some(piece) = frames.next().await {
            let piece =
                piece.map_err(|e| ServiceError::BadRequest(format!("upload interrupted: {e}")))?;
            received += piece.len() as u64;
            if received > self.max_upload_bytes {
                // Past the limit, stop reading: the sender is beyond what we agreed to drain.
                return Err(ServiceError::Refused(format!(
                    "upload exceeds the service's limit of {} bytes",
                    self.max_upload_bytes
                )));
            }
            let Some(sender) = &tx else { continue };
            sha2::Digest::update(&mut digest, &piece);
            if sender.send(piece).await.is_err() {
                // The worker refused the stream; read the rest so the sender gets the reason.
                tx = None;
            }
        }
        drop(tx);
        let batches = worker
            .await
            // A panic's message could quote what it was parsing: the log gets no words of it.
            .map_err(|_| {
                ServiceError::Internal("the decrypting and parsing worker stopped".into())
            })??;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();

        let mut state = self.state.lock().await;
        self.check_state(&state, &dataset.name)?;
        let receipt = self
            .log(Event::Upload {
                dataset: dataset.name.clone(),
                provider: party,
                rows,
                ciphertext_bytes: received,
                ciphertext_sha256: hex::encode(sha2::Digest::finalize(digest)),
            })
            .await?;
        state
            .datasets
            .insert(dataset.name.clone(), Held { batches });
        Ok(UploadResponse {
            dataset: dataset.name.clone(),
            rows,
            ciphertext_bytes: received,
            receipt,
        })
    }

    /// The columns uploads keep: those the contract's analyses read
    /// ([`kura_engine::columns_kept`]), or all if an analysis cannot be planned.
    async fn kept_columns(&self) -> Arc<KeptColumns> {
        self.kept
            .get_or_init(|| async {
                let kept = kura_engine::columns_kept(&self.contract)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!("uploads keep every column: {e}");
                        kura_engine::all_columns(&self.contract)
                    });
                for (dataset, columns) in &kept {
                    tracing::info!(dataset, ?columns, "uploads keep these columns");
                }
                Arc::new(kept)
            })
            .await
            .clone()
    }

    /// Runs an analysis of the contract for `party`.
    pub(crate) async fn run(&self, req: SignedRequest) -> Result<RunResponse, ServiceError> {
        let (party, body) = self.authenticate(&req).await?;
        let (analysis, sql) = match &body.action {
            Action::Run { analysis } => (analysis.clone(), None),
            Action::Query { sql, .. } => (ADHOC_ANALYSIS.to_string(), Some(sql.as_str())),
            _ => {
                return Err(ServiceError::BadRequest(
                    "run needs a run or query action".into(),
                ));
            }
        };
        let epsilon = match &body.action {
            Action::Query { epsilon, .. } => *epsilon,
            _ => None,
        };
        let party = party.name.clone();
        let mut charged = None;
        let result = self
            .run_checked(&party, &analysis, sql, epsilon, &mut charged)
            .await;
        if let Err(e) = &result
            && (charged.is_some() || !matches!(e, ServiceError::Internal(_)))
        {
            self.log(Event::RunRefused {
                analysis,
                party,
                reason: e.to_string(),
                sql: sql.map(str::to_string),
                dp: charged,
            })
            .await?;
        }
        result
    }

    /// Runs a named analysis, or (with `sql`) an ad-hoc query.
    async fn run_checked(
        &self,
        party: &str,
        analysis_name: &str,
        sql: Option<&str>,
        epsilon: Option<f64>,
        charged: &mut Option<kura_contract::dp::Spend>,
    ) -> Result<RunResponse, ServiceError> {
        let (job, receivers) = match sql {
            Some(sql) => {
                // Without an [adhoc] section the engine's refusal says so.
                kura_engine::roles::Rules::of(&self.contract).map_err(ServiceError::from)?;
                let receivers = self
                    .contract
                    .receivers_of(ADHOC_ANALYSIS)
                    .unwrap_or_default();
                // Under [privacy.dp] every ad-hoc query is differentially private.
                let job = if self.contract.privacy.dp.is_some() {
                    Job::Dp(sql, epsilon)
                } else {
                    Job::Query(sql)
                };
                (job, receivers.to_vec())
            }
            None => {
                let analysis = self.contract.analysis(analysis_name).ok_or_else(|| {
                    ServiceError::NotFound(format!(
                        "analysis {analysis_name:?} is not in the contract"
                    ))
                })?;
                let job = match analysis.kind {
                    AnalysisKind::List => Job::List(analysis),
                    AnalysisKind::Aggregate if analysis.dp => {
                        Job::Dp(&analysis.sql, analysis.epsilon)
                    }
                    AnalysisKind::Aggregate => Job::Aggregate(&analysis.sql),
                };
                (job, analysis.receivers.clone())
            }
        };
        if !self.contract.may_start(party, analysis_name) {
            return Err(ServiceError::Forbidden(format!(
                "party {party:?} may not start {}",
                if sql.is_some() {
                    "ad-hoc queries (not among [adhoc] analysts)".to_string()
                } else {
                    format!("analysis {analysis_name:?}")
                }
            )));
        }
        // Hold the state lock for the whole run: retention deletes what the run used, and no
        // upload or second run may interleave with that.
        let mut state = self.state.lock().await;
        let tables: Tables = state
            .datasets
            .iter()
            .map(|(name, held)| (name.clone(), held.batches.clone()))
            .collect();
        let same_for_all =
            |o: kura_engine::Output| receivers.iter().map(|r| (r.clone(), o.clone())).collect();
        // A DP run is planned and priced, and checked against the budget, before it touches
        // data. The state lock is held until its spend is logged and recorded, so concurrent
        // runs cannot overspend. A run refused before it reads data spends nothing; one that
        // fails after is charged in full (`charged`, logged with the refusal), or failures
        // would be free probes of the data.
        let mut spent = None;
        let executed = match job {
            Job::Dp(sql, epsilon) => {
                let prepared = kura_engine::dp::prepare(&self.contract, sql, epsilon, &tables)
                    .await
                    .map_err(ServiceError::from)?;
                if let Some(budget) = &state.budget {
                    budget
                        .check(&receivers, prepared.spend())
                        .map_err(ServiceError::Refused)?;
                }
                let spend = prepared.spend();
                spent = Some(spend);
                let ran = prepared.run(&tables).await;
                if ran.is_err() {
                    if let Some(budget) = &mut state.budget {
                        budget.record(&receivers, spend);
                    }
                    *charged = spent;
                }
                ran.map(same_for_all)
            }
            Job::Query(sql) => {
                kura_engine::run_query(&self.contract, sql, &tables, state.overlap.as_mut())
                    .await
                    .map(same_for_all)
            }
            Job::Aggregate(sql) => {
                kura_engine::run_analysis(&self.contract, sql, &tables, state.overlap.as_mut())
                    .await
                    .map(same_for_all)
            }
            Job::List(analysis) => kura_engine::list::run_list(&self.contract, analysis, &tables)
                .await
                .map(|m| m.into_iter().collect()),
        };
        let outputs: Vec<(String, kura_engine::Output)> = match executed {
            Ok(o) => o,
            Err(kura_engine::EngineError::MissingData(missing)) => {
                let gone: Vec<_> = missing
                    .iter()
                    .filter(|m| state.deleted.contains_key(*m))
                    .collect();
                return Err(ServiceError::Refused(if gone.is_empty() {
                    format!(
                        "not all data is present: waiting for dataset(s) {}",
                        missing.join(", ")
                    )
                } else {
                    format!("dataset(s) {gone:?} were deleted under the contract's retention rule")
                }));
            }
            Err(e) => return Err(e.into()),
        };
        drop(tables);

        state.runs += 1;
        let run_id = format!("run-{}-{}", state.runs, &kura_api::nonce()[..8]);
        let datasets = outputs
            .first()
            .map(|(_, o)| o.datasets.clone())
            .unwrap_or_default();
        let mut sealed_to = Vec::new();
        // Each receiver's table is signed and sealed on its own (a list gives each its rows).
        for (receiver, output) in outputs {
            let table = ResultTable {
                run_id: run_id.clone(),
                analysis: analysis_name.to_string(),
                columns: output.columns,
                rows: output.rows,
                suppressed_groups: output.suppressed_groups,
                dp: output.dp,
            };
            let table_json =
                serde_json::to_string(&table).map_err(|e| ServiceError::Internal(e.to_string()))?;
            let signed = SignedResult {
                signature: b64::encode(
                    self.identity
                        .sign(kura_api::RESULT_DOMAIN, table_json.as_bytes()),
                ),
                table: table_json,
            };
            let plaintext = Zeroizing::new(
                serde_json::to_vec(&signed).map_err(|e| ServiceError::Internal(e.to_string()))?,
            );
            let key = &self
                .contract
                .party(&receiver)
                .expect("validated receiver")
                .public_key;
            let info = kura_api::result_context(self.contract.id().as_str(), &run_id, &receiver);
            let s = kura_crypto::seal(key, &info, b"", &plaintext)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            sealed_to.push((receiver, s));
        }

        let receipt = self
            .log(Event::Run {
                run_id: run_id.clone(),
                analysis: analysis_name.to_string(),
                by: party.to_string(),
                datasets: datasets.clone(),
                rows: None,
                suppressed_groups: None,
                sql: sql.map(str::to_string),
                dp: spent,
            })
            .await?;
        if let (Some(budget), Some(spend)) = (&mut state.budget, spent) {
            budget.record(&receivers, spend);
        }
        let mut sealed = Vec::new();
        for (receiver, s) in sealed_to {
            let receipt = self
                .log(Event::Release {
                    run_id: run_id.clone(),
                    receiver: receiver.clone(),
                    result_sha256: hex::encode(kura_crypto::sha256(&s.ct)),
                })
                .await?;
            sealed.push(SealedResult {
                run_id: run_id.clone(),
                analysis: analysis_name.to_string(),
                receiver,
                sealed: s,
                receipt,
            });
        }
        state.results.insert(run_id.clone(), sealed);

        let mut deleted = Vec::new();
        let mut deletions = Vec::new();
        if self.contract.retention.delete_after == DeleteAfter::Run {
            for name in &datasets {
                deletions.push(
                    self.delete(
                        &mut state,
                        name,
                        "delete_after = \"run\": used by ".to_string() + &run_id,
                    )
                    .await?,
                );
                deleted.push(name.clone());
            }
        }
        Ok(RunResponse {
            run_id,
            analysis: analysis_name.to_string(),
            receivers,
            deleted,
            receipt,
            deletions,
        })
    }

    /// Destroys a dataset's plaintext and records it.
    async fn delete(
        &self,
        state: &mut State,
        name: &str,
        reason: String,
    ) -> Result<Receipt, ServiceError> {
        if let Some(held) = state.datasets.remove(name) {
            // The Arrow buffers are freed here; the data key and the decrypted file bytes were
            // zeroized right after parsing (see `receive`).
            drop(held);
        }
        state.deleted.insert(name.to_string(), reason.clone());
        self.log(Event::Deletion {
            dataset: name.to_string(),
            reason,
        })
        .await
    }

    /// Sealed results for the requesting receiver.
    pub(crate) async fn results(
        &self,
        req: SignedRequest,
    ) -> Result<Vec<SealedResult>, ServiceError> {
        let (party, body) = self.authenticate(&req).await?;
        let Action::Results { run_id } = &body.action else {
            return Err(ServiceError::BadRequest(
                "results needs a results action".into(),
            ));
        };
        if !party.has_role(Role::Receiver) {
            return Err(ServiceError::Forbidden(format!(
                "party {:?} does not have the receiver role",
                party.name
            )));
        }
        let state = self.state.lock().await;
        let runs: Vec<&Vec<SealedResult>> = match run_id {
            Some(id) => vec![state.results.get(id).ok_or_else(|| {
                ServiceError::NotFound(format!("no run {id:?} on this enclave instance"))
            })?],
            None => state.results.values().collect(),
        };
        let mut mine = Vec::new();
        for run in runs {
            match run.iter().find(|s| s.receiver == party.name) {
                Some(s) => mine.push(s.clone()),
                None if run_id.is_some() => {
                    return Err(ServiceError::Forbidden(format!(
                        "party {:?} is not a receiver of analysis {:?}",
                        party.name, run[0].analysis
                    )));
                }
                None => {}
            }
        }
        Ok(mine)
    }

    pub(crate) async fn audit(&self, req: SignedRequest) -> Result<AuditResponse, ServiceError> {
        let (_, body) = self.authenticate(&req).await?;
        if body.action != Action::Audit {
            return Err(ServiceError::BadRequest(
                "audit needs an audit action".into(),
            ));
        }
        let ledger = self.ledger.lock().await;
        Ok(AuditResponse {
            entries: ledger.entries().to_vec(),
            tree_head: ledger.tree_head(),
        })
    }

    /// Proves that the current log extends the first `from` entries a client saw.
    pub(crate) async fn consistency(
        &self,
        req: SignedRequest,
    ) -> Result<ConsistencyResponse, ServiceError> {
        let (_, body) = self.authenticate(&req).await?;
        let Action::Consistency { from } = body.action else {
            return Err(ServiceError::BadRequest(
                "consistency needs a consistency action".into(),
            ));
        };
        let ledger = self.ledger.lock().await;
        let proof = ledger
            .consistency(from)
            .map_err(|e| ServiceError::Refused(e.to_string()))?;
        Ok(ConsistencyResponse {
            tree_head: ledger.tree_head(),
            proof,
        })
    }

    /// Deletes everything at the contract's retention deadline, without anyone asking.
    pub(crate) fn spawn_retention_timer(self: &Arc<Self>) {
        let DeleteAfter::Deadline(deadline) = self.contract.retention.delete_after else {
            return;
        };
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let now = time::OffsetDateTime::now_utc();
                if now >= deadline {
                    break;
                }
                let wait = (deadline - now).whole_milliseconds().clamp(1, 1000) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
            let Some(service) = service.upgrade() else {
                return;
            };
            let mut state = service.state.lock().await;
            let names: Vec<String> = service
                .contract
                .datasets
                .iter()
                .map(|d| d.name.clone())
                .collect();
            for name in names {
                if !state.deleted.contains_key(&name)
                    && let Err(e) = service
                        .delete(&mut state, &name, "retention deadline reached".into())
                        .await
                {
                    tracing::error!(%e, "retention deletion failed");
                }
            }
        });
    }
}
