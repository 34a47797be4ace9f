//! The service's state and the rules applied to every request: uploads (`upload`), runs
//! (`run`), recovery from the log at start (`recovery`) and deletion at a deadline
//! (`retention`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kura_api::{
    Action, AuditResponse, ConsistencyResponse, EnclaveInfo, RequestBody, SealedResult,
    SignedRequest,
};
use kura_contract::{Contract, DeleteAfter, Party, Role};
use kura_crypto::SecretIdentity;
use kura_ledger::{Event, Ledger, Receipt};
use tokio::sync::Mutex;

use crate::{Config, ServiceError};

mod cluster;
mod kept;
mod recovery;
pub(crate) use cluster::open_store;
mod release;
mod retention;
mod run;
mod store;
mod upload;

use upload::{KeptColumns, Pending};

/// A dataset at rest: its batches as the log records them, and, once this instance has their
/// keys (from the upload, or released by the provider after a restart), the files opened for
/// reading. Nothing of it is held decoded.
struct StoredDataset {
    /// As the log records it: [`store::LOCAL`] or the provider's `s3://` URL.
    location: String,
    /// The store, once this instance can reach it (a provider's bucket needs its credentials).
    store: Option<Arc<dyn object_store::ObjectStore>>,
    /// How a cluster's executors reach the same store ([`store::Origin`], secret).
    origin: Option<Arc<zeroize::Zeroizing<String>>>,
    batches: Vec<Batch>,
    /// The opened files, in batch order; all of them, or none.
    open: Vec<Arc<kura_engine::stored::StoredFile>>,
}

/// One upload of a dataset, as the log records it.
#[derive(Clone)]
struct Batch {
    id: String,
    object: String,
    /// What the enclave wrote there: its size and footer hash (hex; empty if not recorded).
    bytes: u64,
    footer_sha256: String,
}

impl Batch {
    /// What was written, as the log recorded it; `None` for an entry that recorded no hash.
    fn written(&self) -> Option<kura_engine::stored::Written> {
        let footer_sha256 = hex::decode(&self.footer_sha256).ok()?.try_into().ok()?;
        Some(kura_engine::stored::Written {
            bytes: self.bytes,
            footer_sha256,
        })
    }
}

impl StoredDataset {
    /// The dataset as a query reads it, if this instance holds every batch's key.
    fn table(&self) -> Option<kura_engine::Table> {
        let store = self.store.clone()?;
        (!self.batches.is_empty() && self.open.len() == self.batches.len()).then(|| {
            kura_engine::Table::Stored(kura_engine::stored::Stored {
                store,
                files: self.open.clone(),
                origin: self.origin.clone(),
            })
        })
    }

    fn objects(&self) -> Vec<object_store::path::Path> {
        self.batches
            .iter()
            .map(|b| object_store::path::Path::from(b.object.as_str()))
            .collect()
    }
}

#[derive(Default)]
struct State {
    pending: std::collections::HashMap<String, Pending>,
    datasets: BTreeMap<String, StoredDataset>,
    /// Uploaded model files, ready to run; in this instance's memory only.
    models: BTreeMap<String, Arc<kura_ml::onnx::Scorer>>,
    /// Datasets that were deleted, with the reason; they cannot be uploaded or used again.
    deleted: BTreeMap<String, String>,
    /// Sealed results by run, until fetched (kept across restarts: [`kept`]).
    results: BTreeMap<String, Vec<kept::Kept>>,
    nonces: HashSet<String>,
    runs: u64,
    /// The privacy budget spent so far, when the contract has `[privacy.dp]`.
    budget: Option<kura_contract::dp::Budget>,
    /// Who stood behind every released cell, under `[adhoc] overlap_control`.
    overlap: Option<kura_engine::overlap::Overlap>,
}

/// One enclave instance serving one contract.
pub struct Service {
    contract: Contract,
    identity: Arc<SecretIdentity>,
    info: EnclaveInfo,
    max_upload_bytes: u64,
    /// The state directory (the host's): the log, and sealed results.
    state_dir: std::path::PathBuf,
    /// The service's own store of datasets at rest (a directory of the host's).
    local: Arc<dyn object_store::ObjectStore>,
    /// How a cluster's executors reach `local`.
    local_origin: Arc<zeroize::Zeroizing<String>>,
    /// Operator memory of one query ([`kura_engine::with_memory_limit`]).
    query_memory: usize,
    state: Mutex<State>,
    ledger: Mutex<Ledger>,
    /// The columns of each dataset that uploads keep, found on the first upload.
    kept: tokio::sync::OnceCell<Arc<KeptColumns>>,
    /// The cluster this service coordinates, if any.
    cluster: Option<cluster::Cluster>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("contract", &self.contract.id())
            .field("enclave", &self.identity.public().fingerprint())
            .finish_non_exhaustive()
    }
}

impl Service {
    pub(crate) async fn create(config: &Config) -> Result<Self, ServiceError> {
        let contract = config.contract.contract().clone();
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| ServiceError::Start(format!("cannot create state directory: {e}")))?;
        // The enclave's key of this start. It also signs with ML-DSA-65: tree heads and results
        // carry hybrid signatures, which outlast Ed25519 (the evidence binds both keys).
        let identity = Arc::new(SecretIdentity::generate_post_quantum());
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
        let store_dir = config
            .store_dir
            .clone()
            .unwrap_or_else(|| config.state_dir.join("store"));
        let local = store::local(&store_dir)?;
        let lost = recovery::recover(
            &contract,
            ledger.entries(),
            &config.evidence_certs,
            &mut state,
        )?;
        let local_origin = store::Origin::Local(
            std::fs::canonicalize(&store_dir).unwrap_or_else(|_| store_dir.clone()),
        )
        .text();
        for d in state.datasets.values_mut() {
            if d.location == store::LOCAL {
                d.store = Some(local.clone());
                d.origin = Some(local_origin.clone());
            }
        }
        store::sweep(local.as_ref(), &store_dir, contract.id().as_str(), &state).await;
        state.results = kept::load(&config.state_dir, ledger.entries());
        ledger
            .append(Event::EnclaveStarted {
                contract_id: contract.id().to_string(),
                enclave_key: identity.public().to_text(),
                evidence: evidence.clone(),
            })
            .map_err(|e| ServiceError::Start(e.to_string()))?;
        // Uploads of a version that held data in memory only: they died with that instance.
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
            state_dir: config.state_dir.clone(),
            local,
            local_origin,
            query_memory: usize::try_from(config.query_memory_bytes).unwrap_or(usize::MAX),
            state: Mutex::new(state),
            ledger: Mutex::new(ledger),
            kept: tokio::sync::OnceCell::new(),
            cluster: match config.cluster {
                Some(listen) => Some(cluster::Cluster::start(listen).await?),
                None => None,
            },
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

    /// The key of this instance, which signs its answers and log.
    pub(crate) fn identity(&self) -> &SecretIdentity {
        &self.identity
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
        if let Some(time) = &body.time {
            self.observe(time).await?;
        }
        if !self.state.lock().await.nonces.insert(body.nonce.clone()) {
            return Err(ServiceError::Unauthorized(
                "request replayed (nonce already used)".into(),
            ));
        }
        Ok((party, body))
    }

    /// The enclave's time: the guest clock, never behind the log or a party's signed request.
    pub(crate) async fn now(&self) -> time::OffsetDateTime {
        self.ledger.lock().await.now()
    }

    /// Takes a party's signed time into the enclave's clock, refusing one further ahead of it
    /// than the contract's tolerance (a clock that is wrong, on either side).
    async fn observe(&self, time: &str) -> Result<(), ServiceError> {
        let t = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
            ServiceError::BadRequest("the request's time is not RFC 3339".into())
        })?;
        let tolerance = self.contract.enclave.clock_tolerance_seconds;
        let mut ledger = self.ledger.lock().await;
        let ahead = (t - ledger.now()).whole_seconds();
        if ahead > tolerance as i64 {
            return Err(ServiceError::Unauthorized(format!(
                "the request's time is {ahead} s ahead of the enclave's clock, more than the \
                 contract's tolerance of {tolerance} s: one of the clocks is wrong"
            )));
        }
        ledger.observe(t);
        Ok(())
    }

    async fn deadline_passed(&self) -> bool {
        match self.contract.retention.delete_after {
            DeleteAfter::Deadline(t) => self.now().await >= t,
            _ => false,
        }
    }

    /// Destroys a dataset's plaintext and records it.
    async fn delete(
        &self,
        state: &mut State,
        name: &str,
        reason: String,
    ) -> Result<Receipt, ServiceError> {
        state.models.remove(name);
        if let Some(stored) = state.datasets.remove(name) {
            // The files' keys are dropped (zeroized) here; the files go from the store. Without
            // the store (a provider's bucket whose credentials this instance never got), the
            // files stay, unreadable: their keys are sealed to their provider, whose client
            // never releases a deleted dataset's.
            if let Some(store) = &stored.store {
                store::delete_objects(store.as_ref(), &stored.objects()).await;
            }
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
        let runs: Vec<&Vec<kept::Kept>> = match run_id {
            Some(id) => vec![state.results.get(id).ok_or_else(|| {
                ServiceError::NotFound(format!("no run {id:?} on this enclave instance"))
            })?],
            None => state.results.values().collect(),
        };
        let ledger = self.ledger.lock().await;
        let me = self.identity.public().to_text();
        // A fresh receipt of each release (and of the start that sealed it, when that was an
        // earlier one) under the current head.
        let receipt = |index: u64| {
            ledger
                .receipt(index)
                .ok_or_else(|| ServiceError::Internal(format!("no log entry {index}")))
        };
        let serve = |k: &kept::Kept| -> Result<SealedResult, ServiceError> {
            let earlier = k.signer != me;
            let start = match earlier {
                true => Some(receipt(
                    kept::start_index(ledger.entries(), &k.signer)
                        .ok_or_else(|| ServiceError::Internal("a result of no start".into()))?,
                )?),
                false => None,
            };
            Ok(SealedResult {
                run_id: k.run_id.clone(),
                analysis: k.analysis.clone(),
                receiver: k.receiver.clone(),
                sealed: k.sealed.clone(),
                receipt: receipt(k.release)?,
                signer: earlier.then(|| k.signer.clone()),
                start,
            })
        };
        let mut mine = Vec::new();
        for run in runs {
            match run.iter().find(|s| s.receiver == party.name) {
                Some(s) => mine.push(serve(s)?),
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
}
