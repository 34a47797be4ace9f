//! The list rule: an analysis whose rows name identifiers (accounts in a cross-bank pattern,
//! customers in an audience), released so that each receiver sees only rows naming its own
//! privacy units. A bank learns which of *its* accounts take part; never another bank's.
//!
//! "Own" is decided by value: a row goes to a receiver when its `list_column` value is a
//! privacy unit of a dataset that receiver provided. Rows that name nobody's own unit go to
//! nobody. The SQL itself is fixed in the contract and signed by every party.

use std::collections::{BTreeMap, HashSet};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use kura_contract::{Analysis, Contract};
use serde_json::Value;

use crate::{EngineError, Output, Tables};

/// The rows of a list analysis for each of its receivers.
pub async fn run_list(
    contract: &Contract,
    analysis: &Analysis,
    tables: &Tables,
) -> Result<BTreeMap<String, Output>, EngineError> {
    let column = analysis
        .list_column
        .as_deref()
        .ok_or_else(|| EngineError::Sql(format!("analysis {:?} is not a list", analysis.name)))?;
    let ctx = crate::session(contract, tables)?;
    let plan = crate::written_plan(&ctx, &analysis.sql).await?;
    let datasets = crate::lineage::datasets_read(&plan, contract)?;
    crate::require_data(&datasets, tables)?;
    let index = plan
        .schema()
        .fields()
        .iter()
        .position(|f| f.name() == column)
        .ok_or_else(|| {
            EngineError::Sql(format!(
                "list analysis {:?} has no output column {column:?}",
                analysis.name
            ))
        })?;
    let columns = crate::output::column_names(&plan);
    let types = crate::output::column_types(&plan);
    // Run where the counted aggregations run (on a cluster, its executors); errors in the
    // engine's fixed vocabulary, as for any query that reads data.
    let physical = ctx.state().create_physical_plan(&plan).await?;
    let batches = crate::collect_counted(physical, &ctx)
        .await
        .map_err(crate::error::runtime)?;
    // A list has no group counts; what limits it is the routing below.
    let all = Output {
        columns,
        types,
        rows: crate::output::rows(&batches)?,
        suppressed_groups: 0,
        datasets: datasets.into_iter().collect(),
        dp: None,
        onnx: None,
    };
    let mut out = BTreeMap::new();
    for receiver in &analysis.receivers {
        let own = own_units(contract, receiver, &ctx).await?;
        let rows = all
            .rows
            .iter()
            .filter(|row| key(&row[index]).is_some_and(|k| own.contains(&k)))
            .cloned()
            .collect();
        out.insert(
            receiver.clone(),
            Output {
                rows,
                ..all.clone()
            },
        );
    }
    Ok(out)
}

/// A value as text, the way it is compared with privacy units.
pub(crate) fn key(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Every privacy-unit value of the datasets `party` provided (those present in `ctx`).
pub(crate) async fn own_units(
    contract: &Contract,
    party: &str,
    ctx: &datafusion::execution::context::SessionContext,
) -> Result<HashSet<String>, EngineError> {
    use datafusion::logical_expr::ident;
    let mut units = HashSet::new();
    for d in contract.datasets.iter().filter(|d| d.provider == party) {
        let frame = ctx
            .table(d.name.as_str())
            .await?
            .select(vec![ident(&d.privacy_unit)])?;
        let physical = frame.create_physical_plan().await?;
        let batches = crate::collect_counted(physical, ctx)
            .await
            .map_err(crate::error::runtime)?;
        for batch in batches {
            let text = cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| EngineError::Execution(e.to_string()))?;
            units.extend(text.as_string::<i32>().iter().flatten().map(str::to_string));
        }
    }
    Ok(units)
}
