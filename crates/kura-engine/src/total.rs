//! Expressions that cannot fail on a value.
//!
//! A query that fails for some data and not for other data answers a question about the data
//! with its failure: `CAST(x AS INT)` in a subquery fails only when some value is too large,
//! and fifty such queries find the largest value bit by bit. This analyzer rule runs on every
//! plan any session executes (fixed analyses, ad-hoc and DP queries, the queries under models
//! and scores), after DataFusion's type coercion, and makes the operators that can fail on a
//! value total instead:
//!
//! - every `CAST` becomes a `TRY_CAST` (NULL where the value does not fit; a lossless cast is
//!   unchanged, since it never fails);
//! - integer and decimal division and remainder by zero give NULL, and by -1 the wrapped
//!   negation (or 0), which is what the wrapping arithmetic that DataFusion uses for `+`, `-`
//!   and `*` gives as well (only `i64::MIN / -1` could fail otherwise).
//!
//! Aggregates (`SUM` wraps) and the other arithmetic operators do not fail on values. Scalar
//! functions that could are kept off the ad-hoc allow-list ([`crate::roles`]). What a failure
//! can still reveal, and when, is in docs/privacy.md.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::{Case, Cast, TryCast};
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

/// The rule, registered in every session ([`crate::session`]).
#[derive(Debug)]
pub(crate) struct Total;

impl AnalyzerRule for Total {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let schema = merge_schema(&node.inputs());
            // A `TRY_CAST` may give NULL where its `CAST` could not: the node's schema is
            // computed again from its new expressions (children first, as this walks up).
            node.map_expressions(|e| e.transform_up(|e| total(e, &schema)))?
                .map_data(|node| node.recompute_schema())
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "kura_total_expressions"
    }
}

fn total(expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    Ok(match expr {
        Expr::Cast(Cast { expr, field }) => {
            Transformed::yes(Expr::TryCast(TryCast { expr, field }))
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: op @ (Operator::Divide | Operator::Modulo),
            right,
        }) => {
            let ty = right.get_type(schema).ok();
            match ty.filter(|t| t.is_integer() || is_decimal(t)) {
                Some(ty) if !nonzero_literal(&right) => {
                    let divided = Expr::BinaryExpr(BinaryExpr::new(left, op, right));
                    let out = divided.get_type(schema)?;
                    let Expr::BinaryExpr(BinaryExpr { left, right, .. }) = divided else {
                        unreachable!("built above")
                    };
                    Transformed::yes(guarded_division(*left, op, *right, &ty, &out)?)
                }
                _ => Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right })),
            }
        }
        other => Transformed::no(other),
    })
}

fn is_decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

/// A literal divisor other than 0 and -1: the division cannot fail.
fn nonzero_literal(expr: &Expr) -> bool {
    match expr {
        Expr::Literal(v, _) => {
            !v.is_null()
                && ScalarValue::new_zero(&v.data_type()).is_ok_and(|z| z != *v)
                && ScalarValue::new_negative_one(&v.data_type()).map_or(true, |m| m != *v)
        }
        _ => false,
    }
}

/// `left op right` (of type `out`, `right` of type `ty`) that gives NULL where `right` is
/// zero, and for integers the wrapped result where it is -1.
fn guarded_division(
    left: Expr,
    op: Operator,
    right: Expr,
    ty: &DataType,
    out: &DataType,
) -> Result<Expr> {
    let zero = Expr::Literal(ScalarValue::new_zero(ty)?, None);
    let mut when_then = vec![(
        Box::new(right.clone().eq(zero)),
        Box::new(Expr::Literal(ScalarValue::try_from(out)?, None)),
    )];
    if ty.is_signed_integer()
        && out == ty
        && let Ok(minus_one) = ScalarValue::new_negative_one(ty)
    {
        let on_minus_one = match op {
            Operator::Divide => Expr::Negative(Box::new(left.clone())),
            _ => Expr::Literal(ScalarValue::new_zero(out)?, None),
        };
        when_then.push((
            Box::new(right.clone().eq(Expr::Literal(minus_one, None))),
            Box::new(on_minus_one),
        ));
    }
    let divided = Expr::BinaryExpr(BinaryExpr::new(Box::new(left), op, Box::new(right)));
    Ok(Expr::Case(Case::new(
        None,
        when_then,
        Some(Box::new(divided)),
    )))
}
