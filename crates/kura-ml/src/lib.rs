//! Model training inside the enclave, on a training set the engine assembled under the
//! contract's rules (`kura_engine::model`).
//!
//! Only families whose parameters summarise many people at once are offered: linear regression
//! (ordinary least squares) and logistic regression (L2-regularised), both fitted by linfa,
//! and classification trees ([`tree`]: linfa's CART, split only at public cut points, every
//! leaf over at least a minimum of people). None can store a person's row in its parameters
//! the way a nearest-neighbour model or an unpruned tree can; what a receiver gets is one
//! coefficient per feature and an intercept, or a tree's leaf rates, and the model's quality
//! on rows it did not see.
//!
//! Features are standardised before fitting (the solver then converges on any units, and the
//! penalty weighs every feature alike) and the coefficients converted back, so that a receiver
//! applies them to raw values: `intercept + Σ coefficient × value`, through the logistic
//! function for a logistic model. A share of the rows, drawn at random inside the enclave, is
//! held out of the fit, and the model is measured on it.

pub mod onnx;
pub mod private;
mod rowwise;
mod support;
pub mod tree;

pub use support::{Owners, Person};

use linfa::prelude::*;
use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;

/// A model family a contract may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Ordinary least squares on a numeric label.
    Linear,
    /// Two-class logistic regression; the label is 0/1 (or false/true), and the model gives the
    /// probability of 1.
    Logistic,
}

/// The settings a contract fixes for a training run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub family: Family,
    /// Share of rows held out of the fit and used to measure the model, in `[0, 0.5]`.
    pub holdout: f64,
    /// L2 penalty of a logistic model, on standardised features (`alpha` in linfa).
    pub l2: f64,
    /// Solver iterations of a logistic model.
    pub max_iterations: u64,
    /// The most a fitted row may weigh in the fit (its leverage, the diagonal of the hat
    /// matrix): `1 / min_group_size`, so that no row moves the model as more than one of
    /// `min_group_size` rows would. `None`: not checked (trees, which have their leaf rule).
    pub max_leverage: Option<f64>,
    /// The fewest people of each dataset the fitted rows, each side of each feature (0 and
    /// not 0) and the held-out rows may rest on, unless none (`support`): `min_group_size`.
    /// `None`: not checked.
    pub min_people: Option<usize>,
}

/// The rows to learn from: `x` has one row per example and one column per feature, in the
/// order of `features`; `y` has the labels.
#[derive(Debug)]
pub struct TrainingSet {
    pub features: Vec<String>,
    pub x: Array2<f64>,
    pub y: Array1<f64>,
    /// For each row, the people it belongs to (one per dataset it joins, numbered by the
    /// caller); a row without any (or all of them, when empty) is a person of its own. The
    /// leverage bound holds per person, and the support rules count people.
    pub owners: Owners,
}

/// A trained model: what its receivers get.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub family: Family,
    pub intercept: f64,
    /// One coefficient per feature, on the features' own scale.
    pub coefficients: Vec<(String, f64)>,
    /// Measures on the held-out rows (absent without any): for a linear model `holdout_r2`
    /// and `holdout_rmse`; for a logistic one `holdout_accuracy`, `holdout_auc` and
    /// `holdout_log_loss`.
    pub metrics: Vec<(String, f64)>,
}

impl Model {
    /// The model's prediction for one row of raw feature values: the label's expected value
    /// (linear) or the probability that it is 1 (logistic).
    pub fn predict(&self, row: &[f64]) -> f64 {
        let z = self.intercept
            + self
                .coefficients
                .iter()
                .zip(row)
                .map(|((_, w), x)| w * x)
                .sum::<f64>();
        match self.family {
            Family::Linear => z,
            Family::Logistic => 1.0 / (1.0 + (-z).exp()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MlError {
    /// The training set cannot give a model (too few rows, one class, a constant feature).
    #[error("{0}")]
    Data(String),
    /// The solver failed.
    #[error("training failed: {0}")]
    Fit(String),
}

/// Trains a model of `settings.family` on `set`. A logistic model's label is 1 (the class it
/// gives the probability of) or anything else (the other): a label of another value is not a
/// refusal, which would tell that someone has it.
pub fn train(set: &TrainingSet, settings: &Settings) -> Result<Model, MlError> {
    let (n, p) = set.x.dim();
    if n != set.y.len() {
        return Err(MlError::Data("features and labels differ in length".into()));
    }
    finite(set)?;
    let labels = match settings.family {
        Family::Linear => set.y.clone(),
        Family::Logistic => set.y.mapv(|v| f64::from(u8::from(v == 1.0))),
    };
    // Under the people rules every refusal that depends on the rows is the same one.
    let refuse = |specific: MlError| settings.min_people.map_or(specific, support::thin);
    let (tested, trained) = hold_out(n, settings.holdout)?;
    let x = set.x.select(Axis(0), &trained);
    let y = labels.select(Axis(0), &trained);
    let fitted = set.owners.of_rows(&trained);
    let held = set.owners.of_rows(&tested);
    // The fitted rows' people, numbered once for the support counts and the leverage bound.
    let numbered = std::cell::OnceCell::new();
    let people = || numbered.get_or_init(|| support::People::of(&fitted));
    if let Some(k) = settings.min_people {
        support::check_fitted(x.view(), y.view(), &fitted, people(), k)?;
        support::check_held_out(&held, k)?;
    }
    let rows = trained.len();
    if rows <= p + 1 {
        // Not how many: a refusal must not count a few people's rows.
        return Err(refuse(MlError::Data(format!(
            "too few training rows to fit {} parameters",
            p + 1
        ))));
    }
    let scale = Scale::of(&x).map_err(refuse)?;
    let standard = scale.apply(&x);
    if let Some(most) = settings.max_leverage {
        bounded_leverage(&standard, &fitted, people(), most).map_err(refuse)?;
    }
    if settings.family == Family::Logistic {
        let ones = y.iter().filter(|v| **v == 1.0).count();
        if ones == 0 || ones == y.len() {
            return Err(refuse(MlError::Data(
                "the training rows hold one class only: a logistic model needs both".into(),
            )));
        }
    }
    let (intercept, weights) = match settings.family {
        Family::Linear => {
            let fitted = linfa_linear::LinearRegression::new()
                .with_intercept(true)
                .fit(&DatasetBase::new(standard, y))
                .map_err(|e| MlError::Fit(e.to_string()))?;
            (fitted.intercept(), fitted.params().to_owned())
        }
        Family::Logistic => logistic(standard, &y, settings)?,
    };
    let (intercept, coefficients) = scale.unapply(intercept, &weights);
    let mut model = Model {
        family: settings.family,
        intercept,
        coefficients: set.features.iter().cloned().zip(coefficients).collect(),
        metrics: Vec::new(),
    };
    if !tested.is_empty() {
        model.metrics = measure(
            &model,
            &set.x.select(Axis(0), &tested),
            &labels.select(Axis(0), &tested),
        );
    }
    Ok(model)
}

/// Refuses fitted rows of which one person's weigh more than `most` together, within the rows
/// of the person's own dataset (`owners[i]`: the people row `i` belongs to, as (dataset,
/// person)); and rows whose features are collinear, where the fit has no single answer.
///
/// A row's weight is its leverage, `hᵢ = x̃ᵢᵀ (X̃ᵀX̃)⁺ x̃ᵢ` with `x̃ᵢ` the row's standardised
/// features and a 1 for the intercept, summed over the rows of each person. A row far from the
/// others in some direction (one person's outlying amount, or the only rows of a combination
/// of features, however many there are) has a leverage near 1: the fit passes through it, and
/// the model gives that person's label away. The leverage is taken within each dataset's rows
/// (`X̃` its rows only; the pseudo-inverse where its rows span fewer directions than the
/// features): another dataset's rows in the same cell, which their provider knows, would
/// lower the person's share of the pooled fit without hiding anything from that provider. A
/// person's rows within their dataset add up to at most the number of parameters, and all of
/// a dataset's to its rank: every dataset needs well over `(features + 1) / most` people.
fn bounded_leverage(
    standard: &Array2<f64>,
    owners: &support::Rows<'_>,
    slots: &support::People,
    most: f64,
) -> Result<(), MlError> {
    use linfa_linalg::eigh::Eigh;
    let (n, p) = standard.dim();
    let width = p + 1;
    let datasets = owners.datasets();
    let values = standard
        .as_slice()
        .ok_or_else(|| MlError::Fit("standardised rows are not contiguous".into()))?;
    // Each row with a 1 in front, into `x`.
    let fill = |i: usize, x: &mut [f64]| {
        x[0] = 1.0;
        x[1..].copy_from_slice(&values[i * p..(i + 1) * p]);
    };
    // One pass: the pooled rows' X̃ᵀX̃ (upper triangle, row-major), and each dataset's.
    let mut grams = vec![vec![0.0; width * width]; datasets + 1];
    let add = |gram: &mut [f64], x: &[f64]| {
        for a in 0..width {
            let (xa, row) = (x[a], &mut gram[a * width..(a + 1) * width]);
            for b in a..width {
                row[b] += xa * x[b];
            }
        }
    };
    let mut x = vec![0.0; width];
    for i in 0..n {
        fill(i, &mut x);
        add(&mut grams[datasets], &x);
        let mut last = usize::MAX;
        for (d, _) in owners.people(i) {
            // A row counts once in a dataset, however many of its people it names there.
            if d as usize != last {
                add(&mut grams[d as usize], &x);
                last = d as usize;
            }
        }
    }
    // The pseudo-inverse of a symmetric `gram` (upper triangle given), flat, and its rank;
    // directions under a tolerance of the largest are none.
    let pseudo_inverse = |gram: &[f64]| -> Result<(Vec<f64>, usize), MlError> {
        let full =
            Array2::from_shape_fn((width, width), |(a, b)| gram[a.min(b) * width + a.max(b)]);
        let (values, vectors) = full
            .eigh()
            .map_err(|_| MlError::Data("the features' spread could not be measured".into()))?;
        let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut inverse = vec![0.0; width * width];
        let mut rank = 0;
        for (j, &v) in values.iter().enumerate() {
            if v > largest * 1e-10 && v > 0.0 {
                rank += 1;
                let u = vectors.column(j);
                for a in 0..width {
                    for b in 0..width {
                        inverse[a * width + b] += u[a] * u[b] / v;
                    }
                }
            }
        }
        Ok((inverse, rank))
    };
    if pseudo_inverse(&grams[datasets])?.1 < width {
        return Err(MlError::Data(
            "the features are collinear in the training rows".into(),
        ));
    }
    let inverses = grams[..datasets]
        .iter()
        .map(|g| pseudo_inverse(g).map(|(inverse, _)| inverse))
        .collect::<Result<Vec<_>, _>>()?;
    // Each row's leverage within each dataset it belongs to, summed per person.
    let mut sums = vec![0.0f64; slots.len()];
    let mut heaviest = 0.0f64;
    for i in 0..n {
        fill(i, &mut x);
        let mut last = (usize::MAX, 0.0);
        for person in owners.people(i) {
            let d = person.0 as usize;
            if d != last.0 {
                let inverse = &inverses[d];
                let h: f64 = (0..width)
                    .map(|a| {
                        let row = &inverse[a * width..(a + 1) * width];
                        x[a] * row.iter().zip(&x).map(|(m, v)| m * v).sum::<f64>()
                    })
                    .sum();
                last = (d, h);
            }
            let h = last.1;
            let sum = &mut sums[slots.slot(person)];
            *sum += h;
            heaviest = heaviest.max(*sum);
            if !h.is_finite() {
                heaviest = f64::INFINITY;
            }
        }
    }
    if heaviest > most {
        // Not whose rows, nor how heavy: a refusal must not point at anyone.
        return Err(MlError::Data(format!(
            "one person's training rows would weigh more than {most:.3} of the fit (their \
             leverage): that person's values would shape the model; fit on more people, or \
             leave out the feature values few people have"
        )));
    }
    Ok(())
}

/// Refuses a training set with a value that is not a finite number.
fn finite(set: &TrainingSet) -> Result<(), MlError> {
    if set.x.iter().chain(set.y.iter()).any(|v| !v.is_finite()) {
        return Err(MlError::Data(
            "the training set holds a value that is not a finite number".into(),
        ));
    }
    Ok(())
}

/// `n` rows dealt at random into those held out to measure the model (a `share` of them) and
/// those it is fitted on. The draw is made inside the enclave, afresh for every run.
fn hold_out(n: usize, share: f64) -> Result<(Vec<usize>, Vec<usize>), MlError> {
    use rand::Rng;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| MlError::Fit(format!("no randomness: {e}")))?;
    let mut rng = rand::rngs::StdRng::from_seed(seed);
    // Selection sampling: each row is held out with the chance that exactly `held` of the
    // rows are, drawn in order, so that both lists come out in the rows' order.
    let mut held = (n as f64 * share).round() as usize;
    let (mut tested, mut trained) = (Vec::with_capacity(held), Vec::with_capacity(n - held));
    for i in 0..n {
        if rng.gen_range(0..n - i) < held {
            tested.push(i);
            held -= 1;
        } else {
            trained.push(i);
        }
    }
    Ok((tested, trained))
}

/// A logistic fit on standardised features: the intercept and weights of the log-odds of 1.
fn logistic(
    standard: Array2<f64>,
    y: &Array1<f64>,
    settings: &Settings,
) -> Result<(f64, Array1<f64>), MlError> {
    // linfa takes the labels as classes; it calls the more frequent class "positive" and
    // models the log-odds of that one, whatever its value.
    let classes = y.mapv(|v| v == 1.0);
    let fitted = linfa_logistic::LogisticRegression::default()
        .alpha(settings.l2)
        .max_iterations(settings.max_iterations)
        .with_intercept(true)
        .fit(&DatasetBase::new(standard, classes))
        .map_err(|e| MlError::Fit(e.to_string()))?;
    let (intercept, weights) = (fitted.intercept(), fitted.params().to_owned());
    Ok(if fitted.labels().pos.class {
        (intercept, weights)
    } else {
        // The log-odds of 0 are minus those of 1.
        (-intercept, -weights)
    })
}

/// Each feature's mean and standard deviation over the training rows.
struct Scale {
    mean: Array1<f64>,
    sd: Array1<f64>,
}

impl Scale {
    fn of(x: &Array2<f64>) -> Result<Self, MlError> {
        let mean = x
            .mean_axis(Axis(0))
            .ok_or_else(|| MlError::Data("no training rows".into()))?;
        let sd = x.std_axis(Axis(0), 0.0);
        if let Some(j) = sd.iter().position(|s| *s == 0.0 || !s.is_finite()) {
            return Err(MlError::Data(format!(
                "feature {} is the same in every training row",
                j + 1
            )));
        }
        Ok(Self { mean, sd })
    }

    fn apply(&self, x: &Array2<f64>) -> Array2<f64> {
        (x - &self.mean) / &self.sd
    }

    /// The intercept and coefficients on raw values of a model fitted on standardised ones.
    fn unapply(&self, intercept: f64, weights: &Array1<f64>) -> (f64, Vec<f64>) {
        let raw = weights / &self.sd;
        (intercept - raw.dot(&self.mean), raw.to_vec())
    }
}

/// The model's quality on the held-out rows. A measure that is not a number (an AUC with one
/// class held out) is left out.
fn measure(model: &Model, x: &Array2<f64>, y: &Array1<f64>) -> Vec<(String, f64)> {
    let predicted: Array1<f64> = x
        .rows()
        .into_iter()
        .map(|r| model.predict(&r.to_vec()))
        .collect();
    let mut out = Vec::new();
    match model.family {
        Family::Linear => {
            if let Ok(r2) = predicted.r2(y) {
                out.push(("holdout_r2".to_string(), r2));
            }
            if let Ok(mse) = predicted.mean_squared_error(y) {
                out.push(("holdout_rmse".to_string(), mse.sqrt()));
            }
        }
        Family::Logistic => return measure_binary(&predicted.to_vec(), y),
    }
    out.retain(|(_, v)| v.is_finite());
    out
}

/// The quality of probabilities `predicted` of labels `y` (0 or 1): accuracy at 0.5, the area
/// under the ROC curve and the log loss, leaving out a measure that is not a number.
fn measure_binary(predicted: &[f64], y: &Array1<f64>) -> Vec<(String, f64)> {
    let truth: Vec<bool> = y.iter().map(|v| *v == 1.0).collect();
    let correct = predicted
        .iter()
        .zip(&truth)
        .filter(|(p, t)| (**p >= 0.5) == **t)
        .count();
    let mut out = vec![(
        "holdout_accuracy".to_string(),
        correct as f64 / truth.len() as f64,
    )];
    let probabilities: Vec<Pr> = predicted.iter().map(|p| Pr::new(*p as f32)).collect();
    if let Ok(roc) = probabilities.as_slice().roc(truth.as_slice()) {
        out.push(("holdout_auc".to_string(), f64::from(roc.area_under_curve())));
    }
    if let Ok(loss) = probabilities.as_slice().log_loss(truth.as_slice()) {
        out.push(("holdout_log_loss".to_string(), f64::from(loss)));
    }
    out.retain(|(_, v)| v.is_finite());
    out
}

#[cfg(test)]
mod tests;
