use std::fmt::Write as _;

use dashu::rational::RBig;
use kura_contract::dp::GroupRelease;

use super::noise::{ci95, noise};
use super::*;
use crate::golden::{contract_with, load_csv, tables};

/// Upper 10⁻⁶ tail of χ² with `df` degrees of freedom (Wilson–Hilferty, z = 4.753).
fn chi2_critical(df: f64) -> f64 {
    let z = 4.753;
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

/// χ² of `counts` (values -range..=range, tails pooled) against discrete Laplace of `scale`.
fn chi2(samples: &[i64], scale: f64, range: i64) -> (f64, f64) {
    let p = (-1.0 / scale).exp();
    let pmf = |x: i64| (1.0 - p) / (1.0 + p) * p.powi(x.abs() as i32);
    let n = samples.len() as f64;
    let mut counts = std::collections::BTreeMap::new();
    for &x in samples {
        *counts.entry(x.clamp(-range - 1, range + 1)).or_insert(0u64) += 1;
    }
    let mut stat = 0.0;
    let mut bins = 0.0;
    let inner: f64 = (-range..=range).map(pmf).sum();
    for x in -range - 1..=range + 1 {
        let prob = if x.abs() > range {
            (1.0 - inner) / 2.0
        } else {
            pmf(x)
        };
        let expected = n * prob;
        let observed = *counts.get(&x).unwrap_or(&0) as f64;
        stat += (observed - expected).powi(2) / expected;
        bins += 1.0;
    }
    (stat, chi2_critical(bins - 1.0))
}

#[test]
fn the_sampler_follows_the_exact_discrete_laplace_distribution() {
    // OpenDP's sampler draws from OpenSSL's RNG, which cannot be seeded; the 10⁻⁶ critical
    // value makes a false alarm negligible, and the second check shows the test has power.
    let scale = RBig::from(5) / RBig::from(2);
    let samples: Vec<i64> = (0..200_000).map(|_| noise(0, &scale).unwrap()).collect();
    let (stat, critical) = chi2(&samples, 2.5, 12);
    assert!(
        stat < critical,
        "χ² = {stat:.1} ≥ {critical:.1} at scale 2.5"
    );
    // The same samples against a 10 % wider distribution: clearly rejected.
    let (wrong, critical) = chi2(&samples, 2.75, 12);
    assert!(
        wrong > 3.0 * critical,
        "χ² = {wrong:.1} did not reject scale 2.75"
    );
    // Symmetric around zero, with the variance 2p/(1-p)².
    let mean = samples.iter().sum::<i64>() as f64 / samples.len() as f64;
    let p = (-1.0f64 / 2.5).exp();
    let var = 2.0 * p / (1.0 - p).powi(2);
    assert!(
        mean.abs() < 5.0 * (var / samples.len() as f64).sqrt(),
        "mean {mean}"
    );
}

#[test]
fn the_confidence_interval_covers_95_percent() {
    let scale = RBig::from(3);
    let m = ci95(&scale) as i64;
    let p = (-1.0f64 / 3.0).exp();
    let tail = |m: i64| 2.0 * p.powi(m as i32) / (1.0 + p);
    assert!(tail(m) <= 0.05 && tail(m - 1) > 0.05, "m = {m}");
}

const DP: &str = r#"
[privacy.dp]
epsilon = 100.0
delta = 1e-5
query_epsilon = 1.0
query_delta = 1e-6
max_contributions = 2
bounds = { "claims.amount" = [0.0, 100.0], "patients.bmi" = [15.0, 40.0] }
domains = { "patients.age_band" = ["18-39", "40-59", "60-79", "80+", "unborn"], "patients.sex" = ["f", "m"] }
"#;

async fn exact(sql: &str) -> Vec<Vec<Value>> {
    let c = contract_with("");
    let ctx = crate::session(&c, &tables(&c)).unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            rows.push(
                (0..b.num_columns())
                    .map(|i| crate::output::value(b.column(i), r).unwrap())
                    .collect(),
            );
        }
    }
    rows
}

#[tokio::test]
async fn repeated_counts_spread_as_declared() {
    let c = contract_with(DP);
    let t = tables(&c);
    let sql = "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";
    let truth: std::collections::BTreeMap<String, i64> =
        exact("SELECT age_band, COUNT(*) FROM patients GROUP BY age_band")
            .await
            .into_iter()
            .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
            .collect();
    let mut errors = Vec::new();
    let mut declared = 0.0;
    for _ in 0..300 {
        let (out, spend) = run(&c, sql, None, &t).await.unwrap();
        assert_eq!(
            spend,
            Spend {
                epsilon: 1.0,
                delta: 0.0
            }
        );
        // The public domain: every value, in order, including one no patient has.
        let keys: Vec<&str> = out.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(keys, ["18-39", "40-59", "60-79", "80+", "unborn"]);
        for row in &out.rows {
            let truth = truth.get(row[0].as_str().unwrap()).copied().unwrap_or(0);
            errors.push((row[1].as_i64().unwrap() - truth) as f64);
        }
        declared = out.dp.as_ref().unwrap().columns["n"].scale();
    }
    // One statistic, ε = 1, and k = 1 (the contract's bound is 2, but the patients hold one
    // row per person): scale 1.
    assert_eq!(declared, 1.0);
    let p = (-1.0f64 / declared).exp();
    let var = 2.0 * p / (1.0 - p).powi(2);
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let observed = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(
        (observed / var - 1.0).abs() < 0.25,
        "observed variance {observed:.2}, declared {var:.2} (scale {declared})"
    );
    assert!(mean.abs() < 5.0 * (var / n).sqrt(), "mean error {mean}");
}

/// A hospital where "p0" has 50 claims and everyone else one; one patient lives alone on "isle".
fn skewed() -> (Contract, Tables) {
    let c = contract_with(&DP.replace("epsilon = 100.0", "epsilon = 1000.0"));
    let mut p = String::from("patient_id,age_band,sex,region,birth_year,diabetes,bmi\n");
    let mut cl = String::from("claim_id,patient_id,kind,month,amount\n");
    for i in 0..40 {
        let region = if i == 39 { "isle" } else { "north" };
        writeln!(p, "p{i},18-39,f,{region},1990,false,20.0").unwrap();
        for j in 0..if i == 0 { 50 } else { 1 } {
            writeln!(cl, "c{i}_{j},p{i},visit,2026-01-01,1000.0").unwrap();
        }
    }
    let t = load_csv(&c, [("patients", p), ("claims", cl)]);
    (c, t)
}

#[tokio::test]
async fn contributions_are_bounded_after_the_join_and_measures_clamped() {
    let (c, t) = skewed();
    // ε = 500: counts get noise of scale 0.016 (zero, in practice), sums of scale 1.6.
    let sql = "SELECT p.sex, COUNT(*) AS n, SUM(c.amount) AS total, AVG(c.amount) AS mean \
               FROM patients p JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.sex";
    let (out, _) = run(&c, sql, Some(500.0), &t).await.unwrap();
    let f = out.rows.iter().find(|r| r[0] == "f").unwrap();
    // p0's 50 claims count as 2; amounts are clamped to 100.
    assert_eq!(f[1], 41, "{out:?}");
    assert!((f[2].as_f64().unwrap() - 4100.0).abs() < 30.0, "{f:?}");
    assert!((f[3].as_f64().unwrap() - 100.0).abs() < 1.0, "{f:?}");
    // The other public value is released too, with (zero-mean) noise around 0.
    let m = out.rows.iter().find(|r| r[0] == "m").unwrap();
    assert_eq!(m[1], 0);
    // Keys keep their type; noisy counts are integers, noisy sums and averages floats.
    use kura_contract::ColumnType as T;
    assert_eq!(out.types, [T::Utf8, T::Int64, T::Float64, T::Float64]);
    let report = out.dp.unwrap();
    assert_eq!(report.epsilon, 500.0);
    assert_eq!(report.groups, GroupRelease::PublicDomain);
    assert_eq!(report.max_contributions, 2);
}

/// The bound on a person's rows is the contract's `max_contributions` or, where less, what
/// the datasets read allow: patients hold one row per person, claims three; a query of the
/// patients alone bounds (and is noised for) one row a person, a join with the claims for two,
/// the contract's bound, which is below three.
#[tokio::test]
async fn the_bound_is_what_the_datasets_read_allow() {
    let (c, t) = skewed();
    let alone = "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex";
    let (out, _) = run(&c, alone, Some(500.0), &t).await.unwrap();
    assert_eq!(out.dp.unwrap().max_contributions, 1);
    let joined = "SELECT p.sex, COUNT(*) AS n FROM patients p \
                  JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.sex";
    let (out, _) = run(&c, joined, Some(500.0), &t).await.unwrap();
    assert_eq!(out.dp.unwrap().max_contributions, 2);
    let claims = c.dataset("claims").unwrap().max_contributions;
    let dp = c.privacy.dp.as_ref().unwrap().max_contributions;
    assert!(
        claims > dp,
        "the test needs the contract's bound below the claims' ({claims}, {dp})"
    );
}

#[tokio::test]
async fn keys_without_a_domain_are_released_only_above_the_threshold() {
    let (c, t) = skewed();
    let sql = "SELECT region, COUNT(DISTINCT patient_id) AS people FROM patients GROUP BY region";
    for _ in 0..20 {
        let (out, spend) = run(&c, sql, Some(500.0), &t).await.unwrap();
        assert_eq!(spend.delta, 1e-6);
        let regions: Vec<&str> = out.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        // "isle" has one person: far below τ, and its absence is not reported either.
        assert_eq!(regions, ["north"], "{out:?}");
        assert_eq!(out.suppressed_groups, 0);
        let report = out.dp.unwrap();
        assert_eq!(report.groups, GroupRelease::Thresholded);
        assert!(report.threshold.unwrap() > 2.0);
    }
}

#[tokio::test]
async fn queries_that_dp_cannot_bound_are_refused_with_a_reason() {
    let c = contract_with(DP);
    let without_delta = contract_with(
        &DP.replace("delta = 1e-5\n", "")
            .replace("query_delta = 1e-6\n", ""),
    );
    let cases: &[(&Contract, &str, &str)] = &[
        (
            &c,
            "SELECT age_band, COUNT(*) FROM patients GROUP BY age_band HAVING COUNT(*) > 3",
            "found Filter",
        ),
        (
            &c,
            "SELECT age_band, COUNT(*) FROM patients GROUP BY age_band LIMIT 1",
            "found Limit",
        ),
        (
            &c,
            "SELECT MIN(bmi) FROM patients",
            // The column-role rules run first, and refuse it whether or not DP could.
            "one-person-value",
        ),
        (
            &c,
            "SELECT SUM(CAST(diabetes AS DOUBLE)) FROM patients",
            "needs clamping bounds",
        ),
        (
            &c,
            "SELECT AVG(birth_year) FROM patients",
            "exactly one measure",
        ),
        (
            &c,
            "SELECT COUNT(DISTINCT kind) FROM claims",
            "only of a privacy unit",
        ),
        (
            &c,
            "SELECT age_band || 'x', COUNT(*) FROM patients GROUP BY age_band || 'x'",
            "dimension column as stored",
        ),
        (
            &without_delta,
            "SELECT region, COUNT(*) FROM patients GROUP BY region",
            "no public domain",
        ),
        (
            &c,
            "SELECT p.sex, COUNT(*) FROM patients p JOIN claims c ON p.sex = c.kind GROUP BY p.sex",
            "by equal identifiers",
        ),
        (
            &c,
            "SELECT p.sex, COUNT(*) FROM patients p LEFT JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.sex",
            "INNER JOIN",
        ),
        (
            &c,
            "SELECT p.sex, COUNT(*) FROM patients p, claims c WHERE p.patient_id = c.patient_id GROUP BY p.sex",
            "INNER JOIN",
        ),
        (
            &c,
            "SELECT sex, COUNT(*) FROM patients WHERE patient_id IN (SELECT patient_id FROM claims) GROUP BY sex",
            "subquer",
        ),
        (
            &c,
            "SELECT sex, COUNT(*) * 2 FROM patients GROUP BY sex",
            "computes on statistics",
        ),
        (
            &c,
            "SELECT sex, n FROM (SELECT sex, COUNT(*) AS n FROM (SELECT * FROM patients LIMIT 10) GROUP BY sex)",
            "refused",
        ),
        (
            &c,
            "SELECT patient_id, COUNT(*) FROM patients GROUP BY patient_id",
            "identifier",
        ),
    ];
    for (contract, sql, expect) in cases {
        let err = cost(contract, sql, None).await.unwrap_err().to_string();
        assert!(err.contains("refused"), "{sql}: {err}");
        assert!(err.contains(expect), "{sql}: {err}");
    }
    // ε beyond the contract's total, or not positive.
    for e in [0.0, -1.0, 101.0, f64::NAN] {
        let err = cost(&c, "SELECT COUNT(*) FROM patients", Some(e))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ε ="), "{err}");
    }
    // No [privacy.dp] at all.
    let err = cost(&contract_with(""), "SELECT COUNT(*) FROM patients", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("[privacy.dp]"), "{err}");
}

#[tokio::test]
async fn the_cost_is_known_before_the_data() {
    let c = contract_with(DP);
    let public = cost(
        &c,
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex",
        Some(0.25),
    )
    .await
    .unwrap();
    assert_eq!(
        public,
        Spend {
            epsilon: 0.25,
            delta: 0.0
        }
    );
    let thresholded = cost(&c, "SELECT kind, COUNT(*) FROM claims GROUP BY kind", None)
        .await
        .unwrap();
    assert_eq!(
        thresholded,
        Spend {
            epsilon: 1.0,
            delta: 1e-6
        }
    );
    // Missing data is reported as such, after the plan is checked.
    let err = run(&c, "SELECT COUNT(*) FROM patients", None, &Tables::new())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::MissingData(_)), "{err}");
}

proptest::proptest! {
    /// Whatever bounds a contract accepts, a row adds at most MAX_UNITS grid units, the
    /// sensitivity fits (k up to the contract's 1000), and the grid rounds the bounds' magnitude
    /// to within half a unit.
    #[test]
    fn sensitivities_are_exact_for_any_bounds_a_contract_accepts(
        low in -1e15f64..1e15,
        width in 1e-9f64..2e15,
        k in 1u64..=1000,
    ) {
        let high = (low + width).min(1e15);
        proptest::prop_assume!(low < high && low.abs().max(high.abs()) >= 1e-9);
        let m = Measure::new(datafusion::prelude::lit(0.0), [low, high]);
        let units = m.max_units().unwrap();
        proptest::prop_assert!((1..=MAX_UNITS).contains(&units));
        let magnitude = low.abs().max(high.abs());
        proptest::prop_assert!((units as f64 * m.grid - magnitude).abs() <= m.grid / 2.0 + magnitude * 1e-12);
        proptest::prop_assert_eq!(m.sum_sensitivity(k).unwrap(), k * units);
    }
}
