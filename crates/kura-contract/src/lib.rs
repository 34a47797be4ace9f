//! The contract: who takes part, which data, which analyses, who receives what, under which
//! output rules, for how long, and on which enclave builds.
//!
//! A contract is identified by the SHA-256 of its exact bytes and never changes. Every party
//! signs those bytes; nothing may run on a contract that is not signed by all of them. This
//! crate parses and validates; [`files`] alone touches the disk (a contract and its signature
//! files). SQL is checked against the schemas by `kura-engine`.

pub mod dp;
mod error;
pub mod example;
pub mod files;
mod model;
mod signature;

pub use error::ContractError;
pub use model::{
    ADHOC_AGGREGATES, ADHOC_ANALYSIS, AcceptEntry, Adhoc, Analysis, AnalysisKind, Column,
    ColumnRole, ColumnType, Contract, ContractId, CryptoPolicy, Dataset, DeleteAfter,
    EnclavePolicy, ModelFamily, ModelFile, ModelSpec, ONE_PERSON_AGGREGATES, OutputRules, Party,
    Platform, Retention, Role, ScoreSpec,
};
pub use signature::{
    SIGNATURE_DOMAIN, SignatureCheck, SignatureStatus, SignedContract, sign, verify_all,
};
