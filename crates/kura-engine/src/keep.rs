//! Which columns the enclave keeps of each upload.
//!
//! A contract without ad-hoc queries fixes every query that will ever run on its data, so the
//! columns those queries read are known before any data arrives. The enclave keeps only them
//! (and each dataset's privacy unit, which every output rule counts): a column no analysis can
//! read is checked against the contract and then dropped, never decoded (Parquet) or never held
//! (CSV). That is data minimisation, and it spares the time and memory of holding data no one
//! may use. A contract with an `[adhoc]` section keeps every column, since any may be asked for.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;
use kura_contract::Contract;

use crate::{EngineError, Tables, session, written_plan};

/// For each dataset of `contract`, the names of the columns to keep.
///
/// The columns are those the optimised plan of each analysis scans, found by planning the
/// analyses against empty tables. Fails, naming the analysis, if one does not plan (a contract is
/// checked before it is signed, so this is a defect elsewhere); the caller then keeps every
/// column ([`all_columns`]), and the failure is reported again when the analysis runs.
pub async fn columns_kept(
    contract: &Contract,
) -> Result<BTreeMap<String, BTreeSet<String>>, EngineError> {
    if contract.adhoc.is_some() {
        return Ok(all_columns(contract));
    }
    let mut kept: BTreeMap<String, BTreeSet<String>> = contract
        .datasets
        .iter()
        .map(|d| (d.name.clone(), BTreeSet::from([d.privacy_unit.clone()])))
        .collect();
    let ctx = session(contract, &Tables::new())?;
    for analysis in &contract.analyses {
        let columns = scanned(&ctx, &analysis.sql)
            .await
            .map_err(|e| e.in_analysis(&analysis.name))?;
        for (dataset, names) in columns {
            kept.entry(dataset).or_default().extend(names);
        }
    }
    Ok(kept)
}

/// Every declared column of every dataset.
pub fn all_columns(contract: &Contract) -> BTreeMap<String, BTreeSet<String>> {
    contract
        .datasets
        .iter()
        .map(|d| {
            let names = d.columns.iter().map(|c| c.name.clone()).collect();
            (d.name.clone(), names)
        })
        .collect()
}

/// The columns of each table the optimised plan of `sql` reads.
async fn scanned(
    ctx: &SessionContext,
    sql: &str,
) -> Result<BTreeMap<String, BTreeSet<String>>, EngineError> {
    let plan = ctx.state().optimize(&written_plan(ctx, sql).await?)?;
    let mut read: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let schema = scan.source.schema();
            let names = read.entry(scan.table_name.table().to_string()).or_default();
            match &scan.projection {
                Some(indices) => {
                    names.extend(indices.iter().map(|i| schema.field(*i).name().clone()))
                }
                None => names.extend(schema.fields().iter().map(|f| f.name().clone())),
            }
            // Filters pushed into the scan read columns of their own.
            for filter in &scan.filters {
                names.extend(filter.column_refs().into_iter().map(|c| c.name.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(read)
}
