//! The analysis engine: decrypted datasets in, rule-checked statistics out.
//!
//! Runs inside the enclave on Apache DataFusion. It never sees ciphertext, keys or evidence
//! (it does not depend on the attestation or crypto crates), and it never lets a row out that
//! the contract's output rules do not allow: the threshold rule is part of the query plan
//! itself ([`threshold`]), not a filter applied to text.
//!
//! Entry points: [`load`] parses an upload against the contract's schema; [`check_analyses`]
//! plans every analysis of a contract against empty tables; [`run_analysis`] executes one.

mod error;
pub mod load;
mod output;
pub mod threshold;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use kura_contract::Contract;

pub use datafusion;
pub use datafusion::arrow::record_batch::RecordBatch;
pub use error::EngineError;
pub use load::{InputFormat, arrow_schema};
pub use output::Output;

/// Decrypted datasets by name, as held inside the enclave.
pub type Tables = BTreeMap<String, Vec<RecordBatch>>;

fn session(contract: &Contract, tables: &Tables) -> Result<SessionContext, EngineError> {
    let config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
    let ctx = SessionContext::new_with_config(config);
    for dataset in &contract.datasets {
        let schema = arrow_schema(dataset);
        let batches = tables.get(&dataset.name).cloned().unwrap_or_default();
        let table = MemTable::try_new(schema, vec![batches])?;
        ctx.register_table(dataset.name.as_str(), Arc::new(table))?;
    }
    Ok(ctx)
}

/// Only queries: no DDL (`CREATE EXTERNAL TABLE` could read the enclave's files), no DML, no
/// statements (`SET` could change limits).
fn sql_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

async fn plan(
    ctx: &SessionContext,
    contract: &Contract,
    sql: &str,
) -> Result<threshold::Guarded, EngineError> {
    let plan = ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| EngineError::Sql(e.strip_backtrace()))?;
    sql_options()
        .verify_plan(&plan)
        .map_err(|e| EngineError::Refused {
            rule: "queries-only",
            reason: e.strip_backtrace(),
        })?;
    threshold::guard(plan, contract)
}

/// Plans every analysis of `contract` against empty tables of the declared schemas, so that a
/// contract naming an unknown table or column, or an analysis whose output cannot be
/// threshold-checked, is refused before anyone signs it.
pub async fn check_analyses(contract: &Contract) -> Result<(), EngineError> {
    let ctx = session(contract, &Tables::new())?;
    for analysis in &contract.analyses {
        plan(&ctx, contract, &analysis.sql)
            .await
            .map_err(|e| e.in_analysis(&analysis.name))?;
    }
    Ok(())
}

/// Runs `sql` over `tables` under the contract's output rules.
///
/// Fails with [`EngineError::MissingData`] when a dataset the query reads has not been
/// uploaded. Groups below `min_group_size` distinct privacy units of any contributing dataset
/// are removed before the result is returned, and only their number is reported.
pub async fn run_analysis(
    contract: &Contract,
    sql: &str,
    tables: &Tables,
) -> Result<Output, EngineError> {
    let ctx = session(contract, tables)?;
    let guarded = plan(&ctx, contract, sql).await?;
    let missing: Vec<String> = guarded
        .datasets
        .iter()
        .filter(|d| !tables.contains_key(*d))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(EngineError::MissingData(missing));
    }
    let batches = ctx
        .execute_logical_plan(guarded.plan)
        .await?
        .collect()
        .await?;
    output::suppress_and_render(
        &batches,
        guarded.visible_columns,
        contract.output.min_group_size,
        guarded.datasets,
    )
}

#[cfg(test)]
mod tests;
