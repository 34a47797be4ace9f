//! Tree analyses (`family = "tree"`): a classification tree grown on the query's rows, split
//! only at the contract's cut points, every leaf over at least `min_group_size` people of each
//! dataset it holds rows of (`kura_ml::tree`).
//!
//! To count people per leaf, each row must belong to one person: each `UNION ALL` branch reads
//! one dataset, whose privacy unit the engine carries as a hidden column beside the features
//! ([`super::with_units`]). The released table has one row per leaf (the conditions that lead to
//! it, and its rate of 1), then the measures on held-out rows; the ONNX file has the tree.

use std::collections::BTreeSet;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use kura_contract::{ColumnType, Contract, ModelSpec};
use serde_json::Value;

use crate::{EngineError, Output};

/// Grows `spec`'s tree on `plan`'s rows.
pub(super) async fn train(
    contract: &Contract,
    spec: &ModelSpec,
    ctx: &datafusion::execution::context::SessionContext,
    plan: LogicalPlan,
    datasets: BTreeSet<String>,
) -> Result<Output, EngineError> {
    let columns = super::learned_columns(contract, &plan, spec)?;
    let covered = super::covered(contract, ctx, &plan, &columns).await;
    let plan = super::with_units(contract, &plan, super::RULE)?;
    if let Err(e) = covered {
        // Refused for want of people: the training rows' files are read all the same.
        crate::read_unrun(ctx, std::iter::once(&plan)).await;
        return Err(e);
    }
    let unit = plan.schema().fields().len() - 2;
    let batches = super::collect(ctx, &plan).await?;
    let (set, people) = rows(&batches, spec, &columns, unit)?;
    let cuts = cut_points(spec, super::RULE)?;
    let settings = kura_ml::tree::TreeSettings {
        max_depth: spec.max_depth.unwrap_or(ModelSpec::DEFAULT_MAX_DEPTH) as usize,
        min_units: usize::try_from(contract.output.min_group_size).unwrap_or(usize::MAX),
        holdout: spec.holdout,
    };
    let tree =
        kura_ml::tree::train_tree(&set, &people, &cuts, &settings).map_err(super::refused)?;
    let rows = tree
        .leaves()
        .into_iter()
        .chain(tree.metrics.iter().cloned())
        .map(|(term, v)| vec![Value::from(term), super::number(v)])
        .collect();
    Ok(Output {
        columns: super::COLUMNS.iter().map(|c| c.to_string()).collect(),
        types: vec![ColumnType::Utf8, ColumnType::Float64],
        rows,
        suppressed_groups: 0,
        datasets: datasets.into_iter().collect(),
        dp: None,
        onnx: Some(kura_ml::onnx::export_tree(&tree)),
    })
}

/// Each feature's cut points, in the order of the features (the contract requires them for
/// every feature of a tree; a refusal names `rule`).
pub(super) fn cut_points(
    spec: &ModelSpec,
    rule: &'static str,
) -> Result<Vec<Vec<f64>>, EngineError> {
    spec.features
        .iter()
        .map(|f| {
            spec.cuts
                .get(f)
                .cloned()
                .ok_or_else(|| EngineError::Refused {
                    rule,
                    reason: format!("a tree needs cut points for {f:?}"),
                })
        })
        .collect()
}

/// The features and label of every row with none of them null and a person, and each such
/// row's (dataset, person), numbered in the order met. The person and dataset are the columns
/// at `unit` and `unit + 1`.
fn rows(
    batches: &[RecordBatch],
    spec: &ModelSpec,
    columns: &[usize],
    unit: usize,
) -> Result<(kura_ml::TrainingSet, Vec<(u32, u32)>), EngineError> {
    let mut datasets: Vec<String> = Vec::new();
    let mut numbered = super::People::default();
    let mut owners = Vec::new();
    for batch in batches {
        let units = batch.column(unit).as_string::<i32>();
        let names = batch.column(unit + 1).as_string::<i32>();
        for row in 0..batch.num_rows() {
            if units.is_null(row) {
                owners.push(None);
                continue;
            }
            let name = names.value(row);
            let d = match datasets.iter().position(|n| n == name) {
                Some(d) => d,
                None => {
                    datasets.push(name.to_string());
                    datasets.len() - 1
                }
            };
            owners.push(Some((d as u32, numbered.number(d, units.value(row)))));
        }
    }
    let numbers = super::numbers(batches, columns)?;
    let width = columns.len();
    let mut values = Vec::with_capacity(numbers.values.len());
    let mut people = Vec::new();
    let mut at = 0;
    for (kept, owner) in numbers.kept.iter().zip(owners) {
        if *kept {
            if let Some(owner) = owner {
                values.extend_from_slice(&numbers.values[at..at + width]);
                people.push(owner);
            }
            at += width;
        }
    }
    Ok((super::as_set(spec, values)?, people))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// Each row keeps its features, label and person; a person is counted per dataset (the
    /// same account name at two banks is two people); rows with a null or no person go.
    #[test]
    fn each_row_carries_its_person_of_its_dataset() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("amount", DataType::Float64, true),
            Field::new("fraud", DataType::Float64, false),
            Field::new(crate::model::UNIT, DataType::Utf8, true),
            Field::new(crate::model::DATASET, DataType::Utf8, false),
        ]));
        let batch = |amounts: Vec<Option<f64>>, units: Vec<Option<&str>>, dataset: &str| {
            let n = amounts.len();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Float64Array::from(amounts)),
                    Arc::new(Float64Array::from(vec![1.0; n])),
                    Arc::new(StringArray::from(units)),
                    Arc::new(StringArray::from(vec![dataset; n])),
                ],
            )
            .unwrap()
        };
        let batches = [
            batch(
                vec![Some(1.0), Some(2.0), None, Some(4.0)],
                vec![Some("p"), Some("q"), Some("p"), None],
                "a",
            ),
            batch(vec![Some(5.0), Some(6.0)], vec![Some("p"), Some("q")], "b"),
        ];
        let spec = ModelSpec {
            family: kura_contract::ModelFamily::Tree,
            features: vec!["amount".into()],
            label: "fraud".into(),
            holdout: 0.0,
            l2: 1.0,
            max_iterations: 100,
            bounds: Default::default(),
            cuts: [("amount".to_string(), vec![3.0])].into(),
            max_depth: None,
        };
        let (set, people) = rows(&batches, &spec, &[0, 1], 2).unwrap();
        assert_eq!(set.x.column(0).to_vec(), [1.0, 2.0, 5.0, 6.0]);
        assert_eq!(people, [(0, 0), (0, 1), (1, 0), (1, 1)]);
    }
}
