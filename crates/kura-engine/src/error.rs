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

impl From<DataFusionError> for EngineError {
    fn from(e: DataFusionError) -> Self {
        EngineError::Execution(e.strip_backtrace())
    }
}
