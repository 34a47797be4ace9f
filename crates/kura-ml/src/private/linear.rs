//! The statistics behind a differentially private linear model: sufficient-statistics
//! perturbation (see Wang, "Revisiting differentially private linear regression", NeurIPS
//! 2018, for its analysis).
//!
//! Each feature and the label are clamped to public bounds and mapped onto [-1, 1]; with a
//! constant 1 for the intercept, a row `x` (m = features + 1 numbers) and its label `y` add
//! `x xᵀ` and `x y` to the two sums a least-squares fit needs, `XᵀX` and `Xᵀy`. Every entry a
//! row adds is in [-1, 1], so one row moves the released numbers (the upper triangle of `XᵀX`,
//! then `Xᵀy`: m(m+1)/2 + m of them) by at most that many in L1, and a person with at most `k`
//! rows by `k` times that: [`Statistics::l1_sensitivity`]. The engine adds Laplace noise of
//! that sensitivity to the numbers (OpenDP) and only then solves ([`Statistics::model`]),
//! which is post-processing: a ridge term public in size keeps the noisy `XᵀX` solvable, and
//! the weights become a model on raw values.

use linfa_linalg::cholesky::SolveC;
use ndarray::{Array1, Array2};
use rand::SeedableRng;

use crate::{Family, MlError, Model, TrainingSet};

/// The sums of a linear fit on clamped, scaled rows, before any noise.
#[derive(Clone, Debug)]
pub struct Statistics {
    features: Vec<String>,
    bounds: Vec<[f64; 2]>,
    label: [f64; 2],
    /// The upper triangle of `XᵀX` row by row, then `Xᵀy`; the constant column last.
    pub values: Vec<f64>,
    /// How far one person's rows can move [`Statistics::values`], in L1.
    pub l1_sensitivity: f64,
}

/// The sums of `set`'s rows, each feature clamped to its `bounds` and the label to `label`
/// (`[low, high]`), where one person gave at most `rows_per_person` rows.
pub fn statistics(
    set: &TrainingSet,
    bounds: &[[f64; 2]],
    label: [f64; 2],
    rows_per_person: u64,
) -> Result<Statistics, MlError> {
    let (_, p) = set.x.dim();
    let usable = |[lo, hi]: [f64; 2]| lo < hi && lo.is_finite() && hi.is_finite();
    if bounds.len() != p || !bounds.iter().copied().all(usable) || !usable(label) {
        return Err(MlError::Data(
            "each feature and the label need bounds low < high".into(),
        ));
    }
    if rows_per_person == 0 {
        return Err(MlError::Data(
            "a private fit needs a bound on rows per person".into(),
        ));
    }
    let m = p + 1;
    let mut gram = vec![0.0; m * (m + 1) / 2];
    let mut moment = vec![0.0; m];
    let mut row = vec![1.0; m];
    for (x, y) in set.x.rows().into_iter().zip(&set.y) {
        for ((r, v), b) in row.iter_mut().zip(x).zip(bounds) {
            *r = unit(*v, *b);
        }
        let y = unit(*y, label);
        let mut at = 0;
        for i in 0..m {
            for j in i..m {
                gram[at] += row[i] * row[j];
                at += 1;
            }
            moment[i] += row[i] * y;
        }
    }
    gram.extend(moment);
    let entries = gram.len();
    Ok(Statistics {
        features: set.features.clone(),
        bounds: bounds.to_vec(),
        label,
        values: gram,
        l1_sensitivity: rows_per_person as f64 * entries as f64,
    })
}

/// `v` clamped to `[lo, hi]` and mapped onto [-1, 1]; a value that is not a number goes to the
/// middle.
fn unit(v: f64, [lo, hi]: [f64; 2]) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        2.0 * (v.clamp(lo, hi) - lo) / (hi - lo) - 1.0
    }
}

impl Statistics {
    fn width(&self) -> usize {
        self.features.len() + 1
    }

    /// The ridge added to the noisy `XᵀX` when the noise has Laplace `scale`: about twice
    /// the largest eigenvalue of the noise matrix (a symmetric m×m matrix of entries with
    /// standard deviation √2·scale has its norm near 2√(2m)·scale), so that what is solved
    /// stays positive definite. Public: it depends on the noise's scale only.
    fn ridge(&self, scale: f64) -> f64 {
        4.0 * (2.0 * self.width() as f64).sqrt() * scale
    }

    /// The weights on scaled rows (features, then the constant) that solve the normal
    /// equations of `values` (noised or not) with a ridge for noise of `scale`; where that
    /// is not positive definite, the ridge is doubled until it is.
    fn weights(&self, values: &[f64], scale: f64) -> Result<Array1<f64>, MlError> {
        let m = self.width();
        let mut a = Array2::zeros((m, m));
        let mut at = 0;
        for i in 0..m {
            for j in i..m {
                a[[i, j]] = values[at];
                a[[j, i]] = values[at];
                at += 1;
            }
        }
        let b = Array2::from_shape_vec((m, 1), values[at..at + m].to_vec())
            .map_err(|e| MlError::Fit(e.to_string()))?;
        let mut ridge = self.ridge(scale).max(1e-9);
        for _ in 0..64 {
            let mut penalised = a.clone();
            for i in 0..m {
                penalised[[i, i]] += ridge;
            }
            if let Ok(w) = penalised.solvec(&b)
                && w.iter().all(|v| v.is_finite())
            {
                return Ok(w.column(0).to_owned());
            }
            ridge *= 2.0;
        }
        Err(MlError::Fit(
            "the normal equations could not be solved".into(),
        ))
    }

    /// The model on raw values that the weights solving `values` (noised with Laplace noise
    /// of `scale`, or exact with 0) give: the intercept and one coefficient per feature, valid
    /// inside the bounds.
    pub fn model(&self, values: &[f64], scale: f64) -> Result<Model, MlError> {
        Ok(self.on_raw_values(&self.weights(values, scale)?))
    }

    /// `w` (scaled features, then the constant; a scaled label) as a model on raw values:
    /// x' = a·x + c with a = 2/(hi - lo) and c = -2lo/(hi - lo) - 1, and y = lo_y + (y' + 1)·h
    /// with h = (hi_y - lo_y)/2.
    fn on_raw_values(&self, w: &Array1<f64>) -> Model {
        let p = self.features.len();
        let [lo_y, hi_y] = self.label;
        let h = (hi_y - lo_y) / 2.0;
        let mut intercept = w[p];
        let mut coefficients = Vec::with_capacity(p);
        for ((name, [lo, hi]), w) in self.features.iter().zip(&self.bounds).zip(w) {
            coefficients.push((name.clone(), h * w * 2.0 / (hi - lo)));
            intercept += w * (-2.0 * lo / (hi - lo) - 1.0);
        }
        Model {
            family: Family::Linear,
            intercept: lo_y + h * (intercept + 1.0),
            coefficients,
            metrics: Vec::new(),
        }
    }

    /// The standard deviation of each term (the intercept, then each feature) of the model
    /// `noisy` gives, when its numbers carry Laplace noise of `scale`: estimated by solving
    /// `draws` times with fresh noise of that scale added to `noisy`. It reads nothing but the
    /// released numbers and public settings, so it is post-processing too.
    pub fn noise_sd(&self, noisy: &[f64], scale: f64, draws: usize) -> Vec<(String, f64)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut terms: Vec<Vec<f64>> = Vec::new();
        for _ in 0..draws {
            let moved = super::simulated_laplace(&mut rng, noisy, scale);
            if let Ok(m) = self.model(&moved, scale) {
                let mut t = vec![m.intercept];
                t.extend(m.coefficients.iter().map(|(_, c)| *c));
                terms.push(t);
            }
        }
        let names = std::iter::once("intercept".to_string()).chain(self.features.iter().cloned());
        names
            .enumerate()
            .map(|(j, name)| {
                let values: Vec<f64> = terms.iter().map(|t| t[j]).collect();
                let n = values.len().max(2) as f64;
                let mean = values.iter().sum::<f64>() / n;
                let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
                (name, var.sqrt())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    use super::*;

    const BOUNDS: [[f64; 2]; 2] = [[0.0, 100.0], [0.0, 1.0]];
    const LABEL: [f64; 2] = [0.0, 1000.0];

    /// `n` rows of y = 50 + 3·a + 200·b + noise.
    fn set(n: usize, seed: u64) -> TrainingSet {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x = Array2::from_shape_fn((n, 2), |(_, j)| match j {
            0 => rng.r#gen::<f64>() * 100.0,
            _ => f64::from(u8::from(rng.r#gen::<f64>() < 0.4)),
        });
        let y = x
            .rows()
            .into_iter()
            .map(|r| 50.0 + 3.0 * r[0] + 200.0 * r[1] + (rng.r#gen::<f64>() - 0.5) * 20.0)
            .collect();
        TrainingSet {
            features: vec!["a".into(), "b".into()],
            x,
            y,
            owners: Default::default(),
        }
    }

    /// Without noise and with a negligible ridge, the statistics solve to the least-squares
    /// fit that generated the rows, on raw values.
    #[test]
    fn without_noise_the_statistics_solve_to_the_generating_model() {
        let s = statistics(&set(20_000, 1), &BOUNDS, LABEL, 1).unwrap();
        let m = s.model(&s.values, 0.0).unwrap();
        assert!((m.intercept - 50.0).abs() < 1.0, "{m:?}");
        assert!((m.coefficients[0].1 - 3.0).abs() < 0.02, "{m:?}");
        assert!((m.coefficients[1].1 - 200.0).abs() < 1.0, "{m:?}");
        assert_eq!(s.values.len(), 6 + 3);
        assert_eq!(s.l1_sensitivity, 9.0);
    }

    /// The reported noise is about the spread of the model over independent noise draws.
    #[test]
    fn the_reported_noise_is_the_spread_of_noisy_models() {
        let s = statistics(&set(5_000, 2), &BOUNDS, LABEL, 1).unwrap();
        let scale = s.l1_sensitivity / 1.0;
        let reported = s.noise_sd(&s.values, scale, 400);
        let spread = s.noise_sd(&s.values, scale, 400);
        assert_eq!(reported, spread, "the estimate is deterministic");
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut coefficient = Vec::new();
        for _ in 0..400 {
            let noisy = crate::private::simulated_laplace(&mut rng, &s.values, scale);
            coefficient.push(s.model(&noisy, scale).unwrap().coefficients[0].1);
        }
        let mean = coefficient.iter().sum::<f64>() / 400.0;
        let sd = (coefficient.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / 399.0).sqrt();
        let ratio = reported[1].1 / sd;
        assert!((0.5..2.0).contains(&ratio), "{reported:?} against {sd}");
    }

    proptest! {
        /// One person's rows, however extreme, move the released numbers by at most the
        /// sensitivity in L1.
        #[test]
        fn one_persons_rows_move_the_sums_within_the_sensitivity(
            k in 1u64..5,
            extreme in prop::collection::vec((-1e6f64..1e6, -1e6f64..1e6, -1e7f64..1e7), 1..5),
        ) {
            let base = set(50, 3);
            let without = statistics(&base, &BOUNDS, LABEL, k).unwrap();
            let mut x = base.x.clone();
            let mut y = base.y.to_vec();
            for (a, b, label) in extreme.iter().take(k as usize) {
                x.push_row(ndarray::ArrayView1::from(&[*a, *b])).unwrap();
                y.push(*label);
            }
            let with = TrainingSet { x, y: Array1::from(y), ..base };
            let with = statistics(&with, &BOUNDS, LABEL, k).unwrap();
            let moved: f64 = with.values.iter().zip(&without.values).map(|(a, b)| (a - b).abs()).sum();
            prop_assert!(moved <= without.l1_sensitivity + 1e-9, "moved {moved}");
        }
    }

    #[test]
    fn what_a_private_fit_cannot_take_is_refused() {
        let s = set(10, 4);
        assert!(statistics(&s, &BOUNDS[..1], LABEL, 1).is_err());
        assert!(statistics(&s, &BOUNDS, [1.0, 1.0], 1).is_err());
        assert!(statistics(&s, &[[0.0, f64::INFINITY], [0.0, 1.0]], LABEL, 1).is_err());
        assert!(statistics(&s, &BOUNDS, LABEL, 0).is_err());
    }
}
