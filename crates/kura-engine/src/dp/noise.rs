//! Step 3: discrete Laplace noise on every released statistic, the thresholds or public
//! domains that decide which groups are released, and the report of what was spent.

use dashu::integer::IBig;
use dashu::rational::RBig;
use kura_contract::dp::DomainValue;
use serde_json::{Value, json};

use crate::{EngineError, Output};

use std::collections::BTreeMap;

use kura_contract::ColumnType;
use kura_contract::dp::{ColumnNoise, DpReport, GroupRelease};

use super::*;

impl DpPlan {
    /// Step 3: noise, and which groups may be released.
    pub(super) fn release(
        &self,
        exact: Vec<(Vec<Value>, Vec<i64>)>,
    ) -> Result<Output, EngineError> {
        let n = self.noisy_values() as u64;
        let k = self.k;
        // Each noisy value gets ε/n; scale = Δ·n/ε, kept exact as a rational.
        let scale = |sensitivity: u64| -> Result<RBig, EngineError> {
            // Exactly the ε the budget is charged (whole units of 10⁻⁹).
            let eps = RBig::from(kura_contract::dp::epsilon_units(self.epsilon))
                / RBig::from(1_000_000_000u64);
            Ok(RBig::from(sensitivity) * RBig::from(n) / eps)
        };
        let grouped = !self.keys.is_empty();
        // Count-like sensitivities: k rows per person; a person adds 1 to the distinct count
        // of each group it appears in (at most k groups, or 1 without GROUP BY).
        let count_scale = scale(k)?;
        let units_scale = scale(if grouped { k } else { 1 })?;
        let mut stat_scales = Vec::new();
        for s in &self.stats {
            stat_scales.push(match s {
                Stat::Count(_) => vec![count_scale.clone()],
                Stat::Units => vec![units_scale.clone()],
                Stat::Sum(m) => vec![scale(m.sum_sensitivity(k)?)?],
                Stat::Avg(m) => vec![scale(m.sum_sensitivity(k)?)?, count_scale.clone()],
            });
        }

        let cells: Vec<(Vec<Value>, Vec<i64>)> = match &self.domains {
            Some(domains) => {
                let mut found: HashMap<String, Vec<i64>> = exact
                    .into_iter()
                    .map(|(key, v)| (Value::Array(key).to_string(), v))
                    .collect();
                let width = self.noisy_values();
                product(domains)
                    .into_iter()
                    .map(|key| {
                        let v = found
                            .remove(&Value::Array(key.clone()).to_string())
                            .unwrap_or_else(|| vec![0; width]);
                        (key, v)
                    })
                    .collect()
            }
            None => {
                let tau = self.tau(&count_scale);
                let mut released = Vec::new();
                for (key, v) in exact {
                    let selection = *v.last().expect("the selection count");
                    if (noise(selection, &count_scale)? as f64) >= tau {
                        released.push((key, v));
                    }
                }
                released.sort_by_cached_key(|(key, _)| Value::Array(key.clone()).to_string());
                released
            }
        };

        let mut rows = Vec::with_capacity(cells.len());
        for (key, exact) in cells {
            let mut values = Vec::with_capacity(self.stats.len());
            let mut at = 0;
            for (s, scales) in self.stats.iter().zip(&stat_scales) {
                values.push(match s {
                    Stat::Count(_) | Stat::Units => json!(noise(exact[at], &scales[0])?),
                    Stat::Sum(m) => json!(noise(exact[at], &scales[0])? as f64 * m.grid),
                    Stat::Avg(m) => {
                        let sum = noise(exact[at], &scales[0])? as f64 * m.grid;
                        let count = noise(exact[at + 1], &scales[1])?.max(1) as f64;
                        json!((sum / count).clamp(m.low, m.high))
                    }
                });
                at += if matches!(s, Stat::Avg(_)) { 2 } else { 1 };
            }
            rows.push(
                self.columns
                    .iter()
                    .map(|(_, out)| match *out {
                        Out::Key(i) => key[i].clone(),
                        Out::Stat(i) => values[i].clone(),
                    })
                    .collect::<Vec<Value>>(),
            );
        }
        for &(column, asc) in self.order.iter().rev() {
            rows.sort_by(|a, b| {
                let o = compare(&a[column], &b[column]);
                if asc { o } else { o.reverse() }
            });
        }

        let report = self.report(&stat_scales, &count_scale, k)?;
        Ok(Output {
            columns: self.columns.iter().map(|(n, _)| n.clone()).collect(),
            types: self.column_types()?,
            rows,
            suppressed_groups: 0,
            datasets: self.datasets.clone(),
            dp: Some(report),
            onnx: None,
        })
    }

    /// Keys keep their type; counts are integers, noisy sums and averages floats.
    fn column_types(&self) -> Result<Vec<ColumnType>, EngineError> {
        use datafusion::logical_expr::ExprSchemable;
        self.columns
            .iter()
            .map(|(_, out)| match *out {
                Out::Key(i) => Ok(crate::output::column_type(
                    &self.keys[i].get_type(self.input.schema())?,
                )),
                Out::Stat(i) => Ok(match self.stats[i] {
                    Stat::Count(_) | Stat::Units => ColumnType::Int64,
                    Stat::Sum(_) | Stat::Avg(_) => ColumnType::Float64,
                }),
            })
            .collect()
    }

    pub(super) fn report(
        &self,
        stat_scales: &[Vec<RBig>],
        count_scale: &RBig,
        k: u64,
    ) -> Result<DpReport, EngineError> {
        let share = self.epsilon / self.noisy_values() as f64;
        let laplace = |epsilon: f64, s: &RBig, unit: f64| ColumnNoise::DiscreteLaplace {
            epsilon,
            scale: approx(s) * unit,
            ci95: ci95(s) as f64 * unit,
        };
        let mut columns = BTreeMap::new();
        for (name, out) in &self.columns {
            let Out::Stat(i) = *out else { continue };
            let scales = &stat_scales[i];
            columns.insert(
                name.clone(),
                match &self.stats[i] {
                    Stat::Count(_) | Stat::Units => laplace(share, &scales[0], 1.0),
                    Stat::Sum(m) => laplace(share, &scales[0], m.grid),
                    Stat::Avg(m) => ColumnNoise::Ratio {
                        epsilon: 2.0 * share,
                        sum: Box::new(laplace(share, &scales[0], m.grid)),
                        count: Box::new(laplace(share, &scales[1], 1.0)),
                    },
                },
            );
        }
        Ok(DpReport {
            epsilon: self.epsilon,
            delta: self.delta,
            max_contributions: k,
            groups: if self.thresholded() {
                GroupRelease::Thresholded
            } else {
                GroupRelease::PublicDomain
            },
            threshold: self.thresholded().then(|| self.tau(count_scale)),
            columns,
            noise_sd: BTreeMap::new(),
        })
    }
}

/// `x` plus discrete Laplace noise of `scale`, from OpenDP's exact sampler.
pub(super) fn noise(x: i64, scale: &RBig) -> Result<i64, EngineError> {
    let z: IBig = opendp::traits::samplers::sample_discrete_laplace(scale.clone())
        .map_err(|e| EngineError::Execution(format!("noise sampling failed: {e:?}")))?;
    let z = i64::try_from(&z).map_err(|_| EngineError::Execution("noise out of range".into()))?;
    Ok(x.saturating_add(z))
}

/// The smallest m with P(|Z| ≥ m) ≤ 5 % for discrete Laplace Z of `scale` b:
/// P(|Z| ≥ m) = 2·p^m/(1+p), p = e^(-1/b).
pub(super) fn ci95(scale: &RBig) -> u64 {
    let b = approx(scale);
    let p = (-1.0 / b).exp();
    if p <= 0.0 {
        return 0;
    }
    ((0.025 * (1.0 + p)).ln() / p.ln()).ceil().max(0.0) as u64
}

pub(super) fn approx(r: &RBig) -> f64 {
    r.to_f64().value()
}

pub(super) fn float(v: f64) -> String {
    format!("CAST('{v:e}' AS DOUBLE)")
}

pub(super) fn domain_json(v: &DomainValue) -> Value {
    match v {
        DomainValue::Bool(b) => json!(b),
        DomainValue::Int(i) => json!(i),
        DomainValue::Text(s) => json!(s),
    }
}

/// Every combination of one value per domain (one empty key without domains).
pub(super) fn product(domains: &[Vec<Value>]) -> Vec<Vec<Value>> {
    let mut out = vec![Vec::new()];
    for domain in domains {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                domain.iter().map(move |v| {
                    let mut key = prefix.clone();
                    key.push(v.clone());
                    key
                })
            })
            .collect();
    }
    out
}

pub(super) fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(std::cmp::Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
        (Value::Null, _) => std::cmp::Ordering::Greater,
        (_, Value::Null) => std::cmp::Ordering::Less,
        _ => a.to_string().cmp(&b.to_string()),
    }
}
