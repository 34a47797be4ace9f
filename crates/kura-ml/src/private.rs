//! The fit behind a differentially private logistic model: output perturbation (Chaudhuri,
//! Monteleoni and Sarwate, "Differentially Private Empirical Risk Minimization", JMLR 2011).
//!
//! Each feature is clamped to bounds the contract makes public and mapped onto [-1, 1]; with a
//! constant column for the intercept, every row is divided by √(k + 1), so that no row is
//! longer than 1. On such rows the logistic loss is 1-Lipschitz in the weights, and the
//! objective linfa minimises, `Σ loss + (α/2)‖w‖²` with the intercept a penalised weight like
//! any other, is α-strongly convex. Adding or removing one person, with at most `m` rows,
//! then moves the minimiser by at most `m/α` in L2, hence by at most `√(k + 1)·m/α` in L1:
//! [`BoundedFit::l1_sensitivity`]. The engine adds Laplace noise of that sensitivity to the
//! weights (OpenDP) and only then turns them into a model on raw values ([`BoundedFit::model`]),
//! which is post-processing.
//!
//! The guarantee assumes the exact minimiser; the solver stops at its gradient tolerance or
//! its iteration limit, which the contract fixes.

use linfa::prelude::*;
use ndarray::{Array1, Array2};

use crate::{Family, MlError, Model, TrainingSet};

pub mod linear;
pub mod tree;

/// `values` with Laplace noise of `scale` added to each, drawn from `rng` by the inverse of its
/// distribution function. Never a release (the engine's noise is OpenDP's): what the noise
/// estimates of post-processing, and tests, simulate.
pub(crate) fn simulated_laplace(rng: &mut impl rand::Rng, values: &[f64], scale: f64) -> Vec<f64> {
    values
        .iter()
        .map(|v| {
            let u: f64 = rng.r#gen::<f64>() - 0.5;
            v - scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
        })
        .collect()
}

/// How a private fit releases numbers: `values`, exact, come back with noise for an L1
/// sensitivity of `sensitivity` (one person's rows move them by at most that much), spending
/// `epsilon`. The engine gives OpenDP's Laplace mechanism, and counts what is spent.
pub type Release<'a> = dyn FnMut(Vec<f64>, f64, f64) -> Result<Vec<f64>, MlError> + 'a;

/// A logistic fit on clamped, scaled rows: its weights before any noise.
#[derive(Clone, Debug)]
pub struct BoundedFit {
    features: Vec<String>,
    bounds: Vec<[f64; 2]>,
    /// One weight per feature, then the constant's, on the scaled rows.
    pub weights: Vec<f64>,
    /// How far one person's rows can move [`BoundedFit::weights`], in L1.
    pub l1_sensitivity: f64,
}

/// Fits an L2-penalised logistic model on `set`, each feature clamped to its `bounds`
/// (`[low, high]`, in the order of the features), where one person gave at most
/// `rows_per_person` rows.
pub fn fit_bounded_logistic(
    set: &TrainingSet,
    bounds: &[[f64; 2]],
    rows_per_person: u64,
    l2: f64,
    max_iterations: u64,
) -> Result<BoundedFit, MlError> {
    let (n, k) = set.x.dim();
    if bounds.len() != k
        || bounds
            .iter()
            .any(|[lo, hi]| !(lo < hi && lo.is_finite() && hi.is_finite()))
    {
        return Err(MlError::Data("each feature needs bounds low < high".into()));
    }
    if !(l2.is_finite() && l2 > 0.0) || rows_per_person == 0 {
        return Err(MlError::Data(
            "a private fit needs a positive l2 penalty and rows per person".into(),
        ));
    }
    // A label is 1 or not (the other class): a refusal of another value, made on the exact
    // rows, would tell that someone has it.
    let root = ((k + 1) as f64).sqrt();
    // Two more rows, all zeros, one of each class: their loss is a constant and its gradient
    // is zero, so the minimiser stays exactly the training rows'. They keep linfa fitting when
    // the training rows hold one class only (it refuses that), where a refusal, or a stand-in
    // answer, would tell the receivers what the noise should hide.
    let mut scaled = Array2::zeros((n + 2, k + 1));
    for (i, row) in set.x.rows().into_iter().enumerate() {
        for (j, (v, [lo, hi])) in row.iter().zip(bounds).enumerate() {
            // A value that is not a number is put at the middle of its range.
            let v = if v.is_nan() {
                (lo + hi) / 2.0
            } else {
                v.clamp(*lo, *hi)
            };
            scaled[[i, j]] = (2.0 * (v - lo) / (hi - lo) - 1.0) / root;
        }
        scaled[[i, k]] = 1.0 / root;
    }
    let classes: Array1<bool> = set
        .y
        .iter()
        .map(|v| *v == 1.0)
        .chain([true, false])
        .collect();
    let fitted = linfa_logistic::LogisticRegression::default()
        .alpha(l2)
        .max_iterations(max_iterations)
        .with_intercept(false)
        .fit(&DatasetBase::new(scaled, classes))
        .map_err(|e| MlError::Fit(e.to_string()))?;
    let w = fitted.params().to_vec();
    // linfa models the log-odds of the more frequent class.
    let weights = if fitted.labels().pos.class {
        w
    } else {
        w.into_iter().map(|v| -v).collect()
    };
    Ok(BoundedFit {
        features: set.features.clone(),
        bounds: bounds.to_vec(),
        weights,
        l1_sensitivity: root * rows_per_person as f64 / l2,
    })
}

impl BoundedFit {
    /// The model on raw values whose scaled-row weights are `weights` (noised or not): the
    /// intercept and one coefficient per feature, valid inside the bounds.
    pub fn model(&self, weights: &[f64]) -> Model {
        let k = self.features.len();
        let root = ((k + 1) as f64).sqrt();
        let mut intercept = weights[k];
        let mut coefficients = Vec::with_capacity(k);
        for ((name, [lo, hi]), w) in self.features.iter().zip(&self.bounds).zip(weights) {
            // (2(x - lo)/(hi - lo) - 1)/√(k+1) = 2x/((hi - lo)√(k+1)) - (2lo/(hi - lo) + 1)/√(k+1)
            coefficients.push((name.clone(), 2.0 * w / ((hi - lo) * root)));
            intercept -= w * (2.0 * lo / (hi - lo) + 1.0);
        }
        Model {
            family: Family::Logistic,
            intercept: intercept / root,
            coefficients,
            metrics: Vec::new(),
        }
    }

    /// The standard deviation of the noise each term of [`BoundedFit::model`] carries when
    /// every weight got independent Laplace noise of `scale` (variance 2·scale²), by term:
    /// the intercept, then each feature.
    pub fn noise_sd(&self, scale: f64) -> Vec<(String, f64)> {
        let root = ((self.features.len() + 1) as f64).sqrt();
        let sd = std::f64::consts::SQRT_2 * scale;
        let mut intercept = 1.0;
        let mut terms = Vec::with_capacity(self.features.len() + 1);
        for (name, [lo, hi]) in self.features.iter().zip(&self.bounds) {
            terms.push((name.clone(), sd * 2.0 / ((hi - lo) * root)));
            intercept += (2.0 * lo / (hi - lo) + 1.0).powi(2);
        }
        terms.insert(0, ("intercept".to_string(), sd * intercept.sqrt() / root));
        terms
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn set(n: usize, seed: u64) -> TrainingSet {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x = Array2::from_shape_fn((n, 2), |(_, j)| match j {
            0 => rng.r#gen::<f64>() * 1000.0,
            _ => f64::from(u8::from(rng.r#gen::<f64>() < 0.3)),
        });
        let y = x
            .rows()
            .into_iter()
            .map(|r| {
                let z = -3.0 + 0.004 * r[0] + 1.5 * r[1];
                f64::from(u8::from(rng.r#gen::<f64>() < 1.0 / (1.0 + (-z).exp())))
            })
            .collect();
        TrainingSet {
            features: vec!["amount".into(), "night".into()],
            x,
            y,
            owners: Default::default(),
        }
    }

    /// Without noise, the bounded fit is an ordinary penalised fit: on many rows and a small
    /// penalty it recovers the coefficients that generated them, on raw values.
    #[test]
    fn without_noise_the_bounded_fit_recovers_the_generating_model() {
        let s = set(20_000, 1);
        let fit = fit_bounded_logistic(&s, &[[0.0, 1000.0], [0.0, 1.0]], 1, 0.01, 200).unwrap();
        let m = fit.model(&fit.weights);
        assert!((m.intercept + 3.0).abs() < 0.3, "{m:?}");
        assert!((m.coefficients[0].1 - 0.004).abs() < 0.0008, "{m:?}");
        assert!((m.coefficients[1].1 - 1.5).abs() < 0.3, "{m:?}");
        // The model on raw values is the scaled fit: both give the same log-odds.
        let root = 3f64.sqrt();
        let row = [250.0, 1.0];
        let scaled = [(2.0 * 250.0 / 1000.0 - 1.0) / root, 1.0 / root, 1.0 / root];
        let z_scaled: f64 = scaled.iter().zip(&fit.weights).map(|(x, w)| x * w).sum();
        let p = m.predict(&row);
        assert!((p - 1.0 / (1.0 + (-z_scaled).exp())).abs() < 1e-12);
    }

    /// The noise reported on each term is what the weights' noise becomes through
    /// [`BoundedFit::model`]: each term is linear in the weights, so its variance is
    /// 2·scale² times the sum of its squared slopes, read off `model` itself.
    #[test]
    fn the_reported_noise_follows_the_model_the_weights_become() {
        let fit = fit_bounded_logistic(&set(300, 6), &[[-50.0, 1000.0], [0.0, 1.0]], 2, 1.0, 100)
            .unwrap();
        let terms = |m: &Model| {
            let mut t = vec![m.intercept];
            t.extend(m.coefficients.iter().map(|(_, c)| c));
            t
        };
        let base = terms(&fit.model(&fit.weights));
        let mut slopes = vec![0.0; base.len()];
        for j in 0..fit.weights.len() {
            let mut moved = fit.weights.clone();
            moved[j] += 1.0;
            for (s, (a, b)) in slopes
                .iter_mut()
                .zip(terms(&fit.model(&moved)).iter().zip(&base))
            {
                *s += (a - b).powi(2);
            }
        }
        let scale = 0.37;
        for ((name, sd), slope) in fit.noise_sd(scale).iter().zip(slopes) {
            let want = (2.0 * scale * scale * slope).sqrt();
            assert!(
                (sd - want).abs() < 1e-9 * want,
                "{name}: {sd} against {want}"
            );
        }
    }

    /// The sensitivity is what the analysis above says: √(k+1)·m/α.
    #[test]
    fn the_sensitivity_follows_rows_per_person_and_the_penalty() {
        let s = set(500, 2);
        let bounds = [[0.0, 1000.0], [0.0, 1.0]];
        let a = fit_bounded_logistic(&s, &bounds, 1, 1.0, 100).unwrap();
        let b = fit_bounded_logistic(&s, &bounds, 5, 0.5, 100).unwrap();
        assert!((a.l1_sensitivity - 3f64.sqrt()).abs() < 1e-12);
        assert!((b.l1_sensitivity - 3f64.sqrt() * 10.0).abs() < 1e-9);
    }

    /// One person's rows, added, move the weights by no more than the L2 bound m/α the
    /// sensitivity rests on, however extreme those rows are.
    #[test]
    fn one_persons_rows_move_the_weights_within_the_bound() {
        let bounds = [[0.0, 1000.0], [0.0, 1.0]];
        let (m, alpha) = (3u64, 2.0);
        let base = set(400, 3);
        let without = fit_bounded_logistic(&base, &bounds, m, alpha, 500).unwrap();
        for extreme in [[1e9, 1.0], [-5.0, 0.0], [999.0, 1.0]] {
            for label in [0.0, 1.0] {
                let mut x = base.x.clone();
                let mut y = base.y.to_vec();
                for _ in 0..m {
                    x.push_row(ndarray::ArrayView1::from(&extreme)).unwrap();
                    y.push(label);
                }
                let with = TrainingSet {
                    features: base.features.clone(),
                    x,
                    y: Array1::from(y),
                    owners: Default::default(),
                };
                let moved = fit_bounded_logistic(&with, &bounds, m, alpha, 500).unwrap();
                let l2: f64 = moved
                    .weights
                    .iter()
                    .zip(&without.weights)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(
                    l2 <= m as f64 / alpha + 1e-6,
                    "{extreme:?} {label}: moved {l2}"
                );
            }
        }
    }

    /// Rows of one class are fitted like any others (a refusal would tell the receivers), and
    /// so is a label other than 0 or 1: it is the other class.
    #[test]
    fn one_class_is_fitted_not_refused() {
        let mut odd = set(200, 5);
        odd.y[3] = 2.0;
        fit_bounded_logistic(&odd, &[[0.0, 1000.0], [0.0, 1.0]], 1, 1.0, 100).unwrap();
        let mut s = set(200, 5);
        s.y.fill(0.0);
        let fit = fit_bounded_logistic(&s, &[[0.0, 1000.0], [0.0, 1.0]], 1, 1.0, 100).unwrap();
        let m = fit.model(&fit.weights);
        assert!(m.predict(&[500.0, 0.0]) < 0.1, "{m:?}");
    }

    #[test]
    fn what_a_private_fit_cannot_take_is_refused() {
        let s = set(100, 4);
        assert!(fit_bounded_logistic(&s, &[[0.0, 1.0]], 1, 1.0, 10).is_err());
        assert!(fit_bounded_logistic(&s, &[[1.0, 0.0], [0.0, 1.0]], 1, 1.0, 10).is_err());
        assert!(fit_bounded_logistic(&s, &[[0.0, 1.0], [0.0, 1.0]], 1, 0.0, 10).is_err());
        assert!(fit_bounded_logistic(&s, &[[0.0, 1.0], [0.0, 1.0]], 0, 1.0, 10).is_err());
    }
}
