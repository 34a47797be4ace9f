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
use std::sync::Arc;

use dashu::integer::IBig;
use dashu::rational::RBig;
use datafusion::common::Column;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, JoinType, LogicalPlan, Projection, SortExpr};
use datafusion::prelude::SessionContext;
use kura_contract::dp::{DomainValue, DpSettings, MAX_DOMAIN_CELLS, Spend};
use kura_contract::{ColumnRole, Contract};
use serde_json::{Value, json};

use crate::lineage::{datasets_read, origin};
use crate::{EngineError, Output, Tables};

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

impl Measure {
    fn new(arg: Expr, [low, high]: [f64; 2]) -> Self {
        let grid = 10f64.powi((high - low).log10().floor() as i32 - 6);
        Measure {
            arg,
            low,
            high,
            grid,
        }
    }

    /// The largest absolute per-row value, in grid units.
    fn max_units(&self) -> u64 {
        (self.low.abs().max(self.high.abs()) / self.grid).round() as u64
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

impl DpPlan {
    async fn of(
        contract: &Contract,
        ctx: &SessionContext,
        sql: &str,
        epsilon: Option<f64>,
    ) -> Result<Self, EngineError> {
        let dp = settings(contract)?;
        let epsilon = epsilon.unwrap_or(dp.query_epsilon);
        if !(epsilon.is_finite()
            && kura_contract::dp::epsilon_units(epsilon) > 0
            && epsilon <= dp.epsilon)
        {
            return Err(refuse(format!(
                "ε = {epsilon} is not in (0, {}] (privacy.dp.epsilon)",
                dp.epsilon
            )));
        }
        let written = crate::written_plan(ctx, sql).await?;
        if contract.adhoc.is_some() {
            crate::roles::Rules::of(contract)?.check(&written)?;
        }
        let names: Vec<String> = written
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();

        // Output ← [Sort] ← [Projection] ← Aggregate.
        let mut node = written;
        let mut sort: Vec<SortExpr> = Vec::new();
        if let LogicalPlan::Sort(s) = node {
            if s.fetch.is_some() {
                return Err(refuse("LIMIT is refused in DP queries"));
            }
            sort = s.expr;
            node = Arc::unwrap_or_clone(s.input);
        }
        let (projection, agg) = match node {
            LogicalPlan::Projection(p) => match Arc::unwrap_or_clone(p.input) {
                LogicalPlan::Aggregate(a) => (Some(p.expr), a),
                other => return Err(shape(&other)),
            },
            LogicalPlan::Aggregate(a) => (None, a),
            other => return Err(shape(&other)),
        };
        let agg_schema = agg.schema.clone();
        let Aggregate {
            input,
            group_expr,
            aggr_expr,
            ..
        } = agg;
        let input = Arc::unwrap_or_clone(input);
        let datasets: Vec<String> = datasets_read(&input, contract)?.into_iter().collect();
        check_input(&input, contract)?;

        // The privacy unit: every dataset's unit is joined to the others, so any will do.
        let schema = input.schema().clone();
        let unit_index = (0..schema.fields().len())
            .find(|&i| is_unit(contract, origin(&input, i)))
            .ok_or_else(|| {
                refuse("the privacy unit does not reach the aggregation (a subquery dropped it?)")
            })?;
        let (q, f) = schema.qualified_field(unit_index);
        let unit = Expr::Column(Column::new(q.cloned(), f.name()));

        let mut domains = Some(Vec::new());
        for key in &group_expr {
            let (d, c) = source(&input, key).ok_or_else(|| {
                refuse(format!(
                    "group key {key} must be a dimension column as stored: DP groups cannot be \
                     computed expressions"
                ))
            })?;
            let role = contract
                .dataset(&d)
                .and_then(|ds| ds.column(&c))
                .map(|col| col.role);
            if role != Some(ColumnRole::Dimension) {
                return Err(refuse(format!(
                    "group key {d}.{c} is not a dimension column"
                )));
            }
            match (dp.domain_of(&d, &c), &mut domains) {
                (Some(values), Some(list)) => list.push(values.iter().map(domain_json).collect()),
                _ => domains = None,
            }
        }
        if let Some(list) = &domains
            && list
                .iter()
                .map(Vec::len)
                .try_fold(1usize, usize::checked_mul)
                .is_none_or(|n| n > MAX_DOMAIN_CELLS)
        {
            return Err(refuse(format!(
                "the group keys' public domains span more than {MAX_DOMAIN_CELLS} cells"
            )));
        }
        if domains.is_none() && dp.query_delta == 0.0 {
            return Err(refuse(
                "a group key has no public domain in privacy.dp.domains, and the contract sets \
                 no δ (privacy.dp.query_delta) for releasing keys by thresholding",
            ));
        }

        let mut stats = Vec::new();
        for e in &aggr_expr {
            stats.push(stat(e, &input, contract, dp)?);
        }
        if stats.is_empty() {
            return Err(refuse("a DP query needs at least one statistic"));
        }

        // Output columns in terms of keys and statistics.
        let agg_columns = group_expr.len();
        let mut columns = Vec::new();
        match &projection {
            None => {
                for (i, name) in names.iter().enumerate() {
                    let out = if i < agg_columns {
                        Out::Key(i)
                    } else {
                        Out::Stat(i - agg_columns)
                    };
                    columns.push((name.clone(), out));
                }
            }
            Some(exprs) => {
                for (e, name) in exprs.iter().zip(&names) {
                    let mut inner = e;
                    while let Expr::Alias(a) = inner {
                        inner = &a.expr;
                    }
                    let Expr::Column(c) = inner else {
                        return Err(refuse(format!(
                            "output column {name:?} computes on statistics ({e}); in DP queries \
                             do that on the released values"
                        )));
                    };
                    let i = agg_schema.index_of_column(c).map_err(|_| {
                        refuse(format!("output column {name:?} is not a key or statistic"))
                    })?;
                    let out = if i < agg_columns {
                        Out::Key(i)
                    } else {
                        Out::Stat(i - agg_columns)
                    };
                    columns.push((name.clone(), out));
                }
            }
        }
        let mut order = Vec::new();
        for s in &sort {
            let Expr::Column(c) = &s.expr else {
                return Err(refuse("ORDER BY may name output columns only"));
            };
            let i = columns
                .iter()
                .position(|(n, _)| n == &c.name)
                .ok_or_else(|| refuse("ORDER BY may name output columns only"))?;
            order.push((i, s.asc));
        }

        let thresholded = domains.is_none();
        Ok(DpPlan {
            input,
            unit,
            keys: group_expr,
            domains,
            stats,
            columns,
            order,
            datasets,
            k: u64::from(dp.max_contributions),
            epsilon,
            delta: if thresholded { dp.query_delta } else { 0.0 },
        })
    }

    /// τ = k + b·ln(k/δ) for a selection count of noise scale b, rounded up with a margin of
    /// one: a group held by one person (at most k rows, in at most k groups) clears it with
    /// probability at most δ.
    fn tau(&self, selection_scale: &RBig) -> f64 {
        let k = self.k as f64;
        k + (approx(selection_scale) * (k / self.delta).ln()).ceil() + 1.0
    }

    fn thresholded(&self) -> bool {
        self.domains.is_none()
    }

    /// How many noisy values each released group gets.
    fn noisy_values(&self) -> usize {
        let per_stat: usize = self
            .stats
            .iter()
            .map(|s| if matches!(s, Stat::Avg(_)) { 2 } else { 1 })
            .sum();
        per_stat + usize::from(self.thresholded())
    }

    /// Runs steps 1 and 2: exact, contribution-bounded aggregates per group, as integers.
    async fn aggregate(
        &self,
        ctx: &SessionContext,
    ) -> Result<Vec<(Vec<Value>, Vec<i64>)>, EngineError> {
        // Step 1: one row per joined record, with our own column names.
        let mut exprs = vec![self.unit.clone().alias("u")];
        for (i, k) in self.keys.iter().enumerate() {
            exprs.push(k.clone().alias(format!("k{i}")));
        }
        for (i, s) in self.stats.iter().enumerate() {
            match s {
                Stat::Count(Some(arg)) => exprs.push(arg.clone().alias(format!("a{i}"))),
                Stat::Sum(m) | Stat::Avg(m) => exprs.push(
                    Expr::Cast(datafusion::logical_expr::Cast::new(
                        Box::new(m.arg.clone()),
                        datafusion::arrow::datatypes::DataType::Float64,
                    ))
                    .alias(format!("a{i}")),
                ),
                Stat::Count(None) | Stat::Units => {}
            }
        }
        let rows =
            LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(self.input.clone()))?);
        let rows_ctx = ctx.clone();
        rows_ctx.register_table(
            "kura_dp_rows",
            datafusion::dataframe::DataFrame::new(ctx.state(), rows).into_view(),
        )?;

        // Step 2: keep at most k rows per privacy unit, chosen at random, then aggregate.
        let keys: Vec<String> = (0..self.keys.len()).map(|i| format!("k{i}")).collect();
        let mut values = Vec::new();
        for (i, s) in self.stats.iter().enumerate() {
            let grid_units = |m: &Measure| {
                format!(
                    "SUM(CAST(ROUND((CASE WHEN a{i} IS NULL THEN NULL \
                     WHEN a{i} >= {lo} AND a{i} <= {hi} THEN a{i} WHEN a{i} > {hi} THEN {hi} \
                     ELSE {lo} END) / {g}) AS BIGINT))",
                    lo = float(m.low),
                    hi = float(m.high),
                    g = float(m.grid)
                )
            };
            match s {
                Stat::Count(None) => values.push("COUNT(*)".to_string()),
                Stat::Count(Some(_)) => values.push(format!("COUNT(a{i})")),
                Stat::Units => values.push("COUNT(DISTINCT u)".to_string()),
                Stat::Sum(m) => values.push(grid_units(m)),
                Stat::Avg(m) => {
                    values.push(grid_units(m));
                    values.push(format!("COUNT(a{i})"));
                }
            }
        }
        if self.thresholded() {
            values.push("COUNT(*)".to_string());
        }
        let select: Vec<String> = keys
            .iter()
            .cloned()
            .chain(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{v} AS v{i}")),
            )
            .collect();
        let sql = format!(
            "SELECT {} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY u ORDER BY random()) AS rn \
             FROM kura_dp_rows) WHERE rn <= {} {}",
            select.join(", "),
            self.k,
            if keys.is_empty() {
                String::new()
            } else {
                format!("GROUP BY {}", keys.join(", "))
            }
        );
        let batches = rows_ctx.sql(&sql).await?.collect().await?;
        let mut groups = Vec::new();
        for batch in &batches {
            for row in 0..batch.num_rows() {
                let key = (0..keys.len())
                    .map(|c| crate::output::value(batch.column(c), row))
                    .collect::<Result<Vec<_>, _>>()?;
                let vals = (keys.len()..batch.num_columns())
                    .map(|c| {
                        crate::output::value(batch.column(c), row).map(|v| v.as_i64().unwrap_or(0))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                groups.push((key, vals));
            }
        }
        Ok(groups)
    }

    /// Step 3: noise, and which groups may be released.
    fn release(&self, exact: Vec<(Vec<Value>, Vec<i64>)>) -> Result<Output, EngineError> {
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
                Stat::Sum(m) => vec![scale(k * m.max_units())?],
                Stat::Avg(m) => vec![scale(k * m.max_units())?, count_scale.clone()],
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
            rows,
            suppressed_groups: 0,
            datasets: self.datasets.clone(),
            dp: Some(report),
        })
    }

    fn report(
        &self,
        stat_scales: &[Vec<RBig>],
        count_scale: &RBig,
        k: u64,
    ) -> Result<Value, EngineError> {
        let share = self.epsilon / self.noisy_values() as f64;
        let mut columns = serde_json::Map::new();
        for (name, out) in &self.columns {
            let Out::Stat(i) = *out else { continue };
            let scales = &stat_scales[i];
            let describe = |s: &RBig, unit: f64| {
                json!({
                    "mechanism": "discrete_laplace",
                    "epsilon": share,
                    "scale": approx(s) * unit,
                    "ci95": ci95(s) as f64 * unit,
                })
            };
            columns.insert(
                name.clone(),
                match &self.stats[i] {
                    Stat::Count(_) | Stat::Units => describe(&scales[0], 1.0),
                    Stat::Sum(m) => describe(&scales[0], m.grid),
                    Stat::Avg(m) => json!({
                        "mechanism": "noisy sum / noisy count",
                        "epsilon": 2.0 * share,
                        "sum": describe(&scales[0], m.grid),
                        "count": describe(&scales[1], 1.0),
                    }),
                },
            );
        }
        let mut report = json!({
            "epsilon": self.epsilon,
            "delta": self.delta,
            "max_contributions": k,
            "groups": if self.thresholded() { "thresholded" } else { "public domain" },
            "columns": columns,
        });
        if self.thresholded() {
            report["threshold"] = json!(self.tau(count_scale));
        }
        Ok(report)
    }
}

/// The dataset column `e` reads unchanged, if it is a column of `plan`'s output.
fn source(plan: &LogicalPlan, e: &Expr) -> Option<(String, String)> {
    let Expr::Column(c) = e else { return None };
    origin(plan, plan.schema().index_of_column(c).ok()?)
}

/// Whether `column` is the privacy unit of its dataset.
fn is_unit(contract: &Contract, column: Option<(String, String)>) -> bool {
    column.is_some_and(|(d, c)| contract.dataset(&d).is_some_and(|d| d.privacy_unit == c))
}

fn shape(node: &LogicalPlan) -> EngineError {
    refuse(format!(
        "a DP query is one aggregation (SELECT keys, statistics ... GROUP BY keys [ORDER BY]); \
         found {} where the aggregation should be (HAVING and LIMIT would act on exact values)",
        node.display().to_string().split(':').next().unwrap_or("?")
    ))
}

/// The aggregation's input may only scan, filter, project and inner-join on privacy units.
fn check_input(plan: &LogicalPlan, contract: &Contract) -> Result<(), EngineError> {
    let subquery = |e: &Expr| {
        e.exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
            ))
        })
        .unwrap_or(true)
    };
    match plan {
        LogicalPlan::TableScan(_) => Ok(()),
        LogicalPlan::Filter(f) => {
            if subquery(&f.predicate) {
                return Err(refuse("subqueries are refused in DP queries"));
            }
            check_input(&f.input, contract)
        }
        LogicalPlan::Projection(p) => {
            if p.expr.iter().any(subquery) {
                return Err(refuse("subqueries are refused in DP queries"));
            }
            check_input(&p.input, contract)
        }
        LogicalPlan::SubqueryAlias(a) => check_input(&a.input, contract),
        LogicalPlan::Join(j) => {
            // `ON a = b` is in `on` or, as the SQL planner leaves it, a conjunct of `filter`.
            let mut pairs: Vec<(&Expr, &Expr)> = j.on.iter().map(|(l, r)| (l, r)).collect();
            for conjunct in j
                .filter
                .as_ref()
                .map(datafusion::logical_expr::utils::split_conjunction)
                .unwrap_or_default()
            {
                if let Expr::BinaryExpr(b) = conjunct
                    && b.op == datafusion::logical_expr::Operator::Eq
                {
                    pairs.push((&b.left, &b.right));
                    pairs.push((&b.right, &b.left));
                }
            }
            let linked = pairs.iter().any(|(l, r)| {
                is_unit(contract, source(&j.left, l)) && is_unit(contract, source(&j.right, r))
            });
            if j.join_type != JoinType::Inner || !linked {
                return Err(refuse(
                    "DP queries may join datasets only with INNER JOIN ... ON a.unit = b.unit, on \
                     their privacy units (so that every joined row belongs to one person)",
                ));
            }
            if j.filter.as_ref().is_some_and(subquery) {
                return Err(refuse("subqueries are refused in DP queries"));
            }
            check_input(&j.left, contract)?;
            check_input(&j.right, contract)
        }
        other => Err(refuse(format!(
            "{} is refused below a DP aggregation",
            other.display().to_string().split(':').next().unwrap_or("?")
        ))),
    }
}

fn stat(
    e: &Expr,
    input: &LogicalPlan,
    contract: &Contract,
    dp: &DpSettings,
) -> Result<Stat, EngineError> {
    let mut inner = e;
    while let Expr::Alias(a) = inner {
        inner = &a.expr;
    }
    let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
        return Err(refuse(format!("{e} is not an aggregate")));
    };
    if params.filter.is_some() || !params.order_by.is_empty() {
        return Err(refuse(
            "FILTER and ORDER BY inside aggregates are refused in DP queries",
        ));
    }
    let name = func.name().to_ascii_lowercase();
    let arg = params.args.first();
    match (name.as_str(), params.distinct, arg) {
        ("count", false, None) => Ok(Stat::Count(None)),
        ("count", false, Some(Expr::Literal(v, _))) if !v.is_null() => Ok(Stat::Count(None)),
        ("count", false, Some(a)) => Ok(Stat::Count(Some(a.clone()))),
        ("count", true, Some(a)) => {
            if is_unit(contract, source(input, a)) {
                Ok(Stat::Units)
            } else {
                Err(refuse(
                    "COUNT(DISTINCT ...) is allowed only of a privacy unit in DP queries",
                ))
            }
        }
        ("sum" | "avg" | "mean", false, Some(a)) => {
            let mut measures = std::collections::BTreeSet::new();
            let mut others = false;
            a.apply(|e| {
                if let Expr::Column(_) = e {
                    match source(input, e) {
                        Some((d, c))
                            if contract
                                .dataset(&d)
                                .and_then(|ds| ds.column(&c))
                                .is_some_and(|col| col.role == ColumnRole::Measure) =>
                        {
                            measures.insert((d, c));
                        }
                        _ => others = true,
                    }
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })?;
            let single = measures.len() == 1 && !others;
            let Some((d, c)) = measures.into_iter().next().filter(|_| single) else {
                return Err(refuse(format!(
                    "{name}({a}) must read exactly one measure column and nothing else"
                )));
            };
            let bounds = dp.bounds_of(&d, &c).ok_or_else(|| {
                refuse(format!(
                    "{name} of {d}.{c} needs clamping bounds in privacy.dp.bounds (\"{d}.{c}\" = [low, high])"
                ))
            })?;
            let m = Measure::new(a.clone(), bounds);
            Ok(if name == "sum" {
                Stat::Sum(m)
            } else {
                Stat::Avg(m)
            })
        }
        _ => Err(refuse(format!(
            "aggregate {name}{} is not available under DP (COUNT, COUNT(DISTINCT privacy unit), \
             SUM and AVG are)",
            if params.distinct { " DISTINCT" } else { "" }
        ))),
    }
}

/// `x` plus discrete Laplace noise of `scale`, from OpenDP's exact sampler.
fn noise(x: i64, scale: &RBig) -> Result<i64, EngineError> {
    let z: IBig = opendp::traits::samplers::sample_discrete_laplace(scale.clone())
        .map_err(|e| EngineError::Execution(format!("noise sampling failed: {e:?}")))?;
    let z = i64::try_from(&z).map_err(|_| EngineError::Execution("noise out of range".into()))?;
    Ok(x.saturating_add(z))
}

/// The smallest m with P(|Z| ≥ m) ≤ 5 % for discrete Laplace Z of `scale` b:
/// P(|Z| ≥ m) = 2·p^m/(1+p), p = e^(-1/b).
fn ci95(scale: &RBig) -> u64 {
    let b = approx(scale);
    let p = (-1.0 / b).exp();
    if p <= 0.0 {
        return 0;
    }
    ((0.025 * (1.0 + p)).ln() / p.ln()).ceil().max(0.0) as u64
}

fn approx(r: &RBig) -> f64 {
    r.to_f64().value()
}

fn float(v: f64) -> String {
    format!("CAST('{v:e}' AS DOUBLE)")
}

fn domain_json(v: &DomainValue) -> Value {
    match v {
        DomainValue::Bool(b) => json!(b),
        DomainValue::Int(i) => json!(i),
        DomainValue::Text(s) => json!(s),
    }
}

/// Every combination of one value per domain (one empty key without domains).
fn product(domains: &[Vec<Value>]) -> Vec<Vec<Value>> {
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

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
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

#[cfg(test)]
mod tests;
