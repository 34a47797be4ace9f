//! The tamper-evident log of everything that happens to a contract's data.
//!
//! Each entry's body is kept as the exact JSON text that was signed, so verification never
//! depends on re-serialising. Bodies chain by hash (`prev` is the SHA-256 of the previous
//! body), and each is signed by the enclave key current at the time: an `enclave_started`
//! event carries the attestation evidence that binds a new key, and signs itself with that key.
//! A verifier therefore needs only the entries, a way to check evidence, and no trust in the
//! storage that kept them.
//!
//! On top of the chain, the bodies are the leaves of a Merkle tree (RFC 9162 hashing, see
//! [`merkle`]): signed tree heads, receipts proving that one entry is in the log, and
//! consistency proofs that a later log extends an earlier one, so a service that rewrites or
//! forks its history is caught by any client that kept an earlier head. Storage is an embedded
//! database with durable commits ([`Ledger`]).

mod error;
mod event;
pub mod merkle;
mod store;
mod verify;

pub use error::LedgerError;
pub use event::{EntryBody, Event, StoredBatch, budget_spent};
pub use merkle::{Receipt, SignedTreeHead, TreeHead, root_of, verify_consistency};
pub use store::Ledger;
pub use verify::{ChainReport, Start, verify_chain};

use serde::{Deserialize, Serialize};

/// Signature domain of log entries.
pub const ENTRY_DOMAIN: &str = "log-entry-v1";

/// One log entry as stored and served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// The exact JSON text of an [`EntryBody`].
    pub body: String,
    /// Ed25519 signature by the enclave key over `body` (base64).
    pub signature: String,
}

impl LogEntry {
    pub fn hash(&self) -> String {
        hex::encode(kura_crypto::sha256(self.body.as_bytes()))
    }

    pub fn parse_body(&self) -> Result<EntryBody, LedgerError> {
        serde_json::from_str(&self.body).map_err(|e| LedgerError::Malformed(e.to_string()))
    }
}

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
