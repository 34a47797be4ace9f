//! The minimum-group-size rule, enforced on the logical plan.
//!
//! A query's output must come from aggregations (one, or the branches of a `UNION ALL`), with
//! only projection, `HAVING`, `ORDER BY`, `LIMIT` and aliasing above them. Each such aggregation
//! is run on its own first, as a *counted* plan ([`Counted`]): the aggregation with hidden counts
//! of distinct privacy units appended after its own columns, counted over the aggregation's input
//! (after joins and filters) and only up to `min_group_size` ([`crate::units`]). For every
//! contributing dataset there are counts
//!
//! - of the group (its rows),
//! - of each aggregate's contributors: the rows where its argument is not null and its
//!   `FILTER` holds, so that a value resting on fewer people than its group is caught, and
//! - of the people in which two of its aggregates' contributors differ, which must be zero or
//!   at least the minimum, so that `COUNT(*) - COUNT(x)` cannot isolate a few people.
//!
//! A group any of whose counts fails is dropped right there, **before** `HAVING`, `ORDER BY`
//! or `LIMIT` see it; only the number of such groups is reported, and it depends on nothing but
//! the sizes of groups and of their contributor sets. The operators above the aggregations then
//! run over the released groups alone ([`substitute`]), in a session that holds no data.
//!
//! Branches of a `UNION ALL` must read disjoint sets of datasets: a total beside its parts
//! (`... GROUP BY region UNION ALL SELECT 'all', ...`) would give away a suppressed part by
//! subtraction. Anything this rule cannot reason about is refused rather than let through.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::{Column, TableReference};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, ExprFunctionExt, ExprSchemable, LogicalPlan, LogicalPlanBuilder, Union,
};
use datafusion::prelude::lit;
use kura_contract::Contract;

use crate::EngineError;
use crate::lineage::{datasets_read, origin, tables_scanned};

/// Prefix of the hidden count columns.
pub const HIDDEN_PREFIX: &str = "__kura_units_";

/// Prefix of the columns that carry a pooled dataset's privacy unit and name from its
/// `UNION ALL` branch to the aggregation (a query's own columns may not use it).
const POOL_PREFIX: &str = "__kura_pool_";

const RULE: &str = "min-group-size";

/// How a hidden column decides whether its group may be released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The group, or an aggregate's contributors, must cover at least the minimum.
    AtLeast,
    /// Two aggregates' contributors must be the same people, or differ by at least the minimum.
    ZeroOrAtLeast,
    /// The contributors of a cell (measure and dataset named here), for overlap control
    /// ([`crate::overlap`]).
    Cell(String),
    /// No person of a dataset stands behind more than this many of the rows an aggregate
    /// reads ([`crate::rows`]): a join may not weigh one person more than the dataset allows.
    AtMost(u64),
}

/// One aggregation of the query with its hidden counts.
#[derive(Debug)]
pub struct Counted {
    /// The aggregation; its output is its own columns followed by one column per check.
    pub plan: LogicalPlan,
    /// Its own columns (the hidden counts follow them).
    pub visible: usize,
    /// What each hidden column checks.
    pub checks: Vec<Check>,
    /// For each `UNION ALL` pool with `min_pooled_datasets` above 1: that minimum, and the
    /// hidden columns (indices into `checks`) that count each pooled dataset's people in the
    /// group. A group needs that many of them above zero.
    pub pooled: Vec<(u64, Vec<usize>)>,
}

/// A query whose aggregations carry the threshold's counts.
#[derive(Debug)]
pub struct Guarded {
    /// The query as written; its aggregations are replaced by their released groups to run
    /// what lies above them ([`substitute`]).
    pub plan: LogicalPlan,
    /// The query's aggregations, in the order [`substitute`] meets them.
    pub counted: Vec<Counted>,
    /// The columns the caller sees.
    pub visible_columns: usize,
    /// Datasets the query reads, sorted.
    pub datasets: Vec<String>,
}

fn refuse(reason: impl Into<String>) -> EngineError {
    EngineError::Refused {
        rule: RULE,
        reason: reason.into(),
    }
}

/// Finds the query's aggregations and attaches the hidden counts to each, or refuses the query.
/// With `overlap`, each aggregation also collects the contributors of its cells.
pub fn guard(
    plan: LogicalPlan,
    contract: &Contract,
    overlap: Option<&crate::overlap::Overlap>,
) -> Result<Guarded, EngineError> {
    guard_with(plan, contract, overlap, true)
}

/// [`guard`] for a count that only asks how many people a model's rows cover: no bound on one
/// person's rows per cell, which weighs released figures, not coverage.
pub(crate) fn guard_coverage(
    plan: LogicalPlan,
    contract: &Contract,
) -> Result<Guarded, EngineError> {
    guard_with(plan, contract, None, false)
}

fn guard_with(
    plan: LogicalPlan,
    contract: &Contract,
    overlap: Option<&crate::overlap::Overlap>,
    bound_rows: bool,
) -> Result<Guarded, EngineError> {
    let visible_columns = plan.schema().fields().len();
    if let Some(f) = plan
        .schema()
        .fields()
        .iter()
        .find(|f| f.name().starts_with(HIDDEN_PREFIX))
    {
        return Err(refuse(format!(
            "the output column name {:?} is reserved (names starting with {HIDDEN_PREFIX})",
            f.name()
        )));
    }
    let datasets = datasets_read(&plan, contract)?;
    let mut counted = Vec::new();
    let plan = map_chain(plan, &mut |agg| {
        counted.push(count(agg.clone(), contract, overlap, bound_rows)?);
        Ok(LogicalPlan::Aggregate(agg))
    })?;
    Ok(Guarded {
        plan,
        counted,
        visible_columns,
        datasets: datasets.into_iter().collect(),
    })
}

/// Rebuilds the chain of operators from the output down to the aggregations, each aggregation
/// replaced by what `f` makes of it. Refuses any other shape.
fn map_chain(
    plan: LogicalPlan,
    f: &mut dyn FnMut(Aggregate) -> Result<LogicalPlan, EngineError>,
) -> Result<LogicalPlan, EngineError> {
    match plan {
        LogicalPlan::Aggregate(agg) => f(agg),
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_) => {
            let input = map_chain(plan.inputs()[0].clone(), f)?;
            Ok(plan.with_new_exprs(plan.expressions(), vec![input])?)
        }
        LogicalPlan::Union(union) => {
            let mut seen = BTreeSet::new();
            for input in &union.inputs {
                for table in tables_scanned(input) {
                    if !seen.insert(table.clone()) {
                        return Err(EngineError::Refused {
                            rule: "union-complement",
                            reason: format!(
                                "two branches of the UNION ALL read {table:?}: a total beside \
                                 its parts would give a suppressed part away by subtraction; \
                                 ask for them in separate queries"
                            ),
                        });
                    }
                }
            }
            let inputs = union
                .inputs
                .into_iter()
                .map(|input| map_chain(Arc::unwrap_or_clone(input), f).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(LogicalPlan::Union(Union::try_new_with_loose_types(inputs)?))
        }
        other => Err(refuse(format!(
            "only aggregated statistics may leave the enclave: the query's output is produced by \
             {} before (or instead of) a GROUP BY aggregation",
            describe(&other)
        ))),
    }
}

/// The query with each aggregation replaced by a table of its released groups (`released[i]`
/// for the i-th aggregation of [`Guarded::counted`]), qualified and named as the aggregation's
/// output was, so that `HAVING`, `ORDER BY` and `LIMIT` run over released groups only.
pub fn substitute(
    plan: LogicalPlan,
    mut released: Vec<Arc<dyn datafusion::datasource::TableProvider>>,
) -> Result<LogicalPlan, EngineError> {
    released.reverse();
    let mut index = 0;
    map_chain(plan, &mut |agg| {
        let table = released
            .pop()
            .ok_or_else(|| EngineError::Execution("released groups missing".into()))?;
        let name = TableReference::bare(format!("__kura_released_{index}"));
        index += 1;
        let columns = agg
            .schema
            .iter()
            .enumerate()
            .map(|(i, (qualifier, field))| {
                Expr::Column(Column::new(Some(name.clone()), format!("c{i}")))
                    .alias_qualified(qualifier.cloned(), field.name())
            })
            .collect::<Vec<_>>();
        Ok(LogicalPlanBuilder::scan(
            name.clone(),
            datafusion::datasource::provider_as_source(table),
            None,
        )?
        .project(columns)?
        .build()?)
    })
}

fn describe(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::TableScan(s) => format!("a plain read of {}", s.table_name),
        LogicalPlan::Join(_) => "a join".into(),
        LogicalPlan::Union(_) => "a UNION".into(),
        LogicalPlan::Distinct(_) => "DISTINCT".into(),
        LogicalPlan::Window(_) => "a window function".into(),
        LogicalPlan::Values(_) => "VALUES".into(),
        LogicalPlan::EmptyRelation(_) => "a constant SELECT without FROM".into(),
        other => format!(
            "a {} operator",
            other
                .display()
                .to_string()
                .split(':')
                .next()
                .unwrap_or("unknown")
        ),
    }
}

/// The aggregation `agg` with its hidden counts ([`Check`]).
fn count(
    agg: Aggregate,
    contract: &Contract,
    overlap: Option<&crate::overlap::Overlap>,
    bound_rows: bool,
) -> Result<Counted, EngineError> {
    // Datasets pooled by a UNION ALL carry their privacy unit and their name up to here, in
    // columns whose names the query may not use itself.
    let reserved = datafusion::common::tree_node::TreeNode::exists(agg.input.as_ref(), |node| {
        Ok(node
            .schema()
            .fields()
            .iter()
            .any(|f| f.name().starts_with(POOL_PREFIX)))
    })
    .unwrap_or(true);
    if reserved {
        return Err(refuse(format!(
            "names starting with {POOL_PREFIX} are reserved"
        )));
    }
    let mut pools = Vec::new();
    let input = Arc::new(pooled(
        Arc::unwrap_or_clone(agg.input),
        contract,
        &mut pools,
    )?);
    let schema = input.schema().clone();
    let datasets = datasets_read(&input, contract)?;
    // Each contributing dataset's privacy unit, as it reaches the aggregation.
    let mut units: Vec<Unit> = Vec::new();
    for name in &datasets {
        let dataset = contract.dataset(name).expect("checked in datasets_read");
        let before = units.len();
        for i in 0..schema.fields().len() {
            if origin(&input, i).as_ref() == Some(&(name.clone(), dataset.privacy_unit.clone())) {
                let (qualifier, field) = schema.qualified_field(i);
                units.push(Unit {
                    expr: Expr::Column(Column::new(qualifier.cloned(), field.name())),
                    only: None,
                    dataset: name.clone(),
                    pool: None,
                });
            }
        }
        let in_pool = pools.iter().any(|p| p.datasets.contains(name));
        if units.len() == before && !in_pool {
            return Err(refuse(format!(
                "cannot count the distinct people behind each group: the privacy unit \
                 {name}.{} does not reach the aggregation (a subquery dropped it?)",
                dataset.privacy_unit
            )));
        }
    }
    // A pooled dataset's people are the unit column's values on the rows tagged with its name.
    for pool in &pools {
        for name in &pool.datasets {
            units.push(Unit {
                expr: pool.column(&schema, &pool.unit)?,
                only: Some(pool.column(&schema, &pool.dataset)?.eq(lit(name.as_str()))),
                dataset: name.clone(),
                pool: Some(pool.index),
            });
        }
    }
    if units.is_empty() {
        return Err(refuse("the aggregation reads no dataset of the contract"));
    }
    if overlap.is_some() && !pools.is_empty() {
        return Err(refuse(
            "overlap control does not count contributors through a UNION ALL inside an \
             aggregation yet: pool the datasets in separate queries",
        ));
    }
    // Whose rows each aggregate's value rests on: the group (`None`) or a narrower condition.
    let contributions = agg
        .aggr_expr
        .iter()
        .map(|e| contribution(e, &schema))
        .collect::<Result<Vec<_>, _>>()?;
    let mut conditions: Vec<&Option<Expr>> = Vec::new();
    for condition in &contributions {
        if !conditions.contains(&condition) {
            conditions.push(condition);
        }
    }
    let cap = contract.output.min_group_size;
    let mut extra = Vec::new();
    let mut checks = Vec::new();
    let mut add = |condition: Option<Expr>, check: Check| -> Result<(), EngineError> {
        for unit in &units {
            let counted = unit.on_rows(crate::units::expr(unit.expr.clone(), cap), &condition)?;
            extra.push(counted.alias(format!("{HIDDEN_PREFIX}{}", checks.len())));
            // A pooled dataset may have no rows in a group; if it has any, enough people.
            checks.push(match (&unit.only, &check) {
                (Some(_), Check::AtLeast) => Check::ZeroOrAtLeast,
                _ => check.clone(),
            });
        }
        Ok(())
    };
    // The group itself (its keys are released), then each narrower set of contributors: one
    // block of hidden columns per set, one column per unit in `units`' order.
    add(None, Check::AtLeast)?;
    let narrower: Vec<&Expr> = conditions.iter().copied().flatten().collect();
    for c in &narrower {
        add(Some((*c).clone()), Check::AtLeast)?;
    }
    let block = |condition: &Option<Expr>| {
        let n = match condition {
            None => 0,
            Some(c) => 1 + narrower.iter().position(|n| *n == c).unwrap_or(0),
        };
        n * units.len()
    };
    let pooled = pooled_minimum(
        contract,
        &agg.aggr_expr,
        &contributions,
        &block,
        &units,
        &pools,
        &input,
        &datasets,
    )?;
    // People counted by one released aggregate but not by another (booleans here are never
    // null). Only aggregates that are released are compared: without a `COUNT(*)` beside it,
    // an `AVG(x)` over fewer people than its group reveals nothing about the others.
    for (i, a) in conditions.iter().enumerate() {
        for b in &conditions[i + 1..] {
            let differ = match (*a, *b) {
                (None, Some(c)) | (Some(c), None) => Expr::Not(Box::new(c.clone())),
                (Some(a), Some(b)) => a.clone().not_eq(b.clone()),
                (None, None) => continue,
            };
            add(Some(differ), Check::ZeroOrAtLeast)?;
        }
    }
    // A group key taken from another dataset than the one an aggregate reads must come from a
    // dataset with one row per person: otherwise one row of the read dataset reaches several
    // groups (a patient's BMI in the cell of each kind of their claims), and a filter that
    // drops one of them makes two cells of one answer differ by that person alone.
    if datafusion::common::tree_node::TreeNode::exists(input.as_ref(), |node| {
        Ok(matches!(node, LogicalPlan::Join(_)))
    })
    .unwrap_or(true)
    {
        let joined = equal_units_in(&units, &input, true);
        keys_of_one_row_per_person(
            contract,
            &agg.group_expr,
            &agg.aggr_expr,
            &input,
            (&units, &joined),
        )?;
    }
    // Over a join, each aggregate's rows per person of every dataset whose values it reads (or,
    // for a count of rows, of every dataset): at most the dataset's `max_contributions`.
    let joined = bound_rows
        && datafusion::common::tree_node::TreeNode::exists(input.as_ref(), |node| {
            Ok(matches!(node, LogicalPlan::Join(_)))
        })
        .unwrap_or(true);
    if joined {
        // Units an inner join made equal have the same rows per person: one count serves them
        // all, under the tightest bound among the datasets the aggregate weighs.
        let same = equal_units(&units, &input);
        let mut bounded: Vec<(usize, u64, &Option<Expr>)> = Vec::new();
        for (e, condition) in agg.aggr_expr.iter().zip(&contributions) {
            let read = datasets_weighed(e, &input);
            let mut bounds: Vec<(usize, u64)> = Vec::new();
            for (i, unit) in units.iter().enumerate() {
                if !read.contains(&unit.dataset) {
                    continue;
                }
                // A join repeats this dataset's rows only through a partner joined on something
                // else than this unit, or one with several rows per person. Joined on the unit
                // to datasets that declare one row per person, nothing repeats its rows (and its
                // own rows are its provider's): no count is needed.
                let repeated = units.iter().enumerate().any(|(j, other)| {
                    j != i
                        && (other.pool.is_none() || other.pool != unit.pool)
                        && (same[j] != same[i]
                            || contract
                                .dataset(&other.dataset)
                                .is_some_and(|d| d.max_contributions > 1))
                });
                if !repeated {
                    continue;
                }
                let most = u64::from(
                    contract
                        .dataset(&unit.dataset)
                        .expect("checked in datasets_read")
                        .max_contributions,
                );
                match bounds.iter_mut().find(|(j, _)| *j == same[i]) {
                    Some((_, m)) => *m = (*m).min(most),
                    None => bounds.push((same[i], most)),
                }
            }
            for (i, most) in bounds {
                if bounded.contains(&(i, most, condition)) {
                    continue;
                }
                bounded.push((i, most, condition));
                let unit = &units[i];
                let rows =
                    unit.on_rows(crate::rows::expr(unit.expr.clone(), most + 1), condition)?;
                extra.push(rows.alias(format!("{HIDDEN_PREFIX}{}", checks.len())));
                checks.push(Check::AtMost(most));
            }
        }
    }
    // Overlap control: each cell's contributors, per measure and dataset.
    if let Some(overlap) = overlap {
        let mut cells: Vec<(String, Expr, &Option<Expr>)> =
            vec![("*".into(), datafusion::prelude::lit(true), &None)];
        for (e, condition) in agg.aggr_expr.iter().zip(&contributions) {
            let (measure, value) = measure(e, &input);
            if !cells
                .iter()
                .any(|(m, _, c)| *m == measure && *c == condition)
            {
                cells.push((measure, value, condition));
            }
        }
        for (measure, value, condition) in cells {
            for Unit {
                expr: unit,
                dataset,
                ..
            } in &units
            {
                let set = overlap.expr(unit.clone(), value.clone());
                let set = match &condition {
                    None => set,
                    Some(c) => set.filter(c.clone()).build()?,
                };
                extra.push(set.alias(format!("{HIDDEN_PREFIX}{}", checks.len())));
                checks.push(Check::Cell(format!("{measure}@{dataset}")));
            }
        }
    }
    let visible = agg.schema.fields().len();
    let mut aggr_expr = agg.aggr_expr;
    aggr_expr.extend(extra);
    let plan = LogicalPlan::Aggregate(Aggregate::try_new(input, agg.group_expr, aggr_expr)?);
    Ok(Counted {
        plan,
        visible,
        checks,
        pooled,
    })
}

/// `output.min_pooled_datasets` for every figure of an aggregation: for each aggregate (and
/// the group's keys) and each pool under it, the hidden columns that count the people of each
/// pooled dataset among its contributors; at release, at least the minimum of them must be above
/// zero. A pooled dataset whose branch supplies the aggregate's argument as a constant (or a
/// computation on constants) does not count: its rows pad the pool without contributing a
/// value. An aggregation with no pool must read at least the minimum of datasets (each joined
/// dataset is in every row), or it is refused before it runs.
#[allow(clippy::too_many_arguments)]
fn pooled_minimum(
    contract: &Contract,
    aggregates: &[Expr],
    contributions: &[Option<Expr>],
    block: &dyn Fn(&Option<Expr>) -> usize,
    units: &[Unit],
    pools: &[Pool],
    input: &LogicalPlan,
    datasets: &BTreeSet<String>,
) -> Result<Vec<(u64, Vec<usize>)>, EngineError> {
    let min = contract.output.min_pooled_datasets;
    if min <= 1 {
        return Ok(Vec::new());
    }
    let too_few = |what: &str, rest_on: Vec<&String>| EngineError::Refused {
        rule: "min-pooled-datasets",
        reason: format!(
            "{what} can rest on {} dataset(s) ({}), and the contract asks that every released \
             figure rest on rows of at least {min} datasets (output.min_pooled_datasets): pool \
             more datasets with UNION ALL, each branch supplying the figure's values",
            rest_on.len(),
            rest_on
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if pools.is_empty() {
        return if (datasets.len() as u64) < min {
            Err(too_few("this aggregation", datasets.iter().collect()))
        } else {
            Ok(Vec::new())
        };
    }
    let mut out: Vec<(u64, Vec<usize>)> = Vec::new();
    let figures =
        std::iter::once((None, &None)).chain(aggregates.iter().map(Some).zip(contributions));
    for (aggregate, condition) in figures {
        let padding = aggregate.map_or_else(BTreeSet::new, |a| constant_argument(a, input));
        for pool in pools {
            let of: Vec<usize> = units
                .iter()
                .enumerate()
                .filter(|(_, u)| u.pool == Some(pool.index) && !padding.contains(&u.dataset))
                .map(|(i, _)| block(condition) + i)
                .collect();
            if (of.len() as u64) < min {
                let what = aggregate.map_or_else(|| "the group".to_string(), |a| a.to_string());
                let rest_on = pool.datasets.iter().filter(|d| !padding.contains(*d));
                return Err(too_few(&what, rest_on.collect()));
            }
            if !out.iter().any(|(_, o)| *o == of) {
                out.push((min, of));
            }
        }
    }
    Ok(out)
}

/// The datasets in whose rows the argument of `aggregate` is a constant: pooled branches that
/// supply it as a literal or a computation on literals.
fn constant_argument(aggregate: &Expr, input: &LogicalPlan) -> BTreeSet<String> {
    let mut expr = aggregate;
    while let Expr::Alias(a) = expr {
        expr = &a.expr;
    }
    let Expr::AggregateFunction(AggregateFunction { func, params }) = expr else {
        return BTreeSet::new();
    };
    // `COUNT(*)` (planned as `COUNT(1)`) and `COUNT(x)` count rows, and every branch's rows
    // are rows of its dataset.
    if func.name().eq_ignore_ascii_case("count") && !params.distinct {
        return BTreeSet::new();
    }
    let mut constant: Option<BTreeSet<String>> = None;
    for arg in &params.args {
        let here = constant_in_expr(arg, input);
        constant = Some(match constant {
            None => here,
            Some(c) => c.intersection(&here).cloned().collect(),
        });
    }
    // `COUNT(*)` counts rows: every branch's rows count.
    constant.unwrap_or_default()
}

/// For each unit, the first unit equal to it on every row: two units are equal where an inner
/// join's condition compares them as the columns that reach the aggregation (a pooled unit,
/// which stands for several datasets, only itself).
fn equal_units(units: &[Unit], input: &LogicalPlan) -> Vec<usize> {
    equal_units_in(units, input, false)
}

/// [`equal_units`], with `outer` also through outer joins: a left join of patients to claims
/// on the patient pairs each claim with that patient's row or none, never another's.
fn equal_units_in(units: &[Unit], input: &LogicalPlan, outer: bool) -> Vec<usize> {
    let mut same: Vec<usize> = (0..units.len()).collect();
    let column = |e: &Expr| match e {
        Expr::Column(c) => Some(c.clone()),
        _ => None,
    };
    // The written plan keeps `ON a = b` in the join's filter, and an implicit join's in a
    // filter above it: equalities of two columns there count as the join's keys.
    let inner = |plan: &LogicalPlan| {
        use datafusion::common::JoinType::{Full, Inner, Left, Right};
        matches!(plan, LogicalPlan::Join(j)
            if j.join_type == Inner || (outer && matches!(j.join_type, Left | Right | Full)))
    };
    let _ = datafusion::common::tree_node::TreeNode::apply(input, |node| {
        let equalities = |predicate: Option<&Expr>| -> Vec<(Expr, Expr)> {
            predicate
                .map(datafusion::logical_expr::utils::split_conjunction)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|conjunct| match conjunct {
                    Expr::BinaryExpr(datafusion::logical_expr::BinaryExpr {
                        left,
                        op: datafusion::logical_expr::Operator::Eq,
                        right,
                    }) => Some((left.as_ref().clone(), right.as_ref().clone())),
                    _ => None,
                })
                .collect()
        };
        let pairs: Vec<(Expr, Expr)> = match node {
            LogicalPlan::Join(j) if inner(node) => {
                let mut pairs = j.on.clone();
                pairs.extend(equalities(j.filter.as_ref()));
                pairs
            }
            LogicalPlan::Filter(f) if inner(&f.input) => equalities(Some(&f.predicate)),
            _ => Vec::new(),
        };
        {
            for (l, r) in &pairs {
                let (Some(l), Some(r)) = (column(l), column(r)) else {
                    continue;
                };
                let find = |c: &Column| {
                    units
                        .iter()
                        .position(|u| u.only.is_none() && column(&u.expr).as_ref() == Some(c))
                };
                if let (Some(a), Some(b)) = (find(&l), find(&r)) {
                    let (from, to) = (same[a].max(same[b]), same[a].min(same[b]));
                    for s in same.iter_mut() {
                        if *s == from {
                            *s = to;
                        }
                    }
                }
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    same
}

/// Refuses a group key from another dataset than the one an aggregate reads, unless that
/// dataset holds one row per person (its `max_contributions` is 1, which uploads enforce) and
/// is joined to the aggregate's dataset on their privacy units (`joined`: units made equal by a
/// join, [`equal_units_in`]): only then does each row the aggregate reads meet one row of the
/// key's dataset, and so stand in one group. Joined on another identifier (a household), a
/// person's rows could meet two rows of the key's dataset, in two groups of one answer.
fn keys_of_one_row_per_person(
    contract: &Contract,
    group_expr: &[Expr],
    aggr_expr: &[Expr],
    input: &LogicalPlan,
    (units, joined): (&[Unit], &[usize]),
) -> Result<(), EngineError> {
    let keys: BTreeSet<String> = group_expr
        .iter()
        .flat_map(|k| sources_in_expr(k, input))
        .collect();
    // The classes of equal units each dataset's unit belongs to (a pooled dataset's unit is
    // equal to none: its pool may hold a person in several datasets).
    let classes = |dataset: &str| -> BTreeSet<usize> {
        units
            .iter()
            .zip(joined)
            .filter(|(u, _)| u.dataset == dataset && u.only.is_none())
            .map(|(_, class)| *class)
            .collect()
    };
    for aggregate in aggr_expr {
        let read = datasets_read_by(aggregate, input);
        for key in &keys {
            let many = contract
                .dataset(key)
                .is_some_and(|d| d.max_contributions > 1);
            let others: Vec<&String> = read.iter().filter(|d| *d != key).collect();
            if others.is_empty() {
                continue;
            }
            if many {
                return Err(EngineError::Refused {
                    rule: "group-keys",
                    reason: format!(
                        "{aggregate} reads {} but is grouped by a column of {key:?}, which has \
                         several rows per person (max_contributions): one person's row would \
                         stand in several groups of one answer, and two of them could differ by \
                         that person alone. Group by columns of the dataset the aggregate reads, \
                         or of a dataset with one row per person",
                        read.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            let pooled = units.iter().any(|u| &u.dataset == key && u.pool.is_some());
            let key_classes = classes(key);
            let on_units = others.iter().all(|d| !classes(d).is_disjoint(&key_classes));
            if !pooled && !on_units {
                return Err(EngineError::Refused {
                    rule: "group-keys",
                    reason: format!(
                        "{aggregate} reads {} but is grouped by a column of {key:?}, which is \
                         not joined to it on their privacy units: joined on another column, one \
                         person's rows could meet two rows of {key:?} and stand in two groups \
                         of one answer. Join {key:?} on its privacy unit, or group by columns of \
                         the dataset the aggregate reads",
                        others
                            .iter()
                            .map(|d| d.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The datasets an aggregate's value depends on: its argument's (every dataset for a count of
/// rows), whether or not repeated rows change it.
fn datasets_read_by(aggregate: &Expr, input: &LogicalPlan) -> BTreeSet<String> {
    let mut expr = aggregate;
    while let Expr::Alias(a) = expr {
        expr = &a.expr;
    }
    let Expr::AggregateFunction(AggregateFunction { params, .. }) = expr else {
        return tables_scanned(input);
    };
    let read: BTreeSet<String> = params
        .args
        .iter()
        .flat_map(|arg| sources_in_expr(arg, input))
        .collect();
    if read.is_empty() {
        tables_scanned(input)
    } else {
        read
    }
}

/// The datasets whose rows an aggregate weighs: those its argument's values come from, every
/// dataset for a count of rows, none for a count of distinct values (a repeated row adds
/// nothing to it).
fn datasets_weighed(aggregate: &Expr, input: &LogicalPlan) -> BTreeSet<String> {
    let mut expr = aggregate;
    while let Expr::Alias(a) = expr {
        expr = &a.expr;
    }
    let Expr::AggregateFunction(AggregateFunction { func, params }) = expr else {
        return tables_scanned(input);
    };
    if params.distinct {
        return BTreeSet::new();
    }
    let count = func.name().eq_ignore_ascii_case("count");
    let read: BTreeSet<String> = params
        .args
        .iter()
        .flat_map(|arg| sources_in_expr(arg, input))
        .collect();
    if read.is_empty() || (count && params.args.iter().all(|a| a.column_refs().is_empty())) {
        // `COUNT(*)` (planned as `COUNT(1)`), or an aggregate of a constant: it counts rows.
        tables_scanned(input)
    } else {
        read
    }
}

/// The datasets whose columns `expr` (over `plan`'s output) is computed from.
fn sources_in_expr(expr: &Expr, plan: &LogicalPlan) -> BTreeSet<String> {
    expr.column_refs()
        .into_iter()
        .flat_map(|c| match plan.schema().index_of_column(c) {
            Ok(i) => sources(plan, i),
            Err(_) => tables_scanned(plan),
        })
        .collect()
}

/// The datasets whose columns output field `index` of `plan` is computed from (every dataset
/// the plan reads where it cannot tell).
fn sources(plan: &LogicalPlan, index: usize) -> BTreeSet<String> {
    use datafusion::common::JoinType;
    match plan {
        LogicalPlan::TableScan(scan) => [scan.table_name.table().to_string()].into(),
        LogicalPlan::Projection(p) => match p.expr.get(index) {
            Some(e) => sources_in_expr(e, &p.input),
            None => tables_scanned(plan),
        },
        LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Repartition(_) => sources(plan.inputs()[0], index),
        LogicalPlan::Union(u) => u.inputs.iter().flat_map(|b| sources(b, index)).collect(),
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti => sources(&j.left, index),
                JoinType::RightSemi | JoinType::RightAnti => sources(&j.right, index),
                _ if index < left => sources(&j.left, index),
                _ if matches!(j.join_type, JoinType::LeftMark | JoinType::RightMark) => {
                    tables_scanned(plan)
                }
                _ => sources(&j.right, index - left),
            }
        }
        _ => tables_scanned(plan),
    }
}

/// The datasets in whose rows `expr` (over `plan`'s output) is a constant.
fn constant_in_expr(expr: &Expr, plan: &LogicalPlan) -> BTreeSet<String> {
    let columns = expr.column_refs();
    if columns.is_empty() {
        return tables_scanned(plan);
    }
    let mut constant: Option<BTreeSet<String>> = None;
    for column in columns {
        let here = plan
            .schema()
            .index_of_column(column)
            .map(|i| constant_in(plan, i))
            .unwrap_or_default();
        constant = Some(match constant {
            None => here,
            Some(c) => c.intersection(&here).cloned().collect(),
        });
    }
    constant.unwrap_or_default()
}

/// The datasets in whose rows output field `index` of `plan` is a constant.
fn constant_in(plan: &LogicalPlan, index: usize) -> BTreeSet<String> {
    use datafusion::common::JoinType;
    match plan {
        LogicalPlan::Projection(p) => match p.expr.get(index) {
            Some(e) => constant_in_expr(e, &p.input),
            None => BTreeSet::new(),
        },
        LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Repartition(_) => constant_in(plan.inputs()[0], index),
        LogicalPlan::Union(u) => u
            .inputs
            .iter()
            .flat_map(|branch| constant_in(branch, index))
            .collect(),
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    constant_in(&j.left, index)
                }
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                    constant_in(&j.right, index)
                }
                _ if index < left => constant_in(&j.left, index),
                _ => constant_in(&j.right, index - left),
            }
        }
        _ => BTreeSet::new(),
    }
}

/// One dataset's privacy unit at an aggregation: a column, on the rows `only` selects (a pooled
/// dataset's rows among its pool's).
struct Unit {
    expr: Expr,
    only: Option<Expr>,
    dataset: String,
    /// The pool (its index) a pooled dataset's unit belongs to.
    pool: Option<usize>,
}

impl Unit {
    /// The hidden aggregate `counted` over this unit's rows (a pooled dataset's among its
    /// pool's) where `condition` holds.
    fn on_rows(&self, counted: Expr, condition: &Option<Expr>) -> Result<Expr, EngineError> {
        Ok(
            match [self.only.clone(), condition.clone()]
                .into_iter()
                .flatten()
                .reduce(Expr::and)
            {
                None => counted,
                Some(c) => counted.filter(c).build()?,
            },
        )
    }
}

/// A `UNION ALL` inside an aggregation's input whose branches each read one dataset: every
/// branch carries its dataset's privacy unit and its dataset's name in two hidden
/// columns, passed up to the aggregation.
struct Pool {
    index: usize,
    unit: String,
    dataset: String,
    datasets: BTreeSet<String>,
}

impl Pool {
    /// The hidden column `name` as it reaches the aggregation.
    fn column(
        &self,
        schema: &datafusion::common::DFSchema,
        name: &str,
    ) -> Result<Expr, EngineError> {
        let (qualifier, field) =
            schema
                .qualified_field_with_unqualified_name(name)
                .map_err(|_| {
                    refuse("a pooled dataset's privacy unit does not reach the aggregation")
                })?;
        Ok(Expr::Column(Column::new(qualifier.cloned(), field.name())))
    }
}

/// `plan` (an aggregation's input) with every `UNION ALL` in it tagged as a [`Pool`], and the
/// tags passed up through the operators between it and the aggregation. Refuses a union the
/// threshold cannot count through: a branch that reads more or less than one dataset, or does
/// not reach that dataset's privacy unit, or an operator above it that does not pass columns
/// through (an inner aggregation, a window, `DISTINCT`).
fn pooled(
    plan: LogicalPlan,
    contract: &Contract,
    pools: &mut Vec<Pool>,
) -> Result<LogicalPlan, EngineError> {
    let has_union = datafusion::common::tree_node::TreeNode::exists(&plan, |node| {
        Ok(matches!(node, LogicalPlan::Union(_)))
    })
    .unwrap_or(true);
    if !has_union {
        return Ok(plan);
    }
    let before = pools.len();
    let plan = match plan {
        LogicalPlan::Union(union) => {
            let n = pools.len();
            let pool = Pool {
                index: n,
                unit: format!("{POOL_PREFIX}{n}_unit"),
                dataset: format!("{POOL_PREFIX}{n}_dataset"),
                datasets: BTreeSet::new(),
            };
            pools.push(pool);
            let mut branches = Vec::new();
            // `a UNION ALL b UNION ALL c` is planned as unions of unions: one pool.
            let mut inputs = union.inputs;
            while let Some(i) = inputs
                .iter()
                .position(|b| matches!(b.as_ref(), LogicalPlan::Union(_)))
            {
                let LogicalPlan::Union(inner) = Arc::unwrap_or_clone(inputs.remove(i)) else {
                    unreachable!("matched above")
                };
                for (j, b) in inner.inputs.into_iter().enumerate() {
                    inputs.insert(i + j, b);
                }
            }
            for branch in inputs {
                let branch = Arc::unwrap_or_clone(branch);
                let read = datasets_read(&branch, contract)?;
                let (Some(name), 1) = (read.first(), read.len()) else {
                    return Err(refuse(
                        "each branch of a UNION ALL inside an aggregation must read exactly one \
                         dataset, so that each dataset's people can be counted",
                    ));
                };
                if pools[n].datasets.contains(name) {
                    return Err(EngineError::Refused {
                        rule: "union-complement",
                        reason: format!(
                            "two branches of the UNION ALL read {name:?}: a row counted twice \
                             weighs one person against the rest; read each dataset once"
                        ),
                    });
                }
                let unit = &contract.dataset(name).expect("checked").privacy_unit;
                let (tagged, name) = (tag(branch, name, unit, &pools[n])?, name.clone());
                pools[n].datasets.insert(name);
                branches.push(Arc::new(tagged));
            }
            LogicalPlan::Union(Union::try_new_with_loose_types(branches)?)
        }
        LogicalPlan::Projection(p) => {
            let input = pooled(Arc::unwrap_or_clone(p.input), contract, pools)?;
            let mut expr = p.expr;
            for pool in &pools[before..] {
                expr.push(pool.column(input.schema(), &pool.unit)?);
                expr.push(pool.column(input.schema(), &pool.dataset)?);
            }
            LogicalPlan::Projection(datafusion::logical_expr::Projection::try_new(
                expr,
                Arc::new(input),
            )?)
        }
        plan @ (LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Join(_)) => {
            let inputs = plan
                .inputs()
                .into_iter()
                .map(|i| pooled(i.clone(), contract, pools))
                .collect::<Result<Vec<_>, _>>()?;
            plan.with_new_exprs(plan.expressions(), inputs)?
        }
        other => {
            return Err(refuse(format!(
                "cannot count the people behind a UNION ALL under {}: pool the datasets right \
                 below the aggregation",
                describe(&other)
            )));
        }
    };
    Ok(plan)
}

/// A union's branch reading `dataset`, with the pool's two hidden columns appended: its
/// privacy unit, and the dataset's name.
fn tag(
    branch: LogicalPlan,
    dataset: &str,
    unit: &str,
    pool: &Pool,
) -> Result<LogicalPlan, EngineError> {
    let (input, mut expr) = match branch {
        LogicalPlan::Projection(p) => (p.input, p.expr),
        other => {
            let expr = other
                .schema()
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect();
            (Arc::new(other), expr)
        }
    };
    let schema = input.schema();
    let found = (0..schema.fields().len())
        .find(|&i| origin(&input, i) == Some((dataset.to_string(), unit.to_string())))
        .ok_or_else(|| {
            refuse(format!(
                "cannot count the distinct people behind each group: the privacy unit \
                 {dataset}.{unit} does not reach its branch of the UNION ALL"
            ))
        })?;
    let (qualifier, field) = schema.qualified_field(found);
    let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
    expr.push(column.alias(&pool.unit));
    expr.push(datafusion::prelude::lit(dataset).alias(&pool.dataset));
    Ok(LogicalPlan::Projection(
        datafusion::logical_expr::Projection::try_new(expr, input)?,
    ))
}

/// The measure an aggregate reads, for overlap control: the contract column of its argument
/// (through casts), `*` when it reads none, or the argument as written; and the values whose
/// fingerprint stands for a person's contribution (the column before any cast, a constant for
/// `*`).
fn measure(expr: &Expr, input: &LogicalPlan) -> (String, Expr) {
    let star = || ("*".to_string(), datafusion::prelude::lit(true));
    let mut expr = expr;
    while let Expr::Alias(a) = expr {
        expr = &a.expr;
    }
    let Expr::AggregateFunction(AggregateFunction { params, .. }) = expr else {
        return (expr.to_string(), expr.clone());
    };
    let Some(mut arg) = params.args.first() else {
        return star();
    };
    loop {
        match arg {
            Expr::Cast(c) => arg = &c.expr,
            Expr::TryCast(c) => arg = &c.expr,
            Expr::Alias(a) => arg = &a.expr,
            _ => break,
        }
    }
    match arg {
        Expr::Literal(..) => star(),
        Expr::Column(c) => (
            input
                .schema()
                .index_of_column(c)
                .ok()
                .and_then(|i| origin(input, i))
                .map_or_else(|| c.flat_name(), |(d, c)| format!("{d}.{c}")),
            arg.clone(),
        ),
        other => (other.to_string(), other.clone()),
    }
}

/// The rows an aggregate's value comes from, beyond its group's: those where its `FILTER`
/// holds and its arguments are not null (`None` when that is every row of the group).
fn contribution(
    expr: &Expr,
    schema: &datafusion::common::DFSchema,
) -> Result<Option<Expr>, EngineError> {
    let mut expr = expr;
    while let Expr::Alias(a) = expr {
        expr = &a.expr;
    }
    let Expr::AggregateFunction(AggregateFunction { params, .. }) = expr else {
        return Err(refuse(format!(
            "cannot tell whose rows the aggregate expression {expr} rests on"
        )));
    };
    let mut parts = Vec::new();
    if let Some(filter) = &params.filter {
        parts.push(Expr::IsTrue(filter.clone()));
    }
    for arg in &params.args {
        // A cast is made total ([`crate::total`]): where it cannot fit a value, it gives NULL.
        let cast = datafusion::common::tree_node::TreeNode::exists(arg, |e| {
            Ok(matches!(e, Expr::Cast(_) | Expr::TryCast(_)))
        })
        .unwrap_or(true);
        if cast || arg.nullable(schema)? {
            parts.push(arg.clone().is_not_null());
        }
    }
    Ok(parts.into_iter().reduce(Expr::and))
}
