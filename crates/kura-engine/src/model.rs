//! Model analyses: a model trained on the rows of the analysis's query, released as its
//! coefficients and its quality on held-out rows, never the rows.
//!
//! The query is fixed in the contract and signed by every party, like a list's. At signing,
//! the engine checks that its rows' count can be guarded by the threshold rule ([`counts`]).
//! At run time each output row carries, hidden, the privacy unit of every dataset it joins
//! ([`with_owners`]); `kura_ml` then counts people on exactly the rows it fits, after rows with
//! a missing value are dropped and the held-out rows drawn: the fitted rows, each side of each
//! feature and the held-out rows rest on at least `min_group_size` people of each dataset (a
//! side may rest on no one), and no person's rows weigh more than one of `min_group_size` in
//! the fit. A tree asks the threshold rule for its rows' coverage before it grows
//! ([`covered`]), then counts each leaf's people. The fit is `kura_ml`'s (linfa), in this
//! process: the query's output rows are collected where counted aggregations run (on a
//! cluster, its executors), and only its features and label are kept.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use std::collections::HashMap;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use kura_contract::{Analysis, ColumnType, Contract, ModelFamily, ModelSpec};
use serde_json::Value;

use crate::{EngineError, Output, Tables};

/// What the rule that refuses a training set is called in refusals.
const RULE: &str = "training-set";

/// The model's table: one row per term (the intercept, then each feature's coefficient), then
/// one per measure on the held-out rows.
pub const COLUMNS: [&str; 2] = ["term", "value"];

/// Trains `analysis`'s model on its query's rows over `tables`.
pub async fn train(
    contract: &Contract,
    analysis: &Analysis,
    tables: &Tables,
) -> Result<Output, EngineError> {
    let spec = spec(analysis)?;
    let ctx = crate::session(contract, tables)?;
    let plan = crate::written_plan(&ctx, &analysis.sql).await?;
    let datasets = crate::lineage::datasets_read(&plan, contract)?;
    crate::require_data(&datasets, tables)?;
    if analysis.dp || spec.family == ModelFamily::Tree {
        learned_columns(contract, &plan, spec)?;
        crate::roles::Rules::for_signing(contract).check_flow(&plan)?;
    }
    if analysis.dp {
        return private::train(contract, analysis, spec, &ctx, plan, datasets).await;
    }
    if spec.family == ModelFamily::Tree {
        return tree::train(contract, spec, &ctx, plan, datasets).await;
    }
    let columns = learned_columns(contract, &plan, spec)?;
    crate::roles::Rules::for_signing(contract).check_flow(&plan)?;
    // Each row with its people: the training set's coverage, its features' support and the
    // leverage bound are counted per person, on the rows fitted (`kura_ml::Settings`).
    let width = plan.schema().fields().len();
    let batches = collect(&ctx, &with_owners(contract, &plan)?).await?;
    let rows = numbers(&batches, &columns)?;
    let owners = owners(&batches, &rows.kept, width..width + contract.datasets.len());
    let mut set = as_set(spec, rows.values)?;
    set.owners = owners;
    let model = kura_ml::train(&set, &settings(spec, contract)?).map_err(refused)?;
    let mut rows = vec![vec![Value::from("intercept"), number(model.intercept)]];
    rows.extend(
        model
            .coefficients
            .iter()
            .chain(&model.metrics)
            .map(|(term, v)| vec![Value::from(term.as_str()), number(*v)]),
    );
    Ok(Output {
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        types: vec![ColumnType::Utf8, ColumnType::Float64],
        rows,
        suppressed_groups: 0,
        datasets: datasets.into_iter().collect(),
        dp: None,
        onnx: Some(kura_ml::onnx::export(&model)),
    })
}

/// The checks of [`train`] that need no data, for a contract's analyses before anyone signs:
/// the query plans, its features and label are numeric output columns, and its row count can
/// be guarded by the threshold rule.
pub(crate) async fn check(
    contract: &Contract,
    ctx: &datafusion::execution::context::SessionContext,
    analysis: &Analysis,
) -> Result<(), EngineError> {
    let spec = spec(analysis)?;
    let plan = crate::written_plan(ctx, &analysis.sql).await?;
    crate::lineage::datasets_read(&plan, contract)?;
    let columns = learned_columns(contract, &plan, spec)?;
    if analysis.dp {
        private::spend(contract, analysis)?;
        with_units(contract, &plan, "dp")?;
        return crate::roles::Rules::for_signing(contract).check_flow(&plan);
    }
    if spec.family == ModelFamily::Tree {
        with_units(contract, &plan, RULE)?;
    }
    for count in counts(&plan, &columns)? {
        crate::threshold::guard_coverage(count, contract)?;
    }
    crate::roles::Rules::for_signing(contract).check_flow(&plan)
}

/// The positions of the features, then the label, among `plan`'s output columns: numbers or
/// booleans, none computed from an identifier.
fn learned_columns(
    contract: &Contract,
    plan: &LogicalPlan,
    spec: &ModelSpec,
) -> Result<Vec<usize>, EngineError> {
    let columns = numeric_columns(plan, &learned(spec), "model")?;
    no_identifiers(contract, plan, &learned(spec), RULE)?;
    Ok(columns)
}

/// `plan`'s rows, collected where counted aggregations run (on a cluster, its executors).
async fn collect(
    ctx: &datafusion::execution::context::SessionContext,
    plan: &LogicalPlan,
) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>, EngineError> {
    let physical = ctx.state().create_physical_plan(plan).await?;
    crate::collect_counted(physical, ctx)
        .await
        .map_err(crate::error::runtime)
}

/// The features, then the label: the columns a model learns from.
fn learned(spec: &ModelSpec) -> Vec<String> {
    let mut names = spec.features.clone();
    names.push(spec.label.clone());
    names
}

/// Refuses any of `names` (output columns) computed from an identifier column: an indicator
/// such as `account = 'A-17'` would put one person's label in a coefficient, or let a scoring
/// model single one person out. Each must be computed, in each branch's final `SELECT`, from
/// dataset columns that are not identifiers. Refusals name `rule`.
pub(crate) fn no_identifiers(
    contract: &Contract,
    plan: &LogicalPlan,
    names: &[String],
    rule: &'static str,
) -> Result<(), EngineError> {
    let refuse = |reason: String| EngineError::Refused { rule, reason };
    for branch in branches(plan) {
        let LogicalPlan::Projection(projection) = branch else {
            return Err(refuse(
                "the query must end in a SELECT list (of each UNION ALL branch)".into(),
            ));
        };
        let fields = branch.schema().fields();
        for (expr, field) in projection.expr.iter().zip(fields.iter()) {
            let name = field.name();
            if !names.contains(name) {
                continue;
            }
            for column in expr.column_refs() {
                let index = projection
                    .input
                    .schema()
                    .index_of_column(column)
                    .map_err(|e| EngineError::Sql(e.to_string()))?;
                let (dataset, source) = crate::lineage::origin(&projection.input, index)
                    .ok_or_else(|| {
                        refuse(format!(
                            "the column {name:?} must be computed from the datasets' columns in \
                             the final SELECT"
                        ))
                    })?;
                let role = contract
                    .dataset(&dataset)
                    .and_then(|d| d.columns.iter().find(|c| c.name == source))
                    .map(|c| c.role);
                if role == Some(kura_contract::ColumnRole::Identifier) {
                    return Err(refuse(format!(
                        "the column {name:?} is computed from identifier column \
                         {dataset}.{source}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The dataset `branch` (of a top-level `UNION ALL`) reads, and its privacy unit: exactly
/// one, so that each of its rows belongs to one person. `query` names the query in the
/// refusal, whose rule is `rule`.
pub(crate) fn one_dataset(
    contract: &Contract,
    branch: &LogicalPlan,
    query: &str,
    rule: &'static str,
) -> Result<(String, String), EngineError> {
    let read = crate::lineage::datasets_read(branch, contract)?;
    match read.iter().collect::<Vec<_>>()[..] {
        [name] => Ok((
            name.clone(),
            contract
                .dataset(name)
                .map(|d| d.privacy_unit.clone())
                .unwrap_or_default(),
        )),
        _ => Err(EngineError::Refused {
            rule,
            reason: format!(
                "each part of {query} (each UNION ALL branch) must read exactly one dataset, so \
                 that every row belongs to one person"
            ),
        }),
    }
}

/// The hidden columns that carry each training row's person (as text) and the dataset it is a
/// person of.
pub(crate) const UNIT: &str = "__kura_unit";
pub(crate) const DATASET: &str = "__kura_dataset";

/// `plan` with one more column per contract dataset, in the contract's order: the privacy unit
/// (as text) of that dataset's row behind each output row, or NULL where the branch does not
/// read the dataset. A joined row belongs to one person of each dataset it joins. A row whose
/// person is missing in a dataset it reads is left out: it could not be counted as anyone's.
fn with_owners(contract: &Contract, plan: &LogicalPlan) -> Result<LogicalPlan, EngineError> {
    with_columns(plan, RULE, |branch, input| {
        let read = crate::lineage::datasets_read(branch, contract)?;
        let mut exprs = Vec::new();
        let mut present = Vec::new();
        for (i, d) in contract.datasets.iter().enumerate() {
            let name = format!("{HIDDEN_OWNER}{i}");
            if read.contains(&d.name) {
                let unit = unit_column(input, &d.name, &d.privacy_unit, RULE)?;
                present.push(unit.clone().is_not_null());
                exprs.push(datafusion::logical_expr::cast(unit, DataType::Utf8).alias(name));
            } else {
                exprs.push(datafusion::logical_expr::lit(ScalarValue::Utf8(None)).alias(name));
            }
        }
        Ok((exprs, present))
    })
}

/// The column of `input` that carries `dataset`'s privacy unit `unit`, unchanged.
fn unit_column(
    input: &LogicalPlan,
    dataset: &str,
    unit: &str,
    rule: &'static str,
) -> Result<Expr, EngineError> {
    let index = (0..input.schema().fields().len())
        .find(|&i| {
            crate::lineage::origin(input, i) == Some((dataset.to_string(), unit.to_string()))
        })
        .ok_or_else(|| EngineError::Refused {
            rule,
            reason: format!(
                "the rows of {dataset} must still carry its privacy unit {unit:?} under the final \
                 SELECT (no aggregation there)"
            ),
        })?;
    Ok(Expr::Column(datafusion::common::Column::from(
        input.schema().qualified_field(index),
    )))
}

/// `plan` with the columns `extra` gives each branch of a top-level `UNION ALL` (from the
/// branch and the input of its final `SELECT`) added after the branch's own, and only the rows
/// that meet every condition it gives with them. Refusals name `rule`.
fn with_columns(
    plan: &LogicalPlan,
    rule: &'static str,
    mut extra: impl FnMut(&LogicalPlan, &LogicalPlan) -> Result<(Vec<Expr>, Vec<Expr>), EngineError>,
) -> Result<LogicalPlan, EngineError> {
    let refuse = |reason: &str| EngineError::Refused {
        rule,
        reason: reason.to_string(),
    };
    let mut branches = Vec::new();
    for branch in self::branches(plan) {
        let LogicalPlan::Projection(projection) = branch else {
            return Err(refuse(
                "a model's query must end in a SELECT list (of each UNION ALL branch)",
            ));
        };
        let input = projection.input.as_ref();
        let mut exprs = projection.expr.clone();
        let (more, conditions) = extra(branch, input)?;
        exprs.extend(more);
        let mut rows = LogicalPlanBuilder::from(input.clone());
        if let Some(all) = conditions.into_iter().reduce(Expr::and) {
            rows = rows.filter(all)?;
        }
        branches.push(rows.project(exprs)?.build()?);
    }
    let mut branches = branches.into_iter();
    let first = branches
        .next()
        .ok_or_else(|| refuse("the query has no rows"))?;
    let mut union = LogicalPlanBuilder::from(first);
    for b in branches {
        union = union.union(b)?;
    }
    Ok(union.build()?)
}

const HIDDEN_OWNER: &str = "__kura_owner_";

/// The people of each row kept (`kept[i]`: every learned value there): for each of
/// the `owners` columns ([`with_owners`]) that is not NULL, that dataset's position among them
/// and the number of its person.
fn owners(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    kept: &[bool],
    owners: std::ops::Range<usize>,
) -> kura_ml::Owners {
    let mut people = People::default();
    let mut out = kura_ml::Owners::default();
    let mut row = 0;
    for batch in batches {
        let texts: Vec<_> = owners
            .clone()
            .map(|c| batch.column(c).as_string::<i32>())
            .collect();
        for r in 0..batch.num_rows() {
            if kept[row] {
                out.push(
                    texts
                        .iter()
                        .enumerate()
                        .filter(|(_, text)| text.is_valid(r))
                        .map(|(d, text)| (d as u32, people.number(d, text.value(r)))),
                );
            }
            row += 1;
        }
    }
    out
}

/// People numbered in the order they are met, each dataset's apart and from 0 (the same
/// account name at two banks is two people), looked up without allocating for those met
/// before.
#[derive(Default)]
pub(crate) struct People {
    datasets: Vec<HashMap<String, u32>>,
}

impl People {
    /// The number of `unit`, a person of the `dataset`-th dataset.
    pub(crate) fn number(&mut self, dataset: usize, unit: &str) -> u32 {
        if self.datasets.len() <= dataset {
            self.datasets.resize_with(dataset + 1, HashMap::new);
        }
        let people = &mut self.datasets[dataset];
        if let Some(&p) = people.get(unit) {
            return p;
        }
        let next = people.len() as u32;
        people.insert(unit.to_string(), next);
        next
    }
}

/// `plan` with each row's person and dataset as its last two columns ([`UNIT`], [`DATASET`]):
/// each branch of a top-level `UNION ALL` must read one dataset and end in a `SELECT` over rows
/// that still carry its privacy unit. Refusals name `rule`.
pub(crate) fn with_units(
    contract: &Contract,
    plan: &LogicalPlan,
    rule: &'static str,
) -> Result<LogicalPlan, EngineError> {
    with_columns(plan, rule, |branch, input| {
        let (dataset, unit) = one_dataset(contract, branch, "a model's query", rule)?;
        let column = unit_column(input, &dataset, &unit, rule)?;
        Ok((
            vec![
                datafusion::logical_expr::cast(column, DataType::Utf8).alias(UNIT),
                datafusion::logical_expr::lit(dataset).alias(DATASET),
            ],
            Vec::new(),
        ))
    })
}

/// The branches of a top-level `UNION ALL`, or the plan itself.
pub(crate) fn branches(plan: &LogicalPlan) -> Vec<&LogicalPlan> {
    match plan {
        LogicalPlan::Union(union) => union.inputs.iter().map(AsRef::as_ref).collect(),
        other => vec![other],
    }
}

/// Plans that count a model query's rows, one per branch of a top-level `UNION ALL`: each
/// branch's rows before its final projection (which would drop the privacy units the threshold
/// rule counts), under `COUNT(*)`. Only the rows the fit will use are counted: those whose
/// features and label (`learned`, positions among the output columns) are all present, as
/// [`training_set`] drops the others; a provider that leaves a feature empty for all but one
/// person does not get a model of that person's rows behind a count of everyone's.
fn counts(plan: &LogicalPlan, learned: &[usize]) -> Result<Vec<LogicalPlan>, EngineError> {
    use datafusion::prelude::lit;
    let mut out = Vec::new();
    for branch in branches(plan) {
        let (rows, values): (LogicalPlan, Vec<Expr>) = match branch {
            LogicalPlan::Projection(p) => (
                p.input.as_ref().clone(),
                learned
                    .iter()
                    .map(|&i| p.expr[i].clone().unalias())
                    .collect(),
            ),
            other => (
                other.clone(),
                learned
                    .iter()
                    .map(|&i| {
                        Expr::Column(datafusion::common::Column::from(
                            other.schema().qualified_field(i),
                        ))
                    })
                    .collect(),
            ),
        };
        let present = values
            .into_iter()
            .map(Expr::is_not_null)
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(true));
        out.push(
            LogicalPlanBuilder::from(rows)
                .filter(present)?
                .aggregate(
                    Vec::<Expr>::new(),
                    vec![datafusion::functions_aggregate::count::count_all()],
                )?
                .build()?,
        );
    }
    Ok(out)
}

pub mod private;
mod tree;

/// A training failure as the engine reports it: the training set's reason as a refusal of the
/// rule; the solver's own words could carry values of the data, so they are replaced.
fn refused(e: kura_ml::MlError) -> EngineError {
    match e {
        kura_ml::MlError::Data(reason) => EngineError::Refused { rule: RULE, reason },
        kura_ml::MlError::Fit(_) => EngineError::Runtime("the solver could not fit the model"),
    }
}

fn spec(analysis: &Analysis) -> Result<&ModelSpec, EngineError> {
    analysis
        .model
        .as_ref()
        .ok_or_else(|| EngineError::Sql(format!("analysis {:?} is not a model", analysis.name)))
}

/// A regression's settings (a tree has its own, [`tree`]).
fn settings(spec: &ModelSpec, contract: &Contract) -> Result<kura_ml::Settings, EngineError> {
    Ok(kura_ml::Settings {
        family: match spec.family {
            ModelFamily::Linear => kura_ml::Family::Linear,
            ModelFamily::Logistic => kura_ml::Family::Logistic,
            ModelFamily::Tree => {
                return Err(EngineError::Execution(
                    "a tree is not trained as a regression".into(),
                ));
            }
        },
        holdout: spec.holdout,
        l2: spec.l2,
        max_iterations: spec.max_iterations,
        // No fitted row may weigh more than one of `min_group_size` rows.
        max_leverage: Some(1.0 / contract.output.min_group_size.max(1) as f64),
        // The fitted rows, each feature's two sides and the held-out rows rest on
        // `min_group_size` people of each dataset, or (a side) on no one.
        min_people: Some(usize::try_from(contract.output.min_group_size).unwrap_or(usize::MAX)),
    })
}

pub(crate) fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// The positions of `names` among the query's output columns, which must be numbers or
/// booleans; `what` says whose columns they are in errors.
pub(crate) fn numeric_columns(
    plan: &LogicalPlan,
    names: &[String],
    what: &str,
) -> Result<Vec<usize>, EngineError> {
    let schema = plan.schema();
    names
        .iter()
        .map(|name| {
            let index = schema
                .fields()
                .iter()
                .position(|f| f.name() == name)
                .ok_or_else(|| {
                    EngineError::Sql(format!("the {what}'s query has no output column {name:?}"))
                })?;
            let kind = schema.field(index).data_type();
            if kind.is_numeric() || *kind == DataType::Boolean {
                Ok(index)
            } else {
                Err(EngineError::Sql(format!(
                    "the {what}'s column {name:?} is {kind}, not a number or a boolean"
                )))
            }
        })
        .collect()
}

/// The values of some columns of each row as numbers ([`numbers`]).
pub(crate) struct Numbers {
    /// Each row kept, its values one after the other, row after row.
    pub(crate) values: Vec<f64>,
    /// For each row, whether it was kept: none of its values null or not a finite number.
    pub(crate) kept: Vec<bool>,
}

/// The values of the columns at `columns` in each row as numbers. A row where any of them is
/// null, or not a finite number (a float division by zero), is left out: refusing it would tell
/// that someone has it.
pub(crate) fn numbers(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    columns: &[usize],
) -> Result<Numbers, EngineError> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut out = Numbers {
        values: Vec::with_capacity(rows * columns.len()),
        kept: Vec::with_capacity(rows),
    };
    for batch in batches {
        let cast = columns
            .iter()
            .map(|&i| cast(batch.column(i), &DataType::Float64))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| EngineError::Runtime("a model's column did not read as numbers"))?;
        let cast: Vec<_> = cast
            .iter()
            .map(|a| a.as_primitive::<Float64Type>())
            .collect();
        for row in 0..batch.num_rows() {
            let kept = cast
                .iter()
                .all(|a| a.is_valid(row) && a.value(row).is_finite());
            if kept {
                out.values.extend(cast.iter().map(|a| a.value(row)));
            }
            out.kept.push(kept);
        }
    }
    Ok(out)
}

/// Refuses unless the query's rows cover at least `min_group_size` people of every dataset
/// they come from, as the threshold rule counts them ([`counts`]). A refusal names the rule,
/// never a count.
async fn covered(
    contract: &Contract,
    ctx: &datafusion::execution::context::SessionContext,
    plan: &LogicalPlan,
    learned: &[usize],
) -> Result<(), EngineError> {
    let k = contract.output.min_group_size;
    let counts = counts(plan, learned)?;
    for (i, count) in counts.iter().enumerate() {
        let guarded = crate::threshold::guard_coverage(count.clone(), contract)?;
        let counted = crate::execute(ctx, guarded, k, false, None).await?;
        if counted.rows.is_empty() {
            // The counts of the other datasets still read their files: the host does not see
            // which dataset had too few people.
            let mut rest = Vec::new();
            for count in &counts[i + 1..] {
                let guarded = crate::threshold::guard_coverage(count.clone(), contract)?;
                rest.extend(guarded.counted.into_iter().map(|c| c.plan));
            }
            crate::read_unrun(ctx, rest.iter()).await;
            return Err(EngineError::Refused {
                rule: RULE,
                reason: format!(
                    "the training rows come from fewer than {k} people of some dataset"
                ),
            });
        }
    }
    Ok(())
}

/// The features and label of every row with none of them null.
pub(crate) fn training_set(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    spec: &ModelSpec,
    columns: &[usize],
) -> Result<kura_ml::TrainingSet, EngineError> {
    as_set(spec, numbers(batches, columns)?.values)
}

/// `values`, the features then the label of each row in turn, as a training set.
pub(crate) fn as_set(
    spec: &ModelSpec,
    values: Vec<f64>,
) -> Result<kura_ml::TrainingSet, EngineError> {
    let p = spec.features.len();
    let rows = values.len() / (p + 1);
    let all = ndarray::Array2::from_shape_vec((rows, p + 1), values)
        .map_err(|e| EngineError::Execution(e.to_string()))?;
    Ok(kura_ml::TrainingSet {
        features: spec.features.clone(),
        x: all.select(ndarray::Axis(1), &(0..p).collect::<Vec<_>>()),
        y: all.column(p).to_owned(),
        owners: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use kura_api::UploadFormat;
    use kura_crypto::SecretIdentity;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The two-bank fraud contract's text, its keys filled in.
    fn fixture() -> String {
        kura_contract::example::fill(
            include_str!("../../../testdata/contracts/fraud-two-banks.toml"),
            |_| SecretIdentity::generate().public().to_text(),
        )
    }

    /// The two-bank fraud contract without its tree, its model edited by `edit`.
    fn contract(edit: impl Fn(String) -> String) -> Contract {
        let text = fixture();
        let tree = text.find("# A tree on the same rows").unwrap();
        let end = text.find("[output]").unwrap();
        let text = format!("{}{}", &text[..tree], &text[end..]);
        Contract::parse(edit(text).as_bytes()).unwrap()
    }

    const TRUTH: [f64; 4] = [-4.0, 0.002, 1.5, 1.0];

    /// Bank B's branch of the fixture's queries, and the same rows joined to bank A's: a query
    /// whose rows are no longer one person's.
    const BANK_B: &str = "SELECT amount, night, foreign, fraud FROM transactions_b";
    const JOINED_B: &str = "SELECT b.amount, b.night, a.foreign, b.fraud FROM transactions_b b \
                            JOIN transactions_a a ON a.account = b.account";

    /// Each bank's transactions as CSV, `accounts` accounts of `per` transactions each, fraud
    /// drawn from the logistic model [`TRUTH`]; and the same rows as numbers.
    fn banks(accounts: [usize; 2], per: usize) -> ([String; 2], Vec<[f64; 4]>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut plain = Vec::new();
        let csv = [0, 1].map(|b| {
            let mut text = String::from("account,amount,night,foreign,fraud\n");
            for a in 0..accounts[b] {
                for _ in 0..per {
                    let amount = 10.0 + (rng.r#gen::<f64>() * 199_000.0).round() / 100.0;
                    let night = rng.r#gen::<f64>() < 0.3;
                    let foreign = rng.r#gen::<f64>() < 0.2;
                    let z = TRUTH[0]
                        + TRUTH[1] * amount
                        + TRUTH[2] * f64::from(u8::from(night))
                        + TRUTH[3] * f64::from(u8::from(foreign));
                    let fraud = rng.r#gen::<f64>() < 1.0 / (1.0 + (-z).exp());
                    writeln!(text, "{b}-{a},{amount},{night},{foreign},{fraud}").unwrap();
                    plain.push([
                        amount,
                        f64::from(u8::from(night)),
                        f64::from(u8::from(foreign)),
                        f64::from(u8::from(fraud)),
                    ]);
                }
            }
            text
        });
        (csv, plain)
    }

    /// `csv` with `edit` applied to the fields of each row after the header.
    fn edited(csv: &str, edit: impl Fn(&mut Vec<String>)) -> String {
        let mut text = String::new();
        for (i, line) in csv.lines().enumerate() {
            let mut fields: Vec<String> = line.split(',').map(str::to_string).collect();
            if i > 0 {
                edit(&mut fields);
            }
            writeln!(text, "{}", fields.join(",")).unwrap();
        }
        text
    }

    fn tables(c: &Contract, csv: &[String; 2]) -> Tables {
        let mut t = Tables::new();
        for (name, text) in ["transactions_a", "transactions_b"].iter().zip(csv) {
            let dataset = c.dataset(name).unwrap();
            let loaded = crate::load::load(dataset, UploadFormat::Csv, text.as_bytes()).unwrap();
            t.insert(name.to_string(), loaded.into());
        }
        t
    }

    fn term(out: &Output, name: &str) -> f64 {
        out.rows
            .iter()
            .find(|r| r[0] == name)
            .and_then(|r| r[1].as_f64())
            .unwrap_or_else(|| panic!("no {name} in {:?}", out.rows))
    }

    /// Two banks' pooled transactions give back the coefficients that generated them, on the
    /// features' own scale, and the model's quality on held-out rows; nothing else.
    #[tokio::test]
    async fn a_model_over_two_banks_recovers_what_generated_the_data() {
        let c = contract(|t| t);
        crate::check_analyses(&c).await.unwrap();
        let (csv, _) = banks([500, 500], 30);
        let out = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        assert_eq!(out.columns, COLUMNS);
        let terms: Vec<&str> = out.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(
            terms,
            [
                "intercept",
                "amount",
                "night",
                "foreign",
                "holdout_accuracy",
                "holdout_auc",
                "holdout_log_loss"
            ]
        );
        assert_eq!(out.datasets, ["transactions_a", "transactions_b"]);
        // l2 = 1 on standardised features barely moves 30,000 rows' fit.
        for ((name, truth), tolerance) in ["intercept", "amount", "night", "foreign"]
            .iter()
            .zip(TRUTH)
            .zip([0.3, 0.0003, 0.25, 0.25])
        {
            let got = term(&out, name);
            assert!(
                (got - truth).abs() <= tolerance,
                "{name}: {got} against {truth}"
            );
        }
        assert!(term(&out, "holdout_auc") > 0.75);
    }

    /// Without a holdout the model is the one the same library fits on the same plaintext
    /// outside any enclave: what the engine reads and hands over changes nothing.
    #[tokio::test]
    async fn the_model_is_the_reference_fit_on_the_same_plaintext() {
        let c = contract(|t| t.replace("holdout = 0.2", "holdout = 0.0"));
        let (csv, plain) = banks([100, 80], 10);
        let out = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        let set = kura_ml::TrainingSet {
            features: vec!["amount".into(), "night".into(), "foreign".into()],
            x: ndarray::Array2::from_shape_fn((plain.len(), 3), |(i, j)| plain[i][j]),
            y: plain.iter().map(|r| r[3]).collect(),
            owners: Default::default(),
        };
        let spec = c.analyses[0].model.as_ref().unwrap();
        let reference = kura_ml::train(&set, &settings(spec, &c).unwrap()).unwrap();
        let mut want = vec![("intercept".to_string(), reference.intercept)];
        want.extend(reference.coefficients);
        for (name, w) in want {
            let got = term(&out, &name);
            assert!(
                (got - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{name}: {got} against the reference {w}"
            );
        }
        assert_eq!(out.rows.len(), 4, "nothing held out, nothing measured");
    }

    /// Rows from fewer than `min_group_size` people of one bank are refused before any fit,
    /// and the refusal says which rule, not how many.
    #[tokio::test]
    async fn a_training_set_of_too_few_people_is_refused() {
        let c = contract(|t| t);
        let (csv, _) = banks([200, 9], 20);
        let refused = train(&c, &c.analyses[0], &tables(&c, &csv))
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("training-set"), "{refused}");
        assert!(refused.contains("fewer than 10 people"), "{refused}");
    }

    /// The training set's people are counted on the rows the fit uses: bank B has 200
    /// accounts, but fills the amount for 3 of them only, and rows with a missing feature are
    /// not fitted; the count (3, under 10) refuses the model.
    #[tokio::test]
    async fn people_are_counted_on_the_rows_fitted() {
        let c = contract(|t| t);
        let (mut csv, _) = banks([200, 200], 5);
        csv[1] = edited(&csv[1], |fields| {
            let account: usize = fields[0][2..].parse().unwrap();
            if account >= 3 {
                fields[1] = String::new();
            }
        });
        let refused = train(&c, &c.analyses[0], &tables(&c, &csv))
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("fewer than 10 people"), "{refused}");
        // With every amount present, the same banks give a model.
        let (full, _) = banks([200, 200], 5);
        train(&c, &c.analyses[0], &tables(&c, &full)).await.unwrap();
    }

    /// The refusal of a fit that would rest on too few people: one text whatever failed.
    fn thin() -> &'static str {
        "refused by rule training-set: the model would rest on fewer than 10 people of some dataset"
    }

    /// The fixture's model with no rows held out, so that every row is fitted.
    fn all_fitted(t: String) -> String {
        t.replace("holdout = 0.2", "holdout = 0.0")
    }

    /// A coefficient must rest on many people: bank B's transactions are foreign for one
    /// account only, so the coefficient of `foreign` would be that account's fraud rate against
    /// the others'; refused. Spread over many accounts, it is fitted.
    #[tokio::test]
    async fn a_category_held_by_one_person_is_refused() {
        let c = contract(all_fitted);
        let (mut csv, _) = banks([200, 200], 5);
        csv[1] = edited(&csv[1], |fields| {
            fields[3] = (fields[0] == "1-7").to_string();
        });
        let refused = train(&c, &c.analyses[0], &tables(&c, &csv))
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.starts_with(thin()), "{refused}");
        assert!(!refused.contains("1-7"), "{refused}");
        // Foreign for the first twenty accounts of bank B: enough people on each side, and no
        // one weighs more than a tenth of B's part of the fit.
        let (mut csv, _) = banks([200, 200], 5);
        csv[1] = edited(&csv[1], |fields| {
            let account: usize = fields[0][2..].parse().unwrap();
            fields[3] = (account < 20).to_string();
        });
        train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
    }

    /// One account's outlying amount would carry the fit through its own rows (their leverage
    /// near 1, against a bound of 1/10): refused, without a value or an account.
    #[tokio::test]
    async fn an_outlying_person_is_refused() {
        let c = contract(all_fitted);
        let (mut csv, _) = banks([200, 200], 5);
        csv[1] = edited(&csv[1], |fields| {
            if fields[0] == "1-7" {
                fields[1] = "98765432.1".into();
            }
        });
        let refused = train(&c, &c.analyses[0], &tables(&c, &csv))
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.starts_with(thin()), "{refused}");
        assert!(
            !refused.contains("1-7") && !refused.contains("98765"),
            "{refused}"
        );
    }

    /// The bound on a row's weight holds per person: bank A joins rows of its own to bank B's
    /// accounts, marking eleven of them `night` and `foreign` and one more, P, `foreign` only,
    /// with eleven rows of A's for P. Each feature has enough people on both sides, and each of
    /// P's 55 joined rows weighs about 1/55; but P's rows together are a cell of their own that
    /// the fit passes through (`foreign`'s coefficient would be P's fraud rate against the
    /// eleven's). Refused, per person.
    #[tokio::test]
    async fn one_persons_many_rows_weigh_as_one_person() {
        let join = "SELECT b.amount, a.night, a.foreign, b.fraud FROM transactions_b b \
                    JOIN transactions_a a ON a.account = b.account";
        let c = contract(|t| {
            all_fitted(t).replacen(
                "SELECT amount, night, foreign, fraud FROM transactions_a\nUNION ALL\n\
                 SELECT amount, night, foreign, fraud FROM transactions_b",
                join,
                1,
            )
        });
        assert!(c.analyses[0].sql.contains("JOIN"), "{}", c.analyses[0].sql);
        let (csv, _) = banks([1, 200], 5);
        let mut attacker = String::from("account,amount,night,foreign,fraud\n");
        for a in 0..200 {
            let (night, foreign, copies) = match a {
                0..=10 => (true, true, 1),
                11 => (false, true, 11),
                _ => (false, false, 1),
            };
            for _ in 0..copies {
                writeln!(attacker, "1-{a},1.0,{night},{foreign},false").unwrap();
            }
        }
        let refused = train(&c, &c.analyses[0], &tables(&c, &[attacker, csv[1].clone()]))
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.starts_with(thin()), "{refused}");
        assert!(!refused.contains("1-11"), "{refused}");
    }

    /// Generated: bank B marks `m` of its 200 accounts foreign (and the rest not). With fewer
    /// than 10 people on a side the model is refused; with 15 or more on each, it is fitted
    /// (in between, each person of the smaller side weighs about a tenth of B's part of the
    /// fit, and the leverage bound decides).
    #[test]
    fn a_feature_is_fitted_only_when_each_side_holds_enough_people() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let c = contract(all_fitted);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut runner = TestRunner::new(Config {
            cases: 16,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&prop_oneof![1usize..30, 170usize..200, 1usize..200], |m| {
                let (mut csv, _) = banks([200, 200], 5);
                csv[1] = edited(&csv[1], |fields| {
                    let account: usize = fields[0][2..].parse().unwrap();
                    fields[3] = (account < m).to_string();
                });
                let fitted = runtime
                    .block_on(train(&c, &c.analyses[0], &tables(&c, &csv)))
                    .map_err(|e| e.to_string());
                let smaller = m.min(200 - m);
                if smaller < 10 {
                    proptest::prop_assert!(fitted.is_err(), "{} foreign: fitted", m);
                } else if smaller >= 15 {
                    proptest::prop_assert!(fitted.is_ok(), "{} foreign: {:?}", m, fitted.err());
                }
                Ok(())
            })
            .unwrap();
    }

    /// The fraud contract's model as a linear model of the amount on `features` (SQL
    /// expressions with their names), over `bank_a` and `bank_b` (each a `SELECT` list for its
    /// branch), all rows fitted.
    fn linear_on(select_a: &str, select_b: &str, features: &[&str]) -> Contract {
        let names: Vec<String> = features.iter().map(|f| format!("{f:?}")).collect();
        contract(|t| {
            t.replace(
                "SELECT amount, night, foreign, fraud FROM transactions_a\nUNION ALL\n\
                 SELECT amount, night, foreign, fraud FROM transactions_b",
                &format!(
                    "SELECT {select_a} FROM transactions_a\nUNION ALL\nSELECT {select_b} FROM \
                     transactions_b"
                ),
            )
            .replace(
                "family = \"logistic\"\nfeatures = [\"amount\", \"night\", \"foreign\"]\n\
                 label = \"fraud\"\nholdout = 0.2\nl2 = 1.0",
                &format!(
                    "family = \"linear\"\nfeatures = [{}]\nlabel = \"amount\"\nholdout = 0.0",
                    names.join(", ")
                ),
            )
        })
    }

    /// A bank cannot pad another bank's person's cell with rows of its own. Bank A's account
    /// 0-7 is the only one of A at night and abroad, which the query codes as 2 against 1 (not
    /// 0 against not 0); bank B puts 100 accounts of amount 0 at 2. Pooled, 0-7 weighs a
    /// hundredth of the fit, but B knows its own rows, and the cell's mean would give 0-7's
    /// amounts: refused, as 0-7 is all of A's part of that cell. Without 0-7 there, fitted.
    #[tokio::test]
    async fn another_banks_rows_do_not_pad_a_persons_cell() {
        let c = linear_on(
            "CASE WHEN night AND foreign THEN 2.0 ELSE 1.0 END AS f, amount",
            "2.0 AS f, amount",
            &["f"],
        );
        crate::check_analyses(&c).await.unwrap();
        let (csv, _) = banks([200, 100], 5);
        let alone = |victim: bool| {
            let mut csv = csv.clone();
            csv[0] = edited(&csv[0], |fields| {
                let planted = victim && fields[0] == "0-7";
                fields[2] = planted.to_string();
                fields[3] = planted.to_string();
            });
            csv[1] = edited(&csv[1], |fields| fields[1] = "0".into());
            csv
        };
        let refused = train(&c, &c.analyses[0], &tables(&c, &alone(true)))
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.starts_with(thin()), "{refused}");
        train(&c, &c.analyses[0], &tables(&c, &alone(false)))
            .await
            .unwrap();
    }

    /// A refusal does not tell no one from a few: an indicator of a combination no one has
    /// (a constant feature) and one that a single account has give the same words. So does a
    /// label that one account makes 1.
    #[tokio::test]
    async fn no_one_and_a_few_are_refused_alike() {
        let c = linear_on(
            "amount, CAST(night AS DOUBLE) AS n, CAST(night AND foreign AS DOUBLE) AS both",
            "amount, CAST(night AS DOUBLE) AS n, CAST(night AND foreign AS DOUBLE) AS both",
            &["n", "both"],
        );
        let (csv, _) = banks([200, 200], 5);
        let with = |holders: &'static [&'static str]| {
            let mut csv = csv.clone();
            for text in &mut csv {
                *text = edited(text, |fields| {
                    let held = holders.contains(&fields[0].as_str());
                    fields[3] = (held && fields[2] == "true").to_string();
                    if held {
                        fields[2] = "true".into();
                    }
                });
            }
            csv
        };
        let mut said = Vec::new();
        for holders in [&[][..], &["1-7"][..], &["0-3", "0-4"][..]] {
            let refused = train(&c, &c.analyses[0], &tables(&c, &with(holders)))
                .await
                .unwrap_err()
                .to_string();
            said.push(refused);
        }
        assert!(said.iter().all(|s| *s == said[0]), "{said:#?}");
        assert!(said[0].starts_with(thin()), "{}", said[0]);

        // The label: fraud that one account of B has, and only it.
        let c = contract(all_fitted);
        let (mut csv, _) = banks([200, 200], 5);
        for (b, text) in csv.iter_mut().enumerate() {
            *text = edited(text, |fields| {
                fields[4] = (b == 1 && fields[0] == "1-7").to_string();
            });
        }
        let refused = train(&c, &c.analyses[0], &tables(&c, &csv))
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.starts_with(thin()), "{refused}");
    }

    /// Rows whose person is missing are nobody's and are not fitted: they cannot make up a
    /// count. Bank B's twelve rows with no account, the only ones of B abroad, leave the model
    /// exactly as it is without them.
    #[tokio::test]
    async fn rows_of_no_one_are_not_fitted() {
        let c = contract(all_fitted);
        let (mut csv, _) = banks([200, 200], 5);
        csv[1] = edited(&csv[1], |fields| fields[3] = "false".into());
        let without = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        for i in 0..12 {
            writeln!(csv[1], ",{}.5,false,true,true", 100 + i).unwrap();
        }
        let with = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        assert_eq!(with.rows, without.rows);
    }

    /// Under DP nothing read is refused: a label other than 0 or 1, or a feature that is not a
    /// finite number (a float division by zero), held by one account, gives a model as its
    /// absence does. A refusal would tell, without noise, that someone has it.
    #[tokio::test]
    async fn private_models_refuse_nothing_they_read() {
        let tree = |sql: &str| {
            tree_contract(|t| {
                t.replace(
                    "kind = \"model\"\n",
                    "kind = \"model\"\ndp = true\nepsilon = 1\n",
                )
                .replace("holdout = 0.2", "holdout = 0.0")
                .replace(
                    "SELECT amount, night, foreign, fraud FROM transactions_a\nUNION ALL\n\
                     SELECT amount, night, foreign, fraud FROM transactions_b",
                    sql,
                )
                .replace(
                    "[output]",
                    "[privacy.dp]\nepsilon = 10.0\nquery_epsilon = 1.0\n\n[output]",
                )
            })
        };
        for sql in [
            "SELECT amount, night, foreign, CASE WHEN night AND foreign THEN 2.0 ELSE 0.0 END \
             AS fraud FROM transactions_b",
            "SELECT 1.0 / CASE WHEN night AND foreign THEN 0.0 ELSE 1.0 END AS amount, night, \
             foreign, fraud FROM transactions_b",
        ] {
            let c = tree(sql);
            assert!(c.analyses[0].sql.contains("CASE"), "{}", c.analyses[0].sql);
            crate::check_analyses(&c).await.unwrap();
            for holder in [None, Some("1-7")] {
                let (mut csv, _) = banks([100, 100], 3);
                csv[1] = edited(&csv[1], |fields| {
                    let held = Some(fields[0].as_str()) == holder;
                    fields[2] = held.to_string();
                    fields[3] = held.to_string();
                });
                train(&c, &c.analyses[0], &tables(&c, &csv))
                    .await
                    .unwrap_or_else(|e| panic!("{sql} with {holder:?}: {e}"));
            }
        }
    }

    /// Generated attacks around a planted person. Bank B's account `1-0` has an amount no one
    /// else has (1,000,000; the others spend at most 2,000). The generator chooses which
    /// accounts of each bank are at night and which foreign (runs of any length, often none
    /// or one, the planted person in them or not) and which indicators a linear model of the
    /// amount learns from (night, foreign, both, night but not foreign, fraud): one-hot
    /// categories of one person, sparse combinations, a bank padding another's person, or many
    /// people. Whatever it picks, a model that is released never gives the planted amount
    /// back: its prediction for each of the planted person's rows stays far from it, as each
    /// person weighs at most a tenth of the fit. `KURA_MODEL_HUNT_CASES` runs more cases than
    /// the default 64; `KURA_HUNT_SEED` replays a seed.
    #[test]
    fn a_planted_persons_value_never_comes_back_from_a_model() {
        use proptest::prelude::*;
        const FEATURES: [(&str, &str); 5] = [
            ("f_night", "CAST(night AS DOUBLE)"),
            ("f_foreign", "CAST(foreign AS DOUBLE)"),
            ("f_both", "CAST(night AND foreign AS DOUBLE)"),
            ("f_night_only", "CAST(night AND NOT foreign AS DOUBLE)"),
            ("f_fraud", "CAST(fraud AS DOUBLE)"),
        ];
        const PLANTED: f64 = 1_000_000.0;
        const ACCOUNTS: [usize; 2] = [200, 40];
        let cases = std::env::var("KURA_MODEL_HUNT_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(64);
        // A run of a bank's accounts: its length (often none or one) and where it starts
        // (often at the planted person, account 0).
        let run = |accounts: usize| {
            (
                prop_oneof![Just(0usize), Just(1), 2..=12usize, 0..=accounts],
                prop_oneof![Just(0usize), 0..accounts],
            )
        };
        let strategy = (
            [run(ACCOUNTS[0]), run(ACCOUNTS[1])],
            [run(ACCOUNTS[0]), run(ACCOUNTS[1])],
            1u8..32,
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (base, _) = banks(ACCOUNTS, 5);
        let released = std::cell::Cell::new(0);
        let mut runner = crate::hunt::runner(cases);
        runner
            .run(&strategy, |(nights, foreigns, chosen)| {
                let picked: Vec<_> = FEATURES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| chosen & (1 << i) != 0)
                    .map(|(_, f)| *f)
                    .collect();
                let select = |table: &str| {
                    let exprs: Vec<String> =
                        picked.iter().map(|(n, e)| format!("{e} AS {n}")).collect();
                    format!("SELECT {}, amount FROM {table}", exprs.join(", "))
                };
                let names: Vec<String> = picked.iter().map(|(n, _)| format!("{n:?}")).collect();
                let c = contract(|t| {
                    t.replace(
                        "SELECT amount, night, foreign, fraud FROM transactions_a\nUNION ALL\n\
                             SELECT amount, night, foreign, fraud FROM transactions_b",
                        &format!(
                            "{}\nUNION ALL\n{}",
                            select("transactions_a"),
                            select("transactions_b")
                        ),
                    )
                    .replace(
                        "family = \"logistic\"\nfeatures = [\"amount\", \"night\", \"foreign\"]\n\
                             label = \"fraud\"\nholdout = 0.2\nl2 = 1.0",
                        &format!(
                            "family = \"linear\"\nfeatures = [{}]\nlabel = \"amount\"\n\
                                 holdout = 0.0",
                            names.join(", ")
                        ),
                    )
                });
                let mut csv = base.clone();
                let mut planted_rows = Vec::new();
                for (b, text) in csv.iter_mut().enumerate() {
                    let n = ACCOUNTS[b];
                    let ((night_len, night_at), (foreign_len, foreign_at)) =
                        (nights[b], foreigns[b]);
                    *text = edited(text, |fields| {
                        let account: usize = fields[0][2..].parse().unwrap();
                        fields[2] = ((account + n - night_at) % n < night_len).to_string();
                        fields[3] = ((account + n - foreign_at) % n < foreign_len).to_string();
                        if b == 1 && account == 0 {
                            fields[1] = PLANTED.to_string();
                        }
                    });
                }
                for line in csv[1].lines().skip(1) {
                    let f: Vec<&str> = line.split(',').collect();
                    if f[0] == "1-0" {
                        let (night, foreign, fraud) =
                            (f[2] == "true", f[3] == "true", f[4] == "true");
                        let all = [night, foreign, night && foreign, night && !foreign, fraud];
                        planted_rows.push(
                            (0..5)
                                .filter(|i| chosen & (1 << i) != 0)
                                .map(|i| f64::from(u8::from(all[i])))
                                .collect::<Vec<f64>>(),
                        );
                    }
                }
                let Ok(out) = runtime.block_on(train(&c, &c.analyses[0], &tables(&c, &csv))) else {
                    return Ok(());
                };
                released.set(released.get() + 1);
                let intercept = term(&out, "intercept");
                for row in &planted_rows {
                    let predicted = intercept
                        + picked
                            .iter()
                            .zip(row)
                            .map(|((n, _), x)| term(&out, n) * x)
                            .sum::<f64>();
                    proptest::prop_assert!(
                        (predicted - PLANTED).abs() > PLANTED / 2.0,
                        "the planted amount came back: {predicted} from {:?}",
                        out.rows
                    );
                }
                Ok(())
            })
            .unwrap();
        // The generator is not refused into passing: some of its models are released.
        assert!(released.get() > 0, "no model was released in {cases} cases");
    }

    /// The rows a model learns from are held to the same whole-plan rules as a query's: a
    /// feature computed from a measure in a derived table, or rows picked by their identifiers
    /// (in `WHERE` or a join's condition), is refused before anyone signs, whatever the
    /// threshold would count.
    #[tokio::test]
    async fn model_rows_follow_the_whole_plan_rules() {
        for (edit, rule) in [
            (
                "SELECT CASE WHEN night THEN amount ELSE 0 END AS amount, night, foreign, \
                 fraud FROM transactions_a",
                "rule measure-use",
            ),
            (
                "SELECT amount, night, foreign, fraud FROM transactions_a WHERE account IN \
                 ('0-1', '0-2', '0-3')",
                "rule identifier-use",
            ),
            (
                "SELECT a.amount, a.night, a.foreign, a.fraud FROM transactions_a a LEFT JOIN \
                 transactions_b b ON a.account = b.account AND a.account IN ('0-1', '0-2')",
                "rule identifier-use",
            ),
        ] {
            let c = contract(|t| {
                t.replace(
                    "SELECT amount, night, foreign, fraud FROM transactions_a",
                    edit,
                )
            });
            let refused = crate::check_analyses(&c).await.unwrap_err().to_string();
            assert!(refused.contains(rule), "{edit}: {refused}");
        }
    }

    /// A model whose features are not numbers, or are not in the query's output, is refused
    /// before anyone signs; so are models the contract cannot describe.
    #[tokio::test]
    async fn models_are_checked_before_signing() {
        let c = contract(|t| t.replace("SELECT amount,", "SELECT account AS amount,"));
        let refused = crate::check_analyses(&c).await.unwrap_err().to_string();
        assert!(refused.contains("not a number or a boolean"), "{refused}");
        let c = contract(|t| {
            t.replace(
                "SELECT amount, night, foreign, fraud FROM transactions_b",
                "SELECT amount, account = 'b-7' AS night, foreign, fraud FROM transactions_b",
            )
        });
        let refused = crate::check_analyses(&c).await.unwrap_err().to_string();
        assert!(
            refused.contains("computed from identifier column transactions_b.account"),
            "{refused}"
        );
        let c = contract(|t| t.replace("label = \"fraud\"", "label = \"chargeback\""));
        let refused = crate::check_analyses(&c).await.unwrap_err().to_string();
        assert!(
            refused.contains("no output column \"chargeback\""),
            "{refused}"
        );
        let invalid = |edit: &dyn Fn(String) -> String| {
            Contract::parse(edit(fixture()).as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(invalid(&|t| t.replace("kind = \"model\"\n", "")).contains("applies only"));
        assert!(
            invalid(&|t| t.replace("features = [\"amount\",", "features = [\"fraud\","))
                .contains("cannot also be a feature")
        );
        assert!(invalid(&|t| t.replace("holdout = 0.2", "holdout = 0.9")).contains("holdout"));
        assert!(
            invalid(&|t| t.replace("family = \"logistic\"", "family = \"knn\"")).contains("knn")
        );
        assert!(
            invalid(&|t| t.replace(
                "[output]",
                "[privacy.dp]\nepsilon = 1.0\nquery_epsilon = 0.5\n\n[output]"
            ))
            .contains("must be trained with dp = true")
        );
    }

    /// The fraud contract with its model trained under differential privacy at `epsilon`
    /// (of a total of 1000), each account giving at most `k` rows.
    fn private(epsilon: f64, k: u32) -> Contract {
        contract(|t| private_text(t, epsilon, k))
    }

    fn private_text(t: String, epsilon: f64, k: u32) -> String {
        {
            t.replace(
                "kind = \"model\"\n",
                &format!("kind = \"model\"\ndp = true\nepsilon = {epsilon}\n"),
            )
            .replace(
                "holdout = 0.2",
                "holdout = 0.0\nbounds = { amount = [0.0, 2000.0], night = [0.0, 1.0], foreign = [0.0, 1.0] }",
            )
            .replace(
                "[output]",
                &format!(
                    "[privacy.dp]\nepsilon = 1000.0\nquery_epsilon = 1.0\nmax_contributions = {k}\n\n[output]"
                ),
            )
        }
    }

    /// A private model spends exactly its ε (and reports it with the noise on each term);
    /// with much ε its noise is small and it is close to what generated the data, with little
    /// ε the noise reported is proportionally larger.
    #[tokio::test]
    async fn a_private_model_spends_its_epsilon_and_reports_its_noise() {
        let (csv, _) = banks([600, 600], 20);
        // The DP bound is 20 rows per account; the banks declare at most 10, which is the k
        // the run uses.
        let c = private(1000.0, 20);
        crate::check_analyses(&c).await.unwrap();
        assert_eq!(private::spend(&c, &c.analyses[0]).unwrap().epsilon, 1000.0);
        let out = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        let dp = out.dp.as_ref().expect("a DP report");
        assert_eq!(
            (dp.epsilon, dp.delta, dp.max_contributions),
            (1000.0, 0.0, 10)
        );
        let terms: Vec<&str> = out.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(
            terms,
            ["intercept", "amount", "night", "foreign"],
            "no measures"
        );
        assert_eq!(dp.noise_sd.len(), 4);
        // The penalty (l2 = 1 on 24,000 rows) and the clamp barely move the fit; the noise at
        // ε = 1000 is far smaller than these tolerances.
        for ((name, truth), tolerance) in ["intercept", "amount", "night", "foreign"]
            .iter()
            .zip(TRUTH)
            .zip([0.5, 0.0005, 0.3, 0.3])
        {
            let got = term(&out, name);
            assert!(
                (got - truth).abs() <= tolerance,
                "{name}: {got} against {truth}"
            );
            assert!(dp.noise_sd[*name] < tolerance / 3.0, "{name}: {dp:?}");
        }
        let csv = &csv;
        let run = |c: Contract| async move {
            train(&c, &c.analyses[0], &tables(&c, csv))
                .await
                .unwrap()
                .dp
                .unwrap()
        };
        let small = run(private(5.0, 20)).await;
        for (name, sd) in &dp.noise_sd {
            let ratio = small.noise_sd[name] / sd;
            assert!((ratio - 200.0).abs() < 1e-6, "{name}: {ratio}");
        }
        // Ten rows per account count ten times in the noise of one.
        let one = run(private(1000.0, 1)).await;
        assert_eq!(one.max_contributions, 1);
        let ratio = dp.noise_sd["amount"] / one.noise_sd["amount"];
        assert!((ratio - 10.0).abs() < 1e-6, "{ratio}");
    }

    /// The fraud contract's model as a private linear model of the amount on `night`,
    /// `foreign` and `fraud`, at `epsilon`.
    fn private_linear(epsilon: f64) -> Contract {
        contract(|t| {
            private_text(t, epsilon, 10)
            .replace("family = \"logistic\"", "family = \"linear\"")
            .replace(
                "features = [\"amount\", \"night\", \"foreign\"]\nlabel = \"fraud\"",
                "features = [\"night\", \"foreign\", \"fraud\"]\nlabel = \"amount\"",
            )
            .replace("l2 = 1.0\n", "")
            .replace(
                "bounds = { amount = [0.0, 2000.0], night = [0.0, 1.0], foreign = [0.0, 1.0] }",
                "bounds = { night = [0.0, 1.0], foreign = [0.0, 1.0], fraud = [0.0, 1.0], amount = [0.0, 2000.0] }",
            )
        })
    }

    /// A private linear model comes from noisy sums: with much ε it is the least-squares fit
    /// of the same rows (the rows kept per account are drawn at random, so to sampling error);
    /// it spends its ε, reports the noise on each term, growing as ε shrinks, and measures
    /// nothing.
    #[tokio::test]
    async fn a_private_linear_model_is_the_least_squares_fit_under_noise() {
        let (csv, plain) = banks([600, 600], 20);
        let c = private_linear(1000.0);
        crate::check_analyses(&c).await.unwrap();
        let out = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        let terms: Vec<&str> = out.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(terms, ["intercept", "night", "foreign", "fraud"]);
        let dp = out.dp.as_ref().unwrap();
        assert_eq!((dp.epsilon, dp.max_contributions), (1000.0, 10));
        let set = kura_ml::TrainingSet {
            features: vec!["night".into(), "foreign".into(), "fraud".into()],
            x: ndarray::Array2::from_shape_fn((plain.len(), 3), |(i, j)| plain[i][j + 1]),
            y: plain.iter().map(|r| r[0]).collect(),
            owners: Default::default(),
        };
        let exact = kura_ml::train(
            &set,
            &kura_ml::Settings {
                family: kura_ml::Family::Linear,
                holdout: 0.0,
                l2: 1.0,
                max_iterations: 100,
                max_leverage: None,
                min_people: None,
            },
        )
        .unwrap();
        assert!(
            (term(&out, "intercept") - exact.intercept).abs() < 25.0,
            "{out:?} {exact:?}"
        );
        for (name, value) in &exact.coefficients {
            assert!(
                (term(&out, name) - value).abs() < 60.0,
                "{name}: {out:?} {exact:?}"
            );
        }
        assert_eq!(dp.noise_sd.len(), 4);
        assert!(dp.noise_sd["fraud"] < 5.0, "{dp:?}");
        let c = private_linear(5.0);
        let small = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        let ratio = small.dp.unwrap().noise_sd["fraud"] / dp.noise_sd["fraud"];
        assert!((50.0..400.0).contains(&ratio), "{ratio}");
    }

    /// A private tree is grown from noisy counts at the contract's cut points only: with much
    /// ε it finds what generated the data, reports the noise on each leaf's rate and measures
    /// nothing; with very little, the noise hides every split and it is one leaf, not a
    /// refusal.
    #[tokio::test]
    async fn a_private_tree_grows_from_noisy_counts() {
        let tree = |epsilon: f64| {
            tree_contract(|t| {
                t.replace(
                    "kind = \"model\"\n",
                    &format!("kind = \"model\"\ndp = true\nepsilon = {epsilon}\n"),
                )
                .replace("holdout = 0.2", "holdout = 0.0")
                .replace(
                    "[output]",
                    "[privacy.dp]\nepsilon = 1000.0\nquery_epsilon = 1.0\nmax_contributions = 10\n\n[output]",
                )
            })
        };
        let (csv, _) = banks([600, 600], 20);
        let c = tree(1000.0);
        crate::check_analyses(&c).await.unwrap();
        let out = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        let dp = out.dp.as_ref().unwrap();
        assert_eq!((dp.epsilon, dp.max_contributions), (1000.0, 10));
        assert!(out.rows.len() >= 3, "{:?}", out.rows);
        assert!(
            out.rows
                .iter()
                .all(|r| !r[0].as_str().unwrap().starts_with("holdout"))
        );
        assert_eq!(dp.noise_sd.len(), out.rows.len(), "{dp:?}");
        let onnx = out.onnx.as_ref().unwrap();
        let scorer = kura_ml::onnx::Scorer::load(onnx, 3).unwrap();
        let p = |row: [f64; 3]| scorer.score(&row).unwrap()[0];
        assert!(
            p([1800.0, 1.0, 1.0]) > p([50.0, 0.0, 0.0]) + 0.3,
            "{:?}",
            out.rows
        );
        for (leaf, _) in out.rows.iter().map(|r| (r[0].as_str().unwrap(), ())) {
            for number in leaf.split(' ').filter_map(|w| w.parse::<f64>().ok()) {
                assert!(
                    [100.0, 250.0, 500.0, 1000.0, 1500.0, 0.5].contains(&number),
                    "{leaf}"
                );
            }
        }
        let c = tree(0.001);
        let out = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        assert_eq!(out.rows.len(), 1, "{:?}", out.rows);
    }

    /// What private training cannot bound is refused before anyone signs.
    #[tokio::test]
    async fn private_models_are_checked_before_signing() {
        let join = private(1.0, 1);
        let text = |c: &Contract| String::from_utf8(c.bytes().to_vec()).unwrap();
        let joined = Contract::parse(text(&join).replace(BANK_B, JOINED_B).as_bytes()).unwrap();
        let refused = crate::check_analyses(&joined)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("exactly one dataset"), "{refused}");
        let invalid = |from: &str, to: &str| {
            let t = text(&join);
            assert!(t.contains(from), "{from}");
            Contract::parse(t.replace(from, to).as_bytes())
                .unwrap_err()
                .to_string()
        };
        // A linear model's label is bounded too: it scales the noise.
        assert!(
            invalid("family = \"logistic\"", "family = \"linear\"")
                .contains("needs bounds for every feature and its label (\"fraud\" has none)")
        );
        assert!(
            invalid(
                "night = [0.0, 1.0], foreign",
                "night = [0.0, 1.0], fraud = [0.0, 1.0], foreign"
            )
            .contains("\"fraud\", which is not a feature")
        );
        assert!(invalid("holdout = 0.0", "holdout = 0.2").contains("holdout = 0"));
        assert!(invalid("l2 = 1.0", "l2 = 0.0").contains("l2 > 0"));
        assert!(invalid(", foreign = [0.0, 1.0] }", " }").contains("\"foreign\" has none"));
        assert!(invalid("night = [0.0, 1.0]", "night = [1.0, 0.0]").contains("low < high"));
        let exact = text(&join).replace("dp = true\nepsilon = 1\n", "").replace(
            "\nbounds = { amount = [0.0, 2000.0], night = [0.0, 1.0], foreign = [0.0, 1.0] }",
            "",
        );
        let refused = Contract::parse(exact.as_bytes()).unwrap_err().to_string();
        assert!(
            refused.contains("must be trained with dp = true"),
            "{refused}"
        );
    }

    /// The fraud contract with only its tree, edited by `edit`.
    fn tree_contract(edit: impl Fn(String) -> String) -> Contract {
        let text = fixture();
        let model = text.find("[[analyses]]").unwrap();
        let tree = text.find("# A tree on the same rows").unwrap();
        Contract::parse(edit(format!("{}{}", &text[..model], &text[tree..])).as_bytes()).unwrap()
    }

    /// The engine's tree is the one kura_ml grows on the same plaintext outside any enclave,
    /// leaf for leaf and byte for byte in its ONNX file; it splits at the contract's cut points
    /// only, and it separates what generated the data.
    #[tokio::test]
    async fn a_tree_is_the_reference_tree_on_the_same_plaintext() {
        let c = tree_contract(|t| t.replace("holdout = 0.2", "holdout = 0.0"));
        crate::check_analyses(&c).await.unwrap();
        let per = 10;
        let (csv, plain) = banks([300, 200], per);
        let out = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        assert_eq!(out.columns, COLUMNS);

        let set = kura_ml::TrainingSet {
            features: vec!["amount".into(), "night".into(), "foreign".into()],
            x: ndarray::Array2::from_shape_fn((plain.len(), 3), |(i, j)| plain[i][j]),
            y: plain.iter().map(|r| r[3]).collect(),
            owners: Default::default(),
        };
        let people: Vec<(u32, u32)> = (0..plain.len())
            .map(|i| {
                let bank = u32::from(i >= 300 * per);
                (bank, (i / per) as u32)
            })
            .collect();
        let spec = c.analyses[0].model.as_ref().unwrap();
        let cuts: Vec<Vec<f64>> = spec.features.iter().map(|f| spec.cuts[f].clone()).collect();
        let settings = kura_ml::tree::TreeSettings {
            max_depth: 3,
            min_units: 10,
            holdout: 0.0,
        };
        let reference = kura_ml::tree::train_tree(&set, &people, &cuts, &settings).unwrap();
        let leaves: Vec<(String, f64)> = out
            .rows
            .iter()
            .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_f64().unwrap()))
            .collect();
        assert_eq!(leaves, reference.leaves());
        assert!(leaves.len() >= 3, "{leaves:?}");
        assert_eq!(out.onnx, Some(kura_ml::onnx::export_tree(&reference)));
        for node in &reference.nodes {
            if let kura_ml::tree::Node::Split { feature, cut, .. } = node {
                assert!(cuts[*feature].contains(cut), "{cut}");
            }
        }
        // The planted log-odds rise with the amount and at night.
        let p = |row: [f64; 3]| reference.predict(&row);
        assert!(
            p([1800.0, 1.0, 1.0]) > p([50.0, 0.0, 0.0]) + 0.3,
            "{leaves:?}"
        );
    }

    /// A tree refused because its rows come from too few people of a dataset fetches the same
    /// parts of the stored files as one that trains: the counts after the one that refused,
    /// and the training rows, are read all the same ([`crate::read_unrun`]).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_tree_fetches_what_a_trained_one_fetches() {
        use std::sync::Arc;

        use crate::stored::recording::Recording;
        let contract = |k: u64| {
            tree_contract(|t| {
                t.replace("holdout = 0.2", "holdout = 0.0")
                    .replace("min_group_size = 10", &format!("min_group_size = {k}"))
            })
        };
        let (csv, _) = banks([300, 200], 10);
        let c = contract(10);
        let dir = tempfile::tempdir().unwrap();
        let mut at_rest = crate::stored::tests::at_rest(&c, &tables(&c, &csv), dir.path()).await;
        let recording = Arc::new(Recording::new(Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
        )));
        for table in at_rest.values_mut() {
            if let crate::Table::Stored(s) = table {
                s.store = recording.clone();
            }
        }
        let mut fetched = vec![];
        // 250 people of bank A clear k = 250; bank B's 200 do not.
        for k in [10, 250] {
            let c = contract(k);
            let out = train(&c, &c.analyses[0], &at_rest).await;
            assert_eq!(out.is_ok(), k == 10, "{k}: {:?}", out.err());
            fetched.push(recording.take());
        }
        assert!(!fetched[0].is_empty());
        assert_eq!(fetched[0], fetched[1]);
    }

    /// A tree needs one person per row and public cut points for every feature; both are
    /// checked before anyone signs, and under DP a tree holds no rows out.
    #[tokio::test]
    async fn trees_are_checked_before_signing() {
        let joined = tree_contract(|t| t.replace(BANK_B, JOINED_B));
        let refused = crate::check_analyses(&joined)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("exactly one dataset"), "{refused}");
        let invalid = |from: &str, to: &str| {
            let text = fixture();
            let tree = text.find("# A tree on the same rows").unwrap();
            let (head, tail) = text.split_at(tree);
            assert!(tail.contains(from), "{from}");
            Contract::parse(format!("{head}{}", tail.replacen(from, to, 1)).as_bytes())
                .unwrap_err()
                .to_string()
        };
        let cuts =
            "cuts = { amount = [100, 250, 500, 1000, 1500], night = [0.5], foreign = [0.5] }";
        for (to, says) in [
            (
                "cuts = { amount = [100, 250], night = [0.5] }",
                "\"foreign\" has none",
            ),
            (
                "cuts = { amount = [250, 100], night = [0.5], foreign = [0.5] }",
                "increasing order",
            ),
            (
                "cuts = { amount = [], night = [0.5], foreign = [0.5] }",
                "1 to 255 numbers",
            ),
            (
                "cuts = { amount = [1], night = [0.5], foreign = [0.5], fraud = [0.5] }",
                "not a feature",
            ),
        ] {
            let refused = invalid(cuts, to);
            assert!(refused.contains(says), "{to}: {refused}");
        }
        assert!(invalid("max_depth = 3", "max_depth = 9").contains("1 to 8"));
        assert!(invalid("max_depth = 3", "max_depth = 3\nl2 = 2.0").contains("l2 applies"));
        assert!(invalid("family = \"tree\"", "family = \"logistic\"").contains("only to family"));
        // Under DP a tree measures nothing on held-out rows, which would be exact.
        assert!(
            invalid("kind = \"model\"\n", "kind = \"model\"\ndp = true\n")
                .contains("needs holdout = 0")
        );
    }
}
