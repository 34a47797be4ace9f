//! Differentially private training (`dp = true` under `[privacy.dp]`): a logistic model by
//! output perturbation, charged to the budget like a DP query.
//!
//! 1. **Rows per person.** Each `UNION ALL` branch reads one dataset and keeps its privacy
//!    unit, which the engine adds as a hidden column: rows are grouped by person, and at most
//!    `privacy.dp.max_contributions` of each person's rows, drawn at random in the enclave, are
//!    kept.
//! 2. **The fit.** Features clamped to the contract's bounds, scaled so that no row is longer
//!    than 1, fitted with the L2 penalty (`kura_ml::private`): one person moves the weights by
//!    at most `√(k + 1)·m/α` in L1.
//! 3. **The noise.** OpenDP's Laplace mechanism on the weight vector at that sensitivity and
//!    the run's ε (its privacy map must give back no more than the ε charged), then the
//!    weights become a model on raw values: post-processing.
//!
//! Nothing is measured on held-out rows (the contract requires `holdout = 0`), and no
//! coverage check refuses a small training set: the noise protects it, and a refusal would
//! not be noised. What the run spends is known before it reads a row ([`spend`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use datafusion::arrow::array::Array;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use kura_contract::dp::{DpReport, GroupRelease, Spend};
use kura_contract::{Analysis, ColumnType, Contract, ModelSpec};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_laplace;
use opendp::measures::MaxDivergence;
use opendp::metrics::L1Distance;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::Value;

use crate::{EngineError, Output};

/// What a run of `analysis` spends: its ε (default `privacy.dp.query_epsilon`), no δ.
pub fn spend(contract: &Contract, analysis: &Analysis) -> Result<Spend, EngineError> {
    let dp = contract
        .privacy
        .dp
        .as_ref()
        .ok_or_else(|| refuse("the contract has no [privacy.dp]"))?;
    let epsilon = analysis.epsilon.unwrap_or(dp.query_epsilon);
    let units = kura_contract::dp::epsilon_units(epsilon);
    if units == 0 || epsilon > dp.epsilon {
        return Err(refuse(format!(
            "ε = {epsilon} is not in (0, {}] (privacy.dp.epsilon)",
            dp.epsilon
        )));
    }
    Ok(Spend {
        epsilon: units as f64 / 1e9,
        delta: 0.0,
    })
}

fn refuse(reason: impl Into<String>) -> EngineError {
    EngineError::Refused {
        rule: "dp",
        reason: reason.into(),
    }
}

/// Trains `analysis`'s model with differential privacy.
pub(super) async fn train(
    contract: &Contract,
    analysis: &Analysis,
    spec: &ModelSpec,
    ctx: &datafusion::execution::context::SessionContext,
    plan: LogicalPlan,
    datasets: BTreeSet<String>,
) -> Result<Output, EngineError> {
    let spend = spend(contract, analysis)?;
    let dp = contract.privacy.dp.as_ref().expect("checked by spend");
    let columns = super::learned_columns(contract, &plan, spec)?;
    let plan = super::with_units(contract, &plan, "dp")?;
    let unit_index = plan.schema().fields().len() - 2;
    let batches = super::collect(ctx, &plan).await?;
    let k = dp.max_contributions as usize;
    let kept = at_most(&batches, unit_index, k)?;
    let set = super::training_set(&kept, spec, &columns)?;
    let bounds: Vec<[f64; 2]> = spec
        .features
        .iter()
        .map(|f| {
            spec.bounds
                .get(f)
                .copied()
                .ok_or_else(|| refuse(format!("no bounds for {f:?}")))
        })
        .collect::<Result<_, _>>()?;
    let fit = kura_ml::private::fit_bounded_logistic(
        &set,
        &bounds,
        k as u64,
        spec.l2,
        spec.max_iterations,
    )
    .map_err(super::refused)?;

    // OpenDP's Laplace mechanism on the weights; a hair more noise than ε asks for, so that its
    // own (conservatively rounded) accounting stays within what is charged.
    let epsilon = spend.epsilon;
    let scale = fit.l1_sensitivity / epsilon * (1.0 + 1e-9);
    let opendp = |e: opendp::error::Error| EngineError::Execution(format!("OpenDP: {e}"));
    let mechanism = make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L1Distance::<f64>::default(),
        scale,
        None,
    )
    .map_err(opendp)?;
    let spent = mechanism.map(&fit.l1_sensitivity).map_err(opendp)?;
    if spent > epsilon {
        return Err(EngineError::Execution(format!(
            "the mechanism would spend ε = {spent}, more than the {epsilon} charged"
        )));
    }
    let noisy = mechanism.invoke(&fit.weights).map_err(opendp)?;
    let model = fit.model(&noisy);

    let mut rows = vec![vec![
        Value::from("intercept"),
        super::number(model.intercept),
    ]];
    rows.extend(
        model
            .coefficients
            .iter()
            .map(|(term, v)| vec![Value::from(term.as_str()), super::number(*v)]),
    );
    Ok(Output {
        columns: super::COLUMNS.iter().map(|c| c.to_string()).collect(),
        types: vec![ColumnType::Utf8, ColumnType::Float64],
        rows,
        suppressed_groups: 0,
        datasets: datasets.into_iter().collect(),
        dp: Some(DpReport {
            epsilon,
            delta: 0.0,
            max_contributions: k as u64,
            groups: GroupRelease::PublicDomain,
            threshold: None,
            columns: BTreeMap::new(),
            noise_sd: fit.noise_sd(scale).into_iter().collect(),
        }),
        onnx: Some(kura_ml::onnx::export(&model)),
    })
}

/// At most `k` rows of each person (by the text in column `unit`), drawn at random in the
/// enclave; rows without a person are dropped.
fn at_most(
    batches: &[RecordBatch],
    unit: usize,
    k: usize,
) -> Result<Vec<RecordBatch>, EngineError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| EngineError::Execution(format!("no randomness: {e}")))?;
    let mut rng = rand::rngs::StdRng::from_seed(seed);
    let mut by_person: HashMap<&str, Vec<RecordBatch>> = HashMap::new();
    for batch in batches {
        let units = batch.column(unit).as_string::<i32>();
        for row in 0..batch.num_rows() {
            if !units.is_null(row) {
                by_person
                    .entry(units.value(row))
                    .or_default()
                    .push(batch.slice(row, 1));
            }
        }
    }
    let mut kept = Vec::new();
    for rows in by_person.values_mut() {
        rows.shuffle(&mut rng);
        kept.extend(rows.drain(..).take(k));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::model::UNIT;

    /// One person with many rows keeps `k` of them; everyone else keeps theirs; rows without a
    /// person go.
    #[test]
    fn each_person_keeps_at_most_k_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Float64, false),
            Field::new(UNIT, DataType::Utf8, true),
        ]));
        let mut units: Vec<Option<String>> = (0..500).map(|_| Some("heavy".to_string())).collect();
        units.extend((0..40).map(|i| Some(format!("p{}", i % 20))));
        units.push(None);
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from_iter_values(
                    (0..units.len()).map(|i| i as f64),
                )),
                Arc::new(StringArray::from(units)),
            ],
        )
        .unwrap();
        let kept = at_most(&[batch], 1, 3).unwrap();
        let mut per: HashMap<String, usize> = HashMap::new();
        for b in &kept {
            let u = b.column(1).as_string::<i32>();
            *per.entry(u.value(0).to_string()).or_default() += 1;
        }
        assert_eq!(per["heavy"], 3);
        assert_eq!(per.len(), 21);
        assert!(per.iter().all(|(p, n)| p == "heavy" || *n == 2), "{per:?}");
        assert_eq!(kept.len(), 3 + 40);
    }
}
