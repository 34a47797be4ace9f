/// Why a contract (or its signatures) was refused. Messages name the offending item.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContractError {
    #[error("cannot read contract {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("contract is not valid TOML or has an unexpected shape: {0}")]
    Syntax(String),
    #[error("contract version {0} is not supported (this kura reads version 1)")]
    Version(u32),
    #[error("{kind} name {name:?} is invalid: {rule}")]
    BadName {
        kind: &'static str,
        name: String,
        rule: &'static str,
    },
    #[error("{kind} {name:?} is declared more than once")]
    Duplicate { kind: &'static str, name: String },
    #[error("party {party:?}: public key is invalid: {reason}")]
    BadKey { party: String, reason: String },
    #[error("parties {0:?} and {1:?} use the same public key")]
    SharedKey(String, String),
    #[error("party {party:?} has no roles")]
    NoRoles { party: String },
    #[error("{context} names party {party:?}, which is not in [[parties]]")]
    UnknownParty { context: String, party: String },
    #[error("{context}: party {party:?} must have the {role} role")]
    MissingRole {
        context: String,
        party: String,
        role: &'static str,
    },
    #[error("dataset {dataset:?}: privacy_unit {column:?} {problem}")]
    PrivacyUnit {
        dataset: String,
        column: String,
        problem: &'static str,
    },
    #[error("dataset {dataset:?} has no columns")]
    NoColumns { dataset: String },
    #[error("analysis {analysis:?} has no receivers")]
    NoReceivers { analysis: String },
    #[error("the contract declares no {0}")]
    Missing(&'static str),
    #[error("{0}")]
    Adhoc(String),
    #[error("{0}")]
    Dp(String),
    #[error("{0}")]
    Model(String),
    #[error("output.min_group_size must be at least 1")]
    MinGroupSize,
    #[error("output.min_pooled_datasets must be at least 1")]
    MinPooledDatasets,
    #[error("datasets.{0}.max_contributions must be 1 to 1000")]
    MaxContributions(String),
    #[error(
        "retention.delete_after {0:?} is not \"run\", \"never\" or an RFC 3339 time such as 2027-01-31T00:00:00Z"
    )]
    Retention(String),
    #[error("enclave.platforms is empty: name at least one accepted platform")]
    NoPlatforms,
    #[error("enclave.clock_tolerance_seconds must be between 1 and 86400")]
    ClockTolerance,
    #[error("enclave.accept entry for {0:?}, which is not listed in enclave.platforms")]
    AcceptUnlisted(String),
    #[error("enclave.accept entry for {platform:?}: {reason}")]
    BadAccept { platform: String, reason: String },
    #[error("signature file for party {party:?} is malformed: {reason}")]
    BadSignatureFile { party: String, reason: String },
    #[error("the contract is not signed by all parties: {0}")]
    Unsigned(String),
    #[error("the key does not belong to any party of this contract")]
    NotAParty,
}
