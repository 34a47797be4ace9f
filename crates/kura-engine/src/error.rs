use datafusion::error::DataFusionError;

/// Why the engine refused or failed. Refusals name the rule that applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("refused by rule {rule}: {reason}")]
    Refused { rule: &'static str, reason: String },
    #[error("SQL error: {0}")]
    Sql(String),
    #[error("dataset {dataset:?} does not match the contract: {reason}")]
    Schema { dataset: String, reason: String },
    #[error("not all data is present: waiting for dataset(s) {}", .0.join(", "))]
    MissingData(Vec<String>),
    #[error("analysis {analysis:?}: {source}")]
    InAnalysis {
        analysis: String,
        source: Box<EngineError>,
    },
    #[error("query execution failed: {0}")]
    Execution(String),
    /// An error raised while data was read, in words that carry no data value.
    #[error("the query failed while running: {0}")]
    Runtime(&'static str),
    /// Stored data could not be written, opened or read. The text names files, never values.
    #[error("stored data: {0}")]
    Storage(String),
}

impl EngineError {
    pub(crate) fn in_analysis(self, analysis: &str) -> Self {
        EngineError::InAnalysis {
            analysis: analysis.to_string(),
            source: Box::new(self),
        }
    }

    pub(crate) fn schema(dataset: &str, reason: impl Into<String>) -> Self {
        EngineError::Schema {
            dataset: dataset.to_string(),
            reason: reason.into(),
        }
    }
}

/// Errors about the query itself (planning, schemas, configuration) keep their text: they
/// speak of the SQL and the contract's schemas. Every other error may have come from reading
/// data and is reduced to [`runtime`]'s vocabulary.
impl From<DataFusionError> for EngineError {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::SQL(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => EngineError::Execution(e.strip_backtrace()),
            _ => runtime(e),
        }
    }
}

/// Why a query failed when a stored file failed.
pub const STORED_FILE_FAILED: &str = "a stored file of the data could not be read or did not \
     decrypt (missing, changed or replaced in the store)";

/// An error raised while a query read data, reduced to a fixed vocabulary. DataFusion and
/// arrow quote the value they failed on (`Cannot cast string 'p-0042' to ...`); the text is
/// looked at here and never passed on. A refusal by kura's own analyzer rule stays a refusal.
pub fn runtime(e: DataFusionError) -> EngineError {
    let root = e.find_root();
    if let DataFusionError::External(inner) = root
        && let Some(engine) = inner.downcast_ref::<EngineError>()
    {
        match engine {
            EngineError::Refused { rule, reason } => {
                return EngineError::Refused {
                    rule,
                    reason: reason.clone(),
                };
            }
            // Already reduced (by a cluster, say).
            EngineError::Runtime(reason) => return EngineError::Runtime(reason),
            _ => {}
        }
    }
    // The enclave wrote every stored file itself: one that cannot be read, decrypted or decoded
    // is missing, or was changed or replaced in the store.
    if from_storage(&e) {
        return EngineError::Runtime(STORED_FILE_FAILED);
    }
    if matches!(root, DataFusionError::ResourcesExhausted(_)) {
        return EngineError::Runtime("the query needed more memory than the enclave allows");
    }
    // One refusal for every failure on a value, whatever its kind: which operator failed
    // (a division, a cast, an overflow) would itself say something about the values.
    EngineError::Runtime(VALUE_FAILED)
}

/// Why a query failed on a value of the data, in the same words for every such failure.
pub const VALUE_FAILED: &str =
    "an operation on the data's values failed (no detail is given: it could describe the data)";

/// Whether reading a stored file caused `e`: the store's error, or the Parquet reader's (which
/// the reader sometimes passes on only as text), found by type in `e`'s chain of causes.
fn from_storage(e: &DataFusionError) -> bool {
    use datafusion::arrow::error::ArrowError;
    use datafusion::parquet::errors::ParquetError;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<object_store::Error>() || c.is::<ParquetError>() {
            return true;
        }
        let arrow = match c.downcast_ref::<DataFusionError>() {
            Some(DataFusionError::ObjectStore(_) | DataFusionError::ParquetError(_)) => {
                return true;
            }
            Some(DataFusionError::Shared(inner)) => {
                cause = Some(inner.as_ref());
                continue;
            }
            Some(DataFusionError::ArrowError(arrow, _)) => Some(arrow.as_ref()),
            _ => c.downcast_ref::<ArrowError>(),
        };
        match arrow {
            Some(ArrowError::ParquetError(_)) => return true,
            Some(ArrowError::ExternalError(inner)) => cause = Some(inner.as_ref()),
            _ => cause = c.source(),
        }
    }
    false
}
