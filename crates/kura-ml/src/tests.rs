use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};

use super::*;

fn settings(family: Family, holdout: f64) -> Settings {
    Settings {
        family,
        holdout,
        l2: 1e-6,
        max_iterations: 200,
        max_leverage: None,
        min_people: None,
    }
}

/// `n` rows of two features on different scales (a few units and a few thousand).
fn features(rng: &mut impl Rng, n: usize) -> Array2<f64> {
    Array2::from_shape_fn((n, 2), |(_, j)| {
        if j == 0 {
            rng.r#gen::<f64>() * 10.0
        } else {
            1000.0 + rng.r#gen::<f64>() * 4000.0
        }
    })
}

fn set(x: Array2<f64>, y: Array1<f64>) -> TrainingSet {
    TrainingSet {
        features: vec!["a".into(), "b".into()],
        x,
        y,
        owners: Default::default(),
    }
}

/// The least-squares fit by the normal equations, solved here by Gaussian elimination: a
/// reference that shares no code with linfa.
fn normal_equations(x: &Array2<f64>, y: &Array1<f64>) -> Vec<f64> {
    let (n, p) = x.dim();
    let k = p + 1;
    let row = |i: usize| -> Vec<f64> {
        std::iter::once(1.0)
            .chain(x.row(i).iter().copied())
            .collect()
    };
    let mut a = vec![vec![0.0; k + 1]; k];
    for i in 0..n {
        let r = row(i);
        for u in 0..k {
            for v in 0..k {
                a[u][v] += r[u] * r[v];
            }
            a[u][k] += r[u] * y[i];
        }
    }
    for c in 0..k {
        let pivot = (c..k)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap();
        a.swap(c, pivot);
        let pivot_row = a[c].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot_row[c];
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(c) {
                    *x -= f * p;
                }
            }
        }
    }
    (0..k).map(|i| a[i][k] / a[i][i]).collect()
}

/// Without a holdout, the linear model is the least-squares fit, to rounding.
#[test]
fn a_linear_model_is_the_least_squares_fit() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let x = features(&mut rng, 500);
    let y: Array1<f64> = x
        .rows()
        .into_iter()
        .map(|r| 2.0 + 3.0 * r[0] - 0.004 * r[1] + (rng.r#gen::<f64>() - 0.5))
        .collect();
    let model = train(&set(x.clone(), y.clone()), &settings(Family::Linear, 0.0)).unwrap();
    let reference = normal_equations(&x, &y);
    let got: Vec<f64> = std::iter::once(model.intercept)
        .chain(model.coefficients.iter().map(|(_, w)| *w))
        .collect();
    for (g, r) in got.iter().zip(&reference) {
        assert!(
            (g - r).abs() <= 1e-9 * r.abs().max(1.0),
            "{got:?} against {reference:?}"
        );
    }
    assert!(
        model.metrics.is_empty(),
        "nothing held out, nothing measured"
    );
}

/// A logistic model recovers the coefficients that generated its data, on the features' own
/// scale, for a rare positive class (linfa models the more frequent class; kura gives the
/// log-odds of 1), and is measured on the held-out rows.
#[test]
fn a_logistic_model_recovers_the_log_odds_of_one() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let n = 40_000;
    let x = features(&mut rng, n);
    let (b0, b1, b2) = (-3.0, 0.4, -0.0006);
    let y: Array1<f64> = x
        .rows()
        .into_iter()
        .map(|r| {
            let p = 1.0 / (1.0 + (-(b0 + b1 * r[0] + b2 * r[1])).exp());
            f64::from(u8::from(rng.r#gen::<f64>() < p))
        })
        .collect();
    assert!(y.sum() < n as f64 / 4.0, "ones are the rare class");
    let model = train(&set(x, y), &settings(Family::Logistic, 0.2)).unwrap();
    let tolerance = [0.25, 0.03, 0.0001];
    let got = [
        model.intercept,
        model.coefficients[0].1,
        model.coefficients[1].1,
    ];
    for ((g, want), t) in got.iter().zip([b0, b1, b2]).zip(tolerance) {
        assert!((g - want).abs() <= t, "{got:?} against {:?}", [b0, b1, b2]);
    }
    let metric = |name: &str| {
        model
            .metrics
            .iter()
            .find(|(m, _)| m == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {:?}", model.metrics))
    };
    assert!(metric("holdout_auc") > 0.7);
    assert!((0.0..=1.0).contains(&metric("holdout_accuracy")));
    assert!(metric("holdout_log_loss") > 0.0);
}

/// Training sets that cannot give a model are refused with the reason.
#[test]
fn what_cannot_be_fitted_is_refused() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let x = features(&mut rng, 100);
    let zeros = Array1::zeros(100);
    let refused = |set: TrainingSet, family| match train(&set, &settings(family, 0.2)) {
        Err(MlError::Data(reason)) => reason,
        other => panic!("{other:?}"),
    };
    assert!(refused(set(x.clone(), zeros.clone()), Family::Logistic).contains("one class"));
    // A label other than 1 is the other class, not a refusal of its own.
    let twos = Array1::from_elem(100, 2.0);
    assert!(refused(set(x.clone(), twos), Family::Logistic).contains("one class"));
    let mut constant = x.clone();
    constant.column_mut(1).fill(5.0);
    assert!(refused(set(constant, zeros.clone()), Family::Linear).contains("feature 2"));
    let mut nan = x.clone();
    nan[[4, 0]] = f64::NAN;
    assert!(refused(set(nan, zeros.clone()), Family::Linear).contains("finite"));
    let few = x.select(ndarray::Axis(0), &[0, 1, 2]);
    assert!(
        refused(set(few.clone(), Array1::zeros(3)), Family::Linear)
            .contains("too few training rows to fit 3 parameters")
    );

    // Under the people rules, each of these that depends on the rows is one and the same
    // refusal, which says neither which count failed nor whether a side holds no one.
    let mut constant = x.clone();
    constant.column_mut(1).fill(5.0);
    let ruled = |set: TrainingSet, family| {
        let settings = Settings {
            min_people: Some(1),
            max_leverage: Some(1.0),
            ..settings(family, 0.0)
        };
        train(&set, &settings).unwrap_err()
    };
    let labels = x.column(0).mapv(|v| f64::from(u8::from(v > 5.0)));
    for (refused, family) in [
        (
            ruled(set(x.clone(), zeros.clone()), Family::Logistic),
            "one class",
        ),
        (
            ruled(set(constant, labels.clone()), Family::Linear),
            "constant",
        ),
        (
            ruled(set(few, Array1::zeros(3)), Family::Linear),
            "few rows",
        ),
    ] {
        assert_eq!(refused, crate::support::thin(1), "{family}");
    }
}

/// The hat matrix's diagonal of `x` with an intercept, by Gauss-Jordan inversion of `RᵀR` on
/// the raw rows (the same as on standardised ones): a reference sharing no code with the
/// Cholesky solve of [`bounded_leverage`].
fn leverages(x: &Array2<f64>) -> Vec<f64> {
    let (n, p) = x.dim();
    let k = p + 1;
    let row = |i: usize| -> Vec<f64> {
        std::iter::once(1.0)
            .chain(x.row(i).iter().copied())
            .collect()
    };
    // [RᵀR | I], reduced to [I | (RᵀR)⁻¹].
    let mut a = vec![vec![0.0; 2 * k]; k];
    for i in 0..n {
        let r = row(i);
        for u in 0..k {
            for v in 0..k {
                a[u][v] += r[u] * r[v];
            }
        }
    }
    for (u, line) in a.iter_mut().enumerate() {
        line[k + u] = 1.0;
    }
    for c in 0..k {
        let pivot = (c..k)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap();
        a.swap(c, pivot);
        let lead = a[c][c];
        for value in a[c].iter_mut() {
            *value /= lead;
        }
        let pivot_row = a[c].clone();
        for (u, line) in a.iter_mut().enumerate() {
            if u != c {
                let f = line[c];
                for (value, p) in line.iter_mut().zip(&pivot_row) {
                    *value -= f * p;
                }
            }
        }
    }
    (0..n)
        .map(|i| {
            let r = row(i);
            (0..k)
                .map(|u| (0..k).map(|v| r[u] * a[u][k + v] * r[v]).sum::<f64>())
                .sum()
        })
        .collect()
}

/// No fitted row may weigh more than `max_leverage`: the bound is the reference leverage's
/// (accepted just above the heaviest row, refused just below, without saying which row), and
/// one outlying value, whose row the fit would pass through, is refused at 1/10.
#[test]
fn a_row_that_weighs_more_than_allowed_is_refused() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let x = features(&mut rng, 300);
    let y: Array1<f64> = x
        .rows()
        .into_iter()
        .map(|r| 2.0 * r[0] + 0.01 * r[1])
        .collect();
    let heaviest = leverages(&x).into_iter().fold(0.0, f64::max);
    for family in [Family::Linear, Family::Logistic] {
        let y = if family == Family::Logistic {
            y.mapv(|v| f64::from(u8::from(v > 40.0)))
        } else {
            y.clone()
        };
        let at = |bound: f64| Settings {
            max_leverage: Some(bound),
            ..settings(family, 0.0)
        };
        assert!(train(&set(x.clone(), y.clone()), &at(heaviest * 1.0001)).is_ok());
        let refused = train(&set(x.clone(), y.clone()), &at(heaviest * 0.9999)).unwrap_err();
        assert!(refused.to_string().contains("leverage"), "{refused}");
        // One person's outlying amount: the fit would pass through that row.
        let mut outlier = x.clone();
        outlier[[7, 1]] = 1e7;
        let refused = train(&set(outlier, y.clone()), &at(0.1)).unwrap_err();
        assert!(refused.to_string().contains("leverage"), "{refused}");
        assert!(!refused.to_string().contains("1000000"), "{refused}");
    }
}

/// Another dataset's rows in a person's cell do not hide the person from that dataset's
/// provider, who knows them: the leverage is taken within each dataset. Dataset 0 has 50
/// people at 1 and one at 2 (a category coded 1/2, not 0/1); dataset 1 pads the cell at 2 with
/// 100 people of its own. Pooled, the person weighs a hundredth of the fit; within their
/// dataset, all of it, and the fit is refused. Without the padding person, it is fitted.
#[test]
fn a_padded_cell_still_weighs_as_its_own_datasets_person() {
    let mut rows = Vec::new();
    let mut owners = Vec::new();
    for n in 0..50u32 {
        rows.push((1.0, 100.0 + f64::from(n)));
        owners.push(vec![(0, n)]);
    }
    for n in 0..100u32 {
        rows.push((2.0, 0.0));
        owners.push(vec![(1, n)]);
    }
    let fit = |rows: &[(f64, f64)], owners: &[Vec<Person>]| {
        let set = TrainingSet {
            features: vec!["f".into()],
            x: Array2::from_shape_fn((rows.len(), 1), |(i, _)| rows[i].0),
            y: rows.iter().map(|r| r.1).collect(),
            owners: owners.iter().cloned().collect(),
        };
        train(
            &set,
            &Settings {
                max_leverage: Some(0.1),
                ..settings(Family::Linear, 0.0)
            },
        )
    };
    fit(&rows, &owners).expect("each dataset's people weigh little in it");
    rows.push((2.0, 12_345.0));
    owners.push(vec![(0, 50)]);
    let refused = fit(&rows, &owners).unwrap_err();
    assert!(refused.to_string().contains("leverage"), "{refused}");
}
