//! Scoring analyses: a party's model (an ONNX file whose hash the contract pins) run on the
//! rows of the analysis's query, inside the enclave.
//!
//! - **Each row's score goes to the row's owner**: a receiver gets the rows of the datasets it
//!   provided (each `UNION ALL` branch reads one dataset), whatever unit values its other
//!   datasets hold. It gets the query's columns other than the features, and `score`.
//! - **The model's provider gets only the scores' distribution**: for each bucket of scores
//!   (and each value of `group_by`, if named), how many rows fell in it, released only where
//!   every dataset in the cell has no one or at least `min_group_size` people there, not
//!   counting the provider's own datasets. Withheld cells are not counted for it: its model
//!   chooses the cells, and a count of small ones would say whether anyone matched a pattern of
//!   its choosing. It never sees a row.
//!
//! What the query may be is narrow, so that the people behind a cell are the distinct values
//! of `list_column`: each `UNION ALL` branch reads one dataset, and its `list_column` is that
//! dataset's privacy unit, as it is. Features and the group are never computed from an
//! identifier (a model given `account = 'A-17'` could single that person out).

use std::collections::{BTreeMap, HashSet};

use kura_contract::{Analysis, ColumnType, Contract, ScoreSpec};
use kura_ml::onnx::Scorer;
use serde_json::Value;

use crate::{EngineError, Output, Tables};

/// What the rule that refuses a scoring query is called in refusals.
const RULE: &str = "scoring";

/// The columns of the distribution the model's provider receives (after the group, if any).
pub const DISTRIBUTION: [&str; 3] = ["score_from", "score_to", "rows"];

/// Scores `analysis`'s query rows over `tables` with `scorer`: each receiver's table.
pub async fn score(
    contract: &Contract,
    analysis: &Analysis,
    tables: &Tables,
    scorer: &Scorer,
) -> Result<BTreeMap<String, Output>, EngineError> {
    let spec = spec(analysis)?;
    let ctx = crate::session(contract, tables)?;
    let plan = crate::written_plan(&ctx, &analysis.sql).await?;
    let mut datasets = crate::lineage::datasets_read(&plan, contract)?;
    crate::require_data(&datasets, tables)?;
    let layout = Layout::of(contract, analysis, spec, &plan)?;
    crate::roles::Rules::for_signing(contract).check_flow(&plan)?;

    // Each row with its dataset (the last column), for the distribution's count per dataset.
    let physical = ctx
        .state()
        .create_physical_plan(&crate::model::with_units(contract, &plan, RULE)?)
        .await?;
    let batches = crate::collect_counted(physical, &ctx)
        .await
        .map_err(crate::error::runtime)?;
    let features = crate::model::numbers(&batches, &layout.features)?;
    let rows = crate::output::rows(&batches)?;
    // Rows with a null feature (or one that is not a finite number) are not scored; their
    // score is null.
    let mut computed = scorer
        .score(&features.values)
        .map_err(|e| EngineError::Refused {
            rule: RULE,
            reason: e.to_string(),
        })?
        .into_iter();
    let scores: Vec<Option<f64>> = features
        .kept
        .iter()
        .map(|&kept| {
            kept.then(|| computed.next())
                .flatten()
                .filter(|s| s.is_finite())
        })
        .collect();

    let model = contract
        .model(&spec.model)
        .ok_or_else(|| EngineError::Sql(format!("no model {:?}", spec.model)))?;
    // The model, like every dataset the run used, is deleted with them under
    // `delete_after = "run"`.
    datasets.insert(model.name.clone());
    let datasets: Vec<String> = datasets.into_iter().collect();
    let mut out = BTreeMap::new();
    for receiver in &analysis.receivers {
        let output = if *receiver == model.provider {
            distribution(
                contract,
                spec,
                &layout,
                &rows,
                &scores,
                &plan,
                &model.provider,
            )
        } else {
            // A row is its dataset's: a receiver gets the rows of the datasets it provides,
            // whatever unit values its other datasets hold.
            let own: HashSet<String> = contract
                .datasets
                .iter()
                .filter(|d| d.provider == *receiver)
                .map(|d| d.name.clone())
                .collect();
            own_rows(&layout, &rows, &scores, &own, &plan)
        };
        out.insert(
            receiver.clone(),
            Output {
                datasets: datasets.clone(),
                ..output
            },
        );
    }
    Ok(out)
}

/// The checks of [`score`] that need no data, for a contract's analyses before anyone signs.
pub(crate) async fn check(
    contract: &Contract,
    ctx: &datafusion::execution::context::SessionContext,
    analysis: &Analysis,
) -> Result<(), EngineError> {
    let spec = spec(analysis)?;
    let plan = crate::written_plan(ctx, &analysis.sql).await?;
    crate::lineage::datasets_read(&plan, contract)?;
    Layout::of(contract, analysis, spec, &plan)?;
    crate::roles::Rules::for_signing(contract).check_flow(&plan)
}

fn spec(analysis: &Analysis) -> Result<&ScoreSpec, EngineError> {
    analysis
        .score
        .as_ref()
        .ok_or_else(|| EngineError::Sql(format!("analysis {:?} is not a score", analysis.name)))
}

/// Where the query's output columns are, checked against the scoring rules.
struct Layout {
    /// The features, in the model's input order.
    features: Vec<usize>,
    /// The column that says whose a row is (a privacy unit).
    route: usize,
    group: Option<usize>,
}

impl Layout {
    fn of(
        contract: &Contract,
        analysis: &Analysis,
        spec: &ScoreSpec,
        plan: &datafusion::logical_expr::LogicalPlan,
    ) -> Result<Self, EngineError> {
        let refuse = |reason: String| EngineError::Refused { rule: RULE, reason };
        let features = crate::model::numeric_columns(plan, &spec.features, "score")?;
        let position = |name: &str| {
            plan.schema()
                .fields()
                .iter()
                .position(|f| f.name() == name)
                .ok_or_else(|| {
                    EngineError::Sql(format!("the score's query has no output column {name:?}"))
                })
        };
        let route_name = analysis.list_column.as_deref().unwrap_or_default();
        let route = position(route_name)?;
        let group = spec.group_by.as_deref().map(position).transpose()?;
        let mut guarded = spec.features.clone();
        guarded.extend(spec.group_by.iter().cloned());
        crate::model::no_identifiers(contract, plan, &guarded, RULE)?;
        for branch in crate::model::branches(plan) {
            let (dataset, unit) =
                crate::model::one_dataset(contract, branch, "a scoring query", RULE)?;
            if crate::lineage::origin(branch, route) != Some((dataset.clone(), unit.clone())) {
                return Err(refuse(format!(
                    "list_column {route_name:?} must be the privacy unit of the dataset each \
                     row comes from ({dataset}.{unit}), as it is"
                )));
            }
        }
        Ok(Self {
            features,
            route,
            group,
        })
    }

    /// The query's columns a row's owner receives: all but the features.
    fn released(&self, width: usize) -> Vec<usize> {
        (0..width).filter(|i| !self.features.contains(i)).collect()
    }
}

/// A receiver's own rows (those of the datasets in `own`): the query's columns other than the
/// features, and the score.
fn own_rows(
    layout: &Layout,
    rows: &[Vec<Value>],
    scores: &[Option<f64>],
    own: &HashSet<String>,
    plan: &datafusion::logical_expr::LogicalPlan,
) -> Output {
    let names = crate::output::column_names(plan);
    let types = crate::output::column_types(plan);
    let kept = layout.released(names.len());
    let mut columns: Vec<String> = kept.iter().map(|&i| names[i].clone()).collect();
    let mut column_types: Vec<ColumnType> = kept.iter().map(|&i| types[i]).collect();
    columns.push("score".into());
    column_types.push(ColumnType::Float64);
    let released = rows
        .iter()
        .zip(scores)
        .filter(|(row, _)| matches!(row.last(), Some(Value::String(d)) if own.contains(d)))
        .map(|(row, score)| {
            let mut out: Vec<Value> = kept.iter().map(|&i| row[i].clone()).collect();
            out.push(score.map_or(Value::Null, crate::model::number));
            out
        })
        .collect();
    Output {
        columns,
        types: column_types,
        rows: released,
        suppressed_groups: 0,
        datasets: Vec::new(),
        dp: None,
        onnx: None,
    }
}

/// The scores' distribution for the model's provider: rows per (group, bucket) cell. A cell
/// is released only where its rows come, for every dataset, from no one or from at least
/// `min_group_size` people, and from that many people of datasets the model's provider did not
/// provide: its own rows never count toward a cell it receives (they could pad one person of
/// another party into a cell that passes), and a cell of one dataset's few people beside many
/// of another's is withheld.
fn distribution(
    contract: &Contract,
    spec: &ScoreSpec,
    layout: &Layout,
    rows: &[Vec<Value>],
    scores: &[Option<f64>],
    plan: &datafusion::logical_expr::LogicalPlan,
    provider: &str,
) -> Output {
    type People = BTreeMap<String, HashSet<String>>;
    // (group as text, bucket) → (group value, rows, people per dataset).
    let mut cells: BTreeMap<(String, usize), (Value, u64, People)> = BTreeMap::new();
    for (row, score) in rows.iter().zip(scores) {
        let (Some(score), Some(person), Some(Value::String(dataset))) =
            (score, crate::list::key(&row[layout.route]), row.last())
        else {
            continue;
        };
        let bucket = spec.buckets.partition_point(|edge| *edge <= *score);
        let group = layout.group.map_or(Value::Null, |g| row[g].clone());
        let cell = cells
            .entry((group.to_string(), bucket))
            .or_insert_with(|| (group, 0, People::new()));
        cell.1 += 1;
        cell.2.entry(dataset.clone()).or_default().insert(person);
    }
    let own = |dataset: &str| {
        contract
            .dataset(dataset)
            .is_some_and(|d| d.provider == provider)
    };
    let edge = |i: Option<usize>| {
        i.and_then(|i| spec.buckets.get(i))
            .map_or(Value::Null, |e| crate::model::number(*e))
    };
    let min = contract.output.min_group_size;
    let mut released = Vec::new();
    for ((_, bucket), (group, count, people)) in cells {
        let others = people.iter().filter(|(d, _)| !own(d));
        let each = others.clone().all(|(_, p)| p.len() as u64 >= min);
        let any = others.map(|(_, p)| p.len()).max().unwrap_or(0) as u64 >= min;
        if !(each && any) {
            continue;
        }
        let mut row = Vec::new();
        if layout.group.is_some() {
            row.push(group);
        }
        row.extend([
            edge(bucket.checked_sub(1)),
            edge(Some(bucket)),
            Value::from(count),
        ]);
        released.push(row);
    }
    let mut columns = Vec::new();
    let mut types = Vec::new();
    if let Some(g) = layout.group {
        columns.push(crate::output::column_names(plan)[g].clone());
        types.push(crate::output::column_types(plan)[g]);
    }
    columns.extend(DISTRIBUTION.iter().map(|c| c.to_string()));
    types.extend([ColumnType::Float64, ColumnType::Float64, ColumnType::Int64]);
    Output {
        columns,
        types,
        rows: released,
        // Not how many cells were withheld (module docs).
        suppressed_groups: 0,
        datasets: Vec::new(),
        dp: None,
        onnx: None,
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use kura_api::UploadFormat;
    use kura_crypto::SecretIdentity;

    use super::*;

    const TEMPLATE: &str = include_str!("../../../testdata/contracts/fraud-scoring.toml");

    fn model() -> kura_ml::Model {
        kura_ml::Model {
            family: kura_ml::Family::Logistic,
            intercept: -3.0,
            coefficients: vec![
                ("amount".into(), 0.002),
                ("night".into(), 1.0),
                ("foreign".into(), 0.5),
            ],
            metrics: Vec::new(),
        }
    }

    fn text(edit: impl Fn(String) -> String) -> String {
        edit(kura_contract::example::fill(TEMPLATE, |name| {
            match name.strip_prefix("key:") {
                Some(_) => SecretIdentity::generate().public().to_text(),
                None => "ab".repeat(32),
            }
        }))
    }

    fn contract(edit: impl Fn(String) -> String) -> Contract {
        Contract::parse(text(edit).as_bytes()).unwrap()
    }

    /// Bank c's and bank d's new transactions: `accounts` accounts each, 4 transactions per
    /// account; bank d's all by card.
    fn tables(c: &Contract, accounts: [usize; 2]) -> Tables {
        let mut t = Tables::new();
        for ((name, bank), n) in [("new_c", "c"), ("new_d", "d")].iter().zip(accounts) {
            let mut csv = String::from("account,txn,channel,amount,night,foreign\n");
            for a in 0..n {
                for i in 0..4 {
                    let channel = if *bank == "d" || i % 2 == 0 {
                        "card"
                    } else {
                        "online"
                    };
                    let amount = 10 + (a * 97 + i * 13) % 3000;
                    writeln!(
                        csv,
                        "{bank}{a},{bank}-{a}-{i},{channel},{amount},{},{}",
                        i == 3,
                        a % 5 == 0
                    )
                    .unwrap();
                }
            }
            let dataset = c.dataset(name).unwrap();
            let loaded = crate::load::load(dataset, UploadFormat::Csv, csv.as_bytes()).unwrap();
            t.insert(name.to_string(), loaded.into());
        }
        t
    }

    fn scorer() -> Scorer {
        Scorer::load(&kura_ml::onnx::export(&model()), 3).unwrap()
    }

    /// Each bank's rows reach that bank only, with the model's scores; the consortium gets
    /// the distribution, whose cells from fewer than `min_group_size` accounts are withheld.
    #[tokio::test]
    async fn scores_reach_their_owners_and_only_a_thresholded_distribution_the_model_owner() {
        let c = contract(|t| t);
        crate::check_analyses(&c).await.unwrap();
        // Bank d has 8 accounts: its card cells alone could come from fewer than 10.
        let out = score(&c, &c.analyses[0], &tables(&c, [40, 8]), &scorer())
            .await
            .unwrap();
        assert_eq!(out.len(), 3);
        for (bank, rows) in [("bank-c", 160), ("bank-d", 32)] {
            let own = &out[bank];
            assert_eq!(own.columns, ["account", "txn", "channel", "score"]);
            assert_eq!(own.rows.len(), rows);
            let prefix = &bank[5..];
            for row in &own.rows {
                assert!(row[0].as_str().unwrap().starts_with(prefix), "{row:?}");
                assert!(row[3].as_f64().is_some_and(|s| (0.0..=1.0).contains(&s)));
            }
        }
        assert!(out["bank-c"].datasets.contains(&"fraud_model".to_string()));
        let dist = &out["consortium"];
        assert_eq!(dist.columns, ["channel", "score_from", "score_to", "rows"]);
        assert!(!dist.rows.is_empty());
        // What the consortium sees, recomputed from the plaintext: per (channel, bucket) the
        // accounts behind it of each bank; a cell is released exactly when each bank has none
        // or at least 10 there.
        let expected = expected_cells(&out, &[]);
        let got = released_cells(dist);
        assert_eq!(got, expected.0);
        // Cells were withheld (bank d's few accounts leave small ones), but the model's
        // provider is not told how many.
        assert!(expected.1 > 0, "bank d's few accounts leave a small cell");
        assert_eq!(dist.suppressed_groups, 0);
    }

    /// The distribution's cells from the banks' own scored rows: (released cells with their
    /// rows, how many withheld), where a cell is released when every bank not in `uncounted`
    /// has none or at least 10 accounts in it, and one has.
    type Cells = Vec<((String, usize), u64)>;

    /// The cells of a distribution as released: ((channel, bucket), rows).
    fn released_cells(dist: &Output) -> Cells {
        dist.rows
            .iter()
            .map(|r| {
                let bucket = r[1].as_f64().map_or(0, |f| (f * 10.0).round() as usize);
                (
                    (r[0].as_str().unwrap().to_string(), bucket),
                    r[3].as_u64().unwrap(),
                )
            })
            .collect()
    }

    fn expected_cells(out: &BTreeMap<String, Output>, uncounted: &[&str]) -> (Cells, usize) {
        type Cell = (u64, BTreeMap<&'static str, HashSet<String>>);
        let mut cells: BTreeMap<(String, usize), Cell> = BTreeMap::new();
        for bank in ["bank-c", "bank-d"] {
            for row in &out[bank].rows {
                let s = row[3].as_f64().unwrap();
                let bucket = ((s * 10.0).floor() as usize).min(9);
                let cell = cells
                    .entry((row[2].as_str().unwrap().to_string(), bucket))
                    .or_default();
                cell.0 += 1;
                cell.1
                    .entry(bank)
                    .or_default()
                    .insert(row[0].as_str().unwrap().to_string());
            }
        }
        let released: Vec<((String, usize), u64)> = cells
            .iter()
            .filter(|(_, (_, people))| {
                let counted: Vec<usize> = people
                    .iter()
                    .filter(|(bank, _)| !uncounted.contains(bank))
                    .map(|(_, p)| p.len())
                    .collect();
                !counted.is_empty() && counted.iter().all(|n| *n >= 10)
            })
            .map(|(k, (n, _))| (k.clone(), *n))
            .collect();
        let withheld = cells.len() - released.len();
        (released, withheld)
    }

    /// A row goes to the provider of the dataset it comes from, not to whoever holds the same
    /// unit value: bank C writes one of bank D's account numbers into its own file, and still
    /// gets its own rows only (the one it wrote among them), never bank D's rows for that
    /// account.
    #[tokio::test]
    async fn rows_go_to_their_datasets_provider_only() {
        let c = contract(|t| t);
        let mut t = tables(&c, [40, 12]);
        let csv = "account,txn,channel,amount,night,foreign\nd3,c-planted,card,10,false,false\n";
        let mut c_rows = match t.remove("new_c").unwrap() {
            crate::Table::Held(b) => b,
            crate::Table::Stored(_) => unreachable!(),
        };
        c_rows.extend(
            crate::load::load(
                c.dataset("new_c").unwrap(),
                UploadFormat::Csv,
                csv.as_bytes(),
            )
            .unwrap(),
        );
        t.insert("new_c".into(), c_rows.into());
        let out = score(&c, &c.analyses[0], &t, &scorer()).await.unwrap();
        let txns = |bank: &str| -> Vec<String> {
            out[bank]
                .rows
                .iter()
                .map(|r| r[1].as_str().unwrap().to_string())
                .collect()
        };
        assert!(txns("bank-c").iter().all(|t| t.starts_with("c-")));
        assert!(txns("bank-c").contains(&"c-planted".to_string()));
        assert!(txns("bank-d").iter().all(|t| t.starts_with("d-")));
        assert_eq!(txns("bank-d").len(), 48);
    }

    /// The model's provider's own rows never count toward a cell it receives: with bank C as
    /// the model's provider, its 40 accounts cannot pad bank D's few into a released cell.
    #[tokio::test]
    async fn the_model_providers_own_rows_never_fill_its_cells() {
        let c = contract(|t| {
            t.replacen("provider = \"consortium\"", "provider = \"bank-c\"", 1)
                .replace(
                    "receivers = [\"consortium\", \"bank-c\", \"bank-d\"]",
                    "receivers = [\"bank-c\", \"bank-d\"]",
                )
        });
        assert_eq!(c.model("fraud_model").unwrap().provider, "bank-c");
        for d in [8, 30] {
            let out = score(&c, &c.analyses[0], &tables(&c, [40, d]), &scorer())
                .await
                .unwrap();
            let dist = &out["bank-c"];
            assert_eq!(dist.columns, ["channel", "score_from", "score_to", "rows"]);
            let got = released_cells(dist);
            // Bank C's scores, as it would see them, stand in for its rows in the recount.
            let mut rows = out.clone();
            rows.insert("bank-c".into(), own_scores(d).await);
            let expected = expected_cells(&rows, &["bank-c"]);
            assert_eq!(got, expected.0, "{d} accounts at bank D");
            if d < 10 {
                assert!(
                    got.is_empty(),
                    "bank D's {d} accounts are under 10 in every cell"
                );
            }
        }
    }

    /// Bank C's own rows scored, as the receiver of its rows would get them (under the
    /// original contract, where the consortium provides the model).
    async fn own_scores(d: usize) -> Output {
        let c = contract(|t| t);
        let mut out = score(&c, &c.analyses[0], &tables(&c, [40, d]), &scorer())
            .await
            .unwrap();
        out.remove("bank-c").unwrap()
    }

    /// Queries whose rows could not be told apart by owner, or whose features could single a
    /// person out, are refused before anyone signs; so are scorings the contract cannot
    /// describe.
    #[tokio::test]
    async fn scorings_are_checked_before_signing() {
        async fn refused(edit: &dyn Fn(String) -> String) -> String {
            crate::check_analyses(&contract(edit))
                .await
                .unwrap_err()
                .to_string()
        }
        let why = refused(&|t| {
            t.replace(
                "SELECT account, txn, channel, amount, night, foreign FROM new_d",
                "SELECT d.account, d.txn, d.channel, c.amount, d.night, d.foreign \
                 FROM new_d d JOIN new_c c ON c.txn = d.txn",
            )
        })
        .await;
        assert!(why.contains("exactly one dataset"), "{why}");
        let why =
            refused(&|t| t.replace("list_column = \"account\"", "list_column = \"txn\"")).await;
        assert!(why.contains("must be the privacy unit"), "{why}");
        let why = refused(&|t| {
            t.replace(
                "SELECT account, txn, channel, amount, night, foreign FROM new_c",
                "SELECT account, txn, channel, amount, account = 'c7' AS night, foreign FROM new_c",
            )
        })
        .await;
        assert!(why.contains("identifier column new_c.account"), "{why}");
        let why = refused(&|t| {
            t.replace(
                "SELECT account, txn, channel, amount, night, foreign FROM new_d",
                "SELECT account, txn, txn AS channel, amount, night, foreign FROM new_d",
            )
        })
        .await;
        assert!(why.contains("identifier column new_d.txn"), "{why}");

        let invalid = |edit: &dyn Fn(String) -> String| {
            Contract::parse(text(edit).as_bytes())
                .unwrap_err()
                .to_string()
        };
        for (edit, reason) in [
            (
                ("model = \"fraud_model\"", "model = \"other\""),
                "not in [[models]]",
            ),
            (
                ("group_by = \"channel\"", "group_by = \"amount\""),
                "group_by",
            ),
            (("list_column = \"account\"\n", ""), "list_column"),
            (("sha256 = \"abab", "sha256 = \"ABAB"), "64 lowercase hex"),
            (("kind = \"score\"\n", ""), "applies only"),
            (
                ("group_by = \"channel\"", "buckets = [0.5, 0.2]"),
                "increasing",
            ),
            (
                (
                    "receivers = [\"consortium\", ",
                    "receivers = [\"auditor\", \"consortium\", ",
                ),
                "provides neither",
            ),
            (
                (
                    "[output]",
                    "[privacy.dp]\nepsilon = 1.0\nquery_epsilon = 0.5\n\n[output]",
                ),
                "scores cannot be released under [privacy.dp]",
            ),
            (
                ("name = \"new_c\"", "name = \"fraud_model\""),
                "fraud_model",
            ),
        ] {
            let why = invalid(&|t| {
                let t = t.replace(
                    "[[models]]",
                    "[[parties]]\nname = \"auditor\"\npublic_key = \"@key@\"\nroles = [\"receiver\"]\n\n[[models]]",
                );
                let key = SecretIdentity::generate().public().to_text();
                assert!(t.contains(edit.0), "{}", edit.0);
                t.replace("@key@", &key).replace(edit.0, edit.1)
            });
            assert!(why.contains(reason), "{edit:?}: {why}");
        }
    }
}
