//! Model analyses: a model trained on the rows of the analysis's query, released as its
//! coefficients and its quality on held-out rows, never the rows.
//!
//! The query is fixed in the contract and signed by every party, like a list's. Before any
//! training, the rows must cover at least `min_group_size` distinct privacy units of every
//! dataset they come from: the engine asks the threshold rule itself, by counting the rows of
//! each `UNION ALL` branch (before its final projection) as a guarded `COUNT(*)`, and refuses
//! when a count would be suppressed. The fit is `kura_ml`'s (linfa), in this process: the
//! query's output rows are collected where counted aggregations run (on a cluster, its
//! executors), and only its features and label are kept.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
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
    if analysis.dp {
        return private::train(contract, analysis, spec, &ctx, plan, datasets).await;
    }
    let columns = numeric_columns(&plan, &learned(spec), "model")?;
    no_identifiers(contract, &plan, &learned(spec), RULE)?;
    covered(contract, &ctx, &plan).await?;

    let physical = ctx.state().create_physical_plan(&plan).await?;
    let batches = crate::collect_counted(physical, &ctx)
        .await
        .map_err(crate::error::runtime)?;
    let set = training_set(&batches, spec, &columns)?;
    let model = kura_ml::train(&set, &settings(spec)).map_err(|e| match e {
        kura_ml::MlError::Data(reason) => EngineError::Refused { rule: RULE, reason },
        // The solver's own words could carry values of the data.
        kura_ml::MlError::Fit(_) => EngineError::Runtime("the solver could not fit the model"),
    })?;
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
    numeric_columns(&plan, &learned(spec), "model")?;
    no_identifiers(contract, &plan, &learned(spec), RULE)?;
    if analysis.dp {
        private::spend(contract, analysis)?;
        private::with_units(contract, &plan)?;
        return Ok(());
    }
    for count in counts(&plan)? {
        crate::threshold::guard(count, contract, None)?;
    }
    Ok(())
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
    plan: &datafusion::logical_expr::LogicalPlan,
    names: &[String],
    rule: &'static str,
) -> Result<(), EngineError> {
    use datafusion::logical_expr::LogicalPlan;
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
    branch: &datafusion::logical_expr::LogicalPlan,
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

/// The branches of a top-level `UNION ALL`, or the plan itself.
pub(crate) fn branches(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> Vec<&datafusion::logical_expr::LogicalPlan> {
    match plan {
        datafusion::logical_expr::LogicalPlan::Union(union) => {
            union.inputs.iter().map(AsRef::as_ref).collect()
        }
        other => vec![other],
    }
}

/// Plans that count a model query's rows, one per branch of a top-level `UNION ALL`: each
/// branch's rows before its final projection (which would drop the privacy units the threshold
/// rule counts), under `COUNT(*)`.
fn counts(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> Result<Vec<datafusion::logical_expr::LogicalPlan>, EngineError> {
    use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
    branches(plan)
        .into_iter()
        .map(|branch| {
            let rows = match branch {
                LogicalPlan::Projection(p) => p.input.as_ref().clone(),
                other => other.clone(),
            };
            Ok(LogicalPlanBuilder::from(rows)
                .aggregate(
                    Vec::<datafusion::logical_expr::Expr>::new(),
                    vec![datafusion::functions_aggregate::count::count_all()],
                )?
                .build()?)
        })
        .collect()
}

pub mod private;

fn spec(analysis: &Analysis) -> Result<&ModelSpec, EngineError> {
    analysis
        .model
        .as_ref()
        .ok_or_else(|| EngineError::Sql(format!("analysis {:?} is not a model", analysis.name)))
}

fn settings(spec: &ModelSpec) -> kura_ml::Settings {
    kura_ml::Settings {
        family: match spec.family {
            ModelFamily::Linear => kura_ml::Family::Linear,
            ModelFamily::Logistic => kura_ml::Family::Logistic,
        },
        holdout: spec.holdout,
        l2: spec.l2,
        max_iterations: spec.max_iterations,
    }
}

pub(crate) fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// The positions of `names` among the query's output columns, which must be numbers or
/// booleans; `what` says whose columns they are in errors.
pub(crate) fn numeric_columns(
    plan: &datafusion::logical_expr::LogicalPlan,
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

/// The values of the columns at `columns` in each row as numbers, row after row (`None` for a
/// row where any of them is null).
pub(crate) fn numbers(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    columns: &[usize],
) -> Result<Vec<Option<Vec<f64>>>, EngineError> {
    let mut out = Vec::new();
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
            out.push(
                (!cast.iter().any(|a| a.is_null(row)))
                    .then(|| cast.iter().map(|a| a.value(row)).collect()),
            );
        }
    }
    Ok(out)
}

/// Refuses unless the query's rows cover at least `min_group_size` people of every dataset
/// they come from, as the threshold rule counts them ([`counts`]).
async fn covered(
    contract: &Contract,
    ctx: &datafusion::execution::context::SessionContext,
    plan: &datafusion::logical_expr::LogicalPlan,
) -> Result<(), EngineError> {
    for count in counts(plan)? {
        let guarded = crate::threshold::guard(count, contract, None)?;
        let counted =
            crate::execute(ctx, guarded, contract.output.min_group_size, false, None).await?;
        if counted.rows.is_empty() {
            return Err(EngineError::Refused {
                rule: RULE,
                reason: format!(
                    "the training rows come from fewer than {} people of some dataset",
                    contract.output.min_group_size
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
    let width = columns.len();
    let values: Vec<f64> = numbers(batches, columns)?
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    let rows = values.len() / width;
    let all = ndarray::Array2::from_shape_vec((rows, width), values)
        .map_err(|e| EngineError::Execution(e.to_string()))?;
    let p = spec.features.len();
    Ok(kura_ml::TrainingSet {
        features: spec.features.clone(),
        x: all.select(ndarray::Axis(1), &(0..p).collect::<Vec<_>>()),
        y: all.column(p).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use kura_api::UploadFormat;
    use kura_crypto::SecretIdentity;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The two-bank fraud contract, its model edited by `edit`.
    fn contract(edit: impl Fn(String) -> String) -> Contract {
        let text = kura_contract::example::fill(
            include_str!("../../../testdata/contracts/fraud-two-banks.toml"),
            |_| SecretIdentity::generate().public().to_text(),
        );
        Contract::parse(edit(text).as_bytes()).unwrap()
    }

    const TRUTH: [f64; 4] = [-4.0, 0.002, 1.5, 1.0];

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
        };
        let spec = c.analyses[0].model.as_ref().unwrap();
        let reference = kura_ml::train(&set, &settings(spec)).unwrap();
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
            let text = kura_contract::example::fill(
                include_str!("../../../testdata/contracts/fraud-two-banks.toml"),
                |_| SecretIdentity::generate().public().to_text(),
            );
            Contract::parse(edit(text).as_bytes())
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
        contract(|t| {
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
        })
    }

    /// A private model spends exactly its ε (and reports it with the noise on each term);
    /// with much ε its noise is small and it is close to what generated the data, with little
    /// ε the noise reported is proportionally larger.
    #[tokio::test]
    async fn a_private_model_spends_its_epsilon_and_reports_its_noise() {
        let (csv, _) = banks([600, 600], 20);
        let c = private(1000.0, 20);
        crate::check_analyses(&c).await.unwrap();
        assert_eq!(private::spend(&c, &c.analyses[0]).unwrap().epsilon, 1000.0);
        let out = train(&c, &c.analyses[0], &tables(&c, &csv)).await.unwrap();
        let dp = out.dp.as_ref().expect("a DP report");
        assert_eq!(
            (dp.epsilon, dp.delta, dp.max_contributions),
            (1000.0, 0.0, 20)
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
        // Twenty rows per account count twenty times in the noise of one.
        let one = run(private(1000.0, 1)).await;
        let ratio = dp.noise_sd["amount"] / one.noise_sd["amount"];
        assert!((ratio - 20.0).abs() < 1e-6, "{ratio}");
    }

    /// What private training cannot bound is refused before anyone signs.
    #[tokio::test]
    async fn private_models_are_checked_before_signing() {
        let join = private(1.0, 1);
        let text = |c: &Contract| String::from_utf8(c.bytes().to_vec()).unwrap();
        let joined = Contract::parse(
            text(&join)
                .replace(
                    "SELECT amount, night, foreign, fraud FROM transactions_b",
                    "SELECT b.amount, b.night, a.foreign, b.fraud FROM transactions_b b \
                     JOIN transactions_a a ON a.account = b.account",
                )
                .as_bytes(),
        )
        .unwrap();
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
        assert!(invalid("family = \"logistic\"", "family = \"linear\"").contains("only logistic"));
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
}
