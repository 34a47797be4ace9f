//! Steps 1 and 2: one row per joined record, each privacy unit's rows capped at
//! `max_contributions`, then exact integer aggregates per group.

use std::sync::Arc;

use datafusion::logical_expr::{Expr, LogicalPlan, Projection};
use datafusion::prelude::SessionContext;
use serde_json::Value;

use crate::EngineError;

use super::*;

impl DpPlan {
    /// Runs steps 1 and 2: exact, contribution-bounded aggregates per group, as integers.
    pub(super) async fn aggregate(
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
        // Run as the engine runs counted aggregations: on the cluster when there is one.
        let physical = rows_ctx.sql(&sql).await?.create_physical_plan().await?;
        let batches = crate::collect_counted(physical, &rows_ctx).await?;
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
}
