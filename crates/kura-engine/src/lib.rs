//! The analysis engine: decrypted datasets in, rule-checked statistics out.
//!
//! Runs inside the enclave on Apache DataFusion. It never sees ciphertext, keys or evidence
//! (it does not depend on the attestation or crypto crates), and it never lets a row out that
//! the contract's output rules do not allow: the threshold rule is part of the query plan
//! itself ([`threshold`]), not a filter applied to text.
//!
//! Entry points: [`load`] parses an upload against the contract's schema; [`check_analyses`]
//! plans every analysis of a contract against empty tables; [`run_analysis`] executes one.

pub mod dp;
pub mod error;
mod keep;
mod lineage;
pub mod list;
pub mod load;
pub mod model;
mod output;
pub mod overlap;
pub mod people;
pub mod roles;
pub mod rows;
pub mod score;
pub mod stored;
pub mod threshold;
mod total;
pub mod units;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use kura_contract::Contract;

pub use datafusion;
pub use datafusion::arrow::record_batch::RecordBatch;
pub use error::EngineError;
pub use keep::{all_columns, columns_kept};
pub use load::{UploadFormat, arrow_schema};
pub use output::Output;

/// The datasets a query may read, by name.
pub type Tables = BTreeMap<String, Table>;

/// A dataset's data: decoded batches held in memory, or encrypted files in object storage
/// ([`stored`]) that queries read as they need them.
#[derive(Debug, Clone)]
pub enum Table {
    Held(Vec<RecordBatch>),
    Stored(stored::Stored),
}

#[cfg(any(test, feature = "golden"))]
impl Table {
    /// The batches of a held table.
    pub(crate) fn batches(&self) -> &[RecordBatch] {
        match self {
            Table::Held(batches) => batches,
            Table::Stored(_) => panic!("a stored table holds no batches"),
        }
    }
}

impl From<Vec<RecordBatch>> for Table {
    fn from(batches: Vec<RecordBatch>) -> Self {
        Table::Held(batches)
    }
}

/// The cores this process may use: the session's partitions and the parsing threads.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// What one query's operators (hash tables, sorts, aggregates) may hold when the caller sets no
/// limit with [`with_memory_limit`].
pub const DEFAULT_QUERY_MEMORY: usize = 4 << 30;

tokio::task_local! {
    static QUERY_MEMORY: usize;
    static COMPUTE: Arc<dyn Compute>;
}

/// Where the counted aggregations of a query run (the scans, joins and aggregations below the
/// output rules): in this process, or on a cluster. Whatever runs them, their output comes
/// back here, where the rules decide which groups are released.
#[async_trait::async_trait]
pub trait Compute: Send + Sync + std::fmt::Debug {
    /// Runs `plan` (already checked) to its end and returns all of its output. `ctx` is the
    /// session that planned it ([`stored::Scans`] is among its config extensions).
    async fn collect(
        &self,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        ctx: &SessionContext,
    ) -> datafusion::error::Result<Vec<RecordBatch>>;

    /// The settings of the sessions whose plans this runs (a cluster may need some optimizer
    /// rules off).
    fn configure(&self, config: SessionConfig) -> SessionConfig {
        config
    }
}

/// Runs `f` with the counted aggregations of every query it starts run by `compute`.
pub async fn with_compute<F: std::future::Future>(compute: Arc<dyn Compute>, f: F) -> F::Output {
    COMPUTE.scope(compute, f).await
}

async fn collect_counted(
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    ctx: &SessionContext,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    match COMPUTE.try_with(Arc::clone) {
        Ok(compute) => compute.collect(plan, ctx).await,
        Err(_) => {
            // However the plan ended, its scans are read to their end: what the host sees
            // fetched does not depend on where the data stopped it ([`stored::read_through`]).
            let out = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await;
            let through = stored::read_through(&plan).await;
            let out = out?;
            through.map(|()| out)
        }
    }
}

/// Reads the stored files `plans` would have read, without running them: a run that stops at
/// a refusal or an error before them fetches what it would have fetched had it gone on
/// ([`stored::read_through`]). On a cluster their jobs are not sent, and the host sees fewer
/// of them: which one stopped the run shows (docs/THREAT_MODEL.md).
async fn read_unrun<'a>(
    ctx: &SessionContext,
    plans: impl Iterator<Item = &'a datafusion::logical_expr::LogicalPlan>,
) {
    if COMPUTE.try_with(|_| ()).is_ok() {
        return;
    }
    for plan in plans {
        if let Ok(physical) = ctx.state().create_physical_plan(plan).await {
            let _ = stored::read_through(&physical).await;
        }
    }
}

/// Runs `f` with every query it starts limited to `bytes` of operator memory. A query that
/// needs more is refused ("needed more memory than the enclave allows"); nothing spills to
/// disk, which is the host's, and the process and what it holds survive. Scoped to the task,
/// so that services in one process can have limits of their own.
pub async fn with_memory_limit<F: std::future::Future>(bytes: usize, f: F) -> F::Output {
    QUERY_MEMORY.scope(bytes, f).await
}

/// The runtime of every session: a memory pool of the task's limit, and no disk manager (a
/// spill would write plaintext to the host's disk).
fn runtime() -> Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>, EngineError> {
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    let limit = QUERY_MEMORY
        .try_with(|b| *b)
        .unwrap_or(DEFAULT_QUERY_MEMORY);
    Ok(datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(limit)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()?)
}

pub(crate) fn session(contract: &Contract, tables: &Tables) -> Result<SessionContext, EngineError> {
    let cores = cores();
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(cores);
    // Which parts of a stored file a query fetches is the host's to see: it must not depend
    // on the data. So no row group is skipped by its (encrypted) statistics, and no filter is
    // pushed into a scan at run time from another table's rows (a join's keys, a top-k's
    // bounds): every projected column chunk of every row group is read (and what a stopped
    // run did not read is read after it: [`stored::read_through`]).
    let options = config.options_mut();
    options.execution.parquet.pruning = false;
    options.execution.parquet.bloom_filter_on_read = false;
    options.optimizer.enable_dynamic_filter_pushdown = false;
    options.optimizer.enable_join_dynamic_filter_pushdown = false;
    options.optimizer.enable_topk_dynamic_filter_pushdown = false;
    options.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    // Nor is the order of row groups chosen by their (decrypted) statistics, which a sort
    // pushed into a scan would do: the order of the fetches would show where values lie.
    options.optimizer.enable_sort_pushdown = false;
    // What a cluster needs of the session: its settings, and how to read each stored dataset.
    let config = match COMPUTE.try_with(Arc::clone) {
        Ok(compute) => {
            let mut scans = stored::Scans::default();
            for (index, dataset) in contract.datasets.iter().enumerate() {
                if let Some(Table::Stored(stored)) = tables.get(&dataset.name)
                    && let Some(access) = stored.access()
                {
                    scans.0.insert(stored::url(index)?.to_string(), access);
                }
            }
            compute.configure(config.with_extension(Arc::new(scans)))
        }
        Err(_) => config,
    };
    let ctx = SessionContext::new_with_config_rt(config, runtime()?);
    // Whatever runs in this session, no expression in it fails on a value.
    ctx.add_analyzer_rule(Arc::new(total::Total));
    for (index, dataset) in contract.datasets.iter().enumerate() {
        let table: Arc<dyn datafusion::datasource::TableProvider> = match tables.get(&dataset.name)
        {
            Some(Table::Stored(stored)) => {
                let url = stored::url(index)?;
                ctx.runtime_env()
                    .register_object_store(url.as_ref(), stored.store.clone());
                stored.table(url, dataset)?
            }
            Some(Table::Held(held)) => held_table(dataset, held, cores)?,
            None => held_table(dataset, &[], cores)?,
        };
        ctx.register_table(dataset.name.as_str(), table)?;
    }
    Ok(ctx)
}

/// A table of batches in memory. Uploads keep only the columns the contract's analyses read
/// ([`columns_kept`]); the table has those. Without data, it has every declared column.
fn held_table(
    dataset: &kura_contract::Dataset,
    held: &[RecordBatch],
    cores: usize,
) -> Result<Arc<dyn datafusion::datasource::TableProvider>, EngineError> {
    let schema = held.first().map_or_else(
        || arrow_schema(dataset),
        |b| without_nulls(b.schema(), held),
    );
    // One partition per core, so that scans start in parallel (batches are shared, not
    // copied).
    let mut partitions = vec![Vec::new(); cores];
    for (i, batch) in held.iter().enumerate() {
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
            .map_err(|e| EngineError::Execution(e.to_string()))?;
        partitions[i % cores].push(batch);
    }
    Ok(Arc::new(MemTable::try_new(schema, partitions)?))
}

/// `schema` with the columns that hold no null in `batches` marked as not nullable. The
/// threshold counts an aggregate's contributors separately only where its argument can be null
/// ([`threshold`]); a column the data fills entirely needs no count of its own.
fn without_nulls(
    schema: datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> datafusion::arrow::datatypes::SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let filled = batches.iter().all(|b| b.column(i).null_count() == 0);
            Arc::new(f.as_ref().clone().with_nullable(!filled))
        })
        .collect();
    Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

/// Only queries: no DDL (`CREATE EXTERNAL TABLE` could read the enclave's files), no DML, no
/// statements (`SET` could change limits).
fn sql_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// The plan of `sql` as written, if it is a query.
pub(crate) async fn written_plan(
    ctx: &SessionContext,
    sql: &str,
) -> Result<datafusion::logical_expr::LogicalPlan, EngineError> {
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
    Ok(plan)
}

async fn plan(
    ctx: &SessionContext,
    contract: &Contract,
    sql: &str,
) -> Result<threshold::Guarded, EngineError> {
    threshold::guard(written_plan(ctx, sql).await?, contract, None)
}

/// Refuses with [`EngineError::MissingData`] unless every dataset in `datasets` was uploaded.
pub(crate) fn require_data<'a>(
    datasets: impl IntoIterator<Item = &'a String>,
    tables: &Tables,
) -> Result<(), EngineError> {
    let missing: Vec<String> = datasets
        .into_iter()
        .filter(|d| !tables.contains_key(*d))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EngineError::MissingData(missing))
    }
}

/// A refusal raised inside DataFusion (by the analyzer rule), or the DataFusion error.
fn unwrap_refusal(e: datafusion::error::DataFusionError) -> EngineError {
    if let datafusion::error::DataFusionError::External(inner) = e.find_root()
        && let Some(EngineError::Refused { rule, reason }) = inner.downcast_ref::<EngineError>()
    {
        return EngineError::Refused {
            rule,
            reason: reason.clone(),
        };
    }
    e.into()
}

/// Plans every analysis of `contract` against empty tables of the declared schemas, so that a
/// contract naming an unknown table or column, or an analysis whose output cannot be
/// threshold-checked, is refused before anyone signs it.
pub async fn check_analyses(contract: &Contract) -> Result<(), EngineError> {
    let ctx = session(contract, &Tables::new())?;
    for analysis in &contract.analyses {
        if analysis.kind == kura_contract::AnalysisKind::Model {
            model::check(contract, &ctx, analysis)
                .await
                .map_err(|e| e.in_analysis(&analysis.name))?;
            continue;
        }
        if analysis.kind == kura_contract::AnalysisKind::Score {
            score::check(contract, &ctx, analysis)
                .await
                .map_err(|e| e.in_analysis(&analysis.name))?;
            continue;
        }
        let checked = match &analysis.list_column {
            None if analysis.dp => dp::cost(contract, &analysis.sql, analysis.epsilon)
                .await
                .map(drop),
            None => plan(&ctx, contract, &analysis.sql).await.map(drop),
            Some(column) => written_plan(&ctx, &analysis.sql).await.and_then(|p| {
                lineage::datasets_read(&p, contract)?;
                if p.schema().fields().iter().any(|f| f.name() == column) {
                    Ok(())
                } else {
                    Err(EngineError::Sql(format!(
                        "the list's output has no column {column:?}"
                    )))
                }
            }),
        };
        checked.map_err(|e| e.in_analysis(&analysis.name))?;
    }
    Ok(())
}

/// What a party should know before signing: each fixed analysis (a query or a differentially
/// private query) that the ad-hoc rules ([`roles`]) would refuse, with the rule and
/// its reason. A fixed analysis runs as the parties signed it, so these are warnings, not
/// refusals: `kura contract verify` and `kura contract sign` print them, so that no contract
/// signs a leak unknowingly.
pub async fn analysis_warnings(contract: &Contract) -> Vec<String> {
    let Ok(ctx) = session(contract, &Tables::new()) else {
        return Vec::new();
    };
    let rules = roles::Rules::for_signing(contract);
    let mut out = Vec::new();
    for analysis in &contract.analyses {
        // Lists release rows to each row's owner by design; models and scorings have checks
        // of their own.
        if analysis.list_column.is_some()
            || matches!(
                analysis.kind,
                kura_contract::AnalysisKind::Model | kura_contract::AnalysisKind::Score
            )
        {
            continue;
        }
        let Ok(written) = written_plan(&ctx, &analysis.sql).await else {
            continue;
        };
        if let Err(EngineError::Refused { rule, reason }) = rules.check(&written) {
            out.push(format!(
                "analysis {:?} would be refused as an ad-hoc query by rule {rule}: {reason}. \
                 It runs as signed; sign it only if that is intended",
                analysis.name
            ));
        }
    }
    out
}

/// What the enclave would make of an ad-hoc query, found without data (`kura query
/// --explain`): the same checks as [`run_query`] up to its physical plans, against empty tables
/// of the declared schemas, or for a differentially private contract [`dp::cost`]. Returns the
/// budget it would spend, if any; a refusal names its rule.
pub async fn check_query(
    contract: &Contract,
    sql: &str,
    epsilon: Option<f64>,
) -> Result<Option<kura_contract::dp::Spend>, EngineError> {
    if contract.privacy.dp.is_some() {
        return dp::cost(contract, sql, epsilon).await.map(Some);
    }
    let (ctx, guarded) = adhoc_plan(contract, sql, &Tables::new(), None).await?;
    for counted in &guarded.counted {
        physical_plan(&ctx, counted, true).await?;
    }
    Ok(None)
}

/// The physical plan of one counted aggregation (the analyzer rule runs on the way). Ad-hoc
/// queries are checked once more on what will run; a fixed analysis was signed as written (it
/// may, say, deduplicate with a window below its aggregation).
async fn physical_plan(
    ctx: &SessionContext,
    counted: &threshold::Counted,
    adhoc: bool,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, EngineError> {
    let physical = ctx
        .state()
        .create_physical_plan(&counted.plan)
        .await
        .map_err(unwrap_refusal)?;
    if adhoc {
        check_physical(physical.as_ref(), counted.visible)?;
    }
    Ok(physical)
}

/// Runs an ad-hoc query under the contract's `[adhoc]` rules and output rules.
///
/// The rules are checked three times: on the plan as written (for precise reasons), by an
/// analyzer rule registered in the session, which DataFusion runs on the plan that executes and
/// whose failure is fatal, and on the physical plan, which must still carry the threshold's
/// counts and read nothing but the enclave's in-memory tables.
pub async fn run_query(
    contract: &Contract,
    sql: &str,
    tables: &Tables,
    overlap: Option<&mut overlap::Overlap>,
) -> Result<Output, EngineError> {
    let overlap = required(contract, overlap)?;
    let (ctx, guarded) = adhoc_plan(contract, sql, tables, overlap.as_deref()).await?;
    require_data(&guarded.datasets, tables)?;
    execute(&ctx, guarded, contract.output.min_group_size, true, overlap).await
}

/// An ad-hoc query checked against the `[adhoc]` rules as written and guarded, in a session
/// whose analyzer checks the rules again on every plan it runs.
async fn adhoc_plan(
    contract: &Contract,
    sql: &str,
    tables: &Tables,
    overlap: Option<&overlap::Overlap>,
) -> Result<(SessionContext, threshold::Guarded), EngineError> {
    let rules = Arc::new(roles::Rules::of(contract)?);
    let ctx = session(contract, tables)?;
    ctx.add_analyzer_rule(Arc::new(roles::RulesAnalyzer(rules.clone())));
    let written = written_plan(&ctx, sql).await?;
    rules.check(&written)?;
    let guarded = threshold::guard(written, contract, overlap)?;
    Ok((ctx, guarded))
}

/// The overlap memory when the contract asks for overlap control; refuses to run without it
/// rather than skip the check.
fn required<'a>(
    contract: &Contract,
    overlap: Option<&'a mut overlap::Overlap>,
) -> Result<Option<&'a mut overlap::Overlap>, EngineError> {
    let wanted = contract.adhoc.as_ref().is_some_and(|a| a.overlap_control);
    match overlap {
        None if wanted => Err(EngineError::Execution(
            "the contract asks for overlap control, but no memory of released cells was given"
                .into(),
        )),
        Some(_) if !wanted => Ok(None),
        given => Ok(given),
    }
}

/// Runs a guarded query: each aggregation with its counts first (checked once more on the
/// physical plan), its failing groups dropped, then what lies above the aggregations over the
/// released groups alone, in a session that holds no data. Errors raised while data is read
/// are reported in a fixed vocabulary ([`EngineError::Runtime`]): DataFusion's own messages
/// quote the values they failed on. Under overlap control the released cells are remembered
/// once the whole answer is known.
async fn execute(
    ctx: &SessionContext,
    guarded: threshold::Guarded,
    min_group_size: u64,
    adhoc: bool,
    overlap: Option<&mut overlap::Overlap>,
) -> Result<Output, EngineError> {
    let mut suppressed = 0;
    let mut cells = Vec::new();
    let mut released: Vec<Arc<dyn datafusion::datasource::TableProvider>> = Vec::new();
    for (i, counted) in guarded.counted.iter().enumerate() {
        let step = async {
            let physical = physical_plan(ctx, counted, adhoc).await?;
            let batches = collect_counted(physical, ctx)
                .await
                .map_err(error::runtime)?;
            output::release(
                &batches,
                counted,
                min_group_size,
                overlap.as_deref(),
                &mut cells,
            )
        };
        let groups = match step.await {
            Ok(groups) => groups,
            Err(e) => {
                // The aggregations after the one that failed still read their files.
                let rest = guarded.counted[i + 1..].iter().map(|c| &c.plan);
                read_unrun(ctx, rest).await;
                return Err(e);
            }
        };
        suppressed += groups.suppressed;
        released.push(Arc::new(MemTable::try_new(
            groups.schema,
            vec![groups.batches],
        )?));
    }
    let plan = threshold::substitute(guarded.plan, released)?;
    let columns = output::column_names(&plan);
    let types = output::column_types(&plan);
    // Above the aggregations, over released groups only; no expression fails there either.
    let upper = SessionContext::new_with_config_rt(SessionConfig::new(), runtime()?);
    upper.add_analyzer_rule(Arc::new(total::Total));
    let batches = upper
        .execute_logical_plan(plan)
        .await?
        .collect()
        .await
        .map_err(error::runtime)?;
    if let Some(overlap) = overlap {
        overlap.remember(cells)?;
    }
    Ok(Output {
        columns,
        types,
        rows: output::rows(&batches)?,
        suppressed_groups: suppressed,
        datasets: guarded.datasets,
        dp: None,
        onnx: None,
    })
}

/// The last line of defence, on what will actually run: the threshold's counts are still the
/// trailing output columns, and no operator reads anything but memory or computes per-row
/// windows.
fn check_physical(
    plan: &dyn datafusion::physical_plan::ExecutionPlan,
    visible: usize,
) -> Result<(), EngineError> {
    let refuse = |reason: String| EngineError::Refused {
        rule: "physical-plan",
        reason,
    };
    let schema = plan.schema();
    let hidden = &schema.fields()[visible.min(schema.fields().len())..];
    if hidden.is_empty()
        || hidden
            .iter()
            .any(|f| !f.name().starts_with(threshold::HIDDEN_PREFIX))
    {
        return Err(refuse(
            "the plan that would run lost the minimum-group-size counts".into(),
        ));
    }
    fn walk(
        plan: &dyn datafusion::physical_plan::ExecutionPlan,
        refuse: &dyn Fn(String) -> EngineError,
    ) -> Result<(), EngineError> {
        let name = plan.name();
        if name.contains("Window") {
            return Err(refuse(format!("operator {name} computes per-row windows")));
        }
        if name == "DataSourceExec" && !reads_only_datasets(plan) {
            let text = datafusion::physical_plan::displayable(plan)
                .one_line()
                .to_string();
            return Err(refuse(format!(
                "a data source other than the datasets: {text}"
            )));
        }
        for child in plan.children() {
            walk(child.as_ref(), refuse)?;
        }
        Ok(())
    }
    walk(plan, &refuse)
}

/// Whether a data source reads the datasets and nothing else: batches in memory, or Parquet
/// files in a dataset's store (registered by [`session`] under [`stored::SCHEME`]).
fn reads_only_datasets(plan: &dyn datafusion::physical_plan::ExecutionPlan) -> bool {
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::datasource::physical_plan::{FileScanConfig, ParquetSource};
    use datafusion::datasource::source::DataSourceExec;
    let Some(exec) = plan.downcast_ref::<DataSourceExec>() else {
        return false;
    };
    let source = exec.data_source();
    if source.is::<MemorySourceConfig>() {
        return true;
    }
    source.downcast_ref::<FileScanConfig>().is_some_and(|scan| {
        scan.object_store_url
            .as_str()
            .starts_with(&format!("{}://", stored::SCHEME))
            && scan.file_source().is::<ParquetSource>()
    })
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
    overlap: Option<&mut overlap::Overlap>,
) -> Result<Output, EngineError> {
    let ctx = session(contract, tables)?;
    let overlap = required(contract, overlap)?;
    let guarded = threshold::guard(written_plan(&ctx, sql).await?, contract, overlap.as_deref())?;
    require_data(&guarded.datasets, tables)?;
    execute(
        &ctx,
        guarded,
        contract.output.min_group_size,
        false,
        overlap,
    )
    .await
}

#[cfg(any(test, feature = "golden"))]
#[cfg_attr(not(test), allow(dead_code))]
mod golden;
#[cfg(test)]
mod hunt;
/// The golden queries ([`slt`]), for other crates' tests (the cluster's).
#[cfg(any(test, feature = "golden"))]
#[cfg_attr(not(test), allow(dead_code))]
pub mod slt;
#[cfg(test)]
mod tests;
