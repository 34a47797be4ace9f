//! The contract model, parsed strictly: unknown fields are errors, so a typo such as
//! `min_grup_size` is refused instead of silently ignored.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use kura_crypto::PublicIdentity;
use serde::{Deserialize, Serialize};

use crate::ContractError;

/// Hex SHA-256 of the contract's exact bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContractId(String);

impl ContractId {
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(kura_crypto::sha256(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Provider,
    Analyst,
    Receiver,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Provider => "provider",
            Role::Analyst => "analyst",
            Role::Receiver => "receiver",
            Role::Auditor => "auditor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Utf8,
    Int64,
    Float64,
    Boolean,
    Date,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Utf8 => "utf8",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Boolean => "boolean",
            ColumnType::Date => "date",
        }
    }
}

/// What a column may be used for in outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnRole {
    /// Identifies a person or entity: join keys only, never output.
    Identifier,
    /// May be grouped by and output.
    Dimension,
    /// May only be aggregated.
    Measure,
}

/// An enclave platform whose evidence a contract may accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Platform {
    #[serde(rename = "simulated")]
    Simulated,
    #[serde(rename = "sev-snp")]
    SevSnp,
    #[serde(rename = "tdx")]
    Tdx,
    #[serde(rename = "sgx")]
    Sgx,
    #[serde(rename = "nitro")]
    Nitro,
}

impl Platform {
    /// Every platform kura knows.
    pub const ALL: [Platform; 5] = [
        Platform::Simulated,
        Platform::SevSnp,
        Platform::Tdx,
        Platform::Sgx,
        Platform::Nitro,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Simulated => "simulated",
            Platform::SevSnp => "sev-snp",
            Platform::Tdx => "tdx",
            Platform::Sgx => "sgx",
            Platform::Nitro => "nitro",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Platform::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

/// `--platform NAME` on the command lines, spelled as contracts spell it.
#[cfg(feature = "clap")]
impl clap::ValueEnum for Platform {
    fn value_variants<'a>() -> &'a [Self] {
        &Platform::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct Party {
    pub name: String,
    pub public_key: PublicIdentity,
    pub roles: Vec<Role>,
}

impl Party {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    pub role: ColumnRole,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub name: String,
    pub provider: String,
    pub privacy_unit: String,
    pub columns: Vec<Column>,
    /// How many rows of one person (privacy unit) of this dataset may stand behind one
    /// released figure of an aggregation over a join (default 1). A join repeats a row once
    /// for each row it meets on the other side, so another party's rows could otherwise weigh
    /// this dataset's person twice in one cell and once in another; a cell in which a person
    /// of this dataset has more rows than this under a figure that reads this dataset's values
    /// (or counts its rows) is suppressed. Set it to the most rows one person has in one cell
    /// by right (three claims of a patient in one age band): a party that provides another
    /// dataset can then weigh this dataset's person up to that many times (docs/privacy.md).
    #[serde(default = "one_u32", skip_serializing_if = "is_one_u32")]
    pub max_contributions: u32,
}

fn one_u32() -> u32 {
    1
}

fn is_one_u32(n: &u32) -> bool {
    *n == 1
}

impl Dataset {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    pub name: String,
    pub sql: String,
    pub receivers: Vec<String>,
    /// Parties that may start this analysis. When absent: every party with the `analyst` role
    /// and every receiver of the analysis.
    #[serde(default)]
    pub analysts: Option<Vec<String>>,
    /// `aggregate` (the default: statistics under the minimum group size) or `list`.
    #[serde(default)]
    pub kind: AnalysisKind,
    /// For a list: the output column that carries identifiers. Each receiver gets only the
    /// rows whose value is a privacy unit of a dataset it provided.
    #[serde(default)]
    pub list_column: Option<String>,
    /// Released under differential privacy (`[privacy.dp]`) instead of the minimum group size.
    #[serde(default)]
    pub dp: bool,
    /// ε of each DP run; default `privacy.dp.query_epsilon`.
    #[serde(default)]
    pub epsilon: Option<f64>,
    /// For `kind = "model"`: what to train on the query's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// For `kind = "score"`: which model scores the query's rows, and on which columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreSpec>,
}

/// A model file a party provides for scoring (`[[models]]`). Only the file with exactly this
/// hash is ever run: every party signs for that model, though only its provider sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    pub provider: String,
    /// SHA-256 (hex) of the ONNX file.
    pub sha256: String,
}

/// A scoring analysis (`[analyses.score]`): the model run on each row of the query, the row's
/// score released to the owner of the row (by `list_column`, as a list routes rows), and to
/// the model's provider only the distribution of the scores, cell by cell under the minimum
/// group size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    /// The `[[models]]` entry to run.
    pub model: String,
    /// The query's output columns the model takes, in its input's order (numbers or booleans).
    pub features: Vec<String>,
    /// Upper edges of the score buckets of the distribution, increasing; default 0.1 to 0.9 in
    /// steps of 0.1 (ten buckets of a probability).
    #[serde(default = "ScoreSpec::default_buckets")]
    pub buckets: Vec<f64>,
    /// An output column (not an identifier) by which the distribution is broken down.
    #[serde(default)]
    pub group_by: Option<String>,
}

impl ScoreSpec {
    fn default_buckets() -> Vec<f64> {
        (1..10).map(|i| f64::from(i) / 10.0).collect()
    }
}

/// A model analysis's training: the query's output columns it learns from and the family and
/// settings it uses. `[analyses.model]` in the contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub family: ModelFamily,
    /// Output columns of the analysis's query used as features (numbers or booleans).
    pub features: Vec<String>,
    /// The output column to predict: a number (linear), or 0/1 or a boolean (logistic).
    pub label: String,
    /// Share of the rows held out of the fit to measure the model, from 0 to 0.5.
    #[serde(default = "ModelSpec::default_holdout")]
    pub holdout: f64,
    /// L2 penalty of a logistic model, on standardised features.
    #[serde(default = "ModelSpec::default_l2")]
    pub l2: f64,
    /// Solver iterations of a logistic model.
    #[serde(default = "ModelSpec::default_max_iterations")]
    pub max_iterations: u64,
    /// With `dp = true`: each feature's public `[low, high]`, by name. Values are clamped to
    /// them, and they scale the noise.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bounds: std::collections::BTreeMap<String, [f64; 2]>,
    /// For `family = "tree"`: each feature's public cut points, by name, increasing. A split
    /// may fall only on one of them, so no released number lies between two people's values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cuts: std::collections::BTreeMap<String, Vec<f64>>,
    /// For `family = "tree"`: the most splits from the root to a leaf (1 to 8; default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
}

impl ModelSpec {
    fn default_holdout() -> f64 {
        0.2
    }

    fn default_l2() -> f64 {
        1.0
    }

    fn default_max_iterations() -> u64 {
        100
    }

    /// The deepest a tree may grow when the contract does not say.
    pub const DEFAULT_MAX_DEPTH: u32 = 4;

    /// The most cut points a feature may have.
    pub const MAX_CUTS: usize = 255;
}

/// The model families a contract may name: those whose parameters summarise many people at
/// once and cannot hold a person's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    Linear,
    Logistic,
    /// A classification tree on a 0/1 label: splits only at the contract's cut points, and
    /// every leaf's rate over at least `min_group_size` people of each dataset in it.
    Tree,
}

impl ModelFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFamily::Linear => "linear",
            ModelFamily::Logistic => "logistic",
            ModelFamily::Tree => "tree",
        }
    }
}

/// The name under which ad-hoc queries run and are logged (no analysis can have it: names
/// cannot contain spaces or parentheses).
pub const ADHOC_ANALYSIS: &str = "(ad hoc)";

/// What an analysis releases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnalysisKind {
    /// Aggregated statistics; groups below `output.min_group_size` are suppressed.
    #[default]
    Aggregate,
    /// Rows that name identifiers, each routed only to the party whose own dataset holds the
    /// identifier (for example a bank's own accounts in a cross-bank pattern).
    List,
    /// A model trained on the query's rows (`[analyses.model]`): its coefficients and its
    /// quality on held-out rows are released, never the rows.
    Model,
    /// The query's rows scored by a party's model (`[analyses.score]`): each row's score goes
    /// to the row's owner, and only the scores' distribution to the model's provider.
    Score,
}

/// Aggregate names a contract's `[adhoc].aggregates` may list. Those in
/// [`ONE_PERSON_AGGREGATES`] are accepted for older contracts but refused in queries.
pub const ADHOC_AGGREGATES: [&str; 9] = [
    "count",
    "count_distinct",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "variance",
    "median",
];

/// Aggregates whose value is one member's value, whatever the group's size: kura refuses them
/// in ad-hoc queries (rule `one-person-value`) even where a contract lists them.
pub const ONE_PERSON_AGGREGATES: [&str; 3] = ["min", "max", "median"];

fn default_aggregates() -> Vec<String> {
    ["count", "count_distinct", "sum", "avg"]
        .map(String::from)
        .to_vec()
}

/// Rules for ad-hoc queries (`kura query`): who may ask, who receives, and which functions
/// may be used. Column roles say where each column may appear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adhoc {
    /// Parties that may send queries.
    pub analysts: Vec<String>,
    /// Parties that receive every ad-hoc result.
    pub receivers: Vec<String>,
    /// Allowed aggregate functions (from [`ADHOC_AGGREGATES`]); default count, count_distinct,
    /// sum and avg.
    #[serde(default = "default_aggregates")]
    pub aggregates: Vec<String>,
    /// Narrower lists for single columns, keyed `"dataset.column"`.
    #[serde(default)]
    pub column_aggregates: std::collections::BTreeMap<String, Vec<String>>,
    /// Scalar functions allowed on a dimension, keyed `"dataset.column"`; dimensions not
    /// listed may go through any built-in scalar function.
    #[serde(default)]
    pub dimension_functions: std::collections::BTreeMap<String, Vec<String>>,
    /// Ad-hoc queries must be differentially private: the contract is refused without
    /// `[privacy.dp]` (with it, every ad-hoc query is differentially private anyway; this says
    /// so where a reader of `[adhoc]` looks, and keeps an edit from dropping it silently).
    #[serde(default)]
    pub require_dp: bool,
    /// Remember who stood behind every released cell and refuse a new cell that differs from a
    /// released one on the same measure by fewer than `min_group_size` people.
    #[serde(default)]
    pub overlap_control: bool,
    /// The most (cell, person) entries overlap control remembers (8 bytes each); default
    /// 10,000,000. Past it, ad-hoc queries are refused.
    #[serde(default)]
    pub overlap_memory: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRules {
    /// Groups covering fewer distinct privacy units (of any contributing dataset) are
    /// suppressed.
    pub min_group_size: u64,
    /// Where an aggregation pools several datasets with `UNION ALL` (suppliers' records of the
    /// same kind), a group is released only if rows of at least this many of them are in it, so
    /// that no released figure is one provider's alone. The default, 1, releases a group of one
    /// dataset's rows; each pooled dataset's part of a group must in any case be empty or cover
    /// `min_group_size` of its people.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub min_pooled_datasets: u64,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// When uploaded data is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteAfter {
    /// Right after the first run that uses it.
    Run,
    /// At this time, whether or not the data was used.
    Deadline(time::OffsetDateTime),
    Never,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub delete_after: DeleteAfter,
}

/// Appraisal policy for one platform (measurements, debug, minimum TCB). The fields beyond
/// `platform` and `measurement` are interpreted by the attestation verifiers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptEntry {
    pub platform: String,
    /// Accepted measurements (hex). Empty means any measurement, which is allowed only for
    /// the simulated platform.
    #[serde(default)]
    pub measurements: Vec<String>,
    #[serde(default)]
    pub allow_debug: bool,
    /// Minimum security version numbers, by name (SEV-SNP: `bootloader`, `tee`, `snp`,
    /// `microcode`, `fmc`). Evidence below any of them, or without one of them, is refused.
    #[serde(default)]
    pub min_tcb: std::collections::BTreeMap<String, u64>,
    /// Intel DCAP TCB statuses accepted (e.g. `UpToDate`, `SWHardeningNeeded`); default
    /// `UpToDate` only.
    #[serde(default)]
    pub tcb_statuses: Vec<String>,
    /// Further registers that must have exactly these values (hex), by name: TDX `rtmr0`-`rtmr3`
    /// and `mrconfigid`, SGX `mrsigner`, Nitro `pcr1`, `pcr2`, `pcr8`.
    #[serde(default)]
    pub registers: std::collections::BTreeMap<String, String>,
    /// SEV-SNP: the VMPL the report must come from (default 0, the most privileged level: a
    /// report requested from a less privileged level says less about the guest).
    #[serde(default)]
    pub vmpl: Option<u32>,
    /// TDX: accept an entry that pins only firmware (MRTD, RTMR0) and nothing of the workload
    /// (RTMR1-3 or MRCONFIGID). Off by default: MRTD measures the TD firmware, so such an
    /// entry accepts any kernel and any application on it.
    #[serde(default)]
    pub firmware_only: bool,
}

impl AcceptEntry {
    /// The TDX registers that measure the workload rather than the firmware.
    pub const TDX_WORKLOAD_REGISTERS: [&str; 4] = ["rtmr1", "rtmr2", "rtmr3", "mrconfigid"];

    /// The SEV-SNP VMPL this entry accepts.
    pub fn snp_vmpl(&self) -> u32 {
        self.vmpl.unwrap_or(0)
    }

    /// Why a TDX entry does not pin the workload, unless it says it accepts firmware only.
    pub fn tdx_workload_gap(&self) -> Option<String> {
        let pinned = Self::TDX_WORKLOAD_REGISTERS
            .iter()
            .any(|r| self.registers.contains_key(*r));
        (!pinned && !self.firmware_only).then(|| {
            "the entry pins only firmware (MRTD measures the TD firmware, not the workload): \
             pin rtmr1, rtmr2, rtmr3 or mrconfigid in registers, or set firmware_only = true \
             to accept any workload on this firmware"
                .to_string()
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnclavePolicy {
    pub platforms: Vec<Platform>,
    pub accept: Vec<AcceptEntry>,
    /// How far the enclave's clock and a party's may disagree, in seconds
    /// (`clock_tolerance_seconds`, default [`EnclavePolicy::DEFAULT_CLOCK_TOLERANCE`]): a
    /// party refuses an enclave whose fresh tree head is further from its own clock, and the
    /// enclave refuses a request whose time is further ahead of its own.
    pub clock_tolerance_seconds: u64,
}

impl EnclavePolicy {
    pub const DEFAULT_CLOCK_TOLERANCE: u64 = 300;

    pub fn allows(&self, platform: Platform) -> bool {
        self.platforms.contains(&platform)
    }

    pub fn accept_entries(&self, platform: Platform) -> impl Iterator<Item = &AcceptEntry> {
        self.accept
            .iter()
            .filter(move |a| a.platform == platform.as_str())
    }
}

/// `[crypto]`: how everything sealed under this contract is sealed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoPolicy {
    /// The HPKE KEM of every seal: data keys to the enclave, requests and answers, results to
    /// their receivers. `"x-wing"` (ML-KEM-768 + X25519, the default) or `"x25519"` (pins the
    /// classic suite). Every party's key must be able to receive it.
    #[serde(default)]
    pub kem: kura_crypto::Kem,
}

/// A parsed, validated contract together with its exact bytes and id.
#[derive(Clone, Debug)]
pub struct Contract {
    bytes: Vec<u8>,
    id: ContractId,
    pub name: String,
    pub purpose: String,
    pub parties: Vec<Party>,
    pub datasets: Vec<Dataset>,
    pub analyses: Vec<Analysis>,
    /// Model files parties provide for scoring analyses.
    pub models: Vec<ModelFile>,
    pub adhoc: Option<Adhoc>,
    pub privacy: crate::dp::Privacy,
    pub output: OutputRules,
    pub retention: Retention,
    pub enclave: EnclavePolicy,
    pub crypto: CryptoPolicy,
}

// ---- raw serde shapes -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContract {
    version: u32,
    name: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    parties: Vec<RawParty>,
    #[serde(default)]
    datasets: Vec<Dataset>,
    #[serde(default)]
    analyses: Vec<Analysis>,
    #[serde(default)]
    models: Vec<ModelFile>,
    #[serde(default)]
    adhoc: Option<Adhoc>,
    #[serde(default)]
    privacy: crate::dp::Privacy,
    output: OutputRules,
    retention: RawRetention,
    enclave: RawEnclave,
    #[serde(default)]
    crypto: CryptoPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParty {
    name: String,
    public_key: String,
    roles: Vec<Role>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    delete_after: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnclave {
    platforms: Vec<String>,
    #[serde(default)]
    accept: Vec<AcceptEntry>,
    clock_tolerance_seconds: Option<u64>,
}

// ---- parsing and validation ---------------------------------------------------------------

fn check_name(
    kind: &'static str,
    name: &str,
    allowed: fn(char) -> bool,
    rule: &'static str,
) -> Result<(), ContractError> {
    let starts_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if name.is_empty() || name.len() > 63 || !starts_ok || !name.chars().all(allowed) {
        return Err(ContractError::BadName {
            kind,
            name: name.to_string(),
            rule,
        });
    }
    Ok(())
}

fn party_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn sql_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

const PARTY_RULE: &str = "use 1-63 characters a-z, 0-9 and '-', starting with a letter";
const SQL_RULE: &str =
    "use 1-63 characters a-z, 0-9 and '_', starting with a letter (it is a SQL name)";

fn unique<'a>(
    kind: &'static str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), ContractError> {
    let mut seen = BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(ContractError::Duplicate {
                kind,
                name: n.to_string(),
            });
        }
    }
    Ok(())
}

impl Contract {
    /// Parses and validates a contract from its exact bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ContractError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ContractError::Syntax("the file is not UTF-8 text".into()))?;
        let raw: RawContract =
            toml::from_str(text).map_err(|e| ContractError::Syntax(e.to_string()))?;
        if raw.version != 1 {
            return Err(ContractError::Version(raw.version));
        }

        let mut parties = Vec::with_capacity(raw.parties.len());
        for p in raw.parties {
            check_name("party", &p.name, party_char, PARTY_RULE)?;
            let public_key =
                PublicIdentity::parse(&p.public_key).map_err(|e| ContractError::BadKey {
                    party: p.name.clone(),
                    reason: e.to_string(),
                })?;
            if p.roles.is_empty() {
                return Err(ContractError::NoRoles { party: p.name });
            }
            parties.push(Party {
                name: p.name,
                public_key,
                roles: p.roles,
            });
        }

        let delete_after = match raw.retention.delete_after.as_str() {
            "run" => DeleteAfter::Run,
            "never" => DeleteAfter::Never,
            other => DeleteAfter::Deadline(
                time::OffsetDateTime::parse(other, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| ContractError::Retention(other.to_string()))?,
            ),
        };

        let mut platforms = Vec::new();
        for p in &raw.enclave.platforms {
            let platform = Platform::parse(p).ok_or_else(|| ContractError::BadAccept {
                platform: p.clone(),
                reason: "unknown platform (known: simulated, sev-snp, tdx, sgx, nitro)".into(),
            })?;
            if platforms.contains(&platform) {
                return Err(ContractError::Duplicate {
                    kind: "enclave platform",
                    name: p.clone(),
                });
            }
            platforms.push(platform);
        }

        let contract = Contract {
            id: ContractId::of(bytes),
            bytes: bytes.to_vec(),
            name: raw.name,
            purpose: raw.purpose,
            parties,
            datasets: raw.datasets,
            analyses: raw.analyses,
            models: raw.models,
            adhoc: raw.adhoc,
            privacy: raw.privacy,
            output: raw.output,
            retention: Retention { delete_after },
            enclave: EnclavePolicy {
                platforms,
                accept: raw.enclave.accept,
                clock_tolerance_seconds: raw
                    .enclave
                    .clock_tolerance_seconds
                    .unwrap_or(EnclavePolicy::DEFAULT_CLOCK_TOLERANCE),
            },
            crypto: raw.crypto,
        };
        contract.validate()?;
        Ok(contract)
    }

    fn validate(&self) -> Result<(), ContractError> {
        if !(1..=86_400).contains(&self.enclave.clock_tolerance_seconds) {
            return Err(ContractError::ClockTolerance);
        }
        if self.parties.is_empty() {
            return Err(ContractError::Missing("[[parties]]"));
        }
        if self.datasets.is_empty() {
            return Err(ContractError::Missing("[[datasets]]"));
        }
        unique("party", self.parties.iter().map(|p| p.name.as_str()))?;
        unique("dataset", self.datasets.iter().map(|d| d.name.as_str()))?;
        unique("analysis", self.analyses.iter().map(|a| a.name.as_str()))?;
        let mut keys: HashMap<Vec<u8>, &str> = HashMap::new();
        for p in &self.parties {
            // The signing and classic keys: a v1 and a v2 form of one key are one key.
            let classic = p.public_key.to_bytes()[..64].to_vec();
            if let Some(other) = keys.insert(classic, &p.name) {
                return Err(ContractError::SharedKey(other.to_string(), p.name.clone()));
            }
            if !p.public_key.receives(self.crypto.kem) {
                return Err(ContractError::BadKey {
                    party: p.name.clone(),
                    reason: kura_crypto::CryptoError::NoPqKey.to_string(),
                });
            }
        }

        for d in &self.datasets {
            check_name("dataset", &d.name, sql_char, SQL_RULE)?;
            let context = format!("dataset {:?}", d.name);
            self.require_role(&context, &d.provider, Role::Provider)?;
            if d.columns.is_empty() {
                return Err(ContractError::NoColumns {
                    dataset: d.name.clone(),
                });
            }
            for c in &d.columns {
                check_name("column", &c.name, sql_char, SQL_RULE)?;
            }
            unique("column", d.columns.iter().map(|c| c.name.as_str())).map_err(|e| match e {
                ContractError::Duplicate { name, .. } => ContractError::Duplicate {
                    kind: "column",
                    name: format!("{}.{}", d.name, name),
                },
                other => other,
            })?;
            if !(1..=1000).contains(&d.max_contributions) {
                return Err(ContractError::MaxContributions(d.name.clone()));
            }
            match d.column(&d.privacy_unit) {
                None => {
                    return Err(ContractError::PrivacyUnit {
                        dataset: d.name.clone(),
                        column: d.privacy_unit.clone(),
                        problem: "is not one of the dataset's columns",
                    });
                }
                Some(c) if c.role != ColumnRole::Identifier => {
                    return Err(ContractError::PrivacyUnit {
                        dataset: d.name.clone(),
                        column: d.privacy_unit.clone(),
                        problem: "must have role = \"identifier\"",
                    });
                }
                Some(_) => {}
            }
        }

        for a in &self.analyses {
            check_name("analysis", &a.name, party_char_or_underscore, NAME_RULE)?;
            if a.receivers.is_empty() {
                return Err(ContractError::NoReceivers {
                    analysis: a.name.clone(),
                });
            }
            let context = format!("analysis {:?}", a.name);
            unique("receiver", a.receivers.iter().map(String::as_str))?;
            for r in &a.receivers {
                self.require_role(&context, r, Role::Receiver)?;
            }
            for r in a.analysts.iter().flatten() {
                self.party(r).ok_or_else(|| ContractError::UnknownParty {
                    context: context.clone(),
                    party: r.clone(),
                })?;
            }
            match (a.kind, &a.list_column) {
                (AnalysisKind::List, None) => {
                    return Err(ContractError::Adhoc(format!(
                        "{context} is a list: name its identifier column with list_column"
                    )));
                }
                (AnalysisKind::Aggregate, Some(_)) => {
                    return Err(ContractError::Adhoc(format!(
                        "{context}: list_column applies only to kind = \"list\""
                    )));
                }
                (AnalysisKind::Model, Some(_)) => {
                    return Err(ContractError::Adhoc(format!(
                        "{context}: list_column applies only to kind = \"list\" or \"score\""
                    )));
                }
                (AnalysisKind::Score, None) => {
                    return Err(ContractError::Model(format!(
                        "{context} is a score: name the column that says whose each row is \
                         with list_column"
                    )));
                }
                (AnalysisKind::Score, Some(_)) => {}
                (AnalysisKind::List, Some(_)) => {
                    for r in &a.receivers {
                        if !self.datasets.iter().any(|d| &d.provider == r) {
                            return Err(ContractError::Adhoc(format!(
                                "{context} is a list, and receiver {r:?} provides no dataset: \
                                 it could only ever receive nothing"
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        for a in &self.analyses {
            validate_model(a)?;
            self.validate_score(a)?;
        }
        self.validate_models()?;
        if let Some(adhoc) = &self.adhoc {
            self.validate_adhoc(adhoc)?;
        }
        if let Some(dp) = &self.privacy.dp {
            dp.validate(self)?;
        }
        for a in &self.analyses {
            let context = format!("analysis {:?}", a.name);
            match (&self.privacy.dp, a.dp, a.epsilon) {
                (None, true, _) => {
                    return Err(ContractError::Dp(format!(
                        "{context} has dp = true but the contract has no [privacy.dp]"
                    )));
                }
                (_, false, Some(_)) => {
                    return Err(ContractError::Dp(format!(
                        "{context}: epsilon applies only with dp = true"
                    )));
                }
                (Some(dp), true, Some(e)) if !(e.is_finite() && e > 0.0 && e <= dp.epsilon) => {
                    return Err(ContractError::Dp(format!(
                        "{context}: epsilon must be positive and at most privacy.dp.epsilon"
                    )));
                }
                _ if a.dp && a.kind == AnalysisKind::List => {
                    return Err(ContractError::Dp(format!(
                        "{context}: a list cannot be differentially private"
                    )));
                }
                // A contract that promises DP releases cannot also release a model fitted
                // exactly.
                (Some(_), false, _) if a.kind == AnalysisKind::Model => {
                    return Err(ContractError::Dp(format!(
                        "{context}: under [privacy.dp] a model must be trained with dp = true"
                    )));
                }
                (Some(_), _, _) if a.kind == AnalysisKind::Score => {
                    return Err(ContractError::Dp(format!(
                        "{context}: scores cannot be released under [privacy.dp] yet (the \
                         distribution given to the model's provider is not noised)"
                    )));
                }
                _ => {}
            }
        }

        if self.output.min_group_size == 0 {
            return Err(ContractError::MinGroupSize);
        }
        if self.output.min_pooled_datasets == 0 {
            return Err(ContractError::MinPooledDatasets);
        }
        if self.enclave.platforms.is_empty() {
            return Err(ContractError::NoPlatforms);
        }
        for a in &self.enclave.accept {
            let platform =
                Platform::parse(&a.platform).ok_or_else(|| ContractError::BadAccept {
                    platform: a.platform.clone(),
                    reason: "unknown platform".into(),
                })?;
            if !self.enclave.allows(platform) {
                return Err(ContractError::AcceptUnlisted(a.platform.clone()));
            }
            let refuse = |reason: String| ContractError::BadAccept {
                platform: a.platform.clone(),
                reason,
            };
            if platform == Platform::Tdx
                && let Some(gap) = a.tdx_workload_gap()
            {
                return Err(refuse(gap));
            }
            if a.vmpl.is_some() && platform != Platform::SevSnp {
                return Err(refuse("vmpl is a SEV-SNP setting".into()));
            }
            if a.vmpl.is_some_and(|v| v > 3) {
                return Err(refuse("vmpl must be 0, 1, 2 or 3".into()));
            }
            if a.firmware_only && platform != Platform::Tdx {
                return Err(refuse("firmware_only is a TDX setting".into()));
            }
            for m in &a.measurements {
                if hex::decode(m).is_err() {
                    return Err(ContractError::BadAccept {
                        platform: a.platform.clone(),
                        reason: format!("measurement {m:?} is not hex"),
                    });
                }
            }
        }
        Ok(())
    }

    fn validate_adhoc(&self, adhoc: &Adhoc) -> Result<(), ContractError> {
        let context = "[adhoc]";
        if adhoc.analysts.is_empty() || adhoc.receivers.is_empty() {
            return Err(ContractError::Adhoc(
                "[adhoc] needs at least one analyst and one receiver".into(),
            ));
        }
        for a in &adhoc.analysts {
            self.require_role(context, a, Role::Analyst)?;
        }
        for r in &adhoc.receivers {
            self.require_role(context, r, Role::Receiver)?;
        }
        let known = |list: &[String], key: &str| -> Result<(), ContractError> {
            for f in list {
                if !ADHOC_AGGREGATES.contains(&f.as_str()) {
                    return Err(ContractError::Adhoc(format!(
                        "{key}: aggregate {f:?} is not one kura can allow (known: {})",
                        ADHOC_AGGREGATES.join(", ")
                    )));
                }
            }
            Ok(())
        };
        known(&adhoc.aggregates, "adhoc.aggregates")?;
        if adhoc.require_dp && self.privacy.dp.is_none() {
            return Err(ContractError::Adhoc(
                "adhoc.require_dp is set but the contract has no [privacy.dp] section".into(),
            ));
        }
        if adhoc.overlap_memory == Some(0) {
            return Err(ContractError::Adhoc(
                "adhoc.overlap_memory must be at least 1".into(),
            ));
        }
        if adhoc.overlap_memory.is_some() && !adhoc.overlap_control {
            return Err(ContractError::Adhoc(
                "adhoc.overlap_memory is set but adhoc.overlap_control is not".into(),
            ));
        }
        for (key, list) in &adhoc.column_aggregates {
            known(list, &format!("adhoc.column_aggregates.{key:?}"))?;
            let column = self.qualified_column(key)?;
            if column.role == ColumnRole::Identifier
                && list.iter().any(|f| f != "count" && f != "count_distinct")
            {
                return Err(ContractError::Adhoc(format!(
                    "adhoc.column_aggregates.{key:?}: an identifier may only be counted"
                )));
            }
        }
        for key in adhoc.dimension_functions.keys() {
            if self.qualified_column(key)?.role != ColumnRole::Dimension {
                return Err(ContractError::Adhoc(format!(
                    "adhoc.dimension_functions.{key:?}: only dimensions go through functions"
                )));
            }
        }
        Ok(())
    }

    /// The column named `"dataset.column"`.
    pub fn qualified_column(&self, key: &str) -> Result<&Column, ContractError> {
        key.split_once('.')
            .and_then(|(d, c)| self.dataset(d)?.column(c))
            .ok_or_else(|| {
                ContractError::Adhoc(format!(
                    "{key:?} is not a column of a dataset (write \"dataset.column\")"
                ))
            })
    }

    fn require_role(&self, context: &str, party: &str, role: Role) -> Result<(), ContractError> {
        let p = self
            .party(party)
            .ok_or_else(|| ContractError::UnknownParty {
                context: context.to_string(),
                party: party.to_string(),
            })?;
        if !p.has_role(role) {
            return Err(ContractError::MissingRole {
                context: context.to_string(),
                party: party.to_string(),
                role: role.as_str(),
            });
        }
        Ok(())
    }

    pub fn id(&self) -> &ContractId {
        &self.id
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn party(&self, name: &str) -> Option<&Party> {
        self.parties.iter().find(|p| p.name == name)
    }

    /// The party that owns `key`, if any.
    pub fn party_by_key(&self, key: &PublicIdentity) -> Option<&Party> {
        self.parties.iter().find(|p| &p.public_key == key)
    }

    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.iter().find(|d| d.name == name)
    }

    /// The provider of the dataset or model named `name` (uploads, runs and deletions name
    /// either).
    pub fn provider_of(&self, name: &str) -> Option<&str> {
        self.dataset(name)
            .map(|d| d.provider.as_str())
            .or_else(|| self.model(name).map(|m| m.provider.as_str()))
    }

    /// The `[[models]]` entry named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelFile> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Model files: names shared with no dataset (uploads name either), a provider, and a
    /// SHA-256 to pin.
    fn validate_models(&self) -> Result<(), ContractError> {
        unique(
            "dataset or model",
            self.datasets
                .iter()
                .map(|d| d.name.as_str())
                .chain(self.models.iter().map(|m| m.name.as_str())),
        )?;
        for m in &self.models {
            check_name("model", &m.name, sql_char, SQL_RULE)?;
            let context = format!("model {:?}", m.name);
            self.require_role(&context, &m.provider, Role::Provider)?;
            let hex_ok = m.sha256.len() == 64
                && m.sha256
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
            if !hex_ok {
                return Err(ContractError::Model(format!(
                    "{context}: sha256 must be the file's SHA-256 in 64 lowercase hex digits"
                )));
            }
            if !self
                .analyses
                .iter()
                .any(|a| a.score.as_ref().is_some_and(|s| s.model == m.name))
            {
                return Err(ContractError::Model(format!(
                    "{context} is used by no scoring analysis"
                )));
            }
        }
        Ok(())
    }

    /// A scoring analysis names a model of the contract, what it reads, and who gets what:
    /// the model's provider the distribution, every other receiver its own rows.
    fn validate_score(&self, a: &Analysis) -> Result<(), ContractError> {
        let context = format!("analysis {:?}", a.name);
        let spec = match (a.kind, &a.score) {
            (AnalysisKind::Score, Some(spec)) => spec,
            (AnalysisKind::Score, None) => {
                return Err(ContractError::Model(format!(
                    "{context} is a score: say which model and features in [analyses.score]"
                )));
            }
            (_, Some(_)) => {
                return Err(ContractError::Model(format!(
                    "{context}: [analyses.score] applies only to kind = \"score\""
                )));
            }
            (_, None) => return Ok(()),
        };
        let model = self.model(&spec.model).ok_or_else(|| {
            ContractError::Model(format!(
                "{context} scores with model {:?}, which is not in [[models]]",
                spec.model
            ))
        })?;
        if spec.features.is_empty() {
            return Err(ContractError::Model(format!("{context} names no features")));
        }
        unique("feature", spec.features.iter().map(String::as_str))?;
        let route = a.list_column.as_deref().unwrap_or_default();
        if spec.features.iter().any(|f| f == route) || spec.group_by.as_deref() == Some(route) {
            return Err(ContractError::Model(format!(
                "{context}: the list_column {route:?} says whose a row is; it cannot also be a \
                 feature or the distribution's group"
            )));
        }
        if spec
            .group_by
            .as_ref()
            .is_some_and(|g| spec.features.contains(g))
        {
            return Err(ContractError::Model(format!(
                "{context}: group_by cannot also be a feature"
            )));
        }
        let increasing = spec.buckets.windows(2).all(|w| w[0] < w[1]);
        if spec.buckets.is_empty()
            || spec.buckets.len() > 99
            || !increasing
            || spec.buckets.iter().any(|b| !b.is_finite())
        {
            return Err(ContractError::Model(format!(
                "{context}: buckets must be 1 to 99 increasing finite numbers"
            )));
        }
        for other in &self.analyses {
            if let Some(o) = &other.score
                && o.model == spec.model
                && o.features.len() != spec.features.len()
            {
                return Err(ContractError::Model(format!(
                    "analyses {:?} and {:?} give model {:?} different numbers of features",
                    a.name, other.name, spec.model
                )));
            }
        }
        for r in a.receivers.iter().filter(|r| **r != model.provider) {
            if !self.datasets.iter().any(|d| &d.provider == r) {
                return Err(ContractError::Model(format!(
                    "{context}: receiver {r:?} provides neither the model nor a dataset, so it \
                     could only ever receive nothing"
                )));
            }
        }
        Ok(())
    }

    pub fn analysis(&self, name: &str) -> Option<&Analysis> {
        self.analyses.iter().find(|a| a.name == name)
    }

    /// What a signatory should know before signing: rules that are weaker than they may look.
    /// The contract is valid either way; `kura contract verify` prints these.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(adhoc) = &self.adhoc {
            if self.privacy.dp.is_none() {
                out.push(if adhoc.overlap_control {
                    "[adhoc] without [privacy.dp]: overlap control refuses an answer that \
                     differs from an earlier one by fewer than min_group_size people, but a \
                     total and all but one of its parts, asked in separate queries, still give \
                     the last part away. Add [privacy.dp] to make every ad-hoc query \
                     differentially private (docs/privacy.md)"
                        .to_string()
                } else {
                    "[adhoc] without [privacy.dp]: each answer rests on at least min_group_size \
                     people, but two allowed answers whose groups differ by one person give that \
                     person's values away by subtraction, and no per-query rule can stop that. \
                     Add [privacy.dp] to make every ad-hoc query differentially private, or at \
                     least [adhoc] overlap_control = true (docs/privacy.md)"
                        .to_string()
                });
            }
            let one_person: Vec<&str> = adhoc
                .aggregates
                .iter()
                .map(String::as_str)
                .filter(|a| ONE_PERSON_AGGREGATES.contains(a))
                .collect();
            if !one_person.is_empty() {
                out.push(format!(
                    "[adhoc].aggregates lists {}: each returns one person's value, so kura \
                     refuses them in ad-hoc queries (rule one-person-value)",
                    one_person.join(", ")
                ));
            }
        }
        out
    }

    /// Who receives the results of `analysis` (a named analysis, or [`ADHOC_ANALYSIS`]).
    pub fn receivers_of(&self, analysis: &str) -> Option<&[String]> {
        if analysis == ADHOC_ANALYSIS {
            return self.adhoc.as_ref().map(|a| a.receivers.as_slice());
        }
        self.analysis(analysis).map(|a| a.receivers.as_slice())
    }

    /// Whether `party` may start `analysis` (a named analysis, or [`ADHOC_ANALYSIS`]).
    pub fn may_start(&self, party: &str, analysis: &str) -> bool {
        if analysis == ADHOC_ANALYSIS {
            return self
                .adhoc
                .as_ref()
                .is_some_and(|a| a.analysts.iter().any(|p| p == party));
        }
        self.analysis(analysis)
            .is_some_and(|a| self.may_run(party, a))
    }

    pub fn may_run(&self, party: &str, analysis: &Analysis) -> bool {
        match &analysis.analysts {
            Some(list) => list.iter().any(|p| p == party),
            None => {
                analysis.receivers.iter().any(|r| r == party)
                    || self.party(party).is_some_and(|p| p.has_role(Role::Analyst))
            }
        }
    }
}

/// A model analysis names what it trains, and nothing else does.
fn validate_model(a: &Analysis) -> Result<(), ContractError> {
    let context = format!("analysis {:?}", a.name);
    let spec = match (a.kind, &a.model) {
        (AnalysisKind::Model, Some(spec)) => spec,
        (AnalysisKind::Model, None) => {
            return Err(ContractError::Model(format!(
                "{context} is a model: say what it trains in [analyses.model]"
            )));
        }
        (_, Some(_)) => {
            return Err(ContractError::Model(format!(
                "{context}: [analyses.model] applies only to kind = \"model\""
            )));
        }
        (_, None) => return Ok(()),
    };
    if spec.features.is_empty() {
        return Err(ContractError::Model(format!("{context} names no features")));
    }
    unique("feature", spec.features.iter().map(String::as_str))?;
    if spec.features.contains(&spec.label) {
        return Err(ContractError::Model(format!(
            "{context}: the label {:?} cannot also be a feature",
            spec.label
        )));
    }
    if !(0.0..=0.5).contains(&spec.holdout) {
        return Err(ContractError::Model(format!(
            "{context}: holdout must be between 0 and 0.5"
        )));
    }
    if !(spec.l2.is_finite() && spec.l2 >= 0.0) {
        return Err(ContractError::Model(format!(
            "{context}: l2 must be a number of at least 0"
        )));
    }
    if spec.family == ModelFamily::Linear && spec.l2 != ModelSpec::default_l2() {
        return Err(ContractError::Model(format!(
            "{context}: l2 applies only to family = \"logistic\""
        )));
    }
    if !(1..=10_000).contains(&spec.max_iterations) {
        return Err(ContractError::Model(format!(
            "{context}: max_iterations must be from 1 to 10000"
        )));
    }
    validate_tree(&context, spec)?;
    if !a.dp {
        if !spec.bounds.is_empty() {
            return Err(ContractError::Model(format!(
                "{context}: bounds apply only to a model trained with dp = true"
            )));
        }
        return Ok(());
    }
    // Differentially private training (kura_ml::private): a logistic model by output
    // perturbation of an L2-penalised fit, a linear one by noisy sufficient statistics, a tree
    // grown and rated from noisy counts. None releases exact measures on held-out rows.
    let refuse = |why: &str| Err(ContractError::Dp(format!("{context}: {why}")));
    if spec.holdout != 0.0 {
        return refuse(
            "a model trained with dp = true needs holdout = 0 (measures on held-out rows are \
             exact statistics)",
        );
    }
    // What must be bounded: each feature of a regression, and a linear model's label too.
    let bounded: Vec<&String> = match spec.family {
        ModelFamily::Tree => {
            if !spec.bounds.is_empty() {
                return refuse(
                    "bounds do not apply to a tree (its cut points are public; its label is 0 or 1)",
                );
            }
            return Ok(());
        }
        ModelFamily::Logistic => {
            if spec.l2 <= 0.0 {
                return refuse("a model trained with dp = true needs l2 > 0");
            }
            spec.features.iter().collect()
        }
        ModelFamily::Linear => spec.features.iter().chain([&spec.label]).collect(),
    };
    for f in &bounded {
        match spec.bounds.get(*f) {
            Some([low, high]) if low.is_finite() && high.is_finite() && low < high => {}
            Some(_) => return refuse(&format!("bounds of {f:?} need finite low < high")),
            None => {
                return refuse(&format!(
                    "a {} model trained with dp = true needs bounds for every feature{} ({f:?} \
                     has none)",
                    spec.family.as_str(),
                    if spec.family == ModelFamily::Linear {
                        " and its label"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    if let Some(other) = spec.bounds.keys().find(|b| !bounded.contains(b)) {
        return refuse(&format!(
            "bounds name {other:?}, which is not a feature{}",
            if spec.family == ModelFamily::Linear {
                " or the label"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// A tree's cut points and depth, and no tree settings on other families.
fn validate_tree(context: &str, spec: &ModelSpec) -> Result<(), ContractError> {
    let refuse = |why: String| Err(ContractError::Model(format!("{context}: {why}")));
    if spec.family != ModelFamily::Tree {
        if !spec.cuts.is_empty() || spec.max_depth.is_some() {
            return refuse("cuts and max_depth apply only to family = \"tree\"".into());
        }
        return Ok(());
    }
    if spec.l2 != ModelSpec::default_l2() {
        return refuse("l2 applies only to family = \"logistic\"".into());
    }
    if !(1..=8).contains(&spec.max_depth.unwrap_or(ModelSpec::DEFAULT_MAX_DEPTH)) {
        return refuse("max_depth must be from 1 to 8".into());
    }
    for f in &spec.features {
        let Some(cuts) = spec.cuts.get(f) else {
            return refuse(format!(
                "a tree needs public cut points for every feature ({f:?} has none): splits may \
                 fall only on them"
            ));
        };
        if cuts.is_empty() || cuts.len() > ModelSpec::MAX_CUTS {
            return refuse(format!(
                "the cuts of {f:?} must be 1 to {} numbers",
                ModelSpec::MAX_CUTS
            ));
        }
        if cuts.iter().any(|c| !c.is_finite()) || cuts.windows(2).any(|w| w[0] >= w[1]) {
            return refuse(format!(
                "the cuts of {f:?} must be finite numbers in increasing order"
            ));
        }
    }
    if let Some(other) = spec.cuts.keys().find(|c| !spec.features.contains(c)) {
        return refuse(format!("cuts name {other:?}, which is not a feature"));
    }
    Ok(())
}

fn party_char_or_underscore(c: char) -> bool {
    party_char(c) || c == '_'
}

const NAME_RULE: &str = "use 1-63 characters a-z, 0-9, '-' and '_', starting with a letter";

#[cfg(test)]
mod tests;
