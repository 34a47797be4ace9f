use kura_attestation::Evidence;
use serde::{Deserialize, Serialize};

/// The signed content of a log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    pub seq: u64,
    /// SHA-256 (hex) of the previous entry's body, or [`crate::GENESIS`].
    pub prev: String,
    /// RFC 3339 UTC time at which the enclave appended the entry.
    pub time: String,
    pub event: Event,
}

/// Something that happened. Names only; never data values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// A service instance started with fresh keys; its evidence binds them to the contract.
    EnclaveStarted {
        contract_id: String,
        enclave_key: String,
        evidence: Evidence,
    },
    /// An executor of the coordinator's cluster was admitted: its evidence verified against
    /// the contract's `[enclave]` policy and binds its TLS key (PEM), which the coordinator's
    /// authority then certified. Only admitted executors receive plans, keys or data.
    ExecutorJoined {
        executor: String,
        tls_key: String,
        evidence: Evidence,
        /// The coordinator's challenge for this join, which the evidence binds and which it
        /// accepted once (absent in logs written before joins carried one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        challenge: Option<String>,
    },
    /// An executor asked to join and was refused; it received nothing. Refusals are logged at
    /// a bounded rate, so that whoever can reach the join route cannot grow the log at will:
    /// the ones that were not are counted in the next that is.
    ExecutorRefused {
        reason: String,
        /// SHA-256 (hex) of the evidence it presented.
        evidence_sha256: String,
        /// Refusals since the last one logged that were not logged.
        #[serde(default, skip_serializing_if = "is_zero")]
        unlogged_before: u64,
    },
    /// A dataset was accepted.
    Upload {
        dataset: String,
        provider: String,
        rows: u64,
        ciphertext_bytes: u64,
        ciphertext_sha256: String,
        /// SHA-256 (hex) of the signed request that started the upload, so that its provider
        /// can tell its own upload's entry from any other (absent in logs before kura 0.1.2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// Where the upload is kept at rest, and its key sealed to its provider (absent in
        /// logs before datasets were stored).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stored: Option<StoredBatch>,
    },
    /// A provider released the keys of its stored dataset to this enclave instance (after a
    /// restart or an upgrade), which reads it from storage again.
    KeysReleased {
        dataset: String,
        party: String,
        /// Every batch of the dataset the log records, by id.
        batches: Vec<String>,
    },
    /// A stored batch was refused when its provider released its key: the file in the store is
    /// not the one the enclave wrote (another size or footer, a plaintext file, a file of
    /// another batch) or its key does not open it. Nothing of the dataset is opened.
    BatchRefused {
        dataset: String,
        party: String,
        batch: String,
        reason: String,
    },
    /// An upload was refused; nothing of it was kept.
    UploadRefused {
        dataset: String,
        party: String,
        reason: String,
    },
    /// An analysis ran and its result was sealed to each receiver.
    Run {
        run_id: String,
        analysis: String,
        by: String,
        datasets: Vec<String>,
        /// Logs written before kura 0.1.1 carried the result's size here. The log is read by
        /// every party, receivers or not, so it no longer says anything about a result: its
        /// receivers have it, sealed (each release's hash is in its `release` entry).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        suppressed_groups: Option<u64>,
        /// The SQL of an ad-hoc query (named analyses have theirs in the contract).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sql: Option<String>,
        /// The privacy budget a differentially private run spent, charged to its receivers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dp: Option<kura_contract::dp::Spend>,
        /// SHA-256 (hex) of the signed request that started the run (absent in logs before
        /// kura 0.1.2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// The cluster's executors (as their `executor_joined` entries name them) that could
        /// run the run's tasks; empty when it ran in the coordinator alone.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        executors: Vec<String>,
    },
    /// A run was refused before or while running.
    RunRefused {
        analysis: String,
        party: String,
        reason: String,
        /// The SQL of a refused ad-hoc query, logged like that of an answered one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sql: Option<String>,
        /// The budget of a differentially private run that failed after it read data: it is
        /// charged as if the run had released, so that failures cannot probe for free.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dp: Option<kura_contract::dp::Spend>,
    },
    /// A sealed result was handed to its receiver.
    Release {
        run_id: String,
        receiver: String,
        result_sha256: String,
    },
    /// A dataset's plaintext and data key were destroyed.
    Deletion { dataset: String, reason: String },
    /// After a run on the cluster (answered or refused; its entry follows this one), the
    /// coordinator had every live executor delete what the run left there: each forgot the keys
    /// of its sealed shuffle files and removed them (`executors`, who answered over the
    /// cluster's TLS); `unreachable` ones could not be asked (a lost executor's keys are gone
    /// with its memory). Nothing about the files' number or size: the log is every party's.
    ShuffleDeleted {
        executors: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unreachable: Vec<String>,
    },
}

/// The privacy budget spent according to `events`, in log order (`None` without
/// `[privacy.dp]`). The one replay of the budget: a restarted enclave, `kura budget`, the
/// transparency report and `kura audit verify`'s accounts all use it.
/// One upload of a dataset at rest: an encrypted Parquet file written by the enclave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredBatch {
    /// The batch's id (random, hex): names its file and binds its key and AAD.
    pub batch: String,
    /// The store: `local` (the service's directory) or the provider's `s3://bucket/prefix`.
    pub location: String,
    /// The file's path in the store.
    pub object: String,
    /// The file's size in bytes.
    pub bytes: u64,
    /// SHA-256 (hex) of the file's footer as the enclave wrote it (the encrypted footer, its
    /// length and magic); the footer lists a hash of every column chunk. A file is read only
    /// if it matches. Empty in entries written before it was recorded: such a batch cannot be
    /// opened again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub footer_sha256: String,
    /// The file's key, HPKE-sealed to the provider with `kura_api::file_key_info`: only the
    /// provider can open it, to release it to a later enclave instance.
    pub key: kura_crypto::Sealed,
}

pub fn budget_spent<'a>(
    contract: &kura_contract::Contract,
    events: impl IntoIterator<Item = &'a Event>,
) -> Option<kura_contract::dp::Budget> {
    let mut budget = kura_contract::dp::Budget::of(contract)?;
    for (analysis, spend) in events.into_iter().filter_map(Event::spend) {
        budget.record(contract.receivers_of(analysis).unwrap_or_default(), spend);
    }
    Some(budget)
}

impl Event {
    /// The privacy budget this event charged, and to which analysis's receivers: a DP run's
    /// spend, or that of a DP run that failed after it read data. Every replay of the budget
    /// (a restarted enclave, `kura audit verify`, `kura budget`) counts exactly these.
    pub fn spend(&self) -> Option<(&str, kura_contract::dp::Spend)> {
        match self {
            Event::Run {
                analysis,
                dp: Some(spend),
                ..
            }
            | Event::RunRefused {
                analysis,
                dp: Some(spend),
                ..
            } => Some((analysis, *spend)),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Event::EnclaveStarted { .. } => "enclave_started",
            Event::ExecutorJoined { .. } => "executor_joined",
            Event::ExecutorRefused { .. } => "executor_refused",
            Event::Upload { .. } => "upload",
            Event::UploadRefused { .. } => "upload_refused",
            Event::KeysReleased { .. } => "keys_released",
            Event::BatchRefused { .. } => "batch_refused",
            Event::Run { .. } => "run",
            Event::RunRefused { .. } => "run_refused",
            Event::Release { .. } => "release",
            Event::Deletion { .. } => "deletion",
            Event::ShuffleDeleted { .. } => "shuffle_deleted",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
