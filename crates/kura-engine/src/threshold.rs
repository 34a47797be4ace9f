//! The minimum-group-size rule, enforced on the logical plan.
//!
//! The outermost aggregation of the query gets one hidden count of distinct privacy units per
//! contributing dataset (counted over the aggregation's input, i.e. after joins and filters; up
//! to `min_group_size` only, which is all the rule needs: [`crate::units`]).
//! The hidden counts are carried through every operator above the aggregation to the output,
//! where [`crate::output`] drops the rows whose counts are below the threshold and then the
//! hidden columns themselves. Because the counts are part of the plan that runs, no way of
//! writing the SQL can skip them.
//!
//! `UNION ALL` of aggregated branches is allowed: each branch carries its own counts.
//!
//! Anything this rule cannot reason about is refused rather than let through: output that is
//! not aggregated, operators above the aggregation other than projection, filter (HAVING),
//! sort, limit, aliasing and `UNION ALL`, and datasets whose privacy unit does not reach the aggregation.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, JoinType};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection, Union, lit};
use kura_contract::Contract;

use crate::EngineError;

/// Prefix of the hidden per-dataset count columns.
pub const HIDDEN_PREFIX: &str = "__kura_units_";

const RULE: &str = "min-group-size";

/// A plan with the threshold counts attached.
#[derive(Debug)]
pub struct Guarded {
    pub plan: LogicalPlan,
    /// The columns the caller sees (the hidden counts follow them).
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

/// Attaches the hidden counts to `plan`, or refuses it.
pub fn guard(plan: LogicalPlan, contract: &Contract) -> Result<Guarded, EngineError> {
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
    let (plan, hidden) = rewrite(plan, contract)?;
    debug_assert_eq!(plan.schema().fields().len(), visible_columns + hidden.len());
    Ok(Guarded {
        plan,
        visible_columns,
        datasets: datasets.into_iter().collect(),
    })
}

/// Every contract dataset scanned anywhere in the plan, including inside subqueries.
pub(crate) fn datasets_read(
    plan: &LogicalPlan,
    contract: &Contract,
) -> Result<BTreeSet<String>, EngineError> {
    let mut found = BTreeSet::new();
    let mut unknown = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.table().to_string();
            if contract.dataset(&name).is_some() {
                found.insert(name);
            } else {
                unknown = Some(name);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if let Some(name) = unknown {
        return Err(refuse(format!(
            "table {name:?} is not a dataset of the contract"
        )));
    }
    Ok(found)
}

/// Rewrites the chain of operators from the output down to the outermost aggregation.
fn rewrite(
    plan: LogicalPlan,
    contract: &Contract,
) -> Result<(LogicalPlan, Vec<String>), EngineError> {
    match plan {
        LogicalPlan::Aggregate(agg) => add_counts(agg, contract),
        LogicalPlan::Projection(p) => {
            let (input, hidden) = rewrite(Arc::unwrap_or_clone(p.input), contract)?;
            let mut expr = p.expr;
            expr.extend(hidden.iter().map(|h| Expr::Column(Column::from_name(h))));
            let plan = Projection::try_new(expr, Arc::new(input))?;
            Ok((LogicalPlan::Projection(plan), hidden))
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_) => {
            let input = plan.inputs()[0].clone();
            let (input, hidden) = rewrite(input, contract)?;
            let plan = plan.with_new_exprs(plan.expressions(), vec![input])?;
            Ok((plan, hidden))
        }
        LogicalPlan::Union(union) => rewrite_union(union.inputs, contract),
        other => Err(refuse(format!(
            "only aggregated statistics may leave the enclave: the query's output is produced by \
             {} before (or instead of) a GROUP BY aggregation",
            describe(&other)
        ))),
    }
}

/// `UNION ALL` of aggregated branches: each branch gets its own hidden counts. Branches that
/// read fewer datasets are padded with `i64::MAX` (a count that never suppresses), so that every
/// row keeps exactly the counts of the branch that produced it.
fn rewrite_union(
    inputs: Vec<Arc<LogicalPlan>>,
    contract: &Contract,
) -> Result<(LogicalPlan, Vec<String>), EngineError> {
    let branches = inputs
        .into_iter()
        .map(|input| rewrite(Arc::unwrap_or_clone(input), contract))
        .collect::<Result<Vec<_>, _>>()?;
    let widest = branches.iter().map(|(_, h)| h.len()).max().unwrap_or(0);
    let hidden: Vec<String> = (0..widest).map(|i| format!("{HIDDEN_PREFIX}{i}")).collect();
    let mut inputs = Vec::with_capacity(branches.len());
    for (branch, own) in branches {
        debug_assert!(own.iter().zip(&hidden).all(|(a, b)| a == b));
        let branch = if own.len() == widest {
            branch
        } else {
            let mut expr: Vec<Expr> = branch
                .schema()
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect();
            expr.extend(hidden[own.len()..].iter().map(|h| lit(i64::MAX).alias(h)));
            LogicalPlan::Projection(Projection::try_new(expr, Arc::new(branch))?)
        };
        inputs.push(Arc::new(branch));
    }
    let union = Union::try_new_with_loose_types(inputs)?;
    Ok((LogicalPlan::Union(union), hidden))
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

fn add_counts(
    agg: Aggregate,
    contract: &Contract,
) -> Result<(LogicalPlan, Vec<String>), EngineError> {
    let input = agg.input.clone();
    let schema = input.schema().clone();
    let datasets = datasets_read(&input, contract)?;
    let mut extra = Vec::new();
    let mut hidden = Vec::new();
    for name in &datasets {
        let dataset = contract.dataset(name).expect("checked in datasets_read");
        let mut found = false;
        for i in 0..schema.fields().len() {
            if origin(&input, i).as_ref() == Some(&(name.clone(), dataset.privacy_unit.clone())) {
                let (qualifier, field) = schema.qualified_field(i);
                let column = Column::new(qualifier.cloned(), field.name());
                let alias = format!("{HIDDEN_PREFIX}{}", hidden.len());
                extra.push(
                    crate::units::expr(Expr::Column(column), contract.output.min_group_size)
                        .alias(&alias),
                );
                hidden.push(alias);
                found = true;
            }
        }
        if !found {
            return Err(refuse(format!(
                "cannot count the distinct people behind each group: the privacy unit \
                 {name}.{} does not reach the aggregation (a subquery dropped it?)",
                dataset.privacy_unit
            )));
        }
    }
    if hidden.is_empty() {
        return Err(refuse("the aggregation reads no dataset of the contract"));
    }
    let mut aggr_expr = agg.aggr_expr;
    aggr_expr.extend(extra);
    let agg = Aggregate::try_new(input, agg.group_expr, aggr_expr)?;
    Ok((LogicalPlan::Aggregate(agg), hidden))
}

/// Which dataset column output field `index` of `plan` is an unmodified copy of, if any.
pub(crate) fn origin(plan: &LogicalPlan, index: usize) -> Option<(String, String)> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let field = scan.projected_schema.fields().get(index)?;
            Some((scan.table_name.table().to_string(), field.name().clone()))
        }
        LogicalPlan::SubqueryAlias(a) => origin(&a.input, index),
        LogicalPlan::Filter(f) => origin(&f.input, index),
        LogicalPlan::Sort(s) => origin(&s.input, index),
        LogicalPlan::Limit(l) => origin(&l.input, index),
        LogicalPlan::Repartition(r) => origin(&r.input, index),
        LogicalPlan::Projection(p) => {
            let mut expr = p.expr.get(index)?;
            while let Expr::Alias(a) = expr {
                expr = &a.expr;
            }
            match expr {
                Expr::Column(c) => origin(&p.input, p.input.schema().index_of_column(c).ok()?),
                _ => None,
            }
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    if index < left {
                        origin(&j.left, index)
                    } else {
                        origin(&j.right, index - left)
                    }
                }
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    (index < left).then(|| origin(&j.left, index)).flatten()
                }
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                    origin(&j.right, index)
                }
            }
        }
        _ => None,
    }
}
