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
    /// A dataset was accepted.
    Upload {
        dataset: String,
        provider: String,
        rows: u64,
        ciphertext_bytes: u64,
        ciphertext_sha256: String,
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
        rows: u64,
        suppressed_groups: u64,
        /// The SQL of an ad-hoc query (named analyses have theirs in the contract).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sql: Option<String>,
        /// The privacy budget a differentially private run spent, charged to its receivers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dp: Option<kura_contract::dp::Spend>,
    },
    /// A run was refused before or while running.
    RunRefused {
        analysis: String,
        party: String,
        reason: String,
    },
    /// A sealed result was handed to its receiver.
    Release {
        run_id: String,
        receiver: String,
        result_sha256: String,
    },
    /// A dataset's plaintext and data key were destroyed.
    Deletion { dataset: String, reason: String },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::EnclaveStarted { .. } => "enclave_started",
            Event::Upload { .. } => "upload",
            Event::UploadRefused { .. } => "upload_refused",
            Event::Run { .. } => "run",
            Event::RunRefused { .. } => "run_refused",
            Event::Release { .. } => "release",
            Event::Deletion { .. } => "deletion",
        }
    }
}
