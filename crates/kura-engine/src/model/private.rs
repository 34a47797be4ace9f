//! Differentially private training (`dp = true` under `[privacy.dp]`), charged to the budget
//! like a DP query: a logistic model by output perturbation, a linear model by noisy
//! sufficient statistics, a tree grown and rated from noisy counts (`kura_ml::private`).
//!
//! 1. **Rows per person.** Each `UNION ALL` branch reads one dataset and keeps its privacy
//!    unit, which the engine adds as a hidden column: rows are grouped by person, and at most
//!    `k` of each person's rows, drawn at random in the enclave, are kept:
//!    `privacy.dp.max_contributions`, or fewer if every dataset read declares fewer.
//! 2. **What is released.**
//!    - logistic: features clamped to the contract's bounds, scaled so that no row is longer
//!      than 1, fitted with the L2 penalty; one person moves the weights by at most
//!      `√(features + 1)·k/α` in L1;
//!    - linear: features and label clamped to the contract's bounds and mapped onto [-1, 1];
//!      the sums `XᵀX` and `Xᵀy`, which one person moves by at most `k` times their number of
//!      entries;
//!    - tree: per level, the rows of each growing node counted by feature, bin and class (one
//!      person moves them by at most `k · features`), then each leaf's rows by class (`k`),
//!      each release at an equal share of ε.
//! 3. **The noise.** OpenDP's Laplace mechanism at that sensitivity and ε; its privacy map
//!    must give back no more than the ε asked, and the run's releases together no more than
//!    it is charged ([`Laplace`]). Everything after (solving, choosing splits, turning
//!    weights into a model on raw values, the noise estimates reported) reads only the noisy
//!    numbers and public settings: post-processing.
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
use kura_contract::{Analysis, ColumnType, Contract, ModelFamily, ModelSpec};
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
    // The rows kept per person: the DP bound, or fewer where every dataset read declares
    // fewer. Bounding keeps at most that many whatever the data, so a declaration that is
    // wrong costs rows, never privacy.
    let declared = datasets
        .iter()
        .filter_map(|d| contract.dataset(d))
        .map(|d| u64::from(d.max_contributions))
        .max()
        .unwrap_or(1);
    let k = u64::from(dp.max_contributions).min(declared).max(1) as usize;
    let kept = at_most(&batches, unit_index, k)?;
    let set = super::training_set(&kept, spec, &columns)?;
    let bounds = |names: &mut dyn Iterator<Item = &String>| -> Result<Vec<[f64; 2]>, EngineError> {
        names
            .map(|f| {
                spec.bounds
                    .get(f)
                    .copied()
                    .ok_or_else(|| refuse(format!("no bounds for {f:?}")))
            })
            .collect()
    };
    let mut laplace = Laplace::new(spend.epsilon);
    let (rows, noise_sd, onnx) = match spec.family {
        ModelFamily::Logistic => {
            let fit = kura_ml::private::fit_bounded_logistic(
                &set,
                &bounds(&mut spec.features.iter())?,
                k as u64,
                spec.l2,
                spec.max_iterations,
            )
            .map_err(super::refused)?;
            let (noisy, scale) =
                laplace.release(fit.weights.clone(), fit.l1_sensitivity, spend.epsilon)?;
            let model = fit.model(&noisy);
            (
                terms(&model),
                fit.noise_sd(scale),
                kura_ml::onnx::export(&model),
            )
        }
        ModelFamily::Linear => {
            let label = bounds(&mut std::iter::once(&spec.label))?[0];
            let sums = kura_ml::private::linear::statistics(
                &set,
                &bounds(&mut spec.features.iter())?,
                label,
                k as u64,
            )
            .map_err(super::refused)?;
            let (noisy, scale) =
                laplace.release(sums.values.clone(), sums.l1_sensitivity, spend.epsilon)?;
            let model = sums.model(&noisy, scale).map_err(super::refused)?;
            (
                terms(&model),
                sums.noise_sd(&noisy, scale, NOISE_DRAWS),
                kura_ml::onnx::export(&model),
            )
        }
        ModelFamily::Tree => {
            let cuts = super::tree::cut_points(spec, "dp")?;
            let settings = kura_ml::private::tree::PrivateTreeSettings {
                max_depth: spec.max_depth.unwrap_or(ModelSpec::DEFAULT_MAX_DEPTH) as usize,
                rows_per_person: k as u64,
                epsilon: spend.epsilon,
            };
            let mut release = |values: Vec<f64>, sensitivity: f64, epsilon: f64| {
                laplace
                    .release(values, sensitivity, epsilon)
                    .map(|(noisy, _)| noisy)
                    .map_err(|e| kura_ml::MlError::Fit(e.to_string()))
            };
            let grown = kura_ml::private::tree::grow(&set, &cuts, &settings, &mut release)
                .map_err(super::refused)?;
            let leaves = grown.tree.leaves();
            let sd = leaves
                .iter()
                .map(|(term, _)| term.clone())
                .zip(grown.rate_sd())
                .collect();
            let rows = leaves
                .into_iter()
                .map(|(term, v)| vec![Value::from(term), super::number(v)])
                .collect();
            (rows, sd, kura_ml::onnx::export_tree(&grown.tree))
        }
    };
    laplace.within_budget()?;
    Ok(Output {
        columns: super::COLUMNS.iter().map(|c| c.to_string()).collect(),
        types: vec![ColumnType::Utf8, ColumnType::Float64],
        rows,
        suppressed_groups: 0,
        datasets: datasets.into_iter().collect(),
        dp: Some(DpReport {
            epsilon: spend.epsilon,
            delta: 0.0,
            max_contributions: k as u64,
            groups: GroupRelease::PublicDomain,
            threshold: None,
            columns: BTreeMap::new(),
            noise_sd: noise_sd.into_iter().collect(),
        }),
        onnx: Some(onnx),
    })
}

/// How many fresh draws estimate the noise on a linear model's terms.
const NOISE_DRAWS: usize = 200;

/// A regression's released rows: the intercept, then each feature's coefficient.
fn terms(model: &kura_ml::Model) -> Vec<Vec<Value>> {
    std::iter::once(("intercept", model.intercept))
        .chain(model.coefficients.iter().map(|(t, v)| (t.as_str(), *v)))
        .map(|(term, v)| vec![Value::from(term), super::number(v)])
        .collect()
}

/// OpenDP's Laplace mechanism, each release checked against its own privacy map, and the
/// releases of one run together checked against what the run is charged.
struct Laplace {
    charged: f64,
    spent: f64,
}

impl Laplace {
    fn new(charged: f64) -> Self {
        Self {
            charged,
            spent: 0.0,
        }
    }

    /// `values` with Laplace noise for an L1 `sensitivity` at `epsilon`, and the noise's
    /// scale. A hair more noise than ε asks for, so that OpenDP's own (conservatively rounded)
    /// accounting stays within what is charged.
    fn release(
        &mut self,
        values: Vec<f64>,
        sensitivity: f64,
        epsilon: f64,
    ) -> Result<(Vec<f64>, f64), EngineError> {
        let scale = sensitivity / epsilon * (1.0 + 1e-9);
        let opendp = |e: opendp::error::Error| EngineError::Execution(format!("OpenDP: {e}"));
        let mechanism = make_laplace::<_, _, MaxDivergence>(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            L1Distance::<f64>::default(),
            scale,
            None,
        )
        .map_err(opendp)?;
        let spent = mechanism.map(&sensitivity).map_err(opendp)?;
        if spent > epsilon {
            return Err(EngineError::Execution(format!(
                "the mechanism would spend ε = {spent}, more than the {epsilon} asked"
            )));
        }
        self.spent += spent;
        self.within_budget()?;
        Ok((mechanism.invoke(&values).map_err(opendp)?, scale))
    }

    /// Refuses a run whose releases spent more than it is charged.
    fn within_budget(&self) -> Result<(), EngineError> {
        // The releases' shares of ε are rounded, each by far less than this.
        if self.spent > self.charged * (1.0 + 1e-6) {
            return Err(EngineError::Execution(format!(
                "the releases would spend ε = {}, more than the {} charged",
                self.spent, self.charged
            )));
        }
        Ok(())
    }
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
