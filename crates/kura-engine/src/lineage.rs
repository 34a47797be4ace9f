//! Where a plan's data comes from: the tables it reads, and which dataset column an output
//! column is an unmodified copy of. Used by the threshold rule (privacy units reaching an
//! aggregation, measures for overlap control), differential privacy and lists.

use std::collections::BTreeSet;

use datafusion::common::JoinType;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{Expr, LogicalPlan};
use kura_contract::Contract;

use crate::EngineError;

/// The tables `plan` scans anywhere, including inside subqueries.
pub(crate) fn tables_scanned(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            found.insert(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Every contract dataset scanned anywhere in the plan, including inside subqueries; any other
/// table is refused.
pub(crate) fn datasets_read(
    plan: &LogicalPlan,
    contract: &Contract,
) -> Result<BTreeSet<String>, EngineError> {
    let tables = tables_scanned(plan);
    match tables.iter().find(|t| contract.dataset(t).is_none()) {
        Some(name) => Err(EngineError::Refused {
            rule: "min-group-size",
            reason: format!("table {name:?} is not a dataset of the contract"),
        }),
        None => Ok(tables),
    }
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
