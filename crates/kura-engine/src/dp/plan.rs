//! Step 0: the query's shape checked and turned into a [`DpPlan`]: which statistics, over
//! which measures and bounds, grouped by which keys, and what it costs.

use std::sync::Arc;

use dashu::rational::RBig;
use datafusion::common::Column;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, JoinType, LogicalPlan, SortExpr};
use datafusion::prelude::SessionContext;
use kura_contract::dp::{DpSettings, MAX_DOMAIN_CELLS};
use kura_contract::{ColumnRole, Contract};

use crate::EngineError;
use crate::lineage::{datasets_read, origin};

use super::*;

impl DpPlan {
    pub(super) async fn of(
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
        let k = u64::from(dp.max_contributions).min(rows_per_person(contract, &datasets));
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
            // A person has at most the product of each dataset's rows per person in the
            // joined rows (one row each where datasets hold one row per person, which uploads
            // enforce); bounding keeps at most k of them whatever the data, so a smaller k is
            // only less noise, never a weaker bound.
            k,
            epsilon,
            delta: if thresholded { dp.query_delta } else { 0.0 },
        })
    }

    /// τ = k + b·ln(k/δ) for a selection count of noise scale b, rounded up with a margin of
    /// one: a group held by one person (at most k rows, in at most k groups) clears it with
    /// probability at most δ.
    pub(super) fn tau(&self, selection_scale: &RBig) -> f64 {
        let k = self.k as f64;
        k + (approx(selection_scale) * (k / self.delta).ln()).ceil() + 1.0
    }

    pub(super) fn thresholded(&self) -> bool {
        self.domains.is_none()
    }

    /// How many noisy values each released group gets.
    pub(super) fn noisy_values(&self) -> usize {
        let per_stat: usize = self
            .stats
            .iter()
            .map(|s| if matches!(s, Stat::Avg(_)) { 2 } else { 1 })
            .sum();
        per_stat + usize::from(self.thresholded())
    }
}

/// The most rows one person can have after joining `datasets` on their privacy units: the
/// product of their `max_contributions`.
fn rows_per_person(contract: &Contract, datasets: &[String]) -> u64 {
    datasets
        .iter()
        .filter_map(|d| contract.dataset(d))
        .fold(1u64, |k, d| {
            k.saturating_mul(u64::from(d.max_contributions))
        })
}

/// The dataset column `e` reads unchanged, if it is a column of `plan`'s output.
pub(super) fn source(plan: &LogicalPlan, e: &Expr) -> Option<(String, String)> {
    let Expr::Column(c) = e else { return None };
    origin(plan, plan.schema().index_of_column(c).ok()?)
}

/// Whether `column` is the privacy unit of its dataset.
pub(super) fn is_unit(contract: &Contract, column: Option<(String, String)>) -> bool {
    column.is_some_and(|(d, c)| contract.dataset(&d).is_some_and(|d| d.privacy_unit == c))
}

pub(super) fn shape(node: &LogicalPlan) -> EngineError {
    refuse(format!(
        "a DP query is one aggregation (SELECT keys, statistics ... GROUP BY keys [ORDER BY]); \
         found {} where the aggregation should be (HAVING and LIMIT would act on exact values)",
        node.display().to_string().split(':').next().unwrap_or("?")
    ))
}

/// The aggregation's input may only scan, filter, project and inner-join on privacy units.
pub(super) fn check_input(plan: &LogicalPlan, contract: &Contract) -> Result<(), EngineError> {
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

pub(super) fn stat(
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
