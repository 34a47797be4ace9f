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
use kura_contract::Contract;

use crate::EngineError;
use crate::lineage::{datasets_read, origin, tables_scanned};

/// Prefix of the hidden count columns.
pub const HIDDEN_PREFIX: &str = "__kura_units_";

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
        counted.push(count(agg.clone(), contract, overlap)?);
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
) -> Result<Counted, EngineError> {
    let input = agg.input.clone();
    let schema = input.schema().clone();
    let datasets = datasets_read(&input, contract)?;
    // Each contributing dataset's privacy unit, as it reaches the aggregation.
    let mut units = Vec::new();
    let mut unit_datasets = Vec::new();
    for name in &datasets {
        let dataset = contract.dataset(name).expect("checked in datasets_read");
        let before = units.len();
        for i in 0..schema.fields().len() {
            if origin(&input, i).as_ref() == Some(&(name.clone(), dataset.privacy_unit.clone())) {
                let (qualifier, field) = schema.qualified_field(i);
                units.push(Expr::Column(Column::new(qualifier.cloned(), field.name())));
                unit_datasets.push(name.clone());
            }
        }
        if units.len() == before {
            return Err(refuse(format!(
                "cannot count the distinct people behind each group: the privacy unit \
                 {name}.{} does not reach the aggregation (a subquery dropped it?)",
                dataset.privacy_unit
            )));
        }
    }
    if units.is_empty() {
        return Err(refuse("the aggregation reads no dataset of the contract"));
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
            let counted = crate::units::expr(unit.clone(), cap);
            let counted = match &condition {
                None => counted,
                Some(c) => counted.filter(c.clone()).build()?,
            };
            extra.push(counted.alias(format!("{HIDDEN_PREFIX}{}", checks.len())));
            checks.push(check.clone());
        }
        Ok(())
    };
    // The group itself (its keys are released), then each narrower set of contributors.
    add(None, Check::AtLeast)?;
    for c in conditions.iter().copied().flatten() {
        add(Some(c.clone()), Check::AtLeast)?;
    }
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
            for (unit, dataset) in units.iter().zip(&unit_datasets) {
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
    })
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
        if arg.nullable(schema)? {
            parts.push(arg.clone().is_not_null());
        }
    }
    Ok(parts.into_iter().reduce(Expr::and))
}
