//! Differential privacy: noisy statistics with per-person contribution bounds.
//!
//! A DP query is one aggregation (`COUNT(*)`, `COUNT(column)`, `COUNT(DISTINCT privacy_unit)`,
//! `SUM` and `AVG` of a clamped measure) grouped by dimension columns, over datasets joined on
//! their privacy units. It runs in three steps:
//!
//! 1. **Rows.** The aggregation's input (joins and filters as written) is projected to one row
//!    per joined record: the privacy unit, the group keys and each statistic's per-row value.
//!    Measures are clamped to the contract's bounds and rounded to a grid, so that sums are
//!    exact integers and their sensitivity is exact.
//! 2. **Contribution bounding, after the joins.** Every privacy unit keeps at most
//!    `max_contributions` (k) of its rows, chosen at random; then the rows are aggregated.
//!    Because every dataset is joined on its privacy unit, one person owns each row, and
//!    adding or removing a person changes at most k rows.
//! 3. **Noise.** Exact discrete Laplace noise (OpenDP's sampler, Canonne–Kamath–Steinke 2020,
//!    fed by OpenSSL's `RAND_priv_bytes`) with scale Δ/ε is added to every statistic of every
//!    released group. Groups whose keys have a public domain in the contract are released for
//!    every value of the domain, present in the data or not; otherwise a group is released only
//!    if a separately noised row count clears τ = k + b·ln(k/δ) (b its noise scale), which
//!    bounds the chance that a key seen only in one person's rows appears by δ.
//!
//! The query's ε is split evenly among its noisy statistics (an `AVG` is a noisy sum over a
//! noisy count; thresholding adds one count). No exact value, no count of dropped groups and
//! no key outside the public domain leave this module.

use std::collections::HashMap;

mod bounding;
mod noise;
mod plan;

use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use kura_contract::Contract;
use kura_contract::dp::{DpSettings, Spend};
use serde_json::Value;

use crate::{EngineError, Output, Tables};

use noise::{approx, domain_json, float};

const RULE: &str = "differential-privacy";

fn refuse(reason: impl Into<String>) -> EngineError {
    EngineError::Refused {
        rule: RULE,
        reason: reason.into(),
    }
}

/// One statistic of the query, as the caller wrote it.
#[derive(Clone, Debug)]
enum Stat {
    /// `COUNT(*)`, or `COUNT(expr)` counting non-null values.
    Count(Option<Expr>),
    /// `COUNT(DISTINCT privacy_unit)`.
    Units,
    Sum(Measure),
    Avg(Measure),
}

/// The argument of a `SUM`/`AVG`, with the bounds of the one measure it reads.
#[derive(Clone, Debug)]
struct Measure {
    arg: Expr,
    low: f64,
    high: f64,
    /// Values are rounded to multiples of this grid.
    grid: f64,
}

/// Most grid units one row may add to a sum: a sum stays exact in `i64` up to 9 × 10^11 rows,
/// and a sensitivity (at most 1000 rows a person) is at most 10^10 units.
const MAX_UNITS: u64 = 10_000_000;

impl Measure {
    /// The grid is a millionth of the bounds' magnitude (not of their width): a row adds at most
    /// [`MAX_UNITS`] grid units, however far from zero the bounds lie, so neither a sum nor a
    /// sensitivity can overflow. The rounding is far below the noise, whose scale is at least
    /// the magnitude over ε.
    fn new(arg: Expr, [low, high]: [f64; 2]) -> Self {
        let magnitude = low.abs().max(high.abs());
        let grid = 10f64.powi(magnitude.log10().floor() as i32 - 6);
        Measure {
            arg,
            low,
            high,
            grid,
        }
    }

    /// The largest absolute per-row value, in grid units (at most [`MAX_UNITS`]).
    fn max_units(&self) -> Result<u64, EngineError> {
        let units = (self.low.abs().max(self.high.abs()) / self.grid).round();
        if units.is_finite() && (1.0..=MAX_UNITS as f64).contains(&units) {
            Ok(units as u64)
        } else {
            Err(refuse(format!(
                "the clamping bounds [{}, {}] give no exact sensitivity",
                self.low, self.high
            )))
        }
    }

    /// The sensitivity of a sum of this measure when a person adds at most `k` rows, in grid
    /// units.
    fn sum_sensitivity(&self, k: u64) -> Result<u64, EngineError> {
        k.checked_mul(self.max_units()?)
            .ok_or_else(|| refuse("the sum's sensitivity overflows"))
    }
}

/// Where an output column comes from.
#[derive(Clone, Copy, Debug)]
enum Out {
    Key(usize),
    Stat(usize),
}

/// A DP query, checked and ready to run.
#[derive(Debug)]
struct DpPlan {
    input: LogicalPlan,
    unit: Expr,
    keys: Vec<Expr>,
    /// Each key's public domain, when all keys have one.
    domains: Option<Vec<Vec<Value>>>,
    stats: Vec<Stat>,
    columns: Vec<(String, Out)>,
    order: Vec<(usize, bool)>,
    datasets: Vec<String>,
    k: u64,
    epsilon: f64,
    delta: f64,
}

fn settings(contract: &Contract) -> Result<&DpSettings, EngineError> {
    contract
        .privacy
        .dp
        .as_ref()
        .ok_or_else(|| refuse("the contract has no [privacy.dp] section"))
}

/// A DP query planned over the enclave's tables: its cost is known, nothing has run yet.
pub struct Prepared {
    plan: DpPlan,
    ctx: SessionContext,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// Plans `sql` at `epsilon` (default `privacy.dp.query_epsilon`) over `tables`, refusing what
/// DP cannot bound. Does not need the data to be present: its [`Prepared::spend`] is what the
/// budget must allow before [`Prepared::run`] touches any row.
pub async fn prepare(
    contract: &Contract,
    sql: &str,
    epsilon: Option<f64>,
    tables: &Tables,
) -> Result<Prepared, EngineError> {
    let ctx = crate::session(contract, tables)?;
    let plan = DpPlan::of(contract, &ctx, sql, epsilon).await?;
    Ok(Prepared { plan, ctx })
}

impl Prepared {
    /// The ε and δ a run spends.
    pub fn spend(&self) -> Spend {
        Spend {
            epsilon: self.plan.epsilon,
            delta: self.plan.delta,
        }
    }

    /// Runs the query: the noisy output, with its `dp` report. Fails with
    /// [`EngineError::MissingData`] if a dataset it reads was not uploaded.
    pub async fn run(self, tables: &Tables) -> Result<Output, EngineError> {
        crate::require_data(&self.plan.datasets, tables)?;
        let exact = self.plan.aggregate(&self.ctx).await?;
        self.plan.release(exact)
    }
}

/// The privacy cost of `sql`, checked against empty tables (as when a contract is checked).
pub async fn cost(
    contract: &Contract,
    sql: &str,
    epsilon: Option<f64>,
) -> Result<Spend, EngineError> {
    Ok(prepare(contract, sql, epsilon, &Tables::new())
        .await?
        .spend())
}

/// Plans and runs `sql` under differential privacy; the noisy output and what it cost.
pub async fn run(
    contract: &Contract,
    sql: &str,
    epsilon: Option<f64>,
    tables: &Tables,
) -> Result<(Output, Spend), EngineError> {
    let prepared = prepare(contract, sql, epsilon, tables).await?;
    let spend = prepared.spend();
    Ok((prepared.run(tables).await?, spend))
}

#[cfg(test)]
mod tests;
