//! Golden queries in the sqllogictest format (`slt/*.slt`), the format DataFusion's own tests
//! use, run against kura's rules on the golden contract and data ([`crate::golden`]).
//!
//! ```text
//! query TI rowsort                      an allowed query and its expected rows
//! SELECT region, COUNT(*) ...
//! ----
//! east 66
//!
//! query I                               what the threshold removed from the last answer
//! SHOW kura.suppressed_groups
//! ----
//! 1
//!
//! query error refused by rule identifier-use:    refused, by this rule
//! SELECT patient_id FROM patients
//! ```
//!
//! Beyond the expected rows, every answer is checked against plain DataFusion on the same data
//! (released rows plus suppressed groups must be its rows) and for identifier values.
//!
//! Files ending in `_dp.slt` run under the golden contract with `[privacy.dp]` at ε = 1000 per
//! query: counts carry noise of scale below 0.01 (zero in practice), so clamping, public
//! domains and thresholded keys show as exact rows; sums are written `value±tolerance`, with a
//! tolerance of fifty noise scales. `SHOW kura.spend` and `SHOW kura.noise` give what the last
//! release spent and each statistic's noise scale.
//!
//! `KURA_SLT_COMPLETE=1 cargo test -p kura-engine --lib slt` rewrites the expected rows from
//! what the engine answers, for review in the diff.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use kura_contract::{ColumnType, Contract};
use serde_json::Value;
use sqllogictest::{DBOutput, DefaultColumnType, Normalizer, Runner};

use crate::golden::{contract, contract_with, tables};
use crate::{EngineError, Output, Tables};

const DP: &str = r#"
[privacy.dp]
epsilon = 1000.0
delta = 1e-5
query_epsilon = 1000.0
query_delta = 1e-6
max_contributions = 3
bounds = { "claims.amount" = [0.0, 100.0], "patients.bmi" = [15.0, 40.0] }
domains = { "patients.age_band" = ["18-39", "40-59", "60-79", "80+", "unborn"], "patients.sex" = ["f", "m"] }
"#;

#[derive(Debug, thiserror::Error)]
enum SltError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The answer disagrees with plain DataFusion or shows an identifier.
    #[error("WRONG ANSWER: {0}")]
    Wrong(String),
}

struct Kura {
    contract: Contract,
    tables: Tables,
    /// The same data held in memory, for plain DataFusion's answer.
    plain: Tables,
    /// Where the tables rest when they are read from encrypted storage.
    _store: Option<tempfile::TempDir>,
    dp: bool,
    identifiers: HashSet<String>,
    last: Option<Output>,
}

impl Kura {
    fn new(dp: bool) -> Self {
        let contract = if dp { contract_with(DP) } else { contract() };
        let tables = tables(&contract);
        let identifiers = (0..200)
            .map(|i| format!("pat{i:04}"))
            .chain((0..600).map(|i| format!("clm{:04}{}", i / 3, i % 3)))
            .collect();
        Kura {
            contract,
            plain: tables.clone(),
            tables,
            _store: None,
            dp,
            identifiers,
            last: None,
        }
    }

    /// The same, with the tables read from encrypted files in a local store (whose origin, for
    /// a cluster, is the directory's path).
    async fn at_rest(dp: bool) -> Self {
        let mut kura = Kura::new(dp);
        let dir = tempfile::tempdir().unwrap();
        kura.tables = crate::stored::tests::at_rest(&kura.contract, &kura.plain, dir.path()).await;
        let origin = std::sync::Arc::new(zeroize::Zeroizing::new(dir.path().display().to_string()));
        for table in kura.tables.values_mut() {
            if let crate::Table::Stored(stored) = table {
                stored.origin = Some(origin.clone());
            }
        }
        kura._store = Some(dir);
        kura
    }

    /// `SHOW kura.NAME`: facts about the last answer.
    fn show(&self, name: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let last = self
            .last
            .as_ref()
            .ok_or_else(|| SltError::Wrong(format!("SHOW kura.{name} before any answer")))?;
        let dp = || {
            last.dp
                .as_ref()
                .ok_or_else(|| SltError::Wrong("the last answer has no DP report".into()))
        };
        let (types, rows) = match name {
            "suppressed_groups" => (
                vec![DefaultColumnType::Integer],
                vec![vec![last.suppressed_groups.to_string()]],
            ),
            "spend" => {
                let r = dp()?;
                (
                    vec![DefaultColumnType::FloatingPoint; 2],
                    vec![vec![r.epsilon.to_string(), r.delta.to_string()]],
                )
            }
            "noise" => (
                vec![DefaultColumnType::Text, DefaultColumnType::FloatingPoint],
                dp()?
                    .columns
                    .iter()
                    .map(|(c, n)| vec![c.clone(), float(n.scale())])
                    .collect(),
            ),
            other => return Err(SltError::Wrong(format!("no kura.{other} to show"))),
        };
        Ok(DBOutput::Rows { types, rows })
    }

    /// Released rows plus suppressed groups must be plain DataFusion's rows. Groups are
    /// suppressed before `HAVING` and `LIMIT`, which may drop some in plain DataFusion too: with
    /// either, none may vanish uncounted.
    async fn compare_with_datafusion(&self, sql: &str, out: &Output) -> Result<(), SltError> {
        let mut pool = crate::golden::plain(&self.plain, sql).await;
        let total = pool.len();
        for row in &out.rows {
            if !take(&mut pool, row) {
                return Err(SltError::Wrong(format!(
                    "row {row:?} is not in plain DataFusion's result"
                )));
            }
        }
        let upper = sql.to_ascii_uppercase();
        let narrowed = upper.contains("HAVING") || upper.contains("LIMIT");
        let accounted = out.rows.len() + out.suppressed_groups as usize;
        if accounted < total || (!narrowed && accounted != total) {
            return Err(SltError::Wrong(format!(
                "{} rows + {} suppressed, against {total} rows of plain DataFusion",
                out.rows.len(),
                out.suppressed_groups
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Kura {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        if let Some(name) = sql.trim().strip_prefix("SHOW kura.") {
            return self.show(name.trim());
        }
        self.last = None;
        let out = if self.dp {
            crate::dp::run(&self.contract, sql, None, &self.tables)
                .await?
                .0
        } else {
            let out = crate::run_query(&self.contract, sql, &self.tables, None).await?;
            self.compare_with_datafusion(sql, &out).await?;
            out
        };
        for cell in out.rows.iter().flatten() {
            if let Value::String(s) = cell
                && self.identifiers.contains(s)
            {
                return Err(SltError::Wrong(format!("identifier {s} in the output")));
            }
        }
        let types = out.types.iter().map(|t| column_type(*t)).collect();
        let rows = out
            .rows
            .iter()
            .map(|r| r.iter().map(cell).collect())
            .collect();
        self.last = Some(out);
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}
}

fn column_type(t: ColumnType) -> DefaultColumnType {
    match t {
        ColumnType::Int64 => DefaultColumnType::Integer,
        ColumnType::Float64 => DefaultColumnType::FloatingPoint,
        ColumnType::Utf8 | ColumnType::Boolean | ColumnType::Date => DefaultColumnType::Text,
    }
}

/// Floats to six decimals, so that summation order does not show.
fn float(x: f64) -> String {
    let r = (x * 1e6).round() / 1e6;
    if r == 0.0 { "0".into() } else { r.to_string() }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) if s.is_empty() => "(empty)".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => float(n.as_f64().unwrap_or(f64::NAN)),
        other => other.to_string(),
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
        _ => a == b,
    }
}

/// Takes `row` out of `pool` if an equal row (floats to 1e-9) is there.
fn take(pool: &mut Vec<Vec<Value>>, row: &[Value]) -> bool {
    match pool
        .iter()
        .position(|p| p.len() == row.len() && p.iter().zip(row).all(|(a, b)| same(a, b)))
    {
        Some(i) => {
            pool.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Exact comparison of normalised rows, except that an expected `value±tolerance` matches any
/// number within the tolerance (noisy DP sums).
fn validator(normalizer: Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    let actual: Vec<String> = actual.iter().map(|r| normalizer(&r.join(" "))).collect();
    actual.len() == expected.len()
        && actual.iter().zip(expected).all(|(a, e)| {
            let (a, e) = (a.split(' ').collect::<Vec<_>>(), normalizer(e));
            let e: Vec<&str> = e.split(' ').collect();
            a.len() == e.len() && a.iter().zip(&e).all(|(a, e)| matches(a, e))
        })
}

fn matches(actual: &str, expected: &str) -> bool {
    match expected.split_once('±') {
        Some((value, tolerance)) => match (
            actual.parse::<f64>(),
            value.parse::<f64>(),
            tolerance.parse::<f64>(),
        ) {
            (Ok(a), Ok(v), Ok(t)) => (a - v).abs() <= t,
            _ => false,
        },
        None => actual == expected,
    }
}

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn golden_queries_give_their_expected_rows_and_refusals() {
    golden(false).await;
}

/// Every golden query gives the same answer and refusal when its tables are read from
/// encrypted files, as the service reads them, as from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_queries_answer_the_same_from_encrypted_storage() {
    golden(true).await;
}

/// The golden tables at rest in encrypted files (their origin the directory's path), for other
/// crates' tests to query (a cluster's).
pub struct AtRest(Kura);

impl std::fmt::Debug for AtRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtRest").finish_non_exhaustive()
    }
}

impl AtRest {
    pub async fn new() -> Self {
        AtRest(Kura::at_rest(false).await)
    }

    /// Runs `sql` ad hoc, through whatever [`crate::with_compute`] set: the number of rows
    /// released, or the refusal.
    pub async fn query(&self, sql: &str) -> Result<usize, String> {
        crate::run_query(&self.0.contract, sql, &self.0.tables, None)
            .await
            .map(|out| out.rows.len())
            .map_err(|e| e.to_string())
    }
}

/// Every golden query, differentially private ones included, with its tables read from
/// encrypted files in a local store whose origin is its directory's path, run by whatever
/// [`crate::with_compute`] set (a cluster): the same rows and refusals as on one node. Returns
/// the number of records run.
pub async fn golden_at_rest() -> usize {
    run_golden(true).await
}

async fn golden(at_rest: bool) {
    run_golden(at_rest).await;
}

async fn run_golden(at_rest: bool) -> usize {
    let complete = !at_rest && std::env::var_os("KURA_SLT_COMPLETE").is_some();
    let mut failures = vec![];
    let mut records = 0;
    for path in files() {
        let dp = path.to_string_lossy().ends_with("_dp.slt");
        let mut runner = Runner::new(move || async move {
            Ok(if at_rest {
                Kura::at_rest(dp).await
            } else {
                Kura::new(dp)
            })
        });
        runner.with_validator(validator);
        runner.with_column_validator(sqllogictest::strict_column_validator);
        let parsed = sqllogictest::parse_file::<DefaultColumnType>(&path).unwrap();
        records += parsed
            .iter()
            .filter(|r| matches!(r, sqllogictest::Record::Query { .. }))
            .count();
        if complete {
            runner
                .update_test_file(
                    &path,
                    " ",
                    validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::strict_column_validator,
                )
                .await
                .unwrap();
            continue;
        }
        // Record by record, so that one failure does not hide the next.
        for record in parsed {
            if let Err(e) = runner.run_async(record).await {
                failures.push(e.display(false).to_string());
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("{records} golden records passed");
    assert!(records >= 250, "only {records} golden records");
    records
}
