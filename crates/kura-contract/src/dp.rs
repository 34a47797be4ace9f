//! Differential-privacy settings (`[privacy.dp]`) and the budget they set.
//!
//! The guarantee: two collections of datasets are *neighbours* when one is the other with every
//! row of one privacy unit removed, in every dataset (datasets joined on their privacy units
//! describe the same person). Every DP release is ε-DP for the discrete Laplace noise it adds,
//! plus δ when group keys are released by thresholding; releases compose by basic (sequential)
//! composition, so a receiver (or the collaboration) never learns more than (Σε, Σδ).
//!
//! Accounting is exact: budgets and spends are held in integer units of 10⁻⁹ for ε and
//! 10⁻¹⁸ for δ ([`epsilon_units`]), and the engine calibrates its noise to exactly the ε those
//! units say, so no sequence of queries can overspend by floating-point drift.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ColumnRole, Contract, ContractError};

/// `[privacy]`: privacy mechanisms beyond the minimum group size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    #[serde(default)]
    pub dp: Option<DpSettings>,
}

/// How the total budget is split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSplit {
    /// Each receiver has the whole budget; a release charges every receiver it goes to.
    #[default]
    PerReceiver,
    /// One budget for the whole collaboration.
    Shared,
}

/// A value of a public group-key domain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DomainValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

/// `[privacy.dp]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSettings {
    /// Total ε.
    pub epsilon: f64,
    /// Total δ; 0 allows only group keys with a declared domain.
    #[serde(default)]
    pub delta: f64,
    #[serde(default)]
    pub split: BudgetSplit,
    /// Rows a privacy unit may contribute to one query, after joins.
    #[serde(default = "one")]
    pub max_contributions: u32,
    /// ε of a query that does not name its own.
    pub query_epsilon: f64,
    /// δ spent by a query whose group keys are released by thresholding.
    #[serde(default)]
    pub query_delta: f64,
    /// Clamping bounds `[low, high]` of measures, keyed `"dataset.column"`.
    #[serde(default)]
    pub bounds: BTreeMap<String, [f64; 2]>,
    /// Every possible value of a dimension, keyed `"dataset.column"`: such group keys are
    /// released for every value (with noise), present in the data or not.
    #[serde(default)]
    pub domains: BTreeMap<String, Vec<DomainValue>>,
}

fn one() -> u32 {
    1
}

/// Most values a public domain may list, and most cells a query's domains may span.
pub const MAX_DOMAIN_CELLS: usize = 100_000;

fn dp_err(reason: impl Into<String>) -> ContractError {
    ContractError::Dp(reason.into())
}

impl DpSettings {
    pub(crate) fn validate(&self, contract: &Contract) -> Result<(), ContractError> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.epsilon) || self.epsilon > 1000.0 {
            return Err(dp_err("privacy.dp.epsilon must be a number in (0, 1000]"));
        }
        if !(self.delta.is_finite() && (0.0..1.0).contains(&self.delta)) {
            return Err(dp_err("privacy.dp.delta must be in [0, 1)"));
        }
        if !positive(self.query_epsilon) || self.query_epsilon > self.epsilon {
            return Err(dp_err(
                "privacy.dp.query_epsilon must be positive and at most privacy.dp.epsilon",
            ));
        }
        if !(self.query_delta.is_finite() && self.query_delta >= 0.0)
            || self.query_delta > self.delta
        {
            return Err(dp_err(
                "privacy.dp.query_delta must be in [0, privacy.dp.delta]",
            ));
        }
        if self.delta > 0.0 && self.query_delta == 0.0 {
            return Err(dp_err(
                "privacy.dp.delta is set but query_delta is 0: set the δ each thresholded query spends",
            ));
        }
        if !(1..=1000).contains(&self.max_contributions) {
            return Err(dp_err("privacy.dp.max_contributions must be 1 to 1000"));
        }
        for (key, [low, high]) in &self.bounds {
            let column = contract.qualified_column(key)?;
            if column.role != ColumnRole::Measure {
                return Err(dp_err(format!(
                    "privacy.dp.bounds.{key:?}: only measures are clamped"
                )));
            }
            let magnitude = low.abs().max(high.abs());
            if !(low.is_finite() && high.is_finite() && low < high && magnitude <= 1e15) {
                return Err(dp_err(format!(
                    "privacy.dp.bounds.{key:?}: need finite [low, high] with low < high, \
                     each at most 1e15 from zero"
                )));
            }
            if magnitude < 1e-9 {
                return Err(dp_err(format!(
                    "privacy.dp.bounds.{key:?}: bounds within 1e-9 of zero clamp everything to 0"
                )));
            }
        }
        for (key, values) in &self.domains {
            let column = contract.qualified_column(key)?;
            if column.role != ColumnRole::Dimension {
                return Err(dp_err(format!(
                    "privacy.dp.domains.{key:?}: only dimensions have public domains"
                )));
            }
            if values.is_empty() || values.len() > MAX_DOMAIN_CELLS {
                return Err(dp_err(format!(
                    "privacy.dp.domains.{key:?}: list 1 to {MAX_DOMAIN_CELLS} values"
                )));
            }
            let distinct: std::collections::BTreeSet<_> = values.iter().collect();
            if distinct.len() != values.len() {
                return Err(dp_err(format!(
                    "privacy.dp.domains.{key:?}: a value is listed twice"
                )));
            }
        }
        Ok(())
    }

    /// The clamping bounds of `dataset.column`, if declared.
    pub fn bounds_of(&self, dataset: &str, column: &str) -> Option<[f64; 2]> {
        self.bounds.get(&format!("{dataset}.{column}")).copied()
    }

    /// The public domain of `dataset.column`, if declared.
    pub fn domain_of(&self, dataset: &str, column: &str) -> Option<&[DomainValue]> {
        self.domains
            .get(&format!("{dataset}.{column}"))
            .map(Vec::as_slice)
    }
}

/// What one release costs (as recorded in the audit log's run entries).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spend {
    pub epsilon: f64,
    pub delta: f64,
}

const EPS_UNIT: f64 = 1e9;
const DELTA_UNIT: f64 = 1e18;

/// ε in the integer units (10⁻⁹) the budget counts; the engine spends exactly this.
pub fn epsilon_units(epsilon: f64) -> u64 {
    (epsilon * EPS_UNIT).round().max(0.0) as u64
}

fn units(v: f64, unit: f64) -> u128 {
    (v * unit).round().max(0.0) as u128
}

/// Spent and remaining budget of one account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// A receiver's name, or `"(collaboration)"` for a shared budget.
    pub name: String,
    pub spent_epsilon: f64,
    pub spent_delta: f64,
    pub remaining_epsilon: f64,
    pub remaining_delta: f64,
    pub releases: u64,
}

/// The name of the one account of a shared budget.
pub const SHARED_ACCOUNT: &str = "(collaboration)";

/// The running budget of a contract: what every account has spent so far.
#[derive(Clone, Debug)]
pub struct Budget {
    split: BudgetSplit,
    total: (u128, u128),
    /// account → (ε units, δ units, releases)
    spent: BTreeMap<String, (u128, u128, u64)>,
}

impl Budget {
    /// A fresh budget for `contract`, or `None` if it has no `[privacy.dp]`.
    pub fn of(contract: &Contract) -> Option<Self> {
        let dp = contract.privacy.dp.as_ref()?;
        let spent = match dp.split {
            BudgetSplit::Shared => [(SHARED_ACCOUNT.to_string(), (0, 0, 0))].into(),
            BudgetSplit::PerReceiver => contract
                .parties
                .iter()
                .filter(|p| p.has_role(crate::Role::Receiver))
                .map(|p| (p.name.clone(), (0, 0, 0)))
                .collect(),
        };
        Some(Budget {
            split: dp.split,
            total: (units(dp.epsilon, EPS_UNIT), units(dp.delta, DELTA_UNIT)),
            spent,
        })
    }

    fn accounts<'a>(&self, receivers: &'a [String]) -> Vec<&'a str> {
        match self.split {
            BudgetSplit::Shared => vec![SHARED_ACCOUNT],
            BudgetSplit::PerReceiver => receivers.iter().map(String::as_str).collect(),
        }
    }

    /// Whether a release of `spend` to `receivers` fits; the reason if not.
    pub fn check(&self, receivers: &[String], spend: Spend) -> Result<(), String> {
        let (e, d) = (
            units(spend.epsilon, EPS_UNIT),
            units(spend.delta, DELTA_UNIT),
        );
        for account in self.accounts(receivers) {
            let Some(&(se, sd, _)) = self.spent.get(account) else {
                return Err(format!(
                    "{account:?} has no privacy budget in this contract"
                ));
            };
            if se + e > self.total.0 || sd + d > self.total.1 {
                return Err(format!(
                    "the privacy budget of {account} would be exceeded: spent ε = {}, δ = {:e}; \
                     this query needs ε = {}, δ = {:e}; the total is ε = {}, δ = {:e}",
                    se as f64 / EPS_UNIT,
                    sd as f64 / DELTA_UNIT,
                    spend.epsilon,
                    spend.delta,
                    self.total.0 as f64 / EPS_UNIT,
                    self.total.1 as f64 / DELTA_UNIT,
                ));
            }
        }
        Ok(())
    }

    /// Records a release if it fits; refuses it (recording nothing) if not.
    pub fn charge(&mut self, receivers: &[String], spend: Spend) -> Result<(), String> {
        self.check(receivers, spend)?;
        self.record(receivers, spend);
        Ok(())
    }

    /// Records a release that already happened, whether or not it fit (replaying a log).
    pub fn record(&mut self, receivers: &[String], spend: Spend) {
        let (e, d) = (
            units(spend.epsilon, EPS_UNIT),
            units(spend.delta, DELTA_UNIT),
        );
        for account in self.accounts(receivers) {
            let entry = self.spent.entry(account.to_string()).or_default();
            entry.0 += e;
            entry.1 += d;
            entry.2 += 1;
        }
    }

    /// Every account's spent and remaining budget.
    pub fn accounts_report(&self) -> Vec<Account> {
        self.spent
            .iter()
            .map(|(name, &(e, d, n))| Account {
                name: name.clone(),
                spent_epsilon: e as f64 / EPS_UNIT,
                spent_delta: d as f64 / DELTA_UNIT,
                remaining_epsilon: self.total.0.saturating_sub(e) as f64 / EPS_UNIT,
                remaining_delta: self.total.1.saturating_sub(d) as f64 / DELTA_UNIT,
                releases: n,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

/// What a differentially private release spent and how each released statistic was noised:
/// sealed to receivers with the table (`dp` in the result), so that they can weigh the values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpReport {
    /// ε and δ the release spent.
    pub epsilon: f64,
    pub delta: f64,
    /// Rows each privacy unit could contribute after bounding.
    pub max_contributions: u64,
    /// How group keys were chosen for release.
    pub groups: GroupRelease,
    /// With thresholded keys: the noisy row count a group had to clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The noise on each statistic column, by column name.
    pub columns: BTreeMap<String, ColumnNoise>,
    /// For a model: the standard deviation of the noise on each term, on the term's own scale.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub noise_sd: BTreeMap<String, f64>,
}

/// How a DP release chose its group keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRelease {
    /// Every key whose noisy row count cleared the threshold (δ > 0 covers the rest).
    #[serde(rename = "thresholded")]
    Thresholded,
    /// Every value of the keys' public domains, present in the data or not.
    #[serde(rename = "public domain")]
    PublicDomain,
}

impl GroupRelease {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRelease::Thresholded => "thresholded",
            GroupRelease::PublicDomain => "public domain",
        }
    }
}

/// The noise on one released statistic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mechanism", deny_unknown_fields)]
pub enum ColumnNoise {
    /// Discrete Laplace noise of `scale`, spending `epsilon`; 95 % of draws fall within ±`ci95`.
    #[serde(rename = "discrete_laplace")]
    DiscreteLaplace { epsilon: f64, scale: f64, ci95: f64 },
    /// An average: a noisy sum over a noisy count, spending `epsilon` in all.
    #[serde(rename = "noisy sum / noisy count")]
    Ratio {
        epsilon: f64,
        sum: Box<ColumnNoise>,
        count: Box<ColumnNoise>,
    },
}

impl ColumnNoise {
    /// The scale of the noise on a count or a sum (for an average, on its sum).
    pub fn scale(&self) -> f64 {
        match self {
            ColumnNoise::DiscreteLaplace { scale, .. } => *scale,
            ColumnNoise::Ratio { sum, .. } => sum.scale(),
        }
    }

    /// One line for people: mechanism, ε, scale and 95 % interval.
    pub fn describe(&self) -> String {
        match self {
            ColumnNoise::DiscreteLaplace {
                epsilon,
                scale,
                ci95,
            } => format!("discrete Laplace, ε = {epsilon}, scale {scale}, 95 % within ±{ci95}"),
            ColumnNoise::Ratio {
                epsilon,
                sum,
                count,
            } => format!(
                "noisy sum / noisy count, ε = {epsilon}; sum: {}; count: {}",
                sum.describe(),
                count.describe()
            ),
        }
    }
}
